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
            stderr: crate::remote::transport::trim_stderr(&out.stderr_text()),
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
    // A shallow clone's bundle lacks the history its commits need: the clone on the VM would
    // fail after the launch (after a VM was made for it), so refuse here.
    if git_ok(&root, &["rev-parse", "--is-shallow-repository"], timeout)? == "true" {
        return Err(Error::Failed(format!(
            "the repository {} is a shallow clone, whose history cannot be sent whole; run 'git fetch --unshallow' first, or pass --no-context",
            root.display()
        )));
    }
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
                "refusing to send the repository: likely secrets in what would be sent (HEAD and its history): {}. Remove them from the commits (a secret only in history needs the history rewritten, e.g. git filter-repo), pass --no-context to send nothing, or --allow-secrets if they are not secret",
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

/// Patterns of likely secrets (regular expressions over a file's bytes).
const SECRET_PATTERNS: &[(&str, &str)] = &[
    ("Anthropic API key", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    ("OpenAI API key", r"sk-(proj-)?[A-Za-z0-9]{32,}"),
    (
        "GitHub token",
        r"(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    ("AWS access key", r"(AKIA|ASIA)[0-9A-Z]{16}"),
    ("Azure storage key", r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}"),
    (
        "Azure client secret",
        r"[A-Za-z0-9_~.-]{3}8Q~[A-Za-z0-9_~.-]{31,34}",
    ),
    ("private key", r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),
];

/// Shows the start of a secret and its length, never the secret.
pub fn mask(secret: &str) -> String {
    let shown: String = secret.chars().take(6).collect();
    format!("{shown}... ({} chars)", secret.chars().count())
}

/// True for file names that hold secrets by convention: dotenv files (`.env`, `.env.local`,
/// `creds.env`; not the `.example`, `.sample` and `.template` ones meant to be committed),
/// keys and certificates with their private part (`*.pem`, `*.key`, `*.p12`, `*.pfx`, Java
/// keystores), ssh private keys (`id_rsa`, `id_ed25519`, ...), cloud credential files
/// (`credentials.json`, `credentials`, `service-account*.json`), `.netrc`, `.pgpass` and
/// `secrets.{json,yml,yaml}`.
pub fn is_secret_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let template = [".example", ".sample", ".template", ".dist"]
        .iter()
        .any(|t| name.ends_with(t));
    let dotenv = name == ".env" || name.starts_with(".env.") || name.ends_with(".env");
    let key_file = [".pem", ".key", ".p12", ".pfx", ".jks", ".keystore"]
        .iter()
        .any(|e| name.ends_with(e));
    let ssh_key = ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].contains(&name.as_str());
    let credentials = matches!(
        name.as_str(),
        "credentials.json"
            | "credentials"
            | ".git-credentials"
            | "kubeconfig"
            | ".netrc"
            | ".pgpass"
            | "secrets.json"
            | "secrets.yml"
            | "secrets.yaml"
    ) || (name.starts_with("service-account") && name.ends_with(".json"));
    !template && (dotenv || key_file || ssh_key || credentials)
}

/// A blob git would call binary (a NUL in its first 8000 bytes). It is searched all the same
/// (a token in a text file with one NUL byte, or in a compiled file, reaches the VM as well),
/// and its findings name no line.
fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(8000)].contains(&0)
}

/// Every blob the history of `rev` holds (so every blob a bundle of it carries), each once,
/// with the first path it was seen at: (blob id, path). One `git rev-list`.
fn history_blobs(root: &Path, rev: &str, timeout: Duration) -> Result<Vec<(String, String)>> {
    let listing = git_ok(root, &["rev-list", "--objects", rev], timeout)?;
    let mut seen = std::collections::HashSet::new();
    Ok(listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, path)| !path.is_empty())
        .filter(|(id, _)| seen.insert(id.to_string()))
        .map(|(id, path)| (id.to_string(), path.to_string()))
        .collect())
}

/// `git cat-file MODE` in `root` with `input` (one object name a line) on its stdin: its stdout.
fn cat_file(root: &Path, mode: &str, input: String, timeout: Duration) -> Result<Vec<u8>> {
    let argv = vec![
        "-C".to_string(),
        root.to_string_lossy().into_owned(),
        "cat-file".into(),
        mode.into(),
    ];
    let out = exec::run_any_exit(&Cmd::new("git", argv, timeout).stdin(input.into_bytes()))?;
    if out.code != 0 {
        return Err(Error::CommandFailed {
            command: format!("git cat-file {mode}"),
            status: Some(out.code),
            stderr: crate::remote::transport::trim_stderr(&out.stderr_text()),
        });
    }
    Ok(out.stdout)
}

