//! The session state machine: the one place that decides a session's status (pure).
//!
//! Every command that learns something about a session (a VM's `session` line, its launch's
//! answer, a dead `start`, a VM azlin no longer has) turns it into an [`Event`] and asks
//! [`decide`] what becomes of the session; [`apply`] writes the answer. Nothing else sets a
//! status. The VM has its own single judge of a session's files, `session_phase` in
//! `src/remote/vm/lib.sh`, whose answer arrives here as [`Phase`]. The machine, drawn in
//! docs/architecture.md:
//!
//! - `pending` (reserved by a `start`, which owns it while it lives) becomes `running`,
//!   `queued` or `failed` by its launch's answer; a launch whose answer was lost leaves it
//!   `pending`, unconfirmed, until its VM says what became of it (a probe, or the claim a
//!   refresh makes once its start is dead).
//! - `queued` becomes `running` when its VM starts it, `killed` when a kill dequeues it.
//! - `running` ends `completed`, `failed` or `killed` by the exit code the VM recorded; a kill
//!   asked on the VM (or ours under way) makes any end `killed`.
//! - `completed`, `failed` and `killed` are final: nothing revives them.

use chrono::{DateTime, Duration, Utc};

use crate::core::model::{Session, SessionStatus};
use crate::core::unattended;

/// Whether the owner of a reservation still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// It ran on another machine: nothing here can tell.
    Unknown,
}

/// What a session is on its VM: `session_phase` of `src/remote/vm/lib.sh` (docs/remote-layout.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in its VM's queue.
    Queued,
    /// Never to start: a claim found it unlaunched, or a kill took it out of the queue.
    Cancelled,
    /// Its files are being written, or a launch died before placing it.
    Launching,
    /// Its supervisor or its agent's group lives (whatever marks remain).
    Running,
    /// Its exit code is recorded.
    Ended,
    /// Its placement failed (tmux refused it, no free slot with `--no-queue`, ...).
    Failed,
    /// It was started, nothing of it runs, and no exit code was recorded (a reboot, or it was
    /// killed outright).
    Vanished,
    /// The VM has no directory of it (and, for a session of the Python original, no tmux
    /// session).
    Absent,
}

impl Phase {
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "queued" => Phase::Queued,
            "cancelled" => Phase::Cancelled,
            "launching" => Phase::Launching,
            "running" => Phase::Running,
            "ended" => Phase::Ended,
            "failed" => Phase::Failed,
            "vanished" => Phase::Vanished,
            "absent" => Phase::Absent,
            _ => return None,
        })
    }

    /// The phase an older control script's line implies (it sent no phase).
    pub fn from_flags(
        known: bool,
        alive: bool,
        exit: Option<i32>,
        cancelled: bool,
        queued: bool,
    ) -> Phase {
        if exit.is_some() {
            Phase::Ended
        } else if alive {
            Phase::Running
        } else if cancelled {
            Phase::Cancelled
        } else if queued {
            Phase::Queued
        } else if known {
            Phase::Vanished
        } else {
            Phase::Absent
        }
    }

    /// The VM's answer settles a pending session even when its start died with a launch
    /// possibly still on its way: that launch could not change it (started, queued, ended,
    /// refused or cancelled is for good). `launching` and `absent` are not: a launch may yet
    /// place it, so only a claim (or a reservation older than any start) settles those.
    fn settles_pending(self) -> bool {
        !matches!(self, Phase::Launching | Phase::Absent)
    }
}

