//! The replication stream between real stores over real TCP, in one process: the active's
//! [`FileStore`] under group commit with a [`Sender`], the standby's [`Receiver`] writing its
//! own directory. The group-commit syncer is one per process, so the tests take turns.
//!
//! Fencing (which leaves the process's syncer failed for good) is in `replica_fence.rs`.

mod replica_common;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use understudy_fix::replica::proto::{read_frame, Frame};
use understudy_fix::replica::{Mode, Receiver, Sender};

use replica_common::{active_handshake, cfg, free_addr, standby_handshake, wait_until};
use understudy_fix::store::{FileStore, GroupCommit, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

static TURN: Mutex<()> = Mutex::new(());

fn sid() -> SessionId {
    SessionId::new(BeginString::Fix44, "GW", "CLIENT1")
}

fn frame(i: u64) -> Vec<u8> {
    format!("8=FIX.4.4\u{1}35=8\u{1}34={i}\u{1}17=E{i}\u{1}").into_bytes()
}

/// The sent messages and numbers of the store under `dir`, opened as `epoch`.
fn contents(dir: &Path, epoch: u64) -> (u64, u64, Vec<(u64, Vec<u8>)>) {
    let s = FileStore::open(dir, &sid(), epoch, SyncPolicy::EveryWrite).expect("open copy");
    let sent = s.sent_range(1, u64::MAX).expect("range");
    (s.next_sender_seq(), s.next_target_seq(), sent)
}

#[test]
fn a_standby_copy_opens_with_every_acknowledged_record_and_catches_up_after_a_gap() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    assert!(!rx.health().ready, "ready before any active connected");

    // An older epoch's segment the standby lacks: sent at catch-up.
    {
        let mut old = FileStore::open(a.path(), &sid(), 10, SyncPolicy::EveryWrite).expect("old");
        old.save_sent(1, &frame(1)).expect("save");
    }
    let mut st = FileStore::open(a.path(), &sid(), 11, SyncPolicy::Group).expect("open");
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        11,
        group,
    )
    .expect("sender");
    wait_until("the standby in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync && rx.health().ready
    });
    for i in 2..=200 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    st.set_next_target_seq(77).expect("target");
    // Returns once the batch is durable here and acknowledged there (sync mode).
    st.sync().expect("sync");
    let h = tx.health();
    assert!(!h.degraded, "{h:?}");
    assert_eq!(h.peers[0].lag_records, 0, "{h:?}");
    let standby = rx.health();
    assert_eq!(standby.lag_records, Some(0), "{standby:?}");
    assert_eq!(standby.seen_epoch, 11);

    // Opened as the next active would (its own epoch), the copy holds everything.
    tx.stop();
    let copy = tempfile::tempdir().expect("tmp");
    copy_tree(b.path(), copy.path());
    let (ns, nt, sent) = contents(copy.path(), 12);
    assert_eq!((ns, nt), (201, 77));
    assert_eq!(sent.len(), 200);
    assert!(sent.iter().all(|(i, m)| *m == frame(*i)));

    // The standby misses records (no sender), then a sender catches it up from the files.
    for i in 201..=260 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    st.sync().expect("sync alone");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        11,
        group,
    )
    .expect("sender again");
    wait_until("the standby caught up", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync
    });
    tx.stop();
    rx.activate(12).expect("activate");
    let (ns, _, sent) = contents(b.path(), 12);
    assert_eq!(ns, 261);
    assert_eq!(sent.len(), 260);
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let p = e.path();
        let dst = to.join(e.file_name());
        if p.is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_tree(&p, &dst);
        } else if !e.file_name().to_string_lossy().ends_with(".lock") {
            std::fs::copy(&p, &dst).expect("copy");
        }
    }
}

/// A standby by hand: the next connection to `listener`, past its hello (of `epoch`) and our
/// welcome with no files.
fn accept_as_standby(listener: &TcpListener, epoch: u64) -> std::net::TcpStream {
    let mut s = accept_hello(listener, epoch);
    Frame::Welcome {
        seen_epoch: epoch,
        files: vec![],
    }
    .write_to(&mut s, &mut Vec::new())
    .expect("welcome");
    s
}

/// A standby by hand: the next connection to `listener`, past its handshake (of `epoch`).
fn accept_hello(listener: &TcpListener, epoch: u64) -> std::net::TcpStream {
    let (mut s, _) = listener.accept().expect("accept");
    assert_eq!(standby_handshake(&mut s, TOKEN), epoch);
    s
}

/// The token of [`cfg`].
const TOKEN: &[u8] = b"t0ken";

/// An active by hand: a standby started on an empty directory (returned, with its
/// `timeout`), and a connection to it past the hello of `epoch` and its welcome.
fn welcomed_by_a_fresh_standby(
    epoch: u64,
) -> (tempfile::TempDir, Receiver, std::net::TcpStream, Duration) {
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let c = cfg(Mode::Sync, b_addr, vec![]);
    let timeout = c.timeout;
    let rx = Receiver::start(c, b.path()).expect("receiver");
    let mut s = std::net::TcpStream::connect(b_addr).expect("connect");
    assert!(
        active_handshake(&mut s, epoch, TOKEN),
        "the standby's proof"
    );
    assert!(matches!(
        read_frame(&mut s, &mut Vec::new()).expect("welcome"),
        Frame::Welcome { .. }
    ));
    (b, rx, s, timeout)
}

