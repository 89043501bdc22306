//! Subcommands of price distribution (hot standby, document 001): the exchange simulator, the
//! price server an agent protects, the failover-aware client, and their demo and benchmarks.
//!
//! `bench price-failover` and the demo drive real processes through [`group::PriceGroup`];
//! `bench fanout`, side by side with nats-server, is in [`fanout`].

pub mod config;
pub mod fanout;
pub mod group;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use understudy_control::Summary;
use understudy_pricefeed::harness;

use crate::bench::{Clock, Table};
use crate::{init_logging, runtime};
use group::{Failover, GroupOptions, PriceGroup};

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
            } => return runtime()?.block_on(crate::fix_cmd::exchange_sim(listen, sender_comp_id)),
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
                return price_server(upstream, listen, http.or(file.http));
            }
            PriceCmds::PriceClient {
                servers,
                subscribe,
                json,
            } => {
                let servers = understudy_pricefeed::parse_servers(&servers).context("--servers")?;
                let symbols = understudy_pricefeed::parse_symbols(&subscribe);
                if symbols.is_empty() {
                    bail!("--subscribe: give at least one instrument, e.g. SYM1,SYM2");
                }
                runtime()?
                    .block_on(understudy_pricefeed::run_price_client(
                        servers, symbols, json,
                    ))
                    .context("price-client")?
            }
            PriceCmds::NatsBridge { upstream, nats } => runtime()?
                .block_on(fanout::run_nats_bridge(upstream, nats))
                .context("nats-bridge")?,
        }
        Ok(0)
    }
}

/// `understudy price-server`: the agent contract is set up first, before logging and the
/// runtime's threads (see `understudy_sdk::init`).
fn price_server(
    upstream: SocketAddr,
    listen: SocketAddr,
    http: Option<SocketAddr>,
) -> anyhow::Result<u8> {
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
            upstream, listen, http, service,
        ))
        .context("price-server")?;
    Ok(0)
}

/// Price benchmarks (`understudy bench …`).
#[derive(Subcommand, Debug)]
pub enum PriceBench {
    /// Price staleness at a client after kill -9 of the primary's agent.
    PriceFailover(PriceFailoverArgs),
    /// Fan-out of one exchange stream to many clients, side by side with nats-server.
    Fanout(fanout::FanoutArgs),
    /// (internal, `bench fanout`) One side's clients in their own process; prints a report.
    #[command(hide = true)]
    FanoutConsumer(fanout::ConsumerArgs),
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
    /// Instruments the client subscribes to.
    #[arg(long, default_value_t = 100)]
    pub subscribe: u32,
    /// Exchange updates per second (200 instruments).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u32,
}

impl PriceBench {
    /// Run the benchmark; returns the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            PriceBench::PriceFailover(a) => price_failover(a),
            PriceBench::Fanout(a) => fanout::bench(a),
            PriceBench::FanoutConsumer(a) => fanout::consumer(a),
        }
    }
}

fn price_failover(a: PriceFailoverArgs) -> anyhow::Result<u8> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(2..=9).contains(&a.servers) {
        bail!("--servers must be between 2 and 9");
    }
    if a.subscribe == 0 || a.subscribe > 200 {
        bail!("--subscribe must be between 1 and 200 (the exchange lists 200 instruments)");
    }
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    eprintln!(
        "starting exchange-sim, {} agents with hot-standby price servers, and a client on {} instruments…",
        a.servers, a.subscribe
    );
    let mut g = PriceGroup::start(
        exe,
        GroupOptions {
            servers: a.servers,
            instruments: 200,
            rate: a.rate,
            subscribe: a.subscribe,
            ..GroupOptions::default()
        },
    )?;
    let mut runs: Vec<Failover> = Vec::with_capacity(a.runs);
    for i in 0..a.runs {
        let f = g.kill_active().with_context(|| format!("run {}", i + 1))?;
        eprintln!(
            "run {:>3}: killed {} → {} active at epoch {}: prices stale {:.1} ms, {}/{} instruments back",
            i + 1,
            g.group.nodes[f.killed].name,
            g.group.nodes[f.new_active].name,
            f.new_epoch,
            f.stale_ms,
            f.symbols_back,
            a.subscribe
        );
        let killed = f.killed;
        runs.push(f);
        g.restart(killed)
            .with_context(|| format!("run {}: restarting the killed node", i + 1))?;
    }
    let older = g.recorded(|r| r.older_after_newer);
    drop(g);

    let stale: Vec<f64> = runs.iter().map(|f| f.stale_ms).collect();
    let all_back: Vec<f64> = runs.iter().filter_map(|f| f.all_back_ms).collect();
    let notified: Vec<f64> = runs.iter().filter_map(|f| f.agent_notified_ms).collect();
    let kill_notified: Vec<f64> = runs.iter().filter_map(|f| f.kill_to_notified_ms).collect();
    let intact = runs
        .iter()
        .filter(|f| f.symbols_back == a.subscribe as usize)
        .count();
    println!(
        "price failover benchmark: {} kill -9 runs of the primary's agent, {} price servers (hot standby, trylock), \
         a client on {} instruments, exchange {} updates/s",
        a.runs, a.servers, a.subscribe, a.rate
    );
    let no_takeover = "the new active's /events had no takeover record for its epoch";
    let mut t = Table::new("ms", 2, a.runs);
    t.row(
        "agent takeover: lock obtained → service notified",
        Clock::AgentMono,
        &notified,
        no_takeover,
    );
    t.row(
        "agent takeover: kill → service notified",
        Clock::WallMs,
        &kill_notified,
        no_takeover,
    );
    t.row(
        "client: kill → first price at the new epoch (staleness)",
        Clock::MonoHere,
        &stale,
        "",
    );
    t.row(
        &format!(
            "client: kill → all {} instruments at the new epoch",
            a.subscribe
        ),
        Clock::MonoHere,
        &all_back,
        "not every instrument came back within 5 s",
    );
    print!("{}", t.render());
    let s = Summary::of(&stale);
    let n = Summary::of(&kill_notified);
    println!(
        "ratio staleness / agent takeover (kill → notified): p50 {:.1}, max {:.1}",
        s.p50 / n.p50,
        s.max / n.max
    );
    println!(
        "every subscription intact after the failover: {intact}/{} runs; updates from an older epoch after a newer one: {older}",
        a.runs
    );
    let goal = 200.0;
    // With fewer runs than a p99 needs, the goal is judged on the maximum, which is stricter.
    let (what, v) = match s.p99 {
        Some(p) => ("p99", p),
        None => ("max (too few runs for a p99)", s.max),
    };
    println!(
        "goal: staleness p99 under {goal} ms, judged on the {what}: {}",
        if v < goal { "met" } else { "NOT MET" }
    );
    Ok(if intact == a.runs && older == 0 { 0 } else { 1 })
}

