//! Group coordination for understudy: who may be active, with which fencing epoch.
//!
//! Layout:
//! - [`lockfile`]: the shared lock file (Linux OFD locks), the blocking waiter, the heartbeat record
//!   written into the lock file, and detection of a lock file that was deleted or replaced.
//! - [`epoch`]: the durable, strictly increasing group epoch kept beside the lock (`<lock>.epoch`).
//! - [`members`]: membership records beside the lock (`<lock>.members/<node>.json`).
//! - [`etcd`]: the group in etcd, across machines: claims and renewals judged on the agents' own
//!   clocks, the epoch raised in the claiming transaction, membership records in etcd.
//! - [`lease`]: the etcd coordinator's timing rules as a pure, clock-injected state machine (when
//!   to claim, to renew, to stop acting), checked by a seeded simulation.
//! - [`Coordinator`]: the trait the agent drives; [`lockfile::LockFileCoordinator`] and
//!   [`etcd::EtcdCoordinator`] implement it.
#![forbid(unsafe_code)]

pub mod epoch;
pub mod etcd;
pub mod lease;
pub mod lockfile;
pub mod members;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use epoch::{EpochRead, EpochSlots, EpochStore};
pub use etcd::{EtcdCoordinator, EtcdMembers, EtcdSettings, EtcdTls, Fence, FenceSink};
pub use lease::Timing;
pub use lockfile::{
    read_heartbeat, read_stop_mark, stop_mark_path, Heartbeat, HeartbeatReading,
    LockFileCoordinator,
};
pub use members::{boot_id, judge_namesake, pid_ns, same_host, MemberRecord, Members, Namesake};

/// The wall clock, Unix milliseconds (0 before 1970): only written into records and shown.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True when `name` can be a node name: non-empty, at most 255 bytes, only `[A-Za-z0-9_.-]`, and
/// not `.` or `..`. Node names become file names beside the lock, so nothing else is accepted.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Errors of a coordinator operation: the request failed, the node may go on.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The operation needs the group lock and this node does not hold it.
    #[error("this node does not hold the group lock")]
    NotHolder,
    /// etcd could not be reached or refused the operation.
    #[error("etcd: {0}")]
    Etcd(String),
    /// Failover is stopped for the group (see [`StopMark`]): no node may take it.
    #[error("failover is stopped: {0}")]
    FailoverStopped(String),
}

/// Judges whether a stop of failover may be cleared (see [`Coordinator::start_failover`]).
pub type Allow = Box<dyn Fn(&StopMark) -> Result<(), String> + Send>;

/// A stop of failover (`POST /service/release`, the control plane's stop failover): the group's
/// active handed its service over as a plain, unfenced server. While the mark is recorded no
/// node takes the group, however long it was away: a standby that missed the stop (cut off
/// from the coordinator, or frozen, so that its record and key had expired and the release
/// went through) would otherwise take the group while the released service keeps acting.
/// [`Coordinator::start_failover`] clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopMark {
    /// The node that released its service.
    pub node: String,
    /// The epoch the released service was last told.
    pub epoch: u64,
    /// The released service's pid, on the releasing node's machine.
    pub pid: u32,
    /// The releasing agent's wall clock at the stop, Unix milliseconds (only shown).
    pub unix_ms: u64,
    /// The releasing machine's boot id: with `pid_ns` and `start_ticks`, a node on the same
    /// machine tells whether the released service still runs.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The releasing agent's pid namespace (see [`members::pid_ns`]).
    #[serde(default)]
    pub pid_ns: Option<u64>,
    /// When the released service started, in clock ticks since boot.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// Set instead of the fields above for a recorded stop that could not be read (it still
    /// stops failover): what was wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl StopMark {
    /// What the stop was, in words, for `/status`, errors and logs.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.unreadable {
            return format!("a recorded stop that cannot be read ({why})");
        }
        // humantime cannot write years past 9999 (and `format!` would panic on its error).
        let at = if self.unix_ms < 253_402_300_800_000 {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(self.unix_ms);
            humantime::format_rfc3339_seconds(t).to_string()
        } else {
            format!("Unix ms {}", self.unix_ms)
        };
        format!(
            "node {} released its service (pid {}, epoch {}) at {at}",
            self.node, self.pid, self.epoch
        )
    }

    /// Whether the released service runs on this machine, in this pid namespace, as the same
    /// process (`start_ticks_of` reads a pid's start); `None` when this machine cannot tell
    /// (the stop was made elsewhere, or says too little).
    pub fn runs_here(&self, start_ticks_of: impl Fn(u32) -> Option<u64>) -> Option<bool> {
        if self.unreadable.is_some() {
            return None;
        }
        let here = self.boot_id.is_some()
            && self.boot_id == boot_id()
            && self.pid_ns.is_some()
            && self.pid_ns == pid_ns();
        let ticks = self.start_ticks?;
        here.then(|| start_ticks_of(self.pid) == Some(ticks))
    }
}

