//! `pull --pr`: after the commits came home as a branch, the branch is pushed to the
//! repository's remote and a pull request opened with `gh pr create`, whose title is the
//! prompt's first line and whose body is the session's report. The URL is recorded in the
//! state (`pr_url`): a second `--pr` prints it and opens nothing. Flow: docs/results.md.

use std::path::Path;

use crate::context;
use crate::core::model::{Backend, Changes, Session, State};
use crate::core::pool::{LOCAL_VM_NAME, PriceTable};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::exec::{self, Cmd};
use crate::ui;
use crate::ui::report::{changes_text, duration_text};

/// GitHub's title is best kept short: the prompt's first line, cut at this many characters.
const TITLE_CHARS: usize = 72;

/// The title of a session's pull request: its prompt's first non-empty line, trimmed, cut at
/// 72 characters.
pub fn title(prompt: &str) -> String {
    let line = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("amplihack session");
    line.chars()
        .take(TITLE_CHARS)
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// What a pull request's body tells about its session.
#[derive(Debug, Clone, Default)]
pub struct BodyFacts<'a> {
    pub session_id: &'a str,
    pub parent_session_id: Option<&'a str>,
    pub prompt: &'a str,
    pub status: String,
    pub exit_code: Option<i32>,
    pub duration_seconds: Option<i64>,
    pub commits: u64,
    pub changes: Option<Changes>,
    /// `- <hash> <subject>` lines.
    pub commit_list: String,
    pub diffstat: String,
    pub cost: String,
}

/// A fence for `text` in Markdown: longer than any run of backticks inside it.
fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

/// The body of a session's pull request (Markdown): its prompt, status, duration, commits,
/// diffstat and cost.
pub fn body(f: &BodyFacts) -> String {
    let mut out = format!(
        "Opened by `amplihack remote pull --pr` from session `{}`",
        f.session_id
    );
    if let Some(parent) = f.parent_session_id {
        out.push_str(&format!(" (a follow-up of `{parent}`)"));
    }
    out.push_str(".\n\n## Prompt\n\n");
    let fence = fence_for(f.prompt);
    out.push_str(&format!("{fence}text\n{}\n{fence}\n\n", f.prompt));
    let status = match f.exit_code {
        Some(code) => format!("{} (exit {code})", f.status),
        None => f.status.clone(),
    };
    out.push_str("| | |\n|---|---|\n");
    out.push_str(&format!("| Status | {status} |\n"));
    out.push_str(&format!(
        "| Duration | {} |\n",
        f.duration_seconds
            .map_or_else(|| "unknown".into(), duration_text)
    ));
    out.push_str(&format!("| Commits | {} |\n", f.commits));
    out.push_str(&format!(
        "| Changes | {} |\n",
        f.changes
            .as_ref()
            .map_or_else(|| "unknown".into(), changes_text)
    ));
    out.push_str(&format!("| Cost | {} |\n", f.cost));
    if !f.commit_list.is_empty() {
        out.push_str(&format!("\n## Commits\n\n{}\n", f.commit_list));
    }
    if !f.diffstat.is_empty() {
        out.push_str(&format!("\n## Diffstat\n\n```\n{}\n```\n", f.diffstat));
    }
    out
}

/// What the session cost, as `report` counts it: its VM's hourly price for its duration,
/// divided by the VM's slots (its share of the VM).
pub fn cost_text(
    backend: Option<Backend>,
    vm: Option<(&str, u32)>,
    prices: &PriceTable,
    duration_seconds: Option<i64>,
) -> String {
    if backend == Some(Backend::Local) {
        return "$0 (this machine)".into();
    }
    let Some((sku, slots)) = vm else {
        return "unknown (its VM is no longer in the pool)".into();
    };
    let slots = slots.max(1);
    let Some(hourly) = prices.hourly_usd(sku) else {
        return format!("unknown (no price for {sku})");
    };
    let Some(seconds) = duration_seconds else {
        return format!("unknown duration on {sku} at ${hourly:.3}/h");
    };
    let usd = hourly * seconds.max(0) as f64 / 3600.0 / f64::from(slots);
    format!(
        "about ${usd:.2} (its share of a {sku} at ${hourly:.3}/h with {slots} slot(s), for {})",
        duration_text(seconds)
    )
}

/// One session whose branch came home, as `pull` hands it over.
pub struct Pulled<'a> {
    pub session: &'a Session,
    pub branch: String,
    /// The chain's start commit (what its commits count from).
    pub base: String,
    /// Its branch's head; `None`: it has no commits.
    pub head: Option<String>,
}

/// Checks `gh` is installed and logged in: what to run otherwise.
fn check_gh(ctx: &Ctx) -> Result<()> {
    let cmd = Cmd::new(
        "gh",
        vec!["auth".into(), "status".into()],
        ctx.settings.timeouts.local_git,
    );
    match exec::run_any_exit(&cmd) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::Failed(
                "gh (the GitHub CLI) is not on PATH: install it (https://cli.github.com), run 'gh auth login', then pull --pr again; the branch is home".into(),
            ))
        }
        Err(e) => Err(e),
        Ok(out) if out.code != 0 => Err(Error::Failed(
            "gh is not logged in: run 'gh auth login', then pull --pr again; the branch is home"
                .into(),
        )),
        Ok(_) => Ok(()),
    }
}

