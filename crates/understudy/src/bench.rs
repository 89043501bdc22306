//! `understudy bench failover`: kill the active agent N times and time, end to end, from the kill
//! to the standby's service learning it is active — next to the bare kernel lock handoff between
//! two plain processes, measured in the same run the same way, and the ratio of the two.
#![allow(clippy::disallowed_methods)] // a benchmark driver may block; the agent may not

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::demo_service::mono_ns;
use understudy_control::local::{receive, LocalGroup};
use understudy_control::{percentiles, Summary, TAKEOVER_PHASES};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Takeover after kill -9 of the active agent, against the bare kernel lock handoff.
    Failover {
        /// Number of kills.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Standby type of the protected service (hot: signalled; cold: started on takeover).
        #[arg(long, default_value = "hot")]
        standby: String,
        /// Keep the temp directory (configs, logs) for inspection.
        #[arg(long)]
        keep: bool,
    },
    /// Takeover after the active machine's network is cut (etcd coordinator), against keepalived.
    NodeLoss(crate::bench_node_loss::NodeLossArgs),
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
    Price(crate::price_cmd::PriceBench),
    /// FIX gateway benchmarks.
    #[command(flatten)]
    Fix(crate::fix_cmd::FixBench),
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

/// Run a benchmark subcommand.
pub fn run(cmd: BenchCmd) -> anyhow::Result<u8> {
    match cmd {
        BenchCmd::Failover {
            runs,
            standby,
            keep,
        } => failover(runs, &standby, keep),
        BenchCmd::NodeLoss(a) => crate::bench_node_loss::run(a),
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

fn kill9(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

fn baseline(dir: &Path, runs: usize, sock: &UdpSocket, exe: &Path) -> anyhow::Result<Vec<f64>> {
    let lock = dir.join("baseline.lock");
    let report = sock.local_addr()?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut holder = Command::new(exe)
            .args(["bench", "lock-holder"])
            .arg(&lock)
            .stdout(Stdio::piped())
            .spawn()?;
        // Wait until the holder has the lock before the waiter queues behind it.
        if let Some(out) = holder.stdout.as_mut() {
            use std::io::Read;
            let mut b = [0u8; 7];
            let _ = out.read_exact(&mut b);
        }
        let mut waiter = Command::new(exe)
            .args(["bench", "lock-waiter"])
            .arg(&lock)
            .arg(report.to_string())
            .spawn()?;
        // Give the waiter time to block in the kernel, as a standby agent would be.
        std::thread::sleep(Duration::from_millis(30));
        let t0 = mono_ns();
        kill9(&mut holder);
        let got = receive(sock, Duration::from_secs(5))?;
        let _ = waiter.wait();
        match got {
            Some(t) => out.push(t.saturating_sub(t0) as f64 / 1e6),
            None => bail!("the bare lock waiter never reported"),
        }
    }
    Ok(out)
}

fn failover(runs: usize, standby: &str, keep: bool) -> anyhow::Result<u8> {
    if !matches!(standby, "hot" | "warm" | "cold") {
        bail!("--standby must be hot, warm or cold");
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let report = sock.local_addr()?;
    let exe = std::env::current_exe()?;
    let mut g = LocalGroup::new(exe.clone(), &["a", "b"], standby, |_| {
        LocalGroup::demo_service(&exe, Some(report))
    })?;
    eprintln!("bare kernel lock handoff: {runs} runs…");
    let base = baseline(g.dir.path(), runs, &sock, &g.exe.clone())?;

    // Per phase, the new active's own figures (GET /events), one sample per takeover.
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); TAKEOVER_PHASES.len()];
    let result = (|| -> anyhow::Result<Vec<f64>> {
        g.start(0)?;
        g.wait_hot(0)?;
        let _ = receive(&sock, Duration::from_secs(2))?;
        g.start(1)?;
        let mut samples = Vec::with_capacity(runs);
        let (mut active, mut standby_i) = (0usize, 1usize);
        eprintln!("understudy takeover ({standby} standby): {runs} runs…");
        for i in 0..runs {
            g.wait_ready(standby_i)?;
            // Drain any late report, then kill.
            while receive(&sock, Duration::from_millis(1))?.is_some() {}
            let t0 = mono_ns();
            g.kill9(active);
            match receive(&sock, Duration::from_secs(5))? {
                Some(t) => samples.push(t.saturating_sub(t0) as f64 / 1e6),
                None => bail!("run {i}: the standby's service never reported being active"),
            }
            g.start(active)?;
            let takeover = g
                .get(standby_i, "/events")
                .and_then(|ev| ev.get("takeovers")?.as_array()?.last().cloned());
            if let Some(t) = takeover {
                for (k, (field, _)) in TAKEOVER_PHASES.iter().enumerate() {
                    if let Some(ms) = t.get(*field).and_then(|v| v.as_f64()) {
                        phases[k].push(ms);
                    }
                }
            }
            std::mem::swap(&mut active, &mut standby_i);
        }
        Ok(samples)
    })();
    if keep {
        eprintln!("kept {}", understudy_control::local::keep(g).display());
    } else {
        g.stop_all();
    }
    let ours = result?;
    let (b50, b99, bmax) = percentiles(&base);
    let (o50, o99, omax) = percentiles(&ours);
    println!("failover benchmark: {runs} kill -9 runs each, timed from the kill to the report (CLOCK_MONOTONIC)");
    println!("{:<46} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    println!(
        "{:<46} {b50:>9.3} {b99:>9.3} {bmax:>9.3}",
        "bare kernel lock handoff (2 plain processes)"
    );
    println!(
        "{:<46} {o50:>9.3} {o99:>9.3} {omax:>9.3}",
        format!("understudy takeover ({standby} standby)")
    );
    println!(
        "{:<46} {:>9.1} {:>9.1} {:>9.1}",
        "ratio understudy / bare lock",
        o50 / b50,
        o99 / b99,
        omax / bmax
    );
    println!("phases of the takeover, as the new active's agent measured them (GET /events), from detection:");
    for ((_, label), xs) in TAKEOVER_PHASES.iter().zip(&phases) {
        if xs.is_empty() {
            println!("  {label:<44} {:>9} (never reported)", "-");
            continue;
        }
        let (p50, p99, max) = percentiles(xs);
        println!("  {label:<44} {p50:>9.3} {p99:>9.3} {max:>9.3}");
    }
    let goal = 50.0;
    println!(
        "goal: p99 under {goal} ms: {}",
        if o99 < goal { "met" } else { "NOT MET" }
    );
    Ok(0)
}

/// How a figure was timed: printed next to it, explained under the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// Both ends read from CLOCK_MONOTONIC in the benchmark process.
    MonoHere,
    /// Read from one agent's /events: its own monotonic clock, in its process.
    AgentMono,
    /// The benchmark's CLOCK_REALTIME at the kill against the agent's wall-clock detection
    /// stamp, which it keeps in whole milliseconds.
    WallMs,
    /// A [`Clock::MonoHere`] figure minus a [`Clock::WallMs`] one, run by run.
    MonoMinusWallMs,
}

