//! What the replication tests share: addresses, a configuration, waiting on a condition.
#![allow(dead_code)] // each test file uses a different subset

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use understudy_fix::replica::{Mode, ReplicationConfig};

/// A loopback address nobody listens on now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("addr")
}

/// Short timeouts, so the tests run in well under a second each.
pub fn cfg(mode: Mode, listen: SocketAddr, peers: Vec<SocketAddr>) -> ReplicationConfig {
    ReplicationConfig {
        mode,
        listen,
        peers,
        token: b"t0ken".to_vec(),
        sync_timeout: Duration::from_millis(800),
        timeout: Duration::from_millis(400),
        heartbeat: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(200),
        reconnect_interval: Duration::from_millis(20),
    }
}

/// Polls `f` every 5 ms; panics after `timeout`.
#[allow(clippy::disallowed_methods)] // a test driver polling with a deadline
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
