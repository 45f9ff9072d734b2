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
    #[serde(default, with = "records")]
    pub sessions: BTreeMap<String, Session>,
    #[serde(default, with = "records")]
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
    pub prompt: Prompt,
    pub command: String,
    #[serde(deserialize_with = "whole::deserialize")]
    pub max_turns: u32,
    pub status: SessionStatus,
    #[serde(deserialize_with = "whole::deserialize")]
    pub memory_mb: u64,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "opt_timestamp", default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "opt_timestamp", default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "whole::deserialize_opt")]
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
    /// Its unattended settings as started (ours; docs/unattended.md): notify, retries,
    /// silence, the --max-hours cap. Never the notify URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unattended: Option<crate::core::unattended::Unattended>,
    /// What its supervisor says of it while it runs (ours), e.g. `retry 1/2 at 14:05 UTC: API
    /// overloaded`, or `silent 42m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Since when its output has been silent, while it is (ours).
    #[serde(
        with = "opt_timestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub silent_since: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Written by the Python original (naive timestamps): its timestamps are written back
    /// naive, since that program cannot compare a naive time with an aware one.
    #[serde(skip)]
    pub naive_timestamps: bool,
}

/// Fields of ours kept among a session's other members (`extra`), so the state file's readers
/// and writers carry them like any member they do not model: the session a follow-up continues
/// (`continue`), and the pull request `pull --pr` opened for a session.
pub const PARENT_SESSION_FIELD: &str = "parent_session_id";
pub const PR_URL_FIELD: &str = "pr_url";
/// The branch that pull request was opened from (`amplihack/<id>`, or `pull --branch NAME`).
pub const PR_BRANCH_FIELD: &str = "pr_branch";
/// `true` once its VM confirmed the `collected` mark (docs/remote-layout.md): its archive is
/// home, and the VM knows it.
pub const VM_MARKED_COLLECTED_FIELD: &str = "vm_marked_collected";

impl Session {
    fn extra_str(&self, field: &str) -> Option<&str> {
        self.extra.get(field).and_then(Value::as_str)
    }

    /// The session this one continues (`continue`), if it is a follow-up.
    pub fn parent_session_id(&self) -> Option<&str> {
        self.extra_str(PARENT_SESSION_FIELD)
    }

    pub fn set_parent_session_id(&mut self, parent: &str) {
        self.extra
            .insert(PARENT_SESSION_FIELD.into(), Value::String(parent.into()));
    }

    /// The pull request `pull --pr` opened for the session's branch.
    pub fn pr_url(&self) -> Option<&str> {
        self.extra_str(PR_URL_FIELD)
    }

    pub fn set_pr_url(&mut self, url: &str) {
        self.extra
            .insert(PR_URL_FIELD.into(), Value::String(url.into()));
    }

    /// The branch its pull request was opened from, when recorded.
    pub fn pr_branch(&self) -> Option<&str> {
        self.extra_str(PR_BRANCH_FIELD)
    }

    /// Records the pull request opened for the session, and its branch.
    pub fn set_pr(&mut self, url: &str, branch: &str) {
        self.set_pr_url(url);
        self.extra
            .insert(PR_BRANCH_FIELD.into(), Value::String(branch.into()));
    }

    /// Its VM holds its `collected` mark: another machine's prune may delete the VM.
    pub fn vm_marked_collected(&self) -> bool {
        self.extra.get(VM_MARKED_COLLECTED_FIELD) == Some(&Value::Bool(true))
    }

    pub fn set_vm_marked_collected(&mut self) {
        self.extra
            .insert(VM_MARKED_COLLECTED_FIELD.into(), Value::Bool(true));
    }
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
    #[serde(deserialize_with = "whole::deserialize")]
    pub capacity: u32,
    /// Derived from `sessions` on every write (see `State::normalize`); kept for the
    /// Python original, which reads it.
    #[serde(default)]
    pub active_sessions: Vec<String>,
    pub region: String,
    /// Unknown (`null`) for a VM the Python original adopted from `azlin list`.
    #[serde(with = "opt_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
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
    /// Written by the Python original (naive timestamps), as for `Session`.
    #[serde(skip)]
    pub naive_timestamps: bool,
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

/// A session's prompt. Reads as the text it is (`Deref<Target = str>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    text: String,
    /// The JSON string literal it was read from, when that holds what no Rust string can: a
    /// lone UTF-16 surrogate escape (`"\udce9"`, how Python writes a byte of a prompt that
    /// was not UTF-8). `text` has U+FFFD in its place; the literal is written back as it was.
    literal: Option<Box<str>>,
}

