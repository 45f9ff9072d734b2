//! How scripts reach a VM. One interface, two transports: `azlin connect` for Azure VMs and
//! local bash for the `local` backend. Everything above this module (launch, refresh, output,
//! kill) is the same code for both. Azure-only operations (new, kill, list) live on `Azlin`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::Settings;
use crate::core::model::Backend;
use crate::error::{Error, Result};
use crate::exec::{self, Cmd, OnInterrupt, Output, RunError};
use crate::remote::answer;

/// A VM as every call about it must name it: azlin needs the resource group it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    pub name: String,
    pub backend: Backend,
    /// The VM's own resource group; `None`: azlin's own default (no `--resource-group`), the
    /// group a VM recorded without one was created in.
    pub resource_group: Option<String>,
}

/// An interactive program to run on this terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interactive {
    pub program: OsString,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub trait Transport: Sync {
    /// Runs a bash script (plus any payload after it) on the VM, with `input` on stdin.
    /// A non-zero exit of the script is an error carrying its stderr.
    fn run_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        on_interrupt: OnInterrupt,
    ) -> Result<Output>;

    /// `run_script`, as a conversation (`exec::run_conversation`): when the answer so far
    /// (without its mark) ends with the line `awaited`, `reply` reads it and what it returns is
    /// written to the script's stdin.
    fn converse_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        awaited: &[u8],
        reply: exec::Reply,
    ) -> Result<Output>;

    /// Runs a script whose answer is a stream: its stdout goes to `on_stdout` as it arrives.
    /// A stream quiet for longer than `silence` is taken for a dead connection: `VmUnreachable`.
    /// `stop` (or Ctrl+C) ends it with `Error::Interrupted`. A non-zero exit is an error, as for
    /// `run_script`.
    fn stream_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        silence: Duration,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Output>;

    /// The interactive command that attaches this terminal to a session's tmux session.
    fn attach_command(&self, vm: &VmRef, session: &str) -> Interactive;
}

/// A stream that stayed quiet past its silence allowance: the connection is taken for dead.
fn silent_stream(vm: &str, silence: Duration) -> Error {
    Error::VmUnreachable {
        vm: vm.into(),
        detail: format!(
            "the stream sent nothing for {}s (heartbeats included): the connection is taken for dead",
            silence.as_secs()
        ),
    }
}

pub struct Azlin {
    program: String,
    /// `AMPLIHACK_RESOURCE_GROUP`.
    resource_group: Option<String>,
    /// azlin's own default group: `default_resource_group` of its config.toml.
    azlin_default_group: Option<String>,
    /// For the one `azlin show` that checks a VM whose `connect` did not run our script.
    show_timeout: Duration,
    /// VMs `azlin show` confirmed gone during this command, with why: not asked again (each
    /// `connect` to a gone VM costs azlin an ssh login per running VM).
    gone: Mutex<BTreeMap<String, String>>,
}

pub struct LocalShell;

/// Both transports, picked per VM.
pub struct Transports {
    pub azlin: Azlin,
    pub local: LocalShell,
}

impl Transports {
    pub fn new(settings: &Settings) -> Self {
        Transports {
            azlin: Azlin {
                program: settings.azlin.clone(),
                resource_group: settings.resource_group.clone(),
                azlin_default_group: azlin_config_default_group(),
                show_timeout: settings.timeouts.list,
                gone: Mutex::new(BTreeMap::new()),
            },
            local: LocalShell,
        }
    }

    pub fn for_backend(&self, backend: Backend) -> &dyn Transport {
        match backend {
            Backend::Azure => &self.azlin,
            Backend::Local => &self.local,
        }
    }
}

/// The remote command of every `connect`: bash reading the script from stdin.
const REMOTE_COMMAND: &str = "bash -s";

/// azlin's config file: `$AZLIN_CONFIG_DIR/config.toml`, else `~/.azlin/config.toml`.
fn azlin_config_path() -> Option<PathBuf> {
    match std::env::var_os("AZLIN_CONFIG_DIR") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("config.toml")),
        _ => dirs::home_dir().map(|h| h.join(".azlin/config.toml")),
    }
}

/// The resource group azlin uses when given none: its config's `default_resource_group`.
fn azlin_config_default_group() -> Option<String> {
    let text = std::fs::read_to_string(azlin_config_path()?).ok()?;
    default_group_in_config(&text)
}

