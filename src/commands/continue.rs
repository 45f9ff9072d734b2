//! `continue`: a follow-up of an ended session. A new session (new id) carries on in its
//! parent's workspace, with Claude Code's `--continue` so the agent resumes the parent's
//! conversation, and the prompt as its new instruction. It runs on the parent's VM (queued
//! when that VM is full); when that VM is gone, on any VM with room or a new one, where the
//! parent's workspace is first rebuilt from its archive (history, uncommitted work,
//! conversation). Its commits are counted from its parent's head. Flows: docs/results.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::cli::{CommandMode, ContinueArgs, StartArgs};
use crate::context;
use crate::core::model::lineage;
use crate::core::model::{Backend, Session, SessionStatus, State, VmState};
use crate::core::pool::LOCAL_VM_NAME;
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::launch::{self, Continuation, workspace_taken};
use crate::refresh;
use crate::remote::request::{Restore, Want};
use crate::ui;

/// Whether a follow-up of `parent_id` is still pending while the start that reserved it is dead.
fn follow_up_of_a_dead_start(state: &State, parent_id: &str) -> bool {
    state.sessions.values().any(|s| {
        s.parent_session_id() == Some(parent_id)
            && s.status == SessionStatus::Pending
            && s.owner
                .as_ref()
                .is_some_and(|o| crate::exec::liveness(o) == crate::exec::Liveness::Dead)
    })
}

/// Asks the parent's VM about a parent the state takes for active, or whose results are not
/// home yet: that call settles it and brings its archive.
fn settle(ctx: &Ctx, state: State, parent: &Session) -> Result<State> {
    let id = parent.session_id.clone();
    let plan = BTreeMap::from([(parent.vm_name.clone(), vec![(id.clone(), Want::Archive)])]);
    let collected = refresh::collect(ctx, &state, &plan)?;
    if let Some(e) = collected.failed_vms.get(&parent.vm_name) {
        return Err(e.replicate());
    }
    if let Some(why) = collected.archive_failures.get(&id) {
        return Err(Error::Failed(format!(
            "the results of session {id} came home but could not be archived: {why}"
        )));
    }
    refresh::commit_collected(ctx, &collected, state)
}

/// The parent's VM, if it is still in the pool and ready to take a session.
fn vm_still_there(state: &State, parent: &Session) -> bool {
    parent.vm_name == LOCAL_VM_NAME
        || state
            .vm_pool
            .get(&parent.vm_name)
            .is_some_and(|v| v.state == VmState::Ready)
}

fn backend_of(state: &State, parent: &Session) -> Backend {
    state
        .vm_pool
        .get(&parent.vm_name)
        .map(|v| v.backend)
        .unwrap_or(if parent.vm_name == LOCAL_VM_NAME {
            Backend::Local
        } else {
            Backend::Azure
        })
}

/// What rebuilds the parent's workspace elsewhere, from the archives of its chain: the whole
/// history up to its head (the repository it started from plus each session's archived
/// commits), its uncommitted work and its conversation.
fn restore_from_archive(
    ctx: &Ctx,
    state: &State,
    parent: &Session,
    head: Option<&str>,
) -> Result<Restore> {
    let chain = lineage(state, parent);
    let root = chain[0];
    let mut restore = Restore {
        branch: format!("amplihack/{}", root.session_id),
        head: head.unwrap_or_default().to_string(),
        parts: Vec::new(),
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
    };
    if let (Some(repo), Some(head)) = (history_repo(ctx, root)?, head) {
        let mut bundles: Vec<PathBuf> = Vec::new();
        for s in &chain {
            match ctx.archive.bundle(&s.session_id) {
                Some(b) => bundles.push(b),
                None if archived_commits(ctx, s) > 0 => {
                    return Err(Error::Failed(format!(
                        "the archive of session {} lacks the bundle of its commits; its workspace cannot be rebuilt",
                        s.session_id
                    )));
                }
                None => {}
            }
        }
        let bundle =
            context::history_bundle(&repo, &bundles, head, ctx.settings.timeouts.local_git)?;
        restore.parts.push(("workspace.bundle".into(), bundle));
        if let Some(patch) = ctx.archive.patch(&parent.session_id) {
            restore
                .parts
                .push(("uncommitted.patch".into(), read(&patch)?));
        }
    }
    for file in ctx.archive.conversation(&parent.session_id) {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        restore
            .parts
            .push((format!("conversation/{name}"), read(&file)?));
    }
    Ok(restore)
}

