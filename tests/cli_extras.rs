//! Living beside the Python amplihack (commands we do not have are handed to it), the local
//! backend's default agent, completions, the man page, cost in `status`, progress.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;

/// Our binary as cargo built it.
fn this_binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("amplihack")
}

/// A stand-in for the Python amplihack in `ROOT/<dir>/amplihack`: it records its argv
/// (NUL-separated), its stdin and the forwarding marker in `ROOT/<dir>/record/`, prints a
/// line on stdout and on stderr, and exits with `exit_code`.
fn fake_python_amplihack(env: &TestEnv, dir: &str, exit_code: i32) -> PathBuf {
    let bin = env.root().join(dir);
    let record = bin.join("record");
    std::fs::create_dir_all(&record).unwrap();
    let script = bin.join("amplihack");
    std::fs::write(
        &script,
        format!(
            "#!/usr/bin/env bash\n\
             rec='{rec}'\n\
             printf '%s\\0' \"$@\" > \"$rec/argv\"\n\
             cat > \"$rec/stdin\"\n\
             printf '%s' \"${{AMPLIHACK_REMOTE_FORWARDED_FROM-}}\" > \"$rec/marker\"\n\
             echo 'python amplihack: stdout'\n\
             echo 'python amplihack: stderr' >&2\n\
             exit {exit_code}\n",
            rec = record.display()
        ),
    )
    .unwrap();
    make_executable(&script);
    script
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `ROOT/<dir>/amplihack` as a symlink to our binary.
fn link_this_binary(env: &TestEnv, dir: &str) -> PathBuf {
    let d = env.root().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let link = d.join("amplihack");
    std::os::unix::fs::symlink(this_binary(), &link).unwrap();
    link
}

/// PATH of the given directories under ROOT, then the system's.
fn set_path(env: &mut TestEnv, dirs: &[&str]) {
    let mut parts: Vec<String> = dirs
        .iter()
        .map(|d| env.root().join(d).display().to_string())
        .collect();
    parts.push("/usr/local/bin:/usr/bin:/bin".into());
    env.set("PATH", &parts.join(":"));
}

fn recorded_argv(script: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(script.parent().unwrap().join("record/argv")).unwrap();
    let mut args: Vec<Vec<u8>> = bytes.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    assert_eq!(args.pop(), Some(vec![]), "argv ends with a NUL");
    args
}

fn recorded(script: &Path, what: &str) -> String {
    std::fs::read_to_string(script.parent().unwrap().join("record").join(what)).unwrap()
}

/// Runs our binary (`amplihack ARGS...`, not `remote`) with `stdin`.
fn run_top(env: &TestEnv, args: &[&OsStr], stdin: &str) -> std::process::Output {
    let mut c = env.cmd();
    c.args(args).write_stdin(stdin);
    c.output().unwrap()
}

const ODD_ARGS: [&str; 5] = [
    "--prompt",
    "two words",
    "it's \"quoted\" $HOME `x`",
    "",
    "-p",
];

fn odd_argv() -> Vec<&'static OsStr> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("claude")];
    args.extend(ODD_ARGS.iter().map(OsStr::new));
    args.push(OsStr::from_bytes(b"not utf-8: \xff\xfe"));
    args
}

fn assert_forwarded_intact(script: &Path, out: &std::process::Output) {
    let expected: Vec<Vec<u8>> = odd_argv().iter().map(|a| a.as_bytes().to_vec()).collect();
    assert_eq!(recorded_argv(script), expected);
    assert_eq!(recorded(script, "stdin"), "line one\nline two\n");
    assert_eq!(code(out), 7, "its exit code is ours: {}", stderr(out));
    assert_eq!(stdout(out), "python amplihack: stdout\n");
    assert_eq!(stderr(out), "python amplihack: stderr\n");
}

#[test]
fn other_commands_go_to_a_python_amplihack_later_on_path() {
    let mut env = TestEnv::new();
    link_this_binary(&env, "ours");
    let python = fake_python_amplihack(&env, "python", 7);
    set_path(&mut env, &["ours", "python"]);
    let out = run_top(&env, &odd_argv(), "line one\nline two\n");
    assert_forwarded_intact(&python, &out);
    // The marker names the binary that forwarded (the one cargo built, by its real path)
    // and the program it handed the command to, so a wrapper that leads back is not taken
    // again.
    let marker = recorded(&python, "marker");
    assert_eq!(
        std::env::split_paths(&marker).collect::<Vec<_>>(),
        vec![
            std::fs::canonicalize(this_binary()).unwrap(),
            std::fs::canonicalize(&python).unwrap()
        ]
    );
}

