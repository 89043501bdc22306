//! A small tmpfs, unmounted on drop: a file system a test can fill up.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted at `dir`.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) at `dir`; the reason when that is not possible.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        crate::proc::track_mount(dir, true);
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the file system with `<dir>/filler` until it has no space left; returns its size.
    /// Agents replace their records by rename, which frees the old record's page if the new one
    /// was written just before the fill: so it tops up again after a few of their ticks.
    /// Panics when the filler cannot be created (for tests).
    pub fn fill(&self) -> u64 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("filler"))
            .unwrap_or_else(|e| panic!("create filler: {e}"));
        let block = [0xAAu8; 4096];
        let mut n = 0u64;
        for round in 0..3 {
            if round > 0 {
                crate::clock::pause(Duration::from_millis(250));
            }
            loop {
                match f.write(&block) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
        }
        let _ = f.sync_all();
        n
    }

    /// Removes the filler; panics when it cannot (for tests).
    pub fn free(&self) {
        std::fs::remove_file(self.dir.join("filler"))
            .unwrap_or_else(|e| panic!("remove filler: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        crate::proc::track_mount(&self.dir, false);
    }
}
