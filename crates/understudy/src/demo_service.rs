//! The small built-in service the demo, the benchmark and the tests protect. It behaves as a real
//! service must (the contract of `understudy-sdk`): standby until told (signal), then active with
//! the epoch it reads from its agent.
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
use testbed::clock::mono_ns;
use understudy_sdk::{Notice, Role, Service};

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

/// Run the demo service until SIGTERM.
pub fn run(args: DemoServiceArgs) -> anyhow::Result<u8> {
    // Before the runtime: the agent's signal must find the process ready from its first moment.
    let service = match understudy_sdk::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("understudy: demo-service: {e}");
            return Ok(e.exit_code());
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args, service))
}

async fn serve(args: DemoServiceArgs, mut service: Service) -> anyhow::Result<u8> {
    let node = service.env().node.clone().unwrap_or_default();
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
    log.line("start", service.epoch());
    if service.role() == Role::Active {
        let epoch = service.epoch();
        report(epoch);
        log.line("active", epoch);
        println!("demo-service on {}: active, epoch {epoch}", log.node);
        if let Err(e) = service.acknowledge_async().await {
            eprintln!("demo-service: cannot acknowledge the activation: {e}");
        }
    } else {
        println!("demo-service on {}: standby", log.node);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    let mut said = tokio::time::Instant::now();
    loop {
        let active = service.role() == Role::Active;
        tokio::select! {
            notice = service.next() => match notice {
                Some(Notice::Activate) if !active => {
                    // Report first: this is the moment the service knows; the epoch read follows.
                    report(service.epoch());
                    match service.activate_async().await {
                        Ok(epoch) => {
                            log.line("active", epoch);
                            println!("demo-service on {}: now active, epoch {epoch}", log.node);
                        }
                        Err(e) => {
                            // Never act without the epoch: exiting makes the agent fail over.
                            eprintln!("understudy: demo-service: activated, but {e}");
                            log.line("stop", service.epoch());
                            return Ok(1);
                        }
                    }
                }
                Some(Notice::Activate) => {}
                Some(Notice::Stop) | None => break,
            },
            _ = tick.tick(), if active => {
                if args.log.is_some() { log.line("tick", service.epoch()); }
                if args.say_every > 0 && said.elapsed() >= Duration::from_secs(args.say_every) {
                    said = tokio::time::Instant::now();
                    println!("demo-service on {}: serving, epoch {}", log.node, service.epoch());
                }
            }
        }
    }
    log.line("stop", service.epoch());
    Ok(0)
}
