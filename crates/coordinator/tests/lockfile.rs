//! The lock file coordinator against real files, threads and processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{acquire_eventually, coord, hb, next_event, PROMPT};
use understudy_coordinator::{
    read_heartbeat, stop_mark_path, CoordError, CoordEvent, Coordinator, HeartbeatReading,
    StopMark, TryAcquire,
};

const QUIET: Duration = Duration::from_millis(150);

fn lock_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("g.lock")
}

#[tokio::test]
async fn only_one_holds_and_release_wakes_the_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, mut a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");

    assert!(!a.holds());
    match a.try_acquire().unwrap() {
        TryAcquire::Acquired { previous, created } => {
            assert_eq!(previous, HeartbeatReading::Missing);
            assert!(created, "a created the lock file");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(a.holds());
    a.heartbeat(&hb("a", 3, 1000)).unwrap();

    assert_eq!(b.try_acquire().unwrap(), TryAcquire::HeldByOther);
    assert!(!b.holds());
    b.campaign().unwrap();
    b.campaign().unwrap(); // idempotent
    assert_eq!(next_event(&mut b_rx, QUIET).await, None, "b must wait");
    assert!(!b.holds());

    let t0 = Instant::now();
    a.release().unwrap();
    let ev = next_event(&mut b_rx, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_eq!(
        ev,
        Some(CoordEvent::Acquired {
            previous: HeartbeatReading::At(hb("a", 3, 1000)),
            created: false,
            lease: None
        })
    );
    assert!(took < PROMPT, "waiter took {took:?}");
    eprintln!("release -> Acquired in {took:?}");
    assert!(b.holds());
    assert!(!a.holds());
    assert_eq!(a.try_acquire().unwrap(), TryAcquire::HeldByOther);
    assert_eq!(
        next_event(&mut b_rx, QUIET).await,
        None,
        "exactly one event"
    );
    assert_eq!(next_event(&mut a_rx, Duration::ZERO).await, None);
}

#[tokio::test]
async fn campaign_on_a_missing_file_creates_and_acquires() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, mut a_rx) = coord(&lock, "a");
    assert!(!lock.exists(), "new() must not create the file");
    a.campaign().unwrap();
    assert_eq!(
        next_event(&mut a_rx, Duration::from_secs(5)).await,
        Some(CoordEvent::Acquired {
            previous: HeartbeatReading::Missing,
            created: true,
            lease: None
        })
    );
    assert!(a.holds());
    // Already holding: campaign is a no-op and try_acquire reports the lock we have.
    a.campaign().unwrap();
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { created: false, .. }
    ));
    assert_eq!(next_event(&mut a_rx, QUIET).await, None);
}

#[tokio::test]
async fn release_cancels_a_blocked_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    let (mut c, _c_rx) = coord(&lock, "c");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    b.campaign().unwrap();
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);
    b.release().unwrap(); // b's waiter stays blocked in the kernel, but cancelled
    a.release().unwrap();
    assert_eq!(
        next_event(&mut b_rx, QUIET).await,
        None,
        "cancelled waiter spoke"
    );
    assert!(!b.holds());
    assert!(
        acquire_eventually(&mut c, Duration::from_secs(2)).await,
        "the cancelled waiter kept the lock"
    );
}

#[tokio::test]
async fn dropping_a_campaigning_coordinator_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    let (mut c, _c_rx) = coord(&lock, "c");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    b.campaign().unwrap();
    drop(b);
    a.release().unwrap();
    assert!(acquire_eventually(&mut c, Duration::from_secs(2)).await);
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);
}

/// A waiter blocked while try_acquire wins must not produce a second held descriptor or event.
#[tokio::test]
async fn try_acquire_while_the_waiter_is_blocked_gives_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    let (mut c, _c_rx) = coord(&lock, "c");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    b.campaign().unwrap(); // blocked on a's inode
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);

    // Replace the file: b's try_acquire takes the new inode while its waiter sits on the old one.
    let fresh = dir.path().join("fresh");
    std::fs::write(&fresh, b"").unwrap();
    std::fs::rename(&fresh, &lock).unwrap();
    assert_eq!(
        b.try_acquire().unwrap(),
        TryAcquire::Acquired {
            previous: HeartbeatReading::Missing,
            created: false
        }
    );
    // Old inode freed: the waiter wakes, sees the path moved on, and waits on the new inode, which
    // b itself holds.
    a.release().unwrap();
    assert_eq!(
        next_event(&mut b_rx, QUIET).await,
        None,
        "duplicate Acquired"
    );
    assert!(b.holds());
    assert_eq!(c.try_acquire().unwrap(), TryAcquire::HeldByOther);
    assert!(b.verify());

    b.release().unwrap();
    assert!(
        acquire_eventually(&mut c, Duration::from_secs(2)).await,
        "b's waiter kept a second descriptor"
    );
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);
}

