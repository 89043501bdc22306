//! The gateway's order map: the client and upstream of every upstream ClOrdID, kept in a
//! fenced [`FileStore`] of its own (one record per change, written as a "sent message") so a
//! new active routes the reports of orders the old one sent.
//!
//! # Written after, rebuilt at activation
//!
//! Nothing the gateway sends depends on the map's file: an order forwarded upstream is in
//! that upstream's session store before it leaves (`CLIENT~id` names its client, the store
//! its upstream), and a terminal report forwarded to a client is in that client's store. So
//! changes are made in memory and written once a tick ([`OrderMap::flush`]), together with a
//! *checkpoint*: the [`StoreMark`] of each session store they cover. Syncing the map's file
//! for every order would put a second file into the pass that makes the order durable
//! before it leaves, and cost its round trip about a third more.
//!
//! A successor ([`OrderMap::rebuild`], at activation) replays the file, then reads, from
//! each session store, only the messages written after that store's checkpointed mark,
//! record by record ([`FileStore::for_each_sent_after`]: a sequence reset after the mark
//! hides nothing): the orders (NewOrderSingle, cancels, replaces) sent upstream whose owner
//! is missing, and the terminal ExecutionReports sent to clients (not the gateway's own
//! refusals) whose order is not marked done yet. Why that is complete: a checkpoint is
//! written after the changes of every message before its marks, in the same append, so a
//! durable checkpoint implies durable changes (the file keeps a prefix of what was
//! written); a mark orders records across epochs and resets. A write of the map that fails
//! may have lost changes: checkpoints stop until the next prune (once a second) has written
//! a snapshot of the whole map, and the changes stay queued meanwhile. The
//! successor then writes what it rebuilt and a checkpoint of its own and syncs them before
//! it serves, so a store reopened under the same epoch after a torn tail (whose new records
//! reuse offsets beyond the old mark) is never judged by a stale mark.
//!
//! # Bounded
//!
//! A gateway runs for weeks; the map and its store must not grow with every order ever
//! routed. An order whose last report was terminal (OrdStatus filled, cancelled, rejected,
//! expired, done for the day unless good till cancel or date, or replaced under a new
//! ClOrdID) is marked *done* with the time (a record too, so a successor knows). Done orders
//! are dropped once older than the retention ([`OrderMap::prune`], from the gateway's tick)
//! and, for one client, when its session schedule starts a new period
//! ([`OrderMap::prune_client`]). The store is compacted
//! atomically ([`FileStore::replace_sent`]: one record, or a new generation of the store when
//! the map is larger than a record) once superseded records outnumber the live ones, so its size follows the live orders too. A report that still arrives for a pruned
//! order is routed by its ClOrdID's `CLIENT~` prefix; only a cancel of a pruned order would
//! fall back to the routing rules, and a done order cannot be cancelled anyway.
//!
//! Orders that never finish (resting good-till-cancel orders) stay, as they must.

use std::collections::HashMap;
use std::time::Duration;

use crate::codec::{parse, Message};
use crate::gateway::{CL_ORD_ID_SEP, REJECT_EXEC_ID_PREFIX};
use crate::orders::tag;
use crate::store::{FileStore, SessionStore, StoreError, StoreMark};

/// Compaction waits until the store holds this many records more than twice the live ones,
/// so a small map is not rewritten on every prune.
const COMPACT_SLACK: u64 = 1024;

/// Most changes kept in memory before they are written without waiting for the tick (a
/// burst of orders between two ticks must not grow memory without bound).
const MAX_PENDING: usize = 4096;

/// Who an upstream ClOrdID belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The client's CompID.
    pub client: String,
    /// The upstream the order went to.
    pub upstream: String,
}

#[derive(Debug, Clone)]
struct Entry {
    owner: Owner,
    /// When the order was marked done, Unix seconds.
    done_at: Option<i64>,
}

