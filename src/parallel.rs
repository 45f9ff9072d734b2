//! A bounded parallel map: at most `limit` calls in flight, results in input order.
//!
//! Why: one azlin call per VM at once meant 64 azlin processes (each starting `az`) for a
//! pool of 64 VMs. `AMPLIHACK_REMOTE_PARALLEL` (default 16) bounds every fan-out of azlin
//! calls. Scoped threads, so the closure may borrow; a panic in a call reaches the caller.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Calls `f` on every item, at most `limit` (at least 1) calls at a time, and returns the
/// results in the order of `items`. Items are taken in order as workers free up. If a call
/// panics, no new call starts and the panic resumes in the caller once the others end.
pub fn map_bounded<T, R, F>(items: &[T], limit: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let workers = limit.max(1).min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let worker = || {
        let mut done = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(item) = items.get(i) else {
                break;
            };
            let _guard = StopOnPanic(&stop);
            done.push((i, f(item)));
        }
        done
    };
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(worker)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut slots: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for outcome in outcomes {
        match outcome {
            Ok(done) => {
                for (i, r) in done {
                    slots[i] = Some(r);
                }
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    slots
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

/// Tells the other workers to take no new item when a call unwinds.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    #[test]
    fn results_come_in_input_order() {
        let items: Vec<u64> = (0..40).collect();
        // Early items finish last.
        let out = map_bounded(&items, 8, |&i| {
            std::thread::sleep(Duration::from_millis(40 - i));
            i * 10
        });
        assert_eq!(out, items.iter().map(|i| i * 10).collect::<Vec<_>>());
    }

    /// The first calls wait until `limit` of them are in flight together, so the test sees
    /// the bound reached; it is never passed.
    #[test]
    fn the_bound_is_reached_and_never_passed() {
        for (count, limit) in [(20, 4), (7, 3), (5, 16), (16, 16), (3, 2)] {
            let in_flight = Mutex::new(0usize);
            let changed = Condvar::new();
            let max_seen = AtomicUsize::new(0);
            let target = limit.min(count);
            let items: Vec<usize> = (0..count).collect();
            let out = map_bounded(&items, limit, |&i| {
                let mut n = in_flight.lock().unwrap();
                *n += 1;
                max_seen.fetch_max(*n, Ordering::SeqCst);
                changed.notify_all();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while max_seen.load(Ordering::SeqCst) < target {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    assert!(!left.is_zero(), "never {target} calls in flight at once");
                    n = changed.wait_timeout(n, left).unwrap().0;
                }
                drop(n);
                // Stay in flight a moment, unlocked: calls beyond the bound would overlap.
                std::thread::sleep(Duration::from_millis(3));
                *in_flight.lock().unwrap() -= 1;
                i
            });
            assert_eq!(out, items);
            assert_eq!(
                max_seen.load(Ordering::SeqCst),
                target,
                "{count} items, limit {limit}"
            );
        }
    }

    #[test]
    fn empty_input_calls_nothing() {
        let calls = AtomicUsize::new(0);
        let out: Vec<u8> = map_bounded(&[] as &[u8], 4, |&b| {
            calls.fetch_add(1, Ordering::SeqCst);
            b
        });
        assert!(out.is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn limit_one_calls_in_order_one_at_a_time() {
        let order = Mutex::new(Vec::new());
        let in_flight = AtomicUsize::new(0);
        let items: Vec<u32> = (0..10).collect();
        for limit in [0, 1] {
            order.lock().unwrap().clear();
            let out = map_bounded(&items, limit, |&i| {
                assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0);
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(2));
                in_flight.fetch_sub(1, Ordering::SeqCst);
                i + 1
            });
            assert_eq!(out, (1..=10).collect::<Vec<_>>());
            assert_eq!(*order.lock().unwrap(), items);
        }
    }

    #[test]
    fn a_panic_reaches_the_caller_and_stops_new_calls() {
        let started = AtomicUsize::new(0);
        // Many items: the panic hook runs before the unwinding that stops the others, and
        // with RUST_BACKTRACE set it takes long enough for 1,000 items to be used up.
        let items: Vec<u32> = (0..100_000).collect();
        let result = std::panic::catch_unwind(|| {
            map_bounded(&items, 4, |&i| {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 5 {
                    panic!("boom at {i}");
                }
                std::thread::sleep(Duration::from_millis(1));
                i
            })
        });
        let payload = result.unwrap_err();
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom at 5");
        assert!(started.load(Ordering::SeqCst) < 100_000, "calls went on");
    }
}
