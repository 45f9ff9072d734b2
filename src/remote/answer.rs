//! The answers of control calls read into values: answer lines, archive frames, stream
//! frames, probe, launch and kill reports (pure). The requests are built by `request`.

use crate::core::lifecycle::{Phase, Probe};
use crate::core::model::{Session, parse_timestamp};
use crate::core::naming;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The first line of every control call's answer. azlin can answer a `connect` without
/// running our script at all (it reads a VM name it cannot find as a tmux session name and
/// attaches elsewhere, exit 0, nothing on stdout): an answer without this line is not from our
/// script, so it proves nothing about our sessions.
pub const ANSWER_MARK: &[u8] = b"amplihack-remote\tanswer\n";

/// The answer after its mark (anything a login printed before it dropped with it); `None`
/// when the mark never came: the script did not run.
pub fn framed_answer(stdout: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = stdout.strip_prefix(ANSWER_MARK) {
        return Some(rest);
    }
    let at = stdout
        .windows(ANSWER_MARK.len() + 1)
        .position(|w| w[0] == b'\n' && &w[1..] == ANSWER_MARK)?;
    Some(&stdout[at + 1 + ANSWER_MARK.len()..])
}

/// The line a probe ends with when it sent archives and waits to hear which were kept at home
/// (docs/remote-layout.md, "Collected"); the caller answers with `request::collected_reply`.
pub const AWAITING_COLLECTED: &[u8] = b"awaiting\tcollected\n";

/// The start of a `collected ID` line: the session's directory holds the `collected` mark
/// (or the VM has none of it).
const COLLECTED_LINE: &str = "collected\t";

/// Queued sessions the VM could not start (`stuck` lines of a draining call), and why.
pub fn parse_stuck(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '\t');
            match (p.next(), p.next(), p.next()) {
                (Some("stuck"), Some(id), Some(why)) => Some((id.to_string(), why.to_string())),
                _ => None,
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchResult {
    /// Running; `started_at` is when the VM recorded the agent's start, when it has.
    Launched {
        started_at: Option<DateTime<Utc>>,
    },
    /// Waiting in the VM's queue, at this place (1 = next) of this many.
    Queued {
        place: u32,
        of: u32,
    },
    Failed(String),
}

pub fn parse_launch(stdout: &[u8]) -> HashMap<String, LaunchResult> {
    let text = String::from_utf8_lossy(stdout);
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("launched"), Some(id), started) => {
                let started_at = field(started, |v| parse_timestamp(v.trim()).ok());
                out.insert(id.to_string(), LaunchResult::Launched { started_at });
            }
            (Some("queued"), Some(id), place) => {
                let mut p = place
                    .unwrap_or("")
                    .split('\t')
                    .map(|n| n.trim().parse().unwrap_or(0));
                let (place, of) = (p.next().unwrap_or(0), p.next().unwrap_or(0));
                out.insert(id.to_string(), LaunchResult::Queued { place, of });
            }
            (Some("failed"), Some(id), reason) => {
                out.insert(
                    id.to_string(),
                    LaunchResult::Failed(reason.unwrap_or("unknown").trim().to_string()),
                );
            }
            _ => {}
        }
    }
    out
}

pub use crate::core::reconcile::VmRecords;

/// Reads a `records` answer: `record\tID\tJSON` (or `-`) lines and `session` lines. Lines
/// of other shapes, and ids that are not well formed, are ignored.
pub fn parse_records(stdout: &[u8]) -> VmRecords {
    let mut out = VmRecords::default();
    for line in String::from_utf8_lossy(stdout).lines() {
        if let Some(rest) = line.strip_prefix("record\t") {
            let Some((id, json)) = rest.split_once('\t') else {
                continue;
            };
            if naming::validate_session_id(id).is_err() {
                continue;
            }
            let record = match json.trim() {
                "-" => Err("its directory has no record.json (a launch that did not get that far, or an older version's)".to_string()),
                json => match serde_json::from_str::<Session>(json) {
                    Ok(s) if s.session_id == id => Ok(s),
                    Ok(s) => Err(format!("its record.json names session {:?}", s.session_id)),
                    Err(e) => Err(format!("its record.json is not a session record: {e}")),
                },
            };
            out.records.insert(id.to_string(), record);
        } else if let Some(id) = line.strip_prefix(COLLECTED_LINE)
            && naming::validate_session_id(id).is_ok()
        {
            out.collected.insert(id.to_string());
        } else if let Some((id, probe)) = parse_probe_line(line)
            && naming::validate_session_id(&id).is_ok()
        {
            out.probes.insert(id, probe);
        }
    }
    out
}