/// The local repository that holds the commit a chain started from: the one `continue` runs
/// in, else the one the chain was started from (wherever a repository is, it is the chain's
/// when it has that commit). `None` for a chain started without a repository.
fn history_repo(ctx: &Ctx, root: &Session) -> Result<Option<PathBuf>> {
    let Some(base) = root.base_commit.as_deref() else {
        return Ok(None);
    };
    let timeout = ctx.settings.timeouts.local_git;
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(Some(here)) = context::repo_root(&cwd, timeout)
    {
        candidates.push(here);
    }
    candidates.extend(root.repo_path.as_deref().map(PathBuf::from));
    for repo in candidates.into_iter().filter(|r| r.is_dir()) {
        if context::commits_present(&repo, &[base], timeout).is_ok_and(|found| found.contains(base))
        {
            return Ok(Some(repo));
        }
    }
    Err(Error::Failed(format!(
        "the workspace of session {} cannot be rebuilt: it started from commit {}, which neither {} nor the repository here holds; run continue inside a clone that has it",
        root.session_id,
        &base[..base.len().min(12)],
        root.repo_path.as_deref().unwrap_or("its repository")
    )))
}

fn archived_commits(ctx: &Ctx, s: &Session) -> u64 {
    ctx.archive
        .meta(&s.session_id)
        .ok()
        .flatten()
        .and_then(|m| m.commits)
        .unwrap_or(0)
}

pub fn run(ctx: &Ctx, args: ContinueArgs) -> Result<()> {
    let mut state = ctx.store.load()?;
    let id = args.session_id.clone();
    let parent = find_session(&state, &id)?.clone();
    // Being launched: nothing to ask yet. Queued or running ones may have ended since.
    if parent.status == SessionStatus::Pending {
        return Err(still_active(&parent));
    }
    if (parent.status.is_active() || refresh::unarchived(&state, &parent))
        && vm_still_there(&state, &parent)
    {
        state = settle(ctx, state, &parent)?;
    }
    let parent = find_session(&state, &id)?.clone();
    if parent.status.is_active() {
        return Err(still_active(&parent));
    }
    if parent.started_at.is_none() {
        return Err(Error::Failed(format!(
            "session {id} never started ({}): it left no workspace or conversation to carry on; start its task again instead",
            parent.error.as_deref().unwrap_or("no start was recorded")
        )));
    }
    if workspace_taken(&state, &id).is_some() && follow_up_of_a_dead_start(&state, &id) {
        // Its start died (Ctrl+C, SIGKILL): a refresh claims or settles it, as any command's
        // does, and only then does it tell whether the workspace is free.
        state = refresh::current(ctx, refresh::Source::Vms, refresh::Power::Skip)?.state;
    }
    if let Some(e) = workspace_taken(&state, &id) {
        return Err(e);
    }
    if (parent.archived_at.is_none() || !ctx.archive.has(&id)) && !vm_still_there(&state, &parent) {
        return Err(Error::Failed(format!(
            "VM '{}' of session {id} is gone and its results never came home (it went before they were archived): its workspace and conversation are lost; start its task again instead",
            parent.vm_name
        )));
    }
    if parent.archived_at.is_none() || !ctx.archive.has(&id) {
        return Err(Error::Failed(format!(
            "the results of session {id} are not home yet (VM '{}' did not send them), so a follow-up could not tell what it starts from; try again when 'amplihack remote list' reaches the VM",
            parent.vm_name
        )));
    }
    let result = ctx.archive.result(&id)?.unwrap_or_default();
    let head = parent
        .base_commit
        .as_ref()
        .and(result.head_commit.clone().or(parent.base_commit.clone()));

    let backend = backend_of(&state, &parent);
    let same_vm = vm_still_there(&state, &parent);
    // This machine's workspace is at hand: rebuilt only when it is gone.
    let local_workspace_gone = backend == Backend::Local && !Path::new(&parent.workspace).exists();
    let restore = if !same_vm || local_workspace_gone {
        ui::progress(&if same_vm {
            format!(
                "The workspace of session {id} is gone: restoring it from the archive ({}).",
                parent.workspace
            )
        } else {
            format!(
                "VM '{}' of session {id} is gone: restoring its workspace from the archive on the follow-up's VM.",
                parent.vm_name
            )
        });
        Some(restore_from_archive(ctx, &state, &parent, head.as_deref())?)
    } else {
        None
    };
    // Should the parent's VM turn out to be gone at launch (deleted behind our back), the
    // follow-up moves to another VM and this rebuilds the workspace there; built here, at
    // home, without a call. None when the archive cannot rebuild it: the move then fails.
    let restore_if_gone = (restore.is_none() && backend == Backend::Azure)
        .then(|| restore_from_archive(ctx, &state, &parent, head.as_deref()).ok())
        .flatten();
    let command = args
        .command
        .or_else(|| CommandMode::from_str(&parent.command, true).ok())
        .unwrap_or(CommandMode::Auto);
    let continuation = Continuation {
        parent_id: id.clone(),
        workspace: parent.workspace.clone(),
        repo_path: parent.repo_path.clone(),
        base_commit: head,
        vm: same_vm.then(|| parent.vm_name.clone()),
        restore,
        restore_if_gone,
    };
    let start_args = StartArgs {
        prompts: vec![args.prompt],
        size: args.size,
        region: args.region,
        max_turns: args.max_turns.unwrap_or(parent.max_turns.max(1)),
        command,
        local: backend == Backend::Local,
        no_context: true,
        allow_secrets: false,
        json: args.json,
        max_vms: None,
        no_queue: args.no_queue,
        yes: args.yes,
        // Notify, retries, silence and the cap, as for any start (docs/unattended.md).
        unattended: args.unattended,
    };
    // The parent's backend, not the one the environment names now: a session that ran on Azure
    // is continued on Azure with AMPLIHACK_REMOTE_BACKEND=local exported, and the other way.
    let on_parents_backend = ctx.on_backend(backend);
    let ctx = on_parents_backend.as_ref().unwrap_or(ctx);
    launch::run_with(ctx, start_args, Some(&continuation))
}

