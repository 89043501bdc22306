//! How long a new active takes to open a session store, against the store's history.
//!
//! `cargo run --release -p understudy-fix --example store_open_time [DIR]` writes 250-byte
//! messages into one store under `DIR` (default: a fresh directory in /var/tmp, on disk),
//! each batch under a new epoch as after a failover, and times `FileStore::open` with the
//! next epoch:
//! - every message live (no reset): the time grows with the live period, which a resend
//!   may ask for from its first message;
//! - eight days of 100 000 messages, a new session period (a daily reset) each day: past
//!   the rotation size a reset starts a new generation and the older segments are deleted,
//!   so the files and the time stay those of about one day.

use std::time::{Duration, Instant};

use understudy_fix::store::{FileStore, SessionId, SessionStore, SyncPolicy};
use understudy_fix::tags::BeginString;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for daily_reset in [false, true] {
        let base = match std::env::args().nth(1) {
            Some(d) => tempfile::Builder::new()
                .prefix("store-open-")
                .tempdir_in(d)?,
            None => tempfile::Builder::new()
                .prefix("store-open-")
                .tempdir_in("/var/tmp")?,
        };
        run(base.path(), daily_reset)?;
    }
    Ok(())
}

fn run(dir: &std::path::Path, daily_reset: bool) -> Result<(), Box<dyn std::error::Error>> {
    let sid = SessionId::new(BeginString::Fix44, "GW", "EXCH");
    let sync = SyncPolicy::Batch {
        max_delay: Duration::from_secs(1),
    };
    let frame = vec![b'x'; 250];
    let mut epoch = 1;
    let batches: Vec<u64> = if daily_reset {
        vec![100_000; 8]
    } else {
        vec![100_000, 400_000, 1_600_000]
    };
    println!(
        "one session store under {}{}",
        dir.display(),
        if daily_reset {
            ", a new period each day"
        } else {
            ", every message live"
        }
    );
    for (day, batch) in batches.into_iter().enumerate() {
        let mut s = FileStore::open(dir, &sid, epoch, sync)?;
        if daily_reset {
            s.reset_for_period(1_800_000_000 + 86_400 * day as i64)?;
        }
        let first = s.next_sender_seq();
        for i in 0..batch {
            s.save_sent(first + i, &frame)?;
        }
        s.sync()?;
        drop(s);
        epoch += 1;
        let t = Instant::now();
        let s = FileStore::open(dir, &sid, epoch, sync)?;
        let took = t.elapsed();
        let files: Vec<u64> = std::fs::read_dir(dir.join(sid.dir_name()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .collect();
        println!(
            "  day {}: {:>9} messages live, {:>2} segments, {:>5} MB on disk, {:>5} MB replayed: \
             open with a new epoch {:>8.1} ms",
            day + 1,
            s.next_sender_seq() - 1,
            files.len(),
            files.iter().sum::<u64>() >> 20,
            s.recovery().bytes_replayed >> 20,
            took.as_secs_f64() * 1e3
        );
        drop(s);
        epoch += 1;
    }
    Ok(())
}
