//! The fenced file store against real files: recovery after torn writes, corruption
//! detection, and fencing between handles that behave like separate processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use understudy_fix::store::{
    FileStore, SessionId, SessionStore, StoreError, StoreMark, SyncPolicy,
};
use understudy_fix::tags::BeginString;

fn sid() -> SessionId {
    SessionId::new(BeginString::Fix44, "GW", "CLIENT-1")
}

fn open(dir: &Path, epoch: u64) -> Result<FileStore, StoreError> {
    FileStore::open(dir, &sid(), epoch, SyncPolicy::EveryWrite)
}

fn segment(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(sid().dir_name()).join(format!("{epoch:020}.log"))
}

/// Where a segment's records end: a writer keeps zeros written ahead of them, so the file's
/// size says nothing.
fn records_len(path: &Path) -> u64 {
    understudy_fix::store::records_len(path).expect("walk")
}

fn msg(seq: u64) -> Vec<u8> {
    format!("8=FIX.4.4\x019=5\x0135=D\x01seq={seq}\x01").into_bytes()
}

fn copy_dir(from: &Path, to: &Path) {
    let sub = sid().dir_name();
    std::fs::create_dir_all(to.join(&sub)).expect("mkdir");
    for e in std::fs::read_dir(from.join(&sub)).expect("readdir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(&sub).join(e.file_name())).expect("copy");
    }
}

#[test]
fn state_survives_reopen_and_takeover() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let mut s = open(tmp.path(), 1).expect("open");
        assert_eq!((s.next_sender_seq(), s.next_target_seq()), (1, 1));
        s.set_next_target_seq(5).expect("target");
        for seq in 1..=3 {
            s.save_sent(seq, &msg(seq)).expect("save");
        }
        s.set_next_sender_seq(5).expect("admin message 4");
        s.save_sent(5, &msg(5)).expect("save");
    }
    // Same epoch again (the same active restarting its store).
    {
        let s = open(tmp.path(), 1).expect("reopen");
        assert!(s.recovery().reopened);
        assert_eq!((s.next_sender_seq(), s.next_target_seq()), (6, 5));
    }
    // A new active.
    let mut s = open(tmp.path(), 7).expect("takeover");
    assert!(!s.recovery().reopened);
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (6, 5));
    let got = s.sent_range(2, 100).expect("range");
    let seqs: Vec<u64> = got.iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, vec![2, 3, 5]);
    assert_eq!(got[0].1, msg(2));
    s.save_sent(6, &msg(6)).expect("save");
    drop(s);

    // A third active sees both segments through the seals.
    let mut s = open(tmp.path(), 9).expect("takeover 2");
    assert_eq!(s.recovery().segments, vec![1, 7, 9]);
    assert_eq!(s.next_sender_seq(), 7);
    assert_eq!(s.sent_range(1, 6).expect("range").len(), 5);
    s.reset().expect("reset");
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (1, 1));
    drop(s);
    let s = open(tmp.path(), 9).expect("reopen after reset");
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (1, 1));
    assert!(s.sent_range(1, 100).expect("range").is_empty());
}

