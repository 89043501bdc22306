//! The small built-in service the demo, the benchmark and the tests protect. It behaves as a real
//! service must: standby until told (signal), then active with the epoch it reads from its agent.
//!
//! With `--log FILE` it appends `<monotonic ns> <pid> <node> <event> <epoch>` lines: `start`,
//! `active` when it learns it is active, a `tick` every `--tick-ms` while active, and `stop`. The
//! overlap checker in the tests proves from these lines that no two services ever acted at once.
//! With `--report ADDR` it sends one UDP datagram the moment it learns it is active, so the
//! benchmark can time the takeover from the kill to that moment.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

/// Arguments of `understudy demo-service`.
#[derive(Args, Debug)]
pub struct DemoServiceArgs {
    /// Append role changes and activity ticks to this file.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// Send a UDP datagram to this address when becoming active.
    #[arg(long)]
    report: Option<std::net::SocketAddr>,
    /// Interval of activity ticks in the log while active.
    #[arg(long, default_value_t = 2)]
    tick_ms: u64,
    /// Print a line to stdout every this many seconds while active (0: never).
    #[arg(long, default_value_t = 0)]
    say_every: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on the host.
pub fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

struct Log {
    file: Option<std::fs::File>,
    pid: u32,
    node: String,
}

impl Log {
    fn line(&mut self, event: &str, epoch: u64) {
        if let Some(f) = &mut self.file {
            // One write per line with O_APPEND keeps lines whole when processes share the file.
            let l = format!(
                "{} {} {} {} {}\n",
                mono_ns(),
                self.pid,
                self.node,
                event,
                epoch
            );
            let _ = f.write_all(l.as_bytes());
        }
    }
}

async fn epoch_from_agent(admin: &str) -> Option<u64> {
    let client = reqwest_like_get(admin).await?;
    serde_json::from_str::<serde_json::Value>(&client)
        .ok()?
        .get("epoch")?
        .as_u64()
}

/// A minimal GET /status on the agent's admin API (loopback, our own server).
async fn reqwest_like_get(admin: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .ok()?
    .ok()?;
    let req = format!(
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{}\r\n",
        agent_auth_header()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1)?;
    Some(body.to_string())
}

/// Run the demo service until SIGTERM.
pub fn run(args: DemoServiceArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: DemoServiceArgs) -> anyhow::Result<u8> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let node = env("UNDERSTUDY_NODE");
    let admin = env("UNDERSTUDY_ADMIN");
    let mut epoch: u64 = env("UNDERSTUDY_EPOCH").parse().unwrap_or(0);
    let mut active = env("UNDERSTUDY_ROLE") != "standby";
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let file = match &args.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    let mut log = Log {
        file,
        pid: std::process::id(),
        node: node.clone(),
    };
    let udp = match args.report {
        Some(_) => {
            Some(std::net::UdpSocket::bind("127.0.0.1:0").context("cannot open a UDP socket")?)
        }
        None => None,
    };
    let report = |epoch: u64| {
        if let (Some(sock), Some(to)) = (&udp, args.report) {
            let _ = sock.send_to(
                format!("active {node} {epoch} {}", mono_ns()).as_bytes(),
                to,
            );
        }
    };
    log.line("start", epoch);
    if active {
        report(epoch);
        log.line("active", epoch);
        println!("demo-service on {}: active, epoch {epoch}", log.node);
    } else {
        println!("demo-service on {}: standby", log.node);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    let mut said = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                if !active {
                    active = true;
                    // Report first: this is the moment the service knows; the epoch read follows.
                    report(epoch);
                    if let Some(e) = epoch_from_agent(&admin).await { epoch = e; }
                    log.line("active", epoch);
                    println!("demo-service on {}: now active, epoch {epoch}", log.node);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick(), if active => {
                if args.log.is_some() { log.line("tick", epoch); }
                if args.say_every > 0 && said.elapsed() >= Duration::from_secs(args.say_every) {
                    said = tokio::time::Instant::now();
                    println!("demo-service on {}: serving, epoch {epoch}", log.node);
                }
            }
        }
    }
    log.line("stop", epoch);
    Ok(0)
}

/// `Authorization` for the agent's admin API when it gives us a token (it does when its reads
/// need one, `node.admin_read_requires_token`), else nothing.
fn agent_auth_header() -> String {
    std::env::var("UNDERSTUDY_TOKEN")
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default()
}
