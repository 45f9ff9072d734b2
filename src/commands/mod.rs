//! One module per command. Each takes the context and its clap arguments and runs start to
//! finish; state and processes are reached only through `StateStore` and the transports.

pub mod attach;
pub mod kill;
pub mod list;
pub mod output;
pub mod prime;
pub mod prune;
pub mod pull;
pub mod start;
pub mod status;

use chrono::{DateTime, SubsecRound, Utc};

use crate::cli::{RemoteCommand, StatusFilter};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::model::{Session, SessionStatus, State};
use crate::state::StateStore;
use crate::transport::{Transport, Transports};

pub struct Ctx {
    pub settings: Settings,
    pub store: StateStore,
    pub transports: Transports,
}

impl Ctx {
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let transports = Transports::new(&settings);
        Ok(Ctx {
            settings,
            store: StateStore::from_env()?,
            transports,
        })
    }

    /// Every timestamp we record comes from here: whole seconds, the specification's form.
    pub fn now(&self) -> DateTime<Utc> {
        whole_seconds(Utc::now())
    }

    /// The transport that reaches `vm`: azlin for Azure VMs, local bash for `local`.
    pub fn transport_to(&self, state: &State, vm: &str) -> &dyn Transport {
        self.transports
            .for_backend(crate::refresh::backend_of(state, vm))
    }
}

/// `t` without its fraction of a second (truncated, so never in the future).
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

pub fn dispatch(command: RemoteCommand) -> Result<()> {
    let ctx = Ctx::from_env()?;
    match command {
        RemoteCommand::List(a) => list::run(&ctx, a),
        RemoteCommand::Start(a) => start::run(&ctx, a),
        RemoteCommand::Output(a) => output::run(&ctx, a),
        RemoteCommand::Kill(a) => kill::run(&ctx, a),
        RemoteCommand::Status(a) => status::run(&ctx, a),
        RemoteCommand::Prime(a) => prime::run(&ctx, a),
        RemoteCommand::Prune(a) => prune::run(&ctx, a),
        RemoteCommand::Pull(a) => pull::run(&ctx, a),
        RemoteCommand::Attach(a) => attach::run(&ctx, a),
    }
}

pub fn status_filter(f: StatusFilter) -> Option<SessionStatus> {
    match f {
        StatusFilter::All => None,
        StatusFilter::Pending => Some(SessionStatus::Pending),
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
    use crate::model::{format_timestamp, parse_timestamp};

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