/// The persisted, bounded order map. See the module documentation.
#[derive(Debug)]
pub struct OrderMap {
    store: FileStore,
    entries: HashMap<String, Entry>,
    retention: Duration,
    /// Records of changes made in memory and not written yet, in the order made.
    pending: Vec<Vec<u8>>,
    /// The last mark written for each session store (by its directory name).
    marks: HashMap<String, StoreMark>,
    /// A write of the map failed: changes may be missing from the file, so no checkpoint
    /// may claim to cover them until a snapshot of the whole map is written. Until then a
    /// successor reads the session stores from the last checkpoint written before.
    checkpoints_off: bool,
    /// Stored records below which compaction is not tried again (after a map too large to
    /// compact in one record).
    compact_from: u64,
    /// The last write error, for the gateway's health answer.
    last_error: Option<String>,
}

/// A session store [`OrderMap::rebuild`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The key its marks are written under: the session's directory name.
    pub key: &'a str,
    /// The upstream's name or the client's CompID.
    pub name: &'a str,
    /// An upstream (orders sent) or a client (reports sent).
    pub upstream: bool,
    /// The store, open for the new epoch.
    pub store: &'a FileStore,
}

/// What [`OrderMap::rebuild`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Messages read from the session stores (written after their marks).
    pub scanned: usize,
    /// Orders whose owner the file did not have.
    pub owners: usize,
    /// Orders the file did not mark done although their terminal report went out.
    pub done: usize,
}

/// A done record: `-`, the id, the Unix seconds (an id always contains the `~` separator, so
/// it is never `-` or `=`).
const DONE: &str = "-";
/// A checkpoint record: `=`, the session's directory name, the segment's epoch, the offset
/// and, unless 0, the segment's generation.
const MARK: &str = "=";

fn owner_record(id: &str, o: &Owner) -> Vec<u8> {
    format!("{id}\u{1}{}\u{1}{}", o.client, o.upstream).into_bytes()
}

fn done_record(id: &str, at: i64) -> Vec<u8> {
    format!("{DONE}\u{1}{id}\u{1}{at}").into_bytes()
}

fn mark_record(key: &str, m: StoreMark) -> Vec<u8> {
    if m.generation == 0 {
        format!("{MARK}\u{1}{key}\u{1}{}\u{1}{}", m.segment, m.offset).into_bytes()
    } else {
        format!(
            "{MARK}\u{1}{key}\u{1}{}\u{1}{}\u{1}{}",
            m.segment, m.offset, m.generation
        )
        .into_bytes()
    }
}

/// The ClOrdIDs an ExecutionReport finishes: when OrdStatus is terminal, its own and the
/// OrigClOrdID it names (a cancel's report carries the cancel request's ClOrdID and the
/// order's as OrigClOrdID: both are done); after a replace (ExecType 5), the order it
/// superseded. Done for day (3) is terminal only for an order that does not outlive the day:
/// one whose report names TimeInForce good till cancel (1) or good till date (6) works
/// again the next day, and its cancel must still find its upstream.
pub(crate) fn finished<'m>(m: &Message<'m>) -> [Option<&'m [u8]>; 2] {
    let terminal = match m.get(tag::ORD_STATUS) {
        Some(b"2" | b"4" | b"8" | b"C") => true,
        Some(b"3") => !matches!(m.get(tag::TIME_IN_FORCE), Some(b"1" | b"6")),
        _ => false,
    };
    let replaced = m.get(tag::EXEC_TYPE) == Some(b"5");
    [
        m.get(tag::CL_ORD_ID).filter(|_| terminal),
        m.get(tag::ORIG_CL_ORD_ID).filter(|_| terminal || replaced),
    ]
}

