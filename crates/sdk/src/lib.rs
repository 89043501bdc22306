//! The service side of the understudy agent contract, for services written in Rust.
//!
//! An understudy agent starts its service, tells it whether it is the group's active replica,
//! tells a standby when it becomes active, and asks it to stop. This crate is that contract,
//! once; the built-in services (price server, FIX gateway, demo service) use it, and
//! `docs/service-contract.md` says the same for services in other languages.
//!
//! # The contract
//!
//! **Environment.** The agent starts the service with `UNDERSTUDY_ROLE` (`active` or
//! `standby`), `UNDERSTUDY_EPOCH` (the fencing epoch), `UNDERSTUDY_GROUP`, `UNDERSTUDY_NODE` and
//! `UNDERSTUDY_ADMIN` (the agent's admin API, `IP:port`). One rule for everything else
//! ([`Env::from_lookup`]):
//! - none of them set: **stand-alone**, active at epoch 0, and [`init`] says so on stderr;
//! - set, but `UNDERSTUDY_ROLE` missing or not `active`/`standby`, `UNDERSTUDY_EPOCH` missing
//!   or not an unsigned integer, `UNDERSTUDY_ADMIN` not `IP:port` or missing for a standby:
//!   [`EnvError`] naming the variable and the reason; the binary exits with [`EXIT_BAD_ENV`] (2).
//!
//! **Activation signal** (`service.activate_signal`, default `SIGUSR1`, [`signals::ACTIVATE`]).
//! Its default action kills, and the agent sends it as soon as `/proc` shows it blocked, caught or
//! ignored. [`init`] blocks it in its first system call, installs the handler and unblocks it, so
//! a signal sent at any moment after the process started is received once, as
//! [`Notice::Activate`]. Call [`init`] first in `main`, before any thread or async runtime exists.
//!
//! **The new epoch.** A standby told it is active reads its epoch from the agent:
//! `GET http://$UNDERSTUDY_ADMIN/status`, field `epoch`, retried until the agent reports `Hot`
//! with an epoch above the one the service had, for at most [`EPOCH_WAIT`]. Then it acknowledges:
//! `POST http://$UNDERSTUDY_ADMIN/service/active-ack` with `{"pid":N,"epoch":N}`, which the agent
//! records in its takeover timeline (an agent without the endpoint answers 404: not an error).
//! [`Service::activate`] does both. A service that cannot learn its epoch must not act; it exits
//! non-zero, and its agent fails over.
//!
//! **Stop.** `SIGTERM` (or `SIGINT`) is [`Notice::Stop`] and sets the [`Shutdown`] flag: stop
//! serving, exit 0. The agent kills the whole process group after its `service.stop_timeout`.
//!
//! **Fenced.** Everything the active sends downstream carries its epoch. A service that finds a
//! newer epoch downstream (a FIX store fence, a price client that saw a higher epoch) is stale:
//! it stops acting at once and exits with [`EXIT_FENCED`] (3).
//!
//! # Example
//!
//! ```no_run
//! use understudy_sdk::{Notice, Role};
//!
//! fn main() -> std::process::ExitCode {
//!     // First: blocks the signals before anything could send them, reads the environment.
//!     let mut service = match understudy_sdk::init() {
//!         Ok(s) => s,
//!         Err(e) => {
//!             eprintln!("my-service: {e}");
//!             return std::process::ExitCode::from(e.exit_code());
//!         }
//!     };
//!     if service.role() == Role::Active {
//!         let _ = service.acknowledge(); // recorded in the agent's timeline
//!     }
//!     while let Some(notice) = service.recv() {
//!         match notice {
//!             Notice::Activate => match service.activate() {
//!                 Ok(epoch) => println!("active at epoch {epoch}"),
//!                 Err(e) => {
//!                     eprintln!("my-service: {e}");
//!                     return std::process::ExitCode::from(1);
//!                 }
//!             },
//!             Notice::Stop => break,
//!         }
//!     }
//!     std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! Layout: [`env`](mod@env) (the rule), [`signals`] (block, handle, notices), [`agent`] (the two HTTP
//! calls, blocking and, with the default `tokio` feature, async).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod env;
pub mod signals;

