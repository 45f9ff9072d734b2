//! Rendering: tables, blocks and JSON from the state. Pure: everything it needs, `now`
//! included, comes in as parameters, and it returns text.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use crate::core::model::{
    Backend, Session, SessionStatus, State, VmEntry, VmState, format_timestamp,
};
use crate::core::pool;

/// Facts learned from the VMs during this command, shown beside the state.
#[derive(Debug, Default, Clone)]
pub struct Live {
    /// VMs that did not answer the refresh.
    pub unreachable: HashSet<String>,
    /// VMs that answered the refresh.
    pub answered: HashSet<String>,
    /// This machine's memory, the local backend's real memory in `status`.
    pub local_memory_bytes: Option<u64>,
    /// Power state per VM from `azlin list`, when it was asked.
    pub power: Option<BTreeMap<String, String>>,
}

impl Live {
    /// Whether Azure bills this Azure VM's compute now: not while deallocated, nor once gone
    /// from Azure; without power states (not read, or unreadable) assume it does.
    fn billed_now(&self, name: &str) -> bool {
        match &self.power {
            None => true,
            Some(power) => power.get(name).is_some_and(|p| pool::is_billed(p)),
        }
    }

    fn vm_missing(&self, name: &str, vm: &VmEntry) -> bool {
        vm.backend == Backend::Azure
            && vm.state == VmState::Ready
            && self.power.as_ref().is_some_and(|p| !p.contains_key(name))
    }
}

const PROMPT_WIDTH: usize = 40;

/// `45s`, `5m`, `2h`, `3d`.
pub fn age(from: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - from).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// One line of at most `width` characters: whitespace runs fold to one space, other control
/// characters become `?` (a prompt must not move the cursor or break the table), and a longer
/// text is cut, on a word boundary when one is near, with `...`.
pub fn one_line(text: &str, width: usize) -> String {
    let mut folded = String::with_capacity(text.len().min(width * 4));
    let mut chars = 0;
    let mut truncated = false;
    for c in text.trim().chars() {
        let c = if c.is_whitespace() {
            ' '
        } else if crate::ui::sanitize::is_unsafe(c) {
            '?'
        } else {
            c
        };
        if c == ' ' && folded.ends_with(' ') {
            continue;
        }
        if chars == width {
            truncated = true;
            break;
        }
        folded.push(c);
        chars += 1;
    }
    if !truncated {
        return folded;
    }
    let keep = match folded.rfind(' ') {
        Some(i) if folded[..i].chars().count() >= width / 2 => i,
        _ => folded.len(),
    };
    format!("{}...", folded[..keep].trim_end())
}

pub fn paint(text: &str, status: &SessionStatus, color: bool) -> String {
    if !color {
        return text.to_string();
    }
    let code = match status {
        SessionStatus::Pending => "33",
        SessionStatus::Queued => "34",
        SessionStatus::Running => "36",
        SessionStatus::Completed => "32",
        SessionStatus::Failed => "31",
        SessionStatus::Killed => "35",
        SessionStatus::Other(_) => return text.to_string(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Aligns columns with two spaces between them; `paint_cell` colours a cell after its width
/// is measured, so escape codes never count toward the width.
pub fn table(
    headers: &[&str],
    rows: &[Vec<String>],
    paint_cell: impl Fn(usize, usize, &str) -> String,
) -> String {
    // Cells come from the state and the VMs: nothing in them may act on the terminal.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| crate::ui::sanitize::line(c)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let last = headers.len() - 1;
    let mut out = String::new();
    let mut push_line = |cells: &mut dyn Iterator<Item = (usize, &str, String)>| {
        let start = out.len();
        for (i, plain, shown) in cells {
            out.push_str(&shown);
            if i != last {
                let pad = widths[i] - plain.chars().count();
                out.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    push_line(
        &mut headers
            .iter()
            .enumerate()
            .map(|(i, h)| (i, *h, h.to_string())),
    );
    for (r, row) in rows.iter().enumerate() {
        push_line(
            &mut row
                .iter()
                .enumerate()
                .map(|(c, cell)| (c, cell.as_str(), paint_cell(r, c, cell))),
        );
    }
    out
}

pub fn sessions_newest_first<'a>(
    state: &'a State,
    filter: Option<&SessionStatus>,
) -> Vec<&'a Session> {
    let mut list: Vec<&Session> = state
        .sessions
        .values()
        .filter(|s| filter.is_none_or(|f| &s.status == f))
        .collect();
    list.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.session_id.cmp(&a.session_id))
    });
    list
}

fn status_text(s: &Session, live: &Live) -> String {
    if s.status.is_active() && live.unreachable.contains(&s.vm_name) {
        format!("{} (vm unreachable)", s.status)
    } else if let Some(detail) = s.detail.as_deref().filter(|_| s.status.is_active()) {
        // What its supervisor says while it runs: `running (retry 1/2 at 14:05 UTC)`.
        format!(
            "{} ({})",
            s.status,
            crate::core::unattended::short_detail(detail)
        )
    } else {
        s.status.to_string()
    }
}

pub fn list_table(sessions: &[&Session], live: &Live, now: DateTime<Utc>, color: bool) -> String {
    if sessions.is_empty() {
        return "No sessions found. Start one with: amplihack remote start \"your task\"\n".into();
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.clone(),
                s.vm_name.clone(),
                status_text(s, live),
                age(s.created_at, now),
                one_line(&s.prompt, PROMPT_WIDTH),
            ]
        })
        .collect();
    table(
        &["SESSION", "VM", "STATUS", "AGE", "PROMPT"],
        &rows,
        |r, c, cell| {
            if c == 2 {
                paint(cell, &sessions[r].status, color)
            } else {
                cell.to_string()
            }
        },
    )
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| format_timestamp(&t))
        .unwrap_or_else(|| "-".into())
}

