//! The event timeline (`GET /events`) and the failure events built from it: each takeover's
//! detected → lock obtained → previous service gone → epoch durable → service notified →
//! service acknowledged → ready, with durations from detection.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;
use understudy_engine::{Event, EventKind};
use understudy_status::{Takeover, TimelineEntry};

/// How many timeline entries and takeovers are kept (oldest dropped first).
const KEEP_EVENTS: usize = 1000;
const KEEP_TAKEOVERS: usize = 200;

/// A takeover of this node's timeline, with what only the running agent knows about it.
#[derive(Debug, Clone)]
struct Open {
    t: Takeover,
    detected_mono: Duration,
    /// Read back from the journal: a takeover of an earlier run of the agent, never extended.
    restored: bool,
}

/// The timeline of one agent.
#[derive(Debug, Default)]
pub struct Timeline {
    events: VecDeque<TimelineEntry>,
    takeovers: VecDeque<Open>,
    /// The last detection not yet claimed by a `LockObtained`.
    detected: Option<(Duration, u64)>,
    journal: Option<Journal>,
}

/// A journal file rotates past this size (the previous one is kept as `<file>.1`), so the agent's
/// history is bounded on disk at twice this.
pub const JOURNAL_MAX_BYTES: u64 = 1 << 20;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Event(TimelineEntry),
    Takeover(Takeover),
}

