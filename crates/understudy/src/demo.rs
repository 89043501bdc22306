//! `understudy demo`: the main job on an embedded default, for someone who just cloned the repo.
//! A local group of real agents on a temp lock file protects the built-in demo service; the demo
//! shows the group, kills the active agent with SIGKILL, and shows the failure event with its
//! measured takeover time. Everything it started is stopped and its temp directory removed.
#![allow(clippy::disallowed_methods)] // a driver that may block; the agent may not

use std::net::UdpSocket;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use understudy_control::{render_events, render_group};

use crate::demo_service::mono_ns;
use understudy_control::local::{alive, is_mode, receive, LocalGroup};

/// Arguments of `understudy demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Another scenario than the default agent group.
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Nodes in the group (2 to 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Standby type of the service: hot, warm or cold.
    #[arg(long, default_value = "hot")]
    standby: String,
    /// Keep the temp directory (configs, agent logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The group as node `n` sees it, as `understudy status` prints it.
fn group_table(g: &LocalGroup, n: usize) -> String {
    match g.get(n, "/group").map(serde_json::from_value) {
        Some(Ok(group)) => render_group(&group),
        Some(Err(e)) => format!("(unreadable /group answer: {e})\n"),
        None => "(no answer from the node)\n".to_string(),
    }
}

fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Demo scenarios beyond the default.
#[derive(clap::Subcommand, Debug)]
pub enum Scenario {
    /// Hot-standby price servers: kill the primary, watch a client's prices come back.
    Price(crate::price_cmd::PriceDemoArgs),
    /// Warm-standby FIX gateway: kill the active, watch the counterparty carry on.
    Fix(crate::fix_cmd::FixDemoArgs),
}

/// Run the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    match args.scenario {
        Some(Scenario::Price(a)) => return crate::price_cmd::demo(a),
        Some(Scenario::Fix(a)) => return crate::fix_cmd::demo(a),
        None => {}
    }
    if !(2..=5).contains(&args.nodes) {
        bail!("--nodes must be between 2 and 5");
    }
    if !matches!(args.standby.as_str(), "hot" | "warm" | "cold") {
        bail!("--standby must be hot, warm or cold");
    }
    let names: Vec<&str> = ["a", "b", "c", "d", "e"][..args.nodes].to_vec();
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let exe = std::env::current_exe()?;
    let report = sock.local_addr()?;
    let mut g = LocalGroup::new(exe.clone(), &names, &args.standby, |_| {
        LocalGroup::demo_service(&exe, Some(report))
    })?;
    println!(
        "understudy demo: a group of {} agents on one host, trylock mode, {} standby",
        args.nodes, args.standby
    );
    println!("  lock file  {}", g.dir.path().join("group.lock").display());
    println!("  service    understudy demo-service (told it is active by SIGUSR1)\n");

    let outcome = (|| -> anyhow::Result<()> {
        g.start(0)?;
        g.wait_hot(0)?;
        let _ = receive(&sock, Duration::from_secs(2))?;
        for i in 1..names.len() {
            g.start(i)?;
        }
        for i in 1..names.len() {
            g.wait_ready(i)?;
        }
        pause(300);
        println!("$ understudy status --agent {}", g.nodes[1].admin);
        print!("{}", group_table(&g, 1));

        let old_svc = g
            .get(0, "/status")
            .and_then(|s| s.pointer("/service/pid").and_then(|p| p.as_u64()));
        let old_epoch = g
            .get(0, "/status")
            .and_then(|s| s.get("epoch").and_then(|e| e.as_u64()))
            .unwrap_or(0);
        println!(
            "\n>>> kill -9 the active agent {} (its service pid {})",
            names[0],
            old_svc.map(|p| p.to_string()).unwrap_or("-".into())
        );
        while receive(&sock, Duration::from_millis(1))?.is_some() {}
        let t0 = mono_ns();
        g.kill9(0);
        let took = match receive(&sock, Duration::from_secs(5))? {
            Some(t) => t.saturating_sub(t0) as f64 / 1e6,
            None => bail!("no standby's service became active within 5 s"),
        };
        // Find who took over.
        let mut new_active = None;
        for _ in 0..500 {
            new_active = (1..names.len()).find(|&i| {
                g.get(i, "/status")
                    .map(|s| is_mode(&s, "Hot"))
                    .unwrap_or(false)
            });
            if new_active.is_some() {
                break;
            }
            pause(2);
        }
        let Some(n) = new_active else {
            bail!("no node reports Hot after the kill")
        };
        let new_epoch = g
            .get(n, "/status")
            .and_then(|s| s.get("epoch").and_then(|e| e.as_u64()))
            .unwrap_or(0);
        println!("<<< {} took over: its service knew it was active {took:.2} ms after the kill (epoch {old_epoch} -> {new_epoch})", names[n]);
        pause(20);
        if let Some(p) = old_svc {
            println!(
                "    the killed agent's service pid {p} is {}",
                if alive(p as u32) {
                    "STILL ALIVE (defect)"
                } else {
                    "gone with its agent"
                }
            );
        }
        pause(600);
        println!("\n$ understudy status --agent {}", g.nodes[n].admin);
        print!("{}", group_table(&g, n));
        println!(
            "\n$ understudy events --agent {}   (the failure event)",
            g.nodes[n].admin
        );
        let ev = g.get(n, "/events").unwrap_or_default();
        let text = render_events(&ev);
        // The takeover lines come first; the full timeline is for `understudy events`.
        for l in text.lines().take_while(|l| !l.starts_with("timeline")) {
            println!("{l}");
        }

        println!("\n>>> restart {}: it rejoins as a standby", names[0]);
        g.start(0)?;
        g.wait_ready(0)?;
        pause(300);
        print!("{}", group_table(&g, n));
        Ok(())
    })();
    let dir = g.dir.path().display().to_string();
    if args.keep {
        println!("\nkept {}", understudy_control::local::keep(g).display());
    } else {
        g.stop_all();
        drop(g);
        println!("\nstopped every agent and removed {dir}");
    }
    outcome?;
    println!("next: `understudy bench failover --runs 50` measures this takeover against the bare kernel lock handoff.");
    Ok(0)
}
