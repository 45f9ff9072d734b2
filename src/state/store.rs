//! The state store: the only place that reads or writes the state file.
//!
//! Protocol (docs/state-file.md): every change is a transaction that holds an exclusive lock
//! on `<state>.lock` (a separate file that is never renamed) across read-modify-write, and
//! writes the new content to a temp file in the same directory, syncs it and renames it over
//! the state file. Readers need no lock: a rename is atomic, so they see the old or the new
//! file, never a mix. Read-only commands never create or write anything.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::core::model::State;
use crate::error::{Error, Result};
use crate::state::atomic;

/// A temp file is `.<state file name>.<6 random letters or digits>.tmp`: named after its
/// own state file, so the writers of two state files in one directory, which hold different
/// locks and run at once, never mistake each other's temp files for stale ones.
const TEMP_RANDOM_LEN: usize = 6;
const TEMP_SUFFIX: &str = ".tmp";

const STATE_VAR: &str = "AMPLIHACK_REMOTE_STATE";

/// The state file a value of AMPLIHACK_REMOTE_STATE names (see `path_from_setting`).
pub fn state_path_from_setting(value: &OsStr, home: Option<&Path>) -> Result<PathBuf> {
    path_from_setting(STATE_VAR, "file", value, home)
}

/// The path a setting `var` (AMPLIHACK_REMOTE_STATE, AMPLIHACK_REMOTE_ARCHIVE) names, of
/// a thing the error calls `names` ("file", "folder"): an
/// absolute path as it is, `~` and `~/...` under `home`. Any other relative path is refused
/// (exit 2): it would name a different file, and so a different pool or archive, in every
/// directory a command runs in.
pub fn path_from_setting(
    var: &str,
    names: &str,
    value: &OsStr,
    home: Option<&Path>,
) -> Result<PathBuf> {
    let path = Path::new(value);
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let bytes = value.as_bytes();
    let under_home = match bytes {
        b"~" => Some(Path::new("")),
        [b'~', b'/', rest @ ..] => Some(Path::new(OsStr::from_bytes(rest))),
        _ => None,
    };
    match (under_home, home) {
        (Some(rest), Some(home)) => Ok(home.join(rest)),
        (Some(_), None) => Err(Error::InvalidArgs(format!(
            "invalid {var}={value:?}: the home directory is unknown, so ~ cannot be expanded; set {var} to an absolute path"
        ))),
        (None, _) => Err(Error::InvalidArgs(format!(
            "invalid {var}={value:?}: a relative path names a different {names} in every directory; set {var} to an absolute path (or one starting with ~/)"
        ))),
    }
}

