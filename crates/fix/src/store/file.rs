//! The fenced file store.
//!
//! # On disk
//!
//! ```text
//! <dir>/<SENDER-TARGET-FIX.4.x>/fence                  newest epoch: [u64 LE][crc32 u32]
//! <dir>/<SENDER-TARGET-FIX.4.x>/<epoch, 20 digits>.log  one append-only segment per writer epoch
//! <dir>/<SENDER-TARGET-FIX.4.x>/<epoch>-<generation, 10 digits>.log  later generations of it
//! ```
//!
//! A segment is a sequence of records `[len u32][!len u32][crc32 u32][epoch u64][kind u8]
//! [payload]`, all little-endian; `len` counts the bytes after the crc, the crc covers `len`
//! and everything after it, and `!len` lets recovery trust `len` before the crc can be
//! checked (so a flipped bit in a length is reported as corruption, never taken for a torn
//! tail that would silently drop the records after it). The first record of a segment is a
//! claim listing, for every older segment that counts, the length up to which it counts
//! ("seals"), and the segments kept only as history (see "Generations"). A claim is
//! `[count u32]` then `[epoch u64][length u64]` each, all counted and of generation 0, or
//! `[u32::MAX][count u32]` then `[epoch u64][generation u64][length u64][counted u8]` each,
//! then `[lead end u64]`: where the records that restore a new generation's state end. A
//! segment counts only once its claim and that lead are whole, so a generation cut short by a
//! crash before its sync, a full disk or a copy still arriving never stands for the state
//! it was to restore.
//!
//! Record kinds: 1 claim, 2 next sender seq, 3 next target seq, 4 sent message (seq +
//! frame), 5 reset (sequence numbers to 1, messages forgotten, period kept), 6 reset into a
//! new session period (payload: the period's start, `i64` Unix seconds; see
//! [`crate::schedule`]), 7 snapshot (the stored messages replaced by those of its payload,
//! numbered from 1: `[count u32]` then `[len u32][bytes]` each; the next target number and
//! the period are kept; see [`FileStore::replace_sent`]).
//!
//! # Preallocation: why a record overwrites zeros instead of extending the file
//!
//! A writer keeps up to [`PREALLOC`] bytes of zeros written (and so allocated) ahead of its
//! last record, and writes each record over them at its offset (`pwrite`, not `O_APPEND`).
//! The `fdatasync` a record waits for then writes that record's blocks and nothing else: an
//! append changes the file's size, which ext4 must make durable too on every sync (a journal
//! commit, or without a journal a synchronous write of the inode's block) (measured with `bench fix-roundtrip`: the gateway's single order p50 70–90 µs lower, see
//! docs/fix-gateway.md). The zeros are written right after the record that reaches past
//! them, once per chunk; that record's sync also writes the chunk.
//!
//! What a crash leaves after the last synced record is therefore zeros, or the records of
//! the pass that was cut short, sector by sector in any order: a record with a bad checksum
//! is a torn write, not corruption, when nothing but zeros follows it or when a sector it
//! spans is still unwritten (see `unwritten_sector`; etcd's WAL reads its preallocated
//! segments much the same way); recovery stops there. Every reader stops at the first
//! record that is not whole: the valid length of a segment is where that walk ends
//! ([`valid_len`]), never the file's size, and replication ships whole records only. A
//! reader racing a live writer (a shared directory) can see a record half copied in any
//! order, which reads as corruption: [`FileStore::open`] reads again before reporting it.
//!
//! # Why one segment per epoch
//!
//! A writer never writes, truncates or repairs a file that another epoch writes. A former
//! active that was stopped (SIGSTOP, a stalled disk) and resumes can therefore only append to
//! its own segment, and the seal the new active recorded makes those late bytes invisible to
//! every later reader. A shared single file would force the new active to repair a torn
//! tail the old writer may still be extending.
//!
//! # Generations: what bounds a store's history
//!
//! A reset, a new period or a snapshot makes every record before it dead. Once the counted
//! bytes reach [`ROTATE_AFTER`], such a record is not appended: the writer starts the next
//! *generation* of its segment (a name never used before, created exclusively), whose claim
//! names the old generation and what that one counted as history only (not replayed, kept so
//! that a [`StoreMark`] taken before a takeover and the reset still reads what followed it)
//! and whose first records restore the state (period, target number, snapshot). Opening
//! replays only the newest whole claim's counted segments, so the files and the time to open
//! follow the live period, not the store's age. Deleted, each only once no claimant can
//! need it:
//! - by the rotating writer, once the new generation is durable and a fence read after that
//!   is still its own: the segments older than the superseded generation that the new claim
//!   does not name, from a listing made before that fence read (never a newer epoch's);
//! - by a new epoch's claimant, once its own claim is durable and the fence still its own:
//!   what that claim does not name;
//! - on a standby's copy, once its newest claim is whole there: what that claim does not
//!   name ([`remove_unclaimed_segments`]).
//!
//! Why the writer's deletion is safe: a claimant lists segments only after writing the fence.
//! One that wrote it after the writer's fence read finds the new generation and needs only
//! what it names; one that wrote it before makes that read fail, and then nothing is deleted
//! — not even the new generation, which that claimant may already count. A rotation that
//! fails once its generation may be whole on disk poisons the store: appending on to the old
//! generation would write records the next open, starting from the new one, never reads.
//!
//! # Fencing protocol
//!
//! Opening with epoch `E`: under an exclusive `flock` of `fence` (held only for this
//! read-compare-write, so a stopped writer cannot block a takeover beyond it), refuse if the
//! fence or any segment name is newer than `E`, else write `E` and fdatasync it. Only *then*
//! read the older segments and seal them at their current valid length, after an fdatasync
//! of the one sealed now (a killed writer's last records may not be durable yet, and a seal
//! beyond what survives a machine crash would make the store unreadable).
//!
//! Appending: read the fence (one `pread`), refuse if newer; write the record (one `pwrite`
//! at the segment's end, see "Preallocation"); sync per policy; read the fence again and report [`StoreError::Fenced`]
//! if it moved. An append that returned `Ok` saw the fence unchanged *after* its bytes were
//! in the file, so any newer writer wrote its fence later and read — and sealed — a segment
//! that already contained them: an acknowledged record is never lost in a takeover. An
//! append that returned `Fenced` is in doubt, like a crash between write and send.
//!
//! A FIX engine's stores under group commit ([`FileStore::defer_fence_checks`]) do the same
//! per event-loop turn instead of per record: the turn's first append reads the fence
//! before writing, and [`FileStore::verify_fence`], which the engine calls at the end of
//! every turn and before it lets anything written in it leave, reads it after the turn's
//! last write. The argument is unchanged, for the turn's records as a whole: nothing is
//! sent before a fence read that follows them, and a writer fenced before its turn writes
//! nothing. Records a turn writes after a newer claim lie beyond that claim's seal, as those
//! of an append in doubt do. Two `pread`s per record cost a burst of pipelined orders about
//! a fifth of its throughput.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::group::GroupCommit;
use super::{SessionId, SessionStore, StoreError, StoreMark};

/// Counted bytes (every segment a store replays at open) from which a reset, a new period
/// or a snapshot starts a new generation instead of being appended (see "Generations").
pub const ROTATE_AFTER: u64 = 4 << 20;

/// The most zeros a writer keeps written ahead of its last record (see "Preallocation"); a
/// store with a small [`FileStore::set_rotate_after`] keeps a quarter of that, at least a
/// page. The pass that first reaches a chunk writes it to disk, so a larger chunk makes
/// rarer but longer passes: with 1 MiB a new active's first pass, which its Logon answer
/// waits for, added about 10 ms to every takeover (`bench fix-recovery`).
pub const PREALLOC: u64 = 64 << 10;

/// What a disk writes atomically: a write cut short by a crash leaves each sector of its
/// range either written or as it was.
const SECTOR: u64 = 512;

/// What a writer writes its zeros ahead from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A segment: the epoch that writes it and its generation within that epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SegmentId {
    /// The writer's epoch.
    pub epoch: u64,
    /// 0 for the segment a claim at open creates, then one more for each rotation.
    pub generation: u64,
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&segment_name(*self))
    }
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync after every record before the append returns (the default). A message is
    /// acknowledged only once it would survive a power cut.
    #[default]
    EveryWrite,
    /// fdatasync at most once per `max_delay` (on an append or on
    /// [`FileStore::sync_if_due`]) and on [`FileStore::sync`]. Much faster; a crash of the
    /// *machine* can lose the records of the last `max_delay`, which after a failover shows
    /// as a sequence gap the counterparty fills by gap fill. A crash of the *process* loses
    /// nothing (the bytes are in the page cache), and fencing is unaffected.
    Batch {
        /// Longest time a record may stay unsynced.
        max_delay: Duration,
    },
    /// Group commit (see [`super::group`]): an append only writes its record; the process's
    /// syncer thread makes it durable together with every other record written meanwhile,
    /// and the engine sends nothing before the records written ahead of it are durable. The
    /// promise of [`EveryWrite`](Self::EveryWrite) — nothing leaves before it would survive
    /// a power cut — at one `fdatasync` per batch instead of per record. Only the engine's
    /// sends wait: a caller that sends by other means must wait with [`FileStore::sync`].
    Group,
}

/// What [`FileStore::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed (epochs, ascending; a later generation of an epoch shows its
    /// epoch again).
    pub segments: Vec<u64>,
    /// Bytes read and checked to rebuild the state.
    pub bytes_replayed: u64,
    /// Segment files deleted because the new claim does not name them.
    pub removed: Vec<String>,
    /// Records applied.
    pub records: u64,
    /// Bytes of an incomplete record at the end of the newest segment, ignored (and cut off
    /// when that segment is ours).
    pub torn_tail_bytes: u64,
    /// Whether a segment of this same epoch was reopened rather than a new one created.
    pub reopened: bool,
}

