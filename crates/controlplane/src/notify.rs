//! Failure events pushed to a webhook, so a person is told (a chat channel, a pager bridge). Each
//! event is POSTed as JSON with a timeout and retried with back-off; the queue is bounded, and when
//! it is full (the webhook is down for long) new events are dropped with a warning: they stay in
//! the database and the dashboard either way.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Events waiting to be delivered, at most.
pub const QUEUE: usize = 1024;
/// Time allowed for one delivery attempt.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per event: the first and the retries after 1 s, 4 s and 16 s.
pub const ATTEMPTS: u32 = 4;

/// The sending side, held by the collector.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Value>,
}

impl Notifier {
    /// Start the delivery task for `url`.
    pub fn spawn(url: String) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(TIMEOUT)
                .no_proxy()
                .build()
                .unwrap_or_default();
            while let Some(ev) = rx.recv().await {
                deliver(&http, &url, &ev).await;
            }
        });
        Notifier { tx }
    }

    /// Queue an event; never waits. False when the queue is full (the event was dropped).
    pub fn send(&self, ev: Value) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(_) => {
                warn!("webhook queue full ({QUEUE} events): a failure event was not sent (it is stored)");
                false
            }
        }
    }
}

async fn deliver(http: &reqwest::Client, url: &str, ev: &Value) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match http.post(url).json(ev).send().await {
            Ok(r) if r.status().is_success() => {
                info!(attempt, "failure event sent to the webhook");
                return;
            }
            Ok(r) => warn!(attempt, status = %r.status(), "webhook refused a failure event"),
            Err(e) => warn!(attempt, "webhook unreachable: {e}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
    }
    warn!("giving up on a failure event for the webhook after {ATTEMPTS} attempts (it is stored)");
}
