//! Trust: no session, VM, kill or secret is lost or misattributed, whatever fails. Each test
//! reproduces one fault of docs/reliability.md's fault model against the stand-in azlin (or the
//! local backend) with real tmux, and checks the state tells the truth afterwards.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn spawn_logged(env: &TestEnv, args: &[&str], log: &Path) -> Child {
    env.std_cmd(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0): look at its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let after = &s[s.rfind(')').unwrap() + 2..];
            !after.starts_with('Z')
        })
        .unwrap_or(false)
}

fn sigkill(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn vm_names(env: &TestEnv) -> Vec<String> {
    env.state()["vm_pool"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// VMs the stand-in azlin has (as Azure would), whatever the state says.
fn vms_in_azure(env: &TestEnv) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.azlin_home().join("vms"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("meta").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Fault 1: a watched pending session is not settled while its start still launches it.
#[test]
fn a_pending_session_is_never_settled_while_its_start_lives() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "4");
    // The new VM's first ssh is refused, as for a VM that is still booting.
    std::fs::write(env.azlin_home().join("unreachable-next"), "1").unwrap();
    let log = env.root().join("start.log");
    let start = spawn_logged(&env, &["start", "--no-context", "--json", "SLEEP=60"], &log);
    env.wait_for("the launch retry", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("does not answer ssh yet")
    });
    let id = env.session_ids().remove(0);
    // Everyone watching meanwhile: output, list, status.
    let out = env.run(&["output", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still being launched"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&env.run(&["list", "--json"])), 0);
    assert_eq!(code(&env.run(&["status"])), 0);
    assert_eq!(env.session(&id)["status"], "pending", "nobody settled it");
    let out = start.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(env.session(&id)["status"], "running");
    assert!(
        env.session(&id).get("owner").is_none(),
        "the reservation ended"
    );
    // And the VM under the running agent is not idle for prune.
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(vms_in_azure(&env).len(), 1, "{}", stdout(&out));
}

/// Fault 1, the exit code: a start whose session ends up not running does not exit 0.
#[test]
fn start_exits_non_zero_when_a_session_did_not_start() {
    let env = TestEnv::local();
    // A tmux that cannot create sessions: the launch fails on the machine itself.
    let fake_tmux = env.root().join("bin/tmux");
    std::fs::write(
        &fake_tmux,
        "#!/bin/sh\n[ \"$1\" = new-session ] && { echo 'no server' >&2; exit 1; }\nexec /usr/bin/tmux \"$@\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&fake_tmux)
        .status()
        .unwrap();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=5"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tmux new-session failed"),
        "{}",
        stderr(&out)
    );
    let id = env.session_ids().remove(0);
    assert_eq!(env.session(&id)["status"], "failed");
    // Fault 9: the key was handed through a FIFO only: nothing of ours on disk holds it
    // (TestEnv's drop checks every file), and no FIFO is left behind.
    let dir = env.home().join(".amplihack/remote/sessions").join(&id);
    assert!(!dir.join("secret.fifo").exists());
    assert!(!dir.join("secret").exists());
}

/// Fault 2: prune forgets a VM only when azlin confirms it is gone, in its own resource group.
#[test]
fn prune_never_forgets_a_vm_azlin_still_has() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_RESOURCE_GROUP", "rg-a");
    let vms = env.prime(2, "s");
    assert_eq!(env.state()["vm_pool"][&vms[0]]["resource_group"], "rg-a");
    // Later the user points azlin at another group; and one VM is hidden from listings (as
    // one made under another subscription would be).
    env.set("AMPLIHACK_RESOURCE_GROUP", "rg-b");
    env.fault(&format!("vms/{}/unlisted", vms[1]));
    let out = env.run(&["prune", "--idle-minutes", "600", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("no longer exists"),
        "{}",
        stdout(&out)
    );
    assert_eq!(vm_names(&env), vms, "both stay tracked");
    // `show` was asked, in the VM's own group.
    assert!(env.calls().iter().any(|c| c[0] == "show"
        && c[1] == vms[1]
        && c.windows(2).any(|w| w == ["--resource-group", "rg-a"])));
    // Deleting them uses their own group too, whatever is configured now.
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(vms_in_azure(&env).is_empty(), "{}", stdout(&out));
    assert!(vm_names(&env).is_empty());
    // A VM that really vanished from Azure is forgotten (and azlin says so).
    let vm = env.prime(1, "s").remove(0);
    std::fs::remove_dir_all(env.vm_dir(&vm)).unwrap();
    let out = env.run(&["prune", "--idle-minutes", "600", "--yes"]);
    assert!(
        stdout(&out).contains("no longer exists in Azure"),
        "{}",
        stdout(&out)
    );
    assert!(vm_names(&env).is_empty());
}

/// Fault 3: a start killed during `azlin new` leaves nothing stuck.
#[test]
fn a_start_killed_while_provisioning_leaves_nothing_stuck() {
    let env = TestEnv::new();
    env.fault("hang-new");
    let mut start = env
        .std_cmd(&["start", "--no-context", "SLEEP=30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("azlin new", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "new")
    });
    sigkill(start.id() as i32);
    start.wait().unwrap();
    // The stand-in's `new` hangs on in its own process group: end it (Azure would go on).
    let hung = Command::new("pgrep")
        .arg("-f")
        .arg(env.root().join("bin/azlin").to_str().unwrap())
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&hung.stdout).split_whitespace() {
        unsafe {
            libc::kill(-pid.parse::<i32>().unwrap(), libc::SIGKILL);
        }
    }
    env.clear_fault("hang-new");
    let id = env.session_ids().remove(0);
    let vm = vm_names(&env).remove(0);
    assert_eq!(env.state()["vm_pool"][&vm]["state"], "provisioning");
    // The next command sees the owner is dead and recovers at once.
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.session(&id)["status"], "failed");
    assert!(
        env.session(&id)["error"]
            .as_str()
            .unwrap()
            .contains("ended before launching"),
        "{}",
        env.session(&id)
    );
    assert_eq!(env.state()["vm_pool"][&vm]["state"], "failed");
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("already failed"), "{}", stdout(&out));
    // prune deletes the VM the dead start may have created, and keeps watching it: Azure may
    // still complete a creation that was cut short.
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(vms_in_azure(&env).is_empty());
    assert!(stdout(&out).contains("still tracked"), "{}", stdout(&out));
    assert_eq!(vm_names(&env), vec![vm.clone()]);
    // A creation that completes after the deletion is caught by the next prune.
    std::fs::create_dir_all(env.vm_dir(&vm)).unwrap();
    std::fs::write(
        env.vm_dir(&vm).join("meta"),
        "size=Standard_E16s_v5\nregion=eastus\nrg=rg\npower=Running\ncreated=x\n",
    )
    .unwrap();
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(vms_in_azure(&env).is_empty(), "{}", stdout(&out));
    // Past the settle time, the deletion ends the tracking.
    let mut state = env.state();
    state["vm_pool"][&vm]["created_at"] = "2020-01-01T00:00:00Z".into();
    env.write_state(&state.to_string());
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(vm_names(&env).is_empty(), "{}", stdout(&out));
}

