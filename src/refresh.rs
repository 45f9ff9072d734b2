//! True status: asks each VM that has sessions to settle about them (one call per VM, VMs in
//! parallel) and commits what it learns in one transaction. An unreachable VM leaves its
//! sessions as they were and is reported in `Live`.
//!
//! The same call brings home the archive of every session it finds finished (result, log,
//! commits: see archive.rs), written before the transaction that settles the session and
//! records it archived. Finished sessions not archived yet (their VM did not answer then, or
//! they ended before this version) ride along on calls made anyway, a few per call; `report`
//! and `prune` ask for the ones they need even when that takes a call of its own.
//!
//! Reservations carry their owner (the `start` that made them). A pending session whose owner
//! lives is its owner's business alone: nobody probes or settles it. A dead owner's
//! reservations are recovered at once: a VM it was provisioning (or a prune was deleting)
//! becomes `failed` (prune deletes it) with the sessions bound for it, and its sessions on ready
//! VMs are probed and settled.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::core::lifecycle;
use crate::core::lifecycle::Probe;
use crate::core::model::{Backend, Session, SessionStatus, State, VmState};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec;
use crate::remote::answer::{Frame, FrameKind};
use crate::remote::request::{ArchiveRequest, ProbeTarget, Want};
use crate::remote::{answer, request};
use crate::ui;

pub use crate::core::settle::{
    Archived, LivenessCheck, abandoned, apply_probes, mark_archived, mark_collected, seen, settle,
};
use crate::ui::render::Live;
use crate::{interrupt, parallel};

/// Finished sessions not archived yet that ride along on one call made anyway: enough to
/// catch up over a few refreshes without making any one of them slow.
pub const UNARCHIVED_PER_CALL: usize = 8;

/// Settles what dead owners left: a `provisioning` VM becomes `failed` (it may exist in Azure
/// and bill: prune deletes it), and pending sessions bound for a VM that is not ready (or no
/// longer in the pool) fail, as they were never launched. Pending sessions on ready VMs are left for the probe. Returns
/// whether anything changed.
pub fn recover_abandoned(state: &mut State, now: DateTime<Utc>, alive: LivenessCheck) -> bool {
    let mut changed = false;
    for vm in state.vm_pool.values_mut() {
        if vm.state == VmState::Provisioning
            && abandoned(vm.owner.as_ref(), vm.created_at.unwrap_or(now), now, alive)
        {
            vm.state = VmState::Failed;
            vm.owner = None;
            vm.creation_unconfirmed = true;
            vm.error = Some(
                "the start that was provisioning it ended first; the VM may exist in Azure: 'amplihack remote prune' deletes it".into(),
            );
            changed = true;
        }
        // A prune that died mid-deletion: the VM may still exist; the next prune retries.
        if vm.state == VmState::Deleting
            && vm.owner.is_some()
            && abandoned(vm.owner.as_ref(), vm.created_at.unwrap_or(now), now, alive)
        {
            vm.state = VmState::Failed;
            vm.owner = None;
            vm.error = Some(
                "the prune that was deleting it ended first; the VM may still exist: 'amplihack remote prune' retries".into(),
            );
            changed = true;
        }
    }
    let unlaunchable: Vec<String> = state
        .sessions
        .values()
        .filter(|s| {
            s.status == SessionStatus::Pending
                && abandoned(s.owner.as_ref(), s.created_at, now, alive)
                && state
                    .vm_pool
                    .get(&s.vm_name)
                    .is_none_or(|vm| vm.state != VmState::Ready)
        })
        .map(|s| s.session_id.clone())
        .collect();
    for id in unlaunchable {
        changed |= settle(state, &id, &lifecycle::Event::StartDied, now, alive).is_some();
    }
    changed
}

/// What to ask one VM about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeTargets {
    pub running: Vec<String>,
    /// Pending sessions whose start is gone: the VM settles whether they were launched.
    pub claim: Vec<String>,
}

/// Sessions to ask about, grouped by VM: running ones, and pending ones whose start is gone.
pub fn sessions_to_probe(
    state: &State,
    now: DateTime<Utc>,
    alive: LivenessCheck,
) -> BTreeMap<String, ProbeTargets> {
    let mut by_vm: BTreeMap<String, ProbeTargets> = BTreeMap::new();
    for s in state.sessions.values() {
        let claim = match s.status {
            // A queued session is asked about like a running one: its VM may have started it.
            SessionStatus::Running | SessionStatus::Queued => false,
            SessionStatus::Pending if abandoned(s.owner.as_ref(), s.created_at, now, alive) => true,
            _ => continue,
        };
        let targets = by_vm.entry(s.vm_name.clone()).or_default();
        if claim {
            targets.claim.push(s.session_id.clone());
        } else {
            targets.running.push(s.session_id.clone());
        }
    }
    by_vm
}

/// A finished session whose results are not home yet and whose VM can still be asked (it is in
/// the pool and not being provisioned). One that never started has none: it never costs a call
/// (one settled by a probe was archived by that same call).
pub fn unarchived(state: &State, s: &Session) -> bool {
    !s.status.is_active()
        && s.archived_at.is_none()
        && s.started_at.is_some()
        && state
            .vm_pool
            .get(&s.vm_name)
            .is_some_and(|vm| vm.state != VmState::Provisioning)
}

/// What a probe asks of the sessions due for it (see `sessions_to_probe`): running ones their
/// archive should they have ended; pending ones whose start died a claim first (`Want::Claim`).
pub fn due_plan(due: BTreeMap<String, ProbeTargets>) -> BTreeMap<String, Vec<(String, Want)>> {
    due.into_iter()
        .map(|(vm, t)| {
            let asked = t
                .running
                .into_iter()
                .map(|id| (id, Want::Archive))
                .chain(t.claim.into_iter().map(|id| (id, Want::Claim)))
                .collect();
            (vm, asked)
        })
        .collect()
}

