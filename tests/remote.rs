//! Sessions on (stand-in) Azure VMs: start, list, output, kill and true status, end to end
//! through the stand-in azlin, real bash, real tmux and real git.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn connect_calls(env: &TestEnv) -> usize {
    env.calls().iter().filter(|c| c[0] == "connect").count()
}

#[test]
fn three_prompts_run_to_completion_and_free_their_slots() {
    let env = TestEnv::new();
    let out = env.run(&[
        "start",
        "--no-context",
        "--size",
        "l",
        "LINES=3 SLEEP=1",
        "EXIT=3 SLEEP=1",
        "SLEEP=30",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Starting 3 session(s)...\n[1/3] sess-"),
        "{text}"
    );
    assert!(text.contains("(new)"), "{text}");
    assert!(
        text.ends_with("Sessions started. Use 'amplihack remote list' to monitor.\n"),
        "{text}"
    );
    let ids = env.session_ids();
    assert_eq!(ids.len(), 3);
    // One new L VM holds all three.
    let vms: Vec<String> = env.state()["vm_pool"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(vms.len(), 1);
    assert!(vms[0].starts_with("amplihack-tester-"), "{vms:?}");
    assert_eq!(env.state()["vm_pool"][&vms[0]]["size"], "Standard_E16s_v5");
    let calls = env.calls();
    assert_eq!(calls.iter().filter(|c| c[0] == "new").count(), 1);
    assert_eq!(
        connect_calls(&env),
        1,
        "one launch call for the VM: {calls:?}"
    );
    let new = calls.iter().find(|c| c[0] == "new").unwrap();
    assert!(
        new.contains(&"--public".to_string()) && new.contains(&"--no-auto-connect".to_string())
    );
    assert!(!new.contains(&"--yes".to_string()));

    let list = env.run(&["list"]);
    assert_eq!(code(&list), 0);
    assert!(stdout(&list).starts_with("SESSION"), "{}", stdout(&list));

    let by_prompt = |p: &str| {
        let st = env.state();
        st["sessions"]
            .as_object()
            .unwrap()
            .values()
            .find(|s| s["prompt"] == p)
            .unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ok = by_prompt("LINES=3 SLEEP=1");
    let bad = by_prompt("EXIT=3 SLEEP=1");
    let long = by_prompt("SLEEP=30");
    let done = env.wait_finished(&ok);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["exit_code"], 0);
    assert!(done["completed_at"].as_str().unwrap().ends_with('Z'));
    let failed = env.wait_finished(&bad);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exit_code"], 3);

    // The kept log survives the tmux session.
    let out = env.run(&["output", &ok]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "=== Session: {ok} ===\nVM: {}\nStatus: completed\nCaptured: ",
            vms[0]
        )),
        "{text}"
    );
    assert!(text.contains("agent line 3\nagent: finished\n"), "{text}");

    // Slots: only the long session still holds one.
    let status: Value = serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["vms"][0]["active_sessions"],
        serde_json::json!([long])
    );
    assert_eq!(status["capacity"]["available"], 3);
    assert_eq!(
        env.state()["vm_pool"][&vms[0]]["active_sessions"],
        serde_json::json!([long])
    );
}

#[test]
fn output_of_a_running_session_shows_its_pane_and_raw_is_bare() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "LINES=5 SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    env.wait_for("agent output", Duration::from_secs(20), || {
        stdout(&env.run(&["output", &id, "--raw"])).contains("agent line 5")
    });
    let out = env.run(&["output", &id, "-n", "2"]);
    let text = stdout(&out);
    assert!(text.contains("Status: running\n"), "{text}");
    assert!(
        text.contains("(2 lines)\nagent line 4\nagent line 5\n"),
        "{text}"
    );
    let raw = stdout(&env.run(&["output", &id, "--raw", "--lines", "1"]));
    assert_eq!(raw, "agent line 5\n");
}

