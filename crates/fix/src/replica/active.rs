//! The sending side, on the active: one thread per peer streams the segments of the local
//! store directory, and the group-commit syncer asks it to cover each batch
//! ([`BatchHook`]).
//!
//! Nothing is queued in memory: what a standby lacks is read from the segment files, from
//! the offset it acknowledged. A slow standby therefore costs no memory; a standby that
//! does not acknowledge a batch within `sync_timeout` (sync), or answer at all within the
//! longer of `sync_timeout` and `timeout` (either mode: one read timeout serves both), is
//! disconnected, and catches up from the files when it reconnects. With `sync`, a batch
//! waits for every standby that may count itself in sync (see `finish`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::auth::{self, Side};
use super::liveness::{self, Liveness};
use super::proto::{peer_text, read_frame, segment_epoch, Deadline, Frame, CHUNK, VERSION};
use super::{list_segments, Degraded, Mode, PeerHealth, ReplicationConfig, ReplicationHealth};
use crate::store::{note_newer_epoch, valid_len, BatchHook, GroupCommit};

/// The active's replication: started at activation, after the stores are open.
#[derive(Debug, Clone)]
pub struct Sender {
    sh: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: ReplicationConfig,
    store_dir: PathBuf,
    epoch: u64,
    group: &'static GroupCommit,
    /// Holds count only the time this process ran (see [`liveness`]).
    live: &'static Liveness,
    st: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug)]
struct State {
    /// Highest group-commit position a pass asked the peers to cover.
    requested: u64,
    peers: Vec<Peer>,
    /// A peer answered with this newer epoch: this active is stale.
    fenced: Option<u64>,
    degraded: bool,
    last_degraded: Option<Degraded>,
    stop: bool,
    /// For each file a pass reported written (by device and inode), the highest position
    /// it covered: a batch ships only the segments written since the link's last one.
    written_at: HashMap<FileKey, u64>,
    /// [`WRITTEN_AT_KEPT`] unless a test set a smaller one.
    written_at_kept: usize,
}

/// A file's identity across handles: device and inode.
type FileKey = (u64, u64);

/// Stands for a written file whose identity could not be read.
const UNKNOWN: FileKey = (u64::MAX, u64::MAX);

/// Entries of [`State::written_at`] above which those every peer has acknowledged are
/// dropped (each a file of this epoch, written since).
const WRITTEN_AT_KEPT: usize = 4096;

fn file_key(f: &File) -> std::io::Result<FileKey> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    connected: bool,
    in_sync: bool,
    acked: u64,
    /// When its last acknowledgement arrived (kept across reconnections): it counts itself
    /// in sync for `timeout` after sending it, so this side waits `sync_timeout` after it
    /// before going on without it.
    last_heard: Option<Instant>,
    /// [`Liveness::frozen_until`] when `last_heard` was set.
    frozen_at_heard: Duration,
    /// The syncer gave up waiting for it: its thread disconnects it.
    drop_now: bool,
    /// While a link to it is up (catch-up included), the position its link shipped every
    /// file up to: [`State::written_at`] keeps the entries above it, which that link's next
    /// batch reads. A peer in its catch-up is not `connected` yet, and pruning by the
    /// connected ones alone dropped files written after the catch-up read them (review 10).
    floor: Option<u64>,
    error: Option<String>,
    /// The current link finished its catch-up.
    caught_up: bool,
    /// Links in a row that got past the handshake and failed before the end of their
    /// catch-up: each one read this active's whole store (see [`retry_after`]).
    failed_catch_ups: u32,
}

/// Longest pause between two catch-ups that keep failing.
pub const MAX_CATCH_UP_BACKOFF: Duration = Duration::from_secs(30);

