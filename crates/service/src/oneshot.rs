//! A one-shot command (the agent's `service.activate_hook`) under a guardian, like the service:
//! it runs in its own process group, and the group is killed when the agent dies, however it
//! dies, or when the caller stops waiting.
//!
//! It is a [`Supervisor`] that starts one command and waits for its exit, so the lifeline, the
//! group kill and the exit report are the service's own, not a second copy.

use tokio::sync::mpsc::unbounded_channel;

use crate::{ExitReason, ServiceError, ServiceEvent, ServiceSpec, Supervisor};

/// Runs `spec` through its guardian and returns how it ended. Dropping the future (a timeout,
/// an aborted task) kills the command's whole process group at once. Must be called within a
/// tokio runtime.
pub async fn run_guarded(spec: &ServiceSpec) -> Result<ExitReason, ServiceError> {
    let (events, mut rx) = unbounded_channel();
    let mut supervisor = Supervisor::new(events);
    supervisor.start(spec)?;
    // The supervisor holds a sender, so the channel stays open until `Exited`, which its watcher
    // sends exactly once per start.
    while let Some(event) = rx.recv().await {
        if let ServiceEvent::Exited { reason, .. } = event {
            return Ok(reason);
        }
    }
    Err(ServiceError::NoStart {
        command: spec.command.first().cloned().unwrap_or_default(),
        reason: "its guardian's reports ended without an exit".into(),
    })
}
