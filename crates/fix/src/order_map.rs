//! The gateway's order map: the client and upstream of every upstream ClOrdID, kept in a
//! fenced [`FileStore`] of its own (one record per change, written as a "sent message") so a
//! new active routes the reports of orders the old one sent.
//!
//! # Bounded
//!
//! A gateway runs for weeks; the map and its store must not grow with every order ever
//! routed. An order whose last report was terminal (OrdStatus filled, cancelled, rejected,
//! expired, done for the day, or replaced under a new ClOrdID) is marked *done* with the time
//! (a record too, so a successor knows). Done orders are dropped once older than the
//! retention ([`OrderMap::prune`], from the gateway's tick) and, for one client, when its
//! session schedule starts a new period ([`OrderMap::prune_client`]). The store is compacted
//! in one record ([`FileStore::replace_sent`]) once superseded records outnumber the live
//! ones, so its size follows the live orders too. A report that still arrives for a pruned
//! order is routed by its ClOrdID's `CLIENT~` prefix; only a cancel of a pruned order would
//! fall back to the routing rules, and a done order cannot be cancelled anyway.
//!
//! Orders that never finish (resting good-till-cancel orders) stay, as they must.

use std::collections::HashMap;
use std::time::Duration;

use crate::store::{FileStore, SessionStore, StoreError};

/// Compaction waits until the store holds this many records more than twice the live ones,
/// so a small map is not rewritten on every prune.
const COMPACT_SLACK: u64 = 1024;

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
}

/// A done record: `-`, the id, the Unix seconds (an id always contains the `~` separator, so
/// it is never `-`).
const DONE: &str = "-";

fn owner_record(id: &str, o: &Owner) -> Vec<u8> {
    format!("{id}\u{1}{}\u{1}{}", o.client, o.upstream).into_bytes()
}

fn done_record(id: &str, at: i64) -> Vec<u8> {
    format!("{DONE}\u{1}{id}\u{1}{at}").into_bytes()
}

impl OrderMap {
    /// The map replayed from `store`; done orders are dropped after `retention`.
    pub fn open(store: FileStore, retention: Duration) -> Result<OrderMap, StoreError> {
        let last = store.next_sender_seq().saturating_sub(1);
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (_, rec) in store.sent_range(1, last)? {
            let text = String::from_utf8_lossy(&rec);
            let mut it = text.split('\u{1}');
            match (it.next(), it.next(), it.next()) {
                (Some(DONE), Some(id), Some(at)) => {
                    if let (Some(e), Ok(at)) = (entries.get_mut(id), at.parse()) {
                        e.done_at = Some(at);
                    }
                }
                (Some(id), Some(c), Some(u)) => {
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
        })
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

    /// Records in the store (live and superseded).
    pub fn stored_records(&self) -> u64 {
        self.store.next_sender_seq().saturating_sub(1)
    }

    /// Records that `id` belongs to `client` and went to `upstream` (durably, before the
    /// order is stored for sending); an id already known keeps its owner.
    pub fn record(&mut self, id: &str, client: &str, upstream: &str) -> Result<(), StoreError> {
        if self.entries.contains_key(id) {
            return Ok(());
        }
        let owner = Owner {
            client: client.to_owned(),
            upstream: upstream.to_owned(),
        };
        let seq = self.store.next_sender_seq();
        self.store.save_sent(seq, &owner_record(id, &owner))?;
        self.entries.insert(
            id.to_owned(),
            Entry {
                owner,
                done_at: None,
            },
        );
        Ok(())
    }

    /// Marks `id` done at `now` (Unix seconds) if it is known and not done yet.
    pub fn done(&mut self, id: &str, now: i64) -> Result<(), StoreError> {
        match self.entries.get(id) {
            Some(e) if e.done_at.is_none() => {}
            _ => return Ok(()),
        }
        let seq = self.store.next_sender_seq();
        self.store.save_sent(seq, &done_record(id, now))?;
        if let Some(e) = self.entries.get_mut(id) {
            e.done_at = Some(now);
        }
        Ok(())
    }

    /// Drops the orders done at least the retention before `now` (Unix seconds); compacts
    /// the store when due. Returns how many were dropped.
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

    fn compact_if_due(&mut self) -> Result<(), StoreError> {
        let live = self
            .entries
            .values()
            .map(|e| 1 + u64::from(e.done_at.is_some()))
            .sum::<u64>();
        if self.stored_records() <= 2 * live + COMPACT_SLACK {
            return Ok(());
        }
        let mut msgs = Vec::with_capacity(live as usize);
        for (id, e) in &self.entries {
            msgs.push(owner_record(id, &e.owner));
            if let Some(at) = e.done_at {
                msgs.push(done_record(id, at));
            }
        }
        tracing::info!(records = self.stored_records(), live, "order map compacted");
        self.store.replace_sent(&msgs)
    }
}