/// Reads the objects `ids` (one `git cat-file --batch`) and calls `each` with the id, type and
/// contents of each.
fn read_objects(
    root: &Path,
    ids: &[&str],
    timeout: Duration,
    mut each: impl FnMut(&str, &str, &[u8]),
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut input = ids.join("\n");
    input.push('\n');
    let stdout = cat_file(root, "--batch", input, timeout)?;
    // Each object: "<id> <type> <size>\n<contents>\n".
    let mut rest = stdout.as_slice();
    while let Some(eol) = rest.iter().position(|b| *b == b'\n') {
        let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
        rest = &rest[eol + 1..];
        let mut words = header.split(' ');
        let (Some(id), Some(kind), Some(size)) = (words.next(), words.next(), words.next()) else {
            continue; // "<id> missing"
        };
        let size: usize = size.parse().unwrap_or(0).min(rest.len());
        each(id, kind, &rest[..size]);
        rest = &rest[(size + 1).min(rest.len())..];
    }
    Ok(())
}

/// `path[:line]: what` for every likely secret in what a bundle of HEAD sends: every blob of
/// its history, not only HEAD's files, since the VM receives the whole history (a key
/// committed and deleted later is still in it). Secret-looking file names are findings
/// whatever their contents. A finding only in history says so, with the way to remove it.
pub fn scan_secrets(root: &Path, timeout: Duration) -> Result<Vec<String>> {
    let patterns: Vec<(&str, regex::bytes::Regex)> = SECRET_PATTERNS
        .iter()
        .map(|(kind, p)| (*kind, regex::bytes::Regex::new(p).expect("a valid pattern")))
        .collect();
    let in_head: std::collections::HashSet<String> =
        git_ok(root, &["ls-tree", "-r", "HEAD"], timeout)?
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
            .collect();
    let blobs = history_blobs(root, "HEAD", timeout)?;
    let path_of: std::collections::HashMap<&str, &str> = blobs
        .iter()
        .map(|(id, path)| (id.as_str(), path.as_str()))
        .collect();
    let where_ = |id: &str| {
        if in_head.contains(id) {
            ""
        } else {
            " (in an earlier commit only: it is in the history sent)"
        }
    };
    let mut findings = Vec::new();
    let ids: Vec<&str> = blobs.iter().map(|(id, _)| id.as_str()).collect();
    read_objects(root, &ids, timeout, |id, kind, data| {
        if kind != "blob" {
            return;
        }
        let path = path_of.get(id).copied().unwrap_or("?");
        if is_secret_file(path) {
            findings.push(format!("{path}: secret file committed{}", where_(id)));
        }
        let binary = is_binary(data);
        for (kind, re) in &patterns {
            for m in re.find_iter(data) {
                let at = if binary {
                    " (a binary file)".to_string()
                } else {
                    let line = data[..m.start()].iter().filter(|b| **b == b'\n').count() + 1;
                    format!(":{line}")
                };
                let found = String::from_utf8_lossy(m.as_bytes());
                findings.push(format!("{path}{at}: {kind} {}{}", mask(&found), where_(id)));
            }
        }
    })?;
    // Commit messages travel in the bundle too.
    let commits = git_ok(root, &["rev-list", "HEAD"], timeout)?;
    let commit_ids: Vec<&str> = commits.lines().collect();
    read_objects(root, &commit_ids, timeout, |id, kind, data| {
        if kind != "commit" {
            return;
        }
        for (kind, re) in &patterns {
            for m in re.find_iter(data) {
                findings.push(format!(
                    "the message of commit {}: {kind} {}",
                    &id[..id.len().min(12)],
                    mask(&String::from_utf8_lossy(m.as_bytes()))
                ));
            }
        }
    })?;
    findings.sort();
    findings.dedup();
    Ok(findings)
}

/// What `pull` did to the branch it fetched into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchMove {
    /// The branch did not exist: created at the session's head.
    Created,
    /// The branch already pointed at the session's head: left alone.
    UpToDate,
    /// The branch was behind the session's head: moved forward, nothing lost.
    FastForward,
    /// The branch was where the last pull left it but the session rewrote its history, or
    /// `--force` was given: moved to the session's head (what it held stays in the reflog).
    Reset,
}