/// A standby (speaking the protocol by hand) that takes the catch-up of an active of `epoch`
/// and then stops acknowledging, as when its disk hangs; it reads until the active gives up.
fn stalled_standby(epoch: u64) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let mut s = accept_as_standby(&listener, epoch);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_frame(&mut s, &mut buf) {
                Ok(Frame::Sync { pos }) => {
                    Frame::Ack { pos }.write_to(&mut s, &mut out).expect("ack");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("stream ended during catch-up: {e}"),
            }
        }
        while read_frame(&mut s, &mut buf).is_ok() {}
    });
    (addr, h)
}

/// With the standby no longer acknowledging, sync mode waits `sync_timeout` for it, then
/// drops it and carries on alone (degraded), and its health says so.
#[test]
fn sync_mode_degrades_after_sync_timeout_when_the_standby_stops_acknowledging() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let (addr, stalled) = stalled_standby(21);
    let mut st = FileStore::open(a.path(), &sid(), 21, SyncPolicy::Group).expect("open");
    let group = GroupCommit::shared().expect("syncer");
    let mut c = cfg(Mode::Sync, free_addr(), vec![addr]);
    c.timeout = Duration::from_millis(200);
    c.sync_timeout = Duration::from_millis(300);
    // The hold runs `sync_timeout` from the standby's last acknowledgement (the catch-up's),
    // which comes after this instant.
    let before = Instant::now();
    let tx = Sender::start(c, a.path(), 21, group).expect("sender");
    wait_until("in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync
    });
    st.save_sent(1, &frame(1)).expect("save");
    let t0 = Instant::now();
    st.sync().expect("durable after degrading");
    let waited = t0.elapsed();
    assert!(
        before.elapsed() >= Duration::from_millis(300)
            && waited >= Duration::from_millis(100)
            && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    let h = tx.health();
    assert!(h.degraded, "{h:?}");
    assert!(!h.peers[0].in_sync, "{h:?}");
    // Degraded: the next batch does not wait.
    st.save_sent(2, &frame(2)).expect("save");
    let t1 = Instant::now();
    st.sync().expect("sync");
    assert!(
        t1.elapsed() < Duration::from_millis(300),
        "{:?}",
        t1.elapsed()
    );
    tx.stop();
    stalled.join().expect("stalled standby");
}

/// With two standbys a batch waits for both, not for the first to acknowledge: the one that
/// stops acknowledging may still count itself in sync, and take over without the batch,
/// until `sync_timeout` after it was last heard from. Then it is dropped, the batch goes on
/// with the other (not degraded), and the next batch waits only for the one in sync.
#[test]
fn sync_mode_waits_for_every_standby_in_sync_and_drops_one_that_stops() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    let (stalled_addr, stalled) = stalled_standby(31);
    let mut st = FileStore::open(a.path(), &sid(), 31, SyncPolicy::Group).expect("open");
    let group = GroupCommit::shared().expect("syncer");
    let mut c = cfg(Mode::Sync, free_addr(), vec![b_addr, stalled_addr]);
    c.timeout = Duration::from_millis(200);
    c.sync_timeout = Duration::from_millis(600);
    let sync_timeout = c.sync_timeout;
    let tx = Sender::start(c, a.path(), 31, group).expect("sender");
    wait_until("both in sync", Duration::from_secs(5), || {
        let h = tx.health();
        h.peers.iter().all(|p| p.in_sync)
    });
    st.save_sent(1, &frame(1)).expect("save");
    let t0 = Instant::now();
    st.sync().expect("durable");
    let waited = t0.elapsed();
    assert!(
        waited >= sync_timeout / 2 && waited < Duration::from_secs(4),
        "the batch went on after {waited:?}, without the standby that may still count itself in sync"
    );
    let h = tx.health();
    assert!(!h.degraded, "one standby acknowledged: {h:?}");
    assert!(h.peers[0].in_sync && !h.peers[1].in_sync, "{h:?}");
    // The next batch waits for the one in sync only.
    st.save_sent(2, &frame(2)).expect("save");
    let t1 = Instant::now();
    st.sync().expect("sync");
    assert!(t1.elapsed() < sync_timeout / 2, "{:?}", t1.elapsed());
    assert_eq!(rx.health().lag_records, Some(0));
    tx.stop();
    stalled.join().expect("stalled standby");
}

/// A degraded active is synchronous again as soon as its standby has caught up, also when it
/// sends nothing meanwhile: its health says so at once.
#[test]
fn an_idle_degraded_active_is_synchronous_again_once_its_standby_caught_up() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let mut st = FileStore::open(a.path(), &sid(), 41, SyncPolicy::Group).expect("open");
    let group = GroupCommit::shared().expect("syncer");
    // No standby yet: the first batch degrades at once (none was ever heard from).
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        41,
        group,
    )
    .expect("sender");
    st.save_sent(1, &frame(1)).expect("save");
    st.sync().expect("durable alone");
    assert!(tx.health().degraded, "{:?}", tx.health());
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    wait_until("in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync
    });
    let h = tx.health();
    assert!(!h.degraded, "in sync again but still degraded: {h:?}");
    tx.stop();
    drop(rx);
}

