//! Ctrl+C, and its cousins: SIGTERM (`kill`) and SIGHUP (the terminal or ssh connection went
//! away mid-command). The handler only counts; long waits (the executor, `--follow`) poll the
//! count and unwind through `Error::Interrupted`, so every state transaction finishes or never
//! starts, and the process exits 130 with the state consistent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

pub fn install() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the handler only does an atomic add, which is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(signal, || {
                STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
            })
        };
    }
}

/// How many times Ctrl+C was pressed.
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