/// `list_verbose_unescaped` made safe for a terminal (`sanitize::text`): it shows text from the
/// state and the VMs.
pub fn list_verbose(sessions: &[&Session], live: &Live, now: DateTime<Utc>) -> String {
    crate::ui::sanitize::text(&list_verbose_unescaped(sessions, live, now))
}

fn list_verbose_unescaped(sessions: &[&Session], live: &Live, now: DateTime<Utc>) -> String {
    if sessions.is_empty() {
        return list_table(sessions, live, now, false);
    }
    let mut out = String::new();
    for s in sessions {
        let _ = writeln!(out, "{}", s.session_id);
        let _ = writeln!(out, "  VM:          {}", s.vm_name);
        let _ = writeln!(out, "  Status:      {}", status_text(s, live));
        let _ = writeln!(out, "  Command:     {}", s.command);
        let _ = writeln!(out, "  Max turns:   {}", s.max_turns);
        let _ = writeln!(out, "  Workspace:   {}", s.workspace);
        let _ = writeln!(out, "  tmux:        {}", s.tmux_session);
        let _ = writeln!(out, "  Memory:      {} MB", s.memory_mb);
        let _ = writeln!(
            out,
            "  Created:     {} ({} ago)",
            format_timestamp(&s.created_at),
            age(s.created_at, now)
        );
        let _ = writeln!(out, "  Started:     {}", opt_time(s.started_at));
        let _ = writeln!(out, "  Completed:   {}", opt_time(s.completed_at));
        let _ = writeln!(
            out,
            "  Exit code:   {}",
            s.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(e) = &s.error {
            let _ = writeln!(out, "  Error:       {}", one_line(e, 500));
        }
        if let Some(d) = s.detail.as_deref().filter(|_| s.status.is_active()) {
            let _ = writeln!(out, "  Detail:      {}", one_line(d, 500));
        }
        if let Some(r) = &s.repo_path {
            let _ = writeln!(out, "  Repository:  {r}");
        }
        if let Some(parent) = s.parent_session_id() {
            let _ = writeln!(out, "  Continues:   {parent}");
        }
        if let Some(url) = s.pr_url() {
            let _ = writeln!(out, "  PR:          {url}");
        }
        let _ = writeln!(out, "  Prompt:");
        for line in s.prompt.lines() {
            let _ = writeln!(out, "    {line}");
        }
        out.push('\n');
    }
    out
}

/// Writes sessions as a JSON array with the state file's field names (plus `vm_unreachable`
/// where it holds). Streams into `out`, so a large list never sits in memory twice.
pub fn write_list_json<W: std::io::Write + ?Sized>(
    out: &mut W,
    sessions: &[&Session],
    live: &Live,
) -> std::io::Result<()> {
    /// A session as `list --json` shows it.
    #[derive(Serialize)]
    struct ListItem<'a> {
        #[serde(flatten)]
        session: &'a Session,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        vm_unreachable: bool,
    }
    let items: Vec<ListItem> = sessions
        .iter()
        .map(|s| ListItem {
            session: s,
            vm_unreachable: s.status.is_active() && live.unreachable.contains(&s.vm_name),
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &items)?;
    out.write_all(b"\n")
}

/// `wait`'s line for a session that ended: `sess-... completed (exit 0) after 12m`, with the
/// reason when it failed without an exit code.
/// `wait_line_unescaped` made safe for a terminal (`sanitize::text`): it shows text from the
/// state and the VMs.
pub fn wait_line(s: &Session) -> String {
    crate::ui::sanitize::text(&wait_line_unescaped(s))
}

fn wait_line_unescaped(s: &Session) -> String {
    let code = s
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    let after = match (s.started_at.or(Some(s.created_at)), s.completed_at) {
        (Some(from), Some(to)) => format!(" after {}", age(from, to)),
        _ => String::new(),
    };
    let why = match (&s.status, s.exit_code, &s.error) {
        (SessionStatus::Failed, None, Some(e)) => format!(": {e}"),
        _ => String::new(),
    };
    format!("{} {}{code}{after}{why}\n", s.session_id, s.status)
}

/// `wait`'s verdict on sessions that did not all complete: which did not, and how.
pub fn wait_failures(ended: &[&Session]) -> Option<String> {
    wait_failures_unescaped(ended).map(|t| crate::ui::sanitize::text(&t))
}

fn wait_failures_unescaped(ended: &[&Session]) -> Option<String> {
    let bad: Vec<String> = ended
        .iter()
        .filter(|s| s.status != SessionStatus::Completed)
        .map(|s| {
            let code = s
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            format!("{} {}{code}", s.session_id, s.status)
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "{} of {} session(s) did not complete: {}",
            bad.len(),
            ended.len(),
            bad.join(", ")
        )
    })
}

