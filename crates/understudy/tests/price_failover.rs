//! Hot-standby price groups made of real processes: `understudy exchange-sim`, agents in
//! trylock mode running `understudy price-server` as a hot standby, and the client library in
//! this process. Faults: kill -9 of the primary's agent (2 and 3 servers, 1000 instruments),
//! SIGSTOP of the primary's agent and of its whole node, loss of the upstream feed.
#![allow(clippy::disallowed_methods)] // a test driver may block while it polls

// The driver allows dead code itself: each user needs only part of it.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use testbed::is_mode;
use testbed::price::{Failover, GroupOptions, PriceGroup};
use understudy_pricefeed::exchange_sim::unix_ns;
use understudy_pricefeed::ClientOptions;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_understudy"))
}

fn start(servers: usize, instruments: u32, subscribe: u32) -> PriceGroup {
    PriceGroup::start(
        exe(),
        GroupOptions {
            servers,
            instruments,
            rate: 20_000,
            subscribe,
            // A silent primary is one silent for a second, not for the default 300 ms, which a
            // loaded machine reaches without any fault (failovers do not wait for it: the client
            // follows the higher epoch at once).
            client: ClientOptions {
                heartbeat_timeout: Duration::from_secs(1),
                ..ClientOptions::default()
            },
            ..GroupOptions::default()
        },
    )
    .expect("price group starts")
}

/// What every failover must give: a newer epoch, every subscription back, nothing older after
/// something newer.
fn assert_clean(g: &PriceGroup, f: &Failover) {
    let want = g.subscribed.len();
    assert!(
        f.new_epoch > f.old_epoch,
        "new epoch {} after {}",
        f.new_epoch,
        f.old_epoch
    );
    assert_eq!(
        f.symbols_back,
        want,
        "every subscription must come back at the new epoch ({f:?}; logs in {})",
        g.dir().display()
    );
    // A liveness bound, not a speed claim: prices must come back by themselves. The figure
    // (typically a few ms) is `understudy bench price-failover`'s to measure.
    assert!(
        f.stale_ms < 5000.0,
        "prices stale for {:.1} ms after the kill",
        f.stale_ms
    );
    assert_eq!(
        g.recorded(|r| r.older_after_newer),
        0,
        "an update with an older epoch reached the application after a newer one"
    );
}

#[test]
fn kill9_of_the_primary_with_two_servers() {
    let mut g = start(2, 200, 50);
    for round in 0..2 {
        let f = g.kill_active().expect("failover");
        assert_clean(&g, &f);
        assert_ne!(f.new_active, f.killed);
        if round == 0 {
            g.restart(f.killed).expect("restart the killed node");
        }
    }
    // Prices keep flowing from the last primary after everything settled.
    let n = g.recorded(|r| r.quotes);
    assert!(g.wait(Duration::from_secs(10), |r| r.quotes > n + 100));
}

#[test]
fn kill9_of_the_primary_with_three_servers() {
    let mut g = start(3, 200, 50);
    // Kill the active twice without restarting: the group shrinks 3 → 2 → 1 and the client
    // follows each new primary by itself.
    let first = g.kill_active().expect("first failover");
    assert_clean(&g, &first);
    let second = g.kill_active().expect("second failover");
    assert_clean(&g, &second);
    assert!(second.new_epoch > first.new_epoch);
    assert_ne!(second.new_active, first.killed);
    assert_ne!(second.new_active, second.killed);
}

#[test]
fn a_client_on_1000_instruments_keeps_all_1000() {
    let mut g = start(2, 1000, 1000);
    let f = g.kill_active().expect("failover");
    assert_clean(&g, &f);
    assert_eq!(f.symbols_back, 1000);
}

