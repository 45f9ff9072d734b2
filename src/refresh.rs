//! True status: asks each VM that has pending or running sessions about them (one call per
//! VM, all VMs in parallel) and commits what it learns in one transaction. An unreachable VM
//! leaves its sessions as they were and is reported in `Live`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};

use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::exec::OnInterrupt;
use crate::model::{Backend, SessionStatus, State};
use crate::pool::LOCAL_VM_NAME;
use crate::render::Live;
use crate::script::{self, Probe, Verdict};
use crate::ui;
use crate::{interrupt, parallel};

/// A `pending` session older than this was left by a `start` that died; it is probed like a
/// running one (provisioning and launching have timed out long before).
pub fn pending_is_stale(created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - created_at > Duration::minutes(45)
}

pub fn backend_of(state: &State, vm: &str) -> Backend {
    state
        .vm_pool
        .get(vm)
        .map(|v| v.backend)
        .unwrap_or(if vm == LOCAL_VM_NAME {
            Backend::Local
        } else {
            Backend::Azure
        })
}

/// Sessions to ask about, grouped by VM.
pub fn sessions_to_probe(state: &State, now: DateTime<Utc>) -> BTreeMap<String, Vec<String>> {
    let mut by_vm: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in state.sessions.values() {
        let due = match s.status {
            SessionStatus::Running => true,
            SessionStatus::Pending => pending_is_stale(s.created_at, now),
            _ => false,
        };
        if due {
            by_vm
                .entry(s.vm_name.clone())
                .or_default()
                .push(s.session_id.clone());
        }
    }
    by_vm
}

/// Applies what the VMs said to the sessions that are still active. Returns how many changed.
pub fn apply_probes(
    state: &mut State,
    probes: &HashMap<String, Probe>,
    now: DateTime<Utc>,
) -> usize {
    let mut changed = 0;
    for (id, probe) in probes {
        let Some(session) = state.sessions.get_mut(id) else {
            continue;
        };
        if !session.status.is_active() {
            continue;
        }
        match script::verdict(probe, now) {
            Verdict::Running { started_at } => {
                if session.status != SessionStatus::Running {
                    session.status = SessionStatus::Running;
                    session.started_at = session.started_at.or(started_at);
                    changed += 1;
                }
            }
            Verdict::Finished {
                status,
                exit_code,
                at,
                error,
            } => {
                if session.started_at.is_none() {
                    session.started_at = probe.started_at;
                }
                if state.finish_session(id, status, exit_code, at, error) {
                    changed += 1;
                }
            }
        }
    }
    changed
}

/// Commits probes if any session's status changed; returns the state as it now stands.
pub fn commit_probes(ctx: &Ctx, probes: &HashMap<String, Probe>, state: State) -> Result<State> {
    let now = ctx.now();
    let mut preview = state;
    if apply_probes(&mut preview, probes, now) == 0 {
        return Ok(preview);
    }
    ctx.store.update(|st| {
        apply_probes(st, probes, now);
        Ok(st.clone())
    })
}

pub struct Refreshed {
    pub state: State,
    pub live: Live,
}

/// The state as `list` and `status` show it: refreshed from the VMs, or with `--no-refresh`
/// read from the file alone.
pub fn current(ctx: &Ctx, no_refresh: bool, power: bool) -> Result<Refreshed> {
    if no_refresh {
        Ok(Refreshed {
            state: ctx.store.load()?,
            live: Live::default(),
        })
    } else {
        refresh(ctx, power)
    }
}

