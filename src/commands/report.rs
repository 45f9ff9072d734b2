//! `report`: what each recent session produced (status, exit, duration, commits, changes) in
//! one table with a total line, or as JSON. It refreshes first, as `list` does, and the same
//! call per VM brings home the archives of the sessions it shows that are not archived yet:
//! at most one azlin call per VM.

use std::collections::{BTreeSet, HashMap};

use crate::cli::ReportArgs;
use crate::core::model::SessionResult;
use crate::ctx::{Ctx, status_filter};
use crate::error::Result;
use crate::{refresh, ui, ui::report};

pub fn run(ctx: &Ctx, args: ReportArgs) -> Result<()> {
    let filter = status_filter(args.status);
    let now = ctx.now();
    let refreshed = if args.refresh.no_refresh {
        refresh::current(ctx, refresh::Source::Recorded, refresh::Power::Skip)?
    } else {
        let before = ctx.store.load()?;
        let wanted: BTreeSet<String> = report::select(&before, args.since, filter.as_ref(), now)
            .into_iter()
            .filter(|s| refresh::unarchived(&before, s))
            .map(|s| s.session_id.clone())
            .collect();
        refresh::refresh_with(ctx, refresh::Power::Skip, &wanted)?
    };
    let now = ctx.now();
    let sessions = report::select(&refreshed.state, args.since, filter.as_ref(), now);
    let mut results: HashMap<String, SessionResult> = HashMap::new();
    for s in sessions.iter().filter(|s| s.archived_at.is_some()) {
        match ctx.archive.result(&s.session_id) {
            Ok(Some(r)) => {
                results.insert(s.session_id.clone(), r);
            }
            Ok(None) => {}
            Err(e) => ui::warn(&format!("{e}; its commits and changes are left out")),
        }
    }
    let mut rows = report::rows(&sessions, &results, &refreshed.live, now);
    report::add_costs(&mut rows, &refreshed.state.vm_pool, &ctx.settings.prices);
    if args.json {
        ui::print(&report::json(&rows))?;
    } else {
        ui::print(&report::table(&rows, args.since, ui::stdout_color()))?;
    }
    let unpulled = rows
        .iter()
        .filter(|r| r.commits.is_some_and(|n| n > 0) && !r.pulled)
        .count();
    if unpulled > 0 {
        ui::progress(&format!(
            "{unpulled} session(s) with commits not pulled yet: 'amplihack remote pull --all' brings them home."
        ));
    }
    Ok(())
}
