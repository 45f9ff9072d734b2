//! The secrets an agent prints (its API key, from `env` or an error quoting it; the notify URL)
//! are redacted on the VM, as the agent prints them, before anything is written: the log, the
//! archive, `output` in every form never hold them, and every other byte arrives as printed.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A short key (no `sk-ant-` shape, shorter than any real key) with characters a regular
/// expression would read as operators: redaction must match it literally, whatever its length.
const KEY: &str = "Zq.7*k[";
/// A notify URL; the receiver is down (nothing listens on port 9), which changes nothing here.
const URL: &str = "http://127.0.0.1:9/hooks/T0-Zq-SECRETPATH?a=1&b=$x";
const MARK: &str = "[REDACTED]";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set("ANTHROPIC_API_KEY", KEY);
    env.set("AMPLIHACK_REMOTE_NOTIFY", URL);
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "1");
    env
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Neither secret in `bytes` (`what` names where they came from).
fn assert_clean(bytes: &[u8], what: &str) {
    for secret in [KEY, URL] {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{secret:?} is in {what}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Neither secret in any file of ours on any VM, in the archive, the state or azlin's argv log.
fn assert_nowhere_at_rest(env: &TestEnv) {
    let mut files = env.files_of_ours_on_vms();
    files.push(env.state_path());
    files.push(env.azlin_home().join("calls.log"));
    for file in files {
        if let Ok(bytes) = std::fs::read(&file) {
            assert_clean(&bytes, &file.display().to_string());
        }
    }
}

fn log_of(env: &TestEnv, vm: &str, id: &str) -> Vec<u8> {
    std::fs::read(env.session_dir(vm, id).join("output.log")).unwrap_or_default()
}

/// The processes of this machine that hold file `path` open.
fn holders_of(path: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut found = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == want))
        {
            found.push(proc_dir.path());
        }
    }
    found
}

#[test]
fn secrets_the_agent_prints_are_redacted_everywhere_and_every_other_byte_arrives() {
    let env = secret_env();
    let long_line = "x".repeat(30_000);
    let mut body = Vec::new();
    body.extend_from_slice(format!("before {KEY} mid {URL} after\r\n").as_bytes());
    body.extend_from_slice(b"\x00bin\xff\xfe \xc3\xbcn\xc3\xaf \x1b[1mbold\x1b[0m\r");
    body.extend_from_slice(format!("{KEY}{KEY}|{KEY}\n{long_line}\n").as_bytes());
    let last = format!("last: {KEY} $ ");
    let prompt = format!(
        "PRINTENV HEXOUT={} HEXEND={} EXIT=3",
        hex(&body),
        hex(last.as_bytes())
    );
    let Started { id, vm } = start_one(&env, &["--no-context", &prompt]);
    let s = env.wait_finished(&id);
    // The agent's exit code, not the redactor's.
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["exit_code"], 3, "{s}");

    let log = log_of(&env, &vm, &id);
    assert_clean(&log, "the log");
    let mut want = Vec::new();
    want.extend_from_slice(format!("before {MARK} mid {MARK} after\r\n").as_bytes());
    want.extend_from_slice(b"\x00bin\xff\xfe \xc3\xbcn\xc3\xaf \x1b[1mbold\x1b[0m\r");
    want.extend_from_slice(format!("{MARK}{MARK}|{MARK}\n{long_line}\n").as_bytes());
    assert!(
        contains(&log, &want),
        "{}",
        String::from_utf8_lossy(&log[..log.len().min(2000)])
    );
    assert!(contains(
        &log,
        format!("ANTHROPIC_API_KEY={MARK}\n").as_bytes()
    ));
    // The last line, which has no newline, arrives whole and as it is.
    let tail = format!("agent: finished\nlast: {MARK} $ ");
    assert!(
        log.ends_with(tail.as_bytes()),
        "{}",
        String::from_utf8_lossy(&log[log.len().saturating_sub(300)..])
    );

    // The archive brought home holds the same log.
    let archived = std::fs::read(env.archive_dir().join(&id).join("output.log")).unwrap();
    assert_eq!(archived, log);
    for args in [
        &["output", &id, "-n", "1000"][..],
        &["output", &id, "-n", "1000", "--raw"],
    ] {
        let out = env.run(args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_clean(&out.stdout, &format!("{args:?}"));
        assert_clean(&out.stderr, &format!("{args:?}"));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("before {MARK} mid {MARK} after")),
            "{args:?}: {text}"
        );
        assert!(
            text.contains(&format!("last: {MARK} $")),
            "{args:?}: {text}"
        );
    }
    assert_nowhere_at_rest(&env);
}