fn field<T>(s: Option<&str>, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    s.filter(|v| *v != "-").and_then(parse)
}

fn parse_probe_line(line: &str) -> Option<(String, Probe)> {
    let mut p = line.split('\t');
    if p.next()? != "session" {
        return None;
    }
    let id = p.next()?.to_string();
    let known = p.next()? == "1";
    let alive = p.next()? == "1";
    let exit_code = field(p.next(), |v| v.trim().parse().ok());
    let finished_at = field(p.next(), |v| parse_timestamp(v.trim()).ok());
    let started_at = field(p.next(), |v| parse_timestamp(v.trim()).ok());
    let kill_requested = p.next() == Some("1");
    let tmux = p.next() == Some("1");
    let cancelled = p.next() == Some("1");
    let claimed = p.next() == Some("1");
    let queued = p.next() == Some("1");
    let phase = p
        .next()
        .and_then(Phase::parse)
        .unwrap_or_else(|| Phase::from_flags(known, alive, exit_code, cancelled, queued));
    let reason = p
        .next()
        .filter(|r| !r.is_empty() && *r != "-")
        .map(String::from);
    let detail = field(p.next(), |v| Some(v.to_string()));
    let silent_since = field(p.next(), |v| parse_timestamp(v.trim()).ok());
    Some((
        id,
        Probe {
            known,
            alive,
            exit_code,
            finished_at,
            started_at,
            kill_requested,
            tmux,
            cancelled,
            claimed,
            queued,
            phase,
            reason,
            detail,
            silent_since,
        },
    ))
}

#[cfg(test)]
pub fn parse_probes(stdout: &[u8]) -> HashMap<String, Probe> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(parse_probe_line)
        .collect()
}

/// One frame of a stream (not to be confused with the archive frames of `Frame`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// A session's facts.
    Session(String, Probe),
    /// Log bytes starting at a byte offset.
    Data { offset: u64, bytes: Vec<u8> },
    /// A heartbeat: the connection lives.
    Beat,
    /// The stream is complete.
    End,
}

/// Parses a stream's frames as its bytes arrive, in any pieces.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Adds bytes; returns every frame now complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<StreamFrame>, String> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(nl) = self.buf[at..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[at..at + nl]).into_owned();
            let body = at + nl + 1;
            let frame = match line.split_once('\t').map_or((line.as_str(), ""), |p| p) {
                ("B", _) => StreamFrame::Beat,
                ("E", _) => StreamFrame::End,
                ("S", rest) => match parse_probe_line(rest) {
                    Some((id, probe)) => StreamFrame::Session(id, probe),
                    None => return Err(format!("a malformed session frame: {rest:?}")),
                },
                ("D", rest) => {
                    let (offset, len) = rest
                        .split_once('\t')
                        .and_then(|(o, l)| Some((o.parse::<u64>().ok()?, l.parse::<usize>().ok()?)))
                        .ok_or_else(|| format!("a malformed data frame: {rest:?}"))?;
                    if self.buf.len() < body + len {
                        break; // the bytes are still on their way
                    }
                    at = body + len;
                    frames.push(StreamFrame::Data {
                        offset,
                        bytes: self.buf[body..body + len].to_vec(),
                    });
                    continue;
                }
                _ => return Err(format!("an unexpected line in a stream: {line:?}")),
            };
            frames.push(frame);
            at = body;
        }
        self.buf.drain(..at);
        Ok(frames)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureSource {
    Pane,
    Log,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture<'a> {
    pub probe: Option<Probe>,
    /// Its place in its VM's queue (1 = next) and the queue's length, when it is queued.
    pub queue_place: Option<(u32, u32)>,
    pub log_size: Option<u64>,
    pub source: CaptureSource,
    pub data: &'a [u8],
    /// The archive frame of a session found finished, when one was asked for.
    pub frames: Vec<Frame<'a>>,
}

/// Splits a capture or follow answer into its header lines, its frames and the raw data
/// after `data`.
pub fn parse_capture(stdout: &[u8]) -> Result<Capture<'_>, String> {
    let answer = read_answer(stdout)?;
    let Some((kind, data)) = answer.data else {
        return Err("the VM's answer ended before its data section".into());
    };
    let mut probe = None;
    let mut log_size = None;
    let mut queue_place = None;
    for line in &answer.lines {
        if let Some(place) = line.strip_prefix("queue\t") {
            let mut p = place.split('\t').map(|n| n.trim().parse().unwrap_or(0));
            queue_place = Some((p.next().unwrap_or(0), p.next().unwrap_or(0)));
        } else if let Some(size) = line.strip_prefix("log\t") {
            log_size = size.trim().parse().ok();
        } else if let Some((_, p)) = parse_probe_line(line) {
            probe = Some(p);
        }
    }
    let source = match kind.as_str() {
        "pane" => CaptureSource::Pane,
        "log" => CaptureSource::Log,
        _ => CaptureSource::None,
    };
    Ok(Capture {
        probe,
        queue_place,
        log_size,
        source,
        data,
        frames: answer.frames,
    })
}

