//! The command line: clap types only. Validation that clap can express lives here, so bad
//! arguments exit 2 with clap's own messages before anything runs.

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::naming;

#[derive(Debug, Parser)]
#[command(
    name = "amplihack",
    version,
    about = "Run AI coding-agent tasks as detached tmux sessions on a pool of Azure VMs",
    allow_external_subcommands = true,
    after_help = OTHER_COMMANDS
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: TopCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Remote session management: start agent tasks on pool VMs and watch them
    #[command(after_help = REMOTE_EXAMPLES)]
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Any other command, handed with its arguments to the Python amplihack (src/forward.rs)
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// Kept word for word with `error::GET_THE_REST` (a test checks).
const OTHER_COMMANDS: &str = "This amplihack provides `amplihack remote`. Every other command (amplihack claude, amplihack launch, ...) is handed, arguments intact, to the next `amplihack` on PATH that is not this binary: the Python amplihack. To get those commands, install the Python amplihack and put it on PATH (pip install amplihack, or uv tool install amplihack; uvx amplihack runs it without installing).";

const REMOTE_EXAMPLES: &str = "\
Examples:
  amplihack remote start \"implement user authentication\" \"add pagination to API\"
  amplihack remote start --local \"try it on this machine\"
  amplihack remote list --status running
  amplihack remote output sess-20251125-143022-abc1 --follow
  amplihack remote kill sess-20251125-143022-abc1
  amplihack remote status --json
  amplihack remote report
  amplihack remote pull --all
  amplihack remote sync";

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// List all tracked sessions
    #[command(
        after_help = "Examples:\n  amplihack remote list\n  amplihack remote list --status running\n  amplihack remote list --json\n  amplihack remote list --verbose"
    )]
    List(ListArgs),
    /// Start one or more tasks as detached tmux sessions
    #[command(
        after_help = "Examples:\n  amplihack remote start \"implement user authentication\"\n  amplihack remote start \"task one\" \"task two\" \"task three\"\n  amplihack remote start --size l --max-turns 20 \"complex refactoring\"\n  amplihack remote start --command ultrathink \"analyze architecture\"\n  amplihack remote start --region eastus \"my task\"\n  amplihack remote start --local --no-context \"a task on this machine\""
    )]
    Start(StartArgs),
    /// View session output (tmux capture-pane while running, the kept log after it ended)
    #[command(
        after_help = "Examples:\n  amplihack remote output sess-20251125-143022-abc1\n  amplihack remote output sess-20251125-143022-abc1 --lines 500\n  amplihack remote output sess-20251125-143022-abc1 --follow\n  amplihack remote output sess-20251125-143022-abc1 --raw > output.log"
    )]
    Output(OutputArgs),
    /// Terminate a running session
    #[command(
        after_help = "Examples:\n  amplihack remote kill sess-20251125-143022-abc1\n  amplihack remote kill sess-20251125-143022-abc1 --force"
    )]
    Kill(KillArgs),
    /// Show pool status and VM utilization
    #[command(
        after_help = "Examples:\n  amplihack remote status\n  amplihack remote status --json"
    )]
    Status(StatusArgs),
    /// Pre-warm VMs so later starts skip provisioning
    #[command(
        after_help = "Examples:\n  amplihack remote prime --count 3 --vm-size l\n  amplihack remote prime --count 2 --region eastus"
    )]
    Prime(PrimeArgs),
    /// Delete idle pool VMs (no pending or running session) so they stop billing
    #[command(
        after_help = "Examples:\n  amplihack remote prune --dry-run\n  amplihack remote prune --idle-minutes 60 --yes"
    )]
    Prune(PruneArgs),
    /// Carry on from an ended session: a new session in its workspace, continuing its
    /// conversation with a new instruction
    #[command(
        after_help = "Examples:\n  amplihack remote continue sess-20251125-143022-abc1 \"now add tests\"\n  amplihack remote continue sess-20251125-143022-abc1 --max-turns 30 \"you missed the migration\""
    )]
    Continue(ContinueArgs),
    /// Fetch sessions' commits into the local repository as branches amplihack/<session-id>
    #[command(
        after_help = "Examples:\n  amplihack remote pull sess-20251125-143022-abc1\n  amplihack remote pull sess-20251125-143022-abc1 sess-20251125-143025-def2\n  amplihack remote pull --all\n  amplihack remote pull sess-20251125-143022-abc1 --resume\n  amplihack remote pull sess-20251125-143022-abc1 --pr --draft --base main\n  amplihack remote pull --all --pr"
    )]
    Pull(PullArgs),
    /// What each recent session produced: status, exit, duration, commits, changes
    #[command(
        after_help = "Examples:\n  amplihack remote report\n  amplihack remote report --since 12h\n  amplihack remote report --status completed --json"
    )]
    Report(ReportArgs),
    /// Attach this terminal to a session's tmux session (detach with Ctrl-b d)
    #[command(after_help = "Examples:\n  amplihack remote attach sess-20251125-143022-abc1")]
    Attach(SessionArg),
    /// Block until sessions end, printing each end as it happens (exit 0 only if all completed)
    #[command(
        after_help = "Examples:\n  amplihack remote wait\n  amplihack remote wait sess-20251125-143022-abc1 sess-20251125-143025-def2\n  amplihack remote wait --all --timeout 3600 --json"
    )]
    Wait(WaitArgs),
    /// Rebuild and merge the state from the pool VMs, which hold the truth about their sessions
    #[command(
        after_help = "Examples:\n  amplihack remote sync\n  amplihack remote sync --dry-run\n  amplihack remote sync --json"
    )]
    Sync(SyncArgs),
    /// Print the shell completion script for SHELL on stdout
    #[command(
        after_help = "Examples:\n  amplihack remote completions bash > ~/.local/share/bash-completion/completions/amplihack\n  amplihack remote completions zsh > ~/.zfunc/_amplihack\n  amplihack remote completions fish > ~/.config/fish/completions/amplihack.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout
    #[command(
        after_help = "Examples:\n  amplihack remote man | man -l -\n  amplihack remote man > ~/.local/share/man/man1/amplihack-remote.1"
    )]
    Man,
    /// The session ids of the state, newest first, one a line (for the completion scripts; no
    /// remote call)
    #[command(name = "__sessions", hide = true)]
    Sessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Pending,
    Queued,
    Running,
    Completed,
    Failed,
    Killed,
    All,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Read the state file alone; do not ask the VMs for the sessions' true status
    #[arg(long)]
    pub no_refresh: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Filter by status
    #[arg(long, value_enum, default_value_t = StatusFilter::All)]
    pub status: StatusFilter,
    /// Output as JSON
    #[arg(long)]
    pub json: bool,
    /// Show full prompts and details
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SizeArg {
    S,
    M,
    L,
    Xl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommandMode {
    Auto,
    Ultrathink,
    Analyze,
    Fix,
}

impl SizeArg {
    /// Its letter in the size table (`pool::size_of`).
    pub fn letter(self) -> &'static str {
        match self {
            SizeArg::S => "s",
            SizeArg::M => "m",
            SizeArg::L => "l",
            SizeArg::Xl => "xl",
        }
    }
}