/// The timeline on disk, one JSON object per line, appended as things happen (no fsync: a lost
/// last line costs a line of history, not safety), read back at start.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl Journal {
    /// Open (creating it and its directory) the journal at `path`, with what it held: the
    /// timeline entries and the takeovers (the last version of each), oldest first. Lines that
    /// do not parse (a torn last line, a hand edit) are skipped and counted.
    pub fn open(
        path: &Path,
    ) -> std::io::Result<(Journal, Vec<TimelineEntry>, Vec<Takeover>, usize)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut events = Vec::new();
        let mut takeovers: Vec<Takeover> = Vec::new();
        let mut bad = 0;
        for p in [rotated(path), path.to_path_buf()] {
            let Ok(f) = File::open(&p) else { continue };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else {
                    bad += 1;
                    continue;
                };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Event(e)) => events.push(e),
                    Ok(Line::Takeover(t)) => {
                        let same = |o: &Takeover| {
                            o.detected_unix_ms == t.detected_unix_ms
                                && (o.epoch == t.epoch || o.epoch == 0)
                        };
                        match takeovers.iter_mut().rev().find(|o| same(o)) {
                            Some(o) => *o = t,
                            None => takeovers.push(t),
                        }
                    }
                    Err(_) => bad += 1,
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                size,
            },
            events,
            takeovers,
            bad,
        ))
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        if self.size + text.len() as u64 > JOURNAL_MAX_BYTES {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(text.as_bytes())?;
        self.size += text.len() as u64;
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Timeline {
    /// A timeline kept in `journal`, starting with what an earlier run of the agent left there.
    pub fn with_journal(
        journal: Journal,
        events: Vec<TimelineEntry>,
        takeovers: Vec<Takeover>,
    ) -> Timeline {
        let skip_e = events.len().saturating_sub(KEEP_EVENTS);
        let skip_t = takeovers.len().saturating_sub(KEEP_TAKEOVERS);
        Timeline {
            events: events.into_iter().skip(skip_e).collect(),
            takeovers: takeovers
                .into_iter()
                .skip(skip_t)
                .map(|t| Open {
                    t,
                    detected_mono: Duration::ZERO,
                    restored: true,
                })
                .collect(),
            detected: None,
            journal: Some(journal),
        }
    }

    fn write(&mut self, line: &Line) {
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.append(line) {
                // Full disk, removed directory: the timeline stays in memory; say it once.
                warn!(
                    "cannot write the event journal {}: {e}; keeping events in memory only",
                    j.path.display()
                );
                self.journal = None;
            }
        }
    }

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
        let since = |o: &Open| Some(ms(ev.mono.saturating_sub(o.detected_mono)));
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
                let mut o = Open {
                    t: Takeover {
                        epoch: 0,
                        cause: ev.detail.clone(),
                        detected_unix_ms,
                        lock_obtained_ms: None,
                        previous_service_gone_ms: None,
                        epoch_durable_ms: None,
                        service_notified_ms: None,
                        service_acked_ms: None,
                        ready_ms: None,
                    },
                    detected_mono,
                    restored: false,
                };
                o.t.lock_obtained_ms = since(&o);
                self.takeovers.push_back(o);
            }
            EventKind::PreviousServiceGone => {
                if let Some(o) = self.open_takeover() {
                    o.t.previous_service_gone_ms = since(o);
                }
            }
            EventKind::EpochDurable => {
                if let Some(o) = self.open_takeover() {
                    o.t.epoch = ev.epoch;
                    o.t.epoch_durable_ms = since(o);
                }
            }
            EventKind::ServiceNotified => {
                if let Some(o) = self.open_takeover() {
                    if o.t.service_notified_ms.is_none() && o.t.epoch != 0 {
                        let d = ev.mono.saturating_sub(o.detected_mono);
                        o.t.service_notified_ms = Some(ms(d));
                        notified = Some(d);
                    }
                }
            }
            EventKind::ServiceAcked => {
                if let Some(o) = self.open_takeover() {
                    if o.t.service_acked_ms.is_none() && o.t.epoch == ev.epoch {
                        o.t.service_acked_ms = since(o);
                    }
                }
            }
            EventKind::Ready => {
                if let Some(o) = self.open_takeover() {
                    if o.t.ready_ms.is_none() && o.t.epoch != 0 {
                        o.t.ready_ms = since(o);
                    }
                }
            }
            _ => {}
        }
        let phase = matches!(
            ev.kind,
            EventKind::LockObtained
                | EventKind::PreviousServiceGone
                | EventKind::EpochDurable
                | EventKind::ServiceNotified
                | EventKind::ServiceAcked
                | EventKind::Ready
        );
        let entry = TimelineEntry {
            at_unix_ms: ev.at_unix_ms,
            kind: ev.kind,
            epoch: ev.epoch,
            detail: ev.detail,
        };
        self.write(&Line::Event(entry.clone()));
        if phase {
            if let Some(o) = self.takeovers.back().filter(|o| !o.restored) {
                let t = o.t.clone();
                self.write(&Line::Takeover(t));
            }
        }
        if self.events.len() == KEEP_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(entry);
        notified
    }

    fn open_takeover(&mut self) -> Option<&mut Open> {
        self.takeovers.back_mut().filter(|o| !o.restored)
    }

    /// The timeline entries, oldest first.
    pub fn events(&self) -> Vec<TimelineEntry> {
        self.events.iter().cloned().collect()
    }

    /// The takeover of this run that reached Hot last, if any.
    pub fn current(&self) -> Option<Takeover> {
        self.takeovers
            .back()
            .filter(|o| !o.restored && o.t.epoch != 0)
            .map(|o| o.t.clone())
    }

    /// Takeovers that reached Hot, oldest first.
    pub fn takeovers(&self) -> Vec<Takeover> {
        self.takeovers
            .iter()
            .filter(|o| o.t.epoch != 0)
            .map(|o| o.t.clone())
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

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn ev(kind: EventKind, epoch: u64, mono_ms: u64) -> Event {
        Event {
            mono: Duration::from_millis(mono_ms),
            at_unix_ms: 1_000 + mono_ms,
            kind,
            epoch,
            detail: "x".into(),
        }
    }

    #[test]
    fn a_restarted_agent_reads_its_takeovers_back_and_never_extends_them() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("j/a.jsonl");
        {
            let (j, e, t, bad) = Journal::open(&path).unwrap();
            assert!(e.is_empty() && t.is_empty() && bad == 0);
            let mut tl = Timeline::with_journal(j, e, t);
            tl.push(ev(EventKind::LockObtained, 0, 10));
            tl.push(ev(EventKind::EpochDurable, 7, 12));
            tl.push(ev(EventKind::Ready, 7, 15));
        }
        // A torn last line (the agent was killed mid-write) is skipped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":{\"at_unix").unwrap();
        let (j, e, t, bad) = Journal::open(&path).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(e.len(), 3);
        let mut tl = Timeline::with_journal(j, e, t);
        let tk = tl.takeovers();
        assert_eq!(tk.len(), 1);
        assert_eq!(tk[0].epoch, 7);
        assert_eq!(tk[0].ready_ms, Some(5.0));
        // A phase event of the new run never lands on the old takeover.
        tl.push(ev(EventKind::Ready, 8, 1));
        assert_eq!(tl.takeovers()[0].ready_ms, Some(5.0));
    }

    #[test]
    fn the_journal_rotates_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.jsonl");
        let (j, e, t, _) = Journal::open(&path).unwrap();
        let mut tl = Timeline::with_journal(j, e, t);
        for i in 0..50_000u64 {
            tl.push(ev(EventKind::ServiceStarted, 1, i));
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= JOURNAL_MAX_BYTES);
        assert!(size(&rotated(&path)) <= JOURNAL_MAX_BYTES && size(&rotated(&path)) > 0);
        let (_, e, _, bad) = Journal::open(&path).unwrap();
        assert_eq!(bad, 0);
        assert!(e.len() > 1000 && e.len() < 50_000, "{}", e.len());
    }
}
