//! The CLI and the observability endpoints against a real group: `understudy status`, /metrics,
//! /events after a failover.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const S: Duration = Duration::from_secs(1);

#[test]
fn status_shows_the_whole_group_and_which_node_is_active() {
    let mut g = Group::new("trylock", "hot");
    g.add("a");
    g.add("b");
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    let e = g.epoch("a");
    // Both nodes' records are fresh once b has advertised itself.
    for asked in ["a", "b"] {
        let ok = wait_until(5 * S, || {
            let (code, out, _) = run_cli(&["status", "--agent", &g.admin(asked)]);
            code == 0 && out.contains("active a") && out.lines().any(|l| l.starts_with("b "))
        });
        let (code, out, err) = run_cli(&["status", "--agent", &g.admin(asked)]);
        assert!(ok, "status via {asked}: exit {code}\n{out}\n{err}");
        assert!(out.contains(&format!("epoch {e}")), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("a ") && l.contains("Hot")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("b ") && l.contains("Warm")),
            "{out}"
        );
    }
    let (code, out, err) = run_cli(&["status", "--agent", &g.admin("b"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out}"));
    assert_eq!(v["status"]["node"], "b", "{v}");
    assert_eq!(v["status"]["mode"], "Warm", "{v}");
    let members = v["group"]["members"].as_array().expect("members");
    let hot: Vec<&str> = members
        .iter()
        .filter(|m| m["mode"] == "Hot")
        .filter_map(|m| m["node"].as_str())
        .collect();
    assert_eq!(hot, vec!["a"], "{v}");
    assert_eq!(members.len(), 2, "{v}");

    // An agent that is not there: a clear error, not a hang.
    let (code, _, err) = run_cli(&["status", "--agent", &free_addr()]);
    assert_ne!(code, 0);
    assert!(!err.is_empty());
}

#[test]
fn metrics_and_events_describe_a_failover() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e = g.epoch("b");
    let ok = wait_until(5 * S, || {
        g.events("b")["takeovers"].as_array().is_some_and(|t| {
            t.last()
                .is_some_and(|t| t["service_notified_ms"].is_number())
        })
    });
    let ev = g.events("b");
    assert!(ok, "no complete takeover in {ev}");
    let t = ev["takeovers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(t["epoch"].as_u64(), Some(e), "{t}");
    let durable = t["epoch_durable_ms"].as_f64().expect("epoch_durable_ms");
    let notified = t["service_notified_ms"]
        .as_f64()
        .expect("service_notified_ms");
    assert!(durable >= 0.0 && notified >= durable, "{t}");
    g.assert_events(
        "b",
        &[
            "agent_started",
            "lock_obtained",
            "epoch_durable",
            "service_notified",
        ],
    );

    let (code, m) = http("GET", &g.admin("b"), "/metrics", S).unwrap();
    assert_eq!(code, 200);
    let metric = |name: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(metric("understudy_hot"), Some(1.0), "{m}");
    assert_eq!(metric("understudy_epoch"), Some(e as f64), "{m}");
    assert_eq!(
        metric("understudy_takeover_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("understudy_takeover_seconds_bucket"), "{m}");

    let (code, body) = http("GET", &g.admin("b"), "/healthz", S).unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, out, err) = run_cli(&["events", "--agent", &g.admin("b")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("epoch {e:>4}")), "{out}");
    w.finish();
    g.expect_actives(2);
}
