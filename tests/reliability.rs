//! Reliability: crashes mid-transaction, concurrent starts against finite capacity, Ctrl+C,
//! faults from azlin and hostile input. docs/reliability.md records what each shows.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn sigint(child: &Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

/// The child's output once it exits; a child still running after 120 s is a hang (the
/// stand-in's faults hang for an hour): it is ended and the test fails.
fn wait_output(mut child: Child) -> std::process::Output {
    let began = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            panic!("the command still ran after 120 s: it waited for a hung azlin");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    env.std_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The process exits 130 and leaves no session pending.
fn assert_interrupted(env: &TestEnv, child: Child) {
    let out = wait_output(child);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_pending(env);
}

/// A launch whose answer was lost leaves its sessions pending, unconfirmed (they may run),
/// until the next refresh asks their VM: that refresh, once the fault is gone, settles them.
fn unconfirmed_until_a_refresh(env: &TestEnv, clear: &str) {
    let st = env.state();
    for s in st["sessions"].as_object().unwrap().values() {
        assert_eq!(s["status"], "pending", "{s}");
        assert!(
            s["error"].as_str().unwrap().contains("the next refresh"),
            "{s}"
        );
    }
    env.clear_fault(clear);
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    no_pending(env);
}

fn no_pending(env: &TestEnv) {
    let st = env.state();
    for s in st["sessions"].as_object().unwrap().values() {
        assert_ne!(s["status"], "pending", "a session was left pending: {s}");
    }
}

/// A state in which the local pool is full, so every `start --local` is one transaction that
/// records a failed session and touches nothing else; plus enough history to make the write
/// take a while, so kills land inside it.
fn full_local_pool_state(history: usize) -> String {
    let mut sessions = serde_json::Map::new();
    let base = |id: &str, status: &str| {
        serde_json::json!({
            "session_id": id, "vm_name": "local", "workspace": "/w", "tmux_session": id,
            "prompt": "history ".repeat(20), "command": "auto", "max_turns": 10, "status": status,
            "memory_mb": 32768, "created_at": "2026-01-01T00:00:00Z", "started_at": null,
            "completed_at": null, "exit_code": null
        })
    };
    sessions.insert(
        "sess-holding-the-slot".into(),
        base("sess-holding-the-slot", "pending"),
    );
    for i in 0..history {
        let id = format!("sess-history-{i:05}");
        sessions.insert(id.clone(), base(&id, "completed"));
    }
    serde_json::json!({
        "sessions": sessions,
        "vm_pool": {"local": {"size": "local", "capacity": 1, "active_sessions": [], "region": "local",
                              "created_at": "2026-01-01T00:00:00Z", "backend": "local"}}
    })
    .to_string()
}

#[test]
fn sigkill_at_random_points_never_corrupts_or_loses_a_returned_transaction() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    env.write_state(&full_local_pool_state(1000));
    // Time three writers, then spread kill delays deterministically over twice the median
    // life, so some kills land before, some inside and some after the transaction.
    let mut lives: Vec<u64> = (0..3)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(
                code(&env.run(&[
                    "start",
                    "--no-queue",
                    "--no-context",
                    &format!("calibration {i}")
                ])),
                1
            );
            t.elapsed().as_micros() as u64
        })
        .collect();
    lives.sort();
    let life_us = (lives[1] * 2).max(1000);
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut landed = Vec::new();
    let (mut returned, mut killed) = (0, 0);
    for i in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % life_us);
        let prompt = format!("writer {i}");
        let mut child = spawn(&env, &["start", "--no-queue", "--no-context", &prompt]);
        std::thread::sleep(delay);
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let status = child.wait().unwrap();
        if status.code() == Some(1) {
            returned += 1;
            landed.push(prompt);
        } else {
            killed += 1;
        }
        let text = std::fs::read_to_string(env.state_path()).unwrap();
        let st: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("state corrupt after kill {i}: {e}"));
        let prompts: Vec<&str> = st["sessions"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|s| s["prompt"].as_str())
            .collect();
        for p in &landed {
            assert!(
                prompts.contains(&p.as_str()),
                "transaction of {p} had returned but is lost"
            );
        }
    }
    eprintln!("crash test: {returned} writers returned, {killed} killed, writer life {life_us} us");
    assert!(
        returned >= 5 && killed >= 5,
        "the kills should spread: {returned} returned, {killed} killed"
    );
    // No temp file survives the next transaction.
    let out = env.run(&["start", "--no-queue", "--no-context", "last"]);
    assert_eq!(code(&out), 1);
    let leftovers: Vec<_> = std::fs::read_dir(env.state_path().parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sixteen_starts_against_finite_capacity_never_overfill_or_lose_a_session() {
    let env = TestEnv::new();
    // At most 3 VMs fit the region's quota; m VMs hold 2 sessions: 6 slots for 16 starts.
    std::fs::create_dir_all(env.azlin_home().join("quota")).unwrap();
    std::fs::write(env.azlin_home().join("quota/eastus"), "3").unwrap();
    let children: Vec<Child> = (0..16)
        .map(|i| {
            spawn(
                &env,
                &[
                    "start",
                    "--no-context",
                    "--size",
                    "m",
                    "--json",
                    &format!("SLEEP=60 n{i}"),
                ],
            )
        })
        .collect();
    let mut codes = Vec::new();
    for c in children {
        let out = wait_output(c);
        assert_no_secret(&out.stdout, "stdout");
        assert_no_secret(&out.stderr, "stderr");
        codes.push(out.status.code().unwrap());
    }
    assert!(
        codes.iter().all(|c| [0, 5].contains(c)),
        "undocumented exit codes: {codes:?}"
    );
    let st = env.state();
    let sessions = st["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 16, "a session was lost");
    no_pending(&env);
    let running = sessions
        .values()
        .filter(|s| s["status"] == "running")
        .count();
    assert_eq!(running, codes.iter().filter(|c| **c == 0).count());
    assert!((1..=6).contains(&running), "{running} running");
    for (name, vm) in st["vm_pool"].as_object().unwrap() {
        let on_vm = sessions
            .values()
            .filter(|s| s["vm_name"] == name.as_str() && s["status"] == "running")
            .count();
        assert!(
            on_vm as u64 <= vm["capacity"].as_u64().unwrap(),
            "{name} over capacity"
        );
        assert!(
            env.vm_dir(name).join("meta").exists(),
            "tracked VM {name} does not exist"
        );
    }
    // Every VM that exists is tracked.
    for vm in std::fs::read_dir(env.azlin_home().join("vms"))
        .unwrap()
        .flatten()
    {
        let name = vm.file_name().to_string_lossy().into_owned();
        assert!(
            st["vm_pool"].get(&name).is_some(),
            "VM {name} exists but is untracked"
        );
    }
}

#[test]
fn ctrl_c_while_provisioning_exits_130_and_keeps_the_vm_tracked() {
    let env = TestEnv::new();
    env.fault("hang-new");
    let child = spawn(&env, &["start", "--no-context", "a", "b"]);
    env.wait_for("azlin new", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "new")
    });
    // azlin new hangs for an hour: exiting at all (wait_output's 120 s) shows Ctrl+C does not
    // wait for provisioning.
    sigint(&child);
    assert_interrupted(&env, child);
    let st = env.state();
    let vms = st["vm_pool"].as_object().unwrap();
    assert_eq!(vms.len(), 1, "the VM azlin may have created stays tracked");
    let vm = vms.values().next().unwrap();
    assert_eq!(vm["state"], "failed");
    assert!(
        vm["error"].as_str().unwrap().contains("interrupted"),
        "{vm}"
    );
    let status: Value =
        serde_json::from_slice(&env.run(&["status", "--json", "--no-refresh"]).stdout).unwrap();
    assert_eq!(status["capacity"]["used"], 0, "no slot is held");
}

