//! Live: `output --follow` streams over one connection and survives dropped ones byte for
//! byte; `wait` blocks until sessions end with one connection per VM. Once they see sessions
//! end, both bring the archives home with one more call per VM (docs/results.md). No timed
//! assertions: latencies are measured by benches/perf.rs.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn connects(env: &TestEnv) -> usize {
    env.calls().iter().filter(|c| c[0] == "connect").count()
}

fn session_log(env: &TestEnv, vm: &str, id: &str) -> Vec<u8> {
    std::fs::read(env.session_dir(vm, id).join("output.log")).unwrap()
}

#[test]
fn follow_streams_the_whole_session_over_one_connection() {
    let env = TestEnv::new();
    let s = env.start_running("TICK=20");
    env.clear_calls();
    let out = env.run(&["output", &s.id, "--follow", "--raw", "-n", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, session_log(&env, &s.vm, &s.id), "byte for byte");
    assert!(stdout(&out).contains("tick 20"));
    assert_eq!(
        connects(&env),
        2,
        "one call for the whole follow, one to bring the archive home"
    );
    assert!(stderr(&out).contains(&format!("Session {} ended: completed (exit 0)", s.id)));
    assert_eq!(
        env.session(&s.id)["status"],
        "completed",
        "the end is recorded"
    );
    assert!(
        env.session(&s.id)["archived_at"].is_string(),
        "and the archive is home"
    );
    assert_eq!(
        std::fs::read(env.archive_dir().join(&s.id).join("output.log")).unwrap(),
        session_log(&env, &s.vm, &s.id)
    );
    // Read again, it comes from the archive: no call.
    env.clear_calls();
    let out = env.run(&["output", &s.id, "--follow", "--raw", "-n", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, session_log(&env, &s.vm, &s.id));
    assert_eq!(connects(&env), 0);
}

#[test]
fn follow_survives_dropped_connections_byte_for_byte() {
    let env = TestEnv::new();
    let s = env.start_running("TICK=40");
    env.clear_calls();
    // The next two connections are cut after 1 s each, as a flaky network would.
    std::fs::write(env.azlin_home().join("drop-after"), "1 2\n").unwrap();
    let out = env.run(&["output", &s.id, "--follow", "--raw", "-n", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        out.stdout,
        session_log(&env, &s.vm, &s.id),
        "nothing twice, nothing skipped"
    );
    assert!(stdout(&out).contains("tick 40"));
    // Three for the stream (two of them cut), one for the archive.
    assert_eq!(connects(&env), 4, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("reconnecting in").count(),
        2,
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_frozen_connection_is_noticed_by_its_silence_and_reopened() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_STREAM_TIMEOUT", "3");
    let s = env.start_running("TICK=30");
    std::fs::write(env.azlin_home().join("freeze-next"), "1\n").unwrap();
    let out = env.run(&["output", &s.id, "--follow", "--raw", "-n", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("taken for dead"), "{}", stderr(&out));
    assert_eq!(out.stdout, session_log(&env, &s.vm, &s.id));
}

#[test]
fn follow_gives_up_with_exit_4_when_the_vm_stays_unreachable() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_RECONNECT_FOR", "2");
    let s = env.start_running("SLEEP=60");
    std::fs::write(env.azlin_home().join("drop-after"), "1 1\n").unwrap();
    let child = env
        .std_cmd(&["output", &s.id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first connection is up, the VM goes away for good.
    env.wait_for("the follow's connection", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "connect")
    });
    env.fault(&format!("vms/{}/unreachable", s.vm));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("gave up after 2s"));
    env.clear_fault(&format!("vms/{}/unreachable", s.vm));
    assert_eq!(
        env.session(&s.id)["status"],
        "running",
        "the session is untouched"
    );
}

#[test]
fn follow_streams_on_the_local_backend_too() {
    let env = TestEnv::local();
    let out = env.run(&["start", "--no-context", "--json", "TICK=15"]);
    let id = started_ids(&out).remove(0);
    let out = env.run(&["output", &id, "--follow", "--raw", "-n", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let log = std::fs::read(
        env.home()
            .join(".amplihack/remote/sessions")
            .join(&id)
            .join("output.log"),
    )
    .unwrap();
    assert_eq!(out.stdout, log);
    assert!(stdout(&out).contains("tick 15"));
}

#[test]
fn follow_of_a_session_gone_from_its_vm_exits_3() {
    let env = TestEnv::new();
    let s = env.start_running("SLEEP=60");
    assert_eq!(code(&env.run(&["kill", "--force", &s.id])), 0);
    std::fs::remove_dir_all(env.session_dir(&s.vm, &s.id)).unwrap();
    // The kill brought its results home; with the archive gone too, nothing of it is left.
    std::fs::remove_dir_all(env.archive_dir().join(&s.id)).unwrap();
    let out = env.run(&["output", &s.id, "--follow"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("Session not found on VM"));
}

#[test]
fn wait_prints_each_end_and_exits_by_the_worst() {
    let env = TestEnv::new();
    env.prime(2, "m");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "SLEEP=1",
        "SLEEP=2 EXIT=3",
        "SLEEP=1",
        "SLEEP=3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    env.clear_calls();
    let out = env.run(&["wait"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    for id in &ids {
        assert!(text.contains(id.as_str()), "{text}");
    }
    assert!(
        text.contains(&format!("{} failed (exit 3) after", ids[1])),
        "{text}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "1 of 4 session(s) did not complete: {} failed (exit 3)",
            ids[1]
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        connects(&env),
        4,
        "one connection per VM for the whole wait, then one per VM for the archives"
    );
    // Each end is recorded, and each session's results are home.
    for id in &ids {
        assert!(!matches!(
            env.session(id)["status"].as_str(),
            Some("running" | "pending")
        ));
        assert!(env.session(id)["archived_at"].is_string(), "{id}");
    }
    // Idempotent: finished sessions return at once, with no call.
    env.clear_calls();
    let out = env.run(&["wait", &ids[0], &ids[2], "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["session_id"], ids[0].as_str());
    assert_eq!(lines[0]["status"], "completed");
    assert_eq!(connects(&env), 0);
}

#[test]
fn wait_exit_codes_for_unknown_ids_timeouts_and_kills() {
    let env = TestEnv::new();
    let s = env.start_running("TRAP SLEEP=60");
    let out = env.run(&["wait", &s.id, "sess-20200101-000000-beef"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("sess-20200101-000000-beef"));
    let out = env.run(&["wait", &s.id, "--timeout", "1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    // A kill from elsewhere while waiting: the end is `killed`, and wait says so (exit 1).
    let child = env
        .std_cmd(&["wait", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for("wait's connection", Duration::from_secs(20), || {
        env.calls().iter().filter(|c| c[0] == "connect").count() >= 3
    });
    assert_eq!(code(&env.run(&["kill", &s.id])), 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["status"], "killed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed"));
}

#[test]
fn wait_follows_a_session_from_its_launch_and_across_a_drop() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "2");
    std::fs::write(env.azlin_home().join("unreachable-next"), "1").unwrap();
    let start = env
        .std_cmd(&["start", "--no-context", "SLEEP=4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("the reservation", Duration::from_secs(20), || {
        env.state_path().exists() && !env.session_ids().is_empty()
    });
    // Waited for while its start still launches it (pending), then watched; the watch is cut.
    std::fs::write(env.azlin_home().join("drop-after"), "1 1\n").unwrap();
    let out = env.run(&["wait"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("completed (exit 0)"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("reconnecting"), "{}", stderr(&out));
    let mut start = start;
    assert!(start.wait().unwrap().success());
}
