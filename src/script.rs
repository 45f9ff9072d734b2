//! Scripts that run on a VM (through `azlin connect ... -- 'bash -s'`, or local bash for the
//! local backend), and parsers for what they print. Pure: builds bytes, parses bytes.
//!
//! Every script is sent on stdin and wrapped in one `{ ... }` group, so bash has read all of it
//! before the first command runs; anything after the group on stdin (a git bundle) is payload.
//! All data (prompts, keys, ids, paths) is single-quoted, so it reaches the VM byte for byte
//! and never passes through a shell's parsing. Scripts exit 0 or 3, never 255 (which would
//! look like an ssh failure). The layout they maintain is in docs/remote-layout.md.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::model::{SessionStatus, parse_timestamp};

/// Where a VM keeps the session directories, relative to the login user's home.
pub const REMOTE_BASE: &str = ".amplihack/remote";

/// Quotes a string as one shell word. Single quotes keep every byte literal; an embedded
/// single quote is closed, escaped and reopened.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The workspace root as a shell expression: `~/x` and relative roots live under `$HOME`.
pub fn root_expr(root: &str) -> String {
    let root = root.trim_end_matches('/');
    if root == "~" || root.is_empty() {
        "\"$HOME\"".into()
    } else if let Some(rest) = root.strip_prefix("~/") {
        format!("\"$HOME\"/{}", shell_quote(rest))
    } else if root.starts_with('/') {
        shell_quote(root)
    } else {
        format!("\"$HOME\"/{}", shell_quote(root))
    }
}

/// The workspace path recorded in the state for a session.
pub fn workspace_path(root: &str, id: &str) -> String {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        format!("/{id}")
    } else {
        format!("{root}/{id}")
    }
}

/// The run script: the pane's process in each session's tmux session. It starts the agent as
/// its own process group (so `kill` can signal the agent and everything it spawned), logs its
/// output, and records the exit code and finish time so status and output survive the tmux
/// session. If the tmux session is ended under it, it ends the agent rather than leave it
/// running unsupervised, and its pane's `tail` exits with it. `$1` is the session directory.
pub const RUN_SCRIPT: &str = r#"#!/usr/bin/env bash
# amplihack remote run script: one agent session. Layout: docs/remote-layout.md.
d=$1
if [ -f "$d/secret" ]; then
  IFS= read -r -d '' ANTHROPIC_API_KEY < "$d/secret"
  export ANTHROPIC_API_KEY
  rm -f -- "$d/secret"
fi
export NODE_OPTIONS=--max-old-space-size=32768
mapfile -d '' -t argv < "$d/argv"
IFS= read -r -d '' prompt < "$d/prompt"
pid=
# The tmux session ended under us (kill-session, kill-server): end the agent too, then record.
trap '[ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null' HUP TERM
date -u +%Y-%m-%dT%H:%M:%SZ > "$d/started_at"
: >> "$d/output.log"
set -m
"${argv[@]}" "$prompt" < /dev/null >> "$d/output.log" 2>&1 &
pid=$!
printf '%s\n' "$pid" > "$d/agent.pid"
tail -n +1 -f --pid=$$ -- "$d/output.log" &
tail_pid=$!
# A trapped signal cuts `wait` short: wait again until the agent has really exited.
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
date -u +%Y-%m-%dT%H:%M:%SZ > "$d/finished_at.part" && mv -f -- "$d/finished_at.part" "$d/finished_at"
printf '%s\n' "$rc" > "$d/exit_code.part" && mv -f -- "$d/exit_code.part" "$d/exit_code"
sleep 1
kill "$tail_pid" 2>/dev/null
exit 0
"#;

