//! The command line as the specification gives it: options, defaults, choices, exit codes,
//! and the list and status layouts rendered from a state file.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The spec's own state file example, as the Python original writes it (naive timestamps).
pub const PYTHON_STATE: &str = include_str!("expected/python-state.json");

#[test]
fn help_shows_every_option_with_defaults() {
    let env = TestEnv::new();
    let help = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("--help");
        let o = env.run(&a);
        assert_eq!(code(&o), 0);
        stdout(&o)
    };
    let start = help(&["start"]);
    for needle in [
        "--size",
        "[default: l]",
        "[possible values: s, m, l, xl]",
        "--region",
        "--max-turns",
        "[default: 10]",
        "--command",
        "[default: auto]",
        "ultrathink",
        "analyze",
        "fix",
        "Examples:",
    ] {
        assert!(
            start.contains(needle),
            "start --help lacks {needle}:\n{start}"
        );
    }
    let list = help(&["list"]);
    for needle in [
        "--status",
        "[default: all]",
        "running",
        "completed",
        "failed",
        "killed",
        "--json",
        "--verbose",
    ] {
        assert!(list.contains(needle), "list --help lacks {needle}");
    }
    let output = help(&["output"]);
    for needle in ["-n, --lines", "[default: 100]", "-f, --follow", "--raw"] {
        assert!(output.contains(needle), "output --help lacks {needle}");
    }
    assert!(help(&["kill"]).contains("--force"));
    assert!(help(&["status"]).contains("--json"));
    let prime = help(&["prime"]);
    for needle in ["--count", "[default: 1]", "--vm-size", "--region"] {
        assert!(prime.contains(needle), "prime --help lacks {needle}");
    }
    let remote = help(&[]);
    for c in ["list", "start", "output", "kill", "status", "prime"] {
        assert!(remote.contains(c), "remote --help lacks {c}");
    }
}

#[test]
fn invalid_arguments_exit_2_before_anything_runs() {
    let env = TestEnv::new();
    env.write_state("{ this state is corrupt");
    for args in [
        &["start", "--size", "xxl", "x"][..],
        &["start", "--max-turns", "0", "x"],
        &["start", "--max-turns", "-3", "x"],
        &["start", ""],
        &["start", "   "],
        &["start"],
        &["start", "--region", "east_us", "x"],
        &["output", "sess-1", "--lines", "0"],
        &["output", "sess-1", "-n", "many"],
        &["prime", "--count", "0"],
        &["prime", "--vm-size", "huge"],
        &["list", "--status", "sleeping"],
        &["kill", "sess;reboot"],
        &["kill", "../../etc/passwd"],
        &["output", "$(id)"],
        &["output", "a/b"],
        &["kill", "sess-1", "-f"],
        &["frobnicate"],
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error:"),
            "clap-style message for {args:?}: {}",
            stderr(&o)
        );
        assert!(
            !stderr(&o).contains("State file corrupt"),
            "{args:?} ran before rejecting its arguments"
        );
    }
    assert!(env.calls().is_empty());
}