#[test]
fn follow_prints_new_lines_once_and_stops_when_the_session_ends() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=2 LINES=2 EXIT=4"]);
    let id = started_ids(&out).remove(0);
    let out = env.run(&["output", &id, "--follow", "--raw"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("agent line 1\n").count(), 1, "{text}");
    assert!(text.ends_with("agent: finished\n"), "{text}");
    assert!(
        stderr(&out).contains(&format!("Session {id} ended: failed (exit 4)")),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.session(&id)["status"], "failed");
}

#[test]
fn kill_sends_sigterm_to_the_agent_and_marks_killed() {
    let env = TestEnv::new();
    let Started { id, vm } = env.start_running("TRAP SLEEP=60");
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "Killing session: {id}\nSending SIGTERM...\nSession terminated.\nStatus updated: killed\n"
        )
    );
    let signals = std::fs::read_to_string(env.agent_record(&vm, &id).join("signals")).unwrap();
    assert_eq!(signals, "TERM\n");
    let s = env.session(&id);
    assert_eq!(s["status"], "killed");
    assert_eq!(s["exit_code"], 143);
    assert!(s["completed_at"].is_string());
    // The tmux session is gone and a second kill changes nothing.
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("already killed"), "{}", stdout(&out));
}

#[test]
fn force_kill_sends_sigkill() {
    let env = TestEnv::new();
    let Started { id, vm } = env.start_running("TRAP SLEEP=60");
    let out = env.run(&["kill", &id, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("Sending SIGKILL...\n"));
    assert!(
        !env.agent_record(&vm, &id).join("signals").exists(),
        "SIGKILL cannot be trapped"
    );
    assert_eq!(env.session(&id)["exit_code"], 137);
    assert_eq!(env.session(&id)["status"], "killed");
}

#[test]
fn a_term_ignoring_agent_is_killed_after_the_grace_period() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_KILL_GRACE", "1");
    let Started { id, vm } = env.start_running("IGNORE SLEEP=60");
    let pid = env.agent_pid(&vm, &id);
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Still running after 1s; sent SIGKILL.\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.session(&id)["status"], "killed");
    assert_eq!(env.session(&id)["exit_code"], 137);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent still alive"
    );
}

#[test]
fn prompts_reach_the_agent_byte_for_byte() {
    let env = TestEnv::new();
    let prompts = [
        "quotes ' \" and `backticks` and $(echo pwned) and ${HOME} and \\n literal",
        "line one\nline two\n\n  indented\ttab\n",
        "unicode: héllo wörld — 日本語 🚀 \u{202e}rtl",
        "shell: ; | & && || > < >> * ? [a] ~ ! # % ^ = {a,b} \\ '\"'",
        "-p --max-turns 99 -- starts like a flag",
    ];
    // A prompt that starts with '-' goes after '--', as with any command line.
    let mut args = vec!["start", "--no-context", "--json", "--"];
    args.extend(prompts.iter().copied());
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert_eq!(ids.len(), prompts.len());
    for (id, prompt) in ids.iter().zip(prompts) {
        let vm = env.vm_of(id);
        let rec = env.agent_record(&vm, id);
        env.wait_for("agent record", Duration::from_secs(30), || {
            rec.join("prompt").exists() && rec.join("argv").exists()
        });
        assert_eq!(
            std::fs::read(rec.join("prompt")).unwrap(),
            prompt.as_bytes(),
            "prompt of {id}"
        );
        let argv = std::fs::read(rec.join("argv")).unwrap();
        let words: Vec<&[u8]> = argv.split(|b| *b == 0).filter(|w| !w.is_empty()).collect();
        let tail: Vec<String> = words[1..words.len() - 1]
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        assert_eq!(
            tail,
            ["claude", "--auto", "--max-turns", "10", "--", "-p"],
            "agent argv"
        );
        assert_eq!(env.session(id)["prompt"], prompt);
    }
}

