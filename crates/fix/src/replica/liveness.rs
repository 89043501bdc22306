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

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How often the ticker runs.
pub const TICK: Duration = Duration::from_millis(10);

/// A gap between ticks longer than this is time the process did not run.
pub const FREEZE_GAP: Duration = Duration::from_millis(100);

/// Freezes at least this long are reported by [`Liveness::unreported`].
pub const REPORTED_GAP: Duration = Duration::from_millis(500);

/// The running clock: ticks in, time frozen out. Ticks are given to it ([`tick`](Self::tick)),
/// so the logic is tested with made-up instants; [`process`] runs the real ticker, and a
/// thread that waits on a hold ticks too (so a ticker thread that stopped running cannot
/// make a hold last for ever).
#[derive(Debug)]
pub struct Liveness {
    /// One lock for both numbers: a reading between a tick's two updates counted a gap twice
    /// (review 23).
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    last_tick: Instant,
    frozen: Duration,
    /// `frozen` when a freeze was last reported.
    reported: Duration,
}

/// What of a gap between ticks counts as frozen: all but one tick, once it is longer than
/// [`FREEZE_GAP`].
fn excess(gap: Duration) -> Duration {
    if gap > FREEZE_GAP {
        gap.saturating_sub(TICK)
    } else {
        Duration::ZERO
    }
}

impl Liveness {
    /// A clock whose first tick is at `base`.
    pub fn new(base: Instant) -> Liveness {
        Liveness {
            inner: Mutex::new(Inner {
                last_tick: base,
                frozen: Duration::ZERO,
                reported: Duration::ZERO,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread ran at `now` (ticks from several threads, in any order, count each gap once).
    pub fn tick(&self, now: Instant) {
        let mut l = self.lock();
        if now > l.last_tick {
            let gap = excess(now - l.last_tick);
            l.frozen += gap;
            l.last_tick = now;
        }
    }

    /// Time found frozen up to `now`, the gap still open since the last tick included.
    /// Only the difference between two readings means anything.
    pub fn frozen_until(&self, now: Instant) -> Duration {
        let l = self.lock();
        l.frozen + excess(now.saturating_duration_since(l.last_tick))
    }

    /// Of the time from `then` to `now`, how long this process was running; `frozen_then`
    /// is [`frozen_until`](Self::frozen_until) read at `then`.
    pub fn running_since(&self, then: Instant, frozen_then: Duration, now: Instant) -> Duration {
        let frozen = self.frozen_until(now).saturating_sub(frozen_then);
        now.saturating_duration_since(then).saturating_sub(frozen)
    }

    /// Time found frozen since the last report, once it reaches [`REPORTED_GAP`]: for a
    /// log line written by a thread that may wait on its log (never the ticker: a ticker
    /// blocked on a full stderr pipe would count every hold's time as frozen).
    pub fn unreported(&self) -> Option<Duration> {
        let mut l = self.lock();
        let d = l.frozen.saturating_sub(l.reported);
        if d < REPORTED_GAP {
            return None;
        }
        l.reported = l.frozen;
        Some(d)
    }
}

/// The process's clock, its ticker started on first use (an error if the thread cannot be
/// started). The ticker does nothing but tick: no I/O that could block it.
pub fn process() -> std::io::Result<&'static Liveness> {
    static LIVE: OnceLock<Arc<Liveness>> = OnceLock::new();
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let live = LIVE.get_or_init(|| Arc::new(Liveness::new(Instant::now())));
    let started = STARTED.get_or_init(|| {
        let l = live.clone();
        std::thread::Builder::new()
            .name("fix-liveness".into())
            .spawn(move || loop {
                l.tick(Instant::now());
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

    #[test]
    fn a_freeze_is_reported_once() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        l.tick(t0 + ms(10));
        l.tick(t0 + ms(300)); // 280 ms: frozen, not reported yet
        assert_eq!(l.unreported(), None);
        l.tick(t0 + ms(700)); // 390 ms more
        assert_eq!(l.unreported(), Some(ms(670)));
        assert_eq!(l.unreported(), None);
    }

    /// Ticks from two threads at once (the ticker and a thread waiting on a hold) count each
    /// gap once: the total frozen never exceeds the time passed.
    #[test]
    fn ticks_from_several_threads_count_a_gap_once() {
        let t0 = Instant::now();
        let l = Arc::new(Liveness::new(t0));
        let at = move |i: u64| t0 + ms(150 * i);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 1..=200 {
                        l.tick(at(i));
                        let f = l.frozen_until(at(200));
                        assert!(f <= at(200) - t0, "{f:?} frozen in {:?}", at(200) - t0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a ticking thread");
        }
        assert_eq!(l.frozen_until(at(200)), (ms(150) - TICK) * 200);
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
