//! Service supervision for understudy: start the protected program, tell it when it becomes
//! active, stop it, watch its health, and make sure it never outlives its agent.
//!
//! Layout:
//! - [`guardian`]: the tiny process (our own binary, `understudy __guard`) that sits between the
//!   agent and the service. It leads the service's process group and kills the whole group the
//!   moment its lifeline socket to the agent reaches EOF — which the kernel guarantees when the
//!   agent dies, even by `kill -9`.
//! - [`supervisor`]: the agent side: spawn through the guardian, signal, graceful stop, exit events.
//! - [`health`]: periodic health checks (a command or an HTTP GET) with timeout and threshold.
//! - [`procwatch`]: facts about other processes (can it still act, is it that node's service,
//!   does it handle the activate signal yet) and waiting for one to end on a pidfd.
//! - [`oneshot`]: a one-shot command (the activate hook) under a guardian, waited for.

#![warn(missing_docs)]

pub mod guardian;
pub mod health;
pub mod oneshot;
pub mod procwatch;
pub mod supervisor;

pub use health::{spawn_health, HealthCheck, HealthConfig, HealthEvent};
pub use oneshot::run_guarded;
pub use supervisor::{ExitReason, Fence, ServiceEvent, ServiceSpec, Supervisor};

/// Errors of a supervision operation.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service (or its guardian) could not be started.
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        /// `argv[0]` of the service.
        command: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The guardian did not report the service's pid (the command could not be executed, or the
    /// guardian died).
    #[error("service {command:?} did not start: {reason}")]
    NoStart {
        /// `argv[0]` of the service.
        command: String,
        /// Why, in words (e.g. the exec error the guardian reported).
        reason: String,
    },
    /// A signal could not be delivered.
    #[error("cannot signal service pid {pid}: {source}")]
    Signal {
        /// The service pid.
        pid: u32,
        /// What the OS said.
        #[source]
        source: nix::Error,
    },
    /// No service is running.
    #[error("no service is running")]
    NotRunning,
    /// A service is running already; stop it first.
    #[error("a service is already running (pid {pid:?})")]
    AlreadyRunning {
        /// Its pid, if it was reported yet.
        pid: Option<u32>,
    },
    /// The service is being started and its pid is not known yet, so it cannot be signalled.
    #[error("the service is starting and its pid is not known yet")]
    Starting,
}