/// The sessions a refresh asks about, by VM, with what it asks of each: those due for it (see
/// `due_plan`), the unarchived finished ones of `also` (even when that means a call of its
/// own), and up to `UNARCHIVED_PER_CALL` other unarchived finished ones on each VM asked anyway.
pub fn refresh_plan(
    state: &State,
    now: DateTime<Utc>,
    alive: LivenessCheck,
    also: &BTreeSet<String>,
) -> BTreeMap<String, Vec<(String, Want)>> {
    let mut by_vm = due_plan(sessions_to_probe(state, now, alive));
    for id in also {
        if let Some(s) = state.sessions.get(id).filter(|s| unarchived(state, s)) {
            by_vm
                .entry(s.vm_name.clone())
                .or_default()
                .push((s.session_id.clone(), Want::Archive));
        }
    }
    let mut riders: BTreeMap<&str, usize> = BTreeMap::new();
    for s in state.sessions.values() {
        if also.contains(&s.session_id) || !unarchived(state, s) {
            continue;
        }
        if let Some(asked) = by_vm.get_mut(&s.vm_name) {
            let n = riders.entry(s.vm_name.as_str()).or_default();
            if *n < UNARCHIVED_PER_CALL {
                *n += 1;
                asked.push((s.session_id.clone(), Want::Archive));
            }
        }
    }
    // A VM holding sessions brought home whose `collected` mark it has not confirmed (a call
    // cut after the archive was kept, archives of an older version) is asked too, about
    // nothing but those marks: else, with no session of ours running there, no call would
    // ever tell it, and another machine's prune would keep it until --force.
    for s in state.sessions.values() {
        if owes_collected_mark(state, s) {
            by_vm.entry(s.vm_name.clone()).or_default();
        }
    }
    by_vm
}

/// A session brought home whose VM (in the pool, ready) has not confirmed its `collected`
/// mark: the next refresh tells the VM (`unconfirmed_collected`).
fn owes_collected_mark(state: &State, s: &Session) -> bool {
    s.archived_at.is_some()
        && !s.vm_marked_collected()
        && state
            .vm_pool
            .get(&s.vm_name)
            .is_some_and(|vm| vm.state == VmState::Ready)
}

/// What a call asks of a session's VM about its results: its workspace, starting commit and
/// the log cap.
pub fn archive_request<'a>(ctx: &Ctx, s: &'a Session) -> ArchiveRequest<'a> {
    ArchiveRequest {
        workspace: &s.workspace,
        base_commit: s.base_commit.as_deref(),
        log_cap: ctx.settings.archive_log_cap,
    }
}

/// Writes the archives among `frames` (from `vm`); returns the sessions now archived. A
/// failure is a warning: the session stays unarchived and is asked again later.
pub fn keep_archives(
    ctx: &Ctx,
    vm: &str,
    frames: &[Frame],
) -> (Archived, BTreeMap<String, String>) {
    let now = ctx.now();
    let mut archived = Archived::new();
    let mut failures = BTreeMap::new();
    for frame in frames.iter().filter(|f| f.kind == FrameKind::Archive) {
        match ctx.archive.write(frame, vm, now) {
            Ok(at) => {
                archived.insert(frame.id.clone(), at);
            }
            Err(e) => {
                ui::warn(&format!(
                    "could not archive session {} from VM '{vm}': {e}",
                    frame.id
                ));
                failures.insert(frame.id.clone(), e.to_string());
            }
        }
    }
    (archived, failures)
}

/// Commits probes, recoveries and archive marks, in one transaction, if anything changed;
/// returns the state as it now stands. `archived` are sessions whose archive is in place: a
/// session is marked archived in the same transaction that settles it.
pub fn commit_probes(
    ctx: &Ctx,
    probes: &HashMap<String, Probe>,
    archived: &Archived,
    state: State,
) -> Result<State> {
    commit_answers(ctx, probes, archived, &BTreeSet::new(), state)
}

/// `commit_probes` of what a round of probes collected, the `collected` marks their VMs
/// confirmed included (recorded after the archive marks: only an archived session has one).
pub fn commit_collected(ctx: &Ctx, collected: &Collected, state: State) -> Result<State> {
    commit_answers(
        ctx,
        &collected.probes,
        &collected.archived,
        &collected.collected,
        state,
    )
}

/// `commit_probes` of one call's probes and what it kept (`call_keeping_archives`).
pub fn commit_kept(
    ctx: &Ctx,
    probes: &HashMap<String, Probe>,
    kept: &Kept,
    state: State,
) -> Result<State> {
    commit_answers(ctx, probes, &kept.archived, &kept.collected, state)
}

fn commit_answers(
    ctx: &Ctx,
    probes: &HashMap<String, Probe>,
    archived: &Archived,
    marked: &BTreeSet<String>,
    state: State,
) -> Result<State> {
    let now = ctx.now();
    let alive = exec::liveness;
    let mut preview = state;
    let recovered = recover_abandoned(&mut preview, now, &alive);
    let settled = apply_probes(&mut preview, probes, now, &alive);
    let archived_now = mark_archived(&mut preview, archived);
    if settled + archived_now + mark_collected(&mut preview, marked) == 0 && !recovered {
        return Ok(preview);
    }
    ctx.store.update(|st| {
        recover_abandoned(st, now, &alive);
        apply_probes(st, probes, now, &alive);
        mark_archived(st, archived);
        mark_collected(st, marked);
        Ok(st.clone())
    })
}

/// A running session's commits so far, as `pull` asked for them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub bundle: Option<Vec<u8>>,
    pub error: Option<String>,
}

/// What the VMs answered to one round of probes.
#[derive(Debug, Default)]
pub struct Collected {
    pub probes: HashMap<String, Probe>,
    /// Sessions whose archive is now in place.
    pub archived: Archived,
    /// Sessions whose archive came but could not be kept, with why.
    pub archive_failures: BTreeMap<String, String>,
    pub snapshots: HashMap<String, Snapshot>,
    /// VMs that could not be asked, with why.
    pub failed_vms: BTreeMap<String, Error>,
    /// VMs that answered.
    pub answered_vms: BTreeSet<String>,
    /// Sessions whose `collected` mark their VM confirmed.
    pub collected: BTreeSet<String>,
}

/// What one VM answered: probes, archives kept, archives that could not be kept, snapshots,
/// and the sessions whose `collected` mark it confirmed.
#[derive(Debug, Default)]
struct VmAnswer {
    probes: HashMap<String, Probe>,
    archived: Archived,
    failures: BTreeMap<String, String>,
    snapshots: HashMap<String, Snapshot>,
    collected: BTreeSet<String>,
}