impl OrderMap {
    /// The map replayed from `store`; done orders are dropped after `retention`. Call
    /// [`rebuild`](Self::rebuild) next when the session stores are open.
    pub fn open(store: FileStore, retention: Duration) -> Result<OrderMap, StoreError> {
        let last = store.next_sender_seq().saturating_sub(1);
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut marks = HashMap::new();
        for (_, rec) in store.sent_range(1, last)? {
            let text = String::from_utf8_lossy(&rec);
            let f: Vec<&str> = text.split('\u{1}').collect();
            match f[..] {
                [DONE, id, at] => {
                    if let (Some(e), Ok(at)) = (entries.get_mut(id), at.parse()) {
                        e.done_at = Some(at);
                    }
                }
                [MARK, key, segment, offset] | [MARK, key, segment, offset, _] => match (
                    segment.parse(),
                    offset.parse(),
                    f.get(4).map_or(Ok(0), |g| g.parse()),
                ) {
                    (Ok(segment), Ok(offset), Ok(generation)) => {
                        marks.insert(
                            key.to_owned(),
                            StoreMark {
                                segment,
                                generation,
                                offset,
                            },
                        );
                    }
                    _ => {
                        tracing::warn!(record = %text, "order map checkpoint not understood; skipped")
                    }
                },
                [id, c, u] => {
                    entries.insert(
                        id.to_owned(),
                        Entry {
                            owner: Owner {
                                client: c.to_owned(),
                                upstream: u.to_owned(),
                            },
                            done_at: None,
                        },
                    );
                }
                _ => tracing::warn!(record = %text, "order map record not understood; skipped"),
            }
        }
        Ok(OrderMap {
            store,
            entries,
            retention,
            pending: Vec::new(),
            marks,
            checkpoints_off: false,
            compact_from: 0,
            last_error: None,
        })
    }

