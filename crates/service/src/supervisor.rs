//! The agent's side of supervision.
//!
//! [`Supervisor::start`] spawns the guardian (see [`crate::guardian`]) as the leader of a new
//! process group, with one end of a socketpair (the lifeline) as its stdin, and returns at once.
//! A task reads the guardian's reports from the agent's end and turns them into
//! [`ServiceEvent`]s. Nothing here blocks the caller: stopping is a signal now and a timer later,
//! and every outcome arrives through the event channel.
//!
//! The guardian's pid is the service's process group id. The supervisor only signals that group
//! while the guardian is not yet reaped: a zombie keeps its pid, so the group id cannot have been
//! reused by an unrelated process.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::guardian::Lifeline;
use crate::ServiceError;

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's argv; the first element is the program (looked up in `PATH`).
    pub command: Vec<String>,
    /// Variables added on top of the agent's own environment.
    pub env: Vec<(String, String)>,
    /// The executable that runs the guardian (normally the agent's own binary).
    pub guardian_exe: PathBuf,
    /// Arguments that put `guardian_exe` in guardian mode, before the command (e.g. `["__guard"]`).
    pub guardian_args: Vec<String>,
    /// Started as a standby. Its guardian is not given a grant's deadline that has already
    /// passed: that grant ended before the service started (a standby restarted right after its
    /// node was demoted would otherwise be killed at once, over and over), and the next grant
    /// arms the running guardian before the service is told anything. A service started as the
    /// active one gets any deadline, passed or not, and is never spawned past a passed one.
    pub standby: bool,
}

/// Why a service is no longer running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// It could not be started (the guardian's message, e.g. the exec error).
    StartFailed(String),
    /// The guardian disappeared without reporting how the service ended.
    GuardianLost(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exited with code {code}"),
            ExitReason::Signal(sig) => match Signal::try_from(*sig) {
                Ok(signal) => write!(f, "killed by {}", signal.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExitReason::StartFailed(why) => write!(f, "failed to start: {why}"),
            ExitReason::GuardianLost(why) => write!(f, "lost its guardian: {why}"),
        }
    }
}

/// What happened to a service started by a [`Supervisor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// The service is running with this pid.
    Started {
        /// The generation returned by [`Supervisor::start`].
        generation: u64,
        /// The service's pid.
        pid: u32,
    },
    /// The service (and everything in its process group) is gone. Sent exactly once per start.
    Exited {
        /// The generation returned by [`Supervisor::start`].
        generation: u64,
        /// The service's pid, if it was started.
        pid: Option<u32>,
        /// Why it ended.
        reason: ExitReason,
        /// Its last lines on stderr (at most [`crate::guardian::TAIL_LINES`]), oldest first.
        stderr: Vec<String>,
    },
}

/// A running guardian, as seen by the agent.
struct Running {
    generation: u64,
    /// The guardian's pid, which is the process group id of the guardian and the service.
    pgid: Pid,
    /// The service's pid, once the guardian reported it.
    pid: Option<Pid>,
    /// The runtime the watcher task runs on, for stop timers.
    runtime: tokio::runtime::Handle,
    /// Pending SIGKILL timers of [`Supervisor::begin_stop`], cancelled when the service exits.
    stop_timers: Vec<AbortHandle>,
    /// Whether we sent SIGKILL to the group. That kills the guardian too, before it can report;
    /// the service then died of the same SIGKILL.
    group_killed: bool,
}

impl Running {
    /// Sends `SIGKILL` to the whole group. Callers hold the shared lock, and the watcher removes
    /// this `Running` under it before reaping the guardian, so `pgid` is still ours.
    fn kill_group(&mut self) {
        self.group_killed = true;
        kill_group(self.pgid);
    }
}

/// State shared between the [`Supervisor`] and its watcher task.
#[derive(Default)]
struct Shared {
    running: Option<Running>,
}

/// Locks the shared state. Every critical section leaves it consistent, so a poisoned lock (a
/// panic elsewhere) is safe to use.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts, signals and stops one service at a time, through a guardian.
pub struct Supervisor {
    events: UnboundedSender<ServiceEvent>,
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    fence: Fence,
}