/// `default_resource_group = "NAME"` at the top level of azlin's config.toml (before any
/// `[table]`).
pub fn default_group_in_config(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return None;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "default_resource_group" {
            continue;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(rest) => rest.split('"').next()?,
            None => match value.strip_prefix('\'') {
                Some(rest) => rest.split('\'').next()?,
                None => value.split('#').next()?.trim(),
            },
        };
        return (!value.is_empty()).then(|| value.to_string());
    }
    None
}

impl Azlin {
    /// The resource group new VMs go to, and are recorded in: `AMPLIHACK_RESOURCE_GROUP`, else
    /// azlin's own default (its config's), so a later change of either never loses them.
    /// `None` when neither is set (azlin then fails "No resource group configured").
    pub fn default_resource_group(&self) -> Option<&str> {
        self.resource_group
            .as_deref()
            .or(self.azlin_default_group.as_deref())
    }

    /// `sub`, `--resource-group RG` when a group is named, `tail`. Without one, azlin uses its
    /// own default: never `AMPLIHACK_RESOURCE_GROUP` behind the caller's back, since a VM
    /// recorded without a group was created in azlin's default.
    fn args(&self, sub: &[&str], rg: Option<&str>, tail: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
        if let Some(rg) = rg {
            args.push("--resource-group".into());
            args.push(rg.to_string());
        }
        args.extend(tail.iter().map(|s| s.to_string()));
        args
    }

    fn cmd(&self, args: Vec<String>, timeout: Duration) -> Cmd {
        Cmd::new(&self.program, args, timeout).env("AZLIN_NO_UPDATE_CHECK", "1")
    }

    /// Runs azlin and maps its failures to our errors (docs/exit-codes.md).
    fn call(&self, cmd: Cmd, vm: Option<&str>) -> Result<Output> {
        let result = exec::run(&cmd);
        self.judge(&cmd, vm, result)
    }