/// Refreshes every pending-or-running session from its VM. With `power`, also asks azlin for
/// the power state of every VM (one more call, in parallel).
pub fn refresh(ctx: &Ctx, power: bool) -> Result<Refreshed> {
    let state = ctx.store.load()?;
    let now = ctx.now();
    let targets = sessions_to_probe(&state, now);
    let want_power = power && state.vm_pool.values().any(|v| v.backend == Backend::Azure);
    let mut live = Live::default();
    if targets.is_empty() && !want_power {
        return Ok(Refreshed { state, live });
    }
    let timeout = ctx.settings.timeouts.probe;
    // The probes and the power-state call share one bounded fan-out: at most
    // AMPLIHACK_REMOTE_PARALLEL azlin calls at once; answers come back in VM order.
    enum Call<'a> {
        Power,
        Probe(&'a String, &'a Vec<String>),
    }
    enum Answer {
        Power(Result<BTreeMap<String, String>>),
        Probe(String, Result<HashMap<String, Probe>>),
    }
    let calls: Vec<Call> = want_power
        .then_some(Call::Power)
        .into_iter()
        .chain(targets.iter().map(|(vm, ids)| Call::Probe(vm, ids)))
        .collect();
    let answers = parallel::map_bounded(&calls, ctx.settings.parallel, |call| match call {
        // After Ctrl+C, calls still waiting for their turn do not start.
        Call::Power if interrupt::requested() => Answer::Power(Err(Error::Interrupted)),
        Call::Probe(vm, _) if interrupt::requested() => {
            Answer::Probe((*vm).clone(), Err(Error::Interrupted))
        }
        Call::Power => Answer::Power(
            ctx.transports
                .azlin
                .power_states(ctx.settings.timeouts.list),
        ),
        Call::Probe(vm, ids) => {
            let transport = ctx.transport_to(&state, vm);
            let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let out = transport.run_script(
                vm,
                script::probe_script(&id_refs),
                timeout,
                OnInterrupt::Abort,
            );
            Answer::Probe((*vm).clone(), out.map(|o| script::parse_probes(&o.stdout)))
        }
    });
    let mut results = Vec::new();
    let mut power_result = None;
    for answer in answers {
        match answer {
            Answer::Power(p) => power_result = Some(p),
            Answer::Probe(vm, r) => results.push((vm, r)),
        }
    }

    let mut probes = HashMap::new();
    for (vm, result) in results {
        match result {
            Ok(found) => probes.extend(found),
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                ui::warn(&format!(
                    "could not refresh sessions on VM '{vm}'; showing them as last known. {e}"
                ));
                live.unreachable.insert(vm);
            }
        }
    }
    match power_result {
        Some(Ok(p)) => live.power = Some(p),
        Some(Err(Error::Interrupted)) => return Err(Error::Interrupted),
        Some(Err(e)) => ui::warn(&format!("could not read VM power states: {e}")),
        None => {}
    }
    let state = commit_probes(ctx, &probes, state)?;
    Ok(Refreshed { state, live })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::{session, t0};

    #[test]
    fn stale_pending_sessions_are_probed_fresh_ones_are_not() {
        let mut st = State::default();
        let mut fresh = session("p1", "vm", SessionStatus::Pending);
        fresh.created_at = t0();
        let mut stale = session("p2", "vm", SessionStatus::Pending);
        stale.created_at = t0() - Duration::hours(2);
        st.sessions.insert("p1".into(), fresh);
        st.sessions.insert("p2".into(), stale);
        st.sessions
            .insert("r".into(), session("r", "vm2", SessionStatus::Running));
        st.sessions
            .insert("c".into(), session("c", "vm2", SessionStatus::Completed));
        let t = sessions_to_probe(&st, t0());
        assert_eq!(t["vm"], vec!["p2".to_string()]);
        assert_eq!(t["vm2"], vec!["r".to_string()]);
    }

    #[test]
    fn probes_settle_only_active_sessions() {
        let mut st = State::default();
        st.sessions
            .insert("r".into(), session("r", "vm", SessionStatus::Running));
        st.sessions
            .insert("k".into(), session("k", "vm", SessionStatus::Killed));
        let probe = Probe {
            known: true,
            alive: false,
            exit_code: Some(0),
            finished_at: Some(t0()),
            started_at: None,
        };
        let probes: HashMap<String, Probe> =
            [("r".to_string(), probe.clone()), ("k".to_string(), probe)].into();
        assert_eq!(apply_probes(&mut st, &probes, t0()), 1);
        assert_eq!(st.sessions["r"].status, SessionStatus::Completed);
        assert_eq!(st.sessions["r"].exit_code, Some(0));
        assert_eq!(st.sessions["k"].status, SessionStatus::Killed);
    }
}