/// An active (speaking the protocol by hand) decides when the standby counts itself in sync:
/// not at the catch-up's acknowledgement (a degraded active may have sent messages the
/// catch-up did not carry), and never on an acknowledgement the active did not follow with
/// another frame (an active that gave the standby up sends nothing more, and a standby that
/// was frozen answers what it finds waiting when it resumes).
#[test]
fn a_standby_counts_itself_in_sync_only_on_acknowledgements_the_active_took_after_the_catch_up() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (_b, rx, mut s, timeout) = welcomed_by_a_fresh_standby(3);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut round_trip = |s: &mut std::net::TcpStream, f: Frame| {
        f.write_to(s, &mut out).expect("send");
        match read_frame(s, &mut buf).expect("answer") {
            Frame::Ack { .. } => {}
            other => panic!("{other:?}"),
        }
    };
    // The catch-up (nothing to copy) and its acknowledgement: not ready on that alone.
    round_trip(&mut s, Frame::Sync { pos: 0 });
    assert!(
        !rx.health().ready,
        "ready on the catch-up's acknowledgement"
    );
    // The next round trip: its acknowledgement is not taken until a frame follows it.
    round_trip(&mut s, Frame::Heartbeat { written: 0 });
    assert!(
        !rx.health().ready,
        "ready on an acknowledgement not yet taken"
    );
    round_trip(&mut s, Frame::Heartbeat { written: 0 });
    let h = rx.health();
    assert!(
        h.ready,
        "not ready once the active took an acknowledgement: {h:?}"
    );
    // The active gives the standby up after that last acknowledgement and sends nothing
    // more: the standby's window runs out `timeout` after the acknowledgement it took.
    let given_up = Instant::now();
    wait_until("the standby out of sync", timeout * 3, || {
        !rx.health().ready
    });
    assert!(
        given_up.elapsed() + Duration::from_millis(50) >= timeout / 2,
        "out of sync {:?} after the last frame, before its window could end",
        given_up.elapsed()
    );
    drop(s);
}

/// Before its token is checked a peer gets one hello, of bounded size, within `timeout` in
/// all: four peers that trickle a hello byte by byte (each byte in time on its own) cannot
/// hold the standby's four connection slots and keep the real active out, and a hello
/// announcing more than the largest hello is refused before it is read.
#[test]
#[allow(clippy::disallowed_methods)] // the tricklers pace their bytes with sleeps
fn peers_that_never_finish_a_hello_cannot_keep_the_active_out() {
    use std::io::{Read, Write};
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let c = cfg(Mode::Sync, b_addr, vec![]);
    let timeout = c.timeout;
    let rx = Receiver::start(c, b.path()).expect("receiver");
    // A header announcing 1 000 bytes (a hello that size is allowed), then a byte every
    // 100 ms; until the standby closes the connection, at most 5 s.
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(b_addr).expect("connect");
                let start = Instant::now();
                let mut head = 1000u32.to_le_bytes().to_vec();
                head.extend_from_slice(&[0; 4]);
                if s.write_all(&head).is_err() {
                    return start.elapsed();
                }
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                while start.elapsed() < Duration::from_secs(5) {
                    if s.write_all(&[1]).is_err() {
                        break;
                    }
                    // A close shows as the end of the stream (or a reset).
                    match s.read(&mut [0; 64]) {
                        Ok(0) => break,
                        Err(e)
                            if e.kind() != std::io::ErrorKind::WouldBlock
                                && e.kind() != std::io::ErrorKind::TimedOut =>
                        {
                            break
                        }
                        _ => {}
                    }
                }
                start.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let a = tempfile::tempdir().expect("tmp");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        1,
        GroupCommit::shared().expect("syncer"),
    )
    .expect("sender");
    wait_until("the real active in sync", timeout * 5, || {
        tx.health().peers[0].in_sync
    });
    tx.stop();
    for t in tricklers {
        let held = t.join().expect("trickler");
        assert!(
            held < timeout * 3,
            "a peer without a whole hello held its slot for {held:?}"
        );
    }
    // A hello announcing more than the largest hello: refused before its body is read.
    let mut s = std::net::TcpStream::connect(b_addr).expect("connect");
    let mut head = (understudy_fix::replica::proto::MAX_HELLO as u32 + 1)
        .to_le_bytes()
        .to_vec();
    head.extend_from_slice(&[0; 4]);
    s.write_all(&head).expect("header");
    s.set_read_timeout(Some(timeout * 3)).expect("timeout");
    let started = Instant::now();
    let n = s.read(&mut [0; 64]).unwrap_or(0);
    assert_eq!(n, 0, "an oversized hello was answered");
    assert!(
        started.elapsed() < timeout,
        "an oversized hello was waited for"
    );
    drop(rx);
}

/// The listener checks the token before anything else.
#[test]
fn a_sender_with_the_wrong_token_is_refused_and_writes_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Async, b_addr, vec![]), b.path()).expect("receiver");
    let mut s = std::net::TcpStream::connect(b_addr).expect("connect");
    assert!(
        !active_handshake(&mut s, 99, b"wrong"),
        "a standby proved a token it does not hold"
    );
    match read_frame(&mut s, &mut Vec::new()).expect("answer") {
        Frame::Refuse { newest_epoch, .. } => assert_eq!(newest_epoch, 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.health().seen_epoch, 0, "a refused hello moved the epoch");
    assert!(std::fs::read_dir(b.path()).expect("dir").next().is_none());
}

