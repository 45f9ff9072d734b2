//! The morning report: what each recent session produced, as a table with a total line, or as
//! JSON. Pure: the state, the sessions' results and `now` come in, text goes out.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::core::model::{Changes, Session, SessionResult, SessionStatus, State, format_timestamp};
use crate::ui::render::{self, Live};

/// `30m`, `12h`, `2d` (also `45s`, `1w`): a whole number above 0 and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a whole number and a unit, s, m, h, d or w (e.g. 30m, 12h, 2d)";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: i64 = match number.parse() {
        Ok(n) if n > 0 && n <= 100_000 => n,
        _ => return Err(expected.into()),
    };
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        "w" => Ok(Duration::weeks(n)),
        _ => Err(expected.into()),
    }
}

/// A duration as the report shows it: `45s`, `12m`, `1h05m`, `2d03h`.
pub fn duration_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A window as the user would write it: the largest unit it is a whole number of, but days
/// and weeks only from two of them (`24h` stays `24h`, as the default is given).
pub fn window_text(window: Duration) -> String {
    let s = window.num_seconds();
    if s % 604800 == 0 && s >= 2 * 604800 {
        format!("{}w", s / 604800)
    } else if s % 86400 == 0 && s >= 2 * 86400 {
        format!("{}d", s / 86400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The sessions of a report, newest first: every one still pending or running, and those that
/// ended within `window` before `now`; with `filter`, only those of that status.
pub fn select<'a>(
    state: &'a State,
    window: Duration,
    filter: Option<&SessionStatus>,
    now: DateTime<Utc>,
) -> Vec<&'a Session> {
    let since = now - window;
    render::sessions_newest_first(state, filter)
        .into_iter()
        .filter(|s| s.status.is_active() || s.completed_at.unwrap_or(s.created_at) >= since)
        .collect()
}

/// One row of the report; its JSON form is one object of `report --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub session_id: String,
    pub vm_name: String,
    pub status: String,
    /// Its VM did not answer this refresh: the status is as last known.
    pub vm_unreachable: bool,
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_seconds: Option<i64>,
    /// Commits since the starting commit (known once the session is archived).
    pub commits: Option<u64>,
    /// The committed changes against the starting commit.
    pub files_changed: Option<u64>,
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
    /// Work left uncommitted in the workspace: not in the commits, not brought home by pull.
    pub uncommitted: Option<Changes>,
    /// Its results are in the archive: `output` and `pull` no longer need its VM.
    pub archived: bool,
    /// `pull` fetched its commits (the head it fetched is its current head).
    pub pulled: bool,
    /// The session it continues, for a follow-up (`continue`).
    pub parent_session_id: Option<String>,
    /// The pull request `pull --pr` opened for its branch.
    pub pr_url: Option<String>,
    /// Its share of its VM's cost, approximately: duration x hourly price / slots (None when
    /// the price or the VM is unknown). See `add_costs`.
    pub cost_usd: Option<f64>,
    /// What its supervisor says while it runs (a retry it waits for, silence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub prompt: String,
}

pub fn rows(
    sessions: &[&Session],
    results: &HashMap<String, SessionResult>,
    live: &Live,
    now: DateTime<Utc>,
) -> Vec<ReportRow> {
    sessions
        .iter()
        .map(|s| {
            let result = results.get(&s.session_id);
            let end = if s.status.is_active() {
                Some(now)
            } else {
                s.completed_at
            };
            let duration_seconds = result
                .and_then(|r| r.duration_seconds)
                .filter(|_| !s.status.is_active())
                .or_else(|| Some((end? - s.started_at?).num_seconds().max(0)));
            let committed = result.and_then(|r| r.committed);
            ReportRow {
                session_id: s.session_id.clone(),
                vm_name: s.vm_name.clone(),
                status: s.status.to_string(),
                vm_unreachable: s.status.is_active() && live.unreachable.contains(&s.vm_name),
                exit_code: s.exit_code,
                started_at: s.started_at.map(|t| format_timestamp(&t)),
                completed_at: s.completed_at.map(|t| format_timestamp(&t)),
                duration_seconds,
                commits: result.and_then(|r| r.commits),
                files_changed: committed.map(|c| c.files),
                insertions: committed.map(|c| c.insertions),
                deletions: committed.map(|c| c.deletions),
                uncommitted: result.and_then(SessionResult::uncommitted_work),
                archived: s.archived_at.is_some(),
                pulled: s.pulled_commit.is_some()
                    && s.pulled_commit == result.and_then(|r| r.head_commit.clone()),
                parent_session_id: s.parent_session_id().map(str::to_string),
                pr_url: s.pr_url().map(str::to_string),
                cost_usd: None,
                detail: s.detail.clone().filter(|_| s.status.is_active()),
                prompt: s.prompt.to_string(),
            }
        })
        .collect()
}