const HEADER: usize = 12;
const FIXED: usize = 9; // epoch + kind
const MAX_RECORD: usize = 64 << 20;
const FENCE_LEN: usize = 12;
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Opens tried again after one found a segment unreadable (see [`FileStore::open`]), and
/// the pause before each: real corruption is reported 10 ms later.
const OPEN_RETRIES: u32 = 2;
const OPEN_RETRY_PAUSE: Duration = Duration::from_millis(5);

const KIND_CLAIM: u8 = 1;
const KIND_NEXT_SENDER: u8 = 2;
const KIND_NEXT_TARGET: u8 = 3;
const KIND_SENT: u8 = 4;
const KIND_RESET: u8 = 5;
/// A reset that also records the session period (`i64` LE, the period's start in Unix
/// seconds) the store belongs to from now on.
const KIND_PERIOD: u8 = 6;
/// A reset that keeps some messages (`[count u32]`, then `[len u32][bytes]` each, numbered
/// from 1): one record, so a crash leaves either the old contents or the new.
const KIND_SNAPSHOT: u8 = 7;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Appends one encoded record to `out`.
fn encode_record(
    out: &mut Vec<u8>,
    epoch: u64,
    kind: u8,
    payload: &[u8],
) -> Result<(), StoreError> {
    let len = FIXED + payload.len();
    if len > MAX_RECORD {
        return Err(StoreError::TooLarge(payload.len()));
    }
    let len = len as u32;
    let at = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[at..at + 4]);
    h.update(&out[at + HEADER..]);
    out[at + 8..at + 12].copy_from_slice(&h.finalize().to_le_bytes());
    Ok(())
}

/// One decoded record, borrowing the segment bytes.
struct Rec<'a> {
    epoch: u64,
    kind: u8,
    payload: &'a [u8],
    /// Offset of the payload within the segment.
    payload_off: usize,
    /// Offset just past the record.
    end: usize,
}

enum Next<'a> {
    Rec(Rec<'a>),
    End,
    /// An incomplete record starts here and runs to the end of the file.
    Torn,
    Corrupt(String),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn next_record(buf: &[u8], p: usize) -> Next<'_> {
    next_record_at(buf, p, 0)
}

/// Whether a sector the record `buf[from..to]` spans is still unwritten, `buf` starting at
/// file offset `base`: what a write cut short by a crash leaves in preallocated space. The
/// record's first sector was zeros from `from` on, and is looked at only when `first` (a
/// header that passed its length check vouches for it: its share is at least the length,
/// never zero, or only length bytes that are zero by value). Every later sector was zeros
/// throughout, so it must be zero to its end (as far as `buf` goes), not only where the
/// record lies: the last bytes of a record are often zeros by value (a sequence number's
/// high bytes), and a flipped bit in such a record must still read as corruption.
fn unwritten_sector(buf: &[u8], from: usize, to: usize, base: u64, first: bool) -> bool {
    let mut s = from;
    while s < to {
        let abs = base + s as u64;
        let sector_end = usize::try_from(abs - abs % SECTOR + SECTOR - base).unwrap_or(usize::MAX);
        let share_end = if s == from {
            sector_end.min(to)
        } else {
            sector_end.min(buf.len())
        };
        if (s != from || first) && buf[s..share_end].iter().all(|&b| b == 0) {
            return true;
        }
        s = sector_end.min(to);
    }
    false
}

/// [`next_record`] for a `buf` that starts at file offset `base` (sectors are aligned to
/// the file).
fn next_record_at(buf: &[u8], p: usize, base: u64) -> Next<'_> {
    let rest = &buf[p..];
    if rest.is_empty() {
        return Next::End;
    }
    // A crash can leave a prefix of the record, or (on some filesystems) the file extended
    // with zeros; both can only be at the end.
    if rest.len() < HEADER {
        return Next::Torn;
    }
    let len = u32_at(rest, 0);
    if len != !u32_at(rest, 4) {
        // A header the crash cut across a sector boundary keeps one side's zeros; a header
        // within one sector is all zeros or whole.
        return if rest.iter().all(|&b| b == 0) || unwritten_sector(buf, p, p + HEADER, base, true) {
            Next::Torn
        } else {
            Next::Corrupt("record length check failed".into())
        };
    }
    let len = len as usize;
    if !(FIXED..=MAX_RECORD).contains(&len) {
        return Next::Corrupt(format!("record length {len} out of range"));
    }
    if rest.len() < HEADER + len {
        return Next::Torn;
    }
    let body = &rest[HEADER..HEADER + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[0..4]);
    h.update(body);
    if h.finalize() != u32_at(rest, 8) {
        // The last record before the end or the preallocated zeros, with a bad crc, is what
        // a crash during its write leaves (the size, or some of its sectors, reached the disk
        // before the rest); so is one with a sector still all zeros, whatever sectors after
        // it were written out of order. Anything else is corruption.
        return if rest[HEADER + len..].iter().all(|&b| b == 0)
            || unwritten_sector(buf, p, p + HEADER + len, base, false)
        {
            Next::Torn
        } else {
            Next::Corrupt("record checksum mismatch".into())
        };
    }
    Next::Rec(Rec {
        epoch: u64_at(body, 0),
        kind: body[8],
        payload: &body[FIXED..],
        payload_off: p + HEADER + FIXED,
        end: p + HEADER + len,
    })
}

fn segment_name(id: SegmentId) -> String {
    if id.generation == 0 {
        format!("{:020}.log", id.epoch)
    } else {
        format!("{:020}-{:010}.log", id.epoch, id.generation)
    }
}

/// The segment a file name names (`<epoch, 20 digits>.log` or
/// `<epoch>-<generation, 10 digits>.log`), or `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<SegmentId> {
    let stem = name.strip_suffix(".log")?;
    let digits = |d: &str, n: usize| d.len() == n && d.bytes().all(|b| b.is_ascii_digit());
    let (epoch, generation) = match stem.split_once('-') {
        None => (stem, None),
        Some((e, g)) => (e, Some(g)),
    };
    if !digits(epoch, 20) {
        return None;
    }
    let generation = match generation {
        None => 0,
        Some(g) if digits(g, 10) => g.parse().ok().filter(|&g| g > 0)?,
        Some(_) => return None,
    };
    Some(SegmentId {
        epoch: epoch.parse().ok()?,
        generation,
    })
}

