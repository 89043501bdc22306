//! A disk that stalls for real, for chosen processes: a cgroup whose writes to the disk
//! holding a path the kernel throttles to a few operations per second (blk-throttle: cgroup
//! v1's `blkio.throttle.write_iops_device`, or v2's `io.max`). What a saturated SAN, a noisy
//! neighbour on shared storage or a failing disk's retries look like to a process: its
//! `write`s land in the page cache at once, its `fdatasync`s wait for the device (on this
//! VM, 5 operations a second make one take about 620 ms). The throttle is on that process's
//! I/O, not on the file system: with a journal (ext4 `data=ordered`), another process's sync
//! can wait behind the throttled data too.

use std::path::{Path, PathBuf};

/// The cgroup; on drop its processes go back to the root cgroup and it is removed.
pub struct IoThrottle {
    dir: PathBuf,
    /// The root cgroup of its hierarchy, where its processes go back to.
    root: PathBuf,
    /// `major:minor` of the whole disk.
    dev: String,
    v2: bool,
}

impl IoThrottle {
    /// A new cgroup `name`, throttling nothing yet, for writes to the disk that holds `on`;
    /// the reason when this kernel or its cgroup set-up cannot.
    pub fn new(name: &str, on: &Path) -> Result<IoThrottle, String> {
        let dev = disk_of(on)?;
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        let v2 = Path::new("/sys/fs/cgroup");
        let (root, is_v2) = if v1.join("blkio.throttle.write_iops_device").exists() {
            (v1.to_path_buf(), false)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"))
        {
            std::fs::write(v2.join("cgroup.subtree_control"), "+io")
                .map_err(|e| format!("cannot enable the io controller: {e}"))?;
            (v2.to_path_buf(), true)
        } else {
            return Err(
                "no blk-throttle here (neither cgroup v1 blkio nor a v2 io controller)".into(),
            );
        };
        sweep_stale(&root, name, is_v2);
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        Ok(IoThrottle {
            dir,
            root,
            dev,
            v2: is_v2,
        })
    }

    /// A fresh directory on a disk, under /var/tmp (a tmpfs has no device to throttle, and its
    /// `fdatasync` does nothing), and a cgroup `name` throttling that disk.
    pub fn on_temp_disk(name: &str) -> Result<(tempfile::TempDir, IoThrottle), String> {
        let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| format!("/var/tmp: {e}"))?;
        let throttle = IoThrottle::new(name, dir.path())?;
        Ok((dir, throttle))
    }

    /// Moves process `pid`, every thread of it, into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", self.dir.display()))
    }

    /// Throttles the cgroup's writes to the disk to `iops` operations a second, or lifts the
    /// limit (`None`).
    pub fn set_write_iops(&self, iops: Option<u32>) -> Result<(), String> {
        let (file, line) = if self.v2 {
            let v = iops.map_or("max".to_owned(), |n| n.to_string());
            ("io.max", format!("{} wiops={v}", self.dev))
        } else {
            (
                "blkio.throttle.write_iops_device",
                format!("{} {}", self.dev, iops.unwrap_or(0)),
            )
        };
        std::fs::write(self.dir.join(file), line)
            .map_err(|e| format!("cannot set {file} of {}: {e}", self.dir.display()))
    }
}

impl Drop for IoThrottle {
    fn drop(&mut self) {
        let _ = self.set_write_iops(None);
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Undoes the cgroups `name-<pid>` of test processes that are gone (killed before their
/// drop ran): a throttled process left in one would go on stalling its disk.
fn sweep_stale(root: &Path, name: &str, v2: bool) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let rules = if v2 {
        "io.max"
    } else {
        "blkio.throttle.write_iops_device"
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(|n| n.strip_prefix('-'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // The one disk it throttled, first on its rule's line; its drop lifts the limit,
        // moves what is left out and removes it.
        let dev = std::fs::read_to_string(e.path().join(rules))
            .ok()
            .and_then(|r| r.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default();
        drop(IoThrottle {
            dir: e.path(),
            root: root.to_path_buf(),
            dev,
            v2,
        });
    }
}

/// `major:minor` of the whole disk holding `path` (blk-throttle takes disks, not partitions).
fn disk_of(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(format!(
            "{} is not on a block device ({major}:{minor}: a tmpfs, overlay or network file system)",
            path.display()
        ));
    }
    let disk = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys
    };
    std::fs::read_to_string(disk.join("dev"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e}", disk.display()))
}
