//! The group's fencing epoch, kept beside the lock in `<lock>.epoch` so that a lock file full of
//! garbage can never take it backwards.
//!
//! The record is one text line carrying a CRC32 of the rest, so a torn or garbled file is told
//! apart from a real value: `understudy-epoch v1 epoch=<n> holder=<name> crc=<8 hex digits>\n`.
//!
//! The file has two fixed-size slots, each holding a record padded with NULs; epoch `n` goes
//! into slot `n % 2`, so the previous epoch's slot is never touched. Making a new epoch durable
//! is then one `pwrite` and one `fdatasync` of a file whose size does not change — this sits on
//! the failover path, between the lock being obtained and the service being told it is active.
//! A write torn by a crash spoils only its own slot; the other still holds the previous epoch,
//! which was never handed out twice because the torn one was never acknowledged. A file that is
//! not two slots (missing, garbage) is rewritten whole: temp file, fsync, rename, fsync directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::{is_valid_node_name, CoordError};

const MAGIC: &str = "understudy-epoch";
const VERSION: &str = "v1";
/// A record is one short line; reading more than this only wastes time on a garbage file.
const MAX_RECORD_BYTES: usize = 4096;
/// Size of one slot: a record with the longest node name fits.
const SLOT: usize = 512;

/// What the epoch file said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochRead {
    /// No epoch file: the group never had an epoch written.
    Missing,
    /// The file exists but holds no valid record; the string says why.
    Corrupt(String),
    /// A valid record.
    Value {
        /// The highest epoch granted so far.
        epoch: u64,
        /// The node that took it.
        holder: String,
    },
}

/// Both slots of the epoch file, parsed from the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSlots {
    /// The record: the higher valid slot, or the single record of the format before.
    pub newest: EpochRead,
    /// The other slot's record when it holds an older valid epoch than `newest`, and its
    /// holder: the newest epoch of the other parity, which is the one before `newest` unless
    /// epochs were skipped (callers check). None when the file is missing, one record, has a
    /// spoiled slot, or both slots say the same (a rewrite of a file without an older record
    /// writes both).
    pub older: Option<(u64, String)>,
}

impl EpochSlots {
    /// No epoch file.
    pub const MISSING: EpochSlots = EpochSlots {
        newest: EpochRead::Missing,
        older: None,
    };
}

/// The durable epoch file of a group: `<lock>.epoch`.
#[derive(Debug, Clone)]
pub struct EpochStore {
    path: PathBuf,
}

impl EpochStore {
    /// The epoch file that belongs to `lock`: `<lock>.epoch`.
    pub fn for_lock(lock: &Path) -> Self {
        let mut s = lock.as_os_str().to_owned();
        s.push(".epoch");
        EpochStore {
            path: PathBuf::from(s),
        }
    }

    /// The epoch file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the record. A missing file is [`EpochRead::Missing`]; any other I/O error is an error,
    /// because guessing could hand out an epoch that was already used.
    pub fn read(&self) -> Result<EpochRead, CoordError> {
        Ok(self.read_slots()?.newest)
    }

    /// Read the record and the other slot's older one, both parsed from the same bytes (a
    /// caller that needs both must not combine two states of a file a holder writes in
    /// between; a slot caught half written fails its checksum and counts as absent).
    pub fn read_slots(&self) -> Result<EpochSlots, CoordError> {
        Ok(match self.bytes()? {
            None => EpochSlots::MISSING,
            Some(b) => EpochSlots {
                newest: parse_file(&b),
                older: older_slot(&b),
            },
        })
    }

