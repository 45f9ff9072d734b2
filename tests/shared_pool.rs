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
