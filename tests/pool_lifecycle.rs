//! Pool lifecycle: prime, prune, power states, pull, attach, and the secret scan.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn vms_in_state(env: &TestEnv) -> Vec<String> {
    env.state()["vm_pool"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn prime_provisions_vms_that_later_starts_fill() {
    let env = TestEnv::new();
    let out = env.run(&[
        "prime",
        "--count",
        "3",
        "--vm-size",
        "m",
        "--region",
        "westus3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("3 of 3 VM(s) ready:\n"), "{text}");
    assert_eq!(
        text.matches("(m, westus3): ready, 2 slot(s)").count(),
        3,
        "{text}"
    );
    let news: Vec<Vec<String>> = env.calls().into_iter().filter(|c| c[0] == "new").collect();
    assert_eq!(news.len(), 3);
    assert!(
        news.iter()
            .all(|c| c.contains(&"Standard_E8s_v5".to_string()))
    );
    let st = env.state();
    for vm in st["vm_pool"].as_object().unwrap().values() {
        assert_eq!(
            (vm["capacity"].as_u64(), vm["region"].as_str()),
            (Some(2), Some("westus3"))
        );
        assert!(
            vm.get("state").is_none(),
            "ready VMs carry no state field: {vm}"
        );
    }
    env.clear_calls();
    let out = env.run(&[
        "start",
        "--no-context",
        "--region",
        "westus3",
        "a",
        "b",
        "c",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        env.calls().iter().all(|c| c[0] != "new"),
        "primed VMs are filled first"
    );
    assert_eq!(stdout(&out).matches("(reused)").count(), 3);
}

#[test]
fn prime_json_and_quota_keep_the_vms_that_came_up() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.azlin_home().join("quota")).unwrap();
    std::fs::write(env.azlin_home().join("quota/eastus"), "2").unwrap();
    let out = env.run(&["prime", "--count", "3", "--json"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "ready").count(), 2, "{v}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "not created").count(),
        1,
        "{v}"
    );
    assert_eq!(
        vms_in_state(&env).len(),
        2,
        "only the VMs that exist are tracked"
    );
}

#[test]
fn prune_deletes_idle_vms_and_keeps_busy_ones() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    let out = env.run(&["start", "--no-context", "--size", "s", "--json", "SLEEP=60"]);
    let id = started_ids(&out).remove(0);
    let busy = env.vm_of(&id);
    let idle = vms.iter().find(|v| **v != busy).unwrap().clone();

    // Freshly created VMs are not idle for the default 30 minutes.
    let out = env.run(&["prune", "--dry-run"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).starts_with("No VMs to prune"),
        "{}",
        stdout(&out)
    );

    let out = env.run(&["prune", "--idle-minutes", "0", "--dry-run"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{idle} (Standard_D8s_v3, eastus): idle for")),
        "{text}"
    );
    assert!(!text.contains(&busy), "{text}");
    assert!(
        env.calls().iter().all(|c| c[0] != "kill"),
        "dry run deletes nothing"
    );

    let out = env.run(&["prune", "--idle-minutes", "0"]);
    assert_eq!(code(&out), 2, "off a terminal prune needs --yes");
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));

    env.clear_calls();
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], idle.as_str());
    assert_eq!(v[0]["result"], "deleted");
    let kills: Vec<Vec<String>> = env.calls().into_iter().filter(|c| c[0] == "kill").collect();
    assert_eq!(
        kills,
        vec![vec![
            "kill".to_string(),
            idle.clone(),
            // The group azlin put it in (its config's default), recorded when it was made.
            "--resource-group".to_string(),
            "rg".to_string(),
            "--force".to_string()
        ]]
    );
    assert_eq!(vms_in_state(&env), vec![busy.clone()]);
    assert!(!env.vm_dir(&idle).exists());
}

#[test]
fn a_failed_deletion_keeps_the_vm_tracked_with_its_error() {
    let env = TestEnv::new();
    let vms = env.prime(1, "s");
    env.fault(&format!("vms/{}/undeletable", vms[0]));
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deletion FAILED, kept in the pool"),
        "{}",
        stdout(&out)
    );
    let vm = &env.state()["vm_pool"][&vms[0]];
    assert_eq!(vm["state"], "failed");
    assert!(
        vm["error"]
            .as_str()
            .unwrap()
            .contains("operation in progress"),
        "{vm}"
    );
    // It is retried, and goes once Azure lets it.
    env.clear_fault(&format!("vms/{}/undeletable", vms[0]));
    let out = env.run(&["prune", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(vms_in_state(&env).is_empty());
}

#[test]
fn status_shows_power_states_and_flags_vms_gone_from_azure() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    assert!(env.azlin(&["stop", &vms[0]]).status.success());
    std::fs::remove_dir_all(env.vm_dir(&vms[1])).unwrap();
    env.clear_calls();
    let out = env.run(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "{} (s, eastus) [Deallocated: 'azlin start {}' starts it again]",
            vms[0], vms[0]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} (s, eastus) [not in Azure any more: 'amplihack remote prune' removes it from the pool]",
            vms[1]
        )),
        "{text}"
    );
    // The VM gone from Azure has no slot anyone can use.
    assert!(
        text.contains("Total Capacity: 1/1 slots available"),
        "{text}"
    );
    let lists: Vec<Vec<String>> = env.calls().into_iter().filter(|c| c[0] == "list").collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(
        lists[0],
        [
            "list",
            "--resource-group",
            "rg",
            "--all",
            "--no-tmux",
            "-o",
            "json"
        ]
    );
    let v: Value = serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|vm| vm["exists_in_azure"] == false)
            .count(),
        1
    );
    // prune drops the missing VM without asking azlin to delete it.
    env.clear_calls();
    let out = env.run(&["prune", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no longer exists in Azure: removed from the pool"),
        "{}",
        stdout(&out)
    );
    assert!(env.calls().iter().all(|c| c[0] != "kill"));
    assert_eq!(vms_in_state(&env), vec![vms[0].clone()]);
}