/// What a probe learned of one session on its VM (`remote::answer` reads it from the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The session directory exists (sessions of the Python original have none).
    pub known: bool,
    /// The agent's process group or the session's supervisor lives (identity verified); for a
    /// session without a directory, its tmux session exists.
    pub alive: bool,
    pub exit_code: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// `kill` marked the session before signalling it.
    pub kill_requested: bool,
    /// Its tmux session exists (what `attach` needs).
    pub tmux: bool,
    /// Its launch was cancelled: its start died before launching it.
    pub cancelled: bool,
    /// This probe claimed it (a pending session whose start died): launched or cancelled, the
    /// answer is final, so it may settle a pending session.
    pub claimed: bool,
    /// It waits in its VM's queue.
    pub queued: bool,
    /// What it is on its VM (`session_phase`, the VM's one judge): what the lifecycle decides by.
    pub phase: Phase,
    /// Why its placement failed, when it did.
    pub reason: Option<String>,
    /// What its supervisor says of it while it runs: the retry it waits for
    /// (docs/unattended.md).
    pub detail: Option<String>,
    /// Since when its output has been silent, while it is.
    pub silent_since: Option<DateTime<Utc>>,
}

/// A session with a directory whose supervisor and agent are both gone, with no exit code.
pub const VANISHED: &str = "its supervisor and agent ended without recording an exit code (the VM rebooted, or they were killed outright)";
/// A session its VM has no trace of.
pub const UNKNOWN_ON_VM: &str =
    "its VM has no trace of it: no session directory and no tmux session";
/// A pending session whose start died before launching it.
pub const NEVER_LAUNCHED: &str = "its start ended before launching it";
/// A pending session whose launch never placed it, past any start's time.
pub const LAUNCH_NEVER_FINISHED: &str =
    "its launch never finished: the VM has its files but never started or queued it";
/// A queued session a kill took out of the queue.
pub const DEQUEUED: &str = "taken out of its VM's queue before it started";
/// A session on a VM azlin confirmed gone.
pub const VM_GONE: &str = "its VM no longer exists";
/// `kill --force` while the VM did not answer.
pub const KILLED_LOCALLY: &str = "killed locally while its VM was unreachable";

/// How long a reservation whose owner cannot be checked (it ran on another machine, or none
/// was recorded, as by the Python original) is trusted: longer than any start can take
/// (provisioning 25 minutes, then up to 4 launch attempts of 10 minutes).
pub fn unverifiable_owner_trust() -> Duration {
    Duration::hours(2)
}

/// Whether a reservation made at `since` whose owner is `owner` (`None`: none recorded) has
/// been abandoned.
pub fn owner_gone(owner: Option<Liveness>, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    match owner {
        Some(Liveness::Alive) => false,
        Some(Liveness::Dead) => true,
        Some(Liveness::Unknown) | None => now - since > unverifiable_owner_trust(),
    }
}

/// Something learnt about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A `session` line from its VM (a probe, records, capture, kill, stream or watch).
    Observed(&'a Probe),
    /// Its launch answered: started, at the VM's recorded time when it reported one.
    Launched { started_at: Option<DateTime<Utc>> },
    /// Its launch answered: waiting in the VM's queue.
    LaunchQueued,
    /// It could not be placed: the launch answered `failed`, or its start could not get it
    /// to a VM (provisioning failed, no room). Why, in words.
    Refused(String),
    /// Its launch's answer was lost (the connection dropped, a second Ctrl+C): it may run.
    /// Why, in words.
    Unconfirmed(String),
    /// Its start died while its VM was not ready: nothing can have launched it.
    StartDied,
    /// `kill --force` while its VM did not answer.
    KilledLocally,
    /// azlin confirmed its VM no longer exists.
    VmGone,
}

/// What else a decision depends on, besides the session and the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub now: DateTime<Utc>,
    /// Whether the owner of the session's reservation lives (`None`: none recorded).
    pub owner: Option<Liveness>,
    /// A kill of ours is under way (its process lives): any end it causes is `killed`.
    pub kill_intended: bool,
}

/// What to write into the session: its new status and the facts that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: SessionStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub completed_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// While it runs, what its supervisor says of it (docs/unattended.md): the retry it waits
    /// for, or `silent 42m`; and since when its output is silent. Cleared by any other status.
    pub detail: Option<String>,
    pub silent_since: Option<DateTime<Utc>>,
    /// Why, in words (for messages and reports).
    pub reason: String,
}

