//! `understudy`: the one binary. Layout:
//! - `agent`, `check-config`: run or validate a node (crate `understudy-agent`).
//! - `status`, `activate`, `switchover`, `events`, `top`: talk to a node's admin API (crate
//!   `understudy-control`), all with the same [`AgentArgs`].
//! - `demo`, `bench …`: the demos and the benchmarks, run by crate `testbed` (`testbed::demo`,
//!   `testbed::bench`) with this executable as the one it starts.
//! - `demo-service`: the small built-in service the demo and the benchmark protect ([`demo_service`]).
//! - `exchange-sim`, `price-server`, `price-client`: price distribution ([`price_cmd`]).
//! - `fix-gateway` and the FIX exchange simulator: the FIX gateway ([`fix_cmd`]).

mod ctl_cmd;
mod demo_service;
mod drill;
mod fix_cmd;
mod price_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use understudy_agent::Config;
use understudy_control::{render_group, AgentClient};

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "Failover for trading services: one active replica, standbys ready to take over in milliseconds"
)]
struct Cli {
    /// Log lines as text for people (default) or as JSON objects with stable field names (level,
    /// target, fields such as node, group, epoch, kind) for a log pipeline.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How the CLI proves itself to an agent with `node.admin_token_file`. Never a command-line
/// value: command lines are visible to every user of the machine.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct Auth {
    /// File holding the agent's admin token (its node.admin_token_file); without it the
    /// token is read from the environment variable UNDERSTUDY_TOKEN, if set.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate of an agent whose admin API speaks TLS (node.admin_tls_cert); the
    /// agent is then reached over https://.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM file with a client certificate and its key, for an agent with node.admin_client_ca.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
}

impl Auth {
    /// A client of the agent at `agent`, with the token and TLS settings given.
    pub(crate) fn client(&self, agent: &str, timeout: Duration) -> anyhow::Result<AgentClient> {
        let token = understudy_control::read_token(self.token_file.as_deref())
            .map_err(anyhow::Error::msg)?;
        let tls = understudy_control::ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
        };
        let c = if tls.is_set() {
            AgentClient::new_tls(agent, timeout, &tls).map_err(anyhow::Error::msg)?
        } else {
            AgentClient::new(agent, timeout)
        };
        Ok(c.with_token(token))
    }
}

/// The agent a command talks to: the same flag, with the same default, in every subcommand.
#[derive(clap::Args)]
struct AgentArgs {
    /// Admin address of the node (its node.admin), `IP:port` or an `http://` URL.
    #[arg(long, value_name = "ADDR", default_value = understudy_control::DEFAULT_AGENT)]
    agent: String,
    #[command(flatten)]
    auth: Auth,
}

