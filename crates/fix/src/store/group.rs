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
//! of the loop after it, which on a loaded machine each wait for a core. Under load the
//! syncer thread runs the passes while the loop reads on.
//!
//! # A pass with several files
//!
//! Its files are synced side by side: the thread running the pass, the syncer thread when
//! the pass is not its own (idle then), and up to [`MAX_SYNC_THREADS`] in all with the
//! process's sync helpers, started the first time a pass has that many files and kept,
//! each take the next file not yet taken until none is left. A lone order's pass has one
//! file per hop and wakes nobody; a gateway with many sessions sending at once, or the
//! Logons of every client after a failover, have one file per session in a pass, and one
//! thread syncing them one after another made every send of that pass wait for all of
//! them.
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
    /// Whether [`finish`](Self::finish) may wait on the network (a standby's
    /// acknowledgement): such a pass runs on the syncer thread, never on an event loop.
    fn waits(&self) -> bool {
        true
    }
}

/// The process's syncer. See the module documentation.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    /// Wakes the syncer thread: a pass wanted, or files to sync for a pass running elsewhere.
    work: Condvar,
    /// Wakes blocking waiters: a pass, or the last file of a pass's [`Job`], finished.
    done: Condvar,
    /// Wakes the sync helpers: a [`Job`] has files nobody took yet.
    help: Condvar,
    /// `durable`, for event loops: a change wakes them to release what they hold.
    durable_tx: watch::Sender<u64>,
    hook: Mutex<Option<Arc<dyn BatchHook>>>,
    /// `fdatasync` of one file: `File::sync_data`, a slower or failing one in tests.
    sync_file: fn(&File) -> std::io::Result<()>,
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
    stats: PassStats,
    /// When a slow pass was last logged, and how many were not since (see [`SLOW_PASS`]).
    warned_at: Option<Instant>,
    unwarned: u64,
    /// No pass starts while set (see [`GroupCommit::pause`]).
    paused: bool,
    /// The files of the running pass, when it has more than one (see "A pass with several
    /// files").
    job: Option<Job>,
    /// Sync helper threads started so far (at most [`MAX_SYNC_THREADS`] − 2).
    helpers: usize,
    /// Starting one failed: no more are tried (the threads that run share the files).
    helpers_capped: bool,
}

/// The files of one pass, taken one at a time by every thread syncing them.
#[derive(Debug)]
struct Job {
    files: Vec<Arc<File>>,
    /// The next file nobody took yet.
    next: usize,
    /// Files taken and not synced yet.
    busy: usize,
    /// The first `fdatasync` that failed.
    error: Option<String>,
}

/// The most threads syncing one pass's files at once: the pass's own, the syncer thread and
/// the sync helpers. One `fdatasync` each of 100 files written on this VM's disk (ext4 on
/// virtio, 3 December): 11–15 ms one after another, 8–10 ms on 4 threads, 6 ms on 16.
/// Threads already running: one spawned per extra file cost a spawn and a wake-up per pass
/// (three files from three new threads: p50 1.3–4.7 ms against 0.3 ms one after another).
pub const MAX_SYNC_THREADS: usize = 16;

/// A pass slower than this, from its start to its position published, is counted
/// ([`PassStats::slow_passes`]) and logged: every send it held waited that long. A lone
/// order's pass takes 0.1–0.3 ms on this VM's disk, a pass of 100 sessions' files 6–15 ms
/// (3 December); a disk or a standby that stalls takes far longer.
pub const SLOW_PASS: Duration = Duration::from_millis(20);

/// At most one warning about slow passes per this interval; it counts those not logged.
const SLOW_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the passes cost since the process started, for its health answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Passes run, each one `fdatasync` per file it found written.
    pub passes: u64,
    /// `fdatasync`s the passes issued.
    pub syncs: u64,
    /// Passes slower than [`SLOW_PASS`].
    pub slow_passes: u64,
    /// The slowest pass, from its start to its position published (a standby's
    /// acknowledgement included).
    pub slowest: Duration,
    /// The local part of that same pass: its files' `fdatasync`s, side by side. Close to
    /// [`slowest`](Self::slowest): the disk stalled; far below it: the standby did.
    pub slowest_fdatasync: Duration,
}

/// A pass over [`SLOW_PASS`] to warn about.
struct SlowPass {
    took: Duration,
    local: Duration,
    files: usize,
    /// Slow passes since the last warning, this one included.
    since_last: u64,
}

