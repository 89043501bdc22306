//! How long a new active takes to open a session store, against the store's history.
//!
//! `cargo run --release -p understudy-fix --example store_open_time [DIR]` writes 250-byte
//! messages into one store under `DIR` (default: a fresh directory in /var/tmp, on disk),
//! each batch under a new epoch as after a failover, and times `FileStore::open` with the
//! next epoch; then the same with a new session period (a daily reset) before every batch,
//! so that only the last batch is live. Segments are never removed and `open` replays every
//! one of them, so the time grows with everything the store ever held, new periods
//! included.

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
    println!(
        "one session store under {}{}",
        dir.display(),
        if daily_reset {
            ", a new period before each batch"
        } else {
            ""
        }
    );
    for (day, batch) in [100_000u64, 400_000, 1_600_000].into_iter().enumerate() {
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
        let bytes: u64 = std::fs::read_dir(dir.join(sid.dir_name()))?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "  {:>9} messages live, {:>5} MB on disk: open with a new epoch {:>8.1} ms",
            s.next_sender_seq() - 1,
            bytes >> 20,
            took.as_secs_f64() * 1e3
        );
        drop(s);
        epoch += 1;
    }
    Ok(())
}
