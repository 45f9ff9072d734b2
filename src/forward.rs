//! Living beside the Python amplihack. This binary is also called `amplihack` but implements
//! only `amplihack remote`; like cargo with `cargo-foo`, every other top-level command
//! (`amplihack claude`, `amplihack launch`, ...) is handed to the next `amplihack` on PATH that
//! is not this binary. The same lookup gives the local backend its default agent.
//!
//! "Not this binary" compares canonical paths and (device, inode), so a symlink or a hard link
//! to us is skipped. A copy of us (another build, another install) cannot be recognised by its
//! file, so every binary that forwards adds itself to `AMPLIHACK_REMOTE_FORWARDED_FROM` and
//! skips what is listed there: two copies never hand a command back and forth.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The program name looked up on PATH.
pub const PROGRAM: &str = "amplihack";

/// The binaries a command has already passed through, in PATH syntax.
pub const FORWARDED_FROM_VAR: &str = "AMPLIHACK_REMOTE_FORWARDED_FROM";

/// How to get the commands this binary does not have; used by `--help` and the errors.
pub const GET_THE_REST: &str = "install the Python amplihack and put it on PATH (pip install amplihack, or uv tool install amplihack; uvx amplihack runs it without installing)";

/// Which file an executable is: two paths name the same program when their canonical paths
/// or their (device, inode) pairs are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<FileId> {
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            path,
        })
    }

    pub fn is_same_file(&self, other: &FileId) -> bool {
        self.path == other.path || (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// This binary plus every binary named in `forwarded_from` (the marker's value).
pub fn excluded_binaries(this: &Path, forwarded_from: Option<&OsStr>) -> Result<Vec<FileId>> {
    let me = FileId::of(this).ok_or_else(|| {
        Error::Failed(format!(
            "cannot identify this program's own file ({}), so cannot tell another amplihack from it",
            this.display()
        ))
    })?;
    let mut out = vec![me];
    if let Some(list) = forwarded_from {
        out.extend(std::env::split_paths(list).filter_map(|p| FileId::of(&p)));
    }
    Ok(out)
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable `amplihack` in `path_var` (a PATH value) that is none of `excluded`,
/// as an absolute path (a relative PATH entry is taken from `cwd`). Empty entries are skipped:
/// they would mean the current directory, which nobody intends for this lookup.
pub fn find_other(path_var: Option<&OsStr>, cwd: &Path, excluded: &[FileId]) -> Option<PathBuf> {
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| cwd.join(dir).join(PROGRAM))
        .filter(|candidate| is_executable_file(candidate))
        .find(|candidate| {
            FileId::of(candidate).is_some_and(|id| !excluded.iter().any(|x| x.is_same_file(&id)))
        })
}

fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("cannot locate this program's own file", e))
}

/// The other `amplihack` on this process's PATH (the Python one), if there is one.
pub fn other_amplihack() -> Result<Option<PathBuf>> {
    let excluded = excluded_binaries(
        &this_binary()?,
        std::env::var_os(FORWARDED_FROM_VAR).as_deref(),
    )?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Ok(find_other(
        std::env::var_os("PATH").as_deref(),
        &cwd,
        &excluded,
    ))
}

/// The one-line error for a command nobody on PATH provides.
pub fn not_found_message(subcommand: &OsStr) -> String {
    format!(
        "'{}' is not a command of this amplihack, which provides `amplihack remote`, and no other amplihack is on PATH: {GET_THE_REST}",
        subcommand.to_string_lossy()
    )
}

