//! What a [`PriceClient`] hands the application, recorded for the drivers ([`QuoteRecorder`]:
//! epochs, arrival times, subscriptions seen), and the exchange simulator and price server
//! commands the price drivers start.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{sleep, Instant};
use understudy_pricefeed::client::{ClientEvent, PriceClient, Quote};
use understudy_pricefeed::exchange_sim::unix_ns;

use super::consumer::Histogram;
use crate::proc::Proc;

/// Aborts a spawned task when dropped, so the recorder's task never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The arguments of `understudy exchange-sim`.
pub fn exchange_sim_args(listen: SocketAddr, symbols: u32, rate: u32) -> Vec<String> {
    vec![
        "exchange-sim".into(),
        "--listen".into(),
        listen.to_string(),
        "--symbols".into(),
        symbols.to_string(),
        "--rate".into(),
        rate.to_string(),
    ]
}

/// The service command of a price server run by an agent: `exe price-server …`.
pub fn price_server_command(exe: &Path, upstream: SocketAddr, listen: SocketAddr) -> Vec<String> {
    vec![
        exe.display().to_string(),
        "price-server".into(),
        "--upstream".into(),
        upstream.to_string(),
        "--listen".into(),
        listen.to_string(),
    ]
}

/// Starts `understudy exchange-sim` (its output appended to `log`, or discarded) and waits
/// until it accepts connections.
pub async fn start_exchange(
    exe: &Path,
    listen: SocketAddr,
    symbols: u32,
    rate: u32,
    log: Option<&Path>,
) -> anyhow::Result<Proc> {
    let args = exchange_sim_args(listen, symbols, rate);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = crate::proc::understudy(exe, &args);
    match log {
        Some(path) => crate::proc::log_to(&mut cmd, path)?,
        None => {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
    }
    let child = Proc::spawn(&mut cmd)?;
    crate::http::listening(listen, Duration::from_secs(10)).await?;
    Ok(child)
}

/// A stand-alone price server (no agent: the primary at epoch 0) with `args` added to its
/// command line, fed by an exchange-sim of its own (20 instruments, 1000 updates/s), logging
/// into `dir/ex.log` and `dir/px.log`: (exchange, server, the server's client address), once
/// the server listens.
pub async fn start_standalone(
    exe: &Path,
    dir: &Path,
    args: &[String],
) -> anyhow::Result<(Proc, Proc, SocketAddr)> {
    let addrs = crate::ports::free_addrs(2)?;
    let (ex, listen) = (addrs[0], addrs[1]);
    let exchange = start_exchange(exe, ex, 20, 1000, Some(&dir.join("ex.log"))).await?;
    let mut all = price_server_command(exe, ex, listen);
    all.remove(0);
    all.extend_from_slice(args);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut cmd = crate::proc::understudy(exe, &all);
    crate::proc::log_to(&mut cmd, &dir.join("px.log"))?;
    let server = Proc::spawn(&mut cmd)?;
    if let Err(e) = crate::http::listening(listen, Duration::from_secs(10)).await {
        let log = std::fs::read_to_string(dir.join("px.log")).unwrap_or_default();
        anyhow::bail!("the price server does not listen ({e}): {log}");
    }
    Ok((exchange, server, listen))
}

/// `SYM1` … `SYMn`.
pub fn symbols(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("SYM{i}")).collect()
}

/// What a [`QuoteRecorder`] has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Quotes delivered to the application.
    pub quotes: u64,
    /// Highest epoch of any delivered quote.
    pub highest_epoch: u64,
    /// Quotes whose epoch was lower than one delivered before them: must stay 0.
    pub older_after_newer: u64,
    /// Per epoch: arrival of its first quote.
    pub first_at: HashMap<u64, Instant>,
    /// Per epoch: the instruments delivered at that epoch, with the arrival of their first quote.
    pub symbols_at: HashMap<u64, HashMap<String, Instant>>,
    /// Per epoch: quotes delivered at that epoch that are updates (not snapshots).
    pub updates_at: HashMap<u64, u64>,
    /// Arrival of the latest quote.
    pub last_quote_at: Option<Instant>,
    /// Latest exchange time (Unix ns) among delivered quotes.
    pub last_exch_time_ns: u64,
    /// Largest gap between two consecutive quotes.
    pub max_gap: Duration,
    /// `PrimaryLost` events, with their reason.
    pub primary_lost: Vec<String>,
    /// `Failover` events (new primary, epoch).
    pub failovers: Vec<(SocketAddr, u64)>,
    /// `Rejected` events (symbol, message).
    pub rejected: Vec<(String, String)>,
    /// `ServerConnected` events per server: a count, so a driver can wait for a reconnection.
    pub connects: HashMap<SocketAddr, u64>,
    /// The latest quote of every instrument.
    pub latest: HashMap<String, Quote>,
    /// Age (exchange time → delivery) of every update delivered, in nanoseconds.
    pub age_ns: Histogram,
}

