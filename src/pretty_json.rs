//! `list --json` and `status --json` written by hand: byte for byte what
//! `serde_json::to_writer_pretty` writes for the same values (unit tests compare the two),
//! without serde_json's byte-by-byte escaping loop and per-token formatter calls, which cost a
//! third of `list --json` and a seventh of `status --json` on 10,000 sessions.
//! Pure: it writes into a buffer or a writer it is given.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{Backend, Session, TimestampText, VmState};
use crate::render::{CapacitySummary, PoolStatus, SessionCounts, VmStatus};

/// Writes `sessions` as a pretty JSON array (no trailing newline), with
/// `"vm_unreachable": true` after the fields of each session `unreachable` picks.
pub fn write_sessions<W: Write + ?Sized>(
    out: &mut W,
    sessions: &[&Session],
    unreachable: impl Fn(&Session) -> bool,
) -> io::Result<()> {
    write_array(out, 0, sessions, |buf, s| {
        write_session(buf, s, unreachable(s))
    })
}

/// Writes `status` as a pretty JSON object (no trailing newline).
pub fn write_pool_status<W: Write + ?Sized>(out: &mut W, status: &PoolStatus) -> io::Result<()> {
    // No `..` here and below: a field added to these structs fails to compile until written.
    let PoolStatus {
        vms,
        sessions,
        capacity,
        total_hourly_usd,
        total_cost_since_created_usd,
        cost_basis,
        power_states_known,
        // Text only: `list --json` carries each session's `detail`.
        details: _,
    } = status;
    let SessionCounts {
        total,
        pending,
        queued,
        running,
        completed,
        failed,
        killed,
        other,
    } = sessions;
    let CapacitySummary {
        used,
        total: slots,
        available,
    } = capacity;
    let mut buf = Vec::with_capacity(1024);
    buf.extend_from_slice(b"{\n  \"vms\": ");
    out.write_all(&buf)?;
    write_array(out, 1, vms, write_vm_status)?;
    buf.clear();
    buf.extend_from_slice(b",\n  \"sessions\": ");
    let mut o = Object::open(&mut buf, 1);
    for (name, count) in [
        (b"total".as_slice(), total),
        (b"pending", pending),
        (b"queued", queued),
        (b"running", running),
        (b"completed", completed),
        (b"failed", failed),
        (b"killed", killed),
        (b"other", other),
    ] {
        o.unsigned(name, *count as u64);
    }
    o.close();
    buf.extend_from_slice(b",\n  \"capacity\": ");
    let mut o = Object::open(&mut buf, 1);
    o.unsigned(b"used", u64::from(*used));
    o.unsigned(b"total", u64::from(*slots));
    o.unsigned(b"available", u64::from(*available));
    o.close();
    let mut o = Object {
        buf: &mut buf,
        depth: 0,
        empty: false,
    };
    o.float(b"total_hourly_usd", Some(*total_hourly_usd));
    o.float(
        b"total_cost_since_created_usd",
        Some(*total_cost_since_created_usd),
    );
    o.string(b"cost_basis", cost_basis);
    o.boolean(b"power_states_known", Some(*power_states_known));
    buf.extend_from_slice(b"\n}");
    out.write_all(&buf)
}

/// Items are gathered into chunks of about this size before a write: a writer call per
/// token, or per item, costs more than the copying; and a chunk at least as large as the
/// buffer of a `BufWriter` goes straight through it instead of being copied again.
const CHUNK: usize = 64 * 1024;