/// Release and try_acquire racing the waiter: whichever wins, b ends with exactly one hold and one
/// report of it.
#[tokio::test]
async fn try_acquire_racing_the_waiter_gives_one_report() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_in(&dir);
        let (mut a, _a_rx) = coord(&lock, "a");
        let (mut b, mut b_rx) = coord(&lock, "b");
        let (mut c, _c_rx) = coord(&lock, "c");
        assert!(matches!(
            a.try_acquire().unwrap(),
            TryAcquire::Acquired { .. }
        ));
        b.campaign().unwrap();
        a.release().unwrap();
        let by_try = matches!(b.try_acquire().unwrap(), TryAcquire::Acquired { .. });
        let mut events = 0;
        while let Some(ev) = next_event(&mut b_rx, Duration::from_millis(50)).await {
            assert!(matches!(ev, CoordEvent::Acquired { .. }));
            events += 1;
        }
        assert!(b.holds());
        // Either try_acquire took the lock (it says Acquired; the waiter stays silent), or the
        // waiter did (one event; try_acquire then said HeldByOther, or Acquired when it found
        // the lock already held by b). So Acquired alone does not tell who won.
        assert!(events <= 1, "the waiter reported {events} times");
        if events == 0 {
            assert!(by_try, "b holds the lock but nothing reported it");
        }
        assert_eq!(c.try_acquire().unwrap(), TryAcquire::HeldByOther);
        b.release().unwrap();
        assert!(acquire_eventually(&mut c, Duration::from_secs(2)).await);
    }
}

/// Run only as the child of `killed_holder_wakes_the_waiter`: take the lock, say so, sleep forever.
#[test]
#[ignore = "not a test: the lock holder process of killed_holder_wakes_the_waiter"]
fn child_lock_holder() {
    let Ok(lock) = std::env::var("UNDERSTUDY_TEST_HOLD_LOCK") else {
        return;
    };
    let (mut c, _rx) = common::coord(std::path::Path::new(&lock), "child");
    assert!(matches!(
        c.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    c.heartbeat(&hb("child", 9, 4242)).unwrap();
    println!("UNDERSTUDY-CHILD-LOCKED");
    loop {
        std::thread::park();
    }
}

#[tokio::test]
async fn killed_holder_wakes_the_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_lock_holder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("UNDERSTUDY_TEST_HOLD_LOCK", &lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before taking the lock");
        if line.contains("UNDERSTUDY-CHILD-LOCKED") {
            break;
        }
    }

    let (mut w, mut w_rx) = coord(&lock, "w");
    assert_eq!(w.try_acquire().unwrap(), TryAcquire::HeldByOther);
    w.campaign().unwrap();
    assert_eq!(next_event(&mut w_rx, QUIET).await, None);

    let t0 = Instant::now();
    child.kill().unwrap(); // SIGKILL
    let ev = next_event(&mut w_rx, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    let _ = child.wait();
    assert_eq!(
        ev,
        Some(CoordEvent::Acquired {
            previous: HeartbeatReading::At(hb("child", 9, 4242)),
            created: false,
            lease: None
        })
    );
    eprintln!("SIGKILL -> Acquired in {took:?}");
    assert!(took < PROMPT, "took {took:?}");
    assert!(w.holds());
}

#[tokio::test]
async fn lock_descriptors_are_not_inherited() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, _b_rx) = coord(&lock, "b");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    b.campaign().unwrap();
    // Wait until the waiter's descriptor is open too (a's is the first).
    let open_on_lock = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == lock))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_on_lock() < 2 {
        assert!(
            Instant::now() < deadline,
            "the waiter never opened the lock file"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A descriptor opened without O_CLOEXEC must show up: proves the check can see a leak.
    let canary = dir.path().join("canary");
    std::fs::write(&canary, b"").unwrap();
    let canary_fd = nix::fcntl::open(
        &canary,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();

    let out = Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    nix::unistd::close(canary_fd).unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let targets: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split(" -> ").nth(1))
        .collect();
    assert!(
        targets.iter().any(|t| *t == canary.to_str().unwrap()),
        "canary not seen: {listing}"
    );
    assert!(
        !targets.iter().any(|t| *t == lock.to_str().unwrap()),
        "lock descriptor leaked into the child: {listing}"
    );
}

#[tokio::test]
async fn deleted_lock_file_is_lost_and_the_waiter_takes_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, mut a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    assert!(a.verify(), "not holding: nothing to lose");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    assert!(a.verify());
    assert_eq!(next_event(&mut a_rx, Duration::ZERO).await, None);
    b.campaign().unwrap();
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);

    std::fs::remove_file(&lock).unwrap();
    assert!(!a.verify());
    assert!(!a.holds());
    match next_event(&mut a_rx, Duration::from_secs(1)).await {
        Some(CoordEvent::Lost { reason }) => {
            assert!(reason.contains("deleted"), "{reason}");
            assert!(reason.contains("g.lock"), "{reason}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(matches!(
        a.heartbeat(&hb("a", 1, 1)),
        Err(CoordError::NotHolder)
    ));

    // a let go of the old inode; b's waiter wakes on it, sees it deleted, and takes a new file.
    assert_eq!(
        next_event(&mut b_rx, Duration::from_secs(5)).await,
        Some(CoordEvent::Acquired {
            previous: HeartbeatReading::Missing,
            created: true,
            lease: None
        })
    );
    assert!(b.holds());
    assert!(b.verify());
    assert!(lock.exists());
}