pub fn list_json(sessions: &[&Session], live: &Live) -> String {
    let mut out = Vec::new();
    write_list_json(&mut out, sessions, live).expect("writing to memory");
    String::from_utf8(out).expect("JSON is UTF-8")
}

#[derive(Debug, Serialize, PartialEq)]
pub struct VmStatus {
    pub name: String,
    pub size: String,
    pub sku: String,
    pub region: String,
    pub backend: Backend,
    pub state: VmState,
    pub capacity: u32,
    pub active_sessions: Vec<String>,
    /// Sessions waiting in this VM's queue, oldest first.
    pub queued_sessions: Vec<String>,
    pub capacity_percent: u32,
    pub memory_used_gb: u64,
    pub memory_total_gb: u64,
    /// None for a VM whose creation time is unknown (adopted by the Python original).
    pub created_at: Option<String>,
    pub age_seconds: Option<i64>,
    pub reachable: Option<bool>,
    pub power_state: Option<String>,
    pub exists_in_azure: Option<bool>,
    pub error: Option<String>,
    /// Approximate compute cost per hour now, USD: the pay-as-you-go list price while Azure
    /// bills the VM, 0 while it is deallocated or gone, 0 for `local`; `None` when its SKU
    /// has no price.
    pub hourly_usd: Option<f64>,
    /// At most this much since it was created, USD: the list price for every hour since
    /// then, as if it had run the whole time (the power history is unknown).
    pub cost_since_created_usd: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct SessionCounts {
    pub total: usize,
    pub pending: usize,
    pub queued: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
    pub killed: usize,
    pub other: usize,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CapacitySummary {
    pub used: u32,
    pub total: u32,
    pub available: u32,
}

pub const COST_BASIS: &str = "approx., pay-as-you-go list price";

#[derive(Debug, Serialize, PartialEq)]
pub struct PoolStatus {
    pub vms: Vec<VmStatus>,
    pub sessions: SessionCounts,
    pub capacity: CapacitySummary,
    /// What the pool's VMs cost per hour now, USD (VMs of unknown price not counted).
    pub total_hourly_usd: f64,
    /// Upper bound of what they have cost since each was created, USD.
    pub total_cost_since_created_usd: f64,
    pub cost_basis: &'static str,
    /// Whether power states were read; without them every Azure VM counts as billed.
    pub power_states_known: bool,
    /// Active sessions whose supervisor says something (a retry it waits for, silence), as
    /// (id, detail), for the text report; `list --json` carries `detail` per session.
    #[serde(skip)]
    pub details: Vec<(String, String)>,
}

/// Cents are noise at this precision; four places keep list prices such as 1.008 exact.
fn round_usd(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    // + 0.0 turns -0.0 (the sum of no prices, or a rounded tiny negative) into 0.0, which
    // prints as $0.00 rather than $-0.00.
    (value * scale).round() / scale + 0.0
}

/// (hourly now, since created) of one VM; `None`s for a SKU without a price.
fn vm_cost(
    name: &str,
    vm: &VmEntry,
    live: &Live,
    prices: &pool::PriceTable,
    now: DateTime<Utc>,
) -> (Option<f64>, Option<f64>) {
    if vm.backend == Backend::Local {
        // This machine is not billed by Azure.
        return (Some(0.0), Some(0.0));
    }
    let Some(price) = prices.hourly_usd(&vm.size) else {
        return (None, None);
    };
    let hours = vm
        .created_at
        .map(|at| (now - at).num_seconds().max(0) as f64 / 3600.0);
    let hourly = if live.billed_now(name) { price } else { 0.0 };
    (
        Some(round_usd(hourly, 4)),
        hours.map(|hours| round_usd(price * hours, 2)),
    )
}

pub fn pool_status(
    state: &State,
    live: &Live,
    prices: &pool::PriceTable,
    now: DateTime<Utc>,
) -> PoolStatus {
    let mut active: BTreeMap<&str, Vec<&Session>> = BTreeMap::new();
    let mut waiting: BTreeMap<&str, Vec<&Session>> = BTreeMap::new();
    let mut counts = SessionCounts::default();
    let mut details = Vec::new();
    for s in state.sessions.values() {
        counts.total += 1;
        if let Some(d) = s.detail.as_ref().filter(|_| s.status.is_active()) {
            details.push((s.session_id.clone(), d.clone()));
        }
        match s.status {
            SessionStatus::Pending => counts.pending += 1,
            SessionStatus::Queued => counts.queued += 1,
            SessionStatus::Running => counts.running += 1,
            SessionStatus::Completed => counts.completed += 1,
            SessionStatus::Failed => counts.failed += 1,
            SessionStatus::Killed => counts.killed += 1,
            SessionStatus::Other(_) => counts.other += 1,
        }
        if s.status.holds_slot() {
            active.entry(s.vm_name.as_str()).or_default().push(s);
        } else if s.status == SessionStatus::Queued {
            waiting.entry(s.vm_name.as_str()).or_default().push(s);
        }
    }
    for queue in waiting.values_mut() {
        queue.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.session_id.cmp(&b.session_id))
        });
    }
    let mut capacity = CapacitySummary {
        used: 0,
        total: 0,
        available: 0,
    };
    let vms = state
        .vm_pool
        .iter()
        .map(|(name, vm)| {
            let on_vm = active.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let used = on_vm.len() as u32;
            let spec = pool::size_by_sku(&vm.size);
            let memory_total_gb = match (vm.backend, live.local_memory_bytes) {
                (Backend::Local, Some(bytes)) => bytes.div_ceil(1 << 30),
                _ => spec
                    .map(|s| u64::from(s.memory_gb))
                    .unwrap_or(u64::from(vm.capacity) * pool::SESSION_MEMORY_MB / 1024),
            };
            let exists = match (&live.power, vm.backend) {
                (Some(_), Backend::Azure) => Some(!live.vm_missing(name, vm)),
                _ => None,
            };
            let power_state = live.power.as_ref().and_then(|p| p.get(name).cloned());
            // Slots of a VM gone from Azure are no slots anyone can use (a deallocated VM's
            // are, once started).
            let usable = vm.state == VmState::Ready && exists != Some(false);
            if usable {
                capacity.used += used.min(vm.capacity);
                capacity.total += vm.capacity;
            }
            let (hourly_usd, cost_since_created_usd) = vm_cost(name, vm, live, prices, now);
            VmStatus {
                name: name.clone(),
                size: match vm.backend {
                    Backend::Local => "local".into(),
                    Backend::Azure => spec
                        .map(|s| s.letter.to_string())
                        .unwrap_or_else(|| vm.size.clone()),
                },
                sku: vm.size.clone(),
                region: vm.region.clone(),
                backend: vm.backend,
                state: vm.state,
                capacity: vm.capacity,
                active_sessions: on_vm.iter().map(|s| s.session_id.clone()).collect(),
                queued_sessions: waiting
                    .get(name.as_str())
                    .map(|q| q.iter().map(|s| s.session_id.clone()).collect())
                    .unwrap_or_default(),
                capacity_percent: (used * 100).checked_div(vm.capacity).unwrap_or(0),
                memory_used_gb: on_vm.iter().map(|s| s.memory_mb).sum::<u64>() / 1024,
                memory_total_gb,
                created_at: vm.created_at.map(|at| format_timestamp(&at)),
                age_seconds: vm.created_at.map(|at| (now - at).num_seconds().max(0)),
                reachable: if live.unreachable.contains(name) {
                    Some(false)
                } else if live.answered.contains(name) {
                    Some(true)
                } else {
                    None
                },
                power_state,
                exists_in_azure: exists,
                error: vm.error.clone(),
                hourly_usd,
                cost_since_created_usd,
            }
        })
        .collect::<Vec<VmStatus>>();
    capacity.available = capacity.total - capacity.used;
    let total_hourly_usd = round_usd(vms.iter().filter_map(|v| v.hourly_usd).sum(), 4);
    let total_cost_since_created_usd =
        round_usd(vms.iter().filter_map(|v| v.cost_since_created_usd).sum(), 2);
    PoolStatus {
        vms,
        sessions: counts,
        capacity,
        total_hourly_usd,
        total_cost_since_created_usd,
        cost_basis: COST_BASIS,
        power_states_known: live.power.is_some(),
        details,
    }
}