impl Recorded {
    /// Instruments delivered at an epoch higher than `epoch`.
    pub fn symbols_after(&self, epoch: u64) -> HashSet<String> {
        self.symbols_at
            .iter()
            .filter(|(e, _)| **e > epoch)
            .flat_map(|(_, s)| s.keys().cloned())
            .collect()
    }

    /// Instruments delivered at exactly `epoch`.
    pub fn symbols_at_epoch(&self, epoch: u64) -> usize {
        self.symbols_at.get(&epoch).map_or(0, HashMap::len)
    }

    /// When the last of `want` instruments had its first quote at an epoch above `epoch`
    /// (None while some are missing).
    pub fn all_back_at(&self, epoch: u64, want: usize) -> Option<Instant> {
        let mut first: HashMap<&str, Instant> = HashMap::new();
        for (_, syms) in self.symbols_at.iter().filter(|(e, _)| **e > epoch) {
            for (s, t) in syms {
                let f = first.entry(s.as_str()).or_insert(*t);
                *f = (*f).min(*t);
            }
        }
        if first.len() < want {
            return None;
        }
        first.values().max().copied()
    }

    /// Arrival of the first quote with an epoch higher than `epoch`.
    pub fn first_after(&self, epoch: u64) -> Option<Instant> {
        self.first_at
            .iter()
            .filter(|(e, _)| **e > epoch)
            .map(|(_, t)| *t)
            .min()
    }
}

/// Owns a [`PriceClient`] and records, from a task of its own, every event the application
/// would see; the driver reads [`QuoteRecorder::snapshot`] whenever it likes.
pub struct QuoteRecorder {
    state: Arc<Mutex<Recorded>>,
    _task: AbortOnDrop,
}

fn lock(m: &Mutex<Recorded>) -> MutexGuard<'_, Recorded> {
    // The recorder only counts; a poisoned lock still holds usable counts.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QuoteRecorder {
    /// Starts recording `client`'s events. Must be called inside a Tokio runtime.
    pub fn start(mut client: PriceClient) -> Self {
        let state = Arc::new(Mutex::new(Recorded::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = client.next_event().await {
                let now = Instant::now();
                let mut r = lock(&st);
                match ev {
                    ClientEvent::Quote(q) => {
                        r.quotes += 1;
                        if q.epoch < r.highest_epoch {
                            r.older_after_newer += 1;
                        }
                        r.highest_epoch = r.highest_epoch.max(q.epoch);
                        r.first_at.entry(q.epoch).or_insert(now);
                        if !q.snapshot {
                            *r.updates_at.entry(q.epoch).or_default() += 1;
                            r.age_ns.record(age_ns(q.exch_time_ns));
                        }
                        if let Some(prev) = r.last_quote_at {
                            r.max_gap = r.max_gap.max(now - prev);
                        }
                        r.last_quote_at = Some(now);
                        r.last_exch_time_ns = r.last_exch_time_ns.max(q.exch_time_ns);
                        let at = r.symbols_at.entry(q.epoch).or_default();
                        if !at.contains_key(&q.symbol) {
                            at.insert(q.symbol.clone(), now);
                        }
                        r.latest.insert(q.symbol.clone(), q);
                    }
                    ClientEvent::PrimaryLost { reason, .. } => r.primary_lost.push(reason),
                    ClientEvent::Failover { server, epoch, .. } => {
                        r.failovers.push((server, epoch))
                    }
                    ClientEvent::Rejected {
                        symbol, message, ..
                    } => r.rejected.push((symbol, message)),
                    ClientEvent::ServerConnected { server } => {
                        *r.connects.entry(server).or_default() += 1
                    }
                    ClientEvent::ServerLost { .. } => {}
                }
            }
        });
        QuoteRecorder {
            state,
            _task: AbortOnDrop(task),
        }
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Recorded {
        lock(&self.state).clone()
    }

    /// Reads the recorded state without copying it.
    pub fn with<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&lock(&self.state))
    }

    /// Resets the largest gap between quotes and the age histogram (to measure one phase).
    pub fn reset_phase(&self) {
        let mut r = lock(&self.state);
        r.max_gap = Duration::ZERO;
        r.age_ns = Histogram::default();
    }

    /// Waits until `cond` holds on the recorded state, polling every millisecond.
    pub async fn wait_for(&self, within: Duration, cond: impl Fn(&Recorded) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.with(&cond) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// How old a price stamped `exch_time_ns` is now.
pub fn age_ns(exch_time_ns: u64) -> u64 {
    unix_ns().saturating_sub(exch_time_ns)
}
