//! `understudy bench failover`: kill the active agent N times and time, end to end, from the kill
//! to the standby's service learning it is active — next to the bare kernel lock handoff between
//! two plain processes, measured in the same run the same way, and the ratio of the two.
//!
//! Also the home of `bench node-loss` ([`node_loss`]) and of the hidden helper subcommands the
//! benchmarks run as processes of their own.

pub mod node_loss;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::clock::{mono_ns, poll, wait_until};
use crate::group::{receive_report, Group};
use crate::proc::{stop_child, Proc};
use crate::stats::{goal_line, Clock, Summary, Table};
use understudy_status::{ActivationMode, StandbyType, Takeover};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Takeover after kill -9 of the active agent, against the bare kernel lock handoff.
    Failover {
        /// Number of kills.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Standby type of the protected service (hot: signalled; cold: started on takeover).
        #[arg(long, value_enum, default_value = "hot")]
        standby: StandbyType,
        /// Keep the temp directory (configs, logs) for inspection.
        #[arg(long)]
        keep: bool,
    },
    /// Takeover after the active machine's network is cut (etcd coordinator), against keepalived.
    NodeLoss(node_loss::NodeLossArgs),
    /// (internal) Append `WORD <CLOCK_MONOTONIC ns>` to FILE (keepalived's notify scripts).
    #[command(hide = true)]
    Stamp {
        /// The file.
        file: PathBuf,
        /// The word.
        word: String,
    },
    /// Price distribution benchmarks.
    #[command(flatten)]
    Price(crate::price::PriceBench),
    /// FIX gateway benchmarks.
    #[command(flatten)]
    Fix(crate::fix::FixBench),
    /// (internal) Hold an OFD lock on FILE until killed.
    #[command(hide = true)]
    LockHolder {
        /// The lock file.
        file: PathBuf,
    },
    /// (internal) Wait for an OFD lock on FILE, then report the moment by UDP and exit.
    #[command(hide = true)]
    LockWaiter {
        /// The lock file.
        file: PathBuf,
        /// Where to report.
        report: std::net::SocketAddr,
    },
}

/// Runs a benchmark subcommand; the exit code.
pub fn run(cmd: BenchCmd) -> anyhow::Result<u8> {
    match cmd {
        BenchCmd::Failover {
            runs,
            standby,
            keep,
        } => failover(runs, standby, keep),
        BenchCmd::NodeLoss(a) => node_loss::run(a),
        BenchCmd::Stamp { file, word } => {
            use std::io::Write;
            let t = mono_ns();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .with_context(|| file.display().to_string())?;
            f.write_all(format!("{word} {t}\n").as_bytes())?;
            Ok(0)
        }
        BenchCmd::Price(b) => b.run(),
        BenchCmd::Fix(b) => b.run(),
        BenchCmd::LockHolder { file } => {
            let f = lock_blocking(&file)?;
            println!("locked");
            loop {
                // Park forever; the benchmark kills us.
                let _ = &f;
                std::thread::park();
            }
        }
        BenchCmd::LockWaiter { file, report } => {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let _f = lock_blocking(&file)?;
            let t = mono_ns();
            sock.send_to(format!("locked {t}").as_bytes(), report)?;
            Ok(0)
        }
    }
}

fn lock_blocking(path: &Path) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    loop {
        match nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLKW(&fl)) {
            Ok(_) => return Ok(f),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

/// True while process `pid` is blocked in `fcntl` (the lock waiter does nothing else that
/// blocks): `/proc/PID/syscall` names the system call a sleeping task is in, and says `running`
/// for one that is not in a system call.
fn blocked_in_fcntl(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|t| t.split_whitespace().next() == Some(libc::SYS_fcntl.to_string().as_str()))
}

fn baseline(dir: &Path, runs: usize, sock: &UdpSocket, exe: &Path) -> anyhow::Result<Vec<f64>> {
    let lock = dir.join("baseline.lock");
    let report = sock.local_addr()?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut holder = Proc::spawn(
            Command::new(exe)
                .args(["bench", "lock-holder"])
                .arg(&lock)
                .stdout(Stdio::piped()),
        )?;
        // Wait until the holder has the lock before the waiter queues behind it.
        if let Some(out) = holder.0.stdout.as_mut() {
            use std::io::Read;
            let mut b = [0u8; 7];
            let _ = out.read_exact(&mut b);
        }
        let mut waiter = Proc::spawn(
            Command::new(exe)
                .args(["bench", "lock-waiter"])
                .arg(&lock)
                .arg(report.to_string()),
        )?;
        // The waiter must be blocked in the kernel, as a standby agent is, before the kill.
        if !wait_until(Duration::from_secs(5), || blocked_in_fcntl(waiter.0.id())) {
            bail!(
                "the bare lock waiter did not queue for {} within 5 s",
                lock.display()
            );
        }
        let t0 = mono_ns();
        stop_child(&mut holder.0);
        let got = receive_report(sock, Duration::from_secs(5))?;
        let _ = waiter.0.wait();
        match got {
            Some(t) => out.push(t.saturating_sub(t0) as f64 / 1e6),
            None => bail!("the bare lock waiter never reported"),
        }
    }
    Ok(out)
}

