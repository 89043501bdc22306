//! The overlap checker over the activity register: the file every test service appends to
//! (`understudy demo-service --log FILE`, one `<monotonic ns> <pid> <node> <event> <epoch>` line
//! per `start`, `active`, `tick` and `stop`).
//!
//! A service's time as the active runs from its `active` line to its last `tick` or `stop`.
//! Two such periods that intersect are two actives at once; a period whose epoch is not above
//! the one before it means fencing failed. The register is read incrementally, so a campaign of
//! hours is checked as it goes without reading the whole file again.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One service process's time as the active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub pid: u32,
    pub node: String,
    pub epoch: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Every active period, sorted by start.
    pub periods: Vec<Period>,
    /// Two actives at once, or fencing that failed: each a sentence for a person.
    pub violations: Vec<String>,
    /// Longest time between the end of every earlier period and the start of the next one.
    pub longest_gap_ns: u64,
    /// The node that became active after that gap, and its epoch.
    pub longest_gap_before: Option<(String, u64)>,
}

/// An incrementally read register.
pub struct Register {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// Open periods by pid. One process writes its lines in order, so a pid's lines arrive in
    /// order even when processes interleave.
    open: HashMap<u32, Period>,
    closed: Vec<Period>,
    /// Problems found while reading (an epoch changing inside a period).
    problems: Vec<String>,
    lines: u64,
}

