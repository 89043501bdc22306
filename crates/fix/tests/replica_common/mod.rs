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

/// A standby by hand, its half of the handshake on `s`: takes the active's hello, proves
/// `token` in its challenge, and checks the active's proof. Returns the hello's epoch.
pub fn standby_handshake(s: &mut std::net::TcpStream, token: &[u8]) -> u64 {
    use understudy_fix::replica::auth::{self, Side};
    use understudy_fix::replica::proto::{read_frame, Frame};
    let mut buf = Vec::new();
    let (epoch, nonce) = match read_frame(s, &mut buf).expect("hello") {
        Frame::Hello { epoch, nonce, .. } => (epoch, nonce),
        other => panic!("not a hello: {other:?}"),
    };
    let theirs: [u8; auth::NONCE_LEN] = nonce.as_slice().try_into().expect("a nonce's length");
    let ours = auth::nonce().expect("nonce");
    Frame::Challenge {
        nonce: ours,
        mac: auth::prove(token, Side::Standby, epoch, &theirs, &ours),
    }
    .write_to(s, &mut Vec::new())
    .expect("challenge");
    match read_frame(s, &mut buf).expect("proof") {
        Frame::Proof { mac } => assert!(
            auth::verify(token, Side::Active, epoch, &theirs, &ours, &mac),
            "the active's proof does not hold"
        ),
        other => panic!("not a proof: {other:?}"),
    }
    epoch
}

/// An active by hand, its half of the handshake on `s`: the hello of `epoch`, then its proof
/// made with `token` whatever the standby's challenge proved. Returns whether the challenge
/// proved `token`.
pub fn active_handshake(s: &mut std::net::TcpStream, epoch: u64, token: &[u8]) -> bool {
    use understudy_fix::replica::auth::{self, Side};
    use understudy_fix::replica::proto::{read_frame, Frame, VERSION};
    let ours = auth::nonce().expect("nonce");
    Frame::Hello {
        version: VERSION,
        epoch,
        nonce: ours.to_vec(),
    }
    .write_to(s, &mut Vec::new())
    .expect("hello");
    let (theirs, mac) = match read_frame(s, &mut Vec::new()).expect("challenge") {
        Frame::Challenge { nonce, mac } => (nonce, mac),
        other => panic!("not a challenge: {other:?}"),
    };
    Frame::Proof {
        mac: auth::prove(token, Side::Active, epoch, &ours, &theirs),
    }
    .write_to(s, &mut Vec::new())
    .expect("proof");
    auth::verify(token, Side::Standby, epoch, &ours, &theirs, &mac)
}
