//! The local git side: the repository a session starts from (sent as a bundle of HEAD), the
//! secret scan of what is sent, and fetching a session's commits from a bundle (`pull`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{self, Cmd};
use crate::ui;

fn git(dir: &Path, args: &[&str], timeout: Duration) -> Result<exec::Output> {
    let mut argv = vec!["-C".to_string(), dir.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let cmd = Cmd::new("git", argv, timeout);
    let out = exec::run_any_exit(&cmd).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Failed("git is not installed; install git, or pass --no-context".into())
        }
        other => other,
    })?;
    Ok(out)
}

fn git_ok(dir: &Path, args: &[&str], timeout: Duration) -> Result<String> {
    let out = git(dir, args, timeout)?;
    if out.code != 0 {
        return Err(Error::CommandFailed {
            command: format!("git {}", args.join(" ")),
            status: Some(out.code),
            stderr: crate::transport::trim_stderr(&out.stderr_text()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// The top of the git repository holding `dir`, if any.
pub fn repo_root(dir: &Path, timeout: Duration) -> Result<Option<PathBuf>> {
    let out = git(dir, &["rev-parse", "--show-toplevel"], timeout)?;
    if out.code != 0 {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim_end(),
    )))
}

#[derive(Debug)]
pub struct RepoContext {
    pub root: PathBuf,
    pub head: String,
    pub bundle_name: String,
    pub bundle: Vec<u8>,
}

/// Bundles the committed HEAD of the repository around `cwd`, after the secret scan.
pub fn prepare(cwd: &Path, allow_secrets: bool, timeout: Duration) -> Result<RepoContext> {
    let Some(root) = repo_root(cwd, timeout)? else {
        return Err(Error::Failed(format!(
            "{} is not inside a git repository; run start from your project's repository to send it, or pass --no-context for an empty workspace",
            cwd.display()
        )));
    };
    let head = git_ok(&root, &["rev-parse", "--verify", "HEAD"], timeout).map_err(|_| {
        Error::Failed(format!(
            "the repository {} has no commits yet; commit something first, or pass --no-context",
            root.display()
        ))
    })?;
    let dirty = git_ok(
        &root,
        &["status", "--porcelain", "--untracked-files=no"],
        timeout,
    )?;
    if !dirty.is_empty() {
        ui::warn(&format!(
            "{} file(s) have uncommitted changes; only the committed HEAD ({}) is sent",
            dirty.lines().count(),
            &head[..head.len().min(12)]
        ));
    }
    if !allow_secrets {
        let findings = scan_secrets(&root, timeout)?;
        if !findings.is_empty() {
            return Err(Error::Failed(format!(
                "refusing to send the repository: likely secrets in tracked files: {}. Remove them from the commit, or pass --allow-secrets if they are not secret",
                findings.join("; ")
            )));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io("cannot create a temp directory", e))?;
    let file = dir.path().join("context.bundle");
    let file_arg = file.to_string_lossy().into_owned();
    let branch = git_ok(
        &root,
        &["symbolic-ref", "--quiet", "--short", "HEAD"],
        timeout,
    )
    .ok();
    let mut args = vec!["bundle", "create", "--quiet", file_arg.as_str(), "HEAD"];
    if let Some(b) = branch.as_deref() {
        args.push(b);
    }
    git_ok(&root, &args, timeout)?;
    let bundle = std::fs::read(&file).map_err(|e| Error::io("cannot read the git bundle", e))?;
    Ok(RepoContext {
        bundle_name: format!("{head}.bundle"),
        root,
        head,
        bundle,
    })
}

/// Patterns of likely secrets (extended regular expressions for `git grep`).
const SECRET_PATTERNS: &[(&str, &str)] = &[
    ("Anthropic API key", "sk-ant-[A-Za-z0-9_-]{20,}"),
    ("OpenAI API key", "sk-(proj-)?[A-Za-z0-9]{32,}"),
    (
        "GitHub token",
        "(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    ("AWS access key", "(AKIA|ASIA)[0-9A-Z]{16}"),
    ("Azure storage key", "AccountKey=[A-Za-z0-9+/]{40,}={0,2}"),
    (
        "Azure client secret",
        "[A-Za-z0-9_~.-]{3}8Q~[A-Za-z0-9_~.-]{31,34}",
    ),
    ("private key", "-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),
];

/// Shows the start of a secret and its length, never the secret.
pub fn mask(secret: &str) -> String {
    let shown: String = secret.chars().take(6).collect();
    format!("{shown}... ({} chars)", secret.chars().count())
}

/// True for tracked file names that hold secrets by convention.
pub fn is_secret_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with(".env") || name.ends_with(".pem") || name.ends_with(".key")
}

/// `file:line: kind (masked)` for every likely secret in the tracked files of HEAD.
pub fn scan_secrets(root: &Path, timeout: Duration) -> Result<Vec<String>> {
    let mut findings = Vec::new();
    let files = git_ok(root, &["ls-tree", "-r", "--name-only", "HEAD"], timeout)?;
    for f in files.lines().filter(|f| is_secret_file(f)) {
        findings.push(format!("{f}: secret file tracked"));
    }
    for (kind, pattern) in SECRET_PATTERNS {
        let out = git(
            root,
            &["grep", "-n", "-o", "-I", "-E", "-e", pattern, "HEAD", "--"],
            timeout,
        )?;
        if out.code > 1 {
            return Err(Error::CommandFailed {
                command: "git grep".into(),
                status: Some(out.code),
                stderr: crate::transport::trim_stderr(&out.stderr_text()),
            });
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // HEAD:path:line:match
            let mut parts = line.splitn(4, ':');
            if let (Some(_), Some(path), Some(lineno), Some(found)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                findings.push(format!("{path}:{lineno}: {kind} {}", mask(found)));
            }
        }
    }
    findings.sort();
    findings.dedup();
    Ok(findings)
}

pub struct Pulled {
    pub branch: String,
    /// The branch's tip: the session's head commit that came home.
    pub head: String,
    pub commits: u64,
    pub files_changed: u64,
}

/// Fetches the commits of the git bundle in `file` into `repo` as `branch` and counts what
/// came.
pub fn fetch_bundle_file(
    repo: &Path,
    file: &Path,
    base: &str,
    branch: &str,
    timeout: Duration,
) -> Result<Pulled> {
    let file_arg = file.to_string_lossy().into_owned();
    let refspec = format!("+HEAD:refs/heads/{branch}");
    git_ok(
        repo,
        &["fetch", "--quiet", "--no-tags", &file_arg, &refspec],
        timeout,
    )?;
    let head = git_ok(repo, &["rev-parse", "--verify", branch], timeout)?;
    let range = format!("{base}..{branch}");
    let commits = git_ok(repo, &["rev-list", "--count", &range], timeout)?
        .trim()
        .parse()
        .unwrap_or(0);
    let files = git_ok(repo, &["diff", "--name-only", base, branch], timeout)?;
    Ok(Pulled {
        branch: branch.into(),
        head,
        commits,
        files_changed: files.lines().count() as u64,
    })
}

/// `fetch_bundle_file` for a bundle in memory (a running session's commits so far).
pub fn fetch_bundle(
    repo: &Path,
    bundle: &[u8],
    base: &str,
    branch: &str,
    timeout: Duration,
) -> Result<Pulled> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("cannot create a temp directory", e))?;
    let file = dir.path().join("pull.bundle");
    std::fs::write(&file, bundle).map_err(|e| Error::io("cannot write the bundle", e))?;
    fetch_bundle_file(repo, &file, base, branch, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_secret_files() {
        assert_eq!(mask("sk-ant-abcdefghijklmnop"), "sk-ant... (23 chars)");
        assert!(is_secret_file(".env"));
        assert!(is_secret_file("config/.env.production"));
        assert!(is_secret_file("certs/server.pem"));
        assert!(is_secret_file("id.key"));
        assert!(!is_secret_file("src/keyboard.rs"));
        assert!(!is_secret_file("environment.md"));
    }
}
