//! `sync`: rebuilds and merges the state from the VMs, which hold the truth about their
//! sessions, so a lost state file or a second machine loses nothing.
//!
//! 1. Find the pool: azlin's listing of the configured resource group and of every group the
//!    state records (one call per group; this user's `amplihack-<user>-<time>` VMs and the
//!    state's own), plus this machine (the local backend) when it has sessions.
//! 2. Ask every VM for all it knows of its sessions: one `records` call per VM, in parallel.
//! 3. Merge the answers in one transaction (`reconcile::merge`); no lock is held while asking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::SyncArgs;
use crate::commands::{Ctx, start};
use crate::error::{Error, Result};
use crate::exec::{self, OnInterrupt};
use crate::model::{Backend, State, VmEntry, VmState};
use crate::pool::LOCAL_VM_NAME;
use crate::reconcile::{self, Findings, Merged};
use crate::script::{self, VmRecords};
use crate::transport::{ListedVm, VmRef};
use crate::{naming, refresh, ui};

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

    let (listed, listing_failed) = list_pool(ctx, &state)?;
    let plan = plan(ctx, &state, &listed, now);
    let mut findings = Findings {
        vms: plan.new_vms,
        answers: BTreeMap::new(),
        unreachable: plan.not_running,
    };
    ui::progress(&format!(
        "Asking {} VM(s) for their sessions...",
        plan.targets.len()
    ));
    for (target, answer) in plan.targets.iter().zip(ask_vms(ctx, &plan.targets)) {
        let name = &target.vm.name;
        match answer {
            Ok(records) if target.vm.backend == Backend::Local => {
                // This machine belongs to the pool once it has sessions.
                if state.vm_pool.contains_key(name) || !records.records.is_empty() {
                    let capacity = start::local_capacity(ctx);
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
            Err(e) => {
                findings.unreachable.insert(name.clone(), e.to_string());
            }
        }
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
        skipped_vms: plan.skipped,
        listing_failed,
    };
    if args.json {
        let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
        text.push('\n');
        ui::print(&text)?;
    } else {
        ui::print(&report_text(&report))?;
    }
    if report.merged.answered.is_empty() && !report.merged.unreachable_vms.is_empty() {
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

/// Runs `work` on every item at once, one thread each, and returns the results in order.
/// The one place `sync` runs things in parallel, so a bounded-parallel helper can replace it.
fn in_parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sync thread"))
            .collect()
    })
}

/// A VM listed by azlin, and the resource group its listing named (`None`: azlin's default).
type Listed = BTreeMap<String, (ListedVm, Option<String>)>;

/// Lists the configured resource group (or azlin's default) and every group the state records
/// for its VMs, in parallel. A failure to list the configured group is the command's failure
/// (azlin missing, login needed, no group: nothing can be found); another group's failure is
/// reported, and the state's VMs in it are still asked. With the local backend configured and
/// no Azure VM in the state, azlin is not called at all.
fn list_pool(ctx: &Ctx, state: &State) -> Result<(Listed, Vec<ListingFailure>)> {
    let mut groups = refresh::resource_groups(ctx, state);
    let configured = ctx.settings.resource_group.clone();
    if ctx.settings.backend == Backend::Azure || !groups.is_empty() {
        groups.insert(configured.clone());
    }
    if groups.is_empty() {
        return Ok((Listed::new(), Vec::new()));
    }
    ui::progress("Listing pool VMs...");
    let groups: Vec<Option<String>> = groups.into_iter().collect();
    let results = in_parallel(&groups, |rg| {
        ctx.transports
            .azlin
            .list_vms(rg.as_deref(), ctx.settings.timeouts.list)
    });
    let mut listed = Listed::new();
    let mut failed = Vec::new();
    for (rg, result) in groups.into_iter().zip(results) {
        match result {
            Ok(vms) => {
                for v in vms {
                    listed
                        .entry(v.name.clone())
                        .or_insert_with(|| (v, rg.clone()));
                }
            }
            Err(e)
                if rg == configured
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
    ids: Vec<String>,
}

struct Plan {
    targets: Vec<Target>,
    /// Entries of listed pool VMs the state lacks.
    new_vms: BTreeMap<String, VmEntry>,
    /// Listed VMs that are not running (stopped, deallocated): not asked, and why.
    not_running: BTreeMap<String, String>,
    skipped: Vec<SkippedVm>,
}

/// Which VMs to ask. Pool VMs are this user's (`amplihack-<user>-<time>`) and those the state
/// has. A VM being provisioned or deleted is another command's business; one whose
/// provisioning or deletion failed is asked only when azlin lists it; a listed VM that is not
/// running cannot answer. This machine is always asked (it is in the pool once it has sessions).
fn plan(ctx: &Ctx, state: &State, listed: &Listed, now: DateTime<Utc>) -> Plan {
    let mut due = refresh::sessions_to_probe(state, now, &exec::liveness);
    let mut plan = Plan {
        targets: Vec::new(),
        new_vms: BTreeMap::new(),
        not_running: BTreeMap::new(),
        skipped: Vec::new(),
    };
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for (name, vm) in &state.vm_pool {
        if vm.backend == Backend::Azure {
            names.insert(name);
        }
    }
    for (name, (v, listed_in)) in listed {
        if state.vm_pool.contains_key(name) {
            continue;
        }
        if let Some(created_at) = naming::vm_name_time(name, &ctx.settings.user) {
            names.insert(name);
            plan.new_vms.insert(
                name.clone(),
                reconcile::vm_from_listing(v, listed_in.as_deref(), created_at),
            );
        }
    }
    for name in names {
        let entry = state.vm_pool.get(name);
        let listing = listed.get(name);
        let skip = match entry.map(|e| e.state) {
            Some(VmState::Provisioning) => Some("a start is provisioning it".to_string()),
            Some(VmState::Deleting) => Some("prune is deleting it".to_string()),
            Some(VmState::Failed) if listing.is_none() => Some(
                "its provisioning or deletion failed and azlin does not list it; 'amplihack remote prune' settles it"
                    .to_string(),
            ),
            _ => None,
        };
        if let Some(reason) = skip {
            plan.skipped.push(SkippedVm {
                name: name.to_string(),
                reason,
            });
            continue;
        }
        if let Some((v, _)) = listing
            && v.power_state != "Running"
        {
            plan.not_running.insert(
                name.to_string(),
                format!(
                    "its power state is {}; start it with 'azlin start {name}'",
                    v.power_state
                ),
            );
            continue;
        }
        let vm = match (entry, listing) {
            (Some(_), _) | (None, None) => ctx.vm_ref(state, name),
            (None, Some((_, listed_in))) => VmRef {
                name: name.to_string(),
                backend: Backend::Azure,
                resource_group: listed_in.clone(),
            },
        };
        plan.targets.push(Target {
            ids: due.remove(name).unwrap_or_default(),
            vm,
        });
    }
    plan.targets.push(Target {
        ids: due.remove(LOCAL_VM_NAME).unwrap_or_default(),
        vm: ctx.vm_ref(state, LOCAL_VM_NAME),
    });
    plan
}

/// Asks every target for its records, in parallel: one call per VM.
fn ask_vms(ctx: &Ctx, targets: &[Target]) -> Vec<Result<VmRecords>> {
    in_parallel(targets, |target| {
        let ids: Vec<&str> = target.ids.iter().map(String::as_str).collect();
        ctx.run_on(
            &target.vm,
            script::records_script(&ids),
            ctx.settings.timeouts.probe,
            OnInterrupt::Abort,
        )
        .map(|out| script::parse_records(&out.stdout))
    })
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