/// Replaces this process with the other `amplihack`, `args` (the subcommand first) passed
/// unchanged: its stdin, stdout, stderr, signals and exit code are then the user's own.
/// Returns only when that cannot happen.
pub fn exec_other_amplihack(args: Vec<OsString>) -> Error {
    let Some(subcommand) = args.first() else {
        return Error::InvalidArgs("no command given".into());
    };
    let this = match this_binary() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let forwarded_from = std::env::var_os(FORWARDED_FROM_VAR);
    let excluded = match excluded_binaries(&this, forwarded_from.as_deref()) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let Some(program) = find_other(std::env::var_os("PATH").as_deref(), &cwd, &excluded) else {
        return Error::InvalidArgs(not_found_message(subcommand));
    };
    let marker = match std::env::join_paths(excluded.iter().map(|id| &id.path)) {
        Ok(m) => m,
        Err(e) => {
            return Error::Failed(format!(
                "cannot hand '{}' to {}: {e}",
                subcommand.to_string_lossy(),
                program.display()
            ));
        }
    };
    let err = std::process::Command::new(&program)
        .args(&args)
        .env(FORWARDED_FROM_VAR, marker)
        .exec();
    Error::io(format!("cannot run {}", program.display()), err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn executable(path: &Path, body: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn path_of(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn skips_symlinks_and_hard_links_to_this_binary() {
        let t = tempfile::tempdir().unwrap();
        let me = t.path().join("install/amplihack");
        executable(&me, "#!/bin/sh\n");
        let linked = t.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(&me, linked.join("amplihack")).unwrap();
        let hard = t.path().join("hard");
        std::fs::create_dir(&hard).unwrap();
        std::fs::hard_link(&me, hard.join("amplihack")).unwrap();
        let python = t.path().join("python/amplihack");
        executable(&python, "#!/bin/sh\n");
        let excluded = excluded_binaries(&me, None).unwrap();
        let path = path_of(&[
            &linked,
            &hard,
            me.parent().unwrap(),
            python.parent().unwrap(),
        ]);
        assert_eq!(
            find_other(Some(&path), t.path(), &excluded),
            Some(python.clone())
        );
        // Without the other one there is nothing to find: never ourselves.
        let path = path_of(&[&linked, &hard, me.parent().unwrap()]);
        assert_eq!(find_other(Some(&path), t.path(), &excluded), None);
        assert_eq!(find_other(None, t.path(), &excluded), None);
    }

    #[test]
    fn the_first_other_one_wins_and_non_executables_do_not_count() {
        let t = tempfile::tempdir().unwrap();
        let me = t.path().join("me/amplihack");
        executable(&me, "me");
        let plain = t.path().join("plain/amplihack");
        std::fs::create_dir_all(plain.parent().unwrap()).unwrap();
        std::fs::write(&plain, "not executable").unwrap();
        let dir_named_like_it = t.path().join("dir/amplihack");
        std::fs::create_dir_all(&dir_named_like_it).unwrap();
        let first = t.path().join("first/amplihack");
        executable(&first, "first");
        let second = t.path().join("second/amplihack");
        executable(&second, "second");
        let excluded = excluded_binaries(&me, None).unwrap();
        let path = path_of(&[
            plain.parent().unwrap(),
            dir_named_like_it.parent().unwrap(),
            first.parent().unwrap(),
            second.parent().unwrap(),
        ]);
        assert_eq!(find_other(Some(&path), t.path(), &excluded), Some(first));
    }

    #[test]
    fn relative_entries_are_made_absolute_and_empty_ones_skipped() {
        let t = tempfile::tempdir().unwrap();
        let me = t.path().join("me/amplihack");
        executable(&me, "me");
        executable(&t.path().join("amplihack"), "in the current directory");
        let rel = t.path().join("rel/amplihack");
        executable(&rel, "relative");
        let excluded = excluded_binaries(&me, None).unwrap();
        let found = find_other(Some(OsStr::new(":rel")), t.path(), &excluded).unwrap();
        assert!(found.is_absolute());
        assert_eq!(found, t.path().join("rel/amplihack"));
    }

    #[test]
    fn binaries_named_by_the_marker_are_skipped_too() {
        // A copy of this binary is not the same file; the marker it set when it forwarded to
        // us keeps us from handing the command back to it.
        let t = tempfile::tempdir().unwrap();
        let me = t.path().join("me/amplihack");
        executable(&me, "me");
        let copy = t.path().join("copy/amplihack");
        executable(&copy, "a copy of me");
        let path = path_of(&[copy.parent().unwrap(), me.parent().unwrap()]);
        let unmarked = excluded_binaries(&me, None).unwrap();
        assert_eq!(
            find_other(Some(&path), t.path(), &unmarked),
            Some(copy.clone())
        );
        let marker = path_of(&[&copy, Path::new("/nonexistent/amplihack")]);
        let marked = excluded_binaries(&me, Some(&marker)).unwrap();
        assert_eq!(
            marked.len(),
            2,
            "a marker entry that does not exist is ignored"
        );
        assert_eq!(find_other(Some(&path), t.path(), &marked), None);
    }

    #[test]
    fn the_not_found_message_is_one_line_naming_the_command_and_the_way_out() {
        let msg = not_found_message(OsStr::from_bytes(b"cl\xffaude"));
        assert!(!msg.contains('\n'));
        assert!(
            msg.starts_with("'cl\u{fffd}aude' is not a command"),
            "{msg}"
        );
        assert!(msg.contains("amplihack remote") && msg.contains("pip install amplihack"));
    }
}
