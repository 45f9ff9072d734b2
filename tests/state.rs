//! The state file: location, permissions, corruption handling, odd paths, and the
//! concurrency contract.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

fn assert_corrupt_everywhere(env: &TestEnv, content: &[u8], detail: &str) {
    std::fs::create_dir_all(env.state_path().parent().unwrap()).unwrap();
    std::fs::write(env.state_path(), content).unwrap();
    for args in [
        &["list"][..],
        &["list", "--no-refresh", "--json"],
        &["status"],
        &["start", "--no-context", "x"],
        &["kill", "sess-1"],
        &["output", "sess-1"],
        &["prune", "--dry-run"],
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!(
                "Error: State file corrupt: {}: ",
                env.state_path().display()
            )),
            "{args:?}: {err}"
        );
        assert!(first.contains(detail), "{args:?}: {err}");
        assert!(
            err.contains("Recovery:") && err.contains(".corrupt"),
            "recovery steps: {err}"
        );
        assert_eq!(
            std::fs::read(env.state_path()).unwrap(),
            content,
            "{args:?} touched the corrupt file"
        );
    }
    assert!(env.calls().is_empty());
}

#[test]
fn a_corrupt_state_file_is_never_overwritten() {
    let env = TestEnv::new();
    assert_corrupt_everywhere(
        &env,
        b"{\"sessions\": {\"x\": ",
        "EOF while parsing a value at line 1 column 19",
    );
    assert_corrupt_everywhere(&env, b"", "the file is empty");
    assert_corrupt_everywhere(
        &env,
        b"not json at all",
        "expected ident at line 1 column 2",
    );
    assert_corrupt_everywhere(&env, b"[1, 2, 3]", "invalid type: sequence");
    assert_corrupt_everywhere(
        &env,
        br#"{"sessions": {"s": {"session_id": 5}}}"#,
        "invalid type: integer `5`",
    );
    assert_corrupt_everywhere(&env, br#"{"sessions": {}, "vm_pool": {"v": {"size": "x", "capacity": 1, "region": "r", "created_at": "yesterday"}}}"#, "invalid timestamp");
}

#[test]
fn a_future_version_with_extra_fields_is_read_and_kept() {
    let env = TestEnv::local();
    env.write_state(r#"{"version": 9, "sessions": {}, "vm_pool": {}, "future": {"deep": [true]}}"#);
    let o = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = env.state();
    assert_eq!(st["version"], 9);
    assert_eq!(st["future"]["deep"][0], true);
}

#[test]
fn state_path_is_a_directory() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.state_path()).unwrap();
    for args in [&["list"][..], &["start", "--no-context", "x"]] {
        let o = env.run(args);
        assert_eq!(code(&o), 1);
        assert!(
            stderr(&o).contains("is a directory; set AMPLIHACK_REMOTE_STATE to a file path"),
            "{}",
            stderr(&o)
        );
    }
}

/// A state path that is a device or a FIFO is refused at once, naming the path: never read
/// without bound (`/dev/zero`), never waited for in `open` (a FIFO nobody writes).
#[test]
fn a_state_path_that_is_not_a_regular_file_is_refused() {
    let mut env = TestEnv::new();
    let fifo = env.root().join("state/fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, what) in [
        (
            fifo.to_str().unwrap(),
            "is a named pipe (FIFO), not a regular file",
        ),
        ("/dev/zero", "is a device, not a regular file"),
    ] {
        env.set("AMPLIHACK_REMOTE_STATE", path);
        for args in [
            &["list", "--no-refresh", "--json"][..],
            &["status"],
            &["start", "--no-context", "x"],
        ] {
            // Memory is capped, so a regression that reads /dev/zero fails instead of
            // filling the machine; a timeout ends one that blocks.
            let o = assert_cmd::Command::new("sh")
                .env_clear()
                .current_dir(env.work())
                .envs(env.env())
                .args(["-c", "ulimit -v 2000000 && exec \"$@\"", "sh"])
                .arg(assert_cmd::cargo::cargo_bin("amplihack"))
                .arg("remote")
                .args(args)
                .timeout(Duration::from_secs(30))
                .output()
                .unwrap();
            assert_eq!(code(&o), 1, "{path} {args:?}: {}", stderr(&o));
            assert_eq!(
                stderr(&o),
                format!(
                    "Error: State file {path}: {what}; set AMPLIHACK_REMOTE_STATE to a file path\n"
                ),
                "{args:?}"
            );
        }
    }
}

