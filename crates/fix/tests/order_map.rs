//! The gateway's order map stays bounded over a long run: done orders leave it after the
//! retention or at a client's new session period, its store is compacted, open orders stay,
//! and a successor (new epoch) replays exactly what is left.

use std::path::Path;
use std::time::Duration;

use understudy_fix::codec::MessageBuilder;
use understudy_fix::order_map::{OrderMap, Owner, Rebuilt, Side};
use understudy_fix::orders::tag;
use understudy_fix::store::{FileStore, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

fn open(dir: &Path, epoch: u64, retention: Duration) -> OrderMap {
    // Batch: this is about contents, not durability, and 40 000 records should not take
    // 40 000 fsyncs.
    let mut store = FileStore::open(
        dir,
        &SessionId::new(BeginString::Fix44, "ORDERS", "GW"),
        epoch,
        SyncPolicy::Batch {
            max_delay: Duration::from_millis(50),
        },
    )
    .expect("store");
    // Small, so that 20 000 orders cross it many times (the default is 4 MiB).
    store.set_rotate_after(ROTATE_AFTER);
    OrderMap::open(store, retention).expect("map")
}

const ROTATE_AFTER: u64 = 64 << 10;

/// Bytes of the order map's segment files on disk.
fn bytes_on_disk(dir: &Path) -> u64 {
    let sub = dir.join(SessionId::new(BeginString::Fix44, "ORDERS", "GW").dir_name());
    std::fs::read_dir(sub)
        .expect("readdir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn owner(client: &str) -> Owner {
    Owner {
        client: client.into(),
        upstream: "EXCH".into(),
    }
}

#[test]
fn a_long_run_keeps_the_map_and_its_store_bounded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let retention = Duration::from_secs(60);
    let mut m = open(tmp.path(), 1, retention);
    // A resting order that never finishes.
    m.record("C1~gtc", "C1", "EXCH");
    let t0 = 1_800_000_000i64;
    let (mut max_len, mut max_records, mut max_bytes) = (0, 0, 0);
    // 20 000 orders, one a second, each done 5 s after it was sent.
    for i in 0..20_000i64 {
        let now = t0 + i;
        m.record(&format!("C1~o{i}"), "C1", "EXCH");
        if i >= 5 {
            assert!(m.done(&format!("C1~o{}", i - 5), now));
        }
        // The gateway's tick: the changes written, then the map pruned.
        m.flush(&[]).expect("flush");
        m.prune(now).expect("prune");
        max_len = max_len.max(m.len());
        max_records = max_records.max(m.stored_records());
        if i % 250 == 0 {
            max_bytes = max_bytes.max(bytes_on_disk(tmp.path()));
        }
    }
    // Its files too: every record ever written would be about 2.3 MB; the superseded
    // generations are deleted.
    assert!(
        max_bytes <= 6 * ROTATE_AFTER,
        "the store's files held {max_bytes} bytes"
    );
    // Live: the resting order, 5 not done yet, and at most 60 s of done ones.
    assert!(max_len <= 1 + 5 + 61, "the map held {max_len} orders");
    assert!(
        max_records <= 2 * 2 * 67 + 1024 + 2,
        "the store held {max_records} records"
    );
    assert_eq!(m.get("C1~gtc"), Some(&owner("C1")), "an open order is kept");
    assert_eq!(m.get("C1~o0"), None, "an old done order is gone");
    assert_eq!(m.get("C1~o19999"), Some(&owner("C1")));
    let len = m.len();
    drop(m);

    // The successor sees the same map, done times included: what it replays beyond the
    // last compaction was pruned at the same instant, and the done orders still leave on
    // time.
    let mut next = open(tmp.path(), 2, retention);
    next.prune(t0 + 19_999).expect("prune");
    assert_eq!(next.len(), len);
    assert_eq!(next.get("C1~gtc"), Some(&owner("C1")));
    assert_eq!(next.get("C1~o0"), None);
    next.prune(t0 + 20_000 + 120).expect("prune");
    assert_eq!(
        next.len(),
        1 + 5,
        "only the open orders are left after the retention"
    );
    println!(
        "20 000 orders: at most {max_len} in the map, {max_records} records and \
         {max_bytes} bytes in its store"
    );
}

#[test]
fn a_new_period_drops_the_clients_done_orders_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut m = open(tmp.path(), 1, Duration::from_secs(3600));
    for c in ["C1", "C2"] {
        m.record(&format!("{c}~done"), c, "EXCH");
        m.record(&format!("{c}~open"), c, "EXCH");
        assert!(m.done(&format!("{c}~done"), 1_800_000_000));
    }
    assert_eq!(m.prune_client("C1").expect("prune"), 1);
    assert_eq!(m.get("C1~done"), None);
    assert!(m.get("C1~open").is_some());
    assert!(m.get("C2~done").is_some(), "another client's orders stay");
    assert_eq!(m.len(), 3);
}

fn store(dir: &Path, target: &str, epoch: u64) -> FileStore {
    FileStore::open(
        dir,
        &SessionId::new(BeginString::Fix44, "GW", target),
        epoch,
        SyncPolicy::EveryWrite,
    )
    .expect("store")
}