/// Shared opening of every script: stdin kept on fd 3 for payload and replaced by /dev/null
/// for every command, the user's own tmux client variable dropped, and `probe`, which prints
/// one `session` line of facts about a session.
fn opening(kind: &str) -> String {
    format!(
        r#"# amplihack remote: {kind} script (generated; see docs/remote-layout.md)
{{
exec 3<&0 </dev/null
unset TMUX
umask 077
base="$HOME/{REMOTE_BASE}"
fail() {{ printf 'amplihack: %s\n' "$*" >&2; exit 3; }}
probe() {{
  local id=$1 d="$base/sessions/$1" known=0 alive=0 rc=- fin=- st=-
  [ -d "$d" ] && known=1
  tmux has-session -t "=$id" 2>/dev/null && alive=1
  [ -f "$d/exit_code" ] && IFS= read -r rc < "$d/exit_code"
  [ -f "$d/finished_at" ] && IFS= read -r fin < "$d/finished_at"
  [ -f "$d/started_at" ] && IFS= read -r st < "$d/started_at"
  printf 'session\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$known" "$alive" "${{rc:--}}" "${{fin:--}}" "${{st:--}}"
}}
"#
    )
}

const CLOSING: &str = "exit 0\n}\n";

#[derive(Debug, Clone)]
pub struct LaunchSession<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub command: &'a str,
    pub max_turns: u32,
}

#[derive(Debug, Clone)]
pub struct LaunchPlan<'a> {
    pub sessions: Vec<LaunchSession<'a>>,
    pub agent_words: &'a [String],
    pub api_key: Option<&'a str>,
    pub workspace_root: &'a str,
    /// File name of the git bundle and its bytes, sent after the script on stdin.
    pub bundle: Option<(&'a str, &'a [u8])>,
    /// A fresh Azure VM may still be installing tmux and the agent.
    pub wait_for_cloud_init: bool,
}

/// The whole stdin of the launch call: the script, then the bundle bytes if any.
pub fn launch_input(plan: &LaunchPlan) -> Vec<u8> {
    let mut s = opening("launch");
    s.push_str(
        r#"report_failed() { printf 'failed\t%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n\r' '   ')"; }
command -v tmux >/dev/null 2>&1 || fail "tmux is not installed on this machine"
mkdir -p -- "$base/sessions" "$base/context" || fail "cannot create $base"
"#,
    );
    if plan.wait_for_cloud_init {
        s.push_str(
            "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1; fi\n",
        );
    }
    match plan.bundle {
        Some((name, _)) => {
            s.push_str(&format!(
                r#"command -v git >/dev/null 2>&1 || fail "git is not installed on this machine"
bundle="$base/context/"{name}
cat <&3 > "$bundle.part" && mv -f -- "$bundle.part" "$bundle" || fail "could not store the git bundle"
"#,
                name = shell_quote(name)
            ));
        }
        None => s.push_str("bundle=\n"),
    }
    s.push_str("exec 3<&-\n");
    s.push_str(&format!("root={}\n", root_expr(plan.workspace_root)));
    s.push_str(
        r#"mkdir -p -- "$root" 2>/dev/null || { sudo -n mkdir -p -- "$root" && sudo -n chown "$(id -u):$(id -g)" -- "$root"; } 2>/dev/null || fail "cannot create the workspace root $root (it needs sudo)"
IFS= read -r -d '' run_sh <<'AMPLIHACK_RUN_SH'
"#,
    );
    s.push_str(RUN_SCRIPT);
    s.push_str(
        r#"AMPLIHACK_RUN_SH
start_session() {
  local id=$1 ws="$root/$1" d="$base/sessions/$1" out
  if tmux has-session -t "=$id" 2>/dev/null; then printf 'launched\t%s\n' "$id"; return; fi
  printf '%s' "$run_sh" > "$d/run.sh" || { report_failed "$id" "cannot write $d/run.sh"; return; }
  if [ -n "$bundle" ]; then
    if [ ! -e "$ws/.git" ]; then
      out=$(git clone --quiet -- "$bundle" "$ws" 2>&1) || { report_failed "$id" "git clone failed: $out"; return; }
      out=$(git -C "$ws" checkout --quiet -B "amplihack/$id" 2>&1) || { report_failed "$id" "git checkout failed: $out"; return; }
    fi
  else
    mkdir -p -- "$ws" || { report_failed "$id" "cannot create the workspace $ws"; return; }
  fi
  out=$(tmux new-session -d -s "$id" -c "$ws" bash "$d/run.sh" "$d" 2>&1) || { report_failed "$id" "tmux new-session failed: $out"; return; }
  printf 'launched\t%s\n' "$id"
}
"#,
    );
    for sess in &plan.sessions {
        let id = shell_quote(sess.id);
        let mut argv: Vec<String> = plan.agent_words.to_vec();
        argv.push(format!("--{}", sess.command));
        argv.push("--max-turns".into());
        argv.push(sess.max_turns.to_string());
        argv.push("--".into());
        argv.push("-p".into());
        let argv_words: Vec<String> = argv.iter().map(|w| shell_quote(w)).collect();
        let secret = match plan.api_key {
            Some(key) => format!(" && printf '%s' {} > \"$d/secret\"", shell_quote(key)),
            None => String::new(),
        };
        s.push_str(&format!(
            "d=\"$base/sessions/\"{id}\n\
             if mkdir -p -- \"$d\" && printf '%s' {prompt} > \"$d/prompt\" && printf '%s\\0' {argv} > \"$d/argv\"{secret}; then start_session {id}; else report_failed {id} \"cannot write the session files in $d\"; fi\n",
            prompt = shell_quote(sess.prompt),
            argv = argv_words.join(" "),
        ));
    }
    s.push_str(CLOSING);
    let mut input = s.into_bytes();
    if let Some((_, bytes)) = plan.bundle {
        input.extend_from_slice(bytes);
    }
    input
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchResult {
    Launched,
    Failed(String),
}

pub fn parse_launch(stdout: &[u8]) -> HashMap<String, LaunchResult> {
    let text = String::from_utf8_lossy(stdout);
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("launched"), Some(id), _) => {
                out.insert(id.to_string(), LaunchResult::Launched);
            }
            (Some("failed"), Some(id), reason) => {
                out.insert(
                    id.to_string(),
                    LaunchResult::Failed(reason.unwrap_or("unknown").trim().to_string()),
                );
            }
            _ => {}
        }
    }
    out
}