/// A state file larger than any real one (a sparse 4 GB file here) is refused naming the path,
/// not read into memory.
#[test]
fn a_state_file_larger_than_any_real_one_is_refused() {
    let mut env = TestEnv::new();
    let big = env.root().join("state/big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    env.set("AMPLIHACK_REMOTE_STATE", big.to_str().unwrap());
    let o = assert_cmd::Command::new("sh")
        .env_clear()
        .current_dir(env.work())
        .envs(env.env())
        .args(["-c", "ulimit -v 2000000 && exec \"$@\"", "sh"])
        .arg(assert_cmd::cargo::cargo_bin("amplihack"))
        .args(["remote", "list", "--no-refresh"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "Error: State file {}: is 4294967296 bytes",
            big.display()
        )),
        "{err}"
    );
}

/// A state file named `*.lock` is its own Python-original lock name: it is not also locked
/// (and so created empty) as that lock.
#[test]
fn a_state_file_named_like_a_lock_works() {
    let mut env = TestEnv::local();
    let path = env.root().join("state/s.lock");
    env.set("AMPLIHACK_REMOTE_STATE", path.to_str().unwrap());
    let o = env.run(&["start", "--no-context", "SLEEP=0 x"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env.run(&["list", "--no-refresh", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// The archive folder follows the state path's rule: absolute or under `~/`, else exit 2.
#[test]
fn a_relative_archive_setting_is_refused() {
    let mut env = TestEnv::new();
    for relative in ["archive", "./archive", "~other/archive"] {
        env.set("AMPLIHACK_REMOTE_ARCHIVE", relative);
        for args in [&["list"][..], &["output", "sess-1"]] {
            let o = env.run(args);
            assert_eq!(code(&o), 2, "{relative} {args:?}: {}", stderr(&o));
            assert_eq!(
                stderr(&o),
                format!(
                    "Error: invalid AMPLIHACK_REMOTE_ARCHIVE={relative:?}: a relative path names a different folder in every directory; set AMPLIHACK_REMOTE_ARCHIVE to an absolute path (or one starting with ~/)\n"
                )
            );
        }
    }
    assert!(env.calls().is_empty());
    // Under ~/ it is the home's.
    env.set("AMPLIHACK_REMOTE_ARCHIVE", "~/kept");
    let o = env.run(&["list", "--no-refresh"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn a_missing_directory_is_created_0700_on_first_write_only() {
    let mut env = TestEnv::local();
    let nested = env.root().join("deep/er/state.json");
    env.set("AMPLIHACK_REMOTE_STATE", nested.to_str().unwrap());
    assert_eq!(code(&env.run(&["list"])), 0);
    assert!(
        !env.root().join("deep").exists(),
        "list must not create anything"
    );
    let o = env.run(&["start", "--no-context", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(env.root().join("deep/er"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        env.root().join("deep/er/state.json.lock").exists(),
        "the lock file sits beside the state"
    );
}

#[test]
fn the_default_location_is_under_home() {
    let mut env = TestEnv::local();
    env.unset("AMPLIHACK_REMOTE_STATE");
    let o = env.run(&["start", "--no-context", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let path = env.home().join(".amplihack/remote-state.json");
    assert!(path.exists());
    assert_eq!(
        std::fs::metadata(env.home().join(".amplihack"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn a_symlinked_state_file_is_followed_and_stays_a_link() {
    let mut env = TestEnv::local();
    let real = env.root().join("state/real.json");
    std::fs::write(&real, r#"{"sessions": {}, "vm_pool": {}}"#).unwrap();
    let link = env.root().join("state/link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.set("AMPLIHACK_REMOTE_STATE", link.to_str().unwrap());
    let o = env.run(&["start", "--no-context", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("\"sessions\"")
    );
    assert!(std::fs::read_to_string(&real).unwrap().contains("EXIT=0"));
}

#[test]
fn an_unreadable_state_file_is_a_clear_error() {
    let env = TestEnv::new();
    env.write_state(r#"{"sessions": {}, "vm_pool": {}}"#);
    std::fs::set_permissions(env.state_path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        env.root().join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // Root reads anything: run as nobody when we are root.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("amplihack"));
        c
    } else {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("amplihack"))
    };
    let o = cmd
        .env_clear()
        .envs(env.env())
        .current_dir("/")
        .args(["remote", "list"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "State file {}: cannot read: Permission denied",
            env.state_path().display()
        )),
        "{err}"
    );
}

#[test]
fn sixteen_concurrent_starts_all_land() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "16");
    let children: Vec<_> = (0..16)
        .map(|i| {
            env.std_cmd(&[
                "start",
                "--no-context",
                "--json",
                &format!("EXIT=0 writer {i}"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let st = env.state();
    let sessions = st["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 16);
    for i in 0..16 {
        assert!(
            sessions
                .values()
                .any(|s| s["prompt"] == format!("EXIT=0 writer {i}")),
            "writer {i} lost"
        );
    }
    assert!(sessions.values().all(|s| s["status"] != "pending"));
}

/// Two state files in one directory: their writers take different locks and run at once, so
/// neither may touch the other's temp files. Every transaction of every writer lands.
#[test]
fn state_files_sharing_a_directory_never_delete_each_others_temp_files() {
    const WRITERS_PER_FILE: usize = 12;
    const VMS_PER_WRITER: usize = 4;
    let mut env = TestEnv::new();
    // Every azlin call succeeds at once: what remains is state transactions, one to reserve
    // the VMs and one per VM to commit it.
    env.set("AMPLIHACK_AZLIN", "true");
    let dir = env.root().join("shared");
    let files = ["a.json", "b.json"];
    let children: Vec<_> = (0..WRITERS_PER_FILE)
        .flat_map(|_| files)
        .map(|file| {
            env.std_cmd(&["prime", "--count", &VMS_PER_WRITER.to_string(), "--json"])
                .env("AMPLIHACK_REMOTE_STATE", dir.join(file))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for file in files {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let vms = st["vm_pool"].as_object().unwrap();
        assert_eq!(vms.len(), WRITERS_PER_FILE * VMS_PER_WRITER, "{file}");
        assert!(
            vms.values().all(|v| v.get("state").is_none()),
            "{file}: a VM was left provisioning or failed"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // Each state file's lock and the Python original's (`a.lock`), and no temp file.
    assert_eq!(
        left,
        [
            "a.json",
            "a.json.lock",
            "a.lock",
            "b.json",
            "b.json.lock",
            "b.lock"
        ]
    );
}

/// `~/...` is the same file from every directory; a relative path is refused before anything
/// is read or written.
#[test]
fn the_state_setting_expands_tilde_and_refuses_relative_paths() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_REMOTE_STATE", "~/pools/remote.json");
    let o = env.run(&["start", "--no-context", "--json", "EXIT=0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id = started_ids(&o).remove(0);
    assert!(env.home().join("pools/remote.json").exists());
    assert!(!env.work().join("~").exists());
    for dir in [
        env.work(),
        env.root().to_path_buf(),
        std::path::PathBuf::from("/"),
    ] {
        let o = env
            .cmd()
            .current_dir(&dir)
            .args(["remote", "list", "--json", "--no-refresh"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&id),
            "from {}: {}",
            dir.display(),
            stdout(&o)
        );
    }

    for relative in ["remote.json", "./state/remote.json", "~other/remote.json"] {
        env.set("AMPLIHACK_REMOTE_STATE", relative);
        for args in [&["list"][..], &["start", "--no-context", "EXIT=0"]] {
            let o = env.run(args);
            assert_eq!(code(&o), 2, "{relative} {args:?}: {}", stderr(&o));
            assert_eq!(
                stderr(&o),
                format!(
                    "Error: invalid AMPLIHACK_REMOTE_STATE={relative:?}: a relative path names a different file in every directory; set AMPLIHACK_REMOTE_STATE to an absolute path (or one starting with ~/)\n"
                )
            );
        }
    }
    let mut made: Vec<_> = std::fs::read_dir(env.work())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    made.sort();
    assert!(
        made.is_empty(),
        "created in the working directory: {made:?}"
    );
}

/// A disk that cannot take the state file (full; here a file size limit with SIGXFSZ ignored,
/// so the write fails with EFBIG as it would with ENOSPC): `list` still shows every session, as
/// last recorded, and says why; the file is left whole.
#[test]
fn list_on_a_full_disk_shows_the_sessions_as_last_recorded() {
    let env = TestEnv::local();
    let ended = env.start_running("LINES=1");
    let running = env.start_running("SLEEP=300");
    env.wait_for("the first agent to end", Duration::from_secs(30), || {
        env.home()
            .join(".amplihack/remote/sessions")
            .join(&ended.id)
            .join("exit_code")
            .exists()
    });
    let before = std::fs::read(env.state_path()).unwrap();
    assert!(before.len() > 1024, "the state outgrows the limit");
    let out = std::process::Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 1; exec \"$0\" remote list"])
        .arg(assert_cmd::cargo::cargo_bin("amplihack"))
        .env_clear()
        .envs(env.env())
        .current_dir(env.work())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&ended.id) && text.contains(&running.id),
        "{text}"
    );
    assert!(
        stderr(&out).contains("shown as last recorded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(env.state_path()).unwrap(), before);
    // With room again, the end is recorded.
    assert_eq!(env.wait_finished(&ended.id)["status"], "completed");
}
