//! The flow of `start` (and of `continue`, which starts one follow-up the same way): reserve
//! every session and slot in one locked transaction (status `pending`),
//! release the lock, provision and launch per VM in parallel (one launch call per VM carries
//! the script, the secret and the git bundle), then commit each VM's results.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use chrono::{DateTime, Utc};

use crate::cli::StartArgs;
use crate::context::{self, RepoContext};
use crate::core::model::{Backend, Owner, Session, SessionStatus, State, VmState};
use crate::core::pool::{self, LOCAL_REGION, LOCAL_VM_NAME, Placement, SizeSpec};
use crate::core::unattended::{self, Unattended};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::remote::answer::LaunchResult;
use crate::remote::request::{LaunchPlan, LaunchSession};
use crate::remote::transport::VmRef;
use crate::remote::{answer, request};
use crate::ui::progress::{self, Stage};
use crate::ui::render::{self, StartLine};
use crate::{core::lifecycle, core::naming, exec, parallel, provision, refresh, ui};

/// Reserves `count` new VMs of the start's size and region, owned by `owner`.
fn reserve_new_vms(
    ctx: &Ctx,
    st: &mut State,
    target: &Target,
    count: usize,
    owner: &Owner,
    now: DateTime<Utc>,
) -> Vec<String> {
    provision::reserve_vms(
        st,
        count,
        target.size,
        &target.region,
        &provision::Reservation {
            user: &ctx.settings.user,
            resource_group: ctx.transports.azlin.default_resource_group(),
            owner,
        },
        now,
    )
}

/// What this start asks of the pool.
fn plan_request(target: &Target, count: usize) -> pool::Request<'_> {
    pool::Request {
        count,
        backend: target.backend,
        region: &target.region,
        new_vm_capacity: (target.backend == Backend::Azure).then_some(target.size.max_sessions),
        max_vms: target.max_vms.map(|m| m as usize),
        // Without a cap, Azure provisions on demand (the specification): no queue.
        queue: target.queue && (target.backend == Backend::Local || target.max_vms.is_some()),
        join_provisioning: true,
    }
}

/// A follow-up of an ended session (`continue`): one session that carries on in its parent's
/// workspace, with its parent's conversation.
#[derive(Debug, Clone)]
pub(crate) struct Continuation {
    pub parent_id: String,
    /// The parent's workspace, as the state records it.
    pub workspace: String,
    pub repo_path: Option<String>,
    /// The parent's head commit: the follow-up's commits are counted from it.
    pub base_commit: Option<String>,
    /// The parent's VM, when it still has the workspace; `None`: the follow-up goes to any VM
    /// with room (or a new one) and the workspace is rebuilt there from the archive.
    pub vm: Option<String>,
    pub restore: Option<request::Restore>,
    /// What rebuilds the workspace should the parent's VM turn out to be gone when the
    /// follow-up is launched there (deleted behind our back): the follow-up then moves to
    /// another VM like any session, and its workspace is rebuilt there.
    pub restore_if_gone: Option<request::Restore>,
}

impl Continuation {
    /// The continuation of a follow-up moved off its parent's VM, which is gone.
    fn moved(&self) -> Continuation {
        Continuation {
            vm: None,
            restore: self
                .restore
                .clone()
                .or_else(|| self.restore_if_gone.clone()),
            restore_if_gone: None,
            ..self.clone()
        }
    }
}

use crate::core::naming::UNPLACED_VM;

fn random_u16() -> u16 {
    // RandomState is seeded per process and per call: enough to spread ids, which are
    // checked for uniqueness against the state under the lock anyway.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.write_u32(std::process::id());
    h.finish() as u16
}

pub fn unique_session_id(state: &State, taken: &[String], now: DateTime<Utc>) -> String {
    loop {
        let id = naming::session_id(now, random_u16());
        if !state.sessions.contains_key(&id) && !taken.contains(&id) {
            return id;
        }
    }
}

#[derive(Debug, Clone)]
struct Reserved {
    id: String,
    vm: String,
    vm_is_new: bool,
    /// Its VM is being provisioned by another start: wait for it, then launch.
    joins_provisioning: bool,
    /// Reserved a slot and waits for launch (else it failed at once: no room).
    pending: bool,
    /// The record as reserved.
    record: Session,
}

struct Target {
    backend: Backend,
    region: String,
    size: &'static SizeSpec,
    local_capacity: Option<u32>,
    workspace_root: String,
    /// The most pool VMs of the region this start may end up with (Azure).
    max_vms: Option<u32>,
    /// Prompts beyond the free slots wait in a VM's queue (else they fail).
    queue: bool,
    /// Retries, silence, the cap, notify (docs/unattended.md), recorded with each session.
    unattended: Unattended,
    /// Where the VMs send notifications: a secret, never recorded; handed over like the key.
    notify_url: Option<String>,
}

/// What the sessions start from: a repository's HEAD, or (a follow-up) an ended session.
#[derive(Clone, Copy)]
struct Origin<'a> {
    repo: Option<&'a RepoContext>,
    continuation: Option<&'a Continuation>,
}