/// SIGSTOP of the primary's agent, then of its whole node (agent and price server).
///
/// With lock-file coordination the kernel lock belongs to the stopped agent's open file, so no
/// standby can take it: there is no takeover, whatever the length of the pause. A stopped agent
/// alone does not stop its service, so prices keep flowing. A stopped node stops publishing:
/// clients see the heartbeats stop, report the primary lost, and wait; after SIGCONT the same
/// primary resumes at the same epoch. Nothing older ever follows something newer.
#[test]
fn sigstop_of_the_primary() {
    let mut g = start(2, 200, 50);
    let active = g.active().expect("an active node");
    let standby = 1 - active;
    let epoch = g.recorded(|r| r.highest_epoch);
    let agent = g.agent_pid(active).expect("agent pid");
    let service = g.service_pid(active).expect("service pid");

    // 1. The agent alone is paused: its price server goes on publishing.
    g.signal(agent, Signal::SIGSTOP).expect("SIGSTOP agent");
    let n = g.recorded(|r| r.quotes);
    g.recorder.reset_phase();
    // An observation window, the scenario itself: longer than the client's heartbeat timeout,
    // so a server that stopped with its agent would be noticed.
    let window = Duration::from_millis(1500);
    g.sleep(window);
    let (quotes, highest, lost, gap) =
        g.recorded(|r| (r.quotes, r.highest_epoch, r.primary_lost.len(), r.max_gap));
    assert!(
        quotes > n + 1000,
        "prices stopped while only the agent was paused"
    );
    assert_eq!(highest, epoch, "no takeover while the agent is paused");
    assert_eq!(
        lost,
        0,
        "the client lost its primary: {:?}",
        g.recorded(|r| r.primary_lost.clone())
    );
    // Prices flowed throughout the window (not a latency bound: a pause of a few hundred ms is
    // the machine's load; the speed figures are `understudy bench price-failover`'s).
    assert!(gap < window / 2, "prices paused {gap:?}");
    let sv = g.status(standby).expect("standby status");
    assert!(is_mode(&sv, "Warm"), "the standby took over: {sv}");
    g.signal(agent, Signal::SIGCONT).expect("SIGCONT agent");

    // 2. The whole node is paused: prices stop, the client notices, nobody takes over.
    g.signal(agent, Signal::SIGSTOP).expect("SIGSTOP agent");
    g.signal(service, Signal::SIGSTOP).expect("SIGSTOP service");
    let lost_before = g.recorded(|r| r.primary_lost.len());
    assert!(
        g.wait(Duration::from_secs(10), |r| r.primary_lost.len()
            > lost_before),
        "the client did not notice the missing heartbeats"
    );
    let reason = g.recorded(|r| r.primary_lost.last().cloned().unwrap_or_default());
    assert!(
        reason.contains("heartbeat"),
        "lost for another reason: {reason}"
    );
    // The scenario: stay stopped well past every timeout a standby could act on.
    g.sleep(Duration::from_millis(1500));
    let sv = g.status(standby).expect("standby status");
    assert!(
        is_mode(&sv, "Warm"),
        "a standby took over while the lock holder was stopped: {sv}"
    );
    assert_eq!(g.recorded(|r| r.highest_epoch), epoch);

    // 3. SIGCONT: the same primary, the same epoch, prices again, nothing older after newer.
    let resumed_at = unix_ns();
    g.signal(service, Signal::SIGCONT).expect("SIGCONT service");
    g.signal(agent, Signal::SIGCONT).expect("SIGCONT agent");
    assert!(
        g.wait(Duration::from_secs(3), |r| r.last_exch_time_ns > resumed_at),
        "prices did not resume after SIGCONT"
    );
    assert_eq!(g.recorded(|r| r.highest_epoch), epoch);
    assert_eq!(g.recorded(|r| r.older_after_newer), 0);

    // 4. The group still fails over normally afterwards.
    let f = g.kill_active().expect("failover after the pause");
    assert_clean(&g, &f);
}

