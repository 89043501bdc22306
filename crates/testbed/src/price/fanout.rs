//! `understudy bench fanout`: one exchange stream fanned out to many clients, by our price
//! server and by nats-server, each side configured as its experienced users would.
//!
//! Per run, one side:
//! - ours: `understudy price-server` → N [`PriceClient`](understudy_pricefeed::PriceClient)s,
//!   each subscribed to every instrument. The server queues up to 1024 prices per client,
//!   then conflates (latest price per instrument wins).
//! - NATS: `understudy nats-bridge` (the feed handler: reads the exchange, publishes every
//!   update, as the same encoded frame, on `prices.<symbol>`) → `nats-server` → N async-nats
//!   clients, each with one wildcard subscription `prices.>` whose queue holds `--queue`
//!   messages (default 1024, our server's per-client queue) and drops beyond it.
//!
//! The clients of either side run in a process of their own (`understudy bench
//! fanout-consumer`) on a runtime of `--threads` workers, the same for both sides; the driver
//! only starts processes and collects each run's one-line JSON report. Runs alternate between
//! the sides, and a side is named the winner of a figure only when the difference is larger
//! than the run-to-run spread ([`crate::stats::compare`]).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use understudy_pricefeed::protocol::{read_frame, Message};

use super::consumer::{
    self as fanout, ClientStats, ConsumerConfig, FanoutRun, Phase, RunReport, SideCounts,
};
use super::recorder;
use crate::proc::Proc;
use crate::runtime;
use crate::stats::{compare, spread, Verdict};

/// Subject prefix the bridge publishes on; consumers subscribe to `prices.>`.
const SUBJECT_PREFIX: &str = "prices.";
/// A side wins a figure only by more than this fraction, beyond the spread: two sides that
/// both deliver everything offered differ by the updates at the edges of the window.
const MIN_MARGIN: f64 = 0.01;

/// Arguments of `understudy bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Clients, each subscribed to every instrument.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Instruments on the exchange.
    #[arg(long, default_value_t = 100)]
    pub instruments: u32,
    /// Exchange updates per second (each one goes to every client).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Runs per side, interleaved (ours, nats, ours, nats, …); a winner is named from 3 on.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Runtime worker threads of each side's consumer process.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Messages an async-nats subscription queues before it drops (our server queues 1024
    /// prices per client before it conflates).
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Measure our side only, even if nats-server is installed.
    #[arg(long)]
    pub no_nats: bool,
}

/// Which side's clients a consumer process runs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `PriceClient`s of an understudy price server.
    Ours,
    /// async-nats clients of a nats-server.
    Nats,
}

/// Arguments of the hidden `understudy bench fanout-consumer`.
#[derive(Args, Debug)]
pub struct ConsumerArgs {
    /// Whose clients.
    #[arg(long, value_enum)]
    pub side: Side,
    /// The price server or nats-server.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Number of clients.
    #[arg(long)]
    pub clients: usize,
    /// Instruments (each client wants all of them).
    #[arg(long)]
    pub instruments: u32,
    /// Longest warm-up, seconds: every client must have a price for every instrument by then.
    #[arg(long, default_value_t = 30)]
    pub warmup: u64,
    /// Measured seconds.
    #[arg(long)]
    pub secs: u64,
    /// Runtime worker threads.
    #[arg(long)]
    pub threads: usize,
    /// async-nats subscription capacity (NATS side only).
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
}

