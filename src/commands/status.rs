use crate::cli::StatusArgs;
use crate::commands::Ctx;
use crate::error::Result;
use crate::refresh;
use crate::render;
use crate::ui;

pub fn run(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let refresh::Refreshed { state, live, .. } =
        refresh::current(ctx, args.refresh.no_refresh, true)?;
    let now = ctx.now();
    let status = render::pool_status(&state, &live, &ctx.settings.prices, now);
    let text = if args.json {
        render::status_json(&status)
    } else {
        render::status_text_report(&status, now)
    };
    ui::print(&text)?;
    // The process ends next: freeing thousands of sessions one by one would cost ~10% of
    // the command's time for nothing.
    std::mem::forget(state);
    Ok(())
}