#[test]
fn output_streams_redacted_while_the_agent_runs_and_a_kill_leaves_no_redactor() {
    let env = secret_env();
    let body = format!("one {KEY} two\nhalf a line {KEY}");
    let prompt = format!("TRAP HEXOUT={} SLEEP=60", hex(body.as_bytes()));
    let Started { id, vm } = env.start_running(&prompt);
    let dir = env.session_dir(&vm, &id);
    let log = dir.join("output.log");

    // A line reaches the log as soon as it is printed, while the agent still runs.
    let line = format!("one {MARK} two\n");
    env.wait_for(
        "the redacted line in the log",
        Duration::from_secs(20),
        || contains(&log_of(&env, &vm, &id), line.as_bytes()),
    );
    assert!(!env.agent_record(&vm, &id).join("finished_ns").exists());
    // Neither secret is in the argv of any process, nor in the environment of the redactor
    // (whoever holds the log open but the agent).
    let agent = env.agent_pid(&vm, &id).to_string();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) {
            assert_clean(
                &cmdline,
                &format!("the argv of {}", proc_dir.path().display()),
            );
        }
    }
    let holders = holders_of(&log);
    assert!(!holders.is_empty(), "nothing holds the log open");
    for holder in holders.iter().filter(|p| !p.ends_with(&agent)) {
        if let Ok(environ) = std::fs::read(holder.join("environ")) {
            assert_clean(
                &environ,
                &format!("the environment of {}", holder.display()),
            );
        }
    }

    // `output` of a running session (its tmux pane, where `attach` goes too) shows it redacted.
    env.wait_for(
        "the redacted line in the pane",
        Duration::from_secs(20),
        || {
            let out = env.run(&["output", &id]);
            assert_clean(&out.stdout, "output of a running session");
            stdout(&out).contains(line.trim_end())
        },
    );
    // `output --follow` shows it too, as it comes.
    let mut follow = env
        .std_cmd(&["output", &id, "--follow", "--raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut followed = Vec::new();
    let mut pipe = follow.stdout.take().unwrap();
    let mut chunk = [0u8; 4096];
    while !contains(&followed, line.as_bytes()) {
        let n = pipe.read(&mut chunk).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&followed));
        followed.extend_from_slice(&chunk[..n]);
    }
    assert!(!env.agent_record(&vm, &id).join("finished_ns").exists());

    // A kill ends the agent; what it printed last (the half line, then its TERM handler's
    // line) is in the log, and nothing of the session holds the log any more.
    let out = env.run(&["kill", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pipe.read_to_end(&mut followed).unwrap();
    assert!(follow.wait().unwrap().success());
    assert_clean(&followed, "output --follow");
    let want = format!("{line}half a line {MARK}agent: got SIGTERM\n");
    assert!(
        String::from_utf8_lossy(&followed).contains(&want),
        "{}",
        String::from_utf8_lossy(&followed)
    );
    let s = env.session(&id);
    assert_eq!(s["status"], "killed", "{s}");
    assert_eq!(s["exit_code"], 143, "{s}");
    env.wait_for("nothing to hold the log", Duration::from_secs(20), || {
        holders_of(&log).is_empty()
    });
    assert!(contains(&log_of(&env, &vm, &id), want.as_bytes()));
    assert_nowhere_at_rest(&env);
}

#[test]
fn a_retry_reads_the_redacted_log_and_its_output_is_redacted_too() {
    let env = secret_env();
    let body = format!("token in use: {KEY}\n");
    let prompt = format!("HEXOUT={} TRANSIENT=529 FAILS=1", hex(body.as_bytes()));
    let Started { id, vm } = start_one(&env, &["--no-context", &prompt]);
    let s = env.wait_finished(&id);
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["exit_code"], 0, "{s}");
    let runs = std::fs::read_to_string(env.agent_record(&vm, &id).join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 2, "{runs}");
    let log = String::from_utf8_lossy(&log_of(&env, &vm, &id)).into_owned();
    assert_eq!(
        log.matches(&format!("token in use: {MARK}\n")).count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("amplihack: retry 1/2 at ") && log.contains("Z: API overloaded\n"),
        "{log}"
    );
    assert!(log.ends_with("agent: finished\n"), "{log}");
    assert_nowhere_at_rest(&env);
}

