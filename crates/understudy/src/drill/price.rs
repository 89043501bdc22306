//! Document 001's "Testing Price Server Failover", automated: start the price servers of a
//! group (hot standby, under agents) and a client receiving prices; stop the active price
//! server; verify that the client receives prices from the other one — here within
//! milliseconds rather than the document's "approximately 30 seconds", with every subscription
//! back — and that no two servers were ever active (the two-Hot watcher). Then bring the
//! stopped server back and repeat.

use testbed::stats::Summary;

use super::EXIT_TWO_ACTIVES;
use testbed::price::group::{GroupOptions, PriceGroup};

/// Runs `rounds` rounds against a new group of `servers` price servers.
pub fn run(servers: usize, rounds: u64) -> anyhow::Result<u8> {
    if !(2..=5).contains(&servers) {
        anyhow::bail!("--local takes 2 to 5 price servers");
    }
    let exe = std::env::current_exe()?;
    let opts = GroupOptions {
        servers,
        ..GroupOptions::default()
    };
    println!(
        "understudy drill --scenario price: {servers} price servers (hot standby), an exchange at {} updates/s, a client subscribed to {} instruments",
        opts.rate, opts.subscribe
    );
    let mut g = PriceGroup::start(exe, opts)?;
    let watcher = super::start_watcher(
        g.group
            .nodes
            .values()
            .map(|n| (n.name.clone(), n.admin.clone()))
            .collect(),
        &crate::Auth::default(),
    )?;
    let want = g.subscribed.len();
    let mut stale = Vec::new();
    let mut all_back = Vec::new();
    let mut intact = 0;
    let mut failure = None;
    for i in 0..rounds {
        let f = match g.kill_active() {
            Ok(f) => f,
            Err(e) => {
                failure = Some(format!("round {}: {e:#}", i + 1));
                break;
            }
        };
        let (from, to) = (
            g.name(f.killed).to_string(),
            g.name(f.new_active).to_string(),
        );
        stale.push(f.stale_ms);
        if let Some(ms) = f.all_back_ms {
            all_back.push(ms);
        }
        if f.symbols_back == want {
            intact += 1;
        }
        println!(
            "[{:>w$}/{rounds}] stopped the active price server on {from} (kill -9 of its node): the client got prices from {to} at epoch {} after {:.1} ms, {}/{want} instruments back{}",
            i + 1,
            f.new_epoch,
            f.stale_ms,
            f.symbols_back,
            f.all_back_ms
                .map(|ms| format!(" after {ms:.1} ms"))
                .unwrap_or_default(),
            w = rounds.to_string().len()
        );
        if let Err(e) = g.restart(f.killed) {
            failure = Some(format!("round {}: restarting {from}: {e:#}", i + 1));
            break;
        }
    }
    let older = g.recorded(|r| r.older_after_newer);
    let seen = watcher.stop();
    drop(g);
    let s = Summary::of(&stale);
    let b = Summary::of(&all_back);
    println!(
        "\n{:<34} {:>8} {:>8} {:>8}",
        "ms after the stop", "p50", "p99", "max"
    );
    println!(
        "{:<34} {}",
        "first price from the new server",
        s.cells(8, 1)
    );
    println!("{:<34} {}", "every instrument back", b.cells(8, 1));
    println!(
        "{} rounds, every subscription intact in {intact}; prices of an older epoch after a newer one: {older}; watcher: {} sweeps",
        stale.len(),
        seen.sweeps
    );
    if let Some(f) = &failure {
        println!("FAILED: {f}");
    }
    if !seen.violations.is_empty() {
        for v in &seen.violations {
            println!("{v}");
        }
        println!("two actives at once: {} times", seen.violations.len());
        return Ok(EXIT_TWO_ACTIVES);
    }
    println!("two actives at once: never");
    Ok(u8::from(failure.is_some() || intact < stale.len()))
}