impl SlowPass {
    fn warn(self) {
        tracing::warn!(
            pass_ms = self.took.as_secs_f64() * 1e3,
            fdatasync_ms = self.local.as_secs_f64() * 1e3,
            files = self.files,
            slow_passes = self.since_last,
            "a group-commit pass took over {} ms: every message it held waited that long \
             (fdatasync_ms near pass_ms: the disk stalled; far below it: the standby's \
             acknowledgement); slow_passes counts those since the last warning",
            SLOW_PASS.as_millis()
        );
    }
}

impl State {
    /// Counts a pass that took `took`, `local` of it syncing its files; the number of slow
    /// passes to warn about now (this one and those not logged), if it is time to.
    fn count_pass(
        &mut self,
        files: usize,
        local: Duration,
        took: Duration,
        now: Instant,
    ) -> Option<u64> {
        let s = &mut self.stats;
        s.passes += 1;
        s.syncs += files as u64;
        if took > s.slowest {
            s.slowest = took;
            s.slowest_fdatasync = local;
        }
        if took <= SLOW_PASS {
            return None;
        }
        s.slow_passes += 1;
        self.unwarned += 1;
        if self
            .warned_at
            .is_some_and(|at| now.saturating_duration_since(at) < SLOW_WARN_EVERY)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.unwarned))
    }
}

static SHARED: OnceLock<GroupCommit> = OnceLock::new();

