//! systemd's notification protocol, spoken by the agent (issue 12, item 3): READY=1 once the
//! admin API answers and the node has joined, STATUS= with its state, WATCHDOG=1 from the event
//! loop (none while the loop cannot run), STOPPING=1 at SIGTERM; the service never inherits the
//! socket. Checked against a datagram socket the test owns, like systemd's.

mod common;
mod skip;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{signal, Group};
use nix::sys::signal::Signal;

/// Every notification received within `d`, with the time it arrived.
fn drain(sock: &UnixDatagram, d: Duration) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let end = Instant::now() + d;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_agent_notifies_ready_watchdog_status_and_stopping() {
    let mut g = Group::new("trylock", "hot");
    let sock_path = g.path.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let admin = g.add("a");
    // WATCHDOG_USEC 400 ms: the agent pings every 200 ms.
    let socket = sock_path.display().to_string();
    g.launch(
        "a",
        &[],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );
    let pid = g.agent_pid("a");

    // READY=1 arrives, and at that moment the admin API answers.
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no READY=1 within 10 s; got {seen:?}\n{}",
            g.output("a")
        );
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.lines().any(|l| l == "READY=1") {
            let st = common::get_json(&admin, "/status");
            assert!(
                st.is_some(),
                "READY=1 was sent but the admin API does not answer"
            );
            assert_ne!(
                st.as_ref().and_then(|s| s["waiting"].as_str()),
                Some("starting"),
                "READY=1 before the node joined its group: {st:?}"
            );
            break;
        }
        seen.push(msg);
    }
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    let mut received = seen;

    // The watchdog pings keep coming.
    let msgs = drain(&sock, Duration::from_millis(1500));
    let pings = msgs.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(
        (4..=12).contains(&pings),
        "expected a WATCHDOG=1 about every 200 ms over 1.5 s, got {pings}: {msgs:?}"
    );
    received.extend(msgs.into_iter().map(|(_, m)| m));
    let epoch = g.epoch("a");

    // The service does not inherit the socket: it could otherwise notify in the agent's name.
    let svc = g.service_pid("a").expect("service pid");
    let env = common::environ(svc);
    for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains_key(v), "the service inherited {v}");
    }

    // A loop that cannot run sends no ping: SIGSTOP for 1 s (systemd would restart it).
    signal(pid, Signal::SIGSTOP);
    // A ping already in flight when the signal landed may still arrive.
    received.extend(
        drain(&sock, Duration::from_millis(50))
            .into_iter()
            .map(|(_, m)| m),
    );
    let frozen = drain(&sock, Duration::from_secs(1));
    signal(pid, Signal::SIGCONT);
    assert!(
        frozen.iter().all(|(_, m)| m != "WATCHDOG=1"),
        "WATCHDOG=1 while the agent was stopped: {frozen:?}"
    );
    let back = drain(&sock, Duration::from_millis(800));
    assert!(
        back.iter().any(|(_, m)| m == "WATCHDOG=1"),
        "no WATCHDOG=1 after SIGCONT: {back:?}"
    );
    received.extend(frozen.into_iter().chain(back).map(|(_, m)| m));

    // SIGTERM: STOPPING=1 at once, then the graceful stop, exit 0.
    signal(pid, Signal::SIGTERM);
    let end = drain(&sock, Duration::from_millis(1500));
    assert!(
        end.iter().any(|(_, m)| m == "STOPPING=1"),
        "no STOPPING=1 after SIGTERM: {end:?}"
    );
    received.extend(end.into_iter().map(|(_, m)| m));
    // STATUS= lines for `systemctl status`: the state with its epoch, then the stop.
    let statuses: Vec<&String> = received
        .iter()
        .filter(|m| m.starts_with("STATUS="))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with(&format!("STATUS=Hot epoch {epoch}"))),
        "no STATUS= line saying Hot at epoch {epoch}: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.contains("stepping down")),
        "no STATUS= line for the stop: {statuses:?}"
    );
    let mut c = g
        .nodes
        .get_mut("a")
        .and_then(|n| n.child.take())
        .expect("child");
    let st = common::exit_within(&mut c, Duration::from_secs(20), || {
        format!("the agent did not exit after SIGTERM:\n{}", g.output("a"))
    });
    assert!(st.success(), "exit status {st}");
    g.check_log();
}
