//! An active whose process does not run for longer than `sync_timeout` (SIGSTOP here; a
//! paused VM looks the same from inside) must not wake, find every hold expired and go on
//! alone: meanwhile its standby may have been activated with a newer epoch, and what the
//! old active then sent would come from a second active (review 22, R7). After a freeze each
//! link gets `sync_timeout` of running time to reach its standby again, and learns of the
//! newer epoch there before anything is durable; a standby really gone is still given up,
//! that much running time later.
//!
//! The active is a real separate process (this test binary run again as [`freeze_child`]),
//! stopped and continued with kill(1); the standby is a real [`Receiver`] in this process, on
//! loopback.

mod replica_common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use replica_common::{cfg, free_addr, wait_until};
use understudy_fix::replica::{Mode, Receiver, Sender};
use understudy_fix::store::{FileStore, GroupCommit, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

/// The child's epoch.
const EPOCH: u64 = 5;

/// One test at a time: each picks free ports and binds them a moment later, and the other's
/// processes connecting out could take one meanwhile (seen once: "Address already in use").
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long the child is stopped: beyond the child's `sync_timeout` (1.5 s) and the
/// standby's `timeout` (400 ms), so the standby ends the stream meanwhile.
const FROZEN_FOR: Duration = Duration::from_secs(2);

/// The active of epoch [`EPOCH`], as a child process: streams to `FREEZE_PEER` until in
/// sync, says `IN SYNC`, then waits for a line on stdin, writes one record and says whether
/// it became durable (`DURABLE <ms> degraded=<bool>`) or not (`REFUSED <why>`), then what a
/// second write does (`THEN <result>`).
#[test]
#[ignore = "not a test: the active process of the tests below, which run it"]
fn freeze_child() {
    let peer: SocketAddr = std::env::var("FREEZE_PEER")
        .expect("run by the tests below, with FREEZE_PEER")
        .parse()
        .expect("FREEZE_PEER is an address");
    let dir = std::env::var("FREEZE_DIR").expect("FREEZE_DIR");
    let dir = Path::new(&dir);
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT1");
    let group = GroupCommit::shared().expect("syncer");
    let mut store = FileStore::open(dir, &sid, EPOCH, SyncPolicy::Group).expect("open");
    let mut c = cfg(Mode::Sync, free_addr(), vec![peer]);
    // Slower than the write below by far: without the fix the hold is found expired and the
    // batch made durable long before the link could have reconnected and heard the epoch.
    c.reconnect_interval = Duration::from_millis(300);
    // Within the rule a gateway's configuration must meet (reconnect_interval +
    // connect_timeout under half of sync_timeout), and still shorter than the freeze.
    c.sync_timeout = Duration::from_millis(1500);
    let tx = Sender::start(c, dir, EPOCH, group).expect("sender");
    wait_until("in sync", Duration::from_secs(10), || {
        tx.health().peers[0].in_sync
    });
    println!("IN SYNC");
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    let t = Instant::now();
    let first = store
        .save_sent(1, b"8=FIX.4.4\x0135=8\x01")
        .map_err(|e| e.to_string())
        .and_then(|()| group.wait_durable(group.written()));
    match first {
        Ok(()) => {
            let h = tx.health();
            let (held, silent, frozen_then) = h
                .last_degraded
                .map_or((0, 0, 0), |d| (d.held_ms, d.silent_ms, d.frozen_ms));
            println!(
                "DURABLE {} degraded={} held_ms={held} silent_ms={silent} frozen_then_ms={frozen_then} frozen_ms={}",
                t.elapsed().as_millis(),
                h.degraded,
                h.frozen_ms.unwrap_or(0)
            )
        }
        Err(e) => println!("REFUSED {e}"),
    }
    println!("THEN {:?}", store.save_sent(2, b"8=FIX.4.4\x0135=8\x01"));
    std::io::stdout().flush().expect("stdout");
}

/// A standby as a child process, listening on `FREEZE_LISTEN` until killed.
#[test]
#[ignore = "not a test: the standby process of the test below, which runs it"]
fn standby_child() {
    let listen: SocketAddr = std::env::var("FREEZE_LISTEN")
        .expect("run by the test below, with FREEZE_LISTEN")
        .parse()
        .expect("FREEZE_LISTEN is an address");
    let dir = std::env::var("FREEZE_DIR").expect("FREEZE_DIR");
    let _rx = Receiver::start(cfg(Mode::Sync, listen, vec![]), Path::new(&dir)).expect("receiver");
    println!("LISTENING");
    std::io::stdout().flush().expect("stdout");
    // Until killed (or the test's end closes the pipe).
    let _ = std::io::stdin().read_line(&mut String::new());
}

/// A child's output, line by line, as it comes.
type Lines = std::sync::mpsc::Receiver<String>;

fn lines_of(out: std::process::ChildStdout) -> Lines {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The child, running and in sync with `peer`; its output.
fn start_child(peer: SocketAddr, dir: &Path) -> (Child, Lines) {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "freeze_child", "--ignored", "--nocapture"])
        .env("FREEZE_PEER", peer.to_string())
        .env("FREEZE_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut out = lines_of(child.stdout.take().expect("stdout"));
    let line = line_starting(&mut out, &["IN SYNC"]);
    assert_eq!(line, "IN SYNC");
    (child, out)
}

/// The next line of the child's own starting with one of `prefixes` (libtest prints its
/// own), within 30 s: a hold that never ends fails the test instead of hanging it.
fn line_starting(out: &mut Lines, prefixes: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match out.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the child said none of {prefixes:?} within 30 s")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the child ended before saying {prefixes:?}")
            }
        };
        let line = line.trim_end();
        if prefixes.iter().any(|p| line.starts_with(p)) {
            return line.to_owned();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Stops the child for [`FROZEN_FOR`], runs `meanwhile`, then lets it write and continues
/// it; returns its two answers.
fn freeze_then_write(
    child: &mut Child,
    out: &mut Lines,
    meanwhile: impl FnOnce(),
) -> (String, String) {
    signal(child, "-STOP");
    let stopped = Instant::now();
    meanwhile();
    #[allow(clippy::disallowed_methods)] // the freeze itself
    std::thread::sleep(FROZEN_FOR.saturating_sub(stopped.elapsed()));
    // Waiting in the pipe when it runs again: the write is the first thing it does.
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(b"GO\n").expect("to the child");
    stdin.flush().expect("to the child");
    signal(child, "-CONT");
    let first = line_starting(out, &["DURABLE", "REFUSED"]);
    let then = line_starting(out, &["THEN"]);
    let _ = child.wait();
    (first, then)
}

/// The standby is activated with a newer epoch while the active is stopped (what its agent
/// does once the active's lease lapses): the active, continued, learns the epoch from the
/// standby before its batch is durable, so nothing it held is ever sent, and its store
/// refuses every write after. Without the fix the batch was durable (degraded) within a few
/// milliseconds of waking.
#[test]
fn a_frozen_active_learns_of_the_newer_epoch_before_anything_it_held_is_durable() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let b = tempfile::tempdir().expect("tmp");
    let a = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    let (mut child, mut out) = start_child(b_addr, a.path());
    let (first, then) = freeze_then_write(&mut child, &mut out, || {
        rx.activate(EPOCH + 1).expect("the standby takes over");
    });
    assert!(
        first.starts_with("REFUSED") && first.contains(&format!("epoch {}", EPOCH + 1)),
        "the frozen active of epoch {EPOCH} went on after epoch {} took over: {first}",
        EPOCH + 1
    );
    assert!(
        then.contains(&format!(
            "Fenced {{ ours: {EPOCH}, newest: {} }}",
            EPOCH + 1
        )),
        "its store still writes: {then}"
    );
}

