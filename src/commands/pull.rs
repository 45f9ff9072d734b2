//! `pull`: brings a session's commits home as branch `amplihack/<session-id>` in the local
//! repository it was started from. One call streams a git bundle on stdout.

use crate::cli::SessionArg;
use crate::commands::{Ctx, find_session};
use crate::context;
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::script;
use crate::ui;

pub fn run(ctx: &Ctx, args: SessionArg) -> Result<()> {
    let state = ctx.store.load()?;
    let session = find_session(&state, &args.session_id)?;
    let (Some(repo), Some(base)) = (session.repo_path.as_deref(), session.base_commit.as_deref())
    else {
        return Err(Error::Failed(format!(
            "session {} was started without a repository (--no-context, or by another tool); there is nothing to pull",
            session.session_id
        )));
    };
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    let here = context::repo_root(&cwd, ctx.settings.timeouts.local_git)?;
    let repo_path = std::path::Path::new(repo);
    let same = here
        .as_deref()
        .zip(repo_path.canonicalize().ok())
        .is_some_and(|(h, r)| h.canonicalize().ok().as_deref() == Some(r.as_path()));
    if !same {
        return Err(Error::Failed(format!(
            "run pull inside {repo}, the repository session {} was started from",
            session.session_id
        )));
    }
    let vm = ctx.vm_ref(&state, &session.vm_name);
    let out = ctx.run_on(
        &vm,
        script::pull_script(&session.workspace, base),
        ctx.settings.timeouts.launch,
        OnInterrupt::Abort,
    )?;
    let capture = script::parse_capture(&out.stdout)
        .map_err(|e| Error::unexpected_answer(&session.vm_name, e))?;
    if capture.data.is_empty() {
        return ui::print(&format!(
            "Nothing new: session {} has no commits beyond {}.\n",
            session.session_id,
            &base[..base.len().min(12)]
        ));
    }
    let branch = format!("amplihack/{}", session.session_id);
    let pulled = context::fetch_bundle(
        repo_path,
        &capture.data,
        base,
        &branch,
        ctx.settings.timeouts.local_git,
    )?;
    ui::print(&format!(
        "Fetched {} commit(s) into branch {} ({} file(s) changed).\n",
        pulled.commits, pulled.branch, pulled.files_changed
    ))
}