/// Sessions brought home whose `collected` mark one call tells their VM again, at most: a few
/// ids each, so the whole backlog of a VM goes in one call or two.
pub const COLLECTED_PER_CALL: usize = 64;

/// Sessions of `vm` whose archives are home but whose `collected` mark the VM has not
/// confirmed (a call cut after the archive was kept, an archive of an older version, or one
/// brought home by `output` or `kill`): told again on the next probe of the VM.
pub fn unconfirmed_collected<'a>(state: &'a State, vm: &str) -> Vec<&'a str> {
    state
        .sessions
        .values()
        .filter(|s| s.vm_name == vm && s.archived_at.is_some() && !s.vm_marked_collected())
        .take(COLLECTED_PER_CALL)
        .map(|s| s.session_id.as_str())
        .collect()
}

/// What a control call that may carry archive frames brought home: archives kept (written
/// and renamed into place here), archives that could not be kept, and the sessions whose
/// `collected` mark the VM confirmed.
#[derive(Debug, Default)]
pub struct Kept {
    pub archived: Archived,
    pub failures: BTreeMap<String, String>,
    pub collected: BTreeSet<String>,
}

/// Makes a control call whose answer may carry archive frames (`probe`, `kill`), as a
/// conversation: once the VM has sent them it waits; their archives are written and renamed
/// into place here first, then the VM is told which were kept and marks them `collected`
/// (docs/remote-layout.md, "Collected"), all in this one call. Returns the answer and what was
/// kept. A call cut after the archives were kept still counts as answered (the answer up to
/// the VM's question): only the marks are missing, and the VM's next probe tells them again
/// (`unconfirmed_collected`). Worst case, a VM is kept longer; no result is ever lost.
pub fn call_keeping_archives(
    ctx: &Ctx,
    vm: &crate::remote::transport::VmRef,
    input: Vec<u8>,
    timeout: std::time::Duration,
) -> Result<(Vec<u8>, Kept)> {
    let keep = |answer: &answer::Answer| {
        let (archived, failures) = keep_archives(ctx, &vm.name, &answer.frames);
        Kept {
            archived,
            failures,
            collected: answer::collected_ids(answer),
        }
    };
    // What was kept when the VM asked, and the answer up to its question.
    let mut asked: Option<(Kept, Vec<u8>)> = None;
    let out = ctx.converse_on(
        vm,
        input,
        timeout,
        answer::AWAITING_COLLECTED,
        &mut |so_far| {
            let answer = answer::read_answer(so_far).ok()?;
            if !answer::answer_to_collected(so_far, &answer) {
                return None;
            }
            let kept = keep(&answer);
            let reply = request::collected_reply(kept.archived.keys().map(String::as_str));
            asked = Some((kept, so_far.to_vec()));
            Some(reply)
        },
    );
    match (out, asked) {
        (Ok(out), Some((mut kept, so_far))) => {
            let after = out.stdout.get(so_far.len()..).unwrap_or_default();
            if let Ok(answer) = answer::read_answer(after) {
                kept.collected.extend(answer::collected_ids(&answer));
            }
            // Frames after what was taken for the question (it was a damaged answer's ending,
            // and more came): kept too, their marks told on the next probe.
            if let Ok(whole) = answer::read_answer(&out.stdout) {
                let rest: Vec<answer::Frame> = whole
                    .frames
                    .into_iter()
                    .filter(|f| {
                        !kept.archived.contains_key(&f.id) && !kept.failures.contains_key(&f.id)
                    })
                    .collect();
                let (archived, failures) = keep_archives(ctx, &vm.name, &rest);
                kept.archived.extend(archived);
                kept.failures.extend(failures);
            }
            Ok((out.stdout, kept))
        }
        (Ok(out), None) => {
            let kept = match answer::read_answer(&out.stdout) {
                Ok(answer) => keep(&answer),
                Err(_) => Kept::default(),
            };
            Ok((out.stdout, kept))
        }
        (Err(Error::Interrupted), _) => Err(Error::Interrupted),
        (Err(_), Some((kept, so_far))) => Ok((so_far, kept)),
        (Err(e), None) => Err(e),
    }
}

/// Reads one VM's probe answer: warns of stuck queued sessions and of a damaged answer, and
/// takes the snapshots.
fn read_vm_answer(vm: &str, stdout: &[u8], kept: Kept) -> VmAnswer {
    warn_stuck(stdout);
    let answer = answer::parse_probe_answer(stdout);
    if let Some(why) = &answer.damaged {
        ui::warn(&format!("the answer of VM '{vm}' was damaged: {why}"));
    }
    let snapshots: HashMap<String, Snapshot> = answer
        .frames
        .iter()
        .filter(|f| f.kind == FrameKind::Snapshot)
        .map(|f| {
            (
                f.id.clone(),
                Snapshot {
                    bundle: f.part("commits.bundle").map(|p| p.data.to_vec()),
                    error: f
                        .notes
                        .get("bundle_error")
                        .or_else(|| f.notes.get("error"))
                        .cloned(),
                },
            )
        })
        .collect();
    VmAnswer {
        probes: answer.probes,
        archived: kept.archived,
        failures: kept.failures,
        snapshots,
        collected: kept.collected,
    }
}

/// One probe call to `vm` (`call_keeping_archives`), which also tells the VM the `collected`
/// marks it has not confirmed yet (`unconfirmed_collected`).
fn probe_vm(
    ctx: &Ctx,
    state: &State,
    vm: &crate::remote::transport::VmRef,
    targets: &[ProbeTarget],
    queue: request::Queue,
    timeout: std::time::Duration,
) -> Result<VmAnswer> {
    let earlier = unconfirmed_collected(state, &vm.name);
    let collect = request::Collect {
        answers: true,
        earlier: &earlier,
    };
    let input = request::probe_script(targets, ctx.settings.archive_log_cap, queue, collect);
    let (stdout, kept) = call_keeping_archives(ctx, vm, input, timeout)?;
    Ok(read_vm_answer(&vm.name, &stdout, kept))
}

/// One resource group's power-state listing: VM name to power state.
pub type PowerStates = Result<BTreeMap<String, String>>;

