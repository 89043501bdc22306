//! Session stores: where a session keeps its next sequence numbers and the application
//! messages it sent, so it can answer a ResendRequest — including after a failover, when the
//! new active opens the store the old one wrote.
//!
//! * [`SessionStore`]: what the session state machine needs.
//! * [`MemoryStore`]: volatile, for tests and for sessions that reset every day anyway.
//! * [`FileStore`]: the fenced, append-only, checksummed store in a directory the group shares.
//! * [`GroupCommit`]: the process's syncer that makes [`SyncPolicy::Group`] stores durable in
//!   batches.

mod file;
mod group;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use thiserror::Error;

use crate::tags::BeginString;

pub use file::{
    parse_segment_name, records_len, remove_unclaimed_segments, segment_files, valid_len,
    FileStore, RecoveryReport, SegmentId, SyncPolicy, ROTATE_AFTER,
};
pub use group::{BatchHook, GroupCommit, PassStats, SLOW_PASS};

/// The newest epoch this process has learned of from elsewhere (a standby's refusal, see
/// [`crate::replica`]); 0 when none.
static PEER_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records that a writer with `epoch` exists elsewhere: every [`FileStore`] of an older
/// epoch refuses its next write as [`StoreError::Fenced`], as if it had found `epoch` in its
/// fence. How a former active whose store is not shared learns it must stop.
pub fn note_newer_epoch(epoch: u64) {
    PEER_EPOCH.fetch_max(epoch, std::sync::atomic::Ordering::SeqCst);
}

fn newer_epoch_elsewhere() -> u64 {
    PEER_EPOCH.load(std::sync::atomic::Ordering::SeqCst)
}

/// Identifies a session: its store lives under a directory named after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// Protocol version.
    pub begin_string: BeginString,
    /// Our SenderCompID(49).
    pub sender_comp_id: String,
    /// Our TargetCompID(56), the counterparty.
    pub target_comp_id: String,
}

impl SessionId {
    /// A session id.
    pub fn new(begin_string: BeginString, sender: &str, target: &str) -> Self {
        SessionId {
            begin_string,
            sender_comp_id: sender.to_owned(),
            target_comp_id: target.to_owned(),
        }
    }

    /// `SENDER-TARGET-FIX.4.4`, with any byte outside `[A-Za-z0-9._]` (including `-`, so the
    /// name stays unambiguous, and `/`, so it stays one path component) written as `%XX`.
    pub fn dir_name(&self) -> String {
        fn esc(out: &mut String, s: &str) {
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        let mut out = String::new();
        esc(&mut out, &self.sender_comp_id);
        out.push('-');
        esc(&mut out, &self.target_comp_id);
        out.push('-');
        out.push_str(self.begin_string.as_str());
        out
    }
}

/// Errors of session stores.
#[derive(Debug, Error)]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A writer with a newer epoch has claimed the store; this writer must stop. A record
    /// whose append returned this error is *in doubt*: the new active may or may not have
    /// recovered it, exactly as if this writer had crashed right after writing it.
    #[error("store fenced: our epoch {ours} is older than epoch {newest} seen in the store")]
    Fenced {
        /// The epoch of this writer.
        ours: u64,
        /// The newest epoch in the store.
        newest: u64,
    },
    /// A record inside the log (not a torn tail) failed its checks.
    #[error("corrupt store {path} at offset {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// Another handle with the same epoch holds this store.
    #[error("store {0} is already open by a writer with the same epoch")]
    InUse(PathBuf),
    /// The fence file lock could not be taken in time (a claimant is stuck holding it).
    #[error("timed out taking the fence lock {0}")]
    LockTimeout(PathBuf),
    /// A previous write failed part-way; reopen the store to recover.
    #[error("store unusable after a failed write; reopen it")]
    Poisoned,
    /// A message is larger than a record can hold.
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
    /// The group-commit syncer could not make records durable.
    #[error("{0}")]
    SyncFailed(String),
}

/// A point in a [`FileStore`]'s history, ordered: every record written before it compares
/// lower, every record written after it higher, across epochs (each writes a segment of its
/// own, numbered by the epoch and, within it, by the generation a reset started) and resets.
/// What the gateway's order map checkpoints so that a successor rebuilds only what was
/// written after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoreMark {
    /// The segment's epoch.
    pub segment: u64,
    /// The segment's generation within its epoch (0 for the first).
    pub generation: u64,
    /// The byte offset in that segment.
    pub offset: u64,
}

