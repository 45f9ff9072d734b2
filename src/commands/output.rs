//! `output`: the tmux pane while the session runs, the kept log after it ended; `--follow`
//! streams the log over one connection (reconnecting when it drops), each byte exactly once. An
//! archived session is read from its archive: no call, and its VM may be gone. A capture that
//! finds the session ended brings its archive home too; a follow that sees it end brings it
//! with one more call (a probe asking for the archive), since the stream carries only the log.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;

use crate::cli::OutputArgs;
use crate::core::lifecycle::Probe;
use crate::core::model::{Session, SessionStatus, State};
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::refresh;
use crate::remote::answer::{Capture, CaptureSource, StreamFrame};
use crate::remote::request::Want;
use crate::remote::{answer, request};
use crate::ui::render;
use crate::{interrupt, remote::stream, ui};

/// Asks the session's VM; the archive its answer brings is kept while the VM waits, so it can
/// mark it collected (`refresh::call_keeping_archives`).
fn ask(
    ctx: &Ctx,
    state: &State,
    session: &Session,
    input: Vec<u8>,
) -> Result<(Vec<u8>, refresh::Kept)> {
    let vm = ctx.vm_ref(state, &session.vm_name);
    refresh::call_keeping_archives(ctx, &vm, input, ctx.settings.timeouts.capture)
        .map_err(|e| refresh::after_failed_call(ctx, &session.vm_name, e))
}

fn parse<'a>(session: &Session, stdout: &'a [u8]) -> Result<Capture<'a>> {
    answer::parse_capture(stdout).map_err(|e| Error::unexpected_answer(&session.vm_name, e))
}

/// Settles the session's status from the probe (unless --no-refresh, which asks for no
/// archive), recording the archive the answer brought (`kept`), and returns the state.
fn settle(
    ctx: &Ctx,
    state: State,
    session: &Session,
    capture: &Capture,
    kept: &refresh::Kept,
    refresh_state: bool,
) -> Result<State> {
    match capture.probe.clone() {
        Some(p) if refresh_state => {
            let probes: HashMap<String, Probe> = [(session.session_id.clone(), p)].into();
            refresh::commit_kept(ctx, &probes, kept, state)
        }
        _ => Ok(state),
    }
}

/// Prints an archived session's log from its archive (`vm_asked`: a call to its VM brought
/// the archive and was cut before the text).
fn from_archive(ctx: &Ctx, session: &Session, args: &OutputArgs, vm_asked: bool) -> Result<()> {
    let id = session.session_id.as_str();
    let Some(text) = ctx.archive.log_tail(id, args.lines as usize)? else {
        return Err(Error::SessionNotOnVm {
            id: id.to_string(),
            vm: session.vm_name.clone(),
            status: format!("{}; its archive holds no log", session.status),
            has_repository: session.base_commit.is_some(),
        });
    };
    if !args.raw {
        ui::print(&render::output_header(
            session,
            session.status.as_str(),
            session.archived_at.unwrap_or_else(|| ctx.now()),
            answer::count_lines(&text),
        ))?;
    }
    ui::progress(&format!(
        "From the archive of {id} ({}); {}.",
        ctx.archive.dir(id)?.display(),
        if vm_asked {
            "its VM's call brought it and was cut before the text"
        } else {
            "its VM was not asked"
        }
    ));
    if let Some(cut) = ctx.archive.meta(id)?.and_then(|m| m.log_cut()) {
        ui::warn(&format!(
            "the log was over the archive's cap: its first {cut} bytes were not kept"
        ));
    }
    print_output(&text, args.raw)?;
    if args.follow {
        ui::progress(&format!("Session {id} ended: {}", ended_text(session)));
    }
    Ok(())
}

fn ended_text(s: &Session) -> String {
    let code = s
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    let why = s
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!("{}{code}{why}", s.status)
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
    if session.archived_at.is_some() {
        if ctx.archive.has(&session.session_id) {
            return from_archive(ctx, &session, &args, false);
        }
        ui::warn(&format!(
            "the archive of {} is missing from {}; asking its VM",
            session.session_id,
            ctx.archive.root().display()
        ));
    }
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
    // --no-refresh writes nothing, so it asks for no archive either.
    let archive = (!args.refresh.no_refresh && session.archived_at.is_none())
        .then(|| refresh::archive_request(ctx, &session));
    let (stdout, kept) = ask(
        ctx,
        &state,
        &session,
        request::capture_script(&session.session_id, args.lines, archive.as_ref()),
    )?;
    let capture = match parse(&session, &stdout) {
        Ok(capture) => capture,
        // The call was cut after the session's archive came home (and the VM was told), before
        // the text that follows it: its output is read from home, and the archive recorded.
        Err(e) if kept.archived.contains_key(&session.session_id) => {
            let probes = answer::parse_probe_answer(&stdout).probes;
            let state = refresh::commit_kept(ctx, &probes, &kept, state)?;
            let session = find_session(&state, &session.session_id)?;
            if session.archived_at.is_none() {
                return Err(e);
            }
            return from_archive(ctx, session, &args, true);
        }
        Err(e) => return Err(e),
    };
    let state = settle(
        ctx,
        state,
        &session,
        &capture,
        &kept,
        !args.refresh.no_refresh,
    )?;
    let status = find_session(&state, &session.session_id)?
        .status
        .to_string();
    let text = match capture.source {
        CaptureSource::Pane => answer::last_lines(capture.data, args.lines as usize),
        CaptureSource::Log => capture.data.to_vec(),
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
            has_repository: session.base_commit.is_some(),
        });
    }
    if !args.raw {
        ui::print(&render::output_header(
            &session,
            &status,
            ctx.now(),
            answer::count_lines(&text),
        ))?;
    }
    print_output(&text, args.raw)
}

