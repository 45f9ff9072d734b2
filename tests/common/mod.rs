//! The isolated world of one integration test: its own HOME, state file, PATH (the stand-in
//! azlin first), local tmux socket directory and fake-azlin VM directory. Nothing a test does
//! touches the developer's files or tmux server, so tests run in parallel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

pub const SECRET: &str = "sk-ant-test-0123456789abcdef-SECRET-VALUE";

/// A session `start` reported, and the VM it went to.
pub struct Started {
    pub id: String,
    pub vm: String,
}

/// `start --json ARGS` of one prompt that must start: the session and its VM.
pub fn start_one(env: &TestEnv, args: &[&str]) -> Started {
    let mut all = vec!["start", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    Started { id, vm }
}

pub struct TestEnv {
    dir: tempfile::TempDir,
    extra_env: Vec<(String, String)>,
}

pub fn support(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(rel)
}

impl TestEnv {
    pub fn new() -> Self {
        // Short paths: a tmux socket path must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ah")
            .tempdir_in("/tmp")
            .unwrap();
        for sub in ["home", "work", "azlin", "bin", "tmux", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(support("azlin"), dir.path().join("bin/azlin")).unwrap();
        // azlin's own default resource group, as its user would configure it.
        std::fs::create_dir_all(dir.path().join("home/.azlin")).unwrap();
        std::fs::write(
            dir.path().join("home/.azlin/config.toml"),
            "default_resource_group = \"rg\"\n",
        )
        .unwrap();
        TestEnv {
            dir,
            extra_env: Vec::new(),
        }
    }

    /// A test env whose sessions run on this machine (the local backend).
    pub fn local() -> Self {
        let mut env = TestEnv::new();
        env.set("AMPLIHACK_REMOTE_BACKEND", "local");
        env.set("AMPLIHACK_LOCAL_SLOTS", "4");
        let agent = format!("{} claude", support("vm-bin/amplihack").display());
        env.set("AMPLIHACK_REMOTE_AGENT", &agent);
        env
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.into(), value.into()));
    }

    pub fn unset(&mut self, key: &str) {
        self.set(key, "\u{0}unset");
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }
    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }
    pub fn azlin_home(&self) -> PathBuf {
        self.root().join("azlin")
    }
    pub fn state_path(&self) -> PathBuf {
        self.root().join("state/remote-state.json")
    }
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.azlin_home().join("vms").join(vm)
    }
    /// Where finished sessions' archives go: `remote-archive` beside the state file.
    pub fn archive_dir(&self) -> PathBuf {
        self.root().join("state/remote-archive")
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let r = self.root().display().to_string();
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                format!("{r}/bin:/usr/local/bin:/usr/bin:/bin"),
            ),
            ("HOME".into(), format!("{r}/home")),
            ("USER".into(), "tester".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "AMPLIHACK_REMOTE_STATE".into(),
                self.state_path().display().to_string(),
            ),
            ("TMUX_TMPDIR".into(), format!("{r}/tmux")),
            ("FAKE_AZLIN_HOME".into(), format!("{r}/azlin")),
            (
                "FAKE_AZLIN_VM_BIN".into(),
                support("vm-bin").display().to_string(),
            ),
            ("AMPLIHACK_REMOTE_WORKSPACE".into(), "~/workspace".into()),
            ("ANTHROPIC_API_KEY".into(), SECRET.into()),
            ("AMPLIHACK_AZURE_REGIONS".into(), String::new()),
            ("AMPLIHACK_REMOTE_FOLLOW_INTERVAL".into(), "0.2".into()),
            ("AMPLIHACK_REMOTE_KILL_GRACE".into(), "3".into()),
        ];
        for (k, v) in &self.extra_env {
            env.retain(|(ek, _)| ek != k);
            if v != "\u{0}unset" {
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("amplihack").unwrap();
        c.env_clear().current_dir(self.work()).envs(self.env());
        c.timeout(Duration::from_secs(120));
        c
    }

    /// This test's environment as `K='V' ...` words, for a command line run in a terminal.
    pub fn env_words(&self) -> String {
        self.env()
            .into_iter()
            .map(|(k, v)| format!("{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `amplihack remote ARGS...`. Whatever it prints must never hold the API key.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.arg("remote").args(args);
        let out = c.output().unwrap();
        assert_no_secret(&out.stdout, "stdout");
        assert_no_secret(&out.stderr, "stderr");
        out
    }

    /// A std Command for the binary (for tests that signal it or run many at once).
    pub fn std_cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("amplihack"));
        c.env_clear()
            .current_dir(self.work())
            .envs(self.env())
            .arg("remote")
            .args(args);
        c
    }

    /// Every azlin call so far, as argv vectors.
    /// Runs the stand-in azlin itself, as the user would behind our back (its argv lands in
    /// the calls log like ours: clear it after).
    pub fn azlin(&self, args: &[&str]) -> Output {
        std::process::Command::new(support("azlin"))
            .args(args)
            .env_clear()
            .envs(self.env())
            .env("AZLIN_NO_UPDATE_CHECK", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.azlin_home().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\x1f').map(String::from).collect())
            .collect()
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.azlin_home().join("calls.log"));
    }

    pub fn fault(&self, rel: &str) {
        let p = self.azlin_home().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }

    pub fn clear_fault(&self, rel: &str) {
        let _ = std::fs::remove_file(self.azlin_home().join(rel));
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    pub fn write_state(&self, text: &str) {
        std::fs::create_dir_all(self.state_path().parent().unwrap()).unwrap();
        std::fs::write(self.state_path(), text).unwrap();
    }

    pub fn session_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state()["sessions"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn session(&self, id: &str) -> Value {
        self.state()["sessions"][id].clone()
    }

    /// The VM a session was placed on.
    pub fn vm_of(&self, id: &str) -> String {
        self.session(id)["vm_name"].as_str().unwrap().to_string()
    }

    /// `start --no-context --json PROMPT`, then waits until the agent runs (its records exist).
    pub fn start_running(&self, prompt: &str) -> Started {
        let out = self.run(&["start", "--no-context", "--json", prompt]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let id = started_ids(&out).remove(0);
        let vm = self.vm_of(&id);
        self.wait_for("agent start", Duration::from_secs(20), || {
            self.agent_record(&vm, &id).join("env").exists()
        });
        Started { id, vm }
    }

    /// Where the run script keeps a session's files on its (fake) VM.
    pub fn session_dir(&self, vm: &str, id: &str) -> PathBuf {
        self.vm_dir(vm)
            .join("home/.amplihack/remote/sessions")
            .join(id)
    }

    /// Every regular file under `.amplihack` of each fake VM's home and of the local home, and
    /// in the archive.
    pub fn files_of_ours_on_vms(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.home().join(".amplihack"), self.archive_dir()];
        let mut files = Vec::new();
        if let Ok(vms) = std::fs::read_dir(self.azlin_home().join("vms")) {
            for vm in vms.flatten() {
                roots.push(vm.path().join("home/.amplihack"));
                // What `azlin new --yes` would have copied there (the stand-in models it).
                roots.push(vm.path().join("home/.azure"));
                if vm.path().join("home/.claude/.credentials.json").exists() {
                    files.push(vm.path().join("home/.claude/.credentials.json"));
                }
            }
        }
        while let Some(dir) = roots.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    roots.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        files
    }

    /// The agent's pid, which is also its process group.
    pub fn agent_pid(&self, vm: &str, id: &str) -> i32 {
        std::fs::read_to_string(self.session_dir(vm, id).join("agent.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The agent's record of a session on a fake VM (or, for `local`, this machine).
    pub fn agent_record(&self, vm: &str, id: &str) -> PathBuf {
        let home = if vm == "local" {
            self.home()
        } else {
            self.vm_dir(vm).join("home")
        };
        home.join("agent-records").join(id)
    }

    /// Polls `cond` until it holds; panics with `what` after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Refreshes (through `list`) until the session leaves pending/running.
    pub fn wait_finished(&self, id: &str) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("{id} to finish"), Duration::from_secs(60), || {
            let out = self.run(&["list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            last = list
                .as_array()
                .and_then(|a| a.iter().find(|s| s["session_id"] == id).cloned())
                .unwrap_or(Value::Null);
            !matches!(
                last["status"].as_str(),
                Some("running" | "pending" | "queued")
            )
        });
        last
    }

    /// Creates VMs through the tool itself (`prime`) and forgets those azlin calls.
    pub fn prime(&self, count: u32, size: &str) -> Vec<String> {
        let out = self.run(&[
            "prime",
            "--count",
            &count.to_string(),
            "--vm-size",
            size,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "prime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.clear_calls();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        // In the state's (and azlin's listing's) order: names end in a random part.
        names.sort();
        names
    }

    /// Makes `work/` a git repository with one commit.
    pub fn git_repo(&self) {
        let w = self.work();
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["config", "user.email", "t@example.invalid"],
            &["config", "user.name", "t"],
        ] {
            git(&w, args);
        }
        std::fs::write(w.join("README.md"), "hello\n").unwrap();
        git(&w, &["add", "."]);
        git(&w, &["commit", "-q", "-m", "init"]);
    }
}

/// A terminal for tests that need one: a private tmux server whose only pane runs `command`
/// (through `sh -c`) at 120x30. Dropping it ends the server.
pub struct Terminal {
    sock: PathBuf,
}

impl Terminal {
    pub fn new(env: &TestEnv, name: &str, command: &str) -> Self {
        let t = Terminal {
            sock: env.root().join(format!("{name}.sock")),
        };
        assert!(
            t.tmux(&["new-session", "-d", "-x", "120", "-y", "30", command])
                .status
                .success()
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    }

    /// What the pane shows; with `escapes`, its colours as escape sequences.
    pub fn screen(&self, escapes: bool) -> String {
        let args: &[&str] = if escapes {
            &["capture-pane", "-p", "-e"]
        } else {
            &["capture-pane", "-p"]
        };
        String::from_utf8_lossy(&self.tmux(args).stdout).into_owned()
    }

    /// Waits until the screen shows `needle`; returns the screen.
    pub fn wait_for(&self, needle: &str, escapes: bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(escapes);
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the terminal never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn assert_no_secret(bytes: &[u8], what: &str) {
    assert!(
        !String::from_utf8_lossy(bytes).contains(SECRET),
        "the API key appeared in {what}"
    );
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Across the whole suite: the key is never in a logged azlin argv or the state file.
        if !std::thread::panicking() {
            for file in [self.azlin_home().join("calls.log"), self.state_path()] {
                if let Ok(bytes) = std::fs::read(&file) {
                    assert_no_secret(&bytes, &file.display().to_string());
                }
            }
            // Nor at rest in any file of ours on any VM (or this machine, for `local`), nor in
            // an archive.
            for file in self.files_of_ours_on_vms() {
                if let Ok(bytes) = std::fs::read(&file) {
                    assert_no_secret(&bytes, &file.display().to_string());
                }
            }
        }
        let mut sockets = vec![self.root().join("tmux")];
        if let Ok(vms) = std::fs::read_dir(self.azlin_home().join("vms")) {
            sockets.extend(vms.flatten().map(|e| e.path().join("tmp")));
        }
        for dir in sockets {
            let _ = std::process::Command::new("tmux")
                .arg("kill-server")
                .env_remove("TMUX")
                .env("TMUX_TMPDIR", dir)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Whether `v` is a timestamp in the specification's form, `2025-11-25T14:30:22Z`.
pub fn is_whole_second_utc(v: &Value) -> bool {
    let Some(s) = v.as_str() else {
        return false;
    };
    s.len() == 20
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// Ids of the sessions `start --json` reported.
pub fn started_ids(o: &Output) -> Vec<String> {
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("not JSON: {}", stdout(o)));
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect()
}