#[test]
fn torn_last_record_at_every_offset_keeps_every_complete_record() {
    let tmp = tempfile::tempdir().expect("tmp");
    let before;
    {
        let mut s = open(tmp.path(), 3).expect("open");
        s.set_next_target_seq(2).expect("target");
        s.save_sent(1, &msg(1)).expect("save");
        s.save_sent(2, &msg(2)).expect("save");
        before = records_len(&segment(tmp.path(), 3));
        s.save_sent(3, &msg(3)).expect("save");
    }
    let after = records_len(&segment(tmp.path(), 3));
    assert!(after > before);
    for cut in before..after {
        for reopen_same_epoch in [false, true] {
            let work = tempfile::tempdir().expect("tmp");
            copy_dir(tmp.path(), work.path());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(segment(work.path(), 3))
                .expect("open seg");
            f.set_len(cut).expect("truncate");
            drop(f);
            let epoch = if reopen_same_epoch { 3 } else { 4 };
            let mut s = open(work.path(), epoch).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            // Counted up to the last byte that is not zero: the record's own zeros at the cut
            // look like those written ahead.
            assert!(s.recovery().torn_tail_bytes <= cut - before, "cut {cut}");
            assert_eq!(s.next_sender_seq(), 3, "cut {cut}");
            assert_eq!(s.next_target_seq(), 2, "cut {cut}");
            let got = s.sent_range(1, 10).expect("range");
            assert_eq!(got, vec![(1, msg(1)), (2, msg(2))], "cut {cut}");
            // The store stays writable and the new record survives another recovery.
            s.save_sent(3, &msg(33)).expect("save after recovery");
            drop(s);
            let s = open(work.path(), 5).expect("again");
            assert_eq!(s.sent_range(3, 3).expect("range"), vec![(3, msg(33))]);
            assert_eq!(s.recovery().torn_tail_bytes, 0);
        }
    }
}

/// Zeros after the last record (what a writer keeps ahead of its records, or a filesystem
/// leaves when a crash extended the size first) are no tear and lose nothing.
#[test]
fn zero_filled_tail_is_not_a_tear() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let mut s = open(tmp.path(), 1).expect("open");
        s.save_sent(1, &msg(1)).expect("save");
    }
    let path = segment(tmp.path(), 1);
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len + 40).expect("extend with zeros");
    drop(f);
    let s = open(tmp.path(), 2).expect("open");
    assert_eq!(s.recovery().torn_tail_bytes, 0);
    assert_eq!(s.next_sender_seq(), 2);
    assert_eq!(s.sent_range(1, 1).expect("range"), vec![(1, msg(1))]);
}

#[test]
fn any_corrupted_byte_in_a_middle_record_is_reported() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (start, end);
    {
        let mut s = open(tmp.path(), 1).expect("open");
        s.save_sent(1, &msg(1)).expect("save");
        start = records_len(&segment(tmp.path(), 1));
        s.save_sent(2, &msg(2)).expect("save");
        end = records_len(&segment(tmp.path(), 1));
        s.save_sent(3, &msg(3)).expect("save");
    }
    for off in start..end {
        for newer in [false, true] {
            let work = tempfile::tempdir().expect("tmp");
            copy_dir(tmp.path(), work.path());
            if newer {
                // Put the damaged record in a sealed, older segment.
                drop(open(work.path(), 2).expect("seal"));
            }
            let path = segment(work.path(), 1);
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[off as usize] ^= 0x40;
            std::fs::write(&path, &bytes).expect("write");
            match open(work.path(), 3) {
                Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, start, "off {off}"),
                other => panic!("off {off}: expected Corrupt, got {other:?}"),
            }
        }
    }
}

