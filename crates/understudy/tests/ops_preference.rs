//! A preferred active (issue 12, item 8): `node.priority` makes the highest ready standby take
//! over, never delaying a takeover when it is not there; `activation.failback` hands activity
//! back to it by a switchover once it has been ready that long. Real agents, the overlap checker
//! and the two-Hot watcher on every test.

mod common;
mod skip;

use std::time::Duration;

use common::{q, Group};

/// A group whose nodes get `priority` from the list, in the order added.
fn group(nodes: &[(&str, u32)], failback: Option<&str>) -> Group {
    let mut g = Group::new("trylock", "hot");
    if let Some(f) = failback {
        g.set_activation("failback", &q(f));
    }
    for (name, prio) in nodes {
        g.add(name);
        // The node section is generated; the priority goes in by rewriting that node's config.
        let path = g.nodes[*name].config.clone();
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replacen("[node]\n", &format!("[node]\npriority = {prio}\n"), 1);
        std::fs::write(&path, text).expect("write config");
    }
    g
}

fn lines_of(g: &Group, node: &str, kind: &str) -> Vec<String> {
    g.events(node)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["detail"].as_str().map(str::to_string))
        .collect()
}

/// c (priority 0) active; b (0) ready, then a (10) ready: b waits for the lock before a does, so
/// the kernel hands it to b first. With the watcher of all three.
fn c_active_b_then_a_ready() -> (Group, common::Watcher) {
    let mut g = group(&[("c", 0), ("b", 0), ("a", 10)], None);
    let w = g.watch();
    g.start("c");
    g.wait_mode("c", "Hot", Duration::from_secs(10));
    g.start("b");
    g.wait_ready("b", Duration::from_secs(20));
    g.start("a");
    g.wait_ready("a", Duration::from_secs(20));
    // A kill before c's service logged its activity would hide it from the overlap checker.
    g.wait_service_active("c", g.epoch("c"));
    (g, w)
}

#[test]
fn the_preferred_standby_wins_even_when_the_lock_reaches_another_first() {
    let (mut g, w) = c_active_b_then_a_ready();
    g.kill9("c");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.stays("b", "Warm", Duration::from_millis(600));
    let given_back = lines_of(&g, "b", "lock_released");
    assert!(
        given_back
            .iter()
            .any(|d| d.contains("given back: node a (priority 10")),
        "b never obtained and gave back the lock (the kernel's order changed?): {given_back:?}"
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn no_takeover_waits_for_a_preferred_node_that_is_not_there() {
    let (mut g, w) = c_active_b_then_a_ready();
    // a is there and ready, then frozen: its record goes stale, so it is not there any more.
    g.sigstop("a");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            common::get_json(&g.admin("b"), "/group").is_some_and(|v| {
                v["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["node"] == "a" && m["fresh"] == false))
            })
        }),
        "a's record never went stale"
    );
    g.kill9("c");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    assert!(
        lines_of(&g, "b", "lock_released")
            .iter()
            .all(|d| !d.contains("preferred")),
        "b stood aside for a node that is not there: {:?}",
        lines_of(&g, "b", "lock_released")
    );
    g.sigcont("a");
    g.wait_ready("a", Duration::from_secs(20));
    assert_eq!(
        g.mode("b").as_deref(),
        Some("Hot"),
        "without failback the active stays"
    );
    w.finish();
    g.expect_actives(2);
}

#[test]
fn failback_hands_activity_back_to_the_preferred_node_once_it_is_ready() {
    let mut g = group(&[("a", 10), ("b", 0)], Some("1s"));
    let w = g.watch();
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start("b");
    g.wait_ready("b", Duration::from_secs(20));
    g.wait_service_active("a", g.epoch("a"));
    g.kill9("a");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    g.start("a");
    g.wait_ready("a", Duration::from_secs(20));
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    let switched = lines_of(&g, "b", "switchover");
    assert!(
        switched.iter().any(|d| d.contains("failback to a")),
        "{switched:?}"
    );
    // a stays: b, of lower priority, never fails back.
    g.wait_ready("b", Duration::from_secs(20));
    g.stays("a", "Hot", Duration::from_millis(1500));
    w.finish();
    g.expect_actives(3);
}
