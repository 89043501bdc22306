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

/// This machine's boot id, read once; None where the kernel does not tell.
pub fn boot_id() -> Option<String> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .clone()
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`), read once; None where the
/// kernel does not tell.
pub fn pid_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *NS.get_or_init(|| std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino()))
}

/// Whether `rec` was written on this machine and in this pid namespace, so that `/proc` here
/// tells about its pids. A record from elsewhere (another machine on etcd or a shared
/// filesystem, another container) names pids that mean nothing here: one absent here is no
/// agent gone. A record without a pid namespace (an agent of an earlier version, or a kernel
/// that does not tell) is judged by the boot id alone, as before namespaces were recorded: a
/// lock-file group on one host must keep judging its killed agents at once during an upgrade.
pub fn same_host(rec: &MemberRecord) -> bool {
    let boot = rec.boot_id.is_some() && rec.boot_id == boot_id();
    let ns = match (rec.pid_ns, pid_ns()) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    };
    boot && ns
}

/// What a record under this node's own name says about the agent that wrote it, as far as the
/// record and this machine can tell at once (see [`judge_namesake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namesake {
    /// Another agent with this name runs now.
    Live,
    /// Left by an agent that is gone (or by this very process).
    Gone,
    /// Fresh, but written on another machine (or by an older agent without a boot id): only a
    /// rewrite seen within the freshness window proves its writer alive.
    Unknown,
}

/// Judge a record found under this node's name before the node joins. `fresh_ms`: how recently a
/// live agent has surely rewritten its record; `alive(pid)`: whether that process runs here.
pub fn judge_namesake(
    rec: &MemberRecord,
    now_unix_ms: u64,
    fresh_ms: u64,
    alive: impl Fn(u32) -> bool,
) -> Namesake {
    let here = same_host(rec);
    if here && rec.node.agent_pid == std::process::id() {
        return Namesake::Gone;
    }
    if now_unix_ms.saturating_sub(rec.last_seen_unix_ms) > fresh_ms {
        return Namesake::Gone;
    }
    match (here, alive(rec.node.agent_pid)) {
        (true, true) => Namesake::Live,
        (true, false) => Namesake::Gone,
        (false, _) => Namesake::Unknown,
    }
}

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

    /// The record kept under `node`'s name by whoever wrote it last, with a stamp that changes at
    /// every rewrite. Meant for a node that has not written its own record yet: a record there is
    /// another agent's, live or left behind.
    pub fn namesake(&self, node: &str) -> Option<(MemberRecord, u64)> {
        match &self.store {
            Store::Files(f) => f.read_one(node).map(|r| {
                let stamp = r.last_seen_unix_ms;
                (r, stamp)
            }),
            Store::Etcd(e) => e.namesake(),
        }
    }

    /// Records of groups other than `group` kept here. Always none in etcd, where every group has
    /// its own keys; beside a lock file they mean that the lock file serves another group.
    pub fn foreign(&self, group: &str) -> Vec<MemberRecord> {
        match &self.store {
            Store::Files(f) => f
                .read_all()
                .into_iter()
                .filter(|r| r.node.group != group)
                .collect(),
            Store::Etcd(_) => Vec::new(),
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

    fn read_one(&self, node: &str) -> Option<MemberRecord> {
        if !is_valid_node_name(node) {
            return None;
        }
        read_record(&self.file_for(node))
            .ok()
            .filter(|r| r.node.name == node)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, boot: Option<String>, last_seen: u64) -> MemberRecord {
        use understudy_status::{ActivationMode, Node, ServiceState, State};
        MemberRecord {
            last_seen_unix_ms: last_seen,
            service: ServiceState::Running,
            pid_ns: boot.as_ref().and(pid_ns()),
            boot_id: boot,
            ..MemberRecord::of(Node {
                name: "a".into(),
                group: "g".into(),
                state: State::Warm,
                activation: ActivationMode::TryLock,
                epoch: 1,
                since_unix_ms: 0,
                waiting: None,
                holds_lock: false,
                ready: true,
                admin: "127.0.0.1:1".into(),
                agent_pid: pid,
            })
        }
    }

    #[test]
    fn a_namesake_is_judged_by_freshness_then_by_this_machines_processes() {
        let here = boot_id();
        let now = 10_000;
        let alive = |pid: u32| pid == 42;
        // Not rewritten for longer than the window: gone, wherever it ran.
        assert_eq!(
            judge_namesake(&rec(42, here.clone(), 8_000), now, 1_000, alive),
            Namesake::Gone
        );
        if here.is_some() {
            // This machine: /proc decides at once.
            assert_eq!(
                judge_namesake(&rec(42, here.clone(), 9_500), now, 1_000, alive),
                Namesake::Live
            );
            assert_eq!(
                judge_namesake(&rec(43, here.clone(), 9_500), now, 1_000, alive),
                Namesake::Gone
            );
            let me = std::process::id();
            assert_eq!(
                judge_namesake(&rec(me, here.clone(), 9_500), now, 1_000, |_| true),
                Namesake::Gone
            );
        }
        // Another machine, or an agent that did not say: only a rewrite can tell.
        let elsewhere = Some("another-boot".to_string());
        assert_eq!(
            judge_namesake(&rec(42, elsewhere, 9_500), now, 1_000, alive),
            Namesake::Unknown
        );
        assert_eq!(
            judge_namesake(&rec(42, None, 9_500), now, 1_000, alive),
            Namesake::Unknown
        );
    }
}