#[test]
fn command_mode_and_max_turns_and_memory_reach_the_agent() {
    let env = TestEnv::new();
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "--command",
        "ultrathink",
        "--max-turns",
        "30",
        "x",
    ]);
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    let rec = env.agent_record(&vm, &id);
    env.wait_for("agent record", Duration::from_secs(20), || {
        rec.join("env").exists()
    });
    let argv = String::from_utf8(std::fs::read(rec.join("argv")).unwrap()).unwrap();
    assert!(
        argv.contains("\0claude\0--ultrathink\0--max-turns\u{0}30\0--\0-p\0x\0"),
        "{argv:?}"
    );
    let envs = String::from_utf8(std::fs::read(rec.join("env")).unwrap()).unwrap();
    assert!(
        envs.split('\0')
            .any(|e| e == "NODE_OPTIONS=--max-old-space-size=32768")
    );
    assert!(
        envs.split('\0')
            .any(|e| e == format!("ANTHROPIC_API_KEY={SECRET}")),
        "the key reaches the agent"
    );
    let s = env.session(&id);
    assert_eq!(
        (s["command"].as_str(), s["max_turns"].as_u64()),
        (Some("ultrathink"), Some(30))
    );
    assert_eq!(s["memory_mb"], 32768);
    assert_eq!(s["workspace"], format!("~/workspace/{id}"));
    assert_eq!(
        std::fs::read_to_string(rec.join("cwd")).unwrap().trim(),
        env.vm_dir(&vm)
            .join("home/workspace")
            .join(&id)
            .display()
            .to_string()
    );
}

#[test]
fn the_api_key_never_appears_in_argv_state_logs_or_output() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=20", "SLEEP=20"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let vm = env.session(&ids[0])["vm_name"]
        .as_str()
        .unwrap()
        .to_string();
    env.wait_for("agents", Duration::from_secs(20), || {
        ids.iter()
            .all(|id| env.agent_record(&vm, id).join("env").exists())
    });
    // Every process on this machine, the agents included, while they run.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(SECRET),
                "key in argv of pid {:?}",
                entry.file_name()
            );
        }
    }
    let mut everything = stdout(&out) + &stderr(&out);
    for args in [
        &["list", "--verbose"][..],
        &["list", "--json"],
        &["status", "--json"],
        &["output", &ids[0]],
    ] {
        let o = env.run(args);
        everything += &(stdout(&o) + &stderr(&o));
    }
    everything += &std::fs::read_to_string(env.azlin_home().join("calls.log")).unwrap();
    everything += &std::fs::read_to_string(env.state_path()).unwrap();
    assert!(!everything.contains(SECRET));
    // On the VM the key file is gone once the run script has read it.
    let dir = env.session_dir(&vm, &ids[0]);
    assert!(!dir.join("secret").exists());
}

