//! Group commit: one syncer thread per process makes the records of every
//! [`SyncPolicy::Group`](super::SyncPolicy::Group) store durable in batches.
//!
//! # Why
//!
//! A FIX engine must not send a message before the record carrying it survives a power cut.
//! Syncing each record before it is sent costs one `fdatasync` per record, and the event loop
//! waits on each: a few hundred orders per second. Here a store only `write`s its record
//! (page cache) and counts it; the syncer thread takes every file written since its last
//! pass and `fdatasync`s them in one go, while the loop carries on reading and writing the
//! next records. The loop holds each outgoing message until the syncer reports a position at
//! or past the last record written before it (see [`crate::engine`]): the send waits on its
//! batch, not on a sync of its own, so one `fdatasync` serves every record that arrived
//! while the previous one ran.
//!
//! # Positions
//!
//! Every record written through the syncer gets the next position (`written`); `durable`
//! is the highest position whose record, and every record before it, has been synced. A
//! pass snapshots `written` and the set of files written, with the lock held, *after* those
//! writes returned, so every record counted is in a file the pass syncs.
//!
//! # When a pass starts
//!
//! Writing a record starts nothing. A pass starts when someone asks for a position not yet
//! durable, at once and with whatever is written by then: it never waits for a batch to
//! fill. The engine asks once it has handled an event (a read, a command), when every
//! record the event wrote is written; a pass started by the event's first record would
//! leave the others, and the sends waiting on them, to a second pass. With nothing else
//! queued, the engine runs the pass on its own thread ([`GroupCommit::sync_now`]): a lone
//! order then costs one `fdatasync` per file per hop and no wake-up of the syncer thread and
//! of the loop after it, which on a loaded machine each wait for a core. Such a pass with
//! several files (the gateway's order map and upstream store) syncs the first on the loop
//! and hands the others to the syncer thread, idle until then, so the `fdatasync`s run side
//! by side. Under load the syncer thread runs the passes while the loop reads on.
//!
//! Records nobody waits on (a received sequence number whose successor would only ask for
//! the message again: the safe direction) ride along with the next pass, and a caller's
//! [`GroupCommit::request`] (the engine's tick) bounds how long they wait.
//!
//! # Replication
//!
//! A [`BatchHook`] (the replication sender, [`crate::replica`]) is told when a pass starts,
//! so it copies the batch to a standby while the local `fdatasync` runs, and the pass counts
//! as durable only once the hook's `finish` returns: one replication round trip per batch.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Another place a batch must reach before it counts as durable: a standby's copy.
pub trait BatchHook: Send + Sync + std::fmt::Debug {
    /// A pass covers every record up to `pos` (all of them are in their files now), written
    /// to `files` since the pass before (a file is in one pass's list per batch written to
    /// it through [`GroupCommit::wrote`]): start copying them.
    fn start(&self, pos: u64, files: &[Arc<File>]);
    /// The local `fdatasync` of that pass is done; returns once `pos` may count as durable,
    /// or `Err` when it never will (a newer epoch owns the group): the syncer then fails.
    fn finish(&self, pos: u64) -> Result<(), String>;
}

/// The process's syncer. See the module documentation.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    /// Wakes the syncer thread: a pass wanted, or files to sync for a pass running elsewhere.
    work: Condvar,
    /// Wakes blocking waiters: a pass, or the syncer's share of one, finished.
    done: Condvar,
    /// `durable`, for event loops: a change wakes them to release what they hold.
    durable_tx: watch::Sender<u64>,
    hook: Mutex<Option<Arc<dyn BatchHook>>>,
}

#[derive(Debug, Default)]
struct State {
    written: u64,
    /// Highest position someone waits on: the syncer runs while it is above `durable`.
    wanted: u64,
    durable: u64,
    /// Files written since the last pass snapshot, by the address of their shared handle.
    dirty: HashMap<usize, Arc<File>>,
    /// Set when an `fdatasync` failed: nothing written since can be known durable.
    failed: Option<String>,
    started: bool,
    /// A pass is syncing (on the syncer thread or a caller's, see [`GroupCommit::sync_now`]).
    running: bool,
    passes: u64,
    /// `fdatasync`s issued by the passes so far (one per file a pass found written).
    syncs: u64,
    /// No pass starts while set (see [`GroupCommit::pause`]).
    paused: bool,
    /// Files a pass running on another thread hands to the syncer thread, to sync beside
    /// its own (see [`GroupCommit::sync_now`]).
    assist: Option<Vec<Arc<File>>>,
    /// The syncer thread's result for `assist`.
    assisted: Option<Result<(), String>>,
}

