//! A second campaign while the first waiter is still blocked re-arms it instead of starting another
//! thread. Alone in its binary so that counting threads sees no other test's waiters.

mod common;

use std::time::Duration;

use common::{coord, next_event};
use understudy_coordinator::{CoordEvent, Coordinator, TryAcquire};

fn waiter_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "lock-waiter")
        .count()
}

/// The waiter count once it has had time to settle (a new thread names itself when it starts).
async fn settled_waiter_threads(expected: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while waiter_threads() != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Linger so that an extra thread, if one was started, has time to show up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiter_threads()
}

#[tokio::test]
async fn campaign_reuses_a_blocked_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("g.lock");
    let (mut a, _a_rx) = coord(&lock, "a");
    let (mut b, mut b_rx) = coord(&lock, "b");
    assert!(matches!(
        a.try_acquire().unwrap(),
        TryAcquire::Acquired { .. }
    ));
    assert_eq!(waiter_threads(), 0);

    b.campaign().unwrap();
    assert_eq!(settled_waiter_threads(1).await, 1);
    for _ in 0..5 {
        b.release().unwrap();
        b.campaign().unwrap();
    }
    assert_eq!(
        settled_waiter_threads(1).await,
        1,
        "campaign started a second waiter"
    );
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(100)).await,
        None
    );

    a.release().unwrap();
    assert!(matches!(
        next_event(&mut b_rx, Duration::from_secs(5)).await,
        Some(CoordEvent::Acquired { .. })
    ));
    assert!(b.holds());
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(150)).await,
        None
    );
    // Its work done, the waiter thread ends.
    assert_eq!(settled_waiter_threads(0).await, 0);
}