#[tokio::test]
async fn replaced_lock_file_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, mut a_rx) = coord(&lock, "a");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    let fresh = dir.path().join("fresh");
    std::fs::write(&fresh, b"").unwrap();
    std::fs::rename(&fresh, &lock).unwrap();
    assert!(!a.verify());
    match next_event(&mut a_rx, Duration::from_secs(1)).await {
        Some(CoordEvent::Lost { reason }) => assert!(reason.contains("replaced"), "{reason}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(!a.holds());
    assert!(a.verify(), "no longer holding: nothing more to lose");
    assert_eq!(next_event(&mut a_rx, QUIET).await, None, "Lost only once");
}

#[tokio::test]
async fn garbage_lock_content_reads_as_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    assert_eq!(read_heartbeat(&lock), HeartbeatReading::Missing);
    std::fs::write(&lock, b"\x00\x01 this is not a heartbeat\n").unwrap();
    assert!(matches!(
        read_heartbeat(&lock),
        HeartbeatReading::Garbage(_)
    ));
    let (mut a, _rx) = coord(&lock, "a");
    match a.try_acquire().unwrap() {
        TryAcquire::Acquired { previous, created } => {
            assert!(
                matches!(previous, HeartbeatReading::Garbage(_)),
                "{previous:?}"
            );
            assert!(!created);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Overwriting garbage (longer than the record) leaves exactly the record.
    std::fs::write(&lock, vec![b'x'; 10_000]).unwrap();
    a.heartbeat(&hb("a", 1, 2)).unwrap();
    assert_eq!(
        std::fs::read(&lock).unwrap(),
        hb("a", 1, 2).encode().as_bytes()
    );
}

#[tokio::test]
async fn heartbeat_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, _b_rx) = coord(&lock, "b");
    assert!(matches!(
        a.heartbeat(&hb("a", 1, 1)),
        Err(CoordError::NotHolder)
    ));
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));

    let long = hb("a-very-long-node-name", 123_456, 1_717_000_000_000);
    a.heartbeat(&long).unwrap();
    assert_eq!(read_heartbeat(&lock), HeartbeatReading::At(long.clone()));
    let short = hb("a", 1, 2);
    a.heartbeat(&short).unwrap();
    assert_eq!(std::fs::read(&lock).unwrap(), short.encode().as_bytes());
    assert_eq!(read_heartbeat(&lock), HeartbeatReading::At(short.clone()));

    a.release().unwrap();
    assert_eq!(
        b.try_acquire().unwrap(),
        TryAcquire::Acquired {
            previous: HeartbeatReading::At(short),
            created: false
        }
    );
}

#[tokio::test]
async fn holder_hint_prefers_fresh_member_records_then_the_heartbeat() {
    use understudy_coordinator::MemberRecord;
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (b, _b_rx) = coord(&lock, "b");
    assert_eq!(b.holder_hint(), None);

    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    a.heartbeat(&hb("a", 1, 2)).unwrap();
    assert_eq!(b.holder_hint().as_deref(), Some("a"));
    assert_eq!(
        a.holder_hint(),
        None,
        "our own heartbeat is not another holder"
    );

    let rec = |node: &str, holds_lock: bool, last_seen: u64| MemberRecord {
        last_seen_unix_ms: last_seen,
        service: understudy_status::ServiceState::Running,
        ..MemberRecord::of(understudy_status::Node {
            name: node.into(),
            group: "g".into(),
            state: understudy_status::State::Warm,
            activation: understudy_status::ActivationMode::TryLock,
            epoch: 1,
            since_unix_ms: 0,
            waiting: None,
            holds_lock,
            ready: true,
            admin: "127.0.0.1:1".into(),
            agent_pid: 1,
        })
    };
    let members = b.members();
    members.ensure_dir().unwrap();
    members.write(&rec("old", true, 10)).unwrap();
    members.write(&rec("fresh", true, 20)).unwrap();
    members.write(&rec("idle", false, 30)).unwrap();
    members.write(&rec("b", true, 40)).unwrap();
    assert_eq!(b.holder_hint().as_deref(), Some("fresh"));
}

