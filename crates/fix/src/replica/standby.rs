//! The receiving side: a listener in every role. While standby it mirrors the active's
//! segments into the local store directory; once activated it refuses every older active.
//!
//! Blocking threads, not tasks: the work is file writes and `fdatasync`, and a standby has
//! one sender at a time. At most [`MAX_CONNS`] connections are served at once (a newer
//! sender supersedes the current one; extra connections are closed at once).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use thiserror::Error;

use super::auth::{self, Side, NONCE_LEN};
use super::proto::{
    read_frame, read_frame_max, segment_epoch, Deadline, Frame, MAX_FILES, MAX_HELLO, MAX_PROOF,
    VERSION,
};
use super::{list_segments, ReplicationConfig, ReplicationHealth};
use crate::store::{note_newer_epoch, remove_unclaimed_segments, valid_len};

/// Connections served at once.
pub const MAX_CONNS: usize = 4;
/// The newest epoch seen on the stream, and the epoch this store was last active with (0:
/// never), in the store directory: `[seen u64 LE][active u64 LE][crc32 u32 of both]` (the
/// 12-byte `[seen][crc32]` of before 3 December reads as never active).
pub const EPOCH_FILE: &str = "replication.epoch";

/// Why activation is refused.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The stream has carried a newer epoch than the one granted: this grant is stale.
    #[error("epoch {epoch} is stale: the replication stream carried epoch {seen}")]
    Stale {
        /// The granted epoch.
        epoch: u64,
        /// The newest seen.
        seen: u64,
    },
    /// Making the copy durable failed earlier (see the health's reason): the copy may lack
    /// records the active counts as held here.
    #[error("this standby's copy is not trusted: {reason}")]
    DiskFailed {
        /// What failed.
        reason: String,
    },
    /// Recording the epoch failed.
    #[error("recording the epoch in {path}: {source}")]
    Io {
        /// The epoch file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The listener and what it knows about the stream. Dropping it does not stop the threads;
/// the process ends them.
#[derive(Debug, Clone)]
pub struct Receiver {
    sh: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: ReplicationConfig,
    store_dir: PathBuf,
    mode: &'static str,
    state: Mutex<State>,
    /// Held while a frame is applied to the disk: activation takes it, so no mirror write
    /// happens once the stores are being opened.
    write: Mutex<()>,
    conns: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    seen_epoch: u64,
    /// The epoch this store was last active with, from the epoch file (0: never): reported,
    /// so that the agent can tell the group's last active, which holds all it sent, from a
    /// standby nobody streamed to since it started.
    last_active: u64,
    activated: Option<u64>,
    /// The current sender's connection; an older one stops at its next frame.
    generation: u64,
    connected: bool,
    applied: u64,
    heard: u64,
    behind_since: Option<Instant>,
    /// Ready (may take over) until then: `timeout` after the last acknowledgement the
    /// active took, past the catch-up's ([`Acks`]). Anchored at the acknowledgement, which
    /// the active receives later, so it ends before the active may go on without this
    /// standby (`sync_timeout` after it heard from it). Kept across a disconnect: an active
    /// that just died leaves its standby ready.
    synced_until: Option<Instant>,
    ever_connected: bool,
    last_error: Option<String>,
    /// A sync of the copy failed: what failed. Kept for the life of the process.
    disk_failed: Option<String>,
}

/// Records that making the copy durable failed (`e`), and returns `e`.
///
/// Why for good: Linux reports a failed write-back to one `fdatasync` and then forgets it,
/// the records still readable from the page cache though the disk never got them. A stream
/// that reconnected would rescan the copy from the cache, sync it "successfully", report those
/// records as held and count later acknowledgements on top of a copy with a hole (the
/// active's syncer treats the same failure as final too).
fn disk_failed(sh: &Shared, e: String) -> String {
    let mut st = lock(&sh.state);
    if st.disk_failed.is_none() {
        tracing::error!(error = %e,
            "replication: making the copy durable failed; this standby is not ready again \
             until its gateway restarts");
        st.disk_failed = Some(e.clone());
    }
    e
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The epoch file: (newest epoch seen, epoch last active with); a missing file is (0, 0).
fn read_epoch_file(path: &Path) -> std::io::Result<(u64, u64)> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let corrupt =
        || std::io::Error::other(format!("{} is corrupt ({} bytes)", path.display(), b.len()));
    let body = match b.len() {
        12 | 20 => &b[..b.len() - 4],
        _ => return Err(corrupt()),
    };
    if crc32fast::hash(body).to_le_bytes() != b[body.len()..] {
        return Err(corrupt());
    }
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let seen = word(0);
    let active = if body.len() == 16 { word(8) } else { 0 };
    if active > seen {
        return Err(corrupt());
    }
    Ok((seen, active))
}

/// Written to a temporary file and renamed, both synced: a crash leaves the old or the new.
/// A store never active keeps the 12-byte form, which versions before 3 December read.
fn write_epoch_file(dir: &Path, seen: u64, active: u64) -> std::io::Result<()> {
    let mut b = seen.to_le_bytes().to_vec();
    if active > 0 {
        b.extend_from_slice(&active.to_le_bytes());
    }
    let crc = crc32fast::hash(&b).to_le_bytes();
    b.extend_from_slice(&crc);
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(EPOCH_FILE))?;
    File::open(dir)?.sync_all()
}

