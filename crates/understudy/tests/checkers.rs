//! The safety checkers themselves must be able to fail: the overlap checker on forged logs, the
//! two-Hot watcher on fake agents that both claim to be Hot.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;

fn forged(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f
}

fn panics(lines: &[&str]) -> bool {
    let f = forged(lines);
    let p = f.path().to_path_buf();
    std::panic::catch_unwind(move || {
        check_overlaps(&p);
    })
    .is_err()
}

#[test]
fn the_overlap_checker_accepts_a_clean_handover() {
    let f = forged(&[
        "100 1 a start 1",
        "110 1 a active 1",
        "120 1 a tick 1",
        "130 1 a tick 1",
        "135 2 b start 1",
        "140 2 b active 2",
        "150 2 b tick 2",
        "160 2 b stop 2",
        "170 3 a start 2",
    ]);
    let ivs = check_overlaps(f.path());
    assert_eq!(ivs.len(), 2);
    assert_eq!((ivs[0].start_ns, ivs[0].end_ns), (110, 130));
    assert!(ivs[1].stopped);
}

#[test]
fn the_overlap_checker_finds_two_actives_and_backward_epochs() {
    // b became active while a still ticked.
    assert!(panics(&[
        "110 1 a active 1",
        "120 1 a tick 1",
        "125 2 b active 2",
        "130 1 a tick 1",
    ]));
    // a stale active that only logged its stop after b started.
    assert!(panics(&[
        "110 1 a active 1",
        "125 2 b active 2",
        "130 1 a stop 1"
    ]));
    // Epochs must strictly increase.
    assert!(panics(&[
        "110 1 a active 3",
        "120 1 a tick 3",
        "125 2 b active 3"
    ]));
    assert!(panics(&["110 1 a active 3", "125 2 b active 2"]));
    // A reused pid is a new process: its old activity does not extend into the new one.
    assert!(!panics(&[
        "110 1 a active 1",
        "120 1 a tick 1",
        "125 2 b active 2",
        "130 2 b tick 2",
        "140 1 a start 2",
    ]));
}

/// A whole `GET /status` body of a Hot node: the watcher reads it as the typed `Status`.
fn hot_status(node: &str, epoch: u64, since_unix_ms: u64) -> String {
    serde_json::json!({
        "node": node, "group": "g", "mode": "Hot", "name": "TryLock", "epoch": epoch,
        "since_unix_ms": since_unix_ms, "waiting": null, "holds_lock": true, "ready": false,
        "admin": "127.0.0.1:1", "agent_pid": 1, "since": "", "lock_file": "/l",
        "service": {"state": "running", "pid": 2, "role": "active", "standby": "hot",
                    "command": ["x"], "healthy": true, "detail": null}
    })
    .to_string()
}

/// A fake agent answering /status with a fixed body.
fn fake_agent(body: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn the_watcher_finds_two_nodes_hot_at_once() {
    let since = unix_ms() - 1000;
    let a = fake_agent(hot_status("a", 1, since));
    let b = fake_agent(hot_status("b", 2, since));
    let w = Watcher::start(vec![("a".into(), a), ("b".into(), b)]);
    w.wait_sweeps(2, Duration::from_secs(10));
    assert!(w.violations() > 0, "the watcher missed two Hot nodes");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || w.finish()));
    assert!(r.is_err(), "finish() let two Hot nodes pass");
}

#[test]
fn the_watcher_accepts_a_handover_between_two_answers() {
    // b says it became Hot in the future of every request: a handover between the two answers.
    let far = unix_ms() + 3_600_000;
    let a = fake_agent(hot_status("a", 1, 0));
    let b = fake_agent(hot_status("b", 2, far));
    let w = Watcher::start(vec![("a".into(), a), ("b".into(), b)]);
    w.wait_sweeps(2, Duration::from_secs(10));
    let rep = w.finish();
    assert!(rep.two_hot_answers > 0);
    assert_eq!(rep.hot_answers.get("a"), rep.hot_answers.get("b"));
}
