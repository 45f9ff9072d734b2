//! Running unattended (docs/unattended.md): notifications the VM sends, transient failures
//! retried with `--continue`, silence flagged, runaways capped. A receiver on 127.0.0.1
//! records what the VMs post.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

/// The secret part of every notify URL here: it must never be found at rest or in an argv.
const URL_SECRET: &str = "T0-hook-SECRETPATH-9f3e";

/// One notification as received: when, its Content-Type, its body.
#[derive(Debug, Clone)]
struct Received {
    at: SystemTime,
    content_type: String,
    body: Value,
}

/// A local HTTP receiver: records every POST, answers 200. It stops when dropped (and on its
/// own after 10 minutes).
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            while !s.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(600) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(r) = read_request(conn) {
                            g.lock().unwrap().push(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver { port, got, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/{URL_SECRET}", self.port)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn of(&self, id: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.body["session_id"] == id)
            .collect()
    }

    fn events_of(&self, id: &str) -> Vec<String> {
        self.of(id)
            .iter()
            .map(|r| r.body["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Waits until `id` has a notification of `event`, and returns it.
    fn wait_event(&self, id: &str, event: &str, limit: Duration) -> Received {
        let start = Instant::now();
        loop {
            if let Some(r) = self.of(id).into_iter().find(|r| r.body["event"] == event) {
                return r;
            }
            assert!(
                start.elapsed() < limit,
                "no {event} for {id} within {limit:?}; got {:?}",
                self.all().iter().map(|r| &r.body).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_request(mut conn: TcpStream) -> Option<Received> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < header_end + length {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    Some(Received {
        at: SystemTime::now(),
        content_type: header("content-type"),
        body: serde_json::from_slice(&buf[header_end..]).unwrap_or(Value::Null),
    })
}

/// Every process's argv on this machine now: this receiver's URL must be in none. (Its own
/// URL only: tests running beside it may give theirs to `start --notify`, the user's own argv.)
fn assert_url_in_no_argv(receiver: &Receiver) {
    let url = receiver.url();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&url),
                "the notify URL is in the argv of {}: {:?}",
                entry.path().display(),
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
}

/// Nowhere at rest: state, azlin's argv log, any file of ours on a VM or in the archive.
fn assert_url_at_rest_nowhere(env: &TestEnv) {
    let mut files = env.files_of_ours_on_vms();
    files.push(env.state_path());
    files.push(env.azlin_home().join("calls.log"));
    files.extend(agent_record_files(&env.home()));
    for file in files {
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(URL_SECRET),
                "the notify URL is in {}",
                file.display()
            );
        }
    }
}

fn agent_record_files(home: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(home.join("agent-records"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out
}

fn start(env: &TestEnv, extra: &[&str], prompts: &[&str]) -> Vec<String> {
    let mut args = vec!["start", "--no-context", "--json"];
    args.extend(extra);
    args.extend(prompts);
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    started_ids(&out)
}

fn local_env(receiver: &Receiver) -> TestEnv {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_REMOTE_NOTIFY", &receiver.url());
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "1");
    env
}

/// A session's directory on its VM (this machine's home for `local`).
fn dir_of(env: &TestEnv, vm: &str, id: &str) -> std::path::PathBuf {
    if vm == "local" {
        env.home().join(".amplihack/remote/sessions").join(id)
    } else {
        env.session_dir(vm, id)
    }
}

fn log_of(env: &TestEnv, vm: &str, id: &str) -> String {
    std::fs::read_to_string(dir_of(env, vm, id).join("output.log")).unwrap_or_default()
}

#[test]
fn a_session_that_ends_is_notified_with_every_field_and_the_url_is_nowhere() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    let ids = start(&env, &[], &["SLEEP=1 implement \"user\" auth ünï"]);
    let id = &ids[0];
    // While it runs: the URL in no process's argv.
    assert_url_in_no_argv(&receiver);
    let got = receiver.wait_event(id, "session_ended", Duration::from_secs(30));
    let b = &got.body;
    assert_eq!(got.content_type, "application/json");
    assert_eq!(b["status"], "completed");
    assert_eq!(b["exit_code"], 0);
    assert_eq!(b["vm_name"], "local");
    assert_eq!(b["prompt"], "SLEEP=1 implement \"user\" auth ünï");
    assert!(b["duration_s"].as_i64().unwrap() >= 1, "{b}");
    assert!(b["reason"].is_null(), "{b}");
    assert!(
        b.get("commits").is_some() && b.get("files_changed").is_some(),
        "{b}"
    );
    let text = b["text"].as_str().unwrap();
    assert_eq!(b["content"], b["text"]);
    assert!(text.starts_with(&format!("{id} completed in ")), "{text}");
    assert!(
        text.ends_with(": \"SLEEP=1 implement \"user\" auth ünï\""),
        "{text}"
    );
    // Latency: from the finish the VM recorded to the notification's arrival.
    let finished = std::fs::read_to_string(dir_of(&env, "local", id).join("finished_at")).unwrap();
    let finished: chrono::DateTime<chrono::Utc> = finished.trim().parse().unwrap();
    let arrived: chrono::DateTime<chrono::Utc> = got.at.into();
    let latency = (arrived - finished).num_milliseconds();
    eprintln!("notification latency after the recorded finish: {latency} ms");
    assert!(latency < 10_000, "{latency} ms");
    assert_eq!(receiver.of(id).len(), 1);
    let s = env.wait_finished(id);
    assert_eq!(s["unattended"]["notify"], true);
    assert_url_at_rest_nowhere(&env);
    assert_url_in_no_argv(&receiver);
}

fn list_json_of(env: &TestEnv, id: &str) -> Value {
    let out = env.run(&["list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list.as_array()
        .and_then(|a| a.iter().find(|s| s["session_id"] == id).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_transient_failure_is_retried_in_the_same_session_with_continue() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    let ids = start(
        &env,
        &[],
        &["TRANSIENT=overloaded FAILS=2 finish the parser"],
    );
    let id = &ids[0];
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(60));
    assert_eq!(ended.body["status"], "completed", "{}", ended.body);
    let s = env.wait_finished(id);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["exit_code"], 0);
    assert!(s.get("detail").is_none(), "{s}");
    // Two retries, each with --continue and a marker line; one log, one workspace.
    let runs = std::fs::read_to_string(env.agent_record("local", id).join("runs")).unwrap();
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(!runs[0].contains("--continue"));
    assert!(
        runs[1].contains("--continue -p") && runs[2].contains("--continue -p"),
        "{runs:?}"
    );
    let log = log_of(&env, "local", id);
    let markers: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("amplihack: retry "))
        .collect();
    assert_eq!(markers.len(), 2, "{log}");
    assert!(
        markers[0].starts_with("amplihack: retry 1/2 at 20"),
        "{}",
        markers[0]
    );
    assert!(markers[0].ends_with("Z: API overloaded"), "{}", markers[0]);
    assert!(
        markers[1].starts_with("amplihack: retry 2/2 at "),
        "{}",
        markers[1]
    );
    assert!(log.contains("agent: continuing the conversation"));
    let events = receiver.events_of(id);
    assert_eq!(
        events,
        ["session_retrying", "session_retrying", "session_ended"]
    );
    let retrying = &receiver.of(id)[0].body;
    assert_eq!(retrying["status"], "running");
    assert!(
        retrying["detail"]
            .as_str()
            .unwrap()
            .starts_with("retry 1/2 at "),
        "{retrying}"
    );
    assert!(
        retrying["detail"]
            .as_str()
            .unwrap()
            .ends_with(" UTC: API overloaded"),
        "{retrying}"
    );
}

#[test]
fn spent_retries_fail_with_the_last_reason_and_zero_turns_retrying_off() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    let ids = start(&env, &["--retries", "1"], &["TRANSIENT=429 FAILS=9 spent"]);
    let s = env.wait_finished(&ids[0]);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["exit_code"], 1);
    assert_eq!(s["error"], "rate limited (after 1 retry)");
    assert_eq!(s["unattended"]["retries"], 1);
    let ended = receiver.wait_event(&ids[0], "session_ended", Duration::from_secs(20));
    assert_eq!(ended.body["reason"], "rate limited (after 1 retry)");
    assert_eq!(ended.body["exit_code"], 1);
    assert!(
        ended.body["text"]
            .as_str()
            .unwrap()
            .contains("failed (exit 1)"),
        "{}",
        ended.body
    );

    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_REMOTE_RETRIES", "0");
    let ids = start(&env, &[], &["TRANSIENT=econnreset no retry"]);
    let s = env.wait_finished(&ids[0]);
    assert_eq!(s["status"], "failed");
    assert!(s.get("error").is_none(), "{s}");
    let runs = std::fs::read_to_string(env.agent_record("local", &ids[0]).join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1);
}

/// A retry days away (a weekly plan limit) says its date, not only a clock time.
#[test]
fn a_retry_on_another_day_says_its_date() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "86400");
    let ids = start(&env, &[], &["TRANSIENT=server waiting days"]);
    let id = &ids[0];
    receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
    let detail = list_json_of(&env, id)["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let day = (chrono::Utc::now() + chrono::Duration::seconds(86_400)).format("%Y-%m-%d");
    assert!(
        detail.starts_with(&format!("retry 1/2 at {day} ")),
        "{detail}"
    );
    let out = env.run(&["kill", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn a_session_waiting_to_retry_says_why_and_a_kill_ends_it_within_seconds() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "3000");
    let ids = start(&env, &[], &["TRANSIENT=server waiting"]);
    let id = &ids[0];
    receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
    let s = list_json_of(&env, id);
    assert_eq!(s["status"], "running", "{s}");
    let detail = s["detail"].as_str().unwrap().to_string();
    assert!(
        detail.starts_with("retry 1/2 at ") && detail.ends_with(" UTC: API server error 500"),
        "{detail}"
    );
    let table = stdout(&env.run(&["list", "--no-refresh"]));
    let short = detail.split(": ").next().unwrap();
    assert!(table.contains(&format!("running ({short})")), "{table}");
    let status = stdout(&env.run(&["status", "--no-refresh"]));
    assert!(status.contains(&detail), "{status}");
    let report = stdout(&env.run(&["report", "--no-refresh"]));
    assert!(report.contains(&format!("running ({short})")), "{report}");
    let verbose = stdout(&env.run(&["list", "--verbose", "--no-refresh"]));
    assert!(
        verbose.contains(&format!("Detail:      {detail}")),
        "{verbose}"
    );
    let began = Instant::now();
    let out = env.run(&["kill", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The retry waits 3000 s: that the session is recorded killed within wait_finished's
    // polling (60 s) is what shows the kill did not wait for it.
    let s = env.wait_finished(id);
    eprintln!("kill during a retry wait took {:?}", began.elapsed());
    assert_eq!(s["status"], "killed", "{s}");
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(20));
    assert_eq!(ended.body["status"], "killed");
    // It never ran again.
    let runs = std::fs::read_to_string(env.agent_record("local", id).join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1);
}

/// A process group leader started with pid `pid` (a pid this test wants reused), when the
/// kernel lets this process pick the next pid (`ns_last_pid`, root only) and no other process
/// takes it first within a few hundred tries.
fn group_leader_with_pid(pid: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..500 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .ok()?;
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// The agent's pid is free once it exited; by the time a kill comes during the retry wait
/// (hours, for a plan limit) another process group may have that number. The kill must not
/// signal it: only a group that is still the agent's.
#[test]
fn a_kill_during_a_retry_wait_signals_no_group_that_took_the_agents_number() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "3000");
    let ids = start(&env, &[], &["TRANSIENT=server waiting"]);
    let id = &ids[0];
    receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
    let agent: u32 = std::fs::read_to_string(dir_of(&env, "local", id).join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let Some(mut stranger) = group_leader_with_pid(agent) else {
        // Picking a pid needs root (ns_last_pid): nothing to check here.
        eprintln!("skipped: cannot start a process with pid {agent} here");
        return;
    };
    let out = env.run(&["kill", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = env.wait_finished(id);
    assert_eq!(s["status"], "killed", "{s}");
    let untouched = stranger.try_wait().unwrap().is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(
        untouched,
        "the kill signalled the group that took the agent's number"
    );
}

#[test]
fn a_silent_session_is_flagged_once_and_not_killed() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_REMOTE_SILENT_SECONDS", "2");
    let ids = start(&env, &["--silent-minutes", "1"], &["SLEEP=7 quiet one"]);
    let id = &ids[0];
    let silent = receiver.wait_event(id, "session_silent", Duration::from_secs(20));
    assert_eq!(silent.body["status"], "running");
    assert!(
        silent.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("silent 0m"),
        "{}",
        silent.body
    );
    let s = list_json_of(&env, id);
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["detail"], "silent 0m");
    assert!(s["silent_since"].is_string(), "{s}");
    let table = stdout(&env.run(&["list", "--no-refresh"]));
    assert!(table.contains("running (silent 0m)"), "{table}");
    let s = env.wait_finished(id);
    assert_eq!(s["status"], "completed", "{s}");
    assert!(
        s.get("silent_since").is_none() && s.get("detail").is_none(),
        "{s}"
    );
    receiver.wait_event(id, "session_ended", Duration::from_secs(20));
    assert_eq!(receiver.events_of(id), ["session_silent", "session_ended"]);
    assert_eq!(s["unattended"]["silent_minutes"], 1);
}

#[test]
fn a_runaway_is_capped_at_max_hours_with_exit_124() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    // 0.001 h = 3.6 s.
    let ids = start(
        &env,
        &["--max-hours", "0.001"],
        &["SLEEP=120 IGNORE runaway"],
    );
    let id = &ids[0];
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(40));
    let s = env.wait_finished(id);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["exit_code"], 124);
    assert_eq!(s["error"], "ran past --max-hours 0.001");
    assert_eq!(ended.body["reason"], "ran past --max-hours 0.001");
    assert_eq!(ended.body["exit_code"], 124);
    // The whole group ended: nothing of the agent lives.
    let pid = std::fs::read_to_string(dir_of(&env, "local", id).join("agent.pid")).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists() || {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            stat.contains(") Z ")
        }
    );
}