impl Receiver {
    /// Binds `cfg.listen` and serves the stream into `store_dir`. The newest epoch seen starts
    /// at the larger of the epoch file and the newest local segment.
    pub fn start(cfg: ReplicationConfig, store_dir: &Path) -> std::io::Result<Receiver> {
        std::fs::create_dir_all(store_dir)?;
        let (mut seen, last_active) = read_epoch_file(&store_dir.join(EPOCH_FILE))?;
        for (rel, _) in list_segments(store_dir)? {
            if let Ok(e) = segment_epoch(&rel) {
                seen = seen.max(e);
            }
        }
        let listener = TcpListener::bind(cfg.listen)?;
        let sh = Arc::new(Shared {
            mode: cfg.mode.as_str(),
            cfg,
            store_dir: store_dir.to_owned(),
            state: Mutex::new(State {
                seen_epoch: seen,
                last_active,
                ..State::default()
            }),
            write: Mutex::new(()),
            conns: AtomicUsize::new(0),
        });
        let acc = sh.clone();
        std::thread::Builder::new()
            .name("fix-repl-listen".into())
            .spawn(move || accept_loop(acc, listener))?;
        Ok(Receiver { sh })
    }

    /// This gateway becomes active with `epoch`: no mirror write happens after this returns,
    /// and every sender of an older epoch is refused from now on (and told the epoch).
    pub fn activate(&self, epoch: u64) -> Result<(), ActivateError> {
        let _w = lock(&self.sh.write);
        let mut st = lock(&self.sh.state);
        if let Some(e) = &st.disk_failed {
            return Err(ActivateError::DiskFailed {
                reason: format!("its disk failed to make it durable ({e})"),
            });
        }
        if st.seen_epoch > epoch {
            return Err(ActivateError::Stale {
                epoch,
                seen: st.seen_epoch,
            });
        }
        if st.seen_epoch < epoch || st.last_active < epoch {
            write_epoch_file(&self.sh.store_dir, epoch, epoch).map_err(|source| {
                ActivateError::Io {
                    path: self.sh.store_dir.join(EPOCH_FILE),
                    source,
                }
            })?;
            st.seen_epoch = epoch;
            st.last_active = epoch;
        }
        st.activated = Some(epoch);
        st.generation += 1;
        st.connected = false;
        st.synced_until = None;
        Ok(())
    }

