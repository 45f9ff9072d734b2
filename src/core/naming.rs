//! Names: session ids, VM names and regions. Pure functions; `now` and randomness come in as
//! parameters so the results are testable.

use chrono::{DateTime, Utc};

/// `sess-<YYYYMMDD>-<HHMMSS>-<4 hex>`.
pub fn session_id(now: DateTime<Utc>, random: u16) -> String {
    format!("sess-{}-{random:04x}", now.format("%Y%m%d-%H%M%S"))
}

/// `amplihack-<user>-<YYYYMMDD-HHMMSS>-<4 hex>`, the user part reduced to what azlin accepts
/// (at most 10 + 20 + 1 + 15 + 5 = 51 characters, within azlin's 64). The hex part, random per
/// name, keeps two machines (or two state files) that name a VM in the same second apart.
pub fn vm_name(user: &str, now: DateTime<Utc>, random: u16) -> String {
    format!(
        "{VM_NAME_PREFIX}{}-{}-{random:04x}",
        vm_user_part(user),
        now.format("%Y%m%d-%H%M%S")
    )
}

/// When a VM that this tool named for `user` was reserved: the time in its name (to the second),
/// for `amplihack-<user>-<YYYYMMDD>-<HHMMSS>`, optionally followed by `-<4 lower-case hex>`
/// (names made before the hex part, and the Python original's, have none). `None` for any other
/// name, including another user's VMs.
pub fn vm_name_time(name: &str, user: &str) -> Option<DateTime<Utc>> {
    let rest = name
        .strip_prefix(VM_NAME_PREFIX)?
        .strip_prefix(vm_user_part(user).as_str())?
        .strip_prefix('-')?;
    let stamp = match rest.len() {
        15 => rest,
        20 => {
            let (stamp, tail) = rest.split_at(15);
            let hex = tail.strip_prefix('-')?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return None;
            }
            stamp
        }
        _ => return None,
    };
    let b = stamp.as_bytes();
    let shape = b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Lower-case ASCII letters and digits, runs of anything else folded to one `-`, at most 20
/// characters, never empty. azlin accepts `[A-Za-z0-9.-]`, 1-64 characters.
pub fn vm_user_part(user: &str) -> String {
    let mut out = String::new();
    for c in user.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(20);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "user".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The name rule of azlin for a VM.
pub fn is_valid_vm_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// A branch name `pull --branch` may create: git's rules for a branch name (git
/// check-ref-format), checked here so a bad one is refused before any remote call.
pub fn validate_branch_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("/.")
        && !name.contains("@{")
        && name != "@"
        // A full ref name would be taken as a branch named after it (refs/heads/refs/heads/x).
        && !name.starts_with("refs/")
        && name != "HEAD"
        && !name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid branch name {name:?}: expected a git branch name such as review/fix-login (without refs/heads/)"
        ))
    }
}

/// The prefix of every pool VM name. No session id (a tmux session name on a VM) may start
/// with it: azlin reads a VM name it cannot find as a tmux session name and connects to
/// whichever VM has one, so a session may never be named like a VM.
pub const VM_NAME_PREFIX: &str = "amplihack-";

/// A session id is well formed when it is safe as a tmux session name, a file name and a shell
/// word: 1-64 of `[A-Za-z0-9._-]`, starting with a letter or digit, and not named like a pool
/// VM (`VM_NAME_PREFIX`). This accepts ids written by the Python original
/// (`sess-20251125-143022-abc`) and rejects shell metacharacters and paths.
pub fn validate_session_id(id: &str) -> Result<(), String> {
    if id.starts_with(VM_NAME_PREFIX) {
        return Err(format!(
            "malformed session id {id:?}: that is a VM name (session ids look like sess-20251125-143022-abc1)"
        ));
    }
    let ok = (1..=64).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "malformed session id {id:?}: expected letters, digits, '.', '_' or '-' (like sess-20251125-143022-abc1)"
        ))
    }
}

/// A region name as Azure spells it: case does not matter to Azure (`EastUS`, `eastus`) and
/// its display names have spaces (`East US`), so both are taken to the canonical form.
pub fn normalize_region(region: &str) -> Result<String, String> {
    let canonical: String = region
        .chars()
        .filter(|c| *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    validate_region(&canonical).map(|()| canonical)
}

/// Azure regions are lower-case letters and digits (eastus, westus3).
pub fn validate_region(region: &str) -> Result<(), String> {
    if (1..=40).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "invalid region {region:?}: expected an Azure region name such as eastus or westus3"
        ))
    }
}

/// A workspace path recorded for a session: as `AMPLIHACK_REMOTE_WORKSPACE` may make it
/// (absolute, under `~/`, or relative to the VM user's home), with no `..` component, no
/// control character and no leading `-` (it reaches the VM as an argument of its control calls).
pub fn is_safe_workspace(path: &str) -> bool {
    !path.starts_with('-')
        && path.len() <= 4096
        && !path.chars().any(char::is_control)
        && !path.split('/').any(|part| part == "..")
}

