//! The queue the VMs run themselves: more prompts than slots wait on a VM and start on their
//! own as slots free, with nothing of ours running in between.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// (start, finish) in nanoseconds of each agent that ran, from the stand-in agent's records.
fn agent_spans(records: &Path) -> Vec<(u128, u128)> {
    let mut spans = Vec::new();
    for dir in std::fs::read_dir(records).into_iter().flatten().flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(dir.path().join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u128>().ok())
        };
        if let (Some(a), Some(b)) = (read("started_ns"), read("finished_ns")) {
            spans.push((a, b));
        }
    }
    spans
}

/// The most agents that ever ran at once.
fn most_at_once(spans: &[(u128, u128)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(a, b)| a <= start && start < b)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn statuses(env: &TestEnv) -> Vec<String> {
    let mut s: Vec<String> = env.state()["sessions"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    s.sort();
    s
}

#[test]
fn six_prompts_on_two_slots_run_two_at_a_time_with_nothing_of_ours_alive() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    // The first two outlast the start (on a loaded machine placing six takes seconds), so
    // the other four are queued when it answers.
    let prompts = [
        "SLEEP=8", "SLEEP=8", "SLEEP=1", "SLEEP=1", "SLEEP=1", "SLEEP=1",
    ];
    let mut args = vec!["start", "--no-context", "--json"];
    args.extend(prompts);
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queued = started
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "queued")
        .count();
    assert_eq!(queued, 4, "{started}");
    // Nothing of ours runs now: the sessions start one another.
    let records = env.home().join("agent-records");
    env.wait_for("all six agents to finish", Duration::from_secs(60), || {
        agent_spans(&records).len() == 6
    });
    let spans = agent_spans(&records);
    assert_eq!(most_at_once(&spans), 2, "{spans:?}");
    // An agent's finish record comes just before it exits; its supervisor records the exit a
    // moment later.
    env.wait_for("all six to be completed", Duration::from_secs(30), || {
        let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed")
    });
    let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 6);
    for s in list.as_array().unwrap() {
        assert!(s["started_at"].is_string(), "{s}");
    }
}

#[test]
fn two_sessions_ending_together_start_two_distinct_queued_ones() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "SLEEP=1",
        "SLEEP=1",
        "SLEEP=1 q1",
        "SLEEP=1 q2",
        "SLEEP=1 q3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let records = env.home().join("agent-records");
    env.wait_for("all five agents", Duration::from_secs(60), || {
        agent_spans(&records).len() == 5
    });
    // Each session's agent ran exactly once (one record directory each), never 3 at once.
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 5);
    assert!(most_at_once(&agent_spans(&records)) <= 2);
    // An agent's finish record comes just before it exits; its supervisor records the exit a
    // moment later (after ending the agent's group and writing what it produced).
    env.wait_for("all five to be completed", Duration::from_secs(30), || {
        env.run(&["list"]);
        statuses(&env) == vec!["completed"; 5]
    });
}

