//! One state file shared with the Python original (`amplihack remote` in Python): this binary
//! reads what it writes, keeps its records as it wrote them, and locks the file it locks.
//!
//! The Python side is a small python3 program (`PYTHON_ORIGINAL`) that writes, locks and reads
//! the state file the way the Python original does: `flock` on `state_file.with_suffix(".lock")`
//! across read-merge-write, `json.dump(indent=2)` (ASCII escapes: a lone surrogate is written as
//! `"\udce9"`) to a temp file renamed over the state, naive `datetime.now().isoformat()`
//! timestamps, `created_at: null` for a VM adopted from `azlin list`; and its `list` computes
//! `datetime.now() - created_at` for every session and VM.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const PYTHON_ORIGINAL: &str = r#"
import fcntl, json, os, sys, tempfile, time
from datetime import datetime, timedelta
from pathlib import Path

state_file = Path(sys.argv[1])
command = sys.argv[2]
lock_path = state_file.with_suffix(".lock")

def locked():
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(lock_path), os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd

def unlock(fd):
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)

def read():
    if state_file.exists() and state_file.read_text().strip():
        return json.loads(state_file.read_text())
    return {"sessions": {}}

def write(data):
    fd, tmp = tempfile.mkstemp(dir=state_file.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.rename(tmp, state_file)
    os.chmod(state_file, 0o600)

def session(sid, vm, prompt, status, created, started=None, completed=None, code=None):
    return {
        "session_id": sid, "vm_name": vm, "workspace": "/workspace/" + sid,
        "tmux_session": sid, "prompt": prompt, "command": "auto", "max_turns": 10,
        "status": status, "memory_mb": 16384, "created_at": created.isoformat(),
        "started_at": started.isoformat() if started else None,
        "completed_at": completed.isoformat() if completed else None, "exit_code": code,
    }

if command == "write-pool":
    # Options: --no-surrogate (a plain prompt), --vm-created (a VM it created, with its time).
    options = sys.argv[3:]
    now = datetime.now()
    fd = locked()
    data = read()
    vm = "azlin-vm-adopted"
    data["sessions"].update({
        "sess-20251125-143022-a001": session("sess-20251125-143022-a001", vm, "fix the build", "running", now, now),
        # A byte that is not UTF-8, as Python keeps it (surrogateescape).
        "sess-20251125-143022-a002": session("sess-20251125-143022-a002", vm, "cafe menu" if "--no-surrogate" in options else b"caf\xe9 menu".decode("utf-8", "surrogateescape"), "running", now, now),
        "sess-20251125-143022-a003": session("sess-20251125-143022-a003", vm, "add tests", "completed", now - timedelta(hours=2), now - timedelta(hours=2), now - timedelta(hours=1), 0),
        "sess-20251125-143022-a004": session("sess-20251125-143022-a004", vm, "write docs", "pending", now),
    })
    data["vm_pool"] = {vm: {"size": "Standard_E16s_v5", "capacity": 4,
        "active_sessions": ["sess-20251125-143022-a001", "sess-20251125-143022-a002"],
        "region": "eastus", "created_at": now.isoformat() if "--vm-created" in options else None}}
    write(data)
    unlock(fd)
elif command == "list":
    # What its `list` and `cleanup_idle_vms` do with the file: parse every timestamp and
    # subtract it from a naive now.
    data = read()
    now = datetime.now()
    out = {}
    for sid, s in data["sessions"].items():
        assert s["status"] in ("pending", "running", "completed", "failed", "killed"), s["status"]
        created = datetime.fromisoformat(s["created_at"])
        age = now - created
        for key in ("started_at", "completed_at"):
            if s[key]:
                datetime.fromisoformat(s[key])
        out[sid] = {
            # Byte for byte, a lone surrogate included.
            "prompt": s["prompt"].encode("utf-8", "surrogateescape").hex(),
            "status": s["status"],
            "times": [s[k] for k in ("created_at", "started_at", "completed_at") if s[k]],
        }
    for name, vm in data.get("vm_pool", {}).items():
        if vm.get("created_at"):
            now - datetime.fromisoformat(vm["created_at"])
        out[name] = {"created_at": vm.get("created_at")}
    print(json.dumps(out, sort_keys=True))
elif command == "hold":
    # A transaction that takes its time: lock, read, wait for the test's go, add a session,
    # write what it read plus its own, unlock.
    marker = Path(sys.argv[3])
    fd = locked()
    data = read()
    (marker.parent / (marker.name + ".locked")).write_text("")
    while not marker.exists():
        time.sleep(0.01)
    data["sessions"]["sess-20251125-150000-b001"] = session(
        "sess-20251125-150000-b001", "azlin-vm-adopted", "added by python", "pending", datetime.now())
    write(data)
    unlock(fd)
else:
    sys.exit("unknown command " + command)
"#;

fn python(env: &TestEnv, args: &[&str]) -> Command {
    let script = env.root().join("python_original.py");
    if !script.exists() {
        std::fs::write(&script, PYTHON_ORIGINAL).unwrap();
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(env.state_path()).args(args);
    cmd
}

fn python_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = python(env, args).output().unwrap();
    assert!(
        out.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn python_list(env: &TestEnv) -> Value {
    serde_json::from_str(&python_ok(env, &["list"])).unwrap()
}

#[test]
fn the_python_originals_state_is_read_and_its_records_are_kept_as_it_wrote_them() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.state_path().parent().unwrap()).unwrap();
    python_ok(&env, &["write-pool"]);
    let before = python_list(&env);
    let raw = std::fs::read_to_string(env.state_path()).unwrap();
    assert!(raw.contains(r#""caf\udce9 menu""#), "{raw}");
    assert!(raw.contains(r#""created_at": null"#), "{raw}");

    // Read: every session, the lone surrogate shown as U+FFFD, the VM of unknown age.
    let o = env.run(&["list", "--no-refresh", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // (serde_json's Value refuses a lone surrogate, so the sessions are counted.)
    assert_eq!(
        stdout(&o).matches("\"session_id\": ").count(),
        4,
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains(r#""prompt": "caf\udce9 menu""#));
    let o = env.run(&["list", "--no-refresh"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("caf\u{fffd} menu"), "{}", stdout(&o));
    let o = env.run(&["status", "--no-refresh", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["vms"][0]["name"], "azlin-vm-adopted");
    assert!(status["vms"][0]["created_at"].is_null(), "{status:#}");
    assert_eq!(status["sessions"]["total"], 4);
    let o = env.run(&["status", "--no-refresh"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("Age: unknown"), "{}", stdout(&o));

    // Rewrite: one session killed by this binary (its VM is unknown to azlin: --force).
    let o = env.run(&["kill", "sess-20251125-143022-a001", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // azlin confirms the VM gone: nothing of the session runs anywhere, and the warning says so.
    assert!(
        stderr(&o).contains("nothing of it can still run") && !stderr(&o).contains("may still run"),
        "{}",
        stderr(&o)
    );
    let after = python_list(&env);
    assert_eq!(after["sess-20251125-143022-a001"]["status"], "killed");
    for id in [
        "sess-20251125-143022-a002",
        "sess-20251125-143022-a003",
        "sess-20251125-143022-a004",
    ] {
        assert_eq!(after[id]["prompt"], before[id]["prompt"], "{id}");
        // The VM's other sessions end as every command that meets a gone VM ends them;
        // the ended one keeps its record.
        let expected = match before[id]["status"].as_str() {
            Some("running" | "pending") => "failed",
            _ => before[id]["status"].as_str().unwrap(),
        };
        assert_eq!(after[id]["status"], expected, "{id}");
    }
    assert!(after["azlin-vm-adopted"]["created_at"].is_null());
    let raw = std::fs::read_to_string(env.state_path()).unwrap();
    assert!(raw.contains(r#""caf\udce9 menu""#), "{raw}");
    for (id, s) in after.as_object().unwrap() {
        for t in s["times"].as_array().into_iter().flatten() {
            let t = t.as_str().unwrap();
            assert!(!t.ends_with('Z'), "{id} {t}: made aware");
        }
    }
    assert_eq!(
        after["sess-20251125-143022-a002"]["prompt"],
        hex(b"caf\xe9 menu")
    );

    // A session of our own keeps the specification's form beside them.
    let mut env = env;
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    let agent = format!("{} claude", support("vm-bin/amplihack").display());
    env.set("AMPLIHACK_REMOTE_AGENT", &agent);
    let o = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ours = started_ids(&o);
    // (Its Z is what the specification asks for, although the Python original's `list` cannot
    // subtract it from its naive now: issue of that program, not of the file.)
    let raw = std::fs::read_to_string(env.state_path()).unwrap();
    let state: Value = serde_json::from_str(&raw.replace(r"\udce9", "?")).unwrap();
    let created = &state["sessions"][&ours[0]]["created_at"];
    assert!(is_whole_second_utc(created), "{created}");
    assert_eq!(
        state["sessions"]["sess-20251125-143022-a003"]["created_at"]
            .as_str()
            .map(|t| t.ends_with('Z')),
        Some(false)
    );
    let o = env.run(&["list", "--no-refresh", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A VM the Python original adopted from `azlin list` has `created_at: null`: read, shown as
/// of unknown age, written back as null.
#[test]
fn a_vm_of_unknown_creation_time_is_read_and_kept() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.state_path().parent().unwrap()).unwrap();
    python_ok(&env, &["write-pool", "--no-surrogate"]);
    // Killed first: a refresh (prune's) settles the sessions of a VM azlin does not know.
    let o = env.run(&["kill", "sess-20251125-143022-a002", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for args in [
        &["list", "--no-refresh"][..],
        &["list", "--no-refresh", "--json"],
        &["status", "--no-refresh", "--json"],
        &["prune", "--dry-run"],
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    }
    let after = python_list(&env);
    assert!(
        after["azlin-vm-adopted"]["created_at"].is_null(),
        "{after:#}"
    );
    assert_eq!(after["sess-20251125-143022-a002"]["status"], "killed");
    assert_eq!(env.state()["sessions"].as_object().unwrap().len(), 4);
}

/// Which processes wait for a `flock` on the file at `path` (from /proc/locks).
fn flock_waiters(path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return vec![];
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter(|l| l.contains("->") && l.contains(" FLOCK "))
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.rsplit(':').next() == Some(&ino.to_string()) && w.contains(':'))
        })
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "WRITE" || *w == "READ")?;
            words.get(at + 1)?.parse().ok()
        })
        .collect()
}

/// While the Python original is in a transaction, a writing command of ours waits for it, and
/// then works on what it wrote: neither loses the other's change.
#[test]
fn a_transaction_waits_for_the_python_originals_lock() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.state_path().parent().unwrap()).unwrap();
    python_ok(&env, &["write-pool", "--no-surrogate", "--vm-created"]);
    let go = env.root().join("go");
    let holder = python(&env, &["hold", go.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let locked = env.root().join("go.locked");
    env.wait_for(
        "the Python original to hold its lock",
        Duration::from_secs(30),
        || locked.exists(),
    );
    let mut ours = env
        .std_cmd(&["kill", "sess-20251125-143022-a001", "--force"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let python_lock = env.state_path().with_extension("lock");
    let mut waited = false;
    env.wait_for(
        "our kill to wait for the lock, or to finish",
        Duration::from_secs(60),
        || {
            waited = flock_waiters(&python_lock).contains(&ours.id());
            waited || ours.try_wait().unwrap().is_some()
        },
    );
    std::fs::write(&go, "").unwrap();
    let held = holder.wait_with_output().unwrap();
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    let out = ours.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waited,
        "our kill wrote while the Python original held {}",
        python_lock.display()
    );
    let after = python_list(&env);
    assert_eq!(after["sess-20251125-143022-a001"]["status"], "killed");
    // What the Python original added in its transaction is there: a session on the VM azlin
    // confirms gone, settled with the VM's others.
    assert_eq!(
        after["sess-20251125-150000-b001"]["prompt"], "616464656420627920707974686f6e",
        "added by python (hex)"
    );
    assert_eq!(after["sess-20251125-150000-b001"]["status"], "failed");
}