fn list_segments(dir: &Path) -> Result<Vec<SegmentId>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_name(name) {
            out.push(id);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The segment file names of one session directory, oldest first (by epoch, then
/// generation); none when the directory does not exist.
pub fn segment_files(session_dir: &Path) -> Result<Vec<String>, StoreError> {
    if !session_dir.exists() {
        return Ok(Vec::new());
    }
    Ok(list_segments(session_dir)?
        .into_iter()
        .map(segment_name)
        .collect())
}

/// The claim a segment starts with, reading only that record: `None` when the segment does
/// not start with a whole, valid claim of its own epoch (a claimant that crashed before
/// its claim was written, or a copy still arriving).
fn read_claim(path: &Path, id: SegmentId) -> Result<Option<Vec<Seal>>, StoreError> {
    Ok(read_whole_claim(path, id)?.map(|c| c.seals))
}

/// [`read_claim`], and the records that follow the claim up to its
/// [`lead_end`](Claim::lead_end) must be whole too: a new generation whose restoring records
/// did not all reach the disk (a crash before its sync, a full disk, a copy still arriving)
/// does not count, and the generation before it still does.
fn read_whole_claim(path: &Path, id: SegmentId) -> Result<Option<Claim>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut head = [0u8; HEADER];
    let n = read_up_to(&file, &mut head, 0).map_err(io_err("read", path))?;
    if n < HEADER || u32_at(&head, 0) != !u32_at(&head, 4) {
        return Ok(None);
    }
    let len = u32_at(&head, 0) as usize;
    if !(FIXED..=MAX_RECORD).contains(&len) {
        return Ok(None);
    }
    let mut rec = vec![0u8; HEADER + len];
    let n = read_up_to(&file, &mut rec, 0).map_err(io_err("read", path))?;
    rec.truncate(n);
    let (claim, claim_end) = match next_record(&rec, 0) {
        Next::Rec(r) if r.kind == KIND_CLAIM && r.epoch == id.epoch => {
            match decode_claim(r.payload) {
                Some(c) => (c, r.end as u64),
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    if claim.lead_end <= claim_end {
        return Ok(Some(claim));
    }
    let Ok(lead_end) = usize::try_from(claim.lead_end) else {
        return Ok(None);
    };
    if file.metadata().map_err(io_err("stat", path))?.len() < claim.lead_end {
        return Ok(None);
    }
    let mut lead = vec![0u8; lead_end];
    if read_up_to(&file, &mut lead, 0).map_err(io_err("read", path))? < lead_end {
        return Ok(None);
    }
    let mut p = 0;
    while p < lead_end {
        match next_record(&lead, p) {
            Next::Rec(r) if r.epoch == id.epoch => p = r.end,
            _ => return Ok(None),
        }
    }
    Ok(Some(claim))
}

/// Where the whole records of a segment that start at `from` (a record boundary) end,
/// reading no further than `to` (its size as the caller saw it): the valid length that a
/// claim seals, a standby holds and replication ships up to (see "Preallocation"). Stops
/// at the first record that is not whole, torn or corrupt alike.
pub fn valid_len(file: &File, from: u64, to: u64) -> std::io::Result<u64> {
    // Most calls (a replication pass) find a few records and then zeros: read a page's
    // worth first and more only for a record that runs past it.
    let mut window = Vec::new();
    let mut at = from;
    while at < to {
        let avail = usize::try_from(to - at).unwrap_or(usize::MAX);
        let want = avail.min(4096.max(window.len()));
        window.resize(want, 0);
        let n = read_up_to(file, &mut window, at)?;
        window.truncate(n);
        let mut p = 0;
        let mut need = None;
        while p < window.len() {
            let rest = &window[p..];
            if rest.len() < HEADER {
                need = Some(HEADER);
                break;
            }
            let len = u32_at(rest, 0);
            if len != !u32_at(rest, 4) || !(FIXED..=MAX_RECORD).contains(&(len as usize)) {
                return Ok(at + p as u64);
            }
            let whole = HEADER + len as usize;
            if rest.len() < whole {
                need = Some(whole);
                break;
            }
            match next_record_at(&window[..p + whole], p, at) {
                Next::Rec(r) => p = r.end,
                _ => return Ok(at + p as u64),
            }
        }
        at += p as u64;
        match need {
            // The file ends inside this record.
            Some(need) if (need as u64) > to - at || n < want => return Ok(at),
            Some(need) => window = vec![0; need],
            None if n < want => return Ok(at),
            None => window.clear(),
        }
    }
    Ok(at)
}

/// [`valid_len`] of the whole segment file at `path`: where its records end, the file's
/// size including the zeros written ahead of them.
pub fn records_len(path: &Path) -> std::io::Result<u64> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    valid_len(&f, 0, size)
}

/// Fills `buf` from `at` as far as the file goes; returns how much was read.
fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = file.read_at(&mut buf[n..], at + n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Deletes the segments of one session directory that its newest segment's claim does not
/// name: how a standby's mirrored copy stays as small as the active's. Does nothing while
/// the newest segment's claim is not whole (still arriving): the claim before it may still
/// be the one an activation would start from: then `None`. Returns the file names deleted.
pub fn remove_unclaimed_segments(session_dir: &Path) -> Result<Option<Vec<String>>, StoreError> {
    let segs = list_segments(session_dir)?;
    let Some(&newest) = segs.last() else {
        return Ok(Some(Vec::new()));
    };
    let Some(seals) = read_claim(&session_dir.join(segment_name(newest)), newest)? else {
        return Ok(None);
    };
    let keep: Vec<SegmentId> = seals.iter().map(|s| s.seg).chain([newest]).collect();
    Ok(Some(remove_segments_except(session_dir, &segs, &keep)))
}

/// Deletes every segment of `segs` not in `keep`; a failure is logged, not returned (a file
/// left behind is only space: no claim names it).
fn remove_segments_except(dir: &Path, segs: &[SegmentId], keep: &[SegmentId]) -> Vec<String> {
    let mut removed = Vec::new();
    for s in segs.iter().filter(|s| !keep.contains(s)) {
        let path = dir.join(segment_name(*s));
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(segment_name(*s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "could not delete a segment no claim names any more"),
        }
    }
    removed
}

fn flock(file: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a valid, owned file descriptor has no memory-safety preconditions.
    let r = unsafe { libc::flock(file.as_raw_fd(), how) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Reads the fence epoch with one pread; a torn read (a concurrent writer mid-pwrite) is
/// retried, since the crc tells it apart from a stable value.
fn read_fence(file: &File, path: &Path) -> Result<u64, StoreError> {
    let mut last = String::new();
    for _ in 0..5 {
        let mut b = [0u8; FENCE_LEN];
        let mut n = 0;
        while n < FENCE_LEN {
            let r = file
                .read_at(&mut b[n..], n as u64)
                .map_err(io_err("read fence", path))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            return Ok(0);
        }
        if n == FENCE_LEN && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12] {
            return Ok(u64_at(&b, 0));
        }
        last = format!("fence record of {n} bytes fails its check");
        // A concurrent 12-byte pwrite finishes within microseconds.
        std::thread::yield_now();
    }
    Err(StoreError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        detail: last,
    })
}

fn write_fence(file: &File, path: &Path, epoch: u64) -> Result<(), StoreError> {
    let mut b = [0u8; FENCE_LEN];
    b[..8].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&b, 0)
        .map_err(io_err("write fence", path))?;
    file.sync_data().map_err(io_err("sync fence", path))
}

/// Where a stored message lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: SegmentId,
    offset: u64,
    len: usize,
}

/// State rebuilt by replaying records.
#[derive(Debug)]
struct State {
    next_sender: u64,
    next_target: u64,
    sent: BTreeMap<u64, Loc>,
    period: Option<i64>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_sender: 1,
            next_target: 1,
            sent: BTreeMap::new(),
            period: None,
        }
    }
}

impl State {
    fn apply(&mut self, segment: SegmentId, rec: &Rec<'_>) -> Result<(), String> {
        let need = |n: usize| {
            if rec.payload.len() < n {
                Err(format!("record kind {} payload too short", rec.kind))
            } else {
                Ok(())
            }
        };
        match rec.kind {
            KIND_CLAIM => {}
            KIND_NEXT_SENDER => {
                need(8)?;
                self.next_sender = u64_at(rec.payload, 0);
            }
            KIND_NEXT_TARGET => {
                need(8)?;
                self.next_target = u64_at(rec.payload, 0);
            }
            KIND_SENT => {
                need(8)?;
                let seq = u64_at(rec.payload, 0);
                self.sent.insert(
                    seq,
                    Loc {
                        segment,
                        offset: (rec.payload_off + 8) as u64,
                        len: rec.payload.len() - 8,
                    },
                );
                self.next_sender = seq.saturating_add(1);
            }
            KIND_RESET => {
                let period = self.period;
                *self = State::default();
                self.period = period;
            }
            KIND_SNAPSHOT => {
                let (period, target) = (self.period, self.next_target);
                *self = State::default();
                self.period = period;
                self.next_target = target;
                for (seq, off, len) in decode_snapshot(rec.payload)? {
                    self.sent.insert(
                        seq,
                        Loc {
                            segment,
                            offset: (rec.payload_off + off) as u64,
                            len,
                        },
                    );
                    self.next_sender = seq.saturating_add(1);
                }
            }
            KIND_PERIOD => {
                need(8)?;
                *self = State::default();
                self.period = Some(u64_at(rec.payload, 0) as i64);
            }
            k => return Err(format!("unknown record kind {k}")),
        }
        Ok(())
    }
}

/// The messages of a snapshot payload: (seq from 1, offset in the payload, length).
fn decode_snapshot(payload: &[u8]) -> Result<Vec<(u64, usize, usize)>, String> {
    let bad = || "snapshot record malformed".to_owned();
    if payload.len() < 4 {
        return Err(bad());
    }
    let n = u32_at(payload, 0) as usize;
    let mut out = Vec::with_capacity(n.min(payload.len() / 4));
    let mut p = 4usize;
    for seq in 1..=n as u64 {
        let len = payload
            .get(p..p + 4)
            .map(|_| u32_at(payload, p) as usize)
            .ok_or_else(bad)?;
        let start = p + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or_else(bad)?;
        out.push((seq, start, len));
        p = end;
    }
    if p != payload.len() {
        return Err(bad());
    }
    Ok(out)
}

/// One entry of a claim: an older segment and the length up to which it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seal {
    seg: SegmentId,
    len: u64,
    /// Replayed at open; otherwise history only (read only after a [`StoreMark`]).
    counted: bool,
}

/// A segment's first record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    seals: Vec<Seal>,
    /// Where the records that restore a new generation's state end (0: none follow the
    /// claim). The generation counts only once they are all whole.
    lead_end: u64,
}

/// Marks the claim format with generations, history entries and the lead's end.
const CLAIM_V2: u32 = u32::MAX;
const SEAL_V2: usize = 25;