/// Each row's approximate VM cost: its duration times its VM's hourly price (the table of
/// `status`, `AMPLIHACK_REMOTE_PRICES` included), divided by the VM's slots, as the session's
/// share of the VM. The local backend costs nothing; an unknown VM or price leaves it unknown.
pub fn add_costs(
    rows: &mut [ReportRow],
    pool: &std::collections::BTreeMap<String, crate::core::model::VmEntry>,
    prices: &crate::core::pool::PriceTable,
) {
    for r in rows {
        let Some(vm) = pool.get(&r.vm_name) else {
            continue;
        };
        let hourly = match vm.backend {
            crate::core::model::Backend::Local => Some(0.0),
            crate::core::model::Backend::Azure => prices.hourly_usd(&vm.size),
        };
        r.cost_usd = match (hourly, r.duration_seconds) {
            (Some(price), Some(secs)) => {
                let share = price * secs as f64 / 3600.0 / f64::from(vm.capacity.max(1));
                Some((share * 10_000.0).round() / 10_000.0)
            }
            // Never started (queued, then killed; refused): it used no VM time.
            (Some(_), None) if r.started_at.is_none() => Some(0.0),
            _ => None,
        };
    }
}

fn files(n: u64) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// `+120 -8 (5 files)`; `none` for no change at all.
pub fn changes_text(c: &Changes) -> String {
    if *c == Changes::default() {
        return "none".into();
    }
    format!("+{} -{} ({})", c.insertions, c.deletions, files(c.files))
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The table, its total line and, when a session left work uncommitted, a note naming them.
pub fn table(rows: &[ReportRow], window: Duration, color: bool) -> String {
    if rows.is_empty() {
        return format!(
            "No session ended in the last {}, and none is running.\n",
            window_text(window)
        );
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let changes = match (r.files_changed, r.insertions, r.deletions) {
                (Some(files), Some(insertions), Some(deletions)) => changes_text(&Changes {
                    files,
                    insertions,
                    deletions,
                }),
                _ => "-".into(),
            };
            vec![
                r.session_id.clone(),
                if r.vm_unreachable {
                    format!("{} (vm unreachable)", r.status)
                } else if let Some(d) = &r.detail {
                    format!(
                        "{} ({})",
                        r.status,
                        crate::core::unattended::short_detail(d)
                    )
                } else {
                    r.status.clone()
                },
                or_dash(r.exit_code),
                r.duration_seconds.map_or_else(|| "-".into(), duration_text),
                r.cost_usd
                    .map_or_else(|| "-".into(), |c| format!("${c:.2}")),
                or_dash(r.commits),
                if r.uncommitted.is_some() {
                    format!("{changes} *")
                } else {
                    changes
                },
                render::one_line(&r.prompt, 40),
            ]
        })
        .collect();
    let mut out = render::table(
        &[
            "SESSION", "STATUS", "EXIT", "DURATION", "COST", "COMMITS", "CHANGES", "PROMPT",
        ],
        &cells,
        |r, c, cell| {
            if c == 1 {
                render::paint(cell, &SessionStatus::from(rows[r].status.as_str()), color)
            } else {
                cell.to_string()
            }
        },
    );
    out.push_str(&total_line(rows));
    out.push_str(&cost_line(rows));
    let dirty: Vec<&ReportRow> = rows.iter().filter(|r| r.uncommitted.is_some()).collect();
    if !dirty.is_empty() {
        out.push_str(
            "* Uncommitted work left in the workspace: in no commit, so pull does not bring it home; its archive keeps it as a patch, which pull --resume applies:\n",
        );
        for r in dirty {
            let c = r.uncommitted.unwrap_or_default();
            let _ = writeln!(out, "  {}: {}", r.session_id, changes_text(&c));
        }
    }
    let follow_ups: Vec<&ReportRow> = rows
        .iter()
        .filter(|r| r.parent_session_id.is_some())
        .collect();
    if !follow_ups.is_empty() {
        out.push_str("Follow-ups:\n");
        for r in follow_ups {
            let parent = r.parent_session_id.as_deref().unwrap_or_default();
            let _ = writeln!(out, "  {} continues {parent}", r.session_id);
        }
    }
    let prs: Vec<&ReportRow> = rows.iter().filter(|r| r.pr_url.is_some()).collect();
    if !prs.is_empty() {
        out.push_str("Pull requests:\n");
        for r in prs {
            let url = r.pr_url.as_deref().unwrap_or_default();
            let _ = writeln!(out, "  {}: {url}", r.session_id);
        }
    }
    out
}

