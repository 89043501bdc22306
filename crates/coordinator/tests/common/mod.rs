//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use understudy_coordinator::{CoordEvent, Coordinator, Heartbeat, LockFileCoordinator, TryAcquire};

/// A coordinator for `lock` as `node`, with its event receiver.
pub fn coord(lock: &Path, node: &str) -> (LockFileCoordinator, UnboundedReceiver<CoordEvent>) {
    let (tx, rx) = unbounded_channel();
    let c = LockFileCoordinator::new(lock.to_path_buf(), node.to_string(), tx).unwrap();
    (c, rx)
}

/// The next event, or None if none arrives within `within`.
pub async fn next_event(
    rx: &mut UnboundedReceiver<CoordEvent>,
    within: Duration,
) -> Option<CoordEvent> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// try_acquire until it succeeds or `within` passes (a cancelled waiter may hold the lock for a
/// moment before it lets go).
pub async fn acquire_eventually(c: &mut LockFileCoordinator, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let TryAcquire::Acquired { .. } = c.try_acquire().unwrap() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn hb(node: &str, epoch: u64, unix_ms: u64) -> Heartbeat {
    Heartbeat {
        node: node.into(),
        epoch,
        unix_ms,
    }
}

/// A liveness bound for "the waiter wakes up": it must wake at all, and not only after some long
/// retry period. The kernel hands the lock over in well under a millisecond, but how fast is a
/// speed figure (`understudy bench failover` measures the bare kernel handoff next to ours): a
/// tight bound here would fail on a loaded machine without saying anything about behaviour.
pub const PROMPT: Duration = Duration::from_secs(5);
