//! The fencing epoch and the membership records, on real files.

mod common;

use common::{coord, hb};
use understudy_coordinator::{
    CoordError, Coordinator, EpochRead, EpochStore, MemberRecord, Members, TryAcquire,
};
use understudy_status::{ActivationMode, Node, ServiceState, State};

fn rec(node: &str, epoch: u64) -> MemberRecord {
    MemberRecord {
        last_seen_unix_ms: 2,
        service: ServiceState::Running,
        pid: Some(42),
        ..MemberRecord::of(Node {
            name: node.into(),
            group: "g".into(),
            state: State::Warm,
            activation: ActivationMode::TryLock,
            epoch,
            since_unix_ms: 1,
            waiting: None,
            holds_lock: false,
            ready: true,
            admin: "127.0.0.1:7000".into(),
            agent_pid: 41,
        })
    }
}

fn acquire(c: &mut understudy_coordinator::LockFileCoordinator) {
    assert!(matches!(
        c.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
}

#[test]
fn invalid_node_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let made = understudy_coordinator::LockFileCoordinator::new(
        dir.path().join("g.lock"),
        "../evil".into(),
        tx,
    );
    assert!(made.is_err());
}

#[test]
fn next_epoch_needs_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _rx) = coord(&dir.path().join("g.lock"), "a");
    assert!(matches!(a.next_epoch(0), Err(CoordError::NotHolder)));
    assert_eq!(a.epochs().read().unwrap(), EpochRead::Missing);
}

#[test]
fn epoch_strictly_increases_across_calls_and_instances() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let mut last = 0;
    for round in 0..3 {
        let node = format!("n{round}");
        let (mut c, _rx) = coord(&lock, &node);
        acquire(&mut c);
        assert_eq!(c.current_epoch(), last);
        for _ in 0..20 {
            let e = c.next_epoch(0).unwrap();
            assert!(e > last, "{e} after {last}");
            last = e;
        }
        assert_eq!(
            c.epochs().read().unwrap(),
            EpochRead::Value {
                epoch: last,
                holder: node.clone()
            }
        );
        assert_eq!(c.current_epoch(), last);
        c.release().unwrap();
    }
    assert_eq!(last, 60);
    // No temp file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
}

#[test]
fn floor_and_heartbeat_raise_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let (mut a, _rx) = coord(&lock, "a");
    acquire(&mut a);
    assert_eq!(a.next_epoch(1000).unwrap(), 1001);
    a.heartbeat(&hb("a", 5000, 1)).unwrap();
    assert_eq!(a.current_epoch(), 5000, "current_epoch sees the heartbeat");
    assert_eq!(
        a.epochs().read().unwrap(),
        EpochRead::Value {
            epoch: 1001,
            holder: "a".into()
        },
        "current_epoch must not write"
    );
    assert_eq!(a.next_epoch(0).unwrap(), 5001);
}

#[test]
fn garbage_epoch_file_never_goes_below_a_member_record() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let (mut a, _rx) = coord(&lock, "a");
    a.members().write(&rec("b", 50)).unwrap();
    std::fs::write(
        a.epochs().path(),
        b"understudy-epoch v1 epoch=7 holder=a crc=00000000\n",
    )
    .unwrap();
    assert!(matches!(a.epochs().read().unwrap(), EpochRead::Corrupt(_)));
    assert_eq!(a.current_epoch(), 50);
    acquire(&mut a);
    assert_eq!(a.next_epoch(0).unwrap(), 51);
    // The corrupt file was overwritten with a valid record.
    assert_eq!(
        a.epochs().read().unwrap(),
        EpochRead::Value {
            epoch: 51,
            holder: "a".into()
        }
    );
}

#[test]
fn garbage_lock_file_never_goes_below_the_epoch_file_or_members() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    std::fs::write(&lock, b"garbage garbage epoch=999999\n").unwrap();
    let (mut a, _rx) = coord(&lock, "a");
    a.epochs().write(10, "z").unwrap();
    a.members().write(&rec("b", 30)).unwrap();
    acquire(&mut a);
    assert_eq!(a.next_epoch(0).unwrap(), 31);
    // Both the lock file and the epoch file garbage: the member record still holds the line.
    std::fs::write(a.epochs().path(), b"\xff\xfe").unwrap();
    a.members().write(&rec("b", 77)).unwrap();
    assert_eq!(a.next_epoch(0).unwrap(), 78);
}

