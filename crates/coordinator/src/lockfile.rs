//! The shared lock file: an OFD lock held by the agent (never by the service), waited for in the
//! kernel, plus the heartbeat record TryHeartbeat reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::epoch::{EpochRead, EpochSlots, EpochStore};
use crate::members::Members;
use crate::{
    is_valid_node_name, Allow, CoordError, CoordEvent, Coordinator, StopMark, TryAcquire,
    UsedEpochs,
};

/// The heartbeat record the active writes into the lock file every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The writer's node name.
    pub node: String,
    /// The writer's epoch.
    pub epoch: u64,
    /// Wall-clock time of the write, Unix milliseconds.
    pub unix_ms: u64,
}

/// What the lock file said when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatReading {
    /// Empty file: nobody ever wrote a heartbeat.
    Missing,
    /// Content that is not a heartbeat record; the string says why, for /status.
    Garbage(String),
    /// A well-formed record.
    At(Heartbeat),
}

const HEARTBEAT_MAGIC: &str = "understudy-heartbeat";
const HEARTBEAT_VERSION: &str = "v1";
/// Readers look at no more of the lock file than this: a record is one short line.
pub const MAX_HEARTBEAT_BYTES: usize = 4096;
/// How long the waiter rests after an unexpected OS error before trying again. Only errors get a
/// pause: waiting for the lock itself happens in the kernel.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
/// How many times an open or a lock is retried when the file keeps vanishing or being replaced
/// under us, before the attempt is reported as an error.
const REPLACE_RETRIES: u32 = 16;
/// How often a waiter looks whether a stop of failover was cleared: a start of failover takes
/// effect within this.
const STOP_POLL: Duration = Duration::from_millis(100);
/// A stop mark is one short JSON object.
const MAX_STOP_MARK_BYTES: u64 = 4096;
/// How a stop of failover begins in the lock file, in place of a heartbeat record (followed by
/// the [`StopMark`] as JSON and a newline).
const STOP_MAGIC: &str = "understudy-stopped v1 ";
/// How long a start of failover tries to take the lock for a moment.
const START_WAIT: Duration = Duration::from_millis(200);

/// The file beside the lock that records a stop of failover (see [`StopMark`]): written
/// durably by the holder before it lets go, read by every node that obtains the lock.
pub fn stop_mark_path(lock: &Path) -> PathBuf {
    let mut p = lock.as_os_str().to_owned();
    p.push(".stopped");
    PathBuf::from(p)
}

/// A stop mark that could not be read or parsed: it still stops failover.
fn unreadable_mark(what: &Path, why: impl std::fmt::Display) -> StopMark {
    StopMark {
        node: "?".into(),
        epoch: 0,
        pid: 0,
        unix_ms: 0,
        boot_id: None,
        pid_ns: None,
        start_ticks: None,
        unreadable: Some(format!("{}: {why}", what.display())),
    }
}

fn parse_mark(what: &Path, bytes: &[u8]) -> StopMark {
    match serde_json::from_slice::<StopMark>(bytes) {
        Ok(m) if is_valid_node_name(&m.node) && m.unreadable.is_none() => m,
        Ok(_) => unreadable_mark(what, "not a stop mark"),
        Err(e) => unreadable_mark(what, e),
    }
}

/// At most `limit + 1` bytes of `file` from its start, whatever its offset (positioned reads:
/// the held descriptor is read again on every tick).
fn read_head(file: &File, limit: u64) -> io::Result<Vec<u8>> {
    let cap = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut buf = vec![0u8; cap];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// The stop of failover recorded beside `lock`, if any (what `/status` shows; the lock file's
/// own copy, read under the lock, is what a grant is judged by). A file that cannot be read or
/// parsed counts as a stop (said to be unreadable): only a person, starting failover, decides
/// that there is none.
pub fn read_stop_mark(lock: &Path) -> Option<StopMark> {
    let path = stop_mark_path(lock);
    // Never blocks (a FIFO put there) and never follows a link: the file is ours or nothing.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(unreadable_mark(&path, e)),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Some(unreadable_mark(&path, "not a regular file")),
        Err(e) => return Some(unreadable_mark(&path, e)),
    }
    let bytes = match read_head(&file, MAX_STOP_MARK_BYTES) {
        Ok(b) => b,
        Err(e) => return Some(unreadable_mark(&path, e)),
    };
    if bytes.len() as u64 > MAX_STOP_MARK_BYTES {
        return Some(unreadable_mark(
            &path,
            format!("more than {MAX_STOP_MARK_BYTES} bytes"),
        ));
    }
    Some(parse_mark(&path, &bytes))
}

