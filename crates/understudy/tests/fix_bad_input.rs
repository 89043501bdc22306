//! What an outsider can send to a FIX acceptor over a real socket must not crash it or make it
//! hold resources: `fix-exchange-sim` (the engine every acceptor uses) is started as a process
//! and probed the way the hardening issue found the bugs.
#![allow(clippy::disallowed_methods)] // a test driver blocks while it waits

mod fix_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use fix_common::{start_sim, Proc};
use testbed::rss_kib;

const SOH: char = '\x01';

/// A FIX 4.4 message with BodyLength and CheckSum computed, from `tag=value` body fields.
fn fix(fields: &[String]) -> Vec<u8> {
    let body: String = fields.iter().map(|f| format!("{f}{SOH}")).collect();
    let head = format!("8=FIX.4.4{SOH}9={}{SOH}", body.len());
    let sum: u32 = head.bytes().chain(body.bytes()).map(u32::from).sum();
    format!("{head}{body}10={:03}{SOH}", sum % 256).into_bytes()
}

fn logon(sender: &str, heart_bt_int: &str) -> Vec<u8> {
    let now = understudy_fix::time::format_utc_timestamp(SystemTime::now());
    fix(&[
        "35=A".into(),
        format!("49={sender}"),
        "56=EXCH".into(),
        "34=1".into(),
        format!("52={now}"),
        "98=0".into(),
        format!("108={heart_bt_int}"),
        "141=Y".into(),
    ])
}

/// Everything the peer sends until it closes the connection (or `timeout` passes: then
/// `closed` is false).
fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
}

fn still_running(sim: &mut Proc, dir: &std::path::Path) {
    if let Ok(Some(status)) = sim.0.try_wait() {
        let log = std::fs::read_to_string(dir.join("sim.log")).unwrap_or_default();
        panic!("fix-exchange-sim exited ({status}); its log:\n{log}");
    }
}

fn good_logon_is_answered(a: SocketAddr, sender: &str) {
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(&logon(sender, "30")).expect("send");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(2));
    assert!(
        got.contains(&format!("{SOH}35=A{SOH}")),
        "a well-formed Logon got no Logon back: {got:?}"
    );
}

/// A Logon whose HeartBtInt is out of range (9999999999999999999 s used to overflow the
/// session's heartbeat arithmetic at the next tick and kill the process) gets a Logout that
/// names the field, then the connection is closed; the acceptor lives on and answers the next
/// good Logon.
#[test]
fn out_of_range_heart_bt_int_gets_a_logout_and_the_acceptor_lives_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sim, a) = start_sim(dir.path());
    for (i, hb) in [
        "9999999999999999999",
        "18446744073709551615",
        "-1",
        "4294967296",
        "0",
    ]
    .iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(a).expect("connect");
        s.write_all(&logon(&format!("BAD{i}"), hb)).expect("send");
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(closed, "HeartBtInt={hb}: connection left open; got {got:?}");
        if *hb != "-1" {
            // "-1" is not an unsigned integer at all: the Logon is invalid and closed on.
            assert!(
                got.contains(&format!("{SOH}35=5{SOH}")) && got.contains("HeartBtInt"),
                "HeartBtInt={hb}: no Logout naming the field, got {got:?}"
            );
        }
        // Past the tick that used to panic.
        std::thread::sleep(Duration::from_millis(250));
        still_running(&mut sim, dir.path());
    }
    good_logon_is_answered(a, "GOOD");
    still_running(&mut sim, dir.path());
}

/// The logon timeout runs from the accept: a connection that sends nothing, or only half a
/// frame, is closed within it (it used to start only after a whole first frame, so such a
/// connection was held forever), and the acceptor keeps serving others meanwhile.
#[test]
fn silent_and_half_sent_connections_are_closed_at_the_logon_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sim, a) = start_sim(dir.path());
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(a).expect("connect");
    let mut half = TcpStream::connect(a).expect("connect");
    let frame = logon("HALF", "30");
    half.write_all(&frame[..frame.len() / 2]).expect("send");
    good_logon_is_answered(a, "OTHER");
    let limit = understudy_fix::engine::DEFAULT_LOGON_TIMEOUT + Duration::from_secs(3);
    for (name, s) in [("silent", &mut silent), ("half-sent", &mut half)] {
        let left = limit.saturating_sub(t0.elapsed());
        let (_, closed) = read_until_closed(s, left);
        assert!(
            closed,
            "{name} connection still open after {:?}",
            t0.elapsed()
        );
    }
    still_running(&mut sim, dir.path());
}

