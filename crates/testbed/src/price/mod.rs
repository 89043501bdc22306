//! Price distribution (hot standby, document 001) on real processes: the group of price
//! servers behind agents ([`PriceGroup`]), the client's recorder ([`recorder`]), `bench
//! price-failover`, `demo price`, and `bench fanout` side by side with nats-server ([`fanout`],
//! its consumer processes in [`consumer`]).

pub mod consumer;
pub mod fanout;
pub mod group;
pub mod recorder;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::stats::{Clock, Summary, Table};
pub use group::{Failover, GroupOptions, PriceGroup};

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
    /// Runs the benchmark; the exit code.
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
    check_group(a.servers, a.subscribe)?;
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
            g.name(f.killed),
            g.name(f.new_active),
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
        "agent takeover: detection → service notified",
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
    println!("{}", crate::stats::goal_line("staleness", &s, 200.0));
    Ok(if intact == a.runs && older == 0 { 0 } else { 1 })
}

/// Refuses a group the drivers do not run: 2 to 9 servers, 1 to 200 instruments (the
/// exchange lists 200).
fn check_group(servers: usize, subscribe: u32) -> anyhow::Result<()> {
    if !(2..=9).contains(&servers) {
        bail!("--servers must be between 2 and 9");
    }
    if subscribe == 0 || subscribe > 200 {
        bail!("--subscribe must be between 1 and 200 (the exchange lists 200 instruments)");
    }
    Ok(())
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
    check_group(a.servers, a.subscribe)?;
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
    for (i, server) in g.servers.iter().enumerate() {
        println!(
            "  node {}         agent {}, price server {server}",
            g.name(i),
            g.group.admin(g.name(i))
        );
    }
    println!(
        "  client         subscribed to SYM1 … SYM{}, connected to every server\n",
        a.subscribe
    );
    let active = g.active().context("no active node")?;
    println!(
        "node {} is active (epoch {}); the others are hot standbys mirroring the subscriptions",
        g.name(active),
        g.recorded(|r| r.highest_epoch)
    );
    g.sleep(Duration::from_millis(500));
    print_board(&g, 5);
    let mut survived = 0;
    for k in 0..a.kills {
        let active = g.active().context("no active node")?;
        let name = g.name(active);
        let pid = g.agent_pid(active).unwrap_or(0);
        println!("\nkill -9 of node {name}'s agent (pid {pid}), the active; its price server dies with it…");
        let f = g.kill_active()?;
        println!(
            "  node {} took over at epoch {} (agent: lock obtained → price server told in {})",
            g.name(f.new_active),
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
            recorder::age_ns(q.exch_time_ns) as f64 / 1e6
        );
    }
}
