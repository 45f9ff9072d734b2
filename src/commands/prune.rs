//! `prune`: delete pool VMs that have no pending or running session and have been idle long
//! enough, and drop VMs that no longer exist in Azure. A VM whose deletion fails stays in the
//! state with its error: we never lose track of a billable VM.
//!
//! Before a VM goes, the results of its finished sessions must be home: the refresh prune
//! makes first brings the archives of those not archived yet, in its one call per VM. A VM
//! some of whose sessions could not be archived is kept, unless `--force`, which deletes it
//! and says whose output and commits are lost.
//!
//! The state is one machine's view: another machine (another state file) may run or queue
//! sessions on the same VMs. Before deleting anything, prune asks each ready VM it would delete
//! what it holds (its own records, one call per VM). A VM that runs, queues or is launching any
//! session is kept, whatever `--force` says, and the confirmation names the sessions found. A
//! VM holding ended sessions of another machine whose results that machine has not brought
//! home (no `collected` mark: docs/remote-layout.md) is kept too, unless `--force`, which
//! deletes it and names whose results are lost.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use chrono::Duration;
use serde::Serialize;

use crate::cli::PruneArgs;
use crate::core::lifecycle::Phase;
use crate::core::model::{Backend, State, VmState};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::{
    core::model, core::pool, interrupt, parallel, refresh, remote::answer, remote::request, ui,
    ui::render,
};

#[derive(Serialize)]
struct Pruned {
    name: String,
    sku: String,
    region: String,
    idle_minutes: Option<i64>,
    reason: String,
    result: String,
    /// Sessions of the VM whose results are not archived: kept from deletion, or lost with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_archived: Vec<String>,
    /// Sessions the VM holds that this state does not track (another machine's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    foreign_sessions: Vec<String>,
    /// Ended sessions of another machine whose results it has not brought home (their VM
    /// holds no `collected` mark): kept from deletion, or lost with it (`--force`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_collected: Vec<String>,
}

/// What a VM holds by its own records, as far as deleting it goes.
#[derive(Debug, Default)]
struct Holds {
    /// Sessions that run, wait in its queue, or are being launched: it must not go.
    live: Vec<String>,
    /// Sessions this state does not track (live or not): another machine's.
    foreign: Vec<String>,
    /// Ended sessions of another machine whose results it has not brought home: their
    /// directories hold no `collected` mark.
    not_collected: Vec<String>,
    /// It could not be asked: what it holds is unknown.
    unanswered: Option<String>,
}

impl Holds {
    /// Why the VM is kept, when it is.
    fn keeps(&self, force: bool) -> Option<String> {
        if !self.live.is_empty() {
            let foreign: Vec<&String> = self
                .live
                .iter()
                .filter(|id| self.foreign.contains(id))
                .collect();
            return Some(format!(
                "it runs or queues {} session(s){}: {}",
                self.live.len(),
                if foreign.len() == self.live.len() {
                    " this state does not track (another machine's)"
                } else {
                    ""
                },
                self.live.join(", ")
            ));
        }
        if !self.not_collected.is_empty() && !force {
            return Some(format!(
                "it holds {} ended session(s) of another machine whose results that machine has not brought home: {}; run 'amplihack remote list' on the machine that started them (it brings them home), then prune again; or 'amplihack remote sync' here to adopt them (prune then brings them home here); or pass --force to delete the VM and lose them",
                self.not_collected.len(),
                self.not_collected.join(", ")
            ));
        }
        match &self.unanswered {
            Some(e) if !force => Some(format!(
                "could not ask it what it runs ({e}); pass --force to delete it anyway"
            )),
            _ => None,
        }
    }
}