    /// Completes the map from what the session stores `sides` hold beyond their marks (see
    /// the module documentation), then writes it with a checkpoint at their current marks and
    /// waits until that is durable. `now` (Unix seconds) dates the done marks it adds.
    pub fn rebuild(&mut self, sides: &[Side<'_>], now: i64) -> Result<Rebuilt, StoreError> {
        let mut r = Rebuilt::default();
        // Owners first: a report can only mark done an order the map knows.
        let (ups, clients): (Vec<&Side<'_>>, Vec<&Side<'_>>) =
            sides.iter().partition(|s| s.upstream);
        for side in ups.into_iter().chain(clients) {
            let mark = self.marks.get(side.key).copied();
            let mut each = |frame: &[u8]| {
                r.scanned += 1;
                let Ok(m) = parse(frame) else { return };
                if side.upstream {
                    if !matches!(m.msg_type(), b"D" | b"F" | b"G") {
                        return;
                    }
                    // Keyed as the live path keys it (`from_utf8_lossy`).
                    let id = String::from_utf8_lossy(m.get(tag::CL_ORD_ID).unwrap_or_default());
                    let Some((client, _)) = id.split_once(CL_ORD_ID_SEP) else {
                        return;
                    };
                    if !self.entries.contains_key(id.as_ref()) {
                        self.record(&id, client, side.name);
                        r.owners += 1;
                    }
                } else if m.msg_type() == b"8" {
                    // The gateway's own rejects never finish an order on the live path (a
                    // refused order never had one), so they do not here either.
                    let exec_id = m.get(tag::EXEC_ID).unwrap_or_default();
                    if exec_id.starts_with(REJECT_EXEC_ID_PREFIX.as_bytes()) {
                        return;
                    }
                    for id in finished(&m).into_iter().flatten() {
                        let id = format!(
                            "{}{CL_ORD_ID_SEP}{}",
                            side.name,
                            String::from_utf8_lossy(id)
                        );
                        if self.done(&id, now) {
                            r.done += 1;
                        }
                    }
                }
            };
            match mark {
                // From the mark on, record by record: resets after it hide nothing.
                Some(mark) => side.store.for_each_sent_after(mark, &mut each)?,
                // Never checkpointed (a new session, a map written before checkpoints
                // existed, which then held every owner): what the current period holds.
                None => side.store.for_each_sent(&mut each)?,
            }
        }
        let marks: Vec<(&str, StoreMark)> = sides.iter().map(|s| (s.key, s.store.mark())).collect();
        self.flush(&marks)?;
        self.store.sync()?;
        Ok(r)
    }

    /// The owner of `id`.
    pub fn get(&self, id: &str) -> Option<&Owner> {
        self.entries.get(id).map(|e| &e.owner)
    }

    /// Orders in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records in the store (live and superseded); changes not flushed yet are not counted.
    pub fn stored_records(&self) -> u64 {
        self.store.next_sender_seq().saturating_sub(1)
    }

    /// Changes made since the last [`flush`](Self::flush).
    pub fn unwritten(&self) -> usize {
        self.pending.len()
    }

    /// The map as the gateway's health answer shows it.
    pub fn health(&self) -> crate::admin::OrderMapHealth {
        crate::admin::OrderMapHealth {
            orders: self.entries.len(),
            unwritten: self.pending.len(),
            checkpoints: !self.checkpoints_off,
            last_error: self.last_error.clone(),
        }
    }

    /// Records that `id` belongs to `client` and went to `upstream`, in memory (written by
    /// the next [`flush`](Self::flush)); an id already known keeps its owner.
    pub fn record(&mut self, id: &str, client: &str, upstream: &str) {
        if self.entries.contains_key(id) {
            return;
        }
        let owner = Owner {
            client: client.to_owned(),
            upstream: upstream.to_owned(),
        };
        self.pending.push(owner_record(id, &owner));
        self.entries.insert(
            id.to_owned(),
            Entry {
                owner,
                done_at: None,
            },
        );
        self.flush_if_full();
    }

    /// Marks `id` done at `now` (Unix seconds) if it is known and not done yet, in memory
    /// (written by the next [`flush`](Self::flush)); true when it did.
    pub fn done(&mut self, id: &str, now: i64) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if e.done_at.is_none() => e.done_at = Some(now),
            _ => return false,
        }
        self.pending.push(done_record(id, now));
        self.flush_if_full();
        true
    }

    fn flush_if_full(&mut self) {
        if self.pending.len() >= MAX_PENDING {
            if let Err(e) = self.flush(&[]) {
                tracing::warn!(error = %e, "cannot write the order map; a successor rebuilds it from the session stores");
            }
        }
    }

    /// Writes the changes made since the last flush and, after them, the marks of `marks`
    /// that moved (a checkpoint: every change of a message written before a session's mark
    /// is in the map), in one append. Returns whether it wrote anything. Not synced here:
    /// the group-commit pass that follows makes it durable. On an error the changes stay
    /// queued for the next flush and checkpoints stop until a snapshot of the whole map is
    /// written (see [`OrderMap::prune`]): the failed write may have lost some of them.
    pub fn flush(&mut self, marks: &[(&str, StoreMark)]) -> Result<bool, StoreError> {
        let mut recs = std::mem::take(&mut self.pending);
        let changes = recs.len();
        let moved: Vec<(&str, StoreMark)> = if self.checkpoints_off {
            Vec::new()
        } else {
            marks
                .iter()
                .copied()
                .filter(|(k, m)| self.marks.get(*k) != Some(m))
                .collect()
        };
        recs.extend(moved.iter().map(|&(k, m)| mark_record(k, m)));
        if recs.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.store.save_sent_all(&recs) {
            recs.truncate(changes);
            // Bounded while the store keeps failing: the snapshot that ends the failure
            // holds every change anyway.
            if recs.len() <= 4 * MAX_PENDING {
                self.pending = recs;
            }
            self.lost(&e);
            return Err(e);
        }
        for (k, m) in moved {
            self.marks.insert(k.to_owned(), m);
        }
        Ok(true)
    }

    /// A write failed, and may have lost changes: no checkpoint may claim to cover them
    /// until a snapshot of the whole map is in the file (see `checkpoints_off`).
    fn lost(&mut self, e: &StoreError) {
        self.last_error = Some(e.to_string());
        if !self.checkpoints_off {
            self.checkpoints_off = true;
            tracing::warn!(error = %e, "order map write failed: no checkpoint until the whole map is rewritten; a successor reads the session stores from the last one");
        }
    }

    /// Waits until everything flushed is durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.store.sync()
    }

    /// Drops the orders done at least the retention before `now` (Unix seconds); compacts
    /// the store when due (after writing the changes not written yet). Returns how many
    /// were dropped.
    pub fn prune(&mut self, now: i64) -> Result<usize, StoreError> {
        let keep = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.done_at.is_none_or(|at| now.saturating_sub(at) < keep));
        self.compact_if_due()?;
        Ok(before - self.entries.len())
    }

    /// Drops every done order of `client` (its session started a new period); compacts
    /// the store when due. Returns how many were dropped.
    pub fn prune_client(&mut self, client: &str) -> Result<usize, StoreError> {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.owner.client != client || e.done_at.is_none());
        self.compact_if_due()?;
        Ok(before - self.entries.len())
    }

    /// Compacts when superseded records outnumber the live ones, or when a failed write
    /// stopped the checkpoints: the snapshot makes the file whole again, and they resume.
    fn compact_if_due(&mut self) -> Result<(), StoreError> {
        let live = self
            .entries
            .values()
            .map(|e| 1 + u64::from(e.done_at.is_some()))
            .sum::<u64>()
            + self.marks.len() as u64;
        let stored = self.stored_records() + self.pending.len() as u64;
        let due = stored > 2 * live + COMPACT_SLACK && stored >= self.compact_from;
        if !due && !self.checkpoints_off {
            return Ok(());
        }
        // The snapshot holds every change made so far, written or not, and the marks
        // written: those cover no more than what the file held, so it stays complete.
        let mut msgs = Vec::with_capacity(live as usize);
        for (id, e) in &self.entries {
            msgs.push(owner_record(id, &e.owner));
            if let Some(at) = e.done_at {
                msgs.push(done_record(id, at));
            }
        }
        msgs.extend(self.marks.iter().map(|(k, &m)| mark_record(k, m)));
        match self.store.replace_sent(&msgs) {
            Ok(()) => {
                tracing::info!(records = stored, live, "order map compacted");
                self.pending.clear();
                if self.checkpoints_off {
                    self.checkpoints_off = false;
                    tracing::info!("order map rewritten whole: checkpoints resume");
                }
                Ok(())
            }
            // Nothing was written (one of its records is larger than a store record: a map
            // larger than one is written as a generation of records): the file stays as it
            // is, complete, and is not tried again before it has doubled.
            Err(e @ StoreError::TooLarge(_)) => {
                self.compact_from = stored.saturating_mul(2);
                tracing::warn!(error = %e, records = stored, live,
                    "order map record too large to compact; the file keeps growing");
                Err(e)
            }
            Err(e) => {
                self.lost(&e);
                Err(e)
            }
        }
    }
}