fn reserve(
    st: &mut State,
    ctx: &Ctx,
    args: &StartArgs,
    target: &Target,
    origin: Origin,
    owner: &Owner,
    now: DateTime<Utc>,
) -> Vec<Reserved> {
    let Origin { repo, continuation } = origin;
    if let Some(capacity) = target.local_capacity {
        let local = st
            .vm_pool
            .entry(LOCAL_VM_NAME.to_string())
            .or_insert_with(|| pool::local_vm_entry(capacity, now));
        local.capacity = capacity;
    }
    let plan = match continuation.and_then(|c| c.vm.clone()) {
        // Its parent's VM: the VM queues it when it is full.
        Some(vm) => pool::Plan {
            placements: vec![Placement::Existing(vm)],
            new_vms: 0,
        },
        None => pool::plan(st, &plan_request(target, args.prompts.len())),
    };
    let new_vms = reserve_new_vms(ctx, st, target, plan.new_vms, owner, now);
    let mut reserved: Vec<Reserved> = Vec::with_capacity(args.prompts.len());
    for (prompt, placement) in args.prompts.iter().zip(plan.placements) {
        let taken: Vec<String> = reserved.iter().map(|r| r.id.clone()).collect();
        let id = unique_session_id(st, &taken, now);
        let joins_provisioning = matches!(placement, Placement::Provisioning(_));
        let (vm, vm_is_new, status, error) = match placement {
            Placement::Existing(vm) | Placement::QueuedOn(vm) | Placement::Provisioning(vm) => {
                (vm, false, SessionStatus::Pending, None)
            }
            Placement::New(i) | Placement::QueuedOnNew(i) => {
                (new_vms[i].clone(), true, SessionStatus::Pending, None)
            }
            Placement::Unplaced if target.backend == Backend::Local => {
                let cap = target.local_capacity.unwrap_or(0);
                (
                    LOCAL_VM_NAME.to_string(),
                    false,
                    SessionStatus::Failed,
                    Some(format!(
                        "no free slot on '{LOCAL_VM_NAME}' (all {cap} in use) and --no-queue; wait for a session to finish, raise AMPLIHACK_LOCAL_SLOTS, or let it queue"
                    )),
                )
            }
            Placement::Unplaced => (
                UNPLACED_VM.to_string(),
                false,
                SessionStatus::Failed,
                Some(if target.queue {
                    format!(
                        "the pool may not grow past {} VM(s) in {}, and none of them is ready to queue on yet (still being provisioned); try again in a few minutes, or raise --max-vms",
                        target.max_vms.unwrap_or(0),
                        target.region
                    )
                } else {
                    format!(
                        "no free slot in the pool, which may not grow past {} VM(s) in {}, and --no-queue; raise --max-vms, or let it queue",
                        target.max_vms.unwrap_or(0),
                        target.region
                    )
                }),
            ),
        };
        let finished = !status.is_active();
        let mut record = Session {
            session_id: id.clone(),
            vm_name: vm.clone(),
            workspace: continuation.map_or_else(
                || request::workspace_path(&target.workspace_root, &id),
                |c| c.workspace.clone(),
            ),
            tmux_session: id.clone(),
            prompt: prompt.clone().into(),
            command: args.command.as_str().into(),
            max_turns: args.max_turns,
            status,
            memory_mb: pool::SESSION_MEMORY_MB,
            created_at: now,
            started_at: None,
            completed_at: finished.then_some(now),
            exit_code: None,
            error,
            repo_path: repo.map(|r| r.root.to_string_lossy().into_owned()),
            base_commit: repo.map(|r| r.head.clone()),
            owner: (!finished).then(|| owner.clone()),
            kill_request: None,
            archived_at: None,
            pulled_commit: None,
            unattended: Some(target.unattended.clone()),
            detail: None,
            silent_since: None,
            extra: Default::default(),
            naive_timestamps: false,
        };
        if let Some(c) = continuation {
            record.repo_path = c.repo_path.clone();
            record.base_commit = c.base_commit.clone();
            record.set_parent_session_id(&c.parent_id);
        }
        st.sessions.insert(id.clone(), record.clone());
        reserved.push(Reserved {
            id,
            vm,
            vm_is_new,
            joins_provisioning,
            pending: !finished,
            record,
        });
    }
    reserved
}

/// What happened to one session of this start.
#[derive(Debug, Clone)]
enum Outcome {
    /// Running since the VM's recorded start time (when it reported one).
    Launched {
        started_at: Option<DateTime<Utc>>,
    },
    Failed {
        code: i32,
        message: String,
    },
    /// Waiting in its VM's queue, at this place of this many.
    Queued {
        place: u32,
        of: u32,
    },
    /// The launch call's answer was lost (a second Ctrl+C cut it short, the connection
    /// dropped, it timed out): the session may run. It stays `pending`, unconfirmed, until its
    /// VM says (a probe, or the claim a refresh makes once this start has ended). `code` is
    /// this start's exit code for it.
    Unconfirmed {
        code: i32,
        message: String,
    },
    /// Its pool VM no longer exists (azlin says so; nothing was launched): the session moves
    /// to another VM rather than failing.
    VmGone {
        message: String,
    },
}