fn ended(
    s: &Session,
    to: SessionStatus,
    exit_code: Option<i32>,
    at: DateTime<Utc>,
    error: Option<String>,
    started_at: Option<DateTime<Utc>>,
    reason: String,
) -> Transition {
    Transition {
        to,
        started_at: s.started_at.or(started_at),
        exit_code,
        completed_at: Some(at),
        // A session that ends without a reason of its own keeps the one it had.
        error: error.or_else(|| s.error.clone()),
        detail: None,
        silent_since: None,
        reason,
    }
}

/// How the VM's final answer about a session ends it.
fn ending(s: &Session, p: &Probe, seen: &Seen) -> Transition {
    let killed = p.kill_requested || seen.kill_intended;
    let now = seen.now;
    match p.phase {
        Phase::Ended => {
            let code = p.exit_code;
            let status = if killed {
                SessionStatus::Killed
            } else {
                code.map_or(SessionStatus::Failed, SessionStatus::from_exit_code)
            };
            let reason = match (&status, code) {
                (SessionStatus::Killed, Some(c)) => {
                    format!("a kill was asked; its agent exited with {c}")
                }
                (_, Some(c)) => format!("its agent exited with {c}"),
                (_, None) => "its VM recorded its end".into(),
            };
            ended(
                s,
                status,
                code,
                p.finished_at.unwrap_or(now),
                p.reason.clone(),
                p.started_at,
                reason,
            )
        }
        Phase::Cancelled if killed => ended(
            s,
            SessionStatus::Killed,
            None,
            now,
            Some(DEQUEUED.into()),
            None,
            DEQUEUED.into(),
        ),
        Phase::Cancelled => ended(
            s,
            SessionStatus::Failed,
            None,
            now,
            Some(NEVER_LAUNCHED.into()),
            None,
            NEVER_LAUNCHED.into(),
        ),
        Phase::Failed => {
            let why = p
                .reason
                .clone()
                .unwrap_or_else(|| "its VM could not place it".into());
            ended(
                s,
                SessionStatus::Failed,
                None,
                now,
                Some(why.clone()),
                None,
                why,
            )
        }
        _ if killed => ended(
            s,
            SessionStatus::Killed,
            None,
            now,
            None,
            p.started_at,
            "a kill was asked and nothing of it runs".into(),
        ),
        Phase::Vanished => ended(
            s,
            SessionStatus::Failed,
            None,
            now,
            Some(VANISHED.into()),
            p.started_at,
            VANISHED.into(),
        ),
        Phase::Launching => ended(
            s,
            SessionStatus::Failed,
            None,
            now,
            Some(LAUNCH_NEVER_FINISHED.into()),
            None,
            LAUNCH_NEVER_FINISHED.into(),
        ),
        Phase::Absent | Phase::Queued | Phase::Running => ended(
            s,
            SessionStatus::Failed,
            None,
            now,
            Some(UNKNOWN_ON_VM.into()),
            None,
            UNKNOWN_ON_VM.into(),
        ),
    }
}

/// An active status: no end, and no note (an unconfirmed launch's goes once its VM answers).
fn to_active(to: SessionStatus, started_at: Option<DateTime<Utc>>, reason: &str) -> Transition {
    Transition {
        to,
        started_at,
        exit_code: None,
        completed_at: None,
        error: None,
        detail: None,
        silent_since: None,
        reason: reason.into(),
    }
}

fn finished(s: &Session, to: SessionStatus, error: &str, now: DateTime<Utc>) -> Transition {
    ended(s, to, None, now, Some(error.into()), None, error.into())
}