/// Asks each VM about its sessions in `plan` (one call per VM; VMs in parallel, at most
/// AMPLIHACK_REMOTE_PARALLEL at once), keeping the
/// archives that come back. Nothing is committed. Only an interrupt is an error; a VM that
/// does not answer is warned about and listed in `failed_vms`.
pub fn collect(
    ctx: &Ctx,
    state: &State,
    plan: &BTreeMap<String, Vec<(String, Want)>>,
) -> Result<Collected> {
    collect_with_power(ctx, state, plan, &BTreeSet::new()).0
}

/// `collect`, with the power-state listings of `power_groups` (one azlin call per resource
/// group) in the same bounded fan-out: at most AMPLIHACK_REMOTE_PARALLEL azlin calls at once.
/// The listings' results come back in the order of `power_groups`.
pub fn collect_with_power(
    ctx: &Ctx,
    state: &State,
    plan: &BTreeMap<String, Vec<(String, Want)>>,
    power_groups: &BTreeSet<Option<String>>,
) -> (Result<Collected>, Vec<PowerStates>) {
    let timeout = ctx.settings.timeouts.probe;
    let queued = state.queued_counts();
    enum Call<'a> {
        Power(&'a Option<String>),
        Probe(&'a String, &'a Vec<(String, Want)>),
    }
    enum Answer {
        Power(PowerStates),
        Probe(String, Result<VmAnswer>),
    }
    let calls: Vec<Call> = power_groups
        .iter()
        .map(Call::Power)
        .chain(plan.iter().map(|(vm, asked)| Call::Probe(vm, asked)))
        .collect();
    let answers = parallel::map_bounded(&calls, ctx.settings.parallel, |call| match *call {
        // After Ctrl+C, calls still waiting for their turn do not start.
        Call::Power(_) if interrupt::requested() => Answer::Power(Err(Error::Interrupted)),
        Call::Probe(vm, _) if interrupt::requested() => {
            Answer::Probe(vm.clone(), Err(Error::Interrupted))
        }
        Call::Power(rg) => Answer::Power(
            ctx.transports
                .azlin
                .power_states(rg.as_deref(), ctx.settings.timeouts.list),
        ),
        Call::Probe(vm, asked) => {
            let vm = ctx.vm_ref(state, vm);
            let drain = queued.contains_key(vm.name.as_str());
            let targets: Vec<ProbeTarget> = asked
                .iter()
                .filter_map(|(id, want)| {
                    let s = state.sessions.get(id)?;
                    Some(ProbeTarget {
                        id: &s.session_id,
                        workspace: &s.workspace,
                        base_commit: s.base_commit.as_deref(),
                        want: *want,
                    })
                })
                .collect();
            let queue = if drain {
                queue_work(ctx)
            } else {
                request::Queue::Leave
            };
            let answer = probe_vm(ctx, state, &vm, &targets, queue, timeout);
            Answer::Probe(vm.name, answer)
        }
    });
    let mut results = Vec::new();
    let mut power_results = Vec::new();
    for answer in answers {
        match answer {
            Answer::Power(p) => power_results.push(p),
            Answer::Probe(vm, r) => results.push((vm, r)),
        }
    }
    (collect_answers(results), power_results)
}

fn collect_answers(results: Vec<(String, Result<VmAnswer>)>) -> Result<Collected> {
    let mut collected = Collected::default();
    for (vm, result) in results {
        match result {
            Ok(answer) => {
                collected.answered_vms.insert(vm);
                collected.probes.extend(answer.probes);
                collected.archived.extend(answer.archived);
                collected.archive_failures.extend(answer.failures);
                collected.snapshots.extend(answer.snapshots);
                collected.collected.extend(answer.collected);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                collected.failed_vms.insert(vm, e);
            }
        }
    }
    Ok(collected)
}

pub struct Refreshed {
    pub state: State,
    pub live: Live,
    /// VMs that could not be asked, with why.
    pub failed_vms: BTreeMap<String, Error>,
    /// Sessions whose archive came home but could not be kept here, with why.
    pub archive_failures: BTreeMap<String, String>,
}

/// Where a command takes the sessions' status from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Refreshed from the VMs.
    Vms,
    /// The state file as recorded (`--no-refresh`).
    Recorded,
}

impl Source {
    pub fn of(no_refresh: bool) -> Source {
        if no_refresh {
            Source::Recorded
        } else {
            Source::Vms
        }
    }
}

/// Whether a refresh also reads the VMs' power states (one `azlin list` per resource group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Read,
    Skip,
}

/// The state as `list` and `status` show it: refreshed from the VMs, or with `--no-refresh`
/// read from the file alone.
pub fn current(ctx: &Ctx, source: Source, power: Power) -> Result<Refreshed> {
    if source == Source::Recorded {
        Ok(Refreshed {
            state: ctx.store.load()?,
            live: Live::default(),
            failed_vms: BTreeMap::new(),
            archive_failures: BTreeMap::new(),
        })
    } else {
        match refresh(ctx, power) {
            // What the VMs said could not be recorded (a full disk, a read-only directory):
            // the sessions are still shown, as last recorded, with why they may be stale.
            Err(e @ Error::StateAccess { .. }) => {
                let state = ctx.store.load()?;
                ui::warn(&format!(
                    "{e}; what the VMs said was not recorded, so the sessions are shown as last recorded"
                ));
                Ok(Refreshed {
                    state,
                    live: Live::default(),
                    failed_vms: BTreeMap::new(),
                    archive_failures: BTreeMap::new(),
                })
            }
            other => other,
        }
    }
}

/// Makes a call to a VM with queued sessions start them first where it has room: its
/// supervisors normally do, but none may be left (all killed, a reboot). The user's key goes
/// along for the sessions it starts.
pub fn queue_work(ctx: &Ctx) -> request::Queue<'_> {
    request::Queue::Drain {
        key: ctx.settings.api_key.as_deref(),
    }
}

/// Says which queued sessions a VM could not start, and why.
pub fn warn_stuck(stdout: &[u8]) {
    for (id, why) in answer::parse_stuck(stdout) {
        ui::warn(&format!("queued session {id} could not start: {why}"));
    }
}

