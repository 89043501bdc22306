//! `understudy drill`: a fault campaign against a live group, the proof of the safety claim.
//!
//! It injects real faults (kill -9 of agents and services, SIGSTOP/SIGCONT, SIGTERM, a
//! switchover, the lock file corrupted or deleted, a full disk under the epoch file, CPU
//! starvation), waits after each for the group to recover, and checks all along that there were
//! never two actives, in two independent ways: the overlap checker over the activity register the
//! services write ([`register`]), and the two-Hot watcher over every agent's `/status`
//! ([`testbed::Watcher`]). It ends with a table per fault kind and exits 3 if two actives were
//! ever seen, 1 if the group did not recover from a fault, 130 if it was stopped by a signal
//! (Ctrl-C, SIGTERM, SIGHUP: the first one ends the campaign after the current fault, with its
//! summary; a second one kills everything at once).
//!
//! Layout: [`group`] finds or starts the agents and restarts the ones a fault stopped; [`fault`]
//! injects one fault and measures what followed; [`price`] is document 001's "Testing Price
//! Server Failover" procedure, automated.
#![allow(clippy::disallowed_methods)] // a driver on its own threads: it may block and sleep

mod fault;
mod group;
mod price;
mod register;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use testbed::stats::Summary;
use understudy_status::StandbyType;

pub use fault::Kind;
use fault::Record;
use group::Group;
use register::Register;
use testbed::Watcher;

/// Exit code when two actives (or a fencing failure) were seen.
pub const EXIT_TWO_ACTIVES: u8 = 3;
/// Exit code of a clean campaign that a signal ended before its last fault.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Arguments of `understudy drill`.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Admin address of a node of the group to drill; repeat it for every node. The agents must
    /// run on this host (the drill sends them signals).
    #[arg(long = "agent", value_name = "ADDR")]
    agents: Vec<String>,
    /// A directory of the group's agent configurations (*.toml): every node in it is drilled,
    /// and a node that is not running is started first.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Start a local group of N agents (2 to 5) protecting the built-in demo service, which
    /// writes the activity register, and drill it. Nothing else is needed.
    #[arg(long, value_name = "N")]
    local: Option<usize>,
    /// With --local: standby type of the service.
    #[arg(long, value_enum, default_value = "hot")]
    standby: StandbyType,
    /// What to run: random faults, or document 001's price server failover test (--local only).
    #[arg(long, value_enum, default_value = "faults")]
    scenario: Scenario,
    /// Faults to inject.
    #[arg(long, default_value_t = 20)]
    faults: u64,
    /// Stop injecting after this long even if fewer faults were injected (e.g. "40m"); the
    /// summary covers the faults injected until then.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Fault kinds to draw from, comma-separated (default: every kind the group allows).
    #[arg(long, value_enum, value_delimiter = ',')]
    kinds: Vec<Kind>,
    /// The activity register the group's services append to (`understudy demo-service --log
    /// FILE`, or any service writing the same lines): the overlap checker reads it. Without it
    /// only the two-Hot watcher checks the group. --local makes its own.
    #[arg(long, value_name = "FILE")]
    register: Option<PathBuf>,
    /// Check this register and exit (3 on two actives): for a register kept from a past run.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["agents", "config_dir", "local"])]
    check_register: Option<PathBuf>,
    /// The agents are restarted by a supervisor (systemd, `understudy host`): after killing
    /// one, wait for it to come back instead of starting it again.
    #[arg(long)]
    supervised: bool,
    /// Seed of the fault sequence (default: from the clock); printed, so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// How long the group may take to recover from one fault.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    recover_timeout: Duration,
    /// Where agents the drill restarts write their output (default: a new directory in /tmp).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// How to reach agents with a token or TLS (for switchovers and reads).
    #[command(flatten)]
    auth: crate::Auth,
    /// Keep --local's directory (configs, agent logs, register) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Faults drawn at random from --kinds.
    Faults,
    /// Document 001's "Testing Price Server Failover": price servers under agents and a
    /// client; stop the active price server; the client must receive prices from another.
    Price,
}