/// What answers at a standby's address without holding the token (the standby's gateway down
/// and its port taken, or its address) learns nothing of the token, and nothing it says
/// counts: a refusal claiming the newest epoch there is does not fence the active, and a
/// challenge without a valid proof gets no proof back.
#[test]
#[allow(clippy::disallowed_methods)] // the impostor polls its listener with a deadline
fn an_impostor_at_a_standbys_address_cannot_fence_the_active_or_learn_the_token() {
    use std::io::Read;
    use understudy_fix::replica::auth::{MAC_LEN, NONCE_LEN};
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let epoch = 21;
    let mut st = FileStore::open(a.path(), &sid(), epoch, SyncPolicy::Group).expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // First connection: a refusal "from epoch u64::MAX"; second: a made-up challenge. Each
    // keeps every byte the active sent.
    let impostor = std::thread::spawn(move || {
        let mut heard = Vec::new();
        // An active that believed the refusal never comes back: the test fails on its
        // assertions below instead of waiting here for good.
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        let accept = || loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    return Some(s);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return None,
            }
        };
        for answer in [
            Frame::Refuse {
                newest_epoch: u64::MAX,
                reason: "epoch \u{1b}[31m18446744073709551615 seen here".into(),
            },
            Frame::Challenge {
                nonce: [7; NONCE_LEN],
                mac: [7; MAC_LEN],
            },
        ] {
            let Some(mut s) = accept() else {
                return heard;
            };
            match read_frame(&mut s, &mut Vec::new()).expect("hello") {
                Frame::Hello { nonce, .. } => heard.extend_from_slice(&nonce),
                other => panic!("{other:?}"),
            }
            answer.write_to(&mut s, &mut Vec::new()).expect("answer");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            // Whatever else comes until the active closes.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            heard.extend_from_slice(&rest);
            if let Frame::Challenge { .. } = answer {
                assert!(
                    rest.is_empty(),
                    "the active answered a false challenge: {rest:?}"
                );
            }
        }
        heard
    });
    let tx = Sender::start(
        cfg(Mode::Async, free_addr(), vec![addr]),
        a.path(),
        epoch,
        GroupCommit::shared().expect("syncer"),
    )
    .expect("sender");
    let heard = impostor.join().expect("impostor");
    wait_until("the second answer's error", Duration::from_secs(5), || {
        tx.health().peers[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not prove"))
    });
    let h = tx.health();
    assert_eq!(h.seen_epoch, epoch, "an impostor's epoch was believed");
    assert!(h.ready, "an impostor's answers made the active not ready");
    tx.stop();
    assert!(
        !heard.windows(TOKEN.len()).any(|w| w == TOKEN),
        "the token crossed the network"
    );
    st.save_sent(1, &frame(1))
        .expect("the active's store was fenced by an impostor");
    st.sync().expect("durable");
}

/// Frames that are well formed but out of their order end the stream and change nothing: a
/// truncate of a file the standby does not hold, a sync whose position goes back, a truncate
/// after the catch-up (which could cut records already acknowledged).
#[test]
fn a_standby_refuses_frames_out_of_their_order() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let epoch = 4;
    let rel = format!("{}/{:020}.log", sid().dir_name(), epoch);
    let ended = |s: &mut std::net::TcpStream, what: &str| {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        match read_frame(s, &mut Vec::new()) {
            Err(_) | Ok(Frame::Refuse { .. }) => {}
            Ok(f) => panic!("{what}: answered {f:?}"),
        }
    };
    let ack = |s: &mut std::net::TcpStream, pos: u64| {
        Frame::Sync { pos }
            .write_to(s, &mut Vec::new())
            .expect("sync");
        assert_eq!(
            read_frame(s, &mut Vec::new()).expect("ack"),
            Frame::Ack { pos }
        );
    };

    let (b, _rx, mut s, _) = welcomed_by_a_fresh_standby(epoch);
    Frame::Truncate {
        path: rel.clone(),
        len: 0,
    }
    .write_to(&mut s, &mut Vec::new())
    .expect("truncate");
    ended(&mut s, "a truncate of a file not held");
    assert!(!b.path().join(&rel).exists(), "an empty segment was made");

    let (_b, _rx, mut s, _) = welcomed_by_a_fresh_standby(epoch);
    ack(&mut s, 10);
    Frame::Sync { pos: 9 }
        .write_to(&mut s, &mut Vec::new())
        .expect("sync");
    ended(&mut s, "a sync going back");

    let (b, _rx, mut s, _) = welcomed_by_a_fresh_standby(epoch);
    Frame::Data {
        path: rel.clone(),
        offset: 0,
        bytes: b"abc".to_vec(),
    }
    .write_to(&mut s, &mut Vec::new())
    .expect("data");
    ack(&mut s, 1);
    Frame::Truncate {
        path: rel.clone(),
        len: 0,
    }
    .write_to(&mut s, &mut Vec::new())
    .expect("truncate");
    ended(&mut s, "a truncate after the catch-up");
    assert_eq!(
        std::fs::metadata(b.path().join(&rel))
            .expect("segment")
            .len(),
        3,
        "acknowledged bytes were cut"
    );
}