/// What a coordinator tells the agent, asynchronously.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordEvent {
    /// The group lock is ours. `previous` is the heartbeat found in the lock file at that moment
    /// (what TryHeartbeat decides on). `created` is true when this node created the lock file
    /// (it did not exist or had been replaced), so nobody can have held it before.
    Acquired {
        /// The heartbeat the previous holder left, read right after the lock was obtained.
        previous: HeartbeatReading,
        /// True when the lock file did not exist before this node opened it.
        created: bool,
        /// For lease-based coordinators: the holder must stop acting within this long of losing
        /// contact. `None` for the lock file (the kernel holds the lock as long as we live).
        lease: Option<Duration>,
    },
    /// The group lock is no longer ours (lock file deleted or replaced, lease expired). The agent
    /// must stop acting at once.
    Lost {
        /// Human-readable cause, for /status and the event log.
        reason: String,
    },
}

/// Result of a non-blocking attempt to take the lock.
#[derive(Debug, Clone, PartialEq)]
pub enum TryAcquire {
    /// Obtained: same meaning as [`CoordEvent::Acquired`].
    Acquired {
        /// The heartbeat found in the lock file.
        previous: HeartbeatReading,
        /// True when this node created the lock file.
        created: bool,
    },
    /// Another process holds it.
    HeldByOther,
}

/// Decides which node of a group is active. Implementations do their blocking work on their own
/// threads and report through the channel given at construction.
pub trait Coordinator: Send {
    /// Begin waiting for the group lock (idempotent). Emits [`CoordEvent::Acquired`] when obtained,
    /// as soon as the previous holder lets go: the waiter blocks in the kernel, it does not poll.
    fn campaign(&mut self) -> Result<(), CoordError>;
    /// Take the lock now if it is free, without waiting. Cancels nothing.
    fn try_acquire(&mut self) -> Result<TryAcquire, CoordError>;
    /// Give the lock up (if held) and stop campaigning. Waiters elsewhere are woken by the kernel.
    fn release(&mut self) -> Result<(), CoordError>;
    /// True while this node holds the lock.
    fn holds(&self) -> bool;
    /// Durably take the next group epoch: strictly greater than every epoch this store, any member
    /// record or `floor` has seen; fsynced (file and directory) before it returns. Holder only.
    fn next_epoch(&mut self, floor: u64) -> Result<u64, CoordError>;
    /// The highest epoch recorded for the group (0 when none), without changing it.
    fn current_epoch(&self) -> u64;
    /// Write the heartbeat record into the lock file. Holder only.
    fn heartbeat(&mut self, hb: &Heartbeat) -> Result<(), CoordError>;
    /// Check that the lock we hold is still the group's lock (the path still names our inode).
    /// Emits [`CoordEvent::Lost`] and returns false when it is not. Cheap: one stat.
    fn verify(&mut self) -> bool;
    /// Why this node cannot reach the coordinator now, or None when it can. A lock file on a
    /// local filesystem is always within reach; a remote coordinator is not when it has not
    /// answered for a while (a standby in that state could not take over).
    fn unreachable(&self) -> Option<String> {
        None
    }
    /// The group's used epochs as this node sees them, in one read: what the agent's
    /// readiness rule for replicated standbys judges by.
    fn used_epochs(&self) -> UsedEpochs;
    /// The other nodes whose agents the coordinator itself knows to be alive now, read from it
    /// (not from a cache that may trail): for a decision that must not rest on records that
    /// may be late or stale (a release while another member lives makes two actives). `None`
    /// when the coordinator has nothing beyond the records (a lock file).
    fn live_members(&mut self) -> Result<Option<Vec<LiveMember>>, CoordError> {
        Ok(None)
    }
    /// Stop failover for the group (see [`StopMark`]): recorded durably, while this node still
    /// holds the group, before its service is handed over. Holder only. An error means the
    /// stop may not be recorded: nothing may be handed over then.
    fn stop_failover(&mut self, mark: &StopMark) -> Result<(), CoordError>;
    /// The group's stop of failover as this node last read it (None: failover runs). A node
    /// takes no grant while there is one.
    fn failover_stopped(&self) -> Option<StopMark>;
    /// Start failover again: clear the group's stop, so that its nodes may take the group.
    /// Returns the stop cleared (None: there was none). `allow` judges the stop actually found
    /// (the one that would be cleared, not a cached copy): its Err refuses, as
    /// [`CoordError::FailoverStopped`], and nothing is cleared.
    fn start_failover(&mut self, allow: Allow) -> Result<Option<StopMark>, CoordError>;
}