#[test]
fn other_commands_go_to_a_python_amplihack_earlier_on_path() {
    let mut env = TestEnv::new();
    let python = fake_python_amplihack(&env, "python", 7);
    link_this_binary(&env, "ours");
    set_path(&mut env, &["python", "ours"]);
    let out = run_top(&env, &odd_argv(), "line one\nline two\n");
    assert_forwarded_intact(&python, &out);
}

#[test]
fn its_exit_code_and_success_are_passed_through() {
    let mut env = TestEnv::new();
    let python = fake_python_amplihack(&env, "python", 0);
    set_path(&mut env, &["python"]);
    let out = run_top(&env, &[OsStr::new("launch"), OsStr::new("--help")], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // `--help` after the command belongs to it, not to us.
    assert_eq!(
        recorded_argv(&python),
        vec![b"launch".to_vec(), b"--help".to_vec()]
    );
}

#[test]
fn without_another_amplihack_the_command_is_refused_with_the_way_out() {
    let mut env = TestEnv::new();
    link_this_binary(&env, "ours");
    set_path(&mut env, &["ours"]);
    let out = run_top(&env, &[OsStr::new("claude"), OsStr::new("x")], "");
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("'claude'"), "{err}");
    assert!(err.contains("amplihack remote"), "{err}");
    assert!(err.contains("pip install amplihack"), "{err}");
    assert!(err.contains("uvx amplihack"), "{err}");
    assert!(err.contains("PATH"), "{err}");
}

#[test]
fn two_copies_of_this_binary_never_hand_a_command_back_and_forth() {
    let mut env = TestEnv::new();
    // A copy is another file (no symlink, no hard link): only the marker tells it is us.
    let copy_dir = env.root().join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    std::fs::copy(this_binary(), copy_dir.join("amplihack")).unwrap();
    link_this_binary(&env, "ours");
    set_path(&mut env, &["copy", "ours"]);
    let mut c = env.cmd();
    c.arg("claude").timeout(std::time::Duration::from_secs(20));
    let out = c.output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("no other amplihack is on PATH"));
    // With the Python amplihack after both, the command reaches it through the copy.
    let python = fake_python_amplihack(&env, "python", 7);
    set_path(&mut env, &["copy", "ours", "python"]);
    let out = run_top(&env, &odd_argv(), "line one\nline two\n");
    assert_forwarded_intact(&python, &out);
    assert_eq!(
        recorded(&python, "marker").split(':').count(),
        3,
        "both binaries are named, and the Python amplihack it was handed to"
    );
}

