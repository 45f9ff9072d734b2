//! Atomic replacement of what we keep at home, for the state store and the archive store: the
//! new content is built under a temp name beside its target, synced, renamed into place, and
//! the directory holding it is synced. A reader sees the old or the new whole, never a part,
//! and a crash leaves at most a temp name behind.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The name of a temp file: `<prefix><random letters or digits><suffix>`.
pub struct TempName<'a> {
    pub prefix: &'a std::ffi::OsStr,
    pub random_len: usize,
    pub suffix: &'a str,
}

/// What failed in `replace_file`, for the message.
#[derive(Debug)]
pub enum ReplaceError {
    CreateTemp(io::Error),
    Write(io::Error),
    Rename(io::Error),
}

/// Replaces the file `target` in `dir` with `bytes`: a temp file (0600) named `temp` in `dir`,
/// written and synced, renamed over `target`; then `dir` is synced.
pub fn replace_file(
    dir: &Path,
    target: &Path,
    temp: TempName,
    bytes: &[u8],
) -> Result<(), ReplaceError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(temp.prefix)
        .rand_bytes(temp.random_len)
        .suffix(temp.suffix)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(ReplaceError::CreateTemp)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ReplaceError::Write)?;
    tmp.persist(target)
        .map_err(|e| ReplaceError::Rename(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Moves the directory `staged`, whose files are written and synced, to `target` (which must
/// not exist), then syncs the directory holding it.
pub fn publish_dir(staged: &Path, target: &Path) -> io::Result<()> {
    sync_dir(staged);
    fs::rename(staged, target)?;
    if let Some(parent) = target.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// A rename or a new file is durable only once its directory is synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