    /// The standby's view: in sync or not, and the lag.
    pub fn health(&self) -> ReplicationHealth {
        let st = lock(&self.sh.state);
        let now = Instant::now();
        let in_sync = st.synced_until.is_some_and(|t| now < t);
        // Stable texts: the agent records a change of reason as an event.
        let reason = if st.activated.is_some() {
            None
        } else if let Some(e) = &st.disk_failed {
            Some(format!(
                "replication: this standby's disk failed to make its copy durable ({e}); not \
                 ready until the gateway restarts (empty gateway.store_dir first if the disk \
                 lost data: the active then sends the copy whole)"
            ))
        } else if in_sync {
            None
        } else if !st.ever_connected {
            Some("replication: no active has streamed to this standby yet".to_owned())
        } else {
            Some("replication: not in sync with the active".to_owned())
        };
        let lag_records = st.connected.then(|| st.heard.saturating_sub(st.applied));
        ReplicationHealth {
            mode: self.sh.mode,
            ready: reason.is_none(),
            reason,
            lag_records,
            lag_ms: lag_records.map(|_| {
                st.behind_since
                    .map_or(0, |t| now.duration_since(t).as_millis() as u64)
            }),
            seen_epoch: st.seen_epoch,
            last_active_epoch: st.last_active,
            degraded: false,
            frozen_ms: None,
            last_degraded: None,
            peers: Vec::new(),
            error: st.last_error.clone(),
        }
    }
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "replication accept failed; continuing");
                continue;
            }
        };
        if sh.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            sh.conns.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(peer = ?s.peer_addr().ok(), "replication: too many connections; closing one");
            continue;
        }
        let sh2 = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("fix-repl-rx".into())
            .spawn(move || {
                let peer = s.peer_addr().ok();
                if let Err(e) = serve(&sh2, s) {
                    tracing::warn!(?peer, error = %e, "replication stream ended");
                }
                sh2.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            sh.conns.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "replication: no thread for a connection");
        }
    }
}

/// The local copy of the segments one sender writes.
struct Mirror<'a> {
    root: &'a Path,
    open: HashMap<String, (File, u64)>,
    dirty: HashSet<String>,
    /// Directories that gained an entry: synced with the next `Sync`.
    dirs: HashSet<PathBuf>,
    /// Session directories that gained a segment: once its claim is whole here, the
    /// segments it supersedes are deleted (see [`remove_unclaimed_segments`]).
    fresh: HashSet<String>,
}

impl Mirror<'_> {
    fn file(&mut self, rel: &str) -> Result<&mut (File, u64), String> {
        if !self.open.contains_key(rel) {
            if self.open.len() >= MAX_FILES {
                return Err(format!("more than {MAX_FILES} segments"));
            }
            let path = self.root.join(rel);
            let dir = path.parent().unwrap_or(self.root).to_owned();
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                self.dirs.insert(self.root.to_owned());
            }
            let existed = path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            if !existed {
                self.dirs.insert(dir);
                if let Some((session, _)) = rel.split_once('/') {
                    self.fresh.insert(session.to_owned());
                }
            }
            let len = f
                .metadata()
                .map_err(|e| format!("stat {}: {e}", path.display()))?
                .len();
            self.open.insert(rel.to_owned(), (f, len));
        }
        self.open
            .get_mut(rel)
            .ok_or_else(|| format!("{rel} vanished"))
    }

    fn append(&mut self, rel: &str, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let (f, len) = self.file(rel)?;
        if offset != *len {
            return Err(format!(
                "{rel}: bytes for offset {offset}, the copy holds {len}"
            ));
        }
        f.write_all_at(bytes, offset)
            .map_err(|e| format!("write {rel}: {e}"))?;
        *len += bytes.len() as u64;
        self.dirty.insert(rel.to_owned());
        Ok(())
    }

    fn truncate(&mut self, rel: &str, to: u64) -> Result<(), String> {
        let (f, len) = self.file(rel)?;
        if to < *len {
            f.set_len(to).map_err(|e| format!("truncate {rel}: {e}"))?;
            *len = to;
            self.dirty.insert(rel.to_owned());
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        for rel in self.dirty.drain() {
            if let Some((f, _)) = self.open.get(&rel) {
                f.sync_data().map_err(|e| format!("fdatasync {rel}: {e}"))?;
            }
        }
        for d in self.dirs.drain() {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("sync {}: {e}", d.display()))?;
        }
        self.prune();
        Ok(())
    }

    /// Deletes what the newest segments, now durable here, supersede; as the active did.
    fn prune(&mut self) {
        let sessions: Vec<String> = self.fresh.iter().cloned().collect();
        for session in sessions {
            match remove_unclaimed_segments(&self.root.join(&session)) {
                Ok(Some(removed)) => {
                    for name in &removed {
                        self.open.remove(&format!("{session}/{name}"));
                    }
                    if !removed.is_empty() {
                        tracing::info!(session = %session, removed = ?removed,
                            "replication: deleted segments a newer generation supersedes");
                    }
                    self.fresh.remove(&session);
                }
                // The newest claim is still arriving: the next sync tries again.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(session = %session, error = %e,
                        "replication: could not prune superseded segments");
                    self.fresh.remove(&session);
                }
            }
        }
    }
}

