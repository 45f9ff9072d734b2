//! Provisioning new pool VMs, shared by `start` and `prime`: reserve the entries under the
//! lock (state `provisioning`, so nobody else fills them and none is ever untracked), run
//! `azlin new` for all of them in parallel with region fallback on quota, commit each result.

use chrono::{DateTime, Utc};

use crate::core::model::{Backend, Owner, State, VmEntry, VmState};
use crate::core::naming;
use crate::core::pool::SizeSpec;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::ui;
use crate::ui::progress::{self, Stage};
use crate::{core::lifecycle, exec, refresh};

/// A VM name not yet in the pool: the time of its reservation and a random part from `random`,
/// drawn again on a clash.
pub fn fresh_vm_name(
    state: &State,
    taken: &[String],
    user: &str,
    now: DateTime<Utc>,
    random: &mut dyn FnMut() -> u16,
) -> String {
    loop {
        let name = naming::vm_name(user, now, random());
        if !state.vm_pool.contains_key(&name) && !taken.contains(&name) {
            return name;
        }
    }
}

/// Random parts for VM names, spread by this host and process and the moment (another
/// machine, or another state file here, may name a VM in the same second), and by `RandomState`'s
/// per-process seed.
fn name_randomness(owner: &Owner) -> impl FnMut() -> u16 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    let (host, pid) = (owner.host.clone(), owner.pid);
    let mut n: u64 = 0;
    move || {
        n += 1;
        let mut h = seed.build_hasher();
        host.hash(&mut h);
        pid.hash(&mut h);
        n.hash(&mut h);
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .hash(&mut h);
        h.finish() as u16
    }
}

/// Who reserves new VMs, and where they will live.
pub struct Reservation<'a> {
    /// Goes into the VM names.
    pub user: &'a str,
    /// Recorded per VM: every later call about it names it.
    pub resource_group: Option<&'a str>,
    /// The process that will provision them; a dead owner's VMs are recovered at once.
    pub owner: &'a Owner,
}

/// Adds `count` VM entries in state `provisioning`; returns their names.
pub fn reserve_vms(
    state: &mut State,
    count: usize,
    size: &SizeSpec,
    region: &str,
    by: &Reservation,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    let mut random = name_randomness(by.owner);
    for _ in 0..count {
        let name = fresh_vm_name(state, &names, by.user, now, &mut random);
        state.vm_pool.insert(
            name.clone(),
            VmEntry {
                size: size.sku.to_string(),
                capacity: size.max_sessions,
                active_sessions: vec![],
                region: region.to_string(),
                // The time in its name: a state rebuilt from azlin's listing says the same.
                created_at: Some(naming::vm_name_time(&name, by.user).unwrap_or(now)),
                backend: Backend::Azure,
                state: VmState::Provisioning,
                error: None,
                resource_group: by.resource_group.map(String::from),
                owner: Some(by.owner.clone()),
                creation_unconfirmed: false,
                extra: Default::default(),
                naive_timestamps: false,
            },
        );
        names.push(name);
    }
    names
}