/// The deadline past which the service's guardian kills it by itself (see
/// [`crate::guardian`]): set by whoever knows how long the node's grant lasts (the etcd
/// coordinator, from its own thread), and passed on to the current guardian and to every guardian
/// started later. Cloning gives another handle on the same deadline.
#[derive(Clone, Default)]
pub struct Fence {
    inner: Arc<Mutex<FenceState>>,
}

#[derive(Default)]
struct FenceState {
    /// `CLOCK_BOOTTIME` ns; `None`: guardians started from now on get no deadline.
    deadline: Option<u64>,
    /// The last deadline armed, until disarmed: past it, the node's grant is over even if the
    /// agent has not yet processed the news (it may just have been continued after a SIGSTOP).
    grant_until: Option<u64>,
    /// The agent's end of the current guardian's lifeline, and its generation.
    lifeline: Option<(u64, std::os::unix::net::UnixStream)>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Fence")
            .field("deadline", &st.deadline)
            .finish_non_exhaustive()
    }
}

impl Fence {
    fn state(&self) -> MutexGuard<'_, FenceState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service may act until `deadline_ns` (`CLOCK_BOOTTIME`) and must be dead after it.
    pub fn arm(&self, deadline_ns: u64) {
        let mut st = self.state();
        st.deadline = Some(deadline_ns);
        st.grant_until = Some(deadline_ns);
        st.send(Lifeline::Deadline(deadline_ns));
    }

    /// True when a deadline was armed, not disarmed since, and has passed.
    pub fn expired(&self) -> bool {
        let until = self.state().grant_until;
        until.is_some_and(|at| crate::guardian::boottime_ns() >= at)
    }

    /// No deadline any more, for the running guardian and later ones (the service stopped acting).
    pub fn disarm(&self) {
        let mut st = self.state();
        st.deadline = None;
        st.grant_until = None;
        st.send(Lifeline::NoDeadline);
    }

    /// The running guardian stops watching the agent for good (see [`Supervisor::release`]); no
    /// deadline for it or later guardians.
    fn release(&self, generation: u64) {
        let mut st = self.state();
        if st.lifeline.as_ref().map(|(g, _)| *g) == Some(generation) {
            st.send(Lifeline::Release);
            st.lifeline = None;
        }
        st.deadline = None;
        st.grant_until = None;
    }

    /// Later guardians get no deadline; the running one keeps its own and kills at it.
    pub fn forget(&self) {
        self.state().deadline = None;
    }

    /// Takes the lifeline of a guardian about to be started and writes the deadline into it,
    /// for the guardian to read before it spawns the service. Fails when that write fails:
    /// an active service must not start without its deadline.
    fn attach(
        &self,
        generation: u64,
        mut lifeline: std::os::unix::net::UnixStream,
        standby: bool,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let mut st = self.state();
        if let Some(at) = st.deadline {
            if !(standby && crate::guardian::boottime_ns() >= at) {
                lifeline.write_all(Lifeline::Deadline(at).encode().as_bytes())?;
            }
        }
        st.lifeline = Some((generation, lifeline));
        Ok(())
    }

    fn detach(&self, generation: u64) {
        let mut st = self.state();
        if st.lifeline.as_ref().map(|(g, _)| *g) == Some(generation) {
            st.lifeline = None;
        }
    }
}

impl FenceState {
    fn send(&mut self, cmd: Lifeline) {
        use std::io::Write;
        if let Some((generation, sock)) = &mut self.lifeline {
            // The socket is non-blocking and the guardian reads its lines as they come, so a
            // line fits whole; if it ever did not, the guardian keeps the earlier deadline and
            // kills sooner (the safe side).
            if let Err(e) = sock.write_all(cmd.encode().as_bytes()) {
                tracing::warn!(generation, error = %e, "cannot send the deadline to the guardian");
            }
        }
    }
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("generation", &self.generation)
            .field("pgid", &self.pgid())
            .field("pid", &self.pid())
            .finish()
    }
}

impl Supervisor {
    /// Creates a supervisor that reports on `events`.
    pub fn new(events: UnboundedSender<ServiceEvent>) -> Self {
        Supervisor {
            events,
            shared: Arc::default(),
            generation: 0,
            fence: Fence::default(),
        }
    }

