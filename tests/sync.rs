//! `sync`: the VMs are the truth, the state file a cache rebuilt and merged from them. End to
//! end against the stand-in azlin and the local backend, with real bash, tmux and agents.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A test env whose agent (the stand-in) runs on the stand-in VMs and on this machine alike.
fn env_with_local_agent() -> TestEnv {
    let mut env = TestEnv::new();
    env.set(
        "AMPLIHACK_REMOTE_AGENT",
        &format!("{} claude", support("vm-bin/amplihack").display()),
    );
    env.set("AMPLIHACK_LOCAL_SLOTS", "4");
    env
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

fn sync_json(env: &TestEnv, extra: &[&str]) -> Value {
    let mut args = vec!["sync", "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    json(&out)
}

/// `list --json`: every session with every field, as a refresh leaves it.
fn list_json(env: &TestEnv) -> Value {
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    json(&out)
}

/// `status --json` without the ages, which grow between two calls.
fn status_json(env: &TestEnv) -> Value {
    let out = env.run(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut v = json(&out);
    for vm in v["vms"].as_array_mut().unwrap() {
        vm.as_object_mut().unwrap().remove("age_seconds");
    }
    v
}

fn ids_of(v: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn remove_state(env: &TestEnv) {
    std::fs::remove_file(env.state_path()).unwrap();
    assert!(!env.state_path().exists());
}

/// Starts `prompts` with `extra` options; returns their ids in prompt order.
fn start(env: &TestEnv, extra: &[&str], prompts: &[&str]) -> Vec<String> {
    let mut args = vec!["start", "--no-context", "--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(prompts);
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    started_ids(&out)
}

#[test]
fn a_lost_state_is_rebuilt_from_the_vms_and_a_second_machine_sees_the_same() {
    let mut env = env_with_local_agent();
    let vms = env.prime(2, "m");
    // Two sessions on each stand-in VM and three on this machine: running, completed,
    // failed, killed.
    let azure = start(
        &env,
        &["--size", "m"],
        &["SLEEP=600", "LINES=2", "EXIT=3", "SLEEP=600"],
    );
    let local = start(
        &env,
        &["--local"],
        &["SLEEP=600", "LINES=1", "TRAP SLEEP=600"],
    );
    let placed: Vec<String> = azure.iter().map(|id| env.vm_of(id)).collect();
    assert_eq!(
        placed,
        [&vms[0], &vms[0], &vms[1], &vms[1]].map(String::clone)
    );
    for id in [&azure[1], &azure[2], &local[1]] {
        env.wait_finished(id);
    }
    env.wait_for("the trap agent", Duration::from_secs(20), || {
        env.agent_record("local", &local[2]).join("env").exists()
    });
    let out = env.run(&["kill", &local[2]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = list_json(&env);
    let statuses: Vec<&str> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    for status in ["running", "completed", "failed", "killed"] {
        assert!(statuses.contains(&status), "{before:#}");
    }
    let status_before = status_json(&env);

    // The state file is lost. A dry run asks the VMs and writes nothing.
    remove_state(&env);
    env.clear_calls();
    let dry = sync_json(&env, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["changed"], true);
    assert!(!env.state_path().exists(), "a dry run wrote the state");
    let connects = env.calls().iter().filter(|c| c[0] == "connect").count();
    assert_eq!(connects, 2, "one call per VM: {:?}", env.calls());

    // sync rebuilds it: the same sessions with the same fields and statuses, the same pool.
    env.clear_calls();
    let report = sync_json(&env, &[]);
    let calls = env.calls();
    assert_eq!(
        calls.iter().map(|c| c[0].as_str()).collect::<Vec<_>>(),
        ["list", "connect", "connect"],
        "one listing, then one call per VM: {calls:?}"
    );
    let mut all: Vec<String> = azure.iter().chain(&local).cloned().collect();
    all.sort();
    assert_eq!(ids_of(&report, "added_sessions"), all);
    assert_eq!(ids_of(&dry, "added_sessions"), all);
    let mut added_vms: Vec<&str> = report["added_vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    added_vms.sort();
    assert_eq!(added_vms, [vms[0].as_str(), vms[1].as_str(), "local"]);
    assert_eq!(report["changed"], true);
    assert!(report["unreachable_vms"].as_array().unwrap().is_empty());
    // Nothing is ignored in the comparison: every field is the VMs' to tell (repo_path and
    // base_commit are in each session's record; owner is gone once a session runs).
    assert_eq!(list_json(&env), before);
    assert_eq!(status_json(&env), status_before);

    // Running it again changes nothing: not one byte of the file.
    let bytes = std::fs::read(env.state_path()).unwrap();
    let again = sync_json(&env, &[]);
    assert_eq!(again["changed"], false);
    for key in ["added_vms", "added_sessions", "settled_sessions"] {
        assert!(
            again[key].as_array().unwrap().is_empty(),
            "{key}: {again:#}"
        );
    }
    assert_eq!(std::fs::read(env.state_path()).unwrap(), bytes);
    let text = stdout(&env.run(&["sync"]));
    assert!(
        text.ends_with("Nothing to change: the state agrees with the VMs.\n"),
        "{text}"
    );
    assert_eq!(std::fs::read(env.state_path()).unwrap(), bytes);

    // A second machine (its own state file) syncs the same pool and sees the same.
    let second: PathBuf = env.root().join("state/second-laptop.json");
    env.set("AMPLIHACK_REMOTE_STATE", &second.display().to_string());
    let report = sync_json(&env, &[]);
    assert_eq!(ids_of(&report, "added_sessions"), all);
    assert_eq!(list_json(&env), before);
    assert_eq!(status_json(&env), status_before);
    assert_eq!(
        std::fs::read(&second).unwrap(),
        bytes,
        "both machines hold the same state"
    );
}

#[test]
fn a_vm_that_does_not_answer_is_reported_and_its_sessions_kept() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    let ids = start(&env, &["--size", "s"], &["SLEEP=600", "SLEEP=600"]);
    let on = |vm: &str| {
        ids.iter()
            .find(|id| env.vm_of(id) == vm)
            .unwrap()
            .to_string()
    };
    let (lost_vm, lost_id, kept_id) = (&vms[0], on(&vms[0]), on(&vms[1]));
    let before = env.state();
    env.fault(&format!("vms/{lost_vm}/unreachable"));

    let report = sync_json(&env, &[]);
    let unreachable = report["unreachable_vms"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1, "{report:#}");
    assert_eq!(unreachable[0]["name"], lost_vm.as_str());
    assert!(
        unreachable[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Connection timed out"),
        "{report:#}"
    );
    assert_eq!(
        unreachable[0]["kept_sessions"],
        serde_json::json!([lost_id.clone()])
    );
    assert_eq!(report["answered"], serde_json::json!([vms[1].clone()]));
    assert_eq!(report["changed"], false);
    assert_eq!(env.state(), before, "nothing was dropped or changed");
    let text = stdout(&env.run(&["sync"]));
    assert!(
        text.contains(&format!(
            "Could not reach VM {lost_vm}: VM '{lost_vm}' is not reachable: ssh: connect to host 10.0.0.4 port 22: Connection timed out\n  kept its 1 session(s) as last known: {lost_id}\n"
        )),
        "{text}"
    );

    // Rebuilt while it does not answer: the VM is known from azlin's listing, its sessions
    // only once it answers again.
    remove_state(&env);
    let report = sync_json(&env, &[]);
    assert_eq!(ids_of(&report, "added_sessions"), [kept_id.as_str()]);
    assert_eq!(report["added_vms"].as_array().unwrap().len(), 2);
    assert!(env.state()["vm_pool"][lost_vm].is_object());
    env.clear_fault(&format!("vms/{lost_vm}/unreachable"));
    let report = sync_json(&env, &[]);
    assert_eq!(ids_of(&report, "added_sessions"), [lost_id.as_str()]);
    assert_eq!(env.session(&lost_id), before["sessions"][&lost_id]);

    // No VM answers: exit 4, the report still printed, the state untouched.
    let before = std::fs::read(env.state_path()).unwrap();
    for vm in &vms {
        env.fault(&format!("vms/{vm}/unreachable"));
    }
    let out = env.run(&["sync", "--json"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(json(&out)["unreachable_vms"].as_array().unwrap().len(), 2);
    assert!(
        stderr(&out).contains(&format!(
            "Error: No VM answered (asked: {}, {})",
            vms[0], vms[1]
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(env.state_path()).unwrap(), before);
}

#[test]
fn a_python_original_session_survives_sync() {
    let env = TestEnv::new();
    let vm = env.prime(1, "l").remove(0);
    // The Python original's state, its first VM being one that answers. Its sessions have no
    // directory there: one still has its tmux session, the other's is gone.
    let python =
        include_str!("expected/python-state.json").replace("amplihack-user-20251125-143000", &vm);
    env.write_state(&python);
    let tmux = std::process::Command::new("tmux")
        .env("TMUX_TMPDIR", env.vm_dir(&vm).join("tmp"))
        .env_remove("TMUX")
        .args([
            "new-session",
            "-d",
            "-s",
            "sess-20251125-143022-abc",
            "sleep 600",
        ])
        .status()
        .unwrap();
    assert!(tmux.success());
    let before = env.state();

    let report = sync_json(&env, &[]);
    let after = env.state();
    // Everything of the Python original is still there, unknown fields included.
    assert_eq!(after["written_by"], "python");
    assert_eq!(after["sessions"].as_object().unwrap().len(), 3, "{after:#}");
    let abc = &after["sessions"]["sess-20251125-143022-abc"];
    assert_eq!(abc["status"], "running");
    assert_eq!(abc["python_field"], serde_json::json!([1, 2, 3]));
    assert_eq!(
        abc["prompt"],
        before["sessions"]["sess-20251125-143022-abc"]["prompt"]
    );
    // Naive, as the Python original wrote it (it cannot compare naive and aware times).
    assert_eq!(abc["started_at"], "2025-11-25T14:30:45");
    // Settled by the rules of a refresh: its VM answered that nothing of it is left.
    let def = &after["sessions"]["sess-20251125-143025-def"];
    assert_eq!(def["status"], "failed");
    assert_eq!(
        report["settled_sessions"],
        serde_json::json!([{"session_id": "sess-20251125-143025-def", "vm_name": vm, "from": "running", "to": "failed"}])
    );
    assert_eq!(
        report["not_on_vm"],
        serde_json::json!([{"session_id": "sess-20251125-143022-abc", "vm_name": vm, "status": "running"}])
    );
    // Its other VM does not exist for azlin: reported, its completed session kept as it was.
    let xyz = &after["sessions"]["sess-20251125-140000-xyz"];
    assert_eq!(xyz["status"], "completed");
    assert_eq!(xyz["completed_at"], "2025-11-25T14:20:00");
    let unreachable = report["unreachable_vms"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1);
    assert_eq!(unreachable[0]["name"], "amplihack-user-20251125-140000");
    assert_eq!(
        unreachable[0]["kept_sessions"],
        serde_json::json!(["sess-20251125-140000-xyz"])
    );
    assert!(after["vm_pool"]["amplihack-user-20251125-140000"].is_object());
    assert_eq!(
        after["vm_pool"][&vm]["size"], "Standard_D4s_v3",
        "the state's own VM entry is kept"
    );
    let bytes = std::fs::read(env.state_path()).unwrap();
    assert_eq!(sync_json(&env, &[])["changed"], false);
    assert_eq!(std::fs::read(env.state_path()).unwrap(), bytes);
}

#[test]
fn a_corrupt_state_is_refused_and_the_recovery_steps_rebuild_it() {
    let env = env_with_local_agent();
    let id = start(&env, &["--local"], &["SLEEP=600"]).remove(0);
    let corrupt = b"{\"sessions\": {\"x\": ";
    env.write_state(std::str::from_utf8(corrupt).unwrap());
    env.clear_calls();
    for args in [&["sync"][..], &["sync", "--dry-run", "--json"]] {
        let out = env.run(args);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
        let path = env.state_path().display().to_string();
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "Error: State file corrupt: {path}: EOF while parsing a value at line 1 column 19\n"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "Recovery: the file was left untouched. Move it aside (mv '{path}' '{path}.corrupt'), then run 'amplihack remote sync' to rebuild it from the VMs; or repair it by hand."
            )),
            "{err}"
        );
        assert_eq!(std::fs::read(env.state_path()).unwrap(), corrupt);
    }
    assert!(
        env.calls().is_empty(),
        "no remote call before the state is read"
    );

    // The steps as written: move it aside, run sync.
    let aside = PathBuf::from(format!("{}.corrupt", env.state_path().display()));
    std::fs::rename(env.state_path(), &aside).unwrap();
    let report = sync_json(&env, &[]);
    assert_eq!(ids_of(&report, "added_sessions"), [id.as_str()]);
    assert_eq!(env.session(&id)["status"], "running");
    assert_eq!(std::fs::read(&aside).unwrap(), corrupt);
}

#[test]
fn with_no_state_file_and_no_vms_sync_creates_an_empty_state() {
    let env = TestEnv::new();
    let report = sync_json(&env, &[]);
    assert_eq!(report["answered"], serde_json::json!([]));
    assert_eq!(report["changed"], false);
    assert_eq!(
        env.state(),
        serde_json::json!({"sessions": {}, "vm_pool": {}})
    );
    // Every documented field of the report is there.
    for key in [
        "dry_run",
        "changed",
        "answered",
        "added_vms",
        "added_sessions",
        "settled_sessions",
        "unreachable_vms",
        "not_on_vm",
        "unreadable",
        "skipped_vms",
        "listing_failed",
    ] {
        assert!(report.get(key).is_some(), "{key} missing: {report:#}");
    }
    assert_eq!(report.as_object().unwrap().len(), 11, "{report:#}");
}

#[test]
fn without_azlin_or_an_azure_login_sync_exits_1_with_the_hint() {
    let mut env = TestEnv::new();
    env.fault("auth");
    let out = env.run(&["sync"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Run 'az login' and try again."),
        "{}",
        stderr(&out)
    );
    assert!(!env.state_path().exists(), "nothing was written");
    env.clear_fault("auth");
    env.set("AMPLIHACK_AZLIN", "/nonexistent/azlin");
    let out = env.run(&["sync", "--json"]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("azlin not found ('/nonexistent/azlin' is not on PATH)"),
        "{}",
        stderr(&out)
    );
    assert!(!env.state_path().exists());
}

#[test]
fn every_resource_group_the_state_records_is_listed() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_RESOURCE_GROUP", "team-a");
    let old_vm = env.prime(1, "s").remove(0);
    let old_id = start(&env, &["--size", "s"], &["SLEEP=600"]).remove(0);
    // The configured group changes; the state remembers where the first VM lives.
    env.set("AMPLIHACK_RESOURCE_GROUP", "team-b");
    let new_vm = env.prime(1, "s").remove(0);
    let new_id = start(&env, &["--size", "s"], &["SLEEP=600"]).remove(0);
    assert_eq!(env.vm_of(&new_id), new_vm);
    // A state that lacks both sessions (as a machine that did not start them would).
    let mut st = env.state();
    let before = st.clone();
    st["sessions"] = serde_json::json!({});
    env.write_state(&st.to_string());
    env.clear_calls();

    let report = sync_json(&env, &[]);
    let mut lists: Vec<String> = env
        .calls()
        .iter()
        .filter(|c| c[0] == "list")
        .map(|c| c[2].clone())
        .collect();
    lists.sort();
    assert_eq!(lists, ["team-a", "team-b"]);
    let mut expected = vec![old_id.clone(), new_id.clone()];
    expected.sort();
    assert_eq!(ids_of(&report, "added_sessions"), expected);
    assert_eq!(env.session(&old_id), before["sessions"][&old_id]);
    assert_eq!(env.state()["vm_pool"][&old_vm]["resource_group"], "team-a");
}

#[test]
fn a_stopped_vm_is_reported_with_its_power_state() {
    let env = TestEnv::new();
    let vm = env.prime(1, "s").remove(0);
    // Deallocated behind our back (`azlin stop`), as the contract's stand-in does it.
    let stop = env.azlin(&["stop", &vm]).status;
    assert!(stop.success());
    let reason = format!("its power state is Deallocated; start it with 'azlin start {vm}'");
    for state_known in [true, false] {
        if !state_known {
            remove_state(&env);
        }
        env.clear_calls();
        let out = env.run(&["sync", "--json"]);
        assert_eq!(code(&out), 4, "{}", stderr(&out));
        let report = json(&out);
        assert_eq!(report["unreachable_vms"][0]["name"], vm.as_str());
        assert_eq!(report["unreachable_vms"][0]["reason"], reason.as_str());
        let connects = env.calls().iter().filter(|c| c[0] == "connect").count();
        // The state's VMs are asked while azlin lists; one only the listing knows is not.
        assert_eq!(connects, usize::from(state_known), "{:?}", env.calls());
        assert!(env.state()["vm_pool"][&vm].is_object());
    }
}