fn failover(runs: usize, standby: StandbyType, keep: bool) -> anyhow::Result<u8> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let report = sock.local_addr()?;
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let mut g = Group::create(exe.clone(), ActivationMode::TryLock, standby)?;
    g.config.node.group = "bench".into();
    g.config.service.command = g.demo_service(Some(report));
    eprintln!("bare kernel lock handoff: {runs} runs…");
    let base = baseline(&g.path, runs, &sock, &exe)?;

    // Per phase, the new active's own figures (GET /events), one sample per takeover.
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); Takeover::PHASES.len()];
    let result = (|| -> anyhow::Result<Vec<f64>> {
        g.spawn("a")?;
        g.wait_hot("a")?;
        let _ = receive_report(&sock, Duration::from_secs(2))?;
        g.spawn("b")?;
        let mut samples = Vec::with_capacity(runs);
        let (mut active, mut standby_i) = ("a", "b");
        eprintln!("understudy takeover ({standby} standby): {runs} runs…");
        for i in 0..runs {
            g.wait_ready_standby(standby_i)?;
            // Drain any late report, then kill.
            while receive_report(&sock, Duration::from_millis(1))?.is_some() {}
            let t0 = mono_ns();
            g.kill9(active);
            match receive_report(&sock, Duration::from_secs(5))? {
                Some(t) => samples.push(t.saturating_sub(t0) as f64 / 1e6),
                None => bail!("run {i}: the standby's service never reported being active"),
            }
            g.spawn(active)?;
            // The new active's record of this takeover, once every phase is in (the demo
            // service acknowledges; a phase still missing after 2 s is counted as not
            // reported, not waited for forever).
            let takeover = poll(Duration::from_secs(2), Duration::from_millis(2), || {
                g.takeover(standby_i, None)
                    .filter(|t| t.phase_values().iter().all(Option::is_some))
            })
            .or_else(|| g.takeover(standby_i, None));
            if let Some(t) = takeover {
                for (xs, ms) in phases.iter_mut().zip(t.phase_values()) {
                    xs.extend(ms);
                }
            }
            std::mem::swap(&mut active, &mut standby_i);
        }
        Ok(samples)
    })();
    g.stop_all();
    // The services' own log: each active stopped before the next one started.
    let actives = crate::checkers::verify_log(&g.log).map_err(anyhow::Error::msg);
    if keep {
        eprintln!("kept {}", g.keep().display());
    }
    let ours = result?;
    let actives = actives?.len();
    println!(
        "failover benchmark: {runs} kill -9 runs each, timed from the kill to the report of the \
         process that takes over"
    );
    let mut t = Table::new("ms", 3, runs);
    t.row(
        "bare kernel lock handoff (2 plain processes)",
        Clock::MonoHere,
        &base,
        "",
    );
    let takeover = format!("understudy takeover ({standby} standby)");
    t.row(&takeover, Clock::MonoHere, &ours, "");
    print!("{}", t.render());
    let (b, o) = (Summary::of(&base), Summary::of(&ours));
    println!(
        "ratio understudy / bare lock: p50 {:.1}, p99 {}, max {:.1}",
        o.p50 / b.p50,
        match (o.p99, b.p99) {
            (Some(o), Some(b)) => format!("{:.1}", o / b),
            _ => "- (too few runs)".to_string(),
        },
        o.max / b.max
    );
    println!("phases of the takeover, as the new active's agent measured them, from detection:");
    let mut t = Table::new("ms", 3, runs);
    for ((_, label), xs) in Takeover::PHASES.iter().zip(&phases) {
        t.row(
            label,
            Clock::AgentMono,
            xs,
            "not reported: no takeover in the new active's /events, or the phase did not happen",
        );
    }
    print!("{}", t.render());
    println!("{actives} active periods in the services' log, none overlapping, epochs increasing");
    println!("{}", goal_line("takeover", &o, 50.0));
    Ok(0)
}