/// Fault 4: after a reboot and pid reuse, kill signals nothing that is not the session's.
#[test]
fn kill_never_signals_a_process_that_reused_the_agents_pid() {
    let env = TestEnv::new();
    let s = env.start_running("SLEEP=60");
    let dir = env.session_dir(&s.vm, &s.id);
    // "Reboot": the supervisor, the agent and the tmux server die at once.
    let supervisor = read_pid(&dir.join("supervisor.pid"));
    let agent = env.agent_pid(&s.vm, &s.id);
    sigkill(supervisor);
    unsafe {
        libc::kill(-agent, libc::SIGKILL);
    }
    Command::new("tmux")
        .arg("kill-server")
        .env("TMUX_TMPDIR", env.vm_dir(&s.vm).join("tmp"))
        .status()
        .unwrap();
    env.wait_for("the agent to die", Duration::from_secs(10), || {
        !alive(agent)
    });
    // An unrelated process now has the recorded pid (and leads its own group).
    let mut stranger = Command::new("setsid")
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(dir.join("agent.pid"), format!("{}\n", stranger.id())).unwrap();
    let out = env.run(&["kill", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        alive(stranger.id() as i32),
        "kill signalled an unrelated process: {}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("Session terminated"),
        "{}",
        stdout(&out)
    );
    let session = env.session(&s.id);
    assert_eq!(session["status"], "failed", "{session}");
    assert!(
        session["error"]
            .as_str()
            .unwrap()
            .contains("without recording")
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// Fault 6: a kill is recorded `killed` even when a concurrent refresh sees the exit first.
#[test]
fn a_kill_is_recorded_killed_even_with_refreshes_racing_it() {
    let env = TestEnv::new();
    for _ in 0..3 {
        let s = env.start_running("TRAP SLEEP=60");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            let env_vars = env.env();
            let work = env.work();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    Command::new(assert_cmd::cargo::cargo_bin("amplihack"))
                        .env_clear()
                        .envs(env_vars.iter().map(|(k, v)| (k, v)))
                        .current_dir(&work)
                        .args(["remote", "list", "--json"])
                        .output()
                        .unwrap();
                }
            })
        };
        let out = env.run(&["kill", &s.id]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).contains("Status updated: killed"));
        let session = env.session(&s.id);
        assert_eq!(session["status"], "killed", "{session}");
        assert_eq!(session["exit_code"], 143);
        assert!(session.get("kill_request").is_none());
    }
}

