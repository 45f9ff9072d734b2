//! `sync`: rebuilds and merges the state from the VMs, which hold the truth about their
//! sessions, so a lost state file or a second machine loses nothing.
//!
//! 1. Round 1, all at once: azlin's listing of the configured resource group and of every
//!    group the state records (one call per group), and a `records` call to every VM the state
//!    knows and to this machine (the local backend), which tells all a VM knows of its sessions.
//! 2. Round 2: a `records` call to each pool VM only the listing told of (this user's
//!    `amplihack-<user>-<time>` VMs the state lacks). A sync of a state that knows its pool
//!    takes one round; rebuilding a lost one, two.
//! 3. Merge the answers in one transaction (`reconcile::merge`); no lock is held while asking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::SyncArgs;
use crate::core::model::{Backend, State, VmEntry, VmState};
use crate::core::pool::LOCAL_VM_NAME;
use crate::core::reconcile::{self, Findings, Merged};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec::{self, OnInterrupt};
use crate::remote::answer::VmRecords;
use crate::remote::transport::{ListedVm, VmRef};
use crate::remote::{answer, request};
use crate::{core::naming, parallel, refresh, ui};

/// What `sync` did, as printed (`--json` fields: docs/architecture.md).
#[derive(Debug, Serialize)]
struct SyncReport {
    dry_run: bool,
    /// Whether the state changed (with `--dry-run`: would change).
    changed: bool,
    #[serde(flatten)]
    merged: Merged,
    /// Pool VMs not asked, and why.
    skipped_vms: Vec<SkippedVm>,
    /// Resource groups whose listing failed; their VMs the state knows were still asked.
    listing_failed: Vec<ListingFailure>,
}

