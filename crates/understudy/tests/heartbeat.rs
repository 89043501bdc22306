//! TryHeartbeat with real agents: a fresh heartbeat lets a standby take over by itself; no, a
//! stale or unreadable one leaves the decision to an operator.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::time::Duration;

use common::*;

const S: Duration = Duration::from_secs(1);

/// A tryheartbeat group (heartbeat_delay 1s) with `a` and `b` added and watched.
fn tryheartbeat_pair(standby: &str) -> (Group, Watcher) {
    let mut g = Group::new("tryheartbeat", standby);
    g.set_activation("heartbeat_delay", &q("1s"));
    let w = g.add_watched_pair();
    (g, w)
}

/// `a`, started alone on `g`'s lock file, holds the lock but stays Warm for `stay`, waiting for
/// an operator because of what it sees (`seen`) in the heartbeat (its waiting text holds all of `words`);
/// the operator's PUT hot then makes it Hot with an epoch above `prev`, which is returned.
fn a_waits_for_the_operator(
    g: &mut Group,
    seen: &str,
    words: &[&str],
    stay: Duration,
    prev: u64,
) -> u64 {
    g.start("a");
    g.wait_status("a", seen, 5 * S, |s| s["holds_lock"] == true);
    let why = g.waiting("a");
    assert!(
        words.iter().all(|w| why.contains(w)),
        "waiting text: {why:?}"
    );
    g.stays("a", "Warm", stay);
    g.put_hot_ok("a");
    let e = g.epoch("a");
    assert!(e > prev, "{e} > {prev}");
    g.wait_service_active("a", e);
    e
}

#[test]
fn tryheartbeat_fresh_stale_and_garbage() {
    let (mut g, w) = tryheartbeat_pair("cold");

    // Alone, with no heartbeat ever written: Warm, holding the lock, and /status says why.
    g.start("a");
    g.wait_status("a", "waiting for an operator", 5 * S, |s| {
        s["holds_lock"] == true && s["mode"] == "Warm"
    });
    let why = g.waiting("a");
    assert!(why.contains("heartbeat"), "waiting text: {why:?}");
    g.stays("a", "Warm", Duration::from_millis(400));
    assert!(
        g.service_pid("a").is_none(),
        "a cold standby service runs while Warm"
    );
    // A second node cannot be activated by hand while a holds the lock.
    g.start("b");
    g.put_hot_refused("b", "a");
    // The operator decides.
    let body = g.put_hot_ok("a");
    assert_eq!(body["mode"], "Hot", "{body}");
    g.wait_mode("a", "Hot", S);
    let e1 = g.epoch("a");
    assert_eq!(body["epoch"].as_u64(), Some(e1));
    g.wait_service_active("a", e1);

    // Live failover: the heartbeat is fresh, b goes Hot by itself.
    g.wait_heartbeat("a", e1, 5 * S);
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
    sleep_ms(1300); // the scenario: down for longer than heartbeat_delay (1 s)
    let e3 = a_waits_for_the_operator(
        &mut g,
        "stale heartbeat seen",
        &["heartbeat", "old"],
        Duration::from_millis(500),
        e2,
    );
    g.assert_events("a", &["heartbeat_stale"]);

    // A lock file full of garbage: Warm until an operator says otherwise.
    g.kill9("a");
    std::fs::write(&g.lock, b"\x00\xffnot a heartbeat at all\n").unwrap();
    let e4 = a_waits_for_the_operator(
        &mut g,
        "garbage heartbeat seen",
        &["heartbeat"],
        Duration::from_millis(400),
        e3,
    );

    // And a live failover after that works by itself again.
    g.start("b");
    g.wait_mode("b", "Warm", S);
    g.wait_heartbeat("a", e4, 5 * S);
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
    let (mut g, w) = tryheartbeat_pair("hot");
    g.start("a");
    g.wait_status("a", "holding the lock", 5 * S, |s| s["holds_lock"] == true);
    g.put_hot_ok("a");
    g.start("b");
    g.wait_ready("b", 5 * S);
    let e = g.epoch("a");
    assert_eq!(g.sigterm("a", 10 * S).code(), Some(0));
    g.wait_mode("b", "Hot", 5 * S);
    assert!(g.epoch("b") > e);
    w.finish();
    g.expect_actives(2);
}
