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
    prune_deletes(&env, &vm);
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

/// Machine B made a VM, machine A synced the pool and ran one short session there (ended on
/// the VM, its results not brought home yet). Returns (A's state, B's state, the VM, the
/// session); the environment is left on A's state.
fn a_session_of_machine_a_ended_on_bs_vm(env: &mut TestEnv) -> (PathBuf, PathBuf, String, String) {
    // B's state in a folder of its own: its archive is its own too, as on another machine.
    let machine_b: PathBuf = env.root().join("machine-b/state.json");
    std::fs::create_dir_all(machine_b.parent().unwrap()).unwrap();
    let machine_a = env.state_path();
    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    let vm = env.prime(1, "s").remove(0);
    env.set("AMPLIHACK_REMOTE_STATE", &machine_a.display().to_string());
    let out = env.run(&["sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let started = start_one(env, &["--no-context", "--max-vms", "1", "LINES=3"]);
    assert_eq!(started.vm, vm);
    let dir = env.session_dir(&vm, &started.id);
    env.wait_for(
        "the session's end on its VM",
        std::time::Duration::from_secs(30),
        || dir.join("exit_code").exists(),
    );
    (machine_a, machine_b, vm, started.id)
}

fn as_machine(env: &mut TestEnv, state: &std::path::Path) {
    env.set("AMPLIHACK_REMOTE_STATE", &state.display().to_string());
}

/// A prune of every idle VM, which deletes `vm`.
fn prune_deletes(env: &TestEnv, vm: &str) {
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(vm).exists(), "{}", stdout(&out));
}

/// Another machine's ended session whose results its machine has not brought home keeps the
/// VM from B's prune, which says which and how to fix it; A's `list` brings them home and
/// tells the VM in the same one call (the `collected` mark), and B's next prune deletes it.
#[test]
fn a_second_machines_prune_keeps_a_vm_until_its_owner_brought_the_results_home() {
    let mut env = TestEnv::new();
    let (machine_a, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    let collected = env.session_dir(&vm, &id).join("collected");

    as_machine(&mut env, &machine_b);
    let out = env.run(&["prune", "--idle-minutes", "0", "--dry-run", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("would be KEPT"),
        "{report:#}"
    );
    assert_eq!(report[0]["not_collected"], serde_json::json!([id]));
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.vm_dir(&vm).join("meta").exists(), "the VM lives");
    let warning = stderr(&out);
    let line = warning
        .lines()
        .find(|l| l.contains(&format!("keeping VM {vm}")))
        .unwrap_or_else(|| panic!("no warning naming the VM: {warning}"));
    assert!(
        line.contains("1 ended session(s) of another machine"),
        "{line}"
    );
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("amplihack remote list"), "{line}");
    assert!(line.contains("--force"), "{line}");
    assert!(stdout(&out).contains("KEPT"), "{}", stdout(&out));

    // A's `list` brings the results home, and marks them on the VM, in its one call.
    as_machine(&mut env, &machine_a);
    env.clear_calls();
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let connects: Vec<Vec<String>> = env.calls();
    assert_eq!(connects.len(), 1, "one call, as before: {connects:?}");
    assert_eq!(connects[0][0], "connect");
    assert!(env.archive_dir().join(&id).join("archive.json").exists());
    assert!(collected.exists(), "the VM knows its results are home");
    assert_eq!(env.session(&id)["status"], "completed");
    assert_eq!(env.session(&id)["vm_marked_collected"], true);
    // Nothing left to ask: the next refresh makes no call.
    env.clear_calls();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(env.calls().is_empty(), "{:?}", env.calls());

    // `sync` sees the collected session as it is.
    as_machine(&mut env, &machine_b);
    let out = env.run(&["sync", "--dry-run", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let sync: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        sync["added_sessions"][0]["session_id"],
        id.as_str(),
        "{sync:#}"
    );
    assert_eq!(sync["added_sessions"][0]["status"], "completed", "{sync:#}");

    prune_deletes(&env, &vm);
    // A reads its results from home.
    as_machine(&mut env, &machine_a);
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("line 3"), "{}", stdout(&out));
}

/// `prune --force` deletes such a VM anyway, and says whose results are lost.
#[test]
fn a_forced_prune_deletes_it_and_names_the_results_it_loses() {
    let mut env = TestEnv::new();
    let (_, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    as_machine(&mut env, &machine_b);
    let out = env.run(&["prune", "--idle-minutes", "0", "--dry-run", "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("losing the results of 1 session(s) of another machine"),
        "{}",
        stdout(&out)
    );
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--force", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&vm).exists(), "{}", stdout(&out));
    let warning = stderr(&out);
    assert!(
        warning
            .lines()
            .any(|l| l.contains(&format!("deleting VM {vm}"))
                && l.contains("another machine")
                && l.contains(&id)),
        "{warning}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["not_collected"], serde_json::json!([id]));
    let result = report[0]["result"].as_str().unwrap();
    assert!(
        result.starts_with("deleted") && result.contains(&id),
        "{report:#}"
    );
}

/// A's results came home but the VM never heard (the call cut after the archive was kept,
/// or an archive of an older version): B's prune still keeps the VM, nothing is lost, and
/// A's next probe of that VM tells it.
#[test]
fn results_home_without_the_vm_told_keep_the_vm_until_the_next_call_tells_it() {
    let mut env = TestEnv::new();
    let (machine_a, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    let collected = env.session_dir(&vm, &id).join("collected");
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.archive_dir().join(&id).join("archive.json").exists());
    // The acknowledgement never reached the VM.
    std::fs::remove_file(&collected).unwrap();
    let mut state = env.state();
    state["sessions"][&id]
        .as_object_mut()
        .unwrap()
        .remove("vm_marked_collected");
    env.write_state(&state.to_string());

    as_machine(&mut env, &machine_b);
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.vm_dir(&vm).join("meta").exists(), "kept, not lost");
    assert!(
        stderr(&out).contains(&format!("keeping VM {vm}")),
        "{}",
        stderr(&out)
    );

    // A's next call to the VM tells it: a new session there, refreshed while it runs.
    as_machine(&mut env, &machine_a);
    let next = start_one(&env, &["--no-context", "--max-vms", "1", "SLEEP=30"]);
    assert_eq!(next.vm, vm);
    env.clear_calls();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert_eq!(env.calls().len(), 1, "{:?}", env.calls());
    assert!(collected.exists(), "told on a call made anyway");
    assert_eq!(env.session(&id)["vm_marked_collected"], true);
    assert_eq!(code(&env.run(&["kill", &next.id])), 0);
    assert!(env.session_dir(&vm, &next.id).join("collected").exists());

    as_machine(&mut env, &machine_b);
    prune_deletes(&env, &vm);
}

/// The window between keeping an archive (and telling the VM) and recording it: should A die
/// there and B then delete the VM, A's next refresh finds the VM gone and reads the results
/// from home; nothing is lost.
#[test]
fn an_archive_kept_but_not_recorded_is_read_from_home_once_the_vm_is_gone() {
    let mut env = TestEnv::new();
    let (machine_a, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    let before = env.state();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(env.session_dir(&vm, &id).join("collected").exists());
    // A died before its transaction: the state as it was, the archive and the mark in place.
    env.write_state(&before.to_string());
    as_machine(&mut env, &machine_b);
    prune_deletes(&env, &vm);
    as_machine(&mut env, &machine_a);
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.session(&id);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(s["archived_at"].is_string(), "{s}");
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("line 3"), "{}", stdout(&out));
}

/// Telling the VMs what came home costs no round trip: a refresh of N VMs whose sessions
/// ended makes N calls (one per VM, as before), brings every archive home and leaves every
/// session marked `collected` on its VM; the refresh after it makes none.
#[test]
fn telling_the_vms_what_came_home_costs_no_call_of_its_own() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    let out = env.run(&["start", "--no-context", "--json", "LINES=2", "LINES=2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let on: std::collections::BTreeSet<String> = ids.iter().map(|id| env.vm_of(id)).collect();
    assert_eq!(on.len(), 2, "one session per VM");
    for id in &ids {
        let dir = env.session_dir(&env.vm_of(id), id);
        env.wait_for("its end", std::time::Duration::from_secs(30), || {
            dir.join("exit_code").exists()
        });
    }
    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let calls = env.calls();
    assert_eq!(calls.len(), vms.len(), "{calls:?}");
    assert!(calls.iter().all(|c| c[0] == "connect"), "{calls:?}");
    for id in &ids {
        assert!(env.archive_dir().join(id).join("archive.json").exists());
        assert!(
            env.session_dir(&env.vm_of(id), id)
                .join("collected")
                .exists()
        );
        assert_eq!(env.session(id)["vm_marked_collected"], true);
    }
    env.clear_calls();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(env.calls().is_empty(), "{:?}", env.calls());
}

/// `output` of an ended session brings its archive home and tells the VM in its one call, as a
/// refresh does: B's prune may then delete the VM.
#[test]
fn output_tells_the_vm_what_it_brought_home_in_its_one_call() {
    let mut env = TestEnv::new();
    let (_, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    env.clear_calls();
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("line 3"), "{}", stdout(&out));
    assert_eq!(env.calls().len(), 1, "{:?}", env.calls());
    assert!(env.archive_dir().join(&id).join("archive.json").exists());
    assert!(env.session_dir(&vm, &id).join("collected").exists());
    assert_eq!(env.session(&id)["vm_marked_collected"], true);
    as_machine(&mut env, &machine_b);
    prune_deletes(&env, &vm);
}

/// When the machine that started them is gone, B can adopt the sessions (`sync`): its prune
/// then brings their results home to B, marks them, and deletes the VM.
#[test]
fn a_machine_that_adopts_the_sessions_brings_them_home_before_its_prune_deletes_the_vm() {
    let mut env = TestEnv::new();
    let (_, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    as_machine(&mut env, &machine_b);
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert!(
        stderr(&out).contains("'amplihack remote sync' here"),
        "{}",
        stderr(&out)
    );
    assert!(env.vm_dir(&vm).join("meta").exists());
    assert_eq!(code(&env.run(&["sync"])), 0);
    prune_deletes(&env, &vm);
    let bs_archive = machine_b.parent().unwrap().join("remote-archive");
    assert!(bs_archive.join(&id).join("archive.json").exists());
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("line 3"), "{}", stdout(&out));
}

/// Results home whose marks the VM never heard (archives of an older version, or a call cut
/// after they were kept), and no session of A's running there: A's `list` still tells the VM,
/// in one call of its own, as B's prune advises; the list after makes none, and B's prune
/// then deletes the VM.
#[test]
fn a_list_tells_a_vm_the_marks_it_missed_even_with_nothing_running_there() {
    let mut env = TestEnv::new();
    let (machine_a, machine_b, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    let collected = env.session_dir(&vm, &id).join("collected");
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(env.archive_dir().join(&id).join("archive.json").exists());
    // As an older version left it: archive home, no mark on the VM, none recorded.
    std::fs::remove_file(&collected).unwrap();
    let mut state = env.state();
    state["sessions"][&id]
        .as_object_mut()
        .unwrap()
        .remove("vm_marked_collected");
    env.write_state(&state.to_string());

    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let connects = env
        .calls()
        .into_iter()
        .filter(|c| c[0] == "connect")
        .count();
    assert_eq!(connects, 1, "{:?}", env.calls());
    assert!(collected.exists(), "the VM was told");
    assert_eq!(env.session(&id)["vm_marked_collected"], true);
    env.clear_calls();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(
        env.calls().iter().all(|c| c[0] != "connect"),
        "{:?}",
        env.calls()
    );

    as_machine(&mut env, &machine_b);
    prune_deletes(&env, &vm);
    // A's next refresh finds the VM gone: nothing is left there to tell, and no call is made
    // for it again.
    as_machine(&mut env, &machine_a);
    let mut state = env.state();
    state["sessions"][&id]
        .as_object_mut()
        .unwrap()
        .remove("vm_marked_collected");
    env.write_state(&state.to_string());
    assert_eq!(code(&env.run(&["list"])), 0);
    assert_eq!(env.session(&id)["vm_marked_collected"], true);
    env.clear_calls();
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(
        env.calls().iter().all(|c| c[0] != "connect"),
        "{:?}",
        env.calls()
    );
}

/// `output` of an ended session whose call drops after its archive came home (and the VM was
/// told), while the VM sends the text that follows: the output is shown from the archive,
/// which the state records; it is not taken for a damaged answer.
#[test]
fn output_cut_after_the_archive_came_home_shows_it_from_the_archive() {
    let mut env = TestEnv::new();
    let (_, _, vm, id) = a_session_of_machine_a_ended_on_bs_vm(&mut env);
    // The VM's text after the archive is slow (its `tail` takes seconds) and the connection
    // drops meanwhile.
    let tail = env.vm_dir(&vm).join("bin/tail");
    std::fs::write(
        &tail,
        "#!/bin/bash\n[ \"$1\" = -n ] && sleep 5\nexec /usr/bin/tail \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&tail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(env.azlin_home().join("drop-after"), "2 1\n").unwrap();
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("line 3"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("cut before the text"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not asked"), "{}", stderr(&out));
    assert!(env.archive_dir().join(&id).join("archive.json").exists());
    assert!(env.session_dir(&vm, &id).join("collected").exists());
    let s = env.session(&id);
    assert!(s["archived_at"].is_string(), "{s}");
    assert_eq!(s["status"], "completed", "{s}");
}
