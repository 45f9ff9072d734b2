//! The one error type of the CLI. Every failure becomes one of these variants, and each variant
//! maps to exactly one documented exit code (docs/exit-codes.md, kept in step by a test).

use std::path::PathBuf;

/// How to get the commands this binary does not have; used by `--help` and the errors.
pub const GET_THE_REST: &str = "install the Python amplihack and put it on PATH (pip install amplihack, or uv tool install amplihack; uvx amplihack runs it without installing)";

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes of the specification, with their meaning as documented.
pub const EXIT_CODES: &[(i32, &str)] = &[
    (0, "Success"),
    (1, "General error"),
    (2, "Invalid arguments"),
    (3, "Session not found"),
    (4, "VM not reachable"),
    (5, "Azure quota exceeded"),
    (130, "Interrupted (Ctrl+C)"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgs(String),

    #[error("Session '{0}' not found. Run 'amplihack remote list' to see tracked sessions.")]
    SessionNotFound(String),

    /// `output` found neither a tmux session nor a log of the session on its VM.
    #[error(
        "Session not found on VM '{vm}': {id} has no tmux session and no output log there (it crashed, never launched, or was removed externally; status: {status}). Check its status with 'amplihack remote list'{}.",
        if *has_repository {
            format!("; if it completed or failed, retrieve its commits with 'amplihack remote pull {id}'")
        } else {
            String::new()
        }
    )]
    SessionNotOnVm {
        id: String,
        vm: String,
        status: String,
        /// Started with a repository (not --no-context): `pull` can bring its commits.
        has_repository: bool,
    },

    #[error("VM '{vm}' is not reachable: {detail}")]
    VmUnreachable { vm: String, detail: String },

    /// `sync` asked pool VMs and none answered; carries their names.
    #[error(
        "No VM answered (asked: {0}); the state keeps their sessions as last known. Start stopped VMs with 'azlin start NAME', check them with 'azlin list', then run 'amplihack remote sync' again."
    )]
    NoVmAnswered(String),

    #[error(
        "VM '{vm}' no longer exists in Azure ({detail}). 'amplihack remote prune' removes it from the pool; 'amplihack remote start' places new work on other VMs."
    )]
    VmNotFound { vm: String, detail: String },

    #[error(
        "Azure quota exceeded: {detail}. Use --region to try another region, set AMPLIHACK_AZURE_REGIONS for fallbacks, or release VMs with 'amplihack remote prune'."
    )]
    QuotaExceeded { detail: String },

    #[error("Interrupted")]
    Interrupted,

    #[error(
        "State file corrupt: {path}: {detail}\n\
         Recovery: the file was left untouched. Move it aside (mv '{path}' '{path}.corrupt'), \
         then run 'amplihack remote sync' to rebuild it from the VMs; or repair it by hand."
    )]
    StateCorrupt { path: PathBuf, detail: String },

    #[error("State file {path}: {detail}")]
    StateAccess { path: PathBuf, detail: String },

    #[error(
        "ANTHROPIC_API_KEY is not set. Export your Anthropic API key first: export ANTHROPIC_API_KEY=sk-ant-..."
    )]
    MissingApiKey,

    #[error(
        "the local backend runs `amplihack claude` on this machine, but no amplihack other than this one is on PATH: {}, or set AMPLIHACK_REMOTE_AGENT to the agent's command line",
        GET_THE_REST
    )]
    LocalAgentMissing,

    #[error(
        "azlin not found ({0}). Install azlin (https://github.com/rysweet/azlin) or set AMPLIHACK_AZLIN to its path; use --local to run sessions on this machine."
    )]
    AzlinMissing(String),

    /// `azlin new` answered that a VM of that name already exists: it is not ours (another
    /// machine's, named in the same second), and nothing was created.
    #[error(
        "a VM named '{vm}' already exists in Azure and is not one this start made ({detail}); nothing was created and it is not tracked. Try again: the next name differs"
    )]
    VmNameTaken { vm: String, detail: String },

    #[error("Azure login required: {0}. Run 'az login' and try again.")]
    AzureAuth(String),

    #[error(
        "azlin has no resource group configured. Set AMPLIHACK_RESOURCE_GROUP or default_resource_group in ~/.azlin/config.toml."
    )]
    NoResourceGroup,

    /// A command we ran failed; carries the command line and its trimmed stderr.
    #[error("`{command}` failed{}: {stderr}", status.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    CommandFailed {
        command: String,
        status: Option<i32>,
        stderr: String,
    },

    #[error("`{command}` timed out after {seconds}s and was stopped")]
    Timeout { command: String, seconds: u64 },

    #[error("{0}")]
    Failed(String),

    /// Some sessions of a `start` failed; carries the exit code of the first failure.
    #[error("{message}")]
    SessionsFailed { code: i32, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidArgs(_) => 2,
            Error::SessionNotFound(_) | Error::SessionNotOnVm { .. } => 3,
            Error::VmUnreachable { .. } | Error::VmNotFound { .. } | Error::NoVmAnswered(_) => 4,
            Error::QuotaExceeded { .. } => 5,
            Error::Interrupted => 130,
            Error::SessionsFailed { code, .. } => *code,
            Error::StateCorrupt { .. }
            | Error::StateAccess { .. }
            | Error::MissingApiKey
            | Error::LocalAgentMissing
            | Error::AzlinMissing(_)
            | Error::AzureAuth(_)
            | Error::NoResourceGroup
            | Error::VmNameTaken { .. }
            | Error::CommandFailed { .. }
            | Error::Timeout { .. }
            | Error::Failed(_)
            | Error::Io { .. } => 1,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The same failure again, for reporting it once per session it hit (one unreachable VM
    /// fails all its sessions). Keeps the exit code; kinds with a source keep its message.
    pub fn replicate(&self) -> Error {
        match self {
            Error::InvalidArgs(m) => Error::InvalidArgs(m.clone()),
            Error::SessionNotFound(id) => Error::SessionNotFound(id.clone()),
            Error::VmUnreachable { vm, detail } => Error::VmUnreachable {
                vm: vm.clone(),
                detail: detail.clone(),
            },
            Error::VmNotFound { vm, detail } => Error::VmNotFound {
                vm: vm.clone(),
                detail: detail.clone(),
            },
            Error::QuotaExceeded { detail } => Error::QuotaExceeded {
                detail: detail.clone(),
            },
            Error::Interrupted => Error::Interrupted,
            other if other.exit_code() == 1 => Error::Failed(other.to_string()),
            other => Error::SessionsFailed {
                code: other.exit_code(),
                message: other.to_string(),
            },
        }
    }

    /// A script on a VM answered in a form we do not understand.
    pub fn unexpected_answer(vm: &str, detail: impl std::fmt::Display) -> Self {
        Error::Failed(format!("unexpected answer from VM '{vm}': {detail}"))
    }

    /// Failures of `azlin new` that prove no VM was created, so none needs tracking.
    pub fn created_nothing(&self) -> bool {
        matches!(
            self,
            Error::QuotaExceeded { .. }
                | Error::AzlinMissing(_)
                | Error::AzureAuth(_)
                | Error::NoResourceGroup
                | Error::VmNameTaken { .. }
        )
    }

    /// Failures of a remote call that prove its script never ran on the VM: azlin could not
    /// start, the VM was not found, or ssh never connected (refused, timed out, no route, no
    /// public IP). Any other failure (a dropped connection, a timeout, garbage) may have come
    /// after the script ran.
    pub fn ran_nothing(&self) -> bool {
        match self {
            Error::VmUnreachable { detail, .. } => {
                let lower = detail.to_lowercase();
                [
                    "connect to host",
                    "could not resolve hostname",
                    "no route to host",
                    "no bastion host found",
                    "permission denied (publickey",
                ]
                .iter()
                .any(|n| lower.contains(n))
            }
            Error::VmNotFound { .. }
            | Error::QuotaExceeded { .. }
            | Error::AzlinMissing(_)
            | Error::AzureAuth(_)
            | Error::NoResourceGroup
            | Error::MissingApiKey
            | Error::LocalAgentMissing
            | Error::InvalidArgs(_) => true,
            _ => false,
        }
    }

    /// Writing to a closed pipe (`list | head -1`) is not a failure of ours.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_never_opened_ran_nothing_a_dropped_one_may_have() {
        let unreachable = |detail: &str| Error::VmUnreachable {
            vm: "vm".into(),
            detail: detail.into(),
        };
        assert!(
            unreachable("ssh: connect to host 10.0.0.4 port 22: Connection refused").ran_nothing()
        );
        assert!(unreachable("No bastion host found for VM").ran_nothing());
        assert!(!unreachable("Connection to 10.0.0.4 closed by remote host.").ran_nothing());
        assert!(!unreachable("no answer within 1s").ran_nothing());
        assert!(!Error::Interrupted.ran_nothing());
    }

    #[test]
    fn every_variant_maps_to_a_documented_code() {
        let samples = [
            Error::InvalidArgs("x".into()),
            Error::SessionNotFound("s".into()),
            Error::VmUnreachable {
                vm: "v".into(),
                detail: "d".into(),
            },
            Error::QuotaExceeded { detail: "d".into() },
            Error::NoVmAnswered("v".into()),
            Error::Interrupted,
            Error::MissingApiKey,
            Error::LocalAgentMissing,
            Error::Failed("x".into()),
        ];
        for e in samples {
            assert!(
                EXIT_CODES.iter().any(|(c, _)| *c == e.exit_code()),
                "{e:?} maps to an undocumented code"
            );
        }
    }

    #[test]
    fn exit_codes_document_matches_the_table() {
        let doc = include_str!("../docs/exit-codes.md");
        for (code, meaning) in EXIT_CODES {
            let row = format!("| {code} | {meaning} |");
            assert!(doc.contains(&row), "docs/exit-codes.md lacks row {row}");
        }
        let documented_rows = doc
            .lines()
            .filter(|l| {
                l.starts_with("| ")
                    && l[2..]
                        .split(' ')
                        .next()
                        .is_some_and(|w| w.parse::<i32>().is_ok())
            })
            .count();
        assert_eq!(documented_rows, EXIT_CODES.len(), "docs list extra codes");
    }

    #[test]
    fn command_failure_names_the_command_and_status() {
        let e = Error::CommandFailed {
            command: "azlin list".into(),
            status: Some(1),
            stderr: "Error: boom".into(),
        };
        assert_eq!(e.to_string(), "`azlin list` failed (exit 1): Error: boom");
        assert_eq!(e.exit_code(), 1);
    }
}
