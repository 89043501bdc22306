//! The event timeline (`GET /events`) and the failure events built from it: each takeover's
//! detected → epoch durable → service notified → ready, with durations from detection.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use understudy_engine::{Event, EventKind};

/// How many timeline entries and takeovers are kept (oldest dropped first).
const KEEP_EVENTS: usize = 1000;
const KEEP_TAKEOVERS: usize = 200;

/// One takeover by this node, as a failure event's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    /// The epoch the node became Hot with (0 until durable).
    pub epoch: u64,
    /// What the node found when it obtained the lock (the previous holder's heartbeat).
    pub cause: String,
    /// Wall clock of the detection (lock obtained), Unix milliseconds.
    pub detected_unix_ms: u64,
    /// Milliseconds from detection to the epoch being durable.
    pub epoch_durable_ms: Option<f64>,
    /// Milliseconds from detection to the service being told it is active.
    pub service_notified_ms: Option<f64>,
    /// Milliseconds from detection to the service being ready.
    pub ready_ms: Option<f64>,
    #[serde(skip)]
    detected_mono: Duration,
}

/// The timeline of one agent.
#[derive(Debug, Default)]
pub struct Timeline {
    events: VecDeque<Event>,
    takeovers: VecDeque<Takeover>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Timeline {
    /// Append an event; returns the takeover duration (detection → service notified) when this
    /// event completes one, for the metrics histogram.
    pub fn push(&mut self, ev: Event) -> Option<Duration> {
        let mut notified = None;
        match ev.kind {
            EventKind::LockObtained => {
                if self.takeovers.len() == KEEP_TAKEOVERS {
                    self.takeovers.pop_front();
                }
                self.takeovers.push_back(Takeover {
                    epoch: 0,
                    cause: ev.detail.clone(),
                    detected_unix_ms: ev.at_unix_ms,
                    epoch_durable_ms: None,
                    service_notified_ms: None,
                    ready_ms: None,
                    detected_mono: ev.mono,
                });
            }
            EventKind::EpochDurable => {
                if let Some(t) = self.open_takeover() {
                    t.epoch = ev.epoch;
                    t.epoch_durable_ms = Some(ms(ev.mono.saturating_sub(t.detected_mono)));
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
            EventKind::Ready => {
                if let Some(t) = self.open_takeover() {
                    if t.ready_ms.is_none() && t.epoch != 0 {
                        t.ready_ms = Some(ms(ev.mono.saturating_sub(t.detected_mono)));
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
        assert_eq!(t.push(ev(EventKind::LockObtained, 100, 4)), None);
        t.push(ev(EventKind::EpochDurable, 102, 5));
        let d = t.push(ev(EventKind::ServiceNotified, 103, 5));
        assert_eq!(d, Some(Duration::from_millis(3)));
        t.push(ev(EventKind::Ready, 150, 5));
        let tk = t.takeovers();
        assert_eq!(tk.len(), 1);
        assert_eq!(tk[0].epoch, 5);
        assert_eq!(tk[0].epoch_durable_ms, Some(2.0));
        assert_eq!(tk[0].ready_ms, Some(50.0));
        assert_eq!(t.events().len(), 4);
    }

    #[test]
    fn a_lock_obtained_without_promotion_is_not_a_takeover() {
        let mut t = Timeline::default();
        t.push(ev(EventKind::LockObtained, 1, 0));
        t.push(ev(EventKind::HeartbeatStale, 1, 0));
        assert!(t.takeovers().is_empty());
    }
}