#[test]
fn help_says_this_binary_provides_remote_and_how_to_get_the_rest() {
    let env = TestEnv::new();
    let out = run_top(&env, &[OsStr::new("--help")], "");
    assert_eq!(code(&out), 0);
    // Help is wrapped to the terminal's width: compare words.
    let help = stdout(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("This amplihack provides `amplihack remote`"),
        "{help}"
    );
    assert!(help.contains("Python amplihack") && help.contains("pip install amplihack"));
    // Our own commands still run here, whatever is on PATH.
    let out = env.run(&["list", "--no-refresh"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A local-backend test env with the default agent (no AMPLIHACK_REMOTE_AGENT).
fn local_default_agent_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    env.set("AMPLIHACK_LOCAL_SLOTS", "2");
    env.unset("AMPLIHACK_REMOTE_AGENT");
    env
}

#[test]
fn the_local_default_agent_is_the_python_amplihack_on_path_by_absolute_path() {
    let mut env = local_default_agent_env();
    link_this_binary(&env, "ours");
    // The stand-in agent plays the Python amplihack; ours comes first on PATH and is skipped.
    let python_dir = env.root().join("python");
    std::fs::create_dir_all(&python_dir).unwrap();
    let python = python_dir.join("amplihack");
    std::os::unix::fs::symlink(support("vm-bin/amplihack"), &python).unwrap();
    set_path(&mut env, &["ours", "python"]);
    let started = env.start_running("LINES=1");
    let argv = std::fs::read(env.agent_record("local", &started.id).join("argv")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
    assert_eq!(argv[0], python.as_os_str().as_bytes(), "by absolute path");
    assert_eq!(argv[1], b"claude");
    assert_eq!(argv[2..6], [&b"--auto"[..], b"--max-turns", b"10", b"--"]);
}

#[test]
fn a_local_start_without_the_python_amplihack_is_refused_before_anything_is_reserved() {
    for (backend_flag, env) in [
        (Some("--local"), {
            let mut env = TestEnv::new();
            env.unset("AMPLIHACK_REMOTE_AGENT");
            env
        }),
        (None, local_default_agent_env()),
    ] {
        let mut env = env;
        link_this_binary(&env, "ours");
        set_path(&mut env, &["ours", "bin"]);
        let mut args = vec!["start", "--no-context"];
        args.extend(backend_flag);
        args.push("a task");
        let out = env.run(&args);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("Python amplihack"), "{err}");
        assert!(err.contains("AMPLIHACK_REMOTE_AGENT"), "{err}");
        assert!(
            !env.state_path().exists(),
            "nothing was reserved: {:?}",
            std::fs::read_to_string(env.state_path())
        );
    }
}

#[test]
fn azure_sessions_keep_amplihack_claude_resolved_on_the_vm() {
    let env = TestEnv::new();
    // No amplihack on this machine's PATH at all: Azure starts do not need one here.
    let started = env.start_running("LINES=1");
    let argv = std::fs::read(env.agent_record(&started.vm, &started.id).join("argv")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
    let vm_bin = env.vm_dir(&started.vm);
    assert!(
        Path::new(OsStr::from_bytes(argv[0])).starts_with(&vm_bin),
        "the VM's own amplihack: {:?}",
        String::from_utf8_lossy(argv[0])
    );
    assert_eq!(argv[1], b"claude");
}

/// A shell the completion tests need; scripts/ensure-tools.sh --for-tests installs it.
fn require_shell(name: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        found,
        "{name} is not installed: run `bash scripts/ensure-tools.sh --for-tests`"
    );
}

/// `amplihack remote completions SHELL`, written to ROOT/completions.SHELL.
fn completions_file(env: &TestEnv, shell: &str) -> PathBuf {
    let out = env.run(&["completions", shell]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let file = env.root().join(format!("completions.{shell}"));
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

fn shell_output(shell: &str, args: &[&OsStr]) -> std::process::Output {
    std::process::Command::new(shell)
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn completion_scripts_parse_in_their_shells() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        require_shell(shell);
        let file = completions_file(&env, shell);
        let out = shell_output(shell, &[OsStr::new("-n"), file.as_os_str()]);
        assert!(
            out.status.success(),
            "{shell} -n rejects the script: {}",
            stderr(&out)
        );
    }
    let zsh = std::fs::read_to_string(env.root().join("completions.zsh")).unwrap();
    assert!(zsh.starts_with("#compdef amplihack"), "{zsh}");
    for shell in ["elvish", "powershell"] {
        let text = std::fs::read_to_string(completions_file(&env, shell)).unwrap();
        assert!(
            text.contains("amplihack")
                && text.contains("completions")
                && text.contains("--max-turns"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn bash_completion_offers_commands_and_values() {
    require_shell("bash");
    let env = TestEnv::new();
    let file = completions_file(&env, "bash");
    // What bash does on Tab: the function of `complete -F`, with the words on the line.
    let probe = format!(
        "source '{}'\n\
         complete -p amplihack >/dev/null || exit 9\n\
         ask() {{ COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); \
         _amplihack amplihack \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\" | sort | paste -sd ' '; }}\n\
         ask amplihack remote st\n\
         ask amplihack remote start --size ''\n\
         ask amplihack remote completions ''\n",
        file.display()
    );
    let out = shell_output("bash", &[OsStr::new("-c"), OsStr::new(&probe)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "start status\nl m s xl\n--help -h bash elvish fish powershell zsh\n"
    );
}

#[test]
fn fish_completion_offers_commands() {
    require_shell("fish");
    let env = TestEnv::new();
    let file = completions_file(&env, "fish");
    let probe = format!(
        "source '{}'; complete -C 'amplihack remote st'",
        file.display()
    );
    let out = shell_output("fish", &[OsStr::new("-c"), OsStr::new(&probe)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout_words(&out),
        vec!["start", "status"],
        "{}",
        stdout(&out)
    );
}

/// The first tab-separated field of each line, sorted (fish prints `word<TAB>description`).
fn stdout_words(out: &std::process::Output) -> Vec<String> {
    let mut words: Vec<String> = stdout(out)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    words.sort();
    words
}

#[test]
fn completions_need_no_settings_and_reject_unknown_shells() {
    let mut env = TestEnv::new();
    // A malformed setting fails every command that reads settings; completions read none.
    env.set("AMPLIHACK_REMOTE_BACKEND", "bogus");
    let out = env.run(&["completions", "bash"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("complete -F _amplihack"));
    let out = env.run(&["completions", "tcsh"]);
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).is_empty());
}

#[test]
fn man_prints_a_roff_page_of_every_command() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_BACKEND", "bogus");
    let out = env.run(&["man"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.starts_with(".TH") || page.starts_with(".ie"),
        "not roff: {}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains("\n.TH AMPLIHACK-REMOTE 1 "), "{page}");
    for command in [
        "list",
        "start",
        "output",
        "kill",
        "status",
        "prime",
        "prune",
        "pull",
        "attach",
        "completions",
        "man",
    ] {
        assert!(
            page.contains(&format!(".SS \"amplihack remote {command}\"")),
            "the page lacks {command}"
        );
    }
    // Options are roff-escaped, exit codes come from the one table.
    assert!(page.contains("\\-\\-max\\-turns") && page.contains("Azure quota exceeded"));
}

/// A state with one Azure VM of `sku` created `hours_ago`, as the Python original or an
/// older pool left it.
fn state_with_vm(env: &TestEnv, name: &str, sku: &str, hours_ago: i64) {
    let created = chrono::Utc::now() - chrono::Duration::hours(hours_ago);
    env.write_state(
        &serde_json::json!({
            "sessions": {},
            "vm_pool": {name: {
                "size": sku, "capacity": 4, "active_sessions": [], "region": "eastus",
                "created_at": created.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            }}
        })
        .to_string(),
    );
}

fn status_json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_shows_what_running_vms_cost_and_deallocated_ones_do_not() {
    let env = TestEnv::new();
    let vms = env.prime(2, "s");
    assert!(env.azlin(&["stop", &vms[0]]).status.success());
    let out = env.run(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let block = |vm: &str| -> String {
        let from = text.find(&format!("  {vm} ")).unwrap();
        text[from..].lines().take(5).collect::<Vec<_>>().join("\n")
    };
    assert!(
        block(&vms[0]).contains("    Cost: $0.00/h now (Deallocated), at most $0.00 since created"),
        "{text}"
    );
    assert!(
        block(&vms[1]).contains("    Cost: $0.38/h now, at most $0.00 since created"),
        "{text}"
    );
    assert!(
        text.contains("\nCost: $0.38/h now (approx., pay-as-you-go list price)\n  Since created: at most $0.00 (an upper bound"),
        "{text}"
    );
    let v = status_json(&env, &[]);
    let vm = |name: &str| {
        v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(vm(&vms[0])["hourly_usd"], 0.0);
    assert_eq!(vm(&vms[1])["hourly_usd"], 0.384);
    assert!(vm(&vms[1])["cost_since_created_usd"].is_number());
    assert_eq!(v["total_hourly_usd"], 0.384);
    assert_eq!(v["cost_basis"], "approx., pay-as-you-go list price");
}

#[test]
fn status_cost_since_created_and_user_prices() {
    let mut env = TestEnv::new();
    state_with_vm(&env, "amplihack-old-vm", "Standard_E16s_v5", 10);
    // Without power states (--no-refresh) the VM counts as running.
    let v = status_json(&env, &["--no-refresh"]);
    assert_eq!(v["vms"][0]["hourly_usd"], 1.008);
    let since = v["vms"][0]["cost_since_created_usd"].as_f64().unwrap();
    assert!(
        (10.07..=10.10).contains(&since),
        "10 h at $1.008/h: {since}"
    );
    assert_eq!(v["total_hourly_usd"], 1.008);
    assert_eq!(v["power_states_known"], false);
    let text = stdout(&env.run(&["status", "--no-refresh"]));
    assert!(
        text.contains("Power states not read: every VM counted as running"),
        "{text}"
    );

    env.set(
        "AMPLIHACK_REMOTE_PRICES",
        "Standard_E16s_v5=1.10, Standard_D8s_v3=0.40",
    );
    let v = status_json(&env, &["--no-refresh"]);
    assert_eq!(v["vms"][0]["hourly_usd"], 1.1);
    assert_eq!(v["total_hourly_usd"], 1.1);
    let text = stdout(&env.run(&["status", "--no-refresh"]));
    assert!(
        text.contains("    Cost: $1.10/h now, at most $11."),
        "{text}"
    );
}

#[test]
fn status_of_an_unknown_sku_says_price_unknown() {
    let mut env = TestEnv::new();
    state_with_vm(&env, "amplihack-user-20251125-143000", "Standard_D4s_v3", 2);
    let out = env.run(&["status", "--no-refresh"]);
    let text = stdout(&out);
    assert!(
        text.contains("    Cost: price unknown (Standard_D4s_v3; set AMPLIHACK_REMOTE_PRICES)\n"),
        "{text}"
    );
    assert!(
        text.contains("Not counted: 1 VM(s) of unknown price"),
        "{text}"
    );
    let v = status_json(&env, &["--no-refresh"]);
    assert!(v["vms"][0]["hourly_usd"].is_null());
    assert!(v["vms"][0]["cost_since_created_usd"].is_null());
    assert_eq!(v["total_hourly_usd"], 0.0);
    // The user can price it.
    env.set("AMPLIHACK_REMOTE_PRICES", "Standard_D4s_v3=0.192");
    let v = status_json(&env, &["--no-refresh"]);
    assert_eq!(v["vms"][0]["hourly_usd"], 0.192);
}

#[test]
fn malformed_prices_are_refused_naming_the_variable() {
    let mut env = TestEnv::new();
    for bad in [
        "Standard_E16s_v5",
        "Standard_E16s_v5=cheap",
        "Standard_E16s_v5=-1",
    ] {
        env.set("AMPLIHACK_REMOTE_PRICES", bad);
        let out = env.run(&["status", "--no-refresh"]);
        assert_eq!(code(&out), 2, "{bad}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("AMPLIHACK_REMOTE_PRICES"), "{err}");
        assert!(err.contains("Standard_E16s_v5=1.10"), "the fix: {err}");
    }
}

#[test]
fn the_local_vm_costs_nothing() {
    let env = TestEnv::local();
    env.start_running("SLEEP=30");
    let text = stdout(&env.run(&["status"]));
    assert!(!text.contains("Cost"), "no cost for this machine: {text}");
    let v = status_json(&env, &[]);
    assert_eq!(v["vms"][0]["name"], "local");
    assert_eq!(v["vms"][0]["hourly_usd"], 0.0);
    assert_eq!(v["vms"][0]["cost_since_created_usd"], 0.0);
    assert_eq!(v["total_hourly_usd"], 0.0);
}

/// The progress lines of `vm` in `stderr`, without the VM name.
fn progress_lines(stderr: &str, vm: &str) -> Vec<String> {
    let prefix = format!("{vm}: ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(String::from)
        .collect()
}

/// `done: ... (after 3s)` without the time, which varies.
fn without_time(line: &str) -> String {
    match line.rfind(" (after ") {
        Some(i) if line.ends_with("s)") => line[..i].to_string(),
        _ => line.to_string(),
    }
}

#[test]
fn off_a_terminal_progress_is_one_plain_line_per_stage_on_stderr() {
    let env = TestEnv::new();
    env.git_repo();
    let out = env.run(&["start", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = started_ids(&out).remove(0);
    let vm = env.vm_of(&id);
    let err = stderr(&out);
    let lines = progress_lines(&err, &vm);
    let bundle_kb = lines
        .get(1)
        .and_then(|l| l.strip_prefix("sending context: git bundle ("))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(bundle_kb.parse::<u64>().unwrap() >= 1);
    let lines: Vec<String> = lines.iter().map(|l| without_time(l)).collect();
    assert_eq!(
        lines,
        [
            "provisioning: Standard_E16s_v5 in eastus".to_string(),
            format!("sending context: git bundle ({bundle_kb} KB), then launching 1 session(s)"),
            "done: 1 of 1 session(s) running".to_string(),
        ],
        "{err}"
    );
    assert!(
        progress_lines(&err, &vm)[2].ends_with("s)"),
        "the end says how long it took: {err}"
    );
    // Nothing of a live line off a terminal, and nothing of progress on stdout.
    assert!(
        !err.contains('\x1b') && !err.contains('✓') && !err.contains('\r'),
        "{err:?}"
    );
    assert!(!stdout(&out).contains(&format!("{vm}: ")));

    // A pool VM with room: launching without a bundle, no provisioning.
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<String> = progress_lines(&stderr(&out), &vm)
        .iter()
        .map(|l| without_time(l))
        .collect();
    assert_eq!(
        lines,
        ["launching: 1 session(s)", "done: 1 of 1 session(s) running"]
    );
}

#[test]
fn repeated_ssh_retries_are_one_waiting_line() {
    let mut env = TestEnv::new();
    env.set("AMPLIHACK_REMOTE_SSH_RETRY_DELAY", "0.1");
    std::fs::write(env.azlin_home().join("unreachable-next"), "2").unwrap();
    let out = env.run(&["start", "--no-context", "--json", "SLEEP=30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let vm = env.vm_of(&started_ids(&out).remove(0));
    let connects = env.calls().iter().filter(|c| c[0] == "connect").count();
    assert_eq!(connects, 3, "two refused, the third launched");
    let lines = progress_lines(&stderr(&out), &vm);
    let waiting: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("waiting for ssh: "))
        .collect();
    assert_eq!(waiting.len(), 1, "{lines:#?}");
    assert!(waiting[0].contains("does not answer ssh yet") && waiting[0].contains("(2/4)"));
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("done: 1 of 1 session(s) running")
    );
}

#[test]
fn prime_reports_each_vm_done_or_failed() {
    let mut env = TestEnv::new();
    let out = env.run(&["prime", "--count", "2", "--vm-size", "m", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for vm in v.as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let lines: Vec<String> = progress_lines(&stderr(&out), name)
            .iter()
            .map(|l| without_time(l))
            .collect();
        assert_eq!(
            lines,
            [
                "provisioning: Standard_E8s_v5 in eastus",
                "done: ready in eastus, 2 slot(s)"
            ]
        );
    }
    env.fault("quota/eastus");
    env.set("AMPLIHACK_AZURE_REGIONS", "");
    let out = env.run(&["prime", "--count", "1"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let err = stderr(&out);
    let failed = err
        .lines()
        .find(|l| l.contains(": failed: Azure quota exceeded"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(failed.starts_with("amplihack-tester-"), "{failed}");
}

#[test]
fn on_a_terminal_each_vm_has_a_live_line_on_stderr() {
    let env = TestEnv::new();
    let envs = env.env_words();
    let start = format!(
        "env -i TERM=xterm {} {} remote start --no-context --size m a b c >{}/report.txt",
        envs,
        this_binary().display(),
        env.root().display()
    );
    let terminal = Terminal::new(
        &env,
        "live",
        &format!("{start}; echo start-exit=$?; sleep 30"),
    );
    let screen = terminal.wait_for("start-exit=", false);
    assert!(screen.contains("start-exit=0"), "{screen}");
    let ids = env.session_ids();
    assert_eq!(ids.len(), 3);
    let mut vms: Vec<String> = ids.iter().map(|id| env.vm_of(id)).collect();
    vms.sort();
    vms.dedup();
    assert_eq!(vms.len(), 2, "3 sessions on m VMs of 2 slots");
    for vm in &vms {
        let line = screen
            .lines()
            .find(|l| l.contains(vm.as_str()))
            .unwrap_or_else(|| panic!("no line for {vm}:\n{screen}"));
        // `✓ NAME  ELAPSED  done: ...`: the live line, finished; no plain lines.
        assert!(line.starts_with(&format!("✓ {vm} ")), "{line}");
        assert!(line.contains("s  done: "), "{line}");
        assert!(line.contains("session(s) running"), "{line}");
        assert!(!screen.contains(&format!("{vm}: provisioning")), "{screen}");
    }
    assert_eq!(
        screen
            .lines()
            .filter(|l| l.contains("amplihack-tester-"))
            .count(),
        2,
        "one line per VM:\n{screen}"
    );
    // Stdout, redirected, has the report and none of the progress.
    let report = std::fs::read_to_string(env.root().join("report.txt")).unwrap();
    assert!(report.starts_with("Starting 3 session(s)..."), "{report}");
    assert!(!report.contains('✓') && !report.contains("provisioning"));
}