    /// The file's bytes, at most one more than a record may have; None when it is missing.
    fn bytes(&self) -> Result<Option<Vec<u8>>, CoordError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&self.path, e)),
        };
        let mut buf = Vec::new();
        file.take(MAX_RECORD_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(&self.path, e))?;
        Ok(Some(buf))
    }

    /// Durably record `epoch` taken by `holder`: in place into slot `epoch % 2` with one
    /// `fdatasync` when the file already has its two slots, otherwise by rewriting the whole file
    /// (temp file, fsync, rename, fsync of the directory). After a crash the file holds the old
    /// record or the new one in each slot, never a mix that parses.
    pub fn write(&self, epoch: u64, holder: &str) -> Result<(), CoordError> {
        use std::os::unix::fs::FileExt;
        if !is_valid_node_name(holder) {
            return Err(io_error(
                &self.path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid node name {holder:?}"),
                ),
            ));
        }
        let record = encode_record(epoch, holder);
        if record.len() > SLOT {
            return Err(io_error(
                &self.path,
                io::Error::new(io::ErrorKind::InvalidInput, "epoch record too long"),
            ));
        }
        let mut slot = vec![0u8; SLOT];
        slot[..record.len()].copy_from_slice(record.as_bytes());
        let offset = (epoch % 2) * SLOT as u64;
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(&self.path) {
            let two_slots = f
                .metadata()
                .map(|m| m.len() == 2 * SLOT as u64)
                .unwrap_or(false);
            if two_slots {
                return f
                    .write_all_at(&slot, offset)
                    .and_then(|()| f.sync_data())
                    .map_err(|e| io_error(&self.path, e));
            }
        }
        // The record the file holds (a single record of the older format), when older than
        // the new one, keeps the other slot: a restarted agent reads the epoch before from it
        // (`EpochSlots::older`), and a file knowing one epoch cut its run short (review 16, W1).
        let mut other = slot.clone();
        if let Ok(Some(bytes)) = self.bytes() {
            if let EpochRead::Value {
                epoch: e,
                holder: h,
            } = parse_file(&bytes)
            {
                let r = encode_record(e, &h);
                if e < epoch && r.len() <= SLOT {
                    other.fill(0);
                    other[..r.len()].copy_from_slice(r.as_bytes());
                }
            }
        }
        let (first, second) = if epoch.is_multiple_of(2) {
            (&slot, &other)
        } else {
            (&other, &slot)
        };
        self.rewrite(first, second, holder)
    }

    /// Write a fresh two-slot file of `first` and `second`.
    fn rewrite(&self, first: &[u8], second: &[u8], holder: &str) -> Result<(), CoordError> {
        write_durably(&self.path, holder, &[first, second])
    }
}

/// Replace `path` by a file of `parts`, durably: temp file (named after `writer`), fsync,
/// rename, fsync of the directory. After a crash the path holds the old file or the new one,
/// whole.
pub(crate) fn write_durably(path: &Path, writer: &str, parts: &[&[u8]]) -> Result<(), CoordError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp.");
    tmp.push(writer);
    let tmp = PathBuf::from(tmp);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| {
            for part in parts {
                f.write_all(part)?;
            }
            f.sync_all()
        });
    if let Err(e) = written {
        // Best effort: a leftover temp file is harmless, the next write truncates it.
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, e));
    }
    sync_dir_of(path)
}

/// Makes a rename or an unlink in `path`'s directory durable.
pub(crate) fn sync_dir_of(path: &Path) -> Result<(), CoordError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Parse a whole epoch file: two slots (the higher valid epoch wins), or a single record.
pub(crate) fn parse_file(bytes: &[u8]) -> EpochRead {
    if bytes.len() != 2 * SLOT {
        return parse_record(bytes);
    }
    let mut best: Option<EpochRead> = None;
    let mut why = Vec::new();
    for r in slots(bytes) {
        match r {
            EpochRead::Value { epoch, .. } => {
                let better = match &best {
                    Some(EpochRead::Value { epoch: b, .. }) => epoch > *b,
                    _ => true,
                };
                if better {
                    best = Some(r);
                }
            }
            EpochRead::Corrupt(w) => why.push(w),
            EpochRead::Missing => why.push("empty slot".to_string()),
        }
    }
    best.unwrap_or_else(|| EpochRead::Corrupt(format!("no valid slot ({})", why.join("; "))))
}

/// See [`EpochSlots::older`].
fn older_slot(bytes: &[u8]) -> Option<(u64, String)> {
    if bytes.len() != 2 * SLOT {
        return None;
    }
    let mut values: Vec<(u64, String)> = slots(bytes)
        .filter_map(|r| match r {
            EpochRead::Value { epoch, holder } => Some((epoch, holder)),
            _ => None,
        })
        .collect();
    values.sort();
    match values.as_slice() {
        [older, newer] if older.0 < newer.0 => Some(older.clone()),
        _ => None,
    }
}