/// An Azure resource group name: 1-90 of letters, digits, `_`, `(`, `)`, `-` and `.`, not
/// ending in `.`; and, since it reaches azlin's argv, not starting with `-`.
pub fn is_valid_resource_group(g: &str) -> bool {
    (1..=90).contains(&g.len())
        && !g.starts_with('-')
        && !g.ends_with('.')
        && g.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '(' | ')' | '-' | '.'))
}

fn is_commit_id(c: &str) -> bool {
    (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The VM name of a session `start` could place nowhere (it failed at once): no VM's name.
pub const UNPLACED_VM: &str = "-";

/// Checks every name the state file gives that becomes a path or reaches a VM: session ids
/// (keys, `session_id`, the VMs' `active_sessions`), VM names (pool keys, `vm_name`),
/// workspaces and commit ids. A hand-edited or hostile state (a session id
/// `../../../important.txt`) is then refused whole, naming the entry, before anything acts on
/// it. The first bad entry, in words, or None.
pub fn unsafe_state_entry(state: &crate::core::model::State) -> Option<String> {
    let bad_id = |id: &str| validate_session_id(id).is_err();
    // Debug quoting escapes controls, C1 and bidi characters: nothing shown acts on a terminal
    // (and main sanitises every error it prints besides).
    let shown = |v: &str| format!("{v:?}");
    for (key, s) in &state.sessions {
        if bad_id(key) {
            return Some(format!("the session id {} is not safe to use", shown(key)));
        }
        if s.session_id != *key && bad_id(&s.session_id) {
            return Some(format!(
                "session {key} has the session_id {}, which is not safe to use",
                shown(&s.session_id)
            ));
        }
        if s.vm_name != UNPLACED_VM && !is_valid_vm_name(&s.vm_name) {
            return Some(format!(
                "session {key} names the VM {}, which is not a valid VM name",
                shown(&s.vm_name)
            ));
        }
        if !is_safe_workspace(&s.workspace) {
            return Some(format!(
                "session {key} has the workspace {}, which is not a safe path",
                shown(&s.workspace)
            ));
        }
        if let Some(parent) = s.parent_session_id().filter(|p| bad_id(p)) {
            return Some(format!(
                "session {key} continues the session id {}, which is not safe to use",
                shown(parent)
            ));
        }
        for c in [&s.base_commit, &s.pulled_commit].into_iter().flatten() {
            if !is_commit_id(c) {
                return Some(format!(
                    "session {key} names the commit {}, which is not a commit id",
                    shown(c)
                ));
            }
        }
    }
    for (name, vm) in &state.vm_pool {
        if !is_valid_vm_name(name) {
            return Some(format!("the VM name {} is not valid", shown(name)));
        }
        if let Some(group) = vm
            .resource_group
            .as_deref()
            .filter(|g| !is_valid_resource_group(g))
        {
            return Some(format!(
                "VM {name} names the resource group {}, which is not a valid resource group name",
                shown(group)
            ));
        }
        if let Some(id) = vm.active_sessions.iter().find(|id| bad_id(id)) {
            return Some(format!(
                "VM {name} lists the session id {}, which is not safe to use",
                shown(id)
            ));
        }
    }
    None
}

/// The folder name Claude Code keeps a workspace's conversations under, in
/// `~/.claude/projects/`: the workspace's absolute path with every character other than an
/// ASCII letter or digit replaced by `-` (one per UTF-16 unit, as Claude Code's JavaScript
/// does).
pub fn claude_project_slug(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.extend(std::iter::repeat_n('-', c.len_utf16()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_is_named_without_refs_heads() {
        assert!(validate_branch_name("review/fix-login").is_ok());
        for bad in ["refs/heads/main", "refs/x", "HEAD", "-x", "a..b", "a b"] {
            assert!(validate_branch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_groups_from_the_state_are_checked_before_they_reach_azlin() {
        for ok in ["rg", "my-rg_1", "rg.(prod)", "Grüne-RG"] {
            assert!(is_valid_resource_group(ok), "{ok}");
        }
        for bad in [
            "",
            "--help",
            "-rg",
            "rg.",
            "a b",
            "rg;rm",
            "rg\u{1b}[2J",
            &"r".repeat(91),
        ] {
            assert!(!is_valid_resource_group(bad), "{bad:?}");
        }
        let mut state = crate::core::model::State::default();
        let mut vm = crate::core::pool::local_vm_entry(1, chrono::Utc::now());
        vm.resource_group = Some("--help".into());
        state.vm_pool.insert("vm-1".into(), vm);
        let why = unsafe_state_entry(&state).unwrap();
        assert!(why.contains("resource group"), "{why}");
    }

    #[test]
    fn workspaces_as_the_setting_makes_them_pass_and_escapes_do_not() {
        for ok in [
            "/workspace/sess-1",
            "~/workspace/sess-1",
            "workspace/sess-1",
            "~/a b/sess-1",
        ] {
            assert!(is_safe_workspace(ok), "{ok}");
        }
        for bad in [
            "/workspace/../../etc",
            "../x",
            "-rf",
            "/w/x\n",
            "~/a/..",
            "/a\u{1b}b",
        ] {
            assert!(!is_safe_workspace(bad), "{bad:?}");
        }
    }
    use chrono::TimeZone;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 11, 25, 14, 30, 22).unwrap()
    }

    #[test]
    fn session_ids_have_the_documented_shape() {
        assert_eq!(session_id(t(), 0xabc), "sess-20251125-143022-0abc");
        assert!(validate_session_id(&session_id(t(), 0xffff)).is_ok());
    }

    #[test]
    fn vm_names_are_accepted_by_azlin() {
        assert_eq!(
            vm_name("Jane.Doe@corp", t(), 0x0a1f),
            "amplihack-jane-doe-corp-20251125-143022-0a1f"
        );
        assert_eq!(vm_name("", t(), 0), "amplihack-user-20251125-143022-0000");
        assert_eq!(
            vm_name("---", t(), 0xffff),
            "amplihack-user-20251125-143022-ffff"
        );
        let long = vm_name(&"x".repeat(200), t(), 0xffff);
        assert!(is_valid_vm_name(&long) && long.len() <= 64, "{long}");
        assert!(is_valid_vm_name(&vm_name("ünïcødé user", t(), 1)));
        // Two machines naming a VM in the same second differ by the random part.
        assert_ne!(vm_name("jo", t(), 1), vm_name("jo", t(), 2));
    }

    #[test]
    fn the_time_in_a_vm_name_is_read_back_for_its_user_only() {
        let name = vm_name("Jane.Doe", t(), 0xbeef);
        assert_eq!(vm_name_time(&name, "Jane.Doe"), Some(t()));
        // Names made before the random part.
        assert_eq!(
            vm_name_time("amplihack-jane-doe-20251125-143022", "jane-doe"),
            Some(t())
        );
        assert_eq!(vm_name_time(&name, "jane-doe"), Some(t()), "same user part");
        // Another user whose part is a prefix of ours, or who is a prefix of another's.
        assert_eq!(vm_name_time(&name, "jane"), None);
        assert_eq!(
            vm_name_time("amplihack-jane-20251125-143022", "jane-doe"),
            None
        );
        for other in [
            "amplihack-jane-doe-20251125-14302",
            "amplihack-jane-doe-20251125-1430222",
            "amplihack-jane-doe-2025112a-143022",
            "amplihack-jane-doe-20251325-143022",
            "amplihack-jane-doe-20251125_143022",
            "amplihack-jane-doe-20251125-143022-x",
            "amplihack-jane-doe-20251125-143022-BEEF",
            "amplihack-jane-doe-20251125-143022-beeff",
            "amplihack-jane-doe-20251125-143022-bee",
            "amplihack-jane-doe-20251125-143022_beef",
            "amplihack-jane-doe-20251125-143022-be-f",
            "web-jane-doe-20251125-143022",
            "amplihack-jane-doe-+2025112-143022",
        ] {
            assert_eq!(vm_name_time(other, "jane-doe"), None, "{other}");
        }
        // The spec's example name, as the Python original writes it.
        assert!(vm_name_time("amplihack-user-20251125-143000", "user").is_some());
    }

    #[test]
    fn session_id_validation() {
        for ok in ["sess-20251125-143022-abc", "sess-1", "a", "A_b.c-d"] {
            assert!(validate_session_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a/b",
            "../x",
            "a..b",
            "x;y",
            "$(id)",
            "a b",
            "`x`",
            &"a".repeat(65),
            "amplihack-jo-20251125-143022",
        ] {
            assert!(validate_session_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_session_id_can_equal_a_vm_name() {
        // azlin takes a VM name it cannot find for a tmux session name: the two never meet.
        for n in 0..50u16 {
            let vm = vm_name("sess", t(), n);
            assert!(vm.starts_with(VM_NAME_PREFIX));
            assert!(validate_session_id(&vm).is_err(), "{vm}");
            let id = session_id(t(), n);
            assert!(validate_session_id(&id).is_ok() && !id.starts_with(VM_NAME_PREFIX));
        }
    }

    #[test]
    fn region_validation() {
        assert!(validate_region("westus3").is_ok());
        assert!(validate_region("East US").is_err());
        assert!(validate_region("").is_err());
    }

    #[test]
    fn claude_project_slugs_replace_everything_but_ascii_letters_and_digits() {
        assert_eq!(
            claude_project_slug("/home/u/my_repo-sess-1.x"),
            "-home-u-my-repo-sess-1-x"
        );
        assert_eq!(claude_project_slug("/a/é/😀"), "-a-----");
        assert_eq!(claude_project_slug("/a/é/😀").len(), 7);
    }
}