/// The resource groups the pool's Azure VMs live in (`None`: azlin's default).
pub fn resource_groups(ctx: &Ctx, state: &State) -> BTreeSet<Option<String>> {
    state
        .vm_pool
        .keys()
        .map(|name| ctx.vm_ref(state, name))
        .filter(|vm| vm.backend == Backend::Azure)
        .map(|vm| vm.resource_group)
        .collect()
}

/// Refreshes every session due for it from its VM. With `power`, also asks azlin for the
/// power state of every VM (one `list` per resource group the pool uses, in parallel).
pub fn refresh(ctx: &Ctx, power: Power) -> Result<Refreshed> {
    refresh_with(ctx, power, &BTreeSet::new())
}

/// `refresh`, also bringing home the archives of the finished sessions in `also` that are not
/// archived yet (see `refresh_plan`); still at most one call per VM.
pub fn refresh_with(ctx: &Ctx, power: Power, also: &BTreeSet<String>) -> Result<Refreshed> {
    let mut state = ctx.store.load()?;
    let now = ctx.now();
    let mut plan = refresh_plan(&state, now, &exec::liveness, also);
    let mut power_groups = if power == Power::Read {
        resource_groups(ctx, &state)
    } else {
        BTreeSet::new()
    };
    let mut live = Live::default();
    if let Some(listed) = list_first(ctx, &state, &plan)? {
        // Only the VMs azlin lists are asked; the power states come from the same listing.
        let gone: Vec<String> = plan
            .keys()
            .filter(|vm| {
                ctx.vm_ref(&state, vm).backend == Backend::Azure && !listed.contains_key(*vm)
            })
            .cloned()
            .collect();
        for vm in &gone {
            plan.remove(vm);
        }
        if power == Power::Read {
            live.power = Some(listed);
            power_groups.clear();
        }
        if !gone.is_empty() {
            state = end_sessions_of_gone_vms(ctx, &gone, now)?;
        }
    }
    if plan.is_empty() && power_groups.is_empty() {
        let state = commit_probes(ctx, &HashMap::new(), &Archived::new(), state)?;
        return Ok(Refreshed {
            state,
            live,
            failed_vms: BTreeMap::new(),
            archive_failures: BTreeMap::new(),
        });
    }
    let (collected, power_results) = collect_with_power(ctx, &state, &plan, &power_groups);
    let mut collected = collected?;
    // A call that only told a VM its `collected` marks asked nothing the user sees: its
    // failure is not shown (the marks are told again next time), unless the VM is gone.
    collected.failed_vms.retain(|vm, e| {
        matches!(e, Error::VmNotFound { .. } | Error::Interrupted)
            || plan.get(vm).is_none_or(|asked| !asked.is_empty())
    });
    for (vm, e) in &collected.failed_vms {
        // A VM azlin confirmed gone is not "unreachable": its sessions are settled below,
        // with one warning saying so.
        if matches!(e, Error::VmNotFound { .. }) {
            continue;
        }
        ui::warn(&format!(
            "could not refresh sessions on VM '{vm}'; showing them as last known. {e}"
        ));
        live.unreachable.insert(vm.clone());
    }
    live.answered.extend(collected.answered_vms.iter().cloned());
    if !power_results.is_empty() {
        let mut all = BTreeMap::new();
        let mut complete = true;
        for result in power_results {
            match result {
                Ok(p) => all.extend(p),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => {
                    ui::warn(&format!("could not read VM power states: {e}"));
                    complete = false;
                }
            }
        }
        // A partial listing would make the VMs it lacks look gone from Azure.
        if complete {
            live.power = Some(all);
        }
    }
    let mut state = commit_collected(ctx, &collected, state)?;
    for (vm, e) in &collected.failed_vms {
        match settle_if_vm_gone(ctx, &state, vm, e)? {
            Some(settled) => state = settled,
            None if matches!(e, Error::VmNotFound { .. }) => {
                ui::warn(&format!(
                    "could not refresh sessions on VM '{vm}'; showing them as last known. {e}"
                ));
                live.unreachable.insert(vm.clone());
            }
            None => {}
        }
    }
    Ok(Refreshed {
        state,
        live,
        failed_vms: collected.failed_vms,
        archive_failures: collected.archive_failures,
    })
}

/// Azure VMs a refresh asks one by one; beyond this (and beyond one round of
/// `AMPLIHACK_REMOTE_PARALLEL` calls) it lists them first. A usual pool stays below it and pays
/// no listing; a state naming thousands of VMs is far above it.
const LIST_FIRST_ABOVE: usize = 32;

/// A refresh that would ask more Azure VMs than `LIST_FIRST_ABOVE` first asks azlin which
/// exist: one `azlin list` per resource group of those VMs, in
/// parallel. A state naming thousands of deleted VMs (the Python original's, say) then costs
/// a listing, not a call and a warning per VM. Returns the VMs listed with their power states,
/// or `None` when not worth it or when a listing failed (every VM is then asked, as before).
fn list_first(
    ctx: &Ctx,
    state: &State,
    plan: &BTreeMap<String, Vec<(String, Want)>>,
) -> Result<Option<BTreeMap<String, String>>> {
    let azure: Vec<crate::remote::transport::VmRef> = plan
        .keys()
        .map(|vm| ctx.vm_ref(state, vm))
        .filter(|vm| vm.backend == Backend::Azure)
        .collect();
    if azure.len() <= LIST_FIRST_ABOVE.max(ctx.settings.parallel) {
        return Ok(None);
    }
    let groups: Vec<Option<String>> = azure
        .iter()
        .map(|vm| vm.resource_group.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let listings = parallel::map_bounded(&groups, ctx.settings.parallel, |rg| {
        ctx.transports
            .azlin
            .power_states(rg.as_deref(), ctx.settings.timeouts.list)
    });
    let mut listed = BTreeMap::new();
    for listing in listings {
        match listing {
            Ok(vms) => listed.extend(vms),
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                ui::warn(&format!(
                    "could not list the pool's VMs first ({e}); asking each VM"
                ));
                return Ok(None);
            }
        }
    }
    Ok(Some(listed))
}