fn usd(value: f64) -> String {
    format!("${value:.2}")
}

/// The cost line of one VM; none for `local`, which Azure does not bill.
fn vm_cost_line(vm: &VmStatus) -> Option<String> {
    if vm.backend == Backend::Local {
        return None;
    }
    Some(match (vm.hourly_usd, vm.cost_since_created_usd) {
        (Some(hourly), since) => {
            let why_free = match (&vm.power_state, vm.exists_in_azure) {
                _ if hourly > 0.0 => String::new(),
                (_, Some(false)) => " (not in Azure)".into(),
                (Some(p), _) => format!(" ({p})"),
                (None, _) => String::new(),
            };
            format!(
                "Cost: {}/h now{why_free}, {}",
                usd(hourly),
                match since {
                    Some(since) => format!("at most {} since created", usd(since)),
                    None => "since created unknown (creation time not recorded)".into(),
                }
            )
        }
        _ => format!(
            "Cost: price unknown ({}; set AMPLIHACK_REMOTE_PRICES)",
            vm.sku
        ),
    })
}

/// `status_text_report_unescaped` made safe for a terminal (`sanitize::text`): it shows text from the
/// state and the VMs.
pub fn status_text_report(status: &PoolStatus, now: DateTime<Utc>) -> String {
    crate::ui::sanitize::text(&status_text_report_unescaped(status, now))
}

