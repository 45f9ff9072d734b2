//! One pool, several deciders: a second machine (another state file) and concurrent starts.
//! Nothing one of them does may delete, or multiply, what the others rely on.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// Case 9: machine B primed a VM and still believes it idle; machine A synced the pool and
/// runs one session there and queues another. B's `prune` asks the VM what it holds before it
/// deletes anything: the VM stays, and prune names A's sessions.
#[test]
fn a_second_machines_prune_never_deletes_a_vm_running_anothers_sessions() {
    let mut env = TestEnv::new();
    let machine_b: PathBuf = env.root().join("state/machine-b.json");
    let machine_a = env.state_path();
    // B makes the VM.
    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    let vm = env.prime(1, "s").remove(0);
    // A finds it and puts work on it: one running, one queued (one slot, a pool of one).
    env.set("AMPLIHACK_REMOTE_STATE", &machine_a.display().to_string());
    let out = env.run(&["sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.run(&[
        "start",
        "--no-context",
        "--max-vms",
        "1",
        "--json",
        "SLEEP=120",
        "SLEEP=120",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut ids = started_ids(&out);
    ids.sort();
    for id in &ids {
        assert_eq!(env.vm_of(id), vm);
    }

    // B prunes everything idle, by its own state.
    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    env.clear_calls();
    let out = env.run(&["prune", "--idle-minutes", "0", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("would be KEPT"), "{}", stdout(&out));
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["name"], vm.as_str());
    let result = report[0]["result"].as_str().unwrap();
    assert!(result.starts_with("KEPT"), "{report:#}");
    for id in &ids {
        assert!(result.contains(id.as_str()), "{report:#}");
    }
    let foreign: Vec<String> = report[0]["foreign_sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(foreign, ids);
    assert!(env.vm_dir(&vm).join("meta").exists(), "the VM lives");
    assert!(env.calls().iter().all(|c| c[0] != "kill"));
    // It asked the VM, one call per prune.
    let connects = env
        .calls()
        .iter()
        .filter(|c| c[0] == "connect" && c[1] == vm)
        .count();
    assert_eq!(connects, 2, "{:?}", env.calls());

    // Once A's sessions are over and A has brought their results home, B may delete it.
    env.set("AMPLIHACK_REMOTE_STATE", &machine_a.display().to_string());
    for id in &ids {
        assert_eq!(code(&env.run(&["kill", id])), 0);
    }
    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&vm).exists(), "{}", stdout(&out));
}

/// Case 11: twelve concurrent `start --size m` (two slots a VM) take six VMs, not twelve:
/// a start joins a VM another start is provisioning, waits for it, and launches there.
#[test]
fn concurrent_starts_share_the_vms_being_provisioned() {
    let mut env = TestEnv::new();
    // Every azlin call takes a second, as real ones take many: the starts overlap.
    env.set("FAKE_AZLIN_DELAY", "1");
    let children: Vec<_> = (0..12)
        .map(|i| {
            env.std_cmd(&[
                "start",
                "--no-context",
                "--size",
                "m",
                "--json",
                &format!("SLEEP=120 start {i}"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let calls = env.calls();
    let count = |sub: &str| calls.iter().filter(|c| c[0] == sub).count();
    eprintln!(
        "12 concurrent starts: {} new, {} connect, {} list, {} show; {} calls in all",
        count("new"),
        count("connect"),
        count("list"),
        count("show"),
        calls.len()
    );
    assert_eq!(count("new"), 6, "{calls:?}");
    let state = env.state();
    let vms = state["vm_pool"].as_object().unwrap();
    assert_eq!(vms.len(), 6);
    let sessions = state["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 12);
    let mut per_vm = std::collections::BTreeMap::<String, usize>::new();
    for s in sessions.values() {
        assert_eq!(s["status"], "running", "{s}");
        *per_vm
            .entry(s["vm_name"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(per_vm.values().all(|n| *n == 2), "{per_vm:?}");
}

/// Case 11: a start that finds the pool VM it chose gone (deleted behind our back) moves its
/// prompt to another ready VM instead of failing it.
#[test]
fn a_start_moves_its_prompts_off_a_reused_vm_that_is_gone() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    // The one a start picks first (same fullness: by name) is deleted behind our back.
    std::fs::remove_dir_all(env.vm_dir(&vms[0])).unwrap();
    let out = env.run(&["start", "--no-context", "--size", "s", "--json", "SLEEP=60"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("moving it to VM {}", vms[1])),
        "{}",
        stderr(&out)
    );
    let id = started_ids(&out).remove(0);
    assert_eq!(env.vm_of(&id), vms[1]);
    assert_eq!(env.session(&id)["status"], "running");
    let calls = env.calls();
    assert!(calls.iter().all(|c| c[0] != "new"), "{calls:?}");
    // The gone VM is out of the way: marked failed, and prune forgets it.
    assert_eq!(env.state()["vm_pool"][&vms[0]]["state"], "failed");
    let out = env.run(&["prune", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.state()["vm_pool"].get(&vms[0]).is_none());
}

/// Case 11: a start waiting for a VM another start provisions outlives that start: once the
/// owner is dead, its VM is recovered as `failed` and the waiting start's prompt goes to a VM
/// of its own.
#[test]
fn a_start_waiting_for_a_dead_starts_vm_moves_its_prompt() {
    let env = TestEnv::new();
    env.fault("hang-new");
    let mut owner = env
        .std_cmd(&["start", "--no-context", "--size", "m", "SLEEP=60 a"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for(
        "the owner's azlin new",
        std::time::Duration::from_secs(20),
        || env.calls().iter().any(|c| c[0] == "new"),
    );
    let joiner = env
        .std_cmd(&[
            "start",
            "--no-context",
            "--size",
            "m",
            "--json",
            "SLEEP=60 b",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for(
        "the joiner's reservation",
        std::time::Duration::from_secs(20),
        || env.session_ids().len() == 2,
    );
    let ids = env.session_ids();
    let shared = env.vm_of(&ids[0]);
    assert_eq!(
        env.vm_of(&ids[1]),
        shared,
        "the second start joined the first's VM"
    );
    // The owner dies mid-provisioning; its hung `azlin new` is ended too (Azure would go on).
    owner.kill().unwrap();
    owner.wait().unwrap();
    let hung = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(env.root().join("bin/azlin").to_str().unwrap())
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&hung.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
    env.clear_fault("hang-new");
    let out = joiner.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = started_ids(&out).remove(0);
    assert_eq!(env.session(&id)["status"], "running");
    assert_ne!(env.vm_of(&id), shared, "moved to a VM of its own");
    assert_eq!(env.state()["vm_pool"][&shared]["state"], "failed");
}