#[test]
fn a_receiver_that_is_down_changes_nothing_but_one_log_line() {
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env = TestEnv::local();
    env.set(
        "AMPLIHACK_REMOTE_NOTIFY",
        &format!("http://127.0.0.1:{down}/hooks/{URL_SECRET}"),
    );
    let ids = start(&env, &[], &["EXIT=0 nobody listens"]);
    let s = env.wait_finished(&ids[0]);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["exit_code"], 0);
    // 3 tries, 2 + 4 s apart.
    env.wait_for("the delivery failure line", Duration::from_secs(30), || {
        log_of(&env, "local", &ids[0]).contains("notification was not delivered")
    });
    let log = log_of(&env, "local", &ids[0]);
    let line = log.lines().find(|l| l.contains("not delivered")).unwrap();
    assert!(
        line.starts_with(
            "amplihack: the session_ended notification was not delivered after 3 tries: "
        ),
        "{line}"
    );
    assert!(!log.contains(URL_SECRET));
    assert_url_at_rest_nowhere(&env);
}

#[test]
fn a_queued_session_is_notified_too_started_or_killed_in_the_queue() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let ids = start(
        &env,
        &[],
        &["SLEEP=2 first", "SLEEP=0 second", "SLEEP=0 third"],
    );
    assert_eq!(env.session(&ids[1])["status"], "queued");
    // While queued, the URL waits in a pipe: in no file, in no argv.
    assert_url_at_rest_nowhere(&env);
    assert_url_in_no_argv(&receiver);
    let out = env.run(&["kill", &ids[2]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let killed = receiver.wait_event(&ids[2], "session_ended", Duration::from_secs(20));
    assert_eq!(killed.body["status"], "killed");
    let second = receiver.wait_event(&ids[1], "session_ended", Duration::from_secs(40));
    assert_eq!(second.body["status"], "completed");
    receiver.wait_event(&ids[0], "session_ended", Duration::from_secs(10));
    assert_eq!(env.wait_finished(&ids[1])["status"], "completed");
    assert_url_at_rest_nowhere(&env);
}

#[test]
fn wait_notify_raises_a_desktop_notification_and_nothing_where_there_is_none() {
    let env = TestEnv::local();
    // A notify-send of our own on PATH records what it was asked to show.
    let fake = env.root().join("bin/notify-send");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}/notified\n",
            env.root().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ids = start(&env, &[], &["SLEEP=1 one", "EXIT=3 two"]);
    let out = env.run(&["wait", "--notify", &ids[0], &ids[1]]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let shown = std::fs::read_to_string(env.root().join("notified")).unwrap();
    assert!(
        shown.contains("amplihack remote\n2 sessions ended: "),
        "{shown}"
    );
    assert!(
        shown.contains("1 completed") && shown.contains("1 failed"),
        "{shown}"
    );
    // Without notify-send (or osascript): no error, nothing said about it.
    std::fs::remove_file(&fake).unwrap();
    std::fs::remove_file(env.root().join("notified")).unwrap();
    let out = env.run(&["wait", "--notify", &ids[0]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.root().join("notified").exists());
    assert!(!stderr(&out).contains("notify"), "{}", stderr(&out));
}

/// The morning: 8 sessions on one stand-in azlin VM, started and left alone. Two hit transient
/// failures and are retried to success, one runs away and is capped, one goes silent, four are
/// plain. The receiver gets exactly the notifications expected, and the URL is nowhere.
#[test]
fn a_morning_of_eight_sessions_sends_exactly_the_notifications_expected() {
    let receiver = Receiver::start();
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_NOTIFY", &receiver.url());
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "1");
    env.set("AMPLIHACK_REMOTE_SILENT_SECONDS", "3");
    let prompts = [
        "LINES=3 plain one",
        "COMMIT=2 plain two",
        "EDIT=1 plain three",
        "plain four",
        "TRANSIENT=overloaded retried once",
        "TRANSIENT=429 FAILS=2 retried twice",
        "TICK=900 runs away",
        "SLEEP=6 goes silent",
    ];
    let mut args = vec![
        "start",
        "--no-context",
        "--json",
        "--size",
        "xl",
        "--max-hours",
        "0.003",
    ];
    args.extend(prompts);
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = started_ids(&out);
    assert_eq!(ids.len(), 8);
    // 0.003 h is 10.8 s: every other session ends well before.
    let began = Instant::now();
    while receiver
        .all()
        .iter()
        .filter(|r| r.body["event"] == "session_ended")
        .count()
        < 8
    {
        assert_url_in_no_argv(&receiver);
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "{:?}",
            receiver.all()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `wait` sees the same ends; no notification comes late or twice (a short settle: the
    // senders run in the background on the VM).
    let out = env.run(&["wait", "--all"]);
    assert_eq!(code(&out), 1, "the runaway failed: {}", stderr(&out));
    std::thread::sleep(Duration::from_secs(2));
    let expect: [(&str, &[&str], &str); 8] = [
        (ids[0].as_str(), &["session_ended"], "completed"),
        (&ids[1], &["session_ended"], "completed"),
        (&ids[2], &["session_ended"], "completed"),
        (&ids[3], &["session_ended"], "completed"),
        (&ids[4], &["session_retrying", "session_ended"], "completed"),
        (
            &ids[5],
            &["session_retrying", "session_retrying", "session_ended"],
            "completed",
        ),
        (&ids[6], &["session_ended"], "failed"),
        (&ids[7], &["session_silent", "session_ended"], "completed"),
    ];
    let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    for (id, events, status) in expect {
        assert_eq!(receiver.events_of(id), events, "{id}");
        let ended = receiver.wait_event(id, "session_ended", Duration::ZERO);
        assert_eq!(ended.body["status"], status, "{id}: {}", ended.body);
        let s = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap();
        assert_eq!(s["status"], status, "{s}");
    }
    assert_eq!(receiver.all().len(), 12);
    let capped = receiver
        .wait_event(&ids[6], "session_ended", Duration::ZERO)
        .body;
    assert_eq!(
        (capped["exit_code"].as_i64(), capped["reason"].as_str()),
        (Some(124), Some("ran past --max-hours 0.003"))
    );
    let twice = receiver.of(&ids[5]);
    assert_eq!(
        twice[1].body["detail"]
            .as_str()
            .map(|d| d.starts_with("retry 2/2 at ")),
        Some(true)
    );
    // How soon after the VM recorded each end its notification arrived.
    let vm = env.vm_of(&ids[0]);
    let mut latencies = Vec::new();
    for id in &ids {
        let finished = std::fs::read_to_string(dir_of(&env, &vm, id).join("finished_at")).unwrap();
        let finished: chrono::DateTime<chrono::Utc> = finished.trim().parse().unwrap();
        let arrived: chrono::DateTime<chrono::Utc> = receiver
            .wait_event(id, "session_ended", Duration::ZERO)
            .at
            .into();
        latencies.push((arrived - finished).num_milliseconds());
    }
    latencies.sort();
    eprintln!("session_ended latency after the recorded finish (ms): {latencies:?}");
    assert!(latencies.iter().all(|l| *l < 10_000), "{latencies:?}");
    assert_url_at_rest_nowhere(&env);
    for file in env.files_of_ours_on_vms() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(URL_SECRET),
            "{}",
            file.display()
        );
    }
    let records = env.vm_dir(&vm).join("home");
    for f in agent_record_files(&records) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(URL_SECRET),
            "{}",
            f.display()
        );
    }
    // The report prices each session's share of the VM.
    let report: Value = serde_json::from_slice(&env.run(&["report", "--json"]).stdout).unwrap();
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["cost_usd"].as_f64().is_some()),
        "{report}"
    );
}

