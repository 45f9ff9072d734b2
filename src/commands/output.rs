//! `output`: the tmux pane while the session runs, the kept log after it ended; `--follow`
//! polls the log by byte offset so nothing is printed twice or skipped.

use std::collections::HashMap;

use crate::cli::OutputArgs;
use crate::commands::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::exec::OnInterrupt;
use crate::model::{Session, SessionStatus, State};
use crate::refresh;
use crate::render;
use crate::script::{self, Capture, CaptureSource, Probe};
use crate::{interrupt, ui};

fn ask(ctx: &Ctx, state: &State, session: &Session, input: Vec<u8>) -> Result<Capture> {
    let vm = ctx.vm_ref(state, &session.vm_name);
    let out = ctx.run_on(
        &vm,
        input,
        ctx.settings.timeouts.capture,
        OnInterrupt::Abort,
    )?;
    script::parse_capture(&out.stdout).map_err(|e| Error::unexpected_answer(&session.vm_name, e))
}

/// Settles the session's status from the probe (unless --no-refresh) and returns it.
fn settle(
    ctx: &Ctx,
    state: State,
    id: &str,
    probe: Option<Probe>,
    refresh_state: bool,
) -> Result<State> {
    match probe {
        Some(p) if refresh_state => {
            let probes: HashMap<String, Probe> = [(id.to_string(), p)].into();
            refresh::commit_probes(ctx, &probes, state)
        }
        _ => Ok(state),
    }
}

pub fn run(ctx: &Ctx, args: OutputArgs) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?.clone();
    if session.status == SessionStatus::Pending
        && !refresh::abandoned(
            session.owner.as_ref(),
            session.created_at,
            ctx.now(),
            &exec::liveness,
        )
    {
        // Its start is still provisioning or launching it: the VM has nothing to show yet,
        // and asking would only race the launch.
        if !args.raw {
            ui::print(&render::output_header(&session, "pending", ctx.now(), 0))?;
        }
        ui::progress(&format!(
            "Session {} is still being launched by its start; no output yet.",
            session.session_id
        ));
        return Ok(());
    }
    if args.follow {
        return follow(ctx, state, &session, &args);
    }
    let capture = ask(
        ctx,
        &state,
        &session,
        script::capture_script(&session.session_id, args.lines),
    )?;
    let state = settle(
        ctx,
        state,
        &session.session_id,
        capture.probe.clone(),
        !args.refresh.no_refresh,
    )?;
    let status = find_session(&state, &session.session_id)?
        .status
        .to_string();
    let text = match capture.source {
        CaptureSource::Pane => script::last_lines(&capture.data, args.lines as usize),
        CaptureSource::Log => capture.data,
        CaptureSource::None => Vec::new(),
    };
    if capture.source == CaptureSource::None {
        return Err(Error::SessionNotOnVm {
            id: session.session_id.clone(),
            vm: session.vm_name.clone(),
            status,
        });
    }
    if !args.raw {
        ui::print(&render::output_header(
            &session,
            &status,
            ctx.now(),
            script::count_lines(&text),
        ))?;
    }
    ui::print_bytes(&text)
}

fn follow(ctx: &Ctx, mut state: State, session: &Session, args: &OutputArgs) -> Result<()> {
    let id = session.session_id.as_str();
    let mut offset: Option<u64> = None;
    loop {
        let capture = ask(
            ctx,
            &state,
            session,
            script::follow_script(id, offset, args.lines),
        )?;
        let probe = capture.probe.clone();
        if offset.is_none() && !args.raw {
            let status = state
                .sessions
                .get(id)
                .map(|s| s.status.to_string())
                .unwrap_or_default();
            ui::print(&render::output_header(
                session,
                &status,
                ctx.now(),
                script::count_lines(&capture.data),
            ))?;
            ui::progress(&format!(
                "Following {id} (polling every {}s; Ctrl+C stops following, the session keeps running)",
                ctx.settings.follow_interval.as_secs_f64()
            ));
        }
        ui::print_bytes(&capture.data)?;
        offset = Some(capture.log_size.unwrap_or(0).max(offset.unwrap_or(0)));
        let finished = probe
            .as_ref()
            .is_some_and(|p| p.exit_code.is_some() || !p.alive);
        state = settle(ctx, state, id, probe, !args.refresh.no_refresh)?;
        if finished {
            let s = find_session(&state, id)?;
            let code = s
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            let why = s
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            ui::progress(&format!("Session {id} ended: {}{code}{why}", s.status));
            return Ok(());
        }
        interrupt::sleep(ctx.settings.follow_interval)?;
    }
}
