//! Applying what was learnt about sessions to the state, each change by the lifecycle's
//! decision (pure): shared by refresh, sync's merge and every command that settles sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::core::lifecycle::{self, Liveness, Probe};
use crate::core::model::{Owner, Session, State};

/// Tells whether an owner still runs; `exec::liveness` in real life, a table in tests.
pub type LivenessCheck<'a> = &'a dyn Fn(&Owner) -> Liveness;

/// Whether the reservation made at `since` by `owner` has been abandoned.
pub fn abandoned(
    owner: Option<&Owner>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    alive: LivenessCheck,
) -> bool {
    lifecycle::owner_gone(owner.map(alive), since, now)
}

/// What the lifecycle needs to know of a session besides the event: the time, whether its
/// reservation's owner lives, whether a kill of ours is under way.
pub fn seen(s: &Session, now: DateTime<Utc>, alive: LivenessCheck) -> lifecycle::Seen {
    lifecycle::Seen {
        now,
        owner: s.owner.as_ref().map(alive),
        kill_intended: s
            .kill_request
            .as_ref()
            .is_some_and(|k| alive(&k.by) != Liveness::Dead),
    }
}

/// Applies `event` to session `id` by the lifecycle's decision; returns the reason when it
/// changed the session.
pub fn settle(
    state: &mut State,
    id: &str,
    event: &lifecycle::Event,
    now: DateTime<Utc>,
    alive: LivenessCheck,
) -> Option<String> {
    let s = state.sessions.get_mut(id)?;
    let seen = seen(s, now, alive);
    lifecycle::step(s, event, &seen)
}

/// Sessions whose archive is in place, with when it was made (`archive.json`'s `archived_at`).
pub type Archived = BTreeMap<String, DateTime<Utc>>;

/// Marks sessions archived whose archive is in place, once they are settled, with the time
/// their archive records (so a state rebuilt by `sync` from the archives says the same).
/// Returns how many changed.
pub fn mark_archived(state: &mut State, archived: &Archived) -> usize {
    let mut changed = 0;
    for (id, at) in archived {
        if let Some(s) = state.sessions.get_mut(id)
            && !s.status.is_active()
            && s.archived_at.is_none()
        {
            s.archived_at = Some(*at);
            changed += 1;
        }
    }
    changed
}

/// Records that the VMs of `ids` confirmed their `collected` mark, for sessions archived here
/// (a mark is only ever asked for after the archive is in place). Returns how many changed.
pub fn mark_collected(state: &mut State, ids: &BTreeSet<String>) -> usize {
    let mut changed = 0;
    for id in ids {
        if let Some(s) = state.sessions.get_mut(id)
            && s.archived_at.is_some()
            && !s.vm_marked_collected()
        {
            s.set_vm_marked_collected();
            changed += 1;
        }
    }
    changed
}

/// Applies what the VMs said to the sessions, each by the lifecycle's decision (a pending
/// session whose start may still be launching it is settled only by an answer that launch
/// cannot change, or by a claim). Returns how many changed.
pub fn apply_probes(
    state: &mut State,
    probes: &HashMap<String, Probe>,
    now: DateTime<Utc>,
    alive: LivenessCheck,
) -> usize {
    probes
        .iter()
        .filter(|(id, probe)| {
            settle(state, id, &lifecycle::Event::Observed(probe), now, alive).is_some()
        })
        .count()
}
