//! Terminal output. Stdout carries data; progress and warnings go to stderr. A closed stdout
//! (`list | head -1`) surfaces as a broken-pipe error that main treats as success. While live
//! progress lines are drawn (`progress`), everything written here goes around them.

use std::io::{IsTerminal, Write};

use crate::error::{Error, Result};

pub fn print(text: &str) -> Result<()> {
    print_bytes(text.as_bytes())
}

/// Prints text for people that quotes the state or the VMs (names, errors, azlin's words):
/// made safe for a terminal first (`sanitize::text`). JSON and `--raw` use `print`.
pub fn print_text(text: &str) -> Result<()> {
    print(&crate::ui::sanitize::text(text))
}

/// Runs `f` with live progress lines, if any, cleared from the terminal.
fn around_progress<R>(f: impl FnOnce() -> R) -> R {
    match crate::ui::progress::live_board() {
        Some(board) => board.suspend(f),
        None => f(),
    }
}

pub fn print_bytes(bytes: &[u8]) -> Result<()> {
    around_progress(|| {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush())
    })
    .map_err(|e| Error::io("cannot write to stdout", e))
}

/// Streams output through a buffered stdout (for large outputs).
pub fn write_stdout(
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<()> {
    around_progress(|| {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        write(&mut out).and_then(|()| out.flush())
    })
    .map_err(|e| Error::io("cannot write to stdout", e))
}

/// A line for stderr. Messages carry text from the state and the VMs (names, azlin's and
/// ssh's stderr), so nothing in them may act on the terminal (`sanitize::text`).
pub fn progress(msg: &str) {
    let msg = crate::ui::sanitize::text(msg);
    let msg = msg.as_str();
    match crate::ui::progress::live_board() {
        Some(board) => board.println(msg),
        None => stderr_line(msg),
    }
}

/// Writes a line to stderr, ignoring failure: stderr carries progress and warnings only, and a
/// closed one (`2>&1 | head -1`) must never stop the work half way (`eprintln!` would panic).
pub fn stderr_line(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

pub fn warn(msg: &str) {
    progress(&format!("warning: {msg}"));
}

/// Colour only on a terminal that is not `TERM=dumb` (which shows escape codes as text),
/// never when NO_COLOR is set (https://no-color.org).
pub fn stdout_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        && std::io::stdout().is_terminal()
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks a yes/no question on the terminal (stderr) and reads the answer from stdin: yes only
/// for "y" or "yes". Ctrl+C while waiting interrupts (the read runs on a thread, because the
/// Ctrl+C counter does not interrupt a blocking read).
pub fn confirm(question: &str) -> Result<bool> {
    around_progress(|| {
        let mut err = std::io::stderr().lock();
        err.write_all(question.as_bytes())
            .and_then(|()| err.flush())
    })
    .map_err(|e| Error::io("cannot write to stderr", e))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    loop {
        crate::interrupt::check()?;
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(Ok(line)) => {
                let answer = line.trim().to_ascii_lowercase();
                return Ok(answer == "y" || answer == "yes");
            }
            Ok(Err(e)) => return Err(Error::io("cannot read the answer from stdin", e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
        }
    }
}
