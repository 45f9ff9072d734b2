//! Ctrl+C, and its cousins: SIGTERM (`kill`) and SIGHUP (the terminal or ssh connection went
//! away mid-command). The handler only counts; long waits (the executor, `--follow`) poll the
//! count and unwind through `Error::Interrupted`, so every state transaction finishes or never
//! starts, and the process exits 130 with the state consistent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How many stop signals (SIGINT, SIGTERM, SIGHUP) arrived since the process started: the
/// first asks a command to stop at its next safe point, a second to stop even a step it
/// would otherwise finish (`OnInterrupt::FinishUnlessRepeated`).
static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Counts the stop signals on a thread of its own: signal_hook's safe iterator receives them
/// (its handler only writes to a pipe), so no code of ours runs in a signal handler.
pub fn install() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
        }
    });
}

/// How many stop signals arrived (see `STOP_SIGNALS`).
pub fn count() -> usize {
    STOP_SIGNALS.load(Ordering::SeqCst)
}

pub fn requested() -> bool {
    count() > 0
}

pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps, waking early with `Error::Interrupted` on Ctrl+C.
pub fn sleep(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check()?;
        std::thread::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        );
    }
    check()
}