fn status_text_report_unescaped(status: &PoolStatus, now: DateTime<Utc>) -> String {
    let mut out = String::from("=== Remote Session Pool Status ===\n");
    let _ = writeln!(out, "VMs: {} total", status.vms.len());
    for vm in &status.vms {
        let mut flags = Vec::new();
        match vm.state {
            VmState::Ready => {}
            VmState::Provisioning => flags.push("provisioning".to_string()),
            VmState::Deleting => flags.push("deleting".to_string()),
            VmState::Failed => flags.push("FAILED".to_string()),
        }
        // One reason a VM cannot be used, with what to do about it: gone from Azure, else
        // not running, else not answering.
        match (vm.exists_in_azure, vm.power_state.as_deref()) {
            (Some(false), _) => flags.push(
                "not in Azure any more: 'amplihack remote prune' removes it from the pool".into(),
            ),
            (_, Some(p)) if p != "Running" => {
                flags.push(format!("{p}: 'azlin start {}' starts it again", vm.name))
            }
            (_, power) => {
                if vm.reachable == Some(false) {
                    flags.push("unreachable".into());
                }
                if let Some(p) = power {
                    flags.push(p.to_string());
                }
            }
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(", "))
        };
        if vm.backend == Backend::Local {
            let _ = writeln!(out, "  {} (this machine){}", vm.name, flags);
        } else {
            let _ = writeln!(out, "  {} ({}, {}){}", vm.name, vm.size, vm.region, flags);
        }
        let _ = writeln!(
            out,
            "    Sessions: {}/{} ({}% capacity)",
            vm.active_sessions.len(),
            vm.capacity,
            vm.capacity_percent
        );
        if !vm.queued_sessions.is_empty() {
            let _ = writeln!(out, "    Queued: {}", vm.queued_sessions.len());
        }
        let _ = writeln!(
            out,
            "    Memory: {}GB/{}GB used",
            vm.memory_used_gb, vm.memory_total_gb
        );
        match vm.age_seconds {
            Some(seconds) => {
                let created = now - chrono::Duration::seconds(seconds);
                let _ = writeln!(out, "    Age: {}", age(created, now));
            }
            None => {
                let _ = writeln!(out, "    Age: unknown (creation time not recorded)");
            }
        }
        if let Some(line) = vm_cost_line(vm) {
            let _ = writeln!(out, "    {line}");
        }
        if let Some(e) = &vm.error {
            let _ = writeln!(out, "    Error: {}", one_line(e, 200));
        }
    }
    let c = &status.sessions;
    let _ = writeln!(out, "Sessions: {} total", c.total);
    if c.pending > 0 {
        let _ = writeln!(out, "  Pending: {}", c.pending);
    }
    if c.queued > 0 {
        let _ = writeln!(out, "  Queued: {}", c.queued);
    }
    let _ = writeln!(out, "  Running: {}", c.running);
    for (id, detail) in &status.details {
        let _ = writeln!(out, "    {id}: {}", one_line(detail, 200));
    }
    let _ = writeln!(out, "  Completed: {}", c.completed);
    let _ = writeln!(out, "  Failed: {}", c.failed);
    if c.killed > 0 {
        let _ = writeln!(out, "  Killed: {}", c.killed);
    }
    if c.other > 0 {
        let _ = writeln!(out, "  Other: {}", c.other);
    }
    let _ = writeln!(
        out,
        "Total Capacity: {}/{} slots available",
        status.capacity.available, status.capacity.total
    );
    let azure: Vec<&VmStatus> = status
        .vms
        .iter()
        .filter(|v| v.backend == Backend::Azure)
        .collect();
    if !azure.is_empty() {
        let _ = writeln!(
            out,
            "Cost: {}/h now ({})",
            usd(status.total_hourly_usd),
            status.cost_basis
        );
        let _ = writeln!(
            out,
            "  Since created: at most {} (an upper bound: as if every VM had run the whole time)",
            usd(status.total_cost_since_created_usd)
        );
        if !status.power_states_known {
            let _ = writeln!(out, "  Power states not read: every VM counted as running");
        }
        let unpriced = azure.iter().filter(|v| v.hourly_usd.is_none()).count();
        if unpriced > 0 {
            let _ = writeln!(
                out,
                "  Not counted: {unpriced} VM(s) of unknown price (set AMPLIHACK_REMOTE_PRICES)"
            );
        }
    }
    out
}