/// The two-Hot watcher (testbed's) over `nodes` (name, admin address), asked with the drill's
/// token and TLS settings.
pub(crate) fn start_watcher(
    nodes: Vec<(String, String)>,
    auth: &crate::Auth,
) -> anyhow::Result<Watcher> {
    // A stopped agent answers nothing: a short timeout keeps the sweeps over the others going.
    let clients = nodes
        .into_iter()
        .map(|(name, addr)| Ok((name, auth.client(&addr, Duration::from_millis(250))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Watcher::with_clients(clients, Duration::from_millis(10))
}

/// A small deterministic generator (splitmix64): the same seed draws the same campaign.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Runs the drill.
pub fn run(args: DrillArgs) -> anyhow::Result<u8> {
    if let Some(path) = &args.check_register {
        return check_register(path);
    }

    if args.scenario == Scenario::Price {
        let Some(n) = args.local else {
            bail!("--scenario price starts its own price group: give --local N (2 to 5 servers)");
        };
        return price::run(n, args.faults);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let exe = std::env::current_exe().context("cannot find the understudy executable")?;
    let rt = crate::runtime()?;
    let mut g = rt.block_on(async {
        match (args.local, &args.config_dir, args.agents.is_empty()) {
            (Some(n), None, true) => Group::local(exe, n, args.standby).await,
            (None, Some(dir), true) => Group::from_config_dir(exe, dir, &args, &args.auth).await,
            (None, None, false) => Group::from_agents(&args.agents, &args, &args.auth).await,
            _ => bail!("give exactly one of --local N, --config-dir DIR or --agent ADDR…"),
        }
    })?;
    let register = args.register.clone().or_else(|| g.register_path());
    let outcome = campaign(&rt, &mut g, &args, seed, register);
    if args.keep {
        if let Some(d) = g.keep() {
            println!("kept {}", d.display());
        }
    }
    drop(g);
    outcome
}

fn check_register(path: &std::path::Path) -> anyhow::Result<u8> {
    let mut r = Register::new(path);
    r.poll()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let v = r.verdict();
    println!(
        "{}: {} lines, {} active periods, longest time with no active service {:.1} ms",
        path.display(),
        r.lines(),
        v.periods.len(),
        v.longest_gap_ns as f64 / 1e6
    );
    for x in &v.violations {
        println!("{x}");
    }
    if v.violations.is_empty() {
        println!("no two actives, epochs strictly increasing");
        Ok(0)
    } else {
        Ok(EXIT_TWO_ACTIVES)
    }
}

fn campaign(
    rt: &tokio::runtime::Runtime,
    g: &mut Group,
    args: &DrillArgs,
    seed: u64,
    register: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let mut reg = register.as_deref().map(Register::new);
    let (kinds, skipped) = fault::available(g, &args.kinds);
    if kinds.is_empty() {
        bail!(
            "no fault kind can be injected into this group ({})",
            skipped.join("; ")
        );
    }
    println!(
        "understudy drill: {} nodes ({}), {} faults, seed {seed}",
        g.nodes.len(),
        g.nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.admin))
            .collect::<Vec<_>>()
            .join(", "),
        args.faults
    );
    println!(
        "  kinds: {}",
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &skipped {
        println!("  not injected: {s}");
    }
    match &reg {
        Some(r) => println!("  register: {}", r.path().display()),
        None => println!("  register: none (only the two-Hot watcher checks the group)"),
    }
    let watcher = start_watcher(g.watch_list(), &args.auth)?;
    // A fault half done (a node SIGSTOPped, a disk full) must be undone before the drill
    // stops, and a user who stops a long run wants its table: the first signal only stops
    // the loop below.
    testbed::proc::defer_interrupts();
    let mut interrupted = None;
    let started = std::time::Instant::now();
    let mut rng = Rng::new(seed);
    let mut records: Vec<Record> = Vec::new();
    let mut failure = None;
    let mut settled = rt.block_on(g.settle(args.recover_timeout, reg.as_mut()));
    for i in 0..args.faults {
        if let Some(sig) = testbed::proc::interrupted() {
            println!(
                "stopped by {} after {i} faults",
                testbed::proc::signal_name(sig)
            );
            interrupted = Some(sig);
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            println!("--duration reached after {i} faults");
            break;
        }
        let s = match &settled {
            Ok(s) => s,
            Err(e) => {
                failure = Some(format!(
                    "the group is not healthy before fault {}: {e}",
                    i + 1
                ));
                break;
            }
        };
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let rec = rt.block_on(fault::inject(g, kind, s, &mut rng, reg.as_mut(), args));
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                failure = Some(format!("fault {} ({}): {e:#}", i + 1, kind.name()));
                break;
            }
        };
        settled = rt.block_on(g.settle(args.recover_timeout, reg.as_mut()));
        println!(
            "[{:>w$}/{}] {rec}{}",
            i + 1,
            args.faults,
            match watcher.violations() {
                0 => String::new(),
                n => format!("  !! {n} two-Hot moments so far"),
            },
            w = args.faults.to_string().len()
        );
        records.push(rec);
    }
    if failure.is_none() {
        if let Err(e) = &settled {
            failure = Some(format!(
                "the group did not recover from the last fault: {e}"
            ));
        }
    }
    let seen = watcher.stop();
    let verdict = match &mut reg {
        Some(r) => {
            r.poll()
                .with_context(|| format!("cannot read the register {}", r.path().display()))?;
            Some(r.verdict())
        }
        None => None,
    };
    print!("{}", summary(&records, started.elapsed()));
    let mut two_actives = seen.violations.clone();
    match &verdict {
        Some(v) => {
            println!(
                "register: {} active periods, longest time with no active service {:.1} ms{}",
                v.periods.len(),
                v.longest_gap_ns as f64 / 1e6,
                v.longest_gap_before
                    .as_ref()
                    .map(|(n, e)| format!(" (before {n} became active at epoch {e})"))
                    .unwrap_or_default()
            );
            two_actives.extend(v.violations.iter().cloned());
        }
        None => println!("register: none, so the longest time with no active service is not known"),
    }
    println!(
        "watcher: {} sweeps of every node's /status, {} with two Hot answers (a handover between two requests, unless listed below)",
        seen.sweeps, seen.two_hot_answers
    );
    if let Some(f) = &failure {
        println!("FAILED: {f}");
    }
    if two_actives.is_empty() {
        println!("two actives at once: never");
    } else {
        for v in &two_actives {
            println!("{v}");
        }
        println!("two actives at once: {} times", two_actives.len());
        return Ok(EXIT_TWO_ACTIVES);
    }
    Ok(match (&failure, interrupted) {
        (Some(_), _) => 1,
        (None, Some(_)) => EXIT_INTERRUPTED,
        (None, None) => 0,
    })
}

/// The table at the end: per kind, faults, failovers, fault → new active service, and the time
/// with no active service around each failover.
fn summary(records: &[Record], took: Duration) -> String {
    let mut out = format!(
        "\n{:<14} {:>6} {:>9}  {:^26}  {:^26}\n",
        "fault", "faults", "failovers", "fault → new active (ms)", "no active service (ms)"
    );
    out.push_str(&format!(
        "{:<14} {:>6} {:>9}  {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}\n",
        "", "", "", "p50", "p99", "max", "p50", "p99", "max"
    ));
    let mut kinds: Vec<Kind> = records.iter().map(|r| r.kind).collect();
    kinds.sort();
    kinds.dedup();
    let row = |label: &str, rs: &[&Record]| {
        let takeover: Vec<f64> = rs.iter().filter_map(|r| r.takeover_ms).collect();
        let gap: Vec<f64> = rs.iter().filter_map(|r| r.gap_ms).collect();
        format!(
            "{label:<14} {:>6} {:>9}  {}  {}\n",
            rs.len(),
            rs.iter().filter(|r| r.failover).count(),
            cells(&takeover),
            cells(&gap)
        )
    };
    for k in kinds {
        let rs: Vec<&Record> = records.iter().filter(|r| r.kind == k).collect();
        out.push_str(&row(k.name(), &rs));
    }
    let all: Vec<&Record> = records.iter().collect();
    out.push_str(&row("all", &all));
    out.push_str(&format!(
        "{} faults in {:.0} s; p99 shown as - for fewer than 100 values\n",
        records.len(),
        took.as_secs_f64()
    ));
    out
}

fn cells(xs: &[f64]) -> String {
    if xs.is_empty() {
        return format!("{:>8} {:>8} {:>8}", "-", "-", "-");
    }
    Summary::of(xs).cells(8, 1)
}