    /// The deadline handle of the services this supervisor starts.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Starts `spec` and returns its generation at once; [`ServiceEvent::Started`] follows when
    /// the service runs, then [`ServiceEvent::Exited`]; only `Exited`, without a pid, when it
    /// never ran (an active start past its deadline, a command that cannot be executed). Must
    /// be called within a tokio runtime.
    pub fn start(&mut self, spec: &ServiceSpec) -> Result<u64, ServiceError> {
        let name = spec.command.first().cloned().unwrap_or_default();
        if spec.command.is_empty() {
            return Err(ServiceError::NoStart {
                command: name,
                reason: "the command is empty".into(),
            });
        }
        if let Some(running) = &lock(&self.shared).running {
            return Err(ServiceError::AlreadyRunning {
                pid: running.pid.map(pid_u32),
            });
        }
        let spawn_error = |source| ServiceError::Spawn {
            command: name.clone(),
            source,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| spawn_error(std::io::Error::other(e)))?;

        // Both ends are close-on-exec; the guardian's end becomes its stdin (dup2 clears the flag
        // there), so nothing else we spawn ever holds either end, and the guardian sees EOF
        // exactly when this process dies.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
        ours.set_nonblocking(true).map_err(spawn_error)?;
        // The deadline writer: a second descriptor of our end (non-blocking too: same file).
        let fence_end = ours.try_clone().map_err(spawn_error)?;
        let lifeline = {
            let _guard = runtime.enter();
            tokio::net::UnixStream::from_std(ours).map_err(spawn_error)?
        };

        // The deadline goes into the lifeline before the guardian exists, so the guardian has
        // it before it spawns the service (and never spawns one whose deadline has passed).
        let generation = self.generation + 1;
        self.fence
            .attach(generation, fence_end, spec.standby)
            .map_err(|e| ServiceError::NoStart {
                command: name.clone(),
                reason: format!("cannot give the guardian its deadline: {e}"),
            })?;
        let child = {
            let mut command = tokio::process::Command::new(&spec.guardian_exe);
            command
                .args(&spec.guardian_args)
                .args(&spec.command)
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                // A new group led by the guardian: the service and all its descendants share it,
                // so one kill reaches them all, and terminal signals to the agent's group do not.
                .process_group(0);
            let _guard = runtime.enter();
            match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    self.fence.detach(generation);
                    return Err(spawn_error(e));
                }
            }
            // `command` drops here, closing our copy of the guardian's end: only then can we
            // see EOF when the guardian exits.
        };
        let Some(pgid) = child.id() else {
            // Only when already reaped, which cannot happen before the first wait.
            self.fence.detach(generation);
            return Err(ServiceError::NoStart {
                command: name,
                reason: "the guardian vanished at once".into(),
            });
        };
        let pgid = Pid::from_raw(pgid as i32);

        self.generation = generation;
        lock(&self.shared).running = Some(Running {
            generation,
            pgid,
            pid: None,
            runtime: runtime.clone(),
            stop_timers: Vec::new(),
            group_killed: false,
        });
        tracing::info!(generation, guardian = %pgid, command = ?spec.command, "service starting");
        runtime.spawn(watch(
            child,
            lifeline,
            Arc::clone(&self.shared),
            self.events.clone(),
            generation,
            self.fence.clone(),
        ));
        Ok(generation)
    }

    /// The service's pid, once the guardian reported it and until the service is gone.
    pub fn pid(&self) -> Option<u32> {
        let shared = lock(&self.shared);
        shared.running.as_ref().and_then(|r| r.pid).map(pid_u32)
    }

    /// The service's process group id (the guardian's pid) while it runs.
    pub fn pgid(&self) -> Option<u32> {
        let shared = lock(&self.shared);
        shared.running.as_ref().map(|r| pid_u32(r.pgid))
    }

    /// Whether a service (or its guardian) is still running.
    pub fn is_running(&self) -> bool {
        lock(&self.shared).running.is_some()
    }

    /// The generation of the latest [`start`](Self::start) (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sends `sig` to the service process itself (not its group), at once.
    pub fn signal(&self, sig: Signal) -> Result<(), ServiceError> {
        let shared = lock(&self.shared);
        let running = shared.running.as_ref().ok_or(ServiceError::NotRunning)?;
        let pid = running.pid.ok_or(ServiceError::Starting)?;
        kill(pid, sig).map_err(|source| ServiceError::Signal {
            pid: pid_u32(pid),
            source,
        })
    }

    /// Asks the service to stop with `SIGTERM`, and kills its whole process group with `SIGKILL`
    /// if it is still running after `grace`. Returns at once; [`ServiceEvent::Exited`] follows.
    pub fn begin_stop(&mut self, grace: Duration) {
        let mut shared = lock(&self.shared);
        let Some(running) = shared.running.as_mut() else {
            return;
        };
        // Without a pid the service may still be starting: the group reaches it (the guardian
        // ignores SIGTERM). If it is between fork and exec it misses the signal; the timer below
        // then kills it.
        let target = running.pid.unwrap_or(Pid::from_raw(-running.pgid.as_raw()));
        if let Err(e) = kill(target, Signal::SIGTERM) {
            tracing::debug!(%target, error = %e, "SIGTERM not delivered");
        }
        let generation = running.generation;
        let shared_state = Arc::clone(&self.shared);
        let timer = running.runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            let mut shared = lock(&shared_state);
            if let Some(running) = shared.running.as_mut() {
                if running.generation == generation {
                    tracing::warn!(
                        generation,
                        ?grace,
                        "service did not stop in time, killing it"
                    );
                    running.kill_group();
                }
            }
        });
        running.stop_timers.push(timer.abort_handle());
    }

    /// Hands the running service over (stop failover): its guardian stops watching this agent and
    /// its deadline, so the service outlives the agent as a plain, unfenced server, and this
    /// supervisor forgets it (no stop, no kill, no event). Returns the service's pid, if known.
    pub fn release(&mut self) -> Option<u32> {
        let running = lock(&self.shared).running.take()?;
        for t in &running.stop_timers {
            t.abort();
        }
        self.fence.release(running.generation);
        tracing::info!(generation = running.generation, pid = ?running.pid, "service released: no longer supervised or fenced");
        running.pid.map(pid_u32)
    }

    /// Kills the service's whole process group with `SIGKILL` now. [`ServiceEvent::Exited`]
    /// still follows.
    pub fn kill_now(&mut self) {
        if let Some(running) = lock(&self.shared).running.as_mut() {
            running.kill_group();
        }
    }
}

