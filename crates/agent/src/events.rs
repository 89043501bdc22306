//! The event timeline (`GET /events`) and the failure events built from it: each takeover's
//! detected → lock obtained → previous service gone → epoch durable → service notified →
//! service acknowledged → ready, with durations from detection.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use understudy_engine::{Event, EventKind};

/// How many timeline entries and takeovers are kept (oldest dropped first).
const KEEP_EVENTS: usize = 1000;
const KEEP_TAKEOVERS: usize = 200;

/// One takeover by this node, as a failure event's timeline. Every phase is a duration from
/// detection, each measured by the agent when that phase happened (not when the engine decided
/// it), so two phases share a figure only if they really took no time between them.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    /// The epoch the node became Hot with (0 until durable).
    pub epoch: u64,
    /// What the node found when it obtained the lock (the previous holder's heartbeat).
    pub cause: String,
    /// Wall clock of the detection, Unix milliseconds: the moment the agent learnt the previous
    /// active was gone (the kernel handed it the lock; a try that found the lock free).
    pub detected_unix_ms: u64,
    /// The engine took the grant.
    pub lock_obtained_ms: Option<f64>,
    /// The previous active's service had ended (or there was none to wait for).
    pub previous_service_gone_ms: Option<f64>,
    /// The new epoch was durable and the node Hot.
    pub epoch_durable_ms: Option<f64>,
    /// The service was told it is active (signal sent, or started as active).
    pub service_notified_ms: Option<f64>,
    /// The service said it acts with the new epoch (`POST /service/active-ack`); None for a
    /// service that does not acknowledge.
    pub service_acked_ms: Option<f64>,
    /// The active service was ready (its health check passed, or it was told when there is none).
    pub ready_ms: Option<f64>,
    #[serde(skip)]
    detected_mono: Duration,
}