#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// `$AMPLIHACK_REMOTE_STATE`, else `~/.amplihack/remote-state.json`.
    pub fn from_env() -> Result<Self> {
        let home = dirs::home_dir();
        let path = match std::env::var_os(STATE_VAR).filter(|p| !p.is_empty()) {
            Some(p) => state_path_from_setting(&p, home.as_deref())?,
            None => home
                .ok_or_else(|| {
                    Error::Failed(format!("cannot find the home directory; set {STATE_VAR}"))
                })?
                .join(".amplihack")
                .join("remote-state.json"),
        };
        Ok(Self::new(path))
    }

    /// A symlinked state file is followed to its target, so the rename replaces the target
    /// and the link stays a link (dotfiles kept in a synced folder keep working).
    pub fn new(path: PathBuf) -> Self {
        let mut path = path;
        for _ in 0..16 {
            match fs::read_link(&path) {
                Ok(target) => {
                    path = match path.parent() {
                        Some(parent) => parent.join(target),
                        None => target,
                    }
                }
                Err(_) => break,
            }
        }
        StateStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state file exists (a missing one reads as an empty state).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The lock file the Python original takes for this state file: Python's
    /// `state_file.with_suffix(".lock")` (`remote-state.json` -> `remote-state.lock`). Both
    /// programs may share one state file, so a transaction holds its lock too.
    /// None for a state file itself named `*.lock`: that lock would be the state file.
    fn python_lock_path(&self) -> Option<PathBuf> {
        self.path.file_name()?;
        Some(self.path.with_extension("lock")).filter(|lock| *lock != self.path)
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// `.<state file name>.`: what this state file's temp files start with.
    fn temp_prefix(&self) -> OsString {
        let mut prefix = OsString::from(".");
        prefix.push(self.path.file_name().unwrap_or_default());
        prefix.push(".");
        prefix
    }

    fn access_error(&self, detail: impl Into<String>) -> Error {
        Error::StateAccess {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// Reads the state without locking and without creating anything. A missing file is an
    /// empty state; a corrupt one is an error and is left untouched.
    pub fn load(&self) -> Result<State> {
        self.load_with(parse_state)
    }

    /// Like `load`, with `vm_pool` left empty, for commands that show sessions alone. The
    /// whole file is still checked: a corrupt VM entry is the same error as for `load`.
    pub fn load_sessions_only(&self) -> Result<State> {
        self.load_with(parse_state_sessions_only)
    }

    fn load_with(&self, parse: fn(&[u8]) -> std::result::Result<State, String>) -> Result<State> {
        let bytes = match self.read_file() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e.into_error(self)),
        };
        let state = parse(&bytes).map_err(|detail| Error::StateCorrupt {
            path: self.path.clone(),
            detail,
        })?;
        // Names from the file become paths and reach VMs: a bad one is reported, never used.
        match crate::core::naming::unsafe_state_entry(&state) {
            None => Ok(state),
            Some(detail) => Err(Error::StateCorrupt {
                path: self.path.clone(),
                detail: format!("{detail}; nothing was done with it"),
            }),
        }
    }

    /// The state file's bytes. Only a regular file is read: a directory, a FIFO or a device
    /// (`/dev/zero`) is refused. It is opened without blocking (a FIFO with no writer would
    /// hold `open` forever) and then checked, so nothing but a regular file is ever read.
    fn read_file(&self) -> std::result::Result<Vec<u8>, ReadError> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&self.path)
            .map_err(ReadError::Io)?;
        let meta = file.metadata().map_err(ReadError::Io)?;
        if !meta.is_file() {
            return Err(ReadError::NotAFile(meta.file_type()));
        }
        if meta.len() > MAX_STATE_BYTES {
            return Err(ReadError::TooLarge(meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
        file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
        Ok(bytes)
    }

    /// Runs `change` on the current state under the lock and writes the result atomically.
    /// When `change` fails, nothing is written.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let dir = self.ensure_dir()?;
        // Ours first, then the Python original's: always in this order, so two of our
        // writers never wait for each other crosswise.
        let lock = self.take_lock(&self.lock_path())?;
        let python_lock = match self.python_lock_path() {
            Some(path) if path != self.lock_path() => Some(self.take_lock(&path)?),
            _ => None,
        };
        remove_stale_temps(&dir, &self.temp_prefix());
        let mut state = self.load()?;
        let result = change(&mut state)?;
        state.normalize();
        self.write_atomic(&dir, &state)?;
        drop(python_lock); // releases the locks, after the rename
        drop(lock);
        Ok(result)
    }

    fn ensure_dir(&self) -> Result<PathBuf> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(meta) = fs::metadata(&self.path)
            && !meta.is_file()
        {
            return Err(ReadError::NotAFile(meta.file_type()).into_error(self));
        }
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    self.access_error(format!("cannot create directory {}: {e}", dir.display()))
                })?;
        }
        Ok(dir)
    }

    /// Opens (creating it 0600 if needed) and locks `path` exclusively (`flock`, as the Python
    /// original does); the lock is held until the file is dropped.
    fn take_lock(&self, path: &Path) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                self.access_error(format!("cannot open lock file {}: {e}", path.display()))
            })?;
        file.lock()
            .map_err(|e| self.access_error(format!("cannot lock {}: {e}", path.display())))?;
        Ok(file)
    }

    fn write_atomic(&self, dir: &Path, state: &State) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(state)
            .map_err(|e| self.access_error(format!("cannot serialize: {e}")))?;
        text.push(b'\n');
        let prefix = self.temp_prefix();
        let temp = atomic::TempName {
            prefix: &prefix,
            random_len: TEMP_RANDOM_LEN,
            suffix: TEMP_SUFFIX,
        };
        atomic::replace_file(dir, &self.path, temp, &text).map_err(|e| match e {
            atomic::ReplaceError::CreateTemp(e) => {
                self.access_error(format!("cannot create a temp file beside it: {e}"))
            }
            atomic::ReplaceError::Write(e) => self.access_error(format!("cannot write: {e}")),
            atomic::ReplaceError::Rename(e) => self.access_error(format!("cannot replace: {e}")),
        })
    }
}