use std::time::Duration;

pub use agent::{Ack, Agent, AgentError};
pub use env::{Env, EnvError, Role};
pub use nix::sys::signal::Signal;
pub use signals::{Notice, Shutdown, SignalError};
/// The agent's `GET /status` ([`Agent::status`]), typed as the agent writes it.
pub use understudy_status::{State, Status};

/// Exit code for an unusable environment (or configuration).
pub const EXIT_BAD_ENV: u8 = 2;
/// Exit code of a service that found a newer epoch downstream and stopped acting.
pub const EXIT_FENCED: u8 = 3;
/// How long [`Service::activate`] waits for the agent to report the new epoch by default. The
/// agent publishes it before signalling, so the first answer is normally the one. Waiting is
/// safe: the service does not act meanwhile, and while its agent holds the lock nobody else can.
/// Giving up early is not better: an agent paused for a moment (SIGSTOP, a stalled machine) would
/// find its service gone when it resumes, and fail over for nothing.
pub const EPOCH_WAIT: Duration = Duration::from_secs(10);
/// Bound on one call to the agent.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The environment breaks the rule.
    #[error("bad environment: {0}")]
    Env(#[from] EnvError),
    /// The signals could not be set up.
    #[error(transparent)]
    Signals(#[from] SignalError),
}

impl InitError {
    /// The code to exit with: [`EXIT_BAD_ENV`] for the environment, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Env(_) => EXIT_BAD_ENV,
            InitError::Signals(_) => 1,
        }
    }
}

/// Sets up the contract with the default activation signal (`SIGUSR1`). Call it first in `main`.
pub fn init() -> Result<Service, InitError> {
    init_with(signals::ACTIVATE)
}

/// [`init`] for an agent configured with another `service.activate_signal`.
pub fn init_with(activate: Signal) -> Result<Service, InitError> {
    // Signals before the environment: whatever happens next, a signal cannot kill us by default.
    let listener = signals::listen(activate)?;
    let env = Env::from_env()?;
    if env.standalone {
        eprintln!(
            "understudy-sdk: no UNDERSTUDY_* variables: running stand-alone, active at epoch 0"
        );
    }
    let agent = env.admin.map(|a| Agent::new(a, CALL_TIMEOUT));
    if listener.ignored_at_entry && env.role == Role::Standby {
        if let Some(agent) = &agent {
            catch_up(agent.clone(), env.epoch, listener.sender.clone());
        }
    }
    Ok(Service {
        role: env.role,
        epoch: env.epoch,
        env,
        agent,
        listener,
        epoch_wait: EPOCH_WAIT,
    })
}