/// The stop of failover the lock file itself holds (the holder writes it over its heartbeat
/// through the locked descriptor before it lets go), read through `file`: on a shared
/// filesystem a grant revalidates the locked file's data, not the directory's other names, so
/// a waiter on another machine could miss a side file created a moment earlier.
fn stop_in_lock_file(file: &File, lock: &Path) -> Option<StopMark> {
    let bytes = match read_head(file, MAX_HEARTBEAT_BYTES as u64) {
        Ok(b) => b,
        Err(e) => return Some(unreadable_mark(lock, e)),
    };
    let rest = bytes.strip_prefix(STOP_MAGIC.as_bytes())?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    Some(parse_mark(lock, line))
}

/// The stop of failover, if the lock file (read through `file`, under the lock) or the file
/// beside it records one.
fn stop_recorded(file: &File, lock: &Path) -> Option<StopMark> {
    stop_in_lock_file(file, lock).or_else(|| read_stop_mark(lock))
}

impl Heartbeat {
    /// The record as written into the lock file: one line,
    /// `understudy-heartbeat v1 node=<name> epoch=<n> unix_ms=<ms>\n`.
    pub fn encode(&self) -> String {
        format!(
            "{HEARTBEAT_MAGIC} {HEARTBEAT_VERSION} node={} epoch={} unix_ms={}\n",
            self.node, self.epoch, self.unix_ms
        )
    }
}

impl HeartbeatReading {
    /// Decode lock file content; never panics. Empty or blank content is
    /// [`HeartbeatReading::Missing`]; anything but exactly one well-formed, newline-terminated
    /// record (optionally followed by blanks) is [`HeartbeatReading::Garbage`].
    pub fn parse(bytes: &[u8]) -> HeartbeatReading {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return HeartbeatReading::Missing;
        }
        match parse_heartbeat(bytes) {
            Ok(hb) => HeartbeatReading::At(hb),
            Err(reason) => HeartbeatReading::Garbage(reason.to_string()),
        }
    }
}

fn parse_heartbeat(bytes: &[u8]) -> Result<Heartbeat, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
    // Without its newline the record may have been cut short (`unix_ms=17` from `unix_ms=1717…`).
    let (line, rest) = text
        .split_once('\n')
        .ok_or("heartbeat record not terminated by a newline (torn write?)")?;
    // Blanks may follow: a holder that died between its padded write and the truncate leaves them
    // (see `LockFileCoordinator::heartbeat`).
    if !rest.bytes().all(|b| b == b' ') {
        return Err("unexpected content after the heartbeat record");
    }
    let mut parts = line.split(' ');
    if parts.next() != Some(HEARTBEAT_MAGIC) {
        return Err("not an understudy heartbeat record");
    }
    match parts.next() {
        Some(HEARTBEAT_VERSION) => {}
        Some(_) => return Err("unsupported heartbeat record version"),
        None => return Err("truncated heartbeat record"),
    }
    let node = parts
        .next()
        .and_then(|p| p.strip_prefix("node="))
        .filter(|n| is_valid_node_name(n))
        .ok_or("bad node field in heartbeat record")?;
    let epoch = parts
        .next()
        .and_then(|p| p.strip_prefix("epoch="))
        .and_then(parse_decimal)
        .ok_or("bad epoch field in heartbeat record")?;
    let unix_ms = parts
        .next()
        .and_then(|p| p.strip_prefix("unix_ms="))
        .and_then(parse_decimal)
        .ok_or("bad unix_ms field in heartbeat record")?;
    if parts.next().is_some() {
        return Err("unexpected text in the heartbeat record");
    }
    Ok(Heartbeat {
        node: node.to_string(),
        epoch,
        unix_ms,
    })
}

