//! Benchmarks of the release binary (`cargo bench --bench perf`; results in docs/performance.md).
//!
//! 1. Read path: `list --json --no-refresh` and `status --json --no-refresh` on states of 10 to
//!    100,000 sessions, in our format and in the Python original's (naive timestamps with
//!    microseconds): median wall time and peak RSS of the process.
//! 2. Round trips: commands against the stand-in azlin sleeping 2 s per call, with the number of
//!    azlin calls each made.
//! 3. Bounded fan-out: `list` and `status` over 64 VMs with the stand-in sleeping 2 s per
//!    call, with the number of calls in flight at once.
//! 4. State transactions: 32 processes doing 50 locked transactions each.
//! 5. Results home: `report` and `pull --all` over 8 finished sessions on 2 VMs (azlin calls and
//!    time), and `output` of an archived session (no call).
//! 6. `sync` of 4 VMs holding 16 sessions against the stand-in sleeping 2 s per call: after the
//!    state file was lost, and again once it is whole.
//!
//! 7. Against the Python original: `list --json --no-refresh` of this binary and `list --json`
//!    of the Python original on the same state file (the Python original's format), run
//!    alternately: medians and the ratio. Needs a checkout of the Python original:
//!    `AMPLIHACK_PYTHON_ORIGINAL=<checkout>/.claude/tools/amplihack` (the folder that holds its
//!    `remote` package); `click` is installed from PyPI if python3 lacks it.
//!
//! `cargo bench --bench perf -- read|remote|fanout|tx|results|sync|python` runs one section;
//! `-- read 1000 10000` (or `python ...`) picks the state sizes.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amplihack::core::model::{Session, SessionStatus, State, VmEntry};
use amplihack::state::StateStore;
use chrono::{TimeZone, Utc};

mod world;
use world::{BIN, FakeWorld};

/// Runs a command to the end; returns its wall time and peak RSS in KiB (from wait4).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports the child's rusage
fn measure(cmd: &mut Command) -> (Duration, i64, i32) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let cpu = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    LAST_CPU.with(|c| c.set(cpu(usage.ru_utime) + cpu(usage.ru_stime)));
    (start.elapsed(), usage.ru_maxrss, code)
}

