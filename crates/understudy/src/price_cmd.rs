//! Subcommands of price distribution (hot standby, document 001): the exchange simulator, the
//! price server an agent protects, the failover-aware client. Their demo and benchmarks are in
//! `testbed::price`.

pub mod config;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use understudy_tls::{Pem, TlsClient, TlsServer};

use crate::{init_logging, runtime};

/// Price distribution subcommands.
#[derive(Subcommand, Debug)]
pub enum PriceCmds {
    /// A simulated exchange market-data feed: the upstream of price servers, and a load generator.
    ExchangeSim {
        /// Listen address for price servers.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Number of instruments, SYM1 … SYMN.
        #[arg(long, default_value_t = 100)]
        symbols: u32,
        /// Total updates per second, skewed towards a few hot instruments.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        /// Be a FIX 4.4 order-entry exchange instead (an acceptor that acknowledges, fills and
        /// cancels orders: the upstream of `understudy fix-gateway`); same as `fix-exchange-sim`.
        #[arg(long)]
        fix: bool,
        /// With --fix: the exchange's CompID (initiators send it as TargetCompID).
        #[arg(long, default_value = "EXCH", requires = "fix")]
        sender_comp_id: String,
    },
    /// A hot-standby price server (run it as an agent's service with service.standby = "hot").
    PriceServer {
        /// The exchange feed to connect to (or `upstream` in --config).
        #[arg(long)]
        upstream: Option<SocketAddr>,
        /// Listen address for price clients (or `listen` in --config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Also answer GET /health and /status (JSON) here, e.g. for the agent's [health] http.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// A TOML file with `upstream`, `listen`, `http` (and `include = [...]` fragments, e.g. the
        /// group's shared upstream); the flags win over it.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// A file holding the secret clients must present in their Hello (none needed without).
        #[arg(long, value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
        /// PEM certificate chain: clients must connect with TLS (or `tls_cert` in --config).
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of the certificate (or `tls_key` in --config).
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
    },
    /// A failover-aware price client: follows the group's active price server and keeps its
    /// subscriptions.
    PriceClient {
        /// The group's price servers, preferred first: ADDR,ADDR[,…].
        #[arg(long)]
        servers: String,
        /// Instruments: SYM1,SYM2,…
        #[arg(long)]
        subscribe: String,
        /// One JSON object per update instead of the quote board.
        #[arg(long)]
        json: bool,
        /// A file holding the servers' token, if they require one.
        #[arg(long, value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
        /// PEM CA certificate that signed the servers' certificates: connect with TLS.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// The name the servers' certificates must carry (default: each server's IP address).
        #[arg(long, value_name = "NAME", requires = "tls_ca")]
        tls_server_name: Option<String>,
    },
    /// (internal, `bench fanout`) Republish the exchange feed on nats-server.
    #[command(hide = true)]
    NatsBridge {
        /// The exchange feed.
        #[arg(long)]
        upstream: SocketAddr,
        /// The nats-server.
        #[arg(long)]
        nats: SocketAddr,
    },
}

impl PriceCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        // Not before the match: the price server sets up the agent contract before anything else.
        if !matches!(self, PriceCmds::PriceServer { .. }) {
            init_logging();
        }
        match self {
            PriceCmds::ExchangeSim {
                listen,
                fix: true,
                sender_comp_id,
                ..
            } => {
                return crate::loop_runtime()?.block_on(crate::fix_cmd::exchange_sim(
                    listen,
                    sender_comp_id,
                    None,
                ))
            }
            PriceCmds::ExchangeSim {
                listen,
                symbols,
                rate,
                ..
            } => runtime()?
                .block_on(understudy_pricefeed::run_exchange_sim(
                    listen, symbols, rate,
                ))
                .context("exchange-sim")?,
            PriceCmds::PriceServer {
                upstream,
                listen,
                http,
                config,
                token_file,
                tls_cert,
                tls_key,
            } => {
                let file = match config.as_deref().map(config::load).transpose() {
                    Ok(f) => f.unwrap_or_default(),
                    Err(e) => {
                        eprintln!("understudy: price-server: {e}");
                        return Ok(2);
                    }
                };
                let (Some(upstream), Some(listen)) =
                    (upstream.or(file.upstream), listen.or(file.listen))
                else {
                    eprintln!("understudy: price-server: give --upstream and --listen (or upstream and listen in --config)");
                    return Ok(2);
                };
                let tls = match server_tls(tls_cert.as_deref(), tls_key.as_deref(), &file) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("understudy: configuration error: price-server: {e}");
                        return Ok(2);
                    }
                };
                return price_server(
                    upstream,
                    listen,
                    http.or(file.http),
                    token_file.as_deref(),
                    tls,
                );
            }
            PriceCmds::PriceClient {
                servers,
                subscribe,
                json,
                token_file,
                tls_ca,
                tls_server_name,
            } => {
                let token = token_file.as_deref().map(read_token).transpose()?;
                let tls = TlsClient::load_optional(
                    Pem::opt("--tls-ca", tls_ca.as_deref()),
                    tls_server_name.as_deref().map(|n| ("--tls-server-name", n)),
                    None,
                    None,
                )?;
                let servers = understudy_pricefeed::parse_servers(&servers).context("--servers")?;
                let symbols = understudy_pricefeed::parse_symbols(&subscribe);
                if symbols.is_empty() {
                    bail!("--subscribe: give at least one instrument, e.g. SYM1,SYM2");
                }
                runtime()?
                    .block_on(understudy_pricefeed::run_price_client(
                        servers, symbols, json, token, tls,
                    ))
                    .context("price-client")?
            }
            PriceCmds::NatsBridge { upstream, nats } => runtime()?
                .block_on(testbed::price::fanout::run_nats_bridge(upstream, nats))
                .context("nats-bridge")?,
        }
        Ok(0)
    }
}

/// The price server's TLS, from its flags or else its `--config` file; `None`: plain.
pub fn server_tls(
    tls_cert: Option<&std::path::Path>,
    tls_key: Option<&std::path::Path>,
    file: &config::PriceServerFile,
) -> Result<Option<TlsServer>, understudy_tls::TlsError> {
    TlsServer::load_optional(
        Pem::opt("--tls-cert", tls_cert).or(Pem::opt("tls_cert", file.tls_cert.as_deref())),
        Pem::opt("--tls-key", tls_key).or(Pem::opt("tls_key", file.tls_key.as_deref())),
        None,
    )
}

/// `understudy price-server`: the agent contract is set up first, before logging and the
/// runtime's threads (see `understudy_sdk::init`).
fn price_server(
    upstream: SocketAddr,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    token_file: Option<&std::path::Path>,
    tls: Option<TlsServer>,
) -> anyhow::Result<u8> {
    // Read before anything starts: a missing or empty file is a configuration error (exit 2).
    let token = match token_file.map(read_token).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("understudy: configuration error: price-server: {e:#}");
            return Ok(2);
        }
    };
    let service = match understudy_sdk::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("understudy: price-server: {e}");
            return Ok(e.exit_code());
        }
    };
    init_logging();
    runtime()?
        .block_on(understudy_pricefeed::run_price_server_with(
            upstream, listen, http, token, tls, service,
        ))
        .context("price-server")?;
    Ok(0)
}

/// The secret in `file`, without surrounding blanks; an unreadable or empty file is an error.
pub fn read_token(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--token-file {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--token-file {}: the file is empty", file.display());
    }
    Ok(token.to_string())
}