impl Outcome {
    fn from_error(e: &Error) -> Self {
        match e {
            Error::Interrupted => Outcome::Failed {
                code: 130,
                message: "interrupted before launch".into(),
            },
            other => Outcome::Failed {
                code: other.exit_code(),
                message: other.to_string(),
            },
        }
    }

    /// The outcome of a launch call that failed. Only a failure that proves the script never
    /// ran (`Error::ran_nothing`: azlin missing, not logged in, the VM not found, ssh never
    /// connected) fails its sessions; any other (a dropped connection, a timeout, garbage) may
    /// have come after agents started, which run on: their sessions stay unconfirmed.
    fn from_launch_error(e: &Error) -> Self {
        match e {
            Error::Interrupted => Outcome::Unconfirmed {
                code: 130,
                message: "launch was interrupted; the next refresh settles whether it runs".into(),
            },
            e if e.ran_nothing() => Outcome::from_error(e),
            _ => Outcome::Unconfirmed {
                code: e.exit_code(),
                message: format!(
                    "its launch is unconfirmed ({e}); the next refresh asks its VM whether it runs"
                ),
            },
        }
    }
}

struct VmJob<'a> {
    vm: String,
    vm_is_new: bool,
    /// Another start provisions it: wait until it is ready.
    joins_provisioning: bool,
    backend: Backend,
    resource_group: Option<String>,
    /// How many agents the VM may run at once (the VM enforces it).
    capacity: u32,
    sessions: Vec<&'a Reserved>,
}

/// Waits, reading the state (no azlin call), until the VM another start is provisioning is
/// ready (`Ok(Ok(()))`) or will not be (`Ok(Err(why))`: its creation failed, or its owner died
/// first and the reservation was recovered here as by any command).
fn wait_until_provisioned(ctx: &Ctx, vm: &str) -> Result<std::result::Result<(), String>> {
    progress::vm(vm).stage(
        Stage::Provisioning,
        "another start is creating it; waiting to share it",
    );
    // azlin's own limit for a creation, and a minute for its owner to commit.
    let deadline = std::time::Instant::now()
        + ctx.settings.timeouts.provision
        + std::time::Duration::from_secs(60);
    loop {
        let st = ctx.store.load()?;
        let gone = |why: &str| {
            Ok(Err(format!(
                "VM {vm}, which another start was creating for it, {why}"
            )))
        };
        match st.vm_pool.get(vm) {
            Some(e) if e.state == VmState::Ready => return Ok(Ok(())),
            Some(e) if e.state == VmState::Provisioning => {
                // Recovered only when its owner is known dead (never a state write per poll
                // for an owner that cannot be checked).
                let dead = e
                    .owner
                    .as_ref()
                    .is_some_and(|o| crate::exec::liveness(o) == crate::exec::Liveness::Dead);
                if dead {
                    let now = ctx.now();
                    ctx.store.update(|st| {
                        refresh::recover_abandoned(st, now, &crate::exec::liveness);
                        Ok(())
                    })?;
                    continue;
                }
            }
            Some(e) => {
                return gone(&format!(
                    "did not come up: {}",
                    e.error.as_deref().unwrap_or("its provisioning failed")
                ));
            }
            None => return gone("was never created"),
        }
        if std::time::Instant::now() >= deadline {
            return gone("was still being created after azlin's time for a creation");
        }
        crate::interrupt::sleep(std::time::Duration::from_millis(500))?;
    }
}