/// Fault 7: a supervisor killed outright leaves its agent running; the truth follows the agent.
#[test]
fn an_agent_outliving_its_supervisor_stays_running_and_can_be_killed() {
    let env = TestEnv::new();
    let s = env.start_running("TRAP SLEEP=60");
    let dir = env.session_dir(&s.vm, &s.id);
    let agent = env.agent_pid(&s.vm, &s.id);
    sigkill(read_pid(&dir.join("supervisor.pid")));
    // tmux ends the pane with its process; the agent lives on, unsupervised.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(agent));
    let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["status"], "running", "{list}");
    let out = env.run(&["kill", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Session terminated"),
        "{}",
        stdout(&out)
    );
    env.wait_for("the agent to die", Duration::from_secs(10), || {
        !alive(agent)
    });
    let signals = std::fs::read_to_string(env.agent_record(&s.vm, &s.id).join("signals")).unwrap();
    assert_eq!(signals.trim(), "TERM");
    let session = env.session(&s.id);
    assert_eq!(session["status"], "killed");
    assert_eq!(
        session["exit_code"], 143,
        "recorded by kill, as no supervisor was left"
    );
}

/// Fault 8: what an agent leaves running in the background ends with the session.
#[test]
fn an_agents_background_children_end_with_its_session() {
    let env = TestEnv::local();
    let out = env.run(&["start", "--no-context", "--json", "CHILD=300"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let session = env.wait_finished(&id);
    assert_eq!(session["status"], "completed", "{session}");
    let child = read_pid(&env.agent_record("local", &id).join("child.pid"));
    assert!(!alive(child), "the agent's child outlived the session");
}

/// Fault 11: concurrent launches onto one VM never trip over each other's bundle.
#[test]
fn concurrent_starts_onto_one_vm_with_a_repository_all_launch() {
    let env = TestEnv::new();
    env.git_repo();
    let vm = env.prime(1, "xl").remove(0);
    let children: Vec<Child> = (0..8)
        .map(|i| {
            env.std_cmd(&["start", "--json", &format!("SLEEP=30 n{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let st = env.state();
    let sessions = st["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 8);
    for s in sessions.values() {
        assert_eq!(s["status"], "running", "{s}");
        assert_eq!(s["vm_name"], vm);
    }
    let context = env.vm_dir(&vm).join("home/.amplihack/remote/context");
    for entry in std::fs::read_dir(context).unwrap().flatten() {
        assert!(
            !entry.file_name().to_string_lossy().ends_with(".part"),
            "a temp bundle was left behind"
        );
    }
}

/// Fault 12: attach works the way the real azlin gives a terminal, and never creates a session.
#[test]
fn attach_goes_through_azlins_tmux_attach_and_refuses_ended_sessions() {
    let env = TestEnv::new();
    let s = env.start_running("LINES=3 SLEEP=60");
    let envs = env.env_words();
    let attach = |id: &str| {
        format!(
            "env -i TERM=\"$TERM\" {} {} remote attach {id}; echo attach-exit=$?; sleep 30",
            envs,
            assert_cmd::cargo::cargo_bin("amplihack").display()
        )
    };
    let terminal = Terminal::new(&env, "outer", &attach(&s.id));
    terminal.wait_for("agent line 3", false);
    terminal.keys(&["C-b", "d"]);
    terminal.wait_for("attach-exit=0", false);
    drop(terminal);
    assert!(
        env.calls()
            .iter()
            .any(|c| c[0] == "connect"
                && c.windows(2).any(|w| w == ["--tmux-session", s.id.as_str()]))
    );
    assert_eq!(env.session(&s.id)["status"], "running");
    // A session whose tmux session is gone: no attach, and no empty shell session created.
    let out = env.run(&["kill", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut state = env.state();
    state["sessions"][&s.id]["status"] = "running".into();
    env.write_state(&state.to_string());
    let terminal = Terminal::new(&env, "outer2", &attach(&s.id));
    let screen = terminal.wait_for("attach-exit=", false);
    assert!(screen.contains("attach-exit=1"), "{screen}");
    let ls = Command::new("tmux")
        .arg("ls")
        .env("TMUX_TMPDIR", env.vm_dir(&s.vm).join("tmp"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ls.stdout).contains(&s.id));
}

/// Fault 13: output of a session its VM has no trace of fails like the specification says.
#[test]
fn output_of_a_session_gone_from_its_vm_exits_3() {
    let env = TestEnv::new();
    let s = env.start_running("SLEEP=60");
    let out = env.run(&["kill", "--force", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::remove_dir_all(env.session_dir(&s.vm, &s.id)).unwrap();
    // The kill brought its archive home; without it, only the VM could answer.
    let mut st = env.state();
    st["sessions"][&s.id]
        .as_object_mut()
        .unwrap()
        .remove("archived_at");
    env.write_state(&st.to_string());
    std::fs::remove_dir_all(env.archive_dir().join(&s.id)).unwrap();
    let out = env.run(&["output", &s.id]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Session not found on VM"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

/// The stand-in models azlin's rule: a remote command never gets a terminal, even when azlin
/// runs on one.
#[test]
fn the_stand_in_gives_a_remote_command_no_terminal() {
    let env = TestEnv::new();
    let vm = env.prime(1, "s").remove(0);
    let envs = env.env_words();
    let cmd = format!(
        "env -i TERM=\"$TERM\" AZLIN_NO_UPDATE_CHECK=1 {} azlin connect {vm} --no-tmux --no-reconnect --no-status -- 'if [ -t 0 ] || [ -t 1 ]; then echo has-tty; else echo no-tty; fi; tmux new-session -d -s x sleep 30; tmux attach -t x'; echo exit=$?; sleep 30",
        envs
    );
    let terminal = Terminal::new(&env, "outer", &cmd);
    let screen = terminal.wait_for("exit=", false);
    assert!(screen.contains("no-tty"), "{screen}");
    assert!(!screen.contains("has-tty"), "{screen}");
    assert!(screen.contains("not a terminal"), "{screen}");
}

/// Fault 1/3, the launch a dead start leaves behind: the azlin call it made goes on without it.
/// Whoever settles the session first decides, on the VM, under the session's lock: here the
/// refresh cancels it, so the late launch refuses to start an agent the state calls failed.
#[test]
fn a_launch_left_behind_by_a_dead_start_is_cancelled_not_raced() {
    let mut env = TestEnv::new();
    let vm = env.prime(1, "l").remove(0);
    env.set("FAKE_AZLIN_DELAY", "3");
    let mut start = env
        .std_cmd(&["start", "--no-context", "SLEEP=30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("the launch call", Duration::from_secs(20), || {
        env.calls().iter().any(|c| c[0] == "connect")
    });
    sigkill(start.id() as i32);
    start.wait().unwrap();
    env.set("FAKE_AZLIN_DELAY", "0");
    let id = env.session_ids().remove(0);
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let session = env.session(&id);
    assert_eq!(session["status"], "failed", "{session}");
    assert_eq!(session["error"], "its start ended before launching it");
    // The orphaned launch arrives after its delay, finds the session cancelled, and refuses.
    env.wait_for(
        "the orphaned launch to end",
        Duration::from_secs(30),
        || {
            let running = Command::new("pgrep")
                .arg("-f")
                .arg(env.root().join("bin/azlin").to_str().unwrap())
                .output()
                .unwrap();
            running.stdout.is_empty()
        },
    );
    assert!(
        !env.agent_record(&vm, &id).exists(),
        "the agent was started"
    );
    assert!(!env.session_dir(&vm, &id).join("supervisor.pid").exists());
    assert_eq!(env.session(&id)["status"], "failed");
}