/// Why a handshake that did not end in time was given up.
const HANDSHAKE_LATE: &str = "no whole handshake within replication.timeout";

fn refuse(s: &mut TcpStream, newest_epoch: u64, reason: String) -> Result<(), String> {
    let _ = Frame::Refuse {
        newest_epoch,
        reason: reason.clone(),
    }
    .write_to(s, &mut Vec::new());
    Err(format!("refused the sender: {reason}"))
}

fn serve(sh: &Shared, mut s: TcpStream) -> Result<(), String> {
    let timeout = Some(sh.cfg.timeout);
    s.set_nodelay(true)
        .and_then(|()| s.set_read_timeout(timeout))
        .and_then(|()| s.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    // The whole handshake within `timeout` and at most the largest hello and proof: a peer
    // that has not proved the token holds one of the few connection slots no longer than
    // that, however slowly it trickles bytes, and cannot make this standby read a megabyte
    // first.
    let until = Instant::now() + sh.cfg.timeout;
    let hello = read_frame_max(
        &mut Deadline::new(&mut s, until, HANDSHAKE_LATE),
        &mut buf,
        MAX_HELLO,
    );
    let (epoch, active_nonce) = match hello.map_err(|e| format!("hello: {e}"))? {
        Frame::Hello {
            version: VERSION,
            epoch,
            nonce,
        } => match <[u8; NONCE_LEN]>::try_from(nonce.as_slice()) {
            Ok(n) => (epoch, n),
            Err(_) => return Err(format!("a hello with a nonce of {} bytes", nonce.len())),
        },
        Frame::Hello { version, .. } => {
            return refuse(
                &mut s,
                0,
                format!("protocol version {version}; this gateway speaks {VERSION}"),
            )
        }
        other => return Err(format!("expected a hello, got {}", other.describe())),
    };
    let ours = auth::nonce().map_err(|e| e.to_string())?;
    Frame::Challenge {
        nonce: ours,
        mac: auth::prove(&sh.cfg.token, Side::Standby, epoch, &active_nonce, &ours),
    }
    .write_to(&mut s, &mut out)
    .map_err(|e| format!("challenge: {e}"))?;
    let proof = read_frame_max(
        &mut Deadline::new(&mut s, until, HANDSHAKE_LATE),
        &mut buf,
        MAX_PROOF,
    );
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    match proof.map_err(|e| format!("proof: {e}"))? {
        Frame::Proof { mac }
            if auth::verify(
                &sh.cfg.token,
                Side::Active,
                epoch,
                &active_nonce,
                &ours,
                &mac,
            ) => {}
        Frame::Proof { .. } => {
            return refuse(&mut s, 0, "wrong replication token".to_owned());
        }
        other => return Err(format!("expected a proof, got {}", other.describe())),
    }
    let generation = {
        let mut st = lock(&sh.state);
        if let Some(e) = &st.disk_failed {
            let why = format!(
                "this standby's disk failed to make its copy durable ({e}); it takes no \
                 stream until its gateway restarts"
            );
            drop(st);
            return refuse(&mut s, 0, why);
        }
        if let Some(a) = st.activated {
            let newest = st.seen_epoch.max(a);
            if epoch > newest {
                // A newer active proved the token: this gateway is stale. Its stores stop
                // writing at once instead of when its own sender next reaches a peer that
                // knows (never, in async mode, while its links stay up).
                note_newer_epoch(epoch);
                tracing::error!(
                    epoch,
                    active_epoch = a,
                    "replication: an active of a newer epoch connected; this gateway is fenced"
                );
            }
            drop(st);
            return refuse(
                &mut s,
                newest,
                format!("this gateway is active with epoch {a}"),
            );
        }
        if epoch < st.seen_epoch {
            let newest = st.seen_epoch;
            drop(st);
            return refuse(
                &mut s,
                newest,
                format!("epoch {epoch} is older than epoch {newest} seen here"),
            );
        }
        if epoch > st.seen_epoch {
            write_epoch_file(&sh.store_dir, epoch, st.last_active)
                .map_err(|e| format!("recording epoch {epoch}: {e}"))?;
            st.seen_epoch = epoch;
        }
        // Not ready again until this stream has caught it up.
        st.generation += 1;
        st.connected = true;
        st.ever_connected = true;
        st.synced_until = None;
        st.applied = 0;
        st.heard = 0;
        st.behind_since = None;
        st.last_error = None;
        st.generation
    };
    tracing::info!(epoch, peer = ?s.peer_addr().ok(), "replication: an active connected");
    let result = mirror(sh, &mut s, epoch, generation, &mut buf, &mut out);
    let mut st = lock(&sh.state);
    if st.generation == generation {
        st.connected = false;
        st.last_error = result.as_ref().err().cloned();
    }
    result
}

/// A segment of this copy as a stream's `Welcome` finds it: its file, its size, and how
/// much it holds (its whole records).
struct Held {
    rel: String,
    path: PathBuf,
    file: File,
    size: u64,
    len: u64,
}

/// What this copy holds of each segment: its whole records, made durable (an earlier stream
/// may have written bytes it never synced, and what the Welcome reports as held, the new
/// stream's acknowledgements count as durable). Read without the mirror's lock, so that an
/// activation does not wait behind a scan of the whole copy: no other stream writes once
/// this one is current, and the cut of what follows the records ([`cut_to_held`]) is made
/// under the lock.
fn scan_held(sh: &Shared) -> Result<Vec<Held>, String> {
    let mut held = Vec::new();
    for (rel, path) in list_segments(&sh.store_dir).map_err(|e| e.to_string())? {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("stat {}: {e}", path.display()))?
            .len();
        let len = valid_len(&file, 0, size).map_err(|e| format!("read {}: {e}", path.display()))?;
        file.sync_data()
            .map_err(|e| disk_failed(sh, format!("fdatasync {}: {e}", path.display())))?;
        held.push(Held {
            rel,
            path,
            file,
            size,
            len,
        });
    }
    Ok(held)
}

