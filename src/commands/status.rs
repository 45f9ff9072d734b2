use crate::cli::StatusArgs;
use crate::commands::Ctx;
use crate::error::Result;
use crate::refresh;
use crate::render::{self, Live};
use crate::ui;

pub fn run(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let (state, live) = if args.refresh.no_refresh {
        (ctx.store.load()?, Live::default())
    } else {
        let r = refresh::refresh(ctx, true)?;
        (r.state, r.live)
    };
    let now = ctx.now();
    let status = render::pool_status(&state, &live, now);
    if args.json {
        ui::print(&render::status_json(&status))
    } else {
        ui::print(&render::status_text_report(&status, now))
    }
}
