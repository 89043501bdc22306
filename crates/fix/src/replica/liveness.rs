//! How long this process was not running: stopped (SIGSTOP), its VM paused, or starved of
//! every core. A sync hold measures a standby's silence in wall time; time this process did
//! not run is no silence of the standby's. Counted as such, an active whose VM was paused
//! beyond `sync_timeout` woke, found every hold expired, degraded and sent what it held
//! before its links could learn that a standby had taken over meanwhile (review 22, R7).
//!
//! A thread ticks every [`TICK`]; a tick that comes more than [`FREEZE_GAP`] after the one
//! before adds the gap (less one tick) to the time frozen. A gap still open (the process
//! runs again and the ticker has not yet) counts too, so whichever thread runs first after a
//! freeze sees it. A tick merely late (a loaded machine) counts as frozen as well: that only
//! makes a hold last longer, never shorter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often the ticker runs.
pub const TICK: Duration = Duration::from_millis(10);

/// A gap between ticks longer than this is time the process did not run.
pub const FREEZE_GAP: Duration = Duration::from_millis(100);

/// Freezes at least this long are logged.
const REPORTED_GAP: Duration = Duration::from_millis(500);

/// The running clock: ticks in, time frozen out. Ticks are given to it (`tick`), so the
/// logic is tested with made-up instants; [`process`] runs the real ticker.
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    /// Nanoseconds after `base` of the last tick.
    last_tick: AtomicU64,
    /// Nanoseconds found frozen so far.
    frozen: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What of a gap between ticks counts as frozen: all but one tick, once it is longer than
/// [`FREEZE_GAP`].
fn excess(gap: u64) -> u64 {
    if gap > nanos(FREEZE_GAP) {
        gap.saturating_sub(nanos(TICK))
    } else {
        0
    }
}

impl Liveness {
    /// A clock whose first tick is at `base`.
    pub fn new(base: Instant) -> Liveness {
        Liveness {
            base,
            last_tick: AtomicU64::new(0),
            frozen: AtomicU64::new(0),
        }
    }

    /// The ticker ran at `now`.
    pub fn tick(&self, now: Instant) {
        let at = nanos(now.saturating_duration_since(self.base));
        let last = self.last_tick.load(Ordering::Acquire);
        let gap = excess(at.saturating_sub(last));
        if gap > 0 {
            self.frozen.fetch_add(gap, Ordering::AcqRel);
        }
        // After `frozen`: a reader that sees this tick sees its gap counted.
        self.last_tick.store(at.max(last), Ordering::Release);
    }

    /// Time found frozen up to `now`, the gap still open since the last tick included.
    /// Only the difference between two readings means anything.
    pub fn frozen_until(&self, now: Instant) -> Duration {
        let at = nanos(now.saturating_duration_since(self.base));
        loop {
            let last = self.last_tick.load(Ordering::Acquire);
            let frozen = self.frozen.load(Ordering::Acquire);
            // A tick between the two loads may have counted the open gap already.
            if self.last_tick.load(Ordering::Acquire) == last {
                let open = excess(at.saturating_sub(last));
                return Duration::from_nanos(frozen.saturating_add(open));
            }
        }
    }

    /// Of the time from `then` to `now`, how long this process was running; `frozen_then`
    /// is [`frozen_until`](Self::frozen_until) read at `then`.
    pub fn running_since(&self, then: Instant, frozen_then: Duration, now: Instant) -> Duration {
        let frozen = self.frozen_until(now).saturating_sub(frozen_then);
        now.saturating_duration_since(then).saturating_sub(frozen)
    }
}

/// The process's clock, its ticker started on first use (an error if the thread cannot be
/// started: without it every gap would look like a freeze that never ends).
pub fn process() -> std::io::Result<&'static Liveness> {
    static LIVE: OnceLock<Arc<Liveness>> = OnceLock::new();
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let live = LIVE.get_or_init(|| Arc::new(Liveness::new(Instant::now())));
    let started = STARTED.get_or_init(|| {
        let l = live.clone();
        std::thread::Builder::new()
            .name("fix-liveness".into())
            .spawn(move || loop {
                let before = l.frozen.load(Ordering::Acquire);
                l.tick(Instant::now());
                let gap =
                    Duration::from_nanos(l.frozen.load(Ordering::Acquire).saturating_sub(before));
                if gap >= REPORTED_GAP {
                    tracing::warn!(
                        gap = ?gap,
                        "this process did not run for {gap:?} (stopped, its VM paused, or \
                         starved of CPU); replication holds do not count that time"
                    );
                }
                // Spurious wake-ups only tick early.
                std::thread::park_timeout(TICK);
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    match started {
        Ok(()) => Ok(live),
        Err(e) => Err(std::io::Error::other(format!(
            "cannot start the liveness ticker: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn regular_ticks_freeze_nothing_and_a_long_gap_counts_less_one_tick() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        for i in 1..=50 {
            l.tick(t0 + ms(10 * i));
        }
        assert_eq!(l.frozen_until(t0 + ms(505)), Duration::ZERO);
        // Stopped for 3 s after the tick at 500 ms.
        l.tick(t0 + ms(3500));
        assert_eq!(l.frozen_until(t0 + ms(3500)), ms(2990));
        // What ran from 100 ms to 3600 ms: all but the freeze.
        let at_100 = Duration::ZERO;
        assert_eq!(
            l.running_since(t0 + ms(100), at_100, t0 + ms(3600)),
            ms(3500 - 2990)
        );
    }

    #[test]
    fn a_gap_still_open_counts_before_the_ticker_runs_again() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        l.tick(t0 + ms(10));
        // The first thread to run after a 2 s stop is not the ticker.
        assert_eq!(l.frozen_until(t0 + ms(2010)), ms(1990));
        // When the ticker runs, the same gap is counted once.
        l.tick(t0 + ms(2012));
        assert_eq!(l.frozen_until(t0 + ms(2015)), ms(1992));
    }

    proptest! {
        /// Whatever the ticks, time running plus time frozen is the time passed, the frozen
        /// part never shrinks as time goes on, and gaps up to FREEZE_GAP freeze nothing.
        #[test]
        fn running_and_frozen_add_up(gaps in proptest::collection::vec(0u64..5_000, 1..60)) {
            let t0 = Instant::now();
            let l = Liveness::new(t0);
            let mut now = t0;
            let mut before = Duration::ZERO;
            let mut expected = Duration::ZERO;
            for g in gaps {
                now += ms(g);
                let frozen = l.frozen_until(now);
                prop_assert!(frozen >= before);
                before = frozen;
                l.tick(now);
                if ms(g) > FREEZE_GAP {
                    expected += ms(g) - TICK;
                }
                prop_assert_eq!(l.frozen_until(now), expected);
                let running = l.running_since(t0, Duration::ZERO, now);
                prop_assert_eq!(running + expected, now - t0);
            }
        }
    }
}
