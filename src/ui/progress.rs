//! Progress of long work (provisioning, launching), one line per VM, on stderr.
//!
//! On a terminal each VM has a live line (indicatif): spinner, VM name, elapsed time, stage.
//! Elsewhere (a pipe, a log, CI) each stage change is one plain line, as `ui::progress` prints.
//! Stdout never sees any of it. A VM's line is found by its name, so the code that provisions a
//! VM and the code that launches on it report to the same line without passing a handle along.
//!
//! ```text
//! ⠙ amplihack-jo-20251125-143000   1m12s  waiting for ssh: does not answer ssh yet; retrying in 15s (2/4)
//! ✓ amplihack-jo-20251125-143002     41s  done: 2 session(s) running
//! ```

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a VM is in its provisioning and launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `azlin new` is creating it.
    Provisioning,
    /// It exists but does not answer ssh yet.
    WaitingForSsh,
    /// The launch call is sending the git bundle (and starting the sessions after it).
    SendingContext,
    /// The launch call is starting its sessions.
    Launching,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Provisioning => "provisioning",
            Stage::WaitingForSsh => "waiting for ssh",
            Stage::SendingContext => "sending context",
            Stage::Launching => "launching",
        }
    }
}

/// How a VM's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        }
    }
}

/// `45s`, `1m05s`, `2h03m`: short, and of constant width within a unit.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `provisioning: Standard_E16s_v5 in eastus`, or the label alone without detail. A detail
/// (an error message, say) is folded onto one line: a line break would tear a live line.
pub fn status_text(label: &str, detail: &str) -> String {
    let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    if detail.is_empty() {
        label.to_string()
    } else {
        format!("{label}: {detail}")
    }
}

/// The plain line of a stage change, or of the end (which says how long it all took).
pub fn plain_line(vm: &str, status: &str, elapsed: Option<Duration>) -> String {
    match elapsed {
        Some(d) => format!("{vm}: {status} (after {})", format_elapsed(d)),
        None => format!("{vm}: {status}"),
    }
}

/// Where plain lines go (stderr, or a test's list).
type PlainSink = Box<dyn Fn(&str) + Send + Sync>;

enum Mode {
    Live(MultiProgress),
    Plain(PlainSink),
}

/// What one VM's line has shown.
struct LineState {
    last_stage: Option<Stage>,
    finished: bool,
}

/// The line of one VM: get it from [`Board::vm`] (or [`vm`]), report with `stage` and `finish`.
pub struct VmProgress {
    vm: String,
    started: Instant,
    board: Arc<Mode>,
    bar: Option<ProgressBar>,
    state: Mutex<LineState>,
}

// `{wide_msg}` last and cut to the terminal's width: a wrapped line could not be redrawn.
const SPINNER_TEMPLATE: &str = "{spinner} {prefix} {took:>6}  {wide_msg}";
const DONE_TEMPLATE: &str = "✓ {prefix} {took:>6}  {wide_msg}";
const FAILED_TEMPLATE: &str = "✗ {prefix} {took:>6}  {wide_msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the templates are valid")
        // The same elapsed format as the plain lines.
        .with_key(
            "took",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&format_elapsed(state.elapsed()));
            },
        )
}

impl VmProgress {
    /// Reports a stage. Off a terminal only a change of stage prints a line; on a terminal the
    /// live line shows the latest detail too. Nothing changes once the line is finished.
    pub fn stage(&self, stage: Stage, detail: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.finished {
            return;
        }
        let text = status_text(stage.label(), detail);
        let changed = state.last_stage != Some(stage);
        state.last_stage = Some(stage);
        match (&*self.board, &self.bar) {
            (Mode::Live(_), Some(bar)) => bar.set_message(text),
            (Mode::Plain(sink), _) if changed => sink(&plain_line(&self.vm, &text, None)),
            _ => {}
        }
    }

