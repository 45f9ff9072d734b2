//! Settings from the environment, read once per invocation. Every variable is documented in
//! README.md; a malformed value is an invalid argument (exit 2) naming the variable.

use std::time::Duration;

use crate::core::model::Backend;
use crate::core::naming;
use crate::core::pool::PriceTable;
use crate::error::{Error, Result};

pub const DEFAULT_REGION: &str = "eastus";
pub const DEFAULT_FALLBACK_REGIONS: &str = "westus3,eastus,centralus";
pub const DEFAULT_REMOTE_WORKSPACE: &str = "/workspace";
pub const DEFAULT_PARALLEL: usize = 16;
/// How much of a session's log its archive keeps: the last 64 MiB.
pub const DEFAULT_ARCHIVE_LOG_CAP: u64 = 64 * 1024 * 1024;

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
    /// The default agent: `amplihack claude`, resolved by the VM's PATH. A local start puts the
    /// absolute path of the Python amplihack first instead (`Ctx::for_start`).
    pub default_agent: Vec<String>,
    pub api_key: Option<String>,
    pub user: String,
    pub timeouts: Timeouts,
    /// How often a stream (`output --follow`, `wait`) checks on the VM for news.
    pub follow_interval: Duration,
    /// How long a stream may stay silent (heartbeats included) before its connection is taken
    /// for dead and reopened.
    pub stream_silence: Duration,
    /// How long `output --follow` and `wait` keep reconnecting before they give up (exit 4).
    pub reconnect_for: Duration,
    /// `AMPLIHACK_REMOTE_MAX_VMS`: the most pool VMs of a region a start may end up with.
    pub max_vms: Option<u32>,
    pub kill_grace_secs: u32,
    /// A new VM may not answer ssh at once: launch attempts, and the pause between them.
    pub new_vm_ssh_attempts: u32,
    pub new_vm_ssh_retry_delay: Duration,
    /// Most azlin calls in flight at once in a fan-out over VMs (each one starts `az`).
    pub parallel: usize,
    /// Where finished sessions' results are kept (`AMPLIHACK_REMOTE_ARCHIVE`); `None`: the
    /// `remote-archive` directory beside the state file.
    pub archive_dir: Option<std::path::PathBuf>,
    /// The most bytes of a session's log its archive keeps (the last part).
    pub archive_log_cap: u64,
    /// `AMPLIHACK_REMOTE_CONFIRM_VMS`: the most new VMs one `start` creates without asking.
    pub confirm_vms: usize,
    /// Prices `status` shows costs with: list prices, `AMPLIHACK_REMOTE_PRICES` on top.
    pub prices: PriceTable,
}

/// `AMPLIHACK_REMOTE_ARCHIVE`: absolute or under `~/`, as the state path (exit 2 otherwise).
fn archive_dir() -> Result<Option<std::path::PathBuf>> {
    const NAME: &str = "AMPLIHACK_REMOTE_ARCHIVE";
    std::env::var_os(NAME)
        .filter(|v| !v.is_empty())
        .map(|v| crate::state::path_from_setting(NAME, "folder", &v, dirs::home_dir().as_deref()))
        .transpose()
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

/// New VMs one `start` may create without asking (about $4/h at size l's list price).
pub const DEFAULT_CONFIRM_VMS: usize = 10;

/// The longest duration a setting may name: a year. Beyond it (1e308, say) a duration cannot
/// even be represented, and no wait of ours is meant to last that long.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A number of seconds above 0 and at most a year, from the environment.
fn seconds(name: &str) -> Result<Option<Duration>> {
    match var(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n <= MAX_SECONDS => {
                Ok(Some(Duration::from_secs_f64(n)))
            }
            _ => Err(bad(name, &v, "a number of seconds above 0, at most a year")),
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
        let region =
            naming::normalize_region(&var("AZURE_REGION").unwrap_or_else(|| DEFAULT_REGION.into()))
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
            let r = naming::normalize_region(r)
                .map_err(|e| Error::InvalidArgs(format!("AMPLIHACK_AZURE_REGIONS: {e}")))?;
            fallback_regions.push(r);
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
        let follow_interval =
            seconds("AMPLIHACK_REMOTE_FOLLOW_INTERVAL")?.unwrap_or(Duration::from_millis(200));
        let stream_silence =
            seconds("AMPLIHACK_REMOTE_STREAM_TIMEOUT")?.unwrap_or(Duration::from_secs(45));
        let reconnect_for =
            seconds("AMPLIHACK_REMOTE_RECONNECT_FOR")?.unwrap_or(Duration::from_secs(300));
        let new_vm_ssh_retry_delay =
            seconds("AMPLIHACK_REMOTE_SSH_RETRY_DELAY")?.unwrap_or(Duration::from_secs(15));
        let prices = match var("AMPLIHACK_REMOTE_PRICES") {
            None => PriceTable::default(),
            Some(text) => PriceTable::with_overrides(&text).map_err(|e| {
                bad(
                    "AMPLIHACK_REMOTE_PRICES",
                    &text,
                    &format!("SKU=USD_PER_HOUR pairs separated by commas, e.g. Standard_E16s_v5=1.10 ({e})"),
                )
            })?,
        };
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
            default_agent: vec!["amplihack".into(), "claude".into()],
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
            stream_silence,
            reconnect_for,
            max_vms: number::<u32>("AMPLIHACK_REMOTE_MAX_VMS", "a whole number above 0")?,
            confirm_vms: number::<usize>("AMPLIHACK_REMOTE_CONFIRM_VMS", "a whole number above 0")?
                .unwrap_or(DEFAULT_CONFIRM_VMS),
            kill_grace_secs,
            new_vm_ssh_attempts: 4,
            new_vm_ssh_retry_delay,
            parallel: number::<usize>("AMPLIHACK_REMOTE_PARALLEL", "a whole number of 1 or more")?
                .unwrap_or(DEFAULT_PARALLEL),
            archive_dir: archive_dir()?,
            archive_log_cap: number::<u64>(
                "AMPLIHACK_REMOTE_ARCHIVE_LOG_CAP",
                "a number of bytes above 0",
            )?
            .unwrap_or(DEFAULT_ARCHIVE_LOG_CAP),
            prices,
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

    /// How streams pace themselves on the VM: a heartbeat three times per silence allowance.
    pub fn stream_pace(&self) -> crate::remote::request::Pace {
        crate::remote::request::Pace {
            check_every: self.follow_interval,
            beat_every: (self.stream_silence / 3).max(Duration::from_secs(1)),
        }
    }

    /// The agent command words (before `--<command> --max-turns N -- -p PROMPT`).
    pub fn agent_words(&self) -> Vec<String> {
        self.agent_override
            .clone()
            .unwrap_or_else(|| self.default_agent.clone())
    }
}
