//! A FIX session store on a disk that fills up while it starts a new generation: the reset
//! that would start it fails with the disk's error and the store refuses every later write
//! (appending on to the old generation could write records a later open would not read),
//! nothing already stored is lost, and once there is room again a new active's next reset
//! starts the generation and the one after opens from it.

mod skip;

use std::path::Path;

use testbed::Tmpfs;
use understudy_fix::store::{FileStore, SessionId, SessionStore, StoreError, SyncPolicy};
use understudy_fix::tags::BeginString;

fn sid() -> SessionId {
    SessionId::new(BeginString::Fix44, "GW", "CLIENT1")
}

fn msg(seq: u64) -> Vec<u8> {
    let mut m = format!("8=FIX.4.4\x019=5\x0135=8\x01seq={seq}\x01").into_bytes();
    m.resize(400, b'x');
    m
}

fn segments(dir: &Path) -> Vec<String> {
    understudy_fix::store::segment_files(&dir.join(sid().dir_name())).expect("segments")
}

#[test]
fn a_full_disk_fails_the_new_generation_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = match Tmpfs::mount(&tmp.path().join("fs"), "256k") {
        Ok(fs) => fs,
        Err(why) => {
            return skip::skip(
                "a_full_disk_fails_the_new_generation_and_loses_nothing",
                &why,
            )
        }
    };
    let store_dir = fs.dir.join("store");
    let mut s = FileStore::open(&store_dir, &sid(), 1, SyncPolicy::EveryWrite).expect("open");
    s.set_rotate_after(4096);
    for seq in 1..=30 {
        s.save_sent(seq, &msg(seq)).expect("save");
    }
    let filled = fs.fill();
    assert!(filled > 0, "the file system was not filled");

    let err = s
        .reset_for_period(1_800_000_000)
        .expect_err("no room for a new generation");
    assert!(
        matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(
        matches!(s.save_sent(31, &msg(31)), Err(StoreError::Poisoned)),
        "a store whose rotation failed takes no more writes"
    );
    // Nothing is lost: the old generation still counts, here and for a new active.
    assert_eq!(s.period(), None);
    assert_eq!(s.next_sender_seq(), 31);
    assert_eq!(s.sent_range(30, 30).expect("range"), vec![(30, msg(30))]);
    drop(s);
    let mut s = FileStore::open(&store_dir, &sid(), 2, SyncPolicy::EveryWrite)
        .or_else(|_| {
            // Opening writes a claim too: make room for it, as an operator would.
            std::fs::remove_file(fs.dir.join("filler")).expect("free the disk");
            FileStore::open(&store_dir, &sid(), 2, SyncPolicy::EveryWrite)
        })
        .expect("a new active opens");
    assert_eq!(s.next_sender_seq(), 31);
    assert_eq!(s.sent_range(1, 30).expect("range").len(), 30);
    let _ = std::fs::remove_file(fs.dir.join("filler"));

    // With room again, the next reset starts the generation.
    s.set_rotate_after(4096);
    s.reset_for_period(1_800_000_000).expect("new period");
    s.save_sent(1, &msg(1001)).expect("save");
    assert_eq!(
        segments(&store_dir),
        vec![
            "00000000000000000001.log".to_owned(),
            "00000000000000000002.log".to_owned(),
            "00000000000000000002-0000000001.log".to_owned()
        ],
        "what is left of the failed attempt is gone; the rest is history"
    );
    drop(s);
    let s = FileStore::open(&store_dir, &sid(), 3, SyncPolicy::EveryWrite).expect("open");
    assert_eq!(s.period(), Some(1_800_000_000));
    assert_eq!(s.sent_range(1, 5).expect("range"), vec![(1, msg(1001))]);
}
