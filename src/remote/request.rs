//! The requests sent to a VM, as bytes (pure); `answer` reads what comes back.
//!
//! The VM side is real shell files under src/remote/vm/ (shellchecked): `control.sh` has one
//! subcommand per request (launch, probe, records, capture, stream, watch, kill) and
//! `supervisor.sh` supervises one agent session. A request is `control.sh` sent on the stdin of `bash -s`
//! inside one `{ ... }` group, after a header that sets its arguments; anything after the group
//! (a git bundle) is payload. All data (prompts, keys, ids, paths) is single-quoted, so it
//! reaches the VM byte for byte and never passes through a shell's parsing. The scripts exit 0
//! or 3, never 255 (which would look like an ssh failure). Layout: docs/remote-layout.md.

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

/// The workspace path recorded in the state for a session. The control script resolves `~`
/// and relative roots against the VM user's home.
pub fn workspace_path(root: &str, id: &str) -> String {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        format!("/{id}")
    } else {
        format!("{root}/{id}")
    }
}

/// The shell files that run on a VM (src/remote/vm/): helpers, the control script and the session
/// supervisor. They are shellchecked as files; here they are only embedded and sent.
const LIB_SH: &str = include_str!("vm/lib.sh");
/// Retries, silence, the cap and notifications (docs/unattended.md).
const UNATTENDED_SH: &str = include_str!("vm/unattended.sh");
const CONTROL_SH: &str = include_str!("vm/control.sh");
const SUPERVISOR_SH: &str = include_str!("vm/supervisor.sh");

/// The supervisor as the launch writes it into each session directory: self-contained (the
/// helpers in front), and a copy per session, so an upgrade never changes it underfoot.
pub fn supervisor_text() -> String {
    format!("{LIB_SH}\n{UNATTENDED_SH}\n{SUPERVISOR_SH}")
}

/// Whether a control call first has the VM start its queued work, as far as it has room: asked
/// of VMs the state knows to have queued sessions, whose supervisors may all be gone. The
/// user's key goes along for the sessions it starts (never written on the VM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Queue<'a> {
    #[default]
    Leave,
    Drain {
        key: Option<&'a str>,
    },
}

/// The whole stdin of one control call: the answer's mark, `{`, the header (what `queue`
/// asks, the variables, then the arguments of the subcommand, every value single-quoted), the
/// helpers and the control script, `}`, then the payload. The group makes bash read everything
/// before it runs anything.
fn control_input(queue: Queue, vars: &[(&str, &str)], args: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut s = String::with_capacity(LIB_SH.len() + UNATTENDED_SH.len() + CONTROL_SH.len() + 512);
    s.push_str("# amplihack remote: a control call (docs/remote-layout.md)\n");
    s.push_str("printf 'amplihack-remote\\tanswer\\n'\n{\n");
    if let Queue::Drain { key } = queue {
        s.push_str("AMPLIHACK_DRAIN=1\n");
        if let Some(key) = key {
            s.push_str("AMPLIHACK_SECRET=");
            s.push_str(&shell_quote(key));
            s.push('\n');
        }
    }
    for (name, value) in vars {
        s.push_str(name);
        s.push('=');
        s.push_str(&shell_quote(value));
        s.push('\n');
    }
    s.push_str("set --");
    for arg in args {
        s.push(' ');
        s.push_str(&shell_quote(arg));
    }
    s.push('\n');
    s.push_str(LIB_SH);
    s.push('\n');
    s.push_str(UNATTENDED_SH);
    s.push('\n');
    s.push_str(CONTROL_SH);
    s.push_str("\n}\n");
    let mut input = s.into_bytes();
    input.extend_from_slice(payload);
    input
}

#[derive(Debug, Clone)]
pub struct LaunchSession<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub command: &'a str,
    pub max_turns: u32,
    /// The session's own record (JSON), kept on the VM so the VM alone can describe it.
    pub record: &'a str,
}

#[derive(Debug, Clone)]
pub struct LaunchPlan<'a> {
    pub sessions: Vec<LaunchSession<'a>>,
    pub agent_words: &'a [String],
    pub api_key: Option<&'a str>,
    /// Where the sessions' supervisors send notifications: a secret, handed over like the key.
    pub notify_url: Option<&'a str>,
    pub workspace_root: &'a str,
    /// File name of the git bundle and its bytes, sent after the script on stdin.
    pub bundle: Option<(&'a str, &'a [u8])>,
    /// A fresh Azure VM may still be installing tmux and the agent.
    pub wait_for_cloud_init: bool,
    /// How many agents the VM may run at once; the VM enforces it under its lock.
    pub capacity: Option<u32>,
    /// A session that finds no free slot on the VM waits in its queue (else it fails).
    pub queue: bool,
    /// A follow-up (`continue`): its one session works in an ended session's workspace, and
    /// the agent is told to continue that session's conversation.
    pub continuation: Option<ContinueLaunch<'a>>,
}

#[derive(Debug, Clone)]
pub struct ContinueLaunch<'a> {
    /// The workspace of the session it continues, as the state records it.
    pub workspace: &'a str,
    /// The workspace rebuilt from the archive, on a VM that does not have it.
    pub restore: Option<&'a Restore>,
}

/// What rebuilds an ended session's workspace on another VM: a git bundle whose one ref holds
/// its head commit (the whole history), its branch, and the files of its archive: the
/// uncommitted work as a patch, and the agent's conversations, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    pub branch: String,
    pub head: String,
    /// `(name, bytes)`: `workspace.bundle`, `uncommitted.patch`, `conversation/NAME.jsonl`.
    pub parts: Vec<(String, Vec<u8>)>,
}

