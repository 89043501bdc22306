//! Membership records, one per node, rewritten by its agent every heartbeat interval and on every
//! state change, so any node can show the whole group: beside the lock file
//! (`<lock>.members/<node>.json`) or in etcd (`<prefix>/<group>/members/<node>`, see [`crate::etcd`]).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub use understudy_status::MemberRecord;

use crate::{is_valid_node_name, CoordError};

/// Records are a few hundred bytes; a bigger file is not one of ours.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The membership records of a group.
#[derive(Debug, Clone)]
pub struct Members {
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Files(FileMembers),
    Etcd(crate::etcd::EtcdMembers),
}

impl Members {
    /// The membership directory that belongs to `lock`: `<lock>.members`.
    pub fn for_lock(lock: &Path) -> Self {
        let mut s = lock.as_os_str().to_owned();
        s.push(".members");
        Members {
            store: Store::Files(FileMembers {
                dir: PathBuf::from(s),
            }),
        }
    }

    /// The records kept in etcd by an [`crate::EtcdCoordinator`].
    pub fn etcd(members: crate::etcd::EtcdMembers) -> Self {
        Members {
            store: Store::Etcd(members),
        }
    }

    /// The directory, for records kept in files.
    pub fn dir(&self) -> Option<&Path> {
        match &self.store {
            Store::Files(f) => Some(&f.dir),
            Store::Etcd(_) => None,
        }
    }

    /// Create the directory (and its parents) if missing; nothing to do in etcd.
    pub fn ensure_dir(&self) -> Result<(), CoordError> {
        match &self.store {
            Store::Files(f) => f.ensure_dir(),
            Store::Etcd(_) => Ok(()),
        }
    }

    /// Replace the record of `rec.node.name`. Files: written to a hidden temp file and renamed over, so
    /// readers see the old record or the new one, never half of one; not fsynced (records are
    /// advisory and rewritten every heartbeat interval). etcd: only this node's own record, sent in
    /// the background (the call does not wait for the network).
    pub fn write(&self, rec: &MemberRecord) -> Result<(), CoordError> {
        match &self.store {
            Store::Files(f) => f.write(rec),
            Store::Etcd(e) => e.write(rec),
        }
    }

    /// etcd groups: the holder and how long ago this node saw its last renewal. `None` for lock
    /// files (the kernel's lock has no renewals) and while nobody holds the group.
    pub fn renewal(&self) -> Option<(String, std::time::Duration)> {
        match &self.store {
            Store::Files(_) => None,
            Store::Etcd(e) => e.renewal(),
        }
    }

    /// Every readable record, sorted by node name. Files that cannot be read or parsed are skipped
    /// (one bad file must not hide the rest of the group); a missing directory is an empty group.
    /// From etcd: the cache the group watch keeps current, never a network round trip.
    pub fn read_all(&self) -> Vec<MemberRecord> {
        match &self.store {
            Store::Files(f) => f.read_all(),
            Store::Etcd(e) => e.read_all(),
        }
    }

    pub fn remove(&self, node: &str) {
        match &self.store {
            Store::Files(f) => f.remove(node),
            Store::Etcd(e) => e.remove(node),
        }
    }
}

#[derive(Debug, Clone)]
struct FileMembers {
    dir: PathBuf,
}

impl FileMembers {
    fn file_for(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.json"))
    }

    fn ensure_dir(&self) -> Result<(), CoordError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))
    }

    fn write(&self, rec: &MemberRecord) -> Result<(), CoordError> {
        if !is_valid_node_name(&rec.node.name) {
            return Err(io_error(
                &self.dir,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid node name {:?}", rec.node.name),
                ),
            ));
        }
        let mut json =
            serde_json::to_vec(rec).map_err(|e| io_error(&self.dir, io::Error::other(e)))?;
        json.push(b'\n');
        // A leading dot keeps the temp file out of read_all even if we die before the rename.
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.node.name));
        let open = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
        };
        let mut file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_dir()?;
                open()
            }
            other => other,
        }
        .map_err(|e| io_error(&tmp, e))?;
        if let Err(e) = file.write_all(&json) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&tmp, e));
        }
        drop(file);
        let dest = self.file_for(&rec.node.name);
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(&dest, e)
        })
    }

    fn read_all(&self) -> Vec<MemberRecord> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "cannot list members");
                }
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "cannot list members");
                    continue;
                }
            };
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::debug!(file = %path.display(), "skipping member file: name not UTF-8");
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".json") {
                tracing::debug!(file = %path.display(), "skipping non-record file");
                continue;
            }
            match read_record(&path) {
                Ok(rec) => out.push(rec),
                Err(reason) => {
                    tracing::debug!(file = %path.display(), %reason, "skipping member record");
                }
            }
        }
        out.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        out
    }

    fn remove(&self, node: &str) {
        if !is_valid_node_name(node) {
            return;
        }
        let path = self.file_for(node);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(file = %path.display(), error = %e, "cannot remove member record");
            }
        }
    }
}

fn read_record(path: &Path) -> Result<MemberRecord, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_RECORD_BYTES {
        return Err("file too large".into());
    }
    serde_json::from_slice(&buf).map_err(|e| e.to_string())
}

fn io_error(path: &Path, source: io::Error) -> CoordError {
    CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}