/// Plain decimal digits only: `str::parse` would also take a leading `+`.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Read the heartbeat in the lock file at `path` without taking the lock (for /status and hints).
/// A missing file is [`HeartbeatReading::Missing`]; an unreadable one is reported as garbage.
pub fn read_heartbeat(path: &Path) -> HeartbeatReading {
    match File::open(path) {
        Ok(file) => read_heartbeat_from(&file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HeartbeatReading::Missing,
        Err(e) => HeartbeatReading::Garbage(format!("cannot read the lock file: {e}")),
    }
}

fn read_heartbeat_from(file: &File) -> HeartbeatReading {
    match read_head(file, MAX_HEARTBEAT_BYTES as u64 - 1) {
        Ok(bytes) => HeartbeatReading::parse(&bytes),
        Err(e) => HeartbeatReading::Garbage(format!("cannot read the lock file: {e}")),
    }
}

/// The lock file coordinator: the group lock is an OFD write lock on the whole lock file.
///
/// OFD locks belong to the open file description, not the process, so the waiter thread and the
/// held descriptor conflict with each other exactly as two processes would, and the kernel drops
/// the lock the instant the holding process dies. Every descriptor is opened with `O_CLOEXEC`
/// (std always does), so the services the agent spawns never inherit the lock.
pub struct LockFileCoordinator {
    lock: PathBuf,
    node: String,
    events: UnboundedSender<CoordEvent>,
    members: Members,
    epochs: EpochStore,
    shared: Arc<Shared>,
    /// The highest epoch [`Coordinator::next_epoch`] gave this node, and the group's newest
    /// before its run of them (see [`crate::own_epochs_after`]). Only in memory: an agent that
    /// restarted knows from the epoch file only its run's last two epochs (`own_run`), and
    /// counts the one before them as another's, which only makes its standby wait for a stream
    /// (the safe side).
    own: Option<(u64, u64)>,
}

impl std::fmt::Debug for LockFileCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFileCoordinator")
            .field("lock", &self.lock)
            .field("node", &self.node)
            .field("holds", &self.holds())
            .finish_non_exhaustive()
    }
}

/// State shared with the waiter thread.
struct Shared {
    state: Mutex<State>,
    /// Wakes a waiter resting after an error when the campaign is cancelled.
    wake: Condvar,
}

struct State {
    /// The descriptor that holds the group lock, when we hold it.
    held: Option<Held>,
    /// True between `campaign()` and the waiter obtaining the lock (or `release()`). A waiter that
    /// obtains the lock while this is false closes it at once and says nothing.
    campaigning: bool,
    /// A waiter thread exists (possibly blocked in the kernel from an earlier campaign); a new
    /// campaign re-arms it instead of starting a second one.
    waiter_running: bool,
}

struct Held {
    file: File,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn io_error(path: &Path, source: io::Error) -> CoordError {
    CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Open (creating if needed) the lock file; the flag says whether this call created it.
fn open_lock_file(path: &Path) -> io::Result<(File, bool)> {
    for _ in 0..REPLACE_RETRIES {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => return Ok((file, false)),
            // Deleted between the two opens: create it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "the lock file keeps disappearing while being opened",
    ))
}

fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    }
}