fn launch_on_vm(
    ctx: &Ctx,
    job: &VmJob,
    target: &Target,
    args: &StartArgs,
    repo: Option<&RepoContext>,
    continuation: Option<&Continuation>,
    may_move: bool,
) -> Vec<(String, Outcome)> {
    let all = |o: Outcome| {
        job.sessions
            .iter()
            .map(|r| (r.id.clone(), o.clone()))
            .collect::<Vec<_>>()
    };
    if job.vm_is_new {
        let outcome = provision::create_vm(
            ctx,
            &job.vm,
            target.size.sku,
            &target.region,
            job.resource_group.as_deref(),
        );
        if let Err(e) = provision::commit_vm(ctx, &job.vm, &outcome) {
            return all(Outcome::from_error(&e));
        }
        if let Err(e) = outcome {
            return all(Outcome::from_error(&e));
        }
    }
    if job.joins_provisioning {
        match wait_until_provisioned(ctx, &job.vm) {
            Ok(Ok(())) => {}
            // It did not come up: its sessions go elsewhere (once), else fail saying why.
            Ok(Err(why)) if may_move => return all(Outcome::VmGone { message: why }),
            Ok(Err(why)) => {
                return all(Outcome::Failed {
                    code: 1,
                    message: why,
                });
            }
            Err(e) => return all(Outcome::from_error(&e)),
        }
    }
    if crate::interrupt::requested() {
        return all(Outcome::from_error(&Error::Interrupted));
    }
    match repo {
        Some(r) => progress::vm(&job.vm).stage(
            Stage::SendingContext,
            &format!(
                "git bundle ({} KB), then launching {} session(s)",
                r.bundle.len().div_ceil(1024),
                job.sessions.len()
            ),
        ),
        None => progress::vm(&job.vm).stage(
            Stage::Launching,
            &format!("{} session(s)", job.sessions.len()),
        ),
    }
    let agent_words = ctx.settings.agent_words();
    // The session's own record as the VM keeps it: what it is, without who launches it.
    let records: Vec<String> = job
        .sessions
        .iter()
        .map(|r| {
            let mut record = r.record.clone();
            record.owner = None;
            serde_json::to_string(&record).expect("a session serializes")
        })
        .collect();
    let plan = LaunchPlan {
        sessions: job
            .sessions
            .iter()
            .zip(&records)
            .map(|(r, record)| LaunchSession {
                id: &r.id,
                prompt: &r.record.prompt,
                command: args.command.as_str(),
                max_turns: args.max_turns,
                record,
            })
            .collect(),
        agent_words: &agent_words,
        api_key: ctx.settings.api_key.as_deref(),
        notify_url: target.notify_url.as_deref(),
        workspace_root: &target.workspace_root,
        bundle: repo.map(|r| (r.bundle_name.as_str(), r.bundle.as_slice())),
        wait_for_cloud_init: job.backend == Backend::Azure,
        capacity: Some(job.capacity),
        queue: target.queue,
        continuation: continuation.map(|c| request::ContinueLaunch {
            workspace: &c.workspace,
            restore: c.restore.as_ref(),
        }),
    };
    let vm = VmRef {
        name: job.vm.clone(),
        backend: job.backend,
        resource_group: match job.backend {
            Backend::Azure => job.resource_group.clone(),
            Backend::Local => None,
        },
    };
    let input = request::launch_input(&plan);
    // A VM azlin has just created may not answer ssh yet; the launch script is idempotent,
    // so it is safe to send again. Pool VMs get no retry: a failure there is news.
    let attempts = if job.vm_is_new || job.joins_provisioning {
        ctx.settings.new_vm_ssh_attempts.max(1)
    } else {
        1
    };
    let mut attempt = 1;
    let result = loop {
        let result = ctx.run_on(
            &vm,
            input.clone(),
            ctx.settings.timeouts.launch,
            OnInterrupt::FinishUnlessRepeated,
        );
        match result {
            Err(Error::VmUnreachable { ref detail, .. }) if attempt < attempts => {
                let delay = ctx.settings.new_vm_ssh_retry_delay;
                progress::vm(&job.vm).stage(
                    Stage::WaitingForSsh,
                    &format!(
                        "does not answer ssh yet ({detail}); retrying in {}s ({}/{attempts})",
                        delay.as_secs_f64(),
                        attempt + 1
                    ),
                );
                if let Err(e) = crate::interrupt::sleep(delay) {
                    break Err(e);
                }
                attempt += 1;
            }
            other => break other,
        }
    };
    match result {
        Ok(out) => {
            let results = answer::parse_launch(&out.stdout);
            job.sessions
                .iter()
                .map(|r| {
                    let o = match results.get(&r.id) {
                        Some(LaunchResult::Launched { started_at }) => Outcome::Launched {
                            started_at: *started_at,
                        },
                        Some(LaunchResult::Queued { place, of }) => Outcome::Queued {
                            place: *place,
                            of: *of,
                        },
                        Some(LaunchResult::Failed(why)) => Outcome::Failed {
                            code: 1,
                            message: why.clone(),
                        },
                        None => Outcome::Failed {
                            code: 1,
                            message: format!(
                                "the launch script on {} did not report this session",
                                job.vm
                            ),
                        },
                    };
                    (r.id.clone(), o)
                })
                .collect()
        }
        // A pool VM deleted behind our back: nothing ran; its sessions go elsewhere.
        Err(e @ Error::VmNotFound { .. })
            if may_move && !job.vm_is_new && !job.joins_provisioning =>
        {
            all(Outcome::VmGone {
                message: e.to_string(),
            })
        }
        Err(e) => all(Outcome::from_launch_error(&e)),
    }
}

/// Records one VM's results; returns the sessions as they now stand.
fn commit_outcomes(ctx: &Ctx, outcomes: &[(String, Outcome)]) -> Result<Vec<Session>> {
    let now = ctx.now();
    ctx.store.update(|st| {
        for (id, outcome) in outcomes {
            // The lifecycle decides what each answer makes of the session (a refresh may
            // have settled it first: then the late answer changes nothing).
            let event = match outcome {
                Outcome::Launched { started_at } => lifecycle::Event::Launched {
                    started_at: *started_at,
                },
                Outcome::Queued { .. } => lifecycle::Event::LaunchQueued,
                Outcome::Failed { message, .. } => lifecycle::Event::Refused(message.clone()),
                Outcome::Unconfirmed { message, .. } => {
                    lifecycle::Event::Unconfirmed(message.clone())
                }
                Outcome::VmGone { message } => lifecycle::Event::Refused(message.clone()),
            };
            refresh::settle(st, id, &event, now, &exec::liveness);
        }
        Ok(outcomes
            .iter()
            .filter_map(|(id, _)| st.sessions.get(id).cloned())
            .collect())
    })
}