/// The timeline of one agent.
#[derive(Debug, Default)]
pub struct Timeline {
    events: VecDeque<Event>,
    takeovers: VecDeque<Takeover>,
    /// The last detection not yet claimed by a `LockObtained`.
    detected: Option<(Duration, u64)>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Timeline {
    /// The agent learnt, at `mono` (and `wall_ms`), that it may take over; the next
    /// `LockObtained` counts from here.
    pub fn detected(&mut self, mono: Duration, wall_ms: u64) {
        self.detected = Some((mono, wall_ms));
    }

    /// Drop a detection that no `LockObtained` claimed.
    pub fn forget_detection(&mut self) {
        self.detected = None;
    }

    /// Append an event; returns the takeover duration (detection → service notified) when this
    /// event completes one, for the metrics histogram.
    pub fn push(&mut self, ev: Event) -> Option<Duration> {
        let mut notified = None;
        let since = |t: &Takeover| Some(ms(ev.mono.saturating_sub(t.detected_mono)));
        match ev.kind {
            EventKind::LockObtained => {
                if self.takeovers.len() == KEEP_TAKEOVERS {
                    self.takeovers.pop_front();
                }
                let (detected_mono, detected_unix_ms) = self
                    .detected
                    .take()
                    .filter(|(m, _)| *m <= ev.mono)
                    .unwrap_or((ev.mono, ev.at_unix_ms));
                let mut t = Takeover {
                    epoch: 0,
                    cause: ev.detail.clone(),
                    detected_unix_ms,
                    lock_obtained_ms: None,
                    previous_service_gone_ms: None,
                    epoch_durable_ms: None,
                    service_notified_ms: None,
                    service_acked_ms: None,
                    ready_ms: None,
                    detected_mono,
                };
                t.lock_obtained_ms = since(&t);
                self.takeovers.push_back(t);
            }
            EventKind::PreviousServiceGone => {
                if let Some(t) = self.open_takeover() {
                    t.previous_service_gone_ms = since(t);
                }
            }
            EventKind::EpochDurable => {
                if let Some(t) = self.open_takeover() {
                    t.epoch = ev.epoch;
                    t.epoch_durable_ms = since(t);
                }
            }
            EventKind::ServiceNotified => {
                if let Some(t) = self.open_takeover() {
                    if t.service_notified_ms.is_none() && t.epoch != 0 {
                        let d = ev.mono.saturating_sub(t.detected_mono);
                        t.service_notified_ms = Some(ms(d));
                        notified = Some(d);
                    }
                }
            }
            EventKind::ServiceAcked => {
                if let Some(t) = self.open_takeover() {
                    if t.service_acked_ms.is_none() && t.epoch == ev.epoch {
                        t.service_acked_ms = since(t);
                    }
                }
            }
            EventKind::Ready => {
                if let Some(t) = self.open_takeover() {
                    if t.ready_ms.is_none() && t.epoch != 0 {
                        t.ready_ms = since(t);
                    }
                }
            }
            _ => {}
        }
        if self.events.len() == KEEP_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
        notified
    }

    fn open_takeover(&mut self) -> Option<&mut Takeover> {
        self.takeovers.back_mut()
    }

    /// The timeline entries, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }

    /// Takeovers that reached Hot, oldest first.
    pub fn takeovers(&self) -> Vec<Takeover> {
        self.takeovers
            .iter()
            .filter(|t| t.epoch != 0)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, mono_ms: u64, epoch: u64) -> Event {
        Event {
            mono: Duration::from_millis(mono_ms),
            at_unix_ms: 1_000_000 + mono_ms,
            kind,
            epoch,
            detail: String::new(),
        }
    }

    #[test]
    fn builds_a_takeover_from_its_events() {
        let mut t = Timeline::default();
        t.detected(Duration::from_millis(99), 1_000_099);
        assert_eq!(t.push(ev(EventKind::LockObtained, 100, 4)), None);
        t.push(ev(EventKind::PreviousServiceGone, 101, 4));
        t.push(ev(EventKind::EpochDurable, 102, 5));
        let d = t.push(ev(EventKind::ServiceNotified, 103, 5));
        assert_eq!(d, Some(Duration::from_millis(4)));
        t.push(ev(EventKind::ServiceAcked, 104, 4));
        t.push(ev(EventKind::ServiceAcked, 105, 5));
        t.push(ev(EventKind::Ready, 150, 5));
        let tk = t.takeovers();
        assert_eq!(tk.len(), 1);
        assert_eq!(tk[0].epoch, 5);
        assert_eq!(tk[0].detected_unix_ms, 1_000_099);
        assert_eq!(tk[0].lock_obtained_ms, Some(1.0));
        assert_eq!(tk[0].previous_service_gone_ms, Some(2.0));
        assert_eq!(tk[0].epoch_durable_ms, Some(3.0));
        assert_eq!(tk[0].service_notified_ms, Some(4.0));
        assert_eq!(
            tk[0].service_acked_ms,
            Some(6.0),
            "an older epoch's ack is not it"
        );
        assert_eq!(tk[0].ready_ms, Some(51.0));
        assert_eq!(t.events().len(), 7);
    }

    #[test]
    fn without_a_detection_the_takeover_counts_from_the_lock() {
        let mut t = Timeline::default();
        t.push(ev(EventKind::LockObtained, 100, 4));
        t.push(ev(EventKind::EpochDurable, 102, 5));
        let tk = t.takeovers();
        assert_eq!(tk[0].lock_obtained_ms, Some(0.0));
        assert_eq!(tk[0].epoch_durable_ms, Some(2.0));
    }

    #[test]
    fn a_lock_obtained_without_promotion_is_not_a_takeover() {
        let mut t = Timeline::default();
        t.push(ev(EventKind::LockObtained, 1, 0));
        t.push(ev(EventKind::HeartbeatStale, 1, 0));
        assert!(t.takeovers().is_empty());
    }
}