#[test]
fn a_queued_session_can_be_killed_and_never_starts() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "SLEEP=3",
        "SLEEP=1 doomed",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert_eq!(env.session(&ids[1])["status"], "queued");
    // output says where it waits; list and status show the queue.
    let out = env.run(&["output", &ids[1]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is queued on local (place 1 of 1)"),
        "{}",
        stderr(&out)
    );
    let list = env.run(&["list", "--status", "queued", "--no-refresh"]);
    assert!(stdout(&list).contains(&ids[1]) && !stdout(&list).contains(&ids[0]));
    let status = stdout(&env.run(&["status", "--no-refresh"]));
    assert!(status.contains("    Queued: 1"), "{status}");
    assert!(status.contains("  Queued: 1"), "{status}");
    let out = env.run(&["kill", &ids[1]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("taken out of the queue"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.session(&ids[1])["status"], "killed");
    let first = env.wait_finished(&ids[0]);
    assert_eq!(first["status"], "completed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !env.agent_record("local", &ids[1]).exists(),
        "the killed queued session started"
    );
    assert_eq!(env.session(&ids[1])["status"], "killed");
}

#[test]
fn a_capped_pool_queues_instead_of_provisioning() {
    let env = TestEnv::new();
    let vm = env.prime(1, "m").remove(0);
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "--max-vms",
        "1",
        // Long enough that no queued session has started when the launch answers (it says
        // where each queued session waits once all are placed).
        "SLEEP=4",
        "SLEEP=4",
        "SLEEP=4",
        "SLEEP=4",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !env.calls().iter().any(|c| c[0] == "new"),
        "no VM provisioned"
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queued: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "queued")
        .collect();
    assert_eq!(queued.len(), 2);
    let records = env.vm_dir(&vm).join("home/agent-records");
    env.wait_for("all four agents", Duration::from_secs(60), || {
        agent_spans(&records).len() == 4
    });
    assert_eq!(most_at_once(&agent_spans(&records)), 2);
    // The last supervisor records its exit a moment after its agent's finish record.
    env.wait_for("all four to be completed", Duration::from_secs(30), || {
        env.run(&["list"]);
        statuses(&env) == vec!["completed"; 4]
    });
    // Uncapped, the same start provisions on demand, as the specification says.
    env.clear_calls();
    let out = env.run(&["start", "--no-context", "SLEEP=30", "SLEEP=30", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.calls().iter().filter(|c| c[0] == "new").count(), 1);
}

#[test]
fn no_queue_keeps_failing_what_does_not_fit() {
    let env = TestEnv::new();
    env.prime(1, "s");
    let out = env.run(&[
        "start",
        "--no-context",
        "--max-vms",
        "1",
        "--no-queue",
        "SLEEP=30",
        "SLEEP=30",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 of 2 session(s) started; 1 failed"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("--no-queue"), "{}", stdout(&out));
}

#[test]
fn queued_work_left_without_a_supervisor_is_started_by_the_next_command() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=60", "LINES=1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let dir = env.home().join(".amplihack/remote/sessions").join(&ids[0]);
    env.wait_for("the first agent", Duration::from_secs(20), || {
        dir.join("agent.pid").exists()
    });
    // "Reboot": the supervisor and the agent die at once; nobody is left to start the queue.
    let pid = |f: &str| -> i32 {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    unsafe {
        libc::kill(pid("supervisor.pid"), libc::SIGKILL);
        libc::kill(-pid("agent.pid"), libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.session(&ids[1])["status"], "queued");
    // The next refresh starts it, with the key from this environment.
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let second = env.wait_finished(&ids[1]);
    assert_eq!(second["status"], "completed", "{second}");
    let env_file = std::fs::read(env.agent_record("local", &ids[1]).join("env")).unwrap();
    assert!(
        String::from_utf8_lossy(&env_file).contains(&format!("ANTHROPIC_API_KEY={SECRET}")),
        "the queued agent got the key"
    );
    assert_eq!(env.session(&ids[0])["status"], "failed");
}

/// A VM slow to start tmux sessions: between leaving the queue and having a supervisor, a
/// session must never look dead to `wait`, a refresh or `kill` (found by review: completed
/// sessions were recorded failed, wait hung, a kill was lost).
#[test]
fn a_session_on_its_way_out_of_the_queue_never_looks_dead() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let slow_tmux = env.root().join("bin/tmux");
    std::fs::write(
        &slow_tmux,
        "#!/bin/sh\n[ \"$1\" = new-session ] && sleep 1.5\nexec /usr/bin/tmux \"$@\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&slow_tmux)
        .status()
        .unwrap();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=1 A", "SLEEP=2 B"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let out = env.run(&["wait", "--timeout", "60"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    for id in &ids {
        assert_eq!(
            env.session(id)["status"],
            "completed",
            "{}",
            env.session(id)
        );
    }
    // And a kill racing the start from the queue reaches the agent.
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "SLEEP=1 C",
        "TRAP SLEEP=30 D",
    ]);
    let ids = started_ids(&out);
    let queued = env
        .home()
        .join(".amplihack/remote/sessions")
        .join(&ids[1])
        .join("queued");
    env.wait_for("D to leave the queue", Duration::from_secs(30), || {
        !queued.exists()
    });
    let out = env.run(&["kill", &ids[1]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.session(&ids[1])["status"], "killed", "{}", stdout(&out));
    env.wait_for("D's agent to end", Duration::from_secs(30), || {
        std::fs::read_to_string(env.agent_record("local", &ids[1]).join("signals"))
            .is_ok_and(|s| s.contains("TERM"))
    });
}