impl Prompt {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// From a string as JSON decodes it, in WTF-8: lone surrogates are kept as their 3-byte
    /// encodings (serde_json decodes a string into bytes that way).
    fn from_wtf8(bytes: &[u8]) -> Prompt {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Prompt::from(text);
        }
        let mut text = String::with_capacity(bytes.len());
        let mut literal = String::from("\"");
        let mut rest = bytes;
        while !rest.is_empty() {
            let (valid, after) = match std::str::from_utf8(rest) {
                Ok(all) => (all, &[][..]),
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    (std::str::from_utf8(valid).expect("checked"), after)
                }
            };
            text.push_str(valid);
            let quoted = serde_json::to_string(valid).expect("a string serializes");
            literal.push_str(&quoted[1..quoted.len() - 1]);
            rest = match after {
                [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF, tail @ ..] => {
                    let unit = 0xD000 | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F);
                    text.push(char::REPLACEMENT_CHARACTER);
                    literal.push_str(&format!("\\u{unit:04x}"));
                    tail
                }
                [_, tail @ ..] => {
                    // Not from a JSON string (the state file is checked to be UTF-8).
                    text.push(char::REPLACEMENT_CHARACTER);
                    literal.push_str("\\ufffd");
                    tail
                }
                [] => &[],
            };
        }
        literal.push('"');
        Prompt {
            text,
            literal: Some(literal.into()),
        }
    }
}

impl std::ops::Deref for Prompt {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Prompt {
            text,
            literal: None,
        }
    }
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::from(text.to_string())
    }
}

impl PartialEq<str> for Prompt {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Prompt {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl Serialize for Prompt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.literal {
            Some(literal) => serde_json::value::RawValue::from_string(literal.to_string())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            None => s.serialize_str(&self.text),
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PromptVisitor;
        impl serde::de::Visitor<'_> for PromptVisitor {
            type Value = Prompt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Prompt, E> {
                Ok(Prompt::from(s))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Prompt, E> {
                Ok(Prompt::from(s))
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Prompt, E> {
                Ok(Prompt::from_wtf8(b))
            }
        }
        // As bytes: serde_json then accepts lone surrogate escapes (see `literal`).
        d.deserialize_bytes(PromptVisitor)
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
}

pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    match TimestampText::new(t) {
        Some(text) => text.as_str().to_string(),
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// A timestamp as we write it, `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`, built on the
/// stack: chrono's formatter allocates and costs a tenth of `list --json` on a large state.
/// The digits follow chrono's `SecondsFormat::AutoSi` (none, 3, 6 or 9, the fewest that are
/// exact), so the text is the one chrono writes (unit tests).
pub(crate) struct TimestampText {
    buf: [u8; 30],
    len: usize,
}

impl TimestampText {
    /// None for years outside 0-9999 and for leap seconds; chrono writes those.
    pub(crate) fn new(t: &DateTime<Utc>) -> Option<Self> {
        use chrono::{Datelike, Timelike};
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 || !(0..=9999).contains(&t.year()) {
            return None;
        }
        // Two digits at a time from a table: a division per digit cost more than the rest.
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut buf = *b"0000-00-00T00:00:00.000000000Z";
        let put = |buf: &mut [u8; 30], at: usize, v: u32| {
            let i = 2 * v as usize;
            buf[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
        };
        let year = t.year() as u32;
        put(&mut buf, 0, year / 100);
        put(&mut buf, 2, year % 100);
        put(&mut buf, 5, t.month());
        put(&mut buf, 8, t.day());
        put(&mut buf, 11, t.hour());
        put(&mut buf, 14, t.minute());
        put(&mut buf, 17, t.second());
        let digits = match nanos {
            0 => 0,
            n if n % 1_000_000 == 0 => 3,
            n if n % 1_000 == 0 => 6,
            _ => 9,
        };
        let len = if digits == 0 {
            buf[19] = b'Z';
            20
        } else {
            buf[20] = b'0' + (nanos / 100_000_000) as u8;
            let rest = nanos % 100_000_000;
            put(&mut buf, 21, rest / 1_000_000);
            put(&mut buf, 23, rest / 10_000 % 100);
            put(&mut buf, 25, rest / 100 % 100);
            put(&mut buf, 27, rest % 100);
            buf[20 + digits] = b'Z';
            21 + digits
        };
        Some(TimestampText { buf, len })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("ASCII")
    }
}

fn serialize_timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    if record_form::writing_naive() {
        return s.serialize_str(&format_naive_timestamp(t));
    }
    match TimestampText::new(t) {
        Some(text) => s.serialize_str(text.as_str()),
        None => s.serialize_str(&format_timestamp(t)),
    }
}

/// A timestamp as the Python original writes it (`datetime.isoformat()` of a naive time):
/// `YYYY-MM-DDTHH:MM:SS`, then `.ffffff` unless the microseconds are 0.
pub fn format_naive_timestamp(t: &DateTime<Utc>) -> String {
    use chrono::Timelike;
    let micros = t.nanosecond() % 1_000_000_000 / 1_000;
    let whole = t.naive_utc().format("%Y-%m-%dT%H:%M:%S");
    if micros == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{micros:06}")
    }
}

/// Whether a timestamp that parsed was written without an offset (the Python original's naive
/// form): nothing after the date is `Z` or an offset's sign.
fn is_naive_text(s: &str) -> bool {
    s.get(10..)
        .is_some_and(|time| !time.contains(['Z', 'z', '+', '-']))
}

/// Which form a record's timestamps were read in and are to be written in. Timestamps are
/// (de)serialized field by field, and a field cannot see its record, so the record maps of
/// the state (`records`) tell the timestamp fields through this thread's flags.
mod record_form {
    use std::cell::Cell;