impl Register {
    pub fn new(path: &Path) -> Register {
        Register {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            open: HashMap::new(),
            closed: Vec::new(),
            problems: Vec::new(),
            lines: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Reads what was appended since the last call. A register that does not exist yet is
    /// empty.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf)?;
        self.offset = self.offset.saturating_add(n as u64);
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(last_nl + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        for line in whole.split(|b| *b == b'\n') {
            if let Ok(text) = std::str::from_utf8(line) {
                self.line(text);
            }
        }
        Ok(())
    }

    fn line(&mut self, text: &str) {
        let mut f = text.split(' ');
        let (Some(ns), Some(pid), Some(node), Some(event), Some(epoch), None) = (
            f.next().and_then(|s| s.parse::<u64>().ok()),
            f.next().and_then(|s| s.parse::<u32>().ok()),
            f.next(),
            f.next(),
            f.next().and_then(|s| s.parse::<u64>().ok()),
            f.next(),
        ) else {
            return;
        };
        self.lines += 1;
        match event {
            // A new process with a pid seen before: the old one's period ended with its last line.
            "start" => {
                if let Some(p) = self.open.remove(&pid) {
                    self.closed.push(p);
                }
            }
            "active" => {
                let p = Period {
                    pid,
                    node: node.to_string(),
                    epoch,
                    start_ns: ns,
                    end_ns: ns,
                };
                if let Some(old) = self.open.insert(pid, p) {
                    self.closed.push(old);
                }
            }
            "tick" | "stop" => {
                if let Some(p) = self.open.get_mut(&pid) {
                    if p.epoch != epoch {
                        self.problems.push(format!(
                            "service pid {pid} on {node} changed its epoch while active: {} then {epoch}",
                            p.epoch
                        ));
                    }
                    p.end_ns = p.end_ns.max(ns);
                }
                if event == "stop" {
                    if let Some(p) = self.open.remove(&pid) {
                        self.closed.push(p);
                    }
                }
            }
            _ => {}
        }
    }

    /// Every period so far, sorted by start.
    pub fn periods(&self) -> Vec<Period> {
        let mut all: Vec<Period> = self
            .closed
            .iter()
            .chain(self.open.values())
            .cloned()
            .collect();
        all.sort_by_key(|p| (p.start_ns, p.pid));
        all
    }

    /// The newest period (by start) with `epoch`, if any.
    pub fn period_of_epoch(&self, epoch: u64) -> Option<Period> {
        self.closed
            .iter()
            .chain(self.open.values())
            .filter(|p| p.epoch == epoch)
            .max_by_key(|p| p.start_ns)
            .cloned()
    }

    /// Checks every period read so far.
    pub fn verdict(&self) -> Verdict {
        judge(self.periods(), self.problems.clone())
    }
}

/// Checks periods sorted by start: each must start after every earlier one ended, with a
/// higher epoch.
fn judge(periods: Vec<Period>, mut violations: Vec<String>) -> Verdict {
    let mut longest_gap_ns = 0;
    let mut longest_gap_before = None;
    // The earlier period that ends last: the one a new period must not intersect.
    let mut latest: Option<&Period> = None;
    for p in &periods {
        if let Some(l) = latest {
            if p.start_ns <= l.end_ns {
                violations.push(format!(
                    "TWO ACTIVES: service pid {} on {} (epoch {}) was still active {:.3} ms after pid {} on {} (epoch {}) became active",
                    l.pid,
                    l.node,
                    l.epoch,
                    (l.end_ns - p.start_ns) as f64 / 1e6,
                    p.pid,
                    p.node,
                    p.epoch
                ));
            } else if p.start_ns - l.end_ns > longest_gap_ns {
                longest_gap_ns = p.start_ns - l.end_ns;
                longest_gap_before = Some((p.node.clone(), p.epoch));
            }
            if p.epoch <= l.epoch {
                violations.push(format!(
                    "FENCING: pid {} on {} became active at epoch {}, not above epoch {} of pid {} on {} before it",
                    p.pid, p.node, p.epoch, l.epoch, l.pid, l.node
                ));
            }
        }
        if latest.is_none_or(|l| p.end_ns >= l.end_ns) {
            latest = Some(p);
        }
    }
    Verdict {
        periods,
        violations,
        longest_gap_ns,
        longest_gap_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn register(lines: &[&str]) -> (tempfile::NamedTempFile, Register) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        let mut r = Register::new(f.path());
        r.poll().unwrap();
        (f, r)
    }

    #[test]
    fn a_clean_handover_passes_and_its_gap_is_measured() {
        let (_f, r) = register(&[
            "100 1 a start 1",
            "110 1 a active 1",
            "130 1 a tick 1",
            "135 2 b start 1",
            "150 2 b active 2",
            "160 2 b stop 2",
            "170 3 a start 2",
        ]);
        let v = r.verdict();
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.periods.len(), 2);
        assert_eq!(v.longest_gap_ns, 20);
        assert_eq!(v.longest_gap_before, Some(("b".to_string(), 2)));
    }

    #[test]
    fn overlaps_backward_epochs_and_epoch_changes_are_found() {
        let (_f, r) = register(&["110 1 a active 1", "125 2 b active 2", "130 1 a tick 1"]);
        assert!(r.verdict().violations[0].starts_with("TWO ACTIVES"));
        // A long period overlapping a later one that is not its direct successor.
        let (_f, r) = register(&[
            "100 1 a active 1",
            "110 2 b active 2",
            "111 2 b stop 2",
            "120 3 c active 3",
            "130 1 a tick 1",
        ]);
        assert_eq!(r.verdict().violations.len(), 2);
        let (_f, r) = register(&["110 1 a active 5", "120 1 a stop 5", "130 2 b active 5"]);
        assert!(r.verdict().violations[0].starts_with("FENCING"));
        let (_f, r) = register(&["110 1 a active 5", "120 1 a tick 6"]);
        assert!(r.verdict().violations[0].contains("changed its epoch"));
    }

    #[test]
    fn lines_are_read_as_they_are_appended_even_when_cut_in_the_middle() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut r = Register::new(f.path());
        write!(f, "110 1 a active 1\n120 1 a ti").unwrap();
        f.flush().unwrap();
        r.poll().unwrap();
        assert_eq!(r.lines(), 1);
        writeln!(f, "ck 1").unwrap();
        f.flush().unwrap();
        r.poll().unwrap();
        assert_eq!(r.lines(), 2);
        assert_eq!(r.periods()[0].end_ns, 120);
        assert_eq!(r.period_of_epoch(1).map(|p| p.pid), Some(1));
    }
}