/// Where a pull may put a session's head. A branch the user moved is never moved again
/// unless `force`: it is fast-forwarded, or the pull is refused.
pub struct Target<'a> {
    pub branch: &'a str,
    /// The commit the last pull of this session left the branch at.
    pub last_pulled: Option<&'a str>,
    pub force: bool,
}

/// Decides how to move the branch (pure): `existing` is its tip (None: no such branch),
/// `new` the session's head, `behind` whether `existing` is an ancestor of `new`.
/// None: refused, the branch holds commits the session does not have.
pub fn branch_move(
    existing: Option<&str>,
    new: &str,
    behind: bool,
    last_pulled: Option<&str>,
    force: bool,
) -> Option<BranchMove> {
    match existing {
        None => Some(BranchMove::Created),
        Some(e) if e == new => Some(BranchMove::UpToDate),
        Some(_) if behind => Some(BranchMove::FastForward),
        Some(e) if force || Some(e) == last_pulled => Some(BranchMove::Reset),
        Some(_) => None,
    }
}

/// Why a pull leaves `branch` alone: it holds commits the session does not have, moved there
/// after a pull of this session (`was_pulled`), or a branch of the user's that was there
/// before (an existing name, `--branch NAME` of another branch).
fn refused_branch(branch: &str, was_pulled: bool) -> String {
    let why = if was_pulled {
        "it was moved after it was pulled"
    } else {
        "it existed before this session was pulled into it"
    };
    format!(
        "branch {branch} holds commits that are not the session's ({why}): left as it is. Pass --force to reset it to the session's commits (what it holds stays in the reflog), or --branch NAME to fetch into a new branch"
    )
}

pub struct Pulled {
    pub branch: String,
    /// The branch's tip: the session's head commit that came home.
    pub head: String,
    pub commits: u64,
    pub files_changed: u64,
    pub moved: BranchMove,
}

/// Which of `commits` the repository at `repo` holds, in one git call: how `pull` recognises
/// the repository a session was started from (a moved repository or another clone holds the
/// commit the session started from; an unrelated one does not).
pub fn commits_present(
    repo: &Path,
    commits: &[&str],
    timeout: Duration,
) -> Result<std::collections::HashSet<String>> {
    let mut present = std::collections::HashSet::new();
    let asked: Vec<&str> = commits
        .iter()
        .copied()
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    if asked.is_empty() {
        return Ok(present);
    }
    let mut input = String::new();
    for c in &asked {
        input.push_str(c);
        input.push_str("^{commit}\n");
    }
    let stdout = cat_file(repo, "--batch-check=%(objectname)", input, timeout)?;
    // One answer line per question, in order: the object's name, or "<name> missing".
    for (asked, answer) in asked.iter().zip(String::from_utf8_lossy(&stdout).lines()) {
        if !answer.ends_with(" missing") && !answer.contains(' ') {
            present.insert((*asked).to_string());
        }
    }
    Ok(present)
}

/// The worktree, if any, that has `branch` checked out.
pub fn checked_out_in(repo: &Path, branch: &str, timeout: Duration) -> Result<Option<String>> {
    let list = git_ok(repo, &["worktree", "list", "--porcelain"], timeout)?;
    let mut worktree = None;
    for line in list.lines() {
        if let Some(w) = line.strip_prefix("worktree ") {
            worktree = Some(w.to_string());
        } else if line.strip_prefix("branch ") == Some(&format!("refs/heads/{branch}")) {
            return Ok(worktree);
        }
    }
    Ok(None)
}

