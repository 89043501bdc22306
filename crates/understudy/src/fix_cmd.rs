//! Subcommands of the FIX gateway (warm standby, document 002): the gateway an agent protects,
//! the FIX exchange simulator upstream of it, its demo and its benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use understudy_fix::admin::{self, Health, Probe};
use understudy_fix::engine::{Engine, EngineError, SessionSlot};
use understudy_fix::exchange_sim::ExchangeSim;
use understudy_fix::gateway::{Gateway, GatewayConfig};
use understudy_fix::session::{Role as SessionRole, Session, SessionConfig};
use understudy_fix::store::{FileStore, SessionId, SyncPolicy};
use understudy_sdk::{Notice, Role, Service};

use crate::bench::{Clock, Table};
use crate::{init_logging, runtime};
use understudy_control::Summary;

/// Exit code of a gateway that found its store owned by a newer epoch.
pub const EXIT_FENCED: u8 = understudy_sdk::EXIT_FENCED;

/// FIX subcommands.
#[derive(Subcommand, Debug)]
pub enum FixCmds {
    /// A FIX gateway (run it as an agent's service with service.standby = "warm").
    FixGateway {
        /// The gateway's TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// A FIX exchange simulator (acceptor): acknowledges, fills, cancels and replaces orders.
    FixExchangeSim {
        /// Listen address for FIX initiators (gateways).
        #[arg(long, default_value = "127.0.0.1:9900")]
        listen: SocketAddr,
        /// The simulator's CompID: initiators must send it as TargetCompID.
        #[arg(long, default_value = "EXCH")]
        sender_comp_id: String,
        /// Keep the sessions in a FileStore under this directory (the gateway's fenced,
        /// checksummed store) instead of in memory; used by `bench fix-roundtrip` to compare
        /// durable engines.
        #[arg(long)]
        store_dir: Option<PathBuf>,
        /// With --store-dir: how the store syncs.
        #[arg(
            long,
            value_enum,
            default_value = "every-write",
            requires = "store_dir"
        )]
        sync: SyncArg,
    },
}

/// `fix-exchange-sim --sync`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SyncArg {
    /// fdatasync before each message is sent.
    EveryWrite,
    /// fdatasync at most 2 ms after a write.
    Batch,
}

impl From<SyncArg> for SyncPolicy {
    fn from(a: SyncArg) -> Self {
        match a {
            SyncArg::EveryWrite => SyncPolicy::EveryWrite,
            SyncArg::Batch => SyncPolicy::Batch {
                max_delay: Duration::from_millis(2),
            },
        }
    }
}

impl FixCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixCmds::FixGateway { config } => run_gateway(config),
            FixCmds::FixExchangeSim {
                listen,
                sender_comp_id,
                store_dir: None,
                ..
            } => {
                init_logging();
                runtime()?.block_on(exchange_sim(listen, sender_comp_id))
            }
            FixCmds::FixExchangeSim {
                listen,
                sender_comp_id,
                store_dir: Some(dir),
                sync,
            } => {
                init_logging();
                runtime()?.block_on(exchange_sim_durable(
                    listen,
                    sender_comp_id,
                    dir,
                    sync.into(),
                ))
            }
        }
    }
}

fn term_signals() -> anyhow::Result<(Signal, Signal)> {
    Ok((
        signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
    ))
}

/// Run the FIX exchange simulator (acceptor) until SIGTERM or SIGINT.
pub(crate) async fn exchange_sim(listen: SocketAddr, comp_id: String) -> anyhow::Result<u8> {
    let (mut term, mut int) = term_signals()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("fix-exchange-sim {comp_id} listening on {listen}");
    let engine = Engine::new(Vec::new(), Some(listener))
        .with_factory(Box::new(ExchangeSim::factory(comp_id)));
    let mut app = ExchangeSim::new();
    engine
        .run(&mut app, async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await?;
    Ok(0)
}

/// The FIX exchange simulator with its sessions in [`FileStore`]s under `dir` (epoch 1), so
/// it can stand next to a QuickFIX acceptor on its FileStore in `bench fix-roundtrip`.
async fn exchange_sim_durable(
    listen: SocketAddr,
    comp_id: String,
    dir: PathBuf,
    sync: SyncPolicy,
) -> anyhow::Result<u8> {
    let (mut term, mut int) = term_signals()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "fix-exchange-sim {comp_id} listening on {listen}, sessions stored in {}",
        dir.display()
    );
    let factory = move |sid: &SessionId| -> Option<SessionSlot<FileStore>> {
        if sid.sender_comp_id != comp_id {
            return None;
        }
        let store = match FileStore::open(&dir, sid, 1, sync) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the session store; refusing the logon");
                return None;
            }
        };
        let mut cfg = SessionConfig::new(
            sid.begin_string,
            &sid.sender_comp_id,
            &sid.target_comp_id,
            SessionRole::Acceptor,
        );
        cfg.logon_timeout = Duration::from_secs(5);
        let session = Session::new(cfg, store).ok()?;
        Some(SessionSlot::new(&sid.target_comp_id, session))
    };
    let engine = Engine::new(Vec::new(), Some(listener)).with_factory(Box::new(factory));
    let mut app = ExchangeSim::new();
    engine
        .run(&mut app, async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await?;
    Ok(0)
}