/// `[ item, ... ]` whose items sit at `depth + 1`.
fn write_array<W: Write + ?Sized, T>(
    out: &mut W,
    depth: usize,
    items: &[T],
    mut item: impl FnMut(&mut Vec<u8>, &T),
) -> io::Result<()> {
    if items.is_empty() {
        return out.write_all(b"[]");
    }
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for (i, t) in items.iter().enumerate() {
        buf.extend_from_slice(if i == 0 { b"[\n" } else { b",\n" });
        buf.extend_from_slice(indent(depth + 1));
        item(&mut buf, t);
        if buf.len() >= CHUNK {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    buf.push(b'\n');
    buf.extend_from_slice(indent(depth));
    buf.push(b']');
    out.write_all(&buf)
}

/// One session at depth 1 (an element of the list), in the order and with the omissions
/// of its `Serialize`.
fn write_session(buf: &mut Vec<u8>, s: &Session, unreachable: bool) {
    // No `..`: a field added to Session fails to compile here until it is written.
    let Session {
        session_id,
        vm_name,
        workspace,
        tmux_session,
        prompt,
        command,
        max_turns,
        status,
        memory_mb,
        created_at,
        started_at,
        completed_at,
        exit_code,
        error,
        repo_path,
        base_commit,
        owner,
        kill_request,
        archived_at,
        pulled_commit,
        unattended,
        detail,
        silent_since,
        extra,
    } = s;
    // The hottest loop of `list --json`: each key after the first, with its separator and
    // indentation, is one literal.
    macro_rules! key {
        ($name:literal) => {
            concat!(",\n    \"", $name, "\": ").as_bytes()
        };
    }
    buf.extend_from_slice(b"{\n    \"session_id\": ");
    push_string(buf, session_id);
    for (key, value) in [
        (key!("vm_name"), vm_name),
        (key!("workspace"), workspace),
        (key!("tmux_session"), tmux_session),
        (key!("prompt"), prompt),
        (key!("command"), command),
    ] {
        buf.extend_from_slice(key);
        push_string(buf, value);
    }
    buf.extend_from_slice(key!("max_turns"));
    push_unsigned(buf, u64::from(*max_turns));
    buf.extend_from_slice(key!("status"));
    push_string(buf, status.as_str());
    buf.extend_from_slice(key!("memory_mb"));
    push_unsigned(buf, *memory_mb);
    for (key, value) in [
        (key!("created_at"), Some(created_at)),
        (key!("started_at"), started_at.as_ref()),
        (key!("completed_at"), completed_at.as_ref()),
    ] {
        buf.extend_from_slice(key);
        push_timestamp(buf, value);
    }
    buf.extend_from_slice(key!("exit_code"));
    push_signed(buf, exit_code.map(i64::from));
    for (key, value) in [
        (key!("error"), error),
        (key!("repo_path"), repo_path),
        (key!("base_commit"), base_commit),
    ] {
        if let Some(v) = value {
            buf.extend_from_slice(key);
            push_string(buf, v);
        }
    }
    let mut o = Object {
        buf,
        depth: 1,
        empty: false,
    };
    // Rare fields of ours, written by serde_json (an owner and a kill request are objects).
    if let Some(owner) = owner {
        o.serialized(b"owner", owner);
    }
    if let Some(kill_request) = kill_request {
        o.serialized(b"kill_request", kill_request);
    }
    if archived_at.is_some() {
        o.key(b"archived_at");
        push_timestamp(o.buf, archived_at.as_ref());
    }
    if let Some(commit) = pulled_commit {
        o.string(b"pulled_commit", commit);
    }
    if let Some(unattended) = unattended {
        o.serialized(b"unattended", unattended);
    }
    if let Some(detail) = detail {
        o.string(b"detail", detail);
    }
    if silent_since.is_some() {
        o.key(b"silent_since");
        push_timestamp(o.buf, silent_since.as_ref());
    }
    for (name, value) in extra {
        o.value(name, value);
    }
    if unreachable {
        o.raw(b"vm_unreachable", b"true");
    }
    o.close();
}

/// One VM of `status`, at depth 2 (an element of `vms`).
fn write_vm_status(buf: &mut Vec<u8>, vm: &VmStatus) {
    let VmStatus {
        name,
        size,
        sku,
        region,
        backend,
        state,
        capacity,
        active_sessions,
        queued_sessions,
        capacity_percent,
        memory_used_gb,
        memory_total_gb,
        created_at,
        age_seconds,
        reachable,
        power_state,
        exists_in_azure,
        error,
        hourly_usd,
        cost_since_created_usd,
    } = vm;
    let mut o = Object::open(buf, 2);
    o.string(b"name", name);
    o.string(b"size", size);
    o.string(b"sku", sku);
    o.string(b"region", region);
    o.string(
        b"backend",
        match backend {
            Backend::Azure => "azure",
            Backend::Local => "local",
        },
    );
    o.string(
        b"state",
        match state {
            VmState::Ready => "ready",
            VmState::Provisioning => "provisioning",
            VmState::Deleting => "deleting",
            VmState::Failed => "failed",
        },
    );
    o.unsigned(b"capacity", u64::from(*capacity));
    o.strings(b"active_sessions", active_sessions);
    o.strings(b"queued_sessions", queued_sessions);
    o.unsigned(b"capacity_percent", u64::from(*capacity_percent));
    o.unsigned(b"memory_used_gb", *memory_used_gb);
    o.unsigned(b"memory_total_gb", *memory_total_gb);
    o.string(b"created_at", created_at);
    o.signed(b"age_seconds", Some(*age_seconds));
    o.boolean(b"reachable", *reachable);
    o.optional_string(b"power_state", power_state.as_deref());
    o.boolean(b"exists_in_azure", *exists_in_azure);
    o.optional_string(b"error", error.as_deref());
    o.float(b"hourly_usd", *hourly_usd);
    o.float(b"cost_since_created_usd", *cost_since_created_usd);
    o.close();
}

/// The members of an object at `depth`, as serde_json's pretty formatter lays them out:
/// each on its own line two spaces deeper than the object's braces.
struct Object<'a> {
    buf: &'a mut Vec<u8>,
    depth: usize,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(buf: &'a mut Vec<u8>, depth: usize) -> Self {
        buf.push(b'{');
        Object {
            buf,
            depth,
            empty: true,
        }
    }

    fn close(self) {
        if !self.empty {
            self.buf.push(b'\n');
            self.buf.extend_from_slice(indent(self.depth));
        }
        self.buf.push(b'}');
    }

    fn start_member(&mut self) {
        self.buf
            .extend_from_slice(if self.empty { b"\n" } else { b",\n" });
        self.buf.extend_from_slice(indent(self.depth + 1));
        self.empty = false;
    }

    /// A key of ours: plain ASCII that needs no escaping.
    fn key(&mut self, name: &[u8]) {
        self.start_member();
        self.buf.push(b'"');
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b"\": ");
    }

    fn raw(&mut self, name: &[u8], text: &[u8]) {
        self.key(name);
        self.buf.extend_from_slice(text);
    }

    fn string(&mut self, name: &[u8], value: &str) {
        self.key(name);
        push_string(self.buf, value);
    }

    fn optional_string(&mut self, name: &[u8], value: Option<&str>) {
        match value {
            Some(v) => self.string(name, v),
            None => self.raw(name, b"null"),
        }
    }

    fn boolean(&mut self, name: &[u8], value: Option<bool>) {
        self.raw(
            name,
            match value {
                Some(true) => b"true",
                Some(false) => b"false",
                None => b"null",
            },
        );
    }

    fn unsigned(&mut self, name: &[u8], value: u64) {
        self.key(name);
        push_unsigned(self.buf, value);
    }

    fn signed(&mut self, name: &[u8], value: Option<i64>) {
        self.key(name);
        push_signed(self.buf, value);
    }

    fn strings(&mut self, name: &[u8], items: &[String]) {
        self.key(name);
        if items.is_empty() {
            self.buf.extend_from_slice(b"[]");
            return;
        }
        for (i, item) in items.iter().enumerate() {
            self.buf
                .extend_from_slice(if i == 0 { b"[\n" } else { b",\n" });
            self.buf.extend_from_slice(indent(self.depth + 2));
            push_string(self.buf, item);
        }
        self.buf.push(b'\n');
        self.buf.extend_from_slice(indent(self.depth + 1));
        self.buf.push(b']');
    }

    /// A field we do not know, kept from the state file: rare, so serde_json writes it, and
    /// every line after its first moves in to this depth. A newline inside a JSON value is
    /// always layout: in a string it is written `\n`.
    fn value(&mut self, name: &str, value: &Value) {
        self.start_member();
        push_string(self.buf, name);
        self.buf.extend_from_slice(b": ");
        self.pretty(value);
    }

    /// A rare field of ours whose value serde_json writes (an object, a float), laid out as
    /// `value` lays out a field we do not know.
    fn serialized(&mut self, name: &[u8], value: &impl serde::Serialize) {
        self.key(name);
        self.pretty(value);
    }

    /// A float as serde_json writes it (`null` for none, and for NaN or an infinity).
    fn float(&mut self, name: &[u8], value: Option<f64>) {
        self.serialized(name, &value);
    }

    /// `value` written by serde_json's pretty printer, every line after its first moved in
    /// to this depth.
    fn pretty(&mut self, value: &impl serde::Serialize) {
        let text = serde_json::to_vec_pretty(value).expect("a JSON value serializes");
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.buf.push(b'\n');
                self.buf.extend_from_slice(indent(self.depth + 1));
            }
            self.buf.extend_from_slice(line);
        }
    }
}

