//! Subcommands of the FIX gateway (warm standby, document 002): the gateway an agent protects,
//! the FIX exchange simulator upstream of it, its demo and its benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use understudy_fix::engine::{Engine, EngineError};
use understudy_fix::exchange_sim::ExchangeSim;
use understudy_fix::gateway::{Gateway, GatewayConfig};

use crate::{init_logging, runtime};

/// Exit code of a gateway that found its store owned by a newer epoch.
pub const EXIT_FENCED: u8 = 3;

/// FIX subcommands.
#[derive(Subcommand, Debug)]
pub enum FixCmds {
    /// A FIX gateway (run it as an agent's service with service.standby = "warm").
    FixGateway {
        /// The gateway's TOML configuration.
        #[arg(long)]
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
    },
}

impl FixCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            FixCmds::FixGateway { config } => run_gateway(config),
            FixCmds::FixExchangeSim {
                listen,
                sender_comp_id,
            } => {
                init_logging();
                runtime()?.block_on(exchange_sim(listen, sender_comp_id))
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

async fn exchange_sim(listen: SocketAddr, comp_id: String) -> anyhow::Result<u8> {
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

fn run_gateway(config: PathBuf) -> anyhow::Result<u8> {
    init_logging();
    let rt = runtime()?;
    rt.block_on(gateway(config))
}

/// How this gateway learns that it is active, from the agent's environment.
enum Start {
    Active(u64),
    Standby { admin: String },
}

fn start_from_env() -> Result<Start, String> {
    let role = std::env::var("UNDERSTUDY_ROLE").unwrap_or_default();
    match role.as_str() {
        "standby" => match std::env::var("UNDERSTUDY_ADMIN") {
            Ok(admin) if !admin.is_empty() => Ok(Start::Standby { admin }),
            _ => Err("UNDERSTUDY_ROLE=standby but UNDERSTUDY_ADMIN is not set".into()),
        },
        "active" => std::env::var("UNDERSTUDY_EPOCH")
            .ok()
            .and_then(|e| e.parse::<u64>().ok())
            .filter(|&e| e > 0)
            .map(Start::Active)
            .ok_or_else(|| "UNDERSTUDY_ROLE=active needs UNDERSTUDY_EPOCH (a positive integer)".into()),
        "" => Err("not started by an agent: UNDERSTUDY_ROLE (active|standby) is not set; run it as an agent's service, or set UNDERSTUDY_ROLE=active and UNDERSTUDY_EPOCH".into()),
        other => Err(format!("UNDERSTUDY_ROLE={other:?}: expected active or standby")),
    }
}

async fn gateway(config: PathBuf) -> anyhow::Result<u8> {
    // The activation signal handler goes in first: the agent may signal a standby as soon as
    // it runs, and SIGUSR1's default action would kill us.
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let (mut term, mut int) = term_signals()?;
    // Validated in full in every role, so a warm standby with a bad file fails at start.
    let cfg = match GatewayConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy: configuration error: {e}");
            return Ok(2);
        }
    };
    let start = match start_from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("understudy: fix-gateway: {e}");
            return Ok(2);
        }
    };
    let epoch = match start {
        Start::Active(e) => e,
        Start::Standby { admin } => {
            println!(
                "fix-gateway: warm standby, configuration {} valid ({} clients, {} upstreams); waiting for activation",
                config.display(),
                cfg.clients.len(),
                cfg.upstreams.len()
            );
            // The signal is the fast path. Polling the agent as well covers a signal that
            // was missed: one sent before this process installed its handler is ignored
            // (when started with SIGUSR1 ignored) or fatal, never queued.
            let mut poll = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = usr1.recv() => {
                        break epoch_from_agent(&admin).await.with_context(|| {
                            format!("activated, but cannot read the epoch from the agent at {admin}")
                        })?;
                    }
                    _ = poll.tick() => {
                        if let Ok(Some(e)) = get_status(&admin).await.map(|v| hot_epoch(&v)) {
                            tracing::warn!(epoch = e, "agent is Hot but no activation signal arrived; activating");
                            break e;
                        }
                    }
                    _ = term.recv() => return Ok(0),
                    _ = int.recv() => return Ok(0),
                }
            }
        }
    };
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
    let mut app = activated.gateway;
    let engine = Engine::new(activated.slots, Some(listener));
    let outcome = engine
        .run(&mut app, async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await;
    match outcome {
        Ok(()) => Ok(0),
        Err(e @ EngineError::Fenced { .. }) => {
            eprintln!("understudy: fix-gateway: {e}; stopped sending");
            Ok(EXIT_FENCED)
        }
        Err(e) => Err(e).context("gateway failed"),
    }
}