fn run_gateway(config: PathBuf) -> anyhow::Result<u8> {
    // Signals first, before anything else (see `understudy_sdk::init`); the configuration is
    // reported before the environment, so a bad file is named whatever the environment says.
    understudy_sdk::signals::block(understudy_sdk::signals::ACTIVATE).context("fix-gateway")?;
    // Validated in full in every role, so a warm standby with a bad file fails at start.
    let cfg = match GatewayConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy: configuration error: {e}");
            return Ok(understudy_sdk::EXIT_BAD_ENV);
        }
    };
    let service = match understudy_sdk::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("understudy: fix-gateway: {e}");
            return Ok(e.exit_code());
        }
    };
    init_logging();
    let rt = runtime()?;
    rt.block_on(gateway(config, cfg, service))
}

async fn gateway(config: PathBuf, cfg: GatewayConfig, mut service: Service) -> anyhow::Result<u8> {
    // The health endpoint runs in every role, answered by whichever loop runs: the waiting
    // loop below while standby, the engine once active.
    let (probe_tx, mut probes) = tokio::sync::mpsc::unbounded_channel::<Probe>();
    let has_admin = cfg.admin_http.is_some();
    if let Some(a) = cfg.admin_http {
        let l = admin::bind(a)
            .await
            .with_context(|| format!("cannot listen on admin.http {a}"))?;
        admin::serve(l, probe_tx);
        println!("fix-gateway: GET /health on {a}");
    } else {
        drop(probe_tx);
    }
    let started_active = service.role() == Role::Active;
    if !started_active {
        println!(
            "fix-gateway: warm standby, configuration {} valid ({} clients, {} upstreams); waiting for activation",
            config.display(),
            cfg.clients.len(),
            cfg.upstreams.len()
        );
        loop {
            tokio::select! {
                notice = service.next() => match notice {
                    Some(Notice::Activate) => {
                        service.activate_async().await.context("activated, but no epoch")?;
                        break;
                    }
                    Some(Notice::Stop) | None => return Ok(0),
                },
                Some(p) = probes.recv() => {
                    let _ = p.send(Health::standby());
                }
            }
        }
    }
    let epoch = service.epoch();
    tracing::info!(epoch, "fix-gateway activating");
    let listen = cfg.listen;
    let opened = tokio::task::spawn_blocking(move || Gateway::open(cfg, epoch))
        .await
        .context("store opening task failed")?;
    let activated = match opened {
        Ok(a) => a,
        Err(e) if e.is_fenced() => {
            eprintln!("understudy: fix-gateway: epoch {epoch} is stale, not serving: {e}");
            return Ok(EXIT_FENCED);
        }
        Err(e) => return Err(e).context("cannot activate the gateway"),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("fix-gateway: active, epoch {epoch}, clients on {listen}");
    if started_active {
        if let Err(e) = service.acknowledge_async().await {
            tracing::warn!("cannot acknowledge the activation: {e}");
        }
    }
    let mut app = activated.gateway;
    let mut engine = Engine::new(activated.slots, Some(listener));
    if has_admin {
        engine = engine.with_health_probes(probes, epoch);
    }
    let mut shutdown = service.shutdown();
    let outcome = engine.run(&mut app, shutdown.requested()).await;
    match outcome {
        Ok(()) => Ok(0),
        Err(e @ EngineError::Fenced { .. }) => {
            eprintln!("understudy: fix-gateway: {e}; stopped sending");
            Ok(EXIT_FENCED)
        }
        Err(e) => Err(e).context("gateway failed"),
    }
}

/// FIX benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum FixBench {
    /// Order round trip client → gateway → fix-exchange-sim → back, one at a time (latency)
    /// and as a pipelined burst (throughput).
    FixRoundtrip(FixBenchArgs),
    /// Recovery after kill -9 of the active agent (two agents, warm-standby gateways): time
    /// until the new active accepts the client's Logon with its sequence numbers continuing,
    /// next to the agent's own takeover in the same runs.
    FixRecovery(FixRecoveryArgs),
}

/// Arguments of `bench fix-recovery`.
#[derive(Args, Debug)]
pub struct FixRecoveryArgs {
    /// Number of kills.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Store durability of the gateways: every-write (fsync per record) or batch.
    #[arg(long, default_value = "every-write")]
    pub sync: String,
}

/// Arguments of the FIX benchmarks.
#[derive(Args, Debug)]
pub struct FixBenchArgs {
    /// Number of orders.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Runs of every path, the two sides of each pair back to back, alternating which goes
    /// first; a faster side is named from 3 on.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Store durability of the gateway: every-write (fsync per record) or batch.
    #[arg(long, default_value = "every-write")]
    pub sync: String,
}

impl FixBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixBench::FixRoundtrip(a) => {
                if !matches!(a.sync.as_str(), "every-write" | "batch") {
                    anyhow::bail!("--sync must be every-write or batch");
                }
                runtime()?.block_on(roundtrip_bench(a))
            }
            FixBench::FixRecovery(a) => {
                if !matches!(a.sync.as_str(), "every-write" | "batch") {
                    anyhow::bail!("--sync must be every-write or batch");
                }
                if a.runs == 0 {
                    anyhow::bail!("--runs must be at least 1");
                }
                runtime()?.block_on(recovery_bench(a))
            }
        }
    }
}

/// Child processes killed when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        understudy_control::local::free_port()?,
    )))
}

async fn wait_listening(a: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(a).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("nothing listens on {a}")
}