/// What the VM's classifier (src/remote/vm/unattended.sh) makes of `line` at epoch second `now`:
/// (UNTIL, REASON, the wait of retry 1 with a 60 s base), or None when it is not transient.
fn classify(line: &str, now: i64) -> Option<(String, String, i64)> {
    let vm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/vm");
    let script = format!(
        ". {lib}; . {un}; r=$(printf '%s\\n' \"$1\" | transient_failure {now}) || exit 1; \
         printf '%s\\n%s\\n' \"$r\" \"$(retry_wait_seconds 1 \"${{r%%$'\\t'*}}\" 60 {now})\"",
        lib = vm.join("lib.sh").display(),
        un = vm.join("unattended.sh").display(),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script, "_", line])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (until, reason) = lines.next()?.split_once('\t')?;
    Some((until.into(), reason.into(), lines.next()?.parse().ok()?))
}

fn epoch(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp()
}

#[test]
fn each_transient_failure_of_the_table_is_recognised_and_waited_for() {
    // 03:00 UTC on 2 Dec 2026: 22:00 the day before in New York, 21:00 in Chicago.
    let now = epoch("2026-12-02T03:00:00Z");
    let backoff = |line: &str, reason: &str| {
        assert_eq!(
            classify(line, now),
            Some(("-".into(), reason.into(), 60)),
            "{line}"
        );
    };
    backoff(
        "API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}",
        "API overloaded",
    );
    backoff(
        "API Error: Repeated 529 Overloaded errors",
        "API overloaded",
    );
    backoff(
        "{\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
        "API overloaded",
    );
    backoff("API Error: 429 Too Many Requests", "rate limited");
    backoff("{\"type\":\"rate_limit_error\"}", "rate limited");
    backoff(
        "API Error: 500 Internal server error",
        "API server error 500",
    );
    backoff(
        "API Error: 503 upstream connect error",
        "API server error 503",
    );
    backoff(
        "API Error: Connection error. (ECONNRESET)",
        "network error (ECONNRESET)",
    );
    backoff(
        "Error: connect ETIMEDOUT 160.79.104.10:443",
        "network error (ETIMEDOUT)",
    );
    backoff("TypeError: fetch failed", "network error (fetch failed)");
    backoff("Error: socket hang up", "network error (socket hang up)");
    // Plan limits wait until their reset plus a minute.
    let limit = |line: &str, reset: &str, reason: &str| {
        let at = epoch(reset);
        assert_eq!(
            classify(line, now),
            Some((at.to_string(), reason.into(), at + 60 - now)),
            "{line}"
        );
    };
    // 8pm New York passed an hour ago there: tomorrow's, 01:00 UTC on the 3rd.
    limit(
        "You've hit your session limit · resets 8pm (America/New_York)",
        "2026-12-03T01:00:00Z",
        "plan limit, resets 8pm America/New_York",
    );
    limit(
        "You've hit your weekly limit · resets 11:30pm (America/New_York)",
        "2026-12-02T04:30:00Z",
        "plan limit, resets 11:30pm America/New_York",
    );
    limit(
        "Claude usage limit reached. Your limit will reset at 9am (America/Chicago).",
        "2026-12-02T15:00:00Z",
        "plan limit, resets 9am America/Chicago",
    );
    // Claude Code's later forms: `your limit`, `5-hour limit`, and a reset on another day
    // (this year's date when it is still ahead, else next year's).
    limit(
        "You've hit your limit · resets 11pm (America/Anchorage)",
        "2026-12-02T08:00:00Z",
        "plan limit, resets 11pm America/Anchorage",
    );
    limit(
        "5-hour limit reached ∙ resets 1am",
        "2026-12-03T01:00:00Z",
        "plan limit, resets 1am",
    );
    limit(
        "You've hit your weekly limit · resets Dec 5 at 7pm",
        "2026-12-05T19:00:00Z",
        "plan limit, resets Dec 5 7pm",
    );
    limit(
        "Claude AI usage limit reached|1796187600",
        "2026-12-02T05:00:00Z",
        "usage limit reached",
    );
    // Backoff doubles: base, 2 x base, 4 x base.
    let vm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/vm/unattended.sh");
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                ". {}; for n in 1 2 3; do retry_wait_seconds $n - 60 0; echo; done",
                vm.display()
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "60\n120\n240\n");
    backoff("HTTP 429 from the API", "rate limited");
    // Claude Code's words for the same failures.
    backoff("API Error: Rate limit reached", "rate limited");
    backoff("API Error: Overloaded", "API overloaded");
    backoff(
        "API Error: Connection error.",
        "network error (Connection error)",
    );
    backoff(
        "API Error: Request timed out.",
        "network error (Request timed out)",
    );
    // Not transient: an ordinary failure, numbers that merely contain 529 or 429, or are
    // counts of something else.
    for line in [
        "Error: tests failed",
        "line 15290: syntax error",
        "exit 4290",
        "processed 429 files, 529 left",
        "the pool limit resets 3 times a day",
        "FAILED tests/test_client.py::test_rate_limit_error_is_retried - AssertionError",
        "test handles_overloaded_error_gracefully ... FAILED",
        "",
    ] {
        assert_eq!(classify(line, now), None, "{line:?}");
    }
}

