//! The two-Hot watcher: polls every node's `GET /status` all through the drill and records any
//! moment two nodes were Hot at once. It needs nothing from the services, so it also checks a
//! group whose services write no register.
//!
//! A Hot answer proves the node was Hot from its `since_unix_ms` until the request was sent.
//! Two Hot answers in one sweep whose proven intervals intersect are two actives at once;
//! disjoint ones are a handover that happened between the two requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use understudy_control::AgentClient;

/// What the watcher saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub sweeps: u64,
    /// Sweeps in which two nodes answered Hot (including handovers between two requests).
    pub two_hot_answers: u64,
    pub violations: Vec<String>,
}

/// A running watcher; [`Watcher::finish`] stops it.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    handle: Option<JoinHandle<()>>,
}

struct Hot {
    node: String,
    sent_ms: u64,
    since_ms: u64,
    epoch: u64,
}

impl Watcher {
    /// Starts polling `nodes` (name, admin address) on a thread of its own, so that it keeps
    /// its pace whatever the drill waits for.
    pub fn start(nodes: Vec<(String, String)>, auth: &crate::Auth) -> anyhow::Result<Watcher> {
        // A stopped agent answers nothing: a short timeout keeps the sweeps over the others going.
        let clients = nodes
            .into_iter()
            .map(|(name, addr)| Ok((name, auth.client(&addr, Duration::from_millis(250))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let handle = std::thread::Builder::new()
            .name("two-hot-watcher".into())
            .spawn(move || {
                rt.block_on(watch(clients, stop2, seen2));
            })?;
        Ok(Watcher {
            stop,
            seen,
            handle: Some(handle),
        })
    }

    /// Two-Hot moments found so far.
    pub fn violations(&self) -> usize {
        self.seen.lock().map(|s| s.violations.len()).unwrap_or(0)
    }

    /// Stops polling and returns what was seen.
    pub fn finish(mut self) -> Seen {
        self.halt();
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn watch(clients: Vec<(String, AgentClient)>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    while !stop.load(Ordering::Relaxed) {
        let answers = futures_util::future::join_all(clients.iter().map(|(name, c)| async move {
            let sent_ms = crate::drill::unix_ms();
            let v = c.status().await.ok()?;
            v.is_hot().then(|| Hot {
                node: name.clone(),
                sent_ms,
                since_ms: v.node.since_unix_ms,
                epoch: v.node.epoch,
            })
        }))
        .await;
        let hot: Vec<Hot> = answers.into_iter().flatten().collect();
        if let Ok(mut s) = seen.lock() {
            s.sweeps += 1;
            if hot.len() > 1 {
                s.two_hot_answers += 1;
            }
            for (i, a) in hot.iter().enumerate() {
                for b in &hot[i + 1..] {
                    if a.since_ms.max(b.since_ms) < a.sent_ms.min(b.sent_ms) {
                        s.violations.push(format!(
                            "TWO HOT: {} (epoch {}, Hot since {}) and {} (epoch {}, Hot since {}) both Hot at {} (Unix ms)",
                            a.node,
                            a.epoch,
                            a.since_ms,
                            b.node,
                            b.epoch,
                            b.since_ms,
                            a.sent_ms.min(b.sent_ms)
                        ));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
