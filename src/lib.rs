//! `amplihack remote`: AI coding-agent tasks as detached tmux sessions on a pool of VMs.
//! Architecture: docs/architecture.md.

pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod ctx;
pub mod error;
pub mod exec;
pub mod forward;
pub mod interrupt;
pub mod parallel;
pub mod pr;
pub mod provision;
pub mod refresh;
pub mod resume;

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
pub mod remote;
pub mod state;
pub mod ui;
