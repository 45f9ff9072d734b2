//! `start`: one or more prompts, each a detached session on a pool VM (the flow is
//! `launch.rs`, shared with `continue`).

use crate::cli::StartArgs;
use crate::ctx::Ctx;
use crate::error::Result;

pub fn run(ctx: &Ctx, args: StartArgs) -> Result<()> {
    crate::launch::run(ctx, args)
}