impl CommandMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandMode::Auto => "auto",
            CommandMode::Ultrathink => "ultrathink",
            CommandMode::Analyze => "analyze",
            CommandMode::Fix => "fix",
        }
    }
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// One or more task prompts (quoted strings)
    #[arg(required = true, value_name = "PROMPTS", value_parser = parse_prompt)]
    pub prompts: Vec<String>,
    /// VM size: s, m, l, xl (controls max concurrent sessions)
    #[arg(long, value_enum, default_value_t = SizeArg::L)]
    pub size: SizeArg,
    /// Azure region [default: $AZURE_REGION, else eastus]
    #[arg(long, value_parser = parse_region)]
    pub region: Option<String>,
    /// Maximum conversation turns for Claude Code (higher = more complex tasks)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: u32,
    /// Amplihack command mode
    #[arg(long, value_enum, default_value_t = CommandMode::Auto)]
    pub command: CommandMode,
    /// Run on this machine instead of Azure (same as AMPLIHACK_REMOTE_BACKEND=local)
    #[arg(long)]
    pub local: bool,
    /// Start with an empty workspace instead of a clone of the current git repository
    #[arg(long)]
    pub no_context: bool,
    /// Send the repository even when the secret scan finds likely secrets in tracked files
    #[arg(long)]
    pub allow_secrets: bool,
    /// Print the sessions of this start as JSON
    #[arg(long)]
    pub json: bool,
    /// The most pool VMs of the region this start may end up with; prompts beyond their free
    /// slots wait in a VM's queue instead of provisioning more [env: AMPLIHACK_REMOTE_MAX_VMS]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_vms: Option<u32>,
    /// Fail the prompts that find no free slot instead of queueing them
    #[arg(long)]
    pub no_queue: bool,
    /// Create the new VMs this start needs without asking, however many
    /// (AMPLIHACK_REMOTE_CONFIRM_VMS, default 10, is the most created without a question)
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub unattended: UnattendedArgs,
}

