//! Benchmarks of streaming, `wait` and the queue (`cargo bench --bench live`; results in
//! docs/performance.md), against the stand-in azlin sleeping 2 s per call.
//!
//! 1. `output --follow`: how long a line the agent writes takes to reach our stdout, and azlin
//!    calls per minute of following. `AMPLIHACK_BENCH_OLD_BIN` names a build of an older
//!    version (which polled) to measure it the same way, for comparison.
//! 2. `wait` on 8 sessions over 2 VMs: azlin calls and time.
//! 3. 12 one-second prompts through a pool capped at one L VM (4 slots), against the uncapped
//!    run that provisions more VMs: time until all are done, azlin calls, VM-hours bought.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod world;
use world::{BIN, FakeWorld};

impl FakeWorld {
    fn run(&self, delay: &str, args: &[&str]) -> std::process::Output {
        let out = self.cmd(delay, args).output().unwrap();
        assert!(
            out.status.success() || args[0] == "wait",
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Ids of the sessions `start --json` printed.
    fn start(&self, delay: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec!["start", "--no-context", "--json"];
        all.extend_from_slice(args);
        let out = self.run(delay, &all);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Agents whose stand-in recorded a finish, across all VMs.
    fn finished_agents(&self) -> usize {
        let mut n = 0;
        for vm in std::fs::read_dir(self.dir.path().join("azlin/vms"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for rec in std::fs::read_dir(vm.path().join("home/agent-records"))
                .into_iter()
                .flatten()
                .flatten()
            {
                n += usize::from(rec.path().join("finished_ns").exists());
            }
        }
        n
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Follows a session whose agent stamps a line every 0.25 s for `stamps` lines; returns
/// (latencies in ms, follow wall time, connect calls).
fn follow(bin: &str, stamps: u32, env: &[(&str, &str)]) -> (Vec<f64>, Duration, usize) {
    let w = FakeWorld::new();
    w.run("0", &["prime", "--count", "1", "--vm-size", "l"]);
    let id = w.start("0", &[&format!("STAMP={stamps}")]).remove(0);
    w.clear_calls();
    let started = Instant::now();
    let mut child = w
        .cmd_of(bin, "2", &["output", &id, "--follow", "--raw", "-n", "1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut latencies = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(stamp) = line
            .strip_prefix("stamp ")
            .and_then(|s| s.parse::<u128>().ok())
        {
            latencies.push((now_ns().saturating_sub(stamp)) as f64 / 1e6);
        }
    }
    child.wait().unwrap();
    (latencies, started.elapsed(), w.calls_of("connect"))
}

fn follow_section() {
    println!(
        "## output --follow (stand-in sleeping 2 s per call; agent writes a line every 0.25 s for 60 s)\n"
    );
    println!("| build | line latency p50 | p90 | max | azlin calls | calls per minute |");
    println!("|---|---:|---:|---:|---:|---:|");
    // Each build with its own defaults; the older one's poll interval was 5 s by default (the
    // variable is set only to be explicit about it).
    let mut builds = vec![(
        "this version (one stream)".to_string(),
        BIN.to_string(),
        Vec::new(),
    )];
    if let Ok(old) = std::env::var("AMPLIHACK_BENCH_OLD_BIN") {
        builds.push((
            "older version (polls every 5 s)".into(),
            old,
            vec![("AMPLIHACK_REMOTE_FOLLOW_INTERVAL", "5")],
        ));
    }
    for (name, bin, env) in builds {
        let (mut lat, took, calls) = follow(&bin, 240, &env);
        let per_min = calls as f64 / took.as_secs_f64() * 60.0;
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {calls} | {per_min:.1} |",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.9),
            percentile(&mut lat, 1.0)
        );
    }
    println!();
}

fn wait_section() {
    println!("## wait on 8 sessions over 2 VMs (stand-in sleeping 2 s per call)\n");
    let w = FakeWorld::new();
    w.run("0", &["prime", "--count", "2", "--vm-size", "l"]);
    let prompts: Vec<String> = (1..=8).map(|i| format!("SLEEP={}", 2 + i % 4)).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    w.start("0", &refs);
    w.clear_calls();
    let t = Instant::now();
    let out = w.run("2", &["wait"]);
    let took = t.elapsed();
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    println!(
        "wait printed {lines} lines in {:.2} s with {} azlin calls: one watch stream per VM for the whole wait, then one call per VM bringing the archives home (the last session ends 5 s after the start)\n",
        took.as_secs_f64(),
        w.calls(),
    );
}

fn queue_section() {
    println!(
        "## 12 one-second prompts, a pool capped at one L VM vs uncapped (stand-in sleeping 2 s per call)\n"
    );
    println!("| run | until all 12 done | azlin calls | VMs |");
    println!("|---|---:|---:|---:|");
    let prompts = ["SLEEP=1"; 12];
    for (name, capped) in [
        ("capped: --max-vms 1 (queues)", true),
        ("uncapped (provisions)", false),
    ] {
        let w = FakeWorld::new();
        w.run("0", &["prime", "--count", "1", "--vm-size", "l"]);
        w.clear_calls();
        let mut args: Vec<&str> = Vec::new();
        if capped {
            args.extend(["--max-vms", "1"]);
        }
        args.extend(prompts.iter().copied());
        let t = Instant::now();
        w.start("2", &args);
        while w.finished_agents() < 12 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = t.elapsed();
        let vms = std::fs::read_dir(w.dir.path().join("azlin/vms"))
            .unwrap()
            .count();
        println!(
            "| {name} | {:.2} s | {} | {vms} |",
            took.as_secs_f64(),
            w.calls()
        );
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .skip(1)
        .find(|a| ["follow", "wait", "queue"].contains(&a.as_str()))
        .cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("follow") {
        follow_section();
    }
    if run("wait") {
        wait_section();
    }
    if run("queue") {
        queue_section();
    }
}