/// `Total: 8 sessions (5 completed, 2 failed, 1 running), 14 commits, +560 -40 (23 files)`.
pub fn total_line(rows: &[ReportRow]) -> String {
    let mut by_status: Vec<(String, usize)> = Vec::new();
    for r in rows {
        match by_status.iter_mut().find(|(s, _)| *s == r.status) {
            Some((_, n)) => *n += 1,
            None => by_status.push((r.status.clone(), 1)),
        }
    }
    let order = |s: &str| {
        ["completed", "failed", "killed", "running", "pending"]
            .iter()
            .position(|o| *o == s)
            .unwrap_or(usize::MAX)
    };
    by_status.sort_by(|a, b| order(&a.0).cmp(&order(&b.0)).then(a.0.cmp(&b.0)));
    // An unknown status is the state's own string: nothing in it may act on the terminal.
    let statuses: Vec<String> = by_status
        .iter()
        .map(|(s, n)| format!("{n} {}", crate::ui::sanitize::text(s)))
        .collect();
    let sum = |f: fn(&ReportRow) -> Option<u64>| rows.iter().filter_map(f).sum::<u64>();
    let commits = sum(|r| r.commits);
    let changes = Changes {
        files: sum(|r| r.files_changed),
        insertions: sum(|r| r.insertions),
        deletions: sum(|r| r.deletions),
    };
    format!(
        "Total: {} session{} ({}), {commits} commit{}, {}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        statuses.join(", "),
        if commits == 1 { "" } else { "s" },
        changes_text(&changes)
    )
}

/// `Cost: ~$3.42 of VM time (duration x hourly list price / slots; 1 session of unknown price)`,
/// or nothing when no row has a price.
pub fn cost_line(rows: &[ReportRow]) -> String {
    let known: Vec<f64> = rows.iter().filter_map(|r| r.cost_usd).collect();
    if known.is_empty() {
        return String::new();
    }
    let unknown = rows.len() - known.len();
    let total: f64 = known.iter().sum();
    let mut line =
        format!("Cost: ~${total:.2} of VM time (duration x hourly price / the VM's slots");
    if unknown > 0 {
        let _ = write!(
            line,
            "; {unknown} session{} of unknown price left out",
            if unknown == 1 { "" } else { "s" }
        );
    }
    line.push_str(")\n");
    line
}