impl Drop for OrderMap {
    fn drop(&mut self) {
        // A map that stops (shutdown, fenced) leaves its changes in the file; a fenced store
        // refuses them, as it must.
        if let Err(e) = self.flush(&[]) {
            tracing::debug!(error = %e, "order map changes not written at drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionId, SyncPolicy};
    use crate::tags::BeginString;

    fn map(dir: &std::path::Path, epoch: u64) -> OrderMap {
        let sid = SessionId::new(BeginString::Fix44, "ORDERS", "GW");
        let store = FileStore::open(dir, &sid, epoch, SyncPolicy::EveryWrite).expect("store");
        OrderMap::open(store, Duration::from_secs(60)).expect("map")
    }

    fn report(fields: &[(u32, &str)]) -> Vec<u8> {
        let mut b = crate::codec::MessageBuilder::new(BeginString::Fix44, b"8");
        b.push_str(49, "X").push_str(56, "GW").push_uint(34, 1);
        for (t, v) in fields {
            b.push_str(*t, v);
        }
        b.finish().expect("frame")
    }

    fn finishes(fields: &[(u32, &str)]) -> Vec<String> {
        let f = report(fields);
        let m = parse(&f).expect("parse");
        finished(&m)
            .into_iter()
            .flatten()
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect()
    }

    /// Which reports finish which orders: fills, cancels (the order named too), rejects,
    /// expiries, replaces; Done for day only for an order that does not outlive the day.
    #[test]
    fn terminal_reports_finish_their_orders_and_a_gtc_done_for_day_does_not() {
        use tag::{
            CL_ORD_ID as ID, EXEC_TYPE as ET, ORD_STATUS as OS, ORIG_CL_ORD_ID as ORIG,
            TIME_IN_FORCE as TIF,
        };
        assert_eq!(finishes(&[(ID, "a"), (OS, "2")]), ["a"]);
        assert_eq!(finishes(&[(ID, "a"), (OS, "1")]), Vec::<String>::new());
        assert_eq!(finishes(&[(ID, "c"), (ORIG, "a"), (OS, "4")]), ["c", "a"]);
        assert_eq!(
            finishes(&[(ID, "r"), (ORIG, "a"), (ET, "5"), (OS, "0")]),
            ["a"]
        );
        assert_eq!(finishes(&[(ID, "a"), (OS, "8")]), ["a"]);
        assert_eq!(finishes(&[(ID, "a"), (OS, "C")]), ["a"]);
        assert_eq!(finishes(&[(ID, "a"), (OS, "3")]), ["a"], "a day order");
        assert_eq!(
            finishes(&[(ID, "a"), (OS, "3"), (TIF, "0")]),
            ["a"],
            "a day order"
        );
        assert!(
            finishes(&[(ID, "g"), (OS, "3"), (TIF, "1")]).is_empty(),
            "GTC"
        );
        assert!(
            finishes(&[(ID, "g"), (OS, "3"), (TIF, "6")]).is_empty(),
            "GTD"
        );
    }

    /// After a failed write, changes are still written but no checkpoint, so the changes
    /// that write lost stay covered by the successor's read of the session stores; the next
    /// prune rewrites the whole map and checkpoints resume.
    #[test]
    fn after_a_failed_write_no_checkpoint_is_written_until_the_map_is_rewritten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mark = StoreMark {
            segment: 1,
            generation: 0,
            offset: 100,
        };
        let mut m = map(tmp.path(), 1);
        m.record("C~a", "C", "U");
        assert!(m.flush(&[("K", mark)]).expect("flush"));
        assert_eq!(m.marks.get("K"), Some(&mark));
        m.lost(&StoreError::Poisoned);
        m.record("C~b", "C", "U");
        let later = StoreMark {
            segment: 1,
            generation: 3,
            offset: 900,
        };
        assert!(m.flush(&[("K", later)]).expect("flush"));
        drop(m);
        let mut m = map(tmp.path(), 2);
        assert!(m.get("C~b").is_some(), "changes are still written");
        assert_eq!(
            m.marks.get("K"),
            Some(&mark),
            "the checkpoint is the last one before the failure"
        );

        m.lost(&StoreError::Poisoned);
        let h = m.health();
        assert!(!h.checkpoints && h.last_error.is_some(), "{h:?}");
        m.record("C~c", "C", "U");
        assert_eq!(m.prune(0).expect("prune"), 0);
        assert!(m.health().checkpoints, "the snapshot ends the failure");
        assert!(m.flush(&[("K", later)]).expect("flush"));
        drop(m);
        let m = map(tmp.path(), 3);
        assert!(
            m.get("C~c").is_some(),
            "the snapshot holds the changes not yet written"
        );
        assert_eq!(m.marks.get("K"), Some(&later));
    }
}