/// A session's output: the bytes themselves with --raw; else made safe for a terminal
/// (`sanitize::output`: colours kept, every other control shown escaped).
fn print_output(bytes: &[u8], raw: bool) -> Result<()> {
    if raw {
        ui::print_bytes(bytes)
    } else {
        ui::print(&crate::ui::sanitize::output(bytes))
    }
}

/// Streams the session's log over one connection (reconnecting when it drops) until the
/// session is over: the last `--lines` lines first, then every byte as it is written, each
/// exactly once (the stream resumes at the byte offset printed so far). Then, unless
/// --no-refresh, records the end and brings the session's archive home.
fn follow(ctx: &Ctx, state: State, session: &Session, args: &OutputArgs) -> Result<()> {
    let id = session.session_id.as_str();
    let vm = ctx.vm_ref(&state, &session.vm_name);
    let printed_to: Cell<Option<u64>> = Cell::new(None);
    let mut first_facts: Option<Probe> = None;
    let mut last_facts: Option<Probe> = None;
    let pace = ctx.settings.stream_pace();
    let drain = super::wait::has_queue(&state, &session.vm_name);
    let status = state
        .sessions
        .get(id)
        .map(|s| s.status.to_string())
        .unwrap_or_default();
    let stop = AtomicBool::new(false);
    let unescaped = std::cell::RefCell::new(crate::ui::sanitize::OutputStream::default());
    stream::until_end(
        ctx,
        &vm,
        &stop,
        &mut || {
            // A stranded queue is started by whoever talks to its VM with the user's key.
            let queue = if drain {
                refresh::queue_work(ctx)
            } else {
                request::Queue::Leave
            };
            request::stream_script(id, printed_to.get(), args.lines, pace, queue)
        },
        &mut |frame| {
            match frame {
                StreamFrame::Session(_, facts) => {
                    first_facts.get_or_insert_with(|| facts.clone());
                    last_facts = Some(facts);
                }
                StreamFrame::Data { offset, bytes } => {
                    let have = match printed_to.get() {
                        Some(have) => have,
                        None => {
                            if !args.raw {
                                ui::print(&render::output_header(
                                    session,
                                    &status,
                                    ctx.now(),
                                    answer::count_lines(&bytes),
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
                    if args.raw {
                        ui::print_bytes(&bytes[skip..])?;
                    } else {
                        ui::print(&unescaped.borrow_mut().push(&bytes[skip..]))?;
                    }
                    printed_to.set(Some(have.max(offset + bytes.len() as u64)));
                }
                StreamFrame::Beat | StreamFrame::End => {}
            }
            Ok(())
        },
    )
    .map_err(|e| refresh::after_failed_call(ctx, &session.vm_name, e))?;
    if !args.raw {
        ui::print(&unescaped.borrow_mut().finish())?;
    }
    if let Some(f) = &first_facts
        && !f.known
        && !f.tmux
        && printed_to.get() == Some(0)
    {
        return Err(Error::SessionNotOnVm {
            id: id.to_string(),
            vm: session.vm_name.clone(),
            status,
            has_repository: session.base_commit.is_some(),
        });
    }
    if args.refresh.no_refresh {
        let s = find_session(&state, id)?;
        ui::progress(&format!("Session {id} ended: {}", ended_text(s)));
        return Ok(());
    }
    // The end the stream saw is recorded and said at once (no call); bringing the results
    // home is a call of its own, bounded, whose failure is reported on its own line.
    let seen: HashMap<String, Probe> = last_facts
        .map(|p| [(id.to_string(), p)].into())
        .unwrap_or_default();
    let state = refresh::commit_probes(ctx, &seen, &refresh::Archived::new(), state)?;
    let s = find_session(&state, id)?;
    ui::progress(&format!("Session {id} ended: {}", ended_text(s)));
    if s.archived_at.is_none() {
        bring_archive_home(ctx, state, session)?;
    }
    Ok(())
}

/// The most a follow waits, after its session ended, for the call that brings the results
/// home: the user has seen the end; a VM that does not answer at once is left to a later
/// refresh, which takes the archive along.
const ARCHIVE_AFTER_FOLLOW: std::time::Duration = std::time::Duration::from_secs(20);

/// Brings a followed session's archive home: one probe call asking for it (bounded by
/// `ARCHIVE_AFTER_FOLLOW`), committed like a refresh. If that call fails, the archive waits
/// for a later call (a refresh takes it along); the follow itself succeeded.
fn bring_archive_home(ctx: &Ctx, state: State, session: &Session) -> Result<()> {
    let id = &session.session_id;
    let mut settings = ctx.settings.clone();
    settings.timeouts.probe = settings.timeouts.probe.min(ARCHIVE_AFTER_FOLLOW);
    let bounded = Ctx {
        transports: crate::remote::transport::Transports::new(&settings),
        store: ctx.store.clone(),
        archive: ctx.archive.clone(),
        settings,
    };
    let plan: BTreeMap<String, Vec<(String, Want)>> =
        [(session.vm_name.clone(), vec![(id.clone(), Want::Archive)])].into();
    let collected = refresh::collect(&bounded, &state, &plan)?;
    if let Some(e) = collected.failed_vms.get(&session.vm_name) {
        ui::warn(&format!(
            "could not bring the results of {id} home; a later refresh will. {e}"
        ));
        return Ok(());
    }
    refresh::commit_collected(ctx, &collected, state)?;
    Ok(())
}
