//! The archive: what each finished session produced, brought home from its VM, so nothing about
//! it depends on the VM any more (`output` and `pull` read it; `prune` may then delete the VM).
//! With `state.rs`, the only module that reads and writes files of ours: every archive file is
//! read and written here.
//!
//! `<root>/<session-id>/` holds `archive.json` (what was kept, from where, when), `result.json`
//! (the supervisor's result), `record.json` (the session as launched), `output.log` (the whole
//! log, or its last part) and `commits.bundle` (a git bundle of the commits since the starting
//! commit), each present when the VM had it. Directories are 0700, files 0600. A session's
//! directory is written under a temp name and renamed into place, so a crash never leaves a
//! part of one under its real name. Layout and formats: docs/results.md.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::model::{SessionResult, format_timestamp, parse_timestamp};
use crate::core::naming;
use crate::error::{Error, Result};
use crate::remote::answer::{Encoding, Frame, FrameKind};
use crate::state::atomic;

pub const META_FILE: &str = "archive.json";
pub const RESULT_FILE: &str = "result.json";
pub const RECORD_FILE: &str = "record.json";
pub const LOG_FILE: &str = "output.log";
pub const BUNDLE_FILE: &str = "commits.bundle";
pub const PATCH_FILE: &str = "uncommitted.patch";
/// The agent's conversations (Claude Code's `*.jsonl`), as they were when it ended.
pub const CONVERSATION_DIR: &str = "conversation";

/// The files a frame may carry, besides conversation files; anything else a VM sends is
/// ignored.
const PART_FILES: [&str; 5] = [RESULT_FILE, RECORD_FILE, LOG_FILE, BUNDLE_FILE, PATCH_FILE];

/// Where a part of a frame is kept in a session's archive: one of `PART_FILES`, or
/// `conversation/NAME.jsonl` with a plain file name. `None` for anything else.
fn part_path(name: &str) -> Option<PathBuf> {
    if PART_FILES.contains(&name) {
        return Some(PathBuf::from(name));
    }
    let file = name.strip_prefix("conversation/")?;
    let plain = !file.is_empty()
        && !file.starts_with('.')
        && file.ends_with(".jsonl")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    plain.then(|| Path::new(CONVERSATION_DIR).join(file))
}

