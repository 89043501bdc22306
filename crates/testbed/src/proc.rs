//! Processes the harness starts, and what it reads about processes from `/proc`.
//!
//! Everything the harness starts leads a process group of its own ([`spawn`]), so that one
//! `SIGKILL` to the group also takes whatever the process started (an `sh -c` wrapper's
//! program, `ip netns exec`'s command). Being outside the terminal's foreground group, such a
//! process would not get the terminal's Ctrl-C: the first spawn therefore installs a handler
//! for SIGINT, SIGTERM and SIGHUP that kills every group still running before the driver dies.
//! A long campaign can ask for the first such signal to be only noted ([`defer_interrupts`]),
//! so that it stops at a safe point and reports; a second one still kills at once.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Process groups started by [`spawn`] and not yet killed: what the signal handler kills.
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static HANDLER: Once = Once::new();
/// File systems the harness mounted and has not unmounted: unmounted by the signal handler
/// too, since a killed driver never runs their `Drop`.
static MOUNTS: Mutex<BTreeSet<std::path::PathBuf>> = Mutex::new(BTreeSet::new());
/// Whether the first interrupt is only noted (see [`defer_interrupts`]).
static DEFER: AtomicBool = AtomicBool::new(false);
/// The first interrupt noted while deferring, 0 for none.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    // The set only holds numbers: a panic while it was locked leaves it usable.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn mounts() -> std::sync::MutexGuard<'static, BTreeSet<std::path::PathBuf>> {
    MOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes a mount for the signal handler to undo ([`crate::Tmpfs`]).
pub(crate) fn track_mount(dir: &Path, mounted: bool) {
    install_handler();
    if mounted {
        mounts().insert(dir.to_path_buf());
    } else {
        mounts().remove(dir);
    }
}

fn install_handler() {
    HANDLER.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            // Without the handler a Ctrl-C leaves the children running; nothing else changes.
            return;
        };
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if DEFER.load(Ordering::SeqCst)
                    && INTERRUPTED
                        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    eprintln!(
                        "{}: stopping at the next safe point; send it again to kill everything now",
                        signal_name(sig)
                    );
                    continue;
                }
                for pgid in live().iter() {
                    let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
                }
                for dir in mounts().iter() {
                    let _ = Command::new("umount").arg("-l").arg(dir).status();
                }
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        });
    });
}

/// From now on the first SIGINT, SIGTERM or SIGHUP is only noted, for [`interrupted`] to
/// report; the driver stops at its next safe point (a drill: after the current fault, with
/// every SIGSTOPped process continued) and cleans up as usual. A second signal kills every
/// group at once, as without deferral.
pub fn defer_interrupts() {
    install_handler();
    DEFER.store(true, Ordering::SeqCst);
}

/// The signal noted since [`defer_interrupts`], if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// "SIGINT (Ctrl-C)", "SIGTERM" or "SIGHUP" for the handler's signals.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(Signal::SIGINT) => "SIGINT (Ctrl-C)".into(),
        Ok(s) => s.as_str().into(),
        Err(_) => format!("signal {sig}"),
    }
}

/// Starts `cmd` as the leader of a new process group; [`stop_child`] (or a [`Proc`]) kills
/// the group.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    install_handler();
    let child = cmd.process_group(0).spawn()?;
    if let Ok(pid) = i32::try_from(child.id()) {
        live().insert(pid);
    }
    Ok(child)
}