#[test]
fn old_epoch_is_refused_by_a_second_handle() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Two handles on one directory behave like two processes: flock and the fence file are
    // per open file description.
    let mut old = open(tmp.path(), 1).expect("old active");
    old.save_sent(1, &msg(1)).expect("save");
    old.set_next_target_seq(4).expect("target");

    let mut new = open(tmp.path(), 2).expect("new active");
    assert_eq!(new.next_sender_seq(), 2);
    assert_eq!(new.next_target_seq(), 4);

    // The old active resumes: its very next write is refused, and stays refused.
    match old.save_sent(2, &msg(2)) {
        Err(StoreError::Fenced { ours: 1, newest: 2 }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(
        old.set_next_target_seq(9),
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(old.check_fence(), Err(StoreError::Fenced { .. })));

    // The new active is unaffected and a reopen with the old epoch is refused.
    new.save_sent(2, &msg(22)).expect("new writes");
    match open(tmp.path(), 1) {
        Err(StoreError::Fenced { ours: 1, newest: 2 }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    drop(new);
    let s = open(tmp.path(), 3).expect("third");
    assert_eq!(
        s.sent_range(1, 2).expect("range"),
        vec![(1, msg(1)), (2, msg(22))]
    );
}

#[test]
fn same_epoch_twice_is_in_use() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _a = open(tmp.path(), 1).expect("a");
    assert!(matches!(open(tmp.path(), 1), Err(StoreError::InUse(_))));
}

#[test]
fn batch_policy_persists_on_sync() {
    let tmp = tempfile::tempdir().expect("tmp");
    let policy = SyncPolicy::Batch {
        max_delay: Duration::from_secs(3600),
    };
    {
        let mut s = FileStore::open(tmp.path(), &sid(), 1, policy).expect("open");
        for seq in 1..=100 {
            s.save_sent(seq, &msg(seq)).expect("save");
        }
        s.sync().expect("sync");
        s.sync_if_due().expect("nothing due");
    }
    let s = open(tmp.path(), 2).expect("open");
    assert_eq!(s.next_sender_seq(), 101);
}

#[test]
fn session_dir_names_are_one_safe_component() {
    let id = SessionId::new(BeginString::Fix42, "A-B", "C/D");
    assert_eq!(id.dir_name(), "A%2DB-C%2FD-FIX.4.2");
}

/// The segment files of the test session, oldest first.
fn segment_files(dir: &Path) -> Vec<String> {
    understudy_fix::store::segment_files(&dir.join(sid().dir_name())).expect("segments")
}

fn seg_name(epoch: u64, generation: u64) -> String {
    if generation == 0 {
        format!("{epoch:020}.log")
    } else {
        format!("{epoch:020}-{generation:010}.log")
    }
}

fn sent_after(s: &FileStore, mark: StoreMark) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    s.for_each_sent_after(mark, |m| out.push(m.to_vec()))
        .expect("read after mark");
    out
}

/// A long-lived store stays as large as its live period: past the rotation size, a new
/// period starts a new generation, the segments older than the one it supersedes (and what
/// that one counted) are deleted, across takeovers too, a successor replays only the new
/// generation, and a mark taken before a takeover and the reset still reads what followed
/// it.
#[test]
fn a_new_period_past_the_rotation_size_starts_a_generation_and_drops_older_segments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let big = |seq: u64| {
        let mut m = msg(seq);
        m.resize(500, b'x');
        m
    };
    let before_takeover = {
        let mut s = open(dir, 1).expect("open");
        s.set_rotate_after(16 << 10);
        for seq in 1..=19 {
            s.save_sent(seq, &big(seq)).expect("save");
        }
        let mark = s.mark();
        s.save_sent(20, &msg(20)).expect("save");
        mark
    };
    // A takeover: epoch 2 counts epoch 1's segment.
    let mut s = open(dir, 2).expect("takeover");
    s.set_rotate_after(16 << 10);
    for seq in 21..=40 {
        s.save_sent(seq, &big(seq)).expect("save");
    }
    s.set_next_target_seq(33).expect("target");
    let before_reset = s.mark();
    s.save_sent(41, &msg(41)).expect("save");
    assert_eq!(segment_files(dir), vec![seg_name(1, 0), seg_name(2, 0)]);

    s.reset_for_period(1_800_000_000).expect("new period");
    assert_eq!(s.segment().generation, 1, "a new generation");
    assert_eq!(
        segment_files(dir),
        vec![seg_name(1, 0), seg_name(2, 0), seg_name(2, 1)],
        "the superseded generation and what it counted stay, as history"
    );
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (1, 1));
    s.save_sent(1, &msg(1001)).expect("save");
    s.set_next_target_seq(7).expect("target");
    let got = sent_after(&s, before_reset);
    assert_eq!(
        got,
        vec![msg(41), msg(1001)],
        "a mark before the reset reads on"
    );
    drop(s);

    // The next active replays only the new generation.
    let mut s = open(dir, 3).expect("takeover 2");
    let r = s.recovery().clone();
    assert!(
        r.bytes_replayed < 1024,
        "replayed {} bytes",
        r.bytes_replayed
    );
    assert_eq!(r.segments, vec![2, 3]);
    assert_eq!(s.period(), Some(1_800_000_000));
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (2, 7));
    assert_eq!(s.sent_range(1, 10).expect("range"), vec![(1, msg(1001))]);
    assert_eq!(sent_after(&s, before_reset), vec![msg(41), msg(1001)]);
    let after_takeover = sent_after(&s, before_takeover);
    assert_eq!(after_takeover.first(), Some(&msg(20)));
    assert_eq!(
        after_takeover.len(),
        1 + 20 + 1 + 1,
        "epoch 1's tail, 21..=41, 1001"
    );
    assert_eq!(
        segment_files(dir),
        vec![
            seg_name(1, 0),
            seg_name(2, 0),
            seg_name(2, 1),
            seg_name(3, 0)
        ]
    );
    // Below the rotation size a reset is an ordinary record.
    s.set_rotate_after(1 << 20);
    s.reset().expect("reset");
    assert_eq!(s.segment().generation, 0);
    assert_eq!(segment_files(dir).len(), 4);
    // Past it, a reset keeps the period; what is older than epoch 3's segment and not what
    // it counted goes.
    s.set_rotate_after(1);
    s.save_sent(1, &msg(2001)).expect("save");
    s.reset().expect("reset");
    assert_eq!(
        segment_files(dir),
        vec![seg_name(2, 1), seg_name(3, 0), seg_name(3, 1)]
    );
    s.save_sent(1, &msg(3001)).expect("save");
    drop(s);
    let s = open(dir, 4).expect("takeover 3");
    assert_eq!(s.period(), Some(1_800_000_000));
    assert_eq!(s.sent_range(1, 10).expect("range"), vec![(1, msg(3001))]);
    assert_eq!(
        segment_files(dir),
        vec![
            seg_name(2, 1),
            seg_name(3, 0),
            seg_name(3, 1),
            seg_name(4, 0)
        ]
    );
}