/// What a frame carries: a finished session's archive, or a running session's commits so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Archive,
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Gzip,
}

/// One file of a frame, as sent: `result.json`, `record.json`, `output.log`, `commits.bundle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub encoding: Encoding,
    pub data: &'a [u8],
}

/// A frame of an answer: `archive ID` or `snapshot ID`, then `note KEY VALUE` lines and parts
/// (`part NAME ENCODING LENGTH` and exactly LENGTH bytes), then `end ID`. Only a frame whose
/// `end` arrived is ever returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: String,
    pub kind: FrameKind,
    pub notes: BTreeMap<String, String>,
    pub parts: Vec<Part<'a>>,
}

impl<'a> Frame<'a> {
    pub fn part(&self, name: &str) -> Option<&Part<'a>> {
        self.parts.iter().find(|p| p.name == name)
    }

    pub fn note_u64(&self, key: &str) -> Option<u64> {
        self.notes.get(key).and_then(|v| v.trim().parse().ok())
    }
}

/// An answer split into its text lines, its frames, and the raw data section that follows a
/// `data KIND` line (capture and follow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer<'a> {
    pub lines: Vec<String>,
    pub frames: Vec<Frame<'a>>,
    pub data: Option<(String, &'a [u8])>,
    /// Why reading stopped early: a frame cut short or malformed. Everything before it stands.
    pub damaged: Option<String>,
}

/// Cuts the next line (without its newline) off `rest`.
fn next_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let line = &rest[..nl];
    *rest = &rest[nl + 1..];
    Some(line)
}

/// Reads one frame after its opening line; `Err` when it is cut short or malformed.
fn read_frame<'a>(rest: &mut &'a [u8], id: &str, kind: FrameKind) -> Result<Frame<'a>, String> {
    let mut frame = Frame {
        id: id.to_string(),
        kind,
        notes: BTreeMap::new(),
        parts: Vec::new(),
    };
    loop {
        let line = next_line(rest).ok_or_else(|| format!("the frame of {id} was cut short"))?;
        let line = String::from_utf8_lossy(line);
        let mut f = line.split('\t');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("end"), Some(end_id), None, None) if end_id == id => return Ok(frame),
            (Some("note"), Some(key), value, None) => {
                frame
                    .notes
                    .insert(key.to_string(), value.unwrap_or("").to_string());
            }
            (Some("part"), Some(name), Some(encoding), Some(len)) => {
                let encoding = match encoding {
                    "plain" => Encoding::Plain,
                    "gzip" => Encoding::Gzip,
                    other => return Err(format!("unknown encoding {other:?} in {id}")),
                };
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad part length {len:?} in {id}"))?;
                if rest.len() < len {
                    return Err(format!("part {name} of {id} was cut short"));
                }
                let (data, tail) = rest.split_at(len);
                *rest = tail;
                frame.parts.push(Part {
                    name: name.to_string(),
                    encoding,
                    data,
                });
            }
            _ => return Err(format!("unexpected line {line:?} in the frame of {id}")),
        }
    }
}

/// Reads a control call's answer: text lines, frames, and a trailing raw `data` section.
/// A damaged frame stops the reading; what came before it stands.
pub fn read_answer(stdout: &[u8]) -> Result<Answer<'_>, String> {
    let mut rest = stdout;
    let mut answer = Answer::default();
    while !rest.is_empty() {
        let Some(line) = next_line(&mut rest) else {
            // A last line without a newline: text, never a frame.
            answer
                .lines
                .push(String::from_utf8_lossy(rest).into_owned());
            break;
        };
        let line = String::from_utf8_lossy(line).into_owned();
        if let Some(kind) = line.strip_prefix("data\t") {
            answer.data = Some((kind.to_string(), rest));
            break;
        }
        let frame_kind = if let Some(id) = line.strip_prefix("archive\t") {
            Some((id, FrameKind::Archive))
        } else {
            line.strip_prefix("snapshot\t")
                .map(|id| (id, FrameKind::Snapshot))
        };
        match frame_kind {
            Some((id, kind)) => match read_frame(&mut rest, id, kind) {
                Ok(frame) => answer.frames.push(frame),
                Err(why) => {
                    answer.damaged = Some(why);
                    break;
                }
            },
            None => answer.lines.push(line),
        }
    }
    Ok(answer)
}