/// The pause before connecting to a peer again: `base` (`reconnect_interval`), doubled for
/// each catch-up in a row that failed, up to [`MAX_CATCH_UP_BACKOFF`]. A failed connection
/// or handshake costs nothing and is retried at `base`, so a standby that comes back is in
/// sync within a pause; a catch-up reads and checks every record of the active's store (and
/// the standby scans its whole copy), so one that fails for good (a full disk on the
/// standby, too many files) must not run ten times a second for weeks (review 22, R4).
pub fn retry_after(base: Duration, failed_catch_ups: u32) -> Duration {
    let factor = 1u32 << failed_catch_ups.min(16);
    base.saturating_mul(factor)
        .min(MAX_CATCH_UP_BACKOFF.max(base))
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sender {
    /// Starts streaming `store_dir` (open with `epoch`) to `cfg.peers`, and makes `group`
    /// wait for the peers as `cfg.mode` says.
    pub fn start(
        cfg: ReplicationConfig,
        store_dir: &Path,
        epoch: u64,
        group: &'static GroupCommit,
    ) -> std::io::Result<Sender> {
        let peers = cfg
            .peers
            .iter()
            .map(|&addr| Peer {
                addr,
                connected: false,
                in_sync: false,
                acked: 0,
                last_heard: None,
                frozen_at_heard: Duration::ZERO,
                drop_now: false,
                floor: None,
                error: None,
                caught_up: false,
                failed_catch_ups: 0,
            })
            .collect();
        let sh = Arc::new(Shared {
            cfg,
            store_dir: store_dir.to_owned(),
            epoch,
            group,
            live: liveness::process()?,
            st: Mutex::new(State {
                requested: 0,
                peers,
                fenced: None,
                degraded: false,
                last_degraded: None,
                stop: false,
                written_at: HashMap::new(),
                written_at_kept: WRITTEN_AT_KEPT,
            }),
            cv: Condvar::new(),
        });
        for i in 0..sh.cfg.peers.len() {
            let s = sh.clone();
            std::thread::Builder::new()
                .name(format!("fix-repl-tx{i}"))
                .spawn(move || peer_loop(&s, i))?;
        }
        group.set_hook(Some(sh.clone() as Arc<dyn BatchHook>));
        Ok(Sender { sh })
    }

    /// The active's view: each peer, and whether sync mode has degraded.
    pub fn health(&self) -> ReplicationHealth {
        let written = self.sh.group.written();
        let st = lock(&self.sh.st);
        ReplicationHealth {
            mode: self.sh.cfg.mode.as_str(),
            ready: st.fenced.is_none(),
            reason: st
                .fenced
                .map(|n| format!("replication: a standby has seen newer epoch {n}")),
            lag_records: None,
            lag_ms: None,
            seen_epoch: st.fenced.unwrap_or(self.sh.epoch).max(self.sh.epoch),
            last_active_epoch: self.sh.epoch,
            degraded: st.degraded,
            last_degraded: st.last_degraded,
            frozen_ms: Some(
                self.sh
                    .live
                    .frozen_until(Instant::now())
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
            peers: st
                .peers
                .iter()
                .map(|p| PeerHealth {
                    addr: p.addr.to_string(),
                    connected: p.connected,
                    in_sync: p.in_sync,
                    acked: p.acked,
                    lag_records: written.saturating_sub(p.acked),
                    error: p.error.clone(),
                })
                .collect(),
            error: None,
        }
    }

    /// With `sync`: whether a batch would now wait for an acknowledgement that cannot come
    /// soon: a standby heard from within `sync_timeout` is not connected, and a batch waits
    /// for each such standby until that much after it last heard from it (whatever the others
    /// acknowledge). A standby stopped just before a planned stop of the active is the usual
    /// case: the active's Logouts would wait that long, and its agent may kill it first.
    pub fn waits_for_a_disconnected_standby(&self) -> bool {
        if self.sh.cfg.mode != Mode::Sync {
            return false;
        }
        let now = Instant::now();
        let st = lock(&self.sh.st);
        st.fenced.is_none()
            && st.peers.iter().any(|p| {
                !p.connected
                    && self
                        .sh
                        .hold_left(p, now)
                        .is_some_and(|left| !left.is_zero())
            })
    }

    /// Sets how many entries of the record of written files are kept before those every
    /// linked peer has shipped are pruned (default 4096; tests use a small one).
    pub fn set_written_at_kept(&self, n: usize) {
        lock(&self.sh.st).written_at_kept = n;
    }

    /// Stops the peer threads and detaches from the syncer.
    pub fn stop(&self) {
        self.sh.group.set_hook(None);
        let mut st = lock(&self.sh.st);
        st.stop = true;
        self.sh.cv.notify_all();
    }
}

impl Shared {
    /// How much longer a batch that `p` has not acknowledged waits for it at `now`:
    /// `sync_timeout` of this process's running time after it was last heard from. Time the
    /// process did not run does not count: after a freeze, each link gets to talk to its peer
    /// (and learn of a newer epoch) before the peer is given up (review 22, R7).
    fn hold_left(&self, p: &Peer, now: Instant) -> Option<Duration> {
        let heard = p.last_heard?;
        let silent = self.live.running_since(heard, p.frozen_at_heard, now);
        Some(self.cfg.sync_timeout.saturating_sub(silent))
    }

    /// A fall-back at `now` of a batch that began to wait at `entered`: how long that batch
    /// was held, and how long the standby heard from last (whose hold was the last to end)
    /// had been silent, with the time frozen in that silence. Nobody ever heard: no silence.
    fn degraded_now(&self, peers: &[Peer], entered: Instant, now: Instant) -> Degraded {
        let last = peers
            .iter()
            .filter_map(|p| Some((p.last_heard?, p.frozen_at_heard)))
            .max_by_key(|(heard, _)| *heard);
        let (silent, frozen) = match last {
            Some((heard, frozen_then)) => (
                now.saturating_duration_since(heard),
                self.live.frozen_until(now).saturating_sub(frozen_then),
            ),
            None => (Duration::ZERO, Duration::ZERO),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Degraded {
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, ms),
            held_ms: ms(now.saturating_duration_since(entered)),
            silent_ms: ms(silent),
            frozen_ms: ms(frozen),
        }
    }

    /// `p` was heard from at `now`.
    fn heard(&self, p: &mut Peer, now: Instant) {
        p.last_heard = Some(now);
        p.frozen_at_heard = self.live.frozen_until(now);
    }

    fn fence(&self, newest: u64) {
        note_newer_epoch(newest);
        let mut st = lock(&self.st);
        if st.fenced.is_none_or(|f| f < newest) {
            tracing::error!(
                epoch = self.epoch,
                newest,
                "replication: a standby has seen a newer epoch; this gateway is stale and sends nothing more"
            );
            st.fenced = Some(newest);
        }
        self.cv.notify_all();
    }
}

impl BatchHook for Shared {
    fn start(&self, pos: u64, files: &[Arc<File>]) {
        // A file that cannot be identified counts as [`UNKNOWN`]: every link then reads
        // every segment for this batch.
        let keys: Vec<FileKey> = files
            .iter()
            .map(|f| file_key(f).unwrap_or(UNKNOWN))
            .collect();
        let mut st = lock(&self.st);
        for k in keys {
            let at = st.written_at.entry(k).or_insert(0);
            *at = (*at).max(pos);
        }
        if st.written_at.len() > st.written_at_kept {
            // A peer without a link catches up from every file when it reconnects.
            let shipped_by_all = st
                .peers
                .iter()
                .filter_map(|p| p.floor)
                .min()
                .unwrap_or(u64::MAX);
            st.written_at.retain(|_, at| *at > shipped_by_all);
        }
        if pos > st.requested {
            st.requested = pos;
            self.cv.notify_all();
        }
    }

    /// Only `sync` waits for the standbys; `async`'s `finish` returns at once, so an event
    /// loop may run its passes itself, as without replication (no hand-off to the syncer
    /// thread and back for a lone order).
    fn waits(&self) -> bool {
        self.cfg.mode == Mode::Sync
    }

    fn finish(&self, pos: u64) -> Result<(), String> {
        let mut st = lock(&self.st);
        // When this batch began to wait: what a fall-back held it for is not the standby's
        // silence, which after a quiet spell began long before (review 29, L3).
        let entered = Instant::now();
        loop {
            if let Some(n) = st.fenced {
                return Err(format!(
                    "replication: epoch {} is stale, a standby has seen epoch {n}",
                    self.epoch
                ));
            }
            if self.cfg.mode != Mode::Sync {
                return Ok(());
            }
            // Every standby that may count itself in sync must hold the batch before anything
            // of it leaves: wait for each until it acknowledges, or until `sync_timeout` after
            // it was last heard from (it may count itself in sync until then; after, it
            // cannot); then drop it. Waiting for one of several was not enough: the others
            // still said ready without the batch (review 10).
            let now = Instant::now();
            // This thread proves the process runs while it waits, so a ticker thread that
            // stopped running cannot stretch the hold for ever; it also says when the process
            // did not run (the ticker never logs: its log could block it).
            self.live.tick(now);
            if let Some(gap) = self.live.unreported() {
                tracing::warn!(gap = ?gap,
                    "this process did not run for {gap:?} (stopped, its VM paused, or starved \
                     of CPU); replication holds do not count that time");
            }
            let mut acked = false;
            let mut hold: Option<Instant> = None;
            let mut dropped = false;
            for p in st.peers.iter_mut() {
                if p.in_sync && p.acked >= pos {
                    acked = true;
                    continue;
                }
                match self.hold_left(p, now) {
                    Some(left) if !left.is_zero() => {
                        let until = now + left;
                        hold = Some(hold.map_or(until, |h| h.min(until)));
                    }
                    _ if p.in_sync => {
                        tracing::error!(
                            peer = %p.addr,
                            timeout = ?self.cfg.sync_timeout,
                            "replication: standby did not acknowledge in time; dropped until it catches up"
                        );
                        p.in_sync = false;
                        p.drop_now = true;
                        dropped = true;
                    }
                    _ => {}
                }
            }
            if dropped {
                self.cv.notify_all();
            }
            if let Some(until) = hold {
                // In slices shorter than a freeze gap: see the tick above.
                let slice = until
                    .saturating_duration_since(now)
                    .min(liveness::FREEZE_GAP / 2);
                st = self
                    .cv
                    .wait_timeout(st, slice)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            if acked {
                if st.degraded {
                    tracing::info!("replication: a standby acknowledges again; synchronous again");
                    st.degraded = false;
                }
                return Ok(());
            }
            if !st.degraded {
                let d = self.degraded_now(&st.peers, entered, now);
                tracing::error!(
                    held_ms = d.held_ms,
                    silent_ms = d.silent_ms,
                    frozen_ms = d.frozen_ms,
                    "replication: no standby in sync; degraded to asynchronous until one catches up"
                );
                st.degraded = true;
                st.last_degraded = Some(d);
            }
            self.cv.notify_all();
            return Ok(());
        }
    }
}

/// Why an answer was given up: not whole within `max(sync_timeout, timeout)`.
const LATE: &str =
    "no whole answer within the longer of replication.sync_timeout and replication.timeout";

/// Why an answer during the catch-up was given up.
const CATCH_UP_LATE: &str =
    "no whole answer within the catch-up's wait (30 x replication.timeout, at least 60 s)";

fn peer_loop(sh: &Shared, i: usize) {
    loop {
        {
            let st = lock(&sh.st);
            if st.stop || st.fenced.is_some() {
                return;
            }
        }
        lock(&sh.st).peers[i].caught_up = false;
        let err = match session(sh, i) {
            Ok(()) => return,
            Err(e) => e,
        };
        let mut st = lock(&sh.st);
        if st.stop {
            return;
        }
        let p = &mut st.peers[i];
        // Past the handshake (`floor` is set from the Welcome on) and short of the end of
        // the catch-up: a whole store read for nothing.
        if p.caught_up {
            p.failed_catch_ups = 0;
        } else if p.floor.is_some() {
            p.failed_catch_ups = p.failed_catch_ups.saturating_add(1);
        }
        let pause = retry_after(sh.cfg.reconnect_interval, p.failed_catch_ups);
        if p.error.as_deref() != Some(err.as_str()) {
            tracing::warn!(peer = %p.addr, error = %err, retry_in = ?pause,
                "replication: standby not streaming");
        }
        p.connected = false;
        p.in_sync = false;
        p.drop_now = false;
        p.floor = None;
        p.error = Some(err);
        sh.cv.notify_all();
        // The pause before connecting again; a stop ends it early, and so does a freeze of
        // this process: woken, a link must reach its standby (and learn of a newer epoch
        // there) within the hold, which counts running time, not after a backoff that ran on
        // in wall time (review 23).
        let start = Instant::now();
        let until = start + pause;
        let frozen = sh.live.frozen_until(start);
        while !st.stop {
            let now = Instant::now();
            // A freeze, not a late tick: under load ticks run late, and that must not
            // undo the backoff.
            let froze = sh.live.frozen_until(now).saturating_sub(frozen) >= liveness::REPORTED_GAP;
            if now >= until || froze {
                break;
            }
            st = sh
                .cv
                .wait_timeout(st, (until - now).min(liveness::FREEZE_GAP))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One connection to peer `i`: handshake, catch-up, then one round trip per batch asked
/// for, heartbeats in between. Returns `Ok` when stopped.
fn session(sh: &Shared, i: usize) -> Result<(), String> {
    let addr = sh.cfg.peers[i];
    let mut s = TcpStream::connect_timeout(&addr, sh.cfg.connect_timeout)
        .map_err(|e| format!("connect: {e}"))?;
    // A standby may take up to `sync_timeout` to acknowledge before it is given up.
    // Every frame awaited is bounded as a whole, not per read: a peer sending one byte per
    // read timeout held a link in one frame for minutes (review 22, R12).
    let wait = sh.cfg.sync_timeout.max(sh.cfg.timeout);
    let t = Some(wait);
    s.set_nodelay(true)
        .and_then(|()| s.set_write_timeout(t))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let ours = auth::nonce().map_err(|e| format!("hello: {e}"))?;
    Frame::Hello {
        version: VERSION,
        epoch: sh.epoch,
        nonce: ours.to_vec(),
    }
    .write_to(&mut s, &mut out)
    .map_err(|e| format!("hello: {e}"))?;
    // Nothing the peer says counts, its epochs least of all, until it has proved the token.
    let answer = read_frame(
        &mut Deadline::new(&mut s, Instant::now() + wait, LATE),
        &mut buf,
    );
    let theirs = match answer.map_err(|e| format!("handshake: {e}"))? {
        Frame::Challenge { nonce, mac }
            if auth::verify(&sh.cfg.token, Side::Standby, sh.epoch, &ours, &nonce, &mac) =>
        {
            nonce
        }
        Frame::Challenge { .. } => {
            return Err(
                "the peer did not prove it holds the replication token (another \
                        group's gateway, a different token_file, or not a gateway): nothing \
                        sent to it"
                    .into(),
            )
        }
        Frame::Refuse { reason, .. } => {
            return Err(format!(
                "refused before proving the token (its epoch not believed): {}",
                peer_text(&reason)
            ))
        }
        other => {
            return Err(format!(
                "unexpected answer to the hello: {}",
                other.describe()
            ))
        }
    };
    Frame::Proof {
        mac: auth::prove(&sh.cfg.token, Side::Active, sh.epoch, &ours, &theirs),
    }
    .write_to(&mut s, &mut out)
    .map_err(|e| format!("proof: {e}"))?;
    // The standby scans its whole copy before it answers, and applies the whole catch-up
    // before it acknowledges it; and while it writes gigabytes its reads of the stream may
    // wait on its disk's write-back: the catch-up's writes get as long (R12).
    let catch_up = sh.cfg.catch_up_wait();
    s.set_write_timeout(Some(catch_up))
        .map_err(|e| e.to_string())?;
    let welcome = read_frame(
        &mut Deadline::new(&mut s, Instant::now() + catch_up, CATCH_UP_LATE),
        &mut buf,
    );
    let files = match welcome.map_err(|e| format!("handshake: {e}"))? {
        Frame::Welcome { seen_epoch, files } if seen_epoch <= sh.epoch => files,
        Frame::Welcome { seen_epoch, .. } => {
            sh.fence(seen_epoch);
            return Err(format!("the standby has seen epoch {seen_epoch}"));
        }
        Frame::Refuse {
            newest_epoch,
            reason,
        } => {
            if newest_epoch > sh.epoch {
                sh.fence(newest_epoch);
            }
            return Err(format!("refused: {}", peer_text(&reason)));
        }
        other => {
            return Err(format!(
                "unexpected answer to the proof: {}",
                other.describe()
            ))
        }
    };
    let mut link = Link {
        sh,
        s,
        out,
        buf,
        sent: files.into_iter().collect(),
        wait: (catch_up, CATCH_UP_LATE),
        handles: HashMap::new(),
        keys: HashMap::new(),
        shipped: 0,
    };
    // Nothing is pruned until p0 is known, then nothing written after it: the catch-up reads
    // the files as they are, and the batches after it read those written since p0.
    lock(&sh.st).peers[i].floor = Some(0);
    // Every record up to p0 was in the files when they are read below.
    let p0 = sh.group.written();
    lock(&sh.st).peers[i].floor = Some(p0);
    link.ship(true, p0)?;
    // Batches read only this epoch's segments: the others' handles would hold a descriptor
    // per segment and peer for as long as the segment lives.
    link.handles
        .retain(|rel, _| segment_epoch(rel).ok() == Some(sh.epoch));
    link.keys.retain(|rel, _| link.handles.contains_key(rel));
    link.round_trip(Frame::Sync { pos: p0 })?;
    link.wait = (wait, LATE);
    link.s.set_write_timeout(t).map_err(|e| e.to_string())?;
    {
        let mut st = lock(&sh.st);
        let p = &mut st.peers[i];
        p.connected = true;
        p.in_sync = true;
        p.acked = p0;
        sh.heard(p, Instant::now());
        p.error = None;
        p.caught_up = true;
        p.failed_catch_ups = 0;
        tracing::info!(peer = %p.addr, position = p0, "replication: standby caught up, in sync");
        // The next batch waits for it: synchronous again now, not at the next acknowledgement
        // (an idle active kept saying "degraded" with its standby back).
        if st.degraded && sh.cfg.mode == Mode::Sync {
            tracing::info!("replication: a standby is in sync again; synchronous again");
            st.degraded = false;
        }
        sh.cv.notify_all();
    }
    loop {
        let target = {
            let mut st = lock(&sh.st);
            let until = Instant::now() + sh.cfg.heartbeat;
            loop {
                if st.stop {
                    return Ok(());
                }
                if st.fenced.is_some() {
                    return Err("fenced".into());
                }
                if st.peers[i].drop_now {
                    return Err(format!(
                        "no acknowledgement within sync_timeout ({:?}); dropped until it catches up",
                        sh.cfg.sync_timeout
                    ));
                }
                if st.requested > st.peers[i].acked {
                    break Some(st.requested);
                }
                let now = Instant::now();
                if now >= until {
                    break None;
                }
                st = sh
                    .cv
                    .wait_timeout(st, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        match target {
            Some(pos) => {
                link.ship(false, pos)?;
                link.round_trip(Frame::Sync { pos })?;
                let mut st = lock(&sh.st);
                // An acknowledgement that came after the peer was given up on is not taken,
                // and renews nothing: it would make every batch wait another `sync_timeout`
                // for a peer this connection is about to leave (review 22, R3).
                if st.peers[i].drop_now {
                    continue;
                }
                sh.heard(&mut st.peers[i], Instant::now());
                st.peers[i].acked = pos;
                st.peers[i].floor = Some(pos);
                sh.cv.notify_all();
            }
            None => {
                link.round_trip(Frame::Heartbeat {
                    written: sh.group.written(),
                })?;
                let mut st = lock(&sh.st);
                if !st.peers[i].drop_now {
                    sh.heard(&mut st.peers[i], Instant::now());
                }
            }
        }
    }
}

/// A connection past its handshake.
struct Link<'a> {
    sh: &'a Shared,
    s: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// How much of each segment the standby holds.
    sent: HashMap<String, u64>,
    /// Longest wait for a whole answer, and why it was given up when it runs out: the
    /// catch-up's, then `max(sync_timeout, timeout)`.
    wait: (Duration, &'static str),
    handles: HashMap<String, File>,
    /// The identity of each handle's file, where it could be read.
    keys: HashMap<String, FileKey>,
    /// The group-commit position this link has shipped every segment up to.
    shipped: u64,
}

impl Link<'_> {
    /// Sends every record the standby lacks, of every record written up to group-commit
    /// position `upto`. After the catch-up only segments of this epoch can grow: only they
    /// are looked at, and of those only the new ones and those a pass since this link's last
    /// batch wrote (a segment of an idle session costs no read).
    fn ship(&mut self, catch_up: bool, upto: u64) -> Result<(), String> {
        let segs = list_segments(&self.sh.store_dir).map_err(|e| format!("listing: {e}"))?;
        // A new generation deletes the segments before it: forget them, so neither map
        // grows with every rotation.
        self.handles
            .retain(|rel, _| segs.iter().any(|(r, _)| r == rel));
        self.keys.retain(|rel, _| self.handles.contains_key(rel));
        let written: Option<HashSet<FileKey>> = if catch_up {
            None
        } else {
            let st = lock(&self.sh.st);
            let since: HashSet<FileKey> = st
                .written_at
                .iter()
                .filter(|(_, at)| **at > self.shipped)
                .map(|(k, _)| *k)
                .collect();
            (!since.contains(&UNKNOWN)).then_some(since)
        };
        if !catch_up {
            self.sent
                .retain(|rel, _| segs.iter().any(|(r, _)| r == rel));
        }
        for (rel, path) in segs {
            if !catch_up && segment_epoch(&rel).ok() != Some(self.sh.epoch) {
                continue;
            }
            let unwritten = |k: &FileKey| written.as_ref().is_some_and(|w| !w.contains(k));
            if self.keys.get(&rel).is_some_and(unwritten) {
                continue;
            }
            if !self.handles.contains_key(&rel) {
                let f = match File::open(&path) {
                    Ok(f) => f,
                    // Deleted since the listing: superseded by a newer generation.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(format!("open {}: {e}", path.display())),
                };
                // Without its identity the file is read at every batch.
                if let Ok(k) = file_key(&f) {
                    self.keys.insert(rel.clone(), k);
                }
                self.handles.insert(rel.clone(), f);
            }
            let Some(f) = self.handles.get(&rel) else {
                continue;
            };
            let read_err = |e: std::io::Error| format!("read {}: {e}", path.display());
            let mut from = self.sent.get(&rel).copied().unwrap_or(0);
            // Whole records only: never the zeros a writer keeps ahead of them, which the
            // next records overwrite.
            let len = if catch_up {
                let size = f
                    .metadata()
                    .map_err(|e| format!("stat {}: {e}", path.display()))?
                    .len();
                // Compared with our whole records, not the file's size: that includes the
                // zeros a writer keeps ahead of them (see the store's "Preallocation").
                let whole = valid_len(f, 0, size).map_err(read_err)?;
                // A copy longer than our records holds what a crash lost here: cut to ours.
                // A shorter one must end where one of our records does (walking from there
                // reaches ours); one that ends inside a record is not a prefix of this file
                // (a copy from elsewhere, or damaged) and is sent again whole. Appending to
                // it would write nothing (no record starts there) while every batch was
                // acknowledged (review 11, R6).
                let cut = if from > whole {
                    Some(whole)
                } else if from < whole && valid_len(f, from, size).map_err(read_err)? < whole {
                    tracing::warn!(
                        segment = %rel,
                        held = from,
                        "replication: the standby's copy ends inside a record; sending it again whole"
                    );
                    Some(0)
                } else {
                    None
                };
                if let Some(len) = cut {
                    self.halted()?;
                    Frame::Truncate {
                        path: rel.clone(),
                        len,
                    }
                    .write_to(&mut self.s, &mut self.out)
                    .map_err(|e| format!("sending: {e}"))?;
                    from = len;
                }
                // `from` is now a record boundary at most `whole`: the walk above reached
                // `whole` from it, so it is not walked again (records written since go with
                // the next batch).
                whole
            } else {
                // A batch: one read per segment of this epoch, as the stat it replaces (a
                // file of an idle session reads zeros at `from` and is done).
                valid_len(f, from, u64::MAX).map_err(read_err)?
            };
            while from < len {
                let n = (len - from).min(CHUNK as u64) as usize;
                let mut bytes = vec![0u8; n];
                f.read_exact_at(&mut bytes, from)
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                self.halted()?;
                Frame::Data {
                    path: rel.clone(),
                    offset: from,
                    bytes,
                }
                .write_to(&mut self.s, &mut self.out)
                .map_err(|e| format!("sending: {e}"))?;
                from += n as u64;
            }
            self.sent.insert(rel, from);
        }
        self.shipped = self.shipped.max(upto);
        Ok(())
    }

    /// Refuses to send more once this active is stale or stopping: checked before every
    /// frame of a transfer, so a catch-up of gigabytes to one standby stops as soon as another
    /// told of a newer epoch (review 22, R11), not when it is done.
    fn halted(&self) -> Result<(), String> {
        let st = lock(&self.sh.st);
        match st.fenced {
            Some(n) => Err(format!(
                "fenced: a standby has seen epoch {n}; nothing more is sent"
            )),
            // Not logged: `peer_loop` ends quietly when stopped.
            None if st.stop => Err("stopped".into()),
            None => Ok(()),
        }
    }

    /// Sends `Sync` or `Heartbeat` and waits for the `Ack` (of that position for a sync).
    fn round_trip(&mut self, f: Frame) -> Result<(), String> {
        let want = match f {
            Frame::Sync { pos } => Some(pos),
            _ => None,
        };
        f.write_to(&mut self.s, &mut self.out)
            .map_err(|e| format!("sending: {e}"))?;
        let (wait, late) = self.wait;
        let ack = read_frame(
            &mut Deadline::new(&mut self.s, Instant::now() + wait, late),
            &mut self.buf,
        );
        match ack.map_err(|e| format!("awaiting ack: {e}"))? {
            Frame::Ack { pos } if want.is_none_or(|w| w == pos) => Ok(()),
            Frame::Refuse {
                newest_epoch,
                reason,
            } => {
                if newest_epoch > self.sh.epoch {
                    self.sh.fence(newest_epoch);
                }
                Err(format!("refused: {}", peer_text(&reason)))
            }
            other => Err(format!("unexpected answer: {}", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn catch_ups_that_keep_failing_back_off_to_half_a_minute() {
        let base = Duration::from_millis(100);
        let pauses: Vec<u64> = (0..12)
            .map(|n| retry_after(base, n).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
    }

    proptest! {
        /// Never shorter than `reconnect_interval`, never longer than the cap (or the
        /// interval itself when it is longer), and never shorter after one more failure.
        #[test]
        fn the_pause_is_bounded_and_grows(base_ms in 0u64..100_000, n in 0u32..u32::MAX) {
            let base = Duration::from_millis(base_ms);
            let p = retry_after(base, n);
            prop_assert!(p >= base);
            prop_assert!(p <= MAX_CATCH_UP_BACKOFF.max(base));
            prop_assert!(retry_after(base, n.saturating_add(1)) >= p);
        }
    }
}
