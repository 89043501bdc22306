//! `understudy bench fix-roundtrip`: order round trips through our FIX engine, the gateway and
//! a QuickFIX/C++ acceptor, side by side in one run, and issue 9's group-commit goals judged
//! on them.
//!
//! Every path runs `--repeat` times. The rows of one comparison are measured back to back, the
//! one that goes first rotating from run to run, so drift in the machine's load favours no
//! side; every run logs on fresh client sessions, so nothing of an earlier run (sequence
//! numbers, resends) reaches the next. Figures are printed as min–max over runs, and a side,
//! or a goal, is judged only when every run lies on one side by more than [`MARGIN`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::{bench_order, fills, group, GatewayFile, StoreSync};
use crate::proc::Proc;
use crate::stats::{compare, percentile, percentiles, spread, Verdict, MIN_SAMPLES_FOR_P99};

/// Arguments of `bench fix-roundtrip`.
#[derive(Args, Debug)]
pub struct FixBenchArgs {
    /// Orders per path and run: that many one at a time, then as many again in one
    /// pipelined burst.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Runs of every path, the rows of a comparison back to back, rotating which goes first;
    /// a faster side and the goals are judged from 3 on.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Store durability of the gateway.
    #[arg(long, value_enum, default_value = "group")]
    pub sync: StoreSync,
    /// Also the gateway path with its store replicated to a warm standby gateway on this host
    /// (loopback, a store directory of its own) with this `replication.mode`: what the
    /// standby's copy costs; `none` leaves the row out.
    #[arg(long, value_enum, default_value = "sync")]
    pub replication: BenchReplication,
    /// Clients sending their pipelined bursts at once, to the gateway and to the two
    /// acceptors of the group-commit comparison (fresh clients every run).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Holds a CPU wake-up latency request (PM QoS, `/dev/cpu_dma_latency`, in µs) for the
    /// whole run, as latency-tuned hosts do (tuned's latency-performance profile holds 0 or
    /// 1): idle CPUs stay in shallow states, for every side alike. Needs root. Without it the
    /// machine's setting stands; the header prints what was in force.
    #[arg(long, value_name = "MICROSECONDS", value_parser = clap::value_parser!(u32).range(0..=2_000_000_000))]
    pub cpu_dma_latency: Option<u32>,
}

/// `bench fix-roundtrip --replication`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchReplication {
    /// Each batch durable on disk and acknowledged by the standby before anything of it is sent.
    Sync,
    /// Each batch durable on disk before it is sent; the standby's copy follows.
    Async,
    /// No replicated row.
    None,
}

impl BenchReplication {
    /// `replication.mode` and what the row guarantees, or `None` for no row.
    fn mode(self) -> Option<(&'static str, &'static str)> {
        match self {
            BenchReplication::Sync => Some(("sync", REPLICATED_SYNC)),
            BenchReplication::Async => Some(("async", REPLICATED_ASYNC)),
            BenchReplication::None => None,
        }
    }
}

/// Relative margin by which every run must beat the other side (or the goal) to be judged.
const MARGIN: f64 = 0.01;

/// Sessions a QuickFIX peer can be given below select()'s limit of 1024 descriptors: the
/// every-write acceptor keeps 8 files open per session (FileStore's 4 and the copies
/// `qf_acceptor.cpp` syncs), and the sessions of the run being measured a socket each.
/// Measured with `--repeat 3`: 123 sessions run, 147 aborted the acceptor ("bit out of range
/// 0 - FD_SETSIZE on fd_set").
const MAX_QUICKFIX_SESSIONS: usize = 120;

/// What a store keeps when things fail, as printed next to each row.
const LOST_WITH_PROCESS: &str = "memory: lost with the process";
const SYNC_BEFORE_SEND: &str = "fdatasync per record before send: survives a machine crash";
const GROUP_COMMIT: &str = "group commit, durable before send: survives a machine crash";
const SYNC_BATCH: &str = "fdatasync ≤2 ms later: survives kill -9, machine crash loses ≤2 ms";
const FLUSH_ONLY: &str = "fflush, no fsync: survives kill -9, machine crash can lose writes";
const REPLICATED_SYNC: &str =
    "group commit + standby's ack before send: survives the machine's loss";
const REPLICATED_ASYNC: &str = "group commit, standby's copy follows: machine loss loses its lag";

/// FIX hops of the gateway path (client → gateway → upstream, and the reports back): the goal
/// allows one `fdatasync` for each on top of QuickFIX's one-hop round trip.
const GATEWAY_HOPS: f64 = 2.0;

/// Appends timed by the `fdatasync` probe of each run.
const FSYNC_PROBES: usize = 200;

/// The pause before each append of the paced `fdatasync` probe: about a single order's round
/// trip, so each sync follows an idle stretch as a sync in a request/response flow does. On
/// this VM an `fdatasync` after a pause costs more than one right after the last (measured
/// 1 December: 130–150 µs back to back, 170–180 after 300 µs, 220–310 after 1 ms).
const PACED_GAP: Duration = Duration::from_micros(500);

/// The CompID of the client of run `rep` (from 0).
fn bench_client(rep: usize) -> String {
    format!("BENCH{}", rep + 1)
}

/// The CompIDs of the clients sending at once in run `rep`.
fn at_once_clients(rep: usize, clients: usize) -> Vec<String> {
    (1..=clients)
        .map(|k| format!("{}-{k}", bench_client(rep)))
        .collect()
}