#[test]
fn a_plan_limit_reset_across_year_end_just_passed_or_far_off_is_waited_for_sensibly() {
    let limit = |line: &str, now: &str, reset: &str| {
        let (now, at) = (epoch(now), epoch(reset));
        let (until, _, wait) = classify(line, now).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(
            (until, wait),
            (at.to_string(), (at + 60 - now).max(1)),
            "{line}"
        );
    };
    // A day in January seen in December: next year's.
    limit(
        "You've hit your weekly limit · resets Jan 2, 10:59am (America/New_York)",
        "2026-12-30T12:00:00Z",
        "2027-01-02T15:59:00Z",
    );
    // A reset that came while the agent exited is retried at once, not in a day or a year.
    limit(
        "5-hour limit reached ∙ resets 8pm (UTC)",
        "2026-12-02T20:00:30Z",
        "2026-12-02T20:00:00Z",
    );
    limit(
        "You've hit your weekly limit · resets Dec 31 at 11:30pm (UTC)",
        "2027-01-01T00:10:00Z",
        "2026-12-31T23:30:00Z",
    );
    // Feb 29 of the next leap year.
    limit(
        "You've hit your weekly limit · resets Feb 29 at 7pm (UTC)",
        "2028-02-27T12:00:00Z",
        "2028-02-29T19:00:00Z",
    );
    // Passed by more than an hour: tomorrow's.
    limit(
        "5-hour limit reached ∙ resets 8pm (UTC)",
        "2026-12-02T21:30:00Z",
        "2026-12-03T20:00:00Z",
    );
    // A reset more than a week off (a garbled epoch, a date quoted from elsewhere) is not
    // believed: the session backs off instead of holding its slot for months or years.
    let now = epoch("2026-12-02T03:00:00Z");
    for (line, reason) in [
        (
            "Claude AI usage limit reached|99999999999",
            "usage limit reached",
        ),
        (
            "You've hit your weekly limit · resets Jan 12, 10:59am (America/New_York)",
            "plan limit, resets Jan 12 10:59am America/New_York",
        ),
    ] {
        assert_eq!(
            classify(line, now),
            Some(("-".into(), reason.into(), 60)),
            "{line}"
        );
    }
    // Garbage where the time goes is not a time: a plain back-off.
    for line in [
        "You've hit your limit · resets 99pm",
        "You've hit your limit · resets 25:61",
        "You've hit your weekly limit · resets Feb 31 at 7pm",
    ] {
        assert_eq!(
            classify(line, now),
            Some(("-".into(), "plan limit".into(), 60)),
            "{line}"
        );
    }
}