fn decode_claim(payload: &[u8]) -> Option<Claim> {
    if payload.len() < 4 {
        return None;
    }
    let n = u32_at(payload, 0);
    if n == CLAIM_V2 {
        let n = u32_at(payload.get(4..8)?, 0) as usize;
        let entries = 8 + n.checked_mul(SEAL_V2)?;
        if payload.len() != entries + 8 {
            return None;
        }
        let lead_end = u64_at(payload, entries);
        let seals: Option<Vec<Seal>> = (0..n)
            .map(|i| {
                let at = 8 + SEAL_V2 * i;
                let counted = match payload[at + 24] {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                Some(Seal {
                    seg: SegmentId {
                        epoch: u64_at(payload, at),
                        generation: u64_at(payload, at + 8),
                    },
                    len: u64_at(payload, at + 16),
                    counted,
                })
            })
            .collect();
        return Some(Claim {
            seals: seals?,
            lead_end,
        });
    }
    let n = n as usize;
    if payload.len() != 4 + n.checked_mul(16)? {
        return None;
    }
    let seals = (0..n)
        .map(|i| Seal {
            seg: SegmentId {
                epoch: u64_at(payload, 4 + 16 * i),
                generation: 0,
            },
            len: u64_at(payload, 12 + 16 * i),
            counted: true,
        })
        .collect();
    Some(Claim { seals, lead_end: 0 })
}

/// The first format while it suffices, so stores without generations read as before.
fn encode_claim(claim: &Claim) -> Vec<u8> {
    let seals = &claim.seals;
    let mut p = Vec::new();
    if claim.lead_end == 0 && seals.iter().all(|s| s.counted && s.seg.generation == 0) {
        p.extend_from_slice(&(seals.len() as u32).to_le_bytes());
        for s in seals {
            p.extend_from_slice(&s.seg.epoch.to_le_bytes());
            p.extend_from_slice(&s.len.to_le_bytes());
        }
        return p;
    }
    p.extend_from_slice(&CLAIM_V2.to_le_bytes());
    p.extend_from_slice(&(seals.len() as u32).to_le_bytes());
    for s in seals {
        p.extend_from_slice(&s.seg.epoch.to_le_bytes());
        p.extend_from_slice(&s.seg.generation.to_le_bytes());
        p.extend_from_slice(&s.len.to_le_bytes());
        p.push(u8::from(s.counted));
    }
    p.extend_from_slice(&claim.lead_end.to_le_bytes());
    p
}

/// The fenced, append-only session store. See the module documentation for the format and
/// the fencing argument.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    epoch: u64,
    sync: SyncPolicy,
    fence: File,
    fence_path: PathBuf,
    /// Our segment (its name, and the file opened for pwrite and pread).
    seg: SegmentId,
    file: File,
    /// Length of our segment's records: only this handle writes it, so no stat is needed.
    end: u64,
    /// Size of our segment's file: `end`, then zeros written ahead (see "Preallocation").
    alloc_end: u64,
    path: PathBuf,
    /// Read handles of every segment our claim names, ours included, for resends and
    /// [`FileStore::for_each_sent_after`].
    readers: HashMap<SegmentId, File>,
    /// The entries of our segment's claim, oldest first.
    claim: Vec<Seal>,
    /// Bytes of the older segments that count (what the next open replays besides ours).
    counted_bytes: u64,
    /// See [`ROTATE_AFTER`].
    rotate_after: u64,
    /// The generation the next rotation creates: above every one of our epoch ever listed or
    /// tried, so a name a failed attempt used (and a standby may hold part of) is never
    /// written again with other contents.
    next_generation: u64,
    /// Lets a unit test act (a takeover, an I/O error) at the steps of a rotation.
    #[cfg(test)]
    rotate_hook: Option<tests::RotateHook>,
    state: State,
    report: RecoveryReport,
    scratch: Vec<u8>,
    dirty: bool,
    last_sync: Instant,
    /// [`SyncPolicy::Group`]: the syncer, a handle of our segment for it to `fdatasync`
    /// (opened separately, so the syncer keeping it for a pass does not keep our segment's
    /// lock after we are dropped), and the position of our last record.
    group: Option<(&'static GroupCommit, Arc<File>)>,
    last_pos: u64,
    /// Set once fenced: every later call is refused without touching the disk.
    fenced: Option<u64>,
    /// The fence is read per turn, not per record (see [`FileStore::defer_fence_checks`]).
    turn_fencing: bool,
    /// This turn's first append read the fence.
    pre_checked: bool,
    /// Written since the last [`FileStore::verify_fence`].
    unverified: bool,
    poisoned: bool,
}

impl FileStore {
    /// Opens (creating if needed) the store of `session` under `dir` as the writer of
    /// `epoch`: claims the fence, replays every sealed segment and creates this epoch's
    /// segment (or reopens it, cutting off a torn tail). Refused with
    /// [`StoreError::Fenced`] if the store has seen a newer epoch.
    pub fn open(
        dir: &Path,
        session: &SessionId,
        epoch: u64,
        sync: SyncPolicy,
    ) -> Result<FileStore, StoreError> {
        // A writer of the newest segment that is still running (a shared directory, a
        // takeover from a live active) may be inside a `pwrite` as we read: records are
        // written over zeros, so the copy can show a later part of a record before an
        // earlier one, which reads as corruption; a moment later it is whole. An open only
        // writes the fence (the same epoch again) before it replays, so it can start over.
        let mut retries = OPEN_RETRIES;
        loop {
            match Self::open_once(dir, session, epoch, sync) {
                Err(StoreError::Corrupt {
                    path,
                    offset,
                    detail,
                }) if retries > 0 => {
                    tracing::warn!(path = %path.display(), offset, detail = %detail,
                        "session store segment unreadable; reading it again in case its writer was mid-write");
                    retries -= 1;
                    pause(OPEN_RETRY_PAUSE);
                    #[cfg(test)]
                    tests::OPEN_RETRY_HOOK.with(|h| {
                        if let Some(f) = h.borrow_mut().as_mut() {
                            f();
                        }
                    });
                }
                other => return other,
            }
        }
    }

    fn open_once(
        dir: &Path,
        session: &SessionId,
        epoch: u64,
        sync: SyncPolicy,
    ) -> Result<FileStore, StoreError> {
        let dir = dir.join(session.dir_name());
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let fence_path = dir.join("fence");
        let fence = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&fence_path)
            .map_err(io_err("open", &fence_path))?;

        // 1. Claim the fence.
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match flock(&fence, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => break,
                Err(e) if would_block(&e) && Instant::now() < deadline => lock_backoff(),
                Err(e) if would_block(&e) => return Err(StoreError::LockTimeout(fence_path)),
                Err(e) => return Err(io_err("lock", &fence_path)(e)),
            }
        }
        let claimed = (|| {
            let segs = list_segments(&dir)?;
            let newest = read_fence(&fence, &fence_path)?.max(segs.last().map_or(0, |s| s.epoch));
            if newest > epoch {
                return Err(StoreError::Fenced {
                    ours: epoch,
                    newest,
                });
            }
            if newest < epoch || read_fence(&fence, &fence_path)? != epoch {
                write_fence(&fence, &fence_path, epoch)?;
            }
            Ok(())
        })();
        let _ = flock(&fence, libc::LOCK_UN);
        claimed?;

        // 2. Replay. Segments are listed only now, after our fence write, so that every
        //    record an older writer got acknowledged is already in its segment.
        let segs = list_segments(&dir)?;
        let mut report = RecoveryReport::default();
        let mut readers = HashMap::new();
        let mut state = State::default();

        // The newest segment with a valid claim decides which older segments count.
        let mut base: Option<(SegmentId, Vec<Seal>)> = None;
        for &id in segs.iter().rev() {
            if id.epoch > epoch {
                continue;
            }
            if let Some(seals) = read_claim(&dir.join(segment_name(id)), id)? {
                base = Some((id, seals));
                break;
            }
        }

        let mut seals_out = Vec::new();
        let mut own: Option<(SegmentId, u64)> = None;
        if let Some((newest, seals)) = base {
            for seal in &seals {
                let path = dir.join(segment_name(seal.seg));
                if !seal.counted {
                    // History only: nothing depends on it at open, so a copy without it
                    // still opens (a mark into it then reads what is left).
                    match File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f))) {
                        Ok((len, f)) if len >= seal.len => {
                            readers.insert(seal.seg, f);
                            seals_out.push(*seal);
                        }
                        Ok((len, _)) => tracing::warn!(path = %path.display(), len,
                            kept = seal.len, "history segment shorter than its claim says; not read"),
                        Err(e) => tracing::warn!(path = %path.display(), error = %e,
                            "history segment missing; not read"),
                    }
                    continue;
                }
                let file = File::open(&path).map_err(io_err("open", &path))?;
                let limit = usize::try_from(seal.len).unwrap_or(usize::MAX);
                let mut bytes = vec![0u8; limit];
                let got = read_up_to(&file, &mut bytes, 0).map_err(io_err("read", &path))?;
                if got < limit {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: got as u64,
                        detail: format!("sealed at {limit} bytes but shorter"),
                    });
                }
                replay(&bytes, seal.seg, &path, &mut state, &mut report, false)?;
                report.bytes_replayed += limit as u64;
                readers.insert(seal.seg, file);
                seals_out.push(*seal);
            }
            let path = dir.join(segment_name(newest));
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
            let end = replay(&bytes, newest, &path, &mut state, &mut report, true)?;
            report.bytes_replayed += end as u64;
            // The zeros a writer keeps ahead of its records are no tear.
            let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            report.torn_tail_bytes = written.saturating_sub(end) as u64;
            if report.torn_tail_bytes > 0 {
                tracing::warn!(
                    path = %path.display(),
                    bytes = report.torn_tail_bytes,
                    "ignoring torn record at the end of a session store segment"
                );
            }
            if newest.epoch == epoch {
                own = Some((newest, end as u64));
            } else {
                // Sealed from what the page cache holds: a writer killed before its pass
                // leaves records no fdatasync covered yet, and a machine crash after our
                // claim would leave the segment shorter than its seal (corrupt at the next
                // open). So they are made durable before the claim names them.
                file.sync_data().map_err(io_err("sync", &path))?;
                seals_out.push(Seal {
                    seg: newest,
                    len: end as u64,
                    counted: true,
                });
            }
            readers.insert(newest, file);
        }

        // 3. Our segment.
        let seg = own.map_or(
            SegmentId {
                epoch,
                generation: 0,
            },
            |(id, _)| id,
        );
        let path = dir.join(segment_name(seg));
        let seg_end: u64;
        let file = match own {
            Some((_, end)) => {
                seg_end = end;
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                lock_segment(&f, &path)?;
                // Only this epoch writes here, so cutting its torn tail (and the zeros written
                // ahead, written again as records need them) cannot race anyone.
                f.set_len(end).map_err(io_err("truncate", &path))?;
                f.sync_all().map_err(io_err("sync", &path))?;
                report.reopened = true;
                f
            }
            None => {
                // A segment file without a valid claim is one a crashed claimant of this
                // epoch left before writing anything: start it again.
                let (f, len, _) = create_segment(&dir, &path, epoch, &seals_out, &[], false)?;
                seg_end = len;
                f
            }
        };
        let reader = File::open(&path).map_err(io_err("open", &path))?;
        readers.insert(seg, reader);
        let group = match sync {
            SyncPolicy::Group => Some((
                GroupCommit::shared().map_err(io_err("start the syncer for", &path))?,
                Arc::new(File::open(&path).map_err(io_err("open", &path))?),
            )),
            _ => None,
        };
        seals_out.sort_unstable_by_key(|s| s.seg);
        let counted_bytes = seals_out.iter().filter(|s| s.counted).map(|s| s.len).sum();
        report.segments = std::iter::once(seg)
            .chain(seals_out.iter().filter(|s| s.counted).map(|s| s.seg))
            .map(|s| s.epoch)
            .collect();
        report.segments.sort_unstable();

        let mut store = FileStore {
            dir,
            epoch,
            sync,
            fence,
            fence_path,
            seg,
            file,
            end: seg_end,
            alloc_end: seg_end,
            path,
            readers,
            claim: seals_out,
            counted_bytes,
            rotate_after: ROTATE_AFTER,
            next_generation: segs
                .iter()
                .filter(|s| s.epoch == epoch)
                .map(|s| s.generation)
                .chain([seg.generation])
                .max()
                .unwrap_or(0)
                + 1,
            #[cfg(test)]
            rotate_hook: None,
            state,
            report,
            scratch: Vec::with_capacity(1024),
            dirty: false,
            last_sync: Instant::now(),
            group,
            last_pos: 0,
            fenced: None,
            turn_fencing: false,
            pre_checked: false,
            unverified: false,
            poisoned: false,
        };
        // A newer claimant may have come and gone while we replayed.
        store.check_fence_readonly()?;
        // Only now: a claimant that wrote the fence after the check above lists segments
        // after it too, finds our claim durable, and needs nothing it does not name.
        let keep = store.named_segments();
        store.report.removed = remove_segments_except(&store.dir, &segs, &keep);
        Ok(store)
    }

    /// The epoch this handle writes with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The session's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery found when the store was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    fn check_fence_readonly(&self) -> Result<(), StoreError> {
        let newest = read_fence(&self.fence, &self.fence_path)?.max(super::newer_epoch_elsewhere());
        if newest > self.epoch {
            return Err(StoreError::Fenced {
                ours: self.epoch,
                newest,
            });
        }
        Ok(())
    }

    /// Re-reads the fence (one pread) and refuses if a newer epoch has claimed the store.
    pub fn check_fence(&mut self) -> Result<(), StoreError> {
        if let Some(newest) = self.fenced {
            return Err(StoreError::Fenced {
                ours: self.epoch,
                newest,
            });
        }
        match self.check_fence_readonly() {
            Err(StoreError::Fenced { ours, newest }) => {
                self.fenced = Some(newest);
                Err(StoreError::Fenced { ours, newest })
            }
            other => other,
        }
    }

    fn append(&mut self, kind: u8, payload: &[u8]) -> Result<(), StoreError> {
        self.append_all(&[(kind, payload)])
    }

    /// Appends `records` with one `write`, so they land contiguously and cost one system
    /// call (and one fence check each side) however many there are.
    fn append_all(&mut self, records: &[(u8, &[u8])]) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if !(self.turn_fencing && self.pre_checked) {
            self.check_fence()?;
            self.pre_checked = true;
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        let written = records
            .iter()
            .try_for_each(|(kind, payload)| encode_record(&mut rec, self.epoch, *kind, payload));
        let rec_len = rec.len() as u64;
        let written = written.and_then(|()| self.write_at_end(&rec));
        self.scratch = rec;
        if let Err(e) = written {
            // A partial record may now sit at the end; writing after it would bury it.
            if !matches!(e, StoreError::TooLarge(_)) {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.end += rec_len;
        self.dirty = true;
        match self.sync {
            SyncPolicy::EveryWrite => self.sync()?,
            SyncPolicy::Batch { max_delay } => {
                if self.last_sync.elapsed() >= max_delay {
                    self.sync()?;
                }
            }
            SyncPolicy::Group => {
                if let Some((g, f)) = &self.group {
                    self.last_pos = g.wrote(f);
                }
            }
        }
        if self.turn_fencing {
            self.unverified = true;
            return Ok(());
        }
        self.check_fence()
    }

    /// Writes `rec` (whole records) at `end` with one `pwrite`, then, when they reached past
    /// the zeros written ahead, the next chunk of zeros (see "Preallocation"). Those zeros
    /// are best effort: a full disk that took the records but not them is no error (the next
    /// record that reaches past them tries again).
    fn write_at_end(&mut self, rec: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(rec, self.end)
            .map_err(io_err("write", &self.path))?;
        let reach = self.end + rec.len() as u64;
        if reach <= self.alloc_end {
            return Ok(());
        }
        self.alloc_end = reach;
        let chunk = (self.rotate_after / 4).clamp(4096, PREALLOC);
        let upto = (reach + chunk).div_ceil(4096) * 4096;
        while self.alloc_end < upto {
            let n =
                usize::try_from(upto - self.alloc_end).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            if let Err(e) = self.file.write_all_at(&ZEROS[..n], self.alloc_end) {
                tracing::warn!(store = %self.dir.display(), error = %e,
                    "could not write zeros ahead of the store's records; the next record tries again");
                // Part of them may be written: only what the file is known to hold counts.
                if let Ok(m) = self.file.metadata() {
                    self.alloc_end = self.alloc_end.max(m.len());
                }
                break;
            }
            self.alloc_end += n as u64;
        }
        Ok(())
    }

    /// Reads the fence once per event-loop turn instead of around every record (see the
    /// module documentation): the caller must call [`verify_fence`](Self::verify_fence)
    /// after each turn's writes and before anything that depends on them leaves. Only under
    /// group commit, where nothing leaves before the engine says so; a no-op otherwise.
    pub fn defer_fence_checks(&mut self) {
        self.turn_fencing = self.sync == SyncPolicy::Group;
    }

    /// Ends a turn: reads the fence if anything was written since the last call
    /// ([`StoreError::Fenced`] if it moved), and makes the next append read it first.
    pub fn verify_fence(&mut self) -> Result<(), StoreError> {
        self.pre_checked = false;
        if std::mem::take(&mut self.unverified) {
            return self.check_fence();
        }
        Ok(())
    }

    /// Stores `frames` as sent messages numbered from the next sender number on, with one
    /// `write` (see [`SessionStore::save_sent`] for one).
    pub fn save_sent_all(&mut self, frames: &[Vec<u8>]) -> Result<(), StoreError> {
        let first = self.state.next_sender;
        self.save_sent_from(first, frames.iter().map(Vec::as_slice))
    }

    /// Stores `frames` as sent messages numbered from `first` on, with one `write`, and
    /// indexes each where its frame lies in our segment.
    fn save_sent_from<'f>(
        &mut self,
        first: u64,
        frames: impl Iterator<Item = &'f [u8]>,
    ) -> Result<(), StoreError> {
        let payloads = sent_payloads(frames, first);
        let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (KIND_SENT, &p[..])).collect();
        let mut at = self.end;
        self.append_all(&records)?;
        for (p, seq) in payloads.iter().zip(first..) {
            self.state.sent.insert(
                seq,
                Loc {
                    segment: self.seg,
                    offset: at + (HEADER + FIXED + 8) as u64,
                    len: p.len() - 8,
                },
            );
            self.state.next_sender = seq.saturating_add(1);
            at += (HEADER + FIXED + p.len()) as u64;
        }
        Ok(())
    }

    /// Where the next record will go: records written before the mark lie before it, in an
    /// older segment or earlier in this one, whatever resets came between.
    pub fn mark(&self) -> StoreMark {
        StoreMark {
            segment: self.seg.epoch,
            generation: self.seg.generation,
            offset: self.end,
        }
    }

    /// Calls `f` with each stored message of the current period, in sequence order.
    pub fn for_each_sent(&self, mut f: impl FnMut(&[u8])) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for loc in self.state.sent.values() {
            let Some(file) = self.readers.get(&loc.segment) else {
                continue;
            };
            buf.resize(loc.len, 0);
            file.read_exact_at(&mut buf, loc.offset)
                .map_err(io_err("read", &self.dir.join(segment_name(loc.segment))))?;
            f(&buf);
        }
        Ok(())
    }

    /// Calls `f` with each message stored after `mark`, in the order written, read from the
    /// records themselves: a message a later reset (of the sequence numbers or the period)
    /// or a reused sequence number dropped from the store's index is still found. Only
    /// what our claim names is read: older segments up to their seals (the generation a
    /// reset superseded included), ours up to its end. A mark older than all of that (a
    /// store reset twice since, by size: see "Generations") reads what is left, with a
    /// warning.
    pub fn for_each_sent_after(
        &self,
        mark: StoreMark,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        let at = SegmentId {
            epoch: mark.segment,
            generation: mark.generation,
        };
        let mine = Seal {
            seg: self.seg,
            len: self.end,
            counted: true,
        };
        let named: Vec<Seal> = self.claim.iter().copied().chain([mine]).collect();
        if named.iter().all(|s| s.seg > at) {
            tracing::warn!(store = %self.dir.display(), mark = %at, oldest = %named[0].seg,
                "a checkpoint mark predates every segment kept; reading all that is left");
        }
        for &Seal {
            seg: e, len: limit, ..
        } in &named
        {
            if e < at {
                continue;
            }
            let from = if e == at { mark.offset } else { 0 };
            if from >= limit {
                continue;
            }
            let Some(file) = self.readers.get(&e) else {
                continue;
            };
            let path = self.dir.join(segment_name(e));
            let len =
                usize::try_from(limit - from).map_err(|_| StoreError::TooLarge(usize::MAX))?;
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, from)
                .map_err(io_err("read", &path))?;
            let mut p = 0;
            loop {
                match next_record(&bytes, p) {
                    Next::End => break,
                    Next::Rec(r) => {
                        if r.kind == KIND_SENT && r.payload.len() >= 8 {
                            f(&r.payload[8..]);
                        }
                        p = r.end;
                    }
                    // A mark is always where a record started, and what counts was checked
                    // when the store was opened: anything else is corruption since.
                    Next::Torn | Next::Corrupt(_) => {
                        return Err(StoreError::Corrupt {
                            path,
                            offset: from + p as u64,
                            detail: "record unreadable after a checkpoint mark".into(),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Forces unsynced records to disk (with [`SyncPolicy::Group`]: waits until the syncer
    /// has made them durable).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if let Some((g, _)) = &self.group {
            if let Err(e) = g.wait_durable(self.last_pos) {
                self.poisoned = true;
                return Err(StoreError::SyncFailed(e));
            }
            self.dirty = false;
            return Ok(());
        }
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(io_err("sync", &self.path)(e));
            }
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Replaces every stored message by `msgs`, numbered from 1 (the next sender number
    /// becomes `msgs.len() + 1`; the period and the target number are kept), in one record,
    /// or in a new generation when they are too many for one: a crash leaves either the old
    /// contents or the new. How a store used as a log of records (the gateway's order map) is
    /// compacted.
    pub fn replace_sent(&mut self, msgs: &[Vec<u8>]) -> Result<(), StoreError> {
        let total: usize = msgs.iter().map(|m| 4 + m.len()).sum();
        if FIXED + 4 + total > MAX_RECORD {
            return self.replace_sent_by_generation(msgs);
        }
        let mut payload = Vec::with_capacity(4 + total);
        let n = u32::try_from(msgs.len()).map_err(|_| StoreError::TooLarge(total))?;
        payload.extend_from_slice(&n.to_le_bytes());
        for m in msgs {
            let len = u32::try_from(m.len()).map_err(|_| StoreError::TooLarge(m.len()))?;
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(m);
        }
        let start = self.write_full_state(KIND_SNAPSHOT, &payload)?;
        // Each frame follows its `[len u32]`, after the record's header and `[count u32]`.
        let mut at = start + (HEADER + FIXED + 4) as u64;
        self.restart_with(msgs.iter().map(|m| {
            let frame = at + 4;
            at = frame + m.len() as u64;
            (frame, m.len())
        }));
        Ok(())
    }

    /// The state after a snapshot: the period and the target number kept; the messages are
    /// the frames lying in our segment at `frames` (offset, length), numbered from 1.
    fn restart_with(&mut self, frames: impl IntoIterator<Item = (u64, usize)>) {
        let target = self.state.next_target;
        let period = self.state.period;
        self.state = State::default();
        self.state.next_target = target;
        self.state.period = period;
        for (seq, (offset, len)) in (1u64..).zip(frames) {
            let segment = self.seg;
            self.state.sent.insert(
                seq,
                Loc {
                    segment,
                    offset,
                    len,
                },
            );
            self.state.next_sender = seq + 1;
        }
    }

    /// [`replace_sent`](Self::replace_sent) for messages too many for one record: a new
    /// generation whose lead holds each as a record of its own. It counts only once they are
    /// all whole (see [`Claim::lead_end`]), so a crash still leaves the old contents or the new.
    fn replace_sent_by_generation(&mut self, msgs: &[Vec<u8>]) -> Result<(), StoreError> {
        let payloads = sent_payloads(msgs.iter().map(Vec::as_slice), 1);
        let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (KIND_SENT, &p[..])).collect();
        let starts = self.rotate(KIND_SNAPSHOT, &records)?;
        self.restart_with(
            starts
                .into_iter()
                .zip(msgs)
                .map(|(start, m)| (start + (HEADER + FIXED + 8) as u64, m.len())),
        );
        Ok(())
    }

    /// Sets the counted size from which a reset starts a new generation (default
    /// [`ROTATE_AFTER`]; tests use a small one).
    pub fn set_rotate_after(&mut self, bytes: u64) {
        self.rotate_after = bytes;
    }

    /// The segment this handle writes.
    pub fn segment(&self) -> SegmentId {
        self.seg
    }

    /// Our segment and every segment its claim names: all that a reader of this store can
    /// need.
    fn named_segments(&self) -> Vec<SegmentId> {
        self.claim.iter().map(|s| s.seg).chain([self.seg]).collect()
    }

    /// Writes a record after which nothing earlier counts (`kind` is a reset, a new period or
    /// a snapshot): appended, or, once the counted bytes reach the rotation size, as the
    /// first record after the claim of a new generation. Returns where the record starts.
    fn write_full_state(&mut self, kind: u8, payload: &[u8]) -> Result<u64, StoreError> {
        if self.counted_bytes.saturating_add(self.end) < self.rotate_after {
            let start = self.end;
            self.append(kind, payload)?;
            return Ok(start);
        }
        Ok(self.rotate(kind, &[(kind, payload)])?[0])
    }

    /// Starts our segment's next generation with `records`, preceded by what a record of
    /// `kind` does not reset itself (the period; for a snapshot, the target number), then
    /// deletes every segment except it and the one it supersedes (see "Generations" in the
    /// module docs). Returns where each of `records` starts.
    fn rotate(&mut self, kind: u8, records: &[(u8, &[u8])]) -> Result<Vec<u64>, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.check_fence()?;
        // The old generation stays readable as history: what it holds is made durable now,
        // so after a machine crash it is not shorter than the history entry below. Under
        // group commit by an `fdatasync` of our own, not a wait for the syncer: its pass may
        // wait up to `sync_timeout` for a standby's acknowledgement, and this runs on the
        // event loop (a reset, an order-map compaction). What the pass would ship the next
        // one does; the records' positions still become durable through the syncer.
        if self.group.is_some() {
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(io_err("sync", &self.path)(e));
            }
        } else {
            self.sync()?;
        }
        let old = self.seg;
        let next = SegmentId {
            epoch: old.epoch,
            generation: self.next_generation,
        };
        self.next_generation += 1;
        let period = self.state.period.map(|p| p.to_le_bytes());
        let target = self.state.next_target.to_le_bytes();
        let mut first: Vec<(u8, &[u8])> = Vec::new();
        if let (Some(p), KIND_RESET | KIND_SNAPSHOT) = (&period, kind) {
            first.push((KIND_PERIOD, p));
        }
        if kind == KIND_SNAPSHOT && self.state.next_target != 1 {
            first.push((KIND_NEXT_TARGET, &target));
        }
        // History: the superseded generation and what it counted (a takeover's predecessor),
        // so that an order-map checkpoint taken before a takeover and this reset still reads
        // what followed it.
        let history: Vec<Seal> = self
            .claim
            .iter()
            .filter(|s| s.counted)
            .map(|s| Seal {
                counted: false,
                ..*s
            })
            .chain([Seal {
                seg: old,
                len: self.end,
                counted: false,
            }])
            .collect();
        let path = self.dir.join(segment_name(next));
        let lead = first.len();
        first.extend_from_slice(records);
        // Listed before the fence read that allows deleting: every segment a claimant could
        // need is then newer than `old` or named by `history` (see "Generations").
        let listed = list_segments(&self.dir);
        // From here on a failure may leave the new generation whole on disk, and the next
        // open would start from it: nothing more may be written to the old one. What is left
        // keeps its name (see `next_generation`), and the next claim settles what counts.
        let created = create_segment(&self.dir, &path, self.epoch, &history, &first, true)
            .and_then(|(file, end, starts)| {
                let reader = File::open(&path).map_err(io_err("open", &path))?;
                let handle = match self.group {
                    Some(_) => Some(Arc::new(File::open(&path).map_err(io_err("open", &path))?)),
                    None => None,
                };
                #[cfg(test)]
                if let Some(h) = &self.rotate_hook {
                    (h.0)(tests::RotateStage::Created)?;
                }
                Ok((file, end, starts, reader, handle))
            });
        let (file, end, mut starts, reader, handle) = match created {
            Ok(c) => c,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        // Read after the new generation is durable: a claimant that writes the fence later
        // lists the segments later, finds it, and needs nothing deleted below. One that wrote
        // it earlier may already count the new generation: it stays, and nothing is deleted.
        self.check_fence()?;
        #[cfg(test)]
        if let Some(h) = &self.rotate_hook {
            (h.0)(tests::RotateStage::Checked)?;
        }
        if let (Some((_, h)), Some(new)) = (&mut self.group, handle) {
            *h = new;
        }
        self.readers
            .retain(|s, _| history.iter().any(|h| h.seg == *s));
        self.readers.insert(next, reader);
        self.seg = next;
        self.file = file;
        self.path = path;
        self.end = end;
        self.alloc_end = end;
        self.claim = history;
        self.counted_bytes = 0;
        self.dirty = false;
        self.last_sync = Instant::now();
        if self.turn_fencing {
            self.pre_checked = true;
            self.unverified = true;
        }
        tracing::info!(store = %self.dir.display(), segment = %next,
            "session store started a new generation");
        // Only what is older than the superseded generation and not history, from the
        // listing made before the fence read: never a newer epoch's segment.
        match listed {
            Ok(segs) => {
                let keep = self.named_segments();
                let stale: Vec<SegmentId> = segs.into_iter().filter(|s| *s < old).collect();
                remove_segments_except(&self.dir, &stale, &keep);
            }
            Err(e) => tracing::warn!(store = %self.dir.display(), error = %e,
                "could not list the segments a new generation supersedes"),
        }
        Ok(starts.split_off(lead))
    }

    /// Under [`SyncPolicy::Batch`], syncs if records have waited `max_delay`; call it from
    /// a timer so an idle session still honours the bound.
    pub fn sync_if_due(&mut self) -> Result<(), StoreError> {
        if let Some((g, _)) = &self.group {
            // Records nobody asked a pass for wait at most one call of this (the engine's
            // tick).
            if let Some(f) = g.failure() {
                self.poisoned = true;
                return Err(StoreError::SyncFailed(f));
            }
            g.request(self.last_pos);
            return Ok(());
        }
        if let SyncPolicy::Batch { max_delay } = self.sync {
            if self.dirty && self.last_sync.elapsed() >= max_delay {
                return self.sync();
            }
        }
        Ok(())
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        // Records of a store nobody will tick any more still become durable.
        if let Some((g, _)) = &self.group {
            g.request(self.last_pos);
        }
    }
}

/// The payloads of sent-message records for `frames` numbered from `first`: `[seq u64]`
/// then the frame.
fn sent_payloads<'f>(frames: impl Iterator<Item = &'f [u8]>, first: u64) -> Vec<Vec<u8>> {
    frames
        .zip(first..)
        .map(|(f, seq)| {
            let mut p = Vec::with_capacity(8 + f.len());
            p.extend_from_slice(&seq.to_le_bytes());
            p.extend_from_slice(f);
            p
        })
        .collect()
}

/// Creates (or starts again) the segment at `path`, locked, holding a claim of `seals` and
/// then `records` (the claim says where they end: see [`Claim::lead_end`]), durable with its
/// directory entry. `exclusive`: refused if the file exists (a new generation's name is never
/// used twice); otherwise an existing file is started again (a crashed claimant's). Returns
/// it, opened for writing at its end, its length, and where each of `records` starts.
fn create_segment(
    dir: &Path,
    path: &Path,
    epoch: u64,
    seals: &[Seal],
    records: &[(u8, &[u8])],
    exclusive: bool,
) -> Result<(File, u64, Vec<u64>), StoreError> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).custom_flags(libc::O_CLOEXEC);
    if exclusive {
        opts.create_new(true);
    } else {
        opts.create(true);
    }
    let f = opts.open(path).map_err(io_err("create", path))?;
    lock_segment(&f, path)?;
    f.set_len(0).map_err(io_err("truncate", path))?;
    let mut tail = Vec::new();
    let mut starts = Vec::with_capacity(records.len());
    for (k, p) in records {
        starts.push(tail.len() as u64);
        encode_record(&mut tail, epoch, *k, p)?;
    }
    // Measured in its final format: a claim with a lead is always of the second one, whose
    // length does not depend on the lead's end.
    let mut claim = Claim {
        seals: seals.to_vec(),
        lead_end: u64::from(!records.is_empty()),
    };
    let claim_len = (HEADER + FIXED + encode_claim(&claim).len()) as u64;
    if !records.is_empty() {
        claim.lead_end = claim_len + tail.len() as u64;
    }
    let mut rec = Vec::with_capacity(claim_len as usize + tail.len());
    encode_record(&mut rec, epoch, KIND_CLAIM, &encode_claim(&claim))?;
    debug_assert_eq!(rec.len() as u64, claim_len);
    rec.extend_from_slice(&tail);
    f.write_all_at(&rec, 0).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    for s in &mut starts {
        *s += claim_len;
    }
    Ok((f, rec.len() as u64, starts))
}