/// A snapshot (how the order map compacts) that starts a generation keeps the target
/// number and the period, and reopening the same epoch continues the new generation.
#[test]
fn a_snapshot_generation_keeps_the_target_and_the_period_and_reopens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut s = open(dir, 5).expect("open");
    s.reset_for_period(1_700_000_000).expect("period");
    s.set_next_target_seq(12).expect("target");
    for seq in 1..=5 {
        s.save_sent(seq, &msg(seq)).expect("save");
    }
    s.set_rotate_after(1);
    s.replace_sent(&[msg(4), msg(5)]).expect("snapshot");
    assert_eq!(s.segment().generation, 1);
    assert_eq!(
        s.sent_range(1, 10).expect("range"),
        vec![(1, msg(4)), (2, msg(5))],
        "read where the new generation holds them"
    );
    s.save_sent(3, &msg(6)).expect("save");
    drop(s);
    // The same epoch again (the same active restarting its store).
    let mut s = open(dir, 5).expect("reopen");
    assert!(s.recovery().reopened);
    assert_eq!(s.segment().generation, 1);
    assert_eq!(s.period(), Some(1_700_000_000));
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (4, 12));
    assert_eq!(
        s.sent_range(1, 10).expect("range"),
        vec![(1, msg(4)), (2, msg(5)), (3, msg(6))]
    );
    s.save_sent(4, &msg(7)).expect("save");
    drop(s);
    let s = open(dir, 6).expect("takeover");
    assert_eq!(s.sent_range(4, 4).expect("range"), vec![(4, msg(7))]);
}