#[derive(Debug, Args)]
pub struct ContinueArgs {
    /// The ended session to carry on from (it may itself be a follow-up)
    #[arg(value_name = "SESSION_ID", value_parser = parse_session_id)]
    pub session_id: String,
    /// The new instruction for the agent
    #[arg(value_name = "PROMPT", value_parser = parse_prompt)]
    pub prompt: String,
    /// Maximum conversation turns for Claude Code [default: the session's]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: Option<u32>,
    /// Amplihack command mode [default: the session's]
    #[arg(long, value_enum)]
    pub command: Option<CommandMode>,
    /// VM size of a new VM, when the session's VM is gone and the pool has no room
    #[arg(long, value_enum, default_value_t = SizeArg::L)]
    pub size: SizeArg,
    /// Azure region for the follow-up when the session's VM is gone [default: $AZURE_REGION, else eastus]
    #[arg(long, value_parser = parse_region)]
    pub region: Option<String>,
    /// Fail instead of queueing when the VM has no free slot
    #[arg(long)]
    pub no_queue: bool,
    /// Create a new VM, when one is needed, without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the new session as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub unattended: UnattendedArgs,
}

/// Settings for running unattended (docs/unattended.md), carried to the VM with each session.
#[derive(Debug, Clone, Default, Args)]
pub struct UnattendedArgs {
    /// POST a JSON notification to this URL when a session ends, retries or goes silent
    /// (a secret, like the API key: prefer the variable) [env: AMPLIHACK_REMOTE_NOTIFY]
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
    /// Retry a transient failure (overload, rate or plan limit, network) up to N times with
    /// --continue; 0 turns it off [default: 2] [env: AMPLIHACK_REMOTE_RETRIES]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: Option<u32>,
    /// Flag a session whose output has not grown for M minutes (nothing is killed)
    /// [default: 30] [env: AMPLIHACK_REMOTE_SILENT_MINUTES]
    #[arg(long, value_name = "M", value_parser = crate::core::unattended::parse_silent_minutes)]
    pub silent_minutes: Option<u32>,
    /// End a session still running H hours after its agent started (failed, exit 124)
    /// [default: none] [env: AMPLIHACK_REMOTE_MAX_HOURS]
    #[arg(long, value_name = "H", value_parser = crate::core::unattended::parse_max_hours)]
    pub max_hours: Option<f64>,
}

#[derive(Debug, Args)]
pub struct SessionArg {
    /// Session ID
    #[arg(value_name = "SESSION_ID", value_parser = parse_session_id)]
    pub session_id: String,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Session ID to observe
    #[arg(value_name = "SESSION_ID", value_parser = parse_session_id)]
    pub session_id: String,
    /// Number of lines to capture from tmux pane
    #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lines: u32,
    /// Follow output as it is written, like tail -f (streamed over one connection, resumed after a drop)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output without formatting (useful for piping to files or tools)
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Session ID to terminate
    #[arg(value_name = "SESSION_ID", value_parser = parse_session_id)]
    pub session_id: String,
    /// Force kill (SIGKILL instead of SIGTERM)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

#[derive(Debug, Args)]
pub struct PrimeArgs {
    /// Number of VMs to prime
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub count: u32,
    /// VM size: s, m, l, xl
    #[arg(long, value_enum, default_value_t = SizeArg::L)]
    pub vm_size: SizeArg,
    /// Azure region [default: $AZURE_REGION, else eastus]
    #[arg(long, value_parser = parse_region)]
    pub region: Option<String>,
    /// Print the primed VMs as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete VMs idle for longer than this many minutes (at most ten years)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=5_256_000))]
    pub idle_minutes: u64,
    /// Show what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Delete without asking (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// Delete a VM even when the results of its finished sessions could not be archived
    /// (they are lost)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Sessions whose commits to fetch (each becomes branch amplihack/<session-id>)
    #[arg(
        value_name = "SESSION_ID",
        value_parser = parse_session_id,
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub session_ids: Vec<String>,
    /// Every finished session of this repository with commits not pulled yet
    #[arg(long)]
    pub all: bool,
    /// Move amplihack/<session-id> to the session's commits even when it holds commits of its
    /// own (they stay in git's reflog); without it such a branch is left alone
    #[arg(long)]
    pub force: bool,
    /// Fetch into this branch instead of amplihack/<session-id> (one session only)
    #[arg(long, value_name = "NAME", conflicts_with = "all", value_parser = parse_branch_name)]
    pub branch: Option<String>,
    /// Then check the branch out into a new worktree beside the repository
    /// (<repo>-<session-id>), apply the work left uncommitted and place the agent's
    /// conversation there, so `claude --continue` in it carries on (one session only)
    #[arg(long, conflicts_with = "all")]
    pub resume: bool,
    /// Where --resume puts the worktree
    #[arg(long, value_name = "DIR", requires = "resume")]
    pub worktree: Option<std::path::PathBuf>,
    /// Then push the branch to the repository's remote and open a pull request with gh
    #[arg(long)]
    pub pr: bool,
    /// Open the pull request as a draft
    #[arg(long, requires = "pr")]
    pub draft: bool,
    /// The branch the pull request asks to merge into [default: the repository's default]
    #[arg(long, value_name = "BRANCH", requires = "pr", value_parser = parse_branch_name)]
    pub base: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Sessions that ended within this long ago (plus every one still running): 30m, 12h, 2d
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub since: chrono::Duration,
    /// Filter by status
    #[arg(long, value_enum, default_value_t = StatusFilter::All)]
    pub status: StatusFilter,
    /// Output as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    crate::ui::report::parse_duration(s)
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Sessions to wait for [default: every session pending or running now]
    #[arg(value_name = "SESSION_ID", value_parser = parse_session_id)]
    pub session_ids: Vec<String>,
    /// Wait for every session pending or running now (the default without ids)
    #[arg(long, conflicts_with = "session_ids")]
    pub all: bool,
    /// Give up after this many seconds (exit 1, "timed out")
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// Print each ended session as one JSON object per line (JSON Lines)
    #[arg(long)]
    pub json: bool,
    /// Raise a desktop notification when wait returns (notify-send, osascript; nothing where
    /// neither exists)
    #[arg(long)]
    pub notify: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= crate::config::MAX_SECONDS => Ok(v),
        _ => Err("expected a number of seconds above 0, at most a year (31536000)".into()),
    }
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Print what was added, settled and could not be reached as JSON
    #[arg(long)]
    pub json: bool,
    /// Ask the VMs and show what would change; write nothing
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_prompt(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a prompt must not be empty".into());
    }
    if s.contains('\0') {
        return Err("a prompt must not contain NUL bytes".into());
    }
    Ok(s.to_string())
}

