//! The faults, one at a time: inject, see what the group did, bring back what the fault
//! stopped. Every fault starts from a settled group (one Hot node, ready standbys).

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::ValueEnum;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::group::{pid_at, Group, Settled};
use super::register::Register;
use super::{DrillArgs, Rng};
use testbed::clock::mono_ns;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Kind {
    /// kill -9 of the active agent (restarted afterwards).
    KillAgent,
    /// kill -9 of a standby agent (restarted afterwards).
    KillStandby,
    /// kill -9 of the active service.
    KillService,
    /// SIGSTOP of the active agent for 0.1 to 1 s, then SIGCONT.
    Sigstop,
    /// SIGTERM of the active agent (a graceful stop; restarted afterwards).
    Sigterm,
    /// A switchover asked of the active agent.
    Switchover,
    /// The lock file overwritten with garbage.
    CorruptLock,
    /// The lock file deleted.
    DeleteLock,
    /// The lock file's file system filled, then kill -9 of the active agent.
    DiskFull,
    /// Every core busy (stress-ng), then kill -9 of the active agent.
    CpuStarve,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::KillAgent,
        Kind::KillStandby,
        Kind::KillService,
        Kind::Sigstop,
        Kind::Sigterm,
        Kind::Switchover,
        Kind::CorruptLock,
        Kind::DeleteLock,
        Kind::DiskFull,
        Kind::CpuStarve,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillAgent => "kill-agent",
            Kind::KillStandby => "kill-standby",
            Kind::KillService => "kill-service",
            Kind::Sigstop => "sigstop",
            Kind::Sigterm => "sigterm",
            Kind::Switchover => "switchover",
            Kind::CorruptLock => "corrupt-lock",
            Kind::DeleteLock => "delete-lock",
            Kind::DiskFull => "disk-full",
            Kind::CpuStarve => "cpu-starve",
        }
    }

    fn restarts_an_agent(self) -> bool {
        matches!(
            self,
            Kind::KillAgent | Kind::KillStandby | Kind::Sigterm | Kind::DiskFull | Kind::CpuStarve
        )
    }
}