/// A crash in the middle of starting a generation leaves a file without a whole claim:
/// the next open starts from the generation before and deletes the leftover, whatever
/// epoch opens.
#[test]
fn a_generation_torn_at_its_claim_is_ignored_and_deleted() {
    for (reopen_epoch, reopened) in [(1, true), (2, false)] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        {
            let mut s = open(dir, 1).expect("open");
            s.save_sent(1, &msg(1)).expect("save");
        }
        let torn = dir.join(sid().dir_name()).join(seg_name(1, 1));
        std::fs::write(&torn, [7u8, 0, 0, 0, 0xf8]).expect("write torn claim");
        let s = open(dir, reopen_epoch).expect("reopen");
        assert_eq!(s.recovery().reopened, reopened);
        assert_eq!(s.sent_range(1, 1).expect("range"), vec![(1, msg(1))]);
        assert!(!torn.exists(), "the torn generation is deleted");
        assert_eq!(s.recovery().removed, vec![seg_name(1, 1)]);
    }
}

/// A writer fenced by a newer epoch starts no generation and deletes nothing: the newer
/// writer's segments and its view are untouched.
#[test]
fn a_fenced_writer_neither_rotates_nor_deletes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut old = open(dir, 1).expect("old");
    old.set_rotate_after(1);
    old.save_sent(1, &msg(1)).expect("save");
    let mut new = open(dir, 2).expect("new");
    new.save_sent(2, &msg(2)).expect("save");
    assert!(matches!(
        old.reset_for_period(1_800_000_000),
        Err(StoreError::Fenced { ours: 1, newest: 2 })
    ));
    assert_eq!(segment_files(dir), vec![seg_name(1, 0), seg_name(2, 0)]);
    drop(new);
    let s = open(dir, 3).expect("third");
    assert_eq!(s.period(), None);
    assert_eq!(s.sent_range(1, 2).expect("range").len(), 2);
}

/// A new generation counts only once the records that restore its state are all whole: one
/// cut inside its snapshot, or zeroed there with its length intact (what a crash before its
/// sync can leave), is ignored, and the generation before it still counts.
#[test]
fn a_generation_whose_restoring_records_are_not_whole_does_not_count() {
    for zeroed in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        {
            let mut s = open(dir, 1).expect("open");
            for seq in 1..=5 {
                s.save_sent(seq, &msg(seq)).expect("save");
            }
            s.set_next_target_seq(9).expect("target");
            s.set_rotate_after(1);
            s.replace_sent(&[msg(4), msg(5)]).expect("snapshot");
            assert_eq!(s.segment().generation, 1);
        }
        let newest = dir.join(sid().dir_name()).join(seg_name(1, 1));
        let len = records_len(&newest);
        if zeroed {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)
                .expect("open");
            std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 10], len - 10).expect("zero");
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)
                .and_then(|f| f.set_len(len - 3))
                .expect("cut");
        }
        let s = open(dir, 2).expect("a new active");
        assert_eq!(
            (s.next_sender_seq(), s.next_target_seq()),
            (6, 9),
            "zeroed {zeroed}: the state before the snapshot"
        );
        assert_eq!(s.sent_range(1, 10).expect("range").len(), 5);
        assert_eq!(
            segment_files(dir),
            vec![seg_name(1, 0), seg_name(2, 0)],
            "the incomplete generation is deleted"
        );
    }
}

/// A snapshot too large for one record (the order map of several hundred thousand live
/// orders) is written as a new generation of one record per message, and a new active reads
/// it whole.
#[test]
fn a_snapshot_larger_than_a_record_becomes_a_generation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut s = open(dir, 1).expect("open");
    s.reset_for_period(1_700_000_000).expect("period");
    s.set_next_target_seq(4).expect("target");
    s.save_sent(1, &msg(1)).expect("save");
    let big: Vec<Vec<u8>> = (0..66u8).map(|i| vec![b'a' + i % 26; 1 << 20]).collect();
    s.replace_sent(&big).expect("snapshot of 66 MiB");
    assert_eq!(s.segment().generation, 1, "a generation of its own");
    assert_eq!(s.next_sender_seq(), 67);
    assert_eq!(
        s.sent_range(66, 66).expect("range"),
        vec![(66, big[65].clone())]
    );
    drop(s);
    let s = open(dir, 2).expect("a new active");
    assert_eq!(s.period(), Some(1_700_000_000));
    assert_eq!((s.next_sender_seq(), s.next_target_seq()), (67, 4));
    let got = s.sent_range(1, 100).expect("range");
    assert_eq!(got.len(), 66);
    assert!(got.iter().all(|(seq, m)| *m == big[*seq as usize - 1]));
}