#[derive(Debug, Serialize)]
struct SkippedVm {
    name: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct ListingFailure {
    /// `null`: azlin's default group.
    resource_group: Option<String>,
    error: String,
}

pub fn run(ctx: &Ctx, args: SyncArgs) -> Result<()> {
    // A corrupt state refuses here, before any remote call.
    let state = ctx.store.load()?;
    let now = ctx.now();
    let mut due = refresh::sessions_to_probe(&state, now, &exec::liveness);
    let mut skipped = Vec::new();

    // Round 1, all at once: azlin's listings, and every VM the state knows (one call each).
    let groups = groups_to_list(ctx, &state);
    let known = known_targets(ctx, &state, &mut due, &mut skipped);
    ui::progress(&format!(
        "Listing pool VMs and asking {} VM(s) for their sessions...",
        known.len()
    ));
    let calls: Vec<Call> = groups
        .iter()
        .map(|rg| Call::List(rg.as_deref()))
        .chain(known.iter().map(Call::Records))
        .collect();
    let mut listings = Vec::new();
    let mut asked = Vec::new();
    for (call, reply) in
        calls
            .iter()
            .zip(parallel::map_bounded(&calls, ctx.settings.parallel, |c| {
                c.run(ctx)
            }))
    {
        match (call, reply) {
            (Call::List(rg), Reply::Listing(r)) => listings.push((rg.map(String::from), r)),
            (Call::Records(t), Reply::Records(r)) => asked.push((*t, r)),
            _ => unreachable!("each reply answers its own call"),
        }
    }
    let configured = ctx
        .transports
        .azlin
        .default_resource_group()
        .map(String::from);
    let (listed, listing_failed) = collect_listings(&configured, listings)?;
    if crate::interrupt::requested() {
        return Err(Error::Interrupted);
    }

    // Round 2: pool VMs only the listing told of.
    let found = listed_targets(ctx, &state, &listed, &mut due, &mut skipped);
    if !found.targets.is_empty() {
        ui::progress(&format!(
            "Asking {} more VM(s) from azlin's listing...",
            found.targets.len()
        ));
    }
    let replies = parallel::map_bounded(&found.targets, ctx.settings.parallel, |t| {
        Call::Records(t).run(ctx)
    });
    for (t, reply) in found.targets.iter().zip(replies) {
        let Reply::Records(r) = reply else {
            unreachable!("each reply answers its own call")
        };
        asked.push((t, r));
    }

    let mut findings = Findings {
        vms: found.new_vms,
        answers: BTreeMap::new(),
        unreachable: found.not_running,
        archives: ctx.archive.all_archived(),
    };
    // Pool VMs azlin confirmed gone: settled after the merge, as a refresh settles them.
    let mut gone: Vec<(String, Error)> = Vec::new();
    for (target, answer) in asked {
        let name = &target.vm.name;
        match answer {
            Ok(records) if target.vm.backend == Backend::Local => {
                // This machine belongs to the pool once it has sessions.
                if state.vm_pool.contains_key(name) || !records.records.is_empty() {
                    let capacity = ctx.local_capacity();
                    findings
                        .vms
                        .insert(name.clone(), reconcile::local_vm(capacity, &records, now));
                    findings.answers.insert(name.clone(), records);
                }
            }
            Ok(records) => {
                findings.answers.insert(name.clone(), records);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) if target.vm.backend == Backend::Local && !state.vm_pool.contains_key(name) => {
                ui::warn(&format!("could not look for sessions on this machine: {e}"));
            }
            Err(e @ Error::VmNotFound { .. }) if state.vm_pool.contains_key(name) => {
                gone.push((name.clone(), e));
            }
            Err(e) => {
                // A VM azlin lists as stopped cannot answer: say so rather than ssh's words.
                let reason = match listed.get(name) {
                    Some((v, _)) if v.power_state != "Running" => not_running(name, v),
                    _ => e.to_string(),
                };
                findings.unreachable.insert(name.clone(), reason);
            }
        }
    }

    // Pool VMs azlin confirmed gone end their sessions as a refresh would (a dry run only
    // says so); a VM azlin could not confirm gone is one that did not answer.
    let mut state = state;
    let mut settled_gone = BTreeSet::new();
    for (vm, e) in gone {
        if args.dry_run {
            ui::warn(&format!(
                "{e} (a dry run: its sessions are left as they are)"
            ));
        } else if let Some(settled) = refresh::settle_if_vm_gone(ctx, &state, &vm, &e)? {
            state = settled;
            settled_gone.insert(vm.clone());
        }
        findings.unreachable.insert(vm, e.to_string());
    }

    // Preview on what was read; write (one transaction, merging into the state as it is
    // then) only when that changes something, or when there is no state file yet.
    let alive = exec::liveness;
    let mut preview = state.clone();
    let merged = reconcile::merge(&mut preview, &findings, now, &alive);
    let changed = preview != state;
    let merged = if !args.dry_run && (changed || !ctx.store.exists()) {
        ctx.store
            .update(|st| Ok(reconcile::merge(st, &findings, now, &alive)))?
    } else {
        merged
    };
    let report = SyncReport {
        dry_run: args.dry_run,
        changed,
        merged,
        skipped_vms: skipped,
        listing_failed,
    };
    if args.json {
        let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
        text.push('\n');
        ui::print(&text)?;
    } else {
        ui::print_text(&report_text(&report))?;
    }
    // A VM azlin confirmed gone was dealt with (its sessions settled): not "no answer".
    if report.merged.answered.is_empty()
        && report
            .merged
            .unreachable_vms
            .iter()
            .any(|v| !settled_gone.contains(&v.name))
    {
        let names: Vec<&str> = report
            .merged
            .unreachable_vms
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        return Err(Error::NoVmAnswered(names.join(", ")));
    }
    Ok(())
}

/// One remote call of `sync`.
enum Call<'a> {
    /// `azlin list` of a resource group (`None`: azlin's default).
    List(Option<&'a str>),
    /// A VM's `records`.
    Records(&'a Target),
}

enum Reply {
    Listing(Result<Vec<ListedVm>>),
    Records(Result<VmRecords>),
}

impl Call<'_> {
    fn run(&self, ctx: &Ctx) -> Reply {
        match self {
            Call::List(rg) => Reply::Listing(
                ctx.transports
                    .azlin
                    .list_vms(*rg, ctx.settings.timeouts.list),
            ),
            Call::Records(target) => {
                let running: Vec<&str> = target.ids.running.iter().map(String::as_str).collect();
                let claim: Vec<&str> = target.ids.claim.iter().map(String::as_str).collect();
                Reply::Records(
                    ctx.run_on(
                        &target.vm,
                        request::records_script(&running, &claim),
                        ctx.settings.timeouts.probe,
                        OnInterrupt::Abort,
                    )
                    .map(|out| answer::parse_records(&out.stdout)),
                )
            }
        }
    }
}

/// The configured resource group (else azlin's default, by name when its config gives one, as
/// `start` records it on new VMs) and every group the state records for its VMs. With the local
/// backend configured and no Azure VM in the state: none, so azlin is not called at all.
fn groups_to_list(ctx: &Ctx, state: &State) -> Vec<Option<String>> {
    let mut groups = refresh::resource_groups(ctx, state);
    if ctx.settings.backend == Backend::Azure || !groups.is_empty() {
        groups.insert(
            ctx.transports
                .azlin
                .default_resource_group()
                .map(String::from),
        );
    }
    groups.into_iter().collect()
}

/// A VM listed by azlin, and the resource group its listing named (`None`: azlin's default).
type Listed = BTreeMap<String, (ListedVm, Option<String>)>;

/// The VMs azlin listed. A failure to list the configured group is the command's failure
/// (azlin missing, login needed, no group: the pool cannot be found); another group's failure
/// is reported, and the state's VMs in it were asked all the same.
fn collect_listings(
    configured: &Option<String>,
    listings: Vec<(Option<String>, Result<Vec<ListedVm>>)>,
) -> Result<(Listed, Vec<ListingFailure>)> {
    let mut listed = Listed::new();
    let mut failed = Vec::new();
    for (rg, result) in listings {
        match result {
            Ok(vms) => {
                for v in vms {
                    listed
                        .entry(v.name.clone())
                        .or_insert_with(|| (v, rg.clone()));
                }
            }
            Err(e)
                if &rg == configured
                    || matches!(
                        e,
                        Error::Interrupted
                            | Error::AzlinMissing(_)
                            | Error::AzureAuth(_)
                            | Error::NoResourceGroup
                    ) =>
            {
                return Err(e);
            }
            Err(e) => {
                ui::warn(&format!(
                    "could not list resource group '{}': {e}",
                    rg.as_deref().unwrap_or("(azlin's default)")
                ));
                failed.push(ListingFailure {
                    resource_group: rg,
                    error: e.to_string(),
                });
            }
        }
    }
    Ok((listed, failed))
}

/// One VM to ask, and the sessions the state has there that are due for settling (running,
/// or pending with their start gone), whose facts it must give even without a directory.
struct Target {
    vm: VmRef,
    ids: refresh::ProbeTargets,
}

fn target(vm: VmRef, due: &mut BTreeMap<String, refresh::ProbeTargets>) -> Target {
    Target {
        ids: due.remove(&vm.name).unwrap_or_default(),
        vm,
    }
}

/// The VMs the state knows that can be asked at once: its ready Azure VMs, and this machine
/// (always: it is in the pool once it has sessions). A VM being provisioned or deleted is
/// another command's business; one whose provisioning or deletion failed waits for the
/// listing (round 2).
fn known_targets(
    ctx: &Ctx,
    state: &State,
    due: &mut BTreeMap<String, refresh::ProbeTargets>,
    skipped: &mut Vec<SkippedVm>,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for (name, vm) in &state.vm_pool {
        if vm.backend != Backend::Azure {
            continue;
        }
        let reason = match vm.state {
            VmState::Ready => {
                targets.push(target(ctx.vm_ref(state, name), due));
                continue;
            }
            VmState::Failed => continue,
            VmState::Provisioning => "a start is provisioning it",
            VmState::Deleting => "prune is deleting it",
        };
        skipped.push(SkippedVm {
            name: name.clone(),
            reason: reason.into(),
        });
    }
    targets.push(target(ctx.vm_ref(state, LOCAL_VM_NAME), due));
    targets
}

/// What azlin's listing adds to round 1.
struct FromListing {
    /// VMs to ask now.
    targets: Vec<Target>,
    /// Entries of this user's listed VMs the state lacks.
    new_vms: BTreeMap<String, VmEntry>,
    /// Listed VMs that are not running (stopped, deallocated), not asked, and why.
    not_running: BTreeMap<String, String>,
}

/// Pool VMs only the listing tells of: this user's (`amplihack-<user>-<time>`) that the state
/// lacks, and the state's failed VMs that azlin lists (they exist). A listed VM that is not
/// running cannot answer and is not asked.
fn listed_targets(
    ctx: &Ctx,
    state: &State,
    listed: &Listed,
    due: &mut BTreeMap<String, refresh::ProbeTargets>,
    skipped: &mut Vec<SkippedVm>,
) -> FromListing {
    let mut out = FromListing {
        targets: Vec::new(),
        new_vms: BTreeMap::new(),
        not_running: BTreeMap::new(),
    };
    for (name, vm) in &state.vm_pool {
        if vm.backend == Backend::Azure && vm.state == VmState::Failed && !listed.contains_key(name)
        {
            skipped.push(SkippedVm {
                name: name.clone(),
                reason: "its provisioning or deletion failed and azlin does not list it; 'amplihack remote prune' settles it".into(),
            });
        }
    }
    for (name, (v, listed_in)) in listed {
        let vm = match state.vm_pool.get(name) {
            Some(entry) if entry.state == VmState::Failed => ctx.vm_ref(state, name),
            Some(_) => continue,
            None => {
                let Some(created_at) = naming::vm_name_time(name, &ctx.settings.user) else {
                    continue;
                };
                out.new_vms.insert(
                    name.clone(),
                    reconcile::vm_from_listing(v, listed_in.as_deref(), created_at),
                );
                VmRef {
                    name: name.clone(),
                    backend: Backend::Azure,
                    resource_group: listed_in.clone(),
                }
            }
        };
        if v.power_state == "Running" {
            out.targets.push(target(vm, due));
        } else {
            out.not_running.insert(name.clone(), not_running(name, v));
        }
    }
    out
}

fn not_running(name: &str, v: &ListedVm) -> String {
    format!(
        "its power state is {}; start it with 'azlin start {name}'",
        v.power_state
    )
}

fn report_text(r: &SyncReport) -> String {
    let m = &r.merged;
    let mut out = String::new();
    let asked = m.answered.len() + m.unreachable_vms.len();
    let _ = writeln!(
        out,
        "Asked {asked} VM(s): {} answered, {} did not.",
        m.answered.len(),
        m.unreachable_vms.len()
    );
    let would = if r.dry_run { "Would add" } else { "Added" };
    for v in &m.added_vms {
        let _ = writeln!(out, "{would} VM {} ({}, {})", v.name, v.sku, v.region);
    }
    for s in &m.added_sessions {
        let _ = writeln!(
            out,
            "{would} session {} on {}: {}",
            s.session_id, s.vm_name, s.status
        );
    }
    let would = if r.dry_run { "Would settle" } else { "Settled" };
    for s in &m.settled_sessions {
        let _ = writeln!(
            out,
            "{would} session {} on {}: {} -> {}",
            s.session_id, s.vm_name, s.from, s.to
        );
    }
    for v in &m.unreachable_vms {
        let _ = writeln!(out, "Could not reach VM {}: {}", v.name, v.reason);
        if !v.kept_sessions.is_empty() {
            let _ = writeln!(
                out,
                "  kept its {} session(s) as last known: {}",
                v.kept_sessions.len(),
                v.kept_sessions.join(", ")
            );
        }
    }
    if !m.not_on_vm.is_empty() {
        let _ = writeln!(
            out,
            "Kept {} session(s) their VM has no directory of (the Python original's, or never launched):",
            m.not_on_vm.len()
        );
        for s in &m.not_on_vm {
            let _ = writeln!(out, "  {} on {}: {}", s.session_id, s.vm_name, s.status);
        }
    }
    for u in &m.unreadable {
        let _ = writeln!(
            out,
            "Could not add session {} on {}: {}",
            u.session_id, u.vm_name, u.reason
        );
    }
    for s in &r.skipped_vms {
        let _ = writeln!(out, "Skipped VM {}: {}", s.name, s.reason);
    }
    for f in &r.listing_failed {
        let _ = writeln!(
            out,
            "Could not list resource group {}: {}",
            f.resource_group.as_deref().unwrap_or("(azlin's default)"),
            f.error
        );
    }
    let summary = format!(
        "{} VM(s) and {} session(s) added, {} session(s) settled",
        m.added_vms.len(),
        m.added_sessions.len(),
        m.settled_sessions.len()
    );
    let _ = match (r.dry_run, r.changed) {
        (true, true) => writeln!(out, "Dry run, nothing written: {summary}."),
        (true, false) => writeln!(out, "Dry run: the state already agrees with the VMs."),
        (false, true) => writeln!(out, "State updated: {summary}."),
        (false, false) => writeln!(out, "Nothing to change: the state agrees with the VMs."),
    };
    out
}