/// A client `sender` logged on to `target` at `connect`, its path warmed up by one order
/// (upstream logon, page cache).
async fn logged_on(
    connect: SocketAddr,
    target: &str,
    sender: &str,
) -> anyhow::Result<understudy_fix::client::Client> {
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
            _ => anyhow::bail!("the client {sender} did not log on to {target} at {connect}"),
        }
    }
    // Each client's ClOrdIDs start with its CompID (here and in `measure_at_once`), so a fill
    // routed to another client is never one this client awaits.
    let warm = format!("{sender}-warm");
    c.handle.send(0, b"D", bench_order(&warm));
    fills(&mut c, [warm], |_| false).await?;
    Ok(c)
}

/// One-at-a-time latencies (µs, sorted) and the pipelined burst's duration (s) of one run.
struct Measured {
    lat: Vec<f64>,
    burst_s: f64,
}

/// `orders` market orders sent by `sender` one at a time (order sent → fill received,
/// CLOCK_MONOTONIC here), then as many in one pipelined burst.
async fn measure(
    connect: SocketAddr,
    target: &str,
    sender: &str,
    orders: usize,
) -> anyhow::Result<Measured> {
    let mut c = logged_on(connect, target, sender).await?;
    let mut lat = Vec::with_capacity(orders);
    for i in 0..orders {
        let id = format!("{sender}-s{i}");
        let t = Instant::now();
        c.handle.send(0, b"D", bench_order(&id));
        fills(&mut c, [id], |_| false).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    // Named once, before the clock starts: the sends and the wait for their fills use them.
    let burst: Vec<String> = (0..orders).map(|i| format!("{sender}-p{i}")).collect();
    let t = Instant::now();
    for id in &burst {
        c.handle.send(0, b"D", bench_order(id));
    }
    fills(&mut c, burst, |_| false).await?;
    let burst_s = t.elapsed().as_secs_f64();
    c.task.abort();
    Ok(Measured { lat, burst_s })
}

/// What `--clients` clients measured at once in one run.
struct AtOnce {
    /// Orders/s of every client's pipelined burst sent at the same time.
    rate: f64,
    /// Latencies (µs, sorted) of the orders every client then sent one at a time, all
    /// clients at once: what one order waits when many sessions send (a group-commit pass
    /// then syncs a file per session).
    lat: Vec<f64>,
}

/// The fewest orders each client sends one at a time in [`measure_at_once`].
const MIN_ONE_AT_A_TIME: usize = 20;

/// Orders each of `clients` sends one at a time in [`measure_at_once`]: as many in all as one
/// client sends alone (`orders`), at least [`MIN_ONE_AT_A_TIME`] each.
fn one_at_a_time_each(orders: usize, clients: usize) -> usize {
    (orders / clients.max(1)).max(MIN_ONE_AT_A_TIME)
}

/// `senders` sending `orders` market orders each in one pipelined burst, all at once
/// (orders/s: every order of every client, from the first send to the last fill); then every
/// sender sending its share of `orders` one at a time, all senders at once (latencies).
async fn measure_at_once(
    connect: SocketAddr,
    target: &str,
    senders: &[String],
    orders: usize,
) -> anyhow::Result<AtOnce> {
    let mut cs = Vec::with_capacity(senders.len());
    for s in senders {
        cs.push(logged_on(connect, target, s).await?);
    }
    let bursts: Vec<Vec<String>> = senders
        .iter()
        .map(|s| (0..orders).map(|i| format!("{s}-q{i}")).collect())
        .collect();
    let t = Instant::now();
    for (c, ids) in cs.iter().zip(&bursts) {
        for id in ids {
            c.handle.send(0, b"D", bench_order(id));
        }
    }
    for (c, ids) in cs.iter_mut().zip(bursts) {
        fills(c, ids, |_| false).await?;
    }
    let rate = (orders * cs.len()) as f64 / t.elapsed().as_secs_f64();
    let each = one_at_a_time_each(orders, senders.len());
    let lats =
        futures_util::future::try_join_all(cs.iter_mut().zip(senders).map(|(c, s)| async move {
            let mut lat = Vec::with_capacity(each);
            for i in 0..each {
                let id = format!("{s}-o{i}");
                let t = Instant::now();
                c.handle.send(0, b"D", bench_order(&id));
                fills(c, [id], |_| false).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(lat)
        }))
        .await?;
    let mut lat: Vec<f64> = lats.into_iter().flatten().collect();
    lat.sort_by(f64::total_cmp);
    for c in cs {
        c.task.abort();
    }
    Ok(AtOnce { rate, lat })
}

/// p50 (µs) of `n` appends of 200 bytes to a fresh file in `dir`, each followed by its
/// `fdatasync` and, when `gap` is not zero, preceded by a pause of `gap`: what one sync per
/// hop costs on this disk, in this run.
fn fdatasync_p50(dir: &Path, n: usize, gap: Duration) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        if !gap.is_zero() {
            crate::clock::pause(gap);
        }
        let t = Instant::now();
        f.write_all(&[b'x'; 200])?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    Ok(percentiles(&lat).0)
}

/// A PM QoS CPU latency request, in force while the file stays open (closing it withdraws it).
struct CpuLatencyRequest(#[allow(dead_code)] std::fs::File);

const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

fn request_cpu_latency(us: u32) -> anyhow::Result<CpuLatencyRequest> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(CPU_DMA_LATENCY)
        .with_context(|| {
            format!("--cpu-dma-latency: cannot open {CPU_DMA_LATENCY} (needs root)")
        })?;
    // The kernel takes the value as a binary 32-bit integer (range-checked by clap).
    let v = i32::try_from(us).context("--cpu-dma-latency out of range")?;
    f.write_all(&v.to_ne_bytes())
        .with_context(|| format!("--cpu-dma-latency: cannot write {CPU_DMA_LATENCY}"))?;
    Ok(CpuLatencyRequest(f))
}

/// The CPU idle setting in force: the cpuidle driver and governor, and the PM QoS CPU latency
/// limit all requests together set (how deep an idle CPU may sleep, so how long a wake-up
/// takes: on a VM whose idle vCPUs halt, a wake-up costs tens of µs per hop).
fn cpu_idle_setting() -> String {
    let sys = |f: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpuidle/{f}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    };
    let governor = {
        let g = sys("current_governor");
        if g == "unknown" {
            sys("current_governor_ro")
        } else {
            g
        }
    };
    let limit = {
        use std::io::Read;
        let mut b = [0u8; 4];
        match std::fs::File::open(CPU_DMA_LATENCY).and_then(|mut f| f.read_exact(&mut b)) {
            // The kernel's "no request" value.
            Ok(()) if i32::from_ne_bytes(b) >= 2_000_000_000 => "none".to_owned(),
            Ok(()) => format!("{} µs", i32::from_ne_bytes(b)),
            Err(e) => format!("unknown ({e})"),
        }
    };
    format!(
        "cpuidle driver {}, governor {governor}; CPU latency limit (PM QoS, {CPU_DMA_LATENCY}) {limit}",
        sys("current_driver")
    )
}