const SYNCER_THREAD: &str = "fix-group-commit";
const HELPER_THREAD: &str = "fix-sync-helper";

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent across a panic elsewhere: every update is a few plain
    // assignments under the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GroupCommit {
    /// The process's syncer, its thread started on first use.
    pub fn shared() -> std::io::Result<&'static GroupCommit> {
        SHARED.get_or_init(GroupCommit::new).start()
    }

    fn new() -> GroupCommit {
        GroupCommit::with_sync(File::sync_data)
    }

    fn with_sync(sync_file: fn(&File) -> std::io::Result<()>) -> GroupCommit {
        GroupCommit {
            sync_file,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            help: Condvar::new(),
            durable_tx: watch::channel(0).0,
            hook: Mutex::new(None),
        }
    }

    /// Starts the syncer thread unless it runs.
    fn start(&'static self) -> std::io::Result<&'static GroupCommit> {
        let mut st = lock(&self.state);
        if !st.started {
            std::thread::Builder::new()
                .name(SYNCER_THREAD.into())
                .spawn(move || self.run())?;
            st.started = true;
        }
        Ok(self)
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
        lock(&self.state).stats.passes
    }

    /// `fdatasync`s the passes issued so far: [`passes`](Self::passes) counts batches, this
    /// counts what they cost, one per file each pass found written.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).stats.syncs
    }

    /// What the passes cost so far, the slow ones included.
    pub fn stats(&self) -> PassStats {
        lock(&self.state).stats
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
    pub fn sync_now(&'static self) -> Option<Result<u64, String>> {
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
            .as_ref()
            .is_some_and(|h| h.waits())
        {
            // A pass whose hook waits for a standby's acknowledgement waits a network round
            // trip the event loop must not block on. The syncer thread runs it.
            let pos = st.written;
            drop(st);
            self.request(pos);
            return None;
        }
        Some(self.pass(st, true))
    }

    /// One pass: syncs every file written up to now and publishes the position reached (or
    /// the failure). Called with the lock held and no pass running. `share`: the caller is
    /// not the syncer thread, which then syncs files of the pass beside it.
    fn pass(&'static self, mut st: MutexGuard<'_, State>, share: bool) -> Result<u64, String> {
        st.running = true;
        let target = st.written;
        let files: Vec<Arc<File>> = std::mem::take(&mut st.dirty).into_values().collect();
        if files.len() > 1 {
            let syncer = share && st.started;
            // Besides this thread, one per file left, the syncer thread first.
            let others = (files.len() - 1).min(MAX_SYNC_THREADS - 1);
            let helpers = self.grow_helpers(&mut st, others - usize::from(syncer));
            st.job = Some(Job {
                files: files.clone(),
                next: 0,
                busy: 0,
                error: None,
            });
            if syncer {
                self.work.notify_one();
            }
            for _ in 0..helpers {
                self.help.notify_one();
            }
        }
        drop(st);
        let began = Instant::now();
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = &hook {
            h.start(target, &files);
        }
        let syncing = Instant::now();
        let (mut st, failed, local) = if files.len() > 1 {
            let (st, failed) = self.finish_job();
            (st, failed, syncing.elapsed())
        } else {
            let failed = files
                .iter()
                .try_for_each(|f| (self.sync_file)(f))
                .err()
                .map(|e| e.to_string());
            let local = syncing.elapsed();
            (lock(&self.state), failed, local)
        };
        let mut failed = failed.map(|e| format!("fdatasync of a session store failed: {e}"));
        if let (None, Some(h)) = (&failed, &hook) {
            drop(st);
            failed = h.finish(target).err();
            st = lock(&self.state);
        }
        st.running = false;
        let took = began.elapsed();
        // Logged once the lock is released (below): the loop's writes wait on that lock.
        let slow = st
            .count_pass(files.len(), local, took, Instant::now())
            .map(|n| SlowPass {
                took,
                local,
                files: files.len(),
                since_last: n,
            });
        if let Some(f) = failed {
            // Which records reached the disk is unknown: none counts as durable again.
            tracing::error!(error = %f, "group commit failed; the stores are unusable");
            st.failed = Some(f.clone());
            self.work.notify_one();
            self.done.notify_all();
            drop(st);
            if let Some(s) = slow {
                s.warn();
            }
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
        if let Some(s) = slow {
            s.warn();
        }
        self.durable_tx.send_replace(target);
        Ok(target)
    }

    /// Starts sync helpers until `wanted` run (at most [`MAX_SYNC_THREADS`] − 2); returns
    /// how many run. A helper that cannot be started leaves its share to the threads that
    /// run (every one of them takes files until none is left), and none is tried again.
    fn grow_helpers(&'static self, st: &mut State, wanted: usize) -> usize {
        let wanted = wanted.min(MAX_SYNC_THREADS - 2);
        while st.helpers < wanted && !st.helpers_capped {
            let started = std::thread::Builder::new()
                .name(HELPER_THREAD.into())
                .spawn(move || self.help_loop());
            if let Err(e) = started {
                tracing::warn!(error = %e, helpers = st.helpers,
                    "cannot start a sync helper thread; syncing with those that run");
                st.helpers_capped = true;
                break;
            }
            st.helpers += 1;
        }
        st.helpers.min(wanted)
    }

    /// Syncs one file of the running pass's [`Job`] not taken yet, if there is one (the
    /// lock released meanwhile); whether there was.
    fn take_one<'a>(&'a self, mut st: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        let Some(job) = st.job.as_mut().filter(|j| j.next < j.files.len()) else {
            return (st, false);
        };
        let file = job.files[job.next].clone();
        job.next += 1;
        job.busy += 1;
        drop(st);
        let r = (self.sync_file)(&file);
        let mut st = lock(&self.state);
        match st.job.as_mut() {
            Some(job) => {
                job.busy -= 1;
                if let Err(e) = r {
                    job.error.get_or_insert(e.to_string());
                }
                if job.busy == 0 && job.next == job.files.len() {
                    self.done.notify_all();
                }
            }
            // Cannot happen (a job stays until nobody holds a file of it); were it to, what
            // this sync found must not be lost.
            None => {
                st.failed.get_or_insert_with(|| {
                    "group commit: a pass ended while one of its files was being synced".into()
                });
                self.done.notify_all();
            }
        }
        (st, true)
    }

    /// The pass's own share of its [`Job`]: takes files until none is left, waits for the
    /// other threads' last ones, and returns the first failure.
    fn finish_job(&self) -> (MutexGuard<'_, State>, Option<String>) {
        let mut st = lock(&self.state);
        loop {
            let took;
            (st, took) = self.take_one(st);
            if took {
                continue;
            }
            match st.job.as_ref() {
                Some(j) if j.busy > 0 => {}
                Some(_) => {
                    let failed = st.job.take().and_then(|j| j.error);
                    return (st, failed);
                }
                // Cannot happen (only this call takes the job); were it to, nothing of this
                // pass is known durable.
                None => {
                    return (
                        st,
                        Some("the pass's files were lost before all were synced".into()),
                    )
                }
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A sync helper: takes files of every pass's [`Job`] while it has some, for the
    /// process's life.
    fn help_loop(&self) {
        let mut st = lock(&self.state);
        loop {
            let took;
            (st, took) = self.take_one(st);
            if !took {
                st = self.help.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    fn run(&'static self) {
        loop {
            let mut st = lock(&self.state);
            loop {
                if st.failed.is_some() {
                    return;
                }
                let took;
                (st, took) = self.take_one(st);
                if took {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A syncer of its own, syncing with `sync_file`: the process's shared one serves every
    /// other test in this binary, and a failed one refuses everything after.
    fn syncer(sync_file: fn(&File) -> std::io::Result<()>) -> &'static GroupCommit {
        Box::leak(Box::new(GroupCommit::with_sync(sync_file)))
            .start()
            .expect("syncer thread")
    }

    /// `n` files in `dir`, each written and counted once.
    fn written(g: &GroupCommit, dir: &std::path::Path, n: usize) -> Vec<Arc<File>> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("f{}-{i}", g.written()));
                let mut f = File::create(&path).expect("create");
                f.write_all(b"a record").expect("write");
                let f = Arc::new(f);
                g.wrote(&f);
                f
            })
            .collect()
    }

    /// Whether this thread is one of a syncer's own (the syncer thread or a helper), not a
    /// caller's running a pass.
    fn syncers_own() -> bool {
        matches!(
            std::thread::current().name(),
            Some(SYNCER_THREAD | HELPER_THREAD)
        )
    }

    #[test]
    fn a_pass_publishes_nothing_before_the_files_other_threads_sync_are_synced() {
        // While the gate is shut the syncer's threads hold their files; the caller's pass
        // syncs its own at once.
        static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        static HELD: AtomicUsize = AtomicUsize::new(0);
        fn gated(f: &File) -> std::io::Result<()> {
            if syncers_own() {
                let mut shut = GATE.0.lock().unwrap_or_else(|e| e.into_inner());
                if *shut {
                    HELD.fetch_add(1, Ordering::SeqCst);
                }
                while *shut {
                    shut = GATE.1.wait(shut).unwrap_or_else(|e| e.into_inner());
                }
            }
            f.sync_data()
        }
        let shut = |v: bool| {
            *GATE.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
            GATE.1.notify_all();
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(gated);
        // A first pass starts the helpers; the one measured finds them waiting, so it must
        // wake them.
        let _first = written(g, dir.path(), 40);
        assert_eq!(g.sync_now(), Some(Ok(40)));
        assert_eq!(lock(&g.state).helpers, MAX_SYNC_THREADS - 2);
        shut(true);
        let _files = written(g, dir.path(), 40);
        let pass = std::thread::spawn(move || g.sync_now());
        let t = Instant::now();
        while HELD.load(Ordering::SeqCst) < 2 && t.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        // Threads other than the caller's took files (the syncer thread, helpers).
        assert!(
            HELD.load(Ordering::SeqCst) >= 2,
            "no other thread took a file"
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            assert_eq!(
                g.durable(),
                40,
                "published while files were still being synced"
            );
            assert!(
                !pass.is_finished(),
                "the pass ended before its files were synced"
            );
            std::thread::yield_now();
        }
        shut(false);
        assert_eq!(pass.join().expect("pass"), Some(Ok(80)));
        assert_eq!((g.durable(), g.passes(), g.syncs()), (80, 2, 80));
        // The gate held the second pass for at least 200 ms.
        let stats = g.stats();
        assert!(stats.slow_passes >= 1, "{stats:?}");
        assert!(stats.slowest >= Duration::from_millis(200), "{stats:?}");
        assert!(
            stats.slowest_fdatasync >= Duration::from_millis(200),
            "{stats:?}"
        );
        assert!(lock(&g.state).job.is_none());
    }

    #[test]
    fn a_failed_fdatasync_on_another_thread_fails_the_pass() {
        // The caller's syncs succeed slowly, so the others take files; every one of theirs
        // fails.
        fn others_fail(f: &File) -> std::io::Result<()> {
            if syncers_own() {
                return Err(std::io::Error::other("injected on a syncer thread"));
            }
            // At most 5 ms (a park may end early): long enough for the others to take files.
            std::thread::park_timeout(Duration::from_millis(5));
            f.sync_data()
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(others_fail);
        let _files = written(g, dir.path(), 40);
        let err = match g.sync_now() {
            Some(Err(e)) => e,
            other => panic!("the pass did not fail: {other:?}"),
        };
        assert!(err.contains("injected on a syncer thread"), "{err}");
        assert_eq!(g.durable(), 0, "nothing of a failed pass counts as durable");
        assert_eq!(g.wait_durable(1), Err(err));
    }

    #[test]
    fn a_lone_file_and_a_pair_of_a_callers_pass_start_no_helper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(File::sync_data);
        let _one = written(g, dir.path(), 1);
        assert_eq!(g.sync_now(), Some(Ok(1)));
        // Two: the second is the syncer thread's, idle while the caller runs the pass.
        let _two = written(g, dir.path(), 2);
        assert_eq!(g.sync_now(), Some(Ok(3)));
        assert_eq!(lock(&g.state).helpers, 0);
        assert_eq!((g.passes(), g.syncs()), (2, 3));
        // A pair in a pass the syncer thread runs (under load, or with a replication hook):
        // one helper syncs the second.
        let _pair = written(g, dir.path(), 2);
        assert_eq!(g.wait_durable(5), Ok(()));
        assert_eq!(lock(&g.state).helpers, 1);
    }

    #[test]
    fn one_real_fdatasync_failure_among_many_fails_the_pass_and_every_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(File::sync_data);
        let _before = written(g, dir.path(), 20);
        // A socket cannot be synced (EINVAL): a real failing fdatasync, in the middle.
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let sock = Arc::new(File::from(std::os::fd::OwnedFd::from(sock)));
        g.wrote(&sock);
        let _after = written(g, dir.path(), 20);
        let err = match g.sync_now() {
            Some(Err(e)) => e,
            other => panic!("the pass did not fail: {other:?}"),
        };
        assert!(
            err.starts_with("fdatasync of a session store failed"),
            "{err}"
        );
        assert_eq!(g.failure(), Some(err.clone()));
        assert_eq!(g.durable(), 0, "nothing of a failed pass counts as durable");
        assert_eq!(g.wait_durable(1), Err(err));
        assert!(lock(&g.state).job.is_none());
    }

    /// A hook whose `finish` returns at once, saying whether it could wait.
    #[derive(Debug)]
    struct Hook(bool);

    impl BatchHook for Hook {
        fn start(&self, _pos: u64, _files: &[Arc<File>]) {}
        fn finish(&self, _pos: u64) -> Result<(), String> {
            Ok(())
        }
        fn waits(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn only_a_hook_that_may_wait_sends_the_callers_pass_to_the_syncer_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(File::sync_data);
        // async replication: the caller runs its pass, as with no hook.
        g.set_hook(Some(Arc::new(Hook(false))));
        let _one = written(g, dir.path(), 1);
        assert_eq!(g.sync_now(), Some(Ok(1)));
        // sync replication: the syncer thread runs it, and the caller waits as usual.
        g.set_hook(Some(Arc::new(Hook(true))));
        let _two = written(g, dir.path(), 1);
        assert_eq!(g.sync_now(), None);
        assert_eq!(g.wait_durable(2), Ok(()));
    }

    #[test]
    fn slow_passes_are_counted_and_warned_about_at_most_once_per_interval() {
        let mut st = State::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(st.count_pass(1, ms(1), ms(1), t0), None);
        assert_eq!(
            st.count_pass(2, ms(1), SLOW_PASS, t0),
            None,
            "at the limit is not slow"
        );
        assert_eq!(st.count_pass(1, ms(30), ms(31), t0), Some(1));
        assert_eq!(st.count_pass(1, ms(2), ms(25), t0 + ms(1_000)), None);
        assert_eq!(st.count_pass(1, ms(2), ms(25), t0 + ms(2_000)), None);
        assert_eq!(st.count_pass(1, ms(1), ms(1), t0 + SLOW_WARN_EVERY), None);
        // The next slow one after the interval is logged with the two held back.
        assert_eq!(
            st.count_pass(1, ms(40), ms(40), t0 + SLOW_WARN_EVERY),
            Some(3)
        );
        assert_eq!(
            st.stats,
            PassStats {
                passes: 7,
                syncs: 8,
                slow_passes: 4,
                slowest: ms(40),
                slowest_fdatasync: ms(40),
            }
        );
    }

    /// A replication hook whose acknowledgement takes 30 ms.
    #[derive(Debug)]
    struct SlowStandby;

    impl BatchHook for SlowStandby {
        fn start(&self, _pos: u64, _files: &[Arc<File>]) {}
        fn finish(&self, _pos: u64) -> Result<(), String> {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(30) {
                std::thread::park_timeout(Duration::from_millis(30));
            }
            Ok(())
        }
    }

    #[test]
    fn a_pass_held_by_a_standby_is_slow_while_its_fdatasync_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = syncer(File::sync_data);
        g.set_hook(Some(Arc::new(SlowStandby)));
        let _one = written(g, dir.path(), 1);
        assert_eq!(g.wait_durable(1), Ok(()));
        let s = g.stats();
        assert_eq!((s.passes, s.syncs, s.slow_passes), (1, 1, 1), "{s:?}");
        assert!(s.slowest >= Duration::from_millis(30), "{s:?}");
        assert!(
            s.slowest - s.slowest_fdatasync >= Duration::from_millis(30),
            "the standby's wait counted as the disk's: {s:?}"
        );
    }
}
