//! `list --json` written by hand: byte for byte what `serde_json::to_writer_pretty` writes for
//! the same sessions (unit tests compare the two), without serde_json's byte-by-byte escaping
//! loop and per-token formatter calls, which cost a third of `list --json` on 10,000 sessions.
//! Pure: it writes into a buffer or a writer it is given.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{Session, TimestampText};

/// Writes `sessions` as a pretty JSON array (two-space indent, no trailing newline), with
/// `"vm_unreachable": true` after the fields of each session `unreachable` picks.
pub fn write_sessions<W: Write + ?Sized>(
    out: &mut W,
    sessions: &[&Session],
    unreachable: impl Fn(&Session) -> bool,
) -> io::Result<()> {
    if sessions.is_empty() {
        return out.write_all(b"[]");
    }
    // One write per session: a writer call per token costs more than the copying.
    let mut buf = Vec::with_capacity(1024);
    for (i, s) in sessions.iter().enumerate() {
        buf.clear();
        buf.extend_from_slice(if i == 0 { b"[\n  {" } else { b",\n  {" });
        write_session(&mut buf, s, unreachable(s));
        buf.extend_from_slice(b"\n  }");
        out.write_all(&buf)?;
    }
    out.write_all(b"\n]")
}

/// The fields of one session, in the order and with the omissions of its `Serialize`.
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
        extra,
    } = s;
    let mut o = Fields { buf, first: true };
    o.string(b"session_id", session_id);
    o.string(b"vm_name", vm_name);
    o.string(b"workspace", workspace);
    o.string(b"tmux_session", tmux_session);
    o.string(b"prompt", prompt);
    o.string(b"command", command);
    o.unsigned(b"max_turns", u64::from(*max_turns));
    o.string(b"status", status.as_str());
    o.unsigned(b"memory_mb", *memory_mb);
    o.timestamp(b"created_at", Some(created_at));
    o.timestamp(b"started_at", started_at.as_ref());
    o.timestamp(b"completed_at", completed_at.as_ref());
    match exit_code {
        Some(code) => o.signed(b"exit_code", i64::from(*code)),
        None => o.raw(b"exit_code", b"null"),
    }
    for (name, value) in [
        (b"error".as_slice(), error),
        (b"repo_path", repo_path),
        (b"base_commit", base_commit),
    ] {
        if let Some(v) = value {
            o.string(name, v);
        }
    }
    for (name, value) in extra {
        o.value(name, value);
    }
    if unreachable {
        o.raw(b"vm_unreachable", b"true");
    }
}

/// The members of an object two levels deep (array, object), as serde_json's pretty
/// formatter lays them out.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

const MEMBER_INDENT: &[u8] = b"    ";

impl Fields<'_> {
    fn start_member(&mut self) {
        self.buf
            .extend_from_slice(if self.first { b"\n" } else { b",\n" });
        self.buf.extend_from_slice(MEMBER_INDENT);
        self.first = false;
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

    fn unsigned(&mut self, name: &[u8], value: u64) {
        self.key(name);
        push_unsigned(self.buf, value);
    }

    fn signed(&mut self, name: &[u8], value: i64) {
        self.key(name);
        if value < 0 {
            self.buf.push(b'-');
        }
        push_unsigned(self.buf, value.unsigned_abs());
    }

    fn timestamp(&mut self, name: &[u8], t: Option<&DateTime<Utc>>) {
        self.key(name);
        match t {
            None => self.buf.extend_from_slice(b"null"),
            Some(t) => match TimestampText::new(t) {
                // Digits, '-', ':', '.', 'T' and 'Z' never need escaping.
                Some(text) => {
                    self.buf.push(b'"');
                    self.buf.extend_from_slice(text.as_bytes());
                    self.buf.push(b'"');
                }
                None => push_string(self.buf, &crate::model::format_timestamp(t)),
            },
        }
    }

    /// A field we do not know, kept from the state file: rare, so serde_json writes it, and
    /// every line after its first moves in to this depth. A newline inside a JSON value is
    /// always layout: in a string it is written `\n`.
    fn value(&mut self, name: &str, value: &Value) {
        self.start_member();
        push_string(self.buf, name);
        self.buf.extend_from_slice(b": ");
        let text = serde_json::to_vec_pretty(value).expect("a JSON value serializes");
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.buf.push(b'\n');
                self.buf.extend_from_slice(MEMBER_INDENT);
            }
            self.buf.extend_from_slice(line);
        }
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
        full.extra = serde_json::from_str(
            r#"{"python_field": [1, 2, {"deep": {"deeper": [[], {}, "a\nb"]}}],
                "empty_list": [], "empty_map": {}, "n": null, "f": 1.5, "neg": -3,
                "big": 18446744073709551615, "text": "x\"y", "a key \"quoted\"": true}"#,
        )
        .unwrap();
        let mut done = session("sess-3", "vm-1", SessionStatus::Completed);
        done.exit_code = Some(0);
        done.completed_at = Some(done.created_at);
        done.error = Some(String::new());
        assert_same(&[&full]);
        assert_same(&[&plain, &full, &done]);
        assert_same(&[&done, &plain]);
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