/// Arguments of `understudy demo price`.
#[derive(Args, Debug)]
pub struct PriceDemoArgs {
    /// Price servers in the group (2 to 9).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Instruments the client subscribes to.
    #[arg(long, default_value_t = 20)]
    pub subscribe: u32,
    /// How many times to kill the active.
    #[arg(long, default_value_t = 2)]
    pub kills: usize,
}

/// `understudy demo price`.
pub fn demo(a: PriceDemoArgs) -> anyhow::Result<u8> {
    if !(2..=9).contains(&a.servers) {
        bail!("--servers must be between 2 and 9");
    }
    if a.subscribe == 0 || a.subscribe > 200 {
        bail!("--subscribe must be between 1 and 200");
    }
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    println!(
        "understudy demo price: an exchange simulator, {} price servers behind agents (trylock, hot standby), one client\n",
        a.servers
    );
    let mut g = PriceGroup::start(
        exe,
        GroupOptions {
            servers: a.servers,
            instruments: 200,
            rate: 20_000,
            subscribe: a.subscribe,
            ..GroupOptions::default()
        },
    )?;
    println!(
        "  exchange-sim   {} (200 instruments, 20000 updates/s)",
        g.exchange_addr
    );
    for (i, n) in g.group.nodes.iter().enumerate() {
        println!(
            "  node {}         agent {}, price server {}",
            n.name, n.admin, g.servers[i]
        );
    }
    println!(
        "  client         subscribed to SYM1 … SYM{}, connected to every server\n",
        a.subscribe
    );
    let active = g.active().context("no active node")?;
    println!(
        "node {} is active (epoch {}); the others are hot standbys mirroring the subscriptions",
        g.group.nodes[active].name,
        g.recorded(|r| r.highest_epoch)
    );
    g.sleep(Duration::from_millis(500));
    print_board(&g, 5);
    let mut survived = 0;
    for k in 0..a.kills {
        let active = g.active().context("no active node")?;
        let name = g.group.nodes[active].name.clone();
        let pid = g.agent_pid(active).unwrap_or(0);
        println!("\nkill -9 of node {name}'s agent (pid {pid}), the active; its price server dies with it…");
        let f = g.kill_active()?;
        println!(
            "  node {} took over at epoch {} (agent: lock obtained → price server told in {})",
            g.group.nodes[f.new_active].name,
            f.new_epoch,
            f.agent_notified_ms
                .map_or("?".to_string(), |m| format!("{m:.2} ms"))
        );
        println!(
            "  prices were stale for {:.1} ms (kill → first price at epoch {})",
            f.stale_ms, f.new_epoch
        );
        match f.all_back_ms {
            Some(ms) => println!(
                "  every subscription survived: {}/{} instruments priced at the new epoch within {ms:.1} ms, without resubscribing by hand",
                f.symbols_back, a.subscribe
            ),
            None => println!(
                "  only {}/{} subscriptions came back within 5 s",
                f.symbols_back, a.subscribe
            ),
        }
        if f.symbols_back == a.subscribe as usize {
            survived += 1;
        }
        g.sleep(Duration::from_millis(300));
        print_board(&g, 5);
        if k + 1 < a.kills {
            println!("restarting node {name} as a standby…");
            g.restart(f.killed)?;
        }
    }
    let older = g.recorded(|r| r.older_after_newer);
    println!(
        "\n{survived}/{} failovers kept every subscription; prices from an older epoch after a newer one: {older}",
        a.kills
    );
    println!("cleaning up: stopping the agents, the price servers and the exchange");
    drop(g);
    Ok(if survived == a.kills && older == 0 {
        0
    } else {
        1
    })
}

fn print_board(g: &PriceGroup, rows: usize) {
    let quotes = g.recorded(|r| {
        g.subscribed
            .iter()
            .take(rows)
            .filter_map(|s| r.latest.get(s).cloned())
            .collect::<Vec<_>>()
    });
    println!(
        "  {:<8} {:>10} {:>10} {:>8} {:>6} {:>8}",
        "SYMBOL", "BID", "ASK", "SEQ", "EPOCH", "AGE ms"
    );
    for q in quotes {
        println!(
            "  {:<8} {:>10.2} {:>10.2} {:>8} {:>6} {:>8.1}",
            q.symbol,
            q.bid,
            q.ask,
            q.exch_seq,
            q.epoch,
            harness::age_ns(q.exch_time_ns) as f64 / 1e6
        );
    }
}