/// `understudy bench fanout-consumer`: runs one side's clients and prints a [`RunReport`] as
/// one JSON line.
pub fn consumer(a: ConsumerArgs) -> anyhow::Result<u8> {
    if a.clients == 0 || a.instruments == 0 || a.secs == 0 || a.threads == 0 || a.queue == 0 {
        bail!("--clients, --instruments, --secs, --threads and --queue must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cfg = ConsumerConfig {
        clients: a.clients,
        instruments: a.instruments,
        warmup: Duration::from_secs(a.warmup),
        measure: Duration::from_secs(a.secs),
    };
    let report = rt.block_on(async {
        match a.side {
            Side::Ours => Ok::<_, anyhow::Error>(
                fanout::run_ours_clients(&cfg, a.connect)
                    .await?
                    .report(SideCounts::default()),
            ),
            Side::Nats => {
                let (run, counts) = run_nats_clients(&cfg, a.connect, a.queue).await?;
                Ok(run.report(counts))
            }
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(0)
}

/// The NATS side's clients: one connection and one `prices.>` subscription each, with a
/// subscription queue of `queue` messages.
async fn run_nats_clients(
    cfg: &ConsumerConfig,
    server: SocketAddr,
    queue: usize,
) -> anyhow::Result<(FanoutRun, SideCounts)> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let ready = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let want = cfg.instruments as usize;
    let mut tasks = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients {
        let (d, r) = (drops.clone(), reconnects.clone());
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(queue)
            // Counted over the whole run: the library reports events late, through a task of
            // its own, so a phase check here would misplace them.
            .event_callback(move |ev| {
                let (d, r) = (d.clone(), r.clone());
                async move {
                    match ev {
                        async_nats::Event::SlowConsumer(_) => {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                        async_nats::Event::Disconnected => {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            })
            .connect(server.to_string())
            .await
            .with_context(|| format!("connecting a client to nats-server {server}"))?;
        let mut sub = client
            .subscribe(format!("{SUBJECT_PREFIX}>"))
            .await
            .context("subscribing")?;
        client.flush().await.context("flushing the subscription")?;
        let mut phase = phase_rx.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let _client = client; // keeps the connection open
            let mut stats = ClientStats::default();
            let mut is_ready = false;
            loop {
                tokio::select! {
                    msg = sub.next() => match msg {
                        Some(m) => {
                            if let Ok(Message::Update { price, .. }) = Message::decode(&m.payload) {
                                let measuring = *phase.borrow() == Phase::Measure;
                                stats.update(&price.symbol, price.exch_seq, price.exch_time_ns, measuring);
                            }
                            if !is_ready && stats.instruments_seen() == want {
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
    let run = fanout::measure(cfg, &phase_tx, &ready, tasks).await?;
    let counts = SideCounts {
        queue_drops_at_least: Some(drops.load(Ordering::Relaxed)),
        reconnects: Some(reconnects.load(Ordering::Relaxed)),
    };
    Ok((run, counts))
}

/// `understudy nats-bridge`: reads the exchange feed and publishes every update, as the same
/// encoded frame, on `prices.<symbol>` — the NATS side's feed handler.
pub async fn run_nats_bridge(upstream: SocketAddr, nats: SocketAddr) -> anyhow::Result<()> {
    let client = async_nats::connect(nats.to_string())
        .await
        .with_context(|| format!("connecting to nats-server {nats}"))?;
    let mut sock = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to the exchange {upstream}"))?;
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Subjects are built once per instrument, not once per update.
    let mut subjects: std::collections::HashMap<Arc<str>, async_nats::Subject> =
        std::collections::HashMap::new();
    loop {
        let frame = match read_frame(&mut sock, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => bail!("reading the exchange feed: {e}"),
        };
        if let Ok(Message::Update { price, .. }) = Message::decode(&frame) {
            let subject = subjects
                .entry(price.symbol.clone())
                .or_insert_with(|| format!("{SUBJECT_PREFIX}{}", price.symbol).into())
                .clone();
            client
                .publish(subject, frame)
                .await
                .context("publishing to nats-server")?;
        }
    }
}

/// Where nats-server is installed, if it is: `$PATH`, then the Debian package's /usr/sbin.
fn find_nats_server() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// `nats-server --version`, e.g. `nats-server: v2.9.10`.
fn nats_server_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// The 1-minute load average, to tell a quiet run from a loaded one.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// What the driver needs to run one side once.
struct Driver<'a> {
    exe: &'a Path,
    a: &'a FanoutArgs,
    exchange: SocketAddr,
    nats_bin: Option<&'a Path>,
}

impl Driver<'_> {
    /// One run of `side`: its server process(es), then its consumer process; the report.
    async fn run(&self, side: Side) -> anyhow::Result<RunReport> {
        let addr = crate::ports::free_addrs(1)?[0];
        // Held until the consumer has reported; dropped (SIGKILL) after.
        let mut servers: Vec<Proc> = Vec::new();
        let quiet = |mut cmd: std::process::Command| {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        };
        match side {
            Side::Ours => {
                let (up, listen) = (self.exchange.to_string(), addr.to_string());
                let args = ["price-server", "--upstream", &up, "--listen", &listen];
                let mut cmd = quiet(crate::proc::understudy(self.exe, &args));
                servers.push(Proc::spawn(&mut cmd).context("starting price-server")?);
                crate::http::listening(addr, Duration::from_secs(10)).await?;
            }
            Side::Nats => {
                let bin = self.nats_bin.context("nats-server is not installed")?;
                let mut cmd = std::process::Command::new(bin);
                cmd.args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                servers.push(Proc::spawn(&mut cmd).context("starting nats-server")?);
                crate::http::listening(addr, Duration::from_secs(10)).await?;
                let (up, nats) = (self.exchange.to_string(), addr.to_string());
                let args = ["nats-bridge", "--upstream", &up, "--nats", &nats];
                let mut cmd = quiet(crate::proc::understudy(self.exe, &args));
                servers.push(Proc::spawn(&mut cmd).context("starting nats-bridge")?);
            }
        }
        let report = self.consume(side, addr).await?;
        for s in &mut servers {
            if s.exited() {
                bail!("a server process of this run exited before the run ended");
            }
        }
        Ok(report)
    }

    /// Runs the consumer process of `side` against `addr` and parses its report.
    async fn consume(&self, side: Side, addr: SocketAddr) -> anyhow::Result<RunReport> {
        let a = self.a;
        // A bound, not a wait: the run starts as soon as every client is ready.
        let warmup = 30u64;
        let side_name = match side {
            Side::Ours => "ours",
            Side::Nats => "nats",
        };
        let mut child = Proc::spawn(
            std::process::Command::new(self.exe)
                .args(["bench", "fanout-consumer", "--side", side_name, "--connect"])
                .arg(addr.to_string())
                .args(["--clients", &a.clients.to_string()])
                .args(["--instruments", &a.instruments.to_string()])
                .args(["--warmup", &warmup.to_string()])
                .args(["--secs", &a.secs.to_string()])
                .args(["--threads", &a.threads.to_string()])
                .args(["--queue", &a.queue.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .context("cannot start the consumer process")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(warmup + a.secs + 30);
        let status = loop {
            if let Some(s) = child.0.try_wait()? {
                break s;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the {side_name} consumer process did not finish in time");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut out = String::new();
        if let Some(mut s) = child.0.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if !status.success() {
            bail!("the {side_name} consumer process failed ({status})");
        }
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .with_context(|| format!("the {side_name} consumer printed {line:?}, not a report"))
    }
}

/// `understudy bench fanout`.
pub fn bench(a: FanoutArgs) -> anyhow::Result<u8> {
    if a.clients == 0 || a.instruments == 0 || a.rate == 0 || a.secs == 0 {
        bail!("--clients, --instruments, --rate and --secs must be at least 1");
    }
    if a.repeat == 0 || a.threads == 0 || a.queue == 0 {
        bail!("--repeat, --threads and --queue must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let nats_bin = if a.no_nats {
        None
    } else {
        let found = find_nats_server();
        if found.is_none() {
            eprintln!(
                "nats-server is NOT installed: measuring understudy only, no comparison \
                 (install it with `apt-get install -y nats-server`)"
            );
        }
        found
    };
    let mut sides = vec![Side::Ours];
    if nats_bin.is_some() {
        sides.push(Side::Nats);
    }
    let nats_label = nats_bin
        .as_deref()
        .and_then(nats_server_version)
        .map(|v| v.replace("nats-server: ", "nats-server "))
        .unwrap_or_else(|| "nats-server".into());
    let label = |s: Side| match s {
        Side::Ours => "understudy price-server + PriceClient".to_string(),
        Side::Nats => format!("{nats_label} + async-nats"),
    };
    let load_before = loadavg();
    let offered = f64::from(a.rate) * a.clients as f64;
    println!(
        "fan-out benchmark: {} clients × {} instruments, exchange {} updates/s → {offered:.0} deliveries/s offered; \
         {} runs per side of {} s each, interleaved",
        a.clients, a.instruments, a.rate, a.repeat, a.secs
    );
    println!(
        "  each side's clients in their own process, {} runtime worker threads; NATS: one `{SUBJECT_PREFIX}>` subscription per \
         client, queue {} messages, drops beyond; ours: server queue 1024 prices per client, conflation beyond",
        a.threads, a.queue
    );
    println!(
        "  latency = client arrival − exchange timestamp, both CLOCK_REALTIME (ns) read in different processes on one host; \
         p50/p99 from a log histogram (≤1.6 % error) over every update delivered to any client in the run, max exact"
    );
    println!(
        "  skipped = exchange updates a client never received (sequence gaps: ours conflated, NATS dropped); \
         delivered/s above the offered rate is a backlog from the warm-up draining"
    );
    println!(
        "{:<8} {:<44} {:>8} {:>12} {:>10} {:>9} {:>9} {:>9}  extra",
        "run", "", "ready", "delivered/s", "skipped", "p50 µs", "p99 µs", "max µs"
    );
    let rt = runtime()?;
    let runs = rt.block_on(async {
        let ex = crate::ports::free_addrs(1)?[0];
        let _exchange = recorder::start_exchange(&exe, ex, a.instruments, a.rate, None)
            .await
            .context("starting exchange-sim")?;
        let d = Driver {
            exe: &exe,
            a: &a,
            exchange: ex,
            nats_bin: nats_bin.as_deref(),
        };
        let mut runs: Vec<(Side, RunReport)> = Vec::new();
        for i in 0..a.repeat {
            for &side in &sides {
                let r = d
                    .run(side)
                    .await
                    .with_context(|| format!("run {} of {}", i + 1, label(side)))?;
                let extra = match (r.extra.queue_drops_at_least, r.extra.reconnects) {
                    (Some(dr), Some(rc)) => {
                        format!("whole run: queue drops ≥{dr}, reconnects {rc}")
                    }
                    _ => String::new(),
                };
                println!(
                    "{:<8} {:<44} {:>8} {:>12.0} {:>10} {:>9.0} {:>9.0} {:>9.0}  {extra}",
                    format!("{}/{}", i + 1, a.repeat),
                    label(side),
                    format!("{}/{}", r.clients_ready, a.clients),
                    r.per_sec(),
                    r.skipped,
                    r.p50_ns as f64 / 1e3,
                    r.p99_ns as f64 / 1e3,
                    r.max_ns as f64 / 1e3,
                );
                runs.push((side, r));
            }
        }
        Ok::<_, anyhow::Error>(runs)
    })?;
    let figures = |side: Side, f: fn(&RunReport) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, r)| f(r))
            .collect()
    };
    let tput: fn(&RunReport) -> f64 = RunReport::per_sec;
    let p50: fn(&RunReport) -> f64 = |r| r.p50_ns as f64 / 1e3;
    let p99: fn(&RunReport) -> f64 = |r| r.p99_ns as f64 / 1e3;
    let range = |xs: &[f64], prec: usize| {
        let (lo, hi) = spread(xs);
        format!("{lo:.prec$}–{hi:.prec$}")
    };
    println!(
        "spread over {} runs per side (min–max); machine load average {load_before} before, {} after (2 cores)",
        a.repeat,
        loadavg()
    );
    println!(
        "{:<53} {:>22} {:>16} {:>18}",
        "", "delivered/s", "p50 µs", "p99 µs"
    );
    for &side in &sides {
        println!(
            "{:<53} {:>22} {:>16} {:>18}",
            label(side),
            range(&figures(side, tput), 0),
            range(&figures(side, p50), 0),
            range(&figures(side, p99), 0),
        );
    }
    if !sides.contains(&Side::Nats) {
        println!("nats-server not measured (not installed or --no-nats): no comparison");
        return Ok(0);
    }
    if a.repeat < 3 {
        println!("no winner named: fewer than 3 runs per side give no usable spread (use --repeat 3 or more)");
        return Ok(0);
    }
    let name = |v: Verdict| match v {
        Verdict::First => "understudy".to_string(),
        Verdict::Second => nats_label.clone(),
        Verdict::NoClearWinner => {
            "no clear winner (the difference is within the run-to-run spread)".into()
        }
    };
    let t = compare(
        &figures(Side::Ours, tput),
        &figures(Side::Nats, tput),
        false,
        MIN_MARGIN,
    );
    let l50 = compare(
        &figures(Side::Ours, p50),
        &figures(Side::Nats, p50),
        true,
        MIN_MARGIN,
    );
    let l99 = compare(
        &figures(Side::Ours, p99),
        &figures(Side::Nats, p99),
        true,
        MIN_MARGIN,
    );
    println!(
        "winner per figure (every run of the winner better than every run of the other, by more than {:.0} %):",
        MIN_MARGIN * 100.0
    );
    println!("  throughput: {}", name(t));
    println!("  p50 latency: {}", name(l50));
    println!("  p99 latency: {}", name(l99));
    let goal = match (t, l99) {
        (Verdict::Second, _) | (_, Verdict::Second) => "NOT MET (NATS wins a figure)",
        (_, Verdict::First) => "met",
        _ => "no clear winner",
    };
    println!("goal: at least NATS's throughput at a lower p99, beyond the spread: {goal}");
    Ok(0)
}