/// Async mode streams the same way but never waits: a standby that stops acknowledging costs
/// the active nothing, and it is not "degraded" (there is nothing to degrade from).
#[test]
fn async_mode_never_waits_for_the_standby() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let (addr, stalled) = stalled_standby(31);
    let mut st = FileStore::open(a.path(), &sid(), 31, SyncPolicy::Group).expect("open");
    let group = GroupCommit::shared().expect("syncer");
    let mut c = cfg(Mode::Async, free_addr(), vec![addr]);
    c.timeout = Duration::from_millis(200);
    c.sync_timeout = Duration::from_secs(2);
    let tx = Sender::start(c, a.path(), 31, group).expect("sender");
    wait_until("in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync
    });
    for i in 1..=20 {
        st.save_sent(i, &frame(i)).expect("save");
        let t0 = Instant::now();
        st.sync().expect("durable here");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
    let h = tx.health();
    assert_eq!(h.mode, "async");
    assert!(!h.degraded, "{h:?}");
    tx.stop();
    stalled.join().expect("stalled standby");
}

fn segment_names(dir: &Path) -> Vec<String> {
    understudy_fix::store::segment_files(&dir.join(sid().dir_name())).expect("segments")
}

/// A new generation on the active (a new period past the rotation size) reaches the
/// standby, which then deletes what it supersedes as the active did, and the copy opens
/// from the new generation with nothing lost.
#[test]
fn a_standby_prunes_its_copy_when_the_active_starts_a_generation() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    {
        let mut old = FileStore::open(a.path(), &sid(), 40, SyncPolicy::EveryWrite).expect("old");
        old.save_sent(1, &frame(1)).expect("save");
    }
    let mut st = FileStore::open(a.path(), &sid(), 41, SyncPolicy::Group).expect("open");
    st.set_rotate_after(4096);
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        41,
        group,
    )
    .expect("sender");
    wait_until("the standby in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync && rx.health().ready
    });
    for i in 2..=100 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    st.sync().expect("sync");
    let before = vec![
        "00000000000000000040.log".to_owned(),
        "00000000000000000041.log".to_owned(),
    ];
    assert_eq!(segment_names(b.path()), before);

    st.reset_for_period(1_800_000_000).expect("new period");
    assert_eq!(
        segment_names(a.path()),
        vec![
            "00000000000000000040.log".to_owned(),
            "00000000000000000041.log".to_owned(),
            "00000000000000000041-0000000001.log".to_owned(),
        ],
        "the superseded generation and what it counted stay, as history"
    );
    for i in 1..=100 {
        st.save_sent(i, &frame(500 + i)).expect("save");
    }
    st.reset_for_period(1_800_086_400).expect("the next period");
    let after = vec![
        "00000000000000000041-0000000001.log".to_owned(),
        "00000000000000000041-0000000002.log".to_owned(),
    ];
    assert_eq!(
        segment_names(a.path()),
        after,
        "the active deleted the rest"
    );
    for i in 1..=5 {
        st.save_sent(i, &frame(1000 + i)).expect("save");
    }
    st.sync().expect("sync");
    wait_until("the standby pruned", Duration::from_secs(5), || {
        segment_names(b.path()) == after
    });
    // Still in sync, and more batches flow after the prune.
    st.save_sent(6, &frame(1006)).expect("save");
    st.sync().expect("sync after the prune");
    assert!(tx.health().peers[0].in_sync, "{:?}", tx.health());
    tx.stop();
    rx.activate(42).expect("activate");
    let s = FileStore::open(b.path(), &sid(), 42, SyncPolicy::EveryWrite).expect("open copy");
    assert_eq!(s.period(), Some(1_800_086_400));
    assert_eq!(s.next_sender_seq(), 7);
    let sent = s.sent_range(1, u64::MAX).expect("range");
    assert_eq!(sent.len(), 6);
    assert!(sent.iter().all(|(i, m)| *m == frame(1000 + i)));
    assert!(s.recovery().bytes_replayed < 2048, "{:?}", s.recovery());
}

/// Where a segment's records end (a writer keeps zeros written ahead of them).
fn records_len(path: &Path) -> u64 {
    understudy_fix::store::records_len(path).expect("walk")
}

/// A: the active of epoch 1, whose machine crashed after the standby B had copied (and
/// acknowledged) records 4 and 5 but before its own `fdatasync`: on A's disk they are the
/// zeros it wrote ahead of its records, the file as large as before. B takes over (epoch 2)
/// and A rejoins as B's standby. A reports the records it holds, not its file's size, so B
/// sends it 4 and 5 again; reported at its size, A's copy would keep zeros inside what B's
/// claim seals and could never open.
#[test]
fn a_former_active_rejoining_gets_the_records_its_crash_lost_under_its_zeros() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let seg1 = |dir: &Path| dir.join(sid().dir_name()).join(format!("{:020}.log", 1));
    let (len3, len5);
    {
        let mut s = FileStore::open(a.path(), &sid(), 1, SyncPolicy::EveryWrite).expect("A");
        for i in 1..=3 {
            s.save_sent(i, &frame(i)).expect("save");
        }
        len3 = records_len(&seg1(a.path()));
        for i in 4..=5 {
            s.save_sent(i, &frame(i)).expect("save");
        }
        len5 = records_len(&seg1(a.path()));
    }
    let a_size = std::fs::metadata(seg1(a.path())).expect("stat").len();
    assert!(a_size > len5, "A keeps zeros ahead of its records");
    // B's copy: the five records, as a standby holds them.
    std::fs::create_dir_all(b.path().join(sid().dir_name())).expect("mkdir");
    let bytes = std::fs::read(seg1(a.path())).expect("read");
    std::fs::write(seg1(b.path()), &bytes[..len5 as usize]).expect("copy");
    // A's crash: 4 and 5 never reached its disk.
    let lost = vec![0u8; (len5 - len3) as usize];
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(seg1(a.path()))
            .expect("open"),
        &lost,
        len3,
    )
    .expect("zero");

    let a_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, a_addr, vec![]), a.path()).expect("receiver");
    let mut st = FileStore::open(b.path(), &sid(), 2, SyncPolicy::Group).expect("B");
    assert_eq!(st.next_sender_seq(), 6);
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![a_addr]),
        b.path(),
        2,
        group,
    )
    .expect("sender");
    wait_until("A in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync && rx.health().ready
    });
    for i in 6..=8 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    st.sync().expect("sync");
    tx.stop();
    drop(st);
    assert_eq!(records_len(&seg1(a.path())), len5, "A holds 4 and 5 again");
    rx.activate(3).expect("activate");
    let (ns, _, sent) = contents(a.path(), 3);
    assert_eq!(ns, 9);
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|(i, m)| *m == frame(*i)), "{sent:?}");
}

