//! The context every command runs in: settings, the state store, the archive and the
//! transports (`Ctx`), and the look-ups commands share.

use chrono::{DateTime, SubsecRound, Utc};

use crate::cli::StatusFilter;
use crate::config::Settings;
use crate::core::model::{Backend, Session, SessionStatus, State};
use crate::core::pool::LOCAL_VM_NAME;
use crate::error::{Error, Result};
use crate::exec::{OnInterrupt, Output};
use crate::remote::transport::{Transport, Transports, VmRef};
use crate::state::StateStore;
use crate::state::archive::ArchiveStore;

pub struct Ctx {
    pub settings: Settings,
    pub store: StateStore,
    pub archive: ArchiveStore,
    pub transports: Transports,
}

impl Ctx {
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let transports = Transports::new(&settings);
        let store = StateStore::from_env()?;
        let archive = ArchiveStore::beside(store.path(), settings.archive_dir.clone());
        Ok(Ctx {
            settings,
            store,
            archive,
            transports,
        })
    }

    /// This context with `backend` in place of the one the environment names: a follow-up
    /// runs on its parent's backend, whatever `AMPLIHACK_REMOTE_BACKEND` says now.
    pub fn on_backend(&self, backend: Backend) -> Option<Ctx> {
        if self.settings.backend == backend {
            return None;
        }
        let mut settings = self.settings.clone();
        settings.backend = backend;
        Some(Ctx {
            transports: Transports::new(&settings),
            store: self.store.clone(),
            archive: self.archive.clone(),
            settings,
        })
    }

    /// The context a `start` runs in. On the local backend with the default agent, the agent
    /// is the other `amplihack` on PATH (the Python one: this binary has no `claude`), by
    /// absolute path; with none there, the start fails before it reserves anything.
    pub fn for_start(&self, local_flag: bool) -> Result<Option<Ctx>> {
        let local = local_flag || self.settings.backend == Backend::Local;
        if !local || self.settings.agent_override.is_some() {
            return Ok(None);
        }
        let program = crate::forward::other_amplihack()?.ok_or(Error::LocalAgentMissing)?;
        let program = program.into_os_string().into_string().map_err(|p| {
            Error::Failed(format!(
                "the path of the other amplihack ({}) is not UTF-8; set AMPLIHACK_REMOTE_AGENT instead",
                p.to_string_lossy()
            ))
        })?;
        let mut settings = self.settings.clone();
        settings.default_agent = vec![program, "claude".into()];
        Ok(Some(Ctx {
            transports: Transports::new(&settings),
            store: self.store.clone(),
            archive: self.archive.clone(),
            settings,
        }))
    }

    /// Every timestamp we record comes from here: whole seconds, the specification's form.
    pub fn now(&self) -> DateTime<Utc> {
        whole_seconds(Utc::now())
    }

    /// How every call must address `vm`: its backend, and the resource group it was created
    /// in. A VM recorded without one (by an older version, the Python original, or adopted
    /// from azlin's default listing) was created in azlin's own default group: it is addressed
    /// without `--resource-group`, never in `AMPLIHACK_RESOURCE_GROUP` set since. A VM the
    /// state does not know goes to the group new VMs go to.
    pub fn vm_ref(&self, state: &State, vm: &str) -> VmRef {
        let entry = state.vm_pool.get(vm);
        let backend = entry.map(|v| v.backend).unwrap_or(if vm == LOCAL_VM_NAME {
            Backend::Local
        } else {
            Backend::Azure
        });
        VmRef {
            name: vm.to_string(),
            backend,
            resource_group: match backend {
                Backend::Local => None,
                Backend::Azure => match entry {
                    Some(v) => v.resource_group.clone(),
                    None => self
                        .transports
                        .azlin
                        .default_resource_group()
                        .map(String::from),
                },
            },
        }
    }

    /// The transport that reaches `vm`: azlin for Azure VMs, local bash for `local`.
    pub fn transport(&self, vm: &VmRef) -> &dyn Transport {
        self.transports.for_backend(vm.backend)
    }

    /// Runs a control call on `vm` through its transport.
    pub fn run_on(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: std::time::Duration,
        on_interrupt: OnInterrupt,
    ) -> Result<Output> {
        self.transport(vm)
            .run_script(vm, input, timeout, on_interrupt)
    }

    /// `run_on`, as a conversation (`Transport::converse_script`).
    pub fn converse_on(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: std::time::Duration,
        awaited: &[u8],
        reply: crate::exec::Reply,
    ) -> Result<Output> {
        self.transport(vm)
            .converse_script(vm, input, timeout, awaited, reply)
    }
}

impl Ctx {
    /// Slots of the local backend: `AMPLIHACK_LOCAL_SLOTS`, else one per 32 GB of memory.
    pub fn local_capacity(&self) -> u32 {
        self.settings.local_slots.unwrap_or_else(|| {
            let bytes = crate::exec::machine_memory_bytes().unwrap_or(0);
            crate::core::pool::local_slots(bytes)
        })
    }
}

/// `t` without its fraction of a second (truncated, so never in the future).
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

pub fn status_filter(f: StatusFilter) -> Option<SessionStatus> {
    match f {
        StatusFilter::All => None,
        StatusFilter::Pending => Some(SessionStatus::Pending),
        StatusFilter::Queued => Some(SessionStatus::Queued),
        StatusFilter::Running => Some(SessionStatus::Running),
        StatusFilter::Completed => Some(SessionStatus::Completed),
        StatusFilter::Failed => Some(SessionStatus::Failed),
        StatusFilter::Killed => Some(SessionStatus::Killed),
    }
}

pub fn find_session<'a>(state: &'a State, id: &str) -> Result<&'a Session> {
    state
        .sessions
        .get(id)
        .ok_or_else(|| Error::SessionNotFound(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{format_timestamp, parse_timestamp};

    #[test]
    fn recorded_times_are_whole_seconds() {
        let t = parse_timestamp("2025-11-25T14:30:22.999999999Z").unwrap();
        assert_eq!(format_timestamp(&whole_seconds(t)), "2025-11-25T14:30:22Z");
        let t = parse_timestamp("2025-11-25T14:30:22Z").unwrap();
        assert_eq!(whole_seconds(t), t);
        let now = Utc::now();
        let truncated = whole_seconds(now);
        assert_eq!(truncated.timestamp_subsec_nanos(), 0);
        assert!(truncated <= now && now - truncated < chrono::Duration::seconds(1));
    }
}
