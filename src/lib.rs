//! `amplihack remote`: AI coding-agent tasks as detached tmux sessions on a pool of VMs.
//! Architecture: docs/architecture.md.

pub mod cli;
pub(crate) mod commands;
pub(crate) mod config;
pub(crate) mod context;
pub(crate) mod ctx;
pub mod error;
pub(crate) mod exec;
pub mod forward;
pub mod interrupt;
pub(crate) mod launch;
pub(crate) mod parallel;
pub(crate) mod pr;
pub(crate) mod provision;
pub(crate) mod refresh;
pub(crate) mod resume;

use cli::{Cli, TopCommand};
use error::Result;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        TopCommand::Remote { command } => commands::dispatch(command),
        // Returns only when the other amplihack cannot be run.
        TopCommand::External(args) => Err(forward::exec_other_amplihack(args)),
    }
}
pub mod core;
pub(crate) mod remote;
pub mod state;
pub mod ui;