/// The epoch of a Hot agent, from `GET /status` on its admin API. Retried briefly: the agent
/// signals right after it becomes Hot, so its answer is there, but a connect can still fail
/// under load.
async fn epoch_from_agent(admin: &str) -> anyhow::Result<u64> {
    let mut last = anyhow::anyhow!("no answer");
    for _ in 0..50 {
        match get_status(admin).await {
            Ok(v) => match hot_epoch(&v) {
                Some(e) => return Ok(e),
                None => last = anyhow::anyhow!("agent answered {v}, not Hot with an epoch"),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last)
}

/// The epoch in a `/status` answer of a Hot agent.
fn hot_epoch(v: &serde_json::Value) -> Option<u64> {
    let hot = v.get("mode").and_then(|m| m.as_str()) == Some("Hot");
    v.get("epoch")
        .and_then(|e| e.as_u64())
        .filter(|&e| hot && e > 0)
}

/// A minimal `GET /status` over loopback HTTP/1.1 (the agent's own admin server).
async fn get_status(admin: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .context("connect timed out")??;
    let req = format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf))
        .await
        .context("read timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    Ok(serde_json::from_str(body)?)
}

/// FIX benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum FixBench {
    /// Order round trip client → gateway → fix-exchange-sim → back, one at a time (latency)
    /// and as a pipelined burst (throughput).
    FixRoundtrip(FixBenchArgs),
}

/// Arguments of the FIX benchmarks.
#[derive(Args, Debug)]
pub struct FixBenchArgs {
    /// Number of orders.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
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

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn roundtrip_bench(a: FixBenchArgs) -> anyhow::Result<u8> {
    use understudy_fix::client::{self, ClientConfig, ClientEvent};
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let dir = tempfile::tempdir()?;
    let sim = free_addr()?;
    let gw = free_addr()?;
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"{gw}\"\ncomp_id = \"GW\"\nstore_dir = \"{}\"\nsync = \"{}\"\ndefault_route = \"EXCH\"\n\n[[client]]\ncomp_id = \"BENCH\"\n\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"{sim}\"]\ntarget_comp_id = \"EXCH\"\nreconnect_interval = \"20ms\"\n",
            dir.path().join("store").display(),
            a.sync
        ),
    )?;
    let quiet = || std::process::Stdio::null();
    let mut kids = Children(Vec::new());
    kids.0.push(
        std::process::Command::new(&exe)
            .args(["fix-exchange-sim", "--listen", &sim.to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("cannot start fix-exchange-sim")?,
    );
    wait_listening(sim).await?;
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
    let mut c = client::start(ClientConfig {
        connect: vec![gw],
        sender_comp_id: "BENCH".into(),
        target_comp_id: "GW".into(),
        begin_string: understudy_fix::tags::BeginString::Fix44,
        heartbeat_interval: Duration::from_secs(30),
        reconnect_interval: Duration::from_millis(10),
    })?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.events.recv()).await {
            Ok(Some(ClientEvent::LoggedOn(_))) => break,
            Ok(Some(_)) => {}
            _ => anyhow::bail!("the client did not log on to the gateway"),
        }
    }
    // Warm up the path (upstream logon, page cache).
    c.handle.send(0, b"D", bench_order("warm"));
    fills(&mut c, 1).await?;

    let mut lat = Vec::with_capacity(a.runs);
    for i in 0..a.runs {
        let t = std::time::Instant::now();
        c.handle.send(0, b"D", bench_order(&format!("s{i}")));
        fills(&mut c, 1).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let t = std::time::Instant::now();
    for i in 0..a.runs {
        c.handle.send(0, b"D", bench_order(&format!("p{i}")));
    }
    fills(&mut c, a.runs).await?;
    let burst = t.elapsed().as_secs_f64();
    c.task.abort();
    println!(
        "fix-roundtrip: {} orders, gateway store sync {}: client → gateway → fix-exchange-sim → gateway → client",
        a.runs, a.sync
    );
    println!(
        "  one at a time   latency µs  p50 {:.0}  p99 {:.0}  max {:.0}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  pipelined burst {:.0} orders/s ({} orders in {:.3} s)",
        a.runs as f64 / burst,
        a.runs,
        burst
    );
    println!("  (each order: New, then Fill; every message stored before it is sent)");
    Ok(0)
}

/// Arguments of `understudy demo fix`.
#[derive(Args, Debug)]
pub struct FixDemoArgs {}

/// `understudy demo fix`.
pub fn demo(_args: FixDemoArgs) -> anyhow::Result<u8> {
    anyhow::bail!("the FIX demo is being built")
}