#[test]
fn epoch_store_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let store = EpochStore::for_lock(&lock);
    assert_eq!(store.path(), dir.path().join("g.lock.epoch"));
    assert_eq!(store.read().unwrap(), EpochRead::Missing);
    store.write(u64::MAX - 1, "node_1.x-y").unwrap();
    assert_eq!(
        store.read().unwrap(),
        EpochRead::Value {
            epoch: u64::MAX - 1,
            holder: "node_1.x-y".into()
        }
    );
    // Torn: half a record.
    let full = std::fs::read(store.path()).unwrap();
    std::fs::write(store.path(), &full[..full.len() / 2]).unwrap();
    assert!(matches!(store.read().unwrap(), EpochRead::Corrupt(_)));
    std::fs::write(store.path(), b"").unwrap();
    assert!(matches!(store.read().unwrap(), EpochRead::Corrupt(_)));
    // A name that could escape the directory is refused.
    assert!(store.write(1, "../x").is_err());
    // I/O errors other than a missing file are errors, not "missing".
    std::fs::remove_file(store.path()).unwrap();
    std::fs::create_dir(store.path()).unwrap();
    assert!(matches!(store.read(), Err(CoordError::Io { .. })));
}

#[test]
fn epoch_overflow_is_an_error_not_a_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let (mut a, _rx) = coord(&lock, "a");
    acquire(&mut a);
    a.epochs().write(u64::MAX, "a").unwrap();
    assert!(a.next_epoch(0).is_err());
}

#[test]
fn members_write_read_remove() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let members = Members::for_lock(&lock);
    assert_eq!(
        members.dir(),
        Some(dir.path().join("g.lock.members").as_path())
    );
    assert!(
        members.read_all().is_empty(),
        "missing dir is an empty group"
    );
    members.ensure_dir().unwrap();
    members.ensure_dir().unwrap();

    members.write(&rec("zeta", 1)).unwrap();
    members.write(&rec("alpha", 2)).unwrap();
    let mut updated = rec("zeta", 3);
    updated.node.holds_lock = true;
    members.write(&updated).unwrap();

    // Garbage, temp files and strangers are skipped.
    std::fs::write(members.dir().unwrap().join("broken.json"), b"{not json").unwrap();
    std::fs::write(members.dir().unwrap().join(".beta.json.tmp"), b"{}").unwrap();
    std::fs::write(members.dir().unwrap().join("notes.txt"), b"hi").unwrap();
    std::fs::create_dir(members.dir().unwrap().join("sub.json")).unwrap();

    let all = members.read_all();
    assert_eq!(all, vec![rec("alpha", 2), updated]);
    assert!(members.write(&rec("a/b", 1)).is_err());

    members.remove("alpha");
    members.remove("alpha"); // already gone: no panic
    members.remove("../g.lock");
    assert_eq!(
        members
            .read_all()
            .iter()
            .map(|m| m.node.name.as_str())
            .collect::<Vec<_>>(),
        vec!["zeta"]
    );
}

/// Node b takes epoch 1 and gives the lock back, then node a takes 2 and 3 and gives it back:
/// a's agent, which knows its run.
fn b_took_1_then_a_2_and_3(
    lock: &std::path::Path,
) -> (
    understudy_coordinator::LockFileCoordinator,
    tokio::sync::mpsc::UnboundedReceiver<understudy_coordinator::CoordEvent>,
) {
    let (mut b, _rx) = coord(lock, "b");
    acquire(&mut b);
    assert_eq!(b.next_epoch(0).unwrap(), 1);
    b.release().unwrap();
    drop(b);
    let (mut a, rx) = coord(lock, "a");
    acquire(&mut a);
    assert_eq!(a.next_epoch(0).unwrap(), 2);
    assert_eq!(a.next_epoch(0).unwrap(), 3);
    a.release().unwrap();
    (a, rx)
}

