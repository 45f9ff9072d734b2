//! The state store: the only place that reads or writes the state file.
//!
//! Protocol (docs/state-file.md): every change is a transaction that holds an exclusive lock
//! on `<state>.lock` (a separate file that is never renamed) across read-modify-write, and
//! writes the new content to a temp file in the same directory, syncs it and renames it over
//! the state file. Readers need no lock: a rename is atomic, so they see the old or the new
//! file, never a mix. Read-only commands never create or write anything.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::State;

mod mapped;

/// A temp file is `.<state file name>.<6 random letters or digits>.tmp`: named after its
/// own state file, so the writers of two state files in one directory, which hold different
/// locks and run at once, never mistake each other's temp files for stale ones.
const TEMP_RANDOM_LEN: usize = 6;
const TEMP_SUFFIX: &str = ".tmp";

const STATE_VAR: &str = "AMPLIHACK_REMOTE_STATE";

/// The state file a value of AMPLIHACK_REMOTE_STATE names: an absolute path as it is, `~` and
/// `~/...` under `home`. Any other relative path is refused: it would name a different file,
/// and so a different pool, in every directory a command runs in.
pub fn state_path_from_setting(value: &OsStr, home: Option<&Path>) -> Result<PathBuf> {
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
            "invalid {STATE_VAR}={value:?}: the home directory is unknown, so ~ cannot be expanded; set {STATE_VAR} to an absolute path"
        ))),
        (None, _) => Err(Error::InvalidArgs(format!(
            "invalid {STATE_VAR}={value:?}: a relative path names a different file in every directory; set {STATE_VAR} to an absolute path (or one starting with ~/)"
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
        if self.path.is_dir() {
            return Err(
                self.access_error("is a directory; set AMPLIHACK_REMOTE_STATE to a file path")
            );
        }
        let bytes = match mapped::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(self.access_error(format!("cannot read: {e}"))),
        };
        let state = parse(&bytes).map_err(|detail| Error::StateCorrupt {
            path: self.path.clone(),
            detail,
        })?;
        // Names from the file become paths and reach VMs: a bad one is reported, never used.
        match crate::naming::unsafe_state_entry(&state) {
            None => Ok(state),
            Some(detail) => Err(Error::StateCorrupt {
                path: self.path.clone(),
                detail: format!("{detail}; nothing was done with it"),
            }),
        }
    }

    /// Runs `change` on the current state under the lock and writes the result atomically.
    /// When `change` fails, nothing is written.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let dir = self.ensure_dir()?;
        let lock = self.open_lock()?;
        lock.lock().map_err(|e| {
            self.access_error(format!("cannot lock {}: {e}", self.lock_path().display()))
        })?;
        remove_stale_temps(&dir, &self.temp_prefix());
        let mut state = self.load()?;
        let result = change(&mut state)?;
        state.normalize();
        self.write_atomic(&dir, &state)?;
        drop(lock); // releases the lock, after the rename
        Ok(result)
    }

    fn ensure_dir(&self) -> Result<PathBuf> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if self.path.is_dir() {
            return Err(
                self.access_error("is a directory; set AMPLIHACK_REMOTE_STATE to a file path")
            );
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

    fn open_lock(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| {
                self.access_error(format!(
                    "cannot open lock file {}: {e}",
                    self.lock_path().display()
                ))
            })
    }

    fn write_atomic(&self, dir: &Path, state: &State) -> Result<()> {
        let fail = |what: &str, e: std::io::Error| self.access_error(format!("{what}: {e}"));
        let mut tmp = tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .rand_bytes(TEMP_RANDOM_LEN)
            .suffix(TEMP_SUFFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| fail("cannot create a temp file beside it", e))?;
        let mut text = serde_json::to_vec_pretty(state)
            .map_err(|e| self.access_error(format!("cannot serialize: {e}")))?;
        text.push(b'\n');
        tmp.write_all(&text)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| fail("cannot write", e))?;
        tmp.persist(&self.path)
            .map_err(|e| fail("cannot replace", e.error))?;
        // The rename is durable only once the directory entry is synced.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

