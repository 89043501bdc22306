//! `understudy exchange-sim --fix`: the exchange simulator's FIX acceptor mode answers a real
//! Logon on the wire, and its FIX-only option is refused without --fix.
#![allow(clippy::disallowed_methods)] // a test driver may block while it waits

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOH: char = '\x01';

/// A FIX message with BodyLength and CheckSum computed, from `35=…|…` body fields.
fn fix(body_fields: &[&str]) -> Vec<u8> {
    let body: String = body_fields.iter().map(|f| format!("{f}{SOH}")).collect();
    let head = format!("8=FIX.4.4{SOH}9={}{SOH}", body.len());
    let sum: u32 = head.bytes().chain(body.bytes()).map(u32::from).sum();
    format!("{head}{body}10={:03}{SOH}", sum % 256).into_bytes()
}

#[test]
fn the_fix_mode_answers_a_logon() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // The simulator's log, shown when the exchange fails (it once reset the connection in the
    // full suite, with nothing to say why).
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("sim.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let sim_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let _sim = testbed::Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args([
                "exchange-sim",
                "--fix",
                "--listen",
                &addr,
                "--sender-comp-id",
                "XCH",
            ])
            .stdout(Stdio::null())
            .stderr(log),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut s = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("exchange-sim --fix never listened on {addr}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // SendingTime must be accurate, or the acceptor refuses the Logon.
    let now = understudy_fix::time::format_utc_timestamp(std::time::SystemTime::now());
    let sending_time = format!("52={now}");
    let logon = fix(&[
        "35=A",
        "49=GW",
        "56=XCH",
        "34=1",
        &sending_time,
        "98=0",
        "108=30",
    ]);
    s.write_all(&logon).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(&format!("{SOH}10=")) {
        let n = s.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no answer to the Logon: {e}; the simulator said:\n{}",
                sim_log()
            )
        });
        assert!(n > 0, "connection closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).replace(SOH, "|");
    assert!(text.contains("|35=A|"), "not a Logon: {text}");
    assert!(text.contains("|49=XCH|"), "wrong SenderCompID: {text}");
    assert!(text.contains("|56=GW|"), "wrong TargetCompID: {text}");
}

#[test]
fn the_fix_option_needs_fix_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["exchange-sim", "--sender-comp-id", "X"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fix"));
}
