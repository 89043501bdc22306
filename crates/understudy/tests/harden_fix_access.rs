//! Who may log on to the FIX gateway, beyond a configured CompID pair: a client's Logon with
//! ResetSeqNumFlag=Y (which would throw away the sequence numbers a failover keeps) is refused
//! with a Logout saying so unless the client is configured with `allow_reset`, and a client
//! with `allowed_ips` is closed unanswered from any other address (the reason in the gateway's
//! log). The gateway runs as
//! a real process; the probes are raw Logons over real sockets.
#![allow(clippy::disallowed_methods)] // a test driver blocks while it waits

mod fix_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fix_common::{addr, gateway_config, start_sim, wait_port, Proc, EXE};

const SOH: char = '\x01';

/// A FIX 4.4 Logon from `sender` to GW, with ResetSeqNumFlag=Y when `reset`.
fn logon(sender: &str, reset: bool) -> Vec<u8> {
    let now = understudy_fix::time::format_utc_timestamp(SystemTime::now());
    let mut body =
        format!("35=A{SOH}49={sender}{SOH}56=GW{SOH}34=1{SOH}52={now}{SOH}98=0{SOH}108=30{SOH}");
    if reset {
        body.push_str(&format!("141=Y{SOH}"));
    }
    let head = format!("8=FIX.4.4{SOH}9={}{SOH}", body.len());
    let sum: u32 = head.bytes().chain(body.bytes()).map(u32::from).sum();
    format!("{head}{body}10={:03}{SOH}", sum % 256).into_bytes()
}

/// Send a Logon and read what comes back for up to 3 s: (text, connection closed).
fn probe(gw: SocketAddr, sender: &str, reset: bool) -> (String, bool) {
    let mut s = TcpStream::connect(gw).expect("connect");
    s.write_all(&logon(sender, reset)).expect("send");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // A Logon answer: the session is up, nothing more to wait for.
                if String::from_utf8_lossy(&got).contains(&format!("{SOH}35=A{SOH}")) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

fn logout(got: &str) -> bool {
    got.contains(&format!("{SOH}35=5{SOH}"))
}

fn logged_on(got: &str) -> bool {
    got.contains(&format!("{SOH}35=A{SOH}"))
}

/// A free loopback port.
fn free_port() -> std::io::Result<u16> {
    Ok(testbed::free_addrs(1)?[0].port())
}

#[test]
fn reset_and_source_address_are_checked_per_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, sim) = start_sim(dir.path());
    let gw = addr(free_port().expect("port"));
    let extra = r#"
[[client]]
comp_id = "RESETTER"
allow_reset = true

[[client]]
comp_id = "FARAWAY"
allowed_ips = ["10.9.0.0/16", "192.0.2.7"]

[[client]]
comp_id = "LOCAL"
allowed_ips = ["127.0.0.0/8", "::1"]
"#;
    let cfg = gateway_config(dir.path(), "gw", gw, &dir.path().join("store"), sim, extra);
    let log = std::fs::File::create(dir.path().join("gw.log")).expect("log");
    // Stand-alone (no agent environment): active at epoch 0.
    let child = Command::new(EXE)
        .args(["fix-gateway", "--config"])
        .arg(&cfg)
        .env_remove("UNDERSTUDY_ROLE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start fix-gateway");
    let _gw = Proc(child);
    assert!(
        wait_port(gw, Duration::from_secs(10)),
        "the gateway did not listen: {}",
        std::fs::read_to_string(dir.path().join("gw.log")).unwrap_or_default()
    );

    let (got, closed) = probe(gw, "CLIENT1", true);
    assert!(
        logout(&got) && got.contains("ResetSeqNumFlag") && closed && !logged_on(&got),
        "a reset from a client without allow_reset must get a Logout naming it: {got:?}"
    );
    let (got, _) = probe(gw, "CLIENT1", false);
    assert!(logged_on(&got), "CLIENT1 without a reset: {got:?}");

    let (got, _) = probe(gw, "RESETTER", true);
    assert!(
        logged_on(&got),
        "a reset allowed by allow_reset was refused: {got:?}"
    );

    // Closed unanswered: QuickFIX would count a Logout (one message more expected from us
    // once the address is allowed).
    let (got, closed) = probe(gw, "FARAWAY", false);
    assert!(
        got.is_empty() && closed,
        "a client outside its allowed_ips must be closed with nothing sent: {got:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("gw.log")).unwrap_or_default();
    assert!(
        log.contains("session FARAWAY may not log on from 127.0.0.1"),
        "the gateway did not log why it refused FARAWAY: {log}"
    );
    let (got, _) = probe(gw, "LOCAL", false);
    assert!(
        logged_on(&got),
        "a client inside its allowed_ips was refused: {got:?}"
    );
}

#[test]
fn a_bad_allowed_ips_entry_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = addr(free_port().expect("port"));
    let sim = addr(free_port().expect("port"));
    for bad in ["10.0.0.0/33", "example.com", "10.0.0.1/", "::1/129"] {
        let extra = format!("\n[[client]]\ncomp_id = \"X\"\nallowed_ips = [\"{bad}\"]\n");
        let cfg = gateway_config(dir.path(), "gw", gw, &dir.path().join("store"), sim, &extra);
        let err = understudy_fix::gateway::GatewayConfig::load(&cfg)
            .expect_err(&format!("{bad} was accepted"));
        assert_eq!(err.key, "client[1].allowed_ips", "{err}");
        assert!(err.reason.contains(bad), "{err}");
    }
}