/// A market order body for the benchmark.
fn bench_order(id: &str) -> Vec<u8> {
    use understudy_fix::exchange_sim::{put_str, tag};
    let mut b = Vec::with_capacity(96);
    put_str(&mut b, tag::CL_ORD_ID, id);
    put_str(&mut b, tag::SYMBOL, "BENCH");
    put_str(&mut b, tag::SIDE, "1");
    put_str(&mut b, tag::ORDER_QTY, "1");
    put_str(&mut b, tag::ORD_TYPE, "1");
    b
}

/// Waits for `n` fills (ExecutionReports with OrdStatus 2).
async fn fills(c: &mut understudy_fix::client::Client, n: usize) -> anyhow::Result<()> {
    use understudy_fix::client::ClientEvent;
    use understudy_fix::exchange_sim::tag;
    let mut got = 0;
    let wait = async {
        while got < n {
            match c.events.recv().await {
                Some(e)
                    if matches!(&e, ClientEvent::Message { msg_type, .. } if msg_type == "8")
                        && e.field(tag::ORD_STATUS) == Some("2") =>
                {
                    got += 1
                }
                Some(_) => {}
                None => anyhow::bail!("client stopped"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("timed out waiting for fills")?
}

/// One-at-a-time latencies (µs, sorted) and the pipelined burst's duration (s) of `runs`
/// market orders sent by a client `sender` to `target` at `connect`.
struct Measured {
    lat: Vec<f64>,
    burst_s: f64,
}

async fn measure(
    connect: SocketAddr,
    target: &str,
    sender: &str,
    runs: usize,
) -> anyhow::Result<Measured> {
    use understudy_fix::client::{self, ClientConfig, ClientEvent};
    let mut c = client::start(ClientConfig {
        connect: vec![connect],
        sender_comp_id: sender.into(),
        target_comp_id: target.into(),
        begin_string: understudy_fix::tags::BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(10),
    })?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.events.recv()).await {
            Ok(Some(ClientEvent::LoggedOn(_))) => break,
            Ok(Some(_)) => {}
            _ => anyhow::bail!("the client did not log on to {target} at {connect}"),
        }
    }
    // Warm up the path (upstream logon, page cache).
    c.handle.send(0, b"D", bench_order("warm"));
    fills(&mut c, 1).await?;
    let mut lat = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = std::time::Instant::now();
        c.handle.send(0, b"D", bench_order(&format!("s{i}")));
        fills(&mut c, 1).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let t = std::time::Instant::now();
    for i in 0..runs {
        c.handle.send(0, b"D", bench_order(&format!("p{i}")));
    }
    fills(&mut c, runs).await?;
    let burst_s = t.elapsed().as_secs_f64();
    c.task.abort();
    Ok(Measured { lat, burst_s })
}

/// What a store keeps when things fail, as printed next to each row.
const LOST_WITH_PROCESS: &str = "memory: lost with the process";
const SYNC_BEFORE_SEND: &str = "fdatasync before send: survives a machine crash";
const SYNC_BATCH: &str = "fdatasync ≤2 ms later: survives kill -9, machine crash loses ≤2 ms";
const FLUSH_ONLY: &str = "fflush, no fsync: survives kill -9, machine crash can lose writes";

/// Starts the QuickFIX acceptor of `tests/quickfix/qf_acceptor.cpp` (built next to this
/// executable, in `quickfix/`) as `QFX` for `clients`, on the message store `store`
/// (`memory`, `file` or `file-fsync`, see the source), or says why it cannot.
async fn start_quickfix_acceptor(
    dir: &std::path::Path,
    kids: &mut Children,
    store: &str,
    clients: &[String],
) -> Result<SocketAddr, String> {
    if let Some(why) = understudy_fix::quickfix::unavailable() {
        return Err(why);
    }
    let out_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("quickfix")))
        .unwrap_or_else(|| dir.join("quickfix"));
    let bin = tokio::task::spawn_blocking(move || {
        understudy_fix::quickfix::build("qf_acceptor", &out_dir)
    })
    .await
    .map_err(|e| e.to_string())??;
    let listen = free_addr().map_err(|e| e.to_string())?;
    let settings = dir.join(format!("qf-acceptor-{store}.cfg"));
    std::fs::write(
        &settings,
        format!(
            "[DEFAULT]\nConnectionType=acceptor\nSocketAcceptPort={}\nSocketReuseAddress=Y\nSocketNodelay=Y\nFileStorePath={}\nStartTime=00:00:00\nEndTime=00:00:00\nUseDataDictionary=N\n{}",
            listen.port(),
            dir.join(format!("qf-store-{store}")).display(),
            clients
                .iter()
                .map(|c| format!("\n[SESSION]\nBeginString=FIX.4.4\nSenderCompID=QFX\nTargetCompID={c}\n"))
                .collect::<String>()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = std::process::Command::new(&bin)
        .arg(&settings)
        .arg(store)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    kids.0.push(child);
    wait_listening(listen).await.map_err(|e| e.to_string())?;
    Ok(listen)
}

/// Starts `fix-exchange-sim` on a free port: sessions in memory (`store_dir` None) or in a
/// FileStore under `store_dir` with `sync`.
async fn start_sim(
    exe: &std::path::Path,
    kids: &mut Children,
    store_dir: Option<(&std::path::Path, &str)>,
) -> anyhow::Result<SocketAddr> {
    let addr = free_addr()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["fix-exchange-sim", "--listen", &addr.to_string()]);
    if let Some((dir, sync)) = store_dir {
        cmd.arg("--store-dir").arg(dir).args(["--sync", sync]);
    }
    kids.0.push(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start fix-exchange-sim")?,
    );
    wait_listening(addr).await?;
    Ok(addr)
}

/// The file system a path is on, by name where it is a common one.
fn fs_type(p: &std::path::Path) -> String {
    use nix::sys::statfs::{
        statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC,
        XFS_SUPER_MAGIC,
    };
    match statfs(p).map(|s| s.filesystem_type()) {
        Ok(t) if t == EXT4_SUPER_MAGIC => "ext2/3/4".into(),
        Ok(t) if t == XFS_SUPER_MAGIC => "xfs".into(),
        Ok(t) if t == BTRFS_SUPER_MAGIC => "btrfs".into(),
        Ok(t) if t == OVERLAYFS_SUPER_MAGIC => "overlayfs".into(),
        Ok(t) if t == TMPFS_MAGIC => {
            "tmpfs: fsync is a no-op here, the durable rows are not".into()
        }
        Ok(t) => format!("file system type {t:?}"),
        Err(e) => format!("file system unknown: {e}"),
    }
}

/// One path of `bench fix-roundtrip` and what it measured, run by run.
struct PathRow {
    label: String,
    guarantee: &'static str,
    /// Where to send orders and the acceptor's CompID, or why the path is not measured.
    target: Result<(SocketAddr, &'static str), String>,
    runs: Vec<Measured>,
}

impl PathRow {
    fn p50s(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|m| understudy_control::percentile(&m.lat, 0.5))
            .collect()
    }
    fn p99s(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|m| understudy_control::percentile(&m.lat, 0.99))
            .collect()
    }
    fn rates(&self, orders: usize) -> Vec<f64> {
        self.runs
            .iter()
            .map(|m| orders as f64 / m.burst_s)
            .collect()
    }

    /// One more run, as a client of its own (`BENCH<run>`): a fresh session, so nothing
    /// of an earlier run (sequence numbers, resends) reaches this one.
    async fn measure(&mut self, orders: usize) -> anyhow::Result<()> {
        if let Ok((addr, comp_id)) = self.target {
            let sender = bench_client(self.runs.len());
            let m = measure(addr, comp_id, &sender, orders)
                .await
                .with_context(|| format!("measuring {}", self.label))?;
            self.runs.push(m);
        }
        Ok(())
    }

    fn print(&self, orders: usize) {
        let range = |xs: &[f64]| {
            let (lo, hi) = understudy_control::stats::spread(xs);
            if xs.len() > 1 {
                format!("{lo:.0}–{hi:.0}")
            } else {
                format!("{lo:.0}")
            }
        };
        match &self.target {
            Ok(_) => {
                let max = self
                    .runs
                    .iter()
                    .filter_map(|m| m.lat.last().copied())
                    .fold(f64::NAN, f64::max);
                let p99 = if orders >= understudy_control::stats::MIN_SAMPLES_FOR_P99 {
                    range(&self.p99s())
                } else {
                    "-".into()
                };
                println!(
                    "  {:<46} {:<68} {:>11} {:>13} {:>8.0} {:>13}",
                    self.label,
                    self.guarantee,
                    range(&self.p50s()),
                    p99,
                    max,
                    range(&self.rates(orders))
                );
            }
            Err(why) => println!(
                "  {:<46} {:<68} not measured: {why}",
                self.label, self.guarantee
            ),
        }
    }
}