/// Cuts each copy to the whole records it holds: a copy this node wrote as the active ends
/// in the zeros it kept ahead of its records, and perhaps a record a crash tore. Reported at
/// its size, a copy shorter in records than the active's would never get the rest. Called
/// with the mirror's lock held, while the stream is current; a file that an earlier stream
/// was still writing during the scan (it checked its currency before this one began) is
/// read on from where the scan stopped.
fn cut_to_held(sh: &Shared, held: &mut [Held]) -> Result<(), String> {
    for h in held.iter_mut() {
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", h.path.display());
        let size = h.file.metadata().map_err(|e| err("stat", e))?.len();
        if size != h.size {
            h.len = valid_len(&h.file, h.len, size).map_err(|e| err("read", e))?;
            h.file
                .sync_data()
                .map_err(|e| disk_failed(sh, err("fdatasync", e)))?;
            h.size = size;
        }
        if h.len < h.size {
            h.file
                .set_len(h.len)
                .and_then(|()| h.file.sync_all())
                .map_err(|e| disk_failed(sh, err("truncate", e)))?;
        }
    }
    Ok(())
}

const SUPERSEDED: &str = "superseded by a newer stream";

/// Whether the stream of `generation` is still the one the mirror may write for (no
/// activation or newer stream since); else the newest epoch seen. Callers hold `sh.write`.
fn still_current(sh: &Shared, generation: u64) -> Result<(), u64> {
    let st = lock(&sh.state);
    if st.generation == generation {
        Ok(())
    } else {
        Err(st.seen_epoch)
    }
}