/// Take the lock if it is free; false when another open file description holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    let fl = whole_file_write_lock();
    loop {
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => return Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Block in the kernel until the lock is ours.
fn lock_wait(file: &File) -> io::Result<()> {
    let fl = whole_file_write_lock();
    loop {
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&fl)) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `Ok(())` when `path` still names the inode `file` is open on; otherwise why not.
fn still_names(file: &File, path: &Path) -> Result<(), String> {
    let ours = file
        .metadata()
        .map_err(|e| format!("cannot stat the held lock file {}: {e}", path.display()))?;
    // The path is looked at first: a file renamed over ours also unlinks ours, and "replaced"
    // says more than "deleted" then.
    match std::fs::metadata(path) {
        Ok(now) if now.dev() != ours.dev() || now.ino() != ours.ino() => {
            Err(format!("lock file {} was replaced", path.display()))
        }
        // Same inode yet unlinked: only in a race with a delete; trust the link count.
        Ok(_) if ours.nlink() == 0 => Err(format!("lock file {} was deleted", path.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("lock file {} was deleted", path.display()))
        }
        Err(e) => Err(format!("cannot stat lock file {}: {e}", path.display())),
    }
}

impl LockFileCoordinator {
    /// A coordinator for the group whose lock file is `lock`, on behalf of node `node`. Touches no
    /// file: the lock file need not exist yet (its directory must). Fails only for a node name
    /// that [`crate::is_valid_node_name`] refuses (it names files beside the lock).
    pub fn new(
        lock: PathBuf,
        node: String,
        events: UnboundedSender<CoordEvent>,
    ) -> Result<Self, CoordError> {
        if !is_valid_node_name(&node) {
            return Err(io_error(
                &lock,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid node name {node:?}"),
                ),
            ));
        }
        Ok(LockFileCoordinator {
            members: Members::for_lock(&lock),
            epochs: EpochStore::for_lock(&lock),
            lock,
            node,
            events,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    held: None,
                    campaigning: false,
                    waiter_running: false,
                }),
                wake: Condvar::new(),
            }),
            own: None,
        })
    }

    /// The group's membership records.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The group's epoch file.
    pub fn epochs(&self) -> &EpochStore {
        &self.epochs
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> &Path {
        &self.lock
    }

    /// The name of the node that holds the lock, if it can be told: the freshest member record
    /// (other than ours) that claims the lock, else the writer of the heartbeat in the lock file
    /// (when that is not us). For the agent's 409 answer; advisory only.
    pub fn holder_hint(&self) -> Option<String> {
        let from_members = self
            .members
            .read_all()
            .into_iter()
            .filter(|m| m.node.holds_lock && m.node.name != self.node)
            .max_by_key(|m| m.last_seen_unix_ms)
            .map(|m| m.node.name);
        if from_members.is_some() {
            return from_members;
        }
        match read_heartbeat(&self.lock) {
            // Our own name there is a record left from an earlier term, not the current holder.
            HeartbeatReading::At(hb) if hb.node != self.node => Some(hb.node),
            _ => None,
        }
    }

    /// The epoch file (both slots, from the same bytes), and the highest epoch recorded for the
    /// group (the file's, the heartbeat's and the member records'). An unreadable file reads as
    /// missing (logged).
    fn read_epochs(&self) -> (EpochSlots, u64) {
        let file = self.epochs.read_slots().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the epoch file");
            EpochSlots::MISSING
        });
        let file_epoch = match &file.newest {
            EpochRead::Value { epoch, .. } => *epoch,
            EpochRead::Missing | EpochRead::Corrupt(_) => 0,
        };
        let heartbeat_epoch = match read_heartbeat(&self.lock) {
            HeartbeatReading::At(hb) => hb.epoch,
            _ => 0,
        };
        let current = file_epoch
            .max(heartbeat_epoch)
            .max(self.members_max_epoch());
        (file, current)
    }

    /// This node's run of epochs (`own`), also when this agent does not know it: when the epoch
    /// file's newest, `highest` in the group, names this node, it was taken before this agent
    /// started (`own` lives in memory only) and the run goes on from it. The file's other slot
    /// names the holder of the epoch before; what came before the known part of the run stands
    /// for another node's, the highest it could be. Both slots come from the same bytes of the
    /// file (review 16, W4).
    fn own_run(&self, file: &EpochSlots, highest: u64) -> Option<(u64, u64)> {
        let EpochRead::Value { epoch: e, holder } = &file.newest else {
            return self.own;
        };
        let e = *e;
        if e == 0 || e != highest || holder != &self.node || self.own.is_some_and(|(h, _)| h >= e) {
            return self.own;
        }
        // The file's own epochs in a row up to `e`: from the other slot's when it is this
        // node's and the one before.
        let first = match &file.older {
            Some((p, prev)) if p.checked_add(1) == Some(e) && prev == &self.node => *p,
            _ => e,
        };
        // The run this agent knows goes on through them when they follow its newest: a
        // write of the next that reached the file but whose sync failed (reported, so `own`
        // did not move) continues it (review 16, W5).
        let before = match self.own {
            Some((h, b)) if h.checked_add(1).is_some_and(|n| n >= first) => b,
            _ => first.saturating_sub(1),
        };
        Some((e, before))
    }

    /// Highest epoch among the member records.
    fn members_max_epoch(&self) -> u64 {
        self.members
            .read_all()
            .iter()
            .map(|m| m.node.epoch)
            .max()
            .unwrap_or(0)
    }
}