/// The 1-minute load average, as the kernel reports it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Builds the QuickFIX counterpart `name` of `tests/quickfix/` next to this executable (in
/// `quickfix/`), or says why it cannot be.
async fn quickfix_bin(name: &'static str, dir: &Path) -> Result<std::path::PathBuf, String> {
    if let Some(why) = understudy_fix::quickfix::unavailable() {
        return Err(why);
    }
    let out_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("quickfix")))
        .unwrap_or_else(|| dir.join("quickfix"));
    tokio::task::spawn_blocking(move || understudy_fix::quickfix::build(name, &out_dir))
        .await
        .map_err(|e| e.to_string())?
}

/// QuickFIX settings common to every session the benchmark gives it: FileStore under `store`,
/// open all day, Nagle off as for ours, no data dictionary (ours checks none either).
fn quickfix_defaults(store: &Path) -> String {
    format!(
        "[DEFAULT]\nSocketReuseAddress=Y\nSocketNodelay=Y\nFileStorePath={}\nStartTime=00:00:00\nEndTime=00:00:00\n\
         UseDataDictionary=N\n",
        store.display()
    )
}

/// Acceptor sessions `sender` → each of `clients`.
fn quickfix_acceptor_sessions(sender: &str, clients: &[String]) -> String {
    clients
        .iter()
        .map(|c| {
            format!(
                "\n[SESSION]\nConnectionType=acceptor\nBeginString=FIX.4.4\nSenderCompID={sender}\nTargetCompID={c}\n"
            )
        })
        .collect()
}

