//! Living beside the Python amplihack. This binary is also called `amplihack` but implements
//! only `amplihack remote`; like cargo with `cargo-foo`, every other top-level command
//! (`amplihack claude`, `amplihack launch`, ...) is handed to the next `amplihack` on PATH that
//! is not this binary. The same lookup gives the local backend its default agent.
//!
//! "Not this binary" compares canonical paths and (device, inode), so a symlink or a hard link
//! to us is skipped. A copy of us (another build, another install) cannot be recognised by its
//! file, so every binary that forwards adds itself to `AMPLIHACK_REMOTE_FORWARDED_FROM` and
//! skips what is listed there: two copies never hand a command back and forth.
//!
//! A wrapper script named `amplihack` that execs this binary (an asdf or mise shim, a `~/bin`
//! wrapper) is not this binary's file either. So the marker also names every program a
//! command was handed to: when the wrapper brings the command back here, the wrapper is
//! skipped too, and the command goes on to the next `amplihack` on PATH, or ends with exit 2
//! at once when there is none. The local backend's agent must be the Python amplihack itself,
//! so there a candidate that is not a Python script is asked who it is (`identity probe`).

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, GET_THE_REST, Result};

/// The program name looked up on PATH.
pub const PROGRAM: &str = "amplihack";

/// The binaries a command has already passed through, in PATH syntax.
pub const FORWARDED_FROM_VAR: &str = "AMPLIHACK_REMOTE_FORWARDED_FROM";

/// Set to a nonce by the identity probe: this binary then prints `IDENTITY_PREFIX` and the
/// nonce and exits, whatever its arguments, so a wrapper that leads back here is recognised.
pub const IDENTIFY_VAR: &str = "AMPLIHACK_REMOTE_IDENTIFY";
const IDENTITY_PREFIX: &str = "amplihack-remote-identity:";

/// The Python original's own `amplihack remote` commands (its older `remote COMMAND PROMPT`
/// form and `remote exec`): handed to it rather than refused as unknown.
pub const PYTHON_REMOTE_COMMANDS: &[&str] = &["exec", "auto", "ultrathink", "analyze", "fix"];

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
        for id in std::env::split_paths(list).filter_map(|p| FileId::of(&p)) {
            if !out.iter().any(|x| x.is_same_file(&id)) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Every executable `amplihack` in `path_var` (a PATH value) that is none of `excluded`, in
/// PATH order, as absolute paths (a relative PATH entry is taken from `cwd`), each file once.
/// Empty entries are skipped: they would mean the current directory, which nobody intends for
/// this lookup.
pub fn find_others(path_var: Option<&OsStr>, cwd: &Path, excluded: &[FileId]) -> Vec<PathBuf> {
    let Some(path_var) = path_var else {
        return Vec::new();
    };
    let mut seen: Vec<FileId> = excluded.to_vec();
    let mut out = Vec::new();
    for candidate in std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| cwd.join(dir).join(PROGRAM))
        .filter(|candidate| is_executable_file(candidate))
    {
        if let Some(id) = FileId::of(&candidate)
            && !seen.iter().any(|x| x.is_same_file(&id))
        {
            seen.push(id);
            out.push(candidate);
        }
    }
    out
}

/// The first of `find_others`.
pub fn find_other(path_var: Option<&OsStr>, cwd: &Path, excluded: &[FileId]) -> Option<PathBuf> {
    find_others(path_var, cwd, excluded).into_iter().next()
}

/// The forwarding marker for a command handed to `program`: what it has passed through, and
/// `program` itself, so that if `program` hands it back here it is not handed to it again.
pub fn marker_for(excluded: &[FileId], program: &Path) -> std::result::Result<OsString, String> {
    let id = FileId::of(program);
    let program = id
        .as_ref()
        .filter(|id| !excluded.iter().any(|x| x.is_same_file(id)))
        .map(|id| id.path.clone());
    std::env::join_paths(excluded.iter().map(|id| id.path.clone()).chain(program))
        .map_err(|e| e.to_string())
}

/// The identity probe's answer: when `IDENTIFY_VAR` is set, this binary prints who it is and
/// exits 0 before reading its arguments. Called first thing in `main`.
pub fn answer_identity_probe() {
    if let Some(nonce) = std::env::var_os(IDENTIFY_VAR) {
        println!("{IDENTITY_PREFIX}{}", nonce.to_string_lossy());
        std::process::exit(0);
    }
}