/// A batch ships only the segments a pass wrote since the link's last batch (and new ones):
/// with several sessions written in turn, some idle for many batches, the standby's copy of
/// every segment holds exactly the active's records after each acknowledged batch.
#[test]
fn a_batch_ships_the_segments_it_wrote_and_idle_ones_stay_whole() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");
    let sids: Vec<SessionId> = (0..6)
        .map(|i| SessionId::new(BeginString::Fix44, "GW", &format!("C{i}")))
        .collect();
    let mut stores: Vec<FileStore> = sids
        .iter()
        .map(|s| FileStore::open(a.path(), s, 5, SyncPolicy::Group).expect("open"))
        .collect();
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        5,
        group,
    )
    .expect("sender");
    wait_until("in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync && rx.health().ready
    });
    let seg = |dir: &Path, s: &SessionId| dir.join(s.dir_name()).join(format!("{:020}.log", 5));
    let mut next = vec![1u64; sids.len()];
    // Batch k writes sessions k % 6 and (k * 5) % 6 only.
    for k in 0..30usize {
        for i in [k % 6, (k * 5) % 6] {
            let n = next[i];
            stores[i].save_sent(n, &frame(n)).expect("save");
            next[i] += 1;
        }
        stores[k % 6].sync().expect("acknowledged");
        stores[(k * 5) % 6].sync().expect("acknowledged");
        for s in &sids {
            assert_eq!(
                records_len(&seg(b.path(), s)),
                records_len(&seg(a.path(), s)),
                "batch {k}, {}",
                s.dir_name()
            );
        }
    }
    tx.stop();
    drop(stores);
    rx.activate(6).expect("activate");
    for (i, s) in sids.iter().enumerate() {
        let st = FileStore::open(b.path(), s, 6, SyncPolicy::EveryWrite).expect("open copy");
        assert_eq!(st.next_sender_seq(), next[i]);
    }
}

/// A file written while a standby's catch-up waits for its acknowledgement still reaches
/// that standby when the active prunes its record of written files (above 4096 of them, a
/// few here):
/// the pruning once counted only connected peers, and a peer in its catch-up is not one yet,
/// so the file's entry went, and the batch after the catch-up skipped the file for good.
#[test]
fn a_file_written_during_a_catch_up_reaches_the_standby_when_the_written_files_are_pruned() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    const KEPT: usize = 8;
    // More than that, so that a pass prunes.
    const OTHERS: usize = KEPT + 1;
    let a = tempfile::tempdir().expect("tmp");
    let epoch = 7;
    let x = SessionId::new(BeginString::Fix44, "GW", "X");
    let mut sx = FileStore::open(a.path(), &x, epoch, SyncPolicy::Group).expect("open");
    let mut others: Vec<FileStore> = (0..OTHERS)
        .map(|i| {
            let s = SessionId::new(BeginString::Fix44, "GW", &format!("O{i}"));
            FileStore::open(a.path(), &s, epoch, SyncPolicy::Group).expect("open")
        })
        .collect();
    // A standby by hand: it holds its catch-up's acknowledgement until told, then records
    // every segment the batches send it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let h_addr = listener.local_addr().expect("addr");
    let (caught_up_tx, caught_up) = std::sync::mpsc::channel::<u64>();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let (acked_tx, acked) = std::sync::mpsc::channel::<(u64, Vec<String>)>();
    let h = std::thread::spawn(move || {
        let mut s = accept_as_standby(&listener, epoch);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let p0 = loop {
            match read_frame(&mut s, &mut buf).expect("catch-up") {
                Frame::Sync { pos } => break pos,
                _ => continue,
            }
        };
        caught_up_tx.send(p0).expect("tell");
        if go_rx.recv().is_err() {
            return;
        }
        Frame::Ack { pos: p0 }
            .write_to(&mut s, &mut out)
            .expect("ack");
        let mut paths = Vec::new();
        while let Ok(f) = read_frame(&mut s, &mut buf) {
            match f {
                Frame::Data { path, .. } => paths.push(path),
                Frame::Sync { pos } => {
                    Frame::Ack { pos }.write_to(&mut s, &mut out).expect("ack");
                    if acked_tx.send((pos, std::mem::take(&mut paths))).is_err() {
                        return;
                    }
                }
                Frame::Heartbeat { .. } => {
                    Frame::Ack { pos: 0 }
                        .write_to(&mut s, &mut out)
                        .expect("ack");
                }
                _ => {}
            }
        }
    });
    let group = GroupCommit::shared().expect("syncer");
    let mut c = cfg(Mode::Async, free_addr(), vec![h_addr]);
    // The held acknowledgement must not time the link out while the batches below run.
    c.sync_timeout = Duration::from_secs(30);
    c.timeout = Duration::from_secs(10);
    c.heartbeat = Duration::from_secs(1);
    let tx = Sender::start(c, a.path(), epoch, group).expect("sender");
    tx.set_written_at_kept(KEPT);
    let p0 = caught_up
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the catch-up's sync: {e}: {:?}", tx.health()));
    // Written after the catch-up read it, while its acknowledgement is held.
    sx.save_sent(1, &frame(1)).expect("save");
    sx.sync().expect("durable");
    // Enough other files in the next pass for it to prune.
    for s in &mut others {
        s.save_sent(1, &frame(1)).expect("save");
    }
    others.last_mut().expect("others").sync().expect("durable");
    let last = group.written();
    assert!(last > p0);
    go.send(()).expect("go");
    let x_seg = format!("{}/{:020}.log", x.dir_name(), epoch);
    let mut got = Vec::new();
    loop {
        let (pos, paths) = acked
            .recv_timeout(Duration::from_secs(30))
            .expect("a batch after the catch-up");
        got.extend(paths);
        if pos >= last {
            break;
        }
    }
    tx.stop();
    assert!(
        got.contains(&x_seg),
        "{x_seg}, written after the catch-up read it, never shipped ({} segments were)",
        got.len()
    );
    drop(go);
    drop(acked);
    let _ = h.join();
}