/// A probe's answer: the facts per session and the frames.
pub struct ProbeAnswer<'a> {
    pub probes: HashMap<String, Probe>,
    pub frames: Vec<Frame<'a>>,
    pub damaged: Option<String>,
}

pub fn parse_probe_answer(stdout: &[u8]) -> ProbeAnswer<'_> {
    let answer = read_answer(stdout).unwrap_or_default();
    ProbeAnswer {
        probes: answer
            .lines
            .iter()
            .filter_map(|l| parse_probe_line(l))
            .collect(),
        frames: answer.frames,
        damaged: answer.damaged,
    }
}

/// Sessions an answer's `collected ID` lines confirm marked (docs/remote-layout.md,
/// "Collected").
pub fn collected_ids(answer: &Answer) -> BTreeSet<String> {
    answer
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix(COLLECTED_LINE))
        .filter(|id| naming::validate_session_id(id).is_ok())
        .map(String::from)
        .collect()
}

/// Whether the caller answers now: the VM asks (`awaits_collected`), or the answer so far was
/// damaged before (a frame cut or malformed: where its lines are cannot be told) and ends as
/// the question does. That is answered with the archives of the whole frames before the
/// damage, so the VM never waits out its minute for a caller that cannot read it.
pub fn answer_to_collected(stdout: &[u8], answer: &Answer) -> bool {
    awaits_collected(stdout, answer)
        || (answer.damaged.is_some()
            && answer.data.is_none()
            && stdout.ends_with(AWAITING_COLLECTED))
}

/// Whether `answer` (read from `stdout`, the answer so far) ends with the VM asking which of
/// its archives were kept at home: the line `awaiting collected` as a line of its own, not
/// bytes inside a frame's data.
pub fn awaits_collected(stdout: &[u8], answer: &Answer) -> bool {
    let awaiting = std::str::from_utf8(AWAITING_COLLECTED)
        .expect("ascii")
        .trim_end();
    answer.damaged.is_none()
        && answer.data.is_none()
        && stdout.ends_with(AWAITING_COLLECTED)
        && answer.lines.last().is_some_and(|l| l == awaiting)
}

/// The last `n` lines of a pane capture, without the pane's trailing blank rows.
pub fn last_lines(text: &[u8], n: usize) -> Vec<u8> {
    let mut end = text.len();
    while end > 0 && matches!(text[end - 1], b'\n' | b' ') {
        end -= 1;
    }
    let body = &text[..end];
    if body.is_empty() {
        return Vec::new();
    }
    let mut start = 0;
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
    }
    let mut out = body[start..].to_vec();
    out.push(b'\n');
    out
}

pub fn count_lines(data: &[u8]) -> usize {
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(!data.is_empty() && !data.ends_with(b"\n"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillOutcome {
    /// The session had already recorded an exit code: nothing was signalled.
    AlreadyFinished,
    /// Signalled and ended.
    Killed,
    /// Neither a tmux session nor an agent was there.
    Gone,
    /// It was queued: taken out of its VM's queue, it never starts.
    Dequeued,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillReport<'a> {
    pub outcome: KillOutcome,
    pub signalled: Option<String>,
    pub escalated: bool,
    pub probe: Option<Probe>,
    pub frames: Vec<Frame<'a>>,
}

pub fn parse_kill(stdout: &[u8]) -> Result<KillReport<'_>, String> {
    let answer = read_answer(stdout)?;
    let mut outcome = None;
    let mut report = KillReport {
        outcome: KillOutcome::Gone,
        signalled: None,
        escalated: false,
        probe: None,
        frames: answer.frames,
    };
    for line in &answer.lines {
        if let Some(v) = line.strip_prefix("result\t") {
            outcome = Some(match v {
                "already" => KillOutcome::AlreadyFinished,
                "killed" => KillOutcome::Killed,
                "dequeued" => KillOutcome::Dequeued,
                _ => KillOutcome::Gone,
            });
        } else if let Some(v) = line.strip_prefix("signalled\t") {
            report.signalled = Some(v.to_string());
        } else if line.starts_with("escalated\t") {
            report.escalated = true;
        } else if let Some((_, p)) = parse_probe_line(line) {
            report.probe = Some(p);
        }
    }
    report.outcome = outcome.ok_or("the VM's answer has no result line")?;
    Ok(report)
}
