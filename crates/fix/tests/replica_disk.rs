//! A standby whose disk fails to make its copy durable is not trusted again by this process.
//!
//! The fault, for real: ext4 on a loop device whose backing file lives on a small tmpfs, a
//! thin-provisioned volume that runs out. Writes into the page cache succeed; their write-back
//! fails, `fdatasync` reports it once, and Linux reports the next `fdatasync` (on a new
//! descriptor) as fine while the records never reached the disk. A standby that simply
//! reconnected would rescan its copy from the page cache and count those records as held.
#![allow(clippy::disallowed_methods)] // the test paces its writer with sleeps

mod replica_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use understudy_fix::replica::standby::ActivateError;
use understudy_fix::replica::{Mode, Receiver, Sender};

use replica_common::{cfg, free_addr, wait_until};
use understudy_fix::store::{FileStore, GroupCommit, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

/// How much the backing tmpfs holds at first: the volume runs out after about this much.
const BACKING: &str = "6m";
/// The volume's size as its file system sees it.
const VOLUME: &str = "64M";

/// ext4 on a loop device backed by a file on a tmpfs of [`BACKING`]; undone on drop.
struct ThinDisk {
    back: PathBuf,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
}

fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl ThinDisk {
    /// The volume under `root`; the reason when it cannot be made here (root, `losetup`,
    /// `mkfs.ext4` and loop devices are needed).
    fn make(root: &Path) -> Result<ThinDisk, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("a loop device and mounts need root".into());
        }
        let back = root.join("back");
        let mnt = root.join("mnt");
        for d in [&back, &mnt] {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let b = back.to_string_lossy().into_owned();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={BACKING}"), "tmpfs", &b],
        )?;
        let mut disk = ThinDisk {
            back,
            mnt,
            dev: None,
            mounted: false,
        };
        let img = disk.back.join("disk.img").to_string_lossy().into_owned();
        run("truncate", &["-s", VOLUME, &img])?;
        disk.dev = Some(run("losetup", &["-f", "--show", &img])?);
        let dev = disk.dev.clone().unwrap_or_default();
        run(
            "mkfs.ext4",
            &["-q", "-F", "-E", "lazy_itable_init=1,nodiscard", &dev],
        )?;
        run("mount", &[&dev, &disk.mnt.to_string_lossy()])?;
        disk.mounted = true;
        Ok(disk)
    }

    /// Gives the volume room again: the backing tmpfs grows.
    fn grow(&self) {
        run(
            "mount",
            &["-o", "remount,size=512m", &self.back.to_string_lossy()],
        )
        .expect("grow the backing tmpfs");
    }
}

impl Drop for ThinDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("umount", &["-l", &self.mnt.to_string_lossy()]);
        }
        if let Some(dev) = &self.dev {
            let _ = run("losetup", &["-d", dev]);
        }
        let _ = run("umount", &["-l", &self.back.to_string_lossy()]);
    }
}

/// A sent message of about 4 KiB numbered `i`.
fn big_frame(i: u64) -> Vec<u8> {
    format!(
        "8=FIX.4.4\u{1}35=8\u{1}34={i}\u{1}58={}\u{1}",
        "x".repeat(4000)
    )
    .into_bytes()
}

#[test]
fn a_standby_whose_fdatasync_failed_is_not_ready_refuses_the_stream_and_cannot_activate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = match ThinDisk::make(tmp.path()) {
        Ok(d) => d,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let store = disk.mnt.join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let b_addr = free_addr();
    let rx = Receiver::start(cfg(Mode::Sync, b_addr, vec![]), &store).expect("receiver");

    let a = tempfile::tempdir().expect("tmp");
    let sid = SessionId::new(BeginString::Fix44, "GW", "CLIENT1");
    let epoch = 3;
    let mut st = FileStore::open(a.path(), &sid, epoch, SyncPolicy::Group).expect("open");
    let tx = Sender::start(
        cfg(Mode::Sync, free_addr(), vec![b_addr]),
        a.path(),
        epoch,
        GroupCommit::shared().expect("syncer"),
    )
    .expect("sender");
    wait_until("the standby in sync", Duration::from_secs(5), || {
        tx.health().peers[0].in_sync
    });

    // Records until the standby's volume runs out and an fdatasync there fails.
    let disk_failed = |rx: &Receiver| {
        rx.health()
            .reason
            .is_some_and(|r| r.contains("disk failed"))
    };
    let mut seq = 0;
    while !disk_failed(&rx) {
        assert!(
            seq < 10_000,
            "40 MB sent and the standby never reported that its disk failed (or forgot it at once)"
        );
        for _ in 0..16 {
            seq += 1;
            st.save_sent(seq, &big_frame(seq)).expect("save");
        }
        st.sync().expect("durable on the active");
    }
    println!("the standby's disk failed after {seq} records of 4 KiB");

    // Room again. A standby that reconnected as if nothing had happened would rescan its
    // copy from the page cache, catch up and be ready within a few reconnects (20 ms each).
    disk.grow();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        seq += 1;
        st.save_sent(seq, &big_frame(seq)).expect("save");
        st.sync().expect("durable on the active");
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = rx.health();
    assert!(!h.ready, "ready again after its disk failed: {h:?}");
    assert!(disk_failed(&rx), "{:?}", h.reason);
    let refused = tx.health().peers[0].error.clone().unwrap_or_default();
    assert!(
        refused.contains("disk failed"),
        "the active was not told why: {refused}"
    );
    assert!(
        matches!(
            rx.activate(epoch + 1),
            Err(ActivateError::DiskFailed { .. })
        ),
        "activated on a copy its disk may have lost"
    );
    tx.stop();
}