/// The VMs `gone` are not in Azure (a complete listing lacks them): their active sessions end
/// as when azlin confirms one VM gone (`settle_if_vm_gone`), in one transaction, with one
/// warning for all of them.
fn end_sessions_of_gone_vms(ctx: &Ctx, gone: &[String], now: DateTime<Utc>) -> Result<State> {
    let gone_set: BTreeSet<&String> = gone.iter().collect();
    let home = archives_at_home(ctx, &ctx.store.load()?, |vm| gone_set.contains(vm));
    let (state, ended) = ctx.store.update(|st| {
        let ids: Vec<String> = st
            .sessions
            .values()
            .filter(|s| gone_set.contains(&s.vm_name))
            .map(|s| s.session_id.clone())
            .collect();
        let ended = ids
            .into_iter()
            .filter(|id| settle(st, id, &lifecycle::Event::VmGone, now, &exec::liveness).is_some())
            .count();
        mark_archived(st, &home);
        // Nothing of them is left on a VM that is gone: no `collected` mark to tell it.
        let moot: BTreeSet<String> = st
            .sessions
            .values()
            .filter(|s| gone_set.contains(&s.vm_name))
            .map(|s| s.session_id.clone())
            .collect();
        mark_collected(st, &moot);
        Ok((st.clone(), ended))
    })?;
    let shown: Vec<&str> = gone.iter().take(3).map(String::as_str).collect();
    ui::warn(&format!(
        "{} VM(s) of the state are not in Azure (azlin list: {}{}); {ended} of their session(s) ended failed, with whatever was archived kept; 'amplihack remote prune' removes them from the pool",
        gone.len(),
        shown.join(", "),
        if gone.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    ));
    Ok(state)
}

/// Archives in place at home of sessions on the VMs `on` that the state does not record as
/// archived: a command that kept an archive and told the VM (its `collected` mark) may have
/// died before recording it, and another machine's prune may then have deleted the VM. Such
/// a session ends failed with its VM, and its archive is read from home like any other.
fn archives_at_home(ctx: &Ctx, state: &State, on: impl Fn(&String) -> bool) -> Archived {
    state
        .sessions
        .values()
        .filter(|s| on(&s.vm_name) && s.archived_at.is_none() && ctx.archive.has(&s.session_id))
        .filter_map(|s| {
            Some((
                s.session_id.clone(),
                ctx.archive.archived_at(&s.session_id)?,
            ))
        })
        .collect()
}

/// When a call to VM `vm` failed with "not found" (`err`), asks azlin whether the VM exists
/// (`azlin show` in its own resource group; the transport has asked already, so this costs no
/// call): once azlin confirms it is gone, its active sessions end `failed` ("its VM no longer
/// exists"; what was archived stays archived) and `prune` forgets it. Warns once, saying what
/// happened. Returns the state as it then stands, or `None` when nothing was settled (another
/// failure, or azlin could not confirm).
pub fn settle_if_vm_gone(ctx: &Ctx, state: &State, vm: &str, err: &Error) -> Result<Option<State>> {
    let Some((state, ended)) = settle_gone_vm(ctx, state, vm, err)? else {
        return Ok(None);
    };
    ui::warn(&gone_vm_text(vm, err, &ended));
    Ok(Some(state))
}

/// What every command that is not a refresh does with a failed call to a pool VM: a VM azlin
/// confirms gone has its sessions settled (`settle_if_vm_gone`, the same rule as a refresh)
/// and the error then says what happened to them. Any other error comes back as it was.
pub fn after_failed_call(ctx: &Ctx, vm: &str, err: Error) -> Error {
    let state = match ctx.store.load() {
        Ok(state) => state,
        Err(_) => return err,
    };
    match settle_gone_vm(ctx, &state, vm, &err) {
        Ok(Some((_, ended))) => Error::VmNotFound {
            vm: vm.to_string(),
            detail: gone_vm_detail(&err, &ended),
        },
        Ok(None) => err,
        Err(e) => e,
    }
}

