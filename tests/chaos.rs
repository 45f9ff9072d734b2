//! Chaos: for a bounded time, concurrent `start` (half of them capped, so prompts queue on the
//! VMs), `kill`, `prune --yes`, `list`, `status` and `output` on two small stand-in VMs (and
//! whatever VMs the starts provision, within a quota),
//! while random SIGKILLs hit our processes and the sessions' supervisors. Then the invariants
//! the trust issue names must hold: no session lost, no VM over capacity (sampled throughout),
//! no VM azlin created that the state does not track, no agent alive that the state does not
//! call running, the key in no file on any VM. `AMPLIHACK_CHAOS_SECONDS` sets the duration
//! (default 30); `AMPLIHACK_CHAOS_SEED` replays a run (the seed is printed).

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// xorshift64*: enough randomness for choosing faults, and replayable from a seed.
struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct World {
    env: TestEnv,
    rng: Rng,
    stop: AtomicBool,
    /// Pids of our own processes currently running (the monkey's targets).
    ours: Mutex<BTreeSet<u32>>,
    /// Session ids a `start` reported to its caller.
    promised: Mutex<BTreeSet<String>>,
    violations: Mutex<Vec<String>>,
    kills: AtomicU64,
}

impl World {
    /// Runs `amplihack remote ARGS`, exposed to the monkey while it runs.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let child = self
            .env
            .std_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.ours.lock().unwrap().insert(pid);
        let out = child.wait_with_output().unwrap();
        self.ours.lock().unwrap().remove(&pid);
        assert_no_secret(&out.stdout, "stdout");
        assert_no_secret(&out.stderr, "stderr");
        out
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn sessions(&self) -> BTreeMap<String, Value> {
        std::fs::read_to_string(self.env.state_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["sessions"].as_object().cloned())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

fn read_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Start time (ticks since boot) of a live, non-zombie process.
fn start_ticks(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    if after.starts_with('Z') {
        return None;
    }
    after.split_whitespace().nth(19).map(String::from)
}

/// Session directories on every stand-in VM (and VM names), read straight from "Azure".
fn session_dirs(env: &TestEnv) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for vm in std::fs::read_dir(env.azlin_home().join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let sessions = vm.path().join("home/.amplihack/remote/sessions");
        for s in std::fs::read_dir(sessions).into_iter().flatten().flatten() {
            out.push((vm.file_name().to_string_lossy().into_owned(), s.path()));
        }
    }
    out
}

/// The agents alive right now, by VM: every live process that carries a session's
/// `AMPLIHACK_SESSION_ID` (agents and their children inherit it) with a stand-in VM's HOME.
/// Read from the process table itself, so neither a pid reused by another process nor a
/// record the VM never wrote can mislead it.
fn running_agents(env: &TestEnv) -> BTreeMap<String, BTreeSet<String>> {
    let vms = env.azlin_home().join("vms");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if start_ticks(pid).is_none() {
            continue; // gone, or a zombie
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut session = None;
        let mut home = None;
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(id) = var.strip_prefix("AMPLIHACK_SESSION_ID=") {
                session = Some(id.to_string());
            } else if let Some(h) = var.strip_prefix("HOME=") {
                home = Some(PathBuf::from(h));
            }
        }
        if let (Some(id), Some(home)) = (session, home)
            && let Ok(rest) = home.strip_prefix(&vms)
            && let Some(vm) = rest.components().next()
        {
            out.entry(vm.as_os_str().to_string_lossy().into_owned())
                .or_default()
                .insert(id);
        }
    }
    out
}

fn capacity_of(env: &TestEnv, vm: &str) -> usize {
    let meta = std::fs::read_to_string(env.vm_dir(vm).join("meta")).unwrap_or_default();
    if meta.contains("Standard_E8s_v5") {
        2
    } else if meta.contains("Standard_D8s_v3") {
        1
    } else {
        4
    }
}

fn starter(w: &World) {
    while w.running() {
        let sleep = 1 + w.rng.below(3);
        let exit = if w.rng.below(4) == 0 { " EXIT=1" } else { "" };
        let trap = if w.rng.below(2) == 0 { " TRAP" } else { "" };
        let prompt = format!("SLEEP={sleep}{exit}{trap} LINES=2");
        let count = 1 + w.rng.below(2) as usize;
        let mut args = vec!["start", "--no-context", "--size", "m", "--json"];
        // Half the starts cap the pool, so what does not fit waits in a VM's queue.
        if w.rng.below(2) == 0 {
            args.extend(["--max-vms", "3"]);
        }
        let prompts = vec![prompt; count];
        args.extend(prompts.iter().map(String::as_str));
        let out = w.run(&args);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            for s in v.as_array().into_iter().flatten() {
                if let Some(id) = s["session_id"].as_str() {
                    w.promised.lock().unwrap().insert(id.to_string());
                }
            }
        }
    }
}