    /// Ends the line with how it went; later calls are ignored.
    pub fn finish(&self, outcome: Outcome, detail: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.finished {
            return;
        }
        state.finished = true;
        let text = status_text(outcome.label(), detail);
        match (&*self.board, &self.bar) {
            (Mode::Live(_), Some(bar)) => {
                bar.set_style(style(match outcome {
                    Outcome::Done => DONE_TEMPLATE,
                    Outcome::Failed => FAILED_TEMPLATE,
                }));
                bar.finish_with_message(text);
            }
            (Mode::Plain(sink), _) => {
                sink(&plain_line(&self.vm, &text, Some(self.started.elapsed())))
            }
            _ => {}
        }
    }

    #[cfg(test)]
    pub fn is_finished(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished
    }
}

/// All VM lines of this process.
pub struct Board {
    mode: Arc<Mode>,
    lines: Mutex<BTreeMap<String, Arc<VmProgress>>>,
}

impl Board {
    /// Live lines on `target`.
    pub fn live(target: ProgressDrawTarget) -> Self {
        Board::with_mode(Mode::Live(MultiProgress::with_draw_target(target)))
    }

    /// Plain lines, each handed to `sink`.
    pub fn plain(sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Board::with_mode(Mode::Plain(Box::new(sink)))
    }

    /// Live on a terminal (stderr is a TTY and TERM is not `dumb`), plain lines elsewhere.
    pub fn for_stderr() -> Self {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if std::io::stderr().is_terminal() && !dumb {
            Board::live(ProgressDrawTarget::stderr_with_hz(10))
        } else {
            // Plain lines straight to stderr: there are no live lines to write around.
            Board::plain(|msg: &str| crate::ui::stderr_line(&crate::ui::sanitize::text(msg)))
        }
    }

    fn with_mode(mode: Mode) -> Self {
        Board {
            mode: Arc::new(mode),
            lines: Mutex::new(BTreeMap::new()),
        }
    }

    /// The line of `vm`, created (and its clock started) on first use.
    pub fn vm(&self, vm: &str) -> Arc<VmProgress> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .entry(vm.to_string())
            .or_insert_with(|| {
                let bar = match &*self.mode {
                    Mode::Live(multi) => {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(style(SPINNER_TEMPLATE));
                        bar.set_prefix(vm.to_string());
                        bar.enable_steady_tick(Duration::from_millis(100));
                        Some(bar)
                    }
                    Mode::Plain(_) => None,
                };
                Arc::new(VmProgress {
                    vm: vm.to_string(),
                    started: Instant::now(),
                    board: Arc::clone(&self.mode),
                    bar,
                    state: Mutex::new(LineState {
                        last_stage: None,
                        finished: false,
                    }),
                })
            })
            .clone()
    }

    /// A line that is not a VM's stage (a warning, a note): above the live lines on a
    /// terminal, so it does not tear them; as is elsewhere.
    pub fn println(&self, line: &str) {
        match &*self.mode {
            Mode::Live(multi) => {
                let _ = multi.println(line);
            }
            Mode::Plain(sink) => sink(line),
        }
    }

    /// Runs `f` (which writes to the terminal) with the live lines cleared, then redraws them.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &*self.mode {
            Mode::Live(multi) => multi.suspend(f),
            Mode::Plain(_) => f(),
        }
    }

    fn is_live(&self) -> bool {
        matches!(&*self.mode, Mode::Live(_))
    }
}

static BOARD: OnceLock<Board> = OnceLock::new();

/// This process's board, made on first use.
pub fn board() -> &'static Board {
    BOARD.get_or_init(Board::for_stderr)
}

/// The line of `vm` on this process's board.
pub fn vm(vm: &str) -> Arc<VmProgress> {
    board().vm(vm)
}

