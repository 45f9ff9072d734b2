//! Results home: what each finished session produced (result.json on the VM), its archive
//! (brought home by the call that sees it finished), `output` and `pull` from the archive after
//! the VM is gone, `prune` archiving before deleting, `report`, and `pull` of many sessions
//! at once; on the stand-in azlin and on the local backend.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn connect_calls(env: &TestEnv) -> Vec<Vec<String>> {
    env.calls()
        .into_iter()
        .filter(|c| c[0] == "connect")
        .collect()
}

/// A session's directory on its VM (this machine's home for `local`).
fn vm_session_dir(env: &TestEnv, vm: &str, id: &str) -> PathBuf {
    if vm == "local" {
        env.home().join(".amplihack/remote/sessions").join(id)
    } else {
        env.session_dir(vm, id)
    }
}

/// Waits until the session has recorded its exit code on its VM, without any command of ours
/// seeing it: the state still says running, and nothing is archived yet.
fn wait_recorded(env: &TestEnv, s: &Started) {
    let exit_code = vm_session_dir(env, &s.vm, &s.id).join("exit_code");
    env.wait_for("the exit code on the VM", Duration::from_secs(60), || {
        exit_code.exists()
    });
}

/// The result.json the supervisor wrote on the VM.
fn vm_result(env: &TestEnv, s: &Started) -> Value {
    let path = vm_session_dir(env, &s.vm, &s.id).join("result.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn archived(env: &TestEnv, id: &str) -> PathBuf {
    env.archive_dir().join(id)
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Makes a finished, archived session look like one that ended before archives existed: no
/// mark in the state, no archive directory.
fn forget_archive(env: &TestEnv, id: &str) {
    let mut st = env.state();
    st["sessions"][id]
        .as_object_mut()
        .unwrap()
        .remove("archived_at");
    env.write_state(&serde_json::to_string_pretty(&st).unwrap());
    std::fs::remove_dir_all(archived(env, id)).unwrap();
}

fn check_committed_result(env: &TestEnv, s: &Started) {
    let r = vm_result(env, s);
    assert_eq!(r["commits"], 2, "{r}");
    assert_eq!(r["committed"]["files"], 2, "{r}");
    assert_eq!(r["committed"]["insertions"], 2, "{r}");
    assert_eq!(r["committed"]["deletions"], 0, "{r}");
    assert_eq!(r["uncommitted"]["files"], 0, "{r}");
    assert_eq!(r["dirty"], false, "{r}");
    assert_eq!(r["base_commit"], env.session(&s.id)["base_commit"], "{r}");
    assert_eq!(
        r["head_commit"].as_str().unwrap().len(),
        40,
        "the workspace's head commit: {r}"
    );
    assert!(
        r["started_at"].is_string() && r["finished_at"].is_string(),
        "{r}"
    );
    assert!(r["duration_seconds"].as_i64().unwrap() >= 0, "{r}");
}

#[test]
fn a_session_that_commits_records_its_result_and_comes_home_whole() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=2 LINES=3"]);
    wait_recorded(&env, &s);
    check_committed_result(&env, &s);
    assert!(
        env.session(&s.id).get("archived_at").is_none(),
        "nothing is archived before a command sees the end"
    );

    // The refresh that sees it finished brings everything home, in its one call.
    env.clear_calls();
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(connect_calls(&env).len(), 1);
    let rec = env.session(&s.id);
    assert_eq!(rec["status"], "completed");
    assert!(rec["archived_at"].is_string(), "{rec}");
    let dir = archived(&env, &s.id);
    assert_eq!(mode(&env.archive_dir()), 0o700);
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "archive.json",
        "result.json",
        "record.json",
        "output.log",
        "commits.bundle",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let result: Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result, vm_result(&env, &s));
    let log = std::fs::read_to_string(dir.join("output.log")).unwrap();
    assert!(
        log.contains("agent line 3\n") && log.contains("agent: finished"),
        "{log}"
    );
    let names: Vec<String> = std::fs::read_dir(env.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![s.id.clone()], "no temp directory is left");

    // Seen once: later refreshes do not ask again.
    env.clear_calls();
    env.run(&["list"]);
    assert!(env.calls().is_empty(), "{:?}", env.calls());
}

