//! `pull --resume`: hand an ended session back to the user. After its commits came home as a
//! branch, the branch is checked out into a new git worktree beside the repository
//! (`<repo>-<session id>`, or `--worktree DIR`), the work the agent left uncommitted is applied
//! there from the archive, and the agent's conversation is put where Claude Code looks for that
//! worktree's path, so `claude --continue` inside it carries on locally. Flow: docs/results.md.

use std::path::{Path, PathBuf};

use crate::context;
use crate::core::naming;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::pr::Pulled;
use crate::remote::request::shell_quote;
use crate::ui;

/// Where the worktree goes: `--worktree DIR` (relative to the current directory), else
/// `<repo>-<session id>` beside the repository.
fn worktree_path(repo: &Path, id: &str, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if dir.is_absolute() {
            return Ok(dir.to_path_buf());
        }
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?;
        return Ok(cwd.join(dir));
    }
    let name = repo
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    Ok(repo
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{name}-{id}")))
}

/// A path as a word the user's shell takes literally (quoted only when it has to be).
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b))
    {
        text.into_owned()
    } else {
        shell_quote(&text)
    }
}

pub fn hand_over(ctx: &Ctx, p: &Pulled, repo: &Path, given: Option<&Path>) -> Result<()> {
    let s = p.session;
    let id = &s.session_id;
    if s.status.is_active() {
        return Err(Error::Failed(format!(
            "session {id} is still {}: its commits so far are on branch {}; wait for it or kill it, then pull --resume again",
            s.status, p.branch
        )));
    }
    let timeout = ctx.settings.timeouts.local_git;
    if let Some(there) = context::checked_out_in(repo, &p.branch, timeout)? {
        return Err(Error::Failed(format!(
            "branch {} is checked out in {there} already: carry on there (cd {} && claude --continue), or remove it (git worktree remove {}) and pull --resume again",
            p.branch,
            shell_word(Path::new(&there)),
            shell_word(Path::new(&there))
        )));
    }
    let path = worktree_path(repo, id, given)?;
    if path.exists() {
        return Err(Error::Failed(format!(
            "{} exists already: remove it, or pass --worktree DIR for another place; the branch {} is home",
            path.display(),
            p.branch
        )));
    }
    let start = p
        .head
        .as_deref()
        .or(s.base_commit.as_deref())
        .unwrap_or(&p.base);
    context::add_worktree(repo, &path, &p.branch, start, timeout)?;
    let path = path.canonicalize().unwrap_or(path);
    let mut text = format!("Worktree: {} (branch {})\n", path.display(), p.branch);
    if let Some(patch) = ctx.archive.patch(id) {
        context::apply_patch(&path, &patch, timeout)?;
        text.push_str("  The work it left uncommitted is applied there (not committed).\n");
    }
    let home =
        dirs::home_dir().ok_or_else(|| Error::Failed("cannot find the home directory".into()))?;
    let project = home
        .join(".claude")
        .join("projects")
        .join(naming::claude_project_slug(&path.to_string_lossy()));
    let placed = ctx.archive.place_conversation(id, &project, ctx.now())?;
    if placed == 0 {
        text.push_str(
            "  No conversation was kept for it: claude --continue there starts a new one.\n",
        );
    } else {
        text.push_str(&format!(
            "  Its conversation is in {} ({placed} file(s)).\n",
            project.display()
        ));
    }
    text.push_str(&format!(
        "Run: cd {} && claude --continue\n",
        shell_word(&path)
    ));
    ui::print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worktree_goes_beside_the_repository_unless_given() {
        assert_eq!(
            worktree_path(Path::new("/src/app"), "sess-1", None).unwrap(),
            Path::new("/src/app-sess-1")
        );
        assert_eq!(
            worktree_path(Path::new("/src/app"), "sess-1", Some(Path::new("/tmp/x"))).unwrap(),
            Path::new("/tmp/x")
        );
    }

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_word(Path::new("/src/app-sess-1")), "/src/app-sess-1");
        assert_eq!(shell_word(Path::new("/my dir/it's")), "'/my dir/it'\\''s'");
    }
}