/// A standby whose copy of a segment ends inside one of the active's records (not a prefix of
/// the active's file: restored from elsewhere, or damaged) gets that segment again whole, cut
/// to nothing first: appended to, it would have got nothing (no record starts there) while
/// acknowledging every batch (review 11, R6).
#[test]
fn a_copy_that_ends_inside_a_record_is_sent_again_whole() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let epoch = 9;
    let mut st = FileStore::open(a.path(), &sid(), epoch, SyncPolicy::Group).expect("open");
    for i in 1..=3 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    st.sync().expect("durable");
    let rel = format!("{}/{:020}.log", sid().dir_name(), epoch);
    let records = records_len(&a.path().join(&rel));
    assert!(records > 40, "{records}");
    // Past the first record's start, before the last record's end: inside a record.
    let held = records - 7;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rel2 = rel.clone();
    let h = std::thread::spawn(move || {
        let mut s = accept_hello(&listener, epoch);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        Frame::Welcome {
            seen_epoch: epoch,
            files: vec![(rel2.clone(), held)],
        }
        .write_to(&mut s, &mut out)
        .expect("welcome");
        let mut got = Vec::new();
        loop {
            match read_frame(&mut s, &mut buf).expect("catch-up") {
                Frame::Truncate { path, len } if path == rel2 => {
                    got.push(format!("truncate {len}"))
                }
                Frame::Data {
                    path,
                    offset,
                    bytes,
                } if path == rel2 => got.push(format!("data {offset}+{}", bytes.len())),
                Frame::Sync { .. } => return got,
                _ => {}
            }
        }
    });
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Async, free_addr(), vec![addr]),
        a.path(),
        epoch,
        group,
    )
    .expect("sender");
    let got = h.join().expect("standby");
    tx.stop();
    assert_eq!(
        got,
        vec!["truncate 0".to_owned(), format!("data 0+{records}")],
        "the segment, held up to {held} of {records} bytes"
    );
}

/// A catch-up may take far longer than `timeout` between two frames (the active reads every
/// segment whole before it sends what is missing): the standby waits for it, and only after
/// the catch-up's acknowledgement does silence for `timeout` end the stream. With `timeout`
/// throughout, a store of gigabytes never caught up (review 11, R3).
#[test]
#[allow(clippy::disallowed_methods)] // the active by hand takes its time with a sleep
fn a_standby_waits_out_a_slow_catch_up_and_then_times_out_on_silence() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (_b, rx, mut s, timeout) = welcomed_by_a_fresh_standby(3);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    // Reading the stores: nothing sent for several times `timeout`.
    std::thread::sleep(timeout * 3);
    Frame::Sync { pos: 0 }
        .write_to(&mut s, &mut out)
        .expect("sync");
    match read_frame(&mut s, &mut buf) {
        Ok(Frame::Ack { pos: 0 }) => {}
        other => panic!("the standby gave a slow catch-up up: {other:?}"),
    }
    // After it, silence ends the stream within about `timeout`.
    let t0 = Instant::now();
    let ended = read_frame(&mut s, &mut buf);
    assert!(ended.is_err(), "{ended:?}");
    assert!(
        t0.elapsed() < timeout * 3,
        "silence after the catch-up ended the stream only after {:?}",
        t0.elapsed()
    );
    wait_until("the standby disconnected", Duration::from_secs(2), || {
        !rx.health().ready
    });
}