    fn judge(
        &self,
        cmd: &Cmd,
        vm: Option<&str>,
        result: std::result::Result<Output, RunError>,
    ) -> Result<Output> {
        match result {
            Ok(out) if out.code == 0 => Ok(out),
            Ok(out) => Err(classify_failure(
                &cmd.display(),
                vm,
                out.code,
                &out.stderr_text(),
            )),
            Err(RunError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(
                Error::AzlinMissing(format!("'{}' is not on PATH", self.program)),
            ),
            Err(RunError::Spawn(e)) => Err(Error::AzlinMissing(format!(
                "cannot run '{}': {e}",
                self.program
            ))),
            Err(RunError::Timeout) => match vm {
                Some(vm) => Err(Error::VmUnreachable {
                    vm: vm.into(),
                    detail: format!(
                        "no answer within {}s (`{}`)",
                        cmd.timeout.as_secs(),
                        cmd.display()
                    ),
                }),
                None => Err(Error::Timeout {
                    command: cmd.display(),
                    seconds: cmd.timeout.as_secs(),
                }),
            },
            Err(RunError::Interrupted) => Err(Error::Interrupted),
        }
    }

    /// `azlin new`: a public VM, no auto-connect, and no `--yes` (which would copy the user's
    /// local credentials onto it).
    pub fn new_vm(
        &self,
        name: &str,
        sku: &str,
        region: &str,
        rg: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let args = self.args(
            &["new", "--name", name, "--vm-size", sku, "--region", region],
            rg,
            &["--public", "--no-auto-connect"],
        );
        match self.call(self.cmd(args, timeout), None) {
            Ok(_) => Ok(()),
            // Someone else's VM has this name: it must never be taken for ours.
            Err(Error::CommandFailed { stderr, .. })
                if stderr.to_lowercase().contains("already exists") =>
            {
                Err(Error::VmNameTaken {
                    vm: name.to_string(),
                    detail: stderr,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `azlin kill NAME --force`: deletes the VM with its disks, NIC, IP and NSG. A VM that is
    /// already gone is a success.
    pub fn delete_vm(&self, vm: &VmRef, timeout: Duration) -> Result<()> {
        let args = self.args(
            &["kill", &vm.name],
            vm.resource_group.as_deref(),
            &["--force"],
        );
        self.call(self.cmd(args, timeout), None).map(drop)
    }

    /// `azlin show NAME -o json` in the VM's own resource group: `Ok(false)` only when azlin
    /// answers that the VM was not found in that group; any other failure is an error (we
    /// cannot tell), and so is a "not found" about another group. Asked once per process.
    pub fn vm_exists(&self, vm: &VmRef, timeout: Duration) -> Result<bool> {
        // Confirmed gone by this process already: asking again costs a call and says the same.
        if self.known_gone(vm).is_err() {
            return Ok(false);
        }
        let args = self.args(
            &["show", &vm.name],
            vm.resource_group.as_deref(),
            &["-o", "json"],
        );
        let cmd = self.cmd(args, timeout);
        match self.call(cmd.clone(), Some(&vm.name)) {
            Ok(_) => Ok(true),
            Err(Error::VmNotFound { detail, .. }) => {
                let asked = vm
                    .resource_group
                    .as_deref()
                    .or(self.azlin_default_group.as_deref());
                match (group_named_in(&detail), asked) {
                    (Some(answered), Some(asked)) if !answered.eq_ignore_ascii_case(asked) => {
                        Err(Error::CommandFailed {
                            command: cmd.display(),
                            status: Some(1),
                            stderr: format!(
                                "azlin answered about resource group '{answered}', not '{asked}' where the VM was created: that proves nothing about it ({detail})"
                            ),
                        })
                    }
                    // A "not found" about another resource (the VM's public IP or disk, say,
                    // that azlin looked up after finding the VM) says the VM is there.
                    _ if !not_found_names_vm(&detail, &vm.name) => Err(Error::CommandFailed {
                        command: cmd.display(),
                        status: Some(1),
                        stderr: format!(
                            "azlin's 'not found' is not about VM '{}': that proves nothing about it ({detail})",
                            vm.name
                        ),
                    }),
                    _ => Ok(false),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A VM whose `connect` answered without running our script (`answer::framed_answer`):
    /// azlin did not find it and attached to a tmux session of that name elsewhere.
    fn not_our_answer(&self, vm: &VmRef) -> Error {
        self.confirm_gone(
            vm,
            "its `connect` answered without running our script (azlin reads a VM name it cannot find as a tmux session name and attaches wherever one has it)",
        )
    }

    /// A `connect` that did not reach VM `vm` for a reason that says it may be gone (`asked`):
    /// one `azlin show` in its own resource group settles it, the one rule for every command.
    /// Confirmed gone: `VmNotFound`, and the VM is not asked again by this process. Still there:
    /// unreachable (try again). Could not tell: that error.
    fn confirm_gone(&self, vm: &VmRef, asked: &str) -> Error {
        match self.vm_exists(vm, self.show_timeout) {
            Ok(false) => {
                let detail = format!(
                    "{asked}, and `azlin show` in {} says it does not exist",
                    match &vm.resource_group {
                        Some(rg) => format!("its resource group '{rg}'"),
                        None => "azlin's default resource group".to_string(),
                    }
                );
                self.gone
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(vm.name.clone(), detail.clone());
                Error::VmNotFound {
                    vm: vm.name.clone(),
                    detail,
                }
            }
            Ok(true) => Error::VmUnreachable {
                vm: vm.name.clone(),
                detail: format!("{asked}; `azlin show` still finds it, so try again"),
            },
            Err(e) => e,
        }
    }

    /// A VM this process already found gone: no more calls to it.
    fn known_gone(&self, vm: &VmRef) -> Result<()> {
        match self
            .gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vm.name)
        {
            Some(detail) => Err(Error::VmNotFound {
                vm: vm.name.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A `connect` that failed: an exit 1 with nothing on stderr but ssh's own words about the
    /// connection is ssh dying of a signal (a dropped connection: azlin exits
    /// `status.code().unwrap_or(1)`, not 255), which is unreachable like any ssh failure (our
    /// scripts never exit 1). Anything else is classified as usual.
    fn judge_connect(
        &self,
        cmd: &Cmd,
        vm: &VmRef,
        result: std::result::Result<Output, RunError>,
    ) -> Result<Output> {
        if let Ok(out) = &result
            && out.code == 1
            && is_cut_connection(&out.stderr_text())
        {
            return Err(Error::VmUnreachable {
                vm: vm.name.clone(),
                detail: format!(
                    "the connection dropped (azlin exited 1 without an error of its own: its ssh was cut){}",
                    match trim_stderr(&out.stderr_text()).as_str() {
                        "(no error message)" => String::new(),
                        text => format!(": {text}"),
                    }
                ),
            });
        }
        let timed_out = matches!(result, Err(RunError::Timeout));
        match self.judge(cmd, Some(&vm.name), result) {
            // azlin's "not found" from a `connect` is confirmed like an answer that is not
            // ours: by `azlin show` in the VM's own group, once.
            Err(Error::VmNotFound { .. }) => Err(self.confirm_gone(vm, "azlin could not find it")),
            // A call that hangs may be azlin searching every VM of the group for a tmux
            // session named like a VM it cannot find (its ssh has no timeout, so one VM that
            // drops packets holds the search): one `azlin show` tells a gone VM from a silent
            // one.
            Err(Error::VmUnreachable { detail, .. }) if timed_out => {
                Err(self.confirm_gone(vm, &detail))
            }
            other => other,
        }
    }

    /// Power state of every VM azlin lists in a resource group (one call, no ssh into the VMs).
    pub fn power_states(
        &self,
        rg: Option<&str>,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        Ok(self
            .list_vms(rg, timeout)?
            .into_iter()
            .map(|v| (v.name, v.power_state))
            .collect())
    }

    /// Every VM azlin lists in a resource group, stopped ones included (one call, no ssh into
    /// the VMs).
    pub fn list_vms(&self, rg: Option<&str>, timeout: Duration) -> Result<Vec<ListedVm>> {
        let args = self.args(&["list"], rg, &["--all", "--no-tmux", "-o", "json"]);
        let cmd = self.cmd(args, timeout);
        let out = self.call(cmd.clone(), None)?;
        parse_vm_listing(&out.stdout).map_err(|e| Error::CommandFailed {
            command: cmd.display(),
            status: Some(0),
            stderr: format!("unexpected output: {e}"),
        })
    }

    fn connect_args(&self, vm: &VmRef) -> Vec<String> {
        self.args(
            &["connect", &vm.name],
            vm.resource_group.as_deref(),
            &[
                "--no-tmux",
                "--no-reconnect",
                "--yes",
                "--no-status",
                "--",
                REMOTE_COMMAND,
            ],
        )
    }
}

impl Azlin {
    /// The control script's framed answer in `out`; an answer without our framing came from
    /// something else (azlin's tmux-name fallback reached another VM, or the VM is not ours).
    fn our_answer(&self, vm: &VmRef, mut out: Output) -> Result<Output> {
        match answer::framed_answer(&out.stdout) {
            Some(answer) => {
                out.stdout = answer.to_vec();
                Ok(out)
            }
            None => Err(self.not_our_answer(vm)),
        }
    }
}

impl Transport for Azlin {
    fn run_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        on_interrupt: OnInterrupt,
    ) -> Result<Output> {
        self.known_gone(vm)?;
        let cmd = self
            .cmd(self.connect_args(vm), timeout)
            .stdin(input)
            .on_interrupt(on_interrupt);
        let out = self.judge_connect(&cmd, vm, exec::run(&cmd))?;
        self.our_answer(vm, out)
    }

    fn converse_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        awaited: &[u8],
        reply: exec::Reply,
    ) -> Result<Output> {
        self.known_gone(vm)?;
        let cmd = self
            .cmd(self.connect_args(vm), timeout)
            .stdin(input)
            .on_interrupt(OnInterrupt::Abort);
        let result = exec::run_conversation(&cmd, awaited, &mut |raw| {
            answer::framed_answer(raw).and_then(&mut *reply)
        });
        let out = self.judge_connect(&cmd, vm, result)?;
        self.our_answer(vm, out)
    }

    fn stream_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        silence: Duration,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Output> {
        self.known_gone(vm)?;
        let cmd = self
            .cmd(self.connect_args(vm), silence)
            .stdin(input)
            .on_interrupt(OnInterrupt::Abort);
        let mut framing = Framing::default();
        let result = exec::run_streaming(&cmd, silence, stop, &mut |bytes| {
            framing.pass(bytes, on_stdout)
        });
        match result {
            Ok(Err(e)) => Err(e),
            Ok(Ok(out)) => {
                let out = self.judge_connect(&cmd, vm, Ok(out))?;
                if framing.opened {
                    Ok(out)
                } else {
                    Err(self.not_our_answer(vm))
                }
            }
            Err(RunError::Timeout) => Err(silent_stream(&vm.name, silence)),
            Err(other) => self.judge_connect(&cmd, vm, Err(other)),
        }
    }

    /// azlin's own tmux attach: the only way to get a terminal on the VM (with `--no-tmux`
    /// and a remote command azlin never allocates one). azlin runs `tmux new-session -A -s S`,
    /// which would create an empty shell session if S were gone: check it lives first.
    fn attach_command(&self, vm: &VmRef, session: &str) -> Interactive {
        Interactive {
            program: OsString::from(&self.program),
            args: self.args(
                &["connect", &vm.name],
                vm.resource_group.as_deref(),
                &["--tmux-session", session, "--no-reconnect", "--no-status"],
            ),
            env: vec![("AZLIN_NO_UPDATE_CHECK".into(), "1".into())],
        }
    }
}

/// Passes a stream's bytes on once its answer mark has come (`answer::framed_answer`), without
/// the mark.
#[derive(Default)]
struct Framing {
    opened: bool,
    head: Vec<u8>,
}

impl Framing {
    fn pass(&mut self, bytes: &[u8], on_stdout: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.opened {
            return on_stdout(bytes);
        }
        self.head.extend_from_slice(bytes);
        match answer::framed_answer(&self.head) {
            Some(rest) => {
                self.opened = true;
                let rest = rest.to_vec();
                self.head = Vec::new();
                if rest.is_empty() {
                    Ok(())
                } else {
                    on_stdout(&rest)
                }
            }
            None => Ok(()),
        }
    }
}

/// The control script's framed answer from a local run of it (an error when it exited
/// non-zero or never ran).
fn local_answer(cmd: &Cmd, out: Output) -> Result<Output> {
    let mut out = succeeded(cmd, out)?;
    out.stdout = answer::framed_answer(&out.stdout)
        .ok_or_else(|| {
            Error::unexpected_answer(
                crate::core::pool::LOCAL_VM_NAME,
                "the control script did not run",
            )
        })?
        .to_vec();
    Ok(out)
}

impl Transport for LocalShell {
    fn run_script(
        &self,
        _vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        on_interrupt: OnInterrupt,
    ) -> Result<Output> {
        let cmd = Cmd::new("bash", vec!["-s".into()], timeout)
            .stdin(input)
            .on_interrupt(on_interrupt);
        local_answer(&cmd, exec::run_any_exit(&cmd)?)
    }

    fn converse_script(
        &self,
        _vm: &VmRef,
        input: Vec<u8>,
        timeout: Duration,
        awaited: &[u8],
        reply: exec::Reply,
    ) -> Result<Output> {
        let cmd = Cmd::new("bash", vec!["-s".into()], timeout)
            .stdin(input)
            .on_interrupt(OnInterrupt::Abort);
        let result = exec::run_conversation(&cmd, awaited, &mut |raw| {
            answer::framed_answer(raw).and_then(&mut *reply)
        });
        local_answer(&cmd, result.map_err(|e| exec::run_error(&cmd, e))?)
    }

    fn stream_script(
        &self,
        vm: &VmRef,
        input: Vec<u8>,
        silence: Duration,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Output> {
        let cmd = Cmd::new("bash", vec!["-s".into()], silence)
            .stdin(input)
            .on_interrupt(OnInterrupt::Abort);
        let mut framing = Framing::default();
        let out = match exec::run_streaming(&cmd, silence, stop, &mut |bytes| {
            framing.pass(bytes, on_stdout)
        }) {
            Ok(result) => result?,
            Err(RunError::Timeout) => return Err(silent_stream(&vm.name, silence)),
            Err(RunError::Interrupted) => return Err(Error::Interrupted),
            Err(RunError::Spawn(e)) => return Err(Error::io("cannot run bash", e)),
        };
        succeeded(&cmd, out)
    }

    fn attach_command(&self, _vm: &VmRef, session: &str) -> Interactive {
        Interactive {
            program: OsString::from("tmux"),
            args: vec!["attach".into(), "-t".into(), format!("={session}")],
            env: vec![],
        }
    }
}

/// A local script's answer, or its failure with the command line and trimmed stderr.
fn succeeded(cmd: &Cmd, out: Output) -> Result<Output> {
    if out.code == 0 {
        Ok(out)
    } else {
        Err(Error::CommandFailed {
            command: cmd.display(),
            status: Some(out.code),
            stderr: trim_stderr(&out.stderr_text()),
        })
    }
}

/// The last few meaningful lines of stderr, without escape sequences, at most 600 characters.
pub fn trim_stderr(stderr: &str) -> String {
    let mut clean = String::with_capacity(stderr.len());
    let mut chars = stderr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip a CSI or OSC sequence.
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                Some(']') => {
                    for c in chars.by_ref() {
                        if c == '\x07' {
                            break;
                        }
                    }
                }
                _ => {}
            }
        } else {
            clean.push(c);
        }
    }
    let lines: Vec<&str> = clean
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    let mut joined = tail.join(" | ");
    if joined.chars().count() > 600 {
        joined = joined.chars().take(600).collect::<String>() + "...";
    }
    if joined.is_empty() {
        "(no error message)".into()
    } else {
        joined
    }
}

/// Maps a failed azlin call to our error, by the contract's table of messages.
pub fn classify_failure(command: &str, vm: Option<&str>, code: i32, stderr: &str) -> Error {
    let lower = stderr.to_lowercase();
    let detail = trim_stderr(stderr);
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "quota exceeded",
        "quotaexceeded",
        "exceeding approved",
        "quota limit",
        "operation not allowed",
    ]) {
        return Error::QuotaExceeded { detail };
    }
    if let Some(vm) = vm {
        if has(&["no bastion host found"]) {
            // No public IP: the VM is deallocated (or was made private).
            return Error::VmUnreachable {
                vm: vm.into(),
                detail: format!(
                    "it has no public IP, so azlin looked for a Bastion host and found none: the VM is probably deallocated; start it with 'azlin start {vm}' ({detail})"
                ),
            };
        }
        if code == 255 {
            return Error::VmUnreachable {
                vm: vm.into(),
                detail,
            };
        }
        if has(&["resourcenotfound", "was not found"]) {
            return Error::VmNotFound {
                vm: vm.into(),
                detail,
            };
        }
    }
    if has(&["please run 'az login'", "azure authentication failed"]) {
        return Error::AzureAuth(detail);
    }
    if has(&["no resource group configured"]) {
        return Error::NoResourceGroup;
    }
    Error::CommandFailed {
        command: command.into(),
        status: Some(code),
        stderr: detail,
    }
}

/// Whether a `connect`'s stderr says no more than that its connection went: empty, or only
/// ssh's own lines about the connection.
fn is_cut_connection(stderr: &str) -> bool {
    const SSH_SAYS: [&str; 7] = [
        "closed by remote host",
        "connection to ",
        "client_loop",
        "broken pipe",
        "connection reset",
        "packet_write_wait",
        "timeout, server",
    ];
    trim_stderr(stderr) == "(no error message)"
        || stderr
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .all(|l| SSH_SAYS.iter().any(|s| l.contains(s)))
}

/// The resource group a "not found" answer names (`... under resource group 'RG' ...`).
fn group_named_in(text: &str) -> Option<&str> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("resource group '")? + "resource group '".len();
    let rest = &text[at..];
    rest.split('\'').next().filter(|g| !g.is_empty())
}

/// Whether a "not found" answer is about VM `vm` itself: it names the VM's own resource
/// (`Microsoft.Compute/virtualMachines/VM`) when it names a resource path at all, else the VM
/// quoted (`VM 'VM' was not found`). Azure names are case-insensitive.
fn not_found_names_vm(text: &str, vm: &str) -> bool {
    let lower = text.to_lowercase();
    let vm = vm.to_lowercase();
    // The name ends where a quote, a space, a bracket, a comma or a sentence's full stop
    // follows (VM names may hold '.' and '-', so `x.y` and `x-ip` are other names).
    let ends_name = |rest: &str| {
        let mut chars = rest.chars();
        match chars.next() {
            None | Some('\'' | '"' | ')' | ',') => true,
            Some(c) if c.is_whitespace() => true,
            Some('.') => chars.next().is_none_or(char::is_whitespace),
            Some(_) => false,
        }
    };
    let named = |prefix: &str| {
        let needle = format!("{prefix}{vm}");
        lower
            .match_indices(&needle)
            .any(|(at, _)| ends_name(&lower[at + needle.len()..]))
    };
    if lower.contains("microsoft.") {
        named("microsoft.compute/virtualmachines/")
    } else {
        named("'") || named("\"")
    }
}

pub use crate::core::reconcile::ListedVm;

/// `azlin list -o json`: `{"vms": [{"name", "power_state", "resource_group", "location",
/// "vm_size", ...}], "filters": {...}}`.
pub fn parse_vm_listing(stdout: &[u8]) -> std::result::Result<Vec<ListedVm>, String> {
    #[derive(serde::Deserialize)]
    struct Listing {
        vms: Vec<Vm>,
    }
    #[derive(serde::Deserialize)]
    struct Vm {
        name: String,
        #[serde(default)]
        power_state: Option<String>,
        #[serde(default)]
        resource_group: Option<String>,
        #[serde(default)]
        location: Option<String>,
        #[serde(default)]
        vm_size: Option<String>,
    }
    let listing: Listing = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    Ok(listing
        .vms
        .into_iter()
        .map(|v| ListedVm {
            name: v.name,
            power_state: v.power_state.unwrap_or_else(|| "Unknown".into()),
            resource_group: v.resource_group,
            location: v.location,
            vm_size: v.vm_size,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        let quota = "Error: Failed to create VM 'x': \u{274c} Quota exceeded: not enough vCPU cores available.\nRegion: eastus\n";
        assert_eq!(classify_failure("azlin new", None, 1, quota).exit_code(), 5);
        assert_eq!(
            classify_failure(
                "c",
                Some("vm"),
                255,
                "ssh: connect to host 1.2.3.4 port 22: Connection refused"
            )
            .exit_code(),
            4
        );
        assert_eq!(
            classify_failure(
                "c",
                Some("vm"),
                1,
                "Error: No bastion host found for region eastus"
            )
            .exit_code(),
            4
        );
        assert!(matches!(
            classify_failure("c", Some("vm"), 1, "Error: (ResourceNotFound) x"),
            Error::VmNotFound { .. }
        ));
        assert!(matches!(
            classify_failure("c", None, 1, "Error: Please run 'az login'"),
            Error::AzureAuth(_)
        ));
        assert!(matches!(
            classify_failure("c", None, 1, "Error: No resource group configured."),
            Error::NoResourceGroup
        ));
        let other = classify_failure("azlin list", None, 1, "\x1b[31mError: boom\x1b[0m\n");
        assert_eq!(
            other.to_string(),
            "`azlin list` failed (exit 1): Error: boom"
        );
    }

    #[test]
    fn stderr_is_trimmed() {
        assert_eq!(trim_stderr("\n\n"), "(no error message)");
        assert_eq!(trim_stderr("a\nb\nc\nd\ne\n"), "b | c | d | e");
        assert_eq!(trim_stderr("\x1b]0;title\x07Error: x"), "Error: x");
    }

    #[test]
    fn vm_list_envelope() {
        let m = parse_vm_listing(
            br#"{"vms":[{"name":"a","resource_group":"rg1","power_state":"Running","location":"eastus","vm_size":"Standard_E16s_v5","session":null,"x":1},{"name":"b"}],"filters":{}}"#,
        )
        .unwrap();
        assert_eq!(
            m[0],
            ListedVm {
                name: "a".into(),
                power_state: "Running".into(),
                resource_group: Some("rg1".into()),
                location: Some("eastus".into()),
                vm_size: Some("Standard_E16s_v5".into()),
            }
        );
        assert_eq!(m[1].power_state, "Unknown");
        assert_eq!(m[1].location, None);
        assert!(parse_vm_listing(b"garbage").is_err());
    }

    fn vm(rg: Option<&str>) -> VmRef {
        VmRef {
            name: "vm1".into(),
            backend: Backend::Azure,
            resource_group: rg.map(String::from),
        }
    }

    #[test]
    fn attach_uses_azlins_own_tmux_attach() {
        let az = test_azlin(Some("rg-default"));
        let attach = az.attach_command(&vm(Some("rg-vm")), "sess-1");
        assert_eq!(attach.program, "azlin");
        assert_eq!(
            attach.args,
            [
                "connect",
                "vm1",
                "--resource-group",
                "rg-vm",
                "--tmux-session",
                "sess-1",
                "--no-reconnect",
                "--no-status"
            ]
        );
        assert!(
            attach
                .env
                .contains(&("AZLIN_NO_UPDATE_CHECK".into(), "1".into()))
        );
        let local = LocalShell.attach_command(&vm(None), "sess-1");
        assert_eq!(
            (local.program.to_str().unwrap(), local.args),
            (
                "tmux",
                vec!["attach".to_string(), "-t".into(), "=sess-1".into()]
            )
        );
    }

    #[test]
    fn connect_argv_follows_the_contract() {
        let az = test_azlin(Some("rg1"));
        assert_eq!(
            az.connect_args(&vm(Some("rg1"))),
            [
                "connect",
                "vm1",
                "--resource-group",
                "rg1",
                "--no-tmux",
                "--no-reconnect",
                "--yes",
                "--no-status",
                "--",
                "bash -s"
            ]
        );
        // A VM created in another resource group is always addressed in its own.
        assert_eq!(az.connect_args(&vm(Some("rg2")))[3], "rg2");
        // One recorded without a group was created in azlin's default: never the group
        // configured since.
        assert!(
            !az.connect_args(&vm(None))
                .contains(&"--resource-group".to_string())
        );
    }

    fn test_azlin(rg: Option<&str>) -> Azlin {
        Azlin {
            program: "azlin".into(),
            resource_group: rg.map(String::from),
            azlin_default_group: Some("azlin-default".into()),
            show_timeout: Duration::from_secs(1),
            gone: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn new_vms_go_to_the_configured_group_else_azlins_default() {
        assert_eq!(
            test_azlin(Some("mine")).default_resource_group(),
            Some("mine")
        );
        assert_eq!(
            test_azlin(None).default_resource_group(),
            Some("azlin-default")
        );
    }

    #[test]
    fn azlins_default_group_is_read_from_its_config() {
        let read = default_group_in_config;
        assert_eq!(
            read("default_resource_group = \"rg-x\"\n").as_deref(),
            Some("rg-x")
        );
        assert_eq!(
            read("# c\nregion = \"eastus\"\ndefault_resource_group='rg-y' # note\n").as_deref(),
            Some("rg-y")
        );
        assert_eq!(
            read("default_resource_group = rg-z # bare\n").as_deref(),
            Some("rg-z")
        );
        assert_eq!(read("default_resource_group = \"\"\n"), None);
        assert_eq!(read("[vm]\ndefault_resource_group = \"nested\"\n"), None);
        assert_eq!(read("other_resource_group = \"x\"\n"), None);
    }

    #[test]
    fn a_not_found_answer_names_the_group_it_is_about() {
        assert_eq!(
            group_named_in(
                "(ResourceNotFound) The Resource 'x' under resource group 'RG-a' was not found."
            ),
            Some("RG-a")
        );
        assert_eq!(group_named_in("VM 'x' was not found."), None);
    }

    #[test]
    fn only_a_not_found_about_the_vm_itself_says_it_is_gone() {
        let vm = "amp-1.a";
        for about_it in [
            "(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachines/amp-1.a' under resource group 'rg' was not found.",
            "Error: VM 'AMP-1.A' was not found in resource group 'rg'.",
            "VM \"amp-1.a\" was not found",
        ] {
            assert!(not_found_names_vm(about_it, vm), "{about_it}");
        }
        for about_another in [
            // The VM was found; a resource azlin looked up next was not.
            "(ResourceNotFound) The Resource 'Microsoft.Network/publicIPAddresses/amp-1.a' under resource group 'rg' was not found.",
            "(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachines/amp-1.a-ip' under resource group 'rg' was not found.",
            "(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachines/amp-1.a/extensions/x' was not found.",
            "(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachines/amp-1.ab' was not found.",
            "Error: VM 'amp-1' was not found.",
            "Error: the resource was not found.",
        ] {
            assert!(!not_found_names_vm(about_another, vm), "{about_another}");
        }
    }

    #[test]
    fn only_a_silent_exit_1_is_a_cut_connection() {
        assert!(is_cut_connection(""));
        assert!(is_cut_connection("\n"));
        assert!(is_cut_connection(
            "Connection to 10.0.0.4 closed by remote host.\n"
        ));
        assert!(!is_cut_connection("Error: Failed to connect\n"));
        assert!(!is_cut_connection("Traceback (most recent call last): x\n"));
        assert!(!is_cut_connection(
            "Connection to 10.0.0.4 closed.\nError: boom\n"
        ));
    }

    #[test]
    fn a_deallocated_vm_is_unreachable_and_said_so() {
        let e = classify_failure(
            "azlin connect",
            Some("vm1"),
            1,
            "Error: No bastion host found for region westus2.",
        );
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("deallocated"), "{e}");
        assert!(e.to_string().contains("azlin start vm1"), "{e}");
    }
}