/// A failed agent's last lines may be huge (a minified JSON dump on one line). Reading them
/// must not hold the supervisor (and the session's slot) for long: the failure after such a
/// line is found, and a line that is no failure is none. A hang guard, not a timing: before,
/// this line alone took hours.
#[test]
fn a_huge_line_before_the_failure_does_not_hold_the_classifier() {
    let vm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/vm");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tail");
    let mut text = "{\"k\": \"Error: status 200 limit\"} ".repeat(300_000);
    text.push_str(
        "\nAPI Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n",
    );
    std::fs::write(&input, text).unwrap();
    let mut child = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                ". {}; . {}; transient_failure 1796187600 < {}",
                vm.join("lib.sh").display(),
                vm.join("unattended.sh").display(),
                input.display()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the classifier still reads a 9 MB line after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "-\tAPI overloaded");
}

#[test]
fn a_follow_up_takes_the_same_unattended_settings() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    let ids = start(&env, &[], &["SLEEP=0 first"]);
    env.wait_finished(&ids[0]);
    let out = env.run(&[
        "continue",
        "--json",
        "--max-hours",
        "2",
        &ids[0],
        "TRANSIENT=hangup go on",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let child = started_ids(&out).remove(0);
    let ended = receiver.wait_event(&child, "session_ended", Duration::from_secs(40));
    assert_eq!(ended.body["status"], "completed", "{}", ended.body);
    assert_eq!(
        receiver.events_of(&child),
        ["session_retrying", "session_ended"]
    );
    assert_eq!(env.wait_finished(&child)["unattended"]["max_hours"], 2.0);
    // One `--continue` per run, the follow-up's own included.
    let runs = std::fs::read_to_string(env.agent_record("local", &child).join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 2, "{runs}");
    for run in runs.lines() {
        assert_eq!(run.matches("--continue").count(), 1, "{run}");
    }
    assert_url_at_rest_nowhere(&env);
}

#[test]
fn a_retry_wait_counts_toward_max_hours_and_the_flag_form_of_notify_works() {
    let receiver = Receiver::start();
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "600");
    let url = receiver.url();
    // 0.001 h = 3.6 s, well inside the first retry's 600 s wait.
    let ids = start(
        &env,
        &["--notify", &url, "--max-hours", "0.001"],
        &["TRANSIENT=fetchfailed stuck waiting"],
    );
    let id = &ids[0];
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(30));
    assert_eq!(ended.body["exit_code"], 124, "{}", ended.body);
    assert_eq!(ended.body["reason"], "ran past --max-hours 0.001");
    assert_eq!(
        receiver.events_of(id),
        ["session_retrying", "session_ended"]
    );
    let s = env.wait_finished(id);
    assert_eq!(
        (s["status"].as_str(), s["exit_code"].as_i64()),
        (Some("failed"), Some(124))
    );
    let runs = std::fs::read_to_string(env.agent_record("local", id).join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the retry never ran");
    assert!(
        log_of(&env, "local", id).contains("ran past --max-hours 0.001 while it waited to retry")
    );
    assert_url_at_rest_nowhere(&env);
}

