//! The two safety checkers every failover test and benchmark runs: the overlap checker over
//! the demo service's log, and the two-Hot watcher over the agents' `/status`. Two actives at
//! once is the unforgivable bug.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::clock::{pause, unix_ms, wait_until};
use crate::http::http;

/// One line of the demo service's log: `<monotonic ns> <pid> <node> <event> <epoch>`.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// CLOCK_MONOTONIC, ns.
    pub ns: u64,
    /// The service process.
    pub pid: u32,
    /// Its agent's node name.
    pub node: String,
    /// `start`, `active`, `tick` or `stop`.
    pub event: String,
    /// The epoch the service acts under.
    pub epoch: u64,
}

impl LogLine {
    /// Parses one line; None for anything else.
    pub fn parse(l: &str) -> Option<LogLine> {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() != 5 {
            return None;
        }
        Some(LogLine {
            ns: f[0].parse().ok()?,
            pid: f[1].parse().ok()?,
            node: f[2].to_string(),
            event: f[3].to_string(),
            epoch: f[4].parse().ok()?,
        })
    }
}

/// Every well-formed line of the log at `path` (none when it does not exist).
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(LogLine::parse).collect()
}

/// One service process's time as the active: from its `active` line to its last `tick` or `stop`.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The service process.
    pub pid: u32,
    /// Its node.
    pub node: String,
    /// Its epoch.
    pub epoch: u64,
    /// The `active` line's time.
    pub start_ns: u64,
    /// The last `tick` or `stop` line's time.
    pub end_ns: u64,
    /// True when it logged `stop` (ended gracefully).
    pub stopped: bool,
}