/// Another node's key as [`Coordinator::live_members`] found it, with the record it holds then.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveMember {
    pub name: String,
    /// The record read with the key (None: unreadable). A release judges the agent by it, not
    /// by the cache: the cache may still hold an earlier run of the same node, whose agent is
    /// gone, while the key is the new run's.
    pub record: Option<MemberRecord>,
}

/// The epochs a node took for its service as the active (handed out by
/// [`Coordinator::next_epoch`]). An epoch a claim raised and gave back unused is not one (on
/// etcd, a claim raises the group's epoch before its holder decides whether to use it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsedEpochs {
    /// The newest epoch another node used: the group's newest, unless this node took it (then
    /// the newest before this node's run of them). None when no other node ever took one.
    pub newest_by_another: Option<u64>,
    /// The group's newest used epoch when this node took it: this node was the group's last
    /// active, whatever it remembers. None otherwise, or when that cannot be told.
    pub last_by_this_node: Option<u64>,
}

/// The newest epoch another node took, from the group's newest `current` and this node's own
/// run of epochs ([`own_epochs_after`]); None when none (0).
pub(crate) fn newest_of_another(current: u64, own: Option<(u64, u64)>) -> Option<u64> {
    let newest = match own {
        Some((h, before)) if current == h => before,
        _ => current,
    };
    (newest > 0).then_some(newest)
}

/// This node's own epochs (the highest it took, and the group's newest before its run of them)
/// after it took epoch `e`: epochs in a row keep the newest from before the first, for they
/// are all this node's.
pub(crate) fn own_epochs_after(own: Option<(u64, u64)>, e: u64) -> Option<(u64, u64)> {
    match own {
        Some((h, _)) if e <= h => own,
        Some((h, before)) if e == h + 1 => Some((e, before)),
        _ => Some((e, e.saturating_sub(1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 30, M3: a mark's time comes from etcd or a file; one past year 9999 made
    /// `describe` panic on every agent's tick.
    #[test]
    fn a_stop_mark_describes_any_time_without_panicking() {
        let mut m = StopMark {
            node: "a".into(),
            epoch: 3,
            pid: 7,
            unix_ms: 1_796_425_200_000,
            boot_id: None,
            pid_ns: None,
            start_ticks: None,
            unreadable: None,
        };
        assert!(
            m.describe().contains("(pid 7, epoch 3) at 2026-12-04T"),
            "{}",
            m.describe()
        );
        for ms in [253_402_300_799_999, 253_402_300_800_000, u64::MAX] {
            m.unix_ms = ms;
            assert!(m.describe().starts_with("node a released"), "{ms}");
        }
        assert_eq!(
            m.runs_here(|_| Some(1)),
            None,
            "no start ticks: cannot tell"
        );
    }

    #[test]
    fn the_newest_epoch_of_another_node_skips_this_nodes_own() {
        // None of ours: the group's newest.
        assert_eq!(newest_of_another(7, None), Some(7));
        assert_eq!(newest_of_another(0, None), None);
        // We took 8: judged against 7.
        let own = own_epochs_after(None, 8);
        assert_eq!(newest_of_another(8, own), Some(7));
        assert_eq!(own_epochs_after(own, 8), own);
        // Took 9 next (a restart of the service while active): still against 7.
        let again = own_epochs_after(own, 9);
        assert_eq!(newest_of_another(9, again), Some(7));
        // Another node took 10 since: that one counts.
        assert_eq!(newest_of_another(10, again), Some(10));
        // Ours above another's newer epoch (x took 9, we took 10): against 9, so a standby in
        // sync with 7 only is not ready (review 11, R2).
        let above = own_epochs_after(own, 10);
        assert_eq!(newest_of_another(10, above), Some(9));
        // The group's first epoch, ours.
        assert_eq!(newest_of_another(1, own_epochs_after(None, 1)), None);
    }
}
