//! The host built into `understudy serve`: it runs the agents placed on this machine, and plain
//! servers, as separate OS processes, each the leader of its own session so that it outlives a
//! restart of the control plane (the control plane is not in the data path: a trading server or
//! its failover must never stop because the dashboard restarted).
//!
//! Every process it starts carries `UNDERSTUDY_CONTROL_KEY=<key>` in its environment, and its pid
//! is stored under that key; a pid counts as ours only while that process still has that key, so a
//! pid reused by an unrelated process after a reboot is never signalled.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::model::ServiceDef;

/// The environment variable that marks processes this host started.
pub const KEY_VAR: &str = "UNDERSTUDY_CONTROL_KEY";

/// The pids this process started that its reaper has not collected yet, each with the key it
/// was started under. Each is certainly that process (the kernel hands a pid out again only
/// once it is reaped), whatever /proc lets this user read: a server that made itself
/// non-dumpable (file capabilities, setuid, `PR_SET_DUMPABLE`) closes its environment, and under
/// `hidepid` its whole /proc entry, to a host not running as root, and was taken for ended,
/// left running and counted stopped (review 42, M2; review 44, M2).
static UNREAPED: std::sync::Mutex<std::collections::BTreeMap<u32, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn unreaped() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<u32, String>> {
    // A set of numbers is whole whatever panicked while holding it.
    UNREAPED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The program could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file the process needs could not be written.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The local host.
#[derive(Debug, Clone)]
pub struct LocalHost {
    /// The `understudy` binary (agents are `understudy agent --config FILE`).
    pub exe: PathBuf,
    /// The control plane's data directory; logs go to `<data>/logs/`.
    pub data: PathBuf,
}

/// The key of node `node`'s agent.
pub fn agent_key(node: &str) -> String {
    format!("agent:{node}")
}

/// The key of server `server`'s plain process.
pub fn server_key(server: &str) -> String {
    format!("server:{server}")
}

impl LocalHost {
    /// Where a process's output goes.
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.data
            .join("logs")
            .join(format!("{}.log", key.replace(':', "-")))
    }

    fn spawn(&self, key: &str, mut cmd: Command, what: &str) -> Result<u32, HostError> {
        let log = self.log_path(key);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|source| HostError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| HostError::Io {
                path: log.clone(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| HostError::Io {
            path: log.clone(),
            source,
        })?;
        cmd.env(KEY_VAR, key)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own session: no terminal signal aimed at `understudy serve` reaches it, and
            // killpg(pid) reaches it and everything it started that stayed in its group.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| HostError::Spawn {
            what: what.to_string(),
            source,
        })?;
        let pid = child.id();
        unreaped().insert(pid, key.to_string());
        // Reap it when it ends, so a dead process never shows as a zombie that /proc still lists.
        // It leaves the set while it is still a zombie (WNOWAIT), before its pid is free.
        let reaper = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let id = || nix::sys::wait::Id::Pid(Pid::from_raw(pid as i32));
                let flags =
                    nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
                loop {
                    match nix::sys::wait::waitid(id(), flags) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        // Reaped by someone else (SIGCHLD ignored): its pid may be free already.
                        Err(e) => tracing::warn!(pid, "waiting for a child: {e}"),
                        Ok(_) => {}
                    }
                    break;
                }
                unreaped().remove(&pid);
                let _ = child.wait();
            });
        if reaper.is_err() {
            // No reaper: /proc alone speaks for it, as for what an earlier host started.
            unreaped().remove(&pid);
        }
        Ok(pid)
    }

    /// Start an agent on `config`.
    pub fn start_agent(&self, node: &str, config: &Path) -> Result<u32, HostError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("agent").arg("--config").arg(config);
        self.spawn(&agent_key(node), cmd, &format!("the agent of {node}"))
    }

    /// Start a plain server: its command, its environment, no failover.
    pub fn start_plain(&self, server: &str, svc: &ServiceDef) -> Result<u32, HostError> {
        let Some((prog, args)) = svc.command.split_first() else {
            return Err(HostError::Spawn {
                what: server.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let mut cmd = Command::new(prog);
        cmd.args(args).envs(&svc.env);
        self.spawn(&server_key(server), cmd, &format!("server {server}"))
    }

    /// True while `pid` runs and is the process stored under `key`.
    pub fn is_ours(pid: u32, key: &str) -> bool {
        // A child of this process not reaped yet is what it was started as, whatever /proc
        // shows; /proc speaks for what an earlier host process started (and for the services
        // agents release, which are theirs).
        if let Some(k) = unreaped().get(&pid) {
            return k == key;
        }
        if !running(pid) {
            return false;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let want = format!("{KEY_VAR}={key}");
        env.split(|b| *b == 0).any(|e| e == want.as_bytes())
    }

    /// Stop the process group of `pid` (if it is still ours): SIGTERM, then SIGKILL after
    /// `grace`. Returns once it is gone (or after SIGKILL and a short wait). The group is the
    /// process's own for what this host started; for an adopted service (stop failover) it is its
    /// guardian's, which ignores SIGTERM and exits with the service.
    pub async fn stop(pid: u32, key: &str, grace: Duration) {
        if !Self::is_ours(pid, key) {
            return;
        }
        let Ok(raw) = i32::try_from(pid) else {
            return;
        };
        let Ok(pg) = nix::unistd::getpgid(Some(Pid::from_raw(raw))) else {
            return;
        };
        let _ = killpg(pg, Signal::SIGTERM);
        // An unreaped child runs (or is a zombie for an instant) even where /proc hides it.
        let leader_runs = || unreaped().contains_key(&pid) || running(pid);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !leader_runs() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The leader gone, what is left of its group (a child that ignores SIGTERM) is
        // killed too: a stopped server must not live on in part (review 32, L4). The group's
        // members are looked for first, so that its id cannot have been reused.
        if leader_runs() || group_has_members(pg.as_raw()) {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        for _ in 0..100 {
            if !leader_runs() && !group_has_members(pg.as_raw()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// True while some process that is not a zombie is in process group `pg`.
fn group_has_members(pg: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After the command name: state, ppid, pgrp.
        let mut f = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .unwrap_or("")
            .split(' ');
        let state = f.next().unwrap_or("Z");
        let pgrp = f.nth(1).and_then(|g| g.parse::<i32>().ok());
        pgrp == Some(pg) && state != "Z" && state != "X"
    })
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name, which may hold spaces.
        Ok(s) => s
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .map(|c| c != 'Z' && c != 'X')
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The last `n` lines of a log file, for an error that says why a process did not come up.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