/// Every active interval in the log, sorted by start; an error when a process changed its
/// epoch while active. A `start` line begins a new incarnation of its pid, so a reused pid is
/// not mistaken for the same process.
pub fn intervals(lines: &[LogLine]) -> Result<Vec<Interval>, String> {
    let mut open: BTreeMap<u32, Option<Interval>> = BTreeMap::new();
    let mut done = Vec::new();
    let mut sorted = lines.to_vec();
    sorted.sort_by_key(|l| l.ns);
    for l in sorted {
        match l.event.as_str() {
            "start" => {
                if let Some(Some(iv)) = open.insert(l.pid, None) {
                    done.push(iv);
                }
            }
            "active" => {
                let iv = Interval {
                    pid: l.pid,
                    node: l.node.clone(),
                    epoch: l.epoch,
                    start_ns: l.ns,
                    end_ns: l.ns,
                    stopped: false,
                };
                if let Some(Some(iv)) = open.insert(l.pid, Some(iv)) {
                    done.push(iv);
                }
            }
            "tick" | "stop" => {
                if let Some(Some(iv)) = open.get_mut(&l.pid) {
                    iv.end_ns = iv.end_ns.max(l.ns);
                    if l.epoch != iv.epoch {
                        return Err(format!(
                            "service pid {} changed epoch while active: {} then {}",
                            l.pid, iv.epoch, l.epoch
                        ));
                    }
                    if l.event == "stop" {
                        iv.stopped = true;
                    }
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values().flatten());
    done.sort_by_key(|i| i.start_ns);
    Ok(done)
}

/// The overlap checker, as an error: sorted by start, each active interval must end before the
/// next starts, and epochs must strictly increase. Returns the intervals.
pub fn verify_log(log: &Path) -> Result<Vec<Interval>, String> {
    let ivs = intervals(&read_log(log))?;
    for w in ivs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.end_ns >= b.start_ns {
            return Err(format!(
                "TWO ACTIVES: service pid {} on {} (epoch {}) was still active {:.3} ms after pid {} on {} (epoch {}) became active\nintervals: {ivs:#?}",
                a.pid,
                a.node,
                a.epoch,
                (a.end_ns - b.start_ns) as f64 / 1e6,
                b.pid,
                b.node,
                b.epoch
            ));
        }
        if b.epoch <= a.epoch {
            return Err(format!(
                "epoch did not increase between successive actives: pid {} on {} epoch {}, then pid {} on {} epoch {}\nintervals: {ivs:#?}",
                a.pid, a.node, a.epoch, b.pid, b.node, b.epoch
            ));
        }
    }
    Ok(ivs)
}

/// [`verify_log`], panicking on a violation (for tests).
#[track_caller]
pub fn check_overlaps(log: &Path) -> Vec<Interval> {
    verify_log(log).unwrap_or_else(|e| panic!("{e}"))
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// Polling sweeps over all nodes.
    pub sweeps: u64,
    /// Sweeps in which two or more nodes answered Hot (including ones explained by a handover
    /// between the two answers; see `violations`).
    pub two_hot_answers: u64,
    /// Two-Hot moments that are proven: both nodes said they had been Hot since before the
    /// earlier of the two requests was sent.
    pub violations: Vec<String>,
    /// Answers per node that said Hot.
    pub hot_answers: BTreeMap<String, u64>,
}

/// Polls every node's /status every few ms on a thread, recording moments two nodes were Hot.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    /// Completed sweeps so far, for [`Watcher::wait_sweeps`].
    sweeps: Arc<AtomicU64>,
    handle: Option<JoinHandle<WatchReport>>,
}

struct Answer {
    node: String,
    sent_ms: u64,
    since_ms: u64,
    epoch: u64,
}

impl Watcher {
    /// Starts watching `nodes` (name, admin address).
    pub fn start(nodes: Vec<(String, String)>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let sweeps = Arc::new(AtomicU64::new(0));
        let sweeps2 = sweeps.clone();
        let handle = std::thread::spawn(move || {
            let mut rep = WatchReport::default();
            while !s2.load(Ordering::Relaxed) {
                let mut hot: Vec<Answer> = Vec::new();
                for (name, addr) in &nodes {
                    let sent_ms = unix_ms();
                    let Ok((200, body)) = http("GET", addr, "/status", Duration::from_millis(200))
                    else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&body) else {
                        continue;
                    };
                    if v["mode"] == "Hot" {
                        *rep.hot_answers.entry(name.clone()).or_default() += 1;
                        hot.push(Answer {
                            node: name.clone(),
                            sent_ms,
                            since_ms: v["since_unix_ms"].as_u64().unwrap_or(0),
                            epoch: v["epoch"].as_u64().unwrap_or(0),
                        });
                    }
                }
                rep.sweeps += 1;
                if hot.len() > 1 {
                    rep.two_hot_answers += 1;
                    // A Hot answer proves the node was Hot over [since, sent]. Two such intervals
                    // that intersect are two actives at once; disjoint ones are a handover that
                    // happened between the two requests of the sweep.
                    for i in 0..hot.len() {
                        for j in i + 1..hot.len() {
                            let (a, b) = (&hot[i], &hot[j]);
                            if a.since_ms.max(b.since_ms) < a.sent_ms.min(b.sent_ms) {
                                rep.violations.push(format!(
                                    "{} (epoch {}, Hot since {}) and {} (epoch {}, Hot since {}) both Hot at {}",
                                    a.node,
                                    a.epoch,
                                    a.since_ms,
                                    b.node,
                                    b.epoch,
                                    b.since_ms,
                                    a.sent_ms.min(b.sent_ms)
                                ));
                            }
                        }
                    }
                }
                // Published after the sweep's answers are judged, so that a waiter sees them.
                sweeps2.store(rep.sweeps, Ordering::Release);
                pause(Duration::from_millis(3));
            }
            rep
        });
        Watcher {
            stop,
            sweeps,
            handle: Some(handle),
        }
    }

    /// Waits until `n` more sweeps over every node have completed; panics after `timeout`.
    pub fn wait_sweeps(&self, n: u64, timeout: Duration) {
        let target = self.sweeps.load(Ordering::Acquire) + n;
        assert!(
            wait_until(timeout, || self.sweeps.load(Ordering::Acquire) >= target),
            "the watcher did not complete {n} sweeps within {timeout:?}"
        );
    }

    /// Stops polling and asserts that no two nodes were ever Hot at once.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        let rep = match self.handle.take().map(JoinHandle::join) {
            Some(Ok(rep)) => rep,
            _ => panic!("the watcher thread failed"),
        };
        assert!(rep.sweeps > 0, "the watcher never completed a sweep");
        assert!(
            rep.violations.is_empty(),
            "TWO NODES HOT AT ONCE (watcher, {} sweeps):\n{}",
            rep.sweeps,
            rep.violations.join("\n")
        );
        rep
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