/// Asks the agent, on a thread of its own, whether it already went Hot: if so, its activation
/// signal may have been discarded while the signal was still ignored, so the notice is queued
/// here instead. The agent publishes Hot before it signals, so a lost signal is visible; and the
/// handler is installed by now, so a Warm answer means any signal to come will arrive. A
/// duplicate (the signal did arrive) is harmless: an active service ignores [`Notice::Activate`].
fn catch_up(agent: Agent, epoch: u64, notices: tokio::sync::mpsc::Sender<Notice>) {
    let ask = move || {
        let mut pause = Duration::from_millis(5);
        let mut last = None;
        // Retried on errors only: the agent that started us is up, but may be busy.
        for _ in 0..6 {
            match agent.status() {
                Ok(st) => {
                    if agent::judge(&st, epoch).is_some() {
                        let _ = notices.try_send(Notice::Activate);
                    }
                    return;
                }
                Err(e) => last = Some(e),
            }
            // A plain thread: no async clock here.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(pause);
            pause *= 2;
        }
        if let Some(e) = last {
            tracing::warn!("cannot ask the agent whether it is already Hot: {e}");
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("understudy-catch-up".into())
        .spawn(ask)
    {
        tracing::warn!("cannot ask the agent whether it is already Hot: {e}");
    }
}

/// A service's view of the contract: its role and epoch now, the notices, the agent.
pub struct Service {
    env: Env,
    role: Role,
    epoch: u64,
    agent: Option<Agent>,
    listener: signals::Listener,
    epoch_wait: Duration,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("role", &self.role)
            .field("epoch", &self.epoch)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// The environment as read at start.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The role now: the starting role until [`Service::activate`] succeeds.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The epoch now: the starting one until [`Service::activate`] succeeds.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The agent's admin API client; `None` stand-alone.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// Changes how long [`Service::activate`] waits for the new epoch.
    pub fn set_epoch_wait(&mut self, wait: Duration) {
        self.epoch_wait = wait;
    }

    /// The stop request, to hand to whatever must end on it.
    pub fn shutdown(&self) -> Shutdown {
        self.listener.shutdown.clone()
    }

    /// The next notice, blocking the thread. Not inside an async runtime: use [`Service::next`].
    /// `None` only if the signal thread is gone.
    pub fn recv(&mut self) -> Option<Notice> {
        self.listener.notices.blocking_recv()
    }

    /// The next notice (under any executor).
    pub async fn next(&mut self) -> Option<Notice> {
        self.listener.notices.recv().await
    }

    /// After [`Notice::Activate`]: waits for the agent to report `Hot` with an epoch above ours,
    /// takes it, and acknowledges it (a failed acknowledgement is logged, not returned). An
    /// active service gets its epoch back at once (a repeated signal changes nothing).
    pub fn activate(&mut self) -> Result<u64, AgentError> {
        if self.role == Role::Active {
            return Ok(self.epoch);
        }
        let agent = self.agent.as_ref().ok_or(AgentError::NoAgent)?;
        let epoch = agent.wait_for_epoch(self.epoch, self.epoch_wait)?;
        self.became_active(epoch);
        let ack = self.acknowledge();
        log_ack(ack, epoch);
        Ok(epoch)
    }

    /// Tells the agent this process acts as the active at [`Service::epoch`]. For a service
    /// started active, call it once it serves; [`Service::activate`] calls it itself.
    pub fn acknowledge(&self) -> Result<Ack, AgentError> {
        match &self.agent {
            Some(agent) => agent.acknowledge(std::process::id(), self.epoch),
            None => Ok(Ack::NoAgent),
        }
    }

    fn became_active(&mut self, epoch: u64) {
        self.role = Role::Active;
        self.epoch = epoch;
    }
}

#[cfg(feature = "tokio")]
impl Service {
    /// [`Service::activate`] on tokio.
    pub async fn activate_async(&mut self) -> Result<u64, AgentError> {
        if self.role == Role::Active {
            return Ok(self.epoch);
        }
        let agent = self.agent.as_ref().ok_or(AgentError::NoAgent)?;
        let epoch = agent
            .wait_for_epoch_async(self.epoch, self.epoch_wait)
            .await?;
        self.became_active(epoch);
        let ack = self.acknowledge_async().await;
        log_ack(ack, epoch);
        Ok(epoch)
    }

    /// [`Service::acknowledge`] on tokio.
    pub async fn acknowledge_async(&self) -> Result<Ack, AgentError> {
        match &self.agent {
            Some(agent) => {
                agent
                    .acknowledge_async(std::process::id(), self.epoch)
                    .await
            }
            None => Ok(Ack::NoAgent),
        }
    }
}

/// The acknowledgement is for the agent's timeline; the service is active either way.
fn log_ack(ack: Result<Ack, AgentError>, epoch: u64) {
    match ack {
        Ok(Ack::Recorded) => tracing::debug!(epoch, "activation acknowledged"),
        Ok(Ack::NotSupported | Ack::NoAgent) => {}
        Err(e) => tracing::warn!(epoch, "cannot acknowledge the activation: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let env = InitError::Env(EnvError::Missing {
            var: env::EPOCH,
            because: "test".into(),
        });
        assert_eq!(env.exit_code(), EXIT_BAD_ENV);
        assert!(env.to_string().contains("UNDERSTUDY_EPOCH"), "{env}");
        assert_eq!(
            InitError::Signals(SignalError::Unusable(Signal::SIGKILL)).exit_code(),
            1
        );
    }
}
