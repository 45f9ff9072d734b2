//! `pull`: brings sessions' commits home as branches `amplihack/<session-id>` in the local
//! repository they were started from. An archived session's commits come from its archive (no
//! call; its VM may be gone). The others are asked for in one call per VM, whatever their
//! number: a finished one is archived by that call, a running one sends its commits so far.
//! Work a session left uncommitted is in no commit, so in no bundle: each line says so.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::cli::PullArgs;
use crate::context;
use crate::core::model::lineage;
use crate::core::model::{Changes, Session, SessionStatus, State};
use crate::ctx::{Ctx, find_session};
use crate::error::{Error, Result};
use crate::exec;
use crate::refresh::{self, Collected};
use crate::remote::request::Want;
use crate::ui;
use crate::{pr, resume};

/// The repository `pull` runs in (its top), if any.
fn here(ctx: &Ctx) -> Result<Option<PathBuf>> {
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    Ok(context::repo_root(&cwd, ctx.settings.timeouts.local_git)?
        .and_then(|r| r.canonicalize().ok()))
}

/// The repository `pull` runs in and the commits sessions started from that it holds. A
/// session is of this repository when its start commit is here: a moved repository and any
/// other clone that has the commit qualify, wherever they are (and only a repository that has
/// it can take the session's bundle, whose commits build on it).
struct Here {
    root: Option<PathBuf>,
    bases: HashSet<String>,
}

impl Here {
    fn find(ctx: &Ctx, state: &State) -> Result<Here> {
        let root = here(ctx)?;
        let bases = match &root {
            Some(r) => {
                let asked: Vec<&str> = state
                    .sessions
                    .values()
                    .filter_map(|s| s.base_commit.as_deref())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                context::commits_present(r, &asked, ctx.settings.timeouts.local_git)?
            }
            None => HashSet::new(),
        };
        Ok(Here { root, bases })
    }

    fn has(&self, state: &State, session: &Session) -> bool {
        start_commit(state, session).is_some_and(|b| self.bases.contains(b))
    }
}

/// The commit a session's history starts from in the user's repository: its own start
/// commit, or for a follow-up that of the session its chain began with (a follow-up starts
/// from its parent's head, which only the archives hold).
fn start_commit<'a>(state: &'a State, session: &'a Session) -> Option<&'a str> {
    lineage(state, session)[0].base_commit.as_deref()
}

fn not_here(id: &str, state: &State, session: &Session, here: &Here) -> Error {
    let repo = session.repo_path.as_deref().unwrap_or("?");
    let base = start_commit(state, session).unwrap_or_default();
    let base = &base[..base.len().min(12)];
    match &here.root {
        None => Error::Failed(format!(
            "run pull inside {repo}, the repository session {id} was started from (or inside any clone of it that has commit {base})"
        )),
        Some(root) => Error::Failed(format!(
            "{} does not have commit {base}, which session {id} started from: run pull inside {repo}, the repository it was started from, or fetch that commit here first",
            root.display()
        )),
    }
}

/// Checks the sessions named on the command line, before any remote call: every id is known
/// (exit 3), has a repository, is of this one, and is not being launched.
fn named(ctx: &Ctx, state: &State, ids: &[String], here: &Here) -> Result<Vec<String>> {
    for id in ids {
        find_session(state, id)?;
    }
    let mut chosen = Vec::new();
    for id in ids {
        let s = find_session(state, id)?;
        let Some(_) = s.base_commit.as_deref() else {
            return Err(Error::Failed(format!(
                "session {id} was started without a repository (--no-context, or by another tool); there is nothing to pull"
            )));
        };
        if !here.has(state, s) {
            return Err(not_here(id, state, s, here));
        }
        if s.status == SessionStatus::Pending
            && !refresh::abandoned(s.owner.as_ref(), s.created_at, ctx.now(), &exec::liveness)
        {
            return Err(Error::Failed(format!(
                "session {id} is still being launched; pull it once 'amplihack remote list' shows it running"
            )));
        }
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    Ok(chosen)
}

/// `--all`: every finished session of this repository whose commits are not home yet. An
/// archived one is chosen when its archive holds commits other than those last pulled; one
/// still not archived (its VM did not answer) is chosen to say why it could not be pulled.
/// With `--pr` (`want_pr`), also every archived one with commits and no pull request yet: a
/// `pull --all` in the morning, then `pull --all --pr` once they are reviewed.
fn all_unpulled(ctx: &Ctx, state: &State, here: &Here, want_pr: bool) -> Vec<String> {
    let mut others = 0;
    let mut chosen = Vec::new();
    let mut sessions: Vec<&Session> = state
        .sessions
        .values()
        .filter(|s| !s.status.is_active() && s.base_commit.is_some())
        .collect();
    sessions.sort_by_key(|s| s.created_at);
    for s in sessions {
        if !here.has(state, s) {
            others += 1;
            continue;
        }
        let unpulled = if s.archived_at.is_some() {
            let head = ctx
                .archive
                .result(&s.session_id)
                .ok()
                .flatten()
                .and_then(|r| r.head_commit);
            ctx.archive.bundle(&s.session_id).is_some()
                && (s.pulled_commit.is_none()
                    || s.pulled_commit != head
                    || (want_pr && s.pr_url().is_none()))
        } else {
            refresh::unarchived(state, s)
        };
        if unpulled {
            chosen.push(s.session_id.clone());
        }
    }
    if others > 0 {
        ui::progress(&format!(
            "{others} finished session(s) of other repositories left out: run pull --all inside them."
        ));
    }
    chosen
}

/// What one session's pull came to.
enum Outcome {
    Fetched(context::Pulled),
    NothingNew,
    Failed(Error),
}

/// Where a session's commits are now: its archive's bundle, a running session's snapshot, or
/// nowhere (with why).
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
    Empty,
}

