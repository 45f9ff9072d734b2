//! `kill`: SIGTERM to the agent's process group, a grace period, then SIGKILL; `--force`
//! sends SIGKILL at once. The intent is recorded under the lock before any signal, and the VM
//! marks the session before signalling it, so whoever sees it end records `killed`.

use crate::cli::KillArgs;
use crate::core::lifecycle::{self, Event};
use crate::core::model::{KillRequest, Session, SessionStatus};
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::refresh;
use crate::remote::answer::KillOutcome;
use crate::remote::{answer, request};
use crate::ui;

pub fn run(ctx: &Ctx, args: KillArgs) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?.clone();
    let id = session.session_id.as_str();
    if !session.status.is_active() {
        return already_finished(&session);
    }
    let me = exec::current_owner();
    let now = ctx.now();
    // Record the intent, re-checking under the lock that the session is still ours to kill.
    let current = ctx.store.update(|st| {
        let s = find_session(st, id)?.clone();
        if !s.status.is_active() {
            return Ok(s);
        }
        if s.status == SessionStatus::Pending
            && !refresh::abandoned(s.owner.as_ref(), s.created_at, now, &exec::liveness)
        {
            // Its `start` is launching it right now; a kill now would race the launch and
            // could leave an agent running that the state calls killed.
            return Err(Error::Failed(format!(
                "session {id} is still being launched by another command; kill it once 'amplihack remote list' shows it running"
            )));
        }
        if let Some(s) = st.sessions.get_mut(id) {
            s.kill_request = Some(KillRequest {
                at: now,
                by: me.clone(),
            });
        }
        Ok(s)
    })?;
    if !current.status.is_active() {
        return already_finished(&current);
    }

    ui::print_text(&format!("Killing session: {id}\n"))?;
    let was_queued = current.status == SessionStatus::Queued;
    ui::print_text(&if was_queued {
        format!("Taking it out of the queue on VM {}...\n", session.vm_name)
    } else if args.force {
        "Sending SIGKILL...\n".to_string()
    } else {
        "Sending SIGTERM...\n".to_string()
    })?;
    let vm = ctx.vm_ref(&state, &session.vm_name);
    // A pending session here is one whose start died (a live start's is refused above): a
    // launch it left on its way must be cancelled, not raced. The same call brings the ended
    // session's archive home.
    let claim = current.status == SessionStatus::Pending;
    // The slot this kill frees goes to the VM's queue, should no supervisor be left to pass it.
    let queue = if state.sessions.values().any(|s| {
        s.vm_name == session.vm_name && s.status == SessionStatus::Queued && s.session_id != id
    }) {
        refresh::queue_work(ctx)
    } else {
        request::Queue::Leave
    };
    let how = if args.force {
        request::KillHow::Force
    } else {
        request::KillHow::Graceful
    };
    let input = request::kill_script(
        id,
        how,
        ctx.settings.kill_grace_secs,
        claim,
        Some(&refresh::archive_request(ctx, &session)),
        queue,
    );
    // The archive the answer brings is kept while the VM waits, so it can mark it collected.
    let answer = refresh::call_keeping_archives(ctx, &vm, input, ctx.settings.timeouts.kill)
        .and_then(|(stdout, kept)| {
            answer::parse_kill(&stdout)
                .map_err(|e| Error::unexpected_answer(&session.vm_name, e))?;
            Ok((stdout, kept))
        });
    let (stdout, kept) = match answer {
        Ok(answer) => answer,
        Err(e @ (Error::VmUnreachable { .. } | Error::VmNotFound { .. })) if args.force => {
            mark(
                ctx,
                id,
                &Event::KilledLocally,
                false,
                &refresh::Kept::default(),
            )?;
            // Nothing runs on a VM azlin confirmed gone; on one that did not answer, it may.
            // A gone VM's other sessions end as every command that meets it ends them (no
            // second `azlin show`: the transport remembers its answer), and the warning names
            // them.
            let (e, left) = if matches!(e, Error::VmNotFound { .. }) {
                (
                    refresh::after_failed_call(ctx, &session.vm_name, e),
                    "nothing of it can still run",
                )
            } else {
                (e, "its agent may still run on the VM")
            };
            ui::warn(&format!("{e}; marking {id} killed locally: {left}"));
            return ui::print_text("Status updated: killed\n");
        }
        Err(e) => {
            // Nothing was signalled (or we cannot know): the intent must not turn a later,
            // natural end into `killed`.
            withdraw_intent(ctx, id, &me)?;
            // A VM deleted behind our back: once azlin confirms it, its sessions end.
            // A VM that does not answer: say what was (not) done and the way on.
            let e = match e {
                Error::VmUnreachable { vm, detail } => Error::VmUnreachable {
                    vm,
                    detail: format!(
                        "{detail}. Nothing was signalled and {id} stays {}; try again once the VM answers, or 'amplihack remote kill --force {id}' records it killed without the VM (its agent may still run there)",
                        current.status
                    ),
                },
                other => other,
            };
            if let Some(st) =
                refresh::settle_if_vm_gone(ctx, &ctx.store.load()?, &session.vm_name, &e)?
            {
                let s = find_session(&st, id)?;
                return ui::print_text(&format!(
                    "Nothing to kill: VM {} no longer exists.\nStatus updated: {}\n",
                    session.vm_name, s.status
                ));
            }
            return Err(e);
        }
    };
    let report = answer::parse_kill(&stdout).expect("parsed above");
    // The VM's `session` line after the kill: the lifecycle decides from it, as a refresh
    // would (a kill marked on the VM makes any end `killed`, whoever asked it).
    let Some(facts) = report.probe.as_ref() else {
        withdraw_intent(ctx, id, &me)?;
        return Err(Error::unexpected_answer(
            &session.vm_name,
            "the kill's answer had no facts of the session".to_string(),
        ));
    };
    let observed = Event::Observed(facts);
    let shown = |s: &Session| {
        let code = s
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        format!("{}{code}", s.status)
    };
    match report.outcome {
        KillOutcome::AlreadyFinished => {
            // It had ended before this kill: our intent is no cause of its end.
            withdraw_intent(ctx, id, &me)?;
            let s = mark(ctx, id, &observed, false, &kept)?;
            ui::print_text(&format!(
                "Session had already finished: {}; nothing to kill.\nStatus updated: {}\n",
                shown(&s),
                s.status
            ))
        }
        KillOutcome::Dequeued => {
            let s = mark(ctx, id, &observed, true, &kept)?;
            ui::print_text(&format!(
                "Session was queued: taken out of the queue, it never starts.\nStatus updated: {}\n",
                s.status
            ))
        }
        KillOutcome::Gone => {
            // It had ended before the kill, without a record (a reboot, or killed outright),
            // or was never launched: the truth is that, not that we killed it.
            withdraw_intent(ctx, id, &me)?;
            let s = mark(ctx, id, &observed, false, &kept)?;
            let why = s.error.as_deref().unwrap_or("it had ended");
            ui::print_text(&format!(
                "Nothing of session {id} was running on {}: {why}.\nStatus updated: {}\n",
                session.vm_name, s.status
            ))
        }
        KillOutcome::Killed => {
            if was_queued {
                ui::print_text(&format!(
                    "It had started meanwhile: sent {}.\n",
                    if args.force { "SIGKILL" } else { "SIGTERM" }
                ))?;
            }
            if report.escalated {
                ui::print_text(&format!(
                    "Still running after {}s; sent SIGKILL.\n",
                    ctx.settings.kill_grace_secs
                ))?;
            }
            let s = mark(ctx, id, &observed, true, &kept)?;
            ui::print_text(&format!(
                "Session terminated.\nStatus updated: {}\n",
                s.status
            ))
        }
    }
}