fn parse_session_id(s: &str) -> Result<String, String> {
    naming::validate_session_id(s).map(|()| s.to_string())
}

fn parse_region(s: &str) -> Result<String, String> {
    naming::normalize_region(s)
}

fn parse_branch_name(s: &str) -> Result<String, String> {
    naming::validate_branch_name(s).map(|()| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("amplihack").chain(args.iter().copied()))
    }

    #[test]
    fn spec_defaults() {
        let cli = parse(&["remote", "start", "x"]).unwrap();
        let TopCommand::Remote {
            command: RemoteCommand::Start(a),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(a.size, SizeArg::L);
        assert_eq!(a.max_turns, 10);
        assert_eq!(a.command, CommandMode::Auto);
        assert_eq!(a.region, None);
        let cli = parse(&["remote", "output", "sess-20251125-143022-abcd"]).unwrap();
        let TopCommand::Remote {
            command: RemoteCommand::Output(o),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(o.lines, 100);
        assert!(!o.follow && !o.raw);
    }

    #[test]
    fn unknown_commands_are_external_with_their_arguments_intact() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe raw");
        let cli = Cli::try_parse_from([
            std::ffi::OsStr::new("amplihack"),
            "claude".as_ref(),
            "--help".as_ref(),
            "a b".as_ref(),
            odd,
        ])
        .unwrap();
        let TopCommand::External(args) = cli.command else {
            panic!("not external: {:?}", cli.command)
        };
        assert_eq!(
            args,
            vec![
                "claude".into(),
                "--help".into(),
                "a b".into(),
                odd.to_os_string()
            ]
        );
        // Our own commands and flags are never forwarded.
        assert!(matches!(
            parse(&["remote", "list"]).unwrap().command,
            TopCommand::Remote { .. }
        ));
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["--bogus"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn help_says_where_the_other_commands_are() {
        assert!(OTHER_COMMANDS.contains(crate::error::GET_THE_REST));
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Python amplihack"), "{help}");
    }

    #[test]
    fn short_flags_and_bad_values() {
        assert!(parse(&["remote", "output", "sess-1", "-n", "5", "-f"]).is_ok());
        for bad in [
            &["remote", "start", "--size", "xxl", "x"][..],
            &["remote", "start", "--max-turns", "0", "x"],
            &["remote", "start", ""],
            &["remote", "start", "  "],
            &["remote", "start"],
            &["remote", "output", "sess-1", "--lines", "0"],
            &["remote", "prime", "--count", "0"],
            &["remote", "list", "--status", "weird"],
            &["remote", "kill", "sess;rm -rf /"],
            &["remote", "kill", "../etc"],
            &["remote", "kill", "-f", "sess-1"],
            &["remote", "wait", "--timeout", "0"],
            &["remote", "wait", "--timeout", "1e308"],
            &["remote", "prune", "--idle-minutes", "18446744073709551615"],
            &["remote", "wait", "--timeout", "soon"],
            &["remote", "wait", "--all", "sess-1"],
            &["remote", "wait", "sess;1"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} must be rejected"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