/// Why the state file could not be read.
/// No state file is this large (10,000 sessions take about 10 MB); reading one would only
/// exhaust memory, so it is refused instead.
const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;

enum ReadError {
    Io(std::io::Error),
    NotAFile(fs::FileType),
    TooLarge(u64),
}

impl ReadError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReadError::Io(e) => e.kind(),
            ReadError::NotAFile(_) | ReadError::TooLarge(_) => ErrorKind::InvalidInput,
        }
    }

    fn into_error(self, store: &StateStore) -> Error {
        use std::os::unix::fs::FileTypeExt;
        match self {
            ReadError::Io(e) => store.access_error(format!("cannot read: {e}")),
            ReadError::TooLarge(len) => store.access_error(format!(
                "is {len} bytes, more than any state file ({MAX_STATE_BYTES}); set AMPLIHACK_REMOTE_STATE to the state file"
            )),
            ReadError::NotAFile(t) => {
                let what = if t.is_dir() {
                    "is a directory"
                } else if t.is_fifo() {
                    "is a named pipe (FIFO), not a regular file"
                } else if t.is_char_device() || t.is_block_device() {
                    "is a device, not a regular file"
                } else if t.is_socket() {
                    "is a socket, not a regular file"
                } else {
                    "is not a regular file"
                };
                store.access_error(format!("{what}; set AMPLIHACK_REMOTE_STATE to a file path"))
            }
        }
    }
}

pub fn parse_state(bytes: &[u8]) -> std::result::Result<State, String> {
    check_text(bytes)?;
    match serde_json::from_slice(bytes) {
        Ok(state) => Ok(state),
        // A key repeated in one object (a hand edit): JSON allows it, and the Python original
        // (`json.load`) takes the last one; so do we, rather than refuse the file. Whatever the
        // error: an earlier value that is refused (`"max_turns": 10.5, "max_turns": 10`) is
        // not the one read, and the repetition need not be what serde names.
        Err(e) => match without_repeated_keys(bytes) {
            // Its error's place is in the text without the repeated members: the file's own
            // error is named instead, unless that was only the repetition.
            Some(text) => serde_json::from_slice(&text).map_err(|again| {
                if e.to_string().contains("duplicate field") {
                    again.to_string()
                } else {
                    e.to_string()
                }
            }),
            None => Err(e.to_string()),
        },
    }
}

