//! One module per command. Each takes the context (`crate::ctx::Ctx`) and its clap arguments
//! and runs start to finish; state and processes are reached only through `StateStore` and the
//! transports. Nothing outside main imports from here.

pub mod attach;
pub mod completions;
pub mod r#continue;
pub mod kill;
pub mod list;
pub mod man;
pub mod output;
pub mod prime;
pub mod prune;
pub mod pull;
pub mod report;
pub mod start;
pub mod status;
pub mod sync;
pub mod wait;

use crate::cli::RemoteCommand;
use crate::ctx::Ctx;
use crate::error::Result;

pub fn dispatch(command: RemoteCommand) -> Result<()> {
    // Generated from the command tree alone: no settings, state or VM is needed.
    match command {
        RemoteCommand::Completions(a) => return completions::run(a),
        RemoteCommand::Man => return man::run(),
        // For the completion scripts: the state file alone, whatever else is configured.
        RemoteCommand::Sessions => return completions::session_ids(),
        _ => {}
    }
    let ctx = Ctx::from_env()?;
    match command {
        RemoteCommand::List(a) => list::run(&ctx, a),
        RemoteCommand::Start(a) => start::run(&ctx, a),
        RemoteCommand::Output(a) => output::run(&ctx, a),
        RemoteCommand::Kill(a) => kill::run(&ctx, a),
        RemoteCommand::Status(a) => status::run(&ctx, a),
        RemoteCommand::Prime(a) => prime::run(&ctx, a),
        RemoteCommand::Prune(a) => prune::run(&ctx, a),
        RemoteCommand::Continue(a) => r#continue::run(&ctx, a),
        RemoteCommand::Pull(a) => pull::run(&ctx, a),
        RemoteCommand::Attach(a) => attach::run(&ctx, a),
        RemoteCommand::Report(a) => report::run(&ctx, a),
        RemoteCommand::Wait(a) => wait::run(&ctx, a),
        RemoteCommand::Completions(a) => completions::run(a),
        RemoteCommand::Man => man::run(),
        RemoteCommand::Sessions => completions::session_ids(),
        RemoteCommand::Sync(a) => sync::run(&ctx, a),
    }
}
