//! `wait`: blocks until sessions end, printing one line (or one JSON object) as each ends and
//! recording each end in the state. One streaming azlin call per VM (`control.sh watch`) for as
//! long as the connection holds; a dropped one is reopened (docs/remote-layout.md). A session
//! its `start` is still launching is waited for on this machine (the state file) until it runs.
//! Once the waiting is over, the sessions it saw end whose results are not home yet are
//! archived: one more call per VM (a probe asking for their archives), not one per session.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::WaitArgs;
use crate::core::lifecycle::Probe;
use crate::core::model::{Session, SessionStatus, State};
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::remote::answer::StreamFrame;
use crate::remote::request;
use crate::remote::request::Want;
use crate::remote::transport::VmRef;
use crate::{core::unattended, interrupt, refresh, remote::stream, ui, ui::render};

/// What a VM's watcher reports.
enum Event {
    Over(String, Probe),
    /// The VM could not be reached for longer than the reconnect allowance.
    Lost(Error),
}

/// Sets the flag when dropped, so every watcher stops however `run` returns.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub fn run(ctx: &Ctx, args: WaitArgs) -> Result<()> {
    let state = ctx.store.load()?;
    let targets = targets(&state, &args)?;
    if targets.is_empty() {
        ui::progress("No sessions to wait for.");
        return Ok(());
    }
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let stop = AtomicBool::new(false);
    let mut waiting: BTreeSet<String> = targets.iter().cloned().collect();
    let mut ended: Vec<Session> = Vec::new();
    let outcome = std::thread::scope(|scope| -> Result<()> {
        let _stop_watchers = StopOnDrop(&stop);
        let (tx, rx) = mpsc::channel::<Event>();
        let mut watched: BTreeSet<String> = BTreeSet::new();
        let mut last_refresh: Option<Instant> = None;
        // Since when the VM of a pending session the wait needs has not answered.
        let mut unanswered_since: Option<Instant> = None;
        loop {
            let state = ctx.store.load()?;
            // Report what ended, whoever recorded it, in the order the user named them.
            for id in &targets {
                if !waiting.contains(id) {
                    continue;
                }
                let session = find_session(&state, id)?;
                if !session.status.is_active() {
                    report(session, args.json)?;
                    ended.push(session.clone());
                    waiting.remove(id);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // JSON readers get a line for every session, ended or not: those still going
                // as the state has them (running, queued, pending).
                if args.json {
                    for id in targets.iter().filter(|id| waiting.contains(*id)) {
                        report(find_session(&state, id)?, true)?;
                    }
                }
                return Err(Error::Failed(format!(
                    "timed out after {}s; still waiting for: {}",
                    args.timeout.unwrap_or_default(),
                    waiting.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            // A session whose start died is settled by a refresh (which claims it on its VM);
            // every 30 s (or AMPLIHACK_REMOTE_RECONNECT_FOR, when shorter), should its VM not
            // answer.
            let now = ctx.now();
            if last_refresh.is_none_or(|t| {
                t.elapsed() >= Duration::from_secs(30).min(ctx.settings.reconnect_for)
            }) && waiting.iter().any(|id| {
                state.sessions.get(id).is_some_and(|s| {
                    s.status == SessionStatus::Pending
                        && refresh::abandoned(s.owner.as_ref(), s.created_at, now, &exec::liveness)
                })
            }) {
                last_refresh = Some(Instant::now());
                let refreshed = refresh::refresh(ctx, refresh::Power::Skip)?;
                // A launch never confirmed, on a VM that does not answer, stays `pending`:
                // only its VM can say whether it runs. The wait gives up on it as a stream
                // gives up on a VM: after AMPLIHACK_REMOTE_RECONNECT_FOR without an answer.
                let silent: Vec<&String> = waiting
                    .iter()
                    .filter_map(|id| refreshed.state.sessions.get(id))
                    .filter(|s| s.status == SessionStatus::Pending)
                    .map(|s| &s.vm_name)
                    .filter(|vm| refreshed.failed_vms.contains_key(*vm))
                    .collect();
                match silent.first() {
                    None => unanswered_since = None,
                    Some(vm) => {
                        let since = *unanswered_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= ctx.settings.reconnect_for {
                            let ids: Vec<&str> = waiting
                                .iter()
                                .filter(|id| {
                                    refreshed.state.sessions.get(*id).is_some_and(|s| {
                                        s.status == SessionStatus::Pending && &&s.vm_name == vm
                                    })
                                })
                                .map(String::as_str)
                                .collect();
                            return Err(Error::VmUnreachable {
                                vm: vm.to_string(),
                                detail: format!(
                                    "gave up after {}s without an answer: the launch of {} was never confirmed, so it stays pending until its VM answers (a later 'amplihack remote list' settles it; 'amplihack remote kill --force ID' gives it up)",
                                    ctx.settings.reconnect_for.as_secs(),
                                    ids.join(", ")
                                ),
                            });
                        }
                    }
                }
                continue;
            }
            // Running sessions nobody watches yet: one watcher per VM for them.
            let mut fresh: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for id in &waiting {
                let s = &state.sessions[id];
                if matches!(s.status, SessionStatus::Running | SessionStatus::Queued)
                    && !watched.contains(id)
                {
                    fresh.entry(s.vm_name.clone()).or_default().push(id.clone());
                }
            }
            for (vm, ids) in fresh {
                watched.extend(ids.iter().cloned());
                let vm = ctx.vm_ref(&state, &vm);
                let tx = tx.clone();
                let stop = &stop;
                // A VM with queued sessions gets the user's key: should no supervisor be left
                // to start them, the watch does, as a refresh or a kill would.
                let drain = has_queue(&state, &vm.name);
                // Not through parallel::map_bounded: each watch lasts until its sessions
                // end, so a bounded pool would leave the VMs past the bound unwatched.
                scope.spawn(move || watch_vm(ctx, vm, ids, drain, stop, tx));
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Event::Over(id, probe)) => {
                    let probes: HashMap<String, Probe> = [(id.clone(), probe)].into();
                    let state =
                        refresh::commit_probes(ctx, &probes, &refresh::Archived::new(), state)?;
                    // The VM said it was over but the state did not settle it (a probe may not
                    // settle a pending session whose start lives): watch it again, never drop it.
                    if state
                        .sessions
                        .get(&id)
                        .is_some_and(|s| s.status.is_active())
                    {
                        watched.remove(&id);
                    }
                }
                Ok(Event::Lost(e)) => return Err(e),
                Err(_) => {}
            }
            interrupt::check()?;
        }
    });
    if !matches!(outcome, Err(Error::Interrupted)) {
        if args.notify {
            let statuses: Vec<&str> = ended.iter().map(|s| s.status.as_str()).collect();
            exec::desktop_notify(&unattended::wait_summary(&statuses, waiting.len()));
        }
        archive_ended(ctx, &ended)?;
    }
    outcome?;
    let refs: Vec<&Session> = ended.iter().collect();
    match render::wait_failures(&refs) {
        Some(message) => Err(Error::SessionsFailed { code: 1, message }),
        None => Ok(()),
    }
}

/// Brings home the archives of the sessions that ended whose results are not home yet: one
/// probe call per VM asking for their archives. A VM that does not answer is only warned about
/// (a later refresh takes its sessions along): the waiting itself is done.
fn archive_ended(ctx: &Ctx, ended: &[Session]) -> Result<()> {
    let state = ctx.store.load()?;
    let mut plan: BTreeMap<String, Vec<(String, Want)>> = BTreeMap::new();
    for s in ended {
        if let Some(s) = state.sessions.get(&s.session_id)
            && refresh::unarchived(&state, s)
        {
            plan.entry(s.vm_name.clone())
                .or_default()
                .push((s.session_id.clone(), Want::Archive));
        }
    }
    if plan.is_empty() {
        return Ok(());
    }
    let collected = refresh::collect(ctx, &state, &plan)?;
    for (vm, e) in &collected.failed_vms {
        // A VM azlin confirmed gone was reported with its sessions already: nothing of theirs
        // is left to bring home, by this call or a later one.
        if matches!(e, Error::VmNotFound { .. }) {
            continue;
        }
        ui::warn(&format!(
            "could not bring home the archives of the sessions on VM '{vm}'; a later refresh will. {e}"
        ));
    }
    refresh::commit_collected(ctx, &collected, state)?;
    Ok(())
}

/// The sessions to wait for: those named (all must exist: exit 3 before any waiting), or every
/// session pending or running now, oldest first.
fn targets(state: &State, args: &WaitArgs) -> Result<Vec<String>> {
    if args.session_ids.is_empty() {
        let mut active: Vec<&Session> = state
            .sessions
            .values()
            .filter(|s| s.status.is_active())
            .collect();
        active.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.session_id.cmp(&b.session_id))
        });
        return Ok(active.into_iter().map(|s| s.session_id.clone()).collect());
    }
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    for id in &args.session_ids {
        find_session(state, id)?;
        if seen.insert(id.clone()) {
            ids.push(id.clone());
        }
    }
    Ok(ids)
}

