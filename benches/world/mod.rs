//! The private world a benchmark runs commands in: its own HOME, state file, tmux socket
//! directory and stand-in azlin (whose "VMs" are directories), shared by the benches.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_amplihack");

pub fn support(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(rel)
}

pub struct FakeWorld {
    pub dir: tempfile::TempDir,
}

impl FakeWorld {
    pub fn new() -> Self {
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

    /// `amplihack remote ARGS` of this build, with the stand-in sleeping `delay` per call.
    pub fn cmd(&self, delay: &str, args: &[&str]) -> Command {
        self.cmd_of(BIN, delay, args)
    }

    /// The same with another build's binary (to compare with an older version).
    pub fn cmd_of(&self, bin: &str, delay: &str, args: &[&str]) -> Command {
        let r = self.dir.path();
        let mut c = Command::new(bin);
        // In the git repository when there is one (`with_repo`), so starts send it.
        let cwd = if r.join("work/.git").exists() {
            r.join("work")
        } else {
            r.to_path_buf()
        };
        c.env_clear()
            .current_dir(cwd)
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
            // azlin's default group, as a user's ~/.azlin/config.toml would set it.
            .env("FAKE_AZLIN_DEFAULT_RG", "rg")
            .env("AMPLIHACK_REMOTE_WORKSPACE", "~/workspace")
            .env("ANTHROPIC_API_KEY", "sk-ant-bench")
            .env("AMPLIHACK_AZURE_REGIONS", "")
            .arg("remote")
            .args(args);
        c
    }

    /// azlin calls so far whose subcommand starts with `prefix` (`""`: all of them).
    pub fn calls_of(&self, prefix: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("azlin/calls.log"))
            .map(|t| t.lines().filter(|l| l.starts_with(prefix)).count())
            .unwrap_or(0)
    }

    pub fn calls(&self) -> usize {
        self.calls_of("")
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("azlin/calls.log"));
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
