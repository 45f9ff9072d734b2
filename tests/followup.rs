//! Follow-ups and hand-overs of ended sessions: `continue` (on the session's VM, and on
//! another after its VM is gone), the archive's conversation and uncommitted work, `pull` of a
//! follow-up, `pull --resume` and `pull --pr`; on the stand-in azlin and the local backend.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// `continue ID PROMPT --json`: the new session.
fn follow_up(env: &TestEnv, id: &str, prompt: &str) -> Started {
    let out = env.run(&["continue", id, prompt, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let child = started_ids(&out).remove(0);
    let vm = env.vm_of(&child);
    Started { id: child, vm }
}

fn archived(env: &TestEnv, id: &str) -> PathBuf {
    env.archive_dir().join(id)
}

fn conversation_files(env: &TestEnv, id: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(archived(env, id).join("conversation"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn result_of(env: &TestEnv, id: &str) -> Value {
    serde_json::from_str(&read(&archived(env, id).join("result.json"))).unwrap()
}

/// What the agent of a follow-up found when it continued (the stand-in records it).
fn continued(env: &TestEnv, s: &Started) -> String {
    read(&env.agent_record(&s.vm, &s.id).join("continued"))
}

fn check_archive_keeps_conversation_and_patch(env: &TestEnv, s: &Started) {
    let dir = archived(env, &s.id);
    let files = conversation_files(env, &s.id);
    assert_eq!(files.len(), 1, "{files:?}");
    let conversation = read(&files[0]);
    assert!(
        conversation.contains(&format!("\"session\":\"{}\"", s.id)),
        "{conversation}"
    );
    assert!(
        conversation.contains("ANTHROPIC_API_KEY=[REDACTED]"),
        "{conversation}"
    );
    let patch = read(&dir.join("uncommitted.patch"));
    assert!(
        patch.contains("+++ b/edit-1.txt") && patch.contains("+three"),
        "{patch}"
    );
    for f in env.files_of_ours_on_vms() {
        if let Ok(bytes) = std::fs::read(&f) {
            assert_no_secret(&bytes, &f.display().to_string());
        }
    }
}

#[test]
fn a_follow_up_on_this_machine_continues_the_conversation_in_the_same_workspace() {
    let env = TestEnv::local();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1 EDIT=1 LEAKKEY"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    check_archive_keeps_conversation_and_patch(&env, &parent);

    let child = follow_up(&env, &parent.id, "now COMMIT=1");
    assert_eq!(child.vm, "local");
    assert_ne!(child.id, parent.id);
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    let seen = continued(&env, &child);
    assert!(
        seen.contains(&format!("\"session\":\"{}\"", parent.id)),
        "the follow-up saw its parent's conversation: {seen}"
    );
    let rec = env.session(&child.id);
    assert_eq!(rec["parent_session_id"], parent.id.as_str());
    assert_eq!(rec["workspace"], env.session(&parent.id)["workspace"]);
    assert_eq!(rec["command"], "auto");
    assert_eq!(rec["max_turns"], 10);
    let argv = read(&env.agent_record("local", &child.id).join("argv"));
    let argv: Vec<&str> = argv.split('\0').collect();
    assert!(
        argv.windows(4)
            .any(|w| w == ["--", "--continue", "-p", "now COMMIT=1"]),
        "{argv:?}"
    );
    // Its commits count from its parent's head; the parent's archive keeps its own head.
    let parent_head = result_of(&env, &parent.id)["head_commit"].clone();
    assert_eq!(rec["base_commit"], parent_head);
    let r = result_of(&env, &child.id);
    assert_eq!(r["commits"], 1, "{r}");
    assert_eq!(r["base_commit"], parent_head, "{r}");

    let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == child.id.as_str())
        .unwrap();
    assert_eq!(row["parent_session_id"], parent.id.as_str());
    let verbose = stdout(&env.run(&["list", "--verbose"]));
    assert!(
        verbose.contains(&format!("  Continues:   {}\n", parent.id)),
        "{verbose}"
    );

    // pull of the follow-up: its parent's commits and its own, on its branch.
    let out = env.run(&["pull", &child.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "Fetched 2 commit(s) into branch amplihack/{}",
            child.id
        )),
        "{}",
        stdout(&out)
    );
    let log = git(
        &env.work(),
        &["log", "--format=%s", &format!("amplihack/{}", child.id)],
    );
    assert_eq!(log, "agent commit 1\nagent commit 1\ninit");
    // The parent's own pull stops at its head, though its workspace moved on.
    let out = env.run(&["pull", &parent.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        git(
            &env.work(),
            &["rev-parse", &format!("amplihack/{}", parent.id)]
        ),
        parent_head.as_str().unwrap()
    );

    // Chains: the follow-up is continued in turn; its parent no longer can be.
    let out = env.run(&["continue", &parent.id, "again"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(&format!("continue {} instead", child.id)),
        "{}",
        stderr(&out)
    );
    let grandchild = follow_up(&env, &child.id, "third");
    assert_eq!(env.wait_finished(&grandchild.id)["status"], "completed");
    let seen = continued(&env, &grandchild);
    assert!(
        seen.contains(&format!("\"session\":\"{}\"", parent.id))
            && seen.contains(&format!("\"session\":\"{}\"", child.id)),
        "the whole conversation so far: {seen}"
    );
    let out = env.run(&["pull", &grandchild.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Fetched 2 commit(s)"),
        "no commits of its own: its chain's: {}",
        stdout(&out)
    );
}

#[test]
fn continue_refuses_a_session_that_has_not_ended_and_an_unknown_one() {
    let env = TestEnv::local();
    let s = env.start_running("SLEEP=30");
    let out = env.run(&["continue", &s.id, "more"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "session {} is still running: wait for it or kill it first",
            s.id
        )),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["continue", "sess-20250101-000000-dead", "more"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(env.session_ids().len(), 1, "nothing was reserved");
    let out = env.run(&["kill", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Killed is ended: it can be continued (without a repository: an empty workspace), and
    // the new instruction reaches the agent byte for byte.
    let prompt = "it's \"$(id)\" `x` ${HOME}\nnext line ünï -- -p";
    let child = follow_up(&env, &s.id, prompt);
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&s.id));
    assert_eq!(
        read(&env.agent_record("local", &child.id).join("prompt")),
        prompt
    );
    assert_eq!(env.session(&child.id)["prompt"], prompt);

    // A session that never started has nothing to carry on.
    let never = start_one(&env, &["--no-context", "--max-turns", "3", "x"]);
    let mut st = env.state();
    let rec = st["sessions"][&never.id].as_object_mut().unwrap();
    rec.insert("status".into(), "failed".into());
    rec.insert("started_at".into(), Value::Null);
    env.write_state(&serde_json::to_string_pretty(&st).unwrap());
    let out = env.run(&["continue", &never.id, "more"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("never started"), "{}", stderr(&out));
}

#[test]
fn on_azure_a_follow_up_runs_on_the_sessions_vm_then_on_a_new_one_once_that_vm_is_gone() {
    let env = TestEnv::new();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1 EDIT=1 LEAKKEY"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    check_archive_keeps_conversation_and_patch(&env, &parent);

    env.clear_calls();
    let child = follow_up(&env, &parent.id, "COMMIT=1");
    assert_eq!(child.vm, parent.vm, "on the parent's VM");
    let calls = env.calls();
    assert_eq!(calls.len(), 1, "one launch call: {calls:?}");
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&format!("\"session\":\"{}\"", parent.id)));

    // The VM goes; the archive holds everything the next follow-up needs.
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&parent.vm).exists());

    env.clear_calls();
    let out = env.run(&["continue", &child.id, "EDIT=0 carry on", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let kinds: Vec<String> = env.calls().into_iter().map(|c| c[0].clone()).collect();
    assert_eq!(
        kinds,
        ["new", "connect"],
        "a new VM, then one launch: {kinds:?}"
    );
    let err = stderr(&out);
    let restored_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("restoring its workspace from the archive"))
        .collect();
    assert_eq!(restored_lines.len(), 1, "{}", stderr(&out));
    let grandchild = started_ids(&out).remove(0);
    let grandchild = Started {
        vm: env.vm_of(&grandchild),
        id: grandchild,
    };
    assert_ne!(grandchild.vm, parent.vm, "a new VM");
    assert_eq!(env.wait_finished(&grandchild.id)["status"], "completed");
    let seen = continued(&env, &grandchild);
    assert!(
        seen.contains(&format!("\"session\":\"{}\"", parent.id))
            && seen.contains(&format!("\"session\":\"{}\"", child.id)),
        "the follow-up on the new VM saw the conversation so far: {seen}"
    );
    // The same path, rebuilt: both sessions' commits and the parent's uncommitted file.
    let workspace = env
        .vm_dir(&grandchild.vm)
        .join("home/workspace")
        .join(&parent.id);
    assert_eq!(
        read(&env.agent_record(&grandchild.vm, &grandchild.id).join("cwd")).trim_end(),
        workspace.display().to_string()
    );
    assert_eq!(read(&workspace.join("edit-1.txt")), "one\ntwo\nthree\n");
    assert_eq!(
        git(&workspace, &["log", "--format=%s"]),
        "agent commit 1\nagent commit 1\ninit"
    );
    assert_eq!(
        git(&workspace, &["rev-parse", "--abbrev-ref", "HEAD"]),
        format!("amplihack/{}", parent.id)
    );
    let out = env.run(&["pull", &grandchild.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Fetched 2 commit(s)"),
        "{}",
        stdout(&out)
    );
}

/// The parent's VM deleted behind our back (the state still has it ready): the follow-up's
/// launch finds it gone, moves to another VM and rebuilds the workspace there from the
/// archive, in the same `continue`.
#[test]
fn a_follow_up_whose_vm_was_deleted_behind_our_back_is_restored_elsewhere_at_once() {
    let env = TestEnv::new();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1 EDIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let out = env.azlin(&["kill", &parent.vm, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = env.run(&["continue", &parent.id, "EDIT=0 carry on", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restoring its workspace from the archive"),
        "{}",
        stderr(&out)
    );
    let child = started_ids(&out).remove(0);
    let child = Started {
        vm: env.vm_of(&child),
        id: child,
    };
    assert_ne!(child.vm, parent.vm, "another VM");
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&format!("\"session\":\"{}\"", parent.id)));
    let workspace = env
        .vm_dir(&child.vm)
        .join("home/workspace")
        .join(&parent.id);
    assert_eq!(read(&workspace.join("edit-1.txt")), "one\ntwo\nthree\n");
}

/// A `continue` killed after it reserved its follow-up (SIGKILL, a closed terminal) leaves that
/// follow-up pending with a dead owner: the next `continue` settles it, then carries on.
#[test]
fn a_follow_up_left_pending_by_a_killed_continue_does_not_block_the_next() {
    let env = TestEnv::local();
    let parent = start_one(&env, &["--no-context", "LINES=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let mut state = env.state();
    let mut orphan = state["sessions"][&parent.id].clone();
    let orphan_id = "sess-20261202-000000-dead";
    orphan["session_id"] = orphan_id.into();
    orphan["tmux_session"] = orphan_id.into();
    orphan["status"] = "pending".into();
    orphan["parent_session_id"] = parent.id.clone().into();
    for field in ["started_at", "completed_at", "exit_code", "archived_at"] {
        orphan[field] = Value::Null;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    // A pid above any pid_max: the process that reserved it is gone.
    orphan["owner"] =
        serde_json::json!({"pid": 4_194_400u32, "host": host.trim(), "started": "b 1"});
    state["sessions"][orphan_id] = orphan;
    env.write_state(&state.to_string());

    let out = env.run(&["continue", &parent.id, "LINES=1 again", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.session(orphan_id)["status"], "failed");
}

#[test]
fn a_follow_up_waits_in_the_queue_of_a_full_vm() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_LOCAL_SLOTS", "1");
    let parent = start_one(&env, &["--no-context", "LINES=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let blocker = env.start_running("SLEEP=60");
    let out = env.run(&["continue", &parent.id, "queued one"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("queued"), "{}", stdout(&out));
    let child = env
        .session_ids()
        .into_iter()
        .find(|id| *id != parent.id && *id != blocker.id)
        .unwrap();
    assert_eq!(env.session(&child)["status"], "queued");
    // A second follow-up of the same session is refused while this one waits.
    let out = env.run(&["continue", &parent.id, "another"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(&format!("being continued by {child}")),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["kill", &blocker.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.wait_finished(&child)["status"], "completed");
    let s = Started {
        id: child,
        vm: "local".into(),
    };
    assert!(continued(&env, &s).contains(&parent.id));
}

/// Puts the fake `gh` first on PATH (through the test's bin directory) and gives `work/` a
/// bare repository as its remote `origin`. Returns the remote's path.
fn with_gh_and_remote(env: &mut TestEnv) -> PathBuf {
    std::os::unix::fs::symlink(support("fake-gh/gh"), env.root().join("bin/gh")).unwrap();
    let gh_home = env.root().join("gh");
    env.set("FAKE_GH_HOME", &gh_home.display().to_string());
    let remote = env.root().join("remote.git");
    git(env.root(), &["init", "-q", "--bare", "remote.git"]);
    git(
        &env.work(),
        &["remote", "add", "origin", &remote.display().to_string()],
    );
    remote
}

/// Every call of the fake gh so far, as argv vectors.
fn gh_calls(env: &TestEnv) -> Vec<Vec<String>> {
    let dir = env.root().join("gh/calls");
    let mut calls: Vec<(u32, Vec<String>)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let n = e.file_name().to_string_lossy().parse().unwrap();
                    let argv = read(&e.path())
                        .split_terminator('\0')
                        .map(String::from)
                        .collect();
                    (n, argv)
                })
                .collect()
        })
        .unwrap_or_default();
    calls.sort();
    calls.into_iter().map(|(_, a)| a).collect()
}

fn arg_after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

#[test]
fn pull_pr_pushes_the_branch_and_opens_one_pull_request_per_session() {
    let mut env = TestEnv::local();
    env.git_repo();
    let remote = with_gh_and_remote(&mut env);
    let long_title = format!("Add the parser {} COMMIT=2", "x".repeat(80));
    let s = start_one(&env, &[&format!("{long_title}\nwith `details`")]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");

    let out = env.run(&["pull", &s.id, "--pr", "--draft", "--base", "main"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let url = "https://github.example/owner/repo/pull/1";
    assert!(
        stdout(&out).contains(&format!("Opened pull request of {}: {url}\n", s.id)),
        "{}",
        stdout(&out)
    );
    let branch = format!("amplihack/{}", s.id);
    assert_eq!(
        git(&remote, &["rev-parse", &branch]),
        git(&env.work(), &["rev-parse", &branch]),
        "the branch is on the remote"
    );
    let calls = gh_calls(&env);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], ["auth", "status"]);
    let create = &calls[1];
    assert_eq!(&create[..2], ["pr", "create"]);
    assert_eq!(arg_after(create, "--head"), Some(branch.as_str()));
    let title = arg_after(create, "--title").unwrap();
    assert_eq!(title, long_title.chars().take(72).collect::<String>());
    assert!(create.contains(&"--draft".to_string()));
    assert_eq!(arg_after(create, "--base"), Some("main"));
    let body = arg_after(create, "--body").unwrap();
    for needle in [
        "with `details`",
        "| Status | completed (exit 0) |",
        "| Commits | 2 |",
        "| Changes | +2 -0 (2 files) |",
        "| Cost | $0 (this machine) |",
        "agent commit 1",
        "agent-2.txt",
        "| Duration | ",
    ] {
        assert!(body.contains(needle), "{needle} in {body}");
    }
    assert_eq!(env.session(&s.id)["pr_url"], url);
    let report: Value = serde_json::from_slice(&env.run(&["report", "--json"]).stdout).unwrap();
    assert_eq!(report[0]["pr_url"], url, "{report}");
    let list: Value = serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["pr_url"], url, "{list}");

    // Once is enough.
    let out = env.run(&["pull", &s.id, "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("opened before, nothing new opened): {url}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(gh_calls(&env).len(), 2, "nothing new opened");

    // No commits: nothing to propose, and no gh call.
    let empty = start_one(&env, &["LINES=1"]);
    assert_eq!(env.wait_finished(&empty.id)["status"], "completed");
    let out = env.run(&["pull", &empty.id, "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("it has no commits"),
        "{}",
        stdout(&out)
    );
    assert_eq!(gh_calls(&env).len(), 2);
    assert!(env.session(&empty.id).get("pr_url").is_none());

    // gh not logged in, then not installed: exit 1 saying what to run; the branch is home.
    let other = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&other.id)["status"], "completed");
    std::fs::write(env.root().join("gh/logged-out"), "").unwrap();
    let out = env.run(&["pull", &other.id, "--pr"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run 'gh auth login'"),
        "{}",
        stderr(&out)
    );
    let other_branch = format!("amplihack/{}", other.id);
    git(&env.work(), &["rev-parse", "--verify", &other_branch]);
    assert!(env.session(&other.id).get("pr_url").is_none());
    std::fs::remove_file(env.root().join("bin/gh")).unwrap();
    let out = env.run(&["pull", &other.id, "--pr"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("install it (https://cli.github.com)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pull_all_pr_on_azure_opens_a_pull_request_for_each_session_with_commits() {
    let mut env = TestEnv::new();
    env.git_repo();
    let remote = with_gh_and_remote(&mut env);
    let a = start_one(&env, &["first COMMIT=1"]);
    let b = start_one(&env, &["second COMMIT=1"]);
    let c = start_one(&env, &["third LINES=1"]);
    for s in [&a, &b, &c] {
        assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    }
    let out = env.run(&["pull", "--all", "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let creates: Vec<Vec<String>> = gh_calls(&env)
        .into_iter()
        .filter(|c| c[..2] == ["pr", "create"])
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    for s in [&a, &b] {
        assert!(env.session(&s.id)["pr_url"].is_string());
        git(
            &remote,
            &["rev-parse", "--verify", &format!("amplihack/{}", s.id)],
        );
        let body = creates
            .iter()
            .find(|c| arg_after(c, "--head") == Some(&format!("amplihack/{}", s.id)))
            .and_then(|c| arg_after(c, "--body"))
            .unwrap();
        assert!(body.contains("| Cost | about $"), "{body}");
    }
}

#[test]
fn pull_resume_hands_the_session_back_in_a_worktree_after_its_vm_is_gone() {
    let env = TestEnv::new();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1 EDIT=1"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.vm_dir(&s.vm).exists());

    env.clear_calls();
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        env.calls().is_empty(),
        "all from the archive: {:?}",
        env.calls()
    );
    let worktree = env.root().join(format!("work-{}", s.id));
    let worktree = worktree.canonicalize().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Worktree: {} (branch amplihack/{})\n",
            worktree.display(),
            s.id
        )),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "Run: cd {} && claude --continue\n",
            worktree.display()
        )),
        "{text}"
    );
    assert_eq!(
        git(&worktree, &["rev-parse", "--abbrev-ref", "HEAD"]),
        format!("amplihack/{}", s.id)
    );
    assert_eq!(read(&worktree.join("agent-1.txt")).lines().count(), 1);
    assert_eq!(read(&worktree.join("edit-1.txt")), "one\ntwo\nthree\n");
    assert_eq!(
        git(&worktree, &["status", "--porcelain"]),
        "?? edit-1.txt",
        "uncommitted stays uncommitted"
    );
    let slug: String = worktree
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let project = env.home().join(".claude/projects").join(slug);
    let files: Vec<PathBuf> = std::fs::read_dir(&project)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(read(&files[0]).contains(&format!("\"session\":\"{}\"", s.id)));

    // A second time: it is handed back already, and says where.
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(&format!("checked out in {} already", worktree.display())),
        "{}",
        stderr(&out)
    );
    git(
        &env.work(),
        &[
            "worktree",
            "remove",
            "--force",
            &worktree.display().to_string(),
        ],
    );
    std::fs::create_dir(env.root().join("taken")).unwrap();
    let out = env.run(&["pull", &s.id, "--resume", "--worktree", "../taken"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("pass --worktree DIR"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["pull", &s.id, "--resume", "--worktree", "../elsewhere"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.root().join("elsewhere/edit-1.txt").exists());
}

#[test]
fn pull_resume_of_a_follow_up_on_this_machine_carries_the_whole_chain() {
    let env = TestEnv::local();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let child = follow_up(&env, &parent.id, "EDIT=1");
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    let out = env.run(&["pull", &child.id, "--resume"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let worktree = env
        .root()
        .join(format!("work-{}", child.id))
        .canonicalize()
        .unwrap();
    assert_eq!(
        git(&worktree, &["log", "--format=%s"]),
        "agent commit 1\ninit"
    );
    assert!(worktree.join("edit-1.txt").exists());
    assert!(
        stdout(&out).contains("2 file(s)"),
        "both conversations: {}",
        stdout(&out)
    );
}

#[test]
fn continue_first_learns_that_a_session_the_state_takes_for_running_has_ended() {
    let env = TestEnv::new();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1"]);
    let exit_code = env.session_dir(&parent.vm, &parent.id).join("exit_code");
    env.wait_for(
        "the exit code on the VM",
        std::time::Duration::from_secs(60),
        || exit_code.exists(),
    );
    assert_eq!(env.session(&parent.id)["status"], "running");
    env.clear_calls();
    let child = follow_up(&env, &parent.id, "more");
    assert_eq!(
        env.calls().len(),
        2,
        "one call settles and archives the parent, one launches: {:?}",
        env.calls()
    );
    assert_eq!(env.session(&parent.id)["status"], "completed");
    assert!(env.session(&parent.id)["archived_at"].is_string());
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&parent.id));
}

#[test]
fn on_this_machine_a_deleted_workspace_is_rebuilt_from_the_archive() {
    let env = TestEnv::local();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1 EDIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let workspace = PathBuf::from(env.session(&parent.id)["workspace"].as_str().unwrap());
    std::fs::remove_dir_all(&workspace).unwrap();
    // The agent's own conversation goes too: only the archive has it now.
    std::fs::remove_dir_all(env.home().join(".claude/projects")).unwrap();

    let out = env.run(&["continue", &parent.id, "COMMIT=1", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "The workspace of session {} is gone: restoring it from the archive",
            parent.id
        )),
        "{}",
        stderr(&out)
    );
    let child = Started {
        id: started_ids(&out).remove(0),
        vm: "local".into(),
    };
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&format!("\"session\":\"{}\"", parent.id)));
    assert_eq!(read(&workspace.join("edit-1.txt")), "one\ntwo\nthree\n");
    assert_eq!(
        git(&workspace, &["log", "--format=%s"]),
        "agent commit 1\nagent commit 1\ninit"
    );
}

#[test]
fn a_follow_up_that_hits_a_transient_failure_is_retried_continuing_once() {
    let mut env = TestEnv::local();
    env.set("AMPLIHACK_REMOTE_RETRY_BACKOFF", "1");
    let parent = start_one(&env, &["--no-context", "LINES=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let child = follow_up(&env, &parent.id, "TRANSIENT=529");
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    let runs = read(&env.agent_record("local", &child.id).join("runs"));
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for run in runs {
        assert_eq!(
            run.split(' ').filter(|w| *w == "--continue").count(),
            1,
            "{run}"
        );
    }
}

#[test]
fn two_follow_ups_of_one_session_at_once_never_share_its_workspace() {
    let env = TestEnv::local();
    let parent = start_one(&env, &["--no-context", "LINES=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    let children: Vec<std::process::Child> = (0..2)
        .map(|i| {
            env.std_cmd(&["continue", &parent.id, &format!("SLEEP=2 racer {i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<std::process::Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1], "{codes:?}");
    let refused = &outs[codes.iter().position(|c| *c == 1).unwrap()];
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("being continued by"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let follow_ups: Vec<String> = env
        .session_ids()
        .into_iter()
        .filter(|id| env.session(id)["parent_session_id"] == parent.id.as_str())
        .collect();
    assert_eq!(follow_ups.len(), 1, "{follow_ups:?}");
}

#[test]
fn pull_pr_of_a_running_session_brings_its_commits_but_opens_nothing() {
    let mut env = TestEnv::local();
    env.git_repo();
    with_gh_and_remote(&mut env);
    let s = start_one(&env, &["COMMIT=1 SLEEP=60"]);
    let record = env.agent_record(&s.vm, &s.id);
    let workspace = PathBuf::from(env.session(&s.id)["workspace"].as_str().unwrap());
    env.wait_for(
        "the agent's commit",
        std::time::Duration::from_secs(30),
        || {
            record.join("env").exists()
                && git(&workspace, &["log", "--format=%s"]).starts_with("agent commit 1")
        },
    );
    let out = env.run(&["pull", &s.id, "--pr"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("open its pull request once it has ended"),
        "{}",
        stderr(&out)
    );
    git(
        &env.work(),
        &["rev-parse", "--verify", &format!("amplihack/{}", s.id)],
    );
    assert!(gh_calls(&env).is_empty(), "{:?}", gh_calls(&env));
    let out = env.run(&["kill", &s.id, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A follow-up runs on its parent's backend, whatever AMPLIHACK_REMOTE_BACKEND says now: an
/// Azure session continued with the local backend exported goes to its VM, and once that VM
/// is gone to another Azure VM, never to this machine.
#[test]
fn a_follow_up_follows_its_parents_backend_not_the_exported_one() {
    let mut env = TestEnv::new();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    let agent = format!("{} claude", support("vm-bin/amplihack").display());
    env.set("AMPLIHACK_REMOTE_AGENT", &agent);
    let child = follow_up(&env, &parent.id, "COMMIT=1");
    assert_eq!(child.vm, parent.vm, "on the parent's Azure VM");
    assert_eq!(env.wait_finished(&child.id)["status"], "completed");
    assert!(continued(&env, &child).contains(&parent.id));

    env.unset("AMPLIHACK_REMOTE_BACKEND");
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    env.set("AMPLIHACK_REMOTE_BACKEND", "local");
    let grandchild = follow_up(&env, &child.id, "LINES=1");
    assert!(
        grandchild.vm != "local" && grandchild.vm != parent.vm,
        "a new Azure VM: {}",
        grandchild.vm
    );
    assert_eq!(env.wait_finished(&grandchild.id)["status"], "completed");
    assert!(continued(&env, &grandchild).contains(&child.id));
}

/// A `git` first on PATH that stops at `git apply` (the uncommitted work going into the
/// worktree): it records its pid in `apply.pid`, then hangs (`hang`) or fails.
fn git_stopping_at_apply(env: &TestEnv, hang: bool) {
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = env.root().join("bin/git");
    let mark = env.root().join("apply.pid");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = apply ]; then\n    echo $$ > '{}'\n    {}\n  fi\ndone\nexec '{}' \"$@\"\n",
            mark.display(),
            if hang { "exec sleep 60" } else { "echo 'error: patch failed' >&2; exit 1" },
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `pull --resume` that dies halfway (killed, or its patch refused) leaves no worktree that
/// the next one would take for the finished hand-over: the next one builds it whole.
/// A pull --resume that died left its half-built worktree under its pid, and that pid now
/// belongs to another process (pid 1 here, which always lives): the start time in the name
/// tells it is not the builder, so the next pull --resume clears it rather than wait for ever.
#[test]
fn a_dead_pull_resumes_leftovers_are_cleared_once_its_pid_went_to_another_process() {
    let env = TestEnv::local();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let out = env.run(&["pull", &s.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let root = env.root().canonicalize().unwrap();
    let leftover = root.join(format!(".work-{}.resume-partial-1-1", s.id));
    git(
        &env.work(),
        &[
            "worktree",
            "add",
            &leftover.display().to_string(),
            &format!("amplihack/{}", s.id),
        ],
    );
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!leftover.exists());
    assert!(root.join(format!("work-{}", s.id)).join(".git").exists());
}

#[test]
fn a_pull_resume_that_dies_halfway_leaves_nothing_the_next_one_trips_on() {
    let env = TestEnv::local();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1 EDIT=1"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let worktrees = || git(&env.work(), &["worktree", "list", "--porcelain"]);

    // Killed (SIGKILL) while it applies the uncommitted work.
    git_stopping_at_apply(&env, true);
    let mut child = env.std_cmd(&["pull", &s.id, "--resume"]).spawn().unwrap();
    let mark = env.root().join("apply.pid");
    env.wait_for("git apply", std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&mark).is_ok_and(|t| t.ends_with('\n'))
    });
    // A second one meanwhile leaves the first's alone and says why.
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "another pull --resume of session {} is under way",
            s.id
        )),
        "{}",
        stderr(&out)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let hung = read(&mark).trim().to_string();
    std::process::Command::new("kill")
        .arg(&hung)
        .status()
        .unwrap();
    std::fs::remove_file(&mark).unwrap();

    // Its patch refused: an error, and no worktree registered.
    git_stopping_at_apply(&env, false);
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("patch failed"), "{}", stderr(&out));
    assert_eq!(
        worktrees().matches("\nworktree ").count(),
        0,
        "only the repository's own: {}",
        worktrees()
    );

    std::fs::remove_file(env.root().join("bin/git")).unwrap();
    let out = env.run(&["pull", &s.id, "--resume"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let worktree = env
        .root()
        .join(format!("work-{}", s.id))
        .canonicalize()
        .unwrap();
    assert_eq!(read(&worktree.join("edit-1.txt")), "one\ntwo\nthree\n");
    assert_eq!(git(&worktree, &["status", "--porcelain"]), "?? edit-1.txt");
    assert_eq!(
        worktrees().matches("\nworktree ").count(),
        1,
        "the repository's and the hand-over's: {}",
        worktrees()
    );
    let hidden: Vec<_> = std::fs::read_dir(env.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "nothing half-made left: {hidden:?}");
}

/// A branch of the session's name that the user made before any pull (never pulled into) is
/// left alone, and the refusal says it was there before, not that it moved after a pull.
#[test]
fn a_branch_that_was_there_before_any_pull_is_refused_for_what_it_is() {
    let env = TestEnv::local();
    env.git_repo();
    let s = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let branch = format!("amplihack/{}", s.id);
    git(&env.work(), &["checkout", "-q", "-b", &branch]);
    std::fs::write(env.work().join("mine.txt"), "mine\n").unwrap();
    git(&env.work(), &["add", "mine.txt"]);
    git(&env.work(), &["commit", "-q", "-m", "mine"]);
    git(&env.work(), &["checkout", "-q", "main"]);
    let out = env.run(&["pull", &s.id]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("existed before this session was pulled into it"),
        "{err}"
    );
    assert!(!err.contains("moved after it was pulled"), "{err}");
    assert_eq!(
        git(&env.work(), &["log", "-1", "--format=%s", &branch]),
        "mine"
    );
}

/// One pull request per session: a pull into another branch says where the one open came
/// from, and a pull request opened before without our record of it (another machine, a state
/// rebuilt) is adopted from gh's refusal instead of failing.
#[test]
fn pull_pr_adopts_an_open_pull_request_and_names_its_branch() {
    let mut env = TestEnv::local();
    env.git_repo();
    with_gh_and_remote(&mut env);
    let s = start_one(&env, &["COMMIT=1 ship it"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let url = "https://github.example/owner/repo/pull/1";
    let out = env.run(&["pull", &s.id, "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let branch = format!("amplihack/{}", s.id);
    assert_eq!(env.session(&s.id)["pr_branch"], branch.as_str());

    let out = env.run(&["pull", &s.id, "--pr", "--branch", "b2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "(opened before from branch {branch}; nothing new opened, branch b2 is home only): {url}"
        )),
        "{}",
        stdout(&out)
    );

    // This machine forgets it (a second machine's state would not have it).
    let mut st = env.state();
    let rec = st["sessions"][&s.id].as_object_mut().unwrap();
    rec.remove("pr_url");
    rec.remove("pr_branch");
    env.write_state(&st.to_string());
    let out = env.run(&["pull", &s.id, "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "Pull request of {} (open already for branch {branch}, nothing new opened): {url}",
            s.id
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.session(&s.id)["pr_url"], url);
    assert_eq!(
        read(&env.root().join("gh/prs")).trim(),
        "1",
        "one pull request"
    );
}

/// A session that completed, started from machine A (the test's state file) and known to
/// machine B (a second state file, filled by `sync`); the environment is left on machine B.
/// Returns the session and the two state files.
fn completed_on_two_machines(env: &mut TestEnv) -> (Started, PathBuf, PathBuf) {
    env.git_repo();
    let machine_a = env.state_path();
    let machine_b = env.root().join("state/b/remote-state.json");
    std::fs::create_dir_all(machine_b.parent().unwrap()).unwrap();
    let parent = start_one(env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    let out = env.run(&["sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    (parent, machine_a, machine_b)
}

/// Two machines, each with its own state, continue the same session: the VM refuses the
/// second follow-up while the first runs in the workspace, and once it has run, names it.
#[test]
fn a_second_machine_cannot_continue_a_session_another_is_continuing() {
    let mut env = TestEnv::new();
    let (parent, machine_a, machine_b) = completed_on_two_machines(&mut env);
    let out = env.run(&["continue", &parent.id, "SLEEP=60 COMMIT=1", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let b_child = started_ids(&out).remove(0);

    env.set("AMPLIHACK_REMOTE_STATE", &machine_a.display().to_string());
    let out = env.run(&["continue", &parent.id, "COMMIT=1", "--json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "its workspace is in use by session {b_child} (running;"
        )),
        "{}",
        stderr(&out)
    );
    let records = std::fs::read_dir(env.agent_record(&parent.vm, &parent.id).parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(records, 2, "no third agent ever ran in the workspace");

    env.set("AMPLIHACK_REMOTE_STATE", &machine_b.display().to_string());
    let out = env.run(&["kill", &b_child]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    env.set("AMPLIHACK_REMOTE_STATE", &machine_a.display().to_string());
    let out = env.run(&["continue", &parent.id, "COMMIT=1", "--json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "was continued by {b_child} already (from another machine?"
        )),
        "{}",
        stderr(&out)
    );
}

/// A home whose path is not ASCII (é, and 😀 outside the BMP): the VM finds the agent's
/// conversation where Claude Code keeps it (one `-` per UTF-16 unit), so the archive keeps it
/// and pull --resume hands it back.
#[test]
fn a_conversation_under_a_home_with_unicode_in_its_path_is_kept() {
    let mut env = TestEnv::local();
    env.git_repo();
    let home = env.root().join("hömé-😀");
    std::fs::create_dir_all(&home).unwrap();
    env.set("HOME", &home.display().to_string());
    let s = start_one(&env, &["EDIT=1"]);
    assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    let files = conversation_files(&env, &s.id);
    assert_eq!(
        files.len(),
        1,
        "the archive keeps the conversation: {files:?}"
    );
    assert!(read(&files[0]).contains(&format!("\"session\":\"{}\"", s.id)));
}

/// A parent whose VM went before its results came home cannot be continued, and `continue`
/// says so rather than "try again when list reaches the VM", which never will.
#[test]
fn continue_of_a_session_whose_vm_went_before_its_results_came_home_says_they_are_lost() {
    let env = TestEnv::new();
    env.git_repo();
    let parent = start_one(&env, &["COMMIT=1"]);
    assert_eq!(env.wait_finished(&parent.id)["status"], "completed");
    std::fs::remove_dir_all(archived(&env, &parent.id)).unwrap();
    let mut st = env.state();
    st["sessions"][&parent.id]["archived_at"] = Value::Null;
    st["vm_pool"].as_object_mut().unwrap().remove(&parent.vm);
    env.write_state(&st.to_string());
    let out = env.run(&["continue", &parent.id, "more"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "VM '{}' of session {} is gone and its results never came home",
            parent.vm, parent.id
        )),
        "{err}"
    );
    assert!(!err.contains("try again"), "{err}");
}

/// Two machines continue the same session at the same moment: the VM places one follow-up in
/// the workspace and fails the other, never both.
#[test]
fn two_machines_continuing_one_session_at_once_never_share_its_workspace() {
    let mut env = TestEnv::new();
    let (parent, machine_a, machine_b) = completed_on_two_machines(&mut env);

    let mut runs = Vec::new();
    for state in [&machine_a, &machine_b] {
        env.set("AMPLIHACK_REMOTE_STATE", &state.display().to_string());
        runs.push(
            env.std_cmd(&["continue", &parent.id, "SLEEP=30"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let outs: Vec<std::process::Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let started = outs.iter().filter(|o| o.status.success()).count();
    let errors: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert_eq!(started, 1, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("its workspace is in use by session")),
        "{errors:?}"
    );
    let records = env.agent_record(&parent.vm, &parent.id);
    let agents = || {
        std::fs::read_dir(records.parent().unwrap())
            .unwrap()
            .count()
    };
    env.wait_for(
        "the follow-up's agent",
        std::time::Duration::from_secs(30),
        || agents() >= 2,
    );
    assert_eq!(agents(), 2, "the parent and one follow-up ran there");
}

/// `pull --all` in the morning, `pull --all --pr` once reviewed: the second opens the pull
/// requests of the sessions pulled already, and a third opens nothing more.
#[test]
fn pull_all_pr_after_pull_all_opens_the_pull_requests_of_sessions_pulled_already() {
    let mut env = TestEnv::local();
    env.git_repo();
    with_gh_and_remote(&mut env);
    let a = start_one(&env, &["first COMMIT=1"]);
    let b = start_one(&env, &["second LINES=1"]);
    for s in [&a, &b] {
        assert_eq!(env.wait_finished(&s.id)["status"], "completed");
    }
    let out = env.run(&["pull", "--all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.run(&["pull", "--all", "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("Opened pull request of {}: ", a.id)),
        "{}",
        stdout(&out)
    );
    assert!(env.session(&a.id)["pr_url"].is_string());
    let out = env.run(&["pull", "--all", "--pr"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Nothing to pull"),
        "{}",
        stdout(&out)
    );
    assert_eq!(read(&env.root().join("gh/prs")).trim(), "1");
}
