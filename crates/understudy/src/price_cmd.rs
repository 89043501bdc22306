//! Subcommands of price distribution (hot standby, document 001): the exchange simulator, the
//! price server an agent protects, the failover-aware client, and their demo and benchmarks.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Subcommand};

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
    },
    /// A hot-standby price server (run it as an agent's service with service.standby = "hot").
    PriceServer {
        /// The exchange feed to connect to.
        #[arg(long)]
        upstream: SocketAddr,
        /// Listen address for price clients.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A failover-aware price client: follows the group's primary and keeps its subscriptions.
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
    },
}

impl PriceCmds {
    /// Run the subcommand; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        init_logging();
        match self {
            PriceCmds::ExchangeSim {
                listen,
                symbols,
                rate,
            } => runtime()?
                .block_on(understudy_pricefeed::run_exchange_sim(
                    listen, symbols, rate,
                ))
                .context("exchange-sim")?,
            PriceCmds::PriceServer { upstream, listen } => runtime()?
                .block_on(understudy_pricefeed::run_price_server(upstream, listen))
                .context("price-server")?,
            PriceCmds::PriceClient {
                servers,
                subscribe,
                json,
            } => {
                let servers = understudy_pricefeed::parse_servers(&servers).context("--servers")?;
                let symbols = understudy_pricefeed::parse_symbols(&subscribe);
                if symbols.is_empty() {
                    anyhow::bail!("--subscribe: give at least one instrument, e.g. SYM1,SYM2");
                }
                runtime()?
                    .block_on(understudy_pricefeed::run_price_client(
                        servers, symbols, json,
                    ))
                    .context("price-client")?
            }
        }
        Ok(0)
    }
}

/// Price benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum PriceBench {
    /// Price staleness at a client after kill -9 of the primary's agent.
    PriceFailover(PriceFailoverArgs),
}

/// Arguments of `understudy bench price-failover`.
#[derive(Args, Debug)]
pub struct PriceFailoverArgs {
    /// Number of kills.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Price servers in the group.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
}

impl PriceBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            PriceBench::PriceFailover(a) => {
                anyhow::bail!(
                    "price-failover benchmark ({} runs, {} servers) is being built",
                    a.runs,
                    a.servers
                )
            }
        }
    }
}

/// Arguments of `understudy demo price`.
#[derive(Args, Debug)]
pub struct PriceDemoArgs {}

/// `understudy demo price`.
pub fn demo(_args: PriceDemoArgs) -> anyhow::Result<u8> {
    anyhow::bail!("the price demo is being built")
}