/// Before a connection has logged on its frames may be at most `PRELOGON_MAX_BODY` bytes: a
/// Logon padded past that is skipped as garbage instead of buffered and answered (it used to
/// be accepted up to a megabyte from an anonymous peer), and the acceptor serves others.
#[test]
fn an_oversized_first_frame_is_not_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sim, a) = start_sim(dir.path());
    let now = understudy_fix::time::format_utc_timestamp(SystemTime::now());
    let pad = "x".repeat(understudy_fix::engine::PRELOGON_MAX_BODY);
    let big = fix(&[
        "35=A".into(),
        "49=BIG".into(),
        "56=EXCH".into(),
        "34=1".into(),
        format!("52={now}"),
        "98=0".into(),
        "108=30".into(),
        format!("58={pad}"),
    ]);
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(&big).expect("send");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(2));
    assert!(
        !got.contains(&format!("{SOH}35=A{SOH}")),
        "a {}-byte Logon from an anonymous peer was accepted",
        big.len()
    );
    still_running(&mut sim, dir.path());
    good_logon_is_answered(a, "AFTER");
}

/// A logged-on counterparty that asks for resends and never reads the answers is a slow
/// consumer: once what it left unread passes the write-queue bound (or a write waits too long)
/// the acceptor logs it out and closes the connection, instead of queueing without bound
/// (+84 MB in 3 s in the probe), and goes on serving others.
#[test]
fn a_counterparty_that_does_not_read_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sim, a) = start_sim(dir.path());
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(&logon("SLOW", "30")).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while !String::from_utf8_lossy(&got).contains(&format!("{SOH}35=A{SOH}")) {
        let n = s.read(&mut buf).expect("the Logon answer");
        assert!(n > 0, "closed before answering the Logon");
        got.extend_from_slice(&buf[..n]);
    }
    let msg = |seq: u64, fields: &[String]| {
        let now = understudy_fix::time::format_utc_timestamp(SystemTime::now());
        let mut all = vec![
            format!("49=SLOW"),
            "56=EXCH".into(),
            format!("34={seq}"),
            format!("52={now}"),
        ];
        all.splice(0..0, [fields[0].clone()]);
        all.extend_from_slice(&fields[1..]);
        fix(&all)
    };
    // Market orders fill in three reports each: a store of answers worth resending.
    let mut seq = 2;
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.extend(msg(
            seq,
            &[
                "35=D".into(),
                format!("11=o{i}"),
                "55=EUR/USD".into(),
                "54=1".into(),
                "38=100".into(),
                "40=1".into(),
            ],
        ));
        seq += 1;
    }
    s.write_all(&batch).expect("orders");
    // Then ask for everything again and again, reading nothing.
    s.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let t0 = Instant::now();
    let sim_pid = sim.0.id();
    let mut peak_kib = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        let r = msg(seq, &["35=2".into(), "7=1".into(), "16=0".into()]);
        seq += 1;
        if s.write_all(&r).is_err() {
            break; // our send buffer is full or the acceptor closed: both end the flood
        }
        peak_kib = peak_kib.max(rss_kib(sim_pid));
    }
    // The acceptor must now close the connection: read what it sent until EOF.
    let (tail, closed) = read_until_closed(&mut s, Duration::from_secs(30));
    assert!(closed, "the slow consumer was never disconnected");
    assert!(
        tail.contains("slow consumer") || tail.is_empty() || tail.contains(&format!("{SOH}35=")),
        "unexpected bytes: {}",
        &tail[..tail.len().min(200)]
    );
    peak_kib = peak_kib.max(rss_kib(sim_pid));
    assert!(
        peak_kib < 150 * 1024,
        "fix-exchange-sim grew to {peak_kib} KiB for one slow consumer"
    );
    still_running(&mut sim, dir.path());
    good_logon_is_answered(a, "AFTER");
}

/// A Logon naming a CompID pair no session is configured for gets a Logout that says so, then
/// the connection is closed (it used to be closed without a word).
#[test]
fn a_logon_for_an_unknown_session_gets_a_logout_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sim, a) = start_sim(dir.path());
    let now = understudy_fix::time::format_utc_timestamp(SystemTime::now());
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(&fix(&[
        "35=A".into(),
        "49=STRANGER".into(),
        "56=NOT-EXCH".into(),
        "34=1".into(),
        format!("52={now}"),
        "98=0".into(),
        "108=30".into(),
    ]))
    .expect("send");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(closed, "connection left open: {got:?}");
    assert!(
        got.contains(&format!("{SOH}35=5{SOH}"))
            && got.contains("no session is configured for SenderCompID STRANGER"),
        "no Logout with the reason: {got:?}"
    );
    still_running(&mut sim, dir.path());
}