/// The kinds this group allows among `wanted` (all when empty), and why the others are left out.
pub fn available(g: &Group, wanted: &[Kind]) -> (Vec<Kind>, Vec<String>) {
    let wanted: Vec<Kind> = if wanted.is_empty() {
        Kind::ALL.to_vec()
    } else {
        wanted.to_vec()
    };
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for k in wanted {
        let why = if k.restarts_an_agent() && !g.can_restart() {
            Some("an agent's command line could not be read from /proc, so it could not be started again (or give --supervised)".to_string())
        } else if matches!(k, Kind::CorruptLock | Kind::DeleteLock) && g.lock_file.is_none() {
            Some("the group has no lock file on this host".to_string())
        } else if k == Kind::DiskFull {
            g.no_disk_fill.clone()
        } else if k == Kind::CpuStarve && !on_path("stress-ng") {
            Some("stress-ng is not installed".to_string())
        } else {
            None
        };
        match why {
            Some(w) => skipped.push(format!("{}: {w}", k.name())),
            None => ok.push(k),
        }
    }
    ok.dedup();
    (ok, skipped)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// One fault and what followed.
pub struct Record {
    pub kind: Kind,
    /// What was hit: "a (active, epoch 4)".
    pub target: String,
    /// A node became active with a higher epoch.
    pub failover: bool,
    /// The node that became active, and its epoch.
    pub to: Option<(String, u64)>,
    /// Fault → the new active's service active (register), or → seen Hot (without one).
    pub takeover_ms: Option<f64>,
    /// Time with no active service: the new active's start minus the end of the one before.
    pub gap_ms: Option<f64>,
    pub note: String,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<13} {}", self.kind.name(), self.target)?;
        match &self.to {
            Some((n, e)) => write!(f, " → {n} active at epoch {e}")?,
            None => write!(f, " → no failover")?,
        }
        if let Some(t) = self.takeover_ms {
            write!(f, ", {t:.1} ms after the fault")?;
        }
        if let Some(g) = self.gap_ms {
            write!(f, ", {g:.1} ms with no active service")?;
        }
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// How long a fault that must cause a failover may take to cause it.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(10);

/// Injects one fault of `kind` into the settled group `s` and measures what followed.
pub async fn inject(
    g: &mut Group,
    kind: Kind,
    s: &Settled,
    rng: &mut Rng,
    reg: Option<&mut Register>,
    args: &DrillArgs,
) -> anyhow::Result<Record> {
    let a = s.active;
    let st = s.statuses[a].as_ref();
    let e0 = s.epoch;
    let name = g.nodes[a].name.clone();
    let agent =
        pid_at(st, "/agent_pid").ok_or_else(|| anyhow::anyhow!("{name} gives no agent_pid"))?;
    let mut target = format!("{name} (active, epoch {e0})");
    let mut note = String::new();
    let t0;
    // (did a failover have to happen, how long to wait for one)
    let must = match kind {
        Kind::KillAgent => {
            t0 = mono_ns();
            g.signal(agent, Signal::SIGKILL)?;
            g.wait_gone(agent, Duration::from_secs(5)).await?;
            Some(TAKEOVER_WITHIN)
        }
        Kind::KillStandby => {
            // A group settles with one ready standby when another is slow to come back; the
            // slow one may not answer yet, so the victim is drawn among those that do.
            let standbys: Vec<(usize, u32)> = (0..g.nodes.len())
                .filter(|&i| i != a)
                .filter_map(|i| pid_at(s.statuses[i].as_ref(), "/agent_pid").map(|p| (i, p)))
                .collect();
            if standbys.is_empty() {
                anyhow::bail!("no standby of {name}'s group gives its agent_pid");
            }
            let (b, pid) = standbys[rng.below(standbys.len() as u64) as usize];
            target = format!("{} (standby)", g.nodes[b].name);
            t0 = mono_ns();
            g.signal(pid, Signal::SIGKILL)?;
            g.wait_gone(pid, Duration::from_secs(5)).await?;
            g.restart(b, pid, args.recover_timeout).await?;
            None
        }
        Kind::KillService => {
            let svc = pid_at(st, "/service/pid")
                .ok_or_else(|| anyhow::anyhow!("{name} reports no service pid"))?;
            target = format!("{name}'s service pid {svc} (active, epoch {e0})");
            t0 = mono_ns();
            g.signal(svc, Signal::SIGKILL)?;
            Some(TAKEOVER_WITHIN)
        }
        Kind::Sigstop => {
            let ms = 100 + rng.below(901);
            target = format!("{name} (active, epoch {e0}) for {ms} ms");
            t0 = mono_ns();
            g.signal(agent, Signal::SIGSTOP)?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            g.signal(agent, Signal::SIGCONT)?;
            None
        }
        Kind::Sigterm => {
            t0 = mono_ns();
            g.signal(agent, Signal::SIGTERM)?;
            g.wait_gone(agent, args.recover_timeout).await?;
            Some(TAKEOVER_WITHIN)
        }
        Kind::Switchover => {
            t0 = mono_ns();
            match g.nodes[a].client.switchover(None).await {
                Ok(_) => Some(TAKEOVER_WITHIN),
                // A standby not ready at that very moment is a refusal, not a fault. A call that
                // timed out may still hand over: counted below if it already has.
                Err(e) => {
                    note = format!("refused: {e}");
                    None
                }
            }
        }
        Kind::CorruptLock => {
            let lock = g.lock_file.clone().unwrap_or_default();
            target = format!("{} (held by {name}, epoch {e0})", lock.display());
            t0 = mono_ns();
            corrupt(&lock, rng)?;
            // The holder reads it back at its next heartbeat tick.
            tokio::time::sleep(Duration::from_millis(300)).await;
            None
        }
        Kind::DeleteLock => {
            let lock = g.lock_file.clone().unwrap_or_default();
            target = format!("{} (held by {name}, epoch {e0})", lock.display());
            t0 = mono_ns();
            std::fs::remove_file(&lock)?;
            // The holder notices at its next heartbeat tick and steps down; someone takes over.
            Some(TAKEOVER_WITHIN)
        }
        Kind::DiskFull => {
            let lock = g.lock_file.clone().unwrap_or_default();
            let filler = lock.with_file_name("drill-filler");
            let filled = fill(&filler).await;
            target = format!(
                "{name} (active, epoch {e0}) with {} KiB filled",
                filled >> 10
            );
            t0 = mono_ns();
            g.signal(agent, Signal::SIGKILL)?;
            g.wait_gone(agent, Duration::from_secs(5)).await?;
            let got = g.wait_new_active(e0, Duration::from_secs(5)).await;
            note = match got {
                Some(_) => "taken over on the full disk".into(),
                None => "no takeover while the disk was full".into(),
            };
            let _ = std::fs::remove_file(&filler);
            Some(TAKEOVER_WITHIN)
        }
        Kind::CpuStarve => {
            let mut stress = Command::new("stress-ng")
                .args(["--cpu", "4", "--timeout", "5s", "--quiet"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            t0 = mono_ns();
            let r = match g.signal(agent, Signal::SIGKILL) {
                Ok(()) => g.wait_gone(agent, Duration::from_secs(5)).await,
                Err(e) => Err(e),
            };
            let got = g.wait_new_active(e0, TAKEOVER_WITHIN).await;
            let _ = kill(Pid::from_raw(stress.id() as i32), Signal::SIGINT);
            let _ = stress.wait();
            r?;
            if got.is_none() {
                anyhow::bail!("no node became active with an epoch above {e0} under CPU load");
            }
            Some(TAKEOVER_WITHIN)
        }
    };
    let outcome = match must {
        Some(within) => match g.wait_new_active(e0, within).await {
            Some(x) => Some(x),
            None => anyhow::bail!(
                "no node became active with an epoch above {e0} within {within:?}: {}",
                g.describe(&g.statuses().await)
            ),
        },
        // Without a failover required, one that happened anyway is still counted.
        None => g.wait_new_active(e0, Duration::ZERO).await,
    };
    if matches!(
        kind,
        Kind::KillAgent | Kind::Sigterm | Kind::DiskFull | Kind::CpuStarve
    ) {
        g.restart(a, agent, args.recover_timeout).await?;
    }
    let mut rec = Record {
        kind,
        target,
        failover: outcome.is_some(),
        to: outcome.map(|(i, e, _)| (g.nodes[i].name.clone(), e)),
        takeover_ms: None,
        gap_ms: None,
        note,
    };
    if let Some((_, e1, seen_ns)) = outcome {
        match reg {
            Some(r) => measure(r, e1, t0, &mut rec).await,
            None => rec.takeover_ms = Some(seen_ns.saturating_sub(t0) as f64 / 1e6),
        }
    }
    Ok(rec)
}

/// Takeover and gap from the register, once the new active's service has written to it.
async fn measure(r: &mut Register, epoch: u64, t0: u64, rec: &mut Record) {
    let t = std::time::Instant::now();
    let new = loop {
        let _ = r.poll();
        if let Some(p) = r.period_of_epoch(epoch) {
            break p;
        }
        if t.elapsed() > Duration::from_secs(5) {
            rec.note
                .push_str("the new active's service never wrote to the register");
            return;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    };
    rec.takeover_ms = Some(new.start_ns.saturating_sub(t0) as f64 / 1e6);
    let before = r
        .periods()
        .into_iter()
        .filter(|p| p.start_ns < new.start_ns)
        .map(|p| p.end_ns)
        .max();
    if let Some(end) = before {
        rec.gap_ms = Some(new.start_ns.saturating_sub(end) as f64 / 1e6);
    }
}

/// Overwrites the start of the lock file with random bytes of a random length, in place.
fn corrupt(lock: &Path, rng: &mut Rng) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(lock)?;
    let n = 1 + rng.below(200) as usize;
    let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    f.write_all(&junk)?;
    f.set_len(n as u64)?;
    Ok(())
}

/// Fills the file system of `filler` until it has no space left; the bytes written. Agents
/// replace their records by rename, which frees a page now and then: so it tops up a few times.
async fn fill(filler: &Path) -> u64 {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
    else {
        return 0;
    };
    let block = [0x5Au8; 4096];
    let mut n = 0u64;
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while let Ok(k @ 1..) = f.write(&block) {
            n += k as u64;
        }
    }
    let _ = f.sync_all();
    n
}
