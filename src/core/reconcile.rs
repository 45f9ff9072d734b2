//! Reconciling the state with what the VMs hold, for `sync`. Pure: the findings (azlin's
//! listing, each VM's `records` answer), `now` and the liveness check come in as parameters.
//!
//! The VMs are the truth about their sessions and the state is a cache of it: sessions and VMs
//! the state lacks are added, sessions it has are settled by the rules of a refresh
//! (`settle::apply_probes`, by the lifecycle), and nothing the state has is dropped because a
//! VM does not know it. Merging the same findings twice changes nothing the second time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::lifecycle;
use crate::core::lifecycle::Probe;
use crate::core::model::{Backend, Session, SessionStatus, State, VmEntry, VmState};
use crate::core::pool;
use crate::core::settle::{self, LivenessCheck};

/// What a VM answered to `records`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmRecords {
    /// Per session directory: the session's own record, or why it cannot be used.
    pub records: BTreeMap<String, Result<Session, String>>,
    /// Facts of every session it reported on: its directories and the ids asked about.
    pub probes: HashMap<String, Probe>,
    /// Sessions whose directory holds the `collected` mark: their owner has brought their
    /// results home (docs/remote-layout.md).
    pub collected: BTreeSet<String>,
}

/// One VM of `azlin list -o json`, with the facts we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVm {
    pub name: String,
    /// `Running`, `Stopped`, `Deallocated`, ...; `Unknown` when azlin gives none.
    pub power_state: String,
    pub resource_group: Option<String>,
    /// The Azure region.
    pub location: Option<String>,
    /// The SKU, e.g. Standard_E16s_v5.
    pub vm_size: Option<String>,
}

/// What `sync` learned from azlin and the VMs.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Entries of pool VMs that exist (listed by azlin, or this machine with sessions), added
    /// when the state lacks them.
    pub vms: BTreeMap<String, VmEntry>,
    /// What each VM that answered holds.
    pub answers: BTreeMap<String, VmRecords>,
    /// VMs that were asked and did not answer, and why.
    pub unreachable: BTreeMap<String, String>,
    /// The archives of finished sessions kept on this machine, with when each was made: a
    /// finished session the state does not know archived is marked so (docs/results.md).
    pub archives: settle::Archived,
}

/// What a merge did and found; serialized as part of `sync --json` (docs/architecture.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Merged {
    /// VMs that answered.
    pub answered: Vec<String>,
    pub added_vms: Vec<AddedVm>,
    pub added_sessions: Vec<SessionRef>,
    pub settled_sessions: Vec<Settled>,
    /// VMs that did not answer; their sessions were kept as last known.
    pub unreachable_vms: Vec<UnreachableVm>,
    /// Sessions the state has on a VM that answered without a directory of theirs (the Python
    /// original's, or ones that never launched), kept as recorded.
    pub not_on_vm: Vec<SessionRef>,
    /// Session directories whose record could not be used; nothing was added for them.
    pub unreadable: Vec<Unreadable>,
}