impl Drop for Supervisor {
    /// A service never outlives its supervisor.
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Sends `SIGKILL` to the process group `pgid`, which must be the group of a guardian not yet
/// reaped.
fn kill_group(pgid: Pid) {
    if let Err(e) = kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGKILL) {
        // ESRCH: everything is gone already.
        tracing::debug!(%pgid, error = %e, "group SIGKILL not delivered");
    }
}

fn pid_u32(pid: Pid) -> u32 {
    pid.as_raw().unsigned_abs()
}

/// One line of the guardian's report.
enum Report {
    Pid(Pid),
    Exit(ExitReason),
    Stderr(String),
}

/// Parses a line written by [`crate::guardian::run`].
fn parse_report(line: &str) -> Option<Report> {
    let (word, rest) = line.split_once(' ')?;
    match word {
        "pid" => rest.parse().ok().map(|p| Report::Pid(Pid::from_raw(p))),
        "error" => Some(Report::Exit(ExitReason::StartFailed(rest.to_owned()))),
        "stderr" => Some(Report::Stderr(rest.to_owned())),
        "exit" => match rest.split_once(' ')? {
            ("code", n) => n.parse().ok().map(|n| Report::Exit(ExitReason::Code(n))),
            ("signal", n) => n.parse().ok().map(|n| Report::Exit(ExitReason::Signal(n))),
            _ => None,
        },
        _ => None,
    }
}