/// Prints one `session` line per id: whether its directory exists, whether its tmux session
/// is alive, its exit code, finish and start times.
pub fn probe_script(ids: &[&str]) -> Vec<u8> {
    let mut s = opening("status");
    for id in ids {
        s.push_str(&format!("probe {}\n", shell_quote(id)));
    }
    s.push_str(CLOSING);
    s.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The session directory exists (sessions of the Python original have none).
    pub known: bool,
    pub alive: bool,
    pub exit_code: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
}

fn field<T>(s: Option<&str>, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    s.filter(|v| *v != "-").and_then(parse)
}

fn parse_probe_line(line: &str) -> Option<(String, Probe)> {
    let mut p = line.split('\t');
    if p.next()? != "session" {
        return None;
    }
    let id = p.next()?.to_string();
    let known = p.next()? == "1";
    let alive = p.next()? == "1";
    let exit_code = field(p.next(), |v| v.trim().parse().ok());
    let finished_at = field(p.next(), |v| parse_timestamp(v.trim()).ok());
    let started_at = field(p.next(), |v| parse_timestamp(v.trim()).ok());
    Some((
        id,
        Probe {
            known,
            alive,
            exit_code,
            finished_at,
            started_at,
        },
    ))
}

pub fn parse_probes(stdout: &[u8]) -> HashMap<String, Probe> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(parse_probe_line)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Running {
        started_at: Option<DateTime<Utc>>,
    },
    Finished {
        status: SessionStatus,
        exit_code: Option<i32>,
        at: DateTime<Utc>,
        error: Option<String>,
    },
}

pub const VANISHED: &str = "the tmux session ended without recording an exit code";

/// The true status of a session from what its VM says. A recorded exit code wins; otherwise a
/// live tmux session means running, and a dead one means the session vanished (failed).
pub fn verdict(probe: &Probe, now: DateTime<Utc>) -> Verdict {
    match probe.exit_code {
        Some(code) => Verdict::Finished {
            status: SessionStatus::from_exit_code(code),
            exit_code: Some(code),
            at: probe.finished_at.unwrap_or(now),
            error: None,
        },
        None if probe.alive => Verdict::Running {
            started_at: probe.started_at,
        },
        None => Verdict::Finished {
            status: SessionStatus::Failed,
            exit_code: None,
            at: now,
            error: Some(VANISHED.into()),
        },
    }
}

