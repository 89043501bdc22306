//! The activation signal and the stop signals, turned into [`Notice`]s.
//!
//! Why blocking comes first: the agent signals a standby as soon as `/proc/PID/status` shows the
//! activation signal blocked, caught or ignored. Blocking it is one system call, so [`crate::init`]
//! does that before anything else, then installs the handlers (a self-pipe read by a dedicated
//! thread), then unblocks it in the calling thread. A signal sent in between stays pending and is
//! delivered to the handler the moment it is unblocked; none is lost and none kills the process.
//! Threads started after the unblock inherit an ordinary mask, so the service's own children do
//! not start with the signals blocked.

use nix::sys::signal::{SigSet, Signal};
use tokio::sync::{mpsc, watch};

/// The agent's default `service.activate_signal`.
pub const ACTIVATE: Signal = Signal::SIGUSR1;
/// The signals that ask the service to stop: SIGTERM from the agent, SIGINT from a terminal.
pub const STOP: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Notices waiting to be read. Every notice of a kind means the same, so when the queue is full
/// a new one is dropped without loss; a stop is also kept in the [`Shutdown`] flag.
const QUEUE: usize = 16;

/// What a signal told the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The node became Hot: learn the new epoch, then act as the active.
    Activate,
    /// Stop cleanly and exit 0 (the agent kills the process group after its stop timeout).
    Stop,
}

/// Why the signals could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The activation signal is one of the stop signals, or one that cannot be caught.
    #[error("{0} cannot be the activation signal")]
    Unusable(Signal),
    /// The signal mask could not be changed.
    #[error("cannot block the service's signals: {0}")]
    Mask(#[source] nix::Error),
    /// The handlers or their thread could not be installed.
    #[error("cannot install the service's signal handlers: {0}")]
    Install(#[source] std::io::Error),
}

/// Blocks the activation signal and the [`STOP`] signals in the calling thread (and so in every
/// thread it starts afterwards). [`crate::init`] does this itself; call it yourself only if your
/// `main` must do something slow before it can call `init`.
pub fn block(activate: Signal) -> Result<(), SignalError> {
    set(activate)?.thread_block().map_err(SignalError::Mask)
}

fn set(activate: Signal) -> Result<SigSet, SignalError> {
    if STOP.contains(&activate) || signal_hook::consts::FORBIDDEN.contains(&(activate as i32)) {
        return Err(SignalError::Unusable(activate));
    }
    let mut set = SigSet::empty();
    set.add(activate);
    for s in STOP {
        set.add(s);
    }
    Ok(set)
}

/// A stop request, shareable: a flag for polling loops and a future for async ones.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// True once a stop signal arrived.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once a stop signal arrived (at once if one already has). Works under any
    /// executor.
    pub async fn requested(&mut self) {
        if self.rx.wait_for(|stop| *stop).await.is_err() {
            // The listener is gone (its `Service` dropped): no stop can come any more.
            std::future::pending::<()>().await;
        }
    }
}

/// The receiving end of the signal thread.
pub(crate) struct Listener {
    pub(crate) notices: mpsc::Receiver<Notice>,
    pub(crate) shutdown: Shutdown,
    /// For notices that do not come from a signal (see [`Listener::ignored_at_entry`]).
    pub(crate) sender: mpsc::Sender<Notice>,
    /// The process started with the activation signal ignored (`trap '' USR1` in a wrapper
    /// script): the agent counts that as handled, and a signal it sent before the handler was
    /// installed was discarded by the kernel, not kept pending.
    pub(crate) ignored_at_entry: bool,
    handle: signal_hook::iterator::Handle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Ends the thread; the handlers stay installed and only feed the closed pipe.
        self.handle.close();
    }
}

/// Blocks, installs the handlers and their thread, unblocks: see the module documentation.
pub(crate) fn listen(activate: Signal) -> Result<Listener, SignalError> {
    let set = set(activate)?;
    set.thread_block().map_err(SignalError::Mask)?;
    let ignored_at_entry = ignored(activate);
    let numbers: Vec<i32> = set.iter().map(|s| s as i32).collect();
    let mut signals =
        signal_hook::iterator::Signals::new(&numbers).map_err(SignalError::Install)?;
    let handle = signals.handle();
    let (tx, notices) = mpsc::channel(QUEUE);
    let sender = tx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("understudy-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let notice = if sig == activate as i32 {
                    Notice::Activate
                } else {
                    stop_tx.send_replace(true);
                    Notice::Stop
                };
                // Full: an identical notice is already waiting. Closed: nobody listens.
                let _ = tx.try_send(notice);
            }
        })
        .map_err(SignalError::Install)?;
    set.thread_unblock().map_err(SignalError::Mask)?;
    Ok(Listener {
        notices,
        shutdown: Shutdown { rx: stop_rx },
        sender,
        ignored_at_entry,
        handle,
    })
}

/// Whether `sig` is ignored by this process now (false when that cannot be told).
fn ignored(sig: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let bit = 1u64 << (sig as i32 - 1);
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_uncatchable_signals_cannot_activate() {
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGKILL,
            Signal::SIGSTOP,
        ] {
            assert!(matches!(set(s), Err(SignalError::Unusable(_))), "{s}");
        }
        let ok = set(Signal::SIGUSR2).unwrap();
        assert!(ok.contains(Signal::SIGUSR2) && ok.contains(Signal::SIGTERM));
    }
}