/// Where this start's sessions go: backend, region, size, workspace root.
fn target(ctx: &Ctx, args: &StartArgs) -> Result<Target> {
    let backend = if args.local {
        Backend::Local
    } else {
        ctx.settings.backend
    };
    let size = pool::size_of(args.size.letter());
    let u = &args.unattended;
    let (unattended, notify_url) = unattended::resolve(
        &unattended::Given {
            notify: u.notify.clone(),
            retries: u.retries,
            silent_minutes: u.silent_minutes,
            max_hours: u.max_hours,
        },
        |name| std::env::var(name).ok(),
    )?;
    let region = match backend {
        Backend::Local => LOCAL_REGION.to_string(),
        Backend::Azure => args
            .region
            .clone()
            .unwrap_or_else(|| ctx.settings.region.clone()),
    };
    let workspace_root = match backend {
        Backend::Azure => ctx.settings.remote_workspace_root.clone(),
        Backend::Local => dirs::home_dir()
            .ok_or_else(|| {
                Error::Failed("cannot find the home directory for local workspaces".into())
            })?
            .join(".amplihack")
            .join("workspaces")
            .to_string_lossy()
            .into_owned(),
    };
    Ok(Target {
        backend,
        region,
        size,
        local_capacity: (backend == Backend::Local).then(|| ctx.local_capacity()),
        workspace_root,
        max_vms: match backend {
            Backend::Azure => args.max_vms.or(ctx.settings.max_vms),
            Backend::Local => None,
        },
        queue: !args.no_queue,
        unattended,
        notify_url,
    })
}

/// Why `parent`'s workspace cannot take a follow-up now: a follow-up of it is under way, or
/// one has already worked in it (its workspace holds that one's work: continue that one).
/// Checked again in the transaction that reserves the follow-up, so two `continue`s of one
/// session never both run in its workspace.
pub(crate) fn workspace_taken(state: &State, parent_id: &str) -> Option<Error> {
    let child = state
        .sessions
        .values()
        .filter(|s| s.parent_session_id() == Some(parent_id))
        .find(|s| s.status.is_active() || s.started_at.is_some())?;
    Some(if child.status.is_active() {
        Error::Failed(format!(
            "session {parent_id} is being continued by {} ({}): wait for it or kill it first",
            child.session_id, child.status
        ))
    } else {
        Error::Failed(format!(
            "session {parent_id} was continued by {} already, whose work its workspace now holds: continue {} instead",
            child.session_id, child.session_id
        ))
    })
}

pub fn run(ctx: &Ctx, args: StartArgs) -> Result<()> {
    run_with(ctx, args, None)
}

/// `start`, or with a continuation the one follow-up `continue` starts: reserved, placed,
/// launched, committed and reported the same way.
pub(crate) fn run_with(
    ctx: &Ctx,
    args: StartArgs,
    continuation: Option<&Continuation>,
) -> Result<()> {
    // The local backend's default agent is the Python amplihack on PATH: found, or refused.
    let local_ctx = ctx.for_start(args.local)?;
    let ctx = local_ctx.as_ref().unwrap_or(ctx);
    // Everything that can fail locally fails before any remote work.
    if ctx.settings.api_key.is_none() && ctx.settings.agent_override.is_none() {
        return Err(Error::MissingApiKey);
    }
    let target = target(ctx, &args)?;
    let repo = if args.no_context || continuation.is_some() {
        None
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?;
        Some(context::prepare(
            &cwd,
            args.allow_secrets,
            ctx.settings.timeouts.local_git,
        )?)
    };
    if continuation.is_none_or(|c| c.vm.is_none()) {
        refresh_if_pool_looks_full(ctx, &target, args.prompts.len())?;
    }
    let allowed_new_vms = confirm_new_vms(ctx, &target, &args)?;
    if !args.json {
        // A closed stdout (`start ... | true`) must not keep the prompts from starting: the
        // report at the end meets the same broken pipe, after the work.
        match ui::print(&format!("Starting {} session(s)...\n", args.prompts.len())) {
            Err(e) if !e.is_broken_pipe() => return Err(e),
            _ => {}
        }
    }

    let now = ctx.now();
    let owner = crate::exec::current_owner();
    let reserved = ctx.store.update(|st| {
        // A dead start's reservations must not hold slots this start could use.
        refresh::recover_abandoned(st, now, &crate::exec::liveness);
        // Checked under the lock: two follow-ups never share their parent's workspace.
        if let Some(e) =
            continuation.and_then(|c| workspace_taken(st, &c.parent_id))
        {
            return Err(e);
        }
        let origin = Origin {
            repo: repo.as_ref(),
            continuation,
        };
        let reserved = reserve(st, ctx, &args, &target, origin, &owner, now);
        let new_vms = reserved
            .iter()
            .filter(|r| r.vm_is_new)
            .map(|r| &r.vm)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if new_vms > allowed_new_vms {
            // Dropped with the transaction: nothing is reserved.
            return Err(Error::Failed(format!(
                "the pool changed while this start waited for confirmation: it would now create {new_vms} new VMs; run it again"
            )));
        }
        Ok(reserved)
    })?;
    let (outcomes, records) =
        launch_all(ctx, &reserved, &target, &args, repo.as_ref(), continuation)?;

    let sessions: Vec<&Session> = reserved.iter().filter_map(|r| records.get(&r.id)).collect();
    if args.json {
        ui::print(&render::list_json(&sessions, &render::Live::default()))?;
    } else {
        // A new VM whose creation failed (quota) is not shown as if it existed.
        let pool = ctx.store.load()?.vm_pool;
        let lines: Vec<StartLine> = reserved
            .iter()
            .zip(&sessions)
            .map(|(r, s)| StartLine {
                session: s,
                vm_is_new: r.vm_is_new,
                vm_created: !r.vm_is_new
                    || pool
                        .get(&r.vm)
                        .is_some_and(|v| v.state == crate::core::model::VmState::Ready),
                queue_place: match outcomes.get(&r.id) {
                    Some(Outcome::Queued { place, of }) => Some((*place, *of)),
                    _ => None,
                },
            })
            .collect();
        ui::print(&render::start_report(&lines))?;
    }
    exit_status(&reserved, &outcomes, &records)
}