/// The argv of an agent that continues its workspace's latest conversation: Claude Code's
/// `--continue` before the prompt's `-p`.
pub fn continuing_argv(mut argv: Vec<String>) -> Vec<String> {
    let at = argv.len().saturating_sub(1);
    argv.insert(at, "--continue".into());
    argv
}

/// The agent's argv before the prompt: `amplihack claude --<command> --max-turns N -- -p`.
pub fn agent_argv(agent_words: &[String], command: &str, max_turns: u32) -> Vec<String> {
    let mut argv = agent_words.to_vec();
    argv.push(format!("--{command}"));
    argv.push("--max-turns".into());
    argv.push(max_turns.to_string());
    argv.push("--".into());
    argv.push("-p".into());
    argv
}

/// The whole stdin of the launch call: control `launch`, then the bundle bytes if any.
pub fn launch_input(plan: &LaunchPlan) -> Vec<u8> {
    let supervisor = supervisor_text();
    let mut vars: Vec<(&str, &str)> = vec![("AMPLIHACK_SUPERVISOR", &supervisor)];
    if let Some(key) = plan.api_key {
        vars.push(("AMPLIHACK_SECRET", key));
    }
    let restore_parts: String;
    let mut payload: Vec<u8> = plan.bundle.map_or(Vec::new(), |(_, b)| b.to_vec());
    if let Some(c) = &plan.continuation {
        vars.push(("AMPLIHACK_CONTINUE", c.workspace));
        if let Some(r) = c.restore {
            restore_parts = r
                .parts
                .iter()
                .map(|(name, bytes)| format!("{name} {}\n", bytes.len()))
                .collect();
            vars.push(("AMPLIHACK_RESTORE_BRANCH", &r.branch));
            vars.push(("AMPLIHACK_RESTORE_HEAD", &r.head));
            vars.push(("AMPLIHACK_RESTORE_PARTS", &restore_parts));
            for (_, bytes) in &r.parts {
                payload.extend_from_slice(bytes);
            }
        }
    }
    if let Some(url) = plan.notify_url {
        vars.push(("AMPLIHACK_NOTIFY", url));
    }
    let argvs: Vec<(Vec<String>, String)> = plan
        .sessions
        .iter()
        .map(|s| {
            let argv = agent_argv(plan.agent_words, s.command, s.max_turns);
            let argv = if plan.continuation.is_some() {
                continuing_argv(argv)
            } else {
                argv
            };
            let argc = argv.len().to_string();
            (argv, argc)
        })
        .collect();
    let capacity = plan.capacity.map(|c| c.to_string()).unwrap_or_default();
    let mut args: Vec<&str> = vec![
        "launch",
        plan.workspace_root,
        plan.bundle.map_or("", |(name, _)| name),
        if plan.wait_for_cloud_init { "1" } else { "0" },
        &capacity,
        if plan.queue { "1" } else { "0" },
    ];
    for (s, (argv, argc)) in plan.sessions.iter().zip(&argvs) {
        args.extend([s.id, s.prompt, s.record, argc.as_str()]);
        args.extend(argv.iter().map(String::as_str));
    }
    control_input(Queue::Leave, &vars, &args, &payload)
}

/// What a call should bring home of a session it finds finished: its archive frame (result,
/// record, log, commits since the starting commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveRequest<'a> {
    /// The workspace as the state records it (the VM resolves `~`).
    pub workspace: &'a str,
    /// The commit the workspace started from; `None` without a git context.
    pub base_commit: Option<&'a str>,
    /// The most bytes of the log to send: its last part.
    pub log_cap: u64,
}

impl ArchiveRequest<'_> {
    /// The trailing arguments of capture and kill: `LOG_CAP WORKSPACE BASE_COMMIT`.
    fn args(&self) -> [String; 3] {
        [
            self.log_cap.to_string(),
            self.workspace.to_string(),
            self.base_commit.unwrap_or("").to_string(),
        ]
    }
}

/// What a probe asks about one session beyond its `session` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Its facts alone (the tests' plain probe; every refresh asks for more).
    #[cfg(test)]
    Facts,
    /// Its archive frame when it has ended.
    Archive,
    /// Its archive frame when it has ended, else a snapshot of its commits so far (`pull`).
    Commits,
    /// A pending session whose start died: claimed first (the VM settles, under the session's
    /// lock, whether it was launched, and cancels a launch still on its way), then as
    /// `Archive`. Its `session` line says `claimed`.
    Claim,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget<'a> {
    pub id: &'a str,
    pub workspace: &'a str,
    pub base_commit: Option<&'a str>,
    pub want: Want,
}

/// What a probe tells its VM of the sessions brought home (docs/remote-layout.md,
/// "Collected"): the VM marks them `collected`, so another machine's prune may delete it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collect<'a> {
    /// The caller answers the VM's `awaiting collected` with the archives of this call it
    /// kept (`collected_reply`): the call is a conversation.
    pub answers: bool,
    /// Sessions whose archives were brought home earlier, their marks not confirmed yet.
    pub earlier: &'a [&'a str],
}

/// The answer to a VM's `awaiting collected`: the sessions whose archives are now in place at
/// home (`collected ID...`, one line).
pub fn collected_reply<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut line = String::from("collected");
    for id in ids {
        line.push('\t');
        line.push_str(id);
    }
    line.push('\n');
    line.into_bytes()
}

