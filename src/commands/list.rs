use crate::cli::ListArgs;
use crate::commands::{Ctx, status_filter};
use crate::error::Result;
use crate::refresh;
use crate::render::{self, Live};
use crate::ui;

pub fn run(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let (state, live) = if args.refresh.no_refresh {
        (ctx.store.load()?, Live::default())
    } else {
        let r = refresh::refresh(ctx, false)?;
        (r.state, r.live)
    };
    let filter = status_filter(args.status);
    let rows = render::sessions_newest_first(&state, filter.as_ref());
    let now = ctx.now();
    let text = if args.json {
        render::list_json(&rows, &live)
    } else if args.verbose {
        render::list_verbose(&rows, &live, now)
    } else {
        render::list_table(&rows, &live, now, ui::stdout_color())
    };
    ui::print(&text)
}