impl AgentArgs {
    /// A client of the agent, with the token and TLS settings if given.
    fn client(&self, timeout: Duration) -> anyhow::Result<AgentClient> {
        self.auth.client(&self.agent, timeout)
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: join the group, supervise the service, serve the admin API.
    Agent {
        /// The node's TOML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything (exit 2 when it is wrong).
    #[command(group(clap::ArgGroup::new("file").required(true).args(["config", "path"])))]
    CheckConfig {
        /// The TOML configuration to check.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The same, as a positional argument (the older spelling, kept working).
        #[arg(hide = true, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Print the result as JSON: {"file","ok",…} with the summary or, exit 2, the "error".
        #[arg(long)]
        json: bool,
    },
    /// Show the whole group as seen from one node.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the JSON answers instead: {"status": GET /status, "group": GET /group}.
        #[arg(long)]
        json: bool,
    },
    /// Make a node Hot (PUT /service/activationmode/hot). Refused if another node is active.
    Activate {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the agent's JSON answer ({"mode","name","epoch"}) instead.
        #[arg(long)]
        json: bool,
    },
    /// Hand activity from the active node (--agent) to a ready standby (for rolling updates).
    Switchover {
        #[command(flatten)]
        agent: AgentArgs,
        /// The standby that must take over (it must be ready); any ready one without.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Print the agent's JSON answer ({"from","to","epoch","took_ms"}) instead.
        #[arg(long)]
        json: bool,
    },
    /// Start failover again after a release stopped it (POST /failover/start on any node of
    /// the group): clears the stop the release recorded, so the group's nodes take it again.
    /// Stop the released service first; refused while it runs on the node's machine.
    StartFailover {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the agent's JSON answer ({"node","cleared"}) instead.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's event timeline and its takeovers.
    Events {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print the JSON answer (GET /events) instead.
        #[arg(long)]
        json: bool,
    },
    /// Start a local group on a temp lock file, kill the active, show the takeover. Cleans up.
    Demo(testbed::demo::DemoArgs),
    /// Inject faults into a group (kill -9, SIGSTOP, SIGTERM, lock file, full disk, CPU
    /// starvation) and check that it recovers and never has two actives (exit 3 if it had).
    Drill(drill::DrillArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: testbed::bench::BenchCmd,
    },
    /// Price distribution (hot standby): exchange-sim, price-server, price-client.
    #[command(flatten)]
    Price(price_cmd::PriceCmds),
    /// FIX gateway (warm standby).
    #[command(flatten)]
    Fix(fix_cmd::FixCmds),
    /// Print a shell completion script: `understudy completions bash > /etc/bash_completion.d/understudy`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The control plane: REST API and web dashboard (document 000's failover service).
    Serve(ctl_cmd::ServeArgs),
    /// The control plane's CLI: servers, failover lifecycle, switchover, failure events.
    Ctl(ctl_cmd::CtlArgs),
    /// Run the agents and servers the control plane places on this machine.
    Host(ctl_cmd::HostArgs),
    /// The group live in the terminal (q quits).
    Top {
        #[command(flatten)]
        agent: AgentArgs,
        /// Refresh interval.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one refresh as JSON (group, active node, events) and exit.
        #[arg(long)]
        json: bool,
    },
    /// The small built-in service that the demo and the benchmark protect.
    #[command(hide = true)]
    DemoService(demo_service::DemoServiceArgs),
    /// Print the manual page (roff): `understudy man > understudy.1` (the Debian package ships it).
    #[command(hide = true)]
    Man,
}

fn main() -> ExitCode {
    // The guardian must run before anything else: no runtime, no threads, no logging set-up.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == "__guard").unwrap_or(false) {
        let code = understudy_service::guardian::run(args[2..].to_vec());
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // Before any thread exists: the service must not inherit systemd's notification socket.
    understudy_agent::sdnotify::take_from_env();
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("understudy: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// When the service is one of this binary's own (`understudy fix-gateway --config FILE`,
/// `understudy price-server …`), check what the service would check at its start: its
/// arguments, and the gateway's configuration file (relative paths as the service would see
/// them: from the agent's working directory), and a replicated gateway's settings against the
/// agent's `[health]` check. `Some(Ok)` says what was checked; None for any other program,
/// which understudy cannot judge.
fn check_builtin_service(c: &Config) -> Option<Result<String, String>> {
    let command = &c.service.command;
    let program = std::path::Path::new(command.first()?);
    let ours = program.file_name().is_some_and(|n| n == "understudy")
        || std::env::current_exe().is_ok_and(|me| program == me);
    if !ours {
        return None;
    }
    let cli = match Cli::try_parse_from(command) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return Some(Err(format!("the service's arguments are wrong: {first}")));
        }
    };
    Some(match cli.cmd {
        Cmd::Fix(fix_cmd::FixCmds::FixGateway { config }) => {
            match understudy_fix::gateway::GatewayConfig::load(&config) {
                Ok(gw) => {
                    let health = c
                        .health
                        .as_ref()
                        .map(|h| understudy_fix::replica::AgentHealth {
                            http: matches!(h.check, understudy_service::HealthCheck::Http(_)),
                            interval: h.interval,
                            timeout: h.timeout,
                        });
                    match gw
                        .replication
                        .as_ref()
                        .map(|r| understudy_fix::replica::check_agent_health(r, health))
                    {
                        Some(Err(e)) => Err(format!(
                            "the FIX gateway's configuration {} does not fit this agent: {e}",
                            config.display()
                        )),
                        _ => Ok(format!(
                            "the FIX gateway's configuration {} is valid",
                            config.display()
                        )),
                    }
                }
                Err(e) => Err(format!("the FIX gateway's configuration is wrong: {e}")),
            }
        }
        Cmd::Price(price_cmd::PriceCmds::PriceServer {
            token_file,
            config,
            tls_cert,
            tls_key,
            ..
        }) => {
            let file = config
                .as_deref()
                .map(price_cmd::config::load)
                .transpose()
                .map(Option::unwrap_or_default);
            match (
                token_file.as_deref().map(price_cmd::read_token).transpose(),
                file,
            ) {
                (Err(e), _) => Err(format!("the price server's token: {e:#}")),
                (_, Err(e)) => Err(format!("the price server's configuration: {e}")),
                (Ok(_), Ok(file)) => {
                    match price_cmd::server_tls(tls_cert.as_deref(), tls_key.as_deref(), &file) {
                        Ok(_) => Ok("the price server's arguments are valid".to_string()),
                        Err(e) => Err(format!("the price server's TLS: {e}")),
                    }
                }
            }
        }
        _ => Ok("the arguments of the understudy service are valid".to_string()),
    })
}

/// A multi-threaded runtime for the subcommands that need one.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_of(2)
}

fn runtime_of(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The runtime of a process whose work is one FIX event loop (`fix-gateway`,
/// `fix-exchange-sim`): one worker.
///
/// Why: the loop owns every session, and its connection tasks only move bytes (and, over TLS,
/// do the record crypto), so a second worker added little parallelism and many hand-offs: it
/// is woken to look for work whenever a task is queued, takes the reader or the loop over, and
/// every such hand-off is a wake-up across cores (`perf trace` of the gateway: an eventfd write
/// or a futex wake on each hop of a lone order). The `fdatasync` of a lone message runs on the
/// loop either way; under load the group-commit syncer thread runs the passes while the loop
/// reads on, and replication has threads of its own, as has the health endpoint
/// ([`understudy_fix::admin::serve_on_own_thread`]). `bench fix-roundtrip`, gateway on one
/// worker against two, 13 interleaved pairs (2026-12-02, about 20 % steal time): single-order
/// p50 lower in 11. In the 7 loaded pairs (the QuickFIX relay's p50 above 400 µs) lower in
/// all, by 134–1 069 µs: fewer threads to schedule on a busy machine; in the 6 quiet ones about
/// even (lower in 4 by 17–186 µs, higher in 2 by 79–83). 4 clients at once within the spread.
/// An acceptor's TLS handshakes, the one heavy piece of CPU a connection brings, run on a
/// thread of their own (`understudy_fix::engine`); TLS records are encrypted on the loop's,
/// and an initiator's handshakes (the gateway's upstreams) run there too. Not measured: a TLS
/// reconnect storm.
pub fn loop_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_of(1)
}

/// Logs to stderr, filtered by RUST_LOG (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Write a generated file (completion script, manual page) to stdout. A reader that stops early
/// (`understudy completions bash | head`) is not an error.
fn print_generated(bytes: &[u8], what: &str) -> anyhow::Result<u8> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context(format!("writing {what}")))
        }
        _ => Ok(0),
    }
}