/// The JSON text `bytes` with every member of an object whose key comes again later in that
/// object removed, so the last one wins (as Python's `json.load` reads it). `None` when the
/// text is not JSON as far as this reads it, or repeats no key.
fn without_repeated_keys(bytes: &[u8]) -> Option<Vec<u8>> {
    struct Scan<'a> {
        b: &'a [u8],
        at: usize,
        /// Byte ranges to drop: earlier members whose key comes again.
        drop: Vec<(usize, usize)>,
    }
    impl Scan<'_> {
        fn ws(&mut self) {
            while self.b.get(self.at).is_some_and(u8::is_ascii_whitespace) {
                self.at += 1;
            }
        }
        fn string(&mut self) -> Option<(usize, usize)> {
            let start = self.at;
            (self.b.get(self.at)? == &b'"').then_some(())?;
            self.at += 1;
            loop {
                match self.b.get(self.at)? {
                    b'\\' => self.at += 2,
                    b'"' => {
                        self.at += 1;
                        return Some((start, self.at));
                    }
                    _ => self.at += 1,
                }
            }
        }
        fn value(&mut self) -> Option<()> {
            self.ws();
            match self.b.get(self.at)? {
                b'{' => self.object(),
                b'[' => {
                    self.at += 1;
                    self.ws();
                    if self.b.get(self.at)? == &b']' {
                        self.at += 1;
                        return Some(());
                    }
                    loop {
                        self.value()?;
                        self.ws();
                        match self.b.get(self.at)? {
                            b',' => self.at += 1,
                            b']' => {
                                self.at += 1;
                                return Some(());
                            }
                            _ => return None,
                        }
                    }
                }
                b'"' => self.string().map(drop),
                _ => {
                    let start = self.at;
                    while self.b.get(self.at).is_some_and(|c| {
                        !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace()
                    }) {
                        self.at += 1;
                    }
                    (self.at > start).then_some(())
                }
            }
        }
        fn object(&mut self) -> Option<()> {
            self.at += 1;
            // Each member: its key and where it starts (the next member's start ends it).
            // Keys compared as JSON reads them: `"max_\u0074urns"` is `"max_turns"`.
            let mut members: Vec<(std::borrow::Cow<'_, [u8]>, usize)> = Vec::new();
            self.ws();
            if self.b.get(self.at)? == &b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                self.ws();
                let (ks, ke) = self.string()?;
                let raw = &self.b[ks..ke];
                let key = if raw.contains(&b'\\') {
                    std::borrow::Cow::Owned(
                        serde_json::from_slice::<String>(raw).ok()?.into_bytes(),
                    )
                } else {
                    std::borrow::Cow::Borrowed(&raw[1..raw.len() - 1])
                };
                members.push((key, ks));
                self.ws();
                (self.b.get(self.at)? == &b':').then_some(())?;
                self.at += 1;
                self.value()?;
                self.ws();
                match self.b.get(self.at)? {
                    b',' => self.at += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
            self.at += 1;
            for (i, (key, start)) in members.iter().enumerate() {
                if members[i + 1..].iter().any(|(k, _)| k == key) {
                    // Never the last member: it ends where the next one starts.
                    self.drop.push((*start, members[i + 1].1));
                }
            }
            Some(())
        }
    }
    let mut scan = Scan {
        b: bytes,
        at: 0,
        drop: Vec::new(),
    };
    scan.value()?;
    if scan.drop.is_empty() {
        return None;
    }
    scan.drop.sort();
    let mut out = Vec::with_capacity(bytes.len());
    let mut kept_to = 0;
    for (start, end) in scan.drop {
        if start >= kept_to {
            out.extend_from_slice(&bytes[kept_to..start]);
            kept_to = end;
        } else {
            kept_to = kept_to.max(end);
        }
    }
    out.extend_from_slice(&bytes[kept_to..]);
    Some(out)
}

/// `parse_state` with `vm_pool` left empty (see `StateStore::load_sessions_only`).
pub fn parse_state_sessions_only(bytes: &[u8]) -> std::result::Result<State, String> {
    let mut state = parse_state(bytes)?;
    state.vm_pool.clear();
    Ok(state)
}

fn check_text(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    // One UTF-8 check of the whole file: the prompt is read as bytes (to keep a lone
    // surrogate escape), which serde_json does not check.
    std::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|e| format!("not UTF-8 text: {e}"))
}