/// Waits a little before retrying a non-blocking `flock`.
fn lock_backoff() {
    pause(Duration::from_millis(1));
}

/// The store is blocking file-system code (async callers run it on a blocking thread); this
/// waits on another process (holding a kernel lock, finishing a write), not on a timer that
/// simulated time should reach, and the kernel offers no wait of its own for either.
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn lock_segment(f: &File, path: &Path) -> Result<(), StoreError> {
    match flock(f, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(()),
        Err(e) if would_block(&e) => Err(StoreError::InUse(path.to_owned())),
        Err(e) => Err(io_err("lock", path)(e)),
    }
}

/// Applies the records of one segment. With `tail_ok` an incomplete last record is allowed
/// (and excluded); without it the bytes must be whole records. Returns the end of the last
/// valid record.
fn replay(
    bytes: &[u8],
    segment: SegmentId,
    path: &Path,
    state: &mut State,
    report: &mut RecoveryReport,
    tail_ok: bool,
) -> Result<usize, StoreError> {
    let mut p = 0;
    let corrupt = |offset: usize, detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        detail,
    };
    loop {
        match next_record(bytes, p) {
            Next::End => return Ok(p),
            Next::Torn if tail_ok => return Ok(p),
            Next::Torn => return Err(corrupt(p, "incomplete record inside a sealed range".into())),
            Next::Corrupt(d) => return Err(corrupt(p, d)),
            Next::Rec(r) => {
                if r.epoch != segment.epoch {
                    return Err(corrupt(
                        p,
                        format!("record of epoch {} in segment {segment}", r.epoch),
                    ));
                }
                if p == 0 && r.kind != KIND_CLAIM {
                    return Err(corrupt(p, "segment does not start with a claim".into()));
                }
                state.apply(segment, &r).map_err(|d| corrupt(p, d))?;
                report.records += 1;
                p = r.end;
            }
        }
    }
}