/// The CompID of the client of run `i` (from 0).
fn bench_client(i: usize) -> String {
    format!("BENCH{}", i + 1)
}

/// The comparison line of a pair: ratios of the medians over runs, and which side is faster
/// only when every run of it beats every run of the other.
fn print_verdict(ours: &PathRow, peer: &PathRow, orders: usize, repeat: usize) {
    use understudy_control::stats::{compare, Verdict};
    if ours.runs.is_empty() || peer.runs.is_empty() {
        return;
    }
    let median = |xs: Vec<f64>| understudy_control::stats::percentiles(&xs).0;
    let who = |v: Verdict| match v {
        _ if repeat < 3 => "not judged (fewer than 3 runs)",
        Verdict::First => "ours",
        Verdict::Second => "QuickFIX",
        Verdict::NoClearWinner => "no clear winner",
    };
    println!(
        "    ours / QuickFIX, medians over runs: p50 latency {:.2}×, throughput {:.2}×; lower p50: {}; higher throughput: {}",
        median(ours.p50s()) / median(peer.p50s()),
        median(ours.rates(orders)) / median(peer.rates(orders)),
        who(compare(&ours.p50s(), &peer.p50s(), true, 0.01)),
        who(compare(&ours.rates(orders), &peer.rates(orders), false, 0.01)),
    );
}