#[test]
fn a_process_that_left_the_agents_group_with_its_output_does_not_hold_the_session_open() {
    let env = secret_env();
    let body = format!("printed {KEY}\n");
    let prompt = format!("ESCAPE=120 HEXOUT={} EXIT=5", hex(body.as_bytes()));
    let Started { id, vm } = start_one(&env, &["--no-context", &prompt]);
    let escaped = env.agent_record(&vm, &id).join("escaped.pid");
    env.wait_for("the escaped process", Duration::from_secs(20), || {
        escaped.exists()
    });
    let escaped: i32 = std::fs::read_to_string(escaped).unwrap().parse().unwrap();
    // The `sleep` outside the group keeps the agent's stdout open: the session ends anyway,
    // with the agent's exit code and everything the agent printed.
    let s = env.wait_finished(&id);
    let _ = std::process::Command::new("kill")
        .arg(escaped.to_string())
        .status();
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["exit_code"], 5, "{s}");
    let log = String::from_utf8_lossy(&log_of(&env, &vm, &id)).into_owned();
    assert!(
        log.contains(&format!("printed {MARK}\nagent: finished\n")),
        "{log}"
    );
    assert!(
        log.ends_with("amplihack: a process that left the agent's group still holds its output; no more of it is logged\n"),
        "{log}"
    );
    let log = env.session_dir(&vm, &id).join("output.log");
    env.wait_for("nothing to hold the log", Duration::from_secs(20), || {
        holders_of(&log).is_empty()
    });
    assert_nowhere_at_rest(&env);
}

/// Runs the VM's redactor (src/remote/vm/lib.sh) over `input` with `key` and `url` held as a
/// supervisor holds them: the stream form, then the file form.
fn redact_on_vm(input: &[u8], key: &str, url: &str) -> (Vec<u8>, Vec<u8>) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/vm/lib.sh");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in");
    std::fs::write(&file, input).unwrap();
    let run = |script: &str| {
        let out = std::process::Command::new("bash")
            .args(["-c", script, "_", &lib.display().to_string()])
            .arg(&file)
            .arg(dir.path().join("out"))
            .env("K", key)
            .env("U", url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let stream = run(r#". "$1"; redact_key=$K redact_url=$U; unset K U; exec_redactor < "$2""#);
    let copy = run(
        r#". "$1"; redact_key=$K redact_url=$U; unset K U; redacted_copy "$2" "$3" && cat "$3""#,
    );
    (stream, copy)
}

/// What redaction must make of `input`: each secret, and each `sk-ant-` key, replaced.
fn redacted(input: &[u8], secrets: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    'scan: while i < input.len() {
        let mut best: Option<usize> = None;
        for s in secrets.iter().map(|s| s.as_bytes()) {
            if !s.is_empty() && input[i..].starts_with(s) && best.is_none_or(|b| s.len() > b) {
                best = Some(s.len());
            }
        }
        if let Some(len) = best {
            out.extend_from_slice(MARK.as_bytes());
            i += len;
            continue 'scan;
        }
        if input[i..].starts_with(b"sk-ant-") {
            let tail = input[i + 7..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
                .count();
            if tail > 0 {
                out.extend_from_slice(MARK.as_bytes());
                i += 7 + tail;
                continue 'scan;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[test]
fn the_redactor_changes_the_secrets_and_no_other_byte() {
    // Secrets with a regular expression's operators, one inside the other, one a byte long.
    let cases: [(&str, &str); 4] = [
        (KEY, URL),
        ("a\\b/c.d*e[f]g^h$i&j", "https://hooks.example/x|y(z)"),
        ("KEY", "KEYLONG"),
        ("q", ""),
    ];
    // A pseudo-random input of every byte value, with the secrets and `sk-ant-` keys strewn in,
    // long lines, CRs, NULs and no newline at the end.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (key, url) in cases {
        let mut input = Vec::new();
        for _ in 0..400 {
            match next() % 9 {
                0 => input.extend_from_slice(key.as_bytes()),
                1 => input.extend_from_slice(url.as_bytes()),
                2 => input.extend_from_slice(b"sk-ant-api03-Ab_c-9 "),
                3 => input.push(b'\n'),
                4 => input.extend_from_slice(b"\r\x00"),
                5 => input.extend(std::iter::repeat_n(b'y', (next() % 20_000) as usize)),
                _ => input.extend((0..(next() % 64)).map(|_| next() as u8)),
            }
        }
        input.extend_from_slice(format!("end {key}").as_bytes());
        let want = redacted(&input, &[key, url]);
        let (stream, copy) = redact_on_vm(&input, key, url);
        assert!(stream == want, "the stream form differs for {key:?}");
        assert!(copy == want, "the file form differs for {key:?}");
    }
}