/// The records of a two-slot file's slots, each without its NUL padding.
fn slots(bytes: &[u8]) -> impl Iterator<Item = EpochRead> + '_ {
    bytes.chunks(SLOT).map(|c| {
        let end = c.iter().rposition(|&b| b != 0).map(|i| i + 1).unwrap_or(0);
        parse_record(&c[..end])
    })
}

fn io_error(path: &Path, source: io::Error) -> CoordError {
    CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_record(epoch: u64, holder: &str) -> String {
    let body = format!("{MAGIC} {VERSION} epoch={epoch} holder={holder}");
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body} crc={crc:08x}\n")
}

/// Decode an epoch file's bytes; never panics.
pub(crate) fn parse_record(bytes: &[u8]) -> EpochRead {
    match parse_record_inner(bytes) {
        Ok((epoch, holder)) => EpochRead::Value { epoch, holder },
        Err(reason) => EpochRead::Corrupt(reason),
    }
}

fn parse_record_inner(bytes: &[u8]) -> Result<(u64, String), String> {
    if bytes.is_empty() {
        return Err("empty epoch file".into());
    }
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(format!("larger than {MAX_RECORD_BYTES} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    // Without its newline the line may have been cut short, e.g. `epoch=12` from `epoch=123`.
    let line = text
        .strip_suffix('\n')
        .ok_or_else(|| "record not terminated by a newline (torn write?)".to_string())?;
    if line.contains('\n') {
        return Err("more than one line".into());
    }
    let (body, crc) = line
        .rsplit_once(" crc=")
        .ok_or_else(|| "not an understudy epoch record (no checksum)".to_string())?;
    // Lowercase only, as written: then every change to the bytes is caught.
    if crc.len() != 8 || !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("malformed checksum".into());
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "malformed checksum".to_string())?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err("checksum mismatch (garbled or torn record)".into());
    }
    let mut parts = body.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err("not an understudy epoch record".into());
    }
    if parts.next() != Some(VERSION) {
        return Err("unsupported epoch record version".into());
    }
    let epoch = parts
        .next()
        .and_then(|p| p.strip_prefix("epoch="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| "bad epoch field".to_string())?;
    let holder = parts
        .next()
        .and_then(|p| p.strip_prefix("holder="))
        .filter(|h| is_valid_node_name(h))
        .ok_or_else(|| "bad holder field".to_string())?;
    if parts.next().is_some() {
        return Err("unexpected text in the record".into());
    }
    Ok((epoch, holder.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn older(store: &EpochStore) -> Option<(u64, String)> {
        store.read_slots().unwrap().older
    }

    #[test]
    fn the_other_slot_names_the_epoch_before_and_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = EpochStore::for_lock(&dir.path().join("g.lock"));
        assert_eq!(older(&store), None, "no file");
        store.write(7, "a").unwrap();
        assert_eq!(
            older(&store),
            None,
            "a new file has the record in both slots"
        );
        store.write(8, "b").unwrap();
        assert_eq!(older(&store), Some((7, "a".to_string())));
        store.write(9, "b").unwrap();
        assert_eq!(older(&store), Some((8, "b".to_string())));
        // A torn slot says nothing.
        let mut bytes = std::fs::read(store.path()).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(store.path(), &bytes).unwrap();
        assert_eq!(older(&store), None);
    }

    /// Review 16, W1: a file rewritten whole (here one record, the format before the two
    /// slots) keeps its record, when older, in the other slot; a corrupt one cannot.
    #[test]
    fn a_rewrite_keeps_the_record_it_replaces_in_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = EpochStore::for_lock(&dir.path().join("g.lock"));
        std::fs::write(store.path(), encode_record(3, "a")).unwrap();
        store.write(4, "a").unwrap();
        assert_eq!(
            std::fs::metadata(store.path()).unwrap().len(),
            2 * SLOT as u64
        );
        assert_eq!(
            store.read().unwrap(),
            EpochRead::Value {
                epoch: 4,
                holder: "a".into()
            }
        );
        assert_eq!(older(&store), Some((3, "a".to_string())));
        // Same parity: the old one goes to the other slot all the same, and the next epoch
        // in place overwrites it.
        std::fs::write(store.path(), encode_record(5, "b")).unwrap();
        store.write(7, "a").unwrap();
        assert_eq!(older(&store), Some((5, "b".to_string())));
        store.write(8, "c").unwrap();
        assert_eq!(older(&store), Some((7, "a".to_string())));
        // Garbage says nothing to keep.
        std::fs::write(store.path(), b"garbage").unwrap();
        store.write(9, "a").unwrap();
        assert_eq!(older(&store), None);
        // Never a newer record kept below the new one (an epoch going backwards is refused
        // before this, by the lock file's other sources; the file keeps only what is older).
        std::fs::write(store.path(), encode_record(20, "b")).unwrap();
        store.write(10, "a").unwrap();
        assert_eq!(older(&store), None);
    }

    use proptest::prelude::*;

    #[test]
    fn a_torn_slot_leaves_the_previous_epoch() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EpochStore::for_lock(&dir.path().join("g.lock"));
        store.write(7, "a").unwrap();
        store.write(8, "b").unwrap();
        assert_eq!(
            store.read().unwrap(),
            EpochRead::Value {
                epoch: 8,
                holder: "b".into()
            }
        );
        assert_eq!(
            std::fs::metadata(store.path()).unwrap().len(),
            2 * SLOT as u64
        );
        // Tear the write of epoch 8 (slot 0): epoch 7 in slot 1 survives, with nothing
        // older beside it (the torn slot is not taken for one).
        let f = OpenOptions::new().write(true).open(store.path()).unwrap();
        f.write_all_at(b"understudy-epoch v1 epo", 0).unwrap();
        f.write_all_at(&[0u8; 64], 23).unwrap();
        assert_eq!(
            store.read_slots().unwrap(),
            EpochSlots {
                newest: EpochRead::Value {
                    epoch: 7,
                    holder: "a".into()
                },
                older: None
            }
        );
        // Both slots spoiled: corrupt, never a guess.
        f.write_all_at(&[b'x'; SLOT], SLOT as u64).unwrap();
        assert!(matches!(store.read().unwrap(), EpochRead::Corrupt(_)));
        // A rewrite heals it.
        store.write(9, "c").unwrap();
        assert_eq!(
            store.read().unwrap(),
            EpochRead::Value {
                epoch: 9,
                holder: "c".into()
            }
        );
    }

    #[test]
    fn record_round_trip() {
        let rec = encode_record(42, "node-a.1");
        assert_eq!(
            parse_record(rec.as_bytes()),
            EpochRead::Value {
                epoch: 42,
                holder: "node-a.1".into()
            }
        );
    }

    #[test]
    fn flipped_digit_is_corrupt() {
        let rec = encode_record(42, "a").replace("epoch=42", "epoch=43");
        assert!(
            matches!(parse_record(rec.as_bytes()), EpochRead::Corrupt(r) if r.contains("checksum"))
        );
    }

    #[test]
    fn torn_record_is_corrupt() {
        let rec = encode_record(123, "a");
        for cut in 0..rec.len() {
            assert!(
                matches!(parse_record(&rec.as_bytes()[..cut]), EpochRead::Corrupt(_)),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_file_never_panics(bytes in proptest::collection::vec(any::<u8>(), 2 * SLOT..2 * SLOT + 1)) {
            let _ = parse_file(&bytes);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = parse_record(&bytes);
        }

        #[test]
        fn round_trip(epoch in any::<u64>(), holder in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,40}") {
            prop_assert_eq!(
                parse_record(encode_record(epoch, &holder).as_bytes()),
                EpochRead::Value { epoch, holder: holder.clone() }
            );
        }

        #[test]
        fn single_byte_change_is_detected(epoch in any::<u64>(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let rec = encode_record(epoch, "node").into_bytes();
            let mut bad = rec.clone();
            let i = pos.index(bad.len());
            prop_assume!(bad[i] != byte);
            bad[i] = byte;
            // A one-byte change either breaks the syntax or the CRC: it never yields another value.
            prop_assert!(matches!(parse_record(&bad), EpochRead::Corrupt(_)));
        }
    }
}
