//! Functions of the VM's library (src/remote/vm/lib.sh) driven by bash directly, for what the
//! stand-in VMs cannot make happen at will.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

use std::path::Path;
use std::process::Command;

/// Runs `script` in bash with the VM library sourced ($1) and a log file ($2); returns what
/// it printed and the log.
fn with_lib(script: &str) -> (String, String) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/vm/lib.sh");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("output.log");
    std::fs::write(&log, "").unwrap();
    let out = Command::new("bash")
        .args(["-c", script, "_"])
        .arg(&lib)
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read_to_string(&log).unwrap(),
    )
}

#[test]
fn reap_agent_returns_the_agents_exit_code() {
    let (rc, log) =
        with_lib(r#". "$1"; (exit 7) & pid=$!; sleep 0.2; reap_agent "$pid" "$2" ""; echo "$rc""#);
    assert_eq!(rc.trim(), "7");
    assert_eq!(log, "");
}

/// bash can believe a child it lost track of still runs, and `wait` would block for ever (a
/// supervisor stuck so holds its session running and its slot). A child that really runs on
/// stands in for it: the watchdog cuts the wait short long before it ends (600 s), and the
/// status counts as a failure, or as the signal's when the session was told to stop.
#[test]
fn reap_agent_never_waits_for_ever_on_a_child_bash_lost() {
    for (stopped, want) in [("", "1"), ("1", "143")] {
        let script = format!(
            r#". "$1"; sleep 600 & pid=$!; reap_agent "$pid" "$2" "{stopped}"; echo "$rc"; kill "$pid""#
        );
        let (rc, log) = with_lib(&script);
        assert_eq!(rc.trim(), want, "stopped={stopped:?}");
        assert!(
            log.contains(&format!(
                "exit status was lost (bash lost track of it); recorded as {want}"
            )),
            "{log}"
        );
    }
}

/// A stdbuf that is there but cannot run (its preload library missing) must not take the
/// agent's output with it: the redactor falls back to `sed -u`.
#[test]
fn the_redactor_works_where_stdbuf_is_broken() {
    let (out, _) = with_lib(
        r#". "$1"; bin=$(mktemp -d); printf '#!/bin/sh\nexit 125\n' > "$bin/stdbuf"; chmod +x "$bin/stdbuf"; PATH=$bin:$PATH; redact_key=s3cr3t; printf 'a s3cr3t b\nlast' | (exec_redactor); rm -r "$bin""#,
    );
    assert_eq!(out, "a [REDACTED] b\nlast");
}