#[test]
fn quota_without_fallback_regions_exits_5_and_leaves_nothing_pending() {
    let env = TestEnv::new();
    env.fault("quota/eastus");
    let out = env.run(&["start", "--no-context", "task"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Azure quota exceeded"),
        "{}",
        stderr(&out)
    );
    let st = env.state();
    assert!(
        st["vm_pool"].as_object().unwrap().is_empty(),
        "no VM was created, none is tracked"
    );
    let s = st["sessions"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(s["status"], "failed");
}

#[test]
fn quota_falls_back_to_the_next_region() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_AZURE_REGIONS", "westus3,centralus");
    env.fault("quota/eastus");
    env.fault("quota/westus3");
    let out = env.run(&["start", "--no-context", "--json", "task"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    assert_eq!(env.state()["vm_pool"][&vm]["region"], "centralus");
    let regions: Vec<String> = env
        .calls()
        .iter()
        .filter(|c| c[0] == "new")
        .map(|c| c[c.iter().position(|w| w == "--region").unwrap() + 1].clone())
        .collect();
    assert_eq!(regions, ["eastus", "westus3", "centralus"]);
    // Every region out of quota: exit 5.
    env.fault("quota/centralus");
    let out = env.run(&[
        "start",
        "--no-context",
        "--size",
        "xl",
        "--region",
        "westus3",
        "a",
        "b",
        "c",
        "d",
        "e",
    ]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
}

#[test]
fn an_unreachable_vm_exits_4_for_output_and_kill_but_list_still_works() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=60"]);
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    env.fault(&format!("vms/{vm}/unreachable"));
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("VM '{vm}' is not reachable")),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 4);
    // What was done (nothing) and the way on.
    assert!(
        stderr(&out).contains("Nothing was signalled")
            && stderr(&out).contains(&format!("'amplihack remote kill --force {id}'")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.session(&id)["status"],
        "running",
        "no change without --force"
    );
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("running (vm unreachable)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("warning: could not refresh sessions on VM"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["kill", &id, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("marking"));
    assert_eq!(env.session(&id)["status"], "killed");
}

#[test]
fn an_unreachable_vm_fails_only_its_own_sessions_in_a_start() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    env.fault(&format!("vms/{}/unreachable", vms[1]));
    let out = env.run(&[
        "start",
        "--no-context",
        "--size",
        "s",
        "--json",
        "one",
        "two",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["vm_name"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(vms[0].as_str(), "running")),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(vms[1].as_str(), "failed")),
        "{statuses:?}"
    );
    let status: Value =
        serde_json::from_slice(&env.run(&["status", "--json", "--no-refresh"]).stdout).unwrap();
    assert_eq!(
        status["capacity"]["used"], 1,
        "the failed session holds no slot"
    );
}

#[test]
fn start_of_8_prompts_onto_2_existing_l_vms_makes_2_azlin_calls() {
    let env = TestEnv::new();
    env.prime(2, "l");
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let calls = env.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|c| c[0] == "connect"));
    for c in &calls {
        let dash = c.iter().position(|w| w == "--").unwrap();
        assert_eq!(&c[dash + 1..], ["bash -s"]);
        for flag in ["--no-tmux", "--no-reconnect", "--yes", "--no-status"] {
            assert!(
                c[..dash].contains(&flag.to_string()),
                "{flag} missing in {c:?}"
            );
        }
    }
    let status: Value =
        serde_json::from_slice(&env.run(&["status", "--json", "--no-refresh"]).stdout).unwrap();
    assert_eq!(status["capacity"]["used"], 8);
    assert_eq!(status["capacity"]["available"], 0);
}