fn mirror(
    sh: &Shared,
    s: &mut TcpStream,
    epoch: u64,
    generation: u64,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut files = Vec::new();
    // Every session is pruned once this stream's first batch is durable: what a generation
    // that arrived over an earlier connection superseded goes too.
    let mut fresh = HashSet::new();
    let mut held = scan_held(sh)?;
    {
        // The cut writes: like every write of the mirror, only while this stream is still
        // the current one (not after an activation or a newer stream).
        let _w = lock(&sh.write);
        if let Err(newest) = still_current(sh, generation) {
            return refuse(s, newest, SUPERSEDED.to_owned());
        }
        cut_to_held(sh, &mut held)?;
    }
    for h in held {
        if let Some((session, _)) = h.rel.split_once('/') {
            fresh.insert(session.to_owned());
        }
        files.push((h.rel, h.len));
    }
    Frame::Welcome {
        seen_epoch: epoch,
        files,
    }
    .write_to(s, out)
    .map_err(|e| e.to_string())?;
    let mut m = Mirror {
        root: &sh.store_dir,
        open: HashMap::new(),
        dirty: HashSet::new(),
        dirs: HashSet::new(),
        fresh,
    };
    let mut acks = Acks::default();
    // The position of the last Sync: positions only grow within a stream.
    let mut synced = 0u64;
    // Until the catch-up's sync the active may read whole stores between frames.
    s.set_read_timeout(Some(sh.cfg.catch_up_wait()))
        .map_err(|e| e.to_string())?;
    loop {
        let frame = match read_frame(s, buf) {
            Ok(f) => f,
            Err(e) => return Err(format!("reading from the active: {e}")),
        };
        // The active sends nothing more on a stream after an Ack it did not take (it gave
        // this standby up): a frame after an Ack is the proof that it took it.
        if let Some(at) = acks.confirmed() {
            let mut st = lock(&sh.state);
            if st.generation == generation {
                st.synced_until = Some(at + sh.cfg.timeout);
            }
        }
        let _w = lock(&sh.write);
        if let Err(newest) = still_current(sh, generation) {
            return refuse(s, newest, SUPERSEDED.to_owned());
        }
        let check = |rel: &str| match segment_epoch(rel) {
            Ok(e) if e <= epoch => Ok(()),
            _ => Err(format!(
                "segment {rel} is newer than the sender's epoch {epoch}"
            )),
        };
        match frame {
            Frame::Truncate { path, len } => {
                check(&path)?;
                // The active cuts only during the catch-up, and only copies it was told of:
                // later, a cut could take records this standby acknowledged as durable, and
                // one of a file not held would create an empty segment nothing claims.
                if acks.sent > 0 {
                    return Err(format!("a truncate of {path} after the catch-up"));
                }
                if !m.open.contains_key(&path) && !sh.store_dir.join(&path).is_file() {
                    return Err(format!(
                        "a truncate of {path}, which this copy does not hold"
                    ));
                }
                m.truncate(&path, len)?;
            }
            Frame::Data {
                path,
                offset,
                bytes,
            } => {
                check(&path)?;
                m.append(&path, offset, &bytes)?;
            }
            Frame::Sync { pos } => {
                if pos < synced {
                    return Err(format!("a sync of position {pos} after {synced}"));
                }
                synced = pos;
                m.sync().map_err(|e| disk_failed(sh, e))?;
                {
                    let mut st = lock(&sh.state);
                    st.applied = pos;
                    st.heard = st.heard.max(pos);
                    note_behind(&mut st);
                }
                acks.sent(acknowledge(s, out, pos)?);
                if acks.sent == 1 {
                    // The catch-up is over: from now on silence for `timeout` ends the stream.
                    s.set_read_timeout(Some(sh.cfg.timeout))
                        .map_err(|e| e.to_string())?;
                }
            }
            Frame::Heartbeat { written } => {
                let applied = {
                    let mut st = lock(&sh.state);
                    st.heard = st.heard.max(written);
                    note_behind(&mut st);
                    st.applied
                };
                // Answered, so the active knows this standby still counts itself in sync.
                acks.sent(acknowledge(s, out, applied)?);
            }
            other => {
                return Err(format!(
                    "unexpected frame from the active: {}",
                    other.describe()
                ))
            }
        }
    }
}

