//! `attach`: an interactive tmux attach on the session's VM (azlin's own `--tmux-session`
//! attach, the only way azlin gives a terminal) or locally. The session is checked alive
//! first: azlin's attach would otherwise create an empty shell session of that name.

use std::collections::HashMap;

use crate::cli::SessionArg;
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::remote::request::{ProbeTarget, Want};
use crate::{refresh, remote::answer, remote::request, ui};

pub fn run(ctx: &Ctx, args: SessionArg) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?.clone();
    if !ui::stdin_is_terminal() {
        return Err(Error::InvalidArgs(
            "attach needs a terminal; to read a session without one, use 'amplihack remote output ID --follow'".into(),
        ));
    }
    let id = session.session_id.as_str();
    let ended = |status: &str| {
        Error::Failed(format!(
            "session {id} has {status} and its tmux session is gone; read its log with 'amplihack remote output {id}'"
        ))
    };
    if !session.status.is_active() {
        return Err(ended(session.status.as_str()));
    }
    if session.status == crate::core::model::SessionStatus::Queued {
        return Err(Error::Failed(format!(
            "session {id} is queued and has not started yet; follow it with 'amplihack remote output {id} --follow'"
        )));
    }
    let vm = ctx.vm_ref(&state, &session.vm_name);
    // Asking for the archive costs nothing while it runs, and keeps it if it has ended.
    let target = ProbeTarget {
        id,
        workspace: &session.workspace,
        base_commit: session.base_commit.as_deref(),
        want: Want::Archive,
    };
    // The archive of a session found ended is kept while the VM waits, so it can mark it
    // collected (`refresh::call_keeping_archives`).
    let collect = request::Collect {
        answers: true,
        earlier: &[],
    };
    let (stdout, kept) = refresh::call_keeping_archives(
        ctx,
        &vm,
        request::probe_script(
            &[target],
            ctx.settings.archive_log_cap,
            request::Queue::Leave,
            collect,
        ),
        ctx.settings.timeouts.probe,
    )
    .map_err(|e| refresh::after_failed_call(ctx, &session.vm_name, e))?;
    let answer = answer::parse_probe_answer(&stdout);
    let Some(probe) = answer.probes.get(id).cloned() else {
        return Err(Error::unexpected_answer(&vm.name, "no session line"));
    };
    if probe.exit_code.is_some() || !probe.tmux {
        let probes: HashMap<String, crate::core::lifecycle::Probe> =
            [(id.to_string(), probe)].into();
        let state = refresh::commit_kept(ctx, &probes, &kept, state)?;
        let status = find_session(&state, id)?.status.to_string();
        return Err(ended(&status));
    }
    let attach = ctx.transport(&vm).attach_command(&vm, id);
    ui::progress("Attaching; detach with Ctrl-b d (the session keeps running).");
    match exec::run_interactive(&attach.program, &attach.args, &attach.env)? {
        0 => Ok(()),
        code => Err(Error::Failed(format!(
            "tmux attach to {id} ended with exit code {code}"
        ))),
    }
}