fn source(ctx: &Ctx, s: &Session, collected: &Collected) -> Result<Source> {
    let id = s.session_id.as_str();
    if s.archived_at.is_some() && ctx.archive.has(id) {
        if let Some(file) = ctx.archive.bundle(id) {
            return Ok(Source::File(file));
        }
        let meta = ctx.archive.meta(id)?.unwrap_or_default();
        return match (meta.bundle_error, meta.commits) {
            (Some(why), _) => Err(Error::Failed(format!(
                "the commits of session {id} could not be bundled on its VM: {why}"
            ))),
            (None, Some(n)) if n > 0 => Err(Error::Failed(format!(
                "the archive of session {id} lacks the bundle of its {n} commit(s)"
            ))),
            _ => Ok(Source::Empty),
        };
    }
    if let Some(snapshot) = collected.snapshots.get(id) {
        return match (&snapshot.bundle, &snapshot.error) {
            (Some(bytes), _) => Ok(Source::Bytes(bytes.clone())),
            (None, Some(why)) => Err(Error::Failed(format!(
                "the commits of session {id} could not be bundled on its VM: {why}"
            ))),
            (None, None) => Ok(Source::Empty),
        };
    }
    if let Some(e) = collected.failed_vms.get(&s.vm_name) {
        return Err(e.replicate());
    }
    if let Some(why) = collected.archive_failures.get(id) {
        return Err(Error::Failed(format!(
            "the results of session {id} came home but could not be archived: {why}"
        )));
    }
    Err(Error::Failed(format!(
        "VM '{}' sent neither the archive nor the commits of session {id}",
        s.vm_name
    )))
}

/// The branch a session's commits come home to: `--branch`, else `amplihack/<session-id>`.
fn branch_of(s: &Session, args: &PullArgs) -> String {
    args.branch
        .clone()
        .unwrap_or_else(|| format!("amplihack/{}", s.session_id))
}

fn pull_one(
    ctx: &Ctx,
    state: &State,
    s: &Session,
    repo: &Path,
    collected: &Collected,
    args: &PullArgs,
) -> Outcome {
    // A follow-up's branch holds its chain's commits and its own: the commits of the sessions
    // before it come from their archives first, and everything counts from the chain's start.
    let chain = lineage(state, s);
    let base = chain[0].base_commit.as_deref().unwrap_or_default();
    let mut earlier: Vec<PathBuf> = Vec::new();
    for a in &chain[..chain.len() - 1] {
        match ctx.archive.bundle(&a.session_id) {
            Some(b) => earlier.push(b),
            None if a.archived_at.is_none() || !ctx.archive.has(&a.session_id) => {
                return Outcome::Failed(Error::Failed(format!(
                    "session {} continues {}, whose results are not home yet: run 'amplihack remote pull {}' first",
                    s.session_id, a.session_id, a.session_id
                )));
            }
            None => {}
        }
    }
    let branch = branch_of(s, args);
    let target = context::Target {
        branch: &branch,
        // A branch of another name than the session's own was never put there by a pull.
        last_pulled: s.pulled_commit.as_deref().filter(|_| args.branch.is_none()),
        force: args.force,
    };
    let timeout = ctx.settings.timeouts.local_git;
    let source = source(ctx, s, collected);
    if source.is_ok()
        && let Err(e) = context::fetch_objects(repo, &earlier, timeout)
    {
        return Outcome::Failed(e);
    }
    let fetched = match source {
        Ok(Source::File(file)) => context::fetch_bundle_file(repo, &file, base, &target, timeout),
        Ok(Source::Bytes(bytes)) => context::fetch_bundle(repo, &bytes, base, &target, timeout),
        // No commits of its own: its branch is where the last commits of its chain left it.
        Ok(Source::Empty) => match earlier.last() {
            Some(file) => context::fetch_bundle_file(repo, file, base, &target, timeout),
            None => return Outcome::NothingNew,
        },
        Err(e) => return Outcome::Failed(e),
    };
    match fetched {
        Ok(p) => Outcome::Fetched(p),
        Err(e) => Outcome::Failed(e),
    }
}

