//! `understudy serve` (the control plane) and `understudy ctl …` (its CLI: every lifecycle step of
//! document 000 as a command, the same calls the dashboard's buttons make).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use understudy_controlplane::model::Activation;
use understudy_status::StandbyType;

/// `understudy serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Listen address of the REST API and the dashboard.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// State directory: the SQLite database, generated node configurations, process logs.
    #[arg(long, default_value = "understudy-data")]
    data: PathBuf,
    /// File holding the bearer token that calls changing anything must carry (chmod 600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Reads (the page's data, the API's GETs) need the token too.
    #[arg(long)]
    private: bool,
    /// POST every new failure event as JSON to this URL (retried; 5 s timeout per attempt).
    #[arg(long)]
    webhook: Option<String>,
    /// etcd endpoints for groups whose nodes are on more than one host (comma separated).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// PEM certificate chain for the admin API of every agent this plane starts (written as
    /// node.admin_tls_cert; the same path on every host).
    #[arg(long, value_name = "FILE", requires = "agent_tls_key")]
    agent_tls_cert: Option<PathBuf>,
    /// Its private key (node.admin_tls_key).
    #[arg(long, value_name = "FILE", requires = "agent_tls_cert")]
    agent_tls_key: Option<PathBuf>,
    /// PEM CA certificate the agents' admin certificates are checked against: the plane then
    /// reaches agents over https:// (the CLI's --ca).
    #[arg(long, value_name = "FILE")]
    agent_ca: Option<PathBuf>,
    /// PEM client certificate and key presented to agents with node.admin_client_ca (the
    /// CLI's --cert).
    #[arg(long, value_name = "FILE")]
    agent_cert: Option<PathBuf>,
    /// File holding the agents' admin token: written as node.admin_token_file and sent with
    /// every call to an agent (the CLI's --token-file).
    #[arg(long, value_name = "FILE")]
    agent_token_file: Option<PathBuf>,
}

/// Run `understudy serve`.
pub fn serve(a: ServeArgs) -> anyhow::Result<u8> {
    crate::init_logging();
    let exe = std::env::current_exe().context("cannot find the understudy binary")?;
    crate::runtime()?.block_on(understudy_controlplane::serve(
        understudy_controlplane::ServeOptions {
            listen: a.listen,
            data: a.data,
            exe,
            token_file: a.token_file,
            private: a.private,
            webhook: a.webhook,
            etcd: a.etcd,
            agents: understudy_controlplane::AgentAccess {
                tls_cert: a.agent_tls_cert,
                tls_key: a.agent_tls_key,
                ca: a.agent_ca,
                cert: a.agent_cert,
                token_file: a.agent_token_file,
            },
        },
    ))?;
    Ok(0)
}

/// `understudy host`: run what the control plane places on this machine.
#[derive(Args)]
pub struct HostArgs {
    /// The control plane.
    #[arg(long)]
    control: String,
    /// This host's name (as given in `--standby-host` and a server's host).
    #[arg(long)]
    name: String,
    /// The IP address agents here listen on and the control plane reaches them at.
    #[arg(long)]
    advertise: std::net::IpAddr,
    /// Local state: node configurations, lock files, logs.
    #[arg(long, default_value = "understudy-host")]
    data: PathBuf,
    /// File holding the control plane's token (else UNDERSTUDY_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Run `understudy host`.
pub fn host(a: HostArgs) -> anyhow::Result<u8> {
    crate::init_logging();
    if !understudy_controlplane::model::valid_name(&a.name)
        || a.name == understudy_controlplane::model::LOCAL_HOST
    {
        anyhow::bail!(
            "--name {:?}: letters, digits, '-', '_', '.'; \"local\" is the control plane's own host",
            a.name
        );
    }
    let exe = std::env::current_exe().context("cannot find the understudy binary")?;
    let token = token(&a.token_file)?;
    crate::runtime()?.block_on(understudy_controlplane::hostd::run_host(
        understudy_controlplane::hostd::HostOptions {
            control: a.control,
            name: a.name,
            advertise: a.advertise.to_string(),
            data: a.data,
            exe,
            token,
        },
    ))?;
    Ok(0)
}

/// `understudy ctl`: the control plane's CLI.
#[derive(Args)]
pub struct CtlArgs {
    /// The control plane (`understudy serve --listen`).
    #[arg(long, default_value = "http://127.0.0.1:7700", global = true)]
    control: String,
    /// File holding the token (else the environment variable UNDERSTUDY_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCmd,
}

/// `ctl add-failover --mode`: the control plane's [`Activation`] for clap.
#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Trylock,
    Tryheartbeat,
    Warm,
}

