//! `output`: the tmux pane while the session runs, the kept log after it ended; `--follow`
//! polls the log by byte offset so nothing is printed twice or skipped.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use crate::cli::OutputArgs;
use crate::commands::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::exec::OnInterrupt;
use crate::model::{Session, SessionStatus, State};
use crate::refresh;
use crate::render;
use crate::script::{self, Capture, CaptureSource, Frame, Probe};
use crate::{interrupt, stream, ui};

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

/// Whether a `start` that lives is still launching the session.
fn being_launched(ctx: &Ctx, session: &Session) -> bool {
    session.status == SessionStatus::Pending
        && !refresh::abandoned(
            session.owner.as_ref(),
            session.created_at,
            ctx.now(),
            &exec::liveness,
        )
}

pub fn run(ctx: &Ctx, args: OutputArgs) -> Result<()> {
    let mut state = ctx.store.load()?;
    let mut session = find_session(&state, &args.session_id)?.clone();
    if args.follow && being_launched(ctx, &session) {
        // Following from the start: wait for the launch (reading the state file, no remote
        // call), then stream.
        ui::progress(&format!(
            "Session {} is still being launched; following it once it runs.",
            session.session_id
        ));
        while being_launched(ctx, &session) {
            interrupt::sleep(std::time::Duration::from_millis(500))?;
            state = ctx.store.load()?;
            session = find_session(&state, &args.session_id)?.clone();
        }
    }
    if being_launched(ctx, &session) {
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
    if let Some((place, of)) = capture.queue_place {
        if !args.raw {
            ui::print(&render::output_header(&session, &status, ctx.now(), 0))?;
        }
        ui::progress(&format!(
            "Session {} is queued on {} (place {place} of {of}); it starts on its own when a slot frees, and has no output yet.",
            session.session_id, session.vm_name
        ));
        return Ok(());
    }
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

/// Streams the session's log over one connection (reconnecting when it drops) until the
/// session is over: the last `--lines` lines first, then every byte as it is written, each
/// exactly once (the stream resumes at the byte offset printed so far).
fn follow(ctx: &Ctx, state: State, session: &Session, args: &OutputArgs) -> Result<()> {
    let id = session.session_id.as_str();
    let vm = ctx.vm_ref(&state, &session.vm_name);
    let printed_to: Cell<Option<u64>> = Cell::new(None);
    let mut first_facts: Option<Probe> = None;
    let mut last_facts: Option<Probe> = None;
    let pace = ctx.settings.stream_pace();
    let status = state
        .sessions
        .get(id)
        .map(|s| s.status.to_string())
        .unwrap_or_default();
    let stop = AtomicBool::new(false);
    stream::until_end(
        ctx,
        &vm,
        &stop,
        &mut || script::stream_script(id, printed_to.get(), args.lines, pace),
        &mut |frame| {
            match frame {
                Frame::Session(_, facts) => {
                    first_facts.get_or_insert_with(|| facts.clone());
                    last_facts = Some(facts);
                }
                Frame::Data { offset, bytes } => {
                    let have = match printed_to.get() {
                        Some(have) => have,
                        None => {
                            if !args.raw {
                                ui::print(&render::output_header(
                                    session,
                                    &status,
                                    ctx.now(),
                                    script::count_lines(&bytes),
                                ))?;
                            }
                            ui::progress(&format!(
                                "Following {id} (Ctrl+C stops following, the session keeps running)"
                            ));
                            offset
                        }
                    };
                    // A resumed stream starts where we asked; never print a byte twice.
                    let skip = (have.saturating_sub(offset) as usize).min(bytes.len());
                    ui::print_bytes(&bytes[skip..])?;
                    printed_to.set(Some(have.max(offset + bytes.len() as u64)));
                }
                Frame::Beat | Frame::End => {}
            }
            Ok(())
        },
    )?;
    if let Some(f) = &first_facts
        && !f.known
        && !f.tmux
        && printed_to.get() == Some(0)
    {
        return Err(Error::SessionNotOnVm {
            id: id.to_string(),
            vm: session.vm_name.clone(),
            status,
        });
    }
    let state = settle(ctx, state, id, last_facts, !args.refresh.no_refresh)?;
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
    Ok(())
}
