//! The state file's data model: `{"sessions": {...}, "vm_pool": {...}}` exactly as the
//! specification shows it, plus a few optional fields of ours. Pure data, no I/O.
//!
//! Compatibility rules (docs/state-file.md):
//! - timestamps are read leniently (RFC 3339 with any offset, or the Python original's naive ISO
//!   form, taken as UTC) and written as RFC 3339 UTC with a `Z`;
//! - every object keeps the fields it does not know (`extra`), so a rewrite loses nothing an
//!   older or newer writer put there; an unknown status string is kept verbatim too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub sessions: BTreeMap<String, Session>,
    #[serde(default)]
    pub vm_pool: BTreeMap<String, VmEntry>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    pub vm_name: String,
    pub workspace: String,
    pub tmux_session: String,
    pub prompt: String,
    pub command: String,
    pub max_turns: u32,
    pub status: SessionStatus,
    pub memory_mb: u64,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "opt_timestamp", default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "opt_timestamp", default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the session failed or was cut short, in words (ours; optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The local git repository the workspace was cloned from, for `pull` (ours; optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_path: Option<String>,
    /// The commit the workspace was cloned at, for `pull` (ours; optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// The `start` that reserved this session and is launching it, while it is `pending`
    /// (ours). Nobody else settles a pending session whose owner is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// A `kill` that is under way (ours): whoever sees the session end records `killed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_request: Option<KillRequest>,
    /// When its results (result, log, commits) were brought home into its archive directory
    /// (ours): from then on nothing about it needs its VM.
    #[serde(
        with = "opt_timestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub archived_at: Option<DateTime<Utc>>,
    /// The session's head commit that `pull` last fetched into the local repository (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_commit: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Files changed, lines inserted and deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub files: u64,
    pub insertions: u64,
    pub deletions: u64,
}

/// What a finished session produced, as its supervisor records it on the VM (`result.json`,
/// docs/remote-layout.md) and its archive keeps it. The git facts are absent for a session
/// started without a git context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionResult {
    #[serde(with = "opt_timestamp", default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "opt_timestamp", default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_seconds: Option<i64>,
    #[serde(default)]
    pub base_commit: Option<String>,
    #[serde(default)]
    pub head_commit: Option<String>,
    /// Commits on the session branch since the starting commit.
    #[serde(default)]
    pub commits: Option<u64>,
    /// The committed work, against the starting commit.
    #[serde(default)]
    pub committed: Option<Changes>,
    /// Work left in the work tree (untracked files included), against the head commit: not
    /// in any commit, so not in the bundle `pull` fetches.
    #[serde(default)]
    pub uncommitted: Option<Changes>,
    #[serde(default)]
    pub dirty: Option<bool>,
    /// Why the git facts are missing although the session had a starting commit.
    #[serde(default)]
    pub git_error: Option<String>,
}

impl SessionResult {
    /// Uncommitted work, when there is any.
    pub fn uncommitted_work(&self) -> Option<Changes> {
        self.uncommitted
            .filter(|c| c.files > 0 || self.dirty == Some(true))
    }
}

/// The process that holds a reservation: enough to tell at once whether it still lives, and
/// that a live process of that pid is still the same one (its start time since boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// `<boot id> <start time in clock ticks since boot>` of the process.
    pub started: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    pub by: Owner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    /// The Azure SKU, e.g. Standard_E16s_v5 (the spec calls it `size`).
    pub size: String,
    pub capacity: u32,
    /// Derived from `sessions` on every write (see `State::normalize`); kept for the
    /// Python original, which reads it.
    #[serde(default)]
    pub active_sessions: Vec<String>,
    pub region: String,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Backend::is_azure")]
    pub backend: Backend,
    #[serde(default, skip_serializing_if = "VmState::is_ready")]
    pub state: VmState,
    /// Why provisioning or deletion failed (ours; optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The Azure resource group it was created in (ours). Every azlin call about this VM
    /// names it, so a later change of AMPLIHACK_RESOURCE_GROUP never loses track of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// The process provisioning or deleting it, while it is `provisioning` or `deleting`
    /// (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Its creation was cut short (ours): Azure may still complete it after any deletion, so
    /// prune keeps tracking it until `creation_settled_after` (docs/reliability.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creation_unconfirmed: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Azure,
    Local,
}

impl Backend {
    fn is_azure(&self) -> bool {
        *self == Backend::Azure
    }
}

/// Where a pool VM is in its life. Only `Ready` VMs take new sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    #[default]
    Ready,
    /// `azlin new` is under way in some process.
    Provisioning,
    /// `prune` is deleting it.
    Deleting,
    /// Provisioning or deletion failed; the VM may still exist and bill. `prune` retries.
    Failed,
}