/// Starts the QuickFIX acceptor of `tests/quickfix/qf_acceptor.cpp` as `QFX` for `clients`,
/// on the message store `store` (`memory`, `file` or `file-fsync`, see the source), or says
/// why it cannot.
async fn start_quickfix_acceptor(
    dir: &Path,
    kids: &mut Vec<Proc>,
    store: &str,
    clients: &[String],
) -> Result<SocketAddr, String> {
    let bin = quickfix_bin("qf_acceptor", dir).await?;
    let listen = crate::ports::free_addrs(1).map_err(|e| e.to_string())?[0];
    // Each acceptor has a store directory of its own: two of them may run the same store.
    let n = kids.len();
    let settings = dir.join(format!("qf-acceptor-{store}-{n}.cfg"));
    std::fs::write(
        &settings,
        format!(
            "{}SocketAcceptPort={}\n{}",
            quickfix_defaults(&dir.join(format!("qf-store-{store}-{n}"))),
            listen.port(),
            quickfix_acceptor_sessions("QFX", clients)
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
    crate::http::listening(listen, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok(listen)
}

/// Starts the QuickFIX relay of `tests/quickfix/qf_relay.cpp` as `QFR` for `clients`, on
/// QuickFIX's FileStore as shipped, routing to the simulator at `upstream` (which it logs on
/// to as `QFR` before this returns), or says why it cannot.
async fn start_quickfix_relay(
    dir: &Path,
    kids: &mut Vec<Proc>,
    clients: &[String],
    upstream: SocketAddr,
) -> Result<SocketAddr, String> {
    use std::io::BufRead;
    let bin = quickfix_bin("qf_relay", dir).await?;
    let listen = crate::ports::free_addrs(1).map_err(|e| e.to_string())?[0];
    let settings = dir.join("qf-relay.cfg");
    std::fs::write(
        &settings,
        format!(
            // ReconnectInterval: QuickFIX 1.15's initiator reads it from [DEFAULT] only.
            "{}SocketAcceptPort={}\nReconnectInterval=1\n{}\n[SESSION]\nConnectionType=initiator\nBeginString=FIX.4.4\n\
             SenderCompID=QFR\nTargetCompID=EXCH\nSocketConnectHost={}\nSocketConnectPort={}\nHeartBtInt=30\n",
            quickfix_defaults(&dir.join("qf-store-relay")),
            listen.port(),
            quickfix_acceptor_sessions("QFR", clients),
            upstream.ip(),
            upstream.port()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = Proc::spawn(
        std::process::Command::new(&bin)
            .arg(&settings)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit()),
    )
    .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let out = child.0.stdout.take();
    kids.push(child);
    // READY once its upstream session is logged on (it gives up after 10 s and exits, which
    // ends its output): an order sent before would wait for a resend. Its output is read to
    // the end after that, so a later line never meets a closed pipe.
    let ready = tokio::task::spawn_blocking(move || {
        let mut r = std::io::BufReader::new(out?);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        Some(line.trim() == "READY")
    })
    .await
    .map_err(|e| e.to_string())?
    .unwrap_or(false);
    if !ready {
        return Err(format!(
            "{} did not log on to the simulator at {upstream}",
            bin.display()
        ));
    }
    Ok(listen)
}

/// The gateway path replicated: a simulator of its own (the plain gateway's logs on to the
/// other as the same CompID), a warm standby gateway b, then gateway a active with `mode`,
/// both on loopback with a store directory each under `dir`; returns a's client address and
/// its health endpoint once b reports its copy in sync.
async fn start_replicated_gateway(
    exe: &Path,
    dir: &Path,
    kids: &mut Vec<Proc>,
    mode: &'static str,
    sync: StoreSync,
    clients: &[&str],
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (sim, at) = group::start_sim(exe, None, None)?;
    kids.push(sim);
    let repl = group::Replicated::new(dir, mode)?;
    let listen = crate::ports::free_addrs(2)?;
    // b first, so that a finds its peer listening.
    for i in [1, 0] {
        let mut file = GatewayFile::new(listen[i], &dir.join("unused"), at, clients);
        file.gateway.sync = Some(sync);
        let cfg = dir.join(format!("gw-replicated-{}.toml", group::NODES[i]));
        file.write(&cfg, &repl.extra(dir, i))?;
        let mut cmd = crate::proc::understudy(exe, &["fix-gateway", "--config"]);
        cmd.arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if i == 0 {
            cmd.env("UNDERSTUDY_ROLE", "active")
                .env("UNDERSTUDY_EPOCH", "1");
        } else {
            // A standby needs an agent's address to learn its epoch from when activated;
            // this one never is, so it never calls it.
            cmd.env("UNDERSTUDY_ROLE", "standby")
                .env("UNDERSTUDY_EPOCH", "0")
                .env("UNDERSTUDY_ADMIN", "127.0.0.1:9");
        }
        kids.push(Proc::spawn(&mut cmd).context("cannot start a replicated fix-gateway")?);
        crate::http::listening(repl.health[i], Duration::from_secs(5)).await?;
    }
    crate::http::listening(listen[0], Duration::from_secs(5)).await?;
    let health = repl.health[1].to_string();
    let in_sync = tokio::task::spawn_blocking(move || {
        crate::clock::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            crate::http::get_json(&health, "/health").filter(|v| v["replication"]["ready"] == true)
        })
    })
    .await?;
    anyhow::ensure!(
        in_sync.is_some(),
        "the replicated standby gateway at {} did not report its copy in sync within 10 s",
        repl.health[1]
    );
    Ok((listen[0], repl.health[0]))
}

/// What the gateway's `/health` says of its group commit over every run (`store_sync`): how
/// long a pass held messages at worst, and whether its disk did. Nothing without group commit.
fn print_group_commit(sync: Option<&serde_json::Value>) {
    let Some(s) = sync.filter(|s| s.is_object()) else {
        return;
    };
    let n = |k: &str| s[k].as_u64().map_or("?".to_owned(), |v| v.to_string());
    println!(
        "    its group commit over all runs: {} passes, {} fdatasyncs; slowest pass {} µs, slowest fdatasync part {} µs; \
         {} slower than {} ms",
        n("passes"),
        n("fdatasyncs"),
        n("slowest_pass_us"),
        n("slowest_fdatasync_us"),
        n("slow_passes"),
        n("slow_pass_ms")
    );
}

/// The file system a path is on, by name where it is a common one.
fn fs_type(p: &Path) -> String {
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

/// One path of the benchmark and what it measured, run by run.
struct PathRow {
    label: String,
    guarantee: &'static str,
    /// Where to send orders and the acceptor's CompID, or why the path is not measured.
    target: Result<(SocketAddr, &'static str), String>,
    runs: Vec<Measured>,
    /// `--clients` clients at once, run by run, for the rows the goals compare on it
    /// (`None`: not measured on this row).
    at_once: Option<Vec<AtOnce>>,
}

impl PathRow {
    fn new(
        label: String,
        guarantee: &'static str,
        target: Result<(SocketAddr, &'static str), String>,
    ) -> PathRow {
        PathRow {
            label,
            guarantee,
            target,
            runs: Vec::new(),
            at_once: None,
        }
    }

    /// The same row, also measured with several clients at once.
    fn with_at_once(mut self) -> PathRow {
        self.at_once = Some(Vec::new());
        self
    }

    fn p50s(&self) -> Vec<f64> {
        self.runs.iter().map(|m| percentile(&m.lat, 0.5)).collect()
    }

    fn rates(&self, orders: usize) -> Vec<f64> {
        self.runs
            .iter()
            .map(|m| orders as f64 / m.burst_s)
            .collect()
    }

    fn at_once_rates(&self) -> Vec<f64> {
        self.at_once_runs().iter().map(|a| a.rate).collect()
    }

    fn at_once_runs(&self) -> &[AtOnce] {
        self.at_once.as_deref().unwrap_or_default()
    }

    /// Run `rep` of this path: one client one order at a time and pipelined, then, where
    /// asked, `clients` clients at once.
    async fn measure(&mut self, rep: usize, orders: usize, clients: usize) -> anyhow::Result<()> {
        let Ok((addr, comp_id)) = self.target else {
            return Ok(());
        };
        let m = measure(addr, comp_id, &bench_client(rep), orders)
            .await
            .with_context(|| format!("measuring {}", self.label))?;
        self.runs.push(m);
        if let Some(runs) = &mut self.at_once {
            let senders = at_once_clients(rep, clients);
            let r = measure_at_once(addr, comp_id, &senders, orders)
                .await
                .with_context(|| format!("measuring {} with {clients} clients", self.label))?;
            runs.push(r);
        }
        Ok(())
    }

    fn print(&self, orders: usize, clients: usize) {
        match &self.target {
            Ok(_) => {
                let (p50, p99, max) = latency_columns(self.runs.iter().map(|m| &m.lat[..]));
                println!(
                    "  {:<46} {:<68} {:>11} {:>13} {:>8.0} {:>13}",
                    self.label,
                    self.guarantee,
                    p50,
                    p99,
                    max,
                    range(&self.rates(orders))
                );
                if self.at_once.is_some() {
                    let (p50, p99, max) =
                        latency_columns(self.at_once_runs().iter().map(|a| &a.lat[..]));
                    println!(
                        "  {:<46} {:<68} {:>11} {:>13} {:>8.0} {:>13}",
                        format!("  the same, {clients} clients at once"),
                        "",
                        p50,
                        p99,
                        max,
                        range(&self.at_once_rates())
                    );
                }
            }
            Err(why) => println!(
                "  {:<46} {:<68} not measured: {why}",
                self.label, self.guarantee
            ),
        }
    }
}

/// A row's latency columns from its runs' sorted latencies: p50 and p99 as `lo–hi` over the
/// runs (p99 `-` when a run has fewer than [`MIN_SAMPLES_FOR_P99`]), and the maximum of all.
fn latency_columns<'a>(runs: impl Iterator<Item = &'a [f64]> + Clone) -> (String, String, f64) {
    let at = |q: f64| -> Vec<f64> { runs.clone().map(|l| percentile(l, q)).collect() };
    let samples = runs.clone().map(<[f64]>::len).min().unwrap_or(0);
    let p99 = if samples >= MIN_SAMPLES_FOR_P99 {
        range(&at(0.99))
    } else {
        "-".into()
    };
    let max = runs
        .clone()
        .filter_map(|l| l.last().copied())
        .fold(f64::NAN, f64::max);
    (range(&at(0.5)), p99, max)
}

/// `lo–hi` of per-run figures, or the one figure.
fn range(xs: &[f64]) -> String {
    let (lo, hi) = spread(xs);
    if xs.len() > 1 {
        format!("{lo:.0}–{hi:.0}")
    } else {
        format!("{lo:.0}")
    }
}

fn median(xs: &[f64]) -> f64 {
    percentiles(xs).0
}

/// Measures run `rep` of `rows` back to back, starting from a different row each run.
async fn measure_rotated(
    mut rows: Vec<&mut PathRow>,
    rep: usize,
    orders: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let n = rows.len().max(1);
    rows.rotate_left(rep % n);
    for r in rows {
        r.measure(rep, orders, clients).await?;
    }
    Ok(())
}

/// The comparison line of a pair: ratios of the medians over runs, and which side is faster
/// only when every run of it beats every run of the other.
fn print_verdict(ours: &PathRow, peer: &PathRow, orders: usize, repeat: usize) {
    if ours.runs.is_empty() || peer.runs.is_empty() {
        return;
    }
    let who = |v: Verdict| match v {
        _ if repeat < 3 => "not judged (fewer than 3 runs)",
        Verdict::First => "ours",
        Verdict::Second => "QuickFIX",
        Verdict::NoClearWinner => "no clear winner",
    };
    println!(
        "    ours / QuickFIX, medians over runs: p50 latency {:.2}×, throughput {:.2}×; lower p50: {}; higher throughput: {}",
        median(&ours.p50s()) / median(&peer.p50s()),
        median(&ours.rates(orders)) / median(&peer.rates(orders)),
        who(compare(&ours.p50s(), &peer.p50s(), true, MARGIN)),
        who(compare(&ours.rates(orders), &peer.rates(orders), false, MARGIN)),
    );
}

/// The verdict of a goal on per-run figures `ours` against the per-run goal values `goal`.
fn judge(ours: &[f64], goal: &[f64], lower_is_better: bool, repeat: usize) -> &'static str {
    if repeat < 3 {
        return "not judged (fewer than 3 runs)";
    }
    match compare(ours, goal, lower_is_better, MARGIN) {
        Verdict::First => "met",
        Verdict::Second => "NOT MET",
        Verdict::NoClearWinner => {
            "no clear result (the runs straddle the goal or miss it by less than the margin)"
        }
    }
}

/// The rows issue 9's group-commit goals are judged on, measured back to back.
struct GoalRows {
    /// Our engine as a plain acceptor (`fix-exchange-sim`) on a group-commit store.
    engine: PathRow,
    /// QuickFIX's acceptor on its FileStore as shipped.
    quickfix: PathRow,
    /// The gateway path.
    gateway: PathRow,
    /// The same two hops through QuickFIX: client → QuickFIX relay → our simulator → back.
    relay: PathRow,
    /// The gateway path with its store replicated to a standby (`--replication`).
    replicated: Option<PathRow>,
}

impl GoalRows {
    fn rows_mut(&mut self) -> Vec<&mut PathRow> {
        let mut rows = vec![
            &mut self.engine,
            &mut self.quickfix,
            &mut self.gateway,
            &mut self.relay,
        ];
        rows.extend(self.replicated.as_mut());
        rows
    }

    /// Issue 9's three goals (item 3), each judged on the per-run figures against the QuickFIX
    /// acceptor as shipped in the same runs; `fsync` is each run's `fdatasync` p50 back to
    /// back, the goal's figure; `paced` the same after a pause, for scale only.
    fn print_goals(&self, a: &FixBenchArgs, fsync: &[f64], paced: &[f64]) {
        let (gw, qf, ours) = (&self.gateway, &self.quickfix, &self.engine);
        println!(
            "goals of issue 9 (item 3), each against {} ({}) in the same runs; \"met\" or \"NOT MET\" only when every run \
             is on that side of the goal by more than {:.0} %:",
            qf.label,
            qf.guarantee,
            MARGIN * 100.0
        );
        if let Err(why) = &qf.target {
            println!("  not judged: QuickFIX not measured ({why})");
            return;
        }
        let durable = a.sync != StoreSync::Batch;
        let n = a.clients;
        // 1. The gateway path, several clients at once, ≥ 1× QuickFIX with as many clients.
        let (g, q) = (&gw.at_once_rates(), &qf.at_once_rates());
        if durable {
            println!(
                "  gateway path, {n} clients at once ≥ 1× QuickFIX with {n} clients at once: medians {:.0} / {:.0} orders/s = {:.2}×; \
                 runs {} vs {}: {}",
                median(g),
                median(q),
                median(g) / median(q),
                range(g),
                range(q),
                judge(g, q, false, a.repeat)
            );
        } else {
            println!("  gateway path ≥ 1× QuickFIX: not judged (--sync batch sends before its record is durable)");
        }
        // 2. Our engine as a plain acceptor with group commit ≥ 2× QuickFIX, one client each.
        let (o, q) = (ours.rates(a.runs), qf.rates(a.runs));
        let q2: Vec<f64> = q.iter().map(|r| 2.0 * r).collect();
        println!(
            "  our engine as a plain acceptor with group commit ≥ 2× QuickFIX, pipelined, one client: medians {:.0} / {:.0} \
             orders/s = {:.2}×; runs {} vs 2 × ({}): {}",
            median(&o),
            median(&q),
            median(&o) / median(&q),
            range(&o),
            range(&q),
            judge(&o, &q2, false, a.repeat)
        );
        // 3. The gateway's single-order p50 ≤ QuickFIX's p50 + one fdatasync per hop (issue 9's
        // words), run by run: QuickFIX's row is one FIX hop, the gateway path two, so the
        // goal leaves the second hop's own cost no room. The like-for-like form, against the
        // same two hops through a QuickFIX relay plus one fdatasync per hop, is printed under
        // it, labelled.
        let (g, q) = (gw.p50s(), qf.p50s());
        if !durable {
            println!("  gateway single-order p50: not judged (--sync batch sends before its record is durable)");
        } else if q.len() != fsync.len() {
            println!("  gateway single-order p50: not judged (a run lacks QuickFIX's p50)");
        } else {
            let goal: Vec<f64> = q
                .iter()
                .zip(fsync)
                .map(|(q, f)| q + GATEWAY_HOPS * f)
                .collect();
            println!(
                "  gateway single-order p50 ≤ QuickFIX's p50 + one fdatasync per hop ({GATEWAY_HOPS:.0} hops; each run's own \
                 figures, its fdatasync probe back to back): medians {:.0} µs vs {:.0} + {GATEWAY_HOPS:.0} × {:.0} µs; run by \
                 run {} vs {}: {}",
                median(&g),
                median(&q),
                median(fsync),
                range(&g),
                range(&goal),
                judge(&g, &goal, true, a.repeat)
            );
            // The like-for-like form: the same two hops through QuickFIX, measured.
            let r = self.relay.p50s();
            if r.len() == fsync.len() {
                let like: Vec<f64> = r
                    .iter()
                    .zip(fsync)
                    .map(|(r, f)| r + GATEWAY_HOPS * f)
                    .collect();
                println!(
                    "    like for like: the same {GATEWAY_HOPS:.0} hops through QuickFIX ({}) + one fdatasync per hop: \
                     medians {:.0} + {GATEWAY_HOPS:.0} × {:.0} µs; run by run {} vs {}: {}",
                    self.relay.label,
                    median(&r),
                    median(fsync),
                    range(&g),
                    range(&like),
                    judge(&g, &like, true, a.repeat)
                );
            } else if let Err(why) = &self.relay.target {
                println!(
                    "    like for like: not judged, the QuickFIX relay was not measured ({why})"
                );
            }
            let paced_goal: Vec<f64> = q
                .iter()
                .zip(paced)
                .map(|(q, f)| q + GATEWAY_HOPS * f)
                .collect();
            println!(
                "    not the goal, for scale: the same goal with the paced fdatasync (a sync after an idle stretch, as each of \
                 the gateway's is): medians {:.0} + {GATEWAY_HOPS:.0} × {:.0} µs; run by run {} vs {}: {}",
                median(&q),
                median(paced),
                range(&g),
                range(&paced_goal),
                judge(&g, &paced_goal, true, a.repeat)
            );
        }
    }
}

/// `understudy bench fix-roundtrip`.
pub(super) async fn roundtrip_bench(a: FixBenchArgs) -> anyhow::Result<u8> {
    if a.runs == 0 || a.repeat == 0 || a.clients == 0 {
        anyhow::bail!("--runs, --repeat and --clients must be at least 1");
    }
    let sessions = a.repeat.saturating_mul(a.clients.saturating_add(1));
    if sessions > MAX_QUICKFIX_SESSIONS {
        anyhow::bail!(
            "--clients {} with --repeat {} gives each QuickFIX peer {sessions} sessions (fresh ones every run); \
             QuickFIX/C++ 1.15 keeps files open per session (8 in the every-write acceptor) and watches its sockets with \
             select(), which aborts the process at a descriptor above 1023: at most {MAX_QUICKFIX_SESSIONS} sessions (here at most \
             --clients {})",
            a.clients,
            a.repeat,
            (MAX_QUICKFIX_SESSIONS / a.repeat).saturating_sub(1)
        );
    }
    // Held until the report is printed: the children run under it too.
    let _latency = a.cpu_dma_latency.map(request_cpu_latency).transpose()?;
    let idle_setting = cpu_idle_setting();
    let load_before = load_average();
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    // /var/tmp is on disk by convention; /tmp may be a tmpfs, where fsync does nothing.
    let dir = tempfile::Builder::new()
        .prefix("fix-roundtrip-")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())?;
    let d = dir.path();
    let mut clients: Vec<String> = Vec::new();
    for rep in 0..a.repeat {
        clients.push(bench_client(rep));
        clients.extend(at_once_clients(rep, a.clients));
    }
    let mut kids = Vec::new();

    // The product: client → gateway → our simulator (memory store) → back. Its health
    // endpoint says afterwards how long its group commit held messages at worst.
    let [gw, gw_admin] = <[SocketAddr; 2]>::try_from(crate::ports::free_addrs(2)?)
        .map_err(|_| anyhow::anyhow!("two free ports expected"))?;
    let (sim, gw_sim) = group::start_sim(&exe, None, None)?;
    kids.push(sim);
    let client_ids: Vec<&str> = clients.iter().map(String::as_str).collect();
    let mut file = GatewayFile::new(gw, &d.join("store"), gw_sim, &client_ids);
    file.gateway.sync = Some(a.sync);
    let cfg = d.join("gw.toml");
    file.write(&cfg, &format!("[admin]\nhttp = \"{gw_admin}\"\n"))?;
    kids.push(
        Proc::spawn(
            crate::proc::understudy(&exe, &["fix-gateway", "--config"])
                .arg(&cfg)
                .env("UNDERSTUDY_ROLE", "active")
                .env("UNDERSTUDY_EPOCH", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .context("cannot start fix-gateway")?,
    );
    crate::http::listening(gw, Duration::from_secs(5)).await?;
    let (replicated, replicated_admin) = match a.replication.mode() {
        Some((mode, guarantee)) => {
            let (addr, admin) =
                start_replicated_gateway(&exe, d, &mut kids, mode, a.sync, &client_ids).await?;
            let row = PathRow::new(
                format!("  the same, replicated {mode} to a standby"),
                guarantee,
                Ok((addr, "GW")),
            );
            (Some(row), Some(admin))
        }
        None => (None, None),
    };

    // Engine to engine, store for store.
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
            PathRow::new(
                format!("understudy sim, {ours_store}"),
                ours_g,
                Ok((ours, "EXCH")),
            ),
            PathRow::new(
                format!("QuickFIX/C++, {qf_store}"),
                qf_g,
                qf.map(|addr| (addr, "QFX")),
            ),
        ]);
    }

    // Group commit: our engine on it, QuickFIX as shipped, and the gateway path.
    let (sim, ours) = group::start_sim(&exe, Some((&d.join("sim-group"), StoreSync::Group)), None)?;
    kids.push(sim);
    let qf = start_quickfix_acceptor(d, &mut kids, "file", &clients).await;
    let relay = start_quickfix_relay(d, &mut kids, &clients, gw_sim).await;
    let mut goal_rows = GoalRows {
        engine: PathRow::new(
            "understudy sim, FileStore group commit".into(),
            GROUP_COMMIT,
            Ok((ours, "EXCH")),
        )
        .with_at_once(),
        quickfix: PathRow::new(
            "QuickFIX/C++, FileStore as shipped".into(),
            FLUSH_ONLY,
            qf.map(|addr| (addr, "QFX")),
        )
        .with_at_once(),
        gateway: PathRow::new(
            format!("understudy fix-gateway, {}", a.sync),
            match a.sync {
                StoreSync::Group => GROUP_COMMIT,
                StoreSync::EveryWrite => SYNC_BEFORE_SEND,
                StoreSync::Batch => SYNC_BATCH,
            },
            Ok((gw, "GW")),
        )
        .with_at_once(),
        relay: PathRow::new(
            "QuickFIX/C++ relay, FileStore as shipped".into(),
            FLUSH_ONLY,
            relay.map(|addr| (addr, "QFR")),
        )
        .with_at_once(),
        replicated: replicated.map(PathRow::with_at_once),
    };

    let mut fsync = Vec::with_capacity(a.repeat);
    let mut paced = Vec::with_capacity(a.repeat);
    for rep in 0..a.repeat {
        eprintln!("fix-roundtrip: run {}/{}…", rep + 1, a.repeat);
        let probe_dir = d.to_path_buf();
        let (f, p) = tokio::task::spawn_blocking(move || {
            anyhow::Ok((
                fdatasync_p50(&probe_dir, FSYNC_PROBES, Duration::ZERO)?,
                fdatasync_p50(&probe_dir, FSYNC_PROBES, PACED_GAP)?,
            ))
        })
        .await??;
        fsync.push(f);
        paced.push(p);
        for [ours, qf] in &mut pairs {
            measure_rotated(vec![ours, qf], rep, a.runs, a.clients).await?;
        }
        measure_rotated(goal_rows.rows_mut(), rep, a.runs, a.clients).await?;
    }
    let admins = (gw_admin, replicated_admin);
    let (gw_sync, replicated_sync) = tokio::task::spawn_blocking(move || {
        let store_sync = |a: SocketAddr| {
            crate::http::get_json(&a.to_string(), "/health").map(|h| h["store_sync"].clone())
        };
        (store_sync(admins.0), admins.1.and_then(store_sync))
    })
    .await?;

    println!(
        "fix-roundtrip: {} market orders per path and run, each of quantity 1 and so answered New then fill (no partial fill, on every path alike): one at a time (latency: \
         order sent → fill received, CLOCK_MONOTONIC in the client process), then {} more in one pipelined burst (orders/s); \
         the rows \"the same, {n} clients at once\": {n} clients each sending {} orders in one pipelined burst, all at once \
         (orders/s), then {} each one at a time, all at once (latency)",
        a.runs,
        a.runs,
        a.runs,
        one_at_a_time_each(a.runs, a.clients),
        n = a.clients
    );
    println!(
        "  {} runs per path, the rows of a comparison back to back, rotating which goes first; figures are min–max over \
         runs (max: over all runs); load average (1 min) {load_before} at the start, {} at the end",
        a.repeat,
        load_average()
    );
    println!(
        "  stores under {} ({}); one fdatasync of a 200-byte append there: p50 {} µs back to back, {} µs after a pause of \
         {} µs ({FSYNC_PROBES} each per run)",
        d.display(),
        fs_type(d),
        range(&fsync),
        range(&paced),
        PACED_GAP.as_micros()
    );
    println!(
        "  {idle_setting}{}",
        if a.cpu_dma_latency.is_some() {
            " (--cpu-dma-latency, held for the whole run)"
        } else {
            ""
        }
    );
    println!(
        "  {:<46} {:<68} {:>11} {:>13} {:>8} {:>13}",
        "", "what the store guarantees", "p50 µs", "p99 µs", "max µs", "orders/s"
    );
    println!("engine to engine (one FIX hop; the acceptor does the simulator's work, QuickFIX's acceptor is tests/quickfix/qf_acceptor.cpp):");
    for [ours, qf] in &pairs {
        ours.print(a.runs, a.clients);
        qf.print(a.runs, a.clients);
        print_verdict(ours, qf, a.runs, a.repeat);
    }
    println!(
        "group commit (issue 9): our engine on it, QuickFIX as shipped, and the product (two FIX hops: client → gateway → \
         our sim (memory store) → back; the gateway stores every message before it sends it) next to the same two hops \
         through a QuickFIX relay (tests/quickfix/qf_relay.cpp) to the same sim:"
    );
    goal_rows.engine.print(a.runs, a.clients);
    goal_rows.quickfix.print(a.runs, a.clients);
    print_verdict(&goal_rows.engine, &goal_rows.quickfix, a.runs, a.repeat);
    goal_rows.gateway.print(a.runs, a.clients);
    print_group_commit(gw_sync.as_ref());
    if let Some(r) = &goal_rows.replicated {
        r.print(a.runs, a.clients);
        print_group_commit(replicated_sync.as_ref());
    }
    goal_rows.relay.print(a.runs, a.clients);
    print_verdict(&goal_rows.gateway, &goal_rows.relay, a.runs, a.repeat);
    if let Some(n) = crate::stats::p99_note(a.runs) {
        println!("  {n}");
    }
    println!(
        "  QuickFIX/C++ 1.15 has no sync setting: its FileStore as shipped flushes every write and never fsyncs, so its \
         rows against ours batched or group-committed are not like for like (ours promise more); its fdatasync row \
         wraps its FileStore (tests/quickfix/qf_acceptor.cpp)"
    );
    goal_rows.print_goals(&a, &fsync, &paced);
    Ok(0)
}