/// The standby dies while the active is stopped: continued, the active still gives it up and
/// degrades, after `sync_timeout` (1.5 s) of its own running time, not at once and not
/// never.
#[test]
fn a_frozen_active_whose_standby_died_meanwhile_degrades_after_sync_timeout_of_running_time() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let b = tempfile::tempdir().expect("tmp");
    let a = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let mut standby = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "standby_child", "--ignored", "--nocapture"])
        .env("FREEZE_LISTEN", b_addr.to_string())
        .env("FREEZE_DIR", b.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the standby");
    let mut standby_out = lines_of(standby.stdout.take().expect("stdout"));
    line_starting(&mut standby_out, &["LISTENING"]);
    let (mut child, mut out) = start_child(b_addr, a.path());
    let (first, then) = freeze_then_write(&mut child, &mut out, || {
        signal(&standby, "-KILL");
        let _ = standby.wait();
    });
    let ms: u64 = first
        .strip_prefix("DURABLE ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not durable: {first}"));
    assert!(first.contains("degraded=true"), "{first}");
    // The operator's answer to "why so late": the health answer counts the freeze.
    let frozen: u64 = first
        .rsplit("frozen_ms=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no frozen_ms: {first}"));
    assert!(
        (1500..10_000).contains(&frozen),
        "a 2 s stop counted as {frozen} ms frozen: {first}"
    );
    // And this fall-back's own figures: the hold's wall time is its 1.5 s of running time
    // plus the stop, and the stop is counted in it (review 26, F12: only the cumulative
    // figure was told).
    let field = |name: &str| -> u64 {
        first
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {first}"))
    };
    let (held, silent, frozen_then) = (
        field("held_ms="),
        field("silent_ms="),
        field("frozen_then_ms="),
    );
    assert!(
        (1500..10_000).contains(&frozen_then) && frozen_then <= frozen,
        "the 2 s stop counted as {frozen_then} ms of the standby's silence: {first}"
    );
    assert!(
        silent >= frozen_then + 1400,
        "the standby silent {silent} ms, of which {frozen_then} frozen: less than sync_timeout ran"
    );
    // The write came after the stop: the batch itself was held for sync_timeout of running
    // time, not for the silence.
    assert!(
        (1100..4000).contains(&held) && held + 1000 < silent,
        "the batch held {held} ms, the standby silent {silent} ms: {first}"
    );
    assert!(
        ms >= 1100,
        "given up {ms} ms after waking: the freeze counted as the standby's silence"
    );
    // Nor much later: the hold is 1.5 s of running time (a loaded machine stretches it a
    // little; a hold that ran on and on would not).
    assert!(ms < 4000, "given up only {ms} ms after waking");
    assert!(then.starts_with("THEN Ok"), "{then}");
}