#[test]
fn on_the_stand_in_azlin_a_kill_during_a_retry_wait_ends_it_killed_and_notified() {
    let receiver = Receiver::start();
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_NOTIFY", &receiver.url());
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "600");
    let ids = start(&env, &["--size", "s"], &["TRANSIENT=etimedout waits"]);
    let id = &ids[0];
    receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
    let s = list_json_of(&env, id);
    assert_eq!(s["status"], "running", "{s}");
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .ends_with(" UTC: network error (ETIMEDOUT)"),
        "{s}"
    );
    let began = Instant::now();
    let out = env.run(&["kill", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.session(id)["status"], "killed");
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(20));
    eprintln!(
        "kill during a retry wait, to its notification: {:?}",
        began.elapsed()
    );
    assert_eq!(
        (
            ended.body["status"].as_str(),
            ended.body["exit_code"].as_i64()
        ),
        (Some("killed"), Some(143))
    );
    assert_url_at_rest_nowhere(&env);
}

fn reset_epoch_of(env: &TestEnv, id: &str) -> i64 {
    let path = env.agent_record("local", id).join("reset_epoch");
    env.wait_for("the agent's reset time", Duration::from_secs(30), || {
        path.exists()
    });
    std::fs::read_to_string(&path).unwrap().parse().unwrap()
}