/// True when `candidate` is a Python script (pip's and uv's entry points are): the Python
/// amplihack, not a wrapper leading back here. Anything else (a shell shim, a binary) may be.
fn is_python_script(candidate: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(candidate)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let first_line = head[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    first_line.starts_with(b"#!") && first_line.windows(6).any(|w| w == b"python")
}

/// Whether running `candidate` leads back to this program (a wrapper that execs us, or a copy
/// of us): it is run as `candidate --version` with `IDENTIFY_VAR` set, which this program
/// answers with the nonce before anything else. One process, only for candidates that are not
/// Python scripts.
fn leads_back_here(candidate: &Path, excluded: &[FileId], within: std::time::Duration) -> bool {
    if is_python_script(candidate) {
        return false;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let nonce = format!("{}-{nanos}", std::process::id());
    let Ok(marker) = marker_for(excluded, candidate) else {
        return false;
    };
    let cmd = crate::exec::Cmd::new(candidate.as_os_str(), vec!["--version".into()], within)
        .env(IDENTIFY_VAR, &nonce)
        .env(FORWARDED_FROM_VAR, &marker.to_string_lossy());
    crate::exec::run_any_exit(&cmd).is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == format!("{IDENTITY_PREFIX}{nonce}"))
    })
}

fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("cannot locate this program's own file", e))
}

/// The Python amplihack on this process's PATH, if there is one: the first other
/// `amplihack` that does not lead back to this program (see `leads_back_here`).
pub fn other_amplihack() -> Result<Option<PathBuf>> {
    other_amplihack_within(std::time::Duration::from_secs(30))
}

/// `other_amplihack`, giving each candidate that may be a wrapper `within` to say whether it
/// leads back here (one that does not answer in time is taken for another program).
fn other_amplihack_within(within: std::time::Duration) -> Result<Option<PathBuf>> {
    let excluded = excluded_binaries(
        &this_binary()?,
        std::env::var_os(FORWARDED_FROM_VAR).as_deref(),
    )?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Ok(
        find_others(std::env::var_os("PATH").as_deref(), &cwd, &excluded)
            .into_iter()
            .find(|candidate| !leads_back_here(candidate, &excluded, within)),
    )
}

/// The most `--version` waits for the other amplihack's own `--version` (and for each wrapper
/// to say whether it leads back here): a slow one (a first `uvx` run) must not hold it up.
const VERSION_ASK: std::time::Duration = std::time::Duration::from_secs(3);

/// What `--version` adds below this binary's version: the amplihack other commands go to
/// (path and its own version line), or that there is none and how to get it.
pub fn version_note() -> String {
    match other_amplihack_within(VERSION_ASK) {
        Ok(Some(program)) => {
            let cmd =
                crate::exec::Cmd::new(program.as_os_str(), vec!["--version".into()], VERSION_ASK);
            let theirs = match crate::exec::run_any_exit(&cmd) {
                Ok(out) => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(crate::ui::sanitize::line)
                    .unwrap_or_else(|| "its version unknown".into()),
                Err(Error::Timeout { seconds, .. }) => {
                    format!("its version unknown: no answer to --version within {seconds}s")
                }
                Err(_) => "its version unknown".into(),
            };
            format!(
                "Other commands (amplihack claude, launch, ...) go to {} ({theirs}).\n",
                crate::ui::sanitize::line(&program.to_string_lossy())
            )
        }
        Ok(None) => format!(
            "Other commands (amplihack claude, launch, ...): no other amplihack on PATH; {GET_THE_REST}.\n"
        ),
        Err(e) => format!("Other commands: {e}\n"),
    }
}

/// What `main` does with a command line clap refused or answered: `--version` prints this
/// binary's version and where other commands go; a Python original `remote` command
/// (`remote exec`, ...) is handed to the Python amplihack; anything else is clap's own message.
pub fn on_parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayVersion => {
            use std::io::Write;
            // Our own version at once; the other amplihack's may take a moment. A reader that
            // has gone by then (`--version | head -1`) ends it quietly, as for any command.
            let written = |text: &str| {
                let mut out = std::io::stdout().lock();
                match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
                    Err(_) => std::process::exit(1),
                }
            };
            written(&e.to_string());
            written(&version_note());
            std::process::exit(0);
        }
        ErrorKind::InvalidSubcommand => {
            let args: Vec<OsString> = std::env::args_os().skip(1).collect();
            let python_remote = args.first().is_some_and(|a| a == "remote")
                && args
                    .get(1)
                    .is_some_and(|c| PYTHON_REMOTE_COMMANDS.iter().any(|p| c == *p));
            if python_remote {
                let err = match exec_other_amplihack(args.clone()) {
                    Error::InvalidArgs(_) => Error::InvalidArgs(format!(
                        "'remote {}' is a command of the Python amplihack's `remote`, not of this one ({}), and no other amplihack is on PATH: {GET_THE_REST}",
                        args[1].to_string_lossy(),
                        "list, start, output, kill, status, prime, ..."
                    )),
                    other => other,
                };
                eprintln!("Error: {err}");
                std::process::exit(err.exit_code());
            }
            e.exit()
        }
        _ => e.exit(),
    }
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
    let marker = match marker_for(&excluded, &program) {
        Ok(m) => m,
        Err(e) => {
            return Error::Failed(format!(
                "cannot hand '{}' to {}: {e}",
                subcommand.to_string_lossy(),
                program.display()
            ));
        }
    };
    let err = crate::exec::replace_process(&program, &args, (FORWARDED_FROM_VAR, &marker));
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