#[test]
fn pull_brings_a_sessions_commits_home_as_a_branch() {
    let env = TestEnv::new();
    env.git_repo();
    let out = env.run(&["start", "--json", "COMMIT=2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    assert_eq!(env.wait_finished(&id)["status"], "completed");
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("Fetched 2 commit(s) into branch amplihack/{id} (2 file(s) changed).\n")
    );
    let branch = format!("amplihack/{id}");
    assert_eq!(
        git(&env.work(), &["log", "--format=%s", &branch]),
        "agent commit 2\nagent commit 1\ninit"
    );
    assert_eq!(
        git(&env.work(), &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main",
        "the user's branch is untouched"
    );
    // Nothing is left behind on the VM.
    let vm = env.vm_of(&id);
    assert!(
        std::fs::read_dir(env.vm_dir(&vm).join("home"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".bundle"))
    );
    // Pulling again finds the same commits: it updates the branch and says so.
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0);
}

#[test]
fn pull_with_nothing_new_or_from_elsewhere() {
    let env = TestEnv::new();
    env.git_repo();
    let out = env.run(&["start", "--json", "EXIT=0"]);
    let id = started_ids(&out).remove(0);
    env.wait_finished(&id);
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("Nothing new: session {id} has no commits beyond ")),
        "{}",
        stdout(&out)
    );
    // From outside the repository: a clear error naming it.
    let mut cmd = env.cmd();
    let out = cmd
        .current_dir(env.root())
        .args(["remote", "pull", &id])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let repo = env.work().canonicalize().unwrap();
    assert!(
        stderr(&out).contains(&format!("run pull inside {}", repo.display())),
        "{}",
        stderr(&out)
    );
    // A session without a repository has nothing to pull.
    let out = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    let bare = started_ids(&out).remove(0);
    let out = env.run(&["pull", &bare]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("without a repository"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn start_refuses_to_send_likely_secrets() {
    let env = TestEnv::new();
    env.git_repo();
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
    std::fs::write(
        env.work().join("config.py"),
        format!("API = 'x'\nKEY = \"{key}\"\n"),
    )
    .unwrap();
    std::fs::write(env.work().join(".env"), "TOKEN=1\n").unwrap();
    std::fs::write(
        env.work().join("id_rsa"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
    )
    .unwrap();
    git(&env.work(), &["add", "-f", "."]);
    git(&env.work(), &["commit", "-q", "-m", "oops"]);
    let out = env.run(&["start", "task"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("config.py:2: Anthropic API key sk-ant... (49 chars)"),
        "{err}"
    );
    assert!(err.contains(".env: secret file committed"), "{err}");
    assert!(err.contains("id_rsa:1: private key"), "{err}");
    assert!(err.contains("--allow-secrets"), "{err}");
    assert!(!err.contains(key), "the secret itself is masked");
    assert!(env.calls().is_empty(), "nothing was sent");
    let out = env.run(&["start", "--allow-secrets", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn attach_on_a_terminal_shows_the_session_and_detaches() {
    let env = TestEnv::local();
    let out = env.run(&["start", "--no-context", "--json", "LINES=3 SLEEP=60"]);
    let id = started_ids(&out).remove(0);
    env.wait_for("agent output", Duration::from_secs(20), || {
        stdout(&env.run(&["output", &id, "--raw"])).contains("agent line 3")
    });
    let envs = env.env_words();
    let cmd = format!(
        "env -i TERM=\"$TERM\" {} {} remote attach {id}; echo attach-exit=$?; sleep 30",
        envs,
        assert_cmd::cargo::cargo_bin("amplihack").display()
    );
    let terminal = Terminal::new(&env, "outer", &cmd);
    terminal.wait_for("agent line 3", false);
    terminal.keys(&["C-b", "d"]);
    terminal.wait_for("attach-exit=0", false);
    assert_eq!(
        env.session(&id)["status"],
        "running",
        "detaching leaves the session running"
    );
}

#[test]
fn prune_on_a_terminal_asks_first() {
    let env = TestEnv::new();
    let vms = env.prime(1, "s");
    let envs = env.env_words();
    let bin = assert_cmd::cargo::cargo_bin("amplihack");
    let prune = format!(
        "env -i TERM=\"$TERM\" {} {} remote prune --idle-minutes 0",
        envs,
        bin.display()
    );
    let terminal = Terminal::new(
        &env,
        "no",
        &format!("{prune}; echo prune-exit=$?; sleep 30"),
    );
    terminal.wait_for(&format!("Delete 1 VM(s): {}? [y/N]", vms[0]), false);
    terminal.keys(&["n", "Enter"]);
    terminal.wait_for("prune-exit=0", false);
    assert!(terminal.screen(false).contains("Nothing deleted."));
    assert!(env.vm_dir(&vms[0]).exists());
    let terminal = Terminal::new(
        &env,
        "yes",
        &format!("{prune}; echo prune-exit=$?; sleep 30"),
    );
    terminal.wait_for("[y/N]", false);
    terminal.keys(&["y", "Enter"]);
    terminal.wait_for("prune-exit=0", false);
    assert!(!env.vm_dir(&vms[0]).exists());
    assert!(env.state()["vm_pool"].as_object().unwrap().is_empty());
}
