//! The fan-out benchmark (`understudy bench fanout`): one exchange stream delivered to many
//! clients, through our price server and, for comparison in the same run, through nats-server.
//!
//! Both sides get the same input: one `understudy exchange-sim` process whose updates carry the
//! exchange's timestamp. Ours: `understudy price-server` (a process) → N [`PriceClient`]s, each
//! subscribed to every instrument. NATS: `understudy nats-bridge` (a process reading the same
//! feed and publishing each update, as the same encoded bytes, on subject `px.<symbol>`) →
//! `nats-server` → N `async-nats` clients, each subscribed to the instruments' subjects one by
//! one. The clients of both sides run in the benchmark process and decode every message; the
//! latency of an update is its arrival time minus its exchange time (one host, one clock).
//!
//! Updates a client never saw show up as gaps in the per-instrument exchange sequence numbers:
//! our server conflates for a client that falls behind (latest price wins), NATS drops for a
//! slow consumer. They are reported as "skipped".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::client::{ClientEvent, ClientOptions, PriceClient};
use crate::harness::{self, ChildGuard};
use crate::protocol::Message;
use crate::Error;

/// Settings of one fan-out run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The `understudy` binary (runs the exchange, the price server and the NATS bridge).
    pub exe: PathBuf,
    /// Number of clients.
    pub clients: usize,
    /// Instruments, each client subscribes to all of them.
    pub instruments: u32,
    /// Exchange updates per second (over all instruments).
    pub rate: u32,
    /// Time given to connect, subscribe and settle before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub measure: Duration,
}

/// Which phase the client tasks are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
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

/// What the clients of one side measured.
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
    /// Updates delivered per second.
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// What one client task counts.
#[derive(Default)]
struct ClientStats {
    delivered: u64,
    skipped: u64,
    latency_ns: Histogram,
    last_seq: HashMap<String, u64>,
}

impl ClientStats {
    /// One update arrived; `measuring` says whether it counts.
    fn update(&mut self, symbol: &str, seq: u64, exch_time_ns: u64, measuring: bool) {
        let prev = match self.last_seq.get_mut(symbol) {
            Some(p) => std::mem::replace(p, seq),
            None => {
                self.last_seq.insert(symbol.to_string(), seq);
                0
            }
        };
        if measuring {
            self.delivered += 1;
            self.latency_ns.record(harness::age_ns(exch_time_ns));
            if prev != 0 && seq > prev + 1 {
                self.skipped += seq - prev - 1;
            }
        }
    }
}

