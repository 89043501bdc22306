//! Activation modes and standby types with real agents: warm waits for PUT, hot is Hot at once,
//! a cold standby starts its service only on Hot, a hot standby runs it as standby.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const S: Duration = Duration::from_secs(1);

/// Assert that the environment of `pid` holds each `(key, value)`.
fn assert_env(pid: u32, want: &[(&str, &str)]) {
    let env = environ(pid);
    for (k, v) in want {
        assert_eq!(env.get(*k).map(String::as_str), Some(*v), "{k} of {pid}");
    }
}

/// `a` and `b` added and watched in a trylock group; `a` goes Hot, then `b` is a ready standby.
fn trylock_pair(standby: &str) -> (Group, Watcher, serde_json::Value) {
    let mut g = Group::new("trylock", standby);
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    let s = g.wait_ready("b", 5 * S);
    (g, w, s)
}

fn start_lines(g: &Group, node: &str) -> Vec<LogLine> {
    read_log(&g.log)
        .into_iter()
        .filter(|l| l.node == node && l.event == "start")
        .collect()
}

#[test]
fn warm_mode_waits_for_put_and_never_makes_a_second_active() {
    let mut g = Group::new("warm", "cold");
    let w = g.add_watched_pair();
    g.start("a");
    let body = get_json(&g.admin("a"), "/service/activationmode").unwrap();
    assert_eq!(body, json!({"mode": "Warm", "name": "Warm"}));
    g.stays("a", "Warm", Duration::from_millis(400));
    let why = g.waiting("a");
    assert!(why.contains("PUT"), "{why:?}");
    assert!(g.service_pid("a").is_none());

    g.put_hot_ok("a");
    let body = get_json(&g.admin("a"), "/service/activationmode").unwrap();
    assert_eq!(body, json!({"mode": "Hot", "name": "Warm"}));
    let e1 = g.epoch("a");
    assert!(e1 >= 1);
    g.wait_service_active("a", e1);

    g.start("b");
    g.put_hot_refused("b", "a");
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));

    // Warm mode never takes over by itself, even when the active dies.
    g.kill9("a");
    g.stays("b", "Warm", Duration::from_millis(500));
    g.put_hot_ok("b");
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    g.wait_service_active("b", e2);
    w.finish();
    g.expect_actives(2);
}

#[test]
fn hot_mode_is_hot_at_once_and_a_second_hot_node_is_refused() {
    let mut g = Group::new("hot", "cold");
    let w = g.add_watched_pair();
    g.start("a");
    g.wait_mode("a", "Hot", 2 * S);
    let body = get_json(&g.admin("a"), "/service/activationmode").unwrap();
    assert_eq!(body, json!({"mode": "Hot", "name": "Hot"}));
    g.start("b");
    let s = g.wait_status("b", "refused", 2 * S, |s| {
        s["waiting"].as_str().is_some_and(|w| w.contains("refused"))
    });
    assert_eq!(s["mode"], "Warm");
    assert!(s["waiting"].as_str().unwrap().contains('a'), "{s}");
    g.stays("b", "Warm", Duration::from_millis(300));
    w.finish();
    g.expect_actives(1);
}

#[test]
fn cold_standby_starts_its_service_only_on_hot_with_the_active_role() {
    let (mut g, w, _) = trylock_pair("cold");
    g.stays("b", "Warm", Duration::from_millis(300));
    let s = g.st("b");
    assert!(
        s["service"]["pid"].is_null(),
        "cold standby service runs while Warm: {s}"
    );
    assert_eq!(s["service"]["state"], "stopped");
    assert!(
        start_lines(&g, "b").is_empty(),
        "b's service started while Warm"
    );

    let e1 = g.epoch("a");
    g.wait_service_active("a", e1);
    let pa = g.service_pid("a").expect("a's service");
    assert_env(
        pa,
        &[
            ("UNDERSTUDY_ROLE", "active"),
            ("UNDERSTUDY_EPOCH", &e1.to_string()),
            ("UNDERSTUDY_GROUP", "g"),
            ("UNDERSTUDY_NODE", "a"),
            ("UNDERSTUDY_ADMIN", &g.admin("a")),
        ],
    );

    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    let pb = g.wait_status("b", "service running", 5 * S, |s| {
        s["service"]["pid"].is_u64()
    })["service"]["pid"]
        .as_u64()
        .unwrap() as u32;
    assert_env(
        pb,
        &[
            ("UNDERSTUDY_ROLE", "active"),
            ("UNDERSTUDY_EPOCH", &e2.to_string()),
            ("UNDERSTUDY_NODE", "b"),
        ],
    );
    assert!(wait_until(5 * S, || start_lines(&g, "b").len() == 1));
    assert_eq!(start_lines(&g, "b")[0].epoch, e2);
    w.finish();
    g.expect_actives(2);
}

#[test]
fn hot_standby_runs_its_service_as_standby_and_signals_it_on_takeover() {
    let (mut g, w, s) = trylock_pair("hot");
    let pb = s["service"]["pid"].as_u64().expect("standby service pid") as u32;
    assert_eq!(s["service"]["role"], "standby");
    assert_env(pb, &[("UNDERSTUDY_ROLE", "standby")]);
    let e1 = g.epoch("a");
    // a's service must have logged active before a dies, or the log lacks its interval.
    g.wait_service_active("a", e1);
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    // Same process, told by signal, reading its new epoch from the agent.
    assert_eq!(g.service_pid("b"), Some(pb));
    assert!(wait_until(5 * S, || g.logged(|l| l.pid == pb
        && l.event == "active"
        && l.epoch == e2)));
    w.finish();
    g.expect_actives(2);
}
