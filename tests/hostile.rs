//! Hostile input and real-world setups: a wrapper that execs this binary, secrets in history,
//! branches the user moved, moved repositories and clones, a state file holding bad ids or
//! escape sequences, and the rough edges a new user meets. Each test fails on the version
//! before its fix.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn run_in(env: &TestEnv, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut c = env.cmd();
    c.current_dir(dir).arg("remote").args(args);
    c.output().unwrap()
}

/// A finished session of `env.work()` that made `commits` commits.
fn finished_with_commits(env: &TestEnv, commits: u32) -> String {
    let out = env.run(&["start", "--json", &format!("COMMIT={commits}")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    assert_eq!(env.wait_finished(&id)["status"], "completed");
    id
}

#[test]
fn pull_never_moves_a_branch_the_user_moved() {
    let env = TestEnv::new();
    env.git_repo();
    let id = finished_with_commits(&env, 2);
    let branch = format!("amplihack/{id}");
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let session_head = git(&env.work(), &["rev-parse", &branch]);

    // The user builds on the branch.
    let w = env.work();
    git(&w, &["checkout", "-q", &branch]);
    std::fs::write(w.join("mine.txt"), "my work\n").unwrap();
    git(&w, &["add", "mine.txt"]);
    git(&w, &["commit", "-q", "-m", "my own commit"]);
    let mine = git(&w, &["rev-parse", "HEAD"]);
    git(&w, &["checkout", "-q", "main"]);

    // A second pull leaves it alone and says how to get the session's commits anyway.
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&branch) && err.contains("--force") && err.contains("--branch"),
        "{err}"
    );
    assert_eq!(
        git(&w, &["rev-parse", &branch]),
        mine,
        "the user's commit stays"
    );

    // Into a new branch: the session's commits, the user's branch untouched.
    let out = env.run(&["pull", "--branch", "review/session", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(git(&w, &["rev-parse", "review/session"]), session_head);
    assert_eq!(git(&w, &["rev-parse", &branch]), mine);

    // --force resets it; the user's commit is still reachable from the reflog.
    let out = env.run(&["pull", "--force", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("reflog"), "{}", stdout(&out));
    assert_eq!(git(&w, &["rev-parse", &branch]), session_head);
    assert!(git(&w, &["reflog", "show", "--format=%H", &branch]).contains(&mine));
}

#[test]
fn pull_fast_forwards_a_branch_that_is_behind() {
    let env = TestEnv::new();
    env.git_repo();
    let id = finished_with_commits(&env, 2);
    let branch = format!("amplihack/{id}");
    let w = env.work();
    // The branch points at the session's first commit (the user reset it back, say).
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let head = git(&w, &["rev-parse", &branch]);
    git(&w, &["branch", "-f", &branch, &format!("{head}~1")]);
    let out = env.run(&["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(git(&w, &["rev-parse", &branch]), head);
}

#[test]
fn pull_recognises_a_moved_repository_and_a_clone_but_not_a_stranger() {
    let env = TestEnv::new();
    env.git_repo();
    let id = finished_with_commits(&env, 1);
    let branch = format!("amplihack/{id}");

    // A second clone, elsewhere.
    let clone = env.root().join("clone");
    git(
        env.root(),
        &["clone", "-q", &env.work().display().to_string(), "clone"],
    );
    let out = run_in(&env, &clone, &["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("into branch {branch}")),
        "{}",
        stdout(&out)
    );
    git(&clone, &["rev-parse", "--verify", &branch]);

    // The original, moved.
    let moved = env.root().join("moved");
    std::fs::rename(env.work(), &moved).unwrap();
    std::fs::create_dir(env.work()).unwrap();
    let out = run_in(&env, &moved, &["pull", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    git(&moved, &["rev-parse", "--verify", &branch]);

    // An unrelated repository: refused, naming the commit and where the session came from.
    let stranger = env.root().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    git(&stranger, &["init", "-q"]);
    git(
        &stranger,
        &[
            "-c",
            "user.email=s@example.invalid",
            "-c",
            "user.name=s",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "other",
        ],
    );
    let out = run_in(&env, &stranger, &["pull", &id]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("does not have commit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn region_names_are_case_insensitive() {
    let env = TestEnv::new();
    let out = env.run(&[
        "start",
        "--no-context",
        "--region",
        "EastUS",
        "--json",
        "EXIT=0",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    assert_eq!(env.state()["vm_pool"][&vm]["region"], "eastus");
    let mut env = env;
    env.set("AZURE_REGION", "West US 2");
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn this_binary() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("amplihack")
}

fn new_calls(env: &TestEnv) -> usize {
    env.calls().iter().filter(|c| c[0] == "new").count()
}

#[test]
fn many_new_vms_need_a_yes_off_a_terminal() {
    let mut env = TestEnv::new();
    // The default threshold is 10: 11 prompts at size s (one slot each) ask.
    let prompts: Vec<String> = (0..11).map(|i| format!("EXIT=0 #{i}")).collect();
    let mut args = vec!["start", "--no-context", "--size", "s"];
    args.extend(prompts.iter().map(String::as_str));
    let out = env.run(&args);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("11 new VMs") && err.contains("$4.22/h") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(new_calls(&env), 0, "nothing was created");
    assert!(!env.state_path().exists() || env.session_ids().is_empty());

    // The threshold is a setting; --yes goes ahead.
    env.set("AMPLIHACK_REMOTE_CONFIRM_VMS", "1");
    let out = env.run(&["start", "--no-context", "--size", "s", "EXIT=0", "EXIT=0"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(new_calls(&env), 0);
    let out = env.run(&[
        "start",
        "--no-context",
        "--size",
        "s",
        "--yes",
        "EXIT=0",
        "EXIT=0",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(new_calls(&env), 2);
}

#[test]
fn many_new_vms_ask_on_a_terminal_with_the_hourly_cost() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_CONFIRM_VMS", "1");
    let start = format!(
        "env -i TERM=xterm {} {} remote start --no-context --size m a b c d e; echo start-exit=$?; sleep 30",
        env.env_words(),
        this_binary().display(),
    );
    let terminal = Terminal::new(&env, "ask", &start);
    let screen = terminal.wait_for("Create them? [y/N]", false);
    assert!(
        screen.contains("3 new VMs (Standard_E8s_v5 in eastus): about $1.51/h"),
        "{screen}"
    );
    terminal.keys(&["n", "Enter"]);
    let screen = terminal.wait_for("start-exit=", false);
    assert!(screen.contains("start-exit=1"), "{screen}");
    assert_eq!(new_calls(&env), 0);
}

/// `ROOT/<dir>/amplihack`: a wrapper script that execs this binary, like an asdf or mise shim.
fn wrapper_of_this_binary(env: &TestEnv, dir: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = env.root().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let script = d.join("amplihack");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", this_binary().display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn set_path(env: &mut TestEnv, dirs: &[&str]) {
    let mut parts: Vec<String> = dirs
        .iter()
        .map(|d| env.root().join(d).display().to_string())
        .collect();
    parts.push("/usr/local/bin:/usr/bin:/bin".into());
    env.set("PATH", &parts.join(":"));
}

/// The stand-in agent as the Python amplihack, in `ROOT/<dir>/amplihack`.
fn python_amplihack(env: &TestEnv, dir: &str) -> std::path::PathBuf {
    let d = env.root().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let python = d.join("amplihack");
    std::os::unix::fs::symlink(support("vm-bin/amplihack"), &python).unwrap();
    python
}

#[test]
fn a_wrapper_that_execs_this_binary_does_not_loop() {
    let mut env = TestEnv::new();
    wrapper_of_this_binary(&env, "wrap");
    set_path(&mut env, &["wrap"]);
    // Through the wrapper, as a user types it: nothing else to hand it to, exit 2 at once.
    let mut c = env.cmd();
    c.timeout(Duration::from_secs(20));
    let out = c.arg("claude").output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'claude' is not a command of this amplihack"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let mut c = std::process::Command::new(env.root().join("wrap/amplihack"));
    c.env_clear().envs(env.env()).current_dir(env.work());
    let out = assert_cmd::Command::from_std(c)
        .timeout(Duration::from_secs(20))
        .arg("launch")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn a_wrapper_before_the_python_amplihack_hands_commands_on_and_is_not_the_local_agent() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    env.unset("AMPLIHACK_REMOTE_AGENT");
    wrapper_of_this_binary(&env, "wrap");
    let python = python_amplihack(&env, "python");
    set_path(&mut env, &["wrap", "python"]);
    // A forwarded command passes the wrapper, comes back here and goes on to the Python one.
    let mut c = env.cmd();
    c.timeout(Duration::from_secs(20));
    let out = c.arg("--version").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "go to {} (amplihack 0.0.0 (stand-in))",
            python.display()
        )),
        "{}",
        stdout(&out)
    );
    let mut c = env.cmd();
    c.timeout(Duration::from_secs(20));
    let out = c.args(["claude", "EXIT=0"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let argv = std::fs::read(env.home().join("agent-records/work/argv")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
    assert_eq!(
        argv[..3],
        [python.as_os_str().as_encoded_bytes(), b"claude", b"EXIT=0"]
    );
    // The local agent is the Python amplihack, not the wrapper.
    let started = env.start_running("LINES=1");
    let argv = std::fs::read(env.agent_record("local", &started.id).join("argv")).unwrap();
    let argv0 = argv.split(|b| *b == 0).next().unwrap();
    assert_eq!(argv0, python.as_os_str().as_encoded_bytes());
}

/// A slow other amplihack (a first `uvx` run, a wrapper waiting on something) does not hold
/// `--version` up: ours is printed at once, theirs is asked for a few seconds, then said unknown.
#[test]
fn version_does_not_wait_long_for_a_slow_other_amplihack() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::new();
    let d = env.root().join("slow");
    std::fs::create_dir_all(&d).unwrap();
    let slow = d.join("amplihack");
    std::fs::write(&slow, "#!/bin/sh\nsleep 60\necho 'amplihack 9.9.9'\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_path(&mut env, &["slow"]);
    // A hang guard, not a timing: the other amplihack alone would take 60 s.
    let mut c = env.cmd();
    c.timeout(Duration::from_secs(25));
    let out = c.arg("--version").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("amplihack "), "{text}");
    assert!(
        text.contains(&format!("go to {}", slow.display()))
            && text.contains("no answer to --version within 3s"),
        "{text}"
    );
}

/// `--version | head -1`: the reader is gone when the other amplihack's line comes. That ends
/// it quietly (exit 0), as for any command, not with a panic and exit 101.
#[test]
fn version_into_a_reader_that_left_after_its_first_line_exits_0_quietly() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::new();
    let d = env.root().join("other");
    std::fs::create_dir_all(&d).unwrap();
    let gone = env.root().join("reader-gone");
    // The other amplihack answers once the test's reader has gone (or never: ours stops
    // asking after 3 s and writes its line all the same).
    std::fs::write(
        d.join("amplihack"),
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho 'amplihack 9.9.9'\n",
            gone.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(d.join("amplihack"), std::fs::Permissions::from_mode(0o755)).unwrap();
    set_path(&mut env, &["other"]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("amplihack"))
        .env_clear()
        .current_dir(env.work())
        .envs(env.env())
        .arg("--version")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("amplihack "), "{first}");
    // The reader (dropped above) is gone: now the other amplihack answers.
    std::fs::write(&gone, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn version_names_the_missing_python_amplihack_and_remote_exec_is_handed_to_it() {
    let mut env = TestEnv::new();
    set_path(&mut env, &["bin"]);
    let out = env.cmd().arg("--version").output().unwrap();
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.starts_with("amplihack "), "{text}");
    assert!(
        text.contains("no other amplihack on PATH") && text.contains("pip install amplihack"),
        "{text}"
    );
    // `remote exec` is the Python original's: with no Python amplihack, say so (exit 2).
    let out = env.run(&["exec", "auto", "a task"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("'remote exec' is a command of the Python amplihack"),
        "{}",
        stderr(&out)
    );
    // With it, it goes there, arguments intact.
    let python = python_amplihack(&env, "python");
    set_path(&mut env, &["bin", "python"]);
    let out = env.run(&["exec", "--version"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let argv = std::fs::read(env.home().join("agent-records/work/argv")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
    assert_eq!(
        argv[..4],
        [
            python.as_os_str().as_encoded_bytes(),
            b"remote",
            b"exec",
            b"--version"
        ]
    );
}

#[test]
fn status_with_no_known_price_costs_zero_not_minus_zero() {
    let env = TestEnv::new();
    let created = chrono::Utc::now() - chrono::Duration::hours(2);
    env.write_state(
        &serde_json::json!({
            "sessions": {},
            "vm_pool": {"amplihack-user-20251125-143000": {
                "size": "Standard_D4s_v3", "capacity": 1, "active_sessions": [],
                "region": "eastus",
                "created_at": created.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            }}
        })
        .to_string(),
    );
    let out = env.run(&["status", "--no-refresh"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Cost: $0.00/h now"), "{text}");
    assert!(!text.contains("-0"), "{text}");
    let out = env.run(&["status", "--no-refresh", "--json"]);
    let raw = stdout(&out);
    assert!(raw.contains("\"total_hourly_usd\": 0.0"), "{raw}");
    assert!(!raw.contains("-0.0"), "{raw}");
}

#[test]
fn status_json_says_reachable_for_a_vm_that_answered() {
    let env = TestEnv::new();
    let started = env.start_running("SLEEP=30");
    let out = env.run(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = v["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == started.vm.as_str())
        .unwrap()
        .clone();
    assert_eq!(vm["reachable"], true, "{vm}");
    // And false for one that does not answer.
    env.fault(&format!("vms/{}/unreachable", started.vm));
    let out = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vms"][0]["reachable"], false, "{v}");
}

#[test]
fn a_state_holding_a_path_as_a_session_id_is_reported_not_obeyed() {
    let env = TestEnv::new();
    let vm = env.prime(1, "s").remove(0);
    let important = env.vm_dir(&vm).join("home/important.txt");
    std::fs::write(&important, "keep me\n").unwrap();
    let mut state = env.state();
    let id = "../../../important.txt";
    state["sessions"][id] = serde_json::json!({
        "session_id": id, "vm_name": vm, "workspace": format!("~/workspace/{id}"),
        "tmux_session": id, "prompt": "x", "command": "auto", "max_turns": 10,
        "status": "pending", "memory_mb": 32768, "created_at": "2025-11-25T14:30:22Z",
        "started_at": null, "completed_at": null, "exit_code": null
    });
    env.write_state(&state.to_string());
    env.clear_calls();
    for args in [&["list"][..], &["status"], &["kill", "sess-1"], &["sync"]] {
        let out = env.run(args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("\"../../../important.txt\" is not safe to use"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&important).unwrap(), "keep me\n");
    assert!(env.calls().is_empty(), "no VM was asked: {:?}", env.calls());

    // A VM name that is a path, likewise.
    let mut state = env.state();
    state["sessions"].as_object_mut().unwrap().clear();
    let entry = state["vm_pool"][&vm].clone();
    state["vm_pool"]["../../evil"] = entry;
    env.write_state(&state.to_string());
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("the VM name \"../../evil\" is not valid"),
        "{}",
        stderr(&out)
    );
}

const HOSTILE_PROMPT: &str =
    "fix it\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m \u{202e}gnp.exe\nsecond line\u{1b}c";

fn state_with_prompt(env: &TestEnv, prompt: &str) -> String {
    let id = "sess-20251125-143022-abc1";
    env.write_state(
        &serde_json::json!({
            "sessions": {id: {
                "session_id": id, "vm_name": "amplihack-user-20251125-143000",
                "workspace": format!("/workspace/{id}"), "tmux_session": id,
                "prompt": prompt, "command": "auto", "max_turns": 10,
                "status": "completed", "memory_mb": 32768,
                "created_at": "2025-11-25T14:30:22Z", "started_at": "2025-11-25T14:30:25Z",
                "completed_at": "2025-11-25T14:40:00Z", "exit_code": 0,
                "error": "bad\u{1b}[2Jthing"
            }},
            "vm_pool": {"amplihack-user-20251125-143000": {
                "size": "Standard_E16s_v5\u{1b}[5m", "capacity": 4, "active_sessions": [],
                "region": "eastus", "created_at": "2025-11-25T14:30:00Z"
            }}
        })
        .to_string(),
    );
    id.to_string()
}

fn assert_terminal_safe(text: &str, what: &str) {
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!text.contains(bad), "{what} holds {bad:?}: {text:?}");
    }
}

#[test]
fn text_from_the_state_never_acts_on_the_terminal() {
    let env = TestEnv::new();
    state_with_prompt(&env, HOSTILE_PROMPT);
    let out = env.run(&["list", "--verbose", "--no-refresh"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_terminal_safe(&text, "list --verbose");
    assert!(
        text.contains("fix it\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m \\u{202e}gnp.exe"),
        "{text}"
    );
    assert!(text.contains("    second line\\x1bc"), "{text}");
    assert!(text.contains("Error:       bad?[2Jthing"), "{text}");
    let out = env.run(&["list", "--no-refresh"]);
    assert_terminal_safe(&stdout(&out), "list");
    let out = env.run(&["status", "--no-refresh"]);
    assert_terminal_safe(&stdout(&out), "status");
    let out = env.run(&["report"]);
    assert_terminal_safe(&stdout(&out), "report");
    assert_terminal_safe(&stderr(&out), "report's stderr");
    // --json stays byte for byte: the prompt is the state's.
    let out = env.run(&["list", "--json", "--no-refresh"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["prompt"], HOSTILE_PROMPT);
    assert!(stdout(&out).contains('\u{202e}'));
}

/// With stderr a closed pipe (`2>&1 | head -1` once head has quit), progress lines are lost,
/// not fatal: the start still launches its session and exits 0.
#[test]
fn a_closed_stderr_never_stops_a_start_half_way() {
    let env = TestEnv::local();
    let mut child = env
        .std_cmd(&["start", "--no-context", "--json", "SLEEP=30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let id = started_ids(&out).remove(0);
    assert_eq!(env.session(&id)["status"], "running");
}

/// With stdout a closed pipe (`start ... | true`), the prompts still start: the report is lost,
/// not the work.
#[test]
fn a_closed_stdout_never_keeps_a_start_from_starting() {
    let env = TestEnv::local();
    let mut child = env
        .std_cmd(&["start", "--no-context", "SLEEP=30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sessions = env.state()["sessions"].as_object().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(
        sessions.values().all(|s| s["status"] == "running"),
        "{sessions:?}"
    );
}

/// A shallow clone cannot be sent whole: start refuses it before anything is reserved.
#[test]
fn a_shallow_clone_is_refused_before_anything_starts() {
    let env = TestEnv::local();
    env.git_repo();
    let shallow = env.root().join("shallow");
    let cloned = std::process::Command::new("git")
        .args(["clone", "-q", "--depth", "1"])
        .arg(format!("file://{}", env.work().display()))
        .arg(&shallow)
        .output()
        .unwrap();
    assert!(
        cloned.status.success(),
        "{}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let out = env
        .std_cmd(&["start", "x"])
        .current_dir(&shallow)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a shallow clone"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("git fetch --unshallow"),
        "{}",
        stderr(&out)
    );
    assert!(!env.state_path().exists() || env.state()["sessions"].as_object().unwrap().is_empty());
}

/// A status this version does not know is the state's own string: `report`'s total line and
/// `kill` show it escaped too.
#[test]
fn an_unknown_status_never_acts_on_the_terminal() {
    let env = TestEnv::new();
    let id = state_with_prompt(&env, "x");
    let mut state = env.state();
    state["sessions"][&id]["status"] = "weird\u{1b}]0;PWN\u{7}\u{1b}[2J\u{202e}\u{9b}31m".into();
    env.write_state(&state.to_string());
    let out = env.run(&["report", "--since", "100000d", "--no-refresh"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 weird\\x1b]0;PWN"),
        "{}",
        stdout(&out)
    );
    assert_terminal_safe(&stdout(&out), "report");
    let out = env.run(&["kill", &id]);
    assert_terminal_safe(&stdout(&out), "kill");
    assert_terminal_safe(&stderr(&out), "kill's stderr");
}

#[test]
fn session_output_keeps_colours_escapes_the_rest_and_raw_is_byte_exact() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::local();
    let agent = env.root().join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/bash\nprintf '\\033]0;pwned\\007\\033[2J\\033[31mred\\033[0m \\342\\200\\256txt\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.set("AMPLIHACK_REMOTE_AGENT", &agent.display().to_string());
    let out = env.run(&["start", "--no-context", "--json", "x"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    env.wait_finished(&id);
    let raw_line: &[u8] = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m \xe2\x80\xaetxt\n";
    let out = env.run(&["output", &id, "--raw"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        out.stdout.windows(raw_line.len()).any(|w| w == raw_line),
        "{:?}",
        stdout(&out)
    );
    for args in [&["output", &id][..], &["output", &id, "--follow"]] {
        let out = env.run(args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("\\x1b]0;pwned\\x07\\x1b[2J\u{1b}[31mred\u{1b}[0m \\u{202e}txt\n"),
            "{args:?}: {text:?}"
        );
    }
}

#[test]
fn a_secret_deleted_from_head_but_in_history_is_not_sent() {
    let env = TestEnv::new();
    env.git_repo();
    let w = env.work();
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
    std::fs::write(w.join("settings.py"), format!("KEY = '{key}'\n")).unwrap();
    std::fs::write(w.join("creds.env"), "TOKEN=1\n").unwrap();
    git(&w, &["add", "."]);
    git(&w, &["commit", "-q", "-m", "oops"]);
    git(&w, &["rm", "-q", "settings.py", "creds.env"]);
    git(&w, &["commit", "-q", "-m", "remove the key"]);
    let out = env.run(&["start", "task"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("settings.py:1: Anthropic API key sk-ant..."),
        "{err}"
    );
    assert!(err.contains("creds.env: secret file committed"), "{err}");
    assert!(err.contains("in an earlier commit only"), "{err}");
    assert!(!err.contains(key), "the key itself is never printed: {err}");
    assert!(env.calls().is_empty(), "nothing was sent");
    // The ways out stay: no context at all, or the explicit override.
    let out = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.run(&["start", "--allow-secrets", "--json", "EXIT=0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A commit message travels in the bundle too: a key pasted into one is refused like a file's.
#[test]
fn a_secret_in_a_commit_message_is_not_sent() {
    let env = TestEnv::new();
    env.git_repo();
    let w = env.work();
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
    git(
        &w,
        &["commit", "-q", "--allow-empty", "-m", &format!("use {key}")],
    );
    let out = env.run(&["start", "task"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("the message of commit "), "{err}");
    assert!(!err.contains(key), "the key itself is never printed: {err}");
    assert!(env.calls().is_empty(), "nothing was sent");
}

/// A file git calls binary (a NUL byte in it) reaches the VM in the bundle like any other: a
/// token in it is found too (git grep -I would skip it).
#[test]
fn a_secret_in_a_file_with_a_nul_byte_is_not_sent() {
    let env = TestEnv::new();
    env.git_repo();
    let w = env.work();
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
    std::fs::write(w.join("dump.txt"), format!("header\0\nKEY={key}\n")).unwrap();
    git(&w, &["add", "."]);
    git(&w, &["commit", "-q", "-m", "add a dump"]);
    let out = env.run(&["start", "task"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("dump.txt (a binary file): Anthropic API key sk-ant..."),
        "{err}"
    );
    assert!(!err.contains(key), "the key itself is never printed: {err}");
    assert!(env.calls().is_empty(), "nothing was sent");
}

#[test]
fn secret_looking_file_names_beyond_dotenv_are_refused() {
    for name in [
        "creds.env",
        "id_rsa",
        "deploy.pem",
        "tls.key",
        "credentials.json",
        ".git-credentials",
    ] {
        let env = TestEnv::new();
        env.git_repo();
        let w = env.work();
        std::fs::write(w.join(name), "nothing that looks like a key\n").unwrap();
        git(&w, &["add", "-f", name]);
        git(&w, &["commit", "-q", "-m", "add"]);
        let out = env.run(&["start", "task"]);
        assert_eq!(code(&out), 1, "{name}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(&format!("{name}: secret file committed")),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn follow_of_a_python_original_session_follows_its_pane() {
    let env = TestEnv::new();
    let vm = env.prime(1, "l").remove(0);
    let python =
        include_str!("expected/python-state.json").replace("amplihack-user-20251125-143000", &vm);
    env.write_state(&python);
    let id = "sess-20251125-143022-abc";
    let go = env.root().join("go");
    // The Python original's session: a tmux session of that name, no directory of ours. It
    // prints a line, waits for the test, prints more, and ends.
    let script = format!(
        "echo 'before the follow'; while [ ! -e '{go}' ]; do sleep 0.05; done; echo 'while followed ünï'; sleep 0.3; echo 'the last line'",
        go = go.display()
    );
    let tmux = std::process::Command::new("tmux")
        .env("TMUX_TMPDIR", env.vm_dir(&vm).join("tmp"))
        .env_remove("TMUX")
        .args([
            "new-session",
            "-d",
            "-s",
            id,
            "-x",
            "100",
            "-y",
            "20",
            &script,
        ])
        .status()
        .unwrap();
    assert!(tmux.success());
    let follow = env
        .std_cmd(&["output", id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The follow has started once tmux pipes the pane (its log holds the pane's capture a
    // moment before the pipe opens; what the pane prints in between is in neither).
    env.wait_for(
        "the follow to pipe the pane",
        Duration::from_secs(20),
        || {
            let piped = std::process::Command::new("tmux")
                .env("TMUX_TMPDIR", env.vm_dir(&vm).join("tmp"))
                .env_remove("TMUX")
                .args([
                    "display-message",
                    "-p",
                    "-t",
                    &format!("={id}:"),
                    "#{pane_pipe}",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&piped.stdout).trim() == "1"
        },
    );
    std::fs::write(&go, "").unwrap();
    let out = follow.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.find("before the follow").expect(&text);
    let second = text.find("while followed ünï").expect(&text);
    let last = text.find("the last line").expect(&text);
    assert!(first < second && second < last, "{text}");
    assert_eq!(text.matches("while followed").count(), 1, "{text}");
    assert!(
        !env.vm_dir(&vm)
            .join(format!("home/.amplihack/remote/pane-follow/{id}.log"))
            .exists(),
        "the follow's log goes when the session ended"
    );
}

#[test]
fn output_help_says_follow_streams() {
    let env = TestEnv::new();
    let out = env.run(&["output", "--help"]);
    let help = stdout(&out);
    assert!(!help.contains("polls every 5s"), "{help}");
    assert!(help.contains("streamed over one connection"), "{help}");
}

#[test]
fn term_dumb_gets_no_colour() {
    let env = TestEnv::new();
    state_with_prompt(&env, "a plain prompt");
    for (term, coloured) in [("xterm", true), ("dumb", false)] {
        let cmd = format!(
            "env -i TERM={term} {} {} remote list --no-refresh; echo list-exit=$?; env -i TERM={term} {} {} remote report --since 1000d; echo report-exit=$?; sleep 30",
            env.env_words(),
            this_binary().display(),
            env.env_words(),
            this_binary().display(),
        );
        let terminal = Terminal::new(&env, &format!("t-{term}"), &cmd);
        let screen = terminal.wait_for("report-exit=", true);
        assert_eq!(
            screen.contains("\u{1b}[32m"),
            coloured,
            "TERM={term}: {screen:?}"
        );
    }
}

#[test]
fn report_says_24h_for_its_default_window() {
    let env = TestEnv::new();
    let out = env.run(&["report"]);
    assert!(
        stdout(&out).contains("No session ended in the last 24h"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_man_page_has_environment_and_files() {
    let env = TestEnv::new();
    let out = env.run(&["man"]);
    let page = stdout(&out);
    assert!(page.contains(".SH ENVIRONMENT"), "no ENVIRONMENT");
    assert!(page.contains(".SH FILES"), "no FILES");
    for name in [
        "ANTHROPIC_API_KEY",
        "AMPLIHACK_REMOTE_STATE",
        "AMPLIHACK_REMOTE_ARCHIVE",
        "AZURE_REGION",
        "remote\\-archive",
        "remote\\-state.json.lock",
    ] {
        assert!(page.contains(name), "the page lacks {name}");
    }
}

#[test]
fn the_demo_waits_with_wait_and_shows_report() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.sh")).unwrap();
    assert!(demo.contains("step wait"), "{demo}");
    assert!(demo.contains("step report"), "{demo}");
    assert!(
        !demo.contains("while \"$bin\" remote list"),
        "no shell loop over list: {demo}"
    );
}

#[test]
fn wait_json_at_its_timeout_prints_the_sessions_still_running() {
    let env = TestEnv::local();
    let quick = env.start_running("EXIT=0");
    let slow = env.start_running("SLEEP=60");
    let out = env.run(&["wait", &quick.id, &slow.id, "--json", "--timeout", "3"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&out));
    assert_eq!(lines[0]["session_id"], quick.id.as_str());
    assert_eq!(lines[0]["status"], "completed");
    assert_eq!(lines[1]["session_id"], slow.id.as_str());
    assert_eq!(lines[1]["status"], "running");
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
}

#[test]
fn kill_of_a_queued_session_says_it_leaves_the_queue() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=60", "SLEEP=60"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert_eq!(env.session(&ids[1])["status"], "queued");
    let out = env.run(&["kill", &ids[1]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("SIGTERM"), "{text}");
    assert!(
        text.contains("Taking it out of the queue on VM local..."),
        "{text}"
    );
    let _ = env.run(&["kill", "--force", &ids[0]]);
}

#[test]
fn session_not_on_vm_suggests_pull_only_for_a_session_with_a_repository() {
    let env = TestEnv::local();
    let started = env.start_running("SLEEP=60");
    let tmux = std::process::Command::new("tmux")
        .env("TMUX_TMPDIR", env.root().join("tmux"))
        .env_remove("TMUX")
        .args(["kill-session", "-t", &started.id])
        .status()
        .unwrap();
    assert!(tmux.success());
    let dir = env
        .home()
        .join(".amplihack/remote/sessions")
        .join(&started.id);
    env.wait_for("the supervisor to end", Duration::from_secs(20), || {
        let _ = std::fs::remove_dir_all(&dir);
        std::thread::sleep(Duration::from_millis(200));
        !dir.exists()
    });
    let out = env.run(&["output", &started.id, "--no-refresh"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Session not found on VM"), "{err}");
    assert!(
        !err.contains("pull"),
        "a --no-context session has nothing to pull: {err}"
    );
}

#[test]
fn prune_counts_what_it_deleted_and_blames_the_archive_folder_when_it_is_the_problem() {
    let env = TestEnv::new();
    let out = env.run(&["start", "--no-context", "--json", "LINES=2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    assert_eq!(env.wait_finished(&id)["status"], "completed");
    // As if it had ended before archives existed; and the archive folder cannot be written.
    let mut st = env.state();
    st["sessions"][&id]
        .as_object_mut()
        .unwrap()
        .remove("archived_at");
    env.write_state(&st.to_string());
    std::fs::remove_dir_all(env.archive_dir().join(&id)).unwrap();
    // A file where the archive folder should be (permissions do not stop root).
    let archive = env.archive_dir();
    std::fs::remove_dir_all(&archive).unwrap();
    std::fs::write(&archive, "not a folder").unwrap();
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    std::fs::remove_file(&archive).unwrap();
    assert_ne!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Pruned 0 of 1 idle VM(s):\n"), "{text}");
    assert!(
        text.contains(&format!(
            "KEPT: 1 session(s) not archived: their archives came home but could not be kept in {}",
            archive.display()
        )),
        "{text}"
    );
    assert!(text.contains("fix the archive folder"), "{text}");
    assert!(!text.contains("when its VM answers"), "{text}");
    assert!(env.state()["vm_pool"].get(&vm).is_some());
}

#[test]
fn a_start_that_failed_on_quota_does_not_show_a_vm_that_was_never_created() {
    let env = TestEnv::new();
    env.fault("quota/eastus");
    let out = env.run(&["start", "--no-context", "task"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("(new)"), "{text}");
    assert!(text.contains("  VM: none ("), "{text}");
    assert!(text.contains("could not be created)"), "{text}");
}

#[test]
fn queued_sessions_say_their_place_in_the_vms_queue() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let out = env.run(&["start", "--no-context", "SLEEP=60", "SLEEP=60", "SLEEP=60"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("place 1 of 2;"), "{text}");
    assert!(text.contains("place 2 of 2;"), "{text}");
    assert!(!text.contains("place 1 of 1;"), "{text}");
    for id in env.session_ids() {
        let _ = env.run(&["kill", "--force", &id]);
    }
}

#[test]
fn a_follow_says_the_end_at_once_and_reports_a_frozen_archive_call_apart() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let started = env.start_running("TICK=20");
    env.clear_calls();
    let mut follow = env
        .std_cmd(&["output", &started.id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the stream's first bytes are here, its connection is past the stand-in's faults.
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut header = String::new();
    stdout.read_line(&mut header).unwrap();
    assert!(header.starts_with("=== Session"), "{header}");
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    // The next connection (the call that brings the results home) hangs.
    std::fs::write(env.azlin_home().join("freeze-next"), "1\n").unwrap();
    let stderr = std::io::BufReader::new(follow.stderr.take().unwrap());
    let lines: Vec<String> = stderr.lines().map(|l| l.unwrap()).collect();
    assert!(follow.wait().unwrap().success());
    drain.join().unwrap().unwrap();
    let ended = lines
        .iter()
        .position(|l| l.starts_with(&format!("Session {} ended: completed", started.id)))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let warned = lines
        .iter()
        .position(|l| l.contains("could not bring the"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        ended < warned,
        "the end first, the archive apart: {lines:#?}"
    );
}

/// A state of two sessions, the script for `shell` in ROOT, and our binary on PATH as
/// `amplihack` (the scripts ask it for the session ids).
fn completion_world(shell: &str) -> (TestEnv, std::path::PathBuf) {
    let env = TestEnv::new();
    let mut state = serde_json::json!({"sessions": {}, "vm_pool": {}});
    for (id, t) in [
        ("sess-20251125-143022-abc1", "2025-11-25T14:30:22Z"),
        ("sess-20251125-150000-def2", "2025-11-25T15:00:00Z"),
    ] {
        state["sessions"][id] = serde_json::json!({
            "session_id": id, "vm_name": "amplihack-user-20251125-143000",
            "workspace": format!("/workspace/{id}"), "tmux_session": id, "prompt": "x",
            "command": "auto", "max_turns": 10, "status": "completed", "memory_mb": 1,
            "created_at": t, "started_at": t, "completed_at": t, "exit_code": 0
        });
    }
    env.write_state(&state.to_string());
    std::os::unix::fs::symlink(this_binary(), env.root().join("bin/amplihack")).unwrap();
    let out = env.run(&["completions", shell]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let file = env.root().join(format!("completions.{shell}"));
    std::fs::write(&file, &out.stdout).unwrap();
    (env, file)
}

fn shell_in(env: &TestEnv, shell: &str, script: &str) -> String {
    let out = std::process::Command::new(shell)
        .args(["-c", script])
        .env_clear()
        .envs(env.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn bash_completes_session_ids_from_the_state_and_the_python_commands() {
    let (env, file) = completion_world("bash");
    let probe = format!(
        "source '{}'\n\
         ask() {{ COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); \
         f=$(complete -p amplihack | sed 's/.* -F \\([^ ]*\\) .*/\\1/'); \
         $f amplihack \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\" | sort | paste -sd ' '; }}\n\
         ask amplihack remote kill ''\n\
         ask amplihack remote output sess-20251125-15\n\
         ask amplihack remote output --lines ''\n\
         ask amplihack cl\n\
         ask amplihack rem\n",
        file.display()
    );
    let text = shell_in(&env, "bash", &probe);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "sess-20251125-143022-abc1 sess-20251125-150000-def2"
    );
    assert_eq!(lines[1], "sess-20251125-150000-def2");
    assert!(!lines[2].contains("sess-"), "a value of --lines: {text}");
    assert_eq!(lines[3], "claude");
    assert_eq!(lines[4], "remote");
    assert!(env.calls().is_empty(), "no remote call");
}

#[test]
fn fish_completes_session_ids_and_the_python_commands() {
    let (env, file) = completion_world("fish");
    let words = |line: &str| -> Vec<String> {
        let text = shell_in(
            &env,
            "fish",
            &format!("source '{}'; complete -C '{line}'", file.display()),
        );
        let mut w: Vec<String> = text
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        w.sort();
        w
    };
    assert_eq!(
        words("amplihack remote attach "),
        vec!["sess-20251125-143022-abc1", "sess-20251125-150000-def2"]
    );
    assert!(words("amplihack la").contains(&"launch".to_string()));
}

#[test]
fn zsh_completion_takes_session_ids_from_the_state() {
    let (env, file) = completion_world("zsh");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(":_amplihack_sessions'"), "{text}");
    assert!(text.contains("'claude:a command of the Python amplihack'"));
    // The helper the script defines, run as zsh would.
    let ids = shell_in(
        &env,
        "zsh",
        "print -l ${(f)\"$(amplihack remote __sessions 2>/dev/null)\"}",
    );
    assert_eq!(
        ids,
        "sess-20251125-150000-def2\nsess-20251125-143022-abc1\n"
    );
    let out = std::process::Command::new("zsh")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_state_naming_many_deleted_vms_costs_one_listing_and_one_warning() {
    let env = TestEnv::new();
    let mut state = serde_json::json!({"sessions": {}, "vm_pool": {}});
    for i in 0..40 {
        let vm = format!("amplihack-user-20251125-1400{i:02}");
        let id = format!("sess-20251125-1400{i:02}-abc");
        state["vm_pool"][&vm] = serde_json::json!({
            "size": "Standard_E16s_v5", "capacity": 4, "active_sessions": [&id],
            "region": "eastus", "created_at": "2025-11-25T14:00:00Z"
        });
        state["sessions"][&id] = serde_json::json!({
            "session_id": id, "vm_name": vm, "workspace": format!("/workspace/{id}"),
            "tmux_session": id, "prompt": "x", "command": "auto", "max_turns": 10,
            "status": "running", "memory_mb": 32768, "created_at": "2025-11-25T14:00:00Z",
            "started_at": "2025-11-25T14:00:05Z", "completed_at": null, "exit_code": null
        });
    }
    env.write_state(&state.to_string());
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let calls = env.calls();
    assert_eq!(
        calls.iter().filter(|c| c[0] == "list").count(),
        1,
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|c| c[0] == "list"),
        "no VM asked: {calls:?}"
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one warning: {err}");
    assert!(
        err.contains("40 VM(s) of the state are not in Azure"),
        "{err}"
    );
    // Their sessions ended, so the next list asks nothing at all.
    env.clear_calls();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.calls().is_empty(), "{:?}", env.calls());
}

#[test]
fn report_does_not_say_uncommitted_work_goes_with_a_vm_that_is_gone() {
    let env = TestEnv::new();
    env.git_repo();
    let out = env.run(&["start", "--json", "EDIT=1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    env.wait_finished(&id);
    let vm = env.vm_of(&id);
    // The VM is deleted (as prune --force would): the archive still keeps the work.
    let mut state = env.state();
    state["vm_pool"].as_object_mut().unwrap().remove(&vm);
    env.write_state(&state.to_string());
    let out = env.run(&["report"]);
    let text = stdout(&out);
    assert!(text.contains("* Uncommitted work"), "{text}");
    assert!(!text.contains("goes with the VM"), "{text}");
}