/// A frame as the gateway stores it: `msg_type` with ClOrdID `id` (and OrdStatus `status`).
fn frame(msg_type: &[u8], id: &str, status: Option<&str>) -> Vec<u8> {
    let mut b = MessageBuilder::new(BeginString::Fix44, msg_type);
    b.push_str(49, "GW").push_str(56, "X").push_uint(34, 1);
    b.push_str(tag::CL_ORD_ID, id).push_str(tag::SYMBOL, "S");
    if let Some(s) = status {
        b.push_str(tag::ORDER_ID, "1")
            .push_str(tag::EXEC_ID, "1")
            .push_str(tag::ORD_STATUS, s);
    }
    b.finish().expect("frame")
}

fn save(s: &mut FileStore, f: Vec<u8>) {
    let seq = s.next_sender_seq();
    s.save_sent(seq, &f).expect("save");
}

fn key(target: &str) -> String {
    SessionId::new(BeginString::Fix44, "GW", target).dir_name()
}

fn rebuild(m: &mut OrderMap, up: &FileStore, client: &FileStore) -> Rebuilt {
    let (ku, kc) = (key("EXCH"), key("C1"));
    m.rebuild(
        &[
            Side {
                key: &kc,
                name: "C1",
                upstream: false,
                store: client,
            },
            Side {
                key: &ku,
                name: "EXCH",
                upstream: true,
                store: up,
            },
        ],
        1_800_000_000,
    )
    .expect("rebuild")
}

/// A successor reads only what was written after the last checkpoint, across a new epoch
/// and a sequence reset of the upstream session, and finds every order and terminal report
/// the map missed; a compaction keeps the checkpoint.
#[test]
fn a_checkpoint_bounds_what_a_successor_reads_and_misses_nothing_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut up, mut cl) = (store(tmp.path(), "EXCH", 1), store(tmp.path(), "C1", 1));
    let mut m = open(tmp.path(), 1, Duration::from_secs(3600));
    assert_eq!(rebuild(&mut m, &up, &cl), Rebuilt::default());
    for i in 0..50 {
        save(&mut up, frame(b"D", &format!("C1~a{i}"), None));
        m.record(&format!("C1~a{i}"), "C1", "EXCH");
    }
    let (ku, kc) = (key("EXCH"), key("C1"));
    m.flush(&[(&ku, up.mark()), (&kc, cl.mark())])
        .expect("flush");
    // After the checkpoint, and lost with the process: two orders (one after a sequence
    // reset), a fill of one of them and of an order from before the checkpoint.
    save(&mut up, frame(b"D", "C1~b0", None));
    up.reset().expect("reset");
    save(&mut up, frame(b"D", "C1~b1", None));
    save(&mut cl, frame(b"8", "b0", Some("2")));
    save(&mut cl, frame(b"8", "a7", Some("2")));
    save(&mut cl, frame(b"8", "b1", Some("0")));
    // The gateway's own refusal of an order that reused a live order's ClOrdID: not a
    // report of that order, which stays live.
    let mut refusal = MessageBuilder::new(BeginString::Fix44, b"8");
    refusal
        .push_str(49, "GW")
        .push_str(56, "C1")
        .push_uint(34, 1)
        .push_str(tag::ORDER_ID, "NONE")
        .push_str(tag::CL_ORD_ID, "a3")
        .push_str(tag::EXEC_ID, "GWREJ-7")
        .push_str(tag::ORD_STATUS, "8");
    save(&mut cl, refusal.finish().expect("frame"));
    std::mem::forget(m);
    drop((up, cl));

    let (up, cl) = (store(tmp.path(), "EXCH", 2), store(tmp.path(), "C1", 2));
    let mut m = open(tmp.path(), 2, Duration::ZERO);
    assert_eq!(m.len(), 50);
    assert_eq!(
        rebuild(&mut m, &up, &cl),
        Rebuilt {
            scanned: 6,
            owners: 2,
            done: 2
        },
        "read record by record from the checkpoint: the reset hides nothing"
    );
    assert_eq!(m.get("C1~b1"), Some(&owner("C1")));
    // b0's order left the upstream store's index with the reset, but not its file.
    assert_eq!(m.get("C1~b0"), Some(&owner("C1")));
    // 600 more orders, done and pruned: the store is compacted. The checkpoint survives in
    // the snapshot, so the next successor reads nothing again.
    for i in 0..600 {
        let id = format!("C1~z{i}");
        m.record(&id, "C1", "EXCH");
        assert!(m.done(&id, 1_800_000_000));
    }
    m.flush(&[]).expect("flush");
    let before = m.stored_records();
    assert_eq!(
        m.prune(i64::MAX).expect("prune"),
        602,
        "a7, b0 and the z orders were done (a3 was not: the refusal is not its report)"
    );
    assert!(
        m.stored_records() < before / 10,
        "compacted: {before} → {} records",
        m.stored_records()
    );
    drop(m);
    drop((up, cl));
    let (up, cl) = (store(tmp.path(), "EXCH", 3), store(tmp.path(), "C1", 3));
    let mut m = open(tmp.path(), 3, Duration::ZERO);
    assert_eq!(rebuild(&mut m, &up, &cl).scanned, 0);
    assert_eq!(m.len(), 50);
}