#[test]
fn a_session_that_edits_without_committing_says_so_in_report_and_pull() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["EDIT=2"]);
    wait_recorded(&env, &s);
    let r = vm_result(&env, &s);
    assert_eq!(r["commits"], 0, "{r}");
    assert_eq!(r["committed"]["files"], 0, "{r}");
    assert_eq!(r["uncommitted"]["files"], 2, "{r}");
    assert_eq!(r["uncommitted"]["insertions"], 6, "{r}");
    assert_eq!(r["dirty"], true, "{r}");

    let out = env.run(&["report"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with(&s.id)).unwrap();
    assert!(row.contains(" none * "), "{text}");
    assert!(
        text.contains("* Uncommitted work left in the workspace: in no commit, so pull does not bring it home; its archive keeps it as a patch, which pull --resume applies:\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {}: +6 -0 (2 files)\n", s.id)),
        "{text}"
    );
    let out = env.run(&["report", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["uncommitted"]["files"], 2);

    let out = env.run(&["pull", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "Nothing new: session {} has no commits beyond ",
            s.id
        )),
        "{text}"
    );
    assert!(
        text.contains("  Not in it: 2 file(s) of work left uncommitted in its workspace (+6 -0)"),
        "{text}"
    );
}

#[test]
fn a_failing_session_without_git_records_its_times_and_exit() {
    let env = TestEnv::new();
    let s = start_one(&env, &["--no-context", "EXIT=3 LINES=2"]);
    wait_recorded(&env, &s);
    let r = vm_result(&env, &s);
    assert!(
        r["started_at"].is_string() && r["finished_at"].is_string(),
        "{r}"
    );
    assert!(r["duration_seconds"].is_i64(), "{r}");
    assert!(
        r.get("commits").is_none() && r.get("git_error").is_none(),
        "no git context, no git facts: {r}"
    );
    let rec = env.wait_finished(&s.id);
    assert_eq!(
        (rec["status"].as_str(), rec["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(env.session(&s.id)["archived_at"].is_string());
    assert!(!archived(&env, &s.id).join("commits.bundle").exists());
    let out = env.run(&["report", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["exit_code"], 3);
    assert!(
        v[0]["commits"].is_null() && v[0]["duration_seconds"].is_i64(),
        "{v}"
    );
}

#[test]
fn a_broken_git_never_keeps_the_exit_code_from_being_written() {
    let env = TestEnv::new();
    env.git_repo();
    // The agent wrecks its workspace's repository before it exits.
    let s = start_one(&env, &["SLEEP=30"]);
    env.wait_for("agent start", Duration::from_secs(20), || {
        env.agent_record(&s.vm, &s.id).join("env").exists()
    });
    let ws = env.vm_dir(&s.vm).join("home/workspace").join(&s.id);
    std::fs::remove_dir_all(ws.join(".git")).unwrap();
    let out = env.run(&["kill", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = vm_result(&env, &s);
    assert_eq!(
        r["git_error"], "the workspace is not a git repository with a commit",
        "{r}"
    );
    assert_eq!(env.session(&s.id)["status"], "killed");
    // The kill's own call brought the archive home.
    assert!(env.session(&s.id)["archived_at"].is_string());
    assert!(archived(&env, &s.id).join("output.log").exists());
}

#[test]
fn output_and_pull_read_the_archive_after_the_vm_is_gone() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=2 LINES=5"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&s.vm).exists(), "the VM is deleted");

    env.clear_calls();
    let out = env.run(&["output", &s.id, "-n", "3"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "=== Session: {} ===\nVM: {}\nStatus: completed\n",
            s.id, s.vm
        )),
        "{text}"
    );
    assert!(text.ends_with("agent line 5\nagent: finished\n"), "{text}");
    assert!(text.contains("(3 lines)"), "{text}");
    let out = env.run(&["output", &s.id, "--raw", "--follow"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("agent: started"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("ended: completed (exit 0)"),
        "{}",
        stderr(&out)
    );

    let out = env.run(&["pull", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "Fetched 2 commit(s) into branch amplihack/{} (2 file(s) changed).\n",
            s.id
        )
    );
    assert_eq!(
        git(
            &env.work(),
            &["log", "--format=%s", &format!("amplihack/{}", s.id)]
        ),
        "agent commit 2\nagent commit 1\ninit"
    );
    assert!(env.calls().is_empty(), "no azlin call: {:?}", env.calls());
}

#[test]
fn prune_archives_before_deleting() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1 LINES=2"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    // As if it had ended before archives existed.
    forget_archive(&env, &s.id);
    let out = env.run(&["prune", "--idle-minutes", "0", "--dry-run"]);
    assert!(
        stdout(&out).contains("would be deleted once the results of 1 session(s) are archived"),
        "{}",
        stdout(&out)
    );
    assert!(!archived(&env, &s.id).exists(), "a dry run keeps nothing");

    env.clear_calls();
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["result"], "deleted", "{v}");
    let calls = env.calls();
    let connect = calls.iter().position(|c| c[0] == "connect").unwrap();
    let kill = calls.iter().position(|c| c[0] == "kill").unwrap();
    assert!(connect < kill, "archived before the deletion: {calls:?}");
    // The refresh that brings the archive home, and the question what the VM holds (another
    // machine's sessions keep it).
    assert_eq!(connect_calls(&env).len(), 2);
    assert!(env.session(&s.id)["archived_at"].is_string());
    assert!(archived(&env, &s.id).join("commits.bundle").exists());
    let out = env.run(&["output", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("agent line 2\n"));
}

#[test]
fn prune_keeps_a_vm_whose_sessions_cannot_be_archived_unless_forced() {
    let env = TestEnv::new();
    let s = start_one(&env, &["--no-context", "LINES=2"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    forget_archive(&env, &s.id);
    env.fault(&format!("vms/{}/unreachable", s.vm));

    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "KEPT: 1 session(s) not archived: VM '{}' is not reachable",
            s.vm
        )),
        "{text}"
    );
    assert!(
        text.contains("pass --force to delete it and lose them"),
        "{text}"
    );
    assert!(env.calls().iter().all(|c| c[0] != "kill"));
    assert!(env.vm_dir(&s.vm).exists());
    assert!(env.state()["vm_pool"].get(&s.vm).is_some());

    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--force", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "deleting VM {} loses the output and commits of session(s) never archived: {}",
            s.vm, s.id
        )),
        "{}",
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["result"],
        format!("deleted; lost, never archived: {}", s.id)
    );
    assert_eq!(v[0]["not_archived"][0], s.id.as_str());
    assert!(!env.vm_dir(&s.vm).exists());
    // What was lost stays lost, and says so.
    let out = env.run(&["output", &s.id]);
    assert_ne!(code(&out), 0);
}

#[test]
fn report_shows_a_table_with_a_total_and_json_with_the_same_fields() {
    let env = TestEnv::new();
    env.git_repo();
    let out = env.run(&[
        "start", "--json", "COMMIT=2", "EDIT=1", "EXIT=3", "SLEEP=60",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let vm = env.vm_of(&ids[0]);
    for id in &ids[..3] {
        wait_recorded(
            &env,
            &Started {
                id: id.clone(),
                vm: vm.clone(),
            },
        );
    }
    env.clear_calls();
    let out = env.run(&["report"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(connect_calls(&env).len(), 1, "one call for the one VM");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "SESSION", "STATUS", "EXIT", "DURATION", "COST", "COMMITS", "CHANGES", "PROMPT"
        ]
    );
    let row = |id: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap()
            .split_whitespace()
            .collect()
    };
    let committed = row(&ids[0]);
    assert_eq!(
        (committed[1], committed[2], committed[5]),
        ("completed", "0", "2"),
        "{text}"
    );
    // Its share of a priced VM: duration x hourly price / slots.
    assert!(committed[4].starts_with("$0."), "{text}");
    assert_eq!(&committed[6..10], ["+2", "-0", "(2", "files)"], "{text}");
    assert_eq!(&row(&ids[1])[6..8], ["none", "*"], "{text}");
    assert_eq!(
        (row(&ids[2])[1], row(&ids[2])[2]),
        ("failed", "3"),
        "{text}"
    );
    assert_eq!(
        (row(&ids[3])[1], row(&ids[3])[5]),
        ("running", "-"),
        "{text}"
    );
    assert!(
        text.contains(
            "\nTotal: 4 sessions (2 completed, 1 failed, 1 running), 2 commits, +2 -0 (2 files)\n"
        ),
        "{text}"
    );
    assert!(text.contains("\nCost: ~$0."), "{text}");
    assert!(stderr(&out).contains("1 session(s) with commits not pulled yet"));

    env.clear_calls();
    let out = env.run(&["report", "--json", "--status", "completed"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        connect_calls(&env).len(),
        1,
        "the running session is refreshed"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for field in [
            "session_id",
            "status",
            "exit_code",
            "duration_seconds",
            "commits",
            "files_changed",
            "insertions",
            "deletions",
            "uncommitted",
            "cost_usd",
            "prompt",
        ] {
            assert!(r.get(field).is_some(), "{field} missing: {r}");
        }
    }
    let first = rows
        .iter()
        .find(|r| r["session_id"] == ids[0].as_str())
        .unwrap();
    assert!(first["cost_usd"].as_f64().unwrap() >= 0.0, "{first}");
    assert_eq!(
        (
            first["commits"].as_u64(),
            first["insertions"].as_u64(),
            first["archived"].as_bool()
        ),
        (Some(2), Some(2), Some(true))
    );

    // --no-refresh reads the state and the archive alone.
    env.clear_calls();
    let out = env.run(&["report", "--no-refresh", "--since", "30m"]);
    assert_eq!(code(&out), 0);
    assert!(env.calls().is_empty());
    for bad in ["12", "1.5h", "yesterday"] {
        let out = env.run(&["report", "--since", bad]);
        assert_eq!(code(&out), 2, "{bad}");
        assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
    }
}

#[test]
fn pull_all_fetches_every_unpulled_session_with_one_call_per_vm() {
    let env = TestEnv::new();
    env.git_repo();
    let vms = env.prime(2, "m");
    let out = env.run(&[
        "start", "--json", "--size", "m", "COMMIT=1", "COMMIT=2", "COMMIT=1", "EDIT=1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let placed: Vec<String> = ids.iter().map(|id| env.vm_of(id)).collect();
    for vm in &vms {
        assert_eq!(placed.iter().filter(|v| *v == vm).count(), 2, "{placed:?}");
    }
    for (id, vm) in ids.iter().zip(&placed) {
        wait_recorded(
            &env,
            &Started {
                id: id.clone(),
                vm: vm.clone(),
            },
        );
    }

    // Unknown ids exit 3 before any remote call.
    env.clear_calls();
    let out = env.run(&["pull", &ids[0], "sess-20990101-000000-none"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(env.calls().is_empty());
    let out = env.run(&["pull"]);
    assert_eq!(code(&out), 2, "a session or --all is needed");

    let out = env.run(&["pull", "--all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let connects = connect_calls(&env);
    assert_eq!(connects.len(), 2, "one call per VM: {connects:?}");
    let mut called: Vec<&String> = connects.iter().map(|c| &c[1]).collect();
    called.sort();
    assert_eq!(called, vms.iter().collect::<Vec<_>>());
    let text = stdout(&out);
    for (id, n) in ids.iter().zip([1, 2, 1]) {
        assert!(
            text.contains(&format!(
                "Fetched {n} commit(s) into branch amplihack/{id} ({n} file(s) changed).\n"
            )),
            "{text}"
        );
        assert!(
            git(
                &env.work(),
                &["branch", "--list", &format!("amplihack/{id}")]
            )
            .contains(id),
            "{id}"
        );
    }
    assert!(
        !text.contains(&ids[3]),
        "a session without commits has nothing to pull: {text}"
    );
    for id in &ids {
        assert!(env.session(id)["archived_at"].is_string(), "{id}");
    }
    assert!(env.session(&ids[0])["pulled_commit"].is_string());

    // Everything is home: nothing to pull, and no call.
    env.clear_calls();
    let out = env.run(&["pull", "--all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Nothing to pull"),
        "{}",
        stdout(&out)
    );
    assert!(env.calls().is_empty());
    // Named again, from the archive: no call either.
    let out = env.run(&["pull", &ids[1], &ids[0]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    assert!(env.calls().is_empty());
}

#[test]
fn pull_of_a_running_session_brings_its_commits_so_far() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1 SLEEP=60"]);
    env.wait_for("agent start", Duration::from_secs(20), || {
        env.agent_record(&s.vm, &s.id).join("env").exists()
    });
    let branch_commit = |env: &TestEnv| {
        let ws = env.vm_dir(&s.vm).join("home/workspace").join(&s.id);
        git(&ws, &["rev-list", "--count", "HEAD"])
    };
    env.wait_for("the agent's commit", Duration::from_secs(20), || {
        branch_commit(&env) == "2"
    });
    env.clear_calls();
    let out = env.run(&["pull", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Fetched 1 commit(s)")
            && stdout(&out).contains("still running: these are its commits so far"),
        "{}",
        stdout(&out)
    );
    assert_eq!(connect_calls(&env).len(), 1);
    assert!(env.session(&s.id).get("archived_at").is_none());
}

#[test]
fn the_local_backend_archives_and_reads_back_without_its_session_files() {
    let env = TestEnv::local();
    env.git_repo();
    let committed = start_one(&env, &["COMMIT=2 LINES=3"]);
    let edited = start_one(&env, &["EDIT=1"]);
    let failed = start_one(&env, &["EXIT=4"]);
    for s in [&committed, &edited, &failed] {
        wait_recorded(&env, s);
    }
    check_committed_result(&env, &committed);
    assert_eq!(vm_result(&env, &edited)["uncommitted"]["files"], 1);

    let out = env.run(&["report", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_id = |id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["session_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&committed.id)["commits"], 2);
    assert_eq!(by_id(&edited.id)["uncommitted"]["files"], 1);
    assert_eq!(by_id(&failed.id)["exit_code"], 4);
    for s in [&committed, &edited, &failed] {
        assert!(env.session(&s.id)["archived_at"].is_string());
        assert!(
            env.calls().is_empty(),
            "the local backend never calls azlin"
        );
    }

    // With its session directory and workspace gone, output and pull read the archive.
    std::fs::remove_dir_all(vm_session_dir(&env, "local", &committed.id)).unwrap();
    std::fs::remove_dir_all(env.home().join(".amplihack/workspaces").join(&committed.id)).unwrap();
    let out = env.run(&["output", &committed.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("agent line 3\n"), "{}", stdout(&out));
    let out = env.run(&["pull", "--all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "Fetched 2 commit(s) into branch amplihack/{} (2 file(s) changed).\n",
            committed.id
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_log_over_the_cap_keeps_its_last_part_and_says_so() {
    let mut env = TestEnv::new();
    let elsewhere = env.root().join("elsewhere/archive");
    env.set("AMPLIHACK_REMOTE_ARCHIVE", elsewhere.to_str().unwrap());
    env.set("AMPLIHACK_REMOTE_ARCHIVE_LOG_CAP", "64");
    let s = start_one(&env, &["--no-context", "LINES=50"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let full = std::fs::read(vm_session_dir(&env, &s.vm, &s.id).join("output.log")).unwrap();
    let kept = std::fs::read(elsewhere.join(&s.id).join("output.log")).unwrap();
    assert_eq!(kept, &full[full.len() - 64..]);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(elsewhere.join(&s.id).join("archive.json")).unwrap())
            .unwrap();
    assert_eq!(meta["log_bytes"], full.len());
    assert_eq!(meta["log_kept_from"], full.len() - 64);
    assert!(
        !env.archive_dir().exists(),
        "AMPLIHACK_REMOTE_ARCHIVE moves the archive"
    );

    env.clear_calls();
    let out = env.run(&["output", &s.id, "-n", "1000", "--raw"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, kept);
    assert!(
        stderr(&out).contains(&format!(
            "the log was over the archive's cap: its first {} bytes were not kept",
            full.len() - 64
        )),
        "{}",
        stderr(&out)
    );
    assert!(env.calls().is_empty());
}