/// The question asked before a start creates more than `threshold` new VMs (pure).
pub fn new_vms_question(
    new_vms: usize,
    sku: &str,
    region: &str,
    usd_per_hour: Option<f64>,
) -> String {
    let cost = match usd_per_hour {
        Some(p) => format!(
            "about ${:.2}/h at list price while they run",
            p * new_vms as f64
        ),
        None => format!("price of {sku} unknown"),
    };
    format!("This start creates {new_vms} new VMs ({sku} in {region}): {cost}.")
}

/// Many new VMs cost real money: a start that would create more than
/// AMPLIHACK_REMOTE_CONFIRM_VMS asks first on a terminal, stating the hourly cost, and is
/// refused off one unless --yes. Asked with no lock held; returns how many new VMs the
/// reservation may then create.
fn confirm_new_vms(ctx: &Ctx, target: &Target, args: &StartArgs) -> Result<usize> {
    let threshold = ctx.settings.confirm_vms;
    if args.yes || target.backend == Backend::Local {
        return Ok(usize::MAX);
    }
    let st = ctx.store.load()?;
    let new_vms = pool::plan(&st, &plan_request(target, args.prompts.len())).new_vms;
    if new_vms <= threshold {
        return Ok(threshold);
    }
    let question = new_vms_question(
        new_vms,
        target.size.sku,
        &target.region,
        ctx.settings.prices.hourly_usd(target.size.sku),
    );
    if !ui::stdin_is_terminal() {
        return Err(Error::InvalidArgs(format!(
            "{question} Not started without confirmation: pass --yes, or raise AMPLIHACK_REMOTE_CONFIRM_VMS (now {threshold})"
        )));
    }
    if ui::confirm(&format!("{question} Create them? [y/N] "))? {
        Ok(new_vms)
    } else {
        Err(Error::Failed(
            "not started: no VM was created and no session recorded".into(),
        ))
    }
}

/// A refresh costs seconds and a new VM costs minutes: when the pool looks full, first learn
/// whether some of its sessions have finished.
fn refresh_if_pool_looks_full(ctx: &Ctx, target: &Target, count: usize) -> Result<()> {
    let st = ctx.store.load()?;
    let plan = pool::plan(&st, &plan_request(target, count));
    if (plan.needs_new_vms() || plan.placements.iter().any(Placement::is_queued))
        && !pool::busy_vms(&st, target.backend, &target.region).is_empty()
    {
        ui::progress("Checking whether busy pool VMs have free slots...");
        refresh::refresh(ctx, refresh::Power::Skip)?;
    }
    Ok(())
}

/// Provisions and launches on every VM in parallel, committing each VM's results as they
/// come. Sessions whose pool VM turns out to be gone move once to other VMs (re-placed like a
/// start's prompts) and launch there. Returns every session's outcome and its record as
/// committed.
fn launch_all(
    ctx: &Ctx,
    reserved: &[Reserved],
    target: &Target,
    args: &StartArgs,
    repo: Option<&RepoContext>,
    continuation: Option<&Continuation>,
) -> Result<(BTreeMap<String, Outcome>, BTreeMap<String, Session>)> {
    let pending: Vec<&Reserved> = reserved.iter().filter(|r| r.pending).collect();
    let launch = Launch {
        target,
        args,
        repo,
        continuation,
    };
    let (mut outcomes, mut records, moving) = launch_round(ctx, &pending, &launch, true)?;
    if !moving.is_empty() && crate::interrupt::requested() {
        // Interrupted before they could move: they never launched.
        let failed: Vec<(String, Outcome)> = moving
            .iter()
            .map(|(id, why)| {
                let failed = Outcome::Failed {
                    code: 130,
                    message: format!("interrupted before launch ({why})"),
                };
                (id.clone(), failed)
            })
            .collect();
        for s in commit_outcomes(ctx, &failed)? {
            records.insert(s.session_id.clone(), s);
        }
        outcomes.extend(failed);
    } else if !moving.is_empty() {
        let moved = move_from_gone_vms(ctx, reserved, &moving, target)?;
        let again: Vec<&Reserved> = moved.iter().filter(|r| r.pending).collect();
        let moved_continuation = continuation.map(Continuation::moved);
        if let Some(c) = &moved_continuation {
            ui::progress(&format!(
                "The VM of session {} is gone: restoring its workspace from the archive on the follow-up's VM.",
                c.parent_id
            ));
        }
        let launch = Launch {
            continuation: moved_continuation.as_ref(),
            ..launch
        };
        let (more, more_records, _) = launch_round(ctx, &again, &launch, false)?;
        outcomes.extend(more);
        records.extend(more_records);
        for r in moved.iter().filter(|r| !r.pending) {
            records.insert(r.id.clone(), r.record.clone());
        }
    }
    // Sessions that found no room never launched: their reserved record is final.
    for r in reserved.iter().filter(|r| !r.pending) {
        records.insert(r.id.clone(), r.record.clone());
    }
    Ok((outcomes, records))
}

