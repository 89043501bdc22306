//! TryHeartbeat with real agents: a fresh heartbeat lets a standby take over by itself; no, a
//! stale or unreadable one leaves the decision to an operator.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::{Duration, Instant};

use common::*;

const S: Duration = Duration::from_secs(1);

fn waiting(g: &Group, name: &str) -> String {
    g.st(name)["waiting"].as_str().unwrap_or("").to_string()
}

/// Stays Warm (never answers Hot) for `d`.
fn stays_warm(g: &Group, name: &str, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        let m = g.mode(name);
        assert_eq!(
            m.as_deref(),
            Some("Warm"),
            "{name} left Warm by itself: {:?}",
            g.status(name)
        );
        sleep_ms(20);
    }
}

#[test]
fn tryheartbeat_fresh_stale_and_garbage() {
    let mut g = Group::new("tryheartbeat", "cold");
    g.set_activation("heartbeat_delay", &q("1s"));
    g.add("a");
    g.add("b");
    let w = g.watch();

    // Alone, with no heartbeat ever written: Warm, holding the lock, and /status says why.
    g.start("a");
    g.wait_status("a", "waiting for an operator", 5 * S, |s| {
        s["holds_lock"] == true && s["mode"] == "Warm"
    });
    let why = waiting(&g, "a");
    assert!(why.contains("heartbeat"), "waiting text: {why:?}");
    stays_warm(&g, "a", Duration::from_millis(400));
    assert!(
        g.service_pid("a").is_none(),
        "a cold standby service runs while Warm"
    );
    // A second node cannot be activated by hand while a holds the lock.
    g.start("b");
    let (code, body) = put(&g.admin("b"), "/service/activationmode/hot");
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["holder"], "a", "{body}");
    // The operator decides.
    let (code, body) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["mode"], "Hot", "{body}");
    g.wait_mode("a", "Hot", S);
    let e1 = g.epoch("a");
    assert_eq!(body["epoch"].as_u64(), Some(e1));
    g.wait_service_active("a", e1);

    // Live failover: the heartbeat is fresh, b goes Hot by itself.
    sleep_ms(300); // a few heartbeats
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    let e2 = g.epoch("b");
    assert!(e2 > e1, "{e2} > {e1}");
    g.wait_service_active("b", e2);
    let kinds = g.event_kinds("b");
    assert!(!kinds.iter().any(|k| k == "heartbeat_stale"), "{kinds:?}");

    // An outage longer than heartbeat_delay: whoever comes first waits for an operator.
    g.start("a");
    g.wait_mode("a", "Warm", S);
    g.kill9("a");
    g.kill9("b");
    sleep_ms(1300);
    g.start("a");
    g.wait_status("a", "stale heartbeat seen", 5 * S, |s| {
        s["holds_lock"] == true
    });
    let why = waiting(&g, "a");
    assert!(
        why.contains("heartbeat") && why.contains("old"),
        "waiting text: {why:?}"
    );
    stays_warm(&g, "a", Duration::from_millis(500));
    assert!(g.event_kinds("a").iter().any(|k| k == "heartbeat_stale"));
    let (code, body) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_eq!(code, 200, "{body}");
    let e3 = g.epoch("a");
    assert!(e3 > e2, "{e3} > {e2}");
    g.wait_service_active("a", e3);

    // A lock file full of garbage: Warm until an operator says otherwise.
    g.kill9("a");
    std::fs::write(&g.lock, b"\x00\xffnot a heartbeat at all\n").unwrap();
    g.start("a");
    g.wait_status("a", "garbage heartbeat seen", 5 * S, |s| {
        s["holds_lock"] == true
    });
    let why = waiting(&g, "a");
    assert!(why.contains("heartbeat"), "waiting text: {why:?}");
    stays_warm(&g, "a", Duration::from_millis(400));
    let (code, body) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_eq!(code, 200, "{body}");
    let e4 = g.epoch("a");
    assert!(e4 > e3, "{e4} > {e3}");
    g.wait_service_active("a", e4);

    // And a live failover after that works by itself again.
    g.start("b");
    g.wait_mode("b", "Warm", S);
    sleep_ms(300);
    g.kill9("a");
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e4);

    w.finish();
    g.expect_actives(5);
}

#[test]
fn tryheartbeat_sigterm_hands_over_without_an_operator() {
    // A graceful stop can take longer than heartbeat_delay; the departing active writes a last
    // heartbeat when it releases, so the standby still goes Hot by itself.
    let mut g = Group::new("tryheartbeat", "hot");
    g.set_activation("heartbeat_delay", &q("1s"));
    g.add("a");
    g.add("b");
    let w = g.watch();
    g.start("a");
    g.wait_status("a", "holding the lock", 5 * S, |s| s["holds_lock"] == true);
    let (code, _) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_eq!(code, 200);
    g.start("b");
    g.wait_status("b", "ready", 5 * S, |s| s["ready"] == true);
    let e = g.epoch("a");
    assert_eq!(g.sigterm("a", 10 * S).code(), Some(0));
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e);
    w.finish();
    g.expect_actives(2);
}