async fn roundtrip_bench(a: FixBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.repeat == 0 {
        anyhow::bail!("--runs and --repeat must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    // /var/tmp is on disk by convention; /tmp may be a tmpfs, where fsync does nothing.
    let dir = tempfile::Builder::new()
        .prefix("fix-roundtrip-")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())?;
    let clients: Vec<String> = (0..a.repeat).map(bench_client).collect();
    let gw_sim = free_addr()?;
    let gw = free_addr()?;
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"{gw}\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\nsync = \"{}\"\ndefault_route = \"EXCH\"\n{}\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"{gw_sim}\"]\ntarget_comp_id = \"EXCH\"\nreconnect_interval = \"20ms\"\n",
            dir.path().join("store").display(),
            a.sync,
            clients
                .iter()
                .map(|c| format!("\n[[client]]\ncomp_id = \"{c}\"\n"))
                .collect::<String>()
        ),
    )?;
    let quiet = || std::process::Stdio::null();
    let mut kids = Children(Vec::new());
    kids.0.push(
        std::process::Command::new(&exe)
            .args(["fix-exchange-sim", "--listen", &gw_sim.to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("cannot start fix-exchange-sim")?,
    );
    wait_listening(gw_sim).await?;
    kids.0.push(
        std::process::Command::new(&exe)
            .args(["fix-gateway", "--config"])
            .arg(&cfg)
            .env("UNDERSTUDY_ROLE", "active")
            .env("UNDERSTUDY_EPOCH", "1")
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("cannot start fix-gateway")?,
    );
    wait_listening(gw).await?;

    let d = dir.path();
    let mut pairs: Vec<[PathRow; 2]> = Vec::new();
    for (ours_store, ours_g, ours_sync, qf_store, qf_g, qf_mode) in [
        (
            "memory store",
            LOST_WITH_PROCESS,
            None,
            "MemoryStore",
            LOST_WITH_PROCESS,
            "memory",
        ),
        (
            "FileStore every-write",
            SYNC_BEFORE_SEND,
            Some("every-write"),
            "FileStore + fdatasync per write",
            SYNC_BEFORE_SEND,
            "file-fsync",
        ),
        (
            "FileStore batch",
            SYNC_BATCH,
            Some("batch"),
            "FileStore as shipped",
            FLUSH_ONLY,
            "file",
        ),
    ] {
        let store_dir = ours_sync.map(|s| (d.join(format!("sim-{s}")), s));
        let ours = start_sim(
            &exe,
            &mut kids,
            store_dir.as_ref().map(|(p, s)| (p.as_path(), *s)),
        )
        .await?;
        let qf = start_quickfix_acceptor(d, &mut kids, qf_mode, &clients).await;
        pairs.push([
            PathRow {
                label: format!("understudy sim, {ours_store}"),
                guarantee: ours_g,
                target: Ok((ours, "EXCH")),
                runs: Vec::new(),
            },
            PathRow {
                label: format!("QuickFIX/C++, {qf_store}"),
                guarantee: qf_g,
                target: qf.map(|addr| (addr, "QFX")),
                runs: Vec::new(),
            },
        ]);
    }
    let mut gateway = PathRow {
        label: format!("understudy fix-gateway, {}", a.sync),
        guarantee: if a.sync == "batch" {
            SYNC_BATCH
        } else {
            SYNC_BEFORE_SEND
        },
        target: Ok((gw, "GW")),
        runs: Vec::new(),
    };
    for rep in 0..a.repeat {
        eprintln!("fix-roundtrip: run {}/{}…", rep + 1, a.repeat);
        for pair in &mut pairs {
            // The side that goes first alternates, so drift in the machine's load does not
            // always favour the same side.
            let (first, second) = pair.split_at_mut(1);
            let (x, y) = if rep % 2 == 0 {
                (&mut first[0], &mut second[0])
            } else {
                (&mut second[0], &mut first[0])
            };
            x.measure(a.runs).await?;
            y.measure(a.runs).await?;
        }
        gateway.measure(a.runs).await?;
    }

    println!(
        "fix-roundtrip: {} market orders per path and run, each answered New, partial fill, fill: one at a time (latency: \
         order sent → fill received, CLOCK_MONOTONIC in the client process), then {} more in one pipelined burst (orders/s)",
        a.runs, a.runs
    );
    println!(
        "  {} runs per path, the two sides of a pair back to back; figures are min–max over runs (max: over all runs); \
         stores under {} ({})",
        a.repeat,
        d.display(),
        fs_type(d)
    );
    println!(
        "  {:<46} {:<68} {:>11} {:>13} {:>8} {:>13}",
        "", "what the store guarantees", "p50 µs", "p99 µs", "max µs", "orders/s"
    );
    println!("engine to engine (one FIX hop; the acceptor does the simulator's work, QuickFIX's acceptor is tests/quickfix/qf_acceptor.cpp):");
    for [ours, qf] in &pairs {
        ours.print(a.runs);
        qf.print(a.runs);
        print_verdict(ours, qf, a.runs, a.repeat);
    }
    println!("the product (two FIX hops: client → gateway → our sim (memory) → back; every message stored before it is sent):");
    gateway.print(a.runs);
    if let Some(n) = understudy_control::stats::p99_note(a.runs) {
        println!("  {n}");
    }
    println!(
        "  the last pair is not like for like: ours syncs within 2 ms, QuickFIX/C++ never; QuickFIX/C++ 1.15 has no sync \
         setting, so its fdatasync row wraps its FileStore (tests/quickfix/qf_acceptor.cpp)"
    );
    Ok(0)
}

/// Arguments of `understudy demo fix`.
#[derive(Args, Debug)]
pub struct FixDemoArgs {
    /// Orders sent before, at and after the kill (each).
    #[arg(long, default_value_t = 3)]
    orders: usize,
}

/// `understudy demo fix`: the exchange simulator, two agents whose warm-standby service is the
/// FIX gateway, and a client configured with both gateway addresses. The active agent is
/// killed with SIGKILL; the client logs on to the new active with its sequence numbers
/// continuing and every order is answered. Everything started is stopped at the end.
pub fn demo(args: FixDemoArgs) -> anyhow::Result<u8> {
    if args.orders == 0 || args.orders > 1000 {
        anyhow::bail!("--orders must be between 1 and 1000");
    }
    runtime()?.block_on(demo_run(args))
}

/// The demo's view of the client: prints what arrives, keeps the reports.
struct DemoClient {
    c: understudy_fix::client::Client,
    /// ExecID → (ClOrdID, ExecType) of the first copy of each report.
    reports: std::collections::HashMap<String, (String, String)>,
    dups: usize,
}

impl DemoClient {
    fn order(&mut self, cl: &str) {
        use understudy_fix::exchange_sim::{put_str, tag};
        let mut b = Vec::new();
        put_str(&mut b, tag::CL_ORD_ID, cl);
        put_str(&mut b, tag::SYMBOL, "DEMO");
        put_str(&mut b, tag::SIDE, "1");
        put_str(&mut b, tag::ORDER_QTY, "100");
        put_str(&mut b, tag::ORD_TYPE, "1");
        b.extend_from_slice(b"60=");
        understudy_fix::time::write_utc_timestamp(&mut b, std::time::SystemTime::now());
        b.push(understudy_fix::tags::SOH);
        self.c.handle.send(0, b"D", b);
    }

    /// Prints events until every order in `cls` is filled (or `timeout`); returns the Logon
    /// seen on the way, if any.
    async fn until_filled(
        &mut self,
        cls: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Option<understudy_fix::engine::LogonInfo>> {
        use understudy_fix::client::ClientEvent;
        use understudy_fix::exchange_sim::tag;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut logon = None;
        loop {
            let filled = |r: &std::collections::HashMap<String, (String, String)>, cl: &str| {
                r.values().filter(|(c, t)| c == cl && t == "F").count() == 2
            };
            if cls.iter().all(|cl| filled(&self.reports, cl)) {
                return Ok(logon);
            }
            let e = match tokio::time::timeout_at(deadline, self.c.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => anyhow::bail!("client stopped"),
                Err(_) => anyhow::bail!("orders not answered within {timeout:?}"),
            };
            match &e {
                ClientEvent::Message {
                    seq,
                    poss_dup,
                    poss_resend,
                    msg_type,
                    ..
                } if msg_type == "8" => {
                    let id = e.field(tag::EXEC_ID).unwrap_or_default().to_owned();
                    let cl = e.field(tag::CL_ORD_ID).unwrap_or_default().to_owned();
                    let et = e.field(tag::EXEC_TYPE).unwrap_or_default().to_owned();
                    let what = match (et.as_str(), e.field(tag::ORD_STATUS)) {
                        ("0", _) => "New",
                        ("F", Some("2")) => "Filled",
                        ("F", _) => "Partially filled",
                        _ => "other",
                    };
                    let copy = if self.reports.contains_key(&id) {
                        self.dups += 1;
                        "   (a PossDup copy, already seen: ignored)"
                    } else if *poss_dup || *poss_resend {
                        "   (PossDup)"
                    } else {
                        ""
                    };
                    println!("    ← ExecutionReport {cl:<4} {what:<16} ExecID {id}  MsgSeqNum {seq}{copy}");
                    self.reports.entry(id).or_insert((cl, et));
                }
                ClientEvent::LoggedOn(info) => {
                    println!(
                        "    client logged on: next MsgSeqNum out {}, in {}{}",
                        info.next_sender_seq,
                        info.next_target_seq,
                        if info.reset { " (RESET)" } else { "" }
                    );
                    logon = Some(info.clone());
                }
                ClientEvent::LoggedOut(why) => println!("    client disconnected: {why}"),
                ClientEvent::Session(ev) => println!("    session: {ev:?}"),
                _ => {}
            }
        }
    }
}

async fn demo_run(args: FixDemoArgs) -> anyhow::Result<u8> {
    let n = args.orders;
    println!("understudy demo fix: a warm-standby FIX gateway group on this host");
    let mut fg = FixGroup::start("every-write", &["CLIENT1"]).await?;
    let pid = |fg: &FixGroup, i: usize| {
        fg.group().nodes[i]
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default()
    };
    println!(
        "  agent a: Hot  (pid {}), its fix-gateway serves clients on {}",
        pid(&fg, 0),
        fg.gateways[0]
    );
    println!(
        "  agent b: Warm (pid {}), its fix-gateway has validated its config and waits; nothing listens on {}",
        pid(&fg, 1),
        fg.gateways[1]
    );
    println!(
        "  shared session store {}\n",
        fg.log_dir().join("fix-store").display()
    );
    println!(
        "client CLIENT1 (FIX 4.4) configured with both addresses {} and {}:",
        fg.gateways[0], fg.gateways[1]
    );
    let c = fg.client("CLIENT1", Duration::from_millis(10))?;
    let mut dc = DemoClient {
        c,
        reports: Default::default(),
        dups: 0,
    };
    let before: Vec<String> = (1..=n).map(|i| format!("B{i}")).collect();
    let first = logon_continuing(&mut dc.c, None, Duration::from_secs(10)).await?;
    println!(
        "    client logged on: next MsgSeqNum out {}, in {}",
        first.next_sender_seq, first.next_target_seq
    );
    for cl in &before {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    dc.until_filled(&before, Duration::from_secs(10)).await?;

    let at_kill: Vec<String> = (1..=n).map(|i| format!("K{i}")).collect();
    println!("\n{n} more orders, and kill -9 of agent a right behind them:");
    for cl in &at_kill {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    let kill_unix = unix_ms();
    let t0 = std::time::Instant::now();
    fg.blocking(|g| g.kill9(0)).await?;
    println!("    kill -9 agent a (its gateway dies with it)");
    let second = logon_continuing(&mut dc.c, Some(&first), Duration::from_secs(10)).await?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    fg.blocking(|g| g.wait_hot(1)).await??;
    println!(
        "    client logged on to agent b's gateway {:.1} ms after the kill: next MsgSeqNum out {}, in {} — continuing, no reset",
        took, second.next_sender_seq, second.next_target_seq
    );
    if let Some((notified, e2e)) = fg.takeover(1, kill_unix) {
        println!(
            "    (agent b: kill → its gateway told it is active {e2e:.1} ms; lock obtained → told {notified:.1} ms)"
        );
    }
    let after: Vec<String> = (1..=n).map(|i| format!("A{i}")).collect();
    println!("\n{n} orders after the failover:");
    for cl in &after {
        println!("    → NewOrderSingle {cl} (market, 100)");
        dc.order(cl);
    }
    let mut all = before.clone();
    all.extend(at_kill.iter().cloned());
    all.extend(after.iter().cloned());
    dc.until_filled(&all, Duration::from_secs(20)).await?;
    // Late PossDup copies, if any, for the tally.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        dc.until_filled(&["never".to_owned()], Duration::from_millis(300)),
    )
    .await;
    let mut by_order: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (cl, et) in dc.reports.values() {
        by_order.entry(cl).or_default().push(et);
    }
    let complete = all
        .iter()
        .filter(|cl| {
            let mut v = by_order.get(cl.as_str()).cloned().unwrap_or_default();
            v.sort();
            v == ["0", "F", "F"]
        })
        .count();
    println!(
        "\n{complete} of {} orders answered exactly once (New, partial fill, fill); {} PossDup copies ignored by ExecID",
        all.len(),
        dc.dups
    );
    dc.c.task.abort();
    drop(fg);
    println!("stopped the agents, gateways and exchange simulator; temp directory removed");
    Ok(if complete == all.len() { 0 } else { 1 })
}

/// A gateway group on this host: `fix-exchange-sim`, two agents (trylock) whose warm-standby
/// service is `fix-gateway`, one shared store. The benchmark and the demo run it.
struct FixGroup {
    group: Option<understudy_control::local::LocalGroup>,
    /// Client addresses of the gateways of nodes a and b.
    gateways: [SocketAddr; 2],
    _sim: Children,
}

impl FixGroup {
    /// Starts the simulator and both agents; node a is active, b a ready standby. `clients`
    /// are the CompIDs the gateways accept.
    async fn start(sync: &str, clients: &[&str]) -> anyhow::Result<FixGroup> {
        use understudy_control::local::LocalGroup;
        let exe = std::env::current_exe().context("cannot find the understudy executable")?;
        let sim = free_addr()?;
        let gateways = [free_addr()?, free_addr()?];
        let mut group = LocalGroup::new(exe.clone(), &["a", "b"], "warm", |n| {
            let cfg = if n == "a" { "gw-a.toml" } else { "gw-b.toml" };
            vec![
                exe.display().to_string(),
                "fix-gateway".into(),
                "--config".into(),
                cfg.into(),
            ]
        })?;
        // The configs live next to the agents' (the agents run in their own directory, so
        // the service command names them by absolute path).
        let dir = group.dir.path().to_path_buf();
        let store = dir.join("fix-store");
        let client_tables: String = clients
            .iter()
            .map(|c| format!("\n[[client]]\ncomp_id = \"{c}\"\n"))
            .collect();
        for (name, listen) in [("gw-a", gateways[0]), ("gw-b", gateways[1])] {
            std::fs::write(
                dir.join(format!("{name}.toml")),
                format!(
                    "[gateway]\nlisten = \"{listen}\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\nsync = \"{sync}\"\ndefault_route = \"EXCH\"\n{client_tables}\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"{sim}\"]\ntarget_comp_id = \"EXCH\"\nreconnect_interval = \"20ms\"\n",
                    store.display()
                ),
            )?;
        }
        for n in &group.nodes {
            let text = std::fs::read_to_string(&n.cfg)?;
            let cfg_name = format!("gw-{}.toml", n.name);
            let abs = dir.join(&cfg_name).display().to_string();
            std::fs::write(
                &n.cfg,
                text.replace(&format!("\"{cfg_name}\""), &format!("{abs:?}")),
            )?;
        }
        let sim_log = std::fs::File::create(dir.join("sim.out"))?;
        let sim_child = std::process::Command::new(&exe)
            .args(["fix-exchange-sim", "--listen", &sim.to_string()])
            .stdout(sim_log.try_clone()?)
            .stderr(sim_log)
            .spawn()
            .context("cannot start fix-exchange-sim")?;
        let sim_kids = Children(vec![sim_child]);
        wait_listening(sim).await?;
        let group = tokio::task::spawn_blocking(move || -> anyhow::Result<LocalGroup> {
            group.start(0)?;
            group.wait_hot(0)?;
            group.start(1)?;
            group.wait_ready(1)?;
            Ok(group)
        })
        .await??;
        wait_listening(gateways[0]).await?;
        Ok(FixGroup {
            group: Some(group),
            gateways,
            _sim: sim_kids,
        })
    }

    fn group(&self) -> &understudy_control::local::LocalGroup {
        self.group.as_ref().expect("group present")
    }

    /// Runs `f` on the group in a blocking task.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut understudy_control::local::LocalGroup) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut g = self.group.take().context("group in use")?;
        let (g, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut g);
            (g, out)
        })
        .await?;
        self.group = Some(g);
        Ok(out)
    }

    /// A client configured with both gateway addresses.
    fn client(
        &self,
        comp_id: &str,
        reconnect: Duration,
    ) -> anyhow::Result<understudy_fix::client::Client> {
        Ok(understudy_fix::client::start(
            understudy_fix::client::ClientConfig {
                connect: self.gateways.to_vec(),
                sender_comp_id: comp_id.into(),
                target_comp_id: "GW".into(),
                begin_string: understudy_fix::tags::BeginString::Fix44,
                heartbeat_interval: Duration::from_secs(30),
                reconnect_interval: reconnect,
            },
        )?)
    }

    /// The agent's own takeover at node `i`, the last one: (detection → service notified,
    /// kill → service notified through its wall-clock detection time).
    fn takeover(&self, i: usize, kill_unix_ms: f64) -> Option<(f64, f64)> {
        let ev = understudy_control::local::get_json(&self.group().nodes[i].admin, "/events")?;
        let t = ev.get("takeovers")?.as_array()?.last()?.clone();
        let notified = t.get("service_notified_ms")?.as_f64()?;
        let detected = t.get("detected_unix_ms")?.as_f64()?;
        Some((notified, (detected + notified - kill_unix_ms).max(0.0)))
    }

    fn log_dir(&self) -> std::path::PathBuf {
        self.group().dir.path().to_path_buf()
    }
}