/// Asks for one `session` line per target (see `Probe`), plus the frames each one wants:
/// `probe LOG_CAP (ID WORKSPACE BASE_COMMIT WANT)...`.
pub fn probe_script(
    targets: &[ProbeTarget],
    log_cap: u64,
    queue: Queue,
    collect: Collect,
) -> Vec<u8> {
    let cap = log_cap.to_string();
    let mut args = vec!["probe", cap.as_str()];
    for t in targets {
        args.extend([
            t.id,
            t.workspace,
            t.base_commit.unwrap_or(""),
            match t.want {
                #[cfg(test)]
                Want::Facts => "facts",
                Want::Archive => "archive",
                Want::Commits => "commits",
                Want::Claim => "claim",
            },
        ]);
    }
    let earlier = collect.earlier.join(" ");
    let mut vars: Vec<(&str, &str)> = Vec::new();
    if collect.answers {
        vars.push(("AMPLIHACK_ACK", "1"));
    }
    if !earlier.is_empty() {
        vars.push(("AMPLIHACK_COLLECTED", &earlier));
    }
    control_input(queue, &vars, &args, &[])
}

/// Asks a VM for everything it knows of its sessions (`sync`): each session directory's own
/// record and facts, plus the facts of `ids`, which may have no directory.
pub fn records_script(ids: &[&str], claim: &[&str]) -> Vec<u8> {
    let mut args = vec!["records"];
    args.extend_from_slice(ids);
    if !claim.is_empty() {
        args.push("--");
        args.extend_from_slice(claim);
    }
    control_input(Queue::Leave, &[], &args, &[])
}

/// A control call's arguments, with the archive request's appended when there is one.
fn with_archive(
    mut args: Vec<String>,
    archive: Option<&ArchiveRequest>,
    queue: Queue,
    vars: &[(&str, &str)],
) -> Vec<u8> {
    if let Some(a) = archive {
        args.extend(a.args());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    control_input(queue, vars, &refs, &[])
}

/// Captures what a session shows: its tmux pane while it runs, the kept log after; with
/// `archive`, also the archive frame of a session found finished.
pub fn capture_script(id: &str, lines: u32, archive: Option<&ArchiveRequest>) -> Vec<u8> {
    with_archive(
        vec!["capture".into(), id.into(), lines.to_string()],
        archive,
        Queue::Leave,
        // As for kill: the caller answers `awaiting collected` after the archive frame.
        if archive.is_some() {
            &[("AMPLIHACK_ACK", "1")]
        } else {
            &[]
        },
    )
}

/// How a stream paces itself on the VM: how often it checks, and how often it sends a
/// heartbeat when there is nothing else to say.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub check_every: std::time::Duration,
    pub beat_every: std::time::Duration,
}

impl Pace {
    fn args(&self) -> [String; 2] {
        [
            format!("{:.3}", self.check_every.as_secs_f64()),
            self.beat_every.as_secs().max(1).to_string(),
        ]
    }
}

/// `output --follow` over one connection: the session's log from byte `offset` (or, first,
/// from its last `lines` lines) as it grows, until the session is over (see `Frames`).
pub fn stream_script(
    id: &str,
    offset: Option<u64>,
    lines: u32,
    pace: Pace,
    queue: Queue,
) -> Vec<u8> {
    let offset = offset.map_or_else(|| "-".to_string(), |o| o.to_string());
    let [check, beat] = pace.args();
    control_input(
        queue,
        &[],
        &["stream", id, &offset, &lines.to_string(), &check, &beat],
        &[],
    )
}

/// `wait` over one connection per VM: a session line as each session is over (see `Frames`).
pub fn watch_script(ids: &[&str], pace: Pace, queue: Queue) -> Vec<u8> {
    let [check, beat] = pace.args();
    let mut args = vec!["watch", check.as_str(), beat.as_str()];
    args.extend_from_slice(ids);
    control_input(queue, &[], &args, &[])
}

/// Marks the session as being killed, signals the agent's verified process group (SIGTERM,
/// then SIGKILL after `grace_secs`; or SIGKILL at once), and waits for the exit code:
/// `kill ID FORCE GRACE_SECONDS CLAIM [LOG_CAP WORKSPACE BASE_COMMIT]`. With `claim` (a pending
/// session whose start died), a launch still on its way is cancelled first; with `archive`,
/// the ended session's archive frame comes with the answer.
/// How a kill signals: SIGTERM and a grace period, or SIGKILL at once (`--force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillHow {
    Graceful,
    Force,
}