#[cfg(test)]
impl Merged {
    pub fn changed_anything(&self) -> bool {
        !self.added_vms.is_empty()
            || !self.added_sessions.is_empty()
            || !self.settled_sessions.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddedVm {
    pub name: String,
    pub sku: String,
    pub region: String,
    pub backend: Backend,
    pub resource_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRef {
    pub session_id: String,
    pub vm_name: String,
    pub status: SessionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settled {
    pub session_id: String,
    pub vm_name: String,
    pub from: SessionStatus,
    pub to: SessionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreachableVm {
    pub name: String,
    pub reason: String,
    /// The state's sessions on it, kept as they were.
    pub kept_sessions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    pub vm_name: String,
    pub session_id: String,
    pub reason: String,
}

/// The entry of an Azure VM azlin lists: SKU, slots of that size (1 for a SKU outside the size
/// table), region, the resource group it was listed in (`None`: azlin's default, as `start`
/// records it), ready. `created_at` is the time in its name.
pub fn vm_from_listing(
    listed: &ListedVm,
    listed_in: Option<&str>,
    created_at: DateTime<Utc>,
) -> VmEntry {
    let sku = listed
        .vm_size
        .clone()
        .unwrap_or_else(|| "unknown".to_string());
    VmEntry {
        capacity: pool::size_by_sku(&sku).map_or(1, |s| s.max_sessions),
        size: sku,
        active_sessions: vec![],
        region: listed
            .location
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
        created_at: Some(created_at),
        backend: Backend::Azure,
        state: VmState::Ready,
        error: None,
        resource_group: listed_in.map(String::from),
        owner: None,
        creation_unconfirmed: false,
        extra: Default::default(),
        naive_timestamps: false,
    }
}

/// The entry of this machine as the pool VM `local`. It came into the pool with its first
/// session, so its created time is the earliest session record's (else `now`).
pub fn local_vm(capacity: u32, records: &VmRecords, now: DateTime<Utc>) -> VmEntry {
    let first = records
        .records
        .values()
        .filter_map(|r| r.as_ref().ok())
        .map(|s| s.created_at)
        .min();
    pool::local_vm_entry(capacity, first.unwrap_or(now))
}

/// A session the state lacks, rebuilt from its record and facts on `vm` by the lifecycle
/// (`lifecycle::rebuilt`): a session that has neither been placed nor ended may still be being
/// launched by a `start` elsewhere, so it is `pending` (without an owner we could check) until
/// its reservation is older than any start can take, as any pending session is; everything
/// else is as its VM says, an ended or refused one included.
pub fn session_from_vm(record: &Session, vm: &str, probe: &Probe, now: DateTime<Utc>) -> Session {
    lifecycle::rebuilt(record, vm, probe, now)
}

/// Merges the findings into `state`: adds the VMs and sessions it lacks, settles the sessions
/// it has on VMs that answered, keeps everything else. Returns what it did and found.
pub fn merge(
    state: &mut State,
    found: &Findings,
    now: DateTime<Utc>,
    alive: LivenessCheck,
) -> Merged {
    let mut merged = Merged {
        answered: found.answers.keys().cloned().collect(),
        ..Merged::default()
    };

    for (name, entry) in &found.vms {
        if !state.vm_pool.contains_key(name) {
            state.vm_pool.insert(name.clone(), entry.clone());
            merged.added_vms.push(AddedVm {
                name: name.clone(),
                sku: entry.size.clone(),
                region: entry.region.clone(),
                backend: entry.backend,
                resource_group: entry.resource_group.clone(),
            });
        }
    }

    // Sessions the state has: the facts their own VM gave, settled as a refresh settles them.
    let mut probes: HashMap<String, Probe> = HashMap::new();
    for (vm, answer) in &found.answers {
        for (id, probe) in &answer.probes {
            if state.sessions.get(id).is_some_and(|s| &s.vm_name == vm) {
                probes.insert(id.clone(), probe.clone());
            }
        }
    }
    let before: BTreeMap<String, SessionStatus> = probes
        .keys()
        .map(|id| (id.clone(), state.sessions[id].status.clone()))
        .collect();
    settle::apply_probes(state, &probes, now, alive);
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    for (id, from) in &before {
        let s = &state.sessions[id];
        if &s.status != from {
            settled.insert(id);
            merged.settled_sessions.push(Settled {
                session_id: id.clone(),
                vm_name: s.vm_name.clone(),
                from: from.clone(),
                to: s.status.clone(),
            });
        }
    }

    // Sessions the state has that their answering VM has no directory of.
    for s in state.sessions.values() {
        let Some(answer) = found.answers.get(&s.vm_name) else {
            continue;
        };
        let launching = s.status == SessionStatus::Pending
            && !settle::abandoned(s.owner.as_ref(), s.created_at, now, alive);
        if !answer.records.contains_key(&s.session_id)
            && !settled.contains(s.session_id.as_str())
            && !launching
        {
            merged.not_on_vm.push(session_ref(s));
        }
    }

    // Sessions the state lacks: rebuilt from their records.
    for (vm, answer) in &found.answers {
        for (id, record) in &answer.records {
            let unreadable = |reason: String| Unreadable {
                vm_name: vm.clone(),
                session_id: id.clone(),
                reason,
            };
            if let Some(known) = state.sessions.get(id) {
                if &known.vm_name != vm {
                    merged.unreadable.push(unreadable(format!(
                        "the state has this session on VM '{}'; left as it is",
                        known.vm_name
                    )));
                }
                continue;
            }
            let record = match record {
                Ok(r) => r,
                Err(why) => {
                    merged.unreadable.push(unreadable(why.clone()));
                    continue;
                }
            };
            let Some(probe) = answer.probes.get(id) else {
                merged
                    .unreadable
                    .push(unreadable("its VM reported no facts of it".into()));
                continue;
            };
            let session = session_from_vm(record, vm, probe, now);
            merged.added_sessions.push(session_ref(&session));
            state.sessions.insert(id.clone(), session);
        }
    }

    // Results already home: the sessions read their archives, as before the state was lost.
    settle::mark_archived(state, &found.archives);

    for (name, reason) in &found.unreachable {
        merged.unreachable_vms.push(UnreachableVm {
            name: name.clone(),
            reason: reason.clone(),
            kept_sessions: state
                .sessions
                .values()
                .filter(|s| &s.vm_name == name)
                .map(|s| s.session_id.clone())
                .collect(),
        });
    }
    merged
}

fn session_ref(s: &Session) -> SessionRef {
    SessionRef {
        session_id: s.session_id.clone(),
        vm_name: s.vm_name.clone(),
        status: s.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lifecycle::Liveness;
    use crate::core::lifecycle::Phase;
    use crate::core::model::{KillRequest, Owner, parse_timestamp};
    use crate::core::pool::tests::{session, t0, vm};
    use chrono::Duration;

    /// Owners with pid 1 live; any other is dead.
    fn check(o: &Owner) -> Liveness {
        if o.pid == 1 {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            host: "h".into(),
            started: "b 1".into(),
        }
    }

    fn now() -> DateTime<Utc> {
        t0() + Duration::minutes(30)
    }

    fn at(min: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(min)
    }

    /// The record a launch leaves on the VM: the reservation, without its owner.
    fn record(id: &str, vm: &str) -> Session {
        let mut s = session(id, vm, SessionStatus::Pending);
        s.started_at = None;
        s.created_at = t0() + Duration::milliseconds(123);
        s.repo_path = Some("/home/jane/project".into());
        s.base_commit = Some("4f1c".into());
        s
    }

    fn facts(started: Option<i64>, alive: bool, exit: Option<(i32, i64)>) -> Probe {
        Probe {
            known: true,
            alive,
            exit_code: exit.map(|e| e.0),
            finished_at: exit.map(|e| at(e.1)),
            started_at: started.map(at),
            kill_requested: false,
            tmux: alive,
            cancelled: false,
            claimed: false,
            queued: false,
            // Nothing recorded and nothing alive: its files are there, it was never placed.
            phase: match (exit, alive, started) {
                (Some(_), _, _) => Phase::Ended,
                (None, true, _) => Phase::Running,
                (None, false, Some(_)) => Phase::Vanished,
                (None, false, None) => Phase::Launching,
            },
            reason: None,
            detail: None,
            silent_since: None,
        }
    }

    fn answer(sessions: &[(&Session, Probe)]) -> VmRecords {
        let mut a = VmRecords::default();
        for (s, p) in sessions {
            a.records.insert(s.session_id.clone(), Ok((*s).clone()));
            a.probes.insert(s.session_id.clone(), p.clone());
        }
        a
    }

    fn listed(name: &str, sku: &str) -> ListedVm {
        ListedVm {
            name: name.into(),
            power_state: "Running".into(),
            resource_group: Some("rg".into()),
            location: Some("eastus".into()),
            vm_size: Some(sku.into()),
        }
    }

    #[test]
    fn an_empty_state_is_rebuilt_from_the_vms_as_start_and_refresh_recorded_it() {
        let (a, b, c, d) = (
            record("a", "vm1"),
            record("b", "vm1"),
            record("c", "vm1"),
            record("d", "vm1"),
        );
        let mut killed = facts(Some(1), false, Some((143, 9)));
        killed.kill_requested = true;
        let found = Findings {
            vms: [(
                "vm1".to_string(),
                vm_from_listing(&listed("vm1", "Standard_E16s_v5"), None, t0()),
            )]
            .into(),
            answers: [(
                "vm1".to_string(),
                answer(&[
                    (&a, facts(Some(1), true, None)),
                    (&b, facts(Some(1), false, Some((0, 5)))),
                    (&c, facts(Some(1), false, Some((3, 6)))),
                    (&d, killed),
                ]),
            )]
            .into(),
            unreachable: BTreeMap::new(),
            // b's results are home already; a's archive cannot be (it runs) and is ignored.
            archives: [("b".to_string(), at(7)), ("a".to_string(), at(7))].into(),
        };
        let mut st = State::default();
        let merged = merge(&mut st, &found, now(), &check);
        assert_eq!(merged.added_vms.len(), 1);
        assert_eq!(merged.added_sessions.len(), 4);
        assert!(merged.changed_anything());
        assert_eq!(st.vm_pool["vm1"], {
            let mut v = vm("Standard_E16s_v5", 4, "eastus");
            v.created_at = Some(t0());
            v
        });

        // The running session, exactly as start committed it: running since the VM's start.
        let mut expected = a.clone();
        expected.status = SessionStatus::Running;
        expected.started_at = Some(at(1));
        assert_eq!(st.sessions["a"], expected);
        // The finished ones, exactly as a refresh settled them: the VM's end time.
        let done = &st.sessions["b"];
        assert_eq!(
            (
                &done.status,
                done.exit_code,
                done.completed_at,
                done.started_at
            ),
            (&SessionStatus::Completed, Some(0), Some(at(5)), Some(at(1)))
        );
        assert_eq!(st.sessions["c"].status, SessionStatus::Failed);
        assert_eq!(st.sessions["c"].exit_code, Some(3));
        assert_eq!(st.sessions["d"].status, SessionStatus::Killed);
        assert_eq!(st.sessions["d"].exit_code, Some(143));
        assert_eq!(
            st.sessions["b"].archived_at,
            Some(at(7)),
            "the archive's time"
        );
        assert_eq!(st.sessions["c"].archived_at, None, "no archive here");
        assert_eq!(st.sessions["a"].archived_at, None);
        assert_eq!(
            st.sessions["b"].repo_path.as_deref(),
            Some("/home/jane/project")
        );
        st.normalize();
        assert_eq!(st.vm_pool["vm1"].active_sessions, vec!["a".to_string()]);
    }

    #[test]
    fn a_second_merge_of_the_same_findings_changes_nothing() {
        let (a, b, c) = (record("a", "vm1"), record("b", "vm1"), record("c", "vm1"));
        let found = Findings {
            vms: [(
                "vm1".to_string(),
                vm_from_listing(&listed("vm1", "Standard_E16s_v5"), None, t0()),
            )]
            .into(),
            answers: [(
                "vm1".to_string(),
                answer(&[
                    (&a, facts(Some(1), true, None)),
                    (&b, facts(Some(1), false, None)),
                    (&c, facts(None, false, None)),
                ]),
            )]
            .into(),
            unreachable: [("vm2".to_string(), "ssh: timed out".to_string())].into(),
            archives: [("b".to_string(), at(9))].into(),
        };
        let mut st = State::default();
        let first = merge(&mut st, &found, now(), &check);
        assert!(first.changed_anything());
        // Vanished: ended without an exit code, at `now`; a record the VM has not started yet
        // is pending (a launch may be under way).
        assert_eq!(st.sessions["b"].error.as_deref(), Some(lifecycle::VANISHED));
        assert_eq!(st.sessions["c"].status, SessionStatus::Pending);
        let snapshot = st.clone();
        let second = merge(&mut st, &found, now() + Duration::minutes(1), &check);
        assert!(!second.changed_anything(), "{second:?}");
        assert_eq!(st, snapshot);
        assert_eq!(second.unreachable_vms, first.unreachable_vms);
    }

    #[test]
    fn a_record_that_never_started_is_settled_once_no_start_can_still_be_launching_it() {
        let c = record("c", "vm1");
        let found = Findings {
            answers: [("vm1".to_string(), answer(&[(&c, facts(None, false, None))]))].into(),
            ..Findings::default()
        };
        let late = c.created_at
            + crate::core::lifecycle::unverifiable_owner_trust()
            + Duration::seconds(1);
        let mut st = State::default();
        merge(&mut st, &found, late, &check);
        assert_eq!(st.sessions["c"].status, SessionStatus::Failed);
        assert_eq!(
            st.sessions["c"].error.as_deref(),
            Some(lifecycle::LAUNCH_NEVER_FINISHED)
        );
        // And a pending session added earlier is settled the same way once that time passed.
        let mut st = State::default();
        merge(&mut st, &found, now(), &check);
        assert_eq!(st.sessions["c"].status, SessionStatus::Pending);
        let merged = merge(&mut st, &found, late, &check);
        assert_eq!(st.sessions["c"].status, SessionStatus::Failed);
        assert_eq!(merged.settled_sessions.len(), 1);
    }

    #[test]
    fn sessions_the_state_has_are_settled_by_the_rules_of_a_refresh() {
        let mut st = State::default();
        st.vm_pool
            .insert("vm1".into(), vm("Standard_E16s_v5", 4, "eastus"));
        st.sessions
            .insert("run".into(), session("run", "vm1", SessionStatus::Running));
        st.sessions.insert(
            "done".into(),
            session("done", "vm1", SessionStatus::Completed),
        );
        let mut launching = session("launching", "vm1", SessionStatus::Pending);
        launching.owner = Some(owner(1));
        st.sessions.insert("launching".into(), launching.clone());
        let mut orphan = session("orphan", "vm1", SessionStatus::Pending);
        orphan.owner = Some(owner(2));
        st.sessions.insert("orphan".into(), orphan);
        let mut being_killed = session("being-killed", "vm1", SessionStatus::Running);
        being_killed.kill_request = Some(KillRequest {
            at: t0(),
            by: owner(1),
        });
        st.sessions.insert("being-killed".into(), being_killed);

        let r = |id: &str| {
            let mut s = record(id, "vm1");
            s.created_at = st.sessions[id].created_at;
            s
        };
        let (run, done, launching_r, orphan_r, killed_r) = (
            r("run"),
            r("done"),
            r("launching"),
            r("orphan"),
            r("being-killed"),
        );
        let found = Findings {
            answers: [(
                "vm1".to_string(),
                answer(&[
                    (&run, facts(Some(1), false, Some((0, 7)))),
                    // A finished session's record is final, whatever the VM says now.
                    (&done, facts(Some(1), false, Some((9, 8)))),
                    (&launching_r, facts(None, false, None)),
                    // Its start died: the records call claimed it (see `records_script`).
                    (
                        &orphan_r,
                        Probe {
                            claimed: true,
                            ..facts(Some(1), true, None)
                        },
                    ),
                    (&killed_r, facts(Some(1), false, Some((143, 9)))),
                ]),
            )]
            .into(),
            ..Findings::default()
        };
        let snapshot = st.clone();
        let merged = merge(&mut st, &found, now(), &check);
        assert_eq!(st.sessions["run"].status, SessionStatus::Completed);
        assert_eq!(st.sessions["run"].completed_at, Some(at(7)));
        assert_eq!(st.sessions["done"], snapshot.sessions["done"]);
        // A pending session whose start lives is its start's alone.
        assert_eq!(st.sessions["launching"], launching);
        assert_eq!(st.sessions["orphan"].status, SessionStatus::Running);
        assert_eq!(st.sessions["being-killed"].status, SessionStatus::Killed);
        let settled: Vec<(&str, &str, &str)> = merged
            .settled_sessions
            .iter()
            .map(|s| (s.session_id.as_str(), s.from.as_str(), s.to.as_str()))
            .collect();
        assert_eq!(
            settled,
            [
                ("being-killed", "running", "killed"),
                ("orphan", "pending", "running"),
                ("run", "running", "completed")
            ]
        );
        assert!(merged.added_sessions.is_empty() && merged.unreadable.is_empty());
    }

    #[test]
    fn nothing_is_dropped_because_a_vm_does_not_know_it() {
        let python: State =
            serde_json::from_str(include_str!("../../tests/expected/python-state.json")).unwrap();
        let mut st = python.clone();
        let vm_a = "amplihack-user-20251125-143000";
        let vm_b = "amplihack-user-20251125-140000";
        // vm_a answers: one Python session's tmux session lives, the other's is gone. vm_b
        // does not answer.
        let mut answer_a = VmRecords::default();
        let no_dir = |tmux: bool| Probe {
            known: false,
            alive: tmux,
            exit_code: None,
            finished_at: None,
            started_at: None,
            kill_requested: false,
            tmux,
            cancelled: false,
            claimed: false,
            queued: false,
            phase: if tmux { Phase::Running } else { Phase::Absent },
            reason: None,
            detail: None,
            silent_since: None,
        };
        answer_a
            .probes
            .insert("sess-20251125-143022-abc".into(), no_dir(true));
        answer_a
            .probes
            .insert("sess-20251125-143025-def".into(), no_dir(false));
        let found = Findings {
            answers: [(vm_a.to_string(), answer_a)].into(),
            unreachable: [(vm_b.to_string(), "ssh: connection refused".to_string())].into(),
            ..Findings::default()
        };
        let merged = merge(&mut st, &found, now(), &check);
        assert_eq!(st.sessions.len(), 3);
        assert_eq!(st.vm_pool.len(), 2);
        assert_eq!(
            st.sessions["sess-20251125-143022-abc"],
            python.sessions["sess-20251125-143022-abc"]
        );
        assert_eq!(
            st.sessions["sess-20251125-140000-xyz"],
            python.sessions["sess-20251125-140000-xyz"]
        );
        // Its VM answered that nothing of it is there: settled as a refresh settles it.
        let def = &st.sessions["sess-20251125-143025-def"];
        assert_eq!(def.status, SessionStatus::Failed);
        assert_eq!(def.error.as_deref(), Some(lifecycle::UNKNOWN_ON_VM));
        assert_eq!(def.extra, python.sessions["sess-20251125-143025-def"].extra);
        assert_eq!(
            merged.not_on_vm,
            vec![SessionRef {
                session_id: "sess-20251125-143022-abc".into(),
                vm_name: vm_a.into(),
                status: SessionStatus::Running,
            }]
        );
        assert_eq!(
            merged.unreachable_vms,
            vec![UnreachableVm {
                name: vm_b.into(),
                reason: "ssh: connection refused".into(),
                kept_sessions: vec!["sess-20251125-140000-xyz".into()],
            }]
        );
    }

    #[test]
    fn unusable_records_and_conflicts_are_reported_and_add_nothing() {
        let mut st = State::default();
        st.sessions.insert(
            "here".into(),
            session("here", "vm1", SessionStatus::Running),
        );
        let mut a = VmRecords::default();
        a.records.insert(
            "broken".into(),
            Err("its record.json is not a session record".into()),
        );
        a.records.insert("here".into(), Ok(record("here", "vm2")));
        a.records.insert("mute".into(), Ok(record("mute", "vm2")));
        a.probes
            .insert("here".into(), facts(Some(1), false, Some((0, 3))));
        let found = Findings {
            answers: [("vm2".to_string(), a)].into(),
            ..Findings::default()
        };
        let snapshot = st.clone();
        let merged = merge(&mut st, &found, now(), &check);
        assert_eq!(
            st, snapshot,
            "a session is settled only by its own VM's facts"
        );
        let reasons: Vec<(&str, &str)> = merged
            .unreadable
            .iter()
            .map(|u| (u.session_id.as_str(), u.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("broken", "its record.json is not a session record"),
                (
                    "here",
                    "the state has this session on VM 'vm1'; left as it is"
                ),
                ("mute", "its VM reported no facts of it"),
            ]
        );
        assert!(!merged.changed_anything());
    }

    #[test]
    fn a_session_is_placed_on_the_vm_that_holds_it_and_vms_the_state_has_are_kept() {
        let mut st = State::default();
        let mut mine = vm("Standard_E8s_v5", 2, "westus3");
        mine.resource_group = Some("rg-old".into());
        st.vm_pool.insert("vm1".into(), mine.clone());
        // The record says another VM (a copied home): where it runs is what counts.
        let moved = record("moved", "elsewhere");
        let found = Findings {
            vms: [(
                "vm1".to_string(),
                vm_from_listing(&listed("vm1", "Standard_E16s_v5"), Some("rg"), t0()),
            )]
            .into(),
            answers: [(
                "vm1".to_string(),
                answer(&[(&moved, facts(Some(1), true, None))]),
            )]
            .into(),
            ..Findings::default()
        };
        let merged = merge(&mut st, &found, now(), &check);
        assert_eq!(st.vm_pool["vm1"], mine, "the state's VM entry is kept");
        assert!(merged.added_vms.is_empty());
        assert_eq!(st.sessions["moved"].vm_name, "vm1");
    }

    #[test]
    fn vm_entries_from_the_listing_and_this_machine() {
        let v = vm_from_listing(&listed("x", "Standard_D4s_v3"), Some("rg9"), t0());
        assert_eq!((v.capacity, v.size.as_str()), (1, "Standard_D4s_v3"));
        assert_eq!(v.resource_group.as_deref(), Some("rg9"));
        let v = vm_from_listing(&listed("x", "standard_e32s_v5"), None, t0());
        assert_eq!(v.capacity, 8);
        let mut recs = VmRecords::default();
        let mut early = record("early", "local");
        early.created_at = parse_timestamp("2025-11-25T10:00:00.5Z").unwrap();
        recs.records.insert("early".into(), Ok(early.clone()));
        recs.records
            .insert("late".into(), Ok(record("late", "local")));
        recs.records.insert("bad".into(), Err("x".into()));
        let local = local_vm(3, &recs, now());
        assert_eq!(
            (local.backend, local.capacity, local.created_at),
            (Backend::Local, 3, Some(early.created_at))
        );
        assert_eq!(
            local_vm(3, &VmRecords::default(), now()).created_at,
            Some(now())
        );
    }
}