/// What every launch of this start shares.
struct Launch<'a> {
    target: &'a Target,
    args: &'a StartArgs,
    repo: Option<&'a RepoContext>,
    continuation: Option<&'a Continuation>,
}

/// One round of provisioning and launching, a thread per VM. Returns the outcomes and
/// records committed, and (with `may_move`) the sessions whose VM was gone, not committed.
#[allow(clippy::type_complexity)]
fn launch_round(
    ctx: &Ctx,
    reserved: &[&Reserved],
    launch: &Launch,
    may_move: bool,
) -> Result<(
    BTreeMap<String, Outcome>,
    BTreeMap<String, Session>,
    Vec<(String, String)>,
)> {
    let Launch {
        target,
        args,
        repo,
        continuation,
    } = *launch;
    let state = ctx.store.load()?;
    let mut jobs: BTreeMap<&str, VmJob> = BTreeMap::new();
    for r in reserved {
        jobs.entry(r.vm.as_str())
            .or_insert_with(|| VmJob {
                vm: r.vm.clone(),
                vm_is_new: r.vm_is_new,
                joins_provisioning: r.joins_provisioning,
                backend: target.backend,
                resource_group: ctx.vm_ref(&state, &r.vm).resource_group,
                capacity: state
                    .vm_pool
                    .get(&r.vm)
                    .map_or(target.size.max_sessions, |v| v.capacity),
                sessions: vec![],
            })
            .sessions
            .push(r);
    }
    type RoundVm = (Vec<(String, Outcome)>, Vec<Session>, Vec<(String, String)>);
    let jobs: Vec<&VmJob> = jobs.values().collect();
    let committed: Vec<Result<RoundVm>> =
        parallel::map_bounded(&jobs, ctx.settings.parallel, |job| {
            let all = launch_on_vm(ctx, job, target, args, repo, continuation, may_move);
            let (gone, outcomes): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|(_, o)| matches!(o, Outcome::VmGone { .. }));
            let moving: Vec<(String, String)> = gone
                .into_iter()
                .map(|(id, o)| match o {
                    Outcome::VmGone { message } => (id, message),
                    _ => unreachable!("partitioned"),
                })
                .collect();
            if !moving.is_empty() {
                progress::vm(&job.vm).finish(
                    progress::Outcome::Failed,
                    &format!(
                        "not there; moving {} session(s) to another VM",
                        moving.len()
                    ),
                );
                return Ok((outcomes, vec![], moving));
            }
            let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
            let running = count(|o| matches!(o, Outcome::Launched { .. }));
            let queued = count(|o| matches!(o, Outcome::Queued { .. }));
            let unconfirmed = count(|o| matches!(o, Outcome::Unconfirmed { .. }));
            let mut detail = match queued {
                0 => format!("{running} of {} session(s) running", outcomes.len()),
                q => format!("{running} running, {q} queued, of {}", outcomes.len()),
            };
            if unconfirmed > 0 {
                detail.push_str(&format!(
                    "; {unconfirmed} unconfirmed (the launch's answer was lost)"
                ));
            }
            progress::vm(&job.vm).finish(
                if running + queued == outcomes.len() {
                    progress::Outcome::Done
                } else {
                    progress::Outcome::Failed
                },
                &detail,
            );
            commit_outcomes(ctx, &outcomes).map(|records| (outcomes, records, vec![]))
        });
    let mut outcomes = BTreeMap::new();
    let mut records = BTreeMap::new();
    let mut moving = Vec::new();
    for result in committed {
        let (vm_outcomes, vm_records, vm_moving) = result?;
        outcomes.extend(vm_outcomes);
        records.extend(vm_records.into_iter().map(|s| (s.session_id.clone(), s)));
        moving.extend(vm_moving);
    }
    Ok((outcomes, records, moving))
}