/// Anything shaped like an Anthropic API key (`sk-ant-...`) in `text`, replaced by
/// `[REDACTED]`. The VM redacts the session's own key before anything leaves it; this is the
/// second line, for a conversation saved where the key was not at hand.
pub fn redact_keys(text: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"sk-ant-";
    let key_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(PREFIX) {
            let mut j = i + PREFIX.len();
            while j < text.len() && key_byte(text[j]) {
                j += 1;
            }
            out.extend_from_slice(b"[REDACTED]");
            i = j;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// Temp directories of writers; one older than this was left by a writer that died.
const TEMP_PREFIX: &str = ".tmp-";
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// `archive.json`: what an archive holds and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    pub session_id: String,
    pub vm_name: String,
    pub archived_at: String,
    /// The size of the log on the VM.
    #[serde(default)]
    pub log_bytes: Option<u64>,
    /// Where the kept part of the log starts: above 0 when only its last part was kept.
    #[serde(default)]
    pub log_kept_from: Option<u64>,
    /// Commits made since the starting commit, as the VM counted them when archiving.
    #[serde(default)]
    pub commits: Option<u64>,
    /// Why the commits could not be bundled, when they could not.
    #[serde(default)]
    pub bundle_error: Option<String>,
    /// The VM had no directory of the session (it never launched there, or was removed).
    #[serde(default)]
    pub no_session_dir: bool,
    #[serde(default)]
    pub error: Option<String>,
}

impl ArchiveMeta {
    /// Bytes of the log that were not kept (its beginning), when the log was over the cap.
    pub fn log_cut(&self) -> Option<u64> {
        self.log_kept_from.filter(|from| *from > 0)
    }
}

#[derive(Debug, Clone)]
pub struct ArchiveStore {
    root: PathBuf,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl ArchiveStore {
    #[cfg(test)]
    pub fn new(root: PathBuf) -> Self {
        ArchiveStore { root }
    }

    /// `AMPLIHACK_REMOTE_ARCHIVE`, else `remote-archive` beside the state file.
    pub fn beside(state_path: &Path, configured: Option<PathBuf>) -> Self {
        let root = configured.unwrap_or_else(|| {
            state_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("remote-archive")
        });
        ArchiveStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a session's archive. Ids come from the state or a VM's answer: only
    /// well-formed ones (no path separators, no `..`) ever name a directory.
    pub fn dir(&self, id: &str) -> Result<PathBuf> {
        naming::validate_session_id(id)
            .map_err(|e| Error::Failed(format!("cannot archive session {id:?}: {e}")))?;
        Ok(self.root.join(id))
    }

    /// Whether a whole archive of the session is here.
    pub fn has(&self, id: &str) -> bool {
        self.dir(id).is_ok_and(|d| d.join(META_FILE).is_file())
    }

    /// Writes the archive of a finished session from its frame: into a temp directory, then
    /// renamed into place. An archive already in place is whole (it got there by a rename)
    /// and stays: a concurrent command that archived the same session first wins. Returns when
    /// the archive in place was made (`now`, or the earlier one's time), which the state records
    /// as the session's `archived_at`.
    pub fn write(&self, frame: &Frame, vm: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        if frame.kind != FrameKind::Archive {
            return Err(Error::Failed(format!(
                "a snapshot of {} is not an archive",
                frame.id
            )));
        }
        let target = self.dir(&frame.id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_error(format!(
                "cannot create the archive directory {}",
                self.root.display()
            )))?;
        self.remove_stale_temps();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", frame.id))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.root)
            .map_err(io_error(format!(
                "cannot create a temp directory in {}",
                self.root.display()
            )))?;
        let mut conversation: Vec<PathBuf> = Vec::new();
        for (part, rel) in frame
            .parts
            .iter()
            .filter_map(|p| Some((p, part_path(&p.name)?)))
        {
            if rel.starts_with(CONVERSATION_DIR) {
                conversation.push(tmp.path().join(&rel));
            }
            let path = tmp.path().join(&rel);
            if let Some(dir) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_error(format!("cannot create {}", dir.display())))?;
            }
            let mut file = create_private(&path)?;
            let redact = rel.starts_with(CONVERSATION_DIR) || part.name == PATCH_FILE;
            let written = match part.encoding {
                Encoding::Plain if redact => file.write_all(&redact_keys(part.data)),
                Encoding::Plain => file.write_all(part.data),
                Encoding::Gzip => {
                    let mut decoder = flate2::read::MultiGzDecoder::new(part.data);
                    if redact {
                        let mut text = Vec::new();
                        decoder
                            .read_to_end(&mut text)
                            .and_then(|_| file.write_all(&redact_keys(&text)))
                    } else {
                        std::io::copy(&mut decoder, &mut file).map(drop)
                    }
                }
            };
            written
                .and_then(|()| file.sync_all())
                .map_err(io_error(format!(
                    "cannot write {} of session {}",
                    part.name, frame.id
                )))?;
        }
        // The VM sends conversations oldest first; their times here keep that order, which
        // tells `claude --continue` the latest.
        order_by_mtime(&conversation, now);
        let note = |key: &str| frame.notes.get(key).cloned();
        let meta = ArchiveMeta {
            session_id: frame.id.clone(),
            vm_name: vm.to_string(),
            archived_at: format_timestamp(&now),
            log_bytes: frame.note_u64("log_bytes"),
            log_kept_from: frame.note_u64("log_kept_from"),
            commits: frame.note_u64("commits"),
            bundle_error: note("bundle_error"),
            no_session_dir: note("session_dir").as_deref() == Some("missing"),
            error: note("error"),
        };
        let mut text = serde_json::to_vec_pretty(&meta).expect("archive meta serializes");
        text.push(b'\n');
        let mut file = create_private(&tmp.path().join(META_FILE))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(io_error(format!(
                "cannot write {META_FILE} of {}",
                frame.id
            )))?;
        let tmp_path = tmp.keep();
        match atomic::publish_dir(&tmp_path, &target) {
            Ok(()) => Ok(now),
            Err(_) if self.has(&frame.id) => {
                let _ = fs::remove_dir_all(&tmp_path);
                Ok(self.archived_at(&frame.id).unwrap_or(now))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp_path);
                Err(Error::io(
                    format!("cannot move the archive into {}", target.display()),
                    e,
                ))
            }
        }
    }

    /// Temp directories of writers that died mid-write (older than an hour: a live writer
    /// takes seconds).
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP);
            if stale {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, id: &str, file: &str) -> Result<Option<T>> {
        let path = self.dir(id)?.join(file);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Failed(format!("{} is not what it should be: {e}", path.display())))
    }

    pub fn meta(&self, id: &str) -> Result<Option<ArchiveMeta>> {
        self.read_json(id, META_FILE)
    }

    /// When the session's archive was made, as its `archive.json` says.
    pub fn archived_at(&self, id: &str) -> Option<DateTime<Utc>> {
        let meta = self.meta(id).ok().flatten()?;
        parse_timestamp(&meta.archived_at).ok()
    }

    /// Every whole archive here, with when it was made: what `sync` gives back to a rebuilt
    /// state, so its sessions read their archives again instead of asking their VMs.
    pub fn all_archived(&self) -> BTreeMap<String, DateTime<Utc>> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| !id.starts_with(TEMP_PREFIX) && naming::validate_session_id(id).is_ok())
            .filter_map(|id| Some((id.clone(), self.archived_at(&id)?)))
            .collect()
    }

    /// The session's result, when its VM had one.
    pub fn result(&self, id: &str) -> Result<Option<SessionResult>> {
        self.read_json(id, RESULT_FILE)
    }

    /// The last `lines` lines of the kept log; `None` when no log was kept.
    pub fn log_tail(&self, id: &str, lines: usize) -> Result<Option<Vec<u8>>> {
        let path = self.dir(id)?.join(LOG_FILE);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        tail_lines(&mut file, lines)
            .map(Some)
            .map_err(io_error(format!("cannot read {}", path.display())))
    }

    /// The patch of the work the session left uncommitted, when it left any.
    pub fn patch(&self, id: &str) -> Option<PathBuf> {
        self.dir(id)
            .ok()
            .map(|d| d.join(PATCH_FILE))
            .filter(|p| p.is_file())
    }

    /// The agent's conversation files as the session left them (name order).
    pub fn conversation(&self, id: &str) -> Vec<PathBuf> {
        let Ok(dir) = self.dir(id).map(|d| d.join(CONVERSATION_DIR)) else {
            return Vec::new();
        };
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .map(|p| {
                        let t = fs::metadata(&p)
                            .and_then(|m| m.modified())
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        (t, p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// Copies the session's conversation files into `dest` (created 0700; Claude Code's
    /// folder for a workspace), oldest first with increasing times so `claude --continue`
    /// takes the latest. Returns how many.
    pub fn place_conversation(&self, id: &str, dest: &Path, now: DateTime<Utc>) -> Result<usize> {
        let files = self.conversation(id);
        if files.is_empty() {
            return Ok(0);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(io_error(format!("cannot create {}", dest.display())))?;
        let mut placed = Vec::with_capacity(files.len());
        for file in &files {
            let target = dest.join(file.file_name().unwrap_or_default());
            fs::copy(file, &target).map_err(io_error(format!(
                "cannot copy {} to {}",
                file.display(),
                target.display()
            )))?;
            placed.push(target);
        }
        order_by_mtime(&placed, now);
        Ok(placed.len())
    }

    /// The bundle of the session's commits, when it made any.
    pub fn bundle(&self, id: &str) -> Option<PathBuf> {
        self.dir(id)
            .ok()
            .map(|d| d.join(BUNDLE_FILE))
            .filter(|p| p.is_file())
    }
}

/// Gives `files` modification times one second apart, the last at `latest`, so their order
/// (oldest first) survives any copy that keeps times, and `claude --continue`, which takes the
/// newest conversation, takes the last. Best effort: a file whose time cannot be set keeps its
/// own.
pub fn order_by_mtime(files: &[PathBuf], latest: DateTime<Utc>) {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(latest.timestamp().max(0) as u64);
    let count = files.len() as u64;
    for (i, path) in files.iter().enumerate() {
        let t = latest - Duration::from_secs(count - 1 - i as u64);
        if let Ok(f) = OpenOptions::new().write(true).open(path) {
            let _ = f.set_modified(t);
        }
    }
}

fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(format!("cannot create {}", path.display())))
}

/// The last `n` lines of a file, as `tail -n` gives them, read from its end (a log may be
/// 64 MB; a tail is usually a few KB).
fn tail_lines(file: &mut File, n: usize) -> std::io::Result<Vec<u8>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let len = file.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let mut seen = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    return Ok(buf[i + 1..].to_vec());
                }
            }
        }
        if start == 0 {
            return Ok(buf);
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::answer::{Part, read_answer};
    use std::collections::BTreeMap;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn frame<'a>(id: &str, log_gz: &'a [u8], bundle: &'a [u8]) -> Frame<'a> {
        Frame {
            id: id.into(),
            kind: FrameKind::Archive,
            notes: BTreeMap::from([
                ("log_bytes".to_string(), "100".to_string()),
                ("log_kept_from".to_string(), "40".to_string()),
                ("commits".to_string(), "2".to_string()),
            ]),
            parts: vec![
                Part {
                    name: "result.json".into(),
                    encoding: Encoding::Plain,
                    data: br#"{"started_at":"2025-11-25T14:30:00Z","finished_at":"2025-11-25T14:40:00Z","duration_seconds":600,"base_commit":"abc1234","head_commit":"def5678","commits":2,"committed":{"files":2,"insertions":2,"deletions":0},"uncommitted":{"files":1,"insertions":3,"deletions":0},"dirty":true}"#,
                },
                Part {
                    name: "output.log".into(),
                    encoding: Encoding::Gzip,
                    data: log_gz,
                },
                Part {
                    name: "commits.bundle".into(),
                    encoding: Encoding::Plain,
                    data: bundle,
                },
                Part {
                    name: "../escape".into(),
                    encoding: Encoding::Plain,
                    data: b"x",
                },
            ],
        }
    }

    fn t() -> DateTime<Utc> {
        crate::core::model::parse_timestamp("2025-11-26T08:00:00Z").unwrap()
    }

    #[test]
    fn an_archive_is_written_whole_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path().join("archive"));
        let log = b"one\ntwo\nthree\n";
        let gz = gzip(log);
        store
            .write(&frame("sess-1", &gz, b"BUNDLE"), "vm1", t())
            .unwrap();
        let d = store.dir("sess-1").unwrap();
        assert_eq!(fs::read(d.join(LOG_FILE)).unwrap(), log);
        assert_eq!(fs::read(d.join(BUNDLE_FILE)).unwrap(), b"BUNDLE");
        assert!(!dir.path().join("escape").exists() && !d.join("../escape").exists());
        let meta = store.meta("sess-1").unwrap().unwrap();
        assert_eq!(meta.vm_name, "vm1");
        assert_eq!(meta.log_cut(), Some(40));
        assert_eq!(meta.commits, Some(2));
        let result = store.result("sess-1").unwrap().unwrap();
        assert_eq!(result.commits, Some(2));
        assert_eq!(result.uncommitted_work().unwrap().files, 1);
        assert_eq!(
            store.log_tail("sess-1", 2).unwrap().unwrap(),
            b"two\nthree\n"
        );
        assert!(store.bundle("sess-1").is_some());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join(LOG_FILE)), 0o600);
        assert_eq!(mode(&d.join(META_FILE)), 0o600);
        // No temp directory is left behind.
        let names: Vec<String> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["sess-1".to_string()]);
    }

    #[test]
    fn the_first_whole_archive_stays_and_a_bad_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path().to_path_buf());
        let gz = gzip(b"first\n");
        store
            .write(&frame("sess-1", &gz, b"B"), "vm1", t())
            .unwrap();
        let gz2 = gzip(b"second\n");
        store
            .write(&frame("sess-1", &gz2, b"B"), "vm2", t())
            .unwrap();
        assert_eq!(store.meta("sess-1").unwrap().unwrap().vm_name, "vm1");
        // A log that is not gzip fails the write: nothing appears under the session's name.
        assert!(
            store
                .write(&frame("sess-2", b"not gzip", b"B"), "vm1", t())
                .is_err()
        );
        assert!(!store.has("sess-2"));
        assert!(!store.dir("sess-2").unwrap().exists());
        assert!(store.dir("../x").is_err());
        assert!(store.meta("sess-3").unwrap().is_none());
        assert!(store.log_tail("sess-3", 5).unwrap().is_none());
    }

    #[test]
    fn tails_read_from_the_end_like_tail_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = Vec::new();
        for i in 0..100_000 {
            text.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        fs::write(&path, &text).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(tail_lines(&mut f, 2).unwrap(), b"line 99998\nline 99999\n");
        assert_eq!(tail_lines(&mut f, 100_000).unwrap(), text);
        assert_eq!(tail_lines(&mut f, 200_000).unwrap(), text);
        fs::write(&path, b"a\nb").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(tail_lines(&mut f, 1).unwrap(), b"b");
        assert_eq!(tail_lines(&mut f, 5).unwrap(), b"a\nb");
        assert_eq!(tail_lines(&mut f, 0).unwrap(), b"");
    }

    #[test]
    fn a_frame_read_from_an_answer_archives_as_sent() {
        let gz = gzip(b"hello\n");
        let mut answer =
            b"session\ts1\t1\t0\t0\t-\t-\t0\t0\narchive\ts1\nnote\tcommits\t0\n".to_vec();
        answer.extend(format!("part\toutput.log\tgzip\t{}\n", gz.len()).as_bytes());
        answer.extend(&gz);
        answer.extend(b"end\ts1\n");
        let parsed = read_answer(&answer).unwrap();
        assert_eq!(parsed.frames.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path().to_path_buf());
        store.write(&parsed.frames[0], "vm", t()).unwrap();
        assert_eq!(store.log_tail("s1", 10).unwrap().unwrap(), b"hello\n");
        assert_eq!(store.meta("s1").unwrap().unwrap().commits, Some(0));
    }

    #[test]
    fn conversation_and_patch_parts_are_kept_with_keys_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path().join("archive"));
        let conv = gzip(b"{\"k\":\"sk-ant-api03-AbC_d-9\"}\n{\"ok\":1}\n");
        let mut f = frame("s1", &conv, b"");
        f.parts = vec![
            Part {
                name: "conversation/a1-b2.jsonl".into(),
                encoding: Encoding::Gzip,
                data: &conv,
            },
            Part {
                name: "uncommitted.patch".into(),
                encoding: Encoding::Plain,
                data: b"+KEY=sk-ant-xyz\n",
            },
            Part {
                name: "conversation/../../escape.jsonl".into(),
                encoding: Encoding::Plain,
                data: b"x",
            },
            Part {
                name: "conversation/.hidden.jsonl".into(),
                encoding: Encoding::Plain,
                data: b"x",
            },
        ];
        store.write(&f, "vm", t()).unwrap();
        let files = store.conversation("s1");
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(
            std::fs::read_to_string(&files[0]).unwrap(),
            "{\"k\":\"[REDACTED]\"}\n{\"ok\":1}\n"
        );
        let patch = store.patch("s1").unwrap();
        assert_eq!(std::fs::read_to_string(patch).unwrap(), "+KEY=[REDACTED]\n");
        assert!(!dir.path().join("escape.jsonl").exists());
        assert_eq!(
            std::fs::metadata(files[0].parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn redaction_takes_the_whole_key_and_nothing_else() {
        assert_eq!(redact_keys(b"a sk-ant-X1_-y b"), b"a [REDACTED] b");
        assert_eq!(redact_keys(b"sk-ant-"), b"[REDACTED]");
        assert_eq!(redact_keys(b"sk-an nothing"), b"sk-an nothing");
        assert_eq!(
            redact_keys("ünï sk-ant-k\"".as_bytes()),
            "ünï [REDACTED]\"".as_bytes()
        );
    }
}