    thread_local! {
        static READ_NAIVE: Cell<bool> = const { Cell::new(false) };
        static WRITE_NAIVE: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn saw_naive() {
        READ_NAIVE.with(|f| f.set(true));
    }

    /// Clears the flag and says whether a naive timestamp was read since the last call.
    pub(super) fn take_naive() -> bool {
        READ_NAIVE.with(|f| f.replace(false))
    }

    pub(super) fn writing_naive() -> bool {
        WRITE_NAIVE.with(Cell::get)
    }

    /// Runs `write` with timestamps written naive (or not), then restores the flag.
    pub(super) fn write_with<T>(naive: bool, write: impl FnOnce() -> T) -> T {
        let before = WRITE_NAIVE.with(|f| f.replace(naive));
        let out = write();
        WRITE_NAIVE.with(|f| f.set(before));
        out
    }
}

/// A record of the state file (a session or a VM entry) that remembers whether the Python
/// original wrote it.
trait Record {
    fn naive_timestamps(&self) -> bool;
    fn set_naive_timestamps(&mut self);
}

impl Record for Session {
    fn naive_timestamps(&self) -> bool {
        self.naive_timestamps
    }
    fn set_naive_timestamps(&mut self) {
        self.naive_timestamps = true;
    }
}

impl Record for VmEntry {
    fn naive_timestamps(&self) -> bool {
        self.naive_timestamps
    }
    fn set_naive_timestamps(&mut self) {
        self.naive_timestamps = true;
    }
}

/// `sessions` and `vm_pool`: maps of records, each read and written in its own form.
mod records {
    use super::*;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;

    pub fn serialize<S: Serializer, T: Serialize + Record>(
        map: &BTreeMap<String, T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(map.len()))?;
        for (key, record) in map {
            out.serialize_key(key)?;
            record_form::write_with(record.naive_timestamps(), || out.serialize_value(record))?;
        }
        out.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de> + Record>(
        d: D,
    ) -> Result<BTreeMap<String, T>, D::Error> {
        struct Records<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Record> Visitor<'de> for Records<T> {
            type Value = BTreeMap<String, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    record_form::take_naive();
                    let mut record: T = map.next_value()?;
                    if record_form::take_naive() {
                        record.set_naive_timestamps();
                    }
                    out.insert(key, record);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Records(std::marker::PhantomData))
    }
}

/// Parses a record's timestamp and notes its form for `records`.
fn read_record_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    let t = parse_timestamp(s)?;
    if is_naive_text(s) {
        record_form::saw_naive();
    }
    Ok(t)
}

/// Reads a timestamp: RFC 3339 with any offset, or the Python original's naive ISO form
/// (`2025-11-25T14:30:22.123456`, also with a space), taken as UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    match parse_common_timestamp(s.as_bytes()) {
        Some(t) => Ok(t),
        None => parse_timestamp_with_chrono(s),
    }
}