/// Sends `Ack(pos)`; returns the moment before it was sent, where an in-sync window that
/// this acknowledgement opens starts ([`Acks`]).
fn acknowledge(s: &mut TcpStream, out: &mut Vec<u8>, pos: u64) -> Result<Instant, String> {
    let at = Instant::now();
    Frame::Ack { pos }
        .write_to(s, out)
        .map_err(|e| format!("acknowledging: {e}"))?;
    Ok(at)
}

/// When this standby's acknowledgements on one stream make it ready (in sync for
/// `timeout` from the moment an acknowledgement was sent).
///
/// Two acknowledgements never do, although the standby held all it was sent when it sent
/// them:
/// * the stream's first, the catch-up's: the catch-up read the active's files at one
///   position, and an active that was going on alone (degraded) kept sending messages whose
///   records it wrote after that read. The next `Sync` carries them; a `Heartbeat` comes
///   only when no batch is waiting for this standby, so either proves it caught up.
/// * one the active did not take: an active that gave this standby up (no acknowledgement
///   within `sync_timeout`) goes on alone and only closes the stream, so a standby that was
///   frozen (SIGSTOP, a VM paused) and answers the frames it finds waiting must not count
///   itself in sync. The active sends nothing more after an acknowledgement it did not take:
///   the next frame is the proof, and the window then starts at that acknowledgement.
///
/// Readiness therefore comes a heartbeat or two after the catch-up, and a window always
/// trails by one heartbeat (why `heartbeat` is at most a third of `timeout`).
#[derive(Default)]
struct Acks {
    /// Acknowledgements sent on this stream.
    sent: u64,
    /// When the last one was sent, unless it was the first or a frame followed it already.
    unconfirmed: Option<Instant>,
}

impl Acks {
    fn sent(&mut self, at: Instant) {
        self.sent += 1;
        self.unconfirmed = (self.sent > 1).then_some(at);
    }

    /// A frame arrived: when the acknowledgement before it was sent, if that one counts.
    fn confirmed(&mut self) -> Option<Instant> {
        self.unconfirmed.take()
    }
}

fn note_behind(st: &mut State) {
    if st.heard > st.applied {
        st.behind_since.get_or_insert_with(Instant::now);
    } else {
        st.behind_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_file_keeps_the_last_active_epoch_and_reads_the_old_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCH_FILE);
        assert_eq!(read_epoch_file(&path).unwrap(), (0, 0));
        write_epoch_file(dir.path(), 9, 8).unwrap();
        assert_eq!(read_epoch_file(&path).unwrap(), (9, 8));
        write_epoch_file(dir.path(), 9, 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 12);
        assert_eq!(read_epoch_file(&path).unwrap(), (9, 0));
        // The 12-byte file of before: never active.
        let mut old = 7u64.to_le_bytes().to_vec();
        old.extend_from_slice(&crc32fast::hash(&7u64.to_le_bytes()).to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        assert_eq!(read_epoch_file(&path).unwrap(), (7, 0));
        // A flipped bit, a cut file, an active epoch above the seen one: refused, never 0.
        write_epoch_file(dir.path(), 9, 8).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[3] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert!(read_epoch_file(&path).is_err());
        std::fs::write(&path, &b[..16]).unwrap();
        assert!(read_epoch_file(&path).is_err());
        write_epoch_file(dir.path(), 8, 9).unwrap();
        assert!(read_epoch_file(&path).is_err());
    }
}
