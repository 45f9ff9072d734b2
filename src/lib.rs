//! `amplihack remote`: AI coding-agent tasks as detached tmux sessions on a pool of VMs.
//! Architecture: docs/architecture.md.

pub mod archive;
pub mod atomic;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod ctx;
pub mod error;
pub mod exec;
pub mod forward;
pub mod interrupt;
pub mod lifecycle;
pub mod model;
pub mod naming;
pub mod parallel;
pub mod pool;
pub mod progress;
pub mod provision;
pub mod reconcile;
pub mod refresh;
pub mod render;
pub mod report;
pub mod sanitize;
pub mod script;
pub mod state;
pub mod stream;
pub mod transport;
pub mod ui;
pub mod unattended;

use cli::{Cli, TopCommand};
use error::Result;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        TopCommand::Remote { command } => commands::dispatch(command),
        // Returns only when the other amplihack cannot be run.
        TopCommand::External(args) => Err(forward::exec_other_amplihack(args)),
    }
}