fn facts_of<'a>(ctx: &Ctx, state: &State, p: &'a Pulled, repo: &Path) -> BodyFacts<'a> {
    let s = p.session;
    let result = ctx.archive.result(&s.session_id).ok().flatten();
    let duration_seconds = result
        .as_ref()
        .and_then(|r| r.duration_seconds)
        .or_else(|| Some((s.completed_at? - s.started_at?).num_seconds()));
    let timeout = ctx.settings.timeouts.local_git;
    let head = p.head.as_deref().unwrap_or_default();
    let commit_list = context::commit_list(repo, &p.base, head, timeout).unwrap_or_default();
    let vm = state.vm_pool.get(&s.vm_name);
    let backend = vm
        .map(|v| v.backend)
        .or((s.vm_name == LOCAL_VM_NAME).then_some(Backend::Local));
    BodyFacts {
        session_id: &s.session_id,
        parent_session_id: s.parent_session_id(),
        prompt: &s.prompt,
        status: s.status.to_string(),
        exit_code: s.exit_code,
        duration_seconds,
        commits: commit_list.lines().count() as u64,
        changes: context::change_totals(repo, &p.base, head, timeout).ok(),
        diffstat: context::diffstat(repo, &p.base, head, timeout).unwrap_or_default(),
        commit_list,
        cost: cost_text(
            backend,
            vm.map(|v| (v.size.as_str(), v.capacity)),
            &ctx.settings.prices,
            duration_seconds,
        ),
    }
}

/// The URL `gh pr create` printed: its last line that looks like one.
fn url_of(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("https://") || l.starts_with("http://"))
        .map(str::to_string)
}

/// How the pull requests are opened: `--draft`, `--base BRANCH`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub draft: bool,
    pub base: Option<String>,
}

fn open_one(
    ctx: &Ctx,
    state: &State,
    p: &Pulled,
    repo: &Path,
    remote: &str,
    options: &Options,
) -> Result<(String, bool)> {
    let timeout = ctx.settings.timeouts.local_git;
    let s = p.session;
    context::push_branch(repo, remote, &p.branch, timeout)?;
    let mut argv: Vec<String> = vec![
        "pr".into(),
        "create".into(),
        "--head".into(),
        p.branch.clone(),
        "--title".into(),
        title(&s.prompt),
        "--body".into(),
        body(&facts_of(ctx, state, p, repo)),
    ];
    if options.draft {
        argv.push("--draft".into());
    }
    if let Some(base) = &options.base {
        argv.extend(["--base".into(), base.clone()]);
    }
    // gh finds the repository from the current directory, which `pull` requires to be in it.
    let cmd = Cmd::new("gh", argv, timeout).on_interrupt(exec::OnInterrupt::FinishUnlessRepeated);
    let out = exec::run_any_exit(&cmd)?;
    // One open pull request per branch: one opened before without our record of it (another
    // machine's pull --pr, a state rebuilt by sync, by hand) is adopted, not an error.
    let existing = (out.code != 0)
        .then(|| already_open(&out.stderr_text()))
        .flatten();
    if out.code != 0 && existing.is_none() {
        return Err(Error::CommandFailed {
            command: format!("gh pr create --head {}", p.branch),
            status: Some(out.code),
            stderr: crate::remote::transport::trim_stderr(&out.stderr_text()),
        });
    }
    let opened = existing.is_none();
    let url = match existing {
        Some(url) => url,
        None => url_of(&out.stdout).ok_or_else(|| {
            Error::Failed(format!(
                "gh pr create printed no URL for branch {}",
                p.branch
            ))
        })?,
    };
    ctx.store.update(|st| {
        if let Some(rec) = st.sessions.get_mut(&s.session_id) {
            rec.set_pr(&url, &p.branch);
        }
        Ok(())
    })?;
    Ok((url, opened))
}

/// The URL of the open pull request `gh pr create` names when it refuses a second one for
/// the same branch (`a pull request for branch "B" into branch "main" already exists:\nURL`).
fn already_open(stderr: &str) -> Option<String> {
    if !stderr.contains("already exists") {
        return None;
    }
    url_of(stderr.as_bytes())
}