/// Sessions whose pool VM azlin says is gone: in one transaction the VM is marked `failed`
/// (no start places anything there again; `prune` confirms and forgets it), and the sessions
/// are placed again as a start places its prompts (a ready VM with room, one being
/// provisioned, else a new one), still `pending` and ours. Then the VM's other sessions are
/// settled as any command settles a gone VM's. Returns the sessions as now reserved.
fn move_from_gone_vms(
    ctx: &Ctx,
    reserved: &[Reserved],
    moving: &[(String, String)],
    target: &Target,
) -> Result<Vec<Reserved>> {
    // Pool VMs found gone (not VMs another start failed to create: those are its business).
    let gone: std::collections::BTreeSet<String> = reserved
        .iter()
        .filter(|r| !r.joins_provisioning && moving.iter().any(|(id, _)| *id == r.id))
        .map(|r| r.vm.clone())
        .collect();
    let owner = crate::exec::current_owner();
    let now = ctx.now();
    let moved = ctx.store.update(|st| {
        for vm in &gone {
            if let Some(e) = st.vm_pool.get_mut(vm) {
                e.state = VmState::Failed;
                e.owner = None;
                e.error = Some(
                    "no longer exists in Azure (azlin says so); 'amplihack remote prune' forgets it"
                        .into(),
                );
            }
        }
        // Not onto VMs still being created: should one not come up, a moved session would
        // have to move again; a VM of its own fails (or succeeds) with its own answer.
        let request = pool::Request {
            join_provisioning: false,
            ..plan_request(target, moving.len())
        };
        let plan = pool::plan(st, &request);
        let new_vms = reserve_new_vms(ctx, st, target, plan.new_vms, &owner, now);
        let mut moved = Vec::with_capacity(moving.len());
        for ((id, why), placement) in moving.iter().zip(plan.placements) {
            let Some(mut r) = reserved.iter().find(|r| r.id == *id).cloned() else {
                continue;
            };
            let joins_provisioning = matches!(placement, Placement::Provisioning(_));
            let (vm, vm_is_new) = match placement {
                Placement::Existing(vm) | Placement::QueuedOn(vm) | Placement::Provisioning(vm) => {
                    (vm, false)
                }
                Placement::New(i) | Placement::QueuedOnNew(i) => (new_vms[i].clone(), true),
                Placement::Unplaced => {
                    // Nowhere to go (a capped pool, no queue): it fails with why.
                    let event =
                        lifecycle::Event::Refused(format!("{why}; no other VM had room for it"));
                    refresh::settle(st, id, &event, now, &exec::liveness);
                    r.pending = false;
                    if let Some(s) = st.sessions.get(id) {
                        r.record = s.clone();
                    }
                    moved.push(r);
                    continue;
                }
            };
            if let Some(s) = st.sessions.get_mut(id) {
                s.vm_name = vm.clone();
            }
            r.record.vm_name = vm.clone();
            r.vm = vm;
            r.vm_is_new = vm_is_new;
            r.joins_provisioning = joins_provisioning;
            ui::warn(&format!("session {id}: {why}; moving it to VM {}", r.vm));
            moved.push(r);
        }
        Ok(moved)
    })?;
    // Whatever else ran there is settled as for any VM azlin confirms gone.
    let state = ctx.store.load()?;
    for vm in &gone {
        let err = Error::VmNotFound {
            vm: vm.clone(),
            detail: "a start's launch found it gone".into(),
        };
        refresh::settle_if_vm_gone(ctx, &state, vm, &err)?;
    }
    Ok(moved)
}

/// 130 if Ctrl+C cut anything short; else the code of the first failure in prompt order. A
/// session whose launch succeeded but whose record says otherwise (settled by someone else
/// meanwhile) is a failure too: the exit code never claims more than the state holds.
fn exit_status(
    reserved: &[Reserved],
    outcomes: &BTreeMap<String, Outcome>,
    records: &BTreeMap<String, Session>,
) -> Result<()> {
    if outcomes.values().any(|o| {
        matches!(
            o,
            Outcome::Unconfirmed { code: 130, .. } | Outcome::Failed { code: 130, .. }
        )
    }) {
        return Err(Error::Interrupted);
    }
    for r in reserved {
        match outcomes.get(&r.id) {
            Some(Outcome::Failed { code, message }) => return Err(failure(*code, message)),
            Some(Outcome::Unconfirmed { code, message }) => {
                return Err(Error::SessionsFailed {
                    code: *code,
                    message: format!("{}: {message}", r.id),
                });
            }
            None if !r.pending => {
                let why = r.record.error.as_deref().unwrap_or("unknown error");
                return Err(failure(1, why));
            }
            _ => {}
        }
        if let Some(s) = records.get(&r.id)
            && !matches!(
                s.status,
                SessionStatus::Running | SessionStatus::Queued | SessionStatus::Completed
            )
        {
            let why = s.error.as_deref().unwrap_or("its record is not running");
            return Err(failure(1, &format!("{} is {}: {why}", r.id, s.status)));
        }
    }
    Ok(())
}

fn failure(code: i32, message: &str) -> Error {
    Error::SessionsFailed {
        code,
        message: format!("a session failed to start: {message}"),
    }
}
