//! `kill`: SIGTERM to the agent's process group, a grace period, then the tmux session ends;
//! `--force` sends SIGKILL at once.

use crate::cli::KillArgs;
use crate::commands::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::model::SessionStatus;
use crate::refresh;
use crate::script::{self, KillOutcome};
use crate::ui;

pub fn run(ctx: &Ctx, args: KillArgs) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?.clone();
    let id = session.session_id.as_str();
    if !session.status.is_active() {
        let code = session
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        return ui::print(&format!(
            "Session {id} already {}{code}; nothing to kill.\n",
            session.status
        ));
    }
    if session.status == SessionStatus::Pending
        && !refresh::pending_is_stale(session.created_at, ctx.now())
    {
        // Its `start` is launching it right now; a kill now would race the launch and could
        // leave an agent running that the state calls killed.
        return Err(Error::Failed(format!(
            "session {id} is still being launched by another command; kill it once 'amplihack remote list' shows it running"
        )));
    }
    ui::print(&format!("Killing session: {id}\n"))?;
    ui::print(if args.force {
        "Sending SIGKILL...\n"
    } else {
        "Sending SIGTERM...\n"
    })?;
    let transport = ctx.transport_to(&state, &session.vm_name);
    let input = script::kill_script(id, args.force, ctx.settings.kill_grace_secs);
    let report = match transport.run_script(
        &session.vm_name,
        input,
        ctx.settings.timeouts.kill,
        OnInterrupt::Abort,
    ) {
        Ok(out) => script::parse_kill(&out.stdout)
            .map_err(|e| Error::unexpected_answer(&session.vm_name, e))?,
        Err(e @ (Error::VmUnreachable { .. } | Error::VmNotFound { .. })) if args.force => {
            ui::warn(&format!(
                "{e}; marking {id} killed locally: its agent may still run on the VM"
            ));
            mark(
                ctx,
                id,
                SessionStatus::Killed,
                None,
                Some("killed locally while its VM was unreachable".into()),
            )?;
            return ui::print("Status updated: killed\n");
        }
        Err(e) => return Err(e),
    };
    let exit_code = report.probe.as_ref().and_then(|p| p.exit_code);
    match report.outcome {
        KillOutcome::AlreadyFinished => {
            let status = exit_code.map_or(SessionStatus::Failed, SessionStatus::from_exit_code);
            mark(ctx, id, status.clone(), exit_code, None)?;
            let code = exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            ui::print(&format!(
                "Session had already finished: {status}{code}; nothing to kill.\nStatus updated: {status}\n"
            ))
        }
        KillOutcome::Killed | KillOutcome::Gone => {
            if report.outcome == KillOutcome::Gone {
                ui::warn(&format!(
                    "no agent or tmux session of {id} was running on {}",
                    session.vm_name
                ));
            }
            if report.escalated {
                ui::print(&format!(
                    "Still running after {}s; sent SIGKILL.\n",
                    ctx.settings.kill_grace_secs
                ))?;
            }
            mark(ctx, id, SessionStatus::Killed, exit_code, None)?;
            ui::print("Session terminated.\nStatus updated: killed\n")
        }
    }
}

fn mark(
    ctx: &Ctx,
    id: &str,
    status: SessionStatus,
    exit_code: Option<i32>,
    error: Option<String>,
) -> Result<()> {
    let now = ctx.now();
    ctx.store.update(|st| {
        st.finish_session(id, status, exit_code, now, error);
        Ok(())
    })
}