/// The one transition `event` makes of session `s` (or none). The table, row by row, is in
/// docs/architecture.md ("The session state machine") and in this module's tests.
pub fn decide(s: &Session, event: &Event, seen: &Seen) -> Option<Transition> {
    use SessionStatus as S;
    if !s.status.is_active() {
        // Completed, failed and killed are final: nothing revives them.
        return None;
    }
    let now = seen.now;
    match event {
        Event::Observed(p) => {
            if s.status == S::Pending {
                // A live start owns its reservation; a dead one's may have a launch still on
                // its way: only an answer that launch cannot change settles it, or a claim.
                if seen.owner == Some(Liveness::Alive) {
                    return None;
                }
                let expired = now - s.created_at > unverifiable_owner_trust();
                if !(p.phase.settles_pending() || p.claimed || expired) {
                    return None;
                }
            }
            match p.phase {
                Phase::Running => {
                    // What its supervisor says while it runs (a retry it waits for, silence):
                    // it stays running, with a detail (docs/unattended.md).
                    let detail = unattended::detail(p.detail.as_deref(), p.silent_since, now);
                    if s.status == S::Running {
                        return (s.detail != detail || s.silent_since != p.silent_since).then(
                            || Transition {
                                to: S::Running,
                                started_at: s.started_at,
                                exit_code: None,
                                completed_at: None,
                                error: s.error.clone(),
                                reason: detail.clone().unwrap_or_else(|| "its VM runs it".into()),
                                detail,
                                silent_since: p.silent_since,
                            },
                        );
                    }
                    // Started by its VM out of the queue, or confirmed: the VM's start time.
                    let started = if s.status == S::Queued {
                        p.started_at.or(s.started_at)
                    } else {
                        s.started_at.or(p.started_at)
                    };
                    Some(Transition {
                        detail,
                        silent_since: p.silent_since,
                        ..to_active(S::Running, started, "its VM runs it")
                    })
                }
                Phase::Queued => (s.status != S::Queued)
                    .then(|| to_active(S::Queued, None, "it waits in its VM's queue")),
                // Being placed: nothing to say yet (a pending session past any start's time
                // reaches `ending` through the expiry above).
                Phase::Launching if s.status != S::Pending => None,
                _ => Some(ending(s, p, seen)),
            }
        }
        Event::Launched { started_at } => (s.status == S::Pending).then(|| {
            // The VM's own time, so a state rebuilt from the VM says the same.
            to_active(
                S::Running,
                Some(started_at.unwrap_or(now)),
                "its launch started it",
            )
        }),
        Event::LaunchQueued => (s.status == S::Pending)
            .then(|| to_active(S::Queued, None, "its launch queued it on its VM")),
        Event::Refused(why) => Some(finished(s, S::Failed, why, now)),
        Event::Unconfirmed(why) => (s.status == S::Pending).then(|| Transition {
            to: S::Pending,
            started_at: None,
            exit_code: None,
            completed_at: None,
            error: Some(why.clone()),
            detail: None,
            silent_since: None,
            reason: why.clone(),
        }),
        Event::StartDied => (s.status == S::Pending && owner_gone(seen.owner, s.created_at, now))
            .then(|| finished(s, S::Failed, NEVER_LAUNCHED, now)),
        Event::KilledLocally => Some(finished(s, S::Killed, KILLED_LOCALLY, now)),
        Event::VmGone => Some(finished(s, S::Failed, VM_GONE, now)),
    }
}

/// Writes a transition into the session. Leaving `pending` ends its start's ownership; an end
/// also closes any kill under way.
pub fn apply(s: &mut Session, t: Transition) {
    let pending = t.to == SessionStatus::Pending;
    s.started_at = t.started_at;
    s.exit_code = t.exit_code;
    s.completed_at = t.completed_at;
    s.error = t.error;
    s.detail = t.detail;
    s.silent_since = t.silent_since;
    if !t.to.is_active() {
        s.kill_request = None;
    }
    if !pending {
        s.owner = None;
    }
    s.status = t.to;
}

/// Decides and applies; returns the reason when the session changed.
pub fn step(s: &mut Session, event: &Event, seen: &Seen) -> Option<String> {
    let t = decide(s, event, seen)?;
    let reason = t.reason.clone();
    apply(s, t);
    Some(reason)
}

