//! Logs for a log pipeline (issue 12, item 5): with `--log-format json` the agent's lines carry
//! the node and group (a span around its work), and a takeover's line carries the same per-phase
//! figures as `GET /events`.

mod common;
mod skip;

use std::time::Duration;

use common::Group;
use serde_json::Value;

/// The agent's lines (its service, started without `--log-format`, shares the output).
fn json_lines(g: &Group, name: &str) -> Vec<Value> {
    g.output(name)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_carry_node_group_and_the_takeover_figures() {
    let mut g = Group::new("trylock", "hot");
    g.start_with("a", &["--log-format", "json"], &[]);
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start_with("b", &["--log-format", "json"], &[]);
    g.wait_ready("b", Duration::from_secs(20));
    let w = g.watch();
    g.wait_service_active("a", g.epoch("a"));
    g.kill9("a");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    let epoch = g.epoch("b");
    let takeover = |g: &Group| {
        json_lines(g, "b").into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("takeover: active service ready"))
                && l["epoch"].as_u64() == Some(epoch)
        })
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || takeover(&g).is_some()),
        "no takeover line at epoch {epoch}:\n{}",
        g.output("b")
    );
    let line = takeover(&g).expect("takeover line");
    for f in [
        "lock_obtained_ms",
        "previous_service_gone_ms",
        "epoch_durable_ms",
        "service_notified_ms",
        "ready_ms",
    ] {
        assert!(line[f].is_number(), "{f} is not a number: {line}");
    }
    assert!(
        line["cause"]
            .as_str()
            .is_some_and(|c| c.contains("previous active a")),
        "{line}"
    );
    // The figures are the ones /events reports.
    let ev = g.events("b");
    let t = ev["takeovers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["epoch"].as_u64() == Some(epoch)))
        .cloned()
        .expect("takeover in /events");
    assert_eq!(t["epoch_durable_ms"], line["epoch_durable_ms"]);
    assert_eq!(t["service_notified_ms"], line["service_notified_ms"]);
    // Every line the agent's event loop and admin API write names the node and the group.
    let lines = json_lines(&g, "b");
    let in_span: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "node")
        .collect();
    assert!(
        in_span.len() * 10 >= lines.len() * 8,
        "most lines should be in the node span: {} of {}",
        in_span.len(),
        lines.len()
    );
    for l in &in_span {
        assert_eq!(l["span"]["node"], "b", "{l}");
        assert_eq!(l["span"]["group"], "g", "{l}");
    }
    for m in ["agent starting", "takeover: active service ready"] {
        assert!(
            in_span
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|s| s.starts_with(m))),
            "no {m:?} line in the node span"
        );
    }
    w.finish();
    g.expect_actives(2);
}
