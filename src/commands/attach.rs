//! `attach`: an interactive tmux attach on the session's VM (or locally).

use crate::cli::SessionArg;
use crate::commands::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::{exec, ui};

pub fn run(ctx: &Ctx, args: SessionArg) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?;
    if !ui::stdin_is_terminal() {
        return Err(Error::InvalidArgs(
            "attach needs a terminal; to read a session without one, use 'amplihack remote output ID --follow'".into(),
        ));
    }
    if !session.status.is_active() {
        return Err(Error::Failed(format!(
            "session {} has {} and its tmux session is gone; read its log with 'amplihack remote output {}'",
            session.session_id, session.status, session.session_id
        )));
    }
    let transport = ctx.transport_to(&state, &session.vm_name);
    let (program, argv) = transport.attach_command(&session.vm_name, &session.session_id);
    ui::progress("Attaching; detach with Ctrl-b d (the session keeps running).");
    match exec::run_interactive(&program, &argv)? {
        0 => Ok(()),
        code => Err(Error::Failed(format!(
            "tmux attach to {} ended with exit code {code}",
            session.session_id
        ))),
    }
}