/// The indentation of `depth`: two spaces a level.
fn indent(depth: usize) -> &'static [u8] {
    const SPACES: &[u8; 32] = b"                                ";
    &SPACES[..2 * depth]
}

fn push_signed(buf: &mut Vec<u8>, value: Option<i64>) {
    match value {
        None => buf.extend_from_slice(b"null"),
        Some(v) => {
            if v < 0 {
                buf.push(b'-');
            }
            push_unsigned(buf, v.unsigned_abs());
        }
    }
}

fn push_timestamp(buf: &mut Vec<u8>, t: Option<&DateTime<Utc>>) {
    match t {
        None => buf.extend_from_slice(b"null"),
        Some(t) => match TimestampText::new(t) {
            // Digits, '-', ':', '.', 'T' and 'Z' never need escaping.
            Some(text) => {
                buf.push(b'"');
                buf.extend_from_slice(text.as_bytes());
                buf.push(b'"');
            }
            None => push_string(buf, &crate::model::format_timestamp(t)),
        },
    }
}

fn push_unsigned(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes of `word` is a control character, `"` or `\`: the bytes JSON
/// escapes (serde_json escapes no others). Exact as a yes/no answer (the classic "has a byte
/// less than n" and "has a zero byte" tests).
pub(crate) fn word_needs_escape(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v;
    (below_space | has_zero(quote) | has_zero(backslash)) & HIGHS != 0
}

fn byte_needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON string literal, escaped exactly as serde_json escapes it. Runs of plain bytes are
/// found 8 at a time and copied whole.
fn push_string(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if let Some(chunk) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !word_needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let end = (at + 8).min(bytes.len());
        for i in at..end {
            if byte_needs_escape(bytes[i]) {
                buf.extend_from_slice(&bytes[copied..i]);
                push_escape(buf, bytes[i]);
                copied = i + 1;
            }
        }
        at = end;
    }
    buf.extend_from_slice(&bytes[copied..]);
    buf.push(b'"');
}

fn push_escape(buf: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => buf.extend_from_slice(b"\\\""),
        b'\\' => buf.extend_from_slice(b"\\\\"),
        b'\n' => buf.extend_from_slice(b"\\n"),
        b'\r' => buf.extend_from_slice(b"\\r"),
        b'\t' => buf.extend_from_slice(b"\\t"),
        0x08 => buf.extend_from_slice(b"\\b"),
        0x0c => buf.extend_from_slice(b"\\f"),
        _ => buf.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SessionStatus, parse_timestamp};
    use crate::pool::tests::session;
    use serde::Serialize;

    /// What `list --json` wrote with serde before, the reference.
    #[derive(Serialize)]
    struct ListItem<'a> {
        #[serde(flatten)]
        session: &'a Session,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        vm_unreachable: bool,
    }

    fn by_serde(sessions: &[&Session], unreachable: impl Fn(&Session) -> bool) -> String {
        let items: Vec<ListItem> = sessions
            .iter()
            .map(|s| ListItem {
                session: s,
                vm_unreachable: unreachable(s),
            })
            .collect();
        serde_json::to_string_pretty(&items).unwrap()
    }

    fn by_hand(sessions: &[&Session], unreachable: impl Fn(&Session) -> bool) -> String {
        let mut out = Vec::new();
        write_sessions(&mut out, sessions, unreachable).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn assert_same(sessions: &[&Session]) {
        assert_eq!(by_hand(sessions, |_| false), by_serde(sessions, |_| false));
        assert_eq!(
            by_hand(sessions, |s| s.status.is_active()),
            by_serde(sessions, |s| s.status.is_active())
        );
        let plain: Vec<&Session> = sessions.to_vec();
        assert_eq!(
            by_hand(sessions, |_| false),
            serde_json::to_string_pretty(&plain).unwrap()
        );
    }

    /// Every byte value JSON escapes or might trip a word-at-a-time scan, at every offset.
    const AWKWARD: &str = "plain \"quoted\" back\\slash\nnew\rret\ttab\u{8}bs\u{c}ff\u{0}nul\u{1f}us\u{7f}del é 日本 🦀 </script>";

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for len in 0..=AWKWARD.len() {
            for start in 0..len.min(12) {
                let Some(s) = AWKWARD.get(start..len) else {
                    continue;
                };
                let mut buf = Vec::new();
                push_string(&mut buf, s);
                assert_eq!(
                    String::from_utf8(buf).unwrap(),
                    serde_json::to_string(s).unwrap(),
                    "{s:?}"
                );
            }
        }
        for b in 0..=0x7fu8 {
            let s = format!("abcdefg{}hijklmnop", b as char);
            let mut buf = Vec::new();
            push_string(&mut buf, &s);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                serde_json::to_string(&s).unwrap()
            );
        }
    }

    #[test]
    fn the_word_test_is_exact() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    byte_needs_escape(b),
                    "{b:#x} at {at}"
                );
                // Neighbours that need no escape but sit next to one must not hide it.
                let mut word = [0xffu8; 8];
                word[at] = b;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    byte_needs_escape(b),
                    "{b:#x} at {at} among 0xff"
                );
            }
        }
    }

    #[test]
    fn sessions_are_written_as_serde_json_writes_them() {
        assert_same(&[]);
        let plain = session("sess-1", "vm-1", SessionStatus::Running);
        assert_same(&[&plain]);

        let mut full = session("sess-2", "vm-2", SessionStatus::Other(AWKWARD.into()));
        full.prompt = AWKWARD.into();
        full.workspace = "/workspace/\u{1}".into();
        full.max_turns = u32::MAX;
        full.memory_mb = u64::MAX;
        full.exit_code = Some(i32::MIN);
        full.created_at = parse_timestamp("2025-11-25T14:30:22.123456").unwrap();
        full.started_at = Some(parse_timestamp("2016-12-31T23:59:60.5Z").unwrap());
        full.completed_at = Some(parse_timestamp("2025-11-25T14:30:22.1Z").unwrap());
        full.error = Some("it \"broke\"\n".into());
        full.repo_path = Some("/home/jane/prøject".into());
        full.base_commit = Some("4f1c".into());
        full.owner = Some(crate::model::Owner {
            pid: u32::MAX,
            host: AWKWARD.into(),
            started: "boot-1 12345".into(),
        });
        full.kill_request = Some(crate::model::KillRequest {
            at: parse_timestamp("2025-11-25T14:31:00Z").unwrap(),
            by: crate::model::Owner {
                pid: 7,
                host: "host\n2".into(),
                started: String::new(),
            },
        });
        full.archived_at = Some(parse_timestamp("2025-11-25T14:40:01.5Z").unwrap());
        full.pulled_commit = Some("9e8d\"7c".into());
        full.extra = serde_json::from_str(
            r#"{"python_field": [1, 2, {"deep": {"deeper": [[], {}, "a\nb"]}}],
                "empty_list": [], "empty_map": {}, "n": null, "f": 1.5, "neg": -3,
                "big": 18446744073709551615, "text": "x\"y", "a key \"quoted\"": true}"#,
        )
        .unwrap();
        let mut queued = session("sess-4", "vm-2", SessionStatus::Queued);
        queued.owner = Some(crate::model::Owner {
            pid: 1,
            host: "h".into(),
            started: "s".into(),
        });
        let mut done = session("sess-3", "vm-1", SessionStatus::Completed);
        done.archived_at = Some(done.created_at);
        done.exit_code = Some(0);
        done.completed_at = Some(done.created_at);
        done.error = Some(String::new());
        assert_same(&[&full]);
        assert_same(&[&plain, &full, &done]);
        assert_same(&[&done, &plain]);
        assert_same(&[&queued, &full, &done, &plain]);
    }

    #[test]
    fn pool_status_is_written_as_serde_json_writes_it() {
        use crate::model::{Backend, State, VmState};
        use crate::pool::PriceTable;
        use crate::pool::tests::{t0, vm};
        use crate::render::{Live, pool_status};
        let prices = PriceTable::default();
        let odd_prices = PriceTable::with_overrides("Standard_D4s_v3=0.1,Standard_E16s_v5=1.008")
            .expect("valid overrides");
        let assert_same = |status: &PoolStatus| {
            let mut out = Vec::new();
            write_pool_status(&mut out, status).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string_pretty(status).unwrap()
            );
        };
        let mut st = State::default();
        assert_same(&pool_status(&st, &Live::default(), &prices, t0()));
        st.vm_pool
            .insert("vm-a".into(), vm("Standard_E16s_v5", 4, "eastus"));
        st.vm_pool
            .insert("vm-b".into(), vm("Standard_D4s_v3", 2, "westus3"));
        let mut local = vm("local", 3, "local");
        local.backend = Backend::Local;
        st.vm_pool.insert("local".into(), local);
        let mut failed = vm("Standard_E16s_v5", 4, "eastus");
        failed.state = VmState::Failed;
        failed.error = Some(AWKWARD.into());
        st.vm_pool.insert("vm-failed".into(), failed);
        let mut gone = vm("Standard_E16s_v5", 4, "eastus");
        gone.state = VmState::Deleting;
        st.vm_pool.insert("vm-gone".into(), gone);
        let mut unpriced = vm("Standard_Z9_unknown", 2, "eastus");
        unpriced.resource_group = Some("rg-other".into());
        unpriced.creation_unconfirmed = true;
        st.vm_pool.insert("vm-unpriced".into(), unpriced);
        for (id, vm_name, status) in [
            ("s1", "vm-a", SessionStatus::Running),
            ("s2", "vm-a", SessionStatus::Pending),
            ("s3", "vm-b", SessionStatus::Completed),
            ("s4", "local", SessionStatus::Running),
            ("s5", "vm-b", SessionStatus::Other("x".into())),
            ("s6", "vm-a", SessionStatus::Queued),
            ("s7", "vm-a", SessionStatus::Queued),
            ("s8", "vm-unpriced", SessionStatus::Queued),
            ("s9", "vm-b", SessionStatus::Killed),
            ("s10", "vm-b", SessionStatus::Failed),
        ] {
            st.sessions.insert(id.into(), session(id, vm_name, status));
        }
        st.normalize();
        let now = t0() + chrono::Duration::hours(3);
        assert_same(&pool_status(&st, &Live::default(), &prices, now));
        assert_same(&pool_status(&st, &Live::default(), &odd_prices, now));
        let mut live = Live::default();
        live.unreachable.insert("vm-a".into());
        live.power = Some(
            [
                ("vm-a".to_string(), "Running".to_string()),
                ("vm-failed".into(), "Deallocated \"x\"".into()),
            ]
            .into(),
        );
        assert_same(&pool_status(&st, &live, &prices, now));
        assert_same(&pool_status(
            &st,
            &live,
            &odd_prices,
            now + chrono::Duration::seconds(7),
        ));
        let status = pool_status(&st, &live, &prices, now);
        assert!(status.sessions.queued == 3, "{status:?}");
        assert!(status.vms.iter().any(|v| v.queued_sessions.len() == 2));
        assert!(status.vms.iter().any(|v| v.hourly_usd.is_none()));
        assert!(status.total_hourly_usd > 0.0, "{status:?}");
    }

    #[test]
    fn long_lists_are_written_whole_across_chunks() {
        let mut all = Vec::new();
        for i in 0..400 {
            let mut s = session(&format!("sess-{i:04}"), "vm-1", SessionStatus::Running);
            s.prompt = AWKWARD.repeat(1 + i % 3);
            all.push(s);
        }
        let refs: Vec<&Session> = all.iter().collect();
        let text = by_hand(&refs, |s| s.session_id.ends_with('7'));
        assert!(text.len() > 3 * CHUNK, "{}", text.len());
        assert_eq!(text, by_serde(&refs, |s| s.session_id.ends_with('7')));
    }

    #[test]
    fn numbers_are_written_in_full() {
        for v in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            push_unsigned(&mut buf, v);
            assert_eq!(buf, v.to_string().as_bytes());
        }
    }
}