#[test]
fn a_git_repository_is_sent_once_per_vm_and_cloned_per_session() {
    let env = TestEnv::new();
    env.git_repo();
    std::fs::write(env.work().join("dirty.txt"), "x").unwrap();
    common::git(&env.work(), &["add", "dirty.txt"]);
    let out = env.run(&["start", "--json", "SLEEP=30", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uncommitted changes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(connect_calls(&env), 1);
    let ids = started_ids(&out);
    let vm = env.session(&ids[0])["vm_name"]
        .as_str()
        .unwrap()
        .to_string();
    let head = common::git(&env.work(), &["rev-parse", "HEAD"]);
    for id in &ids {
        let ws = env.vm_dir(&vm).join("home/workspace").join(id);
        assert_eq!(common::git(&ws, &["rev-parse", "HEAD"]), head);
        assert_eq!(
            common::git(&ws, &["rev-parse", "--abbrev-ref", "HEAD"]),
            format!("amplihack/{id}")
        );
        assert!(ws.join("README.md").exists() && !ws.join("dirty.txt").exists());
        assert_eq!(env.session(id)["base_commit"], head.as_str());
    }
    let bundles = std::fs::read_dir(env.vm_dir(&vm).join("home/.amplihack/remote/context"))
        .unwrap()
        .count();
    assert_eq!(bundles, 1);
}

#[test]
fn outside_a_git_repository_start_needs_no_context() {
    let env = TestEnv::new();
    let out = env.run(&["start", "task"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not inside a git repository")
            && stderr(&out).contains("--no-context"),
        "{}",
        stderr(&out)
    );
    assert!(env.calls().is_empty(), "no remote work before the check");
}

#[test]
fn missing_api_key_fails_before_any_remote_work() {
    let mut env = TestEnv::new();
    env.unset("ANTHROPIC_API_KEY");
    let out = env.run(&["start", "--no-context", "task"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("ANTHROPIC_API_KEY is not set"),
        "{}",
        stderr(&out)
    );
    assert!(env.calls().is_empty());
    assert!(!env.state_path().exists());
}

#[test]
fn resource_group_is_passed_to_every_call() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_RESOURCE_GROUP", "my-rg");
    let out = env.run(&["start", "--no-context", "--json", "x"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for c in env.calls() {
        let i = c
            .iter()
            .position(|w| w == "--resource-group")
            .unwrap_or_else(|| panic!("{c:?}"));
        assert_eq!(c[i + 1], "my-rg");
    }
}

#[test]
fn ending_the_tmux_session_under_an_agent_ends_the_agent_and_records_it() {
    let env = TestEnv::new();
    let Started { id, vm } = env.start_running("TRAP SLEEP=60");
    let dir = env.session_dir(&vm, &id);
    let pid = env.agent_pid(&vm, &id);
    // Someone kills the VM's tmux server behind our back.
    std::process::Command::new("tmux")
        .arg("kill-server")
        .env_remove("TMUX")
        .env("TMUX_TMPDIR", env.vm_dir(&vm).join("tmp"))
        .status()
        .unwrap();
    // The agent dies of the hangup or of the SIGTERM the run script forwards, whichever comes
    // first; either way its end is recorded.
    let s = env.wait_finished(&id);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        [129, 143].contains(&s["exit_code"].as_i64().unwrap_or(0)),
        "{s}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent outlived its session"
    );
    // Nothing of the session is left running: the pane's tail exits with the run script.
    let needle = dir.join("output.log").display().to_string();
    env.wait_for("the pane's tail to exit", Duration::from_secs(10), || {
        std::fs::read_dir("/proc").unwrap().flatten().all(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| !String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(true)
        })
    });
}

#[test]
fn a_session_whose_tmux_session_vanished_without_a_run_script_is_failed() {
    let env = TestEnv::new();
    let Started { id, vm } = env.start_running("SLEEP=60");
    // The run script is SIGKILLed (say, the OOM killer): no exit code is ever recorded.
    let agent = env.agent_pid(&vm, &id);
    let status = std::fs::read_to_string(format!("/proc/{agent}/stat")).unwrap();
    let run_script: i32 = status
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    unsafe {
        libc::kill(-agent, libc::SIGKILL);
        libc::kill(run_script, libc::SIGKILL);
    }
    let s = env.wait_finished(&id);
    assert_eq!(s["status"], "failed");
    assert!(s["exit_code"].is_null(), "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("without recording an exit code"),
        "{s}"
    );
}

#[test]
fn a_new_vm_that_does_not_answer_ssh_yet_is_retried() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "0.1");
    std::fs::write(env.azlin_home().join("unreachable-next"), "2").unwrap();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not answer ssh yet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(connect_calls(&env), 3, "two refused, the third launched");
    let id = started_ids(&out).remove(0);
    assert_eq!(env.session(&id)["status"], "running");
    // A pool VM gets no retry: its failure is reported at once.
    std::fs::write(env.azlin_home().join("unreachable-next"), "1").unwrap();
    env.clear_calls();
    let out = env.run(&["start", "--no-context", "SLEEP=30"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(connect_calls(&env), 1);
}

#[test]
fn a_session_still_being_launched_cannot_be_killed() {
    let mut env = TestEnv::new();
    env.prime(1, "l");
    env.set("FAKE_AZLIN_DELAY", "2");
    let mut child = env
        .std_cmd(&["start", "--no-context", "SLEEP=30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("the reservation", Duration::from_secs(20), || {
        env.state_path().exists() && !env.session_ids().is_empty()
    });
    let id = env.session_ids().remove(0);
    env.set("FAKE_AZLIN_DELAY", "0");
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("still being launched"),
        "{}",
        stderr(&out)
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(env.session(&id)["status"], "running");
}