impl SessionStore for FileStore {
    fn next_sender_seq(&self) -> u64 {
        self.state.next_sender
    }

    fn next_target_seq(&self) -> u64 {
        self.state.next_target
    }

    fn set_next_sender_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.append(KIND_NEXT_SENDER, &seq.to_le_bytes())?;
        self.state.next_sender = seq;
        Ok(())
    }

    fn set_next_target_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.append(KIND_NEXT_TARGET, &seq.to_le_bytes())?;
        self.state.next_target = seq;
        Ok(())
    }

    fn save_sent(&mut self, seq: u64, frame: &[u8]) -> Result<(), StoreError> {
        self.save_sent_from(seq, std::iter::once(frame))
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
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (&seq, loc) in self.state.sent.range(begin..=end) {
            if bytes >= max_bytes {
                break;
            }
            let Some(f) = self.readers.get(&loc.segment) else {
                continue;
            };
            // Only what is returned counts: "fewer bytes than asked" means the range is done.
            bytes = bytes.saturating_add(loc.len);
            let mut buf = vec![0u8; loc.len];
            f.read_exact_at(&mut buf, loc.offset)
                .map_err(io_err("read", &self.dir.join(segment_name(loc.segment))))?;
            out.push((seq, buf));
        }
        Ok(out)
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        self.write_full_state(KIND_RESET, &[])?;
        let period = self.state.period;
        self.state = State::default();
        self.state.period = period;
        Ok(())
    }

    fn period(&self) -> Option<i64> {
        self.state.period
    }

    fn reset_for_period(&mut self, start: i64) -> Result<(), StoreError> {
        self.write_full_state(KIND_PERIOD, &start.to_le_bytes())?;
        self.state = State::default();
        self.state.period = Some(start);
        Ok(())
    }

    fn check_fence(&mut self) -> Result<(), StoreError> {
        FileStore::check_fence(self)
    }

    fn sync_if_due(&mut self) -> Result<(), StoreError> {
        FileStore::sync_if_due(self)
    }

    fn unsynced_position(&self) -> Option<u64> {
        self.group.as_ref().map(|(g, _)| g.written())
    }

    fn mark(&self) -> Option<StoreMark> {
        Some(FileStore::mark(self))
    }

    fn replay_bytes(&self) -> Option<u64> {
        Some(self.counted_bytes.saturating_add(self.end))
    }

    fn defer_fence_checks(&mut self) {
        FileStore::defer_fence_checks(self)
    }

    fn verify_fence(&mut self) -> Result<(), StoreError> {
        FileStore::verify_fence(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::BeginString;
    use std::sync::Mutex;

    /// Where a rotation calls its test hook.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum RotateStage {
        /// The new generation is durable; the fence not read again yet.
        Created,
        /// The fence was read again and is still ours; nothing deleted yet.
        Checked,
    }

    type HookFn = dyn Fn(RotateStage) -> Result<(), StoreError> + Send + Sync;

    #[derive(Clone)]
    pub(super) struct RotateHook(pub(super) Arc<HookFn>);

    impl std::fmt::Debug for RotateHook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RotateHook")
        }
    }

    fn sid() -> SessionId {
        SessionId::new(BeginString::Fix44, "GW", "C")
    }

    fn frame(seq: u64) -> Vec<u8> {
        format!("8=FIX.4.4\x0135=8\x0134={seq}\x01").into_bytes()
    }

    /// A writer of epoch 1 with five messages whose next new period starts a generation, and
    /// a slot for the claimant a hook starts at `stage`, which then stores messages 6 to 8.
    fn rotation_with_takeover_at(
        dir: &Path,
        stage: RotateStage,
    ) -> (FileStore, Arc<Mutex<Option<FileStore>>>) {
        let mut w = FileStore::open(dir, &sid(), 1, SyncPolicy::EveryWrite).expect("writer");
        for seq in 1..=5 {
            w.save_sent(seq, &frame(seq)).expect("save");
        }
        w.set_rotate_after(1);
        let claimant = Arc::new(Mutex::new(None));
        let (slot, root) = (claimant.clone(), dir.to_owned());
        w.rotate_hook = Some(RotateHook(Arc::new(move |at| {
            if at == stage {
                let mut c =
                    FileStore::open(&root, &sid(), 2, SyncPolicy::EveryWrite).expect("claimant");
                let first = c.next_sender_seq();
                for seq in first..first + 3 {
                    c.save_sent(seq, &frame(seq)).expect("claimant's record");
                }
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
            }
            Ok(())
        })));
        (w, claimant)
    }

    /// A takeover right after the rotating writer read the fence (a writer stopped there
    /// and resumed): the writer's clean-up deletes nothing the claimant wrote, and a third
    /// epoch sees the claimant's records.
    #[test]
    fn a_writer_resuming_after_its_fence_read_deletes_nothing_newer() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut w, claimant) = rotation_with_takeover_at(tmp.path(), RotateStage::Checked);
        w.reset_for_period(1_800_000_000)
            .expect("the writer saw its fence");
        drop(w);
        drop(claimant.lock().unwrap_or_else(|e| e.into_inner()).take());
        let third = FileStore::open(tmp.path(), &sid(), 3, SyncPolicy::EveryWrite).expect("3");
        assert_eq!(
            third.period(),
            Some(1_800_000_000),
            "the claimant counted the generation"
        );
        assert_eq!(third.next_sender_seq(), 4, "the claimant's three records");
    }

    /// A takeover after the new generation is durable but before the writer reads the fence:
    /// the claimant counts that generation, and the fenced writer leaves it in place.
    #[test]
    fn a_fenced_writer_leaves_the_generation_a_claimant_counts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut w, claimant) = rotation_with_takeover_at(tmp.path(), RotateStage::Created);
        assert!(matches!(
            w.reset_for_period(1_800_000_000),
            Err(StoreError::Fenced { ours: 1, newest: 2 })
        ));
        drop(w);
        drop(claimant.lock().unwrap_or_else(|e| e.into_inner()).take());
        let third = FileStore::open(tmp.path(), &sid(), 3, SyncPolicy::EveryWrite).expect("3");
        assert_eq!(third.period(), Some(1_800_000_000));
        assert_eq!(third.next_sender_seq(), 4);
    }

    /// A rotation that fails once its generation may be whole on disk (here: an I/O error
    /// reported after the file was written) poisons the store: nothing more is appended to
    /// the old generation, which the next open would not count. The next open starts from
    /// the new generation and the next rotation never reuses its name.
    #[test]
    fn a_failed_rotation_poisons_the_store() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut w = FileStore::open(tmp.path(), &sid(), 1, SyncPolicy::EveryWrite).expect("w");
        for seq in 1..=5 {
            w.save_sent(seq, &frame(seq)).expect("save");
        }
        w.set_rotate_after(1);
        w.rotate_hook = Some(RotateHook(Arc::new(|at| match at {
            RotateStage::Created => Err(StoreError::SyncFailed("injected EIO".into())),
            RotateStage::Checked => Ok(()),
        })));
        assert!(w.reset_for_period(1_800_000_000).is_err());
        assert!(matches!(
            w.save_sent(6, &frame(6)),
            Err(StoreError::Poisoned)
        ));
        drop(w);
        let mut again =
            FileStore::open(tmp.path(), &sid(), 1, SyncPolicy::EveryWrite).expect("reopened");
        assert_eq!(again.period(), Some(1_800_000_000));
        assert_eq!(again.segment().generation, 1);
        again.set_rotate_after(1);
        again.reset_for_period(1_800_086_400).expect("next period");
        assert_eq!(again.segment().generation, 2);
    }

    /// With the fence read per turn: a claim between two turns refuses the next turn's first
    /// write before it writes; a claim inside a turn lets that turn write on (beyond the
    /// newer claim's seal) but the turn's verification reports it, and nothing it wrote
    /// counts for the newer writer.
    #[test]
    fn a_store_checking_its_fence_per_turn_is_refused_at_the_turn_boundaries() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sid = SessionId::new(BeginString::Fix44, "S", "T");
        let mut old = FileStore::open(tmp.path(), &sid, 1, SyncPolicy::Group).expect("old");
        old.defer_fence_checks();
        old.save_sent(1, b"one").expect("save");
        old.verify_fence().expect("our fence");

        // A newer claim inside a turn: the turn's later writes are not refused one by one...
        old.save_sent(2, b"two").expect("save");
        let new = FileStore::open(tmp.path(), &sid, 2, SyncPolicy::Group).expect("new");
        old.save_sent(3, b"three").expect("written beyond the seal");
        // ...but the turn's end is, before anything it wrote may leave.
        assert!(matches!(
            old.verify_fence(),
            Err(StoreError::Fenced { ours: 1, newest: 2 })
        ));
        assert_eq!(
            new.next_sender_seq(),
            3,
            "the newer writer counts one and two"
        );
        drop(new);

        // A claim between turns: the next turn's first write is refused and writes nothing.
        let mut second = FileStore::open(tmp.path(), &sid, 3, SyncPolicy::Group).expect("third");
        second.defer_fence_checks();
        second.save_sent(3, b"three").expect("save");
        second.verify_fence().expect("our fence");
        let before = std::fs::metadata(&second.path).expect("segment").len();
        let _fourth = FileStore::open(tmp.path(), &sid, 4, SyncPolicy::Group).expect("fourth");
        assert!(matches!(
            second.save_sent(4, b"four"),
            Err(StoreError::Fenced { ours: 3, newest: 4 })
        ));
        assert_eq!(
            std::fs::metadata(&second.path).expect("segment").len(),
            before,
            "refused before it writes"
        );
    }

    thread_local! {
        /// Runs before each retry of [`FileStore::open`] on this thread.
        pub(super) static OPEN_RETRY_HOOK: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
            std::cell::RefCell::new(None);
    }

    /// A claimant reading the newest segment while its writer (still running: a shared
    /// directory) is inside a `pwrite` of two records can see the first record's opening
    /// bytes still zero and the rest written: not a state a crash leaves (no sector share
    /// is zero), so it reads as corruption. The open reads again and finds the records
    /// whole; bytes that stay damaged are still reported, after the retries.
    #[test]
    fn a_record_read_mid_write_is_read_again_and_real_damage_still_reported() {
        let sid = SessionId::new(BeginString::Fix44, "S", "T");
        for heals in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            let path = tmp
                .path()
                .join(sid.dir_name())
                .join(segment_name(SegmentId {
                    epoch: 1,
                    generation: 0,
                }));
            let start;
            {
                let mut w =
                    FileStore::open(tmp.path(), &sid, 1, SyncPolicy::EveryWrite).expect("writer");
                w.save_sent(1, &frame(1)).expect("save");
                start = w.end;
                w.save_sent_all(&[frame(2), frame(3)])
                    .expect("save two in one write");
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open");
            let mut whole = [0u8; 6];
            f.read_exact_at(&mut whole, start).expect("read");
            assert_eq!(start / SECTOR, (start + 6) / SECTOR, "not a sector share");
            f.write_all_at(&[0u8; 6], start)
                .expect("the view mid-write");
            let retries = std::rc::Rc::new(std::cell::Cell::new(0));
            let seen = retries.clone();
            OPEN_RETRY_HOOK.with(|h| {
                *h.borrow_mut() = Some(Box::new(move || {
                    seen.set(seen.get() + 1);
                    if heals {
                        f.write_all_at(&whole, start).expect("the write completes");
                    }
                }))
            });
            let opened = FileStore::open(tmp.path(), &sid, 2, SyncPolicy::EveryWrite);
            OPEN_RETRY_HOOK.with(|h| *h.borrow_mut() = None);
            if heals {
                let s = opened.expect("read again once the write completed");
                assert_eq!(s.next_sender_seq(), 4);
                assert_eq!(retries.get(), 1);
            } else {
                assert!(
                    matches!(opened, Err(StoreError::Corrupt { offset, .. }) if offset == start),
                    "{opened:?}"
                );
                assert_eq!(retries.get(), OPEN_RETRIES);
            }
        }
    }

    /// A writer that passed its fence check, was stopped, and resumes after a newer active
    /// claimed the store: its late bytes land in its own segment, beyond the seal, and no
    /// later reader sees them.
    #[test]
    fn late_write_of_a_stopped_writer_is_outside_the_seal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sid = SessionId::new(BeginString::Fix44, "S", "T");
        let mut old = FileStore::open(tmp.path(), &sid, 1, SyncPolicy::EveryWrite).expect("old");
        old.save_sent(1, b"one").expect("save");
        let new = FileStore::open(tmp.path(), &sid, 2, SyncPolicy::EveryWrite).expect("new");
        // Simulate the write that was already past its fence check.
        let mut rec = Vec::new();
        let mut payload = 2u64.to_le_bytes().to_vec();
        payload.extend_from_slice(b"stale");
        encode_record(&mut rec, 1, KIND_SENT, &payload).expect("encode");
        // Where the stopped writer writes: at its own end, over the zeros it wrote ahead.
        old.file.write_all_at(&rec, old.end).expect("late write");
        drop(new);
        let third = FileStore::open(tmp.path(), &sid, 3, SyncPolicy::EveryWrite).expect("third");
        assert_eq!(third.next_sender_seq(), 2);
        assert_eq!(
            third.sent_range(1, 10).expect("range"),
            vec![(1, b"one".to_vec())]
        );
    }

    #[test]
    fn claim_round_trip() {
        let seal = |epoch, generation, len, counted| Seal {
            seg: SegmentId { epoch, generation },
            len,
            counted,
        };
        let v1 = Claim {
            seals: vec![seal(1, 0, 100, true), seal(5, 0, 7, true)],
            lead_end: 0,
        };
        let enc = encode_claim(&v1);
        assert_eq!(enc.len(), 4 + 2 * 16, "the first format while it suffices");
        assert_eq!(decode_claim(&enc), Some(v1));
        let v2 = Claim {
            seals: vec![seal(1, 0, 100, false), seal(5, 2, 7, true)],
            lead_end: 4242,
        };
        let enc = encode_claim(&v2);
        assert_eq!(decode_claim(&enc), Some(v2));
        assert_eq!(decode_claim(&enc[..enc.len() - 1]), None);
        let mut bad = enc.clone();
        bad[8 + 24] = 7;
        assert_eq!(decode_claim(&bad), None, "counted is 0 or 1");
        assert_eq!(decode_claim(&[1, 0, 0, 0]), None);
        assert_eq!(decode_claim(&[0xff; 6]), None);
    }

    #[test]
    fn segment_names_round_trip_and_order() {
        let a = SegmentId {
            epoch: 3,
            generation: 0,
        };
        let b = SegmentId {
            epoch: 3,
            generation: 12,
        };
        assert_eq!(segment_name(a), "00000000000000000003.log");
        assert_eq!(segment_name(b), "00000000000000000003-0000000012.log");
        assert_eq!(parse_segment_name(&segment_name(a)), Some(a));
        assert_eq!(parse_segment_name(&segment_name(b)), Some(b));
        assert!(
            a < b
                && b < SegmentId {
                    epoch: 4,
                    generation: 0
                }
        );
        for bad in [
            "00000000000000000003-0000000000.log",
            "00000000000000000003-12.log",
            "0000000000000000003.log",
            "00000000000000000003.log.tmp",
            "fence",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