impl Coordinator for LockFileCoordinator {
    fn campaign(&mut self) -> Result<(), CoordError> {
        let mut st = self.shared.lock();
        if st.held.is_some() {
            return Ok(());
        }
        st.campaigning = true;
        if st.waiter_running {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let path = self.lock.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("lock-waiter".into())
            .spawn(move || waiter_main(&shared, &path, &events));
        match spawned {
            Ok(_) => {
                st.waiter_running = true;
                Ok(())
            }
            Err(e) => {
                st.campaigning = false;
                Err(io_error(&self.lock, e))
            }
        }
    }

    fn try_acquire(&mut self) -> Result<TryAcquire, CoordError> {
        let mut st = self.shared.lock();
        if let Some(held) = &st.held {
            return Ok(TryAcquire::Acquired {
                previous: read_heartbeat_from(&held.file),
                created: false,
            });
        }
        for _ in 0..REPLACE_RETRIES {
            let (file, created) =
                open_lock_file(&self.lock).map_err(|e| io_error(&self.lock, e))?;
            if !try_lock(&file).map_err(|e| io_error(&self.lock, e))? {
                return Ok(TryAcquire::HeldByOther);
            }
            if let Err(reason) = still_names(&file, &self.lock) {
                // We locked a file that is no longer the group's lock: try the one there now.
                tracing::debug!(%reason, "lock file changed while taking it; retrying");
                continue;
            }
            if let Some(mark) = stop_recorded(&file, &self.lock) {
                return Err(CoordError::FailoverStopped(mark.describe()));
            }
            let previous = read_heartbeat_from(&file);
            st.held = Some(Held { file });
            return Ok(TryAcquire::Acquired { previous, created });
        }
        Err(io_error(
            &self.lock,
            io::Error::other("the lock file keeps being replaced while being locked"),
        ))
    }

    fn release(&mut self) -> Result<(), CoordError> {
        let held = {
            let mut st = self.shared.lock();
            st.campaigning = false;
            st.held.take()
        };
        self.shared.wake.notify_all();
        // Closing the descriptor is what releases the OFD lock.
        drop(held);
        Ok(())
    }

    fn holds(&self) -> bool {
        self.shared.lock().held.is_some()
    }

    fn next_epoch(&mut self, floor: u64) -> Result<u64, CoordError> {
        let heartbeat_epoch = {
            let st = self.shared.lock();
            let held = st.held.as_ref().ok_or(CoordError::NotHolder)?;
            match read_heartbeat_from(&held.file) {
                HeartbeatReading::At(hb) => hb.epoch,
                _ => 0,
            }
        };
        let file = self.epochs.read_slots()?;
        let file_epoch = match &file.newest {
            EpochRead::Missing => 0,
            EpochRead::Corrupt(reason) => {
                // The other sources keep the epoch from going backwards; the file is rewritten.
                tracing::warn!(file = %self.epochs.path().display(), %reason,
                    "epoch file is corrupt; overwriting it");
                0
            }
            EpochRead::Value { epoch, .. } => *epoch,
        };
        let highest = file_epoch
            .max(heartbeat_epoch)
            .max(self.members_max_epoch())
            .max(floor);
        let next = highest.checked_add(1).ok_or_else(|| {
            io_error(
                self.epochs.path(),
                io::Error::other("the group epoch cannot grow any further"),
            )
        })?;
        let own = self.own_run(&file, highest);
        self.epochs.write(next, &self.node)?;
        self.own = crate::own_epochs_after(own, next);
        Ok(next)
    }

    fn current_epoch(&self) -> u64 {
        self.read_epochs().1
    }

    /// The epoch moves only in [`Coordinator::next_epoch`], after the grant is kept: every
    /// epoch but this node's own was used. The epoch file names the node that took its
    /// epoch; when that is this node and nothing in the group is newer, it was the last active.
    fn used_epochs(&self) -> UsedEpochs {
        let (file, current) = self.read_epochs();
        UsedEpochs {
            newest_by_another: crate::newest_of_another(current, self.own_run(&file, current)),
            last_by_this_node: match file.newest {
                EpochRead::Value { epoch, holder } if holder == self.node => {
                    (epoch > 0 && epoch >= current).then_some(epoch)
                }
                _ => None,
            },
        }
    }

    fn heartbeat(&mut self, hb: &Heartbeat) -> Result<(), CoordError> {
        let st = self.shared.lock();
        let held = st.held.as_ref().ok_or(CoordError::NotHolder)?;
        write_record(&held.file, hb.encode().as_bytes()).map_err(|e| io_error(&self.lock, e))
    }

    fn verify(&mut self) -> bool {
        let lost = {
            let mut st = self.shared.lock();
            let Some(held) = &st.held else {
                return true;
            };
            match still_names(&held.file, &self.lock) {
                Ok(()) => return true,
                Err(reason) => (st.held.take(), reason),
            }
        };
        let (held, reason) = lost;
        drop(held);
        tracing::warn!(%reason, "group lock lost");
        // The agent may be gone (shutting down); nobody to tell then.
        let _ = self.events.send(CoordEvent::Lost { reason });
        false
    }

    fn stop_failover(&mut self, mark: &StopMark) -> Result<(), CoordError> {
        let path = stop_mark_path(&self.lock);
        let json = serde_json::to_vec(mark).map_err(|e| io_error(&path, io::Error::other(e)))?;
        let st = self.shared.lock();
        let held = st.held.as_ref().ok_or(CoordError::NotHolder)?;
        // In the lock file first, over the heartbeat, through the held descriptor: what a grant
        // is judged by. Then beside it, for people and `/status`. Either failing, neither
        // stands (a heartbeat rewrites the lock file's record on the next tick).
        let mut record = STOP_MAGIC.as_bytes().to_vec();
        record.extend_from_slice(&json);
        record.push(b'\n');
        let in_lock = write_record(&held.file, &record)
            .and_then(|()| held.file.sync_data())
            .map_err(|e| io_error(&self.lock, e));
        drop(st);
        let beside =
            in_lock.and_then(|()| crate::epoch::write_durably(&path, &self.node, &[&json]));
        if beside.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        beside
    }

    fn failover_stopped(&self) -> Option<StopMark> {
        let st = self.shared.lock();
        if let Some(held) = &st.held {
            return stop_recorded(&held.file, &self.lock);
        }
        drop(st);
        read_stop_mark(&self.lock).or_else(|| {
            let file = File::open(&self.lock).ok()?;
            stop_in_lock_file(&file, &self.lock)
        })
    }

    /// Takes the lock for a moment to replace the lock file's copy (a waiter that finds the
    /// stop gives the lock back at once); then removes the file beside it. A lock that stays
    /// held belongs to an active, which took the group seeing no stop and whose heartbeat
    /// replaced the record, or to the releasing node, not yet gone: with a file beside, that
    /// is answered "try again", and nothing is cleared.
    fn start_failover(&mut self, allow: Allow) -> Result<Option<StopMark>, CoordError> {
        let path = stop_mark_path(&self.lock);
        let mut found = None;
        let mut locked = self.holds();
        let until = std::time::Instant::now() + START_WAIT;
        while !locked && std::time::Instant::now() < until {
            let (file, _) = open_lock_file(&self.lock).map_err(|e| io_error(&self.lock, e))?;
            if !try_lock(&file).map_err(|e| io_error(&self.lock, e))? {
                // Most likely a waiter reading the stop: it lets go within microseconds.
                std::thread::yield_now();
                continue;
            }
            if still_names(&file, &self.lock).is_err() {
                continue;
            }
            locked = true;
            found = stop_in_lock_file(&file, &self.lock);
            if let Some(m) = &found {
                // (The file beside is judged below, before it is removed.)
                allow(m).map_err(CoordError::FailoverStopped)?;
                // The released node's last heartbeat, dated now: a tryheartbeat node reads a
                // holder that let go a moment ago, as after any hand-over, and takes the group
                // (an empty file left it waiting for an operator, review 31).
                let record = match &m.unreadable {
                    None => Heartbeat {
                        node: m.node.clone(),
                        epoch: m.epoch,
                        unix_ms: crate::unix_ms(),
                    }
                    .encode(),
                    Some(_) => String::new(),
                };
                write_record(&file, record.as_bytes())
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_error(&self.lock, e))?;
            }
        }
        let beside = read_stop_mark(&self.lock);
        if !locked && beside.is_some() {
            return Err(io_error(
                &self.lock,
                io::Error::other(
                    "the group lock is held (by the node still releasing?) while the stop is recorded; try again",
                ),
            ));
        }
        if let Some(m) = &beside {
            allow(m).map_err(CoordError::FailoverStopped)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => crate::epoch::sync_dir_of(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        Ok(beside.or(found))
    }
}

/// Replaces the lock file's record (a heartbeat or a stop of failover) with `record`, through
/// the descriptor that holds the lock. A shorter record than the one there would leave the old
/// tail behind until the truncate; padding with blanks (which both readers accept) keeps the
/// file valid even if we die between the write and the truncate.
fn write_record(file: &File, record: &[u8]) -> io::Result<()> {
    let old_len = file.metadata()?.len();
    let mut bytes = record.to_vec();
    let cover = usize::try_from(old_len)
        .unwrap_or(usize::MAX)
        .min(MAX_HEARTBEAT_BYTES);
    if bytes.len() < cover {
        bytes.resize(cover, b' ');
    }
    file.write_all_at(&bytes, 0)?;
    if old_len != record.len() as u64 || bytes.len() != record.len() {
        file.set_len(record.len() as u64)?;
    }
    Ok(())
}

impl Drop for LockFileCoordinator {
    fn drop(&mut self) {
        // Cancels the campaign too, so a waiter still blocked in the kernel lets go of the lock
        // as soon as it gets it.
        let _ = self.release();
    }
}

/// The lock-waiter thread: open, block in the kernel until the lock is ours, then hand the
/// descriptor over and report. Runs until it delivers the lock or finds the campaign cancelled.
fn waiter_main(shared: &Shared, path: &Path, events: &UnboundedSender<CoordEvent>) {
    loop {
        {
            let mut st = shared.lock();
            if !st.campaigning {
                st.waiter_running = false;
                return;
            }
        }
        let (file, mut created) = match open_lock_file(path) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(lock = %path.display(), error = %e, "cannot open the lock file");
                backoff(shared);
                continue;
            }
        };
        // Try without waiting first: if someone else got the file we just created, they may have
        // held it and written to it, so it no longer counts as created by us.
        let obtained = match try_lock(&file) {
            Ok(true) => Ok(()),
            Ok(false) => {
                created = false;
                lock_wait(&file)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = obtained {
            tracing::warn!(lock = %path.display(), error = %e, "cannot lock the lock file");
            backoff(shared);
            continue;
        }

        let mut st = shared.lock();
        if !st.campaigning || st.held.is_some() {
            // Cancelled while we were blocked, or try_acquire got there first: let go at once.
            // (With a held lock the campaign is satisfied; if that lock is stale, verify() reports
            // Lost and the agent campaigns again.)
            drop(file);
            st.campaigning = false;
            st.waiter_running = false;
            return;
        }
        if let Err(reason) = still_names(&file, path) {
            // The file we waited on was deleted or replaced: the group's lock is the new one.
            drop(st);
            drop(file);
            tracing::debug!(%reason, "lock file changed while waiting; waiting on the new one");
            continue;
        }
        // Read under the lock, which the holder wrote it under before letting go: a stop of
        // failover made before this grant is seen here, however long this node was away.
        if let Some(mark) = stop_recorded(&file, path) {
            drop(st);
            drop(file);
            tracing::debug!(stop = %mark.describe(), "failover is stopped; giving the lock back");
            wait_while_stopped(shared, path);
            continue;
        }
        let previous = read_heartbeat_from(&file);
        st.held = Some(Held { file });
        st.campaigning = false;
        st.waiter_running = false;
        // Sent under the state lock so that a release() cannot slip in between holding and telling.
        let _ = events.send(CoordEvent::Acquired {
            previous,
            created,
            lease: None,
        });
        return;
    }
}

/// Rest until failover is started again (the stop mark is gone) or the campaign is cancelled.
fn wait_while_stopped(shared: &Shared, path: &Path) {
    loop {
        {
            let st = shared.lock();
            if !st.campaigning {
                return;
            }
            let _ = shared
                .wake
                .wait_timeout_while(st, STOP_POLL, |s| s.campaigning);
        }
        if read_stop_mark(path).is_none() {
            return;
        }
    }
}

/// Rest after an error, waking early if the campaign is cancelled.
fn backoff(shared: &Shared) {
    let st = shared.lock();
    if !st.campaigning {
        return;
    }
    let _ = shared
        .wake
        .wait_timeout_while(st, ERROR_BACKOFF, |s| s.campaigning);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(node: &str, epoch: u64, unix_ms: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            epoch,
            unix_ms,
        }
    }

    #[test]
    fn encode_format() {
        assert_eq!(
            hb("a-1", 7, 1700).encode(),
            "understudy-heartbeat v1 node=a-1 epoch=7 unix_ms=1700\n"
        );
    }

    #[test]
    fn missing_and_garbage() {
        assert_eq!(HeartbeatReading::parse(b""), HeartbeatReading::Missing);
        assert_eq!(
            HeartbeatReading::parse(b" \n\t "),
            HeartbeatReading::Missing
        );
        for bad in [
            &b"hello"[..],
            b"hello\n",
            b"\xff\xfe\n",
            b"understudy-heartbeat v2 node=a epoch=1 unix_ms=2\n",
            b"understudy-heartbeat v1 node=a epoch=1 unix_ms=2",
            b"understudy-heartbeat v1 node=a epoch=+1 unix_ms=2\n",
            b"understudy-heartbeat v1 node=a epoch=1 unix_ms=2 extra\n",
            b"understudy-heartbeat v1 node=a/b epoch=1 unix_ms=2\n",
            b"understudy-heartbeat v1 node= epoch=1 unix_ms=2\n",
            b"understudy-heartbeat v1 node=a epoch=1 unix_ms=99999999999999999999\n",
            b"understudy-heartbeat v1 node=a epoch=1 unix_ms=2\nsecond line\n",
            b" understudy-heartbeat v1 node=a epoch=1 unix_ms=2\n",
        ] {
            assert!(
                matches!(HeartbeatReading::parse(bad), HeartbeatReading::Garbage(_)),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn blank_padding_is_accepted() {
        let mut bytes = hb("a", 1, 2).encode().into_bytes();
        bytes.extend_from_slice(b"      ");
        assert_eq!(
            HeartbeatReading::parse(&bytes),
            HeartbeatReading::At(hb("a", 1, 2))
        );
    }

    #[test]
    fn every_torn_prefix_is_rejected() {
        let rec = hb("node-a", 123, 1_717_000_000_000).encode();
        for cut in 1..rec.len() {
            assert!(
                matches!(
                    HeartbeatReading::parse(&rec.as_bytes()[..cut]),
                    HeartbeatReading::Garbage(_)
                ),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = HeartbeatReading::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_near_valid(
            node in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}",
            epoch in any::<u64>(),
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = hb(&node, epoch, 5).encode().into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = HeartbeatReading::parse(&bytes);
            bytes.truncate(i);
            let _ = HeartbeatReading::parse(&bytes);
        }

        #[test]
        fn round_trip(node in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,60}", epoch in any::<u64>(), unix_ms in any::<u64>()) {
            let h = hb(&node, epoch, unix_ms);
            prop_assert_eq!(HeartbeatReading::parse(h.encode().as_bytes()), HeartbeatReading::At(h));
        }
    }
}