pub fn kill_script(
    id: &str,
    how: KillHow,
    grace_secs: u32,
    claim: bool,
    archive: Option<&ArchiveRequest>,
    queue: Queue,
) -> Vec<u8> {
    let flag = |b: bool| if b { "1" } else { "0" };
    with_archive(
        vec![
            "kill".into(),
            id.into(),
            flag(how == KillHow::Force).into(),
            grace_secs.to_string(),
            flag(claim).into(),
        ],
        archive,
        queue,
        // The kill's caller answers `awaiting collected` after the archive frame (a
        // conversation: docs/remote-layout.md, "Collected").
        if archive.is_some() {
            &[("AMPLIHACK_ACK", "1")]
        } else {
            &[]
        },
    )
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests run the scripts in bash directly
mod tests {
    use super::*;
    use crate::core::lifecycle::Phase;
    use crate::core::model::parse_timestamp;
    use crate::remote::answer::*;

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
    fn workspace_paths() {
        assert_eq!(workspace_path("/workspace/", "s1"), "/workspace/s1");
        assert_eq!(workspace_path("~/ws", "s1"), "~/ws/s1");
        assert_eq!(workspace_path("/", "s1"), "/s1");
    }

    fn plan<'a>(
        agent: &'a [String],
        bundle: Option<(&'a str, &'a [u8])>,
        key: Option<&'a str>,
    ) -> LaunchPlan<'a> {
        LaunchPlan {
            sessions: vec![LaunchSession {
                id: "sess-1",
                prompt: "it's $(x)",
                command: "auto",
                max_turns: 7,
                record: "{\"session_id\":\"sess-1\"}",
            }],
            agent_words: agent,
            api_key: key,
            notify_url: None,
            workspace_root: "/workspace",
            bundle,
            wait_for_cloud_init: true,
            capacity: Some(4),
            queue: true,
            continuation: None,
        }
    }

    #[test]
    fn a_continuation_passes_continue_and_sends_the_restore_parts_after_the_script() {
        let agent = vec!["amplihack".to_string(), "claude".to_string()];
        let restore = Restore {
            branch: "amplihack/sess-0".into(),
            head: "abc".into(),
            parts: vec![
                ("workspace.bundle".into(), b"BUNDLE".to_vec()),
                ("conversation/x.jsonl".into(), b"{}\n".to_vec()),
            ],
        };
        let mut p = plan(&agent, None, None);
        p.continuation = Some(ContinueLaunch {
            workspace: "~/ws/sess-0",
            restore: Some(&restore),
        });
        let input = launch_input(&p);
        let text = String::from_utf8_lossy(&input);
        assert!(text.ends_with("\n}\nBUNDLE{}\n"), "payload last, in order");
        assert!(text.contains("AMPLIHACK_CONTINUE='~/ws/sess-0'\n"));
        assert!(
            text.contains("AMPLIHACK_RESTORE_PARTS='workspace.bundle 6\nconversation/x.jsonl 3\n'")
        );
        assert!(
            text.contains("'--max-turns' '7' '--' '--continue' '-p'\n"),
            "{text}"
        );
        assert_eq!(
            continuing_argv(agent_argv(&agent, "auto", 3)),
            [
                "amplihack",
                "claude",
                "--auto",
                "--max-turns",
                "3",
                "--",
                "--continue",
                "-p"
            ]
        );
    }

    #[test]
    fn launch_input_carries_the_arguments_the_key_and_the_payload() {
        let agent = vec!["amplihack".to_string(), "claude".to_string()];
        let input = launch_input(&plan(&agent, Some(("abc.bundle", b"BUNDLE")), Some("sk-x")));
        let text = String::from_utf8(input).unwrap();
        assert!(text.contains(
            "set -- 'launch' '/workspace' 'abc.bundle' '1' '4' '1' 'sess-1' 'it'\\''s $(x)' '{\"session_id\":\"sess-1\"}' '7' 'amplihack' 'claude' '--auto' '--max-turns' '7' '--' '-p'\n"
        ));
        assert!(text.contains("\nAMPLIHACK_SECRET='sk-x'\n"));
        assert!(text.contains("\nAMPLIHACK_SUPERVISOR='"));
        assert!(text.ends_with("\n}\nBUNDLE"), "payload follows the group");
        let without = String::from_utf8(launch_input(&plan(&agent, None, None))).unwrap();
        assert!(without.contains("set -- 'launch' '/workspace' '' '1' '4' '1' "));
        assert!(!without.contains("\nAMPLIHACK_SECRET="));
        assert!(without.ends_with("\n}\n"));
    }

    #[test]
    fn every_input_is_valid_bash() {
        let agent = vec!["x".to_string()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        let archive = ArchiveRequest {
            workspace: "~/ws/a",
            base_commit: Some("abc"),
            log_cap: 1024,
        };
        for script in [
            launch_input(&plan(&agent, None, Some("k"))),
            probe_script(
                &[
                    target("a", Want::Archive),
                    target("b", Want::Facts),
                    target("c", Want::Claim),
                ],
                10,
                Queue::Leave,
                Collect::default(),
            ),
            records_script(&["a"], &["b"]),
            capture_script("a", 5, None),
            capture_script("a", 5, Some(&archive)),
            stream_script(
                "a",
                Some(3),
                5,
                Pace {
                    check_every: std::time::Duration::from_millis(200),
                    beat_every: std::time::Duration::from_secs(10),
                },
                Queue::Leave,
            ),
            watch_script(
                &["a", "b"],
                Pace {
                    check_every: std::time::Duration::from_millis(500),
                    beat_every: std::time::Duration::from_secs(10),
                },
                Queue::Drain { key: Some("k") },
            ),
            kill_script("a", KillHow::Force, 10, true, None, Queue::Leave),
            kill_script("a", KillHow::Force, 10, false, Some(&archive), Queue::Leave),
        ] {
            std::fs::write(&path, &script).unwrap();
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success(), "{}", String::from_utf8_lossy(&script));
        }
        std::fs::write(&path, supervisor_text()).unwrap();
        assert!(
            std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
    }

    fn target(id: &str, want: Want) -> ProbeTarget<'_> {
        ProbeTarget {
            id,
            workspace: "",
            base_commit: None,
            want,
        }
    }

    /// Runs a control call under bash with its own HOME, as a VM would.
    fn run_control(input: &[u8], home: &std::path::Path) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("bash")
            .arg("-s")
            .env_clear()
            .env("HOME", home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TMUX_TMPDIR", home)
            .current_dir(home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let mut out = child.wait_with_output().unwrap();
        out.stdout = framed_answer(&out.stdout)
            .expect("every answer opens with its mark")
            .to_vec();
        out
    }

    #[test]
    fn arguments_reach_the_control_script_byte_for_byte() {
        let home = tempfile::tempdir().unwrap();
        // (Ids never hold tabs or newlines: the answer is tab-separated lines.)
        let nasty = "a b 'c' \"d\" $(touch pwned) `touch pwned` \\ ünï ; | & *";
        let out = run_control(
            &probe_script(
                &[target(nasty, Want::Archive), target("plain", Want::Facts)],
                10,
                Queue::Leave,
                Collect::default(),
            ),
            home.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer = parse_probe_answer(&out.stdout);
        let probes = answer.probes;
        assert_eq!(probes.len(), 2, "{}", String::from_utf8_lossy(&out.stdout));
        assert!(probes.contains_key(nasty));
        assert!(!probes["plain"].known && !probes["plain"].alive);
        assert!(!home.path().join("pwned").exists());
        // Nothing of `nasty` runs: it has ended, and its (empty) archive says the VM has no
        // directory of it.
        assert_eq!(answer.frames.len(), 1);
        assert_eq!(answer.frames[0].id, nasty);
        assert_eq!(answer.frames[0].notes["session_dir"], "missing");
    }

    /// `claim` settles, under the session's lock, whether a pending session was launched: one
    /// never launched is cancelled (so a late launch refuses it) and comes with its archive
    /// frame, as ended; one launched is left alone. Either way its line says `claimed`.
    #[test]
    fn a_claim_cancels_an_unlaunched_session_and_leaves_a_launched_one() {
        let home = tempfile::tempdir().unwrap();
        let sessions = home.path().join(".amplihack/remote/sessions");
        std::fs::create_dir_all(sessions.join("launched")).unwrap();
        // A supervisor pid of a process that is gone: launched, then vanished.
        std::fs::write(sessions.join("launched/supervisor.pid"), "999999\n").unwrap();
        let out = run_control(
            &probe_script(
                &[
                    target("never", Want::Claim),
                    target("launched", Want::Claim),
                    target("plain", Want::Facts),
                ],
                10,
                Queue::Leave,
                Collect::default(),
            ),
            home.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer = parse_probe_answer(&out.stdout);
        let never = &answer.probes["never"];
        assert!(never.claimed && never.cancelled && never.known && !never.alive);
        assert!(sessions.join("never/cancelled").is_file());
        let launched = &answer.probes["launched"];
        assert!(launched.claimed && !launched.cancelled);
        assert!(!sessions.join("launched/cancelled").exists());
        assert!(!answer.probes["plain"].claimed);
        assert_eq!(never.phase, Phase::Cancelled);
        assert_eq!(launched.phase, Phase::Vanished);
        // Both have ended (nothing of them runs): their archive frames came along.
        let ids: Vec<&str> = answer.frames.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["never", "launched"]);
    }

    #[test]
    fn an_answer_counts_only_after_its_mark() {
        let mut answer = ANSWER_MARK.to_vec();
        answer.extend_from_slice(b"session\tx\n");
        assert_eq!(framed_answer(&answer), Some(&b"session\tx\n"[..]));
        // A login's noise before the mark is dropped with it.
        let noisy = [&b"Welcome\n"[..], &answer].concat();
        assert_eq!(framed_answer(&noisy), Some(&b"session\tx\n"[..]));
        // azlin's tmux-name fallback: nothing at all, or anything without the mark.
        assert_eq!(framed_answer(b""), None);
        assert_eq!(framed_answer(b"session\tx\n"), None);
        assert_eq!(framed_answer(&ANSWER_MARK[..5]), None);
        // Every control call prints it first, outside its group.
        let input =
            String::from_utf8(probe_script(&[], 1, Queue::Leave, Collect::default())).unwrap();
        assert!(
            input.contains("printf 'amplihack-remote\\tanswer\\n'\n{\n"),
            "{input}"
        );
    }

    #[test]
    fn a_draining_call_sets_its_header_inside_the_group() {
        let pace = Pace {
            check_every: std::time::Duration::from_millis(500),
            beat_every: std::time::Duration::from_secs(10),
        };
        let plain = watch_script(&["a"], pace, Queue::Leave);
        let input = watch_script(&["a"], pace, Queue::Drain { key: Some("sk-'x") });
        let text = String::from_utf8(input).unwrap();
        assert!(text.contains("\n{\nAMPLIHACK_DRAIN=1\nAMPLIHACK_SECRET='sk-'\\''x'\n"));
        assert_eq!(
            text.len(),
            plain.len() + "AMPLIHACK_DRAIN=1\nAMPLIHACK_SECRET='sk-'\\''x'\n".len()
        );
        let without =
            String::from_utf8(watch_script(&["a"], pace, Queue::Drain { key: None })).unwrap();
        assert!(without.contains("\n{\nAMPLIHACK_DRAIN=1\nset -- "));
    }

    #[test]
    fn the_control_script_rejects_unknown_commands_with_exit_3() {
        let home = tempfile::tempdir().unwrap();
        let out = run_control(
            &control_input(Queue::Leave, &[], &["bogus"], &[]),
            home.path(),
        );
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown control command 'bogus'"));
    }

    #[test]
    fn records_report_every_session_directory_and_the_ids_asked_about() {
        let home = tempfile::tempdir().unwrap();
        let sessions = home.path().join(".amplihack/remote/sessions");
        let record = r#"{"session_id":"sess-a","vm_name":"vm1","workspace":"/workspace/sess-a","tmux_session":"sess-a","prompt":"tab\there\nand a line","command":"auto","max_turns":10,"status":"pending","memory_mb":32768,"created_at":"2025-11-25T14:30:22.5Z","started_at":null,"completed_at":null,"exit_code":null,"later":1}"#;
        let write = |id: &str, file: &str, text: &str| {
            std::fs::create_dir_all(sessions.join(id)).unwrap();
            std::fs::write(sessions.join(id).join(file), text).unwrap();
        };
        // A finished session whose record was written pretty-printed (line breaks and tabs).
        write("sess-a", "record.json", &record.replace(",", ",\n\t"));
        write("sess-a", "started_at", "2025-11-25T14:30:45Z\n");
        write("sess-a", "finished_at", "2025-11-25T14:40:00Z\n");
        write("sess-a", "exit_code", "0\n");
        // A directory without a record yet, one whose record is garbage, one of another id.
        write("sess-b", "prompt", "x");
        write("sess-c", "record.json", "{not json");
        write(
            "sess-d",
            "record.json",
            &record.replace("\"sess-a\",\"vm_name", "\"sess-x\",\"vm_name"),
        );
        // A name that is no session id is skipped.
        write("bad name", "record.json", record);
        let out = run_control(&records_script(&["sess-a", "py-1"], &[]), home.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = parse_records(&out.stdout);
        assert_eq!(
            r.records.keys().collect::<Vec<_>>(),
            ["sess-a", "sess-b", "sess-c", "sess-d"]
        );
        let a = r.records["sess-a"].as_ref().unwrap();
        assert_eq!(a.prompt, "tab\there\nand a line");
        assert_eq!(a.vm_name, "vm1");
        assert_eq!(a.extra["later"], 1, "fields of another version are kept");
        assert_eq!(
            a.created_at,
            parse_timestamp("2025-11-25T14:30:22.5Z").unwrap()
        );
        assert!(
            r.records["sess-b"]
                .as_ref()
                .unwrap_err()
                .contains("no record.json")
        );
        assert!(
            r.records["sess-c"]
                .as_ref()
                .unwrap_err()
                .contains("not a session record")
        );
        assert!(
            r.records["sess-d"]
                .as_ref()
                .unwrap_err()
                .contains("names session \"sess-x\"")
        );
        let pa = &r.probes["sess-a"];
        assert!(pa.known && !pa.alive);
        assert_eq!(pa.exit_code, Some(0));
        assert_eq!(
            pa.started_at,
            Some(parse_timestamp("2025-11-25T14:30:45Z").unwrap())
        );
        assert!(r.probes["sess-b"].known);
        // Asked about, no directory: facts only (sess-a is not reported twice).
        assert!(!r.probes["py-1"].known && !r.records.contains_key("py-1"));
        assert_eq!(r.probes.len(), 5);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("session\tsess-a\t").count(), 1, "{text}");
        assert!(!text.contains("bad name"), "{text}");
        // A VM with no session directory at all answers nothing but the ids asked about.
        let empty = tempfile::tempdir().unwrap();
        let out = run_control(&records_script(&[], &[]), empty.path());
        assert!(out.status.success());
        assert_eq!(parse_records(&out.stdout), VmRecords::default());
    }

    #[test]
    fn launch_results() {
        let r = parse_launch(
            b"launched\tsess-1\t2025-11-25T14:30:45Z\nfailed\tsess-2\tgit clone failed: boom\nnoise\nlaunched\tsess-3\t-\nlaunched\tsess-4\n",
        );
        assert_eq!(
            r["sess-1"],
            LaunchResult::Launched {
                started_at: Some(parse_timestamp("2025-11-25T14:30:45Z").unwrap())
            }
        );
        // Not started within the wait, or an answer of an older control script.
        for id in ["sess-3", "sess-4"] {
            assert_eq!(r[id], LaunchResult::Launched { started_at: None });
        }
        assert_eq!(
            r["sess-2"],
            LaunchResult::Failed("git clone failed: boom".into())
        );
    }

    #[test]
    fn probes_and_their_phases() {
        let p = parse_probes(
            b"session\ts1\t1\t0\t3\t2025-11-25T14:40:00Z\t2025-11-25T14:30:00Z\t0\t0\n\
              session\ts2\t1\t1\t-\t-\t2025-11-25T14:30:00Z\t0\t1\n\
              session\ts3\t0\t0\t-\t-\t-\n\
              session\ts4\t1\t0\t143\t2025-11-25T14:40:00Z\t-\t1\t0\n\
              session\ts5\t1\t0\t-\t-\t2025-11-25T14:30:00Z\t0\t0\n\
              session\ts6\t1\t0\t-\t-\t-\t0\t0\t0\t0\t0\tfailed\ttmux new-session failed: x\n\
              session\ts7\t1\t1\t-\t-\t-\t0\t1\t0\t0\t1\trunning\t-\n",
        );
        assert_eq!(p["s1"].phase, Phase::Ended);
        assert_eq!(p["s1"].exit_code, Some(3));
        assert_eq!(
            p["s1"].finished_at,
            Some(parse_timestamp("2025-11-25T14:40:00Z").unwrap())
        );
        assert!(p["s2"].tmux);
        assert_eq!(p["s2"].phase, Phase::Running);
        // An old probe line (no kill or tmux fields, no phase) still parses.
        assert_eq!(p["s3"].phase, Phase::Absent);
        assert!(p["s4"].kill_requested);
        assert_eq!(p["s4"].phase, Phase::Ended);
        assert_eq!(p["s5"].phase, Phase::Vanished);
        assert_eq!(p["s6"].phase, Phase::Failed);
        assert_eq!(
            p["s6"].reason.as_deref(),
            Some("tmux new-session failed: x")
        );
        // The VM's phase is the word: a stale queued mark beside a live supervisor.
        assert!(p["s7"].queued);
        assert_eq!(p["s7"].phase, Phase::Running);
        assert_eq!(p["s7"].reason, None);
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
        // A frame before the data section is read whole, its binary bytes included.
        let c = parse_capture(
            b"session\ts\t1\t0\t0\t-\t-\narchive\ts\npart\toutput.log\tplain\t7\ndata\tx\nnote\tcommits\t0\nend\ts\ndata\tlog\ntail\n",
        )
        .unwrap();
        assert_eq!(c.frames.len(), 1);
        assert_eq!(c.frames[0].part("output.log").unwrap().data, b"data\tx\n");
        assert_eq!(c.data, b"tail\n");
    }

    #[test]
    fn frames_parse_in_any_pieces() {
        let stream: &[u8] = b"S\tsession\ts\t1\t1\t-\t-\t-\t0\t1\t0\t0\nD\t0\t6\nab\ncd\nB\nD\t6\t0\nS\tsession\ts\t1\t0\t0\t2025-11-25T14:40:00Z\t-\t0\t0\t0\t0\nE\n";
        let whole = Frames::default().feed(stream).unwrap();
        for split in 0..stream.len() {
            let mut frames = Frames::default();
            let mut got = frames.feed(&stream[..split]).unwrap();
            got.extend(frames.feed(&stream[split..]).unwrap());
            assert_eq!(got, whole, "split at {split}");
        }
        assert_eq!(whole.len(), 6);
        assert_eq!(
            whole[1],
            StreamFrame::Data {
                offset: 0,
                bytes: b"ab\ncd\n".to_vec()
            }
        );
        assert_eq!(whole[2], StreamFrame::Beat);
        assert!(
            matches!(&whole[4], StreamFrame::Session(id, p) if id == "s" && p.exit_code == Some(0))
        );
        assert_eq!(whole[5], StreamFrame::End);
        assert!(Frames::default().feed(b"garbage\n").is_err());
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
    fn only_whole_frames_are_read() {
        let whole =
            b"session\ta\t1\t0\t0\t-\t-\narchive\ta\npart\tresult.json\tplain\t2\n{}end\ta\n";
        let a = read_answer(whole).unwrap();
        assert_eq!((a.frames.len(), a.damaged), (1, None));
        assert_eq!(a.frames[0].part("result.json").unwrap().data, b"{}");
        // Cut inside a part, before `end`, or with a foreign line: no frame, and why.
        for cut in [
            &whole[..whole.len() - 8],
            &whole[..whole.len() - 6],
            b"archive\ta\nbogus\nend\ta\n",
            b"archive\ta\npart\tx\tzip\t1\nxend\ta\n",
            b"archive\ta\nend\tb\n",
        ] {
            let a = read_answer(cut).unwrap();
            assert!(a.frames.is_empty(), "{}", String::from_utf8_lossy(cut));
            assert!(a.damaged.is_some());
        }
        // What came before a damaged frame stands.
        let p = parse_probe_answer(&whole[..whole.len() - 6]);
        assert!(p.probes.contains_key("a") && p.frames.is_empty());
    }

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A finished session on a VM (its directory and a git workspace with 2 commits and
    /// uncommitted work) comes home whole: its result computed when the supervisor left none,
    /// its log's last part under the cap, gzip-compressed, and a bundle of its commits.
    #[test]
    fn the_archive_of_a_finished_session_carries_result_log_and_commits() {
        let home = tempfile::tempdir().unwrap();
        let ws = home.path().join("ws/s1");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "-q"]);
        let c = |args: &[&str]| {
            let mut all = vec!["-c", "user.name=t", "-c", "user.email=t@example.invalid"];
            all.extend_from_slice(args);
            git(&ws, &all)
        };
        std::fs::write(ws.join("a.txt"), "a\n").unwrap();
        git(&ws, &["add", "a.txt"]);
        c(&["commit", "-qm", "base"]);
        let base = git(&ws, &["rev-parse", "HEAD"]);
        for i in 1..=2 {
            std::fs::write(ws.join(format!("n{i}.txt")), "x\ny\n").unwrap();
            git(&ws, &["add", "."]);
            c(&["commit", "-qm", &format!("agent {i}")]);
        }
        std::fs::write(ws.join("a.txt"), "a\nchanged\n").unwrap();
        std::fs::write(ws.join("untracked.txt"), "1\n2\n3\n").unwrap();
        let d = home.path().join(".amplihack/remote/sessions/s1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("record.json"),
            format!("{{\"base_commit\":\"{base}\"}}\n"),
        )
        .unwrap();
        std::fs::write(d.join("started_at"), "2025-11-25T14:30:00Z\n").unwrap();
        std::fs::write(d.join("finished_at"), "2025-11-25T14:40:00Z\n").unwrap();
        std::fs::write(d.join("exit_code"), "0\n").unwrap();
        let log: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        std::fs::write(d.join("output.log"), &log).unwrap();

        let t = ProbeTarget {
            id: "s1",
            workspace: "ws/s1",
            base_commit: Some(&base),
            want: Want::Archive,
        };
        let out = run_control(
            &probe_script(&[t], 100, Queue::Leave, Collect::default()),
            home.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer = parse_probe_answer(&out.stdout);
        assert_eq!(answer.damaged, None);
        assert_eq!(answer.probes["s1"].exit_code, Some(0));
        let f = &answer.frames[0];
        assert_eq!(f.kind, FrameKind::Archive);
        assert_eq!(f.note_u64("log_bytes"), Some(log.len() as u64));
        assert_eq!(f.note_u64("log_kept_from"), Some(log.len() as u64 - 100));
        assert_eq!(f.note_u64("commits"), Some(2));
        let part = f.part("output.log").unwrap();
        assert_eq!(part.encoding, Encoding::Gzip);
        let mut kept = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(part.data), &mut kept)
            .unwrap();
        assert_eq!(kept, &log[log.len() - 100..]);
        let result: crate::core::model::SessionResult =
            serde_json::from_slice(f.part("result.json").unwrap().data).unwrap();
        assert_eq!(result.duration_seconds, Some(600));
        assert_eq!(result.commits, Some(2));
        assert_eq!(
            result.head_commit.as_deref(),
            Some(git(&ws, &["rev-parse", "HEAD"]).as_str())
        );
        let committed = result.committed.unwrap();
        assert_eq!(
            (committed.files, committed.insertions, committed.deletions),
            (2, 4, 0)
        );
        let uncommitted = result.uncommitted.unwrap();
        assert_eq!((uncommitted.files, uncommitted.insertions), (2, 4));
        assert_eq!(result.dirty, Some(true));
        // The workspace's own index is untouched by the measure.
        assert_eq!(
            git(&ws, &["status", "--porcelain"]),
            "M a.txt\n?? untracked.txt"
        );
        let bundle = f.part("commits.bundle").unwrap().data;
        assert!(bundle.starts_with(b"# v2 git bundle") || bundle.starts_with(b"# v3 git bundle"));
        assert!(f.part("record.json").is_some());
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

    /// A probe that sent archives asks which were kept, and marks those (and only those, only
    /// ended sessions) `collected` when told; the marks told earlier come first; `records`
    /// reports the marks.
    #[test]
    fn a_probe_marks_collected_what_its_caller_kept_and_records_report_it() {
        let home = tempfile::tempdir().unwrap();
        let sessions = home.path().join(".amplihack/remote/sessions");
        for id in ["done", "other", "earlier"] {
            let d = sessions.join(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("exit_code"), "0\n").unwrap();
            std::fs::write(d.join("output.log"), "awaiting\tcollected\n").unwrap();
        }
        // Files, no supervisor: phase launching, never archived nor marked.
        std::fs::create_dir_all(sessions.join("placing")).unwrap();
        let target = |id: &'static str| ProbeTarget {
            id,
            workspace: "",
            base_commit: None,
            want: Want::Archive,
        };
        let mut input = probe_script(
            &[target("done"), target("other"), target("placing")],
            1000,
            Queue::Leave,
            Collect {
                answers: true,
                earlier: &["earlier", "placing", "../x"],
            },
        );
        // The caller's answer: `done` kept, `other` not; `placing` was never sent.
        input.extend_from_slice(&collected_reply(["done", "placing"]));
        let out = run_control(&input, home.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let answer = read_answer(&out.stdout).unwrap();
        assert_eq!(answer.frames.len(), 2, "{text}");
        assert_eq!(
            collected_ids(&answer),
            ["done", "earlier"].map(String::from).into(),
            "{text}"
        );
        assert!(
            text.find("collected\tearlier").unwrap() < text.find("archive\tdone").unwrap(),
            "{text}"
        );
        assert!(
            text.contains("\nawaiting\tcollected\ncollected\tdone\n"),
            "{text}"
        );
        for (id, marked) in [
            ("done", true),
            ("earlier", true),
            ("other", false),
            ("placing", false),
        ] {
            assert_eq!(sessions.join(id).join("collected").exists(), marked, "{id}");
        }
        let records = parse_records(&run_control(&records_script(&[], &[]), home.path()).stdout);
        assert_eq!(
            records.collected,
            ["done", "earlier"].map(String::from).into()
        );
        assert!(
            records.probes.contains_key("done"),
            "the session is seen as it is"
        );

        // A caller that does not answer (or an answer that never comes) marks nothing.
        std::fs::remove_file(sessions.join("done/collected")).unwrap();
        let t = [target("done")];
        let out = run_control(
            &probe_script(
                &t,
                1000,
                Queue::Leave,
                Collect {
                    answers: true,
                    earlier: &[],
                },
            ),
            home.path(),
        );
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("awaiting\tcollected\n"));
        assert!(!sessions.join("done/collected").exists());
        // Nor does a caller that does not converse: it is never asked.
        let out = run_control(
            &probe_script(&t, 1000, Queue::Leave, Collect::default()),
            home.path(),
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("awaiting"));
    }

    /// The VM's question is a line of its own: the same bytes at the end of a frame's part,
    /// or of a frame cut short, are not one.
    #[test]
    fn only_a_line_of_its_own_asks_which_archives_were_kept() {
        let asks = |bytes: &[u8]| awaits_collected(bytes, &read_answer(bytes).unwrap());
        assert!(asks(
            b"session\ts\narchive\ts\nend\ts\nawaiting\tcollected\n"
        ));
        assert!(asks(b"awaiting\tcollected\n"));
        let inside = b"archive\ts\npart\toutput.log\tplain\t40\nxx\nawaiting\tcollected\n";
        assert!(!asks(inside), "a part still on its way");
        let whole_part = b"archive\ts\npart\toutput.log\tplain\t20\nawaiting\tcollected\n";
        assert!(
            !asks(whole_part),
            "the part's own bytes, its frame not ended"
        );
        assert!(
            !asks(b"data\tlog\nawaiting\tcollected\n"),
            "inside captured text"
        );
        assert!(!asks(b"session\ts\n"));
        // A damaged answer that ends as the question does is answered all the same (with the
        // whole frames before the damage), so the VM never waits for a caller that cannot read
        // it; an undamaged one only when the line is its own.
        let answers = |bytes: &[u8]| answer_to_collected(bytes, &read_answer(bytes).unwrap());
        let damaged = b"archive\ta\nend\ta\narchive\ts\npart\tx\tbogus\t3\nawaiting\tcollected\n";
        assert!(read_answer(damaged).unwrap().damaged.is_some());
        assert!(answers(damaged));
        assert!(answers(inside), "a part cut short is damage too");
        assert!(!answers(b"data\tlog\nawaiting\tcollected\n"));
        assert_eq!(collected_reply(["a", "b"]), b"collected\ta\tb\n".to_vec());
        assert_eq!(collected_reply([]), b"collected\n".to_vec());
        let input = String::from_utf8(probe_script(
            &[],
            1,
            Queue::Leave,
            Collect {
                answers: true,
                earlier: &["a", "b"],
            },
        ))
        .unwrap();
        assert!(
            input.contains("\nAMPLIHACK_ACK='1'\nAMPLIHACK_COLLECTED='a b'\n"),
            "{input}"
        );
    }
}
