//! `understudy demo`: the main job on an embedded default, for someone who just cloned the repo.
//! A local group of real agents on a temp lock file protects the built-in demo service; the demo
//! shows the group, kills the active agent with SIGKILL, and shows the failure event with its
//! measured takeover time. Everything it started is stopped and its temp directory removed.

use std::net::UdpSocket;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use understudy_control::{render_events, render_group};

use crate::clock::{mono_ns, pause as sleep};
use crate::group::{receive_report, Group};
use crate::http::{epoch_of, is_mode, service_pid_of};
use crate::proc::alive;
use understudy_status::{ActivationMode, StandbyType};

/// Arguments of `understudy demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Another scenario than the default agent group.
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Nodes in the group (2 to 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Standby type of the service.
    #[arg(long, value_enum, default_value = "hot")]
    standby: StandbyType,
    /// Keep the temp directory (configs, agent logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The group as node `n` sees it, as `understudy status` prints it.
fn group_table(g: &Group, n: &str) -> String {
    match g.get(n, "/group").map(serde_json::from_value) {
        Some(Ok(group)) => render_group(&group),
        Some(Err(e)) => format!("(unreadable /group answer: {e})\n"),
        None => "(no answer from the node)\n".to_string(),
    }
}

fn pause(ms: u64) {
    sleep(Duration::from_millis(ms));
}

/// Demo scenarios beyond the default.
#[derive(clap::Subcommand, Debug)]
pub enum Scenario {
    /// Hot-standby price servers: kill the primary, watch a client's prices come back.
    Price(crate::price::PriceDemoArgs),
    /// Warm-standby FIX gateway: kill the active, watch the counterparty carry on.
    Fix(crate::fix::FixDemoArgs),
}

/// Runs the demo; the exit code.
pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    match args.scenario {
        Some(Scenario::Price(a)) => return crate::price::demo(a),
        Some(Scenario::Fix(a)) => return crate::fix::demo(a),
        None => {}
    }
    if !(2..=5).contains(&args.nodes) {
        bail!("--nodes must be between 2 and 5");
    }
    let names: Vec<&str> = ["a", "b", "c", "d", "e"][..args.nodes].to_vec();
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let report = sock.local_addr()?;
    let mut g = Group::create(exe, ActivationMode::TryLock, args.standby)?;
    g.config.node.group = "demo".into();
    g.config.service.command = g.demo_service(Some(report));
    for n in &names {
        g.add_node(n, |_| {})?;
    }
    println!(
        "understudy demo: a group of {} agents on one host, trylock mode, {} standby",
        args.nodes, args.standby
    );
    println!("  lock file  {}", g.lock.display());
    println!(
        "  service    understudy demo-service ({})\n",
        if args.standby == StandbyType::Cold {
            "started as active when its node is Hot"
        } else {
            "runs as a standby; told it is active by SIGUSR1"
        }
    );

    let outcome = (|| -> anyhow::Result<()> {
        g.spawn(names[0])?;
        g.wait_hot(names[0])?;
        let _ = receive_report(&sock, Duration::from_secs(2))?;
        for n in &names[1..] {
            g.spawn(n)?;
        }
        for n in &names[1..] {
            g.wait_ready_standby(n)?;
        }
        pause(300);
        println!("$ understudy status --agent {}", g.admin(names[1]));
        print!("{}", group_table(&g, names[1]));

        let old = g.status(names[0]);
        let old_svc = old.as_ref().and_then(service_pid_of);
        let old_epoch = old.as_ref().and_then(epoch_of).unwrap_or(0);
        println!(
            "\n>>> kill -9 the active agent {} (its service pid {})",
            names[0],
            old_svc.map(|p| p.to_string()).unwrap_or("-".into())
        );
        while receive_report(&sock, Duration::from_millis(1))?.is_some() {}
        let t0 = mono_ns();
        g.kill9(names[0]);
        let took = match receive_report(&sock, Duration::from_secs(5))? {
            Some(t) => t.saturating_sub(t0) as f64 / 1e6,
            None => bail!("no standby's service became active within 5 s"),
        };
        // Find who took over.
        let new_active =
            crate::clock::poll(Duration::from_secs(1), Duration::from_millis(2), || {
                names[1..]
                    .iter()
                    .copied()
                    .find(|n| g.status(n).is_some_and(|s| is_mode(&s, "Hot")))
            });
        let Some(n) = new_active else {
            bail!("no node reports Hot after the kill")
        };
        let new_epoch = g.status(n).as_ref().and_then(epoch_of).unwrap_or(0);
        println!("<<< {} took over: its service knew it was active {took:.2} ms after the kill (epoch {old_epoch} -> {new_epoch})", n);
        pause(20);
        if let Some(p) = old_svc {
            println!(
                "    the killed agent's service pid {p} is {}",
                if alive(p) {
                    "STILL ALIVE (defect)"
                } else {
                    "gone with its agent"
                }
            );
        }
        pause(600);
        println!("\n$ understudy status --agent {}", g.admin(n));
        print!("{}", group_table(&g, n));
        println!(
            "\n$ understudy events --agent {}   (the failure event)",
            g.admin(n)
        );
        let text = match g.get(n, "/events").map(serde_json::from_value) {
            Some(Ok(ev)) => render_events(&ev),
            Some(Err(e)) => format!("(unreadable /events answer: {e})\n"),
            None => "(no /events answer)\n".to_string(),
        };
        // The takeover lines come first; the full timeline is for `understudy events`.
        for l in text.lines().take_while(|l| !l.starts_with("timeline")) {
            println!("{l}");
        }

        println!("\n>>> restart {}: it rejoins as a standby", names[0]);
        g.spawn(names[0])?;
        g.wait_ready_standby(names[0])?;
        pause(300);
        print!("{}", group_table(&g, n));
        Ok(())
    })();
    g.stop_all();
    let checked = crate::checkers::verify_log(&g.log).map_err(anyhow::Error::msg);
    let dir = g.path.display().to_string();
    if args.keep {
        println!("\nkept {}", g.keep().display());
    } else {
        drop(g);
        println!("\nstopped every agent and removed {dir}");
    }
    outcome?;
    println!(
        "the services' own log: {} active periods, never two at once, each with a higher epoch",
        checked?.len()
    );
    println!("next: `understudy bench failover --runs 50` measures this takeover against the bare kernel lock handoff.");
    Ok(0)
}
