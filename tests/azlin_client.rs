//! What only the real azlin client shows (the azlin contract, "Behaviours that only show with
//! the real client"), modelled by the stand-in, and what the product does about each: a
//! `connect` azlin resolved to another VM's tmux session, an ssh cut by a signal (exit 1), a VM
//! that drops packets, a deallocated VM (Bastion path); and the resource group a VM is always
//! addressed in.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn calls_of(env: &TestEnv, sub: &str, vm: &str) -> usize {
    env.calls()
        .iter()
        .filter(|c| c[0] == sub && c.get(1).map(String::as_str) == Some(vm))
        .count()
}

fn tmux_on_vm(env: &TestEnv, vm: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("tmux")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TMUX_TMPDIR", env.vm_dir(vm).join("tmp"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A VM deleted behind our back while another VM has a tmux session of its name: azlin's
/// `connect` answers from that other VM (exit 0, nothing on stdout, our script never ran).
/// That answer is "VM gone or not ours", confirmed by one `azlin show`, never "nothing runs".
#[test]
fn a_connect_azlin_resolved_to_another_vms_tmux_session_is_not_an_empty_vm() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    let out = env.run(&[
        "start",
        "--no-context",
        "--size",
        "s",
        "--json",
        "SLEEP=120",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let gone = env.vm_of(&id);
    let other = vms.iter().find(|v| **v != gone).unwrap().clone();
    // The VM goes (its tmux server with it); the other VM happens to have a tmux session named
    // after it.
    tmux_on_vm(&env, &gone, &["kill-server"]);
    // Its supervisor may still be writing its last files as it ends.
    env.wait_for("the VM to go", Duration::from_secs(20), || {
        std::fs::remove_dir_all(env.vm_dir(&gone)).is_ok()
    });
    let made = tmux_on_vm(
        &env,
        &other,
        &["new-session", "-d", "-s", &gone, "sleep 600"],
    );
    assert!(made.status.success(), "{made:?}");
    // The stand-in answers as azlin does: exit 0, the piped command never runs.
    let resolved = env.azlin(&[
        "connect",
        &gone,
        "--no-tmux",
        "--no-reconnect",
        "--yes",
        "--no-status",
        "--",
        "echo ran",
    ]);
    assert_eq!(resolved.status.code(), Some(0));
    assert!(resolved.stdout.is_empty());
    assert!(
        stderr(&resolved).contains(&format!("Resolved tmux session '{gone}' to VM '{other}'")),
        "{}",
        stderr(&resolved)
    );

    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no longer exists")
            && stderr(&out).contains("without running our script"),
        "{}",
        stderr(&out)
    );
    // One connect, then one `show` to confirm, in the VM's own group.
    assert_eq!(calls_of(&env, "connect", &gone), 1);
    assert_eq!(calls_of(&env, "show", &gone), 1);
    // Not "nothing runs there" (no trace of it): its VM is gone, and the session ended so.
    let s = env.session(&id);
    assert_eq!(s["status"], "failed", "{s}");
    let error = s["error"].as_str().unwrap_or("");
    assert!(
        error.contains("no longer exists") && !error.contains("no trace"),
        "{s}"
    );
    // Then nobody asks that VM again.
    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(calls_of(&env, "connect", &gone), 0, "{:?}", env.calls());
    assert_eq!(calls_of(&env, "show", &gone), 0, "{:?}", env.calls());
    tmux_on_vm(&env, &other, &["kill-session", "-t", &format!("={gone}")]);
}

/// ssh killed by a signal makes azlin exit 1 (not 255): `wait` reconnects on it as on any drop.
#[test]
fn wait_reconnects_after_a_connection_cut_with_azlins_exit_1() {
    let env = TestEnv::new();
    let s = env.start_running("TICK=30");
    env.clear_calls();
    std::fs::write(env.azlin_home().join("drop-after"), "1 1\n").unwrap();
    let out = env.run(&["wait", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the connection dropped") && stderr(&out).contains("reconnecting in"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.session(&s.id)["status"], "completed");
}

/// A VM that drops packets hangs azlin (no ConnectTimeout): `wait` takes the silence for a
/// dead connection and opens another.
#[test]
fn wait_takes_a_silent_connection_for_dead() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_STREAM_TIMEOUT", "3");
    let s = env.start_running("TICK=30");
    std::fs::write(env.azlin_home().join("freeze-next"), "1\n").unwrap();
    let out = env.run(&["wait", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("taken for dead"), "{}", stderr(&out));
    assert_eq!(env.session(&s.id)["status"], "completed");
}

/// A deallocated VM has no public IP: azlin takes its Bastion path and exits 1. That is
/// unreachable (exit 4), said as what it is, and `status` shows the VM deallocated.
#[test]
fn a_deallocated_vm_is_unreachable_and_status_shows_it() {
    let env = TestEnv::new();
    let s = env.start_running("SLEEP=120");
    let stop = env.azlin(&["stop", &s.vm]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let out = env.run(&["output", &s.id]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deallocated")
            && stderr(&out).contains(&format!("azlin start {}", s.vm)),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("[Deallocated: 'azlin start {}'", s.vm)),
        "{}",
        stdout(&out)
    );
}

/// Case 8: a VM made while no group was configured (azlin used its own default) is never
/// forgotten once AMPLIHACK_RESOURCE_GROUP is set: it records the group azlin used, and one
/// recorded without a group (an older state) is addressed in azlin's default, not in the
/// group configured since.
#[test]
fn a_vm_is_always_addressed_in_the_group_it_was_created_in() {
    let mut env = TestEnv::new();
    let vms = env.prime(2, "s");
    // azlin's default (its config.toml) is where it went, and the state says so.
    assert_eq!(env.state()["vm_pool"][&vms[0]]["resource_group"], "rg");
    // An entry written before the group was recorded.
    let mut state = env.state();
    state["vm_pool"][&vms[1]]
        .as_object_mut()
        .unwrap()
        .remove("resource_group");
    env.write_state(&serde_json::to_string_pretty(&state).unwrap());

    env.set("AMPLIHACK_RESOURCE_GROUP", "team");
    let out = env.run(&["prune", "--idle-minutes", "600", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("no longer exists"),
        "{}",
        stdout(&out)
    );
    let tracked: Vec<String> = env.state()["vm_pool"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(tracked, vms, "both billable VMs stay tracked");
    // Every call about them named their own group (none: azlin's default), never "team".
    for c in env.calls() {
        assert!(
            !c.windows(2).any(|w| w == ["--resource-group", "team"]) || c[0] == "list",
            "{c:?}"
        );
    }
    // Deleting them reaches them too.
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&vms[0]).exists() && !env.vm_dir(&vms[1]).exists());
    // A new VM now goes to the configured group, and is recorded there.
    let vm = env.prime(1, "s").remove(0);
    assert_eq!(env.state()["vm_pool"][&vm]["resource_group"], "team");
}

/// azlin without a group of its own or ours fails "No resource group configured": exit 1
/// with the hint, nothing tracked.
#[test]
fn no_resource_group_anywhere_is_refused_with_the_hint() {
    let env = TestEnv::new();
    std::fs::remove_file(env.home().join(".azlin/config.toml")).unwrap();
    let out = env.run(&["prime", "--count", "1", "--vm-size", "s"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("AMPLIHACK_RESOURCE_GROUP"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.state()["vm_pool"]
            .as_object()
            .is_none_or(|m| m.is_empty())
    );
}

/// Case 10: two state files (two machines) naming VMs in the same second never pick the same
/// name; each tracks the VM it made.
#[test]
fn two_states_naming_vms_at_once_never_share_a_name() {
    let env = TestEnv::new();
    let second = env.root().join("state/second.json");
    let prime = |state: &std::path::Path| {
        env.std_cmd(&["prime", "--count", "2", "--vm-size", "s", "--json"])
            .env("AMPLIHACK_REMOTE_STATE", state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (prime(&env.state_path()), prime(&second));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names = |path: &std::path::Path| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["vm_pool"].as_object().unwrap().keys().cloned().collect()
    };
    let (mine, theirs) = (names(&env.state_path()), names(&second));
    assert_eq!((mine.len(), theirs.len()), (2, 2));
    assert!(
        mine.iter().all(|n| !theirs.contains(n)),
        "{mine:?} {theirs:?}"
    );
    for n in mine.iter().chain(&theirs) {
        assert!(env.vm_dir(n).join("meta").exists(), "{n} exists in Azure");
        assert!(n.len() <= 64 && n.starts_with("amplihack-tester-"), "{n}");
    }
}

/// Case 10: `azlin new` answering "already exists" is someone else's VM: never tracked as ours,
/// so no `prune` of ours ever deletes it.
#[test]
fn an_already_exists_answer_is_never_taken_for_a_vm_of_ours() {
    let env = TestEnv::new();
    std::fs::write(env.azlin_home().join("new-exists"), "1\n").unwrap();
    let out = env.run(&["start", "--no-context", "--size", "s", "--json", "x"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let theirs = env.calls().into_iter().find(|c| c[0] == "new").unwrap()[2].clone();
    let state = env.state();
    assert!(
        state["vm_pool"].as_object().is_none_or(|m| m.is_empty()),
        "{state}"
    );
    let id = env.session_ids().remove(0);
    assert_eq!(env.session(&id)["status"], "failed");
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        env.vm_dir(&theirs).join("meta").exists(),
        "their VM lives on"
    );
    assert!(env.calls().iter().all(|c| c[0] != "kill"));
    // The next start names its VM afresh and runs.
    let out = env.run(&["start", "--no-context", "--size", "s", "--json", "y"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// azlin's config may live in `$AZLIN_CONFIG_DIR`: its default group is the one new VMs go to,
/// and are recorded in, when AMPLIHACK_RESOURCE_GROUP is not set.
#[test]
fn azlins_config_dir_names_the_default_group() {
    let mut env = TestEnv::new();
    let dir = env.root().join("azlin-config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "# azlin\ndefault_resource_group = \"team-x\"\n[ui]\ntheme = \"dark\"\n",
    )
    .unwrap();
    env.set("AZLIN_CONFIG_DIR", &dir.display().to_string());
    let vm = env.prime(1, "s").remove(0);
    assert_eq!(env.state()["vm_pool"][&vm]["resource_group"], "team-x");
    let shown = env.azlin(&["show", &vm, "--resource-group", "team-x", "-o", "json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
}

/// azlin's search for a tmux session named like a VM it cannot find ssh-es into every running
/// VM of the group, with no timeout: one VM that drops packets holds it, and the call times
/// out. A timed-out call asks `azlin show` once: the gone VM's session ends (its VM no longer
/// exists), while the silent VM, which azlin still finds, is only unreachable.
#[test]
fn a_gone_vm_is_found_gone_even_when_azlins_search_hangs_on_a_silent_vm() {
    let mut env = TestEnv::new();
    let vms = env.prime(2, "s");
    let running = env.start_running("SLEEP=300");
    let other = vms.iter().find(|v| **v != running.vm).unwrap().clone();
    let out = env.azlin(&["kill", &running.vm, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.fault(&format!("vms/{other}/frozen"));
    env.set("AMPLIHACK_REMOTE_TIMEOUT", "3");
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.session(&running.id);
    assert_eq!(s["status"], "failed", "{s}\n{}", stderr(&out));
    assert_eq!(s["error"], "its VM no longer exists", "{s}");
    assert!(
        stderr(&out).contains("no longer exists in Azure"),
        "{}",
        stderr(&out)
    );
    // The silent VM is still there: never taken for gone.
    assert!(env.state()["vm_pool"].get(&other).is_some());
}

/// An `azlin show` that fails "not found" about another resource than the VM (its public IP,
/// looked up after the VM was found) proves nothing about the VM: a silent VM's sessions are
/// kept as last known, never ended as if their VM were gone.
#[test]
fn a_not_found_about_another_resource_never_ends_a_vms_sessions() {
    let mut env = TestEnv::new();
    env.prime(1, "s");
    let running = env.start_running("SLEEP=300");
    env.fault(&format!("vms/{}/frozen", running.vm));
    std::fs::write(
        env.azlin_home().join("show-error"),
        format!(
            "(ResourceNotFound) The Resource 'Microsoft.Network/publicIPAddresses/{}-ip' under resource group '{}' was not found.",
            running.vm,
            env.state()["vm_pool"][&running.vm]["resource_group"]
                .as_str()
                .unwrap_or("rg")
        ),
    )
    .unwrap();
    env.set("AMPLIHACK_REMOTE_TIMEOUT", "3");
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        env.calls().iter().any(|c| c[0] == "show"),
        "the timed-out connect asked azlin show"
    );
    let s = env.session(&running.id);
    assert_eq!(s["status"], "running", "{s}\n{}", stderr(&out));
    assert!(env.state()["vm_pool"].get(&running.vm).is_some());
    assert!(
        stderr(&out).contains("showing them as last known"),
        "{}",
        stderr(&out)
    );
}