/// The general parsers, for every form the fast path leaves out (offsets other than UTC, leap
/// seconds, lower-case `t` and `z`, more than 9 fractional digits, unpadded fields...).
fn parse_timestamp_with_chrono(s: &str) -> Result<DateTime<Utc>, String> {
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

/// The forms nearly every state file holds, read without chrono's general parsers (up to three
/// of them per naive timestamp: a quarter of `list` on a Python-written state):
/// `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, optionally `.` and 1 to 9 digits, then `Z`,
/// `+00:00` or nothing (naive, taken as UTC). Returns None for anything else, and for invalid
/// dates and times, leaving the answer to chrono; where it answers, chrono gives the same
/// instant (unit tests).
pub(crate) fn parse_common_timestamp(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    // Each digit's value; a byte that is not a digit wraps to above 9.
    let d = |i: usize| u32::from(b[i].wrapping_sub(b'0'));
    let fields = [
        d(0),
        d(1),
        d(2),
        d(3),
        d(5),
        d(6),
        d(8),
        d(9),
        d(11),
        d(12),
        d(14),
        d(15),
        d(17),
        d(18),
    ];
    if fields.iter().any(|&v| v > 9) {
        return None;
    }
    let two = |i: usize| fields[i] * 10 + fields[i + 1];
    let (nanos, offset) = if b.get(19) == Some(&b'.') {
        let mut nanos = 0u32;
        let mut digits = 0;
        while digits < 9 && b.get(20 + digits).is_some_and(u8::is_ascii_digit) {
            nanos = nanos * 10 + d(20 + digits);
            digits += 1;
        }
        if digits == 0 {
            return None;
        }
        (nanos * 10u32.pow(9 - digits as u32), &b[20 + digits..])
    } else {
        (0, &b[19..])
    };
    if !matches!(offset, b"" | b"Z" | b"+00:00") {
        return None;
    }
    let year = (two(0) * 100 + two(2)) as i32;
    let date = chrono::NaiveDate::from_ymd_opt(year, two(4), two(6))?;
    // Second 60 (a leap second) is refused here and left to chrono.
    let time = chrono::NaiveTime::from_hms_nano_opt(two(8), two(10), two(12), nanos)?;
    Some(date.and_time(time).and_utc())
}

/// Reads a timestamp string without copying it (or `null`, for the optional ones).
struct TimestampVisitor;

impl<'de> serde::de::Visitor<'de> for TimestampVisitor {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a timestamp string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        read_record_timestamp(s).map(Some).map_err(E::custom)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(TimestampVisitor)
    }
}

/// Whole numbers (`max_turns`, `memory_mb`, `capacity`, `exit_code`) as JSON allows them: `10`,
/// or `10.0` / `1e1` as a hand edit or another writer may put them (JSON has one number type).
/// A fraction, or a number out of range, is refused naming the value.
mod whole {
    use super::*;

    fn whole<T: TryFrom<i128>, E: serde::de::Error>(n: serde_json::Number) -> Result<T, E> {
        let value: Option<i128> = if let Some(u) = n.as_u64() {
            Some(i128::from(u))
        } else if let Some(i) = n.as_i64() {
            Some(i128::from(i))
        } else {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e30)
                .map(|f| f as i128)
        };
        value
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| E::custom(format!("{n} is not a whole number in range here")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        whole(serde_json::Number::deserialize(d)?)
    }

    pub fn deserialize_opt<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(whole)
            .transpose()
    }
}

mod timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        serialize_timestamp(t, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TimestampVisitor)?
            .ok_or_else(|| serde::de::Error::custom("a timestamp is missing"))
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
        d.deserialize_option(TimestampVisitor)
    }
}