thread_local! {
    /// The CPU time (user + system) of the last command `measure` ran: on a machine shared
    /// with other jobs it moves far less with their load than the wall time does.
    static LAST_CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

fn last_cpu() -> Duration {
    LAST_CPU.with(std::cell::Cell::get)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn synthetic_state(n: usize) -> State {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut st = State::default();
    let vms = n.div_ceil(4).max(1);
    for v in 0..vms {
        st.vm_pool.insert(
            format!("amplihack-bench-{v:06}"),
            VmEntry {
                size: "Standard_E16s_v5".into(),
                capacity: 4,
                active_sessions: vec![],
                region: "eastus".into(),
                created_at: Some(t0),
                backend: Default::default(),
                state: Default::default(),
                error: None,
                resource_group: None,
                owner: None,
                creation_unconfirmed: false,
                extra: Default::default(),
                naive_timestamps: false,
            },
        );
    }
    for i in 0..n {
        let id = format!("sess-20260101-{:06}-{:04x}", i / 65536, i % 65536);
        let status = match i % 5 {
            0 => SessionStatus::Running,
            1 | 2 => SessionStatus::Completed,
            3 => SessionStatus::Failed,
            _ => SessionStatus::Killed,
        };
        st.sessions.insert(
            id.clone(),
            Session {
                session_id: id.clone(),
                vm_name: format!("amplihack-bench-{:06}", i / 4),
                workspace: format!("/workspace/{id}"),
                tmux_session: id.clone(),
                prompt: format!(
                    "implement feature number {i} with tests, docs and a changelog entry"
                )
                .into(),
                command: "auto".into(),
                max_turns: 10,
                memory_mb: 32768,
                created_at: t0 + chrono::Duration::seconds(i as i64),
                started_at: Some(t0 + chrono::Duration::seconds(i as i64 + 20)),
                completed_at: (!status.is_active())
                    .then(|| t0 + chrono::Duration::seconds(i as i64 + 600)),
                exit_code: match status {
                    SessionStatus::Completed => Some(0),
                    SessionStatus::Failed => Some(1),
                    _ => None,
                },
                status,
                error: None,
                repo_path: None,
                base_commit: None,
                owner: None,
                kill_request: None,
                archived_at: None,
                pulled_commit: None,
                unattended: None,
                detail: None,
                silent_since: None,
                extra: Default::default(),
                naive_timestamps: false,
            },
        );
    }
    st.normalize();
    st
}

/// The state as the Python original writes it: fields in the same order, naive timestamps
/// with microseconds (`datetime.isoformat()`), two-space indented JSON.
fn python_state_text(state: &State) -> Vec<u8> {
    let ours = serde_json::to_string_pretty(state).unwrap();
    let mut out = String::with_capacity(ours.len() * 21 / 20);
    let mut rest = ours.as_str();
    let mut i = 0u32;
    const KEY_END: &str = "_at\": \"";
    while let Some(at) = rest.find(KEY_END) {
        let value_start = at + KEY_END.len();
        out.push_str(&rest[..value_start]);
        let value_end = value_start + rest[value_start..].find('"').unwrap();
        i = i.wrapping_add(1);
        // Non-zero microseconds, as nearly every Python timestamp has.
        let micros = 1 + i.wrapping_mul(7919) % 999_998;
        let t = amplihack::core::model::parse_timestamp(&rest[value_start..value_end]).unwrap()
            + chrono::Duration::microseconds(i64::from(micros));
        out.push_str(&t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string());
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// Writes the state file of `n` sessions in `format` (`ours` or `Python`) to `path`. Runs in
/// a child process, so the bench process stays small: a child it spawns shares its memory
/// until exec, and that would count toward the measured command's peak RSS.
fn write_state_file(format: &str, n: usize, path: &Path) {
    let state = synthetic_state(n);
    let text = match format {
        "ours" => serde_json::to_vec_pretty(&state).unwrap(),
        "Python" => python_state_text(&state),
        other => panic!("unknown format {other}"),
    };
    std::fs::write(path, text).unwrap();
}

/// With `AMPLIHACK_BENCH_BASELINE` set to another build of the binary, every run of ours is
/// followed by one of it on the same file, and both medians are shown: on a shared machine
/// whose load drifts, only runs interleaved like this compare fairly.
fn read_path(sizes: &[usize]) {
    let baseline = std::env::var_os("AMPLIHACK_BENCH_BASELINE").map(PathBuf::from);
    println!("## Read path (release binary, median of N runs)\n");
    if let Some(b) = &baseline {
        println!(
            "Each cell: this build (before: the baseline {}, run alternately with it).\n",
            b.display()
        );
    }
    println!(
        "| format | sessions | state file | `list --json --no-refresh` | `status --json --no-refresh` | peak RSS (list / status) | runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for &n in sizes {
        for format in ["ours", "Python"] {
            let path = dir.path().join(format!("state-{format}-{n}.json"));
            let written = Command::new(&exe)
                .args(["--write-state", format, &n.to_string()])
                .arg(&path)
                .status()
                .unwrap();
            assert!(written.success());
            let size = std::fs::metadata(&path).unwrap().len();
            let runs = if n >= 100_000 { 7 } else { 31 };
            let mut row = Vec::new();
            let mut rss = Vec::new();
            for args in [
                ["list", "--json", "--no-refresh"],
                ["status", "--json", "--no-refresh"],
            ] {
                let run = |bin: &Path| {
                    let (t, r, code) = measure(
                        Command::new(bin)
                            .arg("remote")
                            .args(args)
                            .env_clear()
                            .env("AMPLIHACK_REMOTE_STATE", &path)
                            .env("HOME", dir.path()),
                    );
                    assert_eq!(code, 0, "{}", bin.display());
                    (t, r)
                };
                let mut times = Vec::new();
                let mut baseline_times = Vec::new();
                let mut peak = 0;
                for _ in 0..runs {
                    let (t, r) = run(Path::new(BIN));
                    times.push(t);
                    peak = peak.max(r);
                    if let Some(b) = &baseline {
                        baseline_times.push(run(b).0);
                    }
                }
                row.push(match &baseline {
                    None => format!("{} ms", ms(median(times))),
                    Some(_) => format!(
                        "{} ms (before: {} ms)",
                        ms(median(times)),
                        ms(median(baseline_times))
                    ),
                });
                rss.push(format!("{:.1}", peak as f64 / 1024.0));
            }
            println!(
                "| {format} | {n} | {:.1} MB | {} | {} | {} MB | {runs} |",
                size as f64 / 1e6,
                row[0],
                row[1],
                rss.join(" / ")
            );
        }
    }
    println!();
}

/// The Python original's `list --json` as its own entry point runs it, with `HOME` pointing at
/// a folder whose `.amplihack/remote-state.json` is the state (it has no state path setting).
fn python_original_list(original: &Path, home: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv.pop(1)); from remote.cli import main; sys.argv[0] = 'remote'; main()")
        .arg(original)
        .args(["list", "--json"])
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

/// Makes sure python3 can import what the Python original's CLI imports beyond the standard
/// library (`click`), installing it from PyPI when it cannot.
fn ensure_python_packages() -> bool {
    let has_click = || {
        Command::new("python3")
            .args(["-c", "import click"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_click() {
        return true;
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "click"])
        .status();
    has_click()
}

/// Section 7: this binary's `list --json --no-refresh` against the Python original's
/// `list --json`, on one state file in the Python original's format, alternately.
fn against_python(sizes: &[usize]) {
    println!("## `list --json` against the Python original (median of N runs, alternately)\n");
    let Some(original) = std::env::var_os("AMPLIHACK_PYTHON_ORIGINAL").map(PathBuf::from) else {
        println!(
            "Skipped: set AMPLIHACK_PYTHON_ORIGINAL to the folder holding the Python original's `remote` package (`.claude/tools/amplihack` of a checkout of rysweet/amplihack).\n"
        );
        return;
    };
    if !original.join("remote").join("cli.py").is_file() {
        println!("Skipped: {} holds no remote/cli.py.\n", original.display());
        return;
    }
    if !ensure_python_packages() {
        println!("Skipped: python3 cannot import click, and installing it failed.\n");
        return;
    }
    println!(
        "| sessions | state file | this binary: wall | Python original: wall | ratio | this binary: CPU | Python original: CPU | ratio | runs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().unwrap();
    for &n in sizes {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".amplihack").join("remote-state.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let written = Command::new(&exe)
            .args(["--write-state", "Python", &n.to_string()])
            .arg(&path)
            .status()
            .unwrap();
        assert!(written.success());
        let size = std::fs::metadata(&path).unwrap().len();
        let ours = || {
            let mut cmd = Command::new(BIN);
            cmd.args(["remote", "list", "--json", "--no-refresh"])
                .env_clear()
                .env("AMPLIHACK_REMOTE_STATE", &path)
                .env("HOME", home.path());
            cmd
        };
        // Both print the same sessions: the comparison is of equal work.
        let listed = |mut cmd: Command| -> usize {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
                .unwrap()
                .len()
        };
        assert_eq!(listed(ours()), n);
        assert_eq!(listed(python_original_list(&original, home.path())), n);
        let runs = if n >= 10_000 { 11 } else { 21 };
        let (mut ours_times, mut python_times) = (Vec::new(), Vec::new());
        let (mut ours_cpu, mut python_cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (t, _, code) = measure(&mut ours());
            assert_eq!(code, 0);
            ours_times.push(t);
            ours_cpu.push(last_cpu());
            let (t, _, code) = measure(&mut python_original_list(&original, home.path()));
            assert_eq!(code, 0);
            python_times.push(t);
            python_cpu.push(last_cpu());
        }
        let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-6);
        let (ours_wall, python_wall) = (median(ours_times), median(python_times));
        let (ours_cpu, python_cpu) = (median(ours_cpu), median(python_cpu));
        println!(
            "| {n} | {:.1} MB | {} ms | {} ms | {:.0}x | {} ms | {} ms | {:.0}x | {runs} |",
            size as f64 / 1e6,
            ms(ours_wall),
            ms(python_wall),
            ratio(ours_wall, python_wall),
            ms(ours_cpu),
            ms(python_cpu),
            ratio(ours_cpu, python_cpu),
        );
    }
    println!();
}

impl FakeWorld {
    /// Makes `work/` a git repository with one commit; commands run there from now on.
    fn with_repo(self) -> Self {
        let w = self.dir.path().join("work");
        std::fs::create_dir_all(&w).unwrap();
        std::fs::write(w.join("README.md"), "bench\n").unwrap();
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "."],
            &[
                "-c",
                "user.name=b",
                "-c",
                "user.email=b@example.invalid",
                "commit",
                "-qm",
                "init",
            ],
        ] {
            assert!(
                Command::new("git")
                    .arg("-C")
                    .arg(&w)
                    .args(args)
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        self
    }

    /// Waits until every session in the state has recorded its exit code on its VM (no
    /// command of ours sees it: nothing is archived yet).
    fn wait_all_recorded(&self) {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("state.json")).unwrap())
                .unwrap();
        let start = Instant::now();
        for (id, s) in st["sessions"].as_object().unwrap() {
            let vm = s["vm_name"].as_str().unwrap();
            let exit_code = self
                .dir
                .path()
                .join("azlin/vms")
                .join(vm)
                .join("home/.amplihack/remote/sessions")
                .join(id)
                .join("exit_code");
            while !exit_code.exists() {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "{id} never ended"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn session_ids(&self) -> Vec<String> {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("state.json")).unwrap())
                .unwrap();
        st["sessions"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// Runs a setup command with no azlin delay.
    fn setup(&self, args: &[&str]) {
        let (_, _, code) = measure(&mut self.cmd("0", args));
        assert_eq!(code, 0, "setup {args:?} failed");
        self.clear_calls();
    }

    /// Runs a measured command with the 2 s delay; returns (time, azlin calls).
    fn timed(&self, args: &[&str]) -> (Duration, usize, i32) {
        self.clear_calls();
        let (t, _, code) = measure(&mut self.cmd("2", args));
        (t, self.calls(), code)
    }
}

fn remote() {
    println!("## Round trips (stand-in azlin sleeping 2 s per call; median of 3 runs)\n");
    println!("| command | time | azlin calls | a sequential design would need |");
    println!("|---|---:|---:|---|");
    let row = |name: &str, runs: Vec<(Duration, usize, i32)>, naive: &str| {
        assert!(runs.iter().all(|r| r.2 == 0), "{name} failed: {runs:?}");
        let calls = runs[0].1;
        let t = median(runs.into_iter().map(|r| r.0).collect());
        println!("| {name} | {:.2} s | {calls} | {naive} |", t.as_secs_f64());
    };
    let eight = [
        "start",
        "--no-context",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
    ];

    let runs = (0..3)
        .map(|_| {
            let w = FakeWorld::new();
            w.setup(&["prime", "--count", "2", "--vm-size", "l"]);
            w.timed(&eight)
        })
        .collect();
    row(
        "`start` 8 prompts onto 2 existing L VMs",
        runs,
        "8 prompts x 3-5 calls = 24-40 calls, 48-80 s",
    );

    let runs = (0..3)
        .map(|_| {
            let w = FakeWorld::new();
            w.timed(&[
                "start",
                "--no-context",
                "SLEEP=600",
                "SLEEP=600",
                "SLEEP=600",
                "SLEEP=600",
            ])
        })
        .collect();
    row(
        "`start` 4 prompts onto a new L VM (provision + launch)",
        runs,
        "1 new + 4 x 3-5 calls",
    );

    let w = FakeWorld::new();
    w.setup(&["prime", "--count", "4", "--vm-size", "s"]);
    w.setup(&[
        "start",
        "--no-context",
        "--size",
        "s",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
        "SLEEP=600",
    ]);
    let runs = (0..3).map(|_| w.timed(&["list"])).collect();
    row("`list` refreshing 4 VMs", runs, "4 calls in a row, 8 s");
    let runs = (0..3).map(|_| w.timed(&["status"])).collect();
    row(
        "`status` refreshing 4 VMs + power states",
        runs,
        "5 calls in a row, 10 s",
    );
    let id = {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.dir.path().join("state.json")).unwrap())
                .unwrap();
        st["sessions"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()
    };
    let runs = (0..3).map(|_| w.timed(&["output", &id])).collect();
    row(
        "`output` of a running session",
        runs,
        "2 calls (status, capture)",
    );

    let runs = (0..3)
        .map(|_| {
            let w = FakeWorld::new();
            w.timed(&["prime", "--count", "3"])
        })
        .collect();
    row("`prime --count 3`", runs, "3 calls in a row, 6 s");
    println!();
}

/// 64 VMs, each with a running session; `list` and `status` with the stand-in sleeping 2 s
/// per call, at the default bound and with the bound lifted, counting calls in flight.
fn fan_out() {
    println!(
        "## Bounded fan-out (64 VMs with running sessions, stand-in azlin sleeping 2 s per call; median of 3 runs)\n"
    );
    println!("| command | AMPLIHACK_REMOTE_PARALLEL | azlin calls | time | most calls in flight |");
    println!("|---|---:|---:|---:|---:|");
    let w = FakeWorld::new();
    // prime takes at most 50 at a time.
    w.setup(&["prime", "--count", "32", "--vm-size", "s"]);
    w.setup(&["prime", "--count", "32", "--vm-size", "s"]);
    let mut start = vec!["start", "--no-context", "--size", "s"];
    start.extend(std::iter::repeat_n("SLEEP=3600", 64));
    w.setup(&start);
    let max_path = w.dir.path().join("azlin/max-inflight");
    for (args, bound) in [
        (["list", "--json"], "16"),
        (["status", "--json"], "16"),
        (["list", "--json"], "64"),
        (["status", "--json"], "64"),
    ] {
        let mut times = Vec::new();
        let mut calls = 0;
        let mut most = 0;
        for _ in 0..3 {
            w.clear_calls();
            let _ = std::fs::remove_file(&max_path);
            let mut cmd = w.cmd("2", &args);
            cmd.env("FAKE_AZLIN_TRACK_INFLIGHT", "1")
                .env("AMPLIHACK_REMOTE_PARALLEL", bound);
            let (t, _, code) = measure(&mut cmd);
            assert_eq!(code, 0, "{args:?} failed");
            times.push(t);
            calls = w.calls();
            let seen: usize = std::fs::read_to_string(&max_path)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            most = most.max(seen);
        }
        println!(
            "| `{}` | {bound} | {calls} | {:.2} s | {most} |",
            args.join(" "),
            median(times).as_secs_f64()
        );
    }
    println!();
}

/// 8 sessions that each made a commit, finished on 2 L VMs, not seen by any command yet.
fn eight_finished() -> FakeWorld {
    let w = FakeWorld::new().with_repo();
    w.setup(&["prime", "--count", "2", "--vm-size", "l"]);
    let mut args = vec!["start", "--size", "l"];
    args.extend(["COMMIT=1 LINES=200"; 8]);
    w.setup(&args);
    w.wait_all_recorded();
    w
}

fn results() {
    println!(
        "## Results home (8 finished sessions on 2 L VMs; stand-in azlin sleeping 2 s per call; median of 3 runs)\n"
    );
    println!("| command | time | azlin calls | one session at a time would need |");
    println!("|---|---:|---:|---|");
    let row = |name: &str, runs: Vec<(Duration, usize, i32)>, naive: &str| {
        assert!(runs.iter().all(|r| r.2 == 0), "{name} failed: {runs:?}");
        let calls = runs[0].1;
        assert!(runs.iter().all(|r| r.1 == calls), "{name}: {runs:?}");
        let t = median(runs.into_iter().map(|r| r.0).collect());
        let shown = if t < Duration::from_secs(1) {
            format!("{} ms", ms(t))
        } else {
            format!("{:.2} s", t.as_secs_f64())
        };
        println!("| {name} | {shown} | {calls} | {naive} |");
    };
    let worlds: Vec<FakeWorld> = (0..3).map(|_| eight_finished()).collect();
    let runs = worlds.iter().map(|w| w.timed(&["report"])).collect();
    row(
        "`report`, first sight of the 8 ended sessions (archives them all)",
        runs,
        "`list` + 8 × (`output` + `pull`): 17 calls, 34 s",
    );
    let runs = worlds.iter().map(|w| w.timed(&["pull", "--all"])).collect();
    row(
        "`pull --all` of the 8, archived by that report",
        runs,
        "8 calls, 16 s",
    );
    let worlds: Vec<FakeWorld> = (0..3).map(|_| eight_finished()).collect();
    let runs = worlds.iter().map(|w| w.timed(&["pull", "--all"])).collect();
    row(
        "`pull --all` of the 8, not archived yet (archives them)",
        runs,
        "8 calls, 16 s",
    );
    let runs = worlds.iter().map(|w| w.timed(&["report"])).collect();
    row("`report` again (nothing left to ask)", runs, "2 calls");
    println!();

    let w = &worlds[0];
    let id = w.session_ids().remove(0);
    let mut times = Vec::new();
    for _ in 0..31 {
        w.clear_calls();
        let (t, _, code) = measure(&mut w.cmd("2", &["output", &id]));
        assert_eq!(code, 0);
        assert_eq!(w.calls(), 0, "output of an archived session makes no call");
        times.push(t);
    }
    println!(
        "`output` of an archived session (its 200-line log; median of 31 runs): **{} ms, 0 azlin calls** (the stand-in sleeps 2 s per call: a call would show).\n",
        ms(median(times))
    );
}

fn sync() {
    println!(
        "## `sync` of 4 L VMs holding 16 sessions (stand-in azlin sleeping 2 s per call; median of 3 runs)\n"
    );
    println!("| state before | time | azlin calls | sessions after |");
    println!("|---|---:|---:|---:|");
    let w = FakeWorld::new();
    w.setup(&["prime", "--count", "4", "--vm-size", "l"]);
    let mut start = vec!["start", "--no-context"];
    start.extend(std::iter::repeat_n("SLEEP=600", 16));
    w.setup(&start);
    let state_path = w.dir.path().join("state.json");
    let sessions = || {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
        st["sessions"].as_object().unwrap().len()
    };
    assert_eq!(sessions(), 16);
    let row = |name: &str, runs: Vec<(Duration, usize, i32)>| {
        assert!(runs.iter().all(|r| r.2 == 0), "{name} failed: {runs:?}");
        let calls = runs[0].1;
        let t = median(runs.into_iter().map(|r| r.0).collect());
        println!(
            "| {name} | {:.2} s | {calls} | {} |",
            t.as_secs_f64(),
            sessions()
        );
    };
    let lost = (0..3)
        .map(|_| {
            std::fs::remove_file(&state_path).unwrap();
            w.timed(&["sync"])
        })
        .collect();
    row("lost (no state file)", lost);
    let whole = (0..3).map(|_| w.timed(&["sync"])).collect();
    row("whole (nothing to change)", whole);
    println!();
}

fn transactions() {
    println!("## State transactions (32 processes x 50 locked read-modify-write transactions)\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let children: Vec<_> = (0..32)
        .map(|w| {
            Command::new(&exe)
                .arg("--worker")
                .arg(w.to_string())
                .arg(&path)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let elapsed = start.elapsed();
    let st = StateStore::new(path).load().unwrap();
    assert_eq!(st.sessions.len(), 32 * 50, "a transaction was lost");
    println!(
        "1600 of 1600 transactions landed in {:.2} s: {:.0} transactions/s (each rewrites the whole file, which ends at 1600 sessions).\n",
        elapsed.as_secs_f64(),
        1600.0 / elapsed.as_secs_f64()
    );
}

fn worker(id: usize, path: &Path) {
    let store = StateStore::new(path.to_path_buf());
    let template = synthetic_state(1).sessions.into_values().next().unwrap();
    for i in 0..50 {
        let sid = format!("sess-w{id:02}-{i:03}");
        store
            .update(|st| {
                let mut s = template.clone();
                s.session_id = sid.clone();
                st.sessions.insert(sid.clone(), s);
                Ok(())
            })
            .unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        worker(args[2].parse().unwrap(), Path::new(&args[3]));
        return;
    }
    if args.get(1).map(String::as_str) == Some("--write-state") {
        write_state_file(&args[2], args[3].parse().unwrap(), Path::new(&args[4]));
        return;
    }
    let only = args
        .iter()
        .skip(1)
        .find(|a| {
            [
                "read", "remote", "fanout", "tx", "results", "sync", "python",
            ]
            .contains(&a.as_str())
        })
        .cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    println!(
        "Machine: {} cores; {}\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model()
    );
    // Numbers after `read` pick the state sizes (`-- read 1000 10000`).
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if run("read") {
        read_path(if sizes.is_empty() {
            &[10, 1_000, 10_000, 100_000]
        } else {
            &sizes
        });
    }
    if run("python") {
        against_python(if sizes.is_empty() {
            &[1_000, 10_000]
        } else {
            &sizes
        });
    }
    if run("remote") {
        remote();
    }
    if run("fanout") {
        fan_out();
    }
    if run("tx") {
        transactions();
    }
    if run("results") {
        results();
    }
    if run("sync") {
        sync();
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