/// Review 14, U6 and review 15, V2: an agent restarted after taking the group's newest epoch
/// (`own` lives in memory only) continues its run from the epoch file, whose two slots name the
/// holders of its last two epochs, so its gateway, last active with one of them, is still judged
/// the group's last active.
#[test]
fn a_restarted_agent_continues_its_run_from_the_epoch_file() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    drop(b_took_1_then_a_2_and_3(&lock));

    // A new agent of node a: epochs 3 and 2 are its own, by the file's two slots; 1 stands for
    // another's (it is b's).
    let (mut a, _rx) = coord(&lock, "a");
    let used = a.used_epochs();
    assert_eq!(used.last_by_this_node, Some(3));
    assert_eq!(used.newest_by_another, Some(1));
    acquire(&mut a);
    assert_eq!(a.next_epoch(0).unwrap(), 4);
    let used = a.used_epochs();
    assert_eq!(used.last_by_this_node, Some(4));
    assert_eq!(used.newest_by_another, Some(1), "the run goes on");
    a.release().unwrap();
    drop(a);
    // Restarted again: the slots now say 4 and 3 were a's, and 2 stands for another's (the
    // file knows two epochs only; judging against a newer one than the truth is the safe side).
    let (mut a, _rx) = coord(&lock, "a");
    assert_eq!(a.used_epochs().newest_by_another, Some(2));

    // Another node's epoch in between ends the run.
    let (mut b, _rx) = coord(&lock, "b");
    acquire(&mut b);
    assert_eq!(b.next_epoch(0).unwrap(), 5);
    b.release().unwrap();
    acquire(&mut a);
    assert_eq!(a.next_epoch(0).unwrap(), 6);
    let used = a.used_epochs();
    assert_eq!(used.last_by_this_node, Some(6));
    assert_eq!(used.newest_by_another, Some(5));
    a.release().unwrap();
    drop(a);
    // Restarted: the other slot names b as the holder of 5.
    let (a, _rx) = coord(&lock, "a");
    assert_eq!(a.used_epochs().newest_by_another, Some(5));
    // Another node reads a's epochs as others' whatever the slots say.
    let (c, _rx) = coord(&lock, "c");
    let used = c.used_epochs();
    assert_eq!(used.newest_by_another, Some(6));
    assert_eq!(used.last_by_this_node, None);

    // Epochs skipped (a floor above the file, as from a heartbeat or member record newer than
    // it): slots 6 and 11 are both a's but not in a row, so what lies between stands for
    // another's (review 16, W7).
    let (mut a, _rx) = coord(&lock, "a");
    acquire(&mut a);
    assert_eq!(a.next_epoch(10).unwrap(), 11);
    a.release().unwrap();
    drop(a);
    let (a, _rx) = coord(&lock, "a");
    let used = a.used_epochs();
    assert_eq!(used.last_by_this_node, Some(11));
    assert_eq!(used.newest_by_another, Some(10));
}

/// Review 16, W5: the agent's run goes on when the file holds newer epochs of this node than
/// it knows of (a write that reached the file but whose sync failed, so `next_epoch` reported
/// an error and the agent's run did not move), one or two of them.
#[test]
fn the_run_an_agent_knows_goes_on_through_its_own_epochs_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let (mut a, _rx) = b_took_1_then_a_2_and_3(&lock);
    assert_eq!(a.used_epochs().newest_by_another, Some(1));
    acquire(&mut a);
    let file = EpochStore::for_lock(&lock);
    // 4 reached the file, its sync "failed": the run from 1 goes on (the slots alone say 3 and
    // 4 are a's, and 2 would stand for another's).
    file.write(4, "a").unwrap();
    assert_eq!(a.used_epochs().newest_by_another, Some(1));
    assert_eq!(a.used_epochs().last_by_this_node, Some(4));
    // And a second one.
    file.write(5, "a").unwrap();
    assert_eq!(a.used_epochs().newest_by_another, Some(1));
    // The next epoch taken continues it.
    assert_eq!(a.next_epoch(0).unwrap(), 6);
    assert_eq!(a.used_epochs().newest_by_another, Some(1));
    a.release().unwrap();
}