/// A session the state lacks, rebuilt from its VM's record and `session` line (`sync`): as
/// reserved (pending, its start unknown to us), then settled by the VM's answer like any
/// pending session whose owner cannot be checked.
pub fn rebuilt(record: &Session, vm: &str, probe: &Probe, now: DateTime<Utc>) -> Session {
    let mut s = record.clone();
    s.vm_name = vm.to_string();
    s.owner = None;
    s.kill_request = None;
    s.started_at = None;
    s.completed_at = None;
    s.exit_code = None;
    s.error = None;
    s.status = SessionStatus::Pending;
    let seen = Seen {
        now,
        owner: Some(Liveness::Unknown),
        kill_intended: false,
    };
    step(&mut s, &Event::Observed(probe), &seen);
    if s.status.is_active() && s.status != SessionStatus::Queued {
        s.started_at = probe.started_at.or(record.started_at);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(sec: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap()
    }

    fn session(status: SessionStatus) -> Session {
        let mut s: Session = serde_json::from_value(serde_json::json!({
            "session_id": "sess-1", "vm_name": "vm1", "workspace": "/w", "tmux_session": "sess-1",
            "prompt": "p", "command": "auto", "max_turns": 10, "status": "pending",
            "memory_mb": 0, "created_at": "2023-11-14T22:13:20Z"
        }))
        .unwrap();
        s.status = status;
        s
    }

    fn probe(phase: Phase) -> Probe {
        Probe {
            known: phase != Phase::Absent,
            alive: phase == Phase::Running,
            exit_code: None,
            finished_at: None,
            started_at: None,
            kill_requested: false,
            tmux: false,
            cancelled: phase == Phase::Cancelled,
            claimed: false,
            queued: phase == Phase::Queued,
            phase,
            reason: None,
            detail: None,
            silent_since: None,
        }
    }

    fn ended_with(code: i32) -> Probe {
        Probe {
            exit_code: Some(code),
            finished_at: Some(t(50)),
            started_at: Some(t(5)),
            ..probe(Phase::Ended)
        }
    }

    fn seen(owner: Option<Liveness>) -> Seen {
        Seen {
            now: t(100),
            owner,
            kill_intended: false,
        }
    }

    fn decide_obs(s: &Session, p: &Probe, seen: &Seen) -> Option<SessionStatus> {
        decide(s, &Event::Observed(p), seen).map(|t| t.to)
    }

    use SessionStatus as S;

    #[test]
    fn running_ends_by_its_exit_code() {
        let s = session(S::Running);
        let tr = decide(&s, &Event::Observed(&ended_with(0)), &seen(None)).unwrap();
        assert_eq!(tr.to, S::Completed);
        assert_eq!(tr.exit_code, Some(0));
        assert_eq!(tr.completed_at, Some(t(50)));
        assert_eq!(decide_obs(&s, &ended_with(2), &seen(None)), Some(S::Failed));
    }

    #[test]
    fn a_kill_asked_on_the_vm_wins_over_the_exit_code() {
        // Case 7: the second kill sees exit 143 and the VM's kill mark.
        let s = session(S::Running);
        let p = Probe {
            kill_requested: true,
            ..ended_with(143)
        };
        let tr = decide(&s, &Event::Observed(&p), &seen(None)).unwrap();
        assert_eq!(tr.to, S::Killed);
        assert_eq!(tr.exit_code, Some(143));
        // And a kill of ours under way does too.
        let ours = Seen {
            kill_intended: true,
            ..seen(None)
        };
        assert_eq!(decide_obs(&s, &ended_with(0), &ours), Some(S::Killed));
    }

    #[test]
    fn running_with_nothing_left_vanished() {
        let s = session(S::Running);
        let tr = decide(&s, &Event::Observed(&probe(Phase::Vanished)), &seen(None)).unwrap();
        assert_eq!(tr.to, S::Failed);
        assert_eq!(tr.error.as_deref(), Some(VANISHED));
        let killed = Probe {
            kill_requested: true,
            ..probe(Phase::Vanished)
        };
        assert_eq!(decide_obs(&s, &killed, &seen(None)), Some(S::Killed));
        assert_eq!(
            decide(&s, &Event::Observed(&probe(Phase::Absent)), &seen(None))
                .unwrap()
                .error
                .as_deref(),
            Some(UNKNOWN_ON_VM)
        );
    }

    #[test]
    fn running_stays_running() {
        let s = session(S::Running);
        assert_eq!(decide_obs(&s, &probe(Phase::Running), &seen(None)), None);
        assert_eq!(decide_obs(&s, &probe(Phase::Launching), &seen(None)), None);
    }

    #[test]
    fn running_takes_its_supervisors_detail_and_drops_it_when_it_ends() {
        let mut s = session(S::Running);
        let retrying = Probe {
            detail: Some("retry 1/2 at 14:05 UTC: API overloaded".into()),
            ..probe(Phase::Running)
        };
        let tr = decide(&s, &Event::Observed(&retrying), &seen(None)).unwrap();
        assert_eq!(tr.to, S::Running);
        assert_eq!(
            tr.detail.as_deref(),
            Some("retry 1/2 at 14:05 UTC: API overloaded")
        );
        apply(&mut s, tr);
        // Told again: nothing changes.
        assert_eq!(decide_obs(&s, &retrying, &seen(None)), None);
        // Silence wins, in whole minutes as of now.
        let silent = Probe {
            silent_since: Some(seen(None).now - Duration::minutes(42)),
            ..probe(Phase::Running)
        };
        let tr = decide(&s, &Event::Observed(&silent), &seen(None)).unwrap();
        assert_eq!(
            (&tr.to, tr.detail.as_deref()),
            (&S::Running, Some("silent 42m"))
        );
        assert_eq!(tr.silent_since, silent.silent_since);
        apply(&mut s, tr);
        // Its end clears both; the supervisor's error (retries spent, the cap) is recorded.
        let capped = Probe {
            reason: Some("ran past --max-hours 2".into()),
            ..ended_with(124)
        };
        let tr = decide(&s, &Event::Observed(&capped), &seen(None)).unwrap();
        assert_eq!(
            (tr.to, tr.error.as_deref()),
            (S::Failed, Some("ran past --max-hours 2"))
        );
        assert_eq!((tr.detail, tr.silent_since), (None, None));
    }

    #[test]
    fn queued_starts_at_the_vms_time_and_is_never_ended_while_queued() {
        let s = session(S::Queued);
        // Case 1: still queued: nothing to change, nothing ended.
        assert_eq!(decide_obs(&s, &probe(Phase::Queued), &seen(None)), None);
        let started = Probe {
            started_at: Some(t(30)),
            ..probe(Phase::Running)
        };
        let tr = decide(&s, &Event::Observed(&started), &seen(None)).unwrap();
        assert_eq!(tr.to, S::Running);
        assert_eq!(tr.started_at, Some(t(30)));
    }

    #[test]
    fn a_stale_queued_mark_never_hides_a_running_agent() {
        // Case 2: the VM's phase says running whatever marks remain (queued = 1 here).
        let s = session(S::Queued);
        let p = Probe {
            queued: true,
            ..probe(Phase::Running)
        };
        assert_eq!(decide_obs(&s, &p, &seen(None)), Some(S::Running));
    }

    #[test]
    fn a_dequeued_session_is_killed_a_cancelled_one_failed() {
        let s = session(S::Queued);
        let p = Probe {
            kill_requested: true,
            ..probe(Phase::Cancelled)
        };
        let tr = decide(&s, &Event::Observed(&p), &seen(None)).unwrap();
        assert_eq!((tr.to, tr.error.as_deref()), (S::Killed, Some(DEQUEUED)));
        let p = Probe {
            claimed: true,
            ..probe(Phase::Cancelled)
        };
        let tr = decide(
            &session(S::Pending),
            &Event::Observed(&p),
            &seen(Some(Liveness::Dead)),
        )
        .unwrap();
        assert_eq!(
            (tr.to, tr.error.as_deref()),
            (S::Failed, Some(NEVER_LAUNCHED))
        );
    }

    #[test]
    fn a_live_start_owns_its_pending_session() {
        let s = session(S::Pending);
        for phase in [
            Phase::Running,
            Phase::Ended,
            Phase::Absent,
            Phase::Launching,
        ] {
            let p = probe(phase);
            assert_eq!(
                decide_obs(&s, &p, &seen(Some(Liveness::Alive))),
                None,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_dead_starts_pending_session_settles_by_final_answers_or_a_claim() {
        // Case 3: an unconfirmed launch whose start is gone: the VM's answer settles it.
        let s = session(S::Pending);
        let dead = seen(Some(Liveness::Dead));
        assert_eq!(
            decide_obs(&s, &probe(Phase::Running), &dead),
            Some(S::Running)
        );
        assert_eq!(
            decide_obs(&s, &probe(Phase::Queued), &dead),
            Some(S::Queued)
        );
        assert_eq!(decide_obs(&s, &ended_with(0), &dead), Some(S::Completed));
        // Not placed yet: a launch may still be on its way; only a claim decides.
        assert_eq!(decide_obs(&s, &probe(Phase::Launching), &dead), None);
        assert_eq!(decide_obs(&s, &probe(Phase::Absent), &dead), None);
        let claimed = Probe {
            claimed: true,
            ..probe(Phase::Absent)
        };
        assert_eq!(decide_obs(&s, &claimed, &dead), Some(S::Failed));
    }

    #[test]
    fn a_pending_session_past_any_starts_time_is_settled() {
        let mut s = session(S::Pending);
        s.created_at = t(0) - Duration::hours(3);
        let tr = decide(&s, &Event::Observed(&probe(Phase::Launching)), &seen(None)).unwrap();
        assert_eq!(tr.error.as_deref(), Some(LAUNCH_NEVER_FINISHED));
    }

    #[test]
    fn a_failed_placement_fails_with_its_reason() {
        // Case 4: what sync rebuilds.
        let p = Probe {
            reason: Some("tmux new-session failed: no server".into()),
            ..probe(Phase::Failed)
        };
        let s = rebuilt(&session(S::Pending), "vm1", &p, t(100));
        assert_eq!(s.status, S::Failed);
        assert_eq!(
            s.error.as_deref(),
            Some("tmux new-session failed: no server")
        );
    }

    #[test]
    fn rebuilt_sessions_take_the_vms_word() {
        let r = session(S::Pending);
        assert_eq!(
            rebuilt(&r, "vm1", &ended_with(0), t(100)).status,
            S::Completed
        );
        let s = rebuilt(
            &r,
            "vm2",
            &Probe {
                started_at: Some(t(3)),
                ..probe(Phase::Running)
            },
            t(100),
        );
        assert_eq!(
            (s.status, s.started_at, s.vm_name.as_str()),
            (S::Running, Some(t(3)), "vm2")
        );
        assert_eq!(
            rebuilt(&r, "vm1", &probe(Phase::Queued), t(100)).status,
            S::Queued
        );
        // Being launched by a start elsewhere: pending.
        assert_eq!(
            rebuilt(&r, "vm1", &probe(Phase::Launching), t(100)).status,
            S::Pending
        );
        assert_eq!(
            rebuilt(&r, "vm1", &probe(Phase::Vanished), t(100)).status,
            S::Failed
        );
    }

    #[test]
    fn ended_sessions_are_final() {
        for status in [S::Completed, S::Failed, S::Killed] {
            let s = session(status.clone());
            assert_eq!(decide_obs(&s, &probe(Phase::Running), &seen(None)), None);
            assert_eq!(
                decide(&s, &Event::Launched { started_at: None }, &seen(None)),
                None
            );
            assert_eq!(decide(&s, &Event::VmGone, &seen(None)), None);
            assert_eq!(decide(&s, &Event::KilledLocally, &seen(None)), None);
        }
    }

    #[test]
    fn launch_answers() {
        let s = session(S::Pending);
        let tr = decide(
            &s,
            &Event::Launched {
                started_at: Some(t(7)),
            },
            &seen(Some(Liveness::Alive)),
        )
        .unwrap();
        assert_eq!((tr.to, tr.started_at), (S::Running, Some(t(7))));
        assert_eq!(
            decide(&s, &Event::LaunchQueued, &seen(None)).map(|t| t.to),
            Some(S::Queued)
        );
        let tr = decide(&s, &Event::Refused("no room".into()), &seen(None)).unwrap();
        assert_eq!((tr.to, tr.error.as_deref()), (S::Failed, Some("no room")));
        // Already settled by a refresh: the launch's late answer changes nothing.
        assert_eq!(
            decide(
                &session(S::Running),
                &Event::Launched { started_at: None },
                &seen(None)
            ),
            None
        );
    }

    #[test]
    fn an_unconfirmed_launch_stays_pending_with_a_note() {
        // Case 3: never `failed` for a dropped connection.
        let mut s = session(S::Pending);
        let why = "the connection dropped";
        assert_eq!(
            step(
                &mut s,
                &Event::Unconfirmed(why.into()),
                &seen(Some(Liveness::Alive))
            ),
            Some(why.to_string())
        );
        assert_eq!(
            (s.status.clone(), s.error.as_deref()),
            (S::Pending, Some(why))
        );
        // Then its VM's answer settles it, and the note goes.
        step(
            &mut s,
            &Event::Observed(&probe(Phase::Running)),
            &seen(Some(Liveness::Dead)),
        );
        assert_eq!((s.status, s.error), (S::Running, None));
    }

    #[test]
    fn a_dead_start_on_a_vm_never_ready_never_launched() {
        let s = session(S::Pending);
        assert_eq!(
            decide(&s, &Event::StartDied, &seen(Some(Liveness::Alive))),
            None
        );
        let tr = decide(&s, &Event::StartDied, &seen(Some(Liveness::Dead))).unwrap();
        assert_eq!(
            (tr.to, tr.error.as_deref()),
            (S::Failed, Some(NEVER_LAUNCHED))
        );
        // Another machine's start: trusted for two hours.
        assert_eq!(
            decide(&s, &Event::StartDied, &seen(Some(Liveness::Unknown))),
            None
        );
    }

    #[test]
    fn a_vm_gone_fails_its_active_sessions() {
        // Case 6.
        for status in [S::Pending, S::Queued, S::Running] {
            let tr = decide(&session(status), &Event::VmGone, &seen(None)).unwrap();
            assert_eq!((tr.to, tr.error.as_deref()), (S::Failed, Some(VM_GONE)));
        }
    }

    #[test]
    fn killed_locally() {
        let tr = decide(&session(S::Running), &Event::KilledLocally, &seen(None)).unwrap();
        assert_eq!(
            (tr.to, tr.error.as_deref()),
            (S::Killed, Some(KILLED_LOCALLY))
        );
    }

    #[test]
    fn applying_an_end_clears_owner_and_kill() {
        let mut s = session(S::Pending);
        s.owner = Some(crate::core::model::Owner {
            pid: 1,
            host: "h".into(),
            started: "x".into(),
        });
        step(&mut s, &Event::VmGone, &seen(None));
        assert!(s.owner.is_none() && s.kill_request.is_none());
        assert_eq!(s.completed_at, Some(t(100)));
    }

    #[test]
    fn legacy_lines_imply_their_phase() {
        assert_eq!(
            Phase::from_flags(true, false, Some(0), false, false),
            Phase::Ended
        );
        assert_eq!(
            Phase::from_flags(true, true, None, false, true),
            Phase::Running
        );
        assert_eq!(
            Phase::from_flags(true, false, None, true, false),
            Phase::Cancelled
        );
        assert_eq!(
            Phase::from_flags(true, false, None, false, true),
            Phase::Queued
        );
        assert_eq!(
            Phase::from_flags(true, false, None, false, false),
            Phase::Vanished
        );
        assert_eq!(
            Phase::from_flags(false, false, None, false, false),
            Phase::Absent
        );
    }
}
