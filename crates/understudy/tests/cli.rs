//! The CLI and the observability endpoints against a real group: `understudy status`, /metrics,
//! /events after a failover.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use understudy_status::EventKind;

const S: Duration = Duration::from_secs(1);

/// Two nodes, trylock, hot standby: a active, b ready.
fn a_active_b_ready() -> Group {
    let mut g = Group::new("trylock", "hot");
    g.add("a");
    g.add("b");
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    g
}

#[test]
fn status_shows_the_whole_group_and_which_node_is_active() {
    let g = a_active_b_ready();
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
    // The overlap checker below must see a's activity before the kill ends it.
    g.wait_service_active("a", g.epoch("a"));
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

    // The typed answer every reader parses is the agent's JSON, field for field: parsed and
    // written back, a real agent's answer comes out unchanged, and `events --json` prints it.
    let typed: understudy_status::Events =
        serde_json::from_value(ev.clone()).unwrap_or_else(|e| panic!("{e}: {ev}"));
    assert_eq!(serde_json::to_value(&typed).unwrap(), ev);
    assert!(
        typed.events.iter().all(|e| e.kind != EventKind::Unknown),
        "{ev}"
    );
    let (code, out, err) = run_cli(&["events", "--agent", &g.admin("b"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let printed: understudy_status::Events =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    // Read later: phases may have been added since, the detection stays.
    assert_eq!(
        printed.takeover(Some(e)).map(|t| t.detected_unix_ms),
        typed.takeover(Some(e)).map(|t| t.detected_unix_ms)
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

/// A valid configuration in `dir`, returned as its path.
fn good_config(dir: &std::path::Path) -> String {
    let file = dir.join("a.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nname = \"a\"\ngroup = \"g\"\nadmin = \"127.0.0.1:7701\"\n\n\
             [activation]\nmode = \"TryLock\"\nlock_file = \"{}\"\n\n\
             [service]\ncommand = [\"sleep\", \"1000\"]\nstandby = \"warm\"\n",
            dir.join("g.lock").display()
        ),
    )
    .unwrap();
    file.display().to_string()
}

#[test]
fn check_config_takes_config_like_agent_and_still_the_bare_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = good_config(dir.path());
    for args in [
        vec!["check-config", "--config", &file],
        vec!["check-config", "-c", &file],
        vec!["check-config", &file],
    ] {
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 0, "{args:?}: {out} {err}");
        assert!(
            out.contains("ok — node a of group g, TryLock mode, warm standby"),
            "{args:?}: {out}"
        );
    }
    let (code, out, err) = run_cli(&["check-config", "--config", &file, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["node"], "a", "{v}");
    assert_eq!(v["mode"], "TryLock", "{v}");
    assert_eq!(v["standby"], "warm", "{v}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nname = \"a\"\n").unwrap();
    let bad = bad.display().to_string();
    let (code, _, err) = run_cli(&["check-config", "--config", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("configuration error"), "{err}");
    let (code, out, _) = run_cli(&["check-config", "--config", &bad, "--json"]);
    assert_eq!(code, 2);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("bad.toml")),
        "{v}"
    );

    // No file at all, or two: clap refuses (usage error, exit 2) and says what to give.
    let (code, _, err) = run_cli(&["check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
    let (code, _, _) = run_cli(&["check-config", "--config", &file, &file]);
    assert_eq!(code, 2);
}

#[test]
fn every_command_that_asks_an_agent_has_the_same_agent_flag_and_default() {
    for cmd in ["status", "activate", "switchover", "events", "top"] {
        let (code, out, err) = run_cli(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd}: {err}");
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("--agent <ADDR>"))
            .unwrap_or_else(|| panic!("{cmd} has no --agent <ADDR>: {out}"));
        assert!(
            out.contains("[default: 127.0.0.1:7701]"),
            "{cmd}: {line}\n{out}"
        );
        assert!(out.contains("--token-file <FILE>"), "{cmd}: {out}");
        if cmd != "top" {
            assert!(out.contains("--json"), "{cmd}: {out}");
        }
    }
    // Without --agent, a read goes to the default address: either an agent answers there (and
    // says it is that node) or the error names the address.
    let (code, out, err) = run_cli(&["status", "--json"]);
    if code == 0 {
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"]["admin"], "127.0.0.1:7701", "{v}");
    } else {
        assert!(err.contains("127.0.0.1:7701"), "{err}");
    }
}

#[test]
fn enum_values_are_checked_by_the_parser() {
    for (args, bad, valid) in [
        (
            vec![
                "ctl",
                "add-failover",
                "px",
                "--standby",
                "lukewarm",
                "--standby-host",
                "local",
            ],
            "lukewarm",
            "hot, warm, cold",
        ),
        (
            vec![
                "ctl",
                "add-failover",
                "px",
                "--standby",
                "hot",
                "--standby-host",
                "local",
                "--mode",
                "trylocks",
            ],
            "trylocks",
            "trylock, tryheartbeat, warm",
        ),
        (vec!["--log-format", "xml", "status"], "xml", "text, json"),
        (vec!["completions", "tcsh"], "tcsh", "bash"),
    ] {
        let (code, _, err) = run_cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(&format!("invalid value '{bad}'")) && err.contains(valid),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn activate_and_switchover_print_json_with_the_agents_fields() {
    let g = a_active_b_ready();
    let e = g.epoch("a");
    let (code, out, err) = run_cli(&["switchover", "--agent", &g.admin("a"), "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("a"), Some("b")),
        "{v}"
    );
    assert!(v["epoch"].as_u64().is_some_and(|n| n > e), "{v}");
    assert!(v["took_ms"].is_number(), "{v}");
    // a is a standby now, b holds the lock: activating a is refused, naming the holder.
    g.wait_ready("a", 5 * S);
    let (code, _, err) = run_cli(&["activate", "--agent", &g.admin("a"), "--json"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("activation refused") && err.contains("holder: b"),
        "{err}"
    );
    // b is already Hot: activating it answers at once with its epoch.
    let (code, out, err) = run_cli(&["activate", "--agent", &g.admin("b"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (v["mode"].as_str(), v["name"].as_str()),
        (Some("Hot"), Some("TryLock")),
        "{v}"
    );
    assert_eq!(v["epoch"].as_u64(), Some(g.epoch("b")), "{v}");
}
