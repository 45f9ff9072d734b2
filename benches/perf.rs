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
//!
//! `cargo bench --bench perf -- read|remote|fanout|tx` runs one section; `-- read 1000 10000` picks the
//! state sizes of the read path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amplihack::model::{Session, SessionStatus, State, VmEntry};
use amplihack::state::StateStore;
use chrono::{TimeZone, Utc};

const BIN: &str = env!("CARGO_BIN_EXE_amplihack");

fn support(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(rel)
}

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
    (start.elapsed(), usage.ru_maxrss, code)
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
                created_at: t0,
                backend: Default::default(),
                state: Default::default(),
                error: None,
                extra: Default::default(),
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
                ),
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
                extra: Default::default(),
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
        let t = amplihack::model::parse_timestamp(&rest[value_start..value_end]).unwrap()
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

struct FakeWorld {
    dir: tempfile::TempDir,
}

impl FakeWorld {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ahb")
            .tempdir_in("/tmp")
            .unwrap();
        for sub in ["home", "azlin", "bin", "tmux"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(support("azlin"), dir.path().join("bin/azlin")).unwrap();
        FakeWorld { dir }
    }

    fn cmd(&self, delay: &str, args: &[&str]) -> Command {
        let r = self.dir.path();
        let mut c = Command::new(BIN);
        c.env_clear()
            .current_dir(r)
            .env(
                "PATH",
                format!("{}/bin:/usr/local/bin:/usr/bin:/bin", r.display()),
            )
            .env("HOME", r.join("home"))
            .env("USER", "bench")
            .env("AMPLIHACK_REMOTE_STATE", r.join("state.json"))
            .env("TMUX_TMPDIR", r.join("tmux"))
            .env("FAKE_AZLIN_HOME", r.join("azlin"))
            .env("FAKE_AZLIN_VM_BIN", support("vm-bin"))
            .env("FAKE_AZLIN_DELAY", delay)
            .env("AMPLIHACK_REMOTE_WORKSPACE", "~/workspace")
            .env("ANTHROPIC_API_KEY", "sk-ant-bench")
            .env("AMPLIHACK_AZURE_REGIONS", "")
            .arg("remote")
            .args(args);
        c
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("azlin/calls.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("azlin/calls.log"));
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

impl Drop for FakeWorld {
    fn drop(&mut self) {
        let mut sockets = vec![self.dir.path().join("tmux")];
        if let Ok(vms) = std::fs::read_dir(self.dir.path().join("azlin/vms")) {
            sockets.extend(vms.flatten().map(|e| e.path().join("tmp")));
        }
        for s in sockets {
            let _ = Command::new("tmux")
                .arg("kill-server")
                .env_remove("TMUX")
                .env("TMUX_TMPDIR", s)
                .stderr(Stdio::null())
                .status();
        }
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
        .find(|a| ["read", "remote", "fanout", "tx"].contains(&a.as_str()))
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
    if run("remote") {
        remote();
    }
    if run("fanout") {
        fan_out();
    }
    if run("tx") {
        transactions();
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