/// The cause azlin gave, and what became of the VM's sessions.
fn gone_vm_detail(err: &Error, ended: &[String]) -> String {
    let cause = match err {
        Error::VmNotFound { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    if ended.is_empty() {
        cause
    } else {
        format!(
            "{cause}; its session(s) {} ended failed, with whatever was archived kept",
            ended.join(", ")
        )
    }
}

/// The warning for a VM azlin confirmed gone: the error's own words (`Error::VmNotFound`).
fn gone_vm_text(vm: &str, err: &Error, ended: &[String]) -> String {
    Error::VmNotFound {
        vm: vm.to_string(),
        detail: gone_vm_detail(err, ended),
    }
    .to_string()
}

/// `settle_if_vm_gone` without a word: the state as it then stands and the sessions it ended.
fn settle_gone_vm(
    ctx: &Ctx,
    state: &State,
    vm: &str,
    err: &Error,
) -> Result<Option<(State, Vec<String>)>> {
    // A VM the pool lacks counts too (a hand-edited state, or the Python original's, whose
    // sessions outlive its pool entries): its sessions would otherwise stay running forever,
    // each command asking azlin again.
    if !matches!(err, Error::VmNotFound { .. }) {
        return Ok(None);
    }
    let vm_ref = ctx.vm_ref(state, vm);
    if vm_ref.backend != Backend::Azure {
        return Ok(None);
    }
    match ctx
        .transports
        .azlin
        .vm_exists(&vm_ref, ctx.settings.timeouts.list)
    {
        Ok(false) => {}
        Ok(true) => return Ok(None),
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        Err(e) => {
            ui::warn(&format!(
                "VM '{vm}' did not answer as a VM, and 'azlin show' could not confirm it is gone; its sessions are kept as last known. {e}"
            ));
            return Ok(None);
        }
    }
    let now = ctx.now();
    let home = archives_at_home(ctx, state, |name| name == vm);
    let (state, ended) = ctx.store.update(|st| {
        let ids: Vec<String> = st
            .sessions
            .values()
            .filter(|s| s.vm_name == vm)
            .map(|s| s.session_id.clone())
            .collect();
        let ended: Vec<String> = ids
            .into_iter()
            .filter(|id| settle(st, id, &lifecycle::Event::VmGone, now, &exec::liveness).is_some())
            .collect();
        mark_archived(st, &home);
        // Nothing of them is left on a VM that is gone: no mark to tell it (as the VM itself
        // answers for a session it has no directory of).
        let moot: BTreeSet<String> = st
            .sessions
            .values()
            .filter(|s| s.vm_name == vm)
            .map(|s| s.session_id.clone())
            .collect();
        mark_collected(st, &moot);
        Ok((st.clone(), ended))
    })?;
    Ok(Some((state, ended)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lifecycle::Phase;
    use crate::core::model::{KillRequest, Owner};
    use crate::core::pool::tests::{session, t0, vm};
    use crate::exec::Liveness;
    use chrono::Duration;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            host: "h".into(),
            started: format!("boot {pid}"),
        }
    }

    /// Owners with pid 1 live, pid 2 are dead, pid 3 ran on another machine.
    fn check(o: &Owner) -> Liveness {
        match o.pid {
            1 => Liveness::Alive,
            2 => Liveness::Dead,
            _ => Liveness::Unknown,
        }
    }

    fn pending(id: &str, vm: &str, owner_pid: Option<u32>) -> crate::core::model::Session {
        let mut s = session(id, vm, SessionStatus::Pending);
        s.started_at = None;
        s.owner = owner_pid.map(owner);
        s
    }

    #[test]
    fn pending_sessions_are_probed_only_when_their_start_is_gone() {
        let mut st = State::default();
        for s in [
            pending("live", "vm", Some(1)),
            pending("dead", "vm", Some(2)),
            pending("elsewhere", "vm", Some(3)),
            pending("legacy", "vm", None),
        ] {
            st.sessions.insert(s.session_id.clone(), s);
        }
        let mut old = pending("old-legacy", "vm", None);
        old.created_at = t0() - Duration::hours(3);
        st.sessions.insert("old-legacy".into(), old);
        st.sessions
            .insert("r".into(), session("r", "vm2", SessionStatus::Running));
        st.sessions
            .insert("c".into(), session("c", "vm2", SessionStatus::Completed));
        let t = sessions_to_probe(&st, t0(), &check);
        assert_eq!(t["vm"].claim, vec!["dead".to_string(), "old-legacy".into()]);
        assert!(t["vm"].running.is_empty());
        assert_eq!(t["vm2"].running, vec!["r".to_string()]);
    }

    fn probe(exit: Option<i32>, alive: bool) -> Probe {
        Probe {
            known: true,
            alive,
            exit_code: exit,
            finished_at: Some(t0()),
            started_at: None,
            kill_requested: false,
            tmux: alive,
            cancelled: false,
            claimed: false,
            queued: false,
            phase: match (exit, alive) {
                (Some(_), _) => Phase::Ended,
                (None, true) => Phase::Running,
                // Its files are there and nothing of it started: never placed.
                (None, false) => Phase::Launching,
            },
            reason: None,
            detail: None,
            silent_since: None,
        }
    }

    #[test]
    fn probes_settle_only_active_sessions_not_being_launched() {
        let mut st = State::default();
        st.sessions
            .insert("r".into(), session("r", "vm", SessionStatus::Running));
        st.sessions
            .insert("k".into(), session("k", "vm", SessionStatus::Killed));
        st.sessions.insert("p".into(), pending("p", "vm", Some(1)));
        st.sessions.insert("d".into(), pending("d", "vm", Some(2)));
        st.sessions.insert("c".into(), pending("c", "vm", Some(2)));
        let claimed = Probe {
            claimed: true,
            cancelled: true,
            phase: Phase::Cancelled,
            ..probe(None, false)
        };
        let probes: HashMap<String, Probe> = [
            ("r".to_string(), probe(Some(0), false)),
            ("k".to_string(), probe(Some(0), false)),
            // Its start lives: even a claiming probe leaves it to the start.
            ("p".to_string(), claimed.clone()),
            // A dead start's session seen by a probe that did not claim it (output, attach):
            // a launch may still be on its way, so it stays pending.
            ("d".to_string(), probe(None, false)),
            ("c".to_string(), claimed),
        ]
        .into();
        assert_eq!(apply_probes(&mut st, &probes, t0(), &check), 2);
        assert_eq!(st.sessions["d"].status, SessionStatus::Pending);
        assert_eq!(st.sessions["c"].status, SessionStatus::Failed);
        assert_eq!(
            st.sessions["c"].error.as_deref(),
            Some(lifecycle::NEVER_LAUNCHED)
        );
        assert_eq!(st.sessions["r"].status, SessionStatus::Completed);
        assert_eq!(st.sessions["r"].exit_code, Some(0));
        assert_eq!(st.sessions["k"].status, SessionStatus::Killed);
        assert_eq!(st.sessions["p"].status, SessionStatus::Pending);
    }

    #[test]
    fn an_exit_seen_during_a_live_kill_is_recorded_killed() {
        let mut st = State::default();
        for (id, by) in [("a", 1), ("b", 2)] {
            let mut s = session(id, "vm", SessionStatus::Running);
            s.kill_request = Some(KillRequest {
                at: t0(),
                by: owner(by),
            });
            st.sessions.insert(id.into(), s);
        }
        let probes: HashMap<String, Probe> = [
            ("a".to_string(), probe(Some(143), false)),
            ("b".to_string(), probe(Some(143), false)),
        ]
        .into();
        apply_probes(&mut st, &probes, t0(), &check);
        assert_eq!(st.sessions["a"].status, SessionStatus::Killed);
        assert!(st.sessions["a"].kill_request.is_none());
        // The kill's process died before it signalled anything: its intent proves nothing.
        assert_eq!(st.sessions["b"].status, SessionStatus::Failed);
    }

    #[test]
    fn unarchived_sessions_ride_along_on_calls_made_anyway() {
        let mut st = State::default();
        for name in ["busy", "idle", "gone-soon"] {
            st.vm_pool
                .insert(name.into(), vm("Standard_E16s_v5", 4, "eastus"));
        }
        st.vm_pool.get_mut("gone-soon").unwrap().state = VmState::Provisioning;
        st.sessions
            .insert("r".into(), session("r", "busy", SessionStatus::Running));
        for i in 0..10 {
            let id = format!("done-{i:02}");
            st.sessions
                .insert(id.clone(), session(&id, "busy", SessionStatus::Completed));
        }
        let mut home = session("home", "busy", SessionStatus::Completed);
        home.archived_at = Some(t0());
        st.sessions.insert("home".into(), home);
        let mut never = session("never", "busy", SessionStatus::Failed);
        never.started_at = None;
        st.sessions.insert("never".into(), never);
        st.sessions
            .insert("i".into(), session("i", "idle", SessionStatus::Completed));
        st.sessions
            .insert("p".into(), session("p", "gone-soon", SessionStatus::Failed));
        // A pending session whose start died is claimed, by the same call.
        st.sessions
            .insert("dead".into(), pending("dead", "busy", Some(2)));
        let want = |plan: &BTreeMap<String, Vec<(String, Want)>>, vm: &str, id: &str| {
            plan[vm].iter().find(|(i, _)| i == id).map(|(_, w)| *w)
        };

        // A VM called anyway takes a few; one that is not called costs nothing.
        let plan = refresh_plan(&st, t0(), &check, &BTreeSet::new());
        assert_eq!(plan.keys().collect::<Vec<_>>(), ["busy"]);
        assert_eq!(plan["busy"].len(), 2 + UNARCHIVED_PER_CALL);
        assert!(
            plan["busy"]
                .iter()
                .all(|(id, _)| id != "home" && id != "never")
        );
        assert_eq!(want(&plan, "busy", "r"), Some(Want::Archive));
        assert_eq!(want(&plan, "busy", "dead"), Some(Want::Claim));
        assert_eq!(want(&plan, "busy", "done-00"), Some(Want::Archive));
        // `also` asks even a VM that has nothing due; never one being provisioned.
        let also: BTreeSet<String> = ["i", "p", "done-09"].map(String::from).into();
        let plan = refresh_plan(&st, t0(), &check, &also);
        assert_eq!(plan["idle"], vec![("i".to_string(), Want::Archive)]);
        assert!(!plan.contains_key("gone-soon"));
        assert_eq!(want(&plan, "busy", "done-09"), Some(Want::Archive));
        assert_eq!(plan["busy"].len(), 3 + UNARCHIVED_PER_CALL);
    }

    #[test]
    fn a_session_is_marked_archived_only_once_settled() {
        let mut st = State::default();
        st.sessions
            .insert("r".into(), session("r", "vm", SessionStatus::Running));
        st.sessions
            .insert("c".into(), session("c", "vm", SessionStatus::Completed));
        let at = t0() + Duration::seconds(5);
        let archived: Archived = ["r", "c", "unknown"].map(|id| (id.to_string(), at)).into();
        assert_eq!(mark_archived(&mut st, &archived), 1);
        assert!(st.sessions["r"].archived_at.is_none());
        assert_eq!(
            st.sessions["c"].archived_at,
            Some(at),
            "the archive's own time"
        );
        assert_eq!(mark_archived(&mut st, &archived), 0, "marked once");
    }

    #[test]
    fn a_collected_mark_is_recorded_only_for_sessions_archived_here_and_told_until_confirmed() {
        let mut st = State::default();
        st.vm_pool
            .insert("vm".into(), vm("Standard_E16s_v5", 4, "eastus"));
        let mut home = session("home", "vm", SessionStatus::Completed);
        home.archived_at = Some(t0());
        st.sessions.insert("home".into(), home);
        st.sessions.insert(
            "away".into(),
            session("away", "vm", SessionStatus::Completed),
        );
        st.sessions
            .insert("r".into(), session("r", "vm", SessionStatus::Running));
        assert_eq!(unconfirmed_collected(&st, "vm"), ["home"]);
        assert!(unconfirmed_collected(&st, "other").is_empty());
        let told: BTreeSet<String> = ["home", "away", "r", "unknown"].map(String::from).into();
        assert_eq!(mark_collected(&mut st, &told), 1);
        assert!(st.sessions["home"].vm_marked_collected());
        assert!(
            !st.sessions["away"].vm_marked_collected(),
            "not home: no mark"
        );
        assert!(unconfirmed_collected(&st, "vm").is_empty());
        assert_eq!(mark_collected(&mut st, &told), 0, "marked once");
        let text = serde_json::to_string(&st).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert!(
            back.sessions["home"].vm_marked_collected(),
            "kept in the file"
        );
    }

    #[test]
    fn a_dead_starts_reservations_are_recovered_at_once() {
        let mut st = State::default();
        let mut provisioning = vm("Standard_E16s_v5", 4, "eastus");
        provisioning.state = VmState::Provisioning;
        provisioning.owner = Some(owner(2));
        st.vm_pool.insert("new".into(), provisioning.clone());
        provisioning.owner = Some(owner(1));
        st.vm_pool.insert("busy".into(), provisioning);
        st.vm_pool
            .insert("ready".into(), vm("Standard_E16s_v5", 4, "eastus"));
        let mut deleting = vm("Standard_E16s_v5", 4, "eastus");
        deleting.state = VmState::Deleting;
        deleting.owner = Some(owner(2));
        st.vm_pool.insert("deleting".into(), deleting);
        st.sessions.insert("n".into(), pending("n", "new", Some(2)));
        st.sessions
            .insert("gone".into(), pending("gone", "not-in-pool", Some(2)));
        st.sessions
            .insert("b".into(), pending("b", "busy", Some(1)));
        st.sessions
            .insert("r".into(), pending("r", "ready", Some(2)));
        assert!(recover_abandoned(&mut st, t0(), &check));
        assert_eq!(st.vm_pool["new"].state, VmState::Failed);
        assert_eq!(st.vm_pool["deleting"].state, VmState::Failed);
        assert_eq!(st.vm_pool["busy"].state, VmState::Provisioning);
        assert_eq!(st.sessions["n"].status, SessionStatus::Failed);
        assert_eq!(st.sessions["gone"].status, SessionStatus::Failed);
        assert!(st.sessions["n"].owner.is_none());
        assert_eq!(st.sessions["b"].status, SessionStatus::Pending);
        // On a ready VM the launch may have happened: the probe decides.
        assert_eq!(st.sessions["r"].status, SessionStatus::Pending);
        assert!(!recover_abandoned(&mut st, t0(), &check));
    }
}