/// `understudy check-config`: exit 0 and a summary when `file` is a valid configuration, 2 and
/// the reason when it is not.
fn check_config(file: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let c = match Config::load(file) {
        Ok(c) => c,
        Err(e) if json => {
            print_json(&serde_json::json!({"file": file, "ok": false, "error": e.to_string()}))?;
            return Ok(2);
        }
        Err(e) => {
            eprintln!("understudy: configuration error: {e}");
            return Ok(2);
        }
    };
    let service = check_builtin_service(&c);
    if let Some(Err(e)) = &service {
        let e = format!("{}: service.command: {e}", file.display());
        if json {
            print_json(&serde_json::json!({"file": file, "ok": false, "error": e}))?;
        } else {
            eprintln!("understudy: configuration error: {e}");
        }
        return Ok(2);
    }
    let warnings = c.warnings();
    if json {
        print_json(&serde_json::json!({
            "file": file,
            "ok": true,
            "node": c.node.name,
            "group": c.node.group,
            "mode": c.activation.mode,
            "standby": c.service.standby,
            "admin": c.node.admin,
            "lock": c.activation.lock_file,
            "warnings": warnings,
        }))?;
        return Ok(0);
    }
    println!(
        "{}: ok — node {} of group {}, {} mode, {} standby, admin {}, lock {}",
        file.display(),
        c.node.name,
        c.node.group,
        c.activation.mode,
        c.service.standby,
        c.node.admin,
        c.activation.lock_file.display()
    );
    if let Some(Ok(what)) = service {
        println!("{}: service.command: {what}", file.display());
    }
    for w in warnings {
        eprintln!("understudy: warning: {w}");
    }
    Ok(0)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.cmd {
        Cmd::Agent { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("understudy: configuration error: {e}");
                    return Ok(2);
                }
            };
            // A cold standby starts its service only at takeover: a bad gateway configuration
            // must be found now, not then.
            if let Some(Err(e)) = check_builtin_service(&cfg) {
                eprintln!(
                    "understudy: configuration error: {}: service.command: {e}",
                    config.display()
                );
                return Ok(2);
            }
            init_logging();
            for w in cfg.warnings() {
                tracing::warn!("{w}");
            }
            let exe = std::env::current_exe().context(
                "cannot find the understudy executable (needed to start the service guardian)",
            )?;
            let rt = runtime()?;
            match rt.block_on(understudy_agent::run(cfg, exe)) {
                Ok(code) => Ok(code.clamp(0, 255) as u8),
                Err(
                    e @ (understudy_agent::AgentError::AdminBind { .. }
                    | understudy_agent::AgentError::Identity(_)),
                ) => {
                    eprintln!("understudy: configuration error: {e}");
                    Ok(2)
                }
                Err(e) => Err(e).context("agent failed to start"),
            }
        }
        Cmd::CheckConfig { config, path, json } => {
            let file = config
                .or(path)
                .context("give the configuration file: check-config --config FILE")?;
            check_config(&file, json)
        }
        Cmd::Status { agent, json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = agent.client(Duration::from_secs(2))?;
                let group = c.group().await?;
                if json {
                    let status = c.status().await?;
                    print_json(&serde_json::json!({"status": status, "group": group}))?;
                } else {
                    print!("{}", render_group(&group));
                }
                Ok(0)
            })
        }
        Cmd::Activate { agent, json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = agent.client(Duration::from_secs(10))?;
                let r = c.activate().await.context("activation refused")?;
                if json {
                    print_json(&r)?;
                } else {
                    println!("{} is Hot (epoch {})", agent.agent, r.epoch.unwrap_or(0));
                }
                Ok(0)
            })
        }
        Cmd::Switchover { agent, to, json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = agent.client(Duration::from_secs(60))?;
                let r = c
                    .switchover(to.as_deref())
                    .await
                    .context("switchover failed")?;
                if json {
                    print_json(&r)?;
                } else {
                    println!(
                        "switched over: {} → {} (epoch {}) in {:.1} ms",
                        r.from, r.to, r.epoch, r.took_ms
                    );
                }
                Ok(0)
            })
        }
        Cmd::StartFailover { agent, json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = agent.client(Duration::from_secs(30))?;
                let r = c.start_failover().await.context("start failover refused")?;
                if json {
                    print_json(&r)?;
                } else {
                    match &r.cleared {
                        Some(stop) => {
                            println!("failover runs again for the group (cleared: {stop})")
                        }
                        None => println!("failover was running; nothing to clear"),
                    }
                }
                Ok(0)
            })
        }
        Cmd::Events { agent, json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = agent.client(Duration::from_secs(2))?;
                let ev = c.events().await?;
                if json {
                    print_json(&ev)?;
                } else {
                    print!("{}", understudy_control::render_events(&ev));
                }
                Ok(0)
            })
        }
        Cmd::Demo(args) => testbed::demo::run(args),
        Cmd::Bench { what } => testbed::bench::run(what),
        Cmd::Drill(args) => drill::run(args),
        Cmd::DemoService(args) => demo_service::run(args),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "understudy", &mut script);
            print_generated(&script, "the completion script")
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("rendering the manual page")?;
            print_generated(&page, "the manual page")
        }
        Cmd::Serve(args) => {
            default_sigchld();
            ctl_cmd::serve(args)
        }
        Cmd::Ctl(args) => ctl_cmd::ctl(args),
        Cmd::Host(args) => {
            default_sigchld();
            ctl_cmd::host(args)
        }
        Cmd::Top {
            agent,
            interval,
            json,
        } => {
            let client = agent.client(Duration::from_millis(800))?;
            if json {
                print_json(&understudy_top::snapshot(&client, &agent.agent)?)?;
            } else {
                understudy_top::run(client, &agent.agent, interval)?;
            }
            Ok(0)
        }
        Cmd::Price(c) => c.run(),
        Cmd::Fix(c) => c.run(),
    }
}

/// `serve` and `host` reap what they start themselves, and tell a child that still runs from a
/// freed pid by whether their reaper saw it end: an inherited SIGCHLD set to ignored would have
/// the kernel reap children unseen (review 44, L2).
fn default_sigchld() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition, no handler runs; nothing in this process relies
    // on SIGCHLD being ignored.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
}