fn report(session: &Session, json: bool) -> Result<()> {
    if json {
        let mut line = serde_json::to_string(session).expect("a session serializes");
        line.push('\n');
        ui::print(&line)
    } else {
        ui::print(&render::wait_line(session))
    }
}

/// Watches `ids` on one VM until each is over, across dropped connections, sending an event as
/// each ends. A reconnection watches only those not over yet.
/// Whether the state has queued sessions on VM `vm`.
pub fn has_queue(state: &State, vm: &str) -> bool {
    state
        .sessions
        .values()
        .any(|s| s.vm_name == vm && s.status == SessionStatus::Queued)
}

fn watch_vm(
    ctx: &Ctx,
    vm: VmRef,
    ids: Vec<String>,
    drain: bool,
    stop: &AtomicBool,
    tx: mpsc::Sender<Event>,
) {
    let remaining = std::cell::RefCell::new(ids);
    let pace = ctx.settings.stream_pace();
    let result = stream::until_end(
        ctx,
        &vm,
        stop,
        &mut || {
            let ids = remaining.borrow();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let queue = if drain {
                refresh::queue_work(ctx)
            } else {
                request::Queue::Leave
            };
            request::watch_script(&refs, pace, queue)
        },
        &mut |frame| {
            if let StreamFrame::Session(id, probe) = frame {
                remaining.borrow_mut().retain(|r| r != &id);
                let _ = tx.send(Event::Over(id, probe));
            }
            Ok(())
        },
    );
    match result {
        Ok(()) | Err(Error::Interrupted) => {}
        Err(e) => {
            // A VM azlin confirms gone ends its sessions (`failed`, as a refresh would): the
            // wait reads them ended and goes on with the others.
            let e = refresh::after_failed_call(ctx, &vm.name, e);
            let all_ended = matches!(e, Error::VmNotFound { .. })
                && ctx.store.load().is_ok_and(|st| {
                    remaining
                        .borrow()
                        .iter()
                        .all(|id| st.sessions.get(id).is_none_or(|s| !s.status.is_active()))
                });
            if all_ended {
                ui::warn(&e.to_string());
            } else {
                let _ = tx.send(Event::Lost(e));
            }
        }
    }
}