/// A record is written over zeros the writer wrote ahead, not appended: the file's size
/// (metadata its `fdatasync` would have to journal) stays put within a chunk, and grows a
/// chunk at a time.
#[test]
fn records_overwrite_the_zeros_written_ahead() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = segment(tmp.path(), 1);
    let size = |p: &Path| std::fs::metadata(p).expect("stat").len();
    let mut s = open(tmp.path(), 1).expect("open");
    s.save_sent(1, &msg(1)).expect("save");
    let first = size(&path);
    assert!(
        first >= records_len(&path) + 4096,
        "zeros ahead: {first} vs {}",
        records_len(&path)
    );
    for seq in 2..=50 {
        s.save_sent(seq, &msg(seq)).expect("save");
    }
    assert_eq!(size(&path), first, "written in place");
    drop(s);
    let s = open(tmp.path(), 2).expect("takeover");
    assert_eq!(s.next_sender_seq(), 51);
    assert_eq!(s.recovery().torn_tail_bytes, 0);
    assert_eq!(s.recovery().bytes_replayed, records_len(&path));

    // A store with a small rotation size keeps a smaller chunk: cross several of them.
    let tmp = tempfile::tempdir().expect("tmp");
    let path = segment(tmp.path(), 1);
    let mut s = open(tmp.path(), 1).expect("open");
    s.set_rotate_after(16 << 10);
    let mut sizes = std::collections::BTreeSet::new();
    for seq in 1..=400 {
        s.save_sent(seq, &msg(seq)).expect("save");
        let (sz, rl) = (size(&path), records_len(&path));
        assert!(sz >= rl && sz - rl <= 8192, "{sz} vs {rl}");
        sizes.insert(sz);
    }
    assert!(sizes.len() >= 3, "grew a chunk at a time: {sizes:?}");
    drop(s);
    let s = open(tmp.path(), 2).expect("takeover");
    assert_eq!(s.next_sender_seq(), 401);
    assert_eq!(s.recovery().torn_tail_bytes, 0);
    let got = s.sent_range(1, 400).expect("range");
    assert!(got.iter().all(|(i, m)| *m == msg(*i)) && got.len() == 400);
}

fn long_msg(seq: u64) -> Vec<u8> {
    format!(
        "8=FIX.4.4\x019=5\x0135=8\x01seq={seq}\x0158={}\x01",
        "x".repeat(300)
    )
    .into_bytes()
}

/// A machine crash during a pass leaves each 512-byte sector the pass wrote either written
/// or as it was (zeros written ahead), in any combination: sectors after an unwritten one may
/// have reached the disk. For every sector of the pass, left unwritten alone or with all
/// after it, the store opens, keeps every record before the first one that sector cuts, and
/// nothing after it (nothing of the pass was sent: it was not durable).
#[test]
fn a_crash_during_a_pass_keeps_every_record_before_the_first_unwritten_sector() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = segment(tmp.path(), 1);
    let mut ends = Vec::new();
    {
        let mut s = open(tmp.path(), 1).expect("open");
        for seq in 1..=9 {
            s.save_sent(seq, &long_msg(seq)).expect("save");
            ends.push(records_len(&path));
        }
    }
    // Records 1..=3 were synced; 4..=9 are the pass a crash cut short.
    let (synced, written) = (ends[2], ends[8]);
    let image = std::fs::read(&path).expect("read");
    for sector in synced / 512..=(written - 1) / 512 {
        for to_end in [false, true] {
            let lo = synced.max(sector * 512);
            let hi = if to_end {
                written
            } else {
                ((sector + 1) * 512).min(written)
            };
            let mut bytes = image.clone();
            bytes[lo as usize..hi as usize].fill(0);
            let work = tempfile::tempdir().expect("tmp");
            copy_dir(tmp.path(), work.path());
            std::fs::write(segment(work.path(), 1), &bytes).expect("write");
            let s = open(work.path(), 2)
                .unwrap_or_else(|e| panic!("sector {sector}, to_end {to_end}: {e}"));
            let kept = ends.iter().filter(|&&e| e <= lo).count() as u64;
            assert_eq!(
                s.next_sender_seq(),
                kept + 1,
                "sector {sector}, to_end {to_end}"
            );
            let got = s.sent_range(1, 9).expect("range");
            assert_eq!(got.len() as u64, kept);
            assert!(got.iter().all(|(i, m)| *m == long_msg(*i)));
        }
    }
}