/// Asks each ready candidate VM what it holds (`records`: every session directory it has, with
/// its phase), one call per VM, in parallel. VMs Azure no longer has, and VMs whose
/// provisioning failed, are not asked.
fn ask_what_vms_hold(
    ctx: &Ctx,
    state: &State,
    candidates: &[(pool::IdleVm, String)],
    missing: &BTreeSet<String>,
) -> Result<BTreeMap<String, Holds>> {
    let ask: Vec<String> = candidates
        .iter()
        .filter(|(v, _)| v.state == VmState::Ready && !missing.contains(&v.name))
        .map(|(v, _)| v.name.clone())
        .collect();
    let answers = parallel::map_bounded(&ask, ctx.settings.parallel, |name| {
        if interrupt::requested() {
            return (name.clone(), Err(Error::Interrupted));
        }
        let vm = ctx.vm_ref(state, name);
        let answer = ctx
            .run_on(
                &vm,
                request::records_script(&[], &[]),
                ctx.settings.timeouts.probe,
                OnInterrupt::Abort,
            )
            .map(|out| answer::parse_records(&out.stdout));
        (name.clone(), answer)
    });
    let mut holds = BTreeMap::new();
    for (name, answer) in answers {
        let mut h = Holds::default();
        match answer {
            Ok(records) => {
                for (id, probe) in &records.probes {
                    if matches!(
                        probe.phase,
                        Phase::Running | Phase::Queued | Phase::Launching
                    ) {
                        h.live.push(id.clone());
                    }
                }
                for id in records.records.keys().chain(records.probes.keys()) {
                    if !state.sessions.contains_key(id) && !h.foreign.contains(id) {
                        h.foreign.push(id.clone());
                    }
                }
                // Another machine's sessions that ran and ended: their results are on this
                // VM alone until that machine brings them home and says so.
                for id in &h.foreign {
                    let ran = records
                        .probes
                        .get(id)
                        .is_some_and(|p| matches!(p.phase, Phase::Ended | Phase::Vanished));
                    if ran && !records.collected.contains(id) {
                        h.not_collected.push(id.clone());
                    }
                }
                h.live.sort();
                h.foreign.sort();
                h.not_collected.sort();
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            // Gone since the listing: it holds nothing.
            Err(Error::VmNotFound { .. }) => {}
            Err(e) => h.unanswered = Some(e.to_string()),
        }
        holds.insert(name, h);
    }
    Ok(holds)
}

/// Sessions of `vm` that ran and whose results are not home: deleting the VM loses them.
fn not_archived(state: &State, vm: &str) -> Vec<String> {
    state
        .sessions
        .values()
        .filter(|s| s.vm_name == vm && refresh::unarchived(state, s))
        .map(|s| s.session_id.clone())
        .collect()
}

pub fn run(ctx: &Ctx, args: PruneArgs) -> Result<()> {
    let now = ctx.now();
    let min_idle = Duration::minutes(args.idle_minutes as i64);
    // The finished sessions of VMs that may go, whose results are not home yet: the refresh
    // brings their archives in its call to their VM (a dry run deletes nothing, so needs none).
    let before = ctx.store.load()?;
    let also: BTreeSet<String> = if args.dry_run {
        BTreeSet::new()
    } else {
        let idle: BTreeSet<String> = pool::idle_vms(&before, now, min_idle)
            .into_iter()
            .map(|v| v.name)
            .collect();
        before
            .sessions
            .values()
            .filter(|s| idle.contains(&s.vm_name) && refresh::unarchived(&before, s))
            .map(|s| s.session_id.clone())
            .collect()
    };
    drop(before);
    // Settle finished sessions first, and learn which VMs Azure still has (one call).
    let refreshed = refresh::refresh_with(ctx, refresh::Power::Read, &also)?;
    let now = ctx.now();
    let mut candidates: Vec<(pool::IdleVm, String)> =
        pool::idle_vms(&refreshed.state, now, min_idle)
            .into_iter()
            .map(|v| {
                let reason = match v.state {
                    VmState::Failed => "provisioning or deletion failed earlier".to_string(),
                    _ => match v.idle_for {
                        Some(idle) => format!("idle for {}", render::age(now - idle, now)),
                        None => "never used, creation time unknown".to_string(),
                    },
                };
                (v, reason)
            })
            .collect();
    let missing = confirmed_gone(ctx, &refreshed)?;
    for (v, reason) in candidates.iter_mut() {
        if missing.contains(&v.name) {
            *reason = "no longer exists in Azure".into();
        }
    }
    for name in &missing {
        if !candidates.iter().any(|(v, _)| &v.name == name) {
            let vm = &refreshed.state.vm_pool[name];
            candidates.push((
                pool::IdleVm {
                    name: name.clone(),
                    sku: vm.size.clone(),
                    region: vm.region.clone(),
                    idle_for: Some(Duration::zero()),
                    state: vm.state,
                },
                "no longer exists in Azure".into(),
            ));
        }
    }

    if candidates.is_empty() {
        if args.json {
            return ui::print("[]\n");
        }
        return ui::print(&format!(
            "No VMs to prune (none idle for {} minutes or more).\n",
            args.idle_minutes
        ));
    }
    // What each VM holds by its own records: another machine may run sessions there.
    let holds = ask_what_vms_hold(ctx, &refreshed.state, &candidates, &missing)?;
    let foreign_of = |vm: &str| holds.get(vm).map(|h| h.foreign.clone()).unwrap_or_default();
    let not_collected_of = |vm: &str| {
        holds
            .get(vm)
            .map(|h| h.not_collected.clone())
            .unwrap_or_default()
    };
    // Kept for another machine's sake (its live work, or its results not home yet): a reason
    // to keep the VM, not a failure of this prune.
    let runs_work = |vm: &str| {
        holds
            .get(vm)
            .is_some_and(|h| !h.live.is_empty() || (!args.force && !h.not_collected.is_empty()))
    };
    let held: BTreeMap<String, String> = holds
        .iter()
        .filter_map(|(vm, h)| h.keeps(args.force).map(|why| (vm.clone(), why)))
        .collect();
    let unarchived: BTreeMap<String, Vec<String>> = candidates
        .iter()
        .map(|(v, _)| (v.name.clone(), not_archived(&refreshed.state, &v.name)))
        .filter(|(_, ids)| !ids.is_empty())
        .collect();
    if args.dry_run {
        let report: Vec<Pruned> = candidates
            .iter()
            .map(|(v, reason)| {
                let ids = unarchived.get(&v.name).cloned().unwrap_or_default();
                let lost = not_collected_of(&v.name);
                let result = if let Some(why) = held.get(&v.name) {
                    format!("would be KEPT: {why}")
                } else if !lost.is_empty() {
                    format!(
                        "would be deleted, losing the results of {} session(s) of another machine never brought home: {}",
                        lost.len(),
                        lost.join(", ")
                    )
                } else if ids.is_empty() || missing.contains(&v.name) {
                    "would be deleted".to_string()
                } else {
                    format!(
                        "would be deleted once the results of {} session(s) are archived",
                        ids.len()
                    )
                };
                pruned(v, reason, &result, ids, foreign_of(&v.name), lost)
            })
            .collect();
        return print_report(&report, args.json, "Would delete");
    }
    // A VM whose sessions' results could not be brought home stays, unless --force. One
    // Azure no longer has is gone already: nothing of it can be saved.
    let mut blocked: BTreeMap<String, String> = unarchived
        .iter()
        .filter(|(vm, _)| !args.force && !missing.contains(*vm))
        .map(|(vm, ids)| {
            // The VM answered and sent the archives, but they could not be kept here: the
            // archive folder is the problem, not the VM.
            let local = ids.iter().find_map(|id| refreshed.archive_failures.get(id));
            let why = match (refreshed.failed_vms.get(vm), local) {
                (Some(e), _) => e.to_string(),
                (None, Some(why)) => format!(
                    "their archives came home but could not be kept in {}: {why}",
                    ctx.archive.root().display()
                ),
                (None, None) => "their archives did not come home".to_string(),
            };
            (
                vm.clone(),
                format!("{} session(s) not archived: {why}", ids.len()),
            )
        })
        .collect();
    for (vm, why) in &held {
        ui::warn(&format!("keeping VM {vm}: {why}"));
        if runs_work(vm) {
            blocked.insert(vm.clone(), why.clone());
        } else {
            // Results it could not archive say more than "could not ask".
            blocked.entry(vm.clone()).or_insert_with(|| why.clone());
        }
    }
    for (vm, ids) in &unarchived {
        if (args.force || missing.contains(vm)) && !blocked.contains_key(vm) {
            ui::warn(&format!(
                "deleting VM {vm} loses the output and commits of session(s) never archived: {}",
                ids.join(", ")
            ));
        }
    }
    for (vm, h) in &holds {
        if !h.not_collected.is_empty() && !blocked.contains_key(vm) {
            ui::warn(&format!(
                "deleting VM {vm} (--force) loses the results of {} session(s) of another machine, never brought home by the machine that started them: {}",
                h.not_collected.len(),
                h.not_collected.join(", ")
            ));
        }
    }
    let deletable: Vec<&(pool::IdleVm, String)> = candidates
        .iter()
        .filter(|(v, _)| !blocked.contains_key(&v.name))
        .collect();
    if !args.yes && !deletable.is_empty() {
        if !ui::stdin_is_terminal() {
            return Err(Error::InvalidArgs(
                "prune deletes VMs; pass --yes to confirm when not on a terminal (or --dry-run to see what would go)".into(),
            ));
        }
        let names: Vec<String> = deletable
            .iter()
            .map(|(v, _)| match foreign_of(&v.name) {
                ids if ids.is_empty() => v.name.clone(),
                ids => format!(
                    "{} (with {} ended session(s) of another machine: {})",
                    v.name,
                    ids.len(),
                    ids.join(", ")
                ),
            })
            .collect();
        eprint!("Delete {} VM(s): {}? [y/N] ", names.len(), names.join(", "));
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return ui::print("Nothing deleted.\n");
        }
    }

    // Reserve: mark the VMs `deleting` under the lock, re-checking each is still idle (and
    // has no results left to archive), so no start places a session on a VM we are about to
    // delete. The reservation carries its owner: a prune that dies mid-deletion is recovered.
    let chosen: Vec<String> = deletable.iter().map(|(v, _)| v.name.clone()).collect();
    let to_delete: Vec<String> = if chosen.is_empty() {
        Vec::new()
    } else {
        reserve(ctx, &chosen, args.force, &missing)?
    };

    // At most AMPLIHACK_REMOTE_PARALLEL `azlin kill` at once.
    let results: Vec<(String, Result<()>)> =
        parallel::map_bounded(&to_delete, ctx.settings.parallel, |name| {
            if missing.contains(name) {
                return (name.clone(), Ok(()));
            }
            // After Ctrl+C, deletions still waiting for their turn do not start.
            if interrupt::requested() {
                return (name.clone(), Err(Error::Interrupted));
            }
            let vm = ctx.vm_ref(&refreshed.state, name);
            ui::progress(&format!("Deleting VM {name}..."));
            (
                name.clone(),
                ctx.transports
                    .azlin
                    .delete_vm(&vm, ctx.settings.timeouts.delete),
            )
        });
    let now = ctx.now();
    let kept_watching: BTreeSet<String> = if results.is_empty() {
        BTreeSet::new()
    } else {
        ctx.store.update(|st| {
            let mut kept = BTreeSet::new();
            for (name, r) in &results {
                match r {
                    Ok(()) => match st.vm_pool.get_mut(name) {
                        Some(vm) if pool::creation_may_still_complete(vm, now) => {
                            vm.owner = None;
                            vm.state = VmState::Failed;
                            vm.error = Some(format!(
                                "deleted, but its cut creation may still complete in Azure; prune deletes it again after {}",
                                model::format_timestamp(&pool::creation_settled_after(vm))
                            ));
                            kept.insert(name.clone());
                        }
                        _ => {
                            st.vm_pool.remove(name);
                        }
                    },
                    Err(e) => {
                        if let Some(vm) = st.vm_pool.get_mut(name) {
                            vm.owner = None;
                            vm.state = VmState::Failed;
                            vm.error = Some(format!("deletion failed: {e}"));
                        }
                    }
                }
            }
            Ok(kept)
        })?
    };
    let mut report = Vec::new();
    let mut first_error = None;
    for (v, reason) in &candidates {
        let ids = unarchived.get(&v.name).cloned().unwrap_or_default();
        let theirs = not_collected_of(&v.name);
        let mut lost = if ids.is_empty() {
            String::new()
        } else {
            format!("; lost, never archived: {}", ids.join(", "))
        };
        if !theirs.is_empty() {
            lost.push_str(&format!(
                "; lost, never brought home by the machine that started them: {}",
                theirs.join(", ")
            ));
        }
        let outcome = match results.iter().find(|(n, _)| n == &v.name) {
            None => match blocked.get(&v.name) {
                Some(why) if runs_work(&v.name) || !unarchived.contains_key(&v.name) => {
                    format!("KEPT: {why}")
                }
                Some(why)
                    if ids
                        .iter()
                        .any(|id| refreshed.archive_failures.contains_key(id)) =>
                {
                    format!(
                        "KEPT: {why}; fix the archive folder and run prune again, or pass --force to delete it and lose them"
                    )
                }
                Some(why) => format!(
                    "KEPT: {why}; run prune again when its VM answers, or pass --force to delete it and lose them"
                ),
                None => "skipped: it took a session meanwhile".to_string(),
            },
            Some((_, Ok(()))) if kept_watching.contains(&v.name) => {
                format!(
                    "deleted; still tracked, as its cut creation may yet complete in Azure{lost}"
                )
            }
            Some((_, Ok(()))) if missing.contains(&v.name) => {
                format!("removed from the pool{lost}")
            }
            Some((_, Ok(()))) => format!("deleted{lost}"),
            Some((_, Err(e))) => format!("deletion FAILED, kept in the pool: {e}"),
        };
        report.push(pruned(
            v,
            reason,
            &outcome,
            ids,
            foreign_of(&v.name),
            theirs,
        ));
    }
    for (vm, why) in &blocked {
        // Another machine's live work is a reason to keep a VM, not a failure.
        if runs_work(vm) {
            continue;
        }
        if first_error.is_none() {
            first_error = Some(match refreshed.failed_vms.get(vm) {
                Some(e) => e.replicate(),
                None => Error::Failed(format!("VM {vm} was kept: {why}")),
            });
        }
    }
    for (_, r) in results {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    print_report(&report, args.json, "Pruned")?;
    first_error.map_or(Ok(()), Err)
}

/// Marks the chosen VMs `deleting` in one transaction, keeping only those still idle, not
/// being provisioned, and (unless `force`, or Azure has them no more) with no results left to
/// archive. Returns the VMs to delete.
fn reserve(
    ctx: &Ctx,
    chosen: &[String],
    force: bool,
    missing: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let me = crate::exec::current_owner();
    ctx.store.update(|st| {
        let counts = st.active_counts();
        let ok: Vec<String> = chosen
            .iter()
            .filter(|n| {
                !counts.contains_key(n.as_str())
                    && st
                        .vm_pool
                        .get(*n)
                        .is_some_and(|v| v.state != VmState::Provisioning)
                    && (force || missing.contains(*n) || not_archived(st, n).is_empty())
            })
            .cloned()
            .collect();
        for n in &ok {
            if let Some(vm) = st.vm_pool.get_mut(n) {
                vm.state = VmState::Deleting;
                vm.owner = Some(me.clone());
            }
        }
        Ok(ok)
    })
}

/// Pool VMs that azlin confirms are gone: absent from the listing of their resource group AND
/// `azlin show` in that group answers "not found". Only those are forgotten without a deletion;
/// a VM the listing merely does not show (another subscription, a listing of another group)
/// stays tracked, since forgetting it would leave a billable VM nobody sees.
fn confirmed_gone(ctx: &Ctx, refreshed: &refresh::Refreshed) -> Result<BTreeSet<String>> {
    let Some(power) = &refreshed.live.power else {
        return Ok(BTreeSet::new());
    };
    let unlisted: Vec<String> = refreshed
        .state
        .vm_pool
        .iter()
        .filter(|(name, vm)| {
            vm.backend == Backend::Azure
                && vm.state != VmState::Provisioning
                && !power.contains_key(*name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    // At most AMPLIHACK_REMOTE_PARALLEL `azlin show` at once.
    let answers: Vec<(String, Result<bool>)> =
        parallel::map_bounded(&unlisted, ctx.settings.parallel, |name| {
            // After Ctrl+C, calls still waiting for their turn do not start.
            if interrupt::requested() {
                return (name.clone(), Err(Error::Interrupted));
            }
            let vm = ctx.vm_ref(&refreshed.state, name);
            let exists = ctx
                .transports
                .azlin
                .vm_exists(&vm, ctx.settings.timeouts.list);
            (vm.name, exists)
        });
    let mut gone = BTreeSet::new();
    for (name, answer) in answers {
        match answer {
            Ok(false) => {
                gone.insert(name);
            }
            Ok(true) => {}
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => ui::warn(&format!(
                "VM '{name}' is not in azlin's listing and 'azlin show' could not confirm it is gone; keeping it tracked. {e}"
            )),
        }
    }
    Ok(gone)
}

fn pruned(
    v: &pool::IdleVm,
    reason: &str,
    result: &str,
    not_archived: Vec<String>,
    foreign_sessions: Vec<String>,
    not_collected: Vec<String>,
) -> Pruned {
    Pruned {
        name: v.name.clone(),
        sku: v.sku.clone(),
        region: v.region.clone(),
        idle_minutes: v.idle_for.map(|d| d.num_minutes()),
        reason: reason.into(),
        result: result.into(),
        not_archived,
        foreign_sessions,
        not_collected,
    }
}

fn print_report(report: &[Pruned], json: bool, title: &str) -> Result<()> {
    if json {
        let mut text = serde_json::to_string_pretty(report).expect("serializes");
        text.push('\n');
        return ui::print(&text);
    }
    // The heading counts what it says: VMs kept or skipped are listed under it, not counted.
    let done = report
        .iter()
        .filter(|p| {
            p.result.starts_with("deleted")
                || p.result.starts_with("removed")
                || p.result.starts_with("would be deleted")
        })
        .count();
    let mut text = if done == report.len() {
        format!("{title} {} VM(s):\n", report.len())
    } else {
        format!("{title} {done} of {} idle VM(s):\n", report.len())
    };
    for p in report {
        text.push_str(&format!(
            "  {} ({}, {}): {}: {}\n",
            p.name, p.sku, p.region, p.reason, p.result
        ));
    }
    ui::print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_machines_results_not_home_keep_a_vm_unless_forced() {
        let h = Holds {
            foreign: vec!["a".into(), "b".into()],
            not_collected: vec!["a".into()],
            ..Holds::default()
        };
        let why = h.keeps(false).expect("kept");
        assert!(
            why.contains("1 ended session(s) of another machine"),
            "{why}"
        );
        assert!(
            why.contains("amplihack remote list") && why.contains("--force"),
            "{why}"
        );
        assert_eq!(h.keeps(true), None, "--force deletes it");
        // Live work keeps it whatever --force says.
        let live = Holds {
            live: vec!["c".into()],
            ..h
        };
        assert!(live.keeps(true).is_some());
        let collected = Holds {
            foreign: vec!["a".into()],
            ..Holds::default()
        };
        assert_eq!(collected.keeps(false), None, "its results are home");
    }
}
