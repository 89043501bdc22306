//! The consumer side of the fan-out benchmark (`understudy bench fanout`): many clients
//! subscribed to every instrument of one exchange stream, each counting what it receives.
//!
//! The benchmark runs the clients of each side in a process of their own (`understudy bench
//! fanout-consumer`), so neither side's consumers share a runtime with the other side or with
//! the driver. This module holds what both sides share — the measurement protocol
//! ([`measure`]), the per-client counting ([`ClientStats`]), the latency [`Histogram`] and the
//! [`RunReport`] a consumer process prints — and our side's clients ([`run_ours_clients`]).
//! The NATS side is in [`super::fanout`].
//!
//! Latency of an update: the client's arrival time minus the exchange's timestamp, both read
//! from `CLOCK_REALTIME` (Unix nanoseconds) in different processes on one host.
//!
//! Updates a client never saw show up as gaps in the per-instrument exchange sequence numbers:
//! our server conflates for a client that falls behind (latest price wins), a NATS client drops
//! when its bounded queue is full. Both count as "skipped".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use understudy_pricefeed::client::{ClientEvent, ClientOptions, PriceClient};

use super::recorder;

/// Settings of one side's consumers in one run.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Number of clients.
    pub clients: usize,
    /// Instruments; each client subscribes to all of them.
    pub instruments: u32,
    /// Longest time given to connect, subscribe and see every instrument before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub measure: Duration,
}

/// Which phase the client tasks are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and subscribing; nothing counts yet.
    Warmup,
    /// Counting.
    Measure,
    /// Done: the client tasks return their counts.
    Stop,
}

/// Latency histogram with logarithmic buckets (64 per power of two: under 1.6 % error),
/// constant memory whatever the number of samples.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const HALF: u64 = 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (2 * HALF + 64 * HALF) as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 2 * HALF {
            return v as usize;
        }
        let msb = 63 - u64::from(v.leading_zeros());
        let shift = msb - 6; // v >> shift is in [64, 128)
        (2 * HALF + (shift - 1) * HALF + ((v >> shift) - HALF)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * HALF {
            return i;
        }
        let shift = (i - 2 * HALF) / HALF + 1;
        let m = (i - 2 * HALF) % HALF + HALF;
        (m << shift) + (1 << shift) / 2
    }

    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    /// The largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// What the clients of one side measured in one run.
#[derive(Debug, Clone, Default)]
pub struct FanoutRun {
    /// Clients that received every instrument before the measurement started.
    pub clients_ready: usize,
    /// Updates delivered to the application during the measurement, all clients together.
    pub delivered: u64,
    /// Exchange updates the clients never saw (sequence gaps: conflated or dropped).
    pub skipped: u64,
    /// Length of the measurement in seconds.
    pub secs: f64,
    /// Exchange-to-client latency of every delivered update, in nanoseconds.
    pub latency_ns: Histogram,
}

impl FanoutRun {
    /// The run as a consumer process reports it; `extra` holds side-specific counts.
    pub fn report(&self, extra: SideCounts) -> RunReport {
        RunReport {
            clients_ready: self.clients_ready,
            delivered: self.delivered,
            skipped: self.skipped,
            secs: self.secs,
            samples: self.latency_ns.count(),
            p50_ns: self.latency_ns.quantile(0.5),
            p99_ns: self.latency_ns.quantile(0.99),
            max_ns: self.latency_ns.max(),
            extra,
        }
    }
}

/// Counts only one side has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounts {
    /// Messages the client library dropped because the application's queue was full, over
    /// the whole run, warm-up included (NATS: async-nats slow-consumer events, a lower bound:
    /// the library drops events too when its event channel is full).
    pub queue_drops_at_least: Option<u64>,
    /// Connections lost over the whole run, warm-up included (NATS: a server disconnects a
    /// slow consumer).
    pub reconnects: Option<u64>,
}

/// One run of one side, as the consumer process prints it (one JSON line on stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Clients that received every instrument before the measurement started.
    pub clients_ready: usize,
    /// Updates delivered during the measurement, all clients together.
    pub delivered: u64,
    /// Exchange updates the clients never saw (sequence gaps).
    pub skipped: u64,
    /// Length of the measurement in seconds.
    pub secs: f64,
    /// Latency samples (one per delivered update).
    pub samples: u64,
    /// Median latency, ns (histogram bucket, under 1.6 % error).
    pub p50_ns: u64,
    /// 99th percentile latency, ns.
    pub p99_ns: u64,
    /// Largest latency, ns (exact).
    pub max_ns: u64,
    /// Side-specific counts.
    pub extra: SideCounts,
}

impl RunReport {
    /// Updates delivered per second.
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// What one client counts.
#[derive(Debug, Default)]
pub struct ClientStats {
    delivered: u64,
    skipped: u64,
    latency_ns: Histogram,
    last_seq: HashMap<String, u64>,
}

impl ClientStats {
    /// One update arrived; `measuring` says whether it counts.
    pub fn update(&mut self, symbol: &str, seq: u64, exch_time_ns: u64, measuring: bool) {
        let prev = match self.last_seq.get_mut(symbol) {
            Some(p) => std::mem::replace(p, seq),
            None => {
                self.last_seq.insert(symbol.to_string(), seq);
                0
            }
        };
        if measuring {
            self.delivered += 1;
            self.latency_ns.record(recorder::age_ns(exch_time_ns));
            if prev != 0 && seq > prev + 1 {
                self.skipped += seq - prev - 1;
            }
        }
    }