/// `SIGKILL` to the child's process group when [`spawn`] made it lead one, else to the child
/// alone; then reaps it.
pub fn stop_child(child: &mut Child) {
    let leader = i32::try_from(child.id())
        .ok()
        .filter(|pid| live().remove(pid));
    match leader {
        // The group may outlive its leader (an `sh -c` wrapper's program): killed all the same.
        Some(pgid) => {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        None => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// A child process whose process group is killed when it is dropped, so that a failing test
/// or benchmark leaves nothing running.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` in a process group of its own (see [`spawn`]).
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        spawn(cmd).map(Proc)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// True once the process has exited (it is then reaped).
    pub fn exited(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }

    /// Kills the process group now and reaps the process.
    pub fn kill(&mut self) {
        stop_child(&mut self.0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_child(&mut self.0);
    }
}

/// A command running the `understudy` binary `exe` with `args`, stdin closed, outside any
/// agent's environment: a driver run from inside an agent's service must not hand its role to
/// what it starts.
pub fn understudy(exe: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null());
    without_service_env(&mut cmd);
    cmd
}

/// Removes from `cmd`'s environment the variables an agent gives its service, so that a
/// harness run from inside a service (or a test of the environment rule) starts clean.
pub fn without_service_env(cmd: &mut Command) -> &mut Command {
    for k in [
        "UNDERSTUDY_ROLE",
        "UNDERSTUDY_EPOCH",
        "UNDERSTUDY_GROUP",
        "UNDERSTUDY_NODE",
        "UNDERSTUDY_ADMIN",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

/// `cmd`'s stdout and stderr appended to `log`.
pub fn log_to(cmd: &mut Command, log: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdout(f.try_clone()?).stderr(f);
    Ok(())
}

/// True while `pid` exists and is not a zombie (a zombie acts no more; our PID 1 may not reap),
/// or is a zombie main thread whose other threads still run.
pub fn alive(pid: u32) -> bool {
    match stat_after_comm(pid)
        .as_deref()
        .map(|f| f.split_whitespace().next())
    {
        // A main thread that is a zombie while other threads of the process still run (a
        // multi-threaded process being killed): it still holds its files and sockets.
        Some(Some("Z" | "X")) => live_threads(pid) > 1,
        Some(Some(_)) => true,
        Some(None) | None => false,
    }
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (which may itself
/// hold spaces and parentheses): state, ppid, pgrp, …
fn stat_after_comm(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(s.rsplit_once(')')?.1.to_owned())
}

/// Field `n` (from 0: state, ppid, pgrp) after the command name, as a number.
fn stat_number(pid: u32, n: usize) -> Option<u32> {
    stat_after_comm(pid)?
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

/// Every live process for which `pick` holds, sorted.
fn live_pids_where(pick: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|pid| pick(*pid) && alive(*pid))
        .collect();
    out.sort_unstable();
    out
}

/// Threads listed for `pid` (its main thread included, zombie or not); 0 when it is gone.
fn live_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The names of `pid`'s threads, as the kernel keeps them (at most 15 bytes); empty when it
/// is gone.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}

/// The process group id of `pid`.
pub fn pgid_of(pid: u32) -> Option<u32> {
    stat_number(pid, 2)
}

/// Every live process in process group `pgid`.
pub fn pids_in_group(pgid: u32) -> Vec<u32> {
    live_pids_where(|pid| pgid_of(pid) == Some(pgid))
}

/// Every live child of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    live_pids_where(|pid| stat_number(pid, 1) == Some(parent))
}

/// Resident memory of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The environment of a live process.
pub fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Processes a driver stopped (SIGSTOP) and has not continued yet. A stopped process cannot
/// act on SIGTERM and leaves whoever waits for it waiting, so whatever owns this continues them
/// all before it stops anything ([`Stopped::resume_all`]); they are continued on drop too.
#[derive(Debug, Default)]
pub struct Stopped(Vec<u32>);

impl Stopped {
    /// Sends `sig` to `pid`, remembering it after SIGSTOP and forgetting it at SIGCONT.
    pub fn signal(&mut self, pid: u32, sig: Signal) -> anyhow::Result<()> {
        use anyhow::Context;
        let raw = i32::try_from(pid).context("pid out of range")?;
        if sig == Signal::SIGCONT {
            // Forgotten even if the process is gone: its pid may be reused by then.
            self.0.retain(|p| *p != pid);
        }
        kill(Pid::from_raw(raw), sig).with_context(|| format!("kill -{sig} {pid}"))?;
        if sig == Signal::SIGSTOP {
            self.0.push(pid);
        }
        Ok(())
    }

    /// SIGCONT to every process still stopped.
    pub fn resume_all(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGCONT);
            }
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.resume_all();
    }
}

/// Sends `sig` to `pid`; panics when it cannot (for tests).
pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Waits for a child to exit within `timeout`; if it does not, kills and reaps it and panics
/// with the message `why` builds.
pub fn exit_within(
    child: &mut Child,
    timeout: Duration,
    why: impl FnOnce() -> String,
) -> ExitStatus {
    match wait_exit(child, timeout) {
        Some(st) => st,
        None => {
            stop_child(child);
            panic!("{}", why());
        }
    }
}

/// Waits for a child to exit within `timeout`; None if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        crate::clock::pause(Duration::from_millis(2));
    }
}

/// Runs `exe` to completion with these arguments; (exit code, stdout, stderr). Panics when it
/// cannot be run (for tests).
pub fn run_cli(exe: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid an `sh -c` child printed: its own child's, running in the background.
    fn grandchild(p: &mut Proc) -> u32 {
        use std::io::BufRead;
        let out = p.0.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read the pid");
        line.trim().parse().expect("a pid")
    }

    #[test]
    fn dropping_a_proc_kills_what_its_process_started() {
        let mut p = Proc::spawn(
            Command::new("sh")
                .args(["-c", "sleep 100 & echo $!; wait"])
                .stdout(Stdio::piped()),
        )
        .expect("sh");
        let pid = grandchild(&mut p);
        assert!(alive(pid), "sleep {pid} runs");
        assert_eq!(pgid_of(pid), Some(p.id()), "in the group the child leads");
        drop(p);
        assert!(
            crate::clock::wait_until(Duration::from_secs(5), || !alive(pid)),
            "sleep {pid} outlived the dropped Proc"
        );
    }

    #[test]
    fn a_child_started_elsewhere_is_killed_alone() {
        let child = Command::new("sleep").arg("100").spawn().expect("sleep");
        let pid = child.id();
        assert_ne!(pgid_of(pid), Some(pid), "not a group leader");
        drop(Proc(child));
        assert!(!alive(pid), "sleep {pid} still runs");
    }
}
