//! The FIX gateway (warm standby, document 002) on real processes: the gateway group
//! ([`group`]), `bench fix-roundtrip` (our engines and the gateway against QuickFIX's),
//! `bench fix-recovery`, `demo fix`, and the order and session checks the tests share
//! ([`orders`]).

pub mod group;
pub mod orders;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::clock::unix_ms_f64 as unix_ms;
use crate::proc::Proc;
use crate::runtime;
use crate::stats::{Clock, Summary, Table};
pub use group::{FixGroup, GatewayFile, Pair, StoreSync};

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
    /// Store durability of the gateways.
    #[arg(long, value_enum, default_value = "group")]
    pub sync: StoreSync,
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
    /// Store durability of the gateway.
    #[arg(long, value_enum, default_value = "group")]
    pub sync: StoreSync,
}

impl FixBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixBench::FixRoundtrip(a) => runtime()?.block_on(roundtrip_bench(a)),
            FixBench::FixRecovery(a) => {
                if a.runs == 0 {
                    anyhow::bail!("--runs must be at least 1");
                }
                runtime()?.block_on(recovery_bench(a))
            }
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(crate::ports::free_addrs(1)?[0])
}

async fn wait_listening(a: SocketAddr) -> anyhow::Result<()> {
    crate::http::listening(a, Duration::from_secs(5)).await
}

/// A market order body for the benchmark.
fn bench_order(id: &str) -> Vec<u8> {
    use understudy_fix::orders::{put_str, tag};
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
    use understudy_fix::orders::tag;
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
        ..Default::default()
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
    kids: &mut Vec<Proc>,
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
    let child = Proc::spawn(
        std::process::Command::new(&bin)
            .arg(&settings)
            .arg(store)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit()),
    )
    .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    kids.push(child);
    wait_listening(listen).await.map_err(|e| e.to_string())?;
    Ok(listen)
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
            .map(|m| crate::stats::percentile(&m.lat, 0.5))
            .collect()
    }
    fn p99s(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|m| crate::stats::percentile(&m.lat, 0.99))
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
            let (lo, hi) = crate::stats::spread(xs);
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
                let p99 = if orders >= crate::stats::MIN_SAMPLES_FOR_P99 {
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
    use crate::stats::{compare, Verdict};
    if ours.runs.is_empty() || peer.runs.is_empty() {
        return;
    }
    let median = |xs: Vec<f64>| crate::stats::percentiles(&xs).0;
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
    let gw = free_addr()?;
    let cfg = dir.path().join("gw.toml");
    let quiet = || std::process::Stdio::null();
    let mut kids = Vec::new();
    let (sim, gw_sim) = group::start_sim(&exe, None, None)?;
    kids.push(sim);
    let client_ids: Vec<&str> = clients.iter().map(String::as_str).collect();
    let mut file = GatewayFile::new(gw, &dir.path().join("store"), gw_sim, &client_ids);
    file.gateway.sync = Some(a.sync);
    file.write(&cfg, "")?;
    kids.push(
        Proc::spawn(
            crate::proc::understudy(&exe, &["fix-gateway", "--config"])
                .arg(&cfg)
                .env("UNDERSTUDY_ROLE", "active")
                .env("UNDERSTUDY_EPOCH", "1")
                .stdout(quiet())
                .stderr(quiet()),
        )
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
            Some(StoreSync::EveryWrite),
            "FileStore + fdatasync per write",
            SYNC_BEFORE_SEND,
            "file-fsync",
        ),
        (
            "FileStore batch",
            SYNC_BATCH,
            Some(StoreSync::Batch),
            "FileStore as shipped",
            FLUSH_ONLY,
            "file",
        ),
    ] {
        let store_dir = ours_sync.map(|s| (d.join(format!("sim-{s}")), s));
        let (sim, ours) = group::start_sim(
            &exe,
            store_dir.as_ref().map(|(p, s)| (p.as_path(), *s)),
            None,
        )?;
        kids.push(sim);
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
        guarantee: if a.sync == StoreSync::Batch {
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
    if let Some(n) = crate::stats::p99_note(a.runs) {
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
        use understudy_fix::orders::{put_str, tag};
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
        use understudy_fix::orders::tag;
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
                ClientEvent::Session(ev) => println!("    session: {ev}"),
                _ => {}
            }
        }
    }
}

async fn demo_run(args: FixDemoArgs) -> anyhow::Result<u8> {
    let n = args.orders;
    println!("understudy demo fix: a warm-standby FIX gateway group on this host");
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let mut fg = FixGroup::start(exe, StoreSync::EveryWrite, &["CLIENT1"]).await?;
    let pid = |fg: &FixGroup, i: usize| fg.agent_pid(i).map(|p| p.to_string()).unwrap_or_default();
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
        fg.dir().join("store").display()
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
    fg.blocking(|g| g.kill9("a")).await?;
    println!("    kill -9 agent a (its gateway dies with it)");
    let second = logon_continuing(&mut dc.c, Some(&first), Duration::from_secs(10)).await?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    fg.blocking(|g| g.wait_hot("b")).await??;
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

async fn recovery_bench(a: FixRecoveryArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let mut fg = FixGroup::start(exe, a.sync, &["BENCH"]).await?;
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
            .with_context(|| format!("run {run}: no fill (logs in {})", fg.dir().display()))?;
        let standby = 1 - active;
        let kill_unix = unix_ms();
        let t0 = std::time::Instant::now();
        let killer = {
            let mut g = fg.group.take().context("group")?;
            tokio::task::spawn_blocking(move || {
                g.kill9(group::NODES[active]);
                g
            })
        };
        let logon = logon_continuing(&mut c, Some(&prev), Duration::from_secs(10)).await;
        let took = t0.elapsed().as_secs_f64() * 1e3;
        fg.group = Some(killer.await?);
        let logon = logon.with_context(|| {
            format!("run {run}: after kill -9 (logs in {})", fg.dir().display())
        })?;
        fg.blocking(move |g| g.wait_hot(group::NODES[standby]))
            .await??;
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
            g.spawn(group::NODES[active])?;
            g.wait_ready_standby(group::NODES[active])
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
    println!(
        "{}",
        crate::stats::goal_line(
            "FIX recovery beyond the agent's takeover",
            &Summary::of(&beyond),
            100.0
        )
    );
    Ok(0)
}
