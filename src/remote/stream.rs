//! Streams that outlive their connections: `output --follow` and `wait` keep one azlin call
//! open for as long as it holds, and when it drops (a VM reboots, the network goes, the laptop
//! sleeps) reconnect with a bounded backoff, resuming where they were. They give up, with exit
//! 4, after `AMPLIHACK_REMOTE_RECONNECT_FOR` (5 minutes) without a working connection.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::remote::answer::{Frames, StreamFrame};
use crate::remote::transport::VmRef;
use crate::{interrupt, ui};

/// The pause before reconnect attempt `n` (0-based): 1, 2, 4, 8, 16, then 30 seconds.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
}

/// Runs the stream `input()` builds on `vm` until it sends its end frame, handing every frame
/// to `on_frame`. `input` is asked again for each reconnection, so it can resume from what
/// `on_frame` has seen. `stop` ends it early with `Error::Interrupted`.
pub fn until_end(
    ctx: &Ctx,
    vm: &VmRef,
    stop: &AtomicBool,
    input: &mut dyn FnMut() -> Vec<u8>,
    on_frame: &mut dyn FnMut(StreamFrame) -> Result<()>,
) -> Result<()> {
    let transport = ctx.transport(vm);
    let mut failures: u32 = 0;
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut frames = Frames::default();
        let mut ended = false;
        let mut heard = false;
        let result = transport.stream_script(
            vm,
            input(),
            ctx.settings.stream_silence,
            stop,
            &mut |bytes| {
                heard = true;
                for frame in frames
                    .feed(bytes)
                    .map_err(|e| Error::unexpected_answer(&vm.name, e))?
                {
                    if frame == StreamFrame::End {
                        ended = true;
                    }
                    on_frame(frame)?;
                }
                Ok(())
            },
        );
        let lost = match result {
            Ok(_) if ended => return Ok(()),
            Ok(_) => "the stream ended early".to_string(),
            Err(Error::VmUnreachable { detail, .. }) => detail,
            Err(e) => return Err(e),
        };
        if heard {
            // This connection worked for a while: the give-up clock starts again.
            failures = 0;
            failing_since = None;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= ctx.settings.reconnect_for {
            return Err(Error::VmUnreachable {
                vm: vm.name.clone(),
                detail: format!(
                    "gave up after {}s of failed reconnects ({lost})",
                    ctx.settings.reconnect_for.as_secs()
                ),
            });
        }
        let pause = backoff(failures);
        ui::warn(&format!(
            "connection to VM '{}' lost ({lost}); reconnecting in {}s",
            vm.name,
            pause.as_secs()
        ));
        failures += 1;
        interrupt::sleep(pause)?;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_holds_at_30s() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
