//! `prune`: delete pool VMs that have no pending or running session and have been idle long
//! enough, and drop VMs that no longer exist in Azure. A VM whose deletion fails stays in the
//! state with its error: we never lose track of a billable VM.

use std::collections::BTreeSet;
use std::io::BufRead;

use chrono::Duration;
use serde::Serialize;

use crate::cli::PruneArgs;
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::model::{Backend, VmState};
use crate::{interrupt, parallel, pool, refresh, render, ui};

#[derive(Serialize)]
struct Pruned {
    name: String,
    sku: String,
    region: String,
    idle_minutes: i64,
    reason: String,
    result: String,
}

pub fn run(ctx: &Ctx, args: PruneArgs) -> Result<()> {
    // Settle finished sessions first, and learn which VMs Azure still has (one call).
    let refreshed = refresh::refresh(ctx, true)?;
    let now = ctx.now();
    let min_idle = Duration::minutes(args.idle_minutes as i64);
    let mut candidates: Vec<(pool::IdleVm, String)> =
        pool::idle_vms(&refreshed.state, now, min_idle)
            .into_iter()
            .map(|v| {
                let reason = match v.state {
                    VmState::Failed => "provisioning or deletion failed earlier".to_string(),
                    _ => format!("idle for {}", render::age(now - v.idle_for, now)),
                };
                (v, reason)
            })
            .collect();
    let missing: BTreeSet<String> = match &refreshed.live.power {
        Some(power) => refreshed
            .state
            .vm_pool
            .iter()
            .filter(|(name, vm)| {
                vm.backend == Backend::Azure
                    && vm.state != VmState::Provisioning
                    && !power.contains_key(*name)
            })
            .map(|(name, _)| name.clone())
            .collect(),
        None => BTreeSet::new(),
    };
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
                    idle_for: Duration::zero(),
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
    if args.dry_run {
        let report: Vec<Pruned> = candidates
            .iter()
            .map(|(v, reason)| pruned(v, reason, "would be deleted"))
            .collect();
        return print_report(&report, args.json, "Would delete");
    }
    if !args.yes {
        if !ui::stdin_is_terminal() {
            return Err(Error::InvalidArgs(
                "prune deletes VMs; pass --yes to confirm when not on a terminal (or --dry-run to see what would go)".into(),
            ));
        }
        let names: Vec<&str> = candidates.iter().map(|(v, _)| v.name.as_str()).collect();
        eprint!("Delete {} VM(s): {}? [y/N] ", names.len(), names.join(", "));
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return ui::print("Nothing deleted.\n");
        }
    }

    // Reserve: mark the VMs `deleting` under the lock, re-checking each is still idle, so no
    // start places a session on a VM we are about to delete.
    let chosen: Vec<String> = candidates.iter().map(|(v, _)| v.name.clone()).collect();
    let to_delete: Vec<String> = ctx.store.update(|st| {
        let counts = st.active_counts();
        let ok: Vec<String> = chosen
            .iter()
            .filter(|n| {
                !counts.contains_key(n.as_str())
                    && st
                        .vm_pool
                        .get(*n)
                        .is_some_and(|v| v.state != VmState::Provisioning)
            })
            .cloned()
            .collect();
        for n in &ok {
            if let Some(vm) = st.vm_pool.get_mut(n) {
                vm.state = VmState::Deleting;
            }
        }
        Ok(ok)
    })?;

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
            ui::progress(&format!("Deleting VM {name}..."));
            (
                name.clone(),
                ctx.transports
                    .azlin
                    .delete_vm(name, ctx.settings.timeouts.delete),
            )
        });
    ctx.store.update(|st| {
        for (name, r) in &results {
            match r {
                Ok(()) => {
                    st.vm_pool.remove(name);
                }
                Err(e) => {
                    if let Some(vm) = st.vm_pool.get_mut(name) {
                        vm.state = VmState::Failed;
                        vm.error = Some(format!("deletion failed: {e}"));
                    }
                }
            }
        }
        Ok(())
    })?;
    let mut report = Vec::new();
    let mut first_error = None;
    for (v, reason) in &candidates {
        let outcome = match results.iter().find(|(n, _)| n == &v.name) {
            None => "skipped: it took a session meanwhile".to_string(),
            Some((_, Ok(()))) if missing.contains(&v.name) => "removed from the pool".into(),
            Some((_, Ok(()))) => "deleted".into(),
            Some((_, Err(e))) => format!("deletion FAILED, kept in the pool: {e}"),
        };
        report.push(pruned(v, reason, &outcome));
    }
    for (_, r) in results {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    print_report(&report, args.json, "Pruned")?;
    first_error.map_or(Ok(()), Err)
}

fn pruned(v: &pool::IdleVm, reason: &str, result: &str) -> Pruned {
    Pruned {
        name: v.name.clone(),
        sku: v.sku.clone(),
        region: v.region.clone(),
        idle_minutes: v.idle_for.num_minutes(),
        reason: reason.into(),
        result: result.into(),
    }
}

fn print_report(report: &[Pruned], json: bool, title: &str) -> Result<()> {
    if json {
        let mut text = serde_json::to_string_pretty(report).expect("serializes");
        text.push('\n');
        return ui::print(&text);
    }
    let mut text = format!("{title} {} VM(s):\n", report.len());
    for p in report {
        text.push_str(&format!(
            "  {} ({}, {}): {}: {}\n",
            p.name, p.sku, p.region, p.reason, p.result
        ));
    }
    ui::print(&text)
}