/// SIGSTOP of the primary's price server alone, with the agent's `[health] http` check on the
/// server's status endpoint: the check times out, the agent stops the server (SIGTERM, then
/// SIGKILL after `service.stop_timeout`: about 0.6 s + 1 s here), releases the lock, and the
/// standby takes over; the client follows.
/// (Without a health check the agent does not notice a stopped service: clients then see what
/// they see for a stopped node, above.)
#[test]
fn sigstop_of_the_price_server_with_a_health_check_fails_over() {
    let mut g = PriceGroup::start(
        exe(),
        GroupOptions {
            servers: 2,
            instruments: 200,
            rate: 20_000,
            subscribe: 50,
            health_check: true,
            ..GroupOptions::default()
        },
    )
    .expect("price group starts");
    let active = g.active().expect("an active node");
    // The agent shows what the standby's price server says of itself (document 001: standby,
    // live upstream connection, the same subscriptions mirrored), from its HTTP health answer.
    let standby = 1 - active;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mirrored = |v: &serde_json::Value| {
        let d = &v["service"]["detail"];
        d["role"] == "Standby"
            && d["upstream_connected"] == true
            && d["subscriptions"].as_u64().unwrap_or(0) >= g.subscribed.len() as u64
    };
    while !g.status(standby).is_some_and(|v| mirrored(&v)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby's /status never showed it mirroring: {:?}",
            g.status(standby).map(|v| v["service"]["detail"].clone())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_epoch = g.recorded(|r| r.highest_epoch);
    let service = g.service_pid(active).expect("service pid");
    let t0 = tokio::time::Instant::now();
    g.signal(service, Signal::SIGSTOP).expect("SIGSTOP service");
    assert!(
        g.wait(Duration::from_secs(5), |r| r
            .first_after(old_epoch)
            .is_some()),
        "no takeover after the price server hung ({})",
        g.log_tail(active)
    );
    let stale = g.recorded(|r| r.first_after(old_epoch)).map(|t| t - t0);
    eprintln!("price server stopped → prices from the new primary after {stale:?}");
    let want = g.subscribed.len();
    assert!(
        g.wait(Duration::from_secs(5), |r| r.symbols_after(old_epoch).len()
            == want),
        "not every subscription came back"
    );
    // The stopped server was killed by its agent (SIGKILL acts on a stopped process).
    g.signal(service, Signal::SIGCONT).ok();
    assert_eq!(g.recorded(|r| r.older_after_newer), 0);
}

/// The exchange goes away (every server, the standby included, loses its upstream) and comes
/// back: the standby reconnects by itself, and when promoted it publishes live prices from the
/// new feed.
#[test]
fn upstream_loss_and_recovery() {
    let mut g = start(2, 200, 50);
    let active = g.active().expect("an active node");
    let standby = 1 - active;
    let epoch = g.recorded(|r| r.highest_epoch);
    g.restart_exchange(Duration::from_millis(500))
        .expect("restart exchange");
    let back_at = unix_ns();
    assert!(
        g.wait(Duration::from_secs(5), |r| r.last_exch_time_ns > back_at),
        "the primary never published prices from the restarted exchange"
    );
    assert_eq!(
        g.recorded(|r| r.highest_epoch),
        epoch,
        "no failover for a feed loss"
    );

    // The standby's own log shows its upstream lost and connected again.
    let log = g.dir().join(format!("{}.out", g.name(standby)));
    let mut reconnected = false;
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("upstream lost") && text.matches("upstream connected").count() >= 2 {
            reconnected = true;
            break;
        }
        g.sleep(Duration::from_millis(100));
    }
    assert!(
        reconnected,
        "the standby never reconnected upstream (see {})",
        log.display()
    );

    // Promoted, the standby publishes live updates from the new feed, not just its snapshot.
    let f = g.kill_active().expect("failover");
    assert_clean(&g, &f);
    let after = unix_ns();
    assert!(
        g.wait(Duration::from_secs(10), |r| {
            r.updates_at.get(&f.new_epoch).copied().unwrap_or(0) > 200
                && r.last_exch_time_ns > after
        }),
        "the promoted standby has no live feed"
    );
}
