//! Epoch fencing on the replication stream: a standby refuses an older active and tells it
//! the newer epoch; that active's stores refuse every write from then on. Its own test
//! binary: once fenced, this process's stores and syncer stay fenced.

mod replica_common;

use std::time::Duration;

use understudy_fix::replica::standby::ActivateError;
use understudy_fix::replica::{Mode, Receiver, Sender};

use replica_common::{active_handshake, cfg, free_addr, wait_until};
use understudy_fix::replica::proto::{read_frame, Frame};
use understudy_fix::store::{
    FileStore, GroupCommit, SessionId, SessionStore, StoreError, SyncPolicy,
};
use understudy_fix::tags::BeginString;

#[test]
fn an_older_active_learns_the_newer_epoch_from_the_standby_and_stops_writing() {
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT1");
    let group = GroupCommit::shared().expect("syncer");
    let b = tempfile::tempdir().expect("tmp");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), b.path()).expect("receiver");

    // Epoch 5 streams to the standby: it has seen 5 from now on.
    let a = tempfile::tempdir().expect("tmp");
    let _st5 = FileStore::open(a.path(), &sid, 5, SyncPolicy::Group).expect("open 5");
    let tx5 = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        5,
        group,
    )
    .expect("tx5");
    wait_until("epoch 5 in sync", Duration::from_secs(5), || {
        tx5.health().peers[0].in_sync
    });
    tx5.stop();
    assert_eq!(rx.health().seen_epoch, 5);

    // A former active of epoch 3, on its own copy, resumes and connects: refused, told 5.
    let c = tempfile::tempdir().expect("tmp");
    let mut st3 = FileStore::open(c.path(), &sid, 3, SyncPolicy::Group).expect("open 3");
    let tx3 = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        c.path(),
        3,
        group,
    )
    .expect("tx3");
    wait_until("epoch 3 fenced", Duration::from_secs(5), || {
        !tx3.health().ready
    });
    assert_eq!(tx3.health().seen_epoch, 5);
    match st3.save_sent(1, b"8=FIX.4.4\x0135=8\x01") {
        Err(StoreError::Fenced { ours: 3, newest: 5 }) => {}
        other => panic!("a fenced store wrote: {other:?}"),
    }
    tx3.stop();

    // Activation with an epoch older than one seen on the stream is refused: stale grant.
    assert!(matches!(
        rx.activate(4),
        Err(ActivateError::Stale { epoch: 4, seen: 5 })
    ));
    // Activated with 6, the gateway refuses epoch 5 too, and says 6.
    rx.activate(6).expect("activate 6");
    assert!(rx.health().ready);
    let d = tempfile::tempdir().expect("tmp");
    let _st5b = FileStore::open(d.path(), &sid, 5, SyncPolicy::EveryWrite);
    let tx5b = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        d.path(),
        5,
        group,
    )
    .expect("tx5b");
    wait_until(
        "epoch 5 fenced by the activated gateway",
        Duration::from_secs(5),
        || tx5b.health().seen_epoch == 6,
    );
    tx5b.stop();
    // The epoch survives a restart of the listener (the file in the store directory).
    let rx2 = Receiver::start(cfg(Mode::Sync, free_addr(), vec![]), b.path()).expect("restart");
    assert_eq!(rx2.health().seen_epoch, 6);

    // The gateway activated with 6 hears from an active of epoch 7 that proves the token: it
    // is the stale one now, and its stores stop writing at once (before, it refused 7 and
    // wrote on until its own sender heard of 7 from a standby, if ever).
    let e = tempfile::tempdir().expect("tmp");
    let mut st6 = FileStore::open(e.path(), &sid, 6, SyncPolicy::EveryWrite).expect("open 6");
    st6.save_sent(1, b"8=FIX.4.4\x0135=8\x01")
        .expect("epoch 6 writes until it hears of 7");
    let mut s = std::net::TcpStream::connect(b_addr).expect("connect");
    assert!(active_handshake(&mut s, 7, b"t0ken"), "the standby's proof");
    match read_frame(&mut s, &mut Vec::new()).expect("answer") {
        Frame::Refuse {
            newest_epoch: 6, ..
        } => {}
        other => panic!("{other:?}"),
    }
    match st6.save_sent(2, b"8=FIX.4.4\x0135=8\x01") {
        Err(StoreError::Fenced { ours: 6, newest: 7 }) => {}
        other => {
            panic!("the activated gateway of epoch 6 wrote after epoch 7 reached it: {other:?}")
        }
    }
    drop(rx);
}
