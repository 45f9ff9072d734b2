//! `pull --resume`: hand an ended session back to the user. After its commits came home as a
//! branch, the branch is checked out into a new git worktree beside the repository
//! (`<repo>-<session id>`, or `--worktree DIR`), the work the agent left uncommitted is applied
//! there from the archive, and the agent's conversation is put where Claude Code looks for that
//! worktree's path, so `claude --continue` inside it carries on locally. Flow: docs/results.md.

use std::path::{Path, PathBuf};

use crate::context;
use crate::core::model::Owner;
use crate::core::naming;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec::{self, Liveness};
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

/// The name under which a worktree is built, beside its place, before it is moved there in one
/// step: hidden, named after it, and after the process building it (`-<pid>`). A `pull
/// --resume` that dies halfway (Ctrl+C, SIGKILL, a patch that does not apply) leaves only
/// this, which a later one removes once that process is gone; the worktree at its place is
/// always whole, so "carry on there" is never said of a half-made one, and two at once never
/// remove each other's.
fn staging_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "worktree".into());
    format!(".{name}.resume-partial-")
}

/// `staging_prefix` and the process building it: `<pid>-<start time in ticks since boot>`
/// (the pid alone where its start time cannot be read). The start time tells a dead run's
/// leftovers from a live run's once its pid was given to another process.
fn staging_path(path: &Path, owner: &Owner) -> PathBuf {
    let ticks = owner.started.split_once(' ').map(|(_, t)| t);
    path.with_file_name(match ticks {
        Some(t) => format!("{}{}-{t}", staging_prefix(path), owner.pid),
        None => format!("{}{}", staging_prefix(path), owner.pid),
    })
}

/// The process that is building the worktree at `staging`, if `staging` is one of the names
/// `staging_path` gives for `path`.
fn staging_owner(path: &Path, staging: &Path) -> Option<Owner> {
    if staging.parent() != path.parent() {
        return None;
    }
    let name = staging.file_name()?.to_string_lossy().into_owned();
    let rest = name.strip_prefix(&staging_prefix(path))?;
    let (pid, ticks) = match rest.split_once('-') {
        Some((pid, ticks)) => (pid, Some(ticks.parse::<u64>().ok()?)),
        None => (rest, None),
    };
    let me = exec::current_owner();
    let boot = me.started.split_once(' ').map(|(b, _)| b.to_string());
    Some(Owner {
        pid: pid.parse().ok()?,
        host: me.host,
        // Without a start time (or a boot id to go with it), the pid's existence tells.
        started: match (boot, ticks) {
            (Some(b), Some(t)) => format!("{b} {t}"),
            _ => String::new(),
        },
    })
}

/// Removes what `pull --resume`s of `path` that died left beside it.
fn discard_dead_staging(repo: &Path, path: &Path, timeout: std::time::Duration) -> Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let staging = entry.path();
        if staging_owner(path, &staging)
            .is_some_and(|owner| exec::liveness(&owner) == Liveness::Dead)
        {
            context::discard_worktree(repo, &staging, timeout)?;
        }
    }
    Ok(())
}

/// `path` with its parent resolved (symlinks, `..`) where the parent exists: the worktree's
/// absolute path as git and Claude Code will see it.
fn resolved(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
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
    let path = worktree_path(repo, id, given)?;
    // Its parent made now, so the path resolves (symlinks, `..`) to what git and Claude Code
    // will see before the worktree exists.
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    }
    let path = resolved(&path);
    // What an earlier pull --resume of this worktree left when it died.
    discard_dead_staging(repo, &path, timeout)?;
    if let Some(there) = context::checked_out_in(repo, &p.branch, timeout)? {
        if staging_owner(&path, &resolved(Path::new(&there))).is_some() {
            return Err(Error::Failed(format!(
                "another pull --resume of session {id} is under way (building {there}): wait for it"
            )));
        }
        return Err(Error::Failed(format!(
            "branch {} is checked out in {there} already: carry on there (cd {} && claude --continue), or remove it (git worktree remove {}) and pull --resume again",
            p.branch,
            shell_word(Path::new(&there)),
            shell_word(Path::new(&there))
        )));
    }
    if path.exists() {
        return Err(Error::Failed(format!(
            "{} exists already: remove it, or pass --worktree DIR for another place; the branch {} is home",
            path.display(),
            p.branch
        )));
    }
    let staging = staging_path(&path, &exec::current_owner());
    let start = p
        .head
        .as_deref()
        .or(s.base_commit.as_deref())
        .unwrap_or(&p.base);
    context::add_worktree(repo, &staging, &p.branch, start, timeout)?;
    let built = fill_worktree(ctx, id, &p.branch, &staging, &path)
        .and_then(|text| context::move_worktree(repo, &staging, &path, timeout).map(|()| text));
    let text = match built {
        Ok(text) => text,
        Err(e) => {
            let _ = context::discard_worktree(repo, &staging, timeout);
            return Err(e);
        }
    };
    ui::print_text(&text)
}

/// Applies the archived uncommitted work to the worktree being built at `staging`, and puts
/// the conversation where Claude Code looks for `path`, the worktree's final place. Returns
/// what `pull --resume` prints.
fn fill_worktree(ctx: &Ctx, id: &str, branch: &str, staging: &Path, path: &Path) -> Result<String> {
    let timeout = ctx.settings.timeouts.local_git;
    let mut text = format!("Worktree: {} (branch {branch})\n", path.display());
    if let Some(patch) = ctx.archive.patch(id) {
        context::apply_patch(staging, &patch, timeout)?;
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
        shell_word(path)
    ));
    Ok(text)
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
    fn a_staging_worktree_is_known_by_its_name_and_process() {
        let path = Path::new("/src/app-sess-1");
        let owner = |started: &str| Owner {
            pid: 4242,
            host: "h".into(),
            started: started.into(),
        };
        let staging = staging_path(path, &owner("boot-1 777"));
        assert_eq!(
            staging,
            Path::new("/src/.app-sess-1.resume-partial-4242-777")
        );
        let read = staging_owner(path, &staging).unwrap();
        assert_eq!(read.pid, 4242);
        assert!(read.started.ends_with(" 777"), "{}", read.started);
        let staging = staging_path(path, &owner(""));
        assert_eq!(staging, Path::new("/src/.app-sess-1.resume-partial-4242"));
        assert_eq!(staging_owner(path, &staging).map(|o| o.pid), Some(4242));
        assert!(staging_owner(path, Path::new("/src/app-sess-1")).is_none());
        assert!(staging_owner(path, Path::new("/other/.app-sess-1.resume-partial-1")).is_none());
        assert!(staging_owner(path, Path::new("/src/.app-sess-2.resume-partial-1")).is_none());
    }

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_word(Path::new("/src/app-sess-1")), "/src/app-sess-1");
        assert_eq!(shell_word(Path::new("/my dir/it's")), "'/my dir/it'\\''s'");
    }
}
