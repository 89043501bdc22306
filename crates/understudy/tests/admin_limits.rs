//! The admin API cannot be used to exhaust a node: an agent started with a 200-descriptor
//! limit is flooded with 300 idle, half-sent requests; it refuses what it cannot hold, closes
//! the slow ones at the header timeout, and its service — whose health check needs descriptors
//! of its own — keeps running without a failover.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn a_flood_of_idle_requests_does_not_fail_the_service_over() {
    let mut g = Group::new("trylock", "cold");
    // A health check that spawns a process: it needs descriptors (pipes) every 100 ms, so an
    // agent out of descriptors fails it and gives activity away.
    g.tail = "[health]\ncommand = [\"true\"]\ninterval = \"100ms\"\ntimeout = \"1s\"\nfailures = 2\nstart_period = \"100ms\"\n".into();
    let w = g.add_watched_pair();
    for name in ["a", "b"] {
        let cfg = g.nodes[name].config.clone();
        let text = std::fs::read_to_string(&cfg).expect("config");
        let admin = format!("admin = {}\n", q(&g.admin(name)));
        let text = text.replacen(
            &admin,
            &format!("{admin}admin_header_timeout = \"2s\"\n"),
            1,
        );
        std::fs::write(&cfg, text).expect("config");
    }
    // `a` runs with RLIMIT_NOFILE 200, as in the probe that found the bug.
    let node = &g.nodes["a"];
    let out = std::fs::File::create(&node.out).expect("out");
    let child = Command::new("prlimit")
        .arg("--nofile=200:200")
        .arg(BIN)
        .args(["agent", "--config", &node.config.display().to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("prlimit (util-linux) runs the agent");
    g.nodes.get_mut("a").expect("a").child = Some(child);
    g.wait_mode("a", "Hot", 10 * S);
    g.start("b");
    g.wait_ready("b", 10 * S);
    let a = g.admin("a");
    let epoch = g.epoch("a");
    assert!(
        wait_until(5 * S, || g.service_pid("a").is_some()),
        "a's service never started"
    );
    let service = g.service_pid("a").expect("a's service runs");
    let agent = g.agent_pid("a");
    let rss_before = rss_kib(agent);

    // 300 connections, each with half a request and then silence.
    let mut held = Vec::new();
    let mut refused_503 = 0;
    for _ in 0..300 {
        let Ok(mut s) = TcpStream::connect(&a) else {
            continue;
        };
        let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
    }
    // Hold them past several health-check failure windows and the header timeout.
    let t0 = Instant::now();
    while t0.elapsed() < 4 * S {
        assert_eq!(
            g.mode("b").as_deref(),
            Some("Warm"),
            "b took over during the flood"
        );
        assert!(alive(service), "a's service died during the flood");
        sleep_ms(100);
    }
    // Every held connection was answered 503 at once or closed at the header timeout (one
    // accepted late, when an earlier one was closed, has its own timeout: allow a few).
    let mut closed = 0;
    let deadline = Instant::now() + 8 * S;
    for s in &mut held {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).expect("timeout");
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {
                closed += 1;
                if String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 503") {
                    refused_503 += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
    }
    drop(held);
    assert_eq!(
        closed, 300,
        "idle connections still held by the agent after 8 s"
    );

    // The node is intact: still Hot with the same epoch and service, its API answers again.
    assert!(wait_until(5 * S, || get_json(&a, "/healthz").is_some()));
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    assert_eq!(g.epoch("a"), epoch, "activity moved during the flood");
    assert_eq!(g.service_pid("a"), Some(service));
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
    let refused = metric(&a, "understudy_admin_connections_refused_total");
    assert!(refused > 0, "no connection was refused at the limit");
    assert!(
        refused >= refused_503,
        "{refused_503} answered 503, {refused} counted"
    );
    assert!(metric(&a, "understudy_admin_slow_clients_dropped_total") > 0);
    let rss_after = rss_kib(agent);
    assert!(
        rss_after < rss_before + 20 * 1024,
        "the agent grew from {rss_before} KiB to {rss_after} KiB"
    );
    w.finish();
}