#[test]
fn malformed_environment_variables_exit_2_naming_the_variable() {
    for (k, v) in [
        ("AMPLIHACK_LOCAL_SLOTS", "0"),
        ("AMPLIHACK_REMOTE_BACKEND", "gcp"),
        ("AZURE_REGION", "east/us"),
        ("AMPLIHACK_REMOTE_TIMEOUT", "soon"),
        ("AMPLIHACK_REMOTE_PARALLEL", "0"),
        ("AMPLIHACK_REMOTE_PARALLEL", "-2"),
        ("AMPLIHACK_REMOTE_PARALLEL", "1.5"),
        ("AMPLIHACK_REMOTE_PARALLEL", "many"),
        ("AMPLIHACK_REMOTE_STREAM_TIMEOUT", "1e308"),
        ("AMPLIHACK_REMOTE_RECONNECT_FOR", "99999999999999999999"),
        ("AMPLIHACK_REMOTE_FOLLOW_INTERVAL", "0"),
        ("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "inf"),
    ] {
        let mut env = TestEnv::new();
        env.set(k, v);
        let o = env.run(&["list"]);
        assert_eq!(code(&o), 2, "{k}={v}");
        assert!(stderr(&o).contains(k), "{k}: {}", stderr(&o));
    }
}

#[test]
fn an_unknown_session_exits_3_with_a_hint() {
    let env = TestEnv::new();
    for cmd in ["output", "kill", "pull", "attach"] {
        let o = env.run(&[cmd, "sess-20251125-143022-beef"]);
        assert_eq!(code(&o), 3, "{cmd}");
        assert_eq!(
            stderr(&o),
            "Error: Session 'sess-20251125-143022-beef' not found. Run 'amplihack remote list' to see tracked sessions.\n"
        );
    }
}

#[test]
fn list_and_status_render_a_python_state_file() {
    let env = TestEnv::new();
    env.write_state(PYTHON_STATE);
    let before = std::fs::read(env.state_path()).unwrap();
    let o = env.run(&["list", "--no-refresh"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("SESSION")
            && lines[0].contains("VM")
            && lines[0].contains("STATUS")
            && lines[0].contains("AGE")
            && lines[0].ends_with("PROMPT")
    );
    assert!(
        lines[1].starts_with("sess-20251125-143025-def  amplihack-user-20251125-143000  running"),
        "newest first: {text}"
    );
    assert!(
        lines[3].contains("completed")
            && lines[3].ends_with("write unit tests for the whole payments..."),
        "{text}"
    );
    let age = lines[3].split_whitespace().nth(3).unwrap();
    assert!(
        age.ends_with('d') && age[..age.len() - 1].parse::<u32>().unwrap() >= 363,
        "age in days: {text}"
    );
    assert!(!text.contains('\x1b'), "no colour off a terminal");

    let o = env.run(&["list", "--no-refresh", "--status", "completed", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    for field in [
        "session_id",
        "vm_name",
        "workspace",
        "tmux_session",
        "prompt",
        "command",
        "max_turns",
        "status",
        "memory_mb",
        "created_at",
        "started_at",
        "completed_at",
        "exit_code",
    ] {
        assert!(v[0].get(field).is_some(), "list --json lacks {field}");
    }
    assert_eq!(v[0]["created_at"], "2025-11-25T14:00:00Z");

    let o = env.run(&["status", "--no-refresh"]);
    let text = stdout(&o);
    for needle in [
        "=== Remote Session Pool Status ===\nVMs: 2 total\n",
        "  amplihack-user-20251125-143000 (Standard_D4s_v3, westus3)\n    Sessions: 2/4 (50% capacity)\n    Memory: 32GB/128GB used\n",
        "  amplihack-user-20251125-140000 (l, eastus)\n    Sessions: 0/4 (0% capacity)\n    Memory: 0GB/128GB used\n",
        "Sessions: 3 total\n  Running: 2\n  Completed: 1\n  Failed: 0\nTotal Capacity: 6/8 slots available\n",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }
    let v: Value =
        serde_json::from_slice(&env.run(&["status", "--no-refresh", "--json"]).stdout).unwrap();
    assert_eq!(
        v["capacity"],
        serde_json::json!({"used": 2, "total": 8, "available": 6})
    );
    assert_eq!(v["sessions"]["running"], 2);
    assert_eq!(
        std::fs::read(env.state_path()).unwrap(),
        before,
        "read-only commands never write"
    );
    let o = env.run(&["list", "--no-refresh", "--verbose"]);
    assert!(
        stdout(&o).contains("  Prompt:\n    write unit tests for the whole payments module\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_rewrite_keeps_unknown_fields_and_the_python_originals_timestamps() {
    let env = TestEnv::new();
    env.write_state(PYTHON_STATE);
    // The Python VM does not exist for the stand-in azlin: --force marks the session killed.
    let o = env.run(&["kill", "sess-20251125-143022-abc", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = env.state();
    assert_eq!(st["written_by"], "python");
    let s = &st["sessions"]["sess-20251125-143022-abc"];
    assert_eq!(s["python_field"], serde_json::json!([1, 2, 3]));
    assert_eq!(s["status"], "killed");
    // Its own records stay naive: the Python original cannot compare naive and aware times.
    assert_eq!(s["created_at"], "2025-11-25T14:30:22.123456");
    // Its VM is gone (azlin confirms it), so the VM's other session ended with it.
    assert_eq!(
        st["vm_pool"]["amplihack-user-20251125-143000"]["active_sessions"],
        serde_json::json!([])
    );
    let other = &st["sessions"]["sess-20251125-143025-def"];
    assert_eq!(other["status"], "failed");
    assert_eq!(other["created_at"], "2025-11-25T14:30:25");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(env.state_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

/// Timestamps we record are whole seconds; a rewrite keeps the fractions and the naive form
/// the Python original wrote, in its own records (docs/state-file.md says why).
#[test]
fn a_rewrite_keeps_python_fractions_and_records_whole_seconds() {
    let env = TestEnv::new();
    env.write_state(PYTHON_STATE);
    let o = env.run(&["kill", "sess-20251125-143022-abc", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = env.state();
    let killed = &st["sessions"]["sess-20251125-143022-abc"];
    assert_eq!(killed["created_at"], "2025-11-25T14:30:22.123456");
    let completed = killed["completed_at"].as_str().unwrap_or_default();
    assert!(
        is_whole_second_utc(&format!("{completed}Z").into()),
        "{completed}"
    );
    // The VM's other session, ended with its gone VM: its own naive time kept, ours whole.
    let other = &st["sessions"]["sess-20251125-143025-def"];
    assert_eq!(other["created_at"], "2025-11-25T14:30:25");
    let ended = other["completed_at"].as_str().unwrap_or_default();
    assert!(is_whole_second_utc(&format!("{ended}Z").into()), "{ended}");
}

#[test]
fn no_sessions_is_a_friendly_line_or_an_empty_array() {
    let env = TestEnv::new();
    assert_eq!(
        stdout(&env.run(&["list"])),
        "No sessions found. Start one with: amplihack remote start \"your task\"\n"
    );
    assert_eq!(stdout(&env.run(&["list", "--json"])), "[]\n");
    assert!(
        !env.state_path().exists(),
        "a read-only command created the state file"
    );
    let v: Value = serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["vms"], serde_json::json!([]));
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let env = TestEnv::new();
    env.write_state(PYTHON_STATE);
    let bin = assert_cmd::cargo::cargo_bin("amplihack");
    let screen = |no_color: bool| {
        let sock = env.root().join(format!("colour-{no_color}.sock"));
        let cmd = format!(
            "env -i TERM=\"$TERM\" {} AMPLIHACK_REMOTE_STATE='{}' {} remote list --no-refresh; sleep 5",
            if no_color { "NO_COLOR=1" } else { "" },
            env.state_path().display(),
            bin.display()
        );
        let tmux = |args: &[&str]| {
            std::process::Command::new("tmux")
                .arg("-S")
                .arg(&sock)
                .args(args)
                .env_remove("TMUX")
                .output()
                .unwrap()
        };
        assert!(
            tmux(&["new-session", "-d", "-x", "200", "-y", "20", &cmd])
                .status
                .success()
        );
        let mut shown = String::new();
        env.wait_for("list on the terminal", Duration::from_secs(10), || {
            shown =
                String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-e"]).stdout).into_owned();
            shown.contains("completed")
        });
        tmux(&["kill-server"]);
        shown
    };
    assert!(
        screen(false).contains("\x1b[32mcompleted"),
        "colour on a terminal"
    );
    assert!(
        !screen(true).contains("\x1b[32m"),
        "NO_COLOR disables colour"
    );
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let env = TestEnv::new();
    let mut sessions = serde_json::Map::new();
    let template: Value = serde_json::from_str::<Value>(PYTHON_STATE).unwrap()["sessions"]["sess-20251125-140000-xyz"].clone();
    for i in 0..3000 {
        let mut s = template.clone();
        let id = format!("sess-20251125-140000-{i:04}");
        s["session_id"] = id.clone().into();
        sessions.insert(id, s);
    }
    env.write_state(&serde_json::json!({"sessions": sessions, "vm_pool": {}}).to_string());
    let mut child = env
        .std_cmd(&["list", "--no-refresh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take()); // like `head -c 10`
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prime_rejects_the_local_backend() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    let o = env.run(&["prime"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("needs no priming"));
}