/// Captures what a session shows: its tmux pane while it runs, the kept log after.
pub fn capture_script(id: &str, lines: u32) -> Vec<u8> {
    let mut s = opening("capture");
    s.push_str(&format!(
        r#"id={id}
d="$base/sessions/$id"
probe "$id"
if tmux has-session -t "=$id" 2>/dev/null && [ ! -f "$d/exit_code" ]; then
  printf 'data\tpane\n'
  tmux capture-pane -p -J -t "$id" -S -{lines} 2>/dev/null
elif [ -f "$d/output.log" ]; then
  printf 'data\tlog\n'
  tail -n {lines} -- "$d/output.log"
else
  printf 'data\tnone\n'
fi
"#,
        id = shell_quote(id)
    ));
    s.push_str(CLOSING);
    s.into_bytes()
}

/// One poll of `output --follow`: the session's facts, the log size, and the log bytes after
/// `offset` (or, on the first poll, its last `lines` lines), cut at that size so no byte is
/// read twice or skipped.
pub fn follow_script(id: &str, offset: Option<u64>, lines: u32) -> Vec<u8> {
    let mut s = opening("follow");
    let read = match offset {
        None => format!(r#"head -c "$size" -- "$log" | tail -n {lines}"#),
        Some(off) => format!(
            r#"if [ "$size" -gt {off} ]; then tail -c +$(({off} + 1)) -- "$log" | head -c $((size - {off})); fi"#
        ),
    };
    s.push_str(&format!(
        r#"id={id}
d="$base/sessions/$id"
log="$d/output.log"
probe "$id"
size=0
[ -f "$log" ] && size=$(($(wc -c < "$log")))
printf 'log\t%s\n' "$size"
printf 'data\tlog\n'
[ -f "$log" ] && {read}
"#,
        id = shell_quote(id)
    ));
    s.push_str(CLOSING);
    s.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureSource {
    Pane,
    Log,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub probe: Option<Probe>,
    pub log_size: Option<u64>,
    pub source: CaptureSource,
    pub data: Vec<u8>,
}

/// Splits a capture or follow answer into its header lines and the raw data after `data`.
pub fn parse_capture(stdout: &[u8]) -> Result<Capture, String> {
    let mut rest = stdout;
    let mut probe = None;
    let mut log_size = None;
    loop {
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            return Err("the VM's answer ended before its data section".into());
        };
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        rest = &rest[nl + 1..];
        if let Some(kind) = line.strip_prefix("data\t") {
            let source = match kind {
                "pane" => CaptureSource::Pane,
                "log" => CaptureSource::Log,
                _ => CaptureSource::None,
            };
            return Ok(Capture {
                probe,
                log_size,
                source,
                data: rest.to_vec(),
            });
        } else if let Some(size) = line.strip_prefix("log\t") {
            log_size = size.trim().parse().ok();
        } else if let Some((_, p)) = parse_probe_line(&line) {
            probe = Some(p);
        }
    }
}

/// The last `n` lines of a pane capture, without the pane's trailing blank rows.
pub fn last_lines(text: &[u8], n: usize) -> Vec<u8> {
    let mut end = text.len();
    while end > 0 && matches!(text[end - 1], b'\n' | b' ') {
        end -= 1;
    }
    let body = &text[..end];
    if body.is_empty() {
        return Vec::new();
    }
    let mut start = 0;
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
    }
    let mut out = body[start..].to_vec();
    out.push(b'\n');
    out
}

pub fn count_lines(data: &[u8]) -> usize {
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(!data.is_empty() && !data.ends_with(b"\n"))
}