impl VmState {
    fn is_ready(&self) -> bool {
        *self == VmState::Ready
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    Pending,
    /// Waiting in its VM's queue: the VM starts it when a slot frees. Holds no slot.
    Queued,
    Running,
    Completed,
    Failed,
    Killed,
    /// A status written by another version; kept verbatim.
    Other(String),
}

impl SessionStatus {
    pub fn as_str(&self) -> &str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Queued => "queued",
            SessionStatus::Running => "running",
            SessionStatus::Completed => "completed",
            SessionStatus::Failed => "failed",
            SessionStatus::Killed => "killed",
            SessionStatus::Other(s) => s,
        }
    }

    /// Not finished yet: pending, queued or running.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            SessionStatus::Pending | SessionStatus::Queued | SessionStatus::Running
        )
    }

    /// Pending and running sessions hold a slot on their VM; queued ones wait for one.
    pub fn holds_slot(&self) -> bool {
        matches!(self, SessionStatus::Pending | SessionStatus::Running)
    }

    pub fn from_exit_code(code: i32) -> Self {
        if code == 0 {
            SessionStatus::Completed
        } else {
            SessionStatus::Failed
        }
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for SessionStatus {
    fn from(s: &str) -> Self {
        match s {
            "pending" => SessionStatus::Pending,
            "queued" => SessionStatus::Queued,
            "running" => SessionStatus::Running,
            "completed" => SessionStatus::Completed,
            "failed" => SessionStatus::Failed,
            "killed" => SessionStatus::Killed,
            other => SessionStatus::Other(other.to_string()),
        }
    }
}

impl Serialize for SessionStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SessionStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(SessionStatus::from(s.as_ref()))
    }
}

impl State {
    /// Number of pending or running sessions on each VM: the slots in use.
    pub fn active_counts(&self) -> HashMap<&str, u32> {
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for s in self.sessions.values().filter(|s| s.status.holds_slot()) {
            *counts.entry(s.vm_name.as_str()).or_default() += 1;
        }
        counts
    }

    /// Number of queued sessions on each VM.
    pub fn queued_counts(&self) -> HashMap<&str, u32> {
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for s in self
            .sessions
            .values()
            .filter(|s| s.status == SessionStatus::Queued)
        {
            *counts.entry(s.vm_name.as_str()).or_default() += 1;
        }
        counts
    }

    /// Makes the derived `active_sessions` lists agree with the sessions. Called before
    /// every write, so the file never contradicts itself.
    pub fn normalize(&mut self) {
        for vm in self.vm_pool.values_mut() {
            vm.active_sessions.clear();
        }
        for s in self.sessions.values().filter(|s| s.status.holds_slot()) {
            if let Some(vm) = self.vm_pool.get_mut(&s.vm_name) {
                vm.active_sessions.push(s.session_id.clone());
            }
        }
    }

    /// Moves a session to a final status and frees its slot. Returns false when the session
    /// was no longer active (someone else settled it first), in which case nothing changes.
    pub fn finish_session(
        &mut self,
        id: &str,
        status: SessionStatus,
        exit_code: Option<i32>,
        at: DateTime<Utc>,
        error: Option<String>,
    ) -> bool {
        match self.sessions.get_mut(id) {
            Some(s) if s.status.is_active() => {
                s.status = status;
                s.exit_code = exit_code;
                s.completed_at = Some(at);
                if error.is_some() {
                    s.error = error;
                }
                s.owner = None;
                s.kill_request = None;
                true
            }
            _ => false,
        }
    }
}

pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    match whole_seconds(t) {
        Some(buf) => String::from_utf8_lossy(&buf).into_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` without allocating, for whole-second times of years 0-9999: the form
/// nearly every timestamp has, and a hot spot when listing thousands of sessions.
fn whole_seconds(t: &DateTime<Utc>) -> Option<[u8; 20]> {
    use chrono::{Datelike, Timelike};
    if t.nanosecond() != 0 || !(0..=9999).contains(&t.year()) {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, t.year() as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    Some(b)
}

fn serialize_timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match whole_seconds(t) {
        Some(buf) => s.serialize_str(std::str::from_utf8(&buf).expect("ASCII")),
        None => s.serialize_str(&format_timestamp(t)),
    }
}

pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    if let Some(t) = parse_utc_seconds(s) {
        return Ok(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(format!("invalid timestamp {s:?}"))
}

/// The fast path for the form we write, `YYYY-MM-DDTHH:MM:SSZ`: reading a state file spends
/// most of its time on timestamps otherwise. Anything else goes to the general parsers.
fn parse_utc_seconds(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time = chrono::NaiveTime::from_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(date.and_time(time).and_utc())
}

mod timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        serialize_timestamp(t, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_timestamp(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serialize_timestamp(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match <Option<std::borrow::Cow<'de, str>>>::deserialize(d)? {
            Some(s) => parse_timestamp(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example state as the Python original writes it (naive timestamps,
    /// a SKU missing from our table, fields we do not know).
    const PYTHON_STATE: &str = include_str!("../tests/expected/python-state.json");

    #[test]
    fn reads_python_state_and_keeps_unknown_fields() {
        let state: State = serde_json::from_str(PYTHON_STATE).unwrap();
        let s = &state.sessions["sess-20251125-143022-abc"];
        assert_eq!(s.status, SessionStatus::Running);
        assert_eq!(
            format_timestamp(&s.created_at),
            "2025-11-25T14:30:22.123456Z"
        );
        let out = serde_json::to_value(&state).unwrap();
        assert_eq!(out["written_by"], "python");
        assert_eq!(
            out["sessions"]["sess-20251125-143022-abc"]["python_field"][1],
            2
        );
        assert_eq!(
            out["sessions"]["sess-20251125-143022-abc"]["started_at"],
            "2025-11-25T14:30:45Z"
        );
        assert!(out["sessions"]["sess-20251125-143022-abc"]["completed_at"].is_null());
        assert!(
            out["sessions"]["sess-20251125-143022-abc"]
                .get("error")
                .is_none()
        );
        assert!(
            out["vm_pool"]["amplihack-user-20251125-143000"]
                .get("backend")
                .is_none()
        );
    }

    #[test]
    fn unknown_status_is_kept_verbatim() {
        let text = PYTHON_STATE.replace("\"running\"", "\"paused\"");
        let state: State = serde_json::from_str(&text).unwrap();
        let s = &state.sessions["sess-20251125-143022-abc"];
        assert_eq!(s.status, SessionStatus::Other("paused".into()));
        assert!(!s.status.is_active());
        let out = serde_json::to_value(&state).unwrap();
        assert_eq!(
            out["sessions"]["sess-20251125-143022-abc"]["status"],
            "paused"
        );
    }

    #[test]
    fn the_fast_timestamp_path_agrees_with_chrono() {
        for s in [
            "2025-11-25T14:30:22Z",
            "2000-02-29T00:00:00Z",
            "2099-12-31T23:59:59Z",
        ] {
            let slow = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
            assert_eq!(parse_utc_seconds(s), Some(slow), "{s}");
        }
        for s in [
            "2025-11-25T14:30:22Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            let t = parse_timestamp(s).unwrap();
            assert_eq!(
                format_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
            assert_eq!(format_timestamp(&t), s);
        }
        for s in [
            "2025-02-30T00:00:00Z",
            "2025-11-25T24:00:00Z",
            "2025-11-25 14:30:22Z",
            "2025-1a-25T14:30:22Z",
            "+025-11-25T14:30:22Z",
        ] {
            assert_eq!(parse_utc_seconds(s), None, "{s}");
        }
    }

    #[test]
    fn timestamps_accept_offsets_and_naive_forms() {
        let z = parse_timestamp("2025-11-25T14:30:22Z").unwrap();
        assert_eq!(parse_timestamp("2025-11-25T15:30:22+01:00").unwrap(), z);
        assert_eq!(parse_timestamp("2025-11-25 14:30:22").unwrap(), z);
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn normalize_derives_active_sessions() {
        let mut state: State = serde_json::from_str(PYTHON_STATE).unwrap();
        state
            .vm_pool
            .values_mut()
            .for_each(|v| v.active_sessions = vec!["ghost".into()]);
        state.normalize();
        assert_eq!(
            state.vm_pool["amplihack-user-20251125-143000"].active_sessions,
            vec![
                "sess-20251125-143022-abc".to_string(),
                "sess-20251125-143025-def".to_string()
            ]
        );
        let now = Utc::now();
        assert!(state.finish_session(
            "sess-20251125-143022-abc",
            SessionStatus::Completed,
            Some(0),
            now,
            None
        ));
        assert!(!state.finish_session(
            "sess-20251125-143022-abc",
            SessionStatus::Failed,
            Some(1),
            now,
            None
        ));
        state.normalize();
        assert_eq!(
            state.vm_pool["amplihack-user-20251125-143000"].active_sessions,
            vec!["sess-20251125-143025-def".to_string()]
        );
    }
}