/// Opens a pull request for each pulled session that has commits and none yet; says what it
/// did for each on stdout. The first failure is returned after all were tried.
pub fn open_all(
    ctx: &Ctx,
    state: &State,
    pulled: &[Pulled],
    repo: &Path,
    options: &Options,
) -> Result<()> {
    let mut text = String::new();
    let mut to_open: Vec<&Pulled> = Vec::new();
    let mut first_error = None;
    for p in pulled {
        let id = &p.session.session_id;
        if let Some(url) = p.session.pr_url() {
            // One pull request per session: a pull into another branch (--branch) does not
            // open a second one, and says so.
            match p.session.pr_branch() {
                Some(from) if from != p.branch => text.push_str(&format!(
                    "Pull request of {id} (opened before from branch {from}; nothing new opened, branch {} is home only): {url}\n",
                    p.branch
                )),
                _ => text.push_str(&format!(
                    "Pull request of {id} (opened before, nothing new opened): {url}\n"
                )),
            }
        } else if p.session.status.is_active() {
            let e = Error::Failed(format!(
                "session {id} is still {}: its commits so far are on branch {}; open its pull request once it has ended",
                p.session.status, p.branch
            ));
            ui::warn(&format!("{id}: no pull request: {e}"));
            first_error.get_or_insert(e);
        } else if p.head.is_none() {
            text.push_str(&format!(
                "No pull request for {id}: it has no commits, so there is nothing to propose.\n"
            ));
        } else {
            to_open.push(p);
        }
    }
    if !to_open.is_empty() {
        let ready = check_gh(ctx)
            .and_then(|()| context::push_remote(repo, ctx.settings.timeouts.local_git));
        match ready {
            Err(e) => first_error = Some(e),
            Ok(remote) => {
                for p in to_open {
                    let id = &p.session.session_id;
                    match open_one(ctx, state, p, repo, &remote, options) {
                        Ok((url, true)) => {
                            text.push_str(&format!("Opened pull request of {id}: {url}\n"))
                        }
                        Ok((url, false)) => text.push_str(&format!(
                            "Pull request of {id} (open already for branch {}, nothing new opened): {url}\n",
                            p.branch
                        )),
                        Err(e) => {
                            ui::warn(&format!("{id}: no pull request: {e}"));
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
    }
    ui::print_text(&text)?;
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_request_gh_says_is_open_already_is_adopted() {
        let said = "a pull request for branch \"amplihack/sess-1\" into branch \"main\" already exists:\nhttps://github.com/o/r/pull/7\n";
        assert_eq!(
            already_open(said).as_deref(),
            Some("https://github.com/o/r/pull/7")
        );
        assert_eq!(
            already_open("pull request create failed: GraphQL: No commits between main and b"),
            None
        );
    }

    #[test]
    fn the_title_is_the_first_line_cut_at_72_characters() {
        assert_eq!(title("fix the parser\nthen more"), "fix the parser");
        assert_eq!(title("\n\n  spaced out  \n"), "spaced out");
        let long = "é".repeat(100);
        assert_eq!(title(&long).chars().count(), 72);
        assert_eq!(title(""), "amplihack session");
    }

    #[test]
    fn the_body_reports_the_session_and_fences_its_prompt() {
        let f = BodyFacts {
            session_id: "sess-1",
            parent_session_id: Some("sess-0"),
            prompt: "use ```code``` here",
            status: "completed".into(),
            exit_code: Some(0),
            duration_seconds: Some(3900),
            commits: 2,
            changes: Some(Changes {
                files: 2,
                insertions: 5,
                deletions: 1,
            }),
            commit_list: "- abc one\n- def two".into(),
            diffstat: " a | 1 +".into(),
            cost: "$0 (this machine)".into(),
        };
        let b = body(&f);
        assert!(
            b.contains("session `sess-1` (a follow-up of `sess-0`)"),
            "{b}"
        );
        assert!(b.contains("````text\nuse ```code``` here\n````\n"), "{b}");
        assert!(b.contains("| Status | completed (exit 0) |"), "{b}");
        assert!(b.contains("| Duration | 1h05m |"), "{b}");
        assert!(b.contains("| Commits | 2 |"), "{b}");
        assert!(b.contains("| Changes | +5 -1 (2 files) |"), "{b}");
        assert!(b.contains("| Cost | $0 (this machine) |"), "{b}");
        assert!(b.contains("## Commits\n\n- abc one\n- def two\n"), "{b}");
        assert!(b.contains("## Diffstat\n\n```\n a | 1 +\n```\n"), "{b}");
    }

    #[test]
    fn cost_is_the_vms_price_for_the_duration_or_says_why_not() {
        let prices = PriceTable::default();
        assert_eq!(
            cost_text(Some(Backend::Local), None, &prices, Some(60)),
            "$0 (this machine)"
        );
        let c = cost_text(
            Some(Backend::Azure),
            Some(("Standard_E16s_v5", 4)),
            &prices,
            Some(1800),
        );
        assert_eq!(
            c,
            "about $0.13 (its share of a Standard_E16s_v5 at $1.008/h with 4 slot(s), for 30m)"
        );
        assert!(cost_text(Some(Backend::Azure), None, &prices, Some(1)).starts_with("unknown"));
        assert!(cost_text(None, Some(("Odd_SKU", 1)), &prices, Some(1)).contains("no price"));
    }

    #[test]
    fn the_url_is_the_last_line_that_is_one() {
        assert_eq!(
            url_of(b"Creating pull request\nhttps://github.com/o/r/pull/7\n").as_deref(),
            Some("https://github.com/o/r/pull/7")
        );
        assert_eq!(url_of(b"nothing"), None);
    }
}