/// The board, only when it exists and draws live lines: other terminal output must then go
/// through it (see `ui`).
pub fn live_board() -> Option<&'static Board> {
    BOARD.get().filter(|b| b.is_live())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording_board() -> (Board, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let board = Board::plain(move |l| sink.lock().unwrap().push(l.to_string()));
        (board, lines)
    }

    #[test]
    fn elapsed_times_are_short() {
        assert_eq!(format_elapsed(Duration::from_millis(900)), "0s");
        assert_eq!(format_elapsed(Duration::from_secs(45)), "45s");
        assert_eq!(format_elapsed(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_elapsed(Duration::from_secs(3600 + 180 + 7)), "1h03m");
    }

    #[test]
    fn lines_read_as_vm_stage_detail() {
        assert_eq!(
            status_text(Stage::Provisioning.label(), "Standard_E16s_v5 in eastus"),
            "provisioning: Standard_E16s_v5 in eastus"
        );
        assert_eq!(status_text(Stage::Launching.label(), ""), "launching");
        assert_eq!(
            status_text(
                Outcome::Failed.label(),
                "State file corrupt: x\n  Recovery:\tmove it"
            ),
            "failed: State file corrupt: x Recovery: move it"
        );
        assert_eq!(
            plain_line(
                "vm1",
                "done: 2 session(s) running",
                Some(Duration::from_secs(75))
            ),
            "vm1: done: 2 session(s) running (after 1m15s)"
        );
        assert_eq!(plain_line("vm1", "launching", None), "vm1: launching");
        let labels: Vec<&str> = [
            Stage::Provisioning,
            Stage::WaitingForSsh,
            Stage::SendingContext,
            Stage::Launching,
        ]
        .iter()
        .map(|s| s.label())
        .collect();
        assert_eq!(
            labels,
            [
                "provisioning",
                "waiting for ssh",
                "sending context",
                "launching"
            ]
        );
    }

    #[test]
    fn plain_lines_print_once_per_stage_change_and_once_at_the_end() {
        let (board, lines) = recording_board();
        let a = board.vm("vm-a");
        a.stage(Stage::Provisioning, "in eastus");
        a.stage(Stage::Provisioning, "in westus3");
        a.stage(Stage::WaitingForSsh, "attempt 2/4");
        a.stage(Stage::WaitingForSsh, "attempt 3/4");
        // Another report on the same VM reaches the same line.
        board.vm("vm-a").stage(Stage::Launching, "2 session(s)");
        let b = board.vm("vm-b");
        b.stage(Stage::Launching, "");
        b.finish(Outcome::Failed, "unreachable");
        a.finish(Outcome::Done, "2 session(s) running");
        a.finish(Outcome::Failed, "too late");
        a.stage(Stage::Launching, "too late");
        let printed = lines.lock().unwrap().clone();
        assert_eq!(printed.len(), 6, "{printed:#?}");
        let lines = printed;
        assert_eq!(lines[0], "vm-a: provisioning: in eastus");
        assert_eq!(lines[1], "vm-a: waiting for ssh: attempt 2/4");
        assert_eq!(lines[2], "vm-a: launching: 2 session(s)");
        assert_eq!(lines[3], "vm-b: launching");
        assert!(lines[4].starts_with("vm-b: failed: unreachable (after 0s"));
        assert!(lines[5].starts_with("vm-a: done: 2 session(s) running (after "));
        assert!(board.vm("vm-a").is_finished());
    }

    #[test]
    fn other_lines_go_through_the_board() {
        let (board, lines) = recording_board();
        board.println("warning: a note");
        assert_eq!(*lines.lock().unwrap(), ["warning: a note"]);
    }

    #[test]
    fn live_lines_show_the_latest_detail_and_end_with_the_outcome() {
        let board = Board::live(ProgressDrawTarget::hidden());
        let a = board.vm("vm-a");
        a.stage(Stage::WaitingForSsh, "attempt 2/4");
        a.stage(Stage::WaitingForSsh, "attempt 3/4");
        let bar = a.bar.as_ref().unwrap();
        assert_eq!(bar.prefix(), "vm-a");
        assert_eq!(bar.message(), "waiting for ssh: attempt 3/4");
        assert!(!bar.is_finished());
        a.finish(Outcome::Done, "1 session(s) running");
        a.stage(Stage::Launching, "after the end");
        assert!(bar.is_finished());
        assert_eq!(bar.message(), "done: 1 session(s) running");
        assert_eq!(board.suspend(|| 7), 7);
    }
}