/// Runs `azlin new` in resource group `rg` (the one recorded for the VM), moving to the next
/// region on a quota error. Returns the region it got.
pub fn create_vm(
    ctx: &Ctx,
    name: &str,
    sku: &str,
    first_region: &str,
    rg: Option<&str>,
) -> Result<String> {
    let regions = ctx.settings.regions_to_try(first_region);
    let mut quota_regions = Vec::new();
    for region in &regions {
        progress::vm(name).stage(Stage::Provisioning, &format!("{sku} in {region}"));
        match ctx
            .transports
            .azlin
            .new_vm(name, sku, region, rg, ctx.settings.timeouts.provision)
        {
            Ok(()) => {
                progress::vm(name).stage(Stage::Provisioning, &format!("ready in {region}"));
                return Ok(region.clone());
            }
            Err(Error::QuotaExceeded { detail }) => {
                ui::warn(&format!("quota exceeded in {region} for {name}: {detail}"));
                quota_regions.push(region.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::QuotaExceeded {
        detail: format!("no quota for {sku} in {}", quota_regions.join(", ")),
    })
}

/// Records the outcome of one `create_vm`. On success the VM becomes ready in the region it
/// got. A failure that proves nothing was created (quota, azlin missing, login) drops the
/// entry; any other failure (or an interrupt) may have left a VM behind, so the entry stays,
/// marked failed, for `prune`.
pub fn commit_vm(ctx: &Ctx, name: &str, outcome: &Result<String>) -> Result<()> {
    ctx.store.update(|st| {
        let provisioner = st.vm_pool.get_mut(name).and_then(|vm| vm.owner.take());
        match outcome {
            Ok(region) => {
                if let Some(vm) = st.vm_pool.get_mut(name) {
                    vm.state = VmState::Ready;
                    vm.region = region.clone();
                    vm.error = None;
                }
            }
            Err(e) if e.created_nothing() => {
                st.vm_pool.remove(name);
                // No session may be left bound for a VM the pool no longer has, should this
                // process die before it records the sessions' outcome. Sessions another live
                // start joined this VM with are that start's to place elsewhere.
                let joined_by_another = |o: &crate::core::model::Owner| {
                    Some(o) != provisioner.as_ref() && exec::liveness(o) == exec::Liveness::Alive
                };
                let bound: Vec<String> = st
                    .sessions
                    .values()
                    .filter(|s| s.vm_name == name && s.status.is_active())
                    .filter(|s| !s.owner.as_ref().is_some_and(joined_by_another))
                    .map(|s| s.session_id.clone())
                    .collect();
                let now = ctx.now();
                let refused = lifecycle::Event::Refused(e.to_string());
                for id in bound {
                    refresh::settle(st, &id, &refused, now, &exec::liveness);
                }
            }
            Err(e) => {
                if let Some(vm) = st.vm_pool.get_mut(name) {
                    vm.state = VmState::Failed;
                    vm.creation_unconfirmed = true;
                    vm.error = Some(match e {
                        Error::Interrupted => "provisioning was interrupted; the VM may exist in Azure: run 'amplihack remote prune'".into(),
                        other => format!("provisioning failed ({other}); the VM may exist in Azure: run 'amplihack remote prune'"),
                    });
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pool::{size_by_letter, tests::t0};

    #[test]
    fn a_clash_draws_another_random_part() {
        let mut st = State::default();
        let taken = vec![naming::vm_name("jo", t0(), 1)];
        let mut draws = [1u16, 1, 2].into_iter();
        let name = fresh_vm_name(&st, &taken, "jo", t0(), &mut || draws.next().unwrap());
        assert_eq!(name, naming::vm_name("jo", t0(), 2));
        let entry = serde_json::from_str(
            r#"{"size":"x","capacity":1,"region":"r","created_at":"2025-11-25T14:30:00Z"}"#,
        )
        .unwrap();
        st.vm_pool.insert(name.clone(), entry);
        let mut draws = [2u16, 3].into_iter();
        let again = fresh_vm_name(&st, &[], "jo", t0(), &mut || draws.next().unwrap());
        assert_eq!(again, naming::vm_name("jo", t0(), 3));
    }

    #[test]
    fn reserved_names_are_unique_even_in_the_same_second() {
        let mut st = State::default();
        let l = size_by_letter("l").unwrap();
        let owner = Owner {
            pid: 7,
            host: "h".into(),
            started: "b 1".into(),
        };
        let by = Reservation {
            user: "jo",
            resource_group: Some("rg1"),
            owner: &owner,
        };
        let a = reserve_vms(&mut st, 2, l, "eastus", &by, t0());
        let b = reserve_vms(&mut st, 1, l, "eastus", &by, t0());
        let all: std::collections::BTreeSet<&String> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 3);
        for name in &all {
            // Same second, told apart by the random part; sync still reads the time back.
            assert!(name.starts_with("amplihack-jo-20251125-143000-"), "{name}");
            assert_eq!(naming::vm_name_time(name, "jo"), Some(t0()));
            assert_eq!(st.vm_pool[*name].created_at, Some(t0()));
        }
        assert_eq!(st.vm_pool[&a[0]].state, VmState::Provisioning);
        assert_eq!(st.vm_pool[&a[0]].capacity, 4);
        assert_eq!(st.vm_pool[&a[0]].resource_group.as_deref(), Some("rg1"));
        assert_eq!(st.vm_pool[&a[0]].owner.as_ref(), Some(&owner));
    }
}