static SHARED: OnceLock<GroupCommit> = OnceLock::new();

/// `fdatasync`s every file, one after another on this thread. A pass shares its files
/// with the syncer thread only, already running: a thread spawned per extra file cost a
/// spawn and a wake-up per pass (three files from three new threads: p50 1.3–4.7 ms against
/// 0.3 ms one after another), where two files synced by two running threads took p50
/// 171 µs against 207 µs one after another on this disk.
fn sync_all(files: &[Arc<File>]) -> std::io::Result<()> {
    files.iter().try_for_each(|f| f.sync_data())
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent across a panic elsewhere: every update is a few plain
    // assignments under the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GroupCommit {
    /// The process's syncer, its thread started on first use.
    pub fn shared() -> std::io::Result<&'static GroupCommit> {
        let g = SHARED.get_or_init(|| GroupCommit {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            durable_tx: watch::channel(0).0,
            hook: Mutex::new(None),
        });
        let mut st = lock(&g.state);
        if !st.started {
            std::thread::Builder::new()
                .name("fix-group-commit".into())
                .spawn(move || g.run())?;
            st.started = true;
        }
        Ok(g)
    }

    /// The process's syncer if a store has started it: an event loop without one has
    /// nothing to wait for.
    pub fn started() -> Option<&'static GroupCommit> {
        SHARED.get().filter(|g| lock(&g.state).started)
    }

    /// Counts a record just written to `file` and returns its position. It starts no pass:
    /// the writer asks for one ([`request`](Self::request), [`sync_now`](Self::sync_now),
    /// [`wait_durable`](Self::wait_durable)) once it has written every record its next send
    /// depends on, so those records share one pass instead of the first one starting a pass
    /// the others miss.
    pub fn wrote(&self, file: &Arc<File>) -> u64 {
        let mut st = lock(&self.state);
        st.written += 1;
        st.dirty
            .entry(Arc::as_ptr(file) as usize)
            .or_insert_with(|| file.clone());
        st.written
    }

    /// Position of the last record written.
    pub fn written(&self) -> u64 {
        lock(&self.state).written
    }

    /// Position up to which every record is durable.
    pub fn durable(&self) -> u64 {
        lock(&self.state).durable
    }

    /// Passes run so far (each one `fdatasync` per file it found written).
    pub fn passes(&self) -> u64 {
        lock(&self.state).passes
    }

    /// `fdatasync`s the passes issued so far: [`passes`](Self::passes) counts batches, this
    /// counts what they cost, one per file each pass found written.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Why syncing failed, once it has: the process must stop relying on the stores.
    pub fn failure(&self) -> Option<String> {
        lock(&self.state).failed.clone()
    }

    /// Makes sure a pass will cover `pos` (lazy records included).
    pub fn request(&self, pos: u64) {
        let mut st = lock(&self.state);
        if st.wanted < pos {
            st.wanted = pos;
            self.work.notify_one();
        }
    }

    /// Blocks until `pos` is durable; `Err` with the reason when syncing failed. For the
    /// rare paths that cannot wait asynchronously (a disconnect that must write its Logout,
    /// a shutdown, tests).
    pub fn wait_durable(&self, pos: u64) -> Result<(), String> {
        self.wait_until(pos, None).map(|_| ())
    }

    /// [`GroupCommit::wait_durable`] for at most `timeout`: whether `pos` is durable.
    pub fn wait_durable_for(&self, pos: u64, timeout: Duration) -> Result<bool, String> {
        self.wait_until(pos, Some(Instant::now() + timeout))
    }

    fn wait_until(&self, pos: u64, deadline: Option<Instant>) -> Result<bool, String> {
        let mut st = lock(&self.state);
        if st.wanted < pos {
            st.wanted = pos;
            self.work.notify_one();
        }
        loop {
            if let Some(f) = &st.failed {
                return Err(f.clone());
            }
            if st.durable >= pos {
                return Ok(true);
            }
            st = match deadline {
                None => self.done.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    self.done
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Stops (`true`) or resumes starting passes: a disk that stops answering, for tests
    /// that show nothing leaves before it is durable.
    pub fn pause(&self, paused: bool) {
        let mut st = lock(&self.state);
        st.paused = paused;
        self.work.notify_one();
    }

    /// Makes every later pass wait for `hook` too (see [`BatchHook`]); `None` detaches it.
    pub fn set_hook(&self, hook: Option<Arc<dyn BatchHook>>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// A receiver of `durable`, for an event loop.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// Runs a pass on the calling thread, now, unless one is running (`None`: the caller
    /// waits for that one as usual) or passes are paused: the event loop's way to make what
    /// it just wrote durable when it has nothing else to do, with no hand-off to the syncer
    /// thread and back. Returns the durable position, or why syncing failed.
    pub fn sync_now(&self) -> Option<Result<u64, String>> {
        let st = lock(&self.state);
        if let Some(f) = &st.failed {
            return Some(Err(f.clone()));
        }
        if st.paused || st.running {
            return None;
        }
        if st.durable >= st.written {
            return Some(Ok(st.durable));
        }
        if self
            .hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            // A pass with a hook waits for a standby's acknowledgement: a network round trip
            // the event loop must not block on. The syncer thread runs it.
            let pos = st.written;
            drop(st);
            self.request(pos);
            return None;
        }
        Some(self.pass(st, true))
    }

    /// One pass: syncs every file written up to now and publishes the position reached (or
    /// the failure). Called with the lock held and no pass running. `share`: the caller is
    /// not the syncer thread, which then syncs all files but the first beside it.
    fn pass(&self, mut st: MutexGuard<'_, State>, share: bool) -> Result<u64, String> {
        st.running = true;
        let target = st.written;
        let files: Vec<Arc<File>> = std::mem::take(&mut st.dirty).into_values().collect();
        let (mine, theirs) = files.split_at(files.len().min(1));
        let shared = share && st.started && !theirs.is_empty();
        if shared {
            st.assist = Some(theirs.to_vec());
            self.work.notify_one();
        }
        drop(st);
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = &hook {
            h.start(target, &files);
        }
        let here = if shared { mine } else { &files[..] };
        let mut failed = sync_all(here).err().map(|e| e.to_string());
        let mut st = lock(&self.state);
        if shared {
            while st.assisted.is_none() {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(Err(e)) = st.assisted.take() {
                failed.get_or_insert(e);
            }
        }
        let mut failed = failed.map(|e| format!("fdatasync of a session store failed: {e}"));
        if let (None, Some(h)) = (&failed, &hook) {
            drop(st);
            failed = h.finish(target).err();
            st = lock(&self.state);
        }
        st.running = false;
        st.passes += 1;
        st.syncs += files.len() as u64;
        if let Some(f) = failed {
            // Which records reached the disk is unknown: none counts as durable again.
            tracing::error!(error = %f, "group commit failed; the stores are unusable");
            st.failed = Some(f.clone());
            self.work.notify_one();
            self.done.notify_all();
            drop(st);
            self.durable_tx.send_modify(|_| ());
            return Err(f);
        }
        st.durable = target;
        if st.wanted > target {
            // Asked for while this pass ran: the syncer thread takes the next one.
            self.work.notify_one();
        }
        self.done.notify_all();
        drop(st);
        self.durable_tx.send_replace(target);
        Ok(target)
    }

    fn run(&self) {
        loop {
            let mut st = lock(&self.state);
            loop {
                if st.failed.is_some() {
                    return;
                }
                if let Some(files) = st.assist.take() {
                    drop(st);
                    let r = sync_all(&files).map_err(|e| e.to_string());
                    st = lock(&self.state);
                    st.assisted = Some(r);
                    self.done.notify_all();
                    continue;
                }
                if !(st.paused || st.running || st.wanted <= st.durable) {
                    break;
                }
                st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            // A failure is kept in the state, where every store and waiter finds it.
            let _ = self.pass(st, false);
        }
    }
}