impl Clock {
    fn tag(self) -> &'static str {
        match self {
            Clock::MonoHere => "mono",
            Clock::AgentMono => "agent",
            Clock::WallMs => "wall",
            Clock::MonoMinusWallMs => "diff",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Clock::MonoHere => "CLOCK_MONOTONIC, both ends read in the benchmark process",
            Clock::AgentMono => {
                "the agent's own monotonic clock, from its GET /events (detection = lock obtained)"
            }
            Clock::WallMs => {
                "CLOCK_REALTIME across processes: the kill stamped here (ns), the agent's detection \
                 stamped in whole ms (truncated), so this reads 0-1 ms low"
            }
            Clock::MonoMinusWallMs => {
                "a mono figure minus a wall figure, run by run: reads 0-1 ms high (see wall)"
            }
        }
    }
}

/// A benchmark table: rows of p50 / p99 / max with the clock each was timed on and how many
/// runs gave a value; under it, what the clocks are, why runs are missing from a row, and why
/// a p99 is withheld.
pub(crate) struct Table {
    unit: &'static str,
    prec: usize,
    runs: usize,
    label_width: usize,
    rows: Vec<(String, Clock, Summary)>,
    notes: Vec<String>,
}

impl Table {
    /// A table over `runs` runs, values in `unit` printed with `prec` decimals.
    pub(crate) fn new(unit: &'static str, prec: usize, runs: usize) -> Table {
        Table {
            unit,
            prec,
            runs,
            label_width: 20,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row; `missing` says why a run has no value in it, when some have none.
    pub(crate) fn row(&mut self, label: &str, clock: Clock, xs: &[f64], missing: &str) {
        let s = Summary::of(xs);
        if s.n < self.runs {
            self.notes.push(format!(
                "{label}: {} of {} runs have no value ({missing}); the row is over the other {}",
                self.runs - s.n,
                self.runs,
                s.n
            ));
        }
        self.label_width = self.label_width.max(label.chars().count());
        self.rows.push((label.to_owned(), clock, s));
    }

    /// The table as printed lines.
    pub(crate) fn render(&self) -> String {
        let w = self.label_width;
        let u = self.unit;
        let mut out = format!(
            "{:<w$} {:<6} {:>9} {:>9} {:>9} {:>9}\n",
            "",
            "clock",
            "runs",
            format!("p50 {u}"),
            format!("p99 {u}"),
            format!("max {u}")
        );
        for (label, clock, s) in &self.rows {
            out.push_str(&format!(
                "{label:<w$} {:<6} {:>9} {}\n",
                clock.tag(),
                format!("{}/{}", s.n, self.runs),
                s.cells(9, self.prec)
            ));
        }
        let mut clocks: Vec<Clock> = Vec::new();
        for (_, c, _) in &self.rows {
            if !clocks.contains(c) {
                clocks.push(*c);
            }
        }
        for c in clocks {
            out.push_str(&format!("  {:<6} {}\n", c.tag(), c.legend()));
        }
        // One note for the table, from its smallest row: the rows with enough values show
        // their p99, the others '-'.
        let smallest = self.rows.iter().map(|(_, _, s)| s.n).min().unwrap_or(0);
        if let Some(n) = understudy_control::stats::p99_note(smallest) {
            out.push_str(&format!("  {n}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_names_its_clocks_its_missing_runs_and_a_withheld_p99() {
        let mut t = Table::new("ms", 1, 20);
        let all: Vec<f64> = (1..=20).map(f64::from).collect();
        t.row("kill → first price", Clock::MonoHere, &all, "");
        t.row(
            "kill → notified",
            Clock::WallMs,
            &all[..18],
            "no takeover in /events",
        );
        let s = t.render();
        assert!(s.contains("20/20") && s.contains("18/20"), "{s}");
        assert!(
            s.contains("2 of 20 runs have no value (no takeover in /events)"),
            "{s}"
        );
        assert!(
            s.contains("CLOCK_MONOTONIC") && s.contains("whole ms"),
            "{s}"
        );
        assert!(s.contains("p99 shown as - where"), "{s}");
        // p99 withheld: the cell shows '-', never the maximum under another name.
        let row = s
            .lines()
            .find(|l| l.starts_with("kill → first price"))
            .unwrap_or("");
        assert!(
            row.contains(" - ") && row.trim_end().ends_with("20.0"),
            "{row}"
        );
    }
}