/// Fetches the commits of the git bundle in `file` into `repo` and puts its head on the
/// target branch, never moving a branch the user moved (see `branch_move`), and counts what
/// came.
pub fn fetch_bundle_file(
    repo: &Path,
    file: &Path,
    base: &str,
    target: &Target,
    timeout: Duration,
) -> Result<Pulled> {
    let file_arg = file.to_string_lossy().into_owned();
    let branch = target.branch;
    let heads = git_ok(repo, &["bundle", "list-heads", &file_arg, "HEAD"], timeout)?;
    let new = heads
        .split_whitespace()
        .next()
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Failed(format!("the bundle {file_arg} has no HEAD")))?
        .to_string();
    git_ok(
        repo,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            &file_arg,
            "HEAD",
        ],
        timeout,
    )?;
    let full_ref = format!("refs/heads/{branch}");
    let existing = git(
        repo,
        &["rev-parse", "--verify", "--quiet", &full_ref],
        timeout,
    )?;
    let existing =
        (existing.code == 0).then(|| String::from_utf8_lossy(&existing.stdout).trim().to_string());
    let behind = match existing.as_deref() {
        Some(e) if e != new => {
            git(repo, &["merge-base", "--is-ancestor", e, &new], timeout)?.code == 0
        }
        _ => false,
    };
    let Some(moved) = branch_move(
        existing.as_deref(),
        &new,
        behind,
        target.last_pulled,
        target.force,
    ) else {
        return Err(Error::Failed(refused_branch(
            branch,
            target.last_pulled.is_some(),
        )));
    };
    match moved {
        BranchMove::UpToDate => {}
        BranchMove::Created => {
            git_ok(
                repo,
                &["update-ref", "-m", "amplihack pull", &full_ref, &new, ""],
                timeout,
            )?;
        }
        BranchMove::FastForward | BranchMove::Reset => {
            let old = existing.as_deref().unwrap_or_default();
            if let Some(worktree) = checked_out_in(repo, branch, timeout)? {
                let here = repo.canonicalize().ok();
                let there = Path::new(&worktree).canonicalize().ok();
                if moved == BranchMove::Reset || here != there {
                    return Err(Error::Failed(format!(
                        "branch {branch} is checked out in {worktree}, so pull will not move it: switch that worktree to another branch, or pass --branch NAME to fetch into a new branch"
                    )));
                }
                // Checked out here: a fast-forward merge moves the branch and the files
                // together (git refuses if that would overwrite local changes).
                git_ok(repo, &["merge", "--ff-only", "--quiet", &new], timeout)?;
            } else {
                git_ok(
                    repo,
                    &["update-ref", "-m", "amplihack pull", &full_ref, &new, old],
                    timeout,
                )?;
            }
        }
    }
    let range = format!("{base}..{new}");
    let commits = git_ok(repo, &["rev-list", "--count", &range], timeout)?
        .trim()
        .parse()
        .unwrap_or(0);
    let files = git_ok(repo, &["diff", "--name-only", base, &new], timeout)?;
    Ok(Pulled {
        branch: branch.into(),
        head: new,
        commits,
        files_changed: files.lines().count() as u64,
        moved,
    })
}

/// `fetch_bundle_file` for a bundle in memory (a running session's commits so far).
pub fn fetch_bundle(
    repo: &Path,
    bundle: &[u8],
    base: &str,
    target: &Target,
    timeout: Duration,
) -> Result<Pulled> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("cannot create a temp directory", e))?;
    let file = dir.path().join("pull.bundle");
    std::fs::write(&file, bundle).map_err(|e| Error::io("cannot write the bundle", e))?;
    fetch_bundle_file(repo, &file, base, target, timeout)
}

/// Brings the commits of `bundles` (each building on the ones before it, the first on a
/// commit `repo` has) into `repo`'s objects without touching any branch: what a follow-up's
/// own bundle builds on (its parent's commits, and theirs).
pub fn fetch_objects(repo: &Path, bundles: &[PathBuf], timeout: Duration) -> Result<()> {
    for bundle in bundles {
        let file = bundle.to_string_lossy().into_owned();
        git_ok(
            repo,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                &file,
                "HEAD",
            ],
            timeout,
        )?;
    }
    Ok(())
}

/// A git bundle of `head`'s whole history, built from `repo` and the commits of `bundles`
/// (see `fetch_objects`) in a scratch repository that borrows `repo`'s objects, so `repo`
/// gains no ref and no object. Its one ref is `refs/heads/restore`.
pub fn history_bundle(
    repo: &Path,
    bundles: &[PathBuf],
    head: &str,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let objects = git_ok(
        repo,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
        ],
        timeout,
    )?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("cannot create a temp directory", e))?;
    let scratch = dir.path().join("scratch.git");
    let scratch_arg = scratch.to_string_lossy().into_owned();
    git_ok(
        dir.path(),
        &["init", "--quiet", "--bare", &scratch_arg],
        timeout,
    )?;
    std::fs::write(
        scratch.join("objects/info/alternates"),
        format!("{objects}\n"),
    )
    .map_err(|e| Error::io("cannot write a scratch repository", e))?;
    fetch_objects(&scratch, bundles, timeout)?;
    let commit = format!("{head}^{{commit}}");
    git_ok(&scratch, &["rev-parse", "--verify", "--quiet", &commit], timeout).map_err(|_| {
        Error::Failed(format!(
            "commit {head} is neither in {} nor in the archived commits; the history the session built on is gone",
            repo.display()
        ))
    })?;
    git_ok(
        &scratch,
        &["update-ref", "refs/heads/restore", head],
        timeout,
    )?;
    let file = dir.path().join("workspace.bundle");
    let file_arg = file.to_string_lossy().into_owned();
    git_ok(
        &scratch,
        &[
            "bundle",
            "create",
            "--quiet",
            &file_arg,
            "refs/heads/restore",
        ],
        timeout,
    )?;
    std::fs::read(&file).map_err(|e| Error::io("cannot read the workspace bundle", e))
}

