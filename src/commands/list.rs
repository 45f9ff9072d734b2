use crate::cli::ListArgs;
use crate::ctx::{Ctx, status_filter};
use crate::error::Result;
use crate::refresh;
use crate::ui;
use crate::ui::render;

pub fn run(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let refresh::Refreshed { state, live, .. } = if args.refresh.no_refresh {
        // Sessions are all `list` shows: the VM entries are checked, not built.
        refresh::Refreshed {
            state: ctx.store.load_sessions_only()?,
            live: render::Live::default(),
            failed_vms: Default::default(),
            archive_failures: Default::default(),
        }
    } else {
        refresh::current(ctx, refresh::Source::Vms, refresh::Power::Skip)?
    };
    let filter = status_filter(args.status);
    let rows = render::sessions_newest_first(&state, filter.as_ref());
    let now = ctx.now();
    if args.json {
        ui::write_stdout(|out| render::write_list_json(out, &rows, &live))?;
    } else if args.verbose {
        ui::print(&render::list_verbose(&rows, &live, now))?;
    } else {
        ui::print(&render::list_table(&rows, &live, now, ui::stdout_color()))?;
    }
    // The process ends next: freeing thousands of sessions one by one would cost ~10% of
    // the command's time for nothing.
    std::mem::forget(state);
    Ok(())
}