fn still_active(parent: &Session) -> Error {
    Error::Failed(format!(
        "session {} is still {}: wait for it or kill it first",
        parent.session_id, parent.status
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, parent: Option<&str>, status: SessionStatus, started: bool) -> Session {
        let t = crate::core::model::parse_timestamp("2025-11-25T14:30:22Z").unwrap();
        let mut s: Session = serde_json::from_value(serde_json::json!({
            "session_id": id, "vm_name": "vm", "workspace": "/w/root", "tmux_session": id,
            "prompt": "p", "command": "auto", "max_turns": 10, "status": "completed",
            "memory_mb": 32768, "created_at": "2025-11-25T14:30:22Z",
        }))
        .unwrap();
        s.status = status;
        s.started_at = started.then_some(t);
        if let Some(p) = parent {
            s.set_parent_session_id(p);
        }
        s
    }

    fn state(sessions: Vec<Session>) -> State {
        State {
            sessions: sessions
                .into_iter()
                .map(|s| (s.session_id.clone(), s))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn lineage_runs_from_the_root_and_survives_a_loop() {
        let st = state(vec![
            session("a", None, SessionStatus::Completed, true),
            session("b", Some("a"), SessionStatus::Completed, true),
            session("c", Some("b"), SessionStatus::Running, true),
        ]);
        let ids: Vec<&str> = lineage(&st, &st.sessions["c"])
            .iter()
            .map(|s| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let looped = state(vec![
            session("x", Some("y"), SessionStatus::Completed, true),
            session("y", Some("x"), SessionStatus::Completed, true),
        ]);
        assert_eq!(lineage(&looped, &looped.sessions["x"]).len(), 2);
    }

    #[test]
    fn a_workspace_is_taken_by_a_follow_up_that_runs_or_ran_not_by_one_that_never_started() {
        let running = state(vec![
            session("a", None, SessionStatus::Completed, true),
            session("b", Some("a"), SessionStatus::Queued, false),
        ]);
        let e = workspace_taken(&running, "a").unwrap().to_string();
        assert!(e.contains("being continued by b (queued)"), "{e}");
        let ran = state(vec![
            session("a", None, SessionStatus::Completed, true),
            session("b", Some("a"), SessionStatus::Completed, true),
        ]);
        let e = workspace_taken(&ran, "a").unwrap().to_string();
        assert!(e.contains("continue b instead"), "{e}");
        assert!(
            workspace_taken(&ran, "b").is_none(),
            "the chain goes on from b"
        );
        let never = state(vec![
            session("a", None, SessionStatus::Completed, true),
            session("b", Some("a"), SessionStatus::Failed, false),
        ]);
        assert!(workspace_taken(&never, "a").is_none());
    }
}
