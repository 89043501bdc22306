//! Activation modes and standby types with real agents: warm waits for PUT, hot is Hot at once,
//! a cold standby starts its service only on Hot, a hot standby runs it as standby.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const S: Duration = Duration::from_secs(1);

fn stays(g: &Group, name: &str, want: &str, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        assert_eq!(
            g.mode(name).as_deref(),
            Some(want),
            "{name}: {:?}",
            g.status(name)
        );
        sleep_ms(20);
    }
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
    g.add("a");
    g.add("b");
    let w = g.watch();
    g.start("a");
    let body = get_json(&g.admin("a"), "/service/activationmode").unwrap();
    assert_eq!(body, json!({"mode": "Warm", "name": "Warm"}));
    stays(&g, "a", "Warm", Duration::from_millis(400));
    let why = g.st("a")["waiting"].as_str().unwrap_or("").to_string();
    assert!(why.contains("PUT"), "{why:?}");
    assert!(g.service_pid("a").is_none());

    let (code, body) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_eq!(code, 200, "{body}");
    let body = get_json(&g.admin("a"), "/service/activationmode").unwrap();
    assert_eq!(body, json!({"mode": "Hot", "name": "Warm"}));
    let e1 = g.epoch("a");
    assert!(e1 >= 1);
    g.wait_service_active("a", e1);

    g.start("b");
    let (code, body) = put(&g.admin("b"), "/service/activationmode/hot");
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["holder"], "a", "{body}");
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));

    // Warm mode never takes over by itself, even when the active dies.
    g.kill9("a");
    stays(&g, "b", "Warm", Duration::from_millis(500));
    let (code, body) = put(&g.admin("b"), "/service/activationmode/hot");
    assert_eq!(code, 200, "{body}");
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    g.wait_service_active("b", e2);
    w.finish();
    g.expect_actives(2);
}

#[test]
fn hot_mode_is_hot_at_once_and_a_second_hot_node_is_refused() {
    let mut g = Group::new("hot", "cold");
    g.add("a");
    g.add("b");
    let w = g.watch();
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
    stays(&g, "b", "Warm", Duration::from_millis(300));
    w.finish();
    g.expect_actives(1);
}

#[test]
fn cold_standby_starts_its_service_only_on_hot_with_the_active_role() {
    let mut g = Group::new("trylock", "cold");
    g.add("a");
    g.add("b");
    let w = g.watch();
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    g.start("b");
    g.wait_status("b", "ready", 5 * S, |s| s["ready"] == true);
    stays(&g, "b", "Warm", Duration::from_millis(300));
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
    let pa = g.service_pid("a").expect("a's service");
    let env = environ(pa);
    assert_eq!(
        env.get("UNDERSTUDY_ROLE").map(String::as_str),
        Some("active")
    );
    assert_eq!(env.get("UNDERSTUDY_EPOCH"), Some(&e1.to_string()));
    assert_eq!(env.get("UNDERSTUDY_GROUP").map(String::as_str), Some("g"));
    assert_eq!(env.get("UNDERSTUDY_NODE").map(String::as_str), Some("a"));
    assert_eq!(env.get("UNDERSTUDY_ADMIN"), Some(&g.admin("a")));

    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    let pb = g.wait_status("b", "service running", 5 * S, |s| {
        s["service"]["pid"].is_u64()
    })["service"]["pid"]
        .as_u64()
        .unwrap() as u32;
    let env = environ(pb);
    assert_eq!(
        env.get("UNDERSTUDY_ROLE").map(String::as_str),
        Some("active")
    );
    assert_eq!(env.get("UNDERSTUDY_EPOCH"), Some(&e2.to_string()));
    assert_eq!(env.get("UNDERSTUDY_NODE").map(String::as_str), Some("b"));
    assert!(wait_until(5 * S, || start_lines(&g, "b").len() == 1));
    assert_eq!(start_lines(&g, "b")[0].epoch, e2);
    w.finish();
    g.expect_actives(2);
}

#[test]
fn hot_standby_runs_its_service_as_standby_and_signals_it_on_takeover() {
    let mut g = Group::new("trylock", "hot");
    g.add("a");
    g.add("b");
    let w = g.watch();
    g.start("a");
    g.wait_mode("a", "Hot", 5 * S);
    g.start("b");
    let s = g.wait_status("b", "ready", 5 * S, |s| s["ready"] == true);
    let pb = s["service"]["pid"].as_u64().expect("standby service pid") as u32;
    assert_eq!(s["service"]["role"], "standby");
    let env = environ(pb);
    assert_eq!(
        env.get("UNDERSTUDY_ROLE").map(String::as_str),
        Some("standby")
    );
    let e1 = g.epoch("a");
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1);
    // Same process, told by signal, reading its new epoch from the agent.
    assert_eq!(g.service_pid("b"), Some(pb));
    assert!(wait_until(5 * S, || read_log(&g.log)
        .iter()
        .any(|l| l.pid == pb && l.event == "active" && l.epoch == e2)));
    w.finish();
    g.expect_actives(2);
}
