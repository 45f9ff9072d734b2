//! `pull`: brings a session's commits home as branch `amplihack/<session-id>` in the local
//! repository it was started from. One call streams a git bundle on stdout.

use crate::cli::SessionArg;
use crate::commands::{Ctx, find_session};
use crate::context;
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::script::{self, shell_quote};
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
    let transport = ctx.transport_to(&state, &session.vm_name);
    let out = transport.run_script(
        &session.vm_name,
        pull_script(&session.workspace, base),
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

/// Streams the workspace's commits after `base` as a bundle on stdout (nothing when there
/// are none); the bundle lives in a temp file on the VM only for the call.
fn pull_script(workspace: &str, base: &str) -> Vec<u8> {
    format!(
        r#"# amplihack remote: pull script (generated; see docs/remote-layout.md)
{{
exec </dev/null
ws={ws}
cd "$ws" 2>/dev/null || {{ printf 'amplihack: the workspace %s is gone\n' "$ws" >&2; exit 3; }}
n=$(git rev-list --count {base}..HEAD 2>/dev/null) || {{ printf 'amplihack: %s is not a git workspace with commit %s\n' "$ws" {base} >&2; exit 3; }}
printf 'commits\t%s\n' "$n"
printf 'data\tbundle\n'
if [ "$n" -gt 0 ]; then
  t=$(mktemp) && git bundle create --quiet "$t" HEAD ^{base} >/dev/null 2>&1 && cat -- "$t"
  rc=$?
  rm -f -- "$t"
  [ "$rc" = 0 ] || exit 3
fi
exit 0
}}
"#,
        ws = script::root_expr(workspace),
        base = shell_quote(base),
    )
    .into_bytes()
}