    /// A first price (a snapshot): the start of the instrument's sequence, not timed.
    pub fn first_price(&mut self, symbol: String, seq: u64) {
        self.last_seq.insert(symbol, seq);
    }

    /// Instruments with at least one price.
    pub fn instruments_seen(&self) -> usize {
        self.last_seq.len()
    }
}

/// The warm-up ended before every client had a price for every instrument: the run measures
/// nothing rather than fewer clients than asked.
#[derive(Debug)]
pub struct NotReady {
    /// Clients that were ready.
    pub ready: usize,
    /// Clients asked for.
    pub clients: usize,
    /// The warm-up's bound.
    pub warmup: Duration,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "only {} of {} clients had a price for every instrument after {:?} of warm-up: \
             the machine is too loaded, or the server too slow, to measure every client; \
             nothing measured",
            self.ready, self.clients, self.warmup
        )
    }
}

impl std::error::Error for NotReady {}

/// The measurement protocol of both sides: wait until every client has a price for every
/// instrument (an error if the warm-up's bound passes first), settle, measure, stop, merge what
/// the tasks counted.
pub async fn measure(
    cfg: &ConsumerConfig,
    phase: &watch::Sender<Phase>,
    ready: &AtomicUsize,
    tasks: Vec<tokio::task::JoinHandle<ClientStats>>,
) -> Result<FanoutRun, NotReady> {
    let deadline = Instant::now() + cfg.warmup;
    while ready.load(Ordering::Relaxed) < cfg.clients {
        if Instant::now() >= deadline {
            let _ = phase.send(Phase::Stop);
            return Err(NotReady {
                ready: ready.load(Ordering::Relaxed),
                clients: cfg.clients,
                warmup: cfg.warmup,
            });
        }
        sleep(Duration::from_millis(10)).await;
    }
    // Let connection bursts (snapshots, first updates) drain before measuring.
    sleep(Duration::from_millis(500)).await;
    let clients_ready = ready.load(Ordering::Relaxed);
    let _ = phase.send(Phase::Measure);
    let started = Instant::now();
    sleep(cfg.measure).await;
    let _ = phase.send(Phase::Stop);
    let secs = started.elapsed().as_secs_f64();
    let mut run = FanoutRun {
        clients_ready,
        secs,
        ..FanoutRun::default()
    };
    for t in tasks {
        if let Ok(s) = t.await {
            run.delivered += s.delivered;
            run.skipped += s.skipped;
            run.latency_ns.merge(&s.latency_ns);
        }
    }
    Ok(run)
}

/// Our side: `cfg.clients` [`PriceClient`]s of the price server at `server`, each subscribed
/// to every instrument.
pub async fn run_ours_clients(
    cfg: &ConsumerConfig,
    server: SocketAddr,
) -> anyhow::Result<FanoutRun> {
    let symbols = recorder::symbols(cfg.instruments);
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients {
        let mut client = PriceClient::connect(vec![server], ClientOptions::default())?;
        client.subscribe(&symbols);
        let mut phase = phase_rx.clone();
        let ready = ready.clone();
        let want = symbols.len();
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let mut is_ready = false;
            loop {
                tokio::select! {
                    ev = client.next_event() => match ev {
                        Some(ClientEvent::Quote(q)) => {
                            if q.snapshot {
                                stats.first_price(q.symbol, q.exch_seq);
                            } else {
                                let measuring = *phase.borrow() == Phase::Measure;
                                stats.update(&q.symbol, q.exch_seq, q.exch_time_ns, measuring);
                            }
                            if !is_ready && stats.instruments_seen() == want {
                                is_ready = true;
                                ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(_) => {}
                        None => return stats,
                    },
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() == Phase::Stop {
                            return stats;
                        }
                    }
                }
            }
        }));
    }
    Ok(measure(cfg, &phase_tx, &ready, tasks).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [(0.5, 50_000_000.0), (0.99, 99_000_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.count(), 100_000);
        let mut small = Histogram::default();
        small.record(3);
        assert_eq!(small.quantile(0.5), 3);
        small.record(u64::MAX);
        assert_eq!(small.max(), u64::MAX);
    }

    #[test]
    fn a_report_survives_the_trip_between_processes() {
        let mut run = FanoutRun {
            clients_ready: 3,
            delivered: 10,
            skipped: 2,
            secs: 2.0,
            ..FanoutRun::default()
        };
        for v in [1_000, 2_000, 40_000] {
            run.latency_ns.record(v);
        }
        let extra = SideCounts {
            queue_drops_at_least: Some(7),
            reconnects: Some(0),
        };
        let r = run.report(extra.clone());
        assert_eq!((r.samples, r.max_ns, r.per_sec()), (3, 40_000, 5.0));
        assert_eq!(r.extra, extra);
        let line = serde_json::to_string(&r).expect("serialises");
        let back: RunReport = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, r);
    }

    #[test]
    fn gaps_in_sequences_count_as_skipped() {
        let mut s = ClientStats::default();
        s.update("SYM1", 5, 0, true);
        s.update("SYM1", 6, 0, true);
        s.update("SYM1", 10, 0, true);
        assert_eq!(s.delivered, 3);
        assert_eq!(s.skipped, 3);
    }
}