#[test]
fn ctrl_c_while_launching_lets_the_launch_finish_then_exits_130() {
    let mut env = TestEnv::new();
    env.prime(1, "l");
    env.set("FAKE_AZLIN_DELAY", "1.5");
    let child = spawn(&env, &["start", "--no-context", "SLEEP=60", "SLEEP=60"]);
    env.wait_for("the launch call", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "connect")
    });
    sigint(&child);
    assert_interrupted(&env, child);
    let st = env.state();
    for s in st["sessions"].as_object().unwrap().values() {
        assert_eq!(
            s["status"], "running",
            "the launch completed, so the state says running: {s}"
        );
    }
}

#[test]
fn a_second_ctrl_c_abandons_a_hung_launch_without_leaving_pending_sessions() {
    let env = TestEnv::new();
    env.prime(1, "l");
    env.fault("hang-connect");
    let child = spawn(&env, &["start", "--no-context", "SLEEP=60"]);
    env.wait_for("the launch call", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "connect")
    });
    sigint(&child);
    // Two presses, not one: identical signals pending at once would merge into one.
    std::thread::sleep(Duration::from_millis(300));
    sigint(&child);
    let out = wait_output(child);
    assert_eq!(code(&out), 130, "{}", stderr(&out));
    env.clear_fault("hang-connect");
    // Whether it runs is settled by the next refresh: it never launched, so it failed.
    let id = env.session_ids().remove(0);
    assert_eq!(env.session(&id)["status"], "pending");
    assert!(
        env.session(&id)["error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    let s = env.wait_finished(&id);
    assert_eq!(s["status"], "failed");
}

#[test]
fn ctrl_c_stops_following_while_the_session_keeps_running() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=60"]);
    let id = started_ids(&out).remove(0);
    env.clear_calls();
    let log = env.root().join("follow.err");
    let child = env
        .std_cmd(&["output", &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    env.wait_for("following to begin", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Following")
    });
    sigint(&child);
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("=== Session: {id} ===")));
    assert_eq!(env.session(&id)["status"], "running");
}

