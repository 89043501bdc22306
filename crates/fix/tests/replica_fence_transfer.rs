//! A stale active stops a transfer in flight: while it catches one standby up (64 MB of
//! store), another standby tells it of a newer epoch, and the transfer ends there, not once
//! every byte is sent (review 22, R11). Its own test binary: once fenced, this process's
//! stores and syncer stay fenced.

mod replica_common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use replica_common::{cfg, free_addr, standby_handshake, wait_until};
use understudy_fix::replica::proto::{read_frame, Frame};
use understudy_fix::replica::{Mode, Receiver, Sender};
use understudy_fix::store::{FileStore, GroupCommit, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

/// What the active holds for the standby to catch up on.
const STORE_BYTES: usize = 64 << 20;

/// Most the standby may still receive after the fence: what the two sockets buffer on
/// loopback (a few MB each way at most here) and the frame being written.
const AFTER_FENCE_BELOW: usize = 24 << 20;

#[test]
fn a_fence_stops_a_catch_up_in_flight() {
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT1");
    let group = GroupCommit::shared().expect("syncer");
    // A real standby, which the test activates with epoch 6 mid-transfer: from then on it
    // refuses epoch 5 and says 6.
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");

    let a = tempfile::tempdir().expect("tmp");
    let mut store = FileStore::open(a.path(), &sid, 5, SyncPolicy::Group).expect("open");
    let record = vec![b'x'; 1000];
    let mut seq = 1;
    while (seq as usize) * record.len() < STORE_BYTES {
        store.save_sent(seq, &record).expect("stored");
        seq += 1;
    }

    // The standby being caught up, by hand: it holds nothing, and reads nothing until the
    // active is fenced, so the transfer is in flight then. Timeouts long enough that the
    // stalled transfer cannot end by itself meanwhile.
    let hand = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hand_addr = hand.local_addr().expect("addr");
    let mut c = cfg(Mode::Sync, free_addr(), vec![hand_addr, b_addr]);
    c.timeout = Duration::from_secs(10);
    c.sync_timeout = Duration::from_secs(20);
    let tx = Sender::start(c, a.path(), 5, group).expect("sender");
    let (mut s, _) = hand.accept().expect("the active connects");
    assert_eq!(standby_handshake(&mut s, b"t0ken"), 5);
    Frame::Welcome {
        seen_epoch: 5,
        files: Vec::new(),
    }
    .write_to(&mut s, &mut Vec::new())
    .expect("welcome");
    wait_until(
        "the real standby caught up",
        Duration::from_secs(15),
        || tx.health().peers[1].in_sync,
    );
    assert!(
        !tx.health().peers[0].in_sync,
        "the hand standby read nothing"
    );
    rx.activate(6).expect("activate 6");
    wait_until(
        "epoch 5 fenced by the other standby",
        Duration::from_secs(5),
        || tx.health().seen_epoch == 6,
    );

    // Now read whatever comes, until the active lets go of the stream.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = Vec::new();
    let mut data = 0usize;
    let end = loop {
        match read_frame(&mut s, &mut buf) {
            Ok(Frame::Data { bytes, .. }) => data += bytes.len(),
            Ok(Frame::Truncate { .. }) => {}
            Ok(other) => panic!(
                "the stale active went on with its catch-up after the fence ({data} bytes), \
                 then sent {}",
                other.describe()
            ),
            Err(e) => break e,
        }
    };
    println!(
        "{data} bytes of the {STORE_BYTES}-byte catch-up reached the standby after the fence; \
         stream ended ({end}) {:?} after the standby read again",
        t.elapsed()
    );
    assert!(
        data > 0,
        "nothing was in flight at the fence: the test shows nothing"
    );
    assert!(
        data < AFTER_FENCE_BELOW,
        "the stale active went on with its catch-up: {data} bytes after the fence"
    );
    tx.stop();
    drop(rx);
}