/// What a pull did to its branch, in one line.
fn fetched_line(p: &context::Pulled) -> String {
    let what = format!(
        "{} commit(s) ({} file(s) changed)",
        p.commits, p.files_changed
    );
    match p.moved {
        context::BranchMove::Created | context::BranchMove::FastForward => format!(
            "Fetched {} commit(s) into branch {} ({} file(s) changed).\n",
            p.commits, p.branch, p.files_changed
        ),
        context::BranchMove::UpToDate => {
            format!("Branch {} already holds the session's {what}.\n", p.branch)
        }
        context::BranchMove::Reset => format!(
            "Reset branch {} to the session's {what}; what it held before is in git's reflog ({}@{{1}}).\n",
            p.branch, p.branch
        ),
    }
}

/// The note for work a finished session left uncommitted: it is in no commit, so not in what
/// came home.
fn uncommitted_note(ctx: &Ctx, s: &Session) -> Option<String> {
    let result = ctx.archive.result(&s.session_id).ok().flatten()?;
    let Changes {
        files,
        insertions,
        deletions,
    } = result.uncommitted_work()?;
    Some(format!(
        "  Not in it: {files} file(s) of work left uncommitted in its workspace (+{insertions} -{deletions}); its archive keeps it as a patch, which pull --resume applies.\n"
    ))
}

/// `--all` first asks, in one call per VM, about this repository's sessions that may have
/// ended (pending or running in the state) or whose results are not home: the call settles
/// them and brings the archives of those that ended.
fn all_plan(ctx: &Ctx, state: &State, here: &Here) -> BTreeMap<String, Vec<(String, Want)>> {
    let due = refresh::sessions_to_probe(state, ctx.now(), &exec::liveness);
    let mut plan: BTreeMap<String, Vec<(String, Want)>> = BTreeMap::new();
    for s in state.sessions.values() {
        let targets = due.get(&s.vm_name);
        let want = if targets.is_some_and(|t| t.claim.contains(&s.session_id)) {
            // A pending session whose start died: claimed, as a refresh would.
            Want::Claim
        } else if targets.is_some_and(|t| t.running.contains(&s.session_id))
            || refresh::unarchived(state, s)
        {
            Want::Archive
        } else {
            continue;
        };
        if here.has(state, s) {
            plan.entry(s.vm_name.clone())
                .or_default()
                .push((s.session_id.clone(), want));
        }
    }
    plan
}

/// Asks the VMs in `plan` (one call each, in parallel) and commits what they said.
fn ask(
    ctx: &Ctx,
    state: State,
    plan: &BTreeMap<String, Vec<(String, Want)>>,
) -> Result<(State, Collected)> {
    if plan.is_empty() {
        return Ok((state, Collected::default()));
    }
    ui::progress(&format!(
        "Asking {} VM(s) about {} session(s)...",
        plan.len(),
        plan.values().map(Vec::len).sum::<usize>()
    ));
    let collected = refresh::collect(ctx, &state, plan)?;
    let state = refresh::commit_collected(ctx, &collected, state)?;
    Ok((state, collected))
}