pub fn parse_state(bytes: &[u8]) -> std::result::Result<State, String> {
    let text = state_text(bytes)?;
    // The hand-written reader answers for the usual file; serde_json decides the rest and
    // words every error.
    match crate::state_parse::parse(text) {
        Some(state) => Ok(state),
        None => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

/// `parse_state` with `vm_pool` left empty (see `StateStore::load_sessions_only`).
pub fn parse_state_sessions_only(bytes: &[u8]) -> std::result::Result<State, String> {
    let text = state_text(bytes)?;
    match crate::state_parse::parse_sessions_only(text) {
        Some(state) => Ok(state),
        None => serde_json::from_str(text)
            .map(|mut state: State| {
                state.vm_pool.clear();
                state
            })
            .map_err(|e| e.to_string()),
    }
}

fn state_text(bytes: &[u8]) -> std::result::Result<&str, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    // One UTF-8 check of the whole file is much cheaper than serde_json's check of every
    // string it reads from a byte slice (15% of parsing 10,000 sessions).
    std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
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

    #[test]
    fn sessions_only_gives_the_same_sessions_and_the_same_errors() {
        let text = include_str!("../tests/expected/python-state.json");
        let mut whole = parse_state(text.as_bytes()).unwrap();
        whole.vm_pool.clear();
        assert_eq!(parse_state_sessions_only(text.as_bytes()).unwrap(), whole);
        // A form the hand-written reader leaves to serde_json: the VMs are dropped there too.
        let unusual = text.replace("\"max_turns\": 10,", "\"max_turns\": 1e1,");
        let by_serde = parse_state_sessions_only(unusual.as_bytes());
        assert!(by_serde.is_err(), "1e1 is not a u32");
        // Nesting deeper than the hand-written reader follows.
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        let unusual = text.replace(
            "\"capacity\": 4,",
            &format!("\"capacity\": 4, \"x\": {deep},"),
        );
        assert!(crate::state_parse::parse_sessions_only(&unusual).is_none());
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

    /// Runs this test binary again as a child doing `role` (see the tests below).
    #[cfg(target_os = "linux")]
    fn run_child(test: &str, role: &str, path: &Path) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("AMPLIHACK_STATE_TEST_CHILD", role)
            .env("AMPLIHACK_STATE_TEST_FILE", path)
            .output()
            .unwrap()
    }

    /// In the child: maps the file (watched or not), truncates it, then reads every byte.
    #[cfg(target_os = "linux")]
    fn truncate_while_mapped(role: &str) -> ! {
        let path = PathBuf::from(std::env::var_os("AMPLIHACK_STATE_TEST_FILE").unwrap());
        let watched = mapped::read(&path).unwrap();
        assert!(matches!(watched, mapped::FileBytes::Mapped(_)));
        let file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a plain read-only mapping of the file, outside the watch.
        let unwatched = unsafe {
            std::slice::from_raw_parts(
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_POPULATE,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                ) as *const u8,
                len,
            )
        };
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let bytes: &[u8] = if role == "watched" {
            &watched
        } else {
            unwatched
        };
        let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
        panic!("read {sum} from a truncated mapping without SIGBUS");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_state_file_truncated_while_it_is_read_is_a_clean_error() {
        const TEST: &str = "state::tests::a_state_file_truncated_while_it_is_read_is_a_clean_error";
        if let Ok(role) = std::env::var("AMPLIHACK_STATE_TEST_CHILD") {
            truncate_while_mapped(&role);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let big = format!(
            "{{\"sessions\": {{}}, \"pad\": \"{}\"}}",
            "x".repeat(1 << 20)
        );
        fs::write(&path, &big).unwrap();
        let out = run_child(TEST, "watched", &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "Error: State file {}: it was truncated by another program while this one read it; nothing was changed. Run the command again.\n",
                path.display()
            )),
            "{stderr}"
        );
        // A SIGBUS outside a watched mapping still kills the process, as it did before.
        fs::write(&path, &big).unwrap();
        let out = run_child(TEST, "unwatched", &path);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGBUS),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn mapped_and_read_files_parse_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let text = include_str!("../tests/expected/python-state.json");
        fs::write(&path, text).unwrap();
        let bytes = mapped::read(&path).unwrap();
        #[cfg(target_os = "linux")]
        assert!(matches!(bytes, mapped::FileBytes::Mapped(_)));
        assert_eq!(&*bytes, text.as_bytes());
        assert_eq!(
            StateStore::new(path.clone()).load().unwrap(),
            serde_json::from_str::<State>(text).unwrap()
        );
        fs::write(&path, "").unwrap();
        assert!(matches!(
            mapped::read(&path).unwrap(),
            mapped::FileBytes::Read(v) if v.is_empty()
        ));
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