fn already_finished(session: &Session) -> Result<()> {
    let code = session
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    ui::print_text(&format!(
        "Session {} already {}{code}; nothing to kill.\n",
        session.session_id, session.status
    ))
}

fn withdraw_intent(ctx: &Ctx, id: &str, me: &crate::core::model::Owner) -> Result<()> {
    ctx.store.update(|st| {
        if let Some(s) = st.sessions.get_mut(id)
            && s.kill_request.as_ref().is_some_and(|k| &k.by == me)
        {
            s.kill_request = None;
        }
        Ok(())
    })
}

/// Settles the session by the lifecycle's decision on `event` (`ours`: this kill caused what
/// it reports), and marks it archived when its archive came home with the answer (and its
/// `collected` mark confirmed when the VM did). A refresh
/// that saw the end first may already have recorded it (as `killed`, thanks to the marks):
/// then its status stays. Returns the session as it now stands.
fn mark(ctx: &Ctx, id: &str, event: &Event, ours: bool, kept: &refresh::Kept) -> Result<Session> {
    let now = ctx.now();
    ctx.store.update(|st| {
        if let Some(s) = st.sessions.get_mut(id) {
            let mut seen = refresh::seen(s, now, &exec::liveness);
            seen.kill_intended |= ours;
            lifecycle::step(s, event, &seen);
        }
        refresh::mark_archived(st, &kept.archived);
        refresh::mark_collected(st, &kept.collected);
        Ok(find_session(st, id)?.clone())
    })
}