pub fn run(ctx: &Ctx, args: PullArgs) -> Result<()> {
    let state = ctx.store.load()?;
    if args.branch.is_some() && args.session_ids.len() > 1 {
        return Err(Error::InvalidArgs(
            "--branch names the branch of one session: give one session id with it".into(),
        ));
    }
    if args.resume && args.session_ids.len() > 1 {
        return Err(Error::InvalidArgs(
            "--resume hands one session back: give one session id with it".into(),
        ));
    }
    let here = Here::find(ctx, &state)?;
    let (state, collected, chosen) = if args.all {
        if here.root.is_none() {
            return Err(Error::Failed(
                "pull --all fetches into the repository the sessions were started from: run it inside that repository".into(),
            ));
        }
        let plan = all_plan(ctx, &state, &here);
        let (state, collected) = ask(ctx, state, &plan)?;
        let chosen = all_unpulled(ctx, &state, &here, args.pr);
        (state, collected, chosen)
    } else {
        let chosen = named(ctx, &state, &args.session_ids, &here)?;
        // One call per VM for the sessions whose commits are not in an archive: a finished
        // one is archived by it, a running one sends its commits so far.
        let mut plan: BTreeMap<String, Vec<(String, Want)>> = BTreeMap::new();
        for id in &chosen {
            let s = &state.sessions[id];
            if s.archived_at.is_none() || !ctx.archive.has(id) {
                // A pending one here is one whose start died (`named` refuses the others):
                // claimed, so the call can settle it.
                let want = if s.status == SessionStatus::Pending {
                    Want::Claim
                } else {
                    Want::Commits
                };
                plan.entry(s.vm_name.clone())
                    .or_default()
                    .push((id.clone(), want));
            }
        }
        let (state, collected) = ask(ctx, state, &plan)?;
        (state, collected, chosen)
    };
    if chosen.is_empty() {
        return ui::print(
            "Nothing to pull: every finished session of this repository is pulled or made no commits.\n",
        );
    }
    let repo = here
        .root
        .expect("checked: every chosen session is of this repository");

    let mut text = String::new();
    let mut pulled: Vec<(String, String)> = Vec::new();
    // Every session whose branch is home (or that has none: no commits), for --pr and --resume.
    let mut home: Vec<pr::Pulled> = Vec::new();
    let mut first_error = None;
    let mut failures = 0;
    for id in &chosen {
        let s = &state.sessions[id];
        match pull_one(ctx, &state, s, &repo, &collected, &args) {
            Outcome::Fetched(p) => {
                text.push_str(&fetched_line(&p));
                if s.status.is_active() {
                    text.push_str(
                        "  The session is still running: these are its commits so far.\n",
                    );
                }
                home.push(pr::Pulled {
                    session: s,
                    branch: p.branch.clone(),
                    base: start_commit(&state, s).unwrap_or_default().to_string(),
                    head: Some(p.head.clone()),
                });
                pulled.push((id.clone(), p.head));
            }
            Outcome::NothingNew => {
                home.push(pr::Pulled {
                    session: s,
                    branch: branch_of(s, &args),
                    base: start_commit(&state, s).unwrap_or_default().to_string(),
                    head: None,
                });
                let base = s.base_commit.as_deref().unwrap_or_default();
                text.push_str(&format!(
                    "Nothing new: session {id} has no commits beyond {}.\n",
                    &base[..base.len().min(12)]
                ));
            }
            Outcome::Failed(e) => {
                ui::warn(&format!("{id}: not pulled: {e}"));
                failures += 1;
                first_error.get_or_insert(e);
                continue;
            }
        }
        if !s.status.is_active()
            && let Some(note) = uncommitted_note(ctx, s)
        {
            text.push_str(&note);
        }
    }
    if !pulled.is_empty() {
        ctx.store.update(|st| {
            for (id, head) in &pulled {
                if let Some(s) = st.sessions.get_mut(id) {
                    s.pulled_commit = Some(head.clone());
                }
            }
            Ok(())
        })?;
    }
    ui::print_text(&text)?;
    // The branches are home (and recorded) whatever happens next.
    if first_error.is_none()
        && args.resume
        && let Some(p) = home.first()
    {
        resume::hand_over(ctx, p, &repo, args.worktree.as_deref())?;
    }
    let opened = if args.pr {
        pr::open_all(
            ctx,
            &state,
            &home,
            &repo,
            &pr::Options {
                draft: args.draft,
                base: args.base.clone(),
            },
        )
    } else {
        Ok(())
    };
    let pulled_all = match first_error {
        Some(e) if chosen.len() > 1 => Err(match e.exit_code() {
            1 => Error::Failed(format!(
                "{failures} of {} session(s) could not be pulled (see above)",
                chosen.len()
            )),
            _ => e,
        }),
        Some(e) => Err(e),
        None => Ok(()),
    };
    pulled_all.and(opened)
}