impl From<ModeArg> for Activation {
    fn from(a: ModeArg) -> Self {
        match a {
            ModeArg::Trylock => Activation::Trylock,
            ModeArg::Tryheartbeat => Activation::Tryheartbeat,
            ModeArg::Warm => Activation::Warm,
        }
    }
}

/// `ctl events --format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A table for people.
    Text,
    /// The API's JSON (the same as --json).
    Json,
    /// One line per failure event, for a spreadsheet.
    Csv,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Every server with its failover state.
    Servers,
    /// The hosts: the built-in one and every `understudy host`, connected or not.
    Hosts,
    /// Forget a host whose machine is gone for good, with every process it ran: nothing waits
    /// for it any more (stop failover, stop-server), and what it last reported no longer blocks
    /// start-server or start failover. Refused while it reports. Never for a machine that may
    /// come back with its processes running.
    ForgetHost {
        host: String,
        /// Also when its last report lists a plain server running (it cannot be asked): only
        /// for a machine certainly dead, never one merely cut off.
        #[arg(long)]
        force: bool,
    },
    /// One server.
    Show { server: String },
    /// Add a trading server (stopped): `ctl add-server gw -- /opt/gw/bin/gw --config gw.toml`.
    AddServer {
        server: String,
        /// The host it runs on.
        #[arg(long, default_value = "local")]
        host: String,
        /// Extra environment, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Health check URL (2xx = healthy).
        #[arg(long)]
        health_http: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a server as a plain server, without failover.
    StartServer { server: String },
    /// Stop a plain server. It is Stopped once its host confirms; without that answer it stays
    /// running (it may still run).
    StopServer {
        server: String,
        /// The server's host is gone for good (its machine dead): Stopped without its
        /// confirmation. Never for a host that may come back while the server runs.
        #[arg(long)]
        force: bool,
    },
    /// Remove a stopped server from the inventory.
    DeleteServer { server: String },
    /// Add (or replace) the failover service of a server.
    AddFailover {
        server: String,
        /// Standby type.
        #[arg(long, value_enum)]
        standby: StandbyType,
        /// A host for one standby (repeatable; `local` for this machine).
        #[arg(long = "standby-host", required = true)]
        standby_hosts: Vec<String>,
        /// Activation mode.
        #[arg(long, value_enum, default_value = "trylock")]
        mode: ModeArg,
        /// Preferred active node (e.g. gw-2); default the server's own node. It becomes active
        /// at start, and takes over when several standbys could (its `node.priority` is higher).
        #[arg(long)]
        preferred: Option<String>,
        /// Hand activity back to the preferred node once it has been a ready standby this long
        /// (e.g. 30s; `activation.failback`). Default: never.
        #[arg(long)]
        failback: Option<String>,
    },
    /// Start failover (only from a stopped server).
    StartFailover { server: String },
    /// Stop failover: standbys stop, the active keeps running as a plain server.
    StopFailover { server: String },
    /// Remove the failover configuration; the server stays.
    DeleteFailover { server: String },
    /// Hand activity to a ready standby.
    Switchover {
        server: String,
        /// The standby to hand over to.
        #[arg(long)]
        to: Option<String>,
    },
    /// Write the whole configuration as one TOML file per server into DIR (for a Git repository).
    Export { dir: PathBuf },
    /// Read DIR's TOML files, validate everything and show the difference; --apply changes the
    /// inventory (all or nothing).
    Import {
        dir: PathBuf,
        /// Change the inventory (otherwise only show what would change).
        #[arg(long)]
        apply: bool,
        /// Remove servers that are not in DIR.
        #[arg(long)]
        prune: bool,
    },
    /// The server's failure events (kept across restarts).
    Events {
        server: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// The token of `--token-file` (which must be private: chmod 600), else `UNDERSTUDY_TOKEN`.
fn token(file: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        return Ok(Some(understudy_controlplane::read_token(f)?));
    }
    understudy_control::read_token(None).map_err(anyhow::Error::msg)
}

/// Run `understudy ctl …`; exit 0 when done, 1 when refused.
pub fn ctl(a: CtlArgs) -> anyhow::Result<u8> {
    use understudy_controlplane::client::Method as m;
    use understudy_controlplane::client::{self, seg, Answer, Call};
    let token = token(&a.token_file)?;
    let base = client::base_url(&a.control);
    let call = |method, path: String, body: Option<Value>| Call { method, path, body };
    let (c, kind) = match &a.cmd {
        CtlCmd::Servers => (call(m::GET, "/api/servers".into(), None), Answer::Servers),
        CtlCmd::Hosts => (call(m::GET, "/api/hosts".into(), None), Answer::Hosts),
        CtlCmd::ForgetHost { host, force } => (
            call(
                m::DELETE,
                format!(
                    "/api/hosts/{}{}",
                    seg(host),
                    if *force { "?force=true" } else { "" }
                ),
                None,
            ),
            Answer::Forgotten,
        ),
        CtlCmd::Show { server } => (
            call(m::GET, format!("/api/servers/{}", seg(server)), None),
            Answer::Server,
        ),
        CtlCmd::AddServer {
            server,
            host,
            env,
            health_http,
            command,
        } => {
            let mut envs = serde_json::Map::new();
            for kv in env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?}: write KEY=VALUE"))?;
                envs.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut service = json!({ "command": command, "env": envs });
            if let Some(u) = health_http {
                service["health"] = json!({ "http": u });
            }
            let body = json!({ "name": server, "host": host, "service": service });
            (
                call(m::POST, "/api/servers".into(), Some(body)),
                Answer::Server,
            )
        }
        CtlCmd::StartServer { server } => (
            call(m::POST, format!("/api/servers/{}/start", seg(server)), None),
            Answer::Server,
        ),
        CtlCmd::StopServer { server, force } => (
            call(
                m::POST,
                format!(
                    "/api/servers/{}/stop{}",
                    seg(server),
                    if *force { "?force=true" } else { "" }
                ),
                None,
            ),
            Answer::Server,
        ),
        CtlCmd::DeleteServer { server } => (
            call(m::DELETE, format!("/api/servers/{}", seg(server)), None),
            Answer::Deleted,
        ),
        CtlCmd::AddFailover {
            server,
            standby,
            standby_hosts,
            mode,
            preferred,
            failback,
        } => {
            let mut b = json!({
                "standby": standby,
                "standby_hosts": standby_hosts,
                "mode": Activation::from(*mode),
            });
            if let Some(p) = preferred {
                b["preferred"] = json!(p);
            }
            if let Some(d) = failback {
                b["failback"] = json!(d);
            }
            (
                call(
                    m::PUT,
                    format!("/api/servers/{}/failover", seg(server)),
                    Some(b),
                ),
                Answer::Server,
            )
        }
        CtlCmd::StartFailover { server } => (
            call(
                m::POST,
                format!("/api/servers/{}/failover/start", seg(server)),
                None,
            ),
            Answer::Server,
        ),
        CtlCmd::StopFailover { server } => (
            call(
                m::POST,
                format!("/api/servers/{}/failover/stop", seg(server)),
                None,
            ),
            Answer::Server,
        ),
        CtlCmd::DeleteFailover { server } => (
            call(
                m::DELETE,
                format!("/api/servers/{}/failover", seg(server)),
                None,
            ),
            Answer::Server,
        ),
        CtlCmd::Switchover { server, to } => {
            let body = match to {
                Some(t) => json!({ "to": t }),
                None => json!({}),
            };
            (
                call(
                    m::POST,
                    format!("/api/servers/{}/failover/switchover", seg(server)),
                    Some(body),
                ),
                Answer::Switchover,
            )
        }
        CtlCmd::Export { .. } => (call(m::GET, "/api/config".into(), None), Answer::Export),
        CtlCmd::Import { dir, apply, prune } => {
            let cfg = understudy_controlplane::config_io::read_dir(dir)?;
            let body = json!({ "servers": cfg.servers, "files": cfg.files, "apply": apply, "prune": prune });
            (
                call(m::POST, "/api/config/import".into(), Some(body)),
                Answer::Import,
            )
        }
        CtlCmd::Events {
            server,
            format,
            limit,
        } => {
            let f = if *format == Format::Csv {
                "csv"
            } else {
                "json"
            };
            (
                call(
                    m::GET,
                    format!(
                        "/api/servers/{}/events?format={f}&limit={limit}",
                        seg(server)
                    ),
                    None,
                ),
                Answer::Events,
            )
        }
    };
    let csv = matches!(
        &a.cmd,
        CtlCmd::Events {
            format: Format::Csv,
            ..
        }
    );
    let (code, text) = crate::runtime()?.block_on(client::send(&base, token.as_deref(), c))?;
    let ok = (200..300).contains(&code);
    if csv && ok {
        print!("{text}");
        return Ok(0);
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if let (CtlCmd::Export { dir }, true) = (&a.cmd, ok) {
        let cfg: understudy_controlplane::config_io::ConfigDir =
            serde_json::from_value(v).context("the control plane's configuration")?;
        let written = understudy_controlplane::config_io::write_dir(dir, &cfg)?;
        println!("wrote {} files to {}", written.len(), dir.display());
        return Ok(0);
    }
    let json_asked = matches!(
        &a.cmd,
        CtlCmd::Events {
            format: Format::Json,
            ..
        }
    );
    if a.json || json_asked {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if ok {
        println!("{}", client::render(kind, &v));
    } else {
        eprintln!("refused ({code}): {}", client::refusal_text(&v));
    }
    Ok(if ok { 0 } else { 1 })
}