/// The chain a session descends from, root first, ending with the session itself. A chain
/// whose parent is missing from the state (or loops) stops there.
pub fn lineage<'a>(state: &'a State, session: &'a Session) -> Vec<&'a Session> {
    let mut chain = vec![session];
    while let Some(parent) = chain
        .last()
        .and_then(|s| s.parent_session_id())
        .and_then(|id| state.sessions.get(id))
    {
        if chain.iter().any(|s| s.session_id == parent.session_id) {
            break;
        }
        chain.push(parent);
    }
    chain.reverse();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example state as the Python original writes it (naive timestamps,
    /// a SKU missing from our table, fields we do not know).
    const PYTHON_STATE: &str = include_str!("../../tests/expected/python-state.json");

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
        // The Python original's records keep their naive timestamps (it cannot compare a
        // naive time with an aware one).
        assert_eq!(
            out["sessions"]["sess-20251125-143022-abc"]["started_at"],
            "2025-11-25T14:30:45"
        );
        assert_eq!(
            out["sessions"]["sess-20251125-143022-abc"]["created_at"],
            "2025-11-25T14:30:22.123456"
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

    /// The Python original's records as it writes them: a lone surrogate in a prompt, a VM
    /// adopted with `created_at: null`, naive timestamps; all kept as they were on a rewrite,
    /// while records of ours keep the `Z` form.
    #[test]
    fn the_python_originals_records_round_trip_as_written() {
        let text = PYTHON_STATE
            .replace(
                "\"implement user authentication\"",
                r#""caf\udce9 \ud83e\udd80 \"q\" \udc80\udcff""#,
            )
            .replace(
                "\"created_at\": \"2025-11-25T14:30:00\"",
                "\"created_at\": null",
            );
        let mut state = crate::state::parse_state(text.as_bytes()).unwrap();
        let s = &state.sessions["sess-20251125-143022-abc"];
        assert_eq!(s.prompt, "caf\u{fffd} \u{1f980} \"q\" \u{fffd}\u{fffd}");
        assert!(s.naive_timestamps);
        assert_eq!(
            state.vm_pool["amplihack-user-20251125-143000"].created_at,
            None
        );
        let t = parse_timestamp("2025-11-25T15:00:00Z").unwrap();
        let ended = state.sessions.get_mut("sess-20251125-143022-abc").unwrap();
        ended.status = SessionStatus::Completed;
        ended.exit_code = Some(0);
        ended.completed_at = Some(t);
        let mut ours = state.sessions["sess-20251125-143025-def"].clone();
        ours.session_id = "sess-ours".into();
        ours.naive_timestamps = false;
        ours.prompt = "plain".into();
        state.sessions.insert("sess-ours".into(), ours);
        let written = String::from_utf8(serde_json::to_vec_pretty(&state).unwrap()).unwrap();
        assert!(
            written.contains(r#""prompt": "caf\udce9 \ud83e\udd80 \"q\" \udc80\udcff","#)
                || written.contains(r#""prompt": "caf\udce9 🦀 \"q\" \udc80\udcff","#),
            "{written}"
        );
        assert!(written.contains(r#""created_at": "2025-11-25T14:30:22.123456","#));
        assert!(written.contains(r#""completed_at": "2025-11-25T15:00:00","#));
        assert!(written.contains(r#""created_at": null"#));
        // Ours: the specification's form, beside the Python original's naive one.
        assert!(written.contains(r#""created_at": "2025-11-25T14:30:25Z","#));
        assert!(written.contains(r#""created_at": "2025-11-25T14:30:25","#));
        let back = crate::state::parse_state(written.as_bytes()).unwrap();
        assert_eq!(
            back.sessions["sess-20251125-143022-abc"].prompt,
            state.sessions["sess-20251125-143022-abc"].prompt
        );
        assert!(!back.sessions["sess-ours"].naive_timestamps);
        let ours_text = serde_json::to_string(&back.sessions["sess-ours"]).unwrap();
        assert!(
            ours_text.contains(r#""created_at":"2025-11-25T14:30:25Z""#),
            "{ours_text}"
        );
        assert_eq!(crate::state::parse_state(written.as_bytes()).unwrap(), back);
    }

    #[test]
    fn naive_timestamps_are_written_as_python_writes_them() {
        for (read, naive) in [
            ("2025-11-25T14:30:22Z", "2025-11-25T14:30:22"),
            ("2025-11-25T14:30:22.123456", "2025-11-25T14:30:22.123456"),
            ("2025-11-25T14:30:22.100000", "2025-11-25T14:30:22.100000"),
            ("2025-11-25T14:30:22.000001", "2025-11-25T14:30:22.000001"),
            (
                "2025-11-25T14:30:22.123456789Z",
                "2025-11-25T14:30:22.123456",
            ),
        ] {
            let t = parse_timestamp(read).unwrap();
            assert_eq!(format_naive_timestamp(&t), naive, "{read}");
        }
        assert!(is_naive_text("2025-11-25 14:30:22.5"));
        assert!(!is_naive_text("2025-11-25T14:30:22+01:00"));
        assert!(!is_naive_text("2025-11-25T14:30:22-01:00"));
        assert!(!is_naive_text("2025-11-25T14:30:22z"));
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

    /// The fast path never decides differently from chrono: where it answers, chrono gives the
    /// same instant, and where it does not, the answer is chrono's.
    fn assert_agrees_with_chrono(s: &str) {
        let general = parse_timestamp_with_chrono(s);
        if let Some(fast) = parse_common_timestamp(s.as_bytes()) {
            assert_eq!(general, Ok(fast), "{s:?}");
        }
        assert_eq!(parse_timestamp(s), general, "{s:?}");
    }

    #[test]
    fn the_fast_timestamp_path_reads_the_common_forms_as_chrono_does() {
        for s in [
            "2025-11-25T14:30:22Z",
            "2025-11-25T14:30:22+00:00",
            "2025-11-25 14:30:22Z",
            "2025-11-25 14:30:22+00:00",
            "2025-11-25T14:30:22",
            "2025-11-25 14:30:22",
            "2025-11-25T14:30:22.123456",
            "2025-11-25 14:30:22.123456",
            "2025-11-25T14:30:22.123456Z",
            "2025-11-25T14:30:22.123456+00:00",
            "2025-11-25T14:30:22.1",
            "2025-11-25T14:30:22.12",
            "2025-11-25T14:30:22.123",
            "2025-11-25T14:30:22.000001",
            "2025-11-25T14:30:22.000000",
            "2025-11-25T14:30:22.999999999Z",
            "2025-11-25T14:30:22.000000001",
            "2000-02-29T00:00:00Z",
            "2024-02-29 23:59:59.5",
            "1900-03-01T00:00:00",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999",
        ] {
            assert!(
                parse_common_timestamp(s.as_bytes()).is_some(),
                "fast path skips {s:?}"
            );
            assert_agrees_with_chrono(s);
        }
        let t = parse_timestamp("2025-11-25T14:30:22.123456").unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(parse_timestamp("2025-11-25 14:30:22.123456+00:00"), Ok(t));
    }

    #[test]
    fn forms_the_fast_path_leaves_to_chrono_still_parse() {
        for s in [
            "2025-11-25T15:30:22+01:00",
            "2025-11-25T14:30:22-00:00",
            "2025-11-25t14:30:22z",
            "2025-11-25T14:30:22.1234567891Z",
            "2025-11-25T14:30:22.1234567891",
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
            "2016-12-31 23:59:60",
            "2025-1-5T1:2:3",
            " 2025-11-25T14:30:22",
        ] {
            assert_eq!(parse_common_timestamp(s.as_bytes()), None, "{s:?}");
            assert!(parse_timestamp(s).is_ok(), "{s:?}");
            assert_agrees_with_chrono(s);
        }
        assert_eq!(
            parse_timestamp("2025-11-25T15:30:22+01:00"),
            parse_timestamp("2025-11-25T14:30:22Z")
        );
    }

    #[test]
    fn invalid_timestamps_are_refused_by_both_paths() {
        for s in [
            "",
            "yesterday",
            "2025-11-25",
            "2025-11-25T14:30",
            "2025-02-30T00:00:00Z",
            "2025-02-29 00:00:00",
            "1900-02-29T00:00:00",
            "2025-13-01T00:00:00",
            "2025-00-10 00:00:00",
            "2025-11-00T00:00:00",
            "2025-11-31T00:00:00",
            "2025-11-25T24:00:00Z",
            "2025-11-25T14:60:00",
            "2025-11-25T14:30:61",
            "2025-11-25T14:30:22.",
            "2025-11-25T14:30:22.Z",
            "2025-11-25T14:30:22.+00:00",
            "2025-11-25T14:30:22ZZ",
            "2025-11-25T14:30:22+00",
            "2025-11-25T14:30:22+00:0",
            "2025-11-25T14:30:22+24:00",
            "2025-11-25T14:30:22.123456Zjunk",
            "2025-11-25X14:30:22",
            "2025-11-25T14-30-22",
            "2025/11/25T14:30:22",
            "2025-1a-25T14:30:22Z",
            "+025-11-25T14:30:22Z",
            "2025-11-25T14:30:22.12345a",
            "2025-11-25T14:30:22UTC",
        ] {
            assert_eq!(parse_common_timestamp(s.as_bytes()), None, "{s:?}");
            assert!(parse_timestamp(s).is_err(), "{s:?} was accepted");
            assert_agrees_with_chrono(s);
        }
    }

    /// Every month and day field from 00 to 39 of years with and without Feb 29, in every
    /// separator and suffix the fast path knows.
    #[test]
    fn the_fast_timestamp_path_agrees_on_every_calendar_edge() {
        for year in ["0000", "1900", "2000", "2023", "2024", "2100", "9999"] {
            for month in 0..=13 {
                for day in 0..=39 {
                    for sep in ['T', ' '] {
                        for tail in ["", "Z", "+00:00", ".5", ".123456", ".5Z"] {
                            let s = format!("{year}-{month:02}-{day:02}{sep}23:59:59{tail}");
                            assert_agrees_with_chrono(&s);
                        }
                    }
                }
            }
        }
        for h in 0..=25 {
            for m in [0, 59, 60] {
                for sec in [0, 59, 60, 61] {
                    assert_agrees_with_chrono(&format!("2025-06-15T{h:02}:{m:02}:{sec:02}.25"));
                }
            }
        }
    }

    /// Random damage to valid timestamps (a digit changed, a character replaced, dropped or
    /// added), from a fixed seed: both paths give the same answer every time.
    #[test]
    fn the_fast_timestamp_path_agrees_on_damaged_input() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"0123456789-:.+ TZtz";
        let templates = [
            "2025-11-25T14:30:22.123456",
            "2024-02-29 23:59:59",
            "2025-11-25T14:30:22Z",
            "2025-11-25T14:30:22.5+00:00",
        ];
        let mut fast_answers = 0;
        for _ in 0..100_000 {
            let mut b = templates[next(templates.len())].as_bytes().to_vec();
            for _ in 0..1 + next(2) {
                let at = next(b.len());
                match next(4) {
                    0 => b[at] = alphabet[next(10)],
                    1 => b[at] = alphabet[next(alphabet.len())],
                    2 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let s = String::from_utf8(b).unwrap();
            fast_answers += usize::from(parse_common_timestamp(s.as_bytes()).is_some());
            assert_agrees_with_chrono(&s);
        }
        // The damage must leave plenty the fast path reads, or this test would prove little.
        assert!(fast_answers > 10_000, "{fast_answers}");
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let base = parse_timestamp("2025-11-25T14:30:22Z").unwrap();
        for nanos in [
            0,
            1,
            999,
            1_000,
            100_000,
            123_456_000,
            123_000_000,
            100_000_000,
            999_999_999,
            500_000_001,
        ] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                format_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                "{nanos}"
            );
        }
        for s in [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2025-11-25T14:30:22.123456Z",
            "2025-11-25T14:30:22.120Z",
        ] {
            let t = parse_timestamp(s).unwrap();
            assert!(TimestampText::new(&t).is_some(), "{s}");
            assert_eq!(
                format_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
        }
        assert_eq!(
            format_timestamp(&parse_timestamp("2025-11-25T14:30:22.120").unwrap()),
            "2025-11-25T14:30:22.120Z"
        );
        // Outside the fast writer's range, chrono writes.
        let leap = parse_timestamp("2016-12-31T23:59:60.5Z").unwrap();
        assert!(TimestampText::new(&leap).is_none());
        assert_eq!(format_timestamp(&leap), "2016-12-31T23:59:60.500Z");
        let far = chrono::NaiveDate::from_ymd_opt(10_000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert!(TimestampText::new(&far).is_none());
        assert_eq!(format_timestamp(&far), "+10000-01-01T00:00:00Z");
        let mut seed = 88_172_645_463_325_252u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let t = DateTime::from_timestamp(
                (seed % 253_402_300_800) as i64 - 62_167_219_200,
                (seed >> 20) as u32 % 1_000_000_000,
            )
            .unwrap();
            assert_eq!(
                format_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
            assert_eq!(parse_timestamp(&format_timestamp(&t)), Ok(t));
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
        state
            .sessions
            .get_mut("sess-20251125-143022-abc")
            .unwrap()
            .status = SessionStatus::Completed;
        state.normalize();
        assert_eq!(
            state.vm_pool["amplihack-user-20251125-143000"].active_sessions,
            vec!["sess-20251125-143025-def".to_string()]
        );
    }
}