/// Writes the status as pretty JSON. Streams into `out`.
pub fn write_status_json<W: std::io::Write + ?Sized>(
    out: &mut W,
    status: &PoolStatus,
) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, status)?;
    out.write_all(b"\n")
}

#[cfg(test)]
pub fn status_json(status: &PoolStatus) -> String {
    let mut out = Vec::new();
    write_status_json(&mut out, status).expect("writing to memory");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// The header `output` prints above the captured text.
pub fn output_header(
    session: &Session,
    status: &str,
    captured_at: DateTime<Utc>,
    lines: usize,
) -> String {
    crate::ui::sanitize::text(&format!(
        "=== Session: {} ===\nVM: {}\nStatus: {}\nCaptured: {} ({} lines)\n",
        session.session_id,
        session.vm_name,
        status,
        captured_at
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S"),
        lines
    ))
}

/// What `start` reports for one session.
pub struct StartLine<'a> {
    pub session: &'a Session,
    pub vm_is_new: bool,
    /// Its VM exists: false for a new VM whose creation failed (quota, say).
    pub vm_created: bool,
    /// Its place in its VM's queue and the queue's length, when it was queued.
    pub queue_place: Option<(u32, u32)>,
}

/// `start_report_unescaped` made safe for a terminal (`sanitize::text`): it shows text from the
/// state and the VMs.
pub fn start_report(lines: &[StartLine]) -> String {
    crate::ui::sanitize::text(&start_report_unescaped(lines))
}