/// Review 28, H1: a stop of failover, written by the holder before it lets go, keeps every
/// waiter off the free lock (one already blocked in the kernel included) and refuses immediate
/// requests, for as long as it is recorded; starting failover again hands the lock to the
/// waiter. A stop file that cannot be read stops failover too, and a start clears it.
#[tokio::test]
async fn a_stop_of_failover_keeps_the_lock_free_until_failover_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_in(&dir);
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    let mark = StopMark {
        node: "a".into(),
        epoch: 4,
        pid: 4242,
        unix_ms: 1_700_000_000_000,
        boot_id: None,
        pid_ns: None,
        start_ticks: None,
        unreadable: None,
    };
    assert!(
        matches!(b.stop_failover(&mark), Err(CoordError::NotHolder)),
        "only the holder stops failover"
    );
    // b waits in the kernel before the stop is made.
    b.campaign().unwrap();
    assert_eq!(next_event(&mut b_rx, QUIET).await, None);
    a.stop_failover(&mark).unwrap();
    a.release().unwrap();
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(600)).await,
        None,
        "b took a group whose failover is stopped"
    );
    assert!(!b.holds());
    assert_eq!(b.failover_stopped(), Some(mark.clone()));
    assert!(matches!(
        b.try_acquire(),
        Err(CoordError::FailoverStopped(why)) if why.contains("node a released its service (pid 4242, epoch 4)")
    ));
    assert!(!b.holds());

    // The lock file holds the stop itself, read under the lock: a waiter that cannot see the
    // file beside it (a shared filesystem's stale lookup, review 30, H2) still finds it.
    std::fs::rename(stop_mark_path(&lock), dir.path().join("aside")).unwrap();
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(400)).await,
        None,
        "b took the group with the stop only in the lock file"
    );
    assert_eq!(b.failover_stopped(), Some(mark.clone()));
    std::fs::rename(dir.path().join("aside"), stop_mark_path(&lock)).unwrap();
    // What the caller refuses is not cleared.
    let refused = b.start_failover(Box::new(|m: &StopMark| Err(format!("pid {} runs", m.pid))));
    assert!(
        matches!(&refused, Err(CoordError::FailoverStopped(why)) if why == "pid 4242 runs"),
        "{refused:?}"
    );
    assert_eq!(b.failover_stopped(), Some(mark.clone()));
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(300)).await,
        None
    );

    assert_eq!(b.start_failover(allow_all()).unwrap(), Some(mark));
    assert!(!stop_mark_path(&lock).exists());
    // The lock file then holds the released node's heartbeat, dated at the start of failover:
    // a tryheartbeat node takes the group as after any hand-over.
    match read_heartbeat(&lock) {
        HeartbeatReading::At(h) => {
            assert_eq!((h.node.as_str(), h.epoch), ("a", 4));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert!(now.saturating_sub(h.unix_ms) < 5_000, "{h:?}");
        }
        other => panic!("no heartbeat after the start of failover: {other:?}"),
    }
    assert!(matches!(
        next_event(&mut b_rx, Duration::from_secs(5)).await,
        Some(CoordEvent::Acquired { .. })
    ));
    assert_eq!(
        b.start_failover(allow_all()).unwrap(),
        None,
        "nothing left to clear"
    );

    // Garbage in the stop file: still a stop, said to be unreadable.
    b.release().unwrap();
    std::fs::write(stop_mark_path(&lock), b"{\"node\": ").unwrap();
    let stopped = a
        .failover_stopped()
        .expect("a torn stop file stops failover");
    assert!(stopped.describe().contains("cannot be read"), "{stopped:?}");
    assert!(matches!(
        a.try_acquire(),
        Err(CoordError::FailoverStopped(_))
    ));
    assert!(a.start_failover(allow_all()).unwrap().is_some());
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
}

fn allow_all() -> understudy_coordinator::Allow {
    Box::new(|_: &StopMark| Ok(()))
}
