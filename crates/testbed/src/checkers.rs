//! The two safety checkers every failover test and benchmark runs: the overlap checker over
//! the demo service's log, and the two-Hot watcher over the agents' `/status`. Two actives at
//! once is the unforgivable bug.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use understudy_control::AgentClient;

use crate::clock::{unix_ms, wait_until};

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
#[derive(Debug, Default, Clone)]
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

/// Polls every node's `GET /status` all through a test, a benchmark or a drill, on a thread of
/// its own (so it keeps its pace whatever the caller waits for), and records any moment two
/// nodes were Hot at once. It needs nothing from the services, so it also checks a group whose
/// services keep no log.
///
/// A Hot answer proves the node was Hot from its `since_unix_ms` until the request was sent.
/// The requests of one sweep go out together; two Hot answers whose proven intervals intersect
/// are two actives at once, disjoint ones a handover that happened between the two requests.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WatchReport>>,
    handle: Option<JoinHandle<()>>,
}

struct Answer {
    node: String,
    sent_ms: u64,
    since_ms: u64,
    epoch: u64,
}

impl Watcher {
    /// Watches the local agents `nodes` (name, admin address; plain HTTP), a sweep every 3 ms.
    pub fn start(nodes: Vec<(String, String)>) -> Watcher {
        // A stopped agent answers nothing: a short timeout keeps the sweeps over the others going.
        let clients = nodes
            .into_iter()
            .map(|(name, addr)| (name, AgentClient::new(&addr, Duration::from_millis(200))))
            .collect();
        Watcher::with_clients(clients, Duration::from_millis(3))
            .unwrap_or_else(|e| panic!("cannot start the two-Hot watcher: {e:#}"))
    }

    /// Watches the agents behind `clients` (name, client: remote, with a token or TLS), a sweep
    /// every `interval`.
    pub fn with_clients(
        clients: Vec<(String, AgentClient)>,
        interval: Duration,
    ) -> anyhow::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(WatchReport::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop2, report2) = (stop.clone(), report.clone());
        let handle = std::thread::Builder::new()
            .name("two-hot-watcher".into())
            .spawn(move || rt.block_on(watch(clients, interval, stop2, report2)))?;
        Ok(Watcher {
            stop,
            report,
            handle: Some(handle),
        })
    }

    /// Two-Hot moments found so far.
    pub fn violations(&self) -> usize {
        self.snapshot().violations.len()
    }

    fn snapshot(&self) -> WatchReport {
        match self.report.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Waits until `n` more sweeps over every node have completed; panics after `timeout`.
    pub fn wait_sweeps(&self, n: u64, timeout: Duration) {
        let target = self.snapshot().sweeps + n;
        assert!(
            wait_until(timeout, || self.snapshot().sweeps >= target),
            "the watcher did not complete {n} sweeps within {timeout:?}"
        );
    }

    /// Stops polling and returns what was seen.
    pub fn stop(mut self) -> WatchReport {
        self.halt();
        self.snapshot()
    }

    /// Stops polling and asserts that it swept and that no two nodes were ever Hot at once.
    pub fn finish(self) -> WatchReport {
        let rep = self.stop();
        assert!(rep.sweeps > 0, "the watcher never completed a sweep");
        assert!(
            rep.violations.is_empty(),
            "TWO NODES HOT AT ONCE (watcher, {} sweeps):\n{}",
            rep.sweeps,
            rep.violations.join("\n")
        );
        rep
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn watch(
    clients: Vec<(String, AgentClient)>,
    interval: Duration,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WatchReport>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let answers = futures_util::future::join_all(clients.iter().map(|(name, c)| async move {
            let sent_ms = unix_ms();
            let st = c.status().await.ok()?;
            st.is_hot().then(|| Answer {
                node: name.clone(),
                sent_ms,
                since_ms: st.node.since_unix_ms,
                epoch: st.node.epoch,
            })
        }))
        .await;
        let hot: Vec<Answer> = answers.into_iter().flatten().collect();
        {
            // The verdict and the count under one lock: a waiter on the count sees the verdict.
            let mut rep = match report.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            for a in &hot {
                *rep.hot_answers.entry(a.node.clone()).or_default() += 1;
            }
            if hot.len() > 1 {
                rep.two_hot_answers += 1;
            }
            for (i, a) in hot.iter().enumerate() {
                for b in &hot[i + 1..] {
                    if a.since_ms.max(b.since_ms) < a.sent_ms.min(b.sent_ms) {
                        rep.violations.push(format!(
                            "TWO HOT: {} (epoch {}, Hot since {}) and {} (epoch {}, Hot since {}) both Hot at {} (Unix ms)",
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
            rep.sweeps += 1;
        }
        tokio::time::sleep(interval).await;
    }
}
