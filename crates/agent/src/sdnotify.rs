//! systemd's notification protocol (`sd_notify`), for `Type=notify` units: `READY=1` once the
//! agent serves its admin API and has joined its group, `WATCHDOG=1` from the event loop (so a
//! stuck loop is restarted by systemd), `STOPPING=1` at a graceful stop, `STATUS=…` for
//! `systemctl status`.
//!
//! The variables are taken out of the environment at the very start of `main`, while the process
//! has one thread: otherwise the service, which inherits the agent's environment, could notify
//! systemd in the agent's name.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Where to notify, captured from the environment.
#[derive(Debug, Clone)]
pub struct Target {
    /// `NOTIFY_SOCKET`: a path, or an abstract name starting with `@`.
    socket: String,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

static TARGET: OnceLock<Option<Target>> = OnceLock::new();

/// Take `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` out of the environment. Call first
/// thing in `main`, before any thread exists (removing variables is not thread-safe).
pub fn take_from_env() {
    let socket = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|u| *u > 0);
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(v);
    }
    let _ = TARGET.set(socket.map(|socket| {
        Target {
            socket,
            watchdog: usec
                .filter(|_| for_us)
                .map(|u| Duration::from_micros(u / 2)),
        }
    }));
}

fn target() -> Option<&'static Target> {
    TARGET.get().and_then(Option::as_ref)
}

/// How often to send `WATCHDOG=1`, when systemd asked for it.
pub fn watchdog_interval() -> Option<Duration> {
    target().and_then(|t| t.watchdog)
}

/// True when running under a notify-aware supervisor.
pub fn enabled() -> bool {
    target().is_some()
}

/// Send one notification (`READY=1`, `WATCHDOG=1`, `STATUS=…`); nothing when not under systemd.
/// Errors are returned for logging; they never stop the agent.
pub fn notify(state: &str) -> std::io::Result<()> {
    let Some(t) = target() else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = t.socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), PathBuf::from(&t.socket))?;
    }
    Ok(())
}

/// [`notify`], with a failure logged instead of returned: a notification is never worth
/// stopping for (systemd then restarts a node that never said READY, which is the point).
pub fn send(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(
            "cannot notify systemd ({}): {e}",
            state.lines().next().unwrap_or("")
        );
    }
}
