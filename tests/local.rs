//! The local backend: this machine as the pool VM `local`, with the same lifecycle as a
//! remote VM and no azlin at all.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

/// This machine's memory in GB (rounded up), as `status` shows it for the local backend.
fn machine_memory_gb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    (kb * 1024).div_ceil(1 << 30)
}

use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn the_whole_lifecycle_runs_on_this_machine() {
    let env = TestEnv::local();
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "LINES=2 SLEEP=1",
        "EXIT=2 SLEEP=1",
        "TRAP SLEEP=60",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert!(
        env.calls().is_empty(),
        "the local backend never calls azlin"
    );
    for id in &ids {
        let s = env.session(id);
        assert_eq!(s["vm_name"], "local");
        assert_eq!(
            s["workspace"],
            env.home()
                .join(".amplihack/workspaces")
                .join(id)
                .display()
                .to_string()
        );
        assert!(env.home().join(".amplihack/workspaces").join(id).is_dir());
    }
    let vm = &env.state()["vm_pool"]["local"];
    assert_eq!(
        (
            vm["region"].as_str(),
            vm["capacity"].as_u64(),
            vm["backend"].as_str()
        ),
        (Some("local"), Some(4), Some("local"))
    );

    let list = stdout(&env.run(&["list"]));
    assert_eq!(list.matches("  local  ").count(), 3, "{list}");

    env.wait_for("agent lines", Duration::from_secs(20), || {
        stdout(&env.run(&["output", &ids[0], "--raw"])).contains("agent line 2")
    });
    env.wait_for("trap agent", Duration::from_secs(20), || {
        env.agent_record("local", &ids[2]).join("env").exists()
    });
    let out = env.run(&["kill", &ids[2]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.agent_record("local", &ids[2]).join("signals")).unwrap(),
        "TERM\n"
    );

    assert_eq!(env.wait_finished(&ids[0])["status"], "completed");
    let failed = env.wait_finished(&ids[1]);
    assert_eq!(
        (failed["status"].as_str(), failed["exit_code"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(env.session(&ids[2])["status"], "killed");

    let status = stdout(&env.run(&["status"]));
    assert!(
        status.contains(&format!(
            "  local (this machine)\n    Sessions: 0/4 (0% capacity)\n    Memory: 0GB/{}GB used\n",
            machine_memory_gb()
        )),
        "{status}"
    );
    assert!(
        status.contains(
            "Sessions: 3 total\n  Running: 0\n  Completed: 1\n  Failed: 1\n  Killed: 1\n"
        ),
        "{status}"
    );

    let out = env.run(&["output", &ids[0]]);
    assert!(
        stdout(&out).contains("Status: completed\n"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).ends_with("agent line 2\nagent: finished\n"));
}

#[test]
fn recorded_timestamps_are_whole_seconds() {
    let env = TestEnv::local();
    let out = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    env.wait_finished(&id);
    let st = env.state();
    let s = &st["sessions"][&id];
    for field in ["created_at", "started_at", "completed_at"] {
        assert!(is_whole_second_utc(&s[field]), "{field}: {}", s[field]);
    }
    assert!(
        is_whole_second_utc(&st["vm_pool"]["local"]["created_at"]),
        "{}",
        st["vm_pool"]["local"]["created_at"]
    );
}

#[test]
fn with_no_queue_a_full_local_pool_fails_the_extra_prompts_without_holding_slots() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    let out = env.run(&[
        "start",
        "--no-queue",
        "--no-context",
        "SLEEP=30",
        "SLEEP=30",
        "SLEEP=30",
    ]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains("2 of 3 session(s) started; 1 failed:"),
        "{text}"
    );
    assert!(
        text.contains("no free slot on 'local' (all 2 in use)"),
        "{text}"
    );
    let status: Value =
        serde_json::from_slice(&env.run(&["status", "--json", "--no-refresh"]).stdout).unwrap();
    assert_eq!(
        status["capacity"],
        serde_json::json!({"used": 2, "total": 2, "available": 0})
    );
}

#[test]
fn local_slots_default_to_the_memory_of_this_machine() {
    let mut env = TestEnv::local();
    env.unset("AMPLIHACK_LOCAL_SLOTS");
    let out = env.run(&["start", "--no-context", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let expected = (kb / (32 * 1024 * 1024)).max(1);
    assert_eq!(env.state()["vm_pool"]["local"]["capacity"], expected);
}

#[test]
fn start_local_flag_selects_the_backend_and_shares_the_state_with_azure() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Without AMPLIHACK_REMOTE_AGENT the local backend runs the other `amplihack` on PATH
    // (the Python one): here the stand-in agent plays it.
    std::os::unix::fs::symlink(
        support("vm-bin/amplihack"),
        env.root().join("bin/amplihack"),
    )
    .unwrap();
    let out = env.run(&["start", "--local", "--no-context", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let st = env.state();
    assert_eq!(
        st["vm_pool"].as_object().unwrap().len(),
        2,
        "an Azure VM and local"
    );
    let list = stdout(&env.run(&["list"]));
    assert!(
        list.contains("  local  ") && list.contains("amplihack-tester-"),
        "{list}"
    );
}

#[test]
fn a_git_repository_is_cloned_into_local_workspaces() {
    let env = TestEnv::local();
    env.git_repo();
    let out = env.run(&["start", "--json", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let ws = env.home().join(".amplihack/workspaces").join(&id);
    assert!(ws.join("README.md").exists());
    assert_eq!(
        git(&ws, &["rev-parse", "HEAD"]),
        git(&env.work(), &["rev-parse", "HEAD"])
    );
    assert_eq!(
        env.session(&id)["repo_path"],
        env.work().canonicalize().unwrap().display().to_string()
    );
}

#[test]
fn the_agent_command_can_be_replaced() {
    let mut env = TestEnv::local();
    let script = env.root().join("my agent.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$HOME/my-agent-args\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.set(
        "AMPLIHACK_REMOTE_AGENT",
        &format!("'{}' --model fast", script.display()),
    );
    env.unset("ANTHROPIC_API_KEY");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "--command",
        "fix",
        "do it",
    ]);
    assert_eq!(
        code(&out),
        0,
        "a custom agent needs no Anthropic key: {}",
        stderr(&out)
    );
    let args_file = env.home().join("my-agent-args");
    env.wait_for("custom agent", Duration::from_secs(20), || {
        args_file.exists()
            && std::fs::read_to_string(&args_file)
                .unwrap()
                .contains("do it")
    });
    assert_eq!(
        std::fs::read_to_string(&args_file).unwrap(),
        "--model\nfast\n--fix\n--max-turns\n10\n--\n-p\ndo it\n"
    );
}

#[test]
fn the_demo_agent_prints_its_prompt_and_fails_on_request() {
    let mut env = TestEnv::local();
    env.set(
        "AMPLIHACK_REMOTE_AGENT",
        &format!("{}/examples/demo-agent.sh", env!("CARGO_MANIFEST_DIR")),
    );
    env.set("DEMO_AGENT_STEP", "0.05");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "add a README badge",
        "please fail loudly",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert_eq!(env.wait_finished(&ids[0])["status"], "completed");
    assert_eq!(env.wait_finished(&ids[1])["exit_code"], 1);
    let text = stdout(&env.run(&["output", &ids[0], "--raw"]));
    assert!(
        text.contains("[demo-agent] prompt: add a README badge\n")
            && text.ends_with("[demo-agent] done.\n"),
        "{text}"
    );
}

#[test]
fn attach_without_a_terminal_exits_2() {
    let env = TestEnv::local();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=30"]);
    let id = started_ids(&out).remove(0);
    let out = env.run(&["attach", &id]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("attach needs a terminal"),
        "{}",
        stderr(&out)
    );
}
