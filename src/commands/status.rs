use crate::cli::StatusArgs;
use crate::core::model::Backend;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::refresh;
use crate::ui;
use crate::ui::render;

pub fn run(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let refresh::Refreshed {
        state, mut live, ..
    } = refresh::current(
        ctx,
        refresh::Source::of(args.refresh.no_refresh),
        refresh::Power::Read,
    )?;
    if state
        .vm_pool
        .values()
        .any(|vm| vm.backend == Backend::Local)
    {
        live.local_memory_bytes = crate::exec::machine_memory_bytes();
    }
    let now = ctx.now();
    let status = render::pool_status(&state, &live, &ctx.settings.prices, now);
    if args.json {
        ui::write_stdout(|out| render::write_status_json(out, &status))?;
    } else {
        ui::print(&render::status_text_report(&status, now))?;
    }
    // The process ends next: freeing thousands of sessions and VMs one by one would cost
    // ~10% of the command's time for nothing.
    std::mem::forget(status);
    std::mem::forget(state);
    Ok(())
}