/// The remote a branch is pushed to for a pull request: `origin`, else the repository's only
/// remote.
pub fn push_remote(repo: &Path, timeout: Duration) -> Result<String> {
    let remotes = git_ok(repo, &["remote"], timeout)?;
    let remotes: Vec<&str> = remotes.lines().filter(|l| !l.is_empty()).collect();
    if remotes.contains(&"origin") {
        return Ok("origin".into());
    }
    match remotes.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(Error::Failed(format!(
            "{} has no remote to push the branch to: add one (git remote add origin URL), then pull --pr again",
            repo.display()
        ))),
        many => Err(Error::Failed(format!(
            "{} has several remotes ({}) and none is called origin: name the one to push to origin (git remote rename NAME origin), then pull --pr again",
            repo.display(),
            many.join(", ")
        ))),
    }
}

/// Pushes `branch` to `remote` under the same name, never asking for credentials on a
/// terminal (a pull request needs it on the remote).
pub fn push_branch(repo: &Path, remote: &str, branch: &str, timeout: Duration) -> Result<()> {
    let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
    let argv: Vec<String> = [
        "-C",
        &repo.to_string_lossy(),
        "push",
        "--quiet",
        remote,
        &refspec,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let out = exec::run_any_exit(
        &Cmd::new("git", argv, timeout)
            .env("GIT_TERMINAL_PROMPT", "0")
            .on_interrupt(exec::OnInterrupt::FinishUnlessRepeated),
    )?;
    if out.code != 0 {
        return Err(Error::CommandFailed {
            command: format!("git push {remote} {refspec}"),
            status: Some(out.code),
            stderr: crate::remote::transport::trim_stderr(&out.stderr_text()),
        });
    }
    Ok(())
}

/// `- <short hash> <subject>` per commit of `base..head`, oldest first.
pub fn commit_list(repo: &Path, base: &str, head: &str, timeout: Duration) -> Result<String> {
    let range = format!("{base}..{head}");
    git_ok(
        repo,
        &["log", "--reverse", "--format=- %h %s", &range],
        timeout,
    )
}

/// `git diff --stat` of `base..head`.
pub fn diffstat(repo: &Path, base: &str, head: &str, timeout: Duration) -> Result<String> {
    git_ok(repo, &["diff", "--stat", base, head], timeout)
}

/// Files changed, lines inserted and deleted between `base` and `head` (a binary file counts
/// as a file without lines).
pub fn change_totals(
    repo: &Path,
    base: &str,
    head: &str,
    timeout: Duration,
) -> Result<crate::core::model::Changes> {
    let numstat = git_ok(repo, &["diff", "--numstat", base, head], timeout)?;
    let mut c = crate::core::model::Changes::default();
    for line in numstat.lines() {
        let mut f = line.split('\t');
        let (Some(ins), Some(del), Some(_)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        c.files += 1;
        c.insertions += ins.parse::<u64>().unwrap_or(0);
        c.deletions += del.parse::<u64>().unwrap_or(0);
    }
    Ok(c)
}

/// Whether `branch` exists in `repo`.
pub fn branch_exists(repo: &Path, branch: &str, timeout: Duration) -> Result<bool> {
    let full = format!("refs/heads/{branch}");
    Ok(git(repo, &["rev-parse", "--verify", "--quiet", &full], timeout)?.code == 0)
}

/// A new worktree of `repo` at `path` with `branch` checked out; the branch is created at
/// `start` when it does not exist.
pub fn add_worktree(
    repo: &Path,
    path: &Path,
    branch: &str,
    start: &str,
    timeout: Duration,
) -> Result<()> {
    let path_arg = path.to_string_lossy().into_owned();
    if branch_exists(repo, branch, timeout)? {
        git_ok(
            repo,
            &["worktree", "add", "--quiet", &path_arg, branch],
            timeout,
        )?;
    } else {
        git_ok(
            repo,
            &["worktree", "add", "--quiet", "-b", branch, &path_arg, start],
            timeout,
        )?;
    }
    Ok(())
}

/// Removes the worktree at `path` whatever state it is in (registered or not, half checked
/// out, with changes), and forgets it: what a `pull --resume` that died left behind.
pub fn discard_worktree(repo: &Path, path: &Path, timeout: Duration) -> Result<()> {
    let path_arg = path.to_string_lossy().into_owned();
    // Twice --force: a worktree git itself locked while it was being added is removed too.
    let _ = git(
        repo,
        &["worktree", "remove", "--force", "--force", &path_arg],
        timeout,
    )?;
    if path.exists() {
        std::fs::remove_dir_all(path)
            .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
    }
    // Still registered (its directory was gone, so git would not remove it): prune, which
    // forgets only worktrees whose directory is gone.
    let list = git_ok(repo, &["worktree", "list", "--porcelain"], timeout)?;
    if list
        .lines()
        .any(|l| l.strip_prefix("worktree ") == Some(path_arg.as_str()))
    {
        git_ok(repo, &["worktree", "prune"], timeout)?;
    }
    Ok(())
}

/// Moves the worktree at `from` to `to` (which must not exist), git's records with it.
pub fn move_worktree(repo: &Path, from: &Path, to: &Path, timeout: Duration) -> Result<()> {
    let from_arg = from.to_string_lossy().into_owned();
    let to_arg = to.to_string_lossy().into_owned();
    git_ok(repo, &["worktree", "move", &from_arg, &to_arg], timeout).map(drop)
}

/// Applies a binary git patch (`uncommitted.patch` of an archive) to the work tree at `dir`,
/// leaving the index alone: edits stay edits, new files stay untracked.
pub fn apply_patch(dir: &Path, patch: &Path, timeout: Duration) -> Result<()> {
    let patch_arg = patch.to_string_lossy().into_owned();
    git_ok(
        dir,
        &["apply", "--binary", "--whitespace=nowarn", &patch_arg],
        timeout,
    )
    .map(drop)
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
        assert!(is_secret_file("deploy/creds.env"));
        assert!(is_secret_file("home/.ssh/id_rsa"));
        assert!(is_secret_file("id_ed25519"));
        assert!(!is_secret_file("id_ed25519.pub"));
        assert!(is_secret_file("gcp/credentials.json"));
        assert!(is_secret_file("service-account-prod.json"));
        assert!(is_secret_file("certs/Store.P12"));
        assert!(!is_secret_file(".env.example"));
        assert!(!is_secret_file("src/keyboard.rs"));
        assert!(!is_secret_file("environment.md"));
        assert!(!is_secret_file("src/secrets.rs"));
    }

    #[test]
    fn a_refused_branch_says_whether_a_pull_made_it() {
        assert!(refused_branch("b", true).contains("(it was moved after it was pulled)"));
        let never = refused_branch("b", false);
        assert!(
            never.contains("(it existed before this session was pulled into it)"),
            "{never}"
        );
        assert!(!never.contains("after it was pulled"), "{never}");
    }

    #[test]
    fn a_pull_never_moves_a_branch_the_user_moved() {
        use BranchMove::*;
        assert_eq!(branch_move(None, "n", false, None, false), Some(Created));
        assert_eq!(
            branch_move(Some("n"), "n", false, None, false),
            Some(UpToDate)
        );
        assert_eq!(
            branch_move(Some("o"), "n", true, None, false),
            Some(FastForward)
        );
        // The session rewrote its history and the branch is where the last pull left it.
        assert_eq!(
            branch_move(Some("o"), "n", false, Some("o"), false),
            Some(Reset)
        );
        // The user committed on it (or moved it): refused unless forced.
        assert_eq!(branch_move(Some("u"), "n", false, Some("o"), false), None);
        assert_eq!(branch_move(Some("u"), "n", false, None, false), None);
        assert_eq!(branch_move(Some("u"), "n", false, None, true), Some(Reset));
    }
}