pub fn json(rows: &[ReportRow]) -> String {
    let mut out = serde_json::to_string_pretty(rows).expect("report rows serialize");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::SessionStatus::*;
    use crate::core::pool::tests::{session, t0};

    #[test]
    fn durations_parse_and_show() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::minutes(30));
        assert_eq!(parse_duration("12h").unwrap(), Duration::hours(12));
        assert_eq!(parse_duration("2d").unwrap(), Duration::days(2));
        assert_eq!(parse_duration("1w").unwrap(), Duration::weeks(1));
        for bad in [
            "",
            "h",
            "0h",
            "12",
            "12x",
            "-3h",
            "1.5h",
            "12 h",
            "999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(duration_text(45), "45s");
        assert_eq!(duration_text(12 * 60 + 5), "12m");
        assert_eq!(duration_text(3600 + 5 * 60), "1h05m");
        assert_eq!(duration_text(2 * 86400 + 3 * 3600), "2d03h");
        assert_eq!(window_text(Duration::hours(24)), "24h");
        assert_eq!(window_text(Duration::days(3)), "3d");
        assert_eq!(window_text(Duration::days(7)), "7d");
        assert_eq!(window_text(Duration::days(14)), "2w");
        assert_eq!(window_text(Duration::hours(12)), "12h");
        assert_eq!(window_text(Duration::minutes(90)), "90m");
    }

    fn result(commits: u64, committed: (u64, u64, u64), uncommitted: u64) -> SessionResult {
        SessionResult {
            duration_seconds: Some(3900),
            head_commit: Some(format!("head{commits}")),
            commits: Some(commits),
            committed: Some(Changes {
                files: committed.0,
                insertions: committed.1,
                deletions: committed.2,
            }),
            uncommitted: Some(Changes {
                files: uncommitted,
                insertions: uncommitted * 3,
                deletions: 0,
            }),
            dirty: Some(uncommitted > 0),
            ..Default::default()
        }
    }

    /// Four sessions: two that ended in the window (one with uncommitted work), one still
    /// running, one that ended two days ago.
    fn sample() -> (State, HashMap<String, SessionResult>) {
        let mut st = State::default();
        let mut add = |id: &str, status, mins: i64, prompt: &str| {
            let mut s = session(id, "vm-a", status);
            s.created_at = t0() + Duration::minutes(mins);
            s.started_at = Some(s.created_at);
            if !s.status.is_active() {
                s.completed_at = Some(s.created_at + Duration::minutes(65));
                s.exit_code = Some(if s.status == Completed { 0 } else { 3 });
                s.archived_at = s.completed_at;
            }
            s.prompt = prompt.into();
            st.sessions.insert(id.into(), s);
        };
        add("sess-a", Completed, 0, "implement user authentication");
        add("sess-b", Failed, 1, "add pagination to API");
        add(
            "sess-c",
            Running,
            2,
            "write unit tests for the parser module please",
        );
        add("sess-old", Completed, -3000, "old work");
        let results = HashMap::from([
            ("sess-a".to_string(), result(2, (5, 120, 8), 0)),
            ("sess-b".to_string(), result(0, (0, 0, 0), 1)),
            ("sess-old".to_string(), result(1, (1, 1, 0), 0)),
        ]);
        (st, results)
    }

    #[test]
    fn each_session_costs_its_share_of_its_vm_and_the_total_adds_them() {
        let (mut st, results) = sample();
        // 4 slots at $2/h: 65 minutes cost 2 x 65/60 / 4 = $0.5417.
        st.vm_pool.insert(
            "vm-a".into(),
            crate::core::pool::tests::vm("Standard_X", 4, "eastus"),
        );
        let prices = crate::core::pool::PriceTable::with_overrides("Standard_X=2").unwrap();
        let now = t0() + Duration::hours(3);
        let sessions = select(&st, Duration::hours(24), None, now);
        let mut rows = rows(&sessions, &results, &Live::default(), now);
        add_costs(&mut rows, &st.vm_pool, &prices);
        let a = rows.iter().find(|r| r.session_id == "sess-a").unwrap();
        assert_eq!(a.cost_usd, Some(0.5417));
        let text = table(&rows, Duration::hours(24), false);
        assert!(text.contains("1h05m     $0.54"), "{text}");
        let total: f64 = rows.iter().filter_map(|r| r.cost_usd).sum();
        assert!(
            text.contains(&format!("Cost: ~${total:.2} of VM time")),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        assert_eq!(json[2]["cost_usd"], 0.5417);
        // Unknown price: unknown cost, and no cost line at all.
        let mut rows = super::rows(&sessions, &results, &Live::default(), now);
        add_costs(
            &mut rows,
            &st.vm_pool,
            &crate::core::pool::PriceTable::default(),
        );
        assert!(rows.iter().all(|r| r.cost_usd.is_none()));
        assert!(!table(&rows, Duration::hours(24), false).contains("Cost:"));
    }

    #[test]
    fn a_session_that_never_started_cost_nothing() {
        let (mut st, results) = sample();
        st.vm_pool.insert(
            "vm-a".into(),
            crate::core::pool::tests::vm("Standard_X", 4, "eastus"),
        );
        let prices = crate::core::pool::PriceTable::with_overrides("Standard_X=2").unwrap();
        let now = t0() + Duration::hours(3);
        let sessions = select(&st, Duration::hours(24), None, now);
        let mut rows = rows(&sessions, &results, &Live::default(), now);
        for r in rows.iter_mut() {
            r.started_at = None;
            r.duration_seconds = None;
        }
        add_costs(&mut rows, &st.vm_pool, &prices);
        let on_vm_a: Vec<_> = rows.iter().filter(|r| r.vm_name == "vm-a").collect();
        assert!(!on_vm_a.is_empty());
        assert!(on_vm_a.iter().all(|r| r.cost_usd == Some(0.0)));
    }

    #[test]
    fn the_table_matches_expected_text() {
        let (st, results) = sample();
        let now = t0() + Duration::hours(3);
        let sessions = select(&st, Duration::hours(24), None, now);
        assert_eq!(sessions.len(), 3, "the session of two days ago is out");
        let rows = rows(&sessions, &results, &Live::default(), now);
        assert_eq!(
            table(&rows, Duration::hours(24), false),
            include_str!("../../tests/expected/report.txt")
        );
        let failed = select(&st, Duration::hours(24), Some(&Failed), now);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            table(&[], Duration::hours(12), false),
            "No session ended in the last 12h, and none is running.\n"
        );
        let mut live = Live::default();
        live.unreachable.insert("vm-a".into());
        let text = table(
            &super::rows(&sessions, &results, &live, now),
            Duration::hours(24),
            true,
        );
        assert!(
            text.contains("\x1b[36mrunning (vm unreachable)\x1b[0m"),
            "{text}"
        );
    }

    #[test]
    fn json_has_the_tables_fields() {
        let (st, results) = sample();
        let now = t0() + Duration::hours(3);
        let rows = rows(
            &select(&st, Duration::days(7), None, now),
            &results,
            &Live::default(),
            now,
        );
        let v: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 4);
        let first = &a[0];
        assert_eq!(first["session_id"], "sess-c");
        assert_eq!(first["status"], "running");
        assert_eq!(first["duration_seconds"], 3 * 3600 - 120);
        assert!(first["commits"].is_null() && first["exit_code"].is_null());
        let b = &a[1];
        assert_eq!(
            (
                b["exit_code"].as_i64(),
                b["commits"].as_u64(),
                b["archived"].as_bool()
            ),
            (Some(3), Some(0), Some(true))
        );
        assert_eq!(b["uncommitted"]["files"], 1);
        assert_eq!(b["uncommitted"]["insertions"], 3);
        let c = &a[2];
        assert_eq!(
            (
                c["files_changed"].as_u64(),
                c["insertions"].as_u64(),
                c["deletions"].as_u64(),
                c["duration_seconds"].as_i64()
            ),
            (Some(5), Some(120), Some(8), Some(3900))
        );
        assert!(c["uncommitted"].is_null());
        assert!(c["parent_session_id"].is_null() && c["pr_url"].is_null());
        assert_eq!(json(&[]), "[]\n");
    }

    #[test]
    fn follow_ups_and_pull_requests_are_named_under_the_table() {
        let (mut st, results) = sample();
        let now = t0() + Duration::hours(3);
        let ids: Vec<String> = st.sessions.keys().cloned().collect();
        st.sessions
            .get_mut(&ids[1])
            .unwrap()
            .set_parent_session_id(&ids[0]);
        st.sessions
            .get_mut(&ids[0])
            .unwrap()
            .set_pr_url("https://example.invalid/pr/1");
        let rows = rows(
            &select(&st, Duration::days(7), None, now),
            &results,
            &Live::default(),
            now,
        );
        let text = table(&rows, Duration::days(7), false);
        assert!(
            text.contains(&format!("Follow-ups:\n  {} continues {}\n", ids[1], ids[0])),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "Pull requests:\n  {}: https://example.invalid/pr/1\n",
                ids[0]
            )),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        let child = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["session_id"] == ids[1].as_str())
            .unwrap();
        assert_eq!(child["parent_session_id"], ids[0].as_str());
    }
}