#[test]
fn azlin_not_installed() {
    let mut env = TestEnv::new();
    std::fs::remove_file(env.root().join("bin/azlin")).unwrap();
    env.set("PATH", "/usr/bin:/bin");
    let out = env.run(&["start", "--no-context", "x"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("azlin not found ('azlin' is not on PATH). Install azlin"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.state()["vm_pool"].as_object().unwrap().is_empty(),
        "nothing was created, nothing is tracked"
    );
    no_pending(&env);
    env.set("AMPLIHACK_AZLIN", "/nonexistent/azlin");
    let out = env.run(&["prime"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("/nonexistent/azlin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn azlin_printing_garbage_fails_clearly_and_the_state_stays_true() {
    let env = TestEnv::new();
    env.prime(1, "l");
    env.fault("garbage-connect");
    let out = env.run(&["start", "--no-context", "x"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("failed (exit 1): }{ not json at all")
            || stderr(&out).contains("Traceback"),
        "{}",
        stderr(&out)
    );
    unconfirmed_until_a_refresh(&env, "garbage-connect");
    env.fault("garbage-list");
    let out = env.run(&["status"]);
    assert_eq!(
        code(&out),
        0,
        "a garbled power listing is a warning: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("could not read VM power states"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn azlin_hanging_past_its_timeout() {
    let mut env = TestEnv::new();
    env.prime(1, "l");
    env.set("AMPLIHACK_REMOTE_TIMEOUT", "1");
    env.fault("hang-connect");
    // The connect hangs for an hour: the run's own 120 s ceiling (TestEnv::cmd) and the
    // message show the 1 s timeout applied.
    let out = env.run(&["start", "--no-context", "x"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no answer within 1s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&env.run(&["list"])), 0, "list survives a hung VM");
    unconfirmed_until_a_refresh(&env, "hang-connect");
    env.fault("hang-new");
    let out = env.run(&["prime"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("timed out after 1s"),
        "{}",
        stderr(&out)
    );
    let failed = env.state()["vm_pool"]
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v["state"] == "failed")
        .count();
    assert_eq!(
        failed, 1,
        "a VM whose creation timed out may exist: it stays tracked"
    );
}

#[test]
fn azure_login_and_half_created_vms() {
    let env = TestEnv::new();
    env.fault("auth");
    let out = env.run(&["start", "--no-context", "x"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Run 'az login' and try again"),
        "{}",
        stderr(&out)
    );
    env.clear_fault("auth");
    env.fault("new-fails");
    let out = env.run(&["start", "--no-context", "x"]);
    assert_eq!(code(&out), 1);
    let st = env.state();
    let (name, vm) = st["vm_pool"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(vm["state"], "failed");
    assert!(
        env.vm_dir(name).exists(),
        "azlin left the VM behind, and we still track it"
    );
    env.clear_fault("new-fails");
    let out = env.run(&["prune", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(name).exists());
}

#[test]
fn hostile_prompts_arrive_byte_exact() {
    let env = TestEnv::new();
    let big: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect::<String>()
        + "'\"$(x)`y`";
    let binaryish: String = (1u8..=0x7f)
        .filter(|b| *b != b'\n')
        .map(|b| b as char)
        .collect::<String>()
        + "\u{80}\u{ff}\u{fffd}\u{10ffff}";
    let metachars = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \t\n$((1+1)) ${x:-y} $'\\x41' <<EOF\nEOF\n";
    let out = env.run(&[
        "start",
        "--no-context",
        "--json",
        "--",
        &big,
        &binaryish,
        metachars,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for (id, prompt) in started_ids(&out)
        .iter()
        .zip([&big, &binaryish, &metachars.to_string()])
    {
        let vm = env.vm_of(id);
        let rec = env.agent_record(&vm, id);
        env.wait_for("agent record", Duration::from_secs(30), || {
            rec.join("argv").exists()
        });
        env.wait_for("prompt", Duration::from_secs(30), || {
            std::fs::read(rec.join("prompt"))
                .map(|p| p.len() == prompt.len())
                .unwrap_or(false)
        });
        assert_eq!(
            std::fs::read(rec.join("prompt")).unwrap(),
            prompt.as_bytes()
        );
        assert_eq!(env.session(id)["prompt"].as_str().unwrap(), prompt.as_str());
    }
    let list = stdout(&env.run(&["list"]));
    assert_eq!(
        list.lines().count(),
        4,
        "prompts cannot break the table: {list}"
    );
    assert!(!list.contains('\x1b') && !list.contains('\x07'));
}

#[test]
fn non_utf8_arguments_are_rejected_with_exit_2() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new();
    let out = env
        .std_cmd(&["start", "--no-context"])
        .arg(std::ffi::OsStr::from_bytes(b"bad \xff prompt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid UTF-8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hangup_mid_provisioning_unwinds_like_ctrl_c() {
    let env = TestEnv::new();
    env.fault("hang-new");
    let child = spawn(&env, &["start", "--no-context", "a"]);
    env.wait_for("azlin new", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "new")
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    assert_interrupted(&env, child);
    let st = env.state();
    assert_eq!(
        st["vm_pool"].as_object().unwrap().values().next().unwrap()["state"],
        "failed"
    );
}
