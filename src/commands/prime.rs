//! `prime`: provision VMs into the pool ahead of time, in parallel; later starts fill them.

use serde::Serialize;

use crate::cli::PrimeArgs;
use crate::core::model::{Backend, VmState};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::{core::pool, interrupt, parallel, provision, ui, ui::progress};

#[derive(Serialize)]
struct Primed {
    name: String,
    size: String,
    sku: String,
    region: String,
    capacity: u32,
    status: &'static str,
    error: Option<String>,
}

pub fn run(ctx: &Ctx, args: PrimeArgs) -> Result<()> {
    if ctx.settings.backend == Backend::Local {
        return Err(Error::InvalidArgs(
            "prime provisions Azure VMs; the local backend (AMPLIHACK_REMOTE_BACKEND=local) needs no priming".into(),
        ));
    }
    let size = pool::size_of(args.vm_size.letter());
    let region = args
        .region
        .clone()
        .unwrap_or_else(|| ctx.settings.region.clone());
    let now = ctx.now();
    let owner = crate::exec::current_owner();
    let count = args.count as usize;
    let names = ctx.store.update(|st| {
        Ok(provision::reserve_vms(
            st,
            count,
            size,
            &region,
            &provision::Reservation {
                user: &ctx.settings.user,
                resource_group: ctx.transports.azlin.default_resource_group(),
                owner: &owner,
            },
            now,
        ))
    })?;
    ui::progress(&format!(
        "Priming {count} VM(s) ({}, {}) in {region}...",
        size.letter, size.sku
    ));
    // At most AMPLIHACK_REMOTE_PARALLEL `azlin new` at once.
    let outcomes: Vec<(String, Result<String>)> =
        parallel::map_bounded(&names, ctx.settings.parallel, |name| {
            // Ctrl+C before this VM's turn: nothing was started, so its reservation goes.
            if interrupt::requested() {
                let dropped = ctx.store.update(|st| {
                    st.vm_pool.remove(name);
                    Ok(())
                });
                return (name.clone(), dropped.and(Err(Error::Interrupted)));
            }
            let outcome = provision::create_vm(
                ctx,
                name,
                size.sku,
                &region,
                ctx.transports.azlin.default_resource_group(),
            );
            match &outcome {
                Ok(got) => progress::vm(name).finish(
                    progress::Outcome::Done,
                    &format!("ready in {got}, {} slot(s)", size.max_sessions),
                ),
                Err(e) => progress::vm(name).finish(progress::Outcome::Failed, &e.to_string()),
            }
            let committed = provision::commit_vm(ctx, name, &outcome);
            (name.clone(), committed.and(outcome))
        });
    let state = ctx.store.load()?;
    let mut report = Vec::new();
    let mut first_error = None;
    for (name, outcome) in outcomes {
        let vm = state.vm_pool.get(&name);
        let (status, error) = match &outcome {
            Ok(_) => ("ready", None),
            Err(e) => (
                if vm.is_some_and(|v| v.state == VmState::Failed) {
                    "failed"
                } else {
                    "not created"
                },
                Some(e.to_string()),
            ),
        };
        report.push(Primed {
            region: vm
                .map(|v| v.region.clone())
                .unwrap_or_else(|| region.clone()),
            name,
            size: size.letter.into(),
            sku: size.sku.into(),
            capacity: size.max_sessions,
            status,
            error,
        });
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    if args.json {
        let mut text = serde_json::to_string_pretty(&report).expect("serializes");
        text.push('\n');
        ui::print(&text)?;
    } else {
        let ready = report.iter().filter(|p| p.status == "ready").count();
        let mut text = format!("{ready} of {count} VM(s) ready:\n");
        for p in &report {
            match &p.error {
                None => text.push_str(&format!(
                    "  {} ({}, {}): ready, {} slot(s)\n",
                    p.name, p.size, p.region, p.capacity
                )),
                Some(e) => text.push_str(&format!(
                    "  {} ({}, {}): {}: {e}\n",
                    p.name, p.size, p.region, p.status
                )),
            }
        }
        ui::print_text(&text)?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
