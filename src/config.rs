//! Settings from the environment, read once per invocation. Every variable is documented in
//! README.md; a malformed value is an invalid argument (exit 2) naming the variable.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::Backend;
use crate::naming;

pub const DEFAULT_REGION: &str = "eastus";
pub const DEFAULT_FALLBACK_REGIONS: &str = "westus3,eastus,centralus";
pub const DEFAULT_REMOTE_WORKSPACE: &str = "/workspace";
pub const DEFAULT_PARALLEL: usize = 16;

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub provision: Duration,
    pub launch: Duration,
    pub probe: Duration,
    pub capture: Duration,
    pub kill: Duration,
    pub list: Duration,
    pub delete: Duration,
    pub local_git: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: Backend,
    pub region: String,
    pub fallback_regions: Vec<String>,
    pub azlin: String,
    pub resource_group: Option<String>,
    pub remote_workspace_root: String,
    pub local_slots: Option<u32>,
    /// Words that replace `amplihack claude`; `None` means the default agent.
    pub agent_override: Option<Vec<String>>,
    pub api_key: Option<String>,
    pub user: String,
    pub timeouts: Timeouts,
    pub follow_interval: Duration,
    pub kill_grace_secs: u32,
    /// A new VM may not answer ssh at once: launch attempts, and the pause between them.
    pub new_vm_ssh_attempts: u32,
    pub new_vm_ssh_retry_delay: Duration,
    /// Most azlin calls in flight at once in a fan-out over VMs (each one starts `az`).
    pub parallel: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgs(format!("invalid {name}={value:?}: expected {expected}"))
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    expected: &str,
) -> Result<Option<T>> {
    match var(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n > T::default() => Ok(Some(n)),
            _ => Err(bad(name, &v, expected)),
        },
    }
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let backend = match var("AMPLIHACK_REMOTE_BACKEND").as_deref() {
            None | Some("azure") => Backend::Azure,
            Some("local") => Backend::Local,
            Some(other) => return Err(bad("AMPLIHACK_REMOTE_BACKEND", other, "azure or local")),
        };
        let region = var("AZURE_REGION").unwrap_or_else(|| DEFAULT_REGION.into());
        naming::validate_region(&region)
            .map_err(|e| Error::InvalidArgs(format!("AZURE_REGION: {e}")))?;
        // Unset: the spec's default list. Set but empty: no fallback at all.
        let fallback_text = std::env::var("AMPLIHACK_AZURE_REGIONS")
            .unwrap_or_else(|_| DEFAULT_FALLBACK_REGIONS.into());
        let mut fallback_regions = Vec::new();
        for r in fallback_text
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            naming::validate_region(r)
                .map_err(|e| Error::InvalidArgs(format!("AMPLIHACK_AZURE_REGIONS: {e}")))?;
            fallback_regions.push(r.to_string());
        }
        let agent_override = match var("AMPLIHACK_REMOTE_AGENT") {
            None => None,
            Some(line) => {
                let words = shell_words::split(&line).map_err(|e| {
                    bad(
                        "AMPLIHACK_REMOTE_AGENT",
                        &line,
                        &format!("a command line ({e})"),
                    )
                })?;
                if words.is_empty() { None } else { Some(words) }
            }
        };
        let cap = number::<u64>("AMPLIHACK_REMOTE_TIMEOUT", "a number of seconds above 0")?
            .map(Duration::from_secs);
        let t = |default_secs: u64| {
            let d = Duration::from_secs(default_secs);
            cap.map_or(d, |c| d.min(c))
        };
        let kill_grace_secs =
            number::<u32>("AMPLIHACK_REMOTE_KILL_GRACE", "a number of seconds above 0")?
                .unwrap_or(10);
        let follow_interval = number::<f64>(
            "AMPLIHACK_REMOTE_FOLLOW_INTERVAL",
            "a number of seconds above 0",
        )?
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5));
        let new_vm_ssh_retry_delay = number::<f64>(
            "AMPLIHACK_REMOTE_SSH_RETRY_DELAY",
            "a number of seconds above 0",
        )?
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(15));
        Ok(Settings {
            backend,
            region,
            fallback_regions,
            azlin: var("AMPLIHACK_AZLIN").unwrap_or_else(|| "azlin".into()),
            resource_group: var("AMPLIHACK_RESOURCE_GROUP"),
            remote_workspace_root: var("AMPLIHACK_REMOTE_WORKSPACE")
                .unwrap_or_else(|| DEFAULT_REMOTE_WORKSPACE.into()),
            local_slots: number::<u32>("AMPLIHACK_LOCAL_SLOTS", "a whole number above 0")?,
            agent_override,
            api_key: std::env::var("ANTHROPIC_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            user: var("USER")
                .or_else(|| var("LOGNAME"))
                .unwrap_or_else(|| "user".into()),
            timeouts: Timeouts {
                provision: t(25 * 60),
                launch: t(10 * 60),
                probe: t(60),
                capture: t(30),
                kill: t(u64::from(kill_grace_secs) + 60),
                list: t(120),
                delete: t(15 * 60),
                local_git: t(300),
            },
            follow_interval,
            kill_grace_secs,
            new_vm_ssh_attempts: 4,
            new_vm_ssh_retry_delay,
            parallel: number::<usize>("AMPLIHACK_REMOTE_PARALLEL", "a whole number of 1 or more")?
                .unwrap_or(DEFAULT_PARALLEL),
        })
    }

    /// The regions to try for a new VM: the requested one, then the fallbacks not yet tried.
    pub fn regions_to_try(&self, first: &str) -> Vec<String> {
        let mut out = vec![first.to_string()];
        for r in &self.fallback_regions {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// The agent command words (before `--<command> --max-turns N -- -p PROMPT`).
    pub fn agent_words(&self) -> Vec<String> {
        self.agent_override
            .clone()
            .unwrap_or_else(|| vec!["amplihack".into(), "claude".into()])
    }
}
