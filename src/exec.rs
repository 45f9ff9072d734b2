//! The only place that spawns processes. Argv vectors only (never a local `sh -c`), stdin
//! either null or bytes we write, stdout and stderr drained on their own threads (no pipe
//! deadlock), a timeout on every call, and Ctrl+C honoured while waiting.

// The one module that spawns processes (clippy.toml disallows `Command::new` elsewhere).
#![allow(clippy::disallowed_methods)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::core::model::Owner;
use crate::error::{Error, Result};
use crate::interrupt;

/// What a Ctrl+C does to a call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Stop the child at once (provisioning, refresh, capture).
    Abort,
    /// Let it finish so the state stays true (launching sessions); a second Ctrl+C aborts.
    FinishUnlessRepeated,
}

#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub on_interrupt: OnInterrupt,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>, args: Vec<String>, timeout: Duration) -> Self {
        Cmd {
            program: program.into(),
            args,
            env: Vec::new(),
            stdin: None,
            timeout,
            on_interrupt: OnInterrupt::Abort,
        }
    }

    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn on_interrupt(mut self, policy: OnInterrupt) -> Self {
        self.on_interrupt = policy;
        self
    }

    /// The command line as a user would type it, for error messages.
    pub fn display(&self) -> String {
        let mut words = vec![self.program.to_string_lossy().into_owned()];
        words.extend(self.args.iter().cloned());
        shell_words::join(words)
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code, or 128 + signal number when the child died of a signal.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why `run` could not produce an `Output`.
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started (missing, not executable).
    Spawn(std::io::Error),
    Timeout,
    Interrupted,
}

fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// The child leads its own process group (`process_group(0)`): this kills all it started.
fn kill_group(pid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Starts `cmd` as the leader of its own process group, with stdout and stderr piped and its
/// stdin bytes (if any) written from a thread of their own. With `more`, that thread keeps
/// stdin open after them and writes what comes through the channel (at most one message),
/// closing it when the message is written or the sender is gone.
fn spawn(
    cmd: &Cmd,
    more: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
) -> std::result::Result<std::process::Child, RunError> {
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    if let (Some(data), Some(mut pipe)) = (cmd.stdin.clone(), child.stdin.take()) {
        // A child that exits early closes its end; the write error is expected then.
        thread::spawn(move || {
            if pipe.write_all(&data).is_err() {
                return;
            }
            if let Some(more) = more
                && let Ok(reply) = more.recv()
            {
                let _ = pipe.write_all(&reply);
            }
        });
    }
    Ok(child)
}

/// What a conversation answers (`run_replying`): called with everything the child wrote to
/// stdout so far, each time that ends with the awaited line; `Some(bytes)` is written to its
/// stdin (which is then closed), `None` means the line was not the question (it was inside
/// some data) and the wait goes on.
pub type Reply<'a> = &'a mut dyn FnMut(&[u8]) -> Option<Vec<u8>>;

/// Runs a command to completion. The child leads its own process group, so a timeout or an
/// abort stops everything it started, and the terminal's Ctrl+C reaches only us.
pub fn run(cmd: &Cmd) -> std::result::Result<Output, RunError> {
    run_replying(cmd, None)
}

/// `run`, as a conversation: the child's stdin stays open after `cmd.stdin`; when its stdout
/// ends with the line `awaited` (and the child waits there), `reply` reads what it wrote and
/// answers once (see `Reply`); stdin is closed after the answer, or when the child exits. The
/// timeout covers the whole call, the answer's making included.
pub fn run_conversation(
    cmd: &Cmd,
    awaited: &[u8],
    reply: Reply,
) -> std::result::Result<Output, RunError> {
    run_replying(cmd, Some((awaited, reply)))
}

fn run_replying(
    cmd: &Cmd,
    mut conversation: Option<(&[u8], Reply)>,
) -> std::result::Result<Output, RunError> {
    let (mut to_stdin, more) = match conversation {
        Some(_) => {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let mut child = spawn(cmd, more)?;
    let pid = child.id();
    let (out_buf, out_thread) = drain(child.stdout.take().expect("piped stdout"));
    let (err_buf, err_thread) = drain(child.stderr.take().expect("piped stderr"));

    let deadline = Instant::now() + cmd.timeout;
    let mut pause = Duration::from_millis(1);
    // How much of stdout was looked at for the awaited line: each new ending is looked at once.
    let mut looked_at = 0;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(RunError::Spawn(e)),
        }
        if let (Some((awaited, reply)), Some(_)) = (conversation.as_mut(), to_stdin.as_ref()) {
            let so_far = {
                let buf = out_buf.lock().unwrap();
                (buf.len() != looked_at && buf.ends_with(awaited)).then(|| buf.clone())
            };
            if let Some(so_far) = so_far {
                looked_at = so_far.len();
                if let Some(answer) = reply(&so_far) {
                    if let Some(tx) = to_stdin.take() {
                        let _ = tx.send(answer);
                    }
                    pause = Duration::from_millis(1);
                }
            }
        }
        let abort = match cmd.on_interrupt {
            OnInterrupt::Abort => interrupt::count() >= 1,
            OnInterrupt::FinishUnlessRepeated => interrupt::count() >= 2,
        };
        if abort || Instant::now() >= deadline {
            kill_group(pid);
            let _ = child.wait();
            return Err(if abort {
                RunError::Interrupted
            } else {
                RunError::Timeout
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A daemon the child started (tmux) may hold the pipes open; wait a little, then take
    // what was read.
    let settle = Instant::now() + Duration::from_secs(2);
    while !(out_thread.is_finished() && err_thread.is_finished()) && Instant::now() < settle {
        thread::sleep(Duration::from_millis(2));
    }
    let code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    let stdout = std::mem::take(&mut *out_buf.lock().unwrap());
    let stderr = std::mem::take(&mut *err_buf.lock().unwrap());
    Ok(Output {
        code,
        stdout,
        stderr,
    })
}

/// Runs a command whose stdout is a stream: each chunk goes to `on_stdout` as it arrives (in
/// this thread). The call has no overall deadline; `silence` is how long the stream may stay
/// quiet before it is taken for dead (the remote side sends heartbeats) and stopped as a
/// timeout. Setting `stop` ends it like an interrupt. An error from `on_stdout` stops the child
/// and is returned. Stderr is collected.
pub fn run_streaming(
    cmd: &Cmd,
    silence: Duration,
    stop: &AtomicBool,
    on_stdout: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> std::result::Result<Result<Output>, RunError> {
    use std::sync::mpsc;
    let mut child = spawn(cmd, None)?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let (err_buf, err_thread) = drain(child.stderr.take().expect("piped stderr"));
    let end = |child: &mut std::process::Child| {
        kill_group(pid);
        let _ = child.wait();
    };
    let mut quiet_since = Instant::now();
    // A process the child started may hold its stdout open after it exited: read what comes
    // for a moment, then stop waiting for the end of the stream.
    let mut exited_at: Option<Instant> = None;
    loop {
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            exited_at = Some(Instant::now());
        }
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(bytes) => {
                quiet_since = Instant::now();
                if let Err(e) = on_stdout(&bytes) {
                    end(&mut child);
                    return Ok(Err(e));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let abort = match cmd.on_interrupt {
            OnInterrupt::Abort => interrupt::count() >= 1,
            OnInterrupt::FinishUnlessRepeated => interrupt::count() >= 2,
        };
        if abort || stop.load(Ordering::SeqCst) {
            end(&mut child);
            return Err(RunError::Interrupted);
        }
        if quiet_since.elapsed() >= silence {
            end(&mut child);
            return Err(RunError::Timeout);
        }
    }
    if exited_at.is_none() {
        let _ = reader.join();
    }
    let status = child.wait().map_err(RunError::Spawn)?;
    let settle = Instant::now() + Duration::from_secs(2);
    while !err_thread.is_finished() && Instant::now() < settle {
        thread::sleep(Duration::from_millis(2));
    }
    let code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    let stderr = std::mem::take(&mut *err_buf.lock().unwrap());
    Ok(Ok(Output {
        code,
        stdout: Vec::new(),
        stderr,
    }))
}

/// `run`, with failures to start, time-outs and interrupts turned into `Error`s; any exit
/// code is an `Output` for the caller to judge.
pub fn run_any_exit(cmd: &Cmd) -> Result<Output> {
    run(cmd).map_err(|e| run_error(cmd, e))
}

/// A failure to run `cmd` (start, time-out, interrupt) as the `Error` a command reports.
pub fn run_error(cmd: &Cmd, e: RunError) -> Error {
    match e {
        RunError::Spawn(source) => Error::io(format!("cannot run `{}`", cmd.display()), source),
        RunError::Timeout => Error::Timeout {
            command: cmd.display(),
            seconds: cmd.timeout.as_secs(),
        },
        RunError::Interrupted => Error::Interrupted,
    }
}

/// Runs an interactive program on this terminal (tmux attach): stdio inherited, in our
/// process group so it can read the terminal. Returns its exit code.
pub fn run_interactive(
    program: &OsString,
    args: &[String],
    env: &[(String, String)],
) -> Result<i32> {
    // Without TMUX, tmux attaches even from inside another tmux session.
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("TMUX")
        .status()
        .map_err(|e| Error::io(format!("cannot run {}", program.to_string_lossy()), e))?;
    Ok(status.code().unwrap_or(130))
}

pub use crate::core::lifecycle::Liveness;

/// Replaces this process with `program` (`exec`), its argv `args` and one more environment
/// variable: its stdio, signals and exit code become the user's own. Returns only on failure.
pub fn replace_process(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    (var, value): (&str, &std::ffi::OsStr),
) -> std::io::Error {
    Command::new(program).args(args).env(var, value).exec()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// `<boot id> <start time in ticks since boot>` of a process (Linux), which no later process
/// reusing its pid shares. The command name in /proc/PID/stat may hold spaces and parentheses,
/// so fields are counted after its last ')'.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 22 of the line; after the name, field 3 comes first.
    let ticks = after_name.split_whitespace().nth(19)?;
    let boot = read_trimmed("/proc/sys/kernel/random/boot_id")?;
    Some(format!("{boot} {ticks}"))
}

/// This process, as the owner of the reservations it makes.
pub fn current_owner() -> Owner {
    let pid = std::process::id();
    Owner {
        pid,
        host: hostname(),
        started: process_identity(pid).unwrap_or_default(),
    }
}

/// This machine's memory (MemTotal of /proc/meminfo), for the local backend's slots and its
/// line in `status`.
pub fn machine_memory_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// Whether `owner` still runs: the same pid with the same start time, on this machine.
pub fn liveness(owner: &Owner) -> Liveness {
    if owner.host != hostname() {
        return Liveness::Unknown;
    }
    if owner.started.is_empty() {
        // No /proc where it ran: existence of the pid is all we can check.
        // No signal is sent: this only checks that the process exists.
        let exists = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner.pid as i32), None),
            Ok(()) | Err(nix::errno::Errno::EPERM)
        );
        return if exists {
            Liveness::Alive
        } else {
            Liveness::Dead
        };
    }
    match process_identity(owner.pid) {
        Some(id) if id == owner.started => Liveness::Alive,
        _ => Liveness::Dead,
    }
}

/// Raises a desktop notification with `summary` (`wait --notify`): notify-send on Linux,
/// osascript on macOS. Where neither exists, or it fails, nothing happens and nothing is said:
/// the notification is a courtesy, never an error.
pub fn desktop_notify(summary: &str) {
    let have = |program: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
            })
        })
    };
    if let Some((program, args)) =
        crate::core::unattended::desktop_command(std::env::consts::OS, summary, have)
    {
        let _ = run(&Cmd::new(program, args, Duration::from_secs(10)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_stdin_and_reads_both_streams_without_deadlock() {
        let big = vec![b'x'; 1 << 20];
        let cmd = Cmd::new(
            "bash",
            vec![
                "-c".into(),
                "cat; head -c 300000 /dev/zero >&2; exit 7".into(),
            ],
            Duration::from_secs(20),
        )
        .stdin(big.clone());
        let out = run(&cmd).unwrap();
        assert_eq!(out.code, 7);
        assert_eq!(out.stdout, big);
        assert_eq!(out.stderr.len(), 300000);
    }

    #[test]
    fn a_conversation_answers_once_the_child_asks_and_only_then() {
        // The child asks twice in the same words: the first time inside some data (the reply
        // says it was not the question), then for real; the answer comes back on its stdin.
        let script = "read -r first; printf 'data ask\\n'; sleep 0.3; printf 'ask\\n'; \
                      read -r -t 10 answer; printf 'got %s after %s\\n' \"$answer\" \"$first\"";
        let cmd = Cmd::new(
            "bash",
            vec!["-c".into(), script.into()],
            Duration::from_secs(20),
        )
        .stdin(b"hello\n".to_vec());
        let mut asked = 0;
        let out = run_conversation(&cmd, b"ask\n", &mut |so_far| {
            asked += 1;
            (so_far.ends_with(b"\nask\n") || so_far == b"ask\n").then(|| b"fine\n".to_vec())
        })
        .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "data ask\nask\ngot fine after hello\n"
        );
        assert_eq!(asked, 2);
        // A child that never asks ends as with `run`, its stdin closed when it exits.
        let cmd = Cmd::new(
            "bash",
            vec!["-c".into(), "echo done".into()],
            Duration::from_secs(20),
        )
        .stdin(b"x\n".to_vec());
        let out = run_conversation(&cmd, b"ask\n", &mut |_| Some(Vec::new())).unwrap();
        assert_eq!(out.stdout, b"done\n");
    }

    #[test]
    fn times_out_and_kills_the_group() {
        let cmd = Cmd::new(
            "bash",
            vec!["-c".into(), "sleep 30 & wait".into()],
            Duration::from_millis(200),
        );
        let started = Instant::now();
        assert!(matches!(run(&cmd), Err(RunError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_stream_arrives_in_pieces_and_silence_stops_it() {
        let cmd = Cmd::new(
            "bash",
            vec![
                "-c".into(),
                "echo one; sleep 0.3; echo two; echo err >&2; exit 3".into(),
            ],
            Duration::from_secs(20),
        );
        let mut seen = Vec::new();
        let out = run_streaming(
            &cmd,
            Duration::from_secs(10),
            &AtomicBool::new(false),
            &mut |b| {
                seen.push(b.to_vec());
                Ok(())
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(seen.concat(), b"one\ntwo\n");
        assert!(
            seen.len() >= 2,
            "the first line came before the second was written"
        );
        let quiet = Cmd::new(
            "bash",
            vec!["-c".into(), "echo hi; sleep 30".into()],
            Duration::from_secs(60),
        );
        let started = Instant::now();
        let r = run_streaming(
            &quiet,
            Duration::from_millis(300),
            &AtomicBool::new(false),
            &mut |_| Ok(()),
        );
        assert!(matches!(r, Err(RunError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(10));
        let refused = run_streaming(
            &quiet,
            Duration::from_secs(10),
            &AtomicBool::new(false),
            &mut |_| Err(Error::Failed("enough".into())),
        );
        assert!(matches!(refused, Ok(Err(Error::Failed(_)))));
        let stopped = run_streaming(
            &quiet,
            Duration::from_secs(10),
            &AtomicBool::new(true),
            &mut |_| Ok(()),
        );
        assert!(matches!(stopped, Err(RunError::Interrupted)));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let cmd = Cmd::new("/nonexistent/azlin", vec![], Duration::from_secs(1));
        match run(&cmd) {
            Err(RunError::Spawn(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn this_process_is_alive_and_a_finished_one_is_dead() {
        let me = current_owner();
        assert_eq!(liveness(&me), Liveness::Alive);
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Owner { pid, ..me.clone() };
        assert_eq!(liveness(&gone), Liveness::Dead);
        // Same pid, other start time: a process that reused the pid is not the owner.
        let reused = Owner {
            started: format!("{}0", me.started),
            ..me.clone()
        };
        assert_eq!(liveness(&reused), Liveness::Dead);
        let elsewhere = Owner {
            host: format!("{}-other", me.host),
            ..me
        };
        assert_eq!(liveness(&elsewhere), Liveness::Unknown);
    }

    #[test]
    fn display_quotes_words() {
        let cmd = Cmd::new(
            "azlin",
            vec!["connect".into(), "--".into(), "bash -s".into()],
            Duration::from_secs(1),
        );
        assert_eq!(cmd.display(), "azlin connect -- 'bash -s'");
    }
}
