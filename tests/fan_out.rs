//! Bounded fan-out: `list` and `status` ask every VM at once, but never more than
//! AMPLIHACK_REMOTE_PARALLEL azlin calls at a time, and their output does not depend on the
//! bound or on which call answers first.

#![allow(clippy::disallowed_methods)] // tests drive processes directly (clippy.toml)

mod common;

use common::*;
use serde_json::Value;

const VMS: usize = 6;

/// Six S VMs (one slot each), each with a running session.
fn pool_of_six() -> TestEnv {
    let env = TestEnv::new();
    env.prime(VMS as u32, "s");
    let mut args = vec!["start", "--no-context", "--json", "--size", "s"];
    args.extend(std::iter::repeat_n("SLEEP=600", VMS));
    let out = env.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(started_ids(&out).len(), VMS);
    env.clear_calls();
    env
}

fn read_number(env: &TestEnv, name: &str) -> usize {
    std::fs::read_to_string(env.azlin_home().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// What `status --json` says, without the ages, which move with the clock.
fn status_without_ages(out: &std::process::Output) -> Value {
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for vm in v["vms"].as_array_mut().unwrap() {
        vm.as_object_mut().unwrap().remove("age_seconds");
    }
    v
}

#[test]
fn calls_in_flight_never_exceed_the_bound_and_output_keeps_its_order() {
    let mut env = pool_of_six();
    env.set("FAKE_AZLIN_TRACK_INFLIGHT", "1");
    // Calls that last a while overlap if the bound lets them (no timing is asserted).
    env.set("FAKE_AZLIN_DELAY", "0.3");
    env.set("AMPLIHACK_REMOTE_PARALLEL", "2");
    let mut lists = Vec::new();
    let mut statuses = Vec::new();
    for args in [&["status", "--json"][..], &["list", "--json"]] {
        let _ = std::fs::remove_file(env.azlin_home().join("max-inflight"));
        env.clear_calls();
        let out = env.run(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        let calls = env.calls();
        // One probe per VM, plus the power states for status.
        let expected = VMS + usize::from(args[0] == "status");
        assert_eq!(calls.len(), expected, "{calls:?}");
        let max = read_number(&env, "max-inflight");
        assert!(
            (1..=2).contains(&max),
            "{args:?}: {max} azlin calls at once"
        );
        assert_eq!(
            read_number(&env, "inflight"),
            0,
            "a call was never uncounted"
        );
        if args[0] == "status" {
            statuses.push(status_without_ages(&out));
        } else {
            lists.push(stdout(&out));
        }
    }

    // The same answers in the same order whatever the bound.
    env.set("FAKE_AZLIN_DELAY", "0");
    for bound in ["1", "3", "16"] {
        env.set("AMPLIHACK_REMOTE_PARALLEL", bound);
        let out = env.run(&["status", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        statuses.push(status_without_ages(&out));
        let out = env.run(&["list", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        lists.push(stdout(&out));
    }
    assert!(statuses.windows(2).all(|w| w[0] == w[1]), "{statuses:#?}");
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "{lists:#?}");
    let names: Vec<&str> = statuses[0]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "VMs in name order");
    assert_eq!(names.len(), VMS);
    let listed: Value = serde_json::from_str(&lists[0]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), VMS);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "running")
    );
}

#[test]
fn prime_and_prune_keep_to_the_bound() {
    let mut env = TestEnv::new();
    env.set("FAKE_AZLIN_TRACK_INFLIGHT", "1");
    env.set("FAKE_AZLIN_DELAY", "0.3");
    env.set("AMPLIHACK_REMOTE_PARALLEL", "2");
    let out = env.run(&["prime", "--count", "5", "--vm-size", "s", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let primed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = primed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5);
    // Names end in a random part (unique across machines), so their order says nothing; that
    // results come back in the order reserved is parallel::map_bounded's unit test.
    let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "{names:?}");
    let max = read_number(&env, "max-inflight");
    assert!((1..=2).contains(&max), "prime: {max} azlin calls at once");

    std::fs::remove_file(env.azlin_home().join("max-inflight")).unwrap();
    let out = env.run(&["prune", "--idle-minutes", "0", "--yes", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pruned: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pruned.as_array().unwrap().len(), 5, "{pruned}");
    assert!(env.state()["vm_pool"].as_object().unwrap().is_empty());
    let max = read_number(&env, "max-inflight");
    assert!((1..=2).contains(&max), "prune: {max} azlin calls at once");
    assert_eq!(read_number(&env, "inflight"), 0);
}