/// Follows one guardian from its first report to its reaping, and emits the events.
async fn watch(
    mut guardian: Child,
    lifeline: tokio::net::UnixStream,
    shared: Arc<Mutex<Shared>>,
    events: UnboundedSender<ServiceEvent>,
    generation: u64,
    fence: Fence,
) {
    let mut lines = BufReader::new(lifeline).lines();
    let mut pid = None;
    let mut reason = None;
    let mut stderr = Vec::new();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match parse_report(&line) {
                Some(Report::Pid(p)) => {
                    pid = Some(p);
                    if let Some(running) = lock(&shared).running.as_mut() {
                        if running.generation == generation {
                            running.pid = Some(p);
                        }
                    }
                    tracing::info!(generation, pid = %p, "service started");
                    let _ = events.send(ServiceEvent::Started {
                        generation,
                        pid: pid_u32(p),
                    });
                }
                Some(Report::Exit(r)) => reason = Some(r),
                Some(Report::Stderr(line)) => {
                    if stderr.len() == crate::guardian::TAIL_LINES {
                        stderr.remove(0);
                    }
                    stderr.push(line);
                }
                None => tracing::warn!(generation, line, "unexpected report from the guardian"),
            },
            // EOF: the guardian has exited (it alone holds the other end).
            Ok(None) => break,
            Err(e) => {
                // Cannot follow the guardian any more; the kill below makes sure nothing runs
                // unsupervised.
                tracing::warn!(generation, error = %e, "cannot read the guardian's lifeline");
                break;
            }
        }
    }

    let group_killed = {
        let mut shared = lock(&shared);
        match shared.running.take_if(|r| r.generation == generation) {
            Some(running) => {
                // Descendants of the service may survive it (a shell's background jobs); kill
                // them while the guardian is unreaped and the group id therefore still ours.
                kill_group(running.pgid);
                for timer in running.stop_timers {
                    timer.abort();
                }
                running.group_killed
            }
            None => false,
        }
    };
    fence.detach(generation);
    if let (true, Some(p)) = (group_killed, pid) {
        if crate::procwatch::waits_uninterruptibly(pid_u32(p)) {
            // Counted as exited all the same: a process with SIGKILL pending never runs user
            // code again (see `procwatch::can_act`). But an operator sees its traces.
            tracing::warn!(generation, pid = %p,
                "the service got SIGKILL inside an uninterruptible wait (state D: a stalled \
                 disk or network file system); it runs no more code, but keeps its sockets \
                 and ports (and its connections open) until the kernel ends that wait");
        }
    }
    let status = guardian.wait().await;

    let reason = match reason {
        Some(reason) => reason,
        // We killed the group, guardian included, so it could not report: the service died of
        // the same SIGKILL.
        None if group_killed => ExitReason::Signal(Signal::SIGKILL as i32),
        None => {
            let how = match &status {
                Ok(status) => describe_status(status),
                Err(e) => format!("could not be waited for ({e})"),
            };
            ExitReason::GuardianLost(format!(
                "the guardian {how} without reporting the service's exit"
            ))
        }
    };
    tracing::info!(generation, pid = ?pid.map(pid_u32), %reason, "service exited");
    let _ = events.send(ServiceEvent::Exited {
        generation,
        pid: pid.map(pid_u32),
        reason,
        stderr,
    });
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitReason::Code(code).to_string(),
        (None, Some(sig)) => format!("was {}", ExitReason::Signal(sig)),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        assert!(matches!(parse_report("pid 42"), Some(Report::Pid(p)) if p.as_raw() == 42));
        assert!(matches!(
            parse_report("exit code 3"),
            Some(Report::Exit(ExitReason::Code(3)))
        ));
        assert!(matches!(
            parse_report("exit signal 9"),
            Some(Report::Exit(ExitReason::Signal(9)))
        ));
        assert!(matches!(
            parse_report("error cannot execute \"x\": No such file"),
            Some(Report::Exit(ExitReason::StartFailed(m))) if m.contains("No such file")
        ));
        assert!(parse_report("exit nonsense 1").is_none());
        assert!(parse_report("garbage").is_none());
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(ExitReason::Code(3).to_string(), "exited with code 3");
        assert_eq!(ExitReason::Signal(9).to_string(), "killed by SIGKILL");
        assert_eq!(ExitReason::Signal(99).to_string(), "killed by signal 99");
    }
}