/// Signals the agent's process group (SIGTERM, then SIGKILL after `grace_secs`; or SIGKILL at
/// once), waits for the run script to record the exit code, and ends the tmux session.
pub fn kill_script(id: &str, force: bool, grace_secs: u32) -> Vec<u8> {
    let signal = if force { "KILL" } else { "TERM" };
    let mut s = opening("kill");
    s.push_str(&format!(
        r#"id={id}
d="$base/sessions/$id"
if [ -f "$d/exit_code" ]; then printf 'result\talready\n'; probe "$id"; exit 0; fi
pid=
[ -f "$d/agent.pid" ] && IFS= read -r pid < "$d/agent.pid"
alive() {{ [ -n "$pid" ] && kill -0 -- "-$pid" 2>/dev/null; }}
had_tmux=0
tmux has-session -t "=$id" 2>/dev/null && had_tmux=1
if alive; then
  kill -{signal} -- "-$pid" 2>/dev/null && printf 'signalled\t{signal}\n'
  n=0
  while alive && [ "$n" -lt {grace_ticks} ]; do sleep 0.1; n=$((n + 1)); done
  if alive; then kill -KILL -- "-$pid" 2>/dev/null; printf 'escalated\tKILL\n'; fi
  n=0
  while [ ! -f "$d/exit_code" ] && [ "$n" -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
fi
tmux kill-session -t "=$id" 2>/dev/null
if [ "$had_tmux" = 1 ] || [ -n "$pid" ]; then printf 'result\tkilled\n'; else printf 'result\tgone\n'; fi
probe "$id"
"#,
        id = shell_quote(id),
        grace_ticks = grace_secs * 10,
    ));
    s.push_str(CLOSING);
    s.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillOutcome {
    /// The session had already recorded an exit code: nothing was signalled.
    AlreadyFinished,
    /// Signalled and ended.
    Killed,
    /// Neither a tmux session nor an agent was there.
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillReport {
    pub outcome: KillOutcome,
    pub signalled: Option<String>,
    pub escalated: bool,
    pub probe: Option<Probe>,
}

pub fn parse_kill(stdout: &[u8]) -> Result<KillReport, String> {
    let text = String::from_utf8_lossy(stdout);
    let mut outcome = None;
    let mut report = KillReport {
        outcome: KillOutcome::Gone,
        signalled: None,
        escalated: false,
        probe: None,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("result\t") {
            outcome = Some(match v {
                "already" => KillOutcome::AlreadyFinished,
                "killed" => KillOutcome::Killed,
                _ => KillOutcome::Gone,
            });
        } else if let Some(v) = line.strip_prefix("signalled\t") {
            report.signalled = Some(v.to_string());
        } else if line.starts_with("escalated\t") {
            report.escalated = true;
        } else if let Some((_, p)) = parse_probe_line(line) {
            report.probe = Some(p);
        }
    }
    report.outcome = outcome.ok_or("the VM's answer has no result line")?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_byte_literal() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let nasty = "$(rm -rf /) `id` \"q\" 'x' \\ \n\t ünï ${HOME} !! ; | & * ?";
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s' {}", shell_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn workspace_roots() {
        assert_eq!(root_expr("/workspace"), "'/workspace'");
        assert_eq!(root_expr("~/ws"), "\"$HOME\"/'ws'");
        assert_eq!(root_expr("rel"), "\"$HOME\"/'rel'");
        assert_eq!(workspace_path("/workspace/", "s1"), "/workspace/s1");
        assert_eq!(workspace_path("~/ws", "s1"), "~/ws/s1");
    }

    fn plan<'a>(agent: &'a [String], bundle: Option<(&'a str, &'a [u8])>) -> LaunchPlan<'a> {
        LaunchPlan {
            sessions: vec![LaunchSession {
                id: "sess-1",
                prompt: "it's $(x)",
                command: "auto",
                max_turns: 7,
            }],
            agent_words: agent,
            api_key: Some("sk-secret"),
            workspace_root: "/workspace",
            bundle,
            wait_for_cloud_init: true,
        }
    }

    #[test]
    fn launch_script_carries_the_agent_command_and_payload() {
        let agent = vec!["amplihack".to_string(), "claude".to_string()];
        let input = launch_input(&plan(&agent, Some(("abc.bundle", b"BUNDLE"))));
        let text = String::from_utf8(input).unwrap();
        assert!(text.contains(
            "printf '%s\\0' 'amplihack' 'claude' '--auto' '--max-turns' '7' '--' '-p' > \"$d/argv\""
        ));
        assert!(text.contains("printf '%s' 'it'\\''s $(x)' > \"$d/prompt\""));
        assert!(text.contains("cloud-init status --wait"));
        assert!(
            text.ends_with("exit 0\n}\nBUNDLE"),
            "payload follows the group"
        );
        let without = String::from_utf8(launch_input(&plan(&agent, None))).unwrap();
        assert!(without.contains("bundle=\n"));
        assert!(without.ends_with("exit 0\n}\n"));
    }

    #[test]
    fn launch_script_is_valid_bash() {
        let agent = vec!["x".to_string()];
        let input = launch_input(&plan(&agent, None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, &input).unwrap();
        let st = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        for script in [
            probe_script(&["a", "b"]),
            capture_script("a", 5),
            follow_script("a", Some(3), 5),
            kill_script("a", true, 10),
        ] {
            std::fs::write(&path, &script).unwrap();
            assert!(
                std::process::Command::new("bash")
                    .arg("-n")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }

    #[test]
    fn launch_results() {
        let r = parse_launch(b"launched\tsess-1\nfailed\tsess-2\tgit clone failed: boom\nnoise\n");
        assert_eq!(r["sess-1"], LaunchResult::Launched);
        assert_eq!(
            r["sess-2"],
            LaunchResult::Failed("git clone failed: boom".into())
        );
    }

    #[test]
    fn probes_and_verdicts() {
        let p = parse_probes(
            b"session\ts1\t1\t0\t3\t2025-11-25T14:40:00Z\t2025-11-25T14:30:00Z\nsession\ts2\t1\t1\t-\t-\t2025-11-25T14:30:00Z\nsession\ts3\t0\t0\t-\t-\t-\n",
        );
        let now = parse_timestamp("2025-11-25T15:00:00Z").unwrap();
        match verdict(&p["s1"], now) {
            Verdict::Finished {
                status,
                exit_code,
                at,
                ..
            } => {
                assert_eq!(status, SessionStatus::Failed);
                assert_eq!(exit_code, Some(3));
                assert_eq!(at, parse_timestamp("2025-11-25T14:40:00Z").unwrap());
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(verdict(&p["s2"], now), Verdict::Running { .. }));
        match verdict(&p["s3"], now) {
            Verdict::Finished {
                status,
                exit_code,
                error,
                ..
            } => {
                assert_eq!((status, exit_code), (SessionStatus::Failed, None));
                assert_eq!(error.as_deref(), Some(VANISHED));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn capture_sections() {
        let c = parse_capture(b"session\ts\t1\t1\t-\t-\t-\nlog\t42\ndata\tlog\nline\n\x01binary\n")
            .unwrap();
        assert_eq!(c.source, CaptureSource::Log);
        assert_eq!(c.log_size, Some(42));
        assert!(c.probe.unwrap().alive);
        assert_eq!(c.data, b"line\n\x01binary\n");
        assert!(parse_capture(b"session\ts\t1\t1\t-\t-\t-\n").is_err());
    }

    #[test]
    fn last_lines_trims_the_pane() {
        assert_eq!(last_lines(b"a\nb\nc\n\n\n   \n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\n", 10), b"a\nb\n");
        assert_eq!(last_lines(b"\n\n", 3), b"");
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b""), 0);
    }

    #[test]
    fn kill_reports() {
        let r =
            parse_kill(b"signalled\tTERM\nresult\tkilled\nsession\ts\t1\t0\t143\t-\t-\n").unwrap();
        assert_eq!(r.outcome, KillOutcome::Killed);
        assert_eq!(r.signalled.as_deref(), Some("TERM"));
        assert_eq!(r.probe.unwrap().exit_code, Some(143));
        assert!(parse_kill(b"").is_err());
    }
}