fn start_report_unescaped(lines: &[StartLine]) -> String {
    let n = lines.len();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let s = l.session;
        let _ = writeln!(out, "[{}/{}] {}", i + 1, n, s.session_id);
        if l.vm_created {
            let _ = writeln!(
                out,
                "  VM: {} ({})",
                s.vm_name,
                if l.vm_is_new { "new" } else { "reused" }
            );
        } else {
            let _ = writeln!(out, "  VM: none ({} could not be created)", s.vm_name);
        }
        let _ = writeln!(out, "  Prompt: {}", one_line(&s.prompt, 60));
        match &s.error {
            Some(e) if !s.status.is_active() => {
                let _ = writeln!(out, "  Status: {} ({})", s.status, one_line(e, 300));
            }
            _ if s.status == SessionStatus::Queued => {
                let place = l
                    .queue_place
                    .map(|(p, of)| format!("place {p} of {of}; "))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  Status: queued ({place}it starts on its own when a slot on its VM frees)"
                );
            }
            _ => {
                let _ = writeln!(out, "  Status: {}", s.status);
            }
        }
    }
    let failed: Vec<&Session> = lines
        .iter()
        .map(|l| l.session)
        .filter(|s| !s.status.is_active())
        .collect();
    if failed.is_empty() {
        out.push_str("Sessions started. Use 'amplihack remote list' to monitor.\n");
    } else {
        let _ = writeln!(
            out,
            "{} of {} session(s) started; {} failed:",
            n - failed.len(),
            n,
            failed.len()
        );
        for s in failed {
            let _ = writeln!(
                out,
                "  {}: {}",
                s.session_id,
                one_line(s.error.as_deref().unwrap_or("unknown error"), 300)
            );
        }
        if n > 0 && lines.iter().any(|l| l.session.status.is_active()) {
            out.push_str("Use 'amplihack remote list' to monitor the started sessions.\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::SessionStatus::*;
    use crate::core::pool::tests::{session, t0, vm};
    use chrono::Duration;

    #[test]
    fn ages() {
        let t = t0();
        assert_eq!(age(t, t + Duration::seconds(45)), "45s");
        assert_eq!(age(t, t + Duration::minutes(5)), "5m");
        assert_eq!(age(t, t + Duration::hours(2)), "2h");
        assert_eq!(age(t, t + Duration::days(3)), "3d");
        assert_eq!(age(t, t - Duration::days(3)), "0s");
    }

    #[test]
    fn one_line_folds_and_cuts() {
        assert_eq!(one_line("short", 40), "short");
        assert_eq!(one_line("a\nb\t\tc\x1b[2J", 40), "a b c?[2J");
        assert_eq!(
            one_line("implement user authentication with oauth and sessions", 20),
            "implement user..."
        );
        assert_eq!(one_line("xxxxxxxxxxxxxxxxxxxxxxxxx", 10), "xxxxxxxxxx...");
        assert_eq!(one_line("日本語のプロンプトです", 5), "日本語のプ...");
    }

    fn sample_state() -> State {
        let mut st = State::default();
        st.vm_pool.insert(
            "amplihack-user-20251125-143000".into(),
            vm("Standard_E16s_v5", 4, "eastus"),
        );
        let mut west = vm("Standard_E16s_v5", 4, "westus3");
        west.created_at = Some(t0() - Duration::minutes(30));
        st.vm_pool
            .insert("amplihack-user-20251125-140000".into(), west);
        let mut add = |id: &str, vm: &str, status, mins: i64, prompt: &str| {
            let mut s = session(id, vm, status);
            s.created_at = t0() + Duration::minutes(mins);
            s.prompt = prompt.into();
            st.sessions.insert(id.into(), s);
        };
        add(
            "sess-20251125-143022-abc1",
            "amplihack-user-20251125-143000",
            Running,
            0,
            "implement user authentication",
        );
        add(
            "sess-20251125-143025-def2",
            "amplihack-user-20251125-143000",
            Running,
            2,
            "add pagination to API",
        );
        add(
            "sess-20251125-140000-aaa3",
            "amplihack-user-20251125-140000",
            Completed,
            -30,
            "write unit tests for the parser module please",
        );
        st
    }

    #[test]
    fn list_table_matches_expected_text() {
        let st = sample_state();
        let now = t0() + Duration::minutes(5);
        let rows = sessions_newest_first(&st, None);
        let text = list_table(&rows, &Live::default(), now, false);
        assert_eq!(text, include_str!("../../tests/expected/list.txt"));
        let running = sessions_newest_first(&st, Some(&Running));
        assert_eq!(running.len(), 2);
        assert!(list_table(&[], &Live::default(), now, false).starts_with("No sessions found."));
    }

    #[test]
    fn list_marks_unreachable_and_colours_only_when_asked() {
        let st = sample_state();
        let rows = sessions_newest_first(&st, None);
        let mut live = Live::default();
        live.unreachable
            .insert("amplihack-user-20251125-143000".into());
        let text = list_table(&rows, &live, t0(), true);
        assert!(
            text.contains("\x1b[36mrunning (vm unreachable)\x1b[0m"),
            "{text}"
        );
        assert!(text.contains("\x1b[32mcompleted\x1b[0m"));
        let json = list_json(&rows, &live);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["vm_unreachable"], true);
        assert!(v[2].get("vm_unreachable").is_none());
        assert_eq!(v[0]["session_id"], "sess-20251125-143025-def2");
        assert_eq!(list_json(&[], &live), "[]\n");
    }

    #[test]
    fn status_matches_expected_text() {
        let st = sample_state();
        let now = t0() + Duration::minutes(35);
        let live = Live {
            power: Some(
                [
                    ("amplihack-user-20251125-140000", "Deallocated"),
                    ("amplihack-user-20251125-143000", "Running"),
                ]
                .into_iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect(),
            ),
            ..Live::default()
        };
        let status = pool_status(&st, &live, &pool::PriceTable::default(), now);
        assert_eq!(
            status.capacity,
            CapacitySummary {
                used: 2,
                total: 8,
                available: 6
            }
        );
        assert_eq!(status.vms[1].memory_used_gb, 64);
        assert_eq!(
            status_text_report(&status, now),
            include_str!("../../tests/expected/status.txt")
        );
        let v: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(v["sessions"]["running"], 2);
        assert_eq!(v["vms"][1]["capacity_percent"], 50);
        // The deallocated VM costs nothing now; both cost their list price since created
        // (65 and 35 minutes at $1.008/h).
        assert_eq!(v["vms"][0]["hourly_usd"], 0.0);
        assert_eq!(v["vms"][0]["cost_since_created_usd"], 1.09);
        assert_eq!(v["vms"][1]["hourly_usd"], 1.008);
        assert_eq!(v["vms"][1]["cost_since_created_usd"], 0.59);
        assert_eq!(v["total_hourly_usd"], 1.008);
        assert_eq!(v["total_cost_since_created_usd"], 1.68);
        assert_eq!(v["cost_basis"], "approx., pay-as-you-go list price");
        assert_eq!(v["power_states_known"], true);
    }

    #[test]
    fn costs_of_unknown_skus_local_vms_and_vms_gone_from_azure() {
        let mut st = State::default();
        // From the Python original's state: a SKU outside the size table.
        st.vm_pool
            .insert("old".into(), vm("Standard_D4s_v3", 4, "eastus"));
        st.vm_pool
            .insert("gone".into(), vm("Standard_E8s_v5", 2, "eastus"));
        st.vm_pool
            .insert("stopped".into(), vm("Standard_D8s_v3", 1, "eastus"));
        let mut local = vm(pool::LOCAL_SKU, 4, pool::LOCAL_REGION);
        local.backend = Backend::Local;
        st.vm_pool.insert(pool::LOCAL_VM_NAME.into(), local);
        let now = t0() + Duration::hours(10);
        let live = Live {
            power: Some(
                [("old", "Running"), ("stopped", "Stopped")]
                    .into_iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect(),
            ),
            ..Live::default()
        };
        let prices = pool::PriceTable::default();
        let status = pool_status(&st, &live, &prices, now);
        let by_name = |n: &str| status.vms.iter().find(|v| v.name == n).unwrap();
        assert_eq!(by_name("old").hourly_usd, None);
        assert_eq!(by_name("old").cost_since_created_usd, None);
        assert_eq!(by_name("gone").hourly_usd, Some(0.0), "not in Azure");
        assert_eq!(by_name("gone").cost_since_created_usd, Some(5.04));
        // Stopped from inside, not deallocated: Azure still bills it.
        assert_eq!(by_name("stopped").hourly_usd, Some(0.384));
        assert_eq!(by_name("local").hourly_usd, Some(0.0));
        assert_eq!(by_name("local").cost_since_created_usd, Some(0.0));
        assert_eq!(status.total_hourly_usd, 0.384);
        assert_eq!(status.total_cost_since_created_usd, 8.88);

        let text = status_text_report(&status, now);
        assert!(
            text.contains(
                "    Cost: price unknown (Standard_D4s_v3; set AMPLIHACK_REMOTE_PRICES)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    Cost: $0.00/h now (not in Azure), at most $5.04 since created\n")
        );
        assert!(text.contains("    Cost: $0.38/h now, at most $3.84 since created\n"));
        assert!(text.contains("  Not counted: 1 VM(s) of unknown price"));
        assert!(!text.contains("Power states not read"));
        let local_block = text.split("  local (this machine)").nth(1).unwrap();
        assert!(
            !local_block.split("\n  ").next().unwrap().contains("Cost"),
            "no cost line for this machine: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        let old = v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "old")
            .unwrap();
        assert!(old["hourly_usd"].is_null() && old["cost_since_created_usd"].is_null());

        // Without power states every VM counts as billed, and the report says so; the
        // user's prices replace the list's.
        let mine = pool::PriceTable::with_overrides("Standard_D4s_v3=0.2").unwrap();
        let status = pool_status(&st, &Live::default(), &mine, now);
        assert_eq!(status.total_hourly_usd, 1.088);
        let text = status_text_report(&status, now);
        assert!(text.contains("  Power states not read: every VM counted as running\n"));
        assert!(!text.contains("Not counted"));

        // A pool of `local` alone has no cost summary at all.
        st.vm_pool.retain(|n, _| n == pool::LOCAL_VM_NAME);
        let text = status_text_report(&pool_status(&st, &live, &prices, now), now);
        assert!(!text.contains("Cost"), "{text}");
    }

    #[test]
    fn start_report_names_failures() {
        let mut a = session("sess-a", "vm1", Running);
        a.prompt = "one".into();
        let mut b = session("sess-b", "vm1", Failed);
        b.error = Some("quota exceeded".into());
        let q = session("sess-q", "vm1", Queued);
        let text = start_report(&[
            StartLine {
                session: &a,
                vm_is_new: true,
                vm_created: true,
                queue_place: None,
            },
            StartLine {
                session: &b,
                vm_is_new: true,
                vm_created: false,
                queue_place: None,
            },
            StartLine {
                session: &q,
                vm_is_new: false,
                vm_created: true,
                queue_place: Some((2, 3)),
            },
        ]);
        assert!(text.contains("  Status: queued (place 2 of 3; it starts on its own"));
        assert!(text.contains("[1/3] sess-a\n  VM: vm1 (new)\n  Prompt: one\n  Status: running\n"));
        assert!(text.contains("  Status: failed (quota exceeded)"));
        assert!(
            text.contains("  VM: none (vm1 could not be created)\n"),
            "{text}"
        );
        assert!(text.contains("2 of 3 session(s) started; 1 failed:\n  sess-b: quota exceeded\n"));
    }
}
