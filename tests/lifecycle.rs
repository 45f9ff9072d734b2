//! One owner for the truth of a session: the VM's phase function and the lifecycle module.
//! Each test is a case that once recorded a wrong status, lost results or stranded work
//! (docs/reliability.md, the fault model, rows L1-L7).

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A session's directory on its VM (this machine's home for `local`).
fn dir_of(env: &TestEnv, vm: &str, id: &str) -> PathBuf {
    if vm == "local" {
        env.home().join(".amplihack/remote/sessions").join(id)
    } else {
        env.session_dir(vm, id)
    }
}

fn read_pid(path: PathBuf) -> i32 {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie not reaped yet counts as gone.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

fn sigkill(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// `start --json PROMPTS...`: the ids in prompt order.
fn start(env: &TestEnv, args: &[&str]) -> Vec<String> {
    let mut all = vec!["start", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    started_ids(&out)
}

fn status(env: &TestEnv, id: &str) -> String {
    env.session(id)["status"].as_str().unwrap().to_string()
}

/// Case 1: a session waiting in its VM's queue is not finished: no command that looks at it
/// archives it; its archive is written once, after it ends, with its real log and commits.
#[test]
fn a_queued_session_is_archived_only_after_it_ends_with_its_real_results() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    env.git_repo();
    let ids = start(&env, &["SLEEP=4", "COMMIT=2 LINES=3"]);
    let queued = ids[1].clone();
    assert_eq!(status(&env, &queued), "queued");
    // Every command that looks at it while it waits.
    for args in [
        vec!["list"],
        vec!["status"],
        vec!["report"],
        vec!["output", queued.as_str()],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(
            !env.archive_dir().join(&queued).exists(),
            "`{}` archived a queued session",
            args.join(" ")
        );
        assert!(env.session(&queued)["archived_at"].is_null());
    }
    let s = env.wait_finished(&queued);
    assert_eq!(s["status"], "completed", "{s}");
    let out = env.run(&["report", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["session_id"] == queued.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["commits"], 2, "{row}");
    assert!(env.session(&queued)["archived_at"].is_string());
    let out = env.run(&["output", &queued]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("agent line 3"), "{}", stdout(&out));
    let out = env.run(&["pull", &queued]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Fetched 2 commit(s)"),
        "{}",
        stdout(&out)
    );
}

/// Case 2: a session still marked `queued` whose supervisor or agent lives is running. Its
/// drainer died between starting it and clearing the mark: `kill` must signal its agent, not
/// "take it out of the queue"; and once its agent dies unrecorded, it ended.
#[test]
fn a_stale_queued_mark_never_hides_a_running_agent() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let ids = start(
        &env,
        &["--no-context", "SLEEP=1", "SLEEP=60 TRAP", "SLEEP=8"],
    );
    let (second, third) = (ids[1].clone(), ids[2].clone());
    // The first ends, its supervisor starts the second; mark it queued again, as a drainer
    // killed between the two steps leaves it.
    let records = |id: &str| env.agent_record("local", id).join("env");
    env.wait_for("the second agent", Duration::from_secs(30), || {
        records(&second).exists()
    });
    let stale = dir_of(&env, "local", &second).join("queued");
    std::fs::write(&stale, "1\n").unwrap();
    let agent = read_pid(dir_of(&env, "local", &second).join("agent.pid"));
    let out = env.run(&["kill", &second]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("taken out of the queue"),
        "{}",
        stdout(&out)
    );
    env.wait_for("the agent to be signalled", Duration::from_secs(20), || {
        !alive(agent)
    });
    assert_eq!(status(&env, &second), "killed");

    // The third: started, marked queued again, its supervisor SIGKILLed, then its agent ends
    // with nobody to record it. Nothing runs: it ended, whatever the mark says.
    env.wait_for("the third agent", Duration::from_secs(30), || {
        records(&third).exists()
    });
    let d = dir_of(&env, "local", &third);
    std::fs::write(d.join("queued"), "1\n").unwrap();
    let supervisor = read_pid(d.join("supervisor.pid"));
    sigkill(supervisor);
    env.wait_for("the supervisor to die", Duration::from_secs(10), || {
        !alive(supervisor)
    });

    let s = env.wait_finished(&third);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("without recording an exit code"),
        "{s}"
    );
    // Started once, never again: a stale mark never restarts an ended session.
    let log = std::fs::read_to_string(d.join("output.log")).unwrap();
    assert_eq!(log.matches("agent: started").count(), 1, "{log}");
}

/// Case 3: the launch's connection drops after agents started. No live agent is recorded
/// failed: the sessions stay unconfirmed until a refresh claims them on the VM, which says
/// which run; prune never takes the VM for idle meanwhile.
#[test]
fn a_dropped_launch_never_records_live_agents_as_failed() {
    // The drop must come after some agents started and before the launch answered: how long
    // a launch takes depends on the machine's load, so a few drop times are tried. Every
    // attempt must keep the truth; one must have dropped the launch midway.
    for secs in [2, 1, 3, 4] {
        if dropped_launch_keeps_the_truth(secs) {
            return;
        }
    }
    panic!("no attempt dropped the launch after an agent started");
}

/// One attempt of case 3; whether the drop came midway (agents started, the launch unanswered).
fn dropped_launch_keeps_the_truth(secs: u32) -> bool {
    let env = TestEnv::new();
    let vm = env.prime(1, "xl").remove(0);
    env.git_repo();
    std::fs::write(env.azlin_home().join("drop-after"), format!("{secs} 1\n")).unwrap();
    let prompts = ["SLEEP=60"; 8];
    let mut args = vec!["start", "--json"];
    args.extend(prompts);
    let out = env.run(&args);
    if !(stderr(&out).contains("closed by remote host") || stderr(&out).contains("dropped")) {
        // The launch answered first.
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        return false;
    }
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let ids = env.session_ids();
    assert_eq!(ids.len(), 8);
    for id in &ids {
        assert_eq!(status(&env, id), "pending", "unconfirmed, never failed");
    }
    // The dry run of prune refreshes first: the claim settles each session.
    let out = env.run(&["prune", "--dry-run", "--idle-minutes", "0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Started: its supervisor was (its agent follows at once, and runs 60 s).
    let ran = |id: &str| dir_of(&env, &vm, id).join("supervisor.pid").exists();
    let mut running = 0;
    for id in &ids {
        let st = status(&env, id);
        if ran(id) {
            running += 1;
            assert_eq!(st, "running", "{id} runs on the VM");
        } else {
            assert_eq!(st, "failed", "{id} never started");
        }
    }
    if running == 0 {
        return false;
    }
    assert!(!stdout(&out).contains(&vm), "{}", stdout(&out));
    // Nothing the VM runs is unknown to the state, and nothing more runs than it holds.
    let out = env.run(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["capacity"]["used"], running, "{v}");
    true
}

/// Case 4: a placement that failed on the VM (tmux refused the session) is recorded there, so
/// a `sync` that rebuilds a lost state brings it back failed with its error, not pending.
#[test]
fn sync_rebuilds_a_refused_placement_as_failed() {
    let mut env = TestEnv::new();
    // The VM's tmux refuses new sessions; everything else goes to the real tmux.
    let bin = env.root().join("vm-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(support("vm-bin/amplihack"), bin.join("amplihack")).unwrap();
    let tmux = String::from_utf8(
        std::process::Command::new("bash")
            .args(["-c", "command -v tmux"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        bin.join("tmux"),
        format!(
            "#!/usr/bin/env bash\n[ \"$1\" = new-session ] && {{ echo 'create window failed: fork failed' >&2; exit 1; }}\nexec {} \"$@\"\n",
            tmux.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("tmux"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.set("FAKE_AZLIN_VM_BIN", bin.to_str().unwrap());
    env.prime(1, "m");
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=60"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let id = env.session_ids().remove(0);
    assert_eq!(status(&env, &id), "failed");
    // The state is lost; sync rebuilds it from the VMs.
    std::fs::remove_file(env.state_path()).unwrap();
    let out = env.run(&["sync", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.session(&id);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("tmux new-session failed"),
        "{s}"
    );
    // It holds no slot: a new session finds room without a queue.
    let out = env.run(&["status", "--json", "--no-refresh"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["capacity"]["used"], 0, "{v}");
}

/// Case 5: with the running session's supervisor SIGKILLed, nobody is left to start the
/// queue when its agent ends: `wait` and `output --follow` talk to the VM with the user's key,
/// so they start it, as a refresh or a kill would.
#[test]
fn wait_and_follow_start_a_stranded_queue() {
    for how in ["wait", "follow"] {
        let mut env = TestEnv::local();
        env.set("AMPLIHACK_LOCAL_SLOTS", "1");
        let ids = start(&env, &["--no-context", "SLEEP=2", "LINES=2"]);
        let (first, queued) = (ids[0].clone(), ids[1].clone());
        assert_eq!(status(&env, &queued), "queued");
        let d = dir_of(&env, "local", &first);
        env.wait_for("the first supervisor", Duration::from_secs(20), || {
            d.join("agent.pid").exists()
        });
        sigkill(read_pid(d.join("supervisor.pid")));
        let out = match how {
            "wait" => env.run(&["wait", &queued, "--timeout", "60"]),
            _ => env.run(&["output", &queued, "--follow"]),
        };
        assert_eq!(code(&out), 0, "{how}: {}", stderr(&out));
        if how == "follow" {
            assert!(stdout(&out).contains("agent line 2"), "{}", stdout(&out));
        }
        assert_eq!(status(&env, &queued), "completed", "{how}");
    }
}

/// Case 6: a VM deleted behind our back under a running session. Once azlin confirms it gone
/// (`azlin show`: not found), its sessions end failed ("its VM no longer exists"), what was
/// archived stays, and prune forgets the VM.
#[test]
fn a_vm_deleted_behind_our_back_is_resolved() {
    let env = TestEnv::new();
    env.prime(1, "m");
    let done = env.start_running("LINES=2");
    let s = env.wait_finished(&done.id);
    assert_eq!(s["status"], "completed");
    assert!(env.session(&done.id)["archived_at"].is_string());
    let running = env.start_running("SLEEP=300");
    assert_eq!(running.vm, done.vm);
    // Deleted outside this tool.
    let out = env.azlin(&["kill", &running.vm, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no longer exists"),
        "{}",
        stderr(&out)
    );
    let s = env.session(&running.id);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"], "its VM no longer exists", "{s}");
    assert!(
        env.archive_dir().join(&done.id).exists(),
        "archives are kept"
    );
    let out = env.run(&["prune", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stdout(&out).contains("skipped"), "{}", stdout(&out));
    assert!(
        env.state()["vm_pool"].get(&running.vm).is_none(),
        "prune forgets the VM"
    );
    // The finished session's output still comes from its archive.
    let out = env.run(&["output", &done.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Case 6, for every command that meets the gone VM, not only a refresh: `output`,
/// `output --follow`, `wait` and `sync` settle its sessions by the same rule (one `azlin show`
/// confirms), and say so in one message that names what happened, never "showing them as last
/// known" beside "ended failed".
#[test]
fn every_command_that_meets_a_vm_deleted_behind_our_back_settles_its_sessions() {
    for (how, expected_code) in [
        ("output", 4),
        ("follow", 4),
        ("wait", 1),
        ("sync", 0),
        ("list", 0),
    ] {
        let env = TestEnv::new();
        let running = env.start_running("SLEEP=300");
        let out = env.azlin(&["kill", &running.vm, "--force"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env.clear_calls();
        let args: Vec<&str> = match how {
            "output" => vec!["output", &running.id],
            "follow" => vec!["output", "--follow", &running.id],
            "wait" => vec!["wait", &running.id],
            other => vec![other],
        };
        let out = env.run(&args);
        let err = stderr(&out);
        assert_eq!(code(&out), expected_code, "{how}: {err}");
        let s = env.session(&running.id);
        assert_eq!(s["status"], "failed", "{how}: {s}");
        assert_eq!(s["error"], "its VM no longer exists", "{how}: {s}");
        assert!(
            err.contains("no longer exists in Azure") && err.contains("ended failed"),
            "{how}: {err}"
        );
        assert!(
            !err.contains("as last known")
                && !err.contains("unreachable")
                && !err.contains("a later refresh will"),
            "{how}: {err}"
        );
        let shows = env.calls().iter().filter(|c| c[0] == "show").count();
        assert_eq!(shows, 1, "{how}: one `azlin show` confirms it");
    }
}

/// `kill --force` of a session whose VM azlin confirms gone records that session killed and
/// settles the VM's other sessions as every command that meets a gone VM does, with the one
/// `azlin show`: they were left running, the next command asking azlin again.
#[test]
fn kill_force_on_a_gone_vm_settles_its_other_sessions_too() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=300", "SLEEP=300"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    let vm = env.vm_of(&ids[0]);
    assert_eq!(env.vm_of(&ids[1]), vm, "both on one VM");
    let out = env.azlin(&["kill", &vm, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.clear_calls();
    let out = env.run(&["kill", "--force", &ids[0]]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert_eq!(env.session(&ids[0])["status"], "killed");
    let other = env.session(&ids[1]);
    assert_eq!(other["status"], "failed", "{other}\n{err}");
    assert_eq!(other["error"], "its VM no longer exists", "{other}");
    assert!(
        err.contains(&ids[1]) && err.contains("ended failed"),
        "{err}"
    );
    assert!(!err.contains("may still run"), "{err}");
    let shows = env.calls().iter().filter(|c| c[0] == "show").count();
    assert_eq!(shows, 1, "one `azlin show` confirms it");
}

/// A VM deleted while `output --follow` streams it: as with Azure, the connection drops (the
/// stand-in's `kill` ends what runs there, and ssh says "closed by remote host"); the reconnect
/// finds the VM gone and the session ends failed ("its VM no longer exists"), never "no trace of
/// it" as if its files had vanished under a live connection.
#[test]
fn a_vm_deleted_under_a_live_stream_ends_its_session_as_gone() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let running = env.start_running("TICK=600");
    let mut child = env
        .std_cmd(&["output", "--follow", &running.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stream is open once a tick came through it.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().starts_with("tick ")),
        "the stream delivered nothing"
    );
    let out = env.azlin(&["kill", &running.vm, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rest = std::thread::spawn(move || lines.count());
    let out = child.wait_with_output().unwrap();
    rest.join().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{err}");
    assert!(
        err.contains("closed by remote host") && err.contains("no longer exists in Azure"),
        "{err}"
    );
    let s = env.session(&running.id);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"], "its VM no longer exists", "{s}");
}

/// A session whose VM the pool does not hold (a hand-edited state, or the Python original's,
/// whose sessions outlive its pool entries), on a VM azlin confirms gone, ends failed like any
/// gone VM's session: it was left running, each command asking azlin again.
#[test]
fn a_session_on_a_gone_vm_the_pool_lacks_is_settled() {
    let env = TestEnv::new();
    let running = env.start_running("SLEEP=300");
    let mut state = env.state();
    let mut orphan = state["sessions"][&running.id].clone();
    let id = "sess-20261202-000000-aaaa";
    orphan["session_id"] = id.into();
    orphan["tmux_session"] = id.into();
    orphan["vm_name"] = "amplihack-nobody-20261202-000000-dead".into();
    state["sessions"][id] = orphan;
    env.write_state(&state.to_string());
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.session(id);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"], "its VM no longer exists", "{s}");
    assert_eq!(env.session(&running.id)["status"], "running");
    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        env.calls()
            .iter()
            .all(|c| !c.contains(&"amplihack-nobody-20261202-000000-dead".to_string())),
        "settled: never asked again"
    );
}

/// Case 3, when the VM never answers again: a launch never confirmed stays `pending` (only
/// its VM can say whether it runs), and `wait` does not wait forever for it: it gives up with
/// exit 4 after AMPLIHACK_REMOTE_RECONNECT_FOR without an answer, naming the session. Once the
/// VM answers, a refresh settles it by what the VM says.
#[test]
fn an_unconfirmed_launch_on_a_vm_that_never_answers_stays_pending_and_wait_gives_up() {
    let mut env = TestEnv::new();
    let started = env.start_running("SLEEP=300");
    // As a start killed after its launch's answer was lost leaves it: pending, its owner dead.
    let mut state = env.state();
    let s = &mut state["sessions"][&started.id];
    s["status"] = "pending".into();
    s["started_at"] = Value::Null;
    s["error"] = "the launch's answer was lost".into();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    s["owner"] = serde_json::json!({"pid": 4_194_400u32, "host": host.trim(), "started": "b 1"});
    env.write_state(&state.to_string());
    env.fault(&format!("vms/{}/unreachable", started.vm));
    env.set("AMPLIHACK_REMOTE_RECONNECT_FOR", "1");
    let mut c = env.cmd();
    c.timeout(Duration::from_secs(60));
    let out = c.args(["remote", "wait", &started.id]).output().unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("never confirmed") && stderr(&out).contains(&started.id),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.session(&started.id)["status"], "pending");
    // The VM answers again: it runs there, and the state says so.
    env.clear_fault(&format!("vms/{}/unreachable", started.vm));
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.session(&started.id)["status"], "running");
}

/// Case 7: a kill asked on the VM wins over the exit code. Here the first kill's answer was
/// lost (the VM killed the session, the state never heard): the second kill, seeing exit 143
/// and the VM's kill mark, records `killed`. Then two kills at once, on a few sessions.
#[test]
fn two_kills_of_one_session_record_killed() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "4");
    let ids = start(&env, &["--no-context", "SLEEP=60 TRAP"]);
    let id = ids[0].clone();
    let d = dir_of(&env, "local", &id);
    env.wait_for("the agent", Duration::from_secs(20), || {
        d.join("agent.pid").exists()
    });
    // What the first kill did on the VM before its answer was lost.
    std::fs::write(d.join("kill_requested"), "TERM 2026-01-01T00:00:00Z\n").unwrap();
    unsafe {
        libc::kill(-read_pid(d.join("agent.pid")), libc::SIGTERM);
    }
    env.wait_for("the exit code", Duration::from_secs(20), || {
        d.join("exit_code").exists()
    });
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.session(&id);
    assert_eq!(s["status"], "killed", "{s}");
    assert_eq!(s["exit_code"], 143, "{s}");

    let ids = start(
        &env,
        &[
            "--no-context",
            "SLEEP=60 TRAP",
            "SLEEP=60 TRAP",
            "SLEEP=60 TRAP",
        ],
    );
    for id in &ids {
        let d = dir_of(&env, "local", id);
        env.wait_for("the agent", Duration::from_secs(20), || {
            d.join("agent.pid").exists()
        });
    }
    for id in &ids {
        let kills: Vec<_> = (0..2)
            .map(|_| {
                env.std_cmd(&["kill", id])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for k in kills {
            let out = k.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(status(&env, id), "killed", "{}", env.session(id));
    }
}