impl Drop for FixGroup {
    fn drop(&mut self) {
        if let Some(mut g) = self.group.take() {
            g.stop_all();
        }
    }
}

/// Waits for the client's next Logon; fails on a reset or sequence numbers that went back.
async fn logon_continuing(
    c: &mut understudy_fix::client::Client,
    prev: Option<&understudy_fix::engine::LogonInfo>,
    timeout: Duration,
) -> anyhow::Result<understudy_fix::engine::LogonInfo> {
    use understudy_fix::client::ClientEvent;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(ClientEvent::LoggedOn(info))) => {
                if let Some(p) = prev {
                    if info.reset
                        || info.next_sender_seq <= p.next_sender_seq
                        || info.next_target_seq <= p.next_target_seq
                    {
                        anyhow::bail!("sequence numbers did not continue: {p:?} then {info:?}");
                    }
                }
                return Ok(info);
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("client stopped"),
            Err(_) => anyhow::bail!("no logon within {timeout:?}"),
        }
    }
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

async fn recovery_bench(a: FixRecoveryArgs) -> anyhow::Result<u8> {
    let mut fg = FixGroup::start(&a.sync, &["BENCH"]).await?;
    let mut c = fg.client("BENCH", Duration::from_millis(2))?;
    let mut prev = logon_continuing(&mut c, None, Duration::from_secs(10))
        .await
        .context("the client did not log on to the gateway")?;
    let (mut recovery, mut agent_notified, mut agent_e2e, mut beyond) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut active = 0usize;
    for run in 0..a.runs {
        // The session works: an order round trip on the current active.
        c.handle.send(0, b"D", bench_order(&format!("r{run}")));
        fills(&mut c, 1)
            .await
            .with_context(|| format!("run {run}: no fill (logs in {})", fg.log_dir().display()))?;
        let standby = 1 - active;
        let kill_unix = unix_ms();
        let t0 = std::time::Instant::now();
        let killer = {
            let mut g = fg.group.take().context("group")?;
            tokio::task::spawn_blocking(move || {
                g.kill9(active);
                g
            })
        };
        let logon = logon_continuing(&mut c, Some(&prev), Duration::from_secs(10)).await;
        let took = t0.elapsed().as_secs_f64() * 1e3;
        fg.group = Some(killer.await?);
        let logon = logon.with_context(|| {
            format!(
                "run {run}: after kill -9 (logs in {})",
                fg.log_dir().display()
            )
        })?;
        fg.blocking(move |g| g.wait_hot(standby)).await??;
        let (notified, e2e) = fg
            .takeover(standby, kill_unix)
            .with_context(|| format!("run {run}: no takeover in the new active's /events"))?;
        recovery.push(took);
        agent_notified.push(notified);
        agent_e2e.push(e2e);
        beyond.push(took - e2e);
        prev = logon;
        // The killed node comes back as the standby for the next run.
        fg.blocking(move |g| -> anyhow::Result<()> {
            g.start(active)?;
            g.wait_ready(active)
        })
        .await??;
        active = standby;
    }
    c.task.abort();
    println!(
        "fix-recovery: {} × kill -9 of the active agent (trylock, warm-standby fix-gateway, store sync {}), client retrying every 2 ms",
        a.runs, a.sync
    );
    let mut t = Table::new("ms", 1, a.runs);
    t.row(
        "kill → new active accepts the Logon (seq ok)",
        Clock::MonoHere,
        &recovery,
        "",
    );
    t.row(
        "agent: kill → service notified",
        Clock::WallMs,
        &agent_e2e,
        "",
    );
    t.row(
        "agent: detection → service notified",
        Clock::AgentMono,
        &agent_notified,
        "",
    );
    t.row(
        "FIX recovery beyond the agent's takeover",
        Clock::MonoMinusWallMs,
        &beyond,
        "",
    );
    print!("{}", t.render());
    let b = Summary::of(&beyond);
    let goal = 100.0;
    let (what, v) = match b.p99 {
        Some(p) => ("p99", p),
        None => ("max (too few runs for a p99)", b.max),
    };
    println!(
        "goal: FIX recovery beyond the agent's takeover, p99 under {goal} ms, judged on the {what}: {}",
        if v < goal { "met" } else { "NOT MET" }
    );
    Ok(0)
}