/// The active waits for a standby that scans a large copy before it answers the hello, and
/// streams to it once it does: with `max(timeout, sync_timeout)` it gave up first, and the
/// standby never caught up (review 11, R3).
#[test]
#[allow(clippy::disallowed_methods)] // the standby by hand takes its time with a sleep
fn the_active_waits_for_a_standby_that_scans_its_copy_before_it_answers() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let epoch = 12;
    let mut st = FileStore::open(a.path(), &sid(), epoch, SyncPolicy::Group).expect("open");
    st.save_sent(1, &frame(1)).expect("save");
    st.sync().expect("durable");
    let c = cfg(Mode::Async, free_addr(), vec![]);
    let slow = c.timeout.max(c.sync_timeout) * 2;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let mut s = accept_hello(&listener, epoch);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        std::thread::sleep(slow);
        Frame::Welcome {
            seen_epoch: epoch,
            files: vec![],
        }
        .write_to(&mut s, &mut out)
        .expect("welcome");
        let mut data = 0;
        loop {
            match read_frame(&mut s, &mut buf) {
                Ok(Frame::Data { bytes, .. }) => data += bytes.len(),
                Ok(Frame::Sync { pos }) => {
                    Frame::Ack { pos }.write_to(&mut s, &mut out).expect("ack");
                    return Ok(data);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let group = GroupCommit::shared().expect("syncer");
    let mut c = c;
    c.peers = vec![addr];
    let tx = Sender::start(c, a.path(), epoch, group).expect("sender");
    let got = h.join().expect("standby");
    let caught_up = Instant::now() + Duration::from_secs(5);
    while !tx.health().peers[0].in_sync && Instant::now() < caught_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    let health = tx.health();
    tx.stop();
    match got {
        Ok(n) => assert!(n > 0, "the catch-up sent nothing"),
        Err(e) => panic!("the active gave the scanning standby up: {e}; {health:?}"),
    }
    assert!(health.peers[0].in_sync, "{health:?}");
}

/// A standby whose catch-up fails every time (here it drops each link at the first `Data`
/// frame, as one whose disk is full or out of descriptors fails), is tried again less and
/// less often: each attempt reads and checks every record of the active's store and has the
/// standby scan its whole copy, and at `reconnect_interval` (20 ms here) that went on ten to
/// fifty times a second for as long as the fault lasted (review 22, R4).
#[test]
fn catch_ups_that_keep_failing_are_retried_less_and_less_often() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let mut st = FileStore::open(a.path(), &sid(), 41, SyncPolicy::Group).expect("open");
    for i in 1..=10 {
        st.save_sent(i, &frame(i)).expect("save");
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = accepted.clone();
    std::thread::spawn(move || loop {
        let mut s = accept_as_standby(&listener, 41);
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now());
        // The catch-up starts, and fails at its first frame.
        let _ = read_frame(&mut s, &mut Vec::new());
    });
    let c = cfg(Mode::Async, free_addr(), vec![addr]);
    let base = c.reconnect_interval;
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(c, a.path(), 41, group).expect("sender");
    #[allow(clippy::disallowed_methods)] // the window the attempts are counted in
    std::thread::sleep(Duration::from_secs(3));
    tx.stop();
    let at = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("{} catch-ups in 3 s, pauses {gaps:?}", at.len());
    // At a constant 20 ms, 3 s holds over 100; doubling from 20 ms, 8 (20, 40, … 1 280 ms).
    assert!(
        (5..=12).contains(&at.len()),
        "{} failed catch-ups in 3 s (pauses {gaps:?})",
        at.len()
    );
    let (first, last) = (gaps[0], gaps[gaps.len() - 1]);
    assert!(first >= base, "{gaps:?}");
    assert!(last >= first * 8, "the pauses do not grow: {gaps:?}");
}

/// A standby that answers a byte at a time, each byte within the read timeout, cannot hold
/// a link inside one frame: the whole answer must come within `max(sync_timeout, timeout)`
/// (800 ms here), and the link gives up on it then (review 22, R12; with a timeout per read,
/// a 17-byte acknowledgement sent a byte every 100 ms was waited for, and taken, after 1.7 s).
#[test]
fn a_standby_trickling_its_answer_is_given_up_at_the_frame_deadline() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().expect("tmp");
    let mut st = FileStore::open(a.path(), &sid(), 42, SyncPolicy::Group).expect("open");
    st.save_sent(1, &frame(1)).expect("save");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut s = accept_as_standby(&listener, 42);
        let mut buf = Vec::new();
        // The catch-up, acknowledged at once.
        loop {
            match read_frame(&mut s, &mut buf).expect("catch-up") {
                Frame::Sync { pos } => {
                    Frame::Ack { pos }
                        .write_to(&mut s, &mut Vec::new())
                        .expect("ack");
                    break;
                }
                Frame::Data { .. } | Frame::Truncate { .. } => {}
                other => panic!("{}", other.describe()),
            }
        }
        // The next heartbeat's answer, a byte every 100 ms.
        let _ = read_frame(&mut s, &mut buf);
        let mut ack = Vec::new();
        Frame::Ack { pos: 0 }
            .write_to(&mut ack, &mut Vec::new())
            .expect("encode");
        for b in ack {
            #[allow(clippy::disallowed_methods)] // the trickle itself
            std::thread::sleep(Duration::from_millis(100));
            if std::io::Write::write_all(&mut s, &[b]).is_err() {
                return;
            }
        }
        // Hold the connection open while the test looks.
        let _ = read_frame(&mut s, &mut buf);
    });
    let group = GroupCommit::shared().expect("syncer");
    let tx = Sender::start(
        cfg(Mode::Async, free_addr(), vec![addr]),
        a.path(),
        42,
        group,
    )
    .expect("sender");
    wait_until(
        "the link gives the trickled answer up",
        Duration::from_secs(4),
        || {
            tx.health().peers[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("no whole answer"))
        },
    );
    tx.stop();
}