fn utc(epoch: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(epoch, 0).unwrap()
}

/// A plan limit (Claude Code's own lines, printed by the stand-in agent) waits until its
/// reset plus a minute, then resumes the conversation with `--continue`; a clock time is read
/// in its zone, and the wait says when it ends.
#[test]
fn a_plan_limit_waits_until_its_reset_then_continues() {
    let receiver = Receiver::start();
    let env = local_env(&receiver);
    // `|<unix seconds>` 55 s ago: the retry runs at that time plus a minute, 5 s from now.
    let ids = start(
        &env,
        &[],
        &["TRANSIENT=resetat RESET=-55 finish the parser"],
    );
    let id = &ids[0];
    let reset = reset_epoch_of(&env, id);
    let retrying = receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
    assert_eq!(
        retrying.body["detail"],
        format!(
            "retry 1/2 at {} UTC: usage limit reached",
            utc(reset + 60).format("%H:%M")
        )
    );
    let ended = receiver.wait_event(id, "session_ended", Duration::from_secs(60));
    assert_eq!(ended.body["status"], "completed", "{}", ended.body);
    let log = log_of(&env, "local", id);
    assert!(
        log.contains(&format!(
            "amplihack: retry 1/2 at {}: usage limit reached\n",
            utc(reset + 60).format("%Y-%m-%dT%H:%M:%SZ")
        )),
        "{log}"
    );
    let runs = std::fs::read_to_string(env.agent_record("local", id).join("runs")).unwrap();
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[1].contains("--continue -p"), "{runs:?}");
    // Not before the reset plus its minute.
    let second_start: i64 =
        std::fs::read_to_string(env.agent_record("local", id).join("started_ns"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    eprintln!(
        "the retry started {} ms after the reset plus its minute",
        second_start / 1_000_000 - (reset + 60) * 1000
    );
    assert!(
        second_start / 1_000_000_000 >= reset + 60,
        "the retry ran at {second_start} ns, before {}",
        reset + 60
    );

    // Clock times in a zone: the wait runs to that time plus a minute, and says so.
    let forms = [
        (
            "TRANSIENT=sessionlimit RESET=7200 ZONE=America/New_York a",
            "America/New_York",
        ),
        (
            "TRANSIENT=usagelimit RESET=3600 ZONE=America/Chicago b",
            "America/Chicago",
        ),
        (
            "TRANSIENT=weeklylimit RESET=5400 ZONE=Asia/Kolkata c",
            "Asia/Kolkata",
        ),
    ];
    let prompts: Vec<&str> = forms.iter().map(|f| f.0).collect();
    let ids = start(&env, &[], &prompts);
    for (id, (_, zone)) in ids.iter().zip(forms) {
        let reset = reset_epoch_of(&env, id);
        let got = receiver.wait_event(id, "session_retrying", Duration::from_secs(30));
        let detail = got.body["detail"].as_str().unwrap().to_string();
        let at = utc(reset + 60);
        assert!(
            detail.starts_with("retry 1/2 at ")
                && detail.contains(&format!("{} UTC: plan limit, resets ", at.format("%H:%M")))
                && detail.ends_with(&format!(" {zone}")),
            "{detail}"
        );
        assert!(
            log_of(&env, "local", id).contains(&format!(
                "amplihack: retry 1/2 at {}: plan limit, resets ",
                at.format("%Y-%m-%dT%H:%M:%SZ")
            )),
            "{}",
            log_of(&env, "local", id)
        );
        let s = list_json_of(&env, id);
        assert_eq!(s["status"], "running", "{s}");
        assert_eq!(s["detail"], detail.as_str());
    }
    for id in &ids {
        let out = env.run(&["kill", id]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(env.wait_finished(id)["status"], "killed");
        let runs = std::fs::read_to_string(env.agent_record("local", id).join("runs")).unwrap();
        assert_eq!(runs.lines().count(), 1, "not run again before its reset");
    }
}

/// A queued session that cannot start when its turn comes ends `failed`, and that end is
/// notified too: its URL was handed on from the queue, with no supervisor to send it.
#[test]
fn a_queued_session_that_cannot_start_is_notified_failed() {
    let receiver = Receiver::start();
    let mut env = local_env(&receiver);
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let ids = start(&env, &[], &["SLEEP=60 first", "second"]);
    assert_eq!(env.session(&ids[1])["status"], "queued");
    // Its key's FIFO cannot be made: the start of the queued session fails.
    std::fs::create_dir(dir_of(&env, "local", &ids[1]).join("secret.fifo")).unwrap();
    let out = env.run(&["kill", &ids[0]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ended = receiver.wait_event(&ids[1], "session_ended", Duration::from_secs(30));
    assert_eq!(ended.body["status"], "failed", "{}", ended.body);
    assert_eq!(ended.body["exit_code"], 1);
    assert!(
        ended.body["reason"]
            .as_str()
            .unwrap()
            .starts_with("the queued session could not start: cannot create"),
        "{}",
        ended.body
    );
    assert_eq!(env.wait_finished(&ids[1])["status"], "failed");
    assert_url_at_rest_nowhere(&env);
}
