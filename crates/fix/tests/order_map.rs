//! The gateway's order map stays bounded over a long run: done orders leave it after the
//! retention or at a client's new session period, its store is compacted, open orders stay,
//! and a successor (new epoch) replays exactly what is left.

use std::path::Path;
use std::time::Duration;

use understudy_fix::order_map::{OrderMap, Owner};
use understudy_fix::store::{FileStore, SessionId, SyncPolicy};
use understudy_fix::tags::BeginString;

fn open(dir: &Path, epoch: u64, retention: Duration) -> OrderMap {
    // Batch: this is about contents, not durability, and 40 000 records should not take
    // 40 000 fsyncs.
    let store = FileStore::open(
        dir,
        &SessionId::new(BeginString::Fix44, "ORDERS", "GW"),
        epoch,
        SyncPolicy::Batch {
            max_delay: Duration::from_millis(50),
        },
    )
    .expect("store");
    OrderMap::open(store, retention).expect("map")
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
    m.record("C1~gtc", "C1", "EXCH").expect("record");
    let t0 = 1_800_000_000i64;
    let (mut max_len, mut max_records) = (0, 0);
    // 20 000 orders, one a second, each done 5 s after it was sent.
    for i in 0..20_000i64 {
        let now = t0 + i;
        m.record(&format!("C1~o{i}"), "C1", "EXCH").expect("record");
        if i >= 5 {
            m.done(&format!("C1~o{}", i - 5), now).expect("done");
        }
        m.prune(now).expect("prune");
        max_len = max_len.max(m.len());
        max_records = max_records.max(m.stored_records());
    }
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
    println!("20 000 orders: at most {max_len} in the map, {max_records} records in its store");
}

#[test]
fn a_new_period_drops_the_clients_done_orders_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut m = open(tmp.path(), 1, Duration::from_secs(3600));
    for c in ["C1", "C2"] {
        m.record(&format!("{c}~done"), c, "EXCH").expect("record");
        m.record(&format!("{c}~open"), c, "EXCH").expect("record");
        m.done(&format!("{c}~done"), 1_800_000_000).expect("done");
    }
    assert_eq!(m.prune_client("C1").expect("prune"), 1);
    assert_eq!(m.get("C1~done"), None);
    assert!(m.get("C1~open").is_some());
    assert!(m.get("C2~done").is_some(), "another client's orders stay");
    assert_eq!(m.len(), 3);
}