/// Runs the measurement protocol shared by both sides: wait until every client has a price for
/// every instrument (or the warm-up ends), settle, measure, stop, merge.
async fn measure(
    cfg: &FanoutConfig,
    phase: &watch::Sender<Phase>,
    ready: &AtomicUsize,
    tasks: Vec<tokio::task::JoinHandle<ClientStats>>,
) -> FanoutRun {
    let deadline = Instant::now() + cfg.warmup;
    while ready.load(Ordering::Relaxed) < cfg.clients && Instant::now() < deadline {
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
    run
}

/// Our side: `understudy price-server` fanning the exchange out to `cfg.clients` clients.
pub async fn run_ours(cfg: &FanoutConfig, exchange: SocketAddr) -> Result<FanoutRun, Error> {
    let listen = harness::free_addr()?;
    let args = vec![
        "price-server".to_string(),
        "--upstream".into(),
        exchange.to_string(),
        "--listen".into(),
        listen.to_string(),
    ];
    let mut cmd = harness::understudy_command(&cfg.exe, &args, None)?;
    let _server = ChildGuard::spawn("price-server", &mut cmd)?;
    harness::wait_listening(listen, Duration::from_secs(10)).await?;

    let symbols = harness::symbols(cfg.instruments);
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients {
        let mut client = PriceClient::connect(vec![listen], ClientOptions::default())?;
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
                            let measuring = *phase.borrow() == Phase::Measure;
                            if q.snapshot {
                                // A first price, not part of the stream being timed.
                                stats.last_seq.insert(q.symbol, q.exch_seq);
                            } else {
                                stats.update(&q.symbol, q.exch_seq, q.exch_time_ns, measuring);
                            }
                            if !is_ready && stats.last_seq.len() == want {
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
    Ok(measure(cfg, &phase_tx, &ready, tasks).await)
}

/// Where nats-server is installed, if it is: `$PATH`, then the Debian package's /usr/sbin.
pub fn find_nats_server() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// `nats-server --version`, e.g. `nats-server: v2.9.10`.
pub fn nats_server_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use bytes::BytesMut;
    use futures_util::StreamExt;
    use tokio::net::TcpStream;

    use crate::protocol::read_frame;

    fn nats_err(context: &str, e: impl std::fmt::Display) -> Error {
        Error::io(context.to_string(), std::io::Error::other(e.to_string()))
    }

    /// NATS subject of an instrument.
    pub fn subject(symbol: &str) -> String {
        format!("px.{symbol}")
    }

    /// `understudy nats-bridge`: reads the exchange feed and publishes every update, as the
    /// same encoded frame, on `px.<symbol>` — the NATS side's counterpart of a price server.
    pub async fn run_nats_bridge(upstream: SocketAddr, nats: SocketAddr) -> Result<(), Error> {
        let client = async_nats::connect(nats.to_string())
            .await
            .map_err(|e| nats_err("connecting to nats-server", e))?;
        let mut sock = TcpStream::connect(upstream)
            .await
            .map_err(|e| Error::io(format!("connecting to the exchange {upstream}"), e))?;
        let _ = sock.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        // Subjects are built once per instrument, not once per update.
        let mut subjects: HashMap<Arc<str>, async_nats::Subject> = HashMap::new();
        loop {
            let frame = match read_frame(&mut sock, &mut buf).await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(nats_err("reading the exchange feed", e)),
            };
            if let Ok(Message::Update { price, .. }) = Message::decode(&frame) {
                let subject = subjects
                    .entry(price.symbol.clone())
                    .or_insert_with(|| subject(&price.symbol).into())
                    .clone();
                client
                    .publish(subject, frame)
                    .await
                    .map_err(|e| nats_err("publishing", e))?;
            }
        }
    }

    /// The NATS side: nats-server, the bridge, and `cfg.clients` async-nats clients.
    pub async fn run_nats(
        cfg: &FanoutConfig,
        exchange: SocketAddr,
        nats_bin: &Path,
    ) -> Result<FanoutRun, Error> {
        let addr = harness::free_addr()?;
        let mut cmd = std::process::Command::new(nats_bin);
        cmd.args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _server = ChildGuard::spawn("nats-server", &mut cmd)?;
        harness::wait_listening(addr, Duration::from_secs(10)).await?;

        let symbols = harness::symbols(cfg.instruments);
        let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
        let ready = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(cfg.clients);
        for _ in 0..cfg.clients {
            let client = async_nats::connect(addr.to_string())
                .await
                .map_err(|e| nats_err("connecting a client to nats-server", e))?;
            let mut subs = Vec::with_capacity(symbols.len());
            for s in &symbols {
                subs.push(
                    client
                        .subscribe(subject(s))
                        .await
                        .map_err(|e| nats_err("subscribing", e))?,
                );
            }
            // Make sure the server has every subscription before the stream starts.
            client
                .flush()
                .await
                .map_err(|e| nats_err("flushing subscriptions", e))?;
            let mut merged = futures_util::stream::select_all(subs);
            let mut phase = phase_rx.clone();
            let ready = ready.clone();
            let want = symbols.len();
            tasks.push(tokio::spawn(async move {
                let _client = client; // keeps the connection open
                let mut stats = ClientStats::default();
                let mut is_ready = false;
                loop {
                    tokio::select! {
                        msg = merged.next() => match msg {
                            Some(m) => {
                                let measuring = *phase.borrow() == Phase::Measure;
                                if let Ok(Message::Update { price, .. }) = Message::decode(&m.payload) {
                                    stats.update(&price.symbol, price.exch_seq, price.exch_time_ns, measuring);
                                }
                                if !is_ready && stats.last_seq.len() == want {
                                    is_ready = true;
                                    ready.fetch_add(1, Ordering::Relaxed);
                                }
                            }
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
        // The bridge starts last, so every client is subscribed when the stream begins.
        let args = vec![
            "nats-bridge".to_string(),
            "--upstream".into(),
            exchange.to_string(),
            "--nats".into(),
            addr.to_string(),
        ];
        let mut cmd = harness::understudy_command(&cfg.exe, &args, None)?;
        let mut bridge = ChildGuard::spawn("nats-bridge", &mut cmd)?;
        let run = measure(cfg, &phase_tx, &ready, tasks).await;
        if bridge.exited() {
            return Err(Error::Config(
                "the NATS bridge exited during the run (is nats-server working?)".into(),
            ));
        }
        Ok(run)
    }
}

#[cfg(feature = "nats")]
pub use nats::{run_nats, run_nats_bridge};

/// Without the `nats` feature there is no NATS client to compare with.
#[cfg(not(feature = "nats"))]
pub async fn run_nats(
    _cfg: &FanoutConfig,
    _exchange: SocketAddr,
    _nats_bin: &Path,
) -> Result<FanoutRun, Error> {
    Err(Error::Config(
        "built without the `nats` feature of understudy-pricefeed: no NATS client".into(),
    ))
}

/// Without the `nats` feature there is no NATS client to bridge with.
#[cfg(not(feature = "nats"))]
pub async fn run_nats_bridge(_upstream: SocketAddr, _nats: SocketAddr) -> Result<(), Error> {
    Err(Error::Config(
        "built without the `nats` feature of understudy-pricefeed: no NATS client".into(),
    ))
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
    fn gaps_in_sequences_count_as_skipped() {
        let mut s = ClientStats::default();
        s.update("SYM1", 5, 0, true);
        s.update("SYM1", 6, 0, true);
        s.update("SYM1", 10, 0, true);
        assert_eq!(s.delivered, 3);
        assert_eq!(s.skipped, 3);
    }
}
