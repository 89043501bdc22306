//! The clocks the harness reads, and waiting on a condition with a deadline.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall clock in Unix milliseconds (the clock of the agents' `since_unix_ms`).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall clock in Unix milliseconds, with the fraction (to compare with the agents'
/// `detected_unix_ms` in takeover records).
pub fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the host (the demo
/// service stamps its log lines and reports with it).
pub fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// A duration in milliseconds, with the fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Blocks this thread for `d`: real processes run in real time.
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// [`pause`] for `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    pause(Duration::from_millis(ms));
}

/// Polls `f` every 2 ms until it is true or `timeout` passes; true when it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(2), || f().then_some(())).is_some()
}

/// Polls `f` every `every` until it gives a value or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        pause(every);
    }
}