/// A flipped bit in a record whose last bytes (a sequence number's high bytes, zeros by
/// value) lie alone in the next sector is corruption, not a tear: a sector a crash left
/// unwritten would be zero to its end, and here the records after it fill that sector.
/// Taken for a tear, the store would open without the messages after it and number new ones
/// over them.
#[test]
fn a_flipped_bit_in_a_record_ending_in_zeros_across_a_sector_is_corruption() {
    for same_epoch in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = segment(tmp.path(), 1);
        let start;
        {
            let mut s = open(tmp.path(), 1).expect("open");
            s.save_sent(1, &msg(1)).expect("save");
            // Pad with one message so that the next record (next target: 29 bytes, the last
            // 7 zeros) starts 24 bytes before a sector boundary.
            let at = records_len(&path);
            let overhead = 12 + 9 + 8;
            let mut len = 512 - (at + overhead + 24) % 512 + 512;
            len %= 512;
            if len < 40 {
                len += 512;
            }
            let mut m = msg(2);
            m.resize(len as usize - 1, b'x');
            m.push(1);
            s.save_sent(2, &m).expect("pad");
            start = records_len(&path);
            assert_eq!((start + 24) % 512, 0, "placed across the boundary");
            s.set_next_target_seq(2).expect("target");
            for seq in 3..=6 {
                s.save_sent(seq, &msg(seq)).expect("save");
            }
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let size = f.metadata().expect("stat").len();
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, start + 21).expect("read");
        b[0] ^= 0x10;
        std::os::unix::fs::FileExt::write_all_at(&f, &b, start + 21).expect("flip");
        drop(f);
        match open(tmp.path(), if same_epoch { 1 } else { 2 }) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, start),
            other => panic!("same epoch {same_epoch}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            size,
            "nothing cut"
        );
    }
}

/// The other edge: a record whose share of its first sector is a single byte of its length,
/// zero by value (a length of 512). A header that passed its check vouches for that byte,
/// so a flipped bit further in is corruption, not a tear.
#[test]
fn a_flipped_bit_in_a_record_whose_first_sector_holds_a_zero_length_byte_is_corruption() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = segment(tmp.path(), 1);
    let overhead = 12 + 9 + 8;
    let sized = |seq: u64, total: u64| {
        let mut m = msg(seq);
        m.resize((total - overhead - 1) as usize, b'x');
        m.push(1);
        m
    };
    let start;
    {
        let mut s = open(tmp.path(), 1).expect("open");
        s.save_sent(1, &msg(1)).expect("save");
        let at = records_len(&path);
        // A pad record ending one byte before a sector boundary.
        let mut pad = (511 - at % 512) % 512;
        if pad < 80 {
            pad += 512;
        }
        s.save_sent(2, &sized(2, pad)).expect("pad");
        start = records_len(&path);
        assert_eq!(start % 512, 511);
        // Length field 512: its low byte, alone in the first sector, is zero.
        s.save_sent(3, &sized(3, 12 + 512)).expect("save");
        for seq in 4..=8 {
            s.save_sent(seq, &msg(seq)).expect("save");
        }
    }
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes[start as usize], 0, "the length's low byte");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    let at = start + 200;
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[at as usize] ^ 0x04], at).expect("flip");
    drop(f);
    match open(tmp.path(), 2) {
        Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, start),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
