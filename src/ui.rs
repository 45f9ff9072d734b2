//! Terminal output. Stdout carries data; progress and warnings go to stderr. A closed stdout
//! (`list | head -1`) surfaces as a broken-pipe error that main treats as success. While live
//! progress lines are drawn (`progress`), everything written here goes around them.

use std::io::{IsTerminal, Write};

use crate::error::{Error, Result};

pub fn print(text: &str) -> Result<()> {
    print_bytes(text.as_bytes())
}

/// Runs `f` with live progress lines, if any, cleared from the terminal.
fn around_progress<R>(f: impl FnOnce() -> R) -> R {
    match crate::progress::live_board() {
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

pub fn progress(msg: &str) {
    match crate::progress::live_board() {
        Some(board) => board.println(msg),
        None => eprintln!("{msg}"),
    }
}

pub fn warn(msg: &str) {
    progress(&format!("warning: {msg}"));
}

/// Colour only on a terminal, never when NO_COLOR is set (https://no-color.org).
pub fn stdout_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}