/// A temp file can only be left behind by a writer that died mid-transaction; under the lock
/// no other writer of this state file is running, so any of its temp files are stale. Only
/// this state file's are touched: another state file's writer may be mid-write right now.
fn remove_stale_temps(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if is_temp_of(&entry.file_name(), prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether `name` is `<prefix><6 letters or digits>.tmp`. The exact shape matters: with a
/// state file `a.json`, `.a.json.x.QpZ3kd.tmp` belongs to a state file `a.json.x`.
fn is_temp_of(name: &OsStr, prefix: &OsStr) -> bool {
    let (name, prefix) = (name.as_bytes(), prefix.as_bytes());
    name.len() == prefix.len() + TEMP_RANDOM_LEN + TEMP_SUFFIX.len()
        && name.starts_with(prefix)
        && name.ends_with(TEMP_SUFFIX.as_bytes())
        && name[prefix.len()..prefix.len() + TEMP_RANDOM_LEN]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sessions_only_gives_the_same_sessions_and_the_same_errors() {
        let text = include_str!("../../tests/expected/python-state.json");
        let mut whole = parse_state(text.as_bytes()).unwrap();
        whole.vm_pool.clear();
        assert_eq!(parse_state_sessions_only(text.as_bytes()).unwrap(), whole);
        let unusual = text.replace("\"max_turns\": 10,", "\"max_turns\": 1e1,");
        let mut by_serde = parse_state(unusual.as_bytes()).unwrap();
        by_serde.vm_pool.clear();
        assert_eq!(
            parse_state_sessions_only(unusual.as_bytes()).unwrap(),
            by_serde,
            "1e1 is 10"
        );
        // Deep nesting in a field we do not know.
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        let unusual = text.replace(
            "\"capacity\": 4,",
            &format!("\"capacity\": 4, \"x\": {deep},"),
        );
        let mut whole = parse_state(unusual.as_bytes()).unwrap();
        assert!(!whole.vm_pool.is_empty());
        whole.vm_pool.clear();
        assert_eq!(
            parse_state_sessions_only(unusual.as_bytes()).unwrap(),
            whole
        );
        for broken in [
            text.replace(
                "\"created_at\": \"2025-11-25T14:30:00\"",
                "\"created_at\": 5",
            ),
            text.replace("\"region\": \"westus3\",", ""),
            format!("{text}x"),
            String::new(),
        ] {
            assert_eq!(
                parse_state_sessions_only(broken.as_bytes()).unwrap_err(),
                parse_state(broken.as_bytes()).unwrap_err()
            );
        }
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value_and_whole_floats_as_numbers() {
        let text = include_str!("../../tests/expected/python-state.json");
        let repeated = text.replacen(
            "\"status\": \"running\",",
            "\"status\": \"failed\", \"x\": {\"a\": 1, \"a\": [2, \"}\\\"\"]}, \"status\": \"running\",",
            1,
        );
        let state = parse_state(repeated.as_bytes()).unwrap();
        let s = &state.sessions["sess-20251125-143022-abc"];
        assert_eq!(s.status.as_str(), "running");
        assert_eq!(s.extra["x"], serde_json::json!({"a": [2, "}\""]}));
        assert_eq!(
            without_repeated_keys(br#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3}"#).unwrap(),
            br#"{"b": {"c": 2}, "a": 3}"#
        );
        assert_eq!(without_repeated_keys(br#"{"a": 1}"#), None);
        let float = text.replacen("\"max_turns\": 10,", "\"max_turns\": 10.0,", 1);
        let state = parse_state(float.as_bytes()).unwrap();
        assert_eq!(state.sessions["sess-20251125-143022-abc"].max_turns, 10);
        let exp = text.replacen("\"max_turns\": 10,", "\"max_turns\": 1e1,", 1);
        assert_eq!(parse_state(exp.as_bytes()).unwrap(), state);
        let half = text.replacen("\"max_turns\": 10,", "\"max_turns\": 10.5,", 1);
        let e = parse_state(half.as_bytes()).unwrap_err();
        assert!(e.contains("10.5 is not a whole number"), "{e}");
        // The value refused comes first and is not the one read; the key is escaped.
        let refused_then_kept = text.replacen(
            "\"max_turns\": 10,",
            "\"max_turns\": 10.5, \"max_\\u0074urns\": 12, \"status\": 5, \"status\": \"running\",",
            1,
        );
        let state = parse_state(refused_then_kept.as_bytes()).unwrap();
        assert_eq!(state.sessions["sess-20251125-143022-abc"].max_turns, 12);
        let negative = text.replacen("\"max_turns\": 10,", "\"max_turns\": -1,", 1);
        assert!(parse_state(negative.as_bytes()).is_err());
    }

    #[test]
    fn empty_and_garbage_are_corrupt_with_position() {
        assert_eq!(parse_state(b"").unwrap_err(), "the file is empty");
        assert_eq!(parse_state(b"  \n").unwrap_err(), "the file is empty");
        let e = parse_state(b"{\"sessions\": {").unwrap_err();
        assert!(e.contains("line 1 column"), "{e}");
        let e = parse_state(b"[1,2]").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn update_is_all_or_nothing_and_load_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub/state.json"));
        assert!(store.load().unwrap().sessions.is_empty());
        assert!(!dir.path().join("sub").exists(), "load must not create");
        store
            .update(|s| {
                s.extra.insert("k".into(), 1.into());
                Ok(())
            })
            .unwrap();
        let r: Result<()> = store.update(|s| {
            s.extra.insert("k".into(), 2.into());
            Err(Error::Failed("no".into()))
        });
        assert!(r.is_err());
        assert_eq!(store.load().unwrap().extra["k"], 1);
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn the_state_setting_expands_a_leading_tilde_and_refuses_relative_paths() {
        let home = Path::new("/home/jane");
        let path = |v: &str| state_path_from_setting(OsStr::new(v), Some(home));
        assert_eq!(path("/srv/x.json").unwrap(), Path::new("/srv/x.json"));
        assert_eq!(path("~/x.json").unwrap(), Path::new("/home/jane/x.json"));
        assert_eq!(
            path("~/a/b.json").unwrap(),
            Path::new("/home/jane/a/b.json")
        );
        assert_eq!(path("~").unwrap(), Path::new("/home/jane"));
        assert_eq!(path("~/").unwrap(), Path::new("/home/jane/"));
        for relative in [
            "x.json",
            "./x.json",
            "../x.json",
            "a/x.json",
            "~jane/x.json",
            "~x",
        ] {
            let e = path(relative).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{relative}");
            let text = e.to_string();
            assert!(
                text.contains("AMPLIHACK_REMOTE_STATE")
                    && text.contains("absolute path")
                    && !text.contains('\n'),
                "{text}"
            );
        }
        let e = state_path_from_setting(OsStr::new("~/x.json"), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("home directory is unknown"));
    }

    #[test]
    fn a_state_file_cleans_only_its_own_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("a.json"));
        let prefix = store.temp_prefix();
        assert_eq!(prefix, ".a.json.");
        for (name, own) in [
            (".a.json.Xy3k9Q.tmp", true),
            (".a.json.000000.tmp", true),
            (".a.json.x.QpZ3kd.tmp", false),
            (".a.json.Xy3k9.tmp", false),
            (".a.json.Xy3k9QQ.tmp", false),
            (".a.json.Xy-k9Q.tmp", false),
            (".b.json.Xy3k9Q.tmp", false),
            (".amplihack-state-Xy3k9Q.tmp", false),
            ("a.json.Xy3k9Q.tmp", false),
            (".a.json.Xy3k9Q.tmpx", false),
            ("a.json", false),
            ("a.json.lock", false),
        ] {
            assert_eq!(is_temp_of(OsStr::new(name), &prefix), own, "{name}");
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        store
            .update(|s| {
                s.extra.insert("k".into(), 1.into());
                Ok(())
            })
            .unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".a.json.Xy-k9Q.tmp",
                ".a.json.Xy3k9.tmp",
                ".a.json.Xy3k9Q.tmpx",
                ".a.json.Xy3k9QQ.tmp",
                ".a.json.x.QpZ3kd.tmp",
                ".amplihack-state-Xy3k9Q.tmp",
                ".b.json.Xy3k9Q.tmp",
                "a.json",
                "a.json.Xy3k9Q.tmp",
                "a.json.lock",
                // The Python original's lock for a.json, held too.
                "a.lock",
            ]
        );
    }

    #[test]
    fn symlinked_state_file_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        let store = StateStore::new(link.clone());
        store
            .update(|s| {
                s.extra.insert("x".into(), true.into());
                Ok(())
            })
            .unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_to_string(&real).unwrap().contains("\"x\": true"));
    }
}