/// What a [`crate::session::Session`] needs from its store. Every mutating call is durable
/// (per the store's policy) before it returns, so the session can send only what is stored.
pub trait SessionStore {
    /// MsgSeqNum for the next message we send.
    fn next_sender_seq(&self) -> u64;
    /// MsgSeqNum we expect next from the counterparty.
    fn next_target_seq(&self) -> u64;
    /// Records the next sender sequence number (after an admin message or a reset).
    fn set_next_sender_seq(&mut self, seq: u64) -> Result<(), StoreError>;
    /// Records the next expected target sequence number.
    fn set_next_target_seq(&mut self, seq: u64) -> Result<(), StoreError>;
    /// Stores an application message sent with `seq`; the next sender seq becomes `seq + 1`.
    fn save_sent(&mut self, seq: u64, frame: &[u8]) -> Result<(), StoreError>;
    /// Stored application messages with `begin <= seq <= end`, in order.
    fn sent_range(&self, begin: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.sent_range_bounded(begin, end, usize::MAX)
    }
    /// Like [`sent_range`](Self::sent_range), but stops after the message that brings the
    /// bytes returned to `max_bytes` or more (always at least one message, if the range holds
    /// any): fewer bytes than `max_bytes` means the whole range was read. A resend is
    /// answered in such pieces, so a long range neither sits in memory nor in one write.
    fn sent_range_bounded(
        &self,
        begin: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Both sequence numbers back to 1 and every stored message forgotten (the session
    /// period, see [`period`](Self::period), is kept).
    fn reset(&mut self) -> Result<(), StoreError>;
    /// The session period the stored state belongs to: the start of the period (seconds
    /// since the Unix epoch, see [`crate::schedule`]) recorded by the last
    /// [`reset_for_period`](Self::reset_for_period), `None` if there was none.
    fn period(&self) -> Option<i64>;
    /// Like [`reset`](Self::reset), and records that the store now belongs to the period
    /// starting at `start` — as one write, so a crash leaves either the old period with its
    /// numbers or the new one from 1, and a successor opening the store (failover) sees the
    /// new period and does not reset again. Fenced like every write.
    fn reset_for_period(&mut self, start: i64) -> Result<(), StoreError>;
    /// Refuses with [`StoreError::Fenced`] when a newer writer owns the store. Stores that
    /// are not shared have nobody to be fenced by.
    fn check_fence(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Makes batched writes durable now (a no-op for stores that write through).
    fn sync_if_due(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Persists what a [`Deferred`] wrapper held back (a no-op for other stores).
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Group commit ([`SyncPolicy::Group`]): the position of the last record written in the
    /// process, which must be durable before anything that depends on this store's state
    /// leaves; `None` when writes are durable (per the store's policy) when they return.
    fn unsynced_position(&self) -> Option<u64> {
        None
    }
    /// Group commit: every record up to `pos` is durable now (a no-op but for [`Deferred`]).
    fn on_durable(&mut self, _pos: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Where the next record will be written (see [`StoreMark`]); `None` for stores that
    /// keep nothing across processes.
    fn mark(&self) -> Option<StoreMark> {
        None
    }
    /// Bytes the next open of this store replays; `None` for stores that keep nothing
    /// across processes.
    fn replay_bytes(&self) -> Option<u64> {
        None
    }
    /// The engine checks the fence per turn ([`verify_fence`](Self::verify_fence)), not
    /// per record (see [`FileStore::defer_fence_checks`]).
    fn defer_fence_checks(&mut self) {}
    /// Ends an event-loop turn: [`StoreError::Fenced`] if a newer writer claimed the store
    /// since what this turn wrote (see [`FileStore::verify_fence`]).
    fn verify_fence(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A volatile [`SessionStore`].
#[derive(Debug, Clone)]
pub struct MemoryStore {
    next_sender: u64,
    next_target: u64,
    sent: BTreeMap<u64, Vec<u8>>,
    period: Option<i64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            next_sender: 1,
            next_target: 1,
            sent: BTreeMap::new(),
            period: None,
        }
    }
}

impl MemoryStore {
    /// An empty store starting at sequence number 1 both ways.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    fn next_sender_seq(&self) -> u64 {
        self.next_sender
    }
    fn next_target_seq(&self) -> u64 {
        self.next_target
    }
    fn set_next_sender_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.next_sender = seq;
        Ok(())
    }
    fn set_next_target_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.next_target = seq;
        Ok(())
    }
    fn save_sent(&mut self, seq: u64, frame: &[u8]) -> Result<(), StoreError> {
        self.sent.insert(seq, frame.to_vec());
        self.next_sender = seq.saturating_add(1);
        Ok(())
    }
    fn sent_range_bounded(
        &self,
        begin: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if begin > end {
            return Ok(Vec::new());
        }
        let mut bytes = 0usize;
        Ok(self
            .sent
            .range(begin..=end)
            .take_while(|(_, m)| {
                let more = bytes < max_bytes;
                bytes = bytes.saturating_add(m.len());
                more
            })
            .map(|(s, m)| (*s, m.clone()))
            .collect())
    }
    fn reset(&mut self) -> Result<(), StoreError> {
        let period = self.period;
        *self = MemoryStore::default();
        self.period = period;
        Ok(())
    }
    fn period(&self) -> Option<i64> {
        self.period
    }
    fn reset_for_period(&mut self, start: i64) -> Result<(), StoreError> {
        *self = MemoryStore::default();
        self.period = Some(start);
        Ok(())
    }
}

/// Holds back writes of the next *target* sequence number until [`SessionStore::commit`].
///
/// A hub forwards what it receives on one session to another. Committed in that order —
/// the forwarded copy stored first, the received number advanced after — a crash between the
/// two leaves the number unadvanced, so the successor asks for the message again and the
/// forward is repeated (marked PossResend) instead of lost. The engine commits after the
/// application has handled everything a read delivered.
///
/// Under group commit the forwarded copy is only *written* when `commit` runs, and the
/// kernel may put the received number on disk before the forward if both were written then.
/// So `commit` only stages the number with the position the forward must reach first, and
/// [`on_durable`](SessionStore::on_durable) writes it once that position is durable.
#[derive(Debug)]
pub struct Deferred<S> {
    inner: S,
    pending_target: Option<u64>,
    /// Group commit: (position, next target) waiting for the position to be durable, in
    /// increasing order of both.
    staged: VecDeque<(u64, u64)>,
}

/// Most staged numbers kept; an older one is superseded by any newer one, so the oldest
/// can go when a disk that stopped syncing lets them pile up.
const MAX_STAGED: usize = 4096;

impl<S: SessionStore> Deferred<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Deferred {
            inner,
            pending_target: None,
            staged: VecDeque::new(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: SessionStore> SessionStore for Deferred<S> {
    fn next_sender_seq(&self) -> u64 {
        self.inner.next_sender_seq()
    }
    fn next_target_seq(&self) -> u64 {
        self.pending_target
            .unwrap_or_else(|| self.inner.next_target_seq())
    }
    fn set_next_sender_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.inner.set_next_sender_seq(seq)
    }
    fn set_next_target_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.pending_target = Some(seq);
        Ok(())
    }
    fn save_sent(&mut self, seq: u64, frame: &[u8]) -> Result<(), StoreError> {
        self.inner.save_sent(seq, frame)
    }
    fn sent_range_bounded(
        &self,
        begin: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.sent_range_bounded(begin, end, max_bytes)
    }
    fn reset(&mut self) -> Result<(), StoreError> {
        self.pending_target = None;
        self.staged.clear();
        self.inner.reset()
    }
    fn period(&self) -> Option<i64> {
        self.inner.period()
    }
    fn reset_for_period(&mut self, start: i64) -> Result<(), StoreError> {
        self.pending_target = None;
        self.staged.clear();
        self.inner.reset_for_period(start)
    }
    fn check_fence(&mut self) -> Result<(), StoreError> {
        self.inner.check_fence()
    }
    fn sync_if_due(&mut self) -> Result<(), StoreError> {
        self.inner.sync_if_due()
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        let Some(pos) = self.inner.unsynced_position() else {
            return match self.pending_target.take() {
                Some(t) if t != self.inner.next_target_seq() => self.inner.set_next_target_seq(t),
                _ => Ok(()),
            };
        };
        let Some(t) = self.pending_target else {
            return Ok(());
        };
        match self.staged.back_mut() {
            Some(last) if last.1 == t => {}
            Some(last) if last.0 == pos => last.1 = t,
            _ => {
                if self.staged.len() >= MAX_STAGED {
                    self.staged.pop_front();
                }
                self.staged.push_back((pos, t));
            }
        }
        Ok(())
    }
    fn unsynced_position(&self) -> Option<u64> {
        self.inner.unsynced_position()
    }
    fn mark(&self) -> Option<StoreMark> {
        self.inner.mark()
    }
    fn replay_bytes(&self) -> Option<u64> {
        self.inner.replay_bytes()
    }
    fn defer_fence_checks(&mut self) {
        self.inner.defer_fence_checks()
    }
    fn verify_fence(&mut self) -> Result<(), StoreError> {
        self.inner.verify_fence()
    }
    fn on_durable(&mut self, pos: u64) -> Result<(), StoreError> {
        let mut ready = None;
        while let Some(&(p, t)) = self.staged.front() {
            if p > pos {
                break;
            }
            ready = Some(t);
            self.staged.pop_front();
        }
        let Some(t) = ready else {
            return Ok(());
        };
        if t != self.inner.next_target_seq() {
            self.inner.set_next_target_seq(t)?;
        }
        if self.pending_target == Some(t) {
            self.pending_target = None;
        }
        Ok(())
    }
}