fn killer(w: &World) {
    while w.running() {
        let running: Vec<String> = w
            .sessions()
            .into_iter()
            .filter(|(_, s)| s["status"] == "running")
            .map(|(id, _)| id)
            .collect();
        if !running.is_empty() {
            let id = &running[w.rng.below(running.len() as u64) as usize];
            if w.rng.below(3) == 0 {
                w.run(&["kill", "--force", id]);
            } else {
                w.run(&["kill", id]);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pruner(w: &World) {
    while w.running() {
        w.run(&["prune", "--idle-minutes", "0", "--yes"]);
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn watcher(w: &World) {
    while w.running() {
        w.run(&["list", "--json"]);
        w.run(&["status", "--json"]);
        let ids: Vec<String> = w.sessions().into_keys().collect();
        if !ids.is_empty() {
            let id = &ids[w.rng.below(ids.len() as u64) as usize];
            w.run(&["output", id, "-n", "5"]);
        }
    }
}

/// SIGKILLs a random process of ours, or a random session supervisor on a VM.
fn monkey(w: &World) {
    while w.running() {
        std::thread::sleep(Duration::from_millis(250 + w.rng.below(500)));
        if w.rng.below(3) > 0 {
            let pids: Vec<u32> = w.ours.lock().unwrap().iter().copied().collect();
            if let Some(pid) = pids.get(w.rng.below(pids.len() as u64) as usize) {
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                }
                w.kills.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let dirs = session_dirs(&w.env);
            if let Some((_, dir)) = dirs.get(w.rng.below(dirs.len() as u64) as usize)
                && let (Some(pid), Some(id)) = (
                    read_line(&dir.join("supervisor.pid")),
                    read_line(&dir.join("supervisor.id")),
                )
                && start_ticks(&pid).is_some_and(|t| id.ends_with(&format!(" {t}")))
            {
                unsafe {
                    libc::kill(pid.parse::<i32>().unwrap(), libc::SIGKILL);
                }
                w.kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Throughout the run: no VM ever runs more agents than its capacity.
fn sampler(w: &World) {
    while w.running() {
        for (vm, sessions) in running_agents(&w.env) {
            let cap = capacity_of(&w.env, &vm);
            if sessions.len() > cap {
                w.violation(format!(
                    "{vm} runs the agents of {} sessions, capacity {cap}: {sessions:?}",
                    sessions.len()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn chaos_keeps_every_invariant() {
    let seconds: u64 = std::env::var("AMPLIHACK_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("AMPLIHACK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos: {seconds}s, AMPLIHACK_CHAOS_SEED={seed}");
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_KILL_GRACE", "1");
    env.set("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "0.2");
    env.prime(2, "m");
    // At most 3 VMs in the region: starts beyond that fail with a quota error (exit 5).
    std::fs::create_dir_all(env.azlin_home().join("quota")).unwrap();
    std::fs::write(env.azlin_home().join("quota/eastus"), "3").unwrap();
    let world = Arc::new(World {
        env,
        rng: Rng(AtomicU64::new(seed)),
        stop: AtomicBool::new(false),
        ours: Mutex::new(BTreeSet::new()),
        promised: Mutex::new(BTreeSet::new()),
        violations: Mutex::new(Vec::new()),
        kills: AtomicU64::new(0),
    });
    let roles: [fn(&World); 7] = [starter, starter, killer, pruner, watcher, monkey, sampler];
    let handles: Vec<_> = roles
        .into_iter()
        .map(|role| {
            let w = Arc::clone(&world);
            std::thread::spawn(move || role(&w))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    world.stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let w = &*world;
    let env = &w.env;

    // Settle: refresh until nothing is pending or running (every agent sleeps 3 s at most).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = env.run(&["list", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let active: Vec<(String, Value)> = w
            .sessions()
            .into_iter()
            .filter(|(_, s)| matches!(s["status"].as_str(), Some("pending" | "queued" | "running")))
            .collect();
        if active.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions never settled (seed {seed}): {active:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let violations = w.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    let sessions = w.sessions();
    // No session lost: every id a start reported is in the state.
    for id in w.promised.lock().unwrap().iter() {
        assert!(
            sessions.contains_key(id),
            "seed {seed}: session {id} was lost"
        );
    }
    // No VM azlin created that the state does not track.
    let state = env.state();
    let tracked: BTreeSet<String> = state["vm_pool"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for vm in std::fs::read_dir(env.azlin_home().join("vms"))
        .unwrap()
        .flatten()
    {
        if vm.path().join("meta").exists() {
            let name = vm.file_name().to_string_lossy().into_owned();
            assert!(
                tracked.contains(&name),
                "seed {seed}: VM {name} exists in Azure but is not tracked"
            );
        }
    }
    // No agent alive that the state does not call running (all settled: none may live).
    let mut still_running = Vec::new();
    for (vm, ids) in running_agents(env) {
        for id in ids {
            let status = sessions
                .get(&id)
                .map(|s| s["status"].to_string())
                .unwrap_or_else(|| "nothing".into());
            still_running.push(format!("{id} on {vm} (state: {status})"));
        }
    }
    assert!(
        still_running.is_empty(),
        "seed {seed}: agents run that the state does not call running: {still_running:?}"
    );
    // No session of a VM that still exists is unaccounted for on the VM side either.
    let on_vms: BTreeSet<String> = session_dirs(env)
        .into_iter()
        .map(|(_, d)| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for id in &on_vms {
        assert!(
            sessions.contains_key(id),
            "seed {seed}: session {id} runs on a VM but the state does not know it"
        );
    }
    // The key in no file of ours on any VM (TestEnv's drop checks it too).
    for file in env.files_of_ours_on_vms() {
        assert_no_secret(&std::fs::read(&file).unwrap_or_default(), "a file on a VM");
    }
    let statuses: BTreeMap<String, usize> = sessions.values().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        m
    });
    eprintln!(
        "chaos: {} sessions {statuses:?}, {} SIGKILLs, {} VMs tracked",
        sessions.len(),
        w.kills.load(Ordering::Relaxed),
        tracked.len()
    );
    // Leave no stand-in azlin hanging (a killed start's `new` goes on in its own group).
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(env.root().join("bin/azlin").to_str().unwrap())
        .status();
}
