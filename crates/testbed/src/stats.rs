//! The statistics every benchmark prints, and the rules that keep them honest: a p99 needs at
//! least [`MIN_SAMPLES_FOR_P99`] values (below that the nearest-rank p99 is one of the few
//! largest values — the maximum itself below 51 — not a tail estimate), and a comparison names
//! a winner only when the difference is larger than the run-to-run spread. [`Table`] prints a
//! benchmark's rows with the clock each figure was timed on.

/// Fewest values for which [`Summary`] reports a p99.
pub const MIN_SAMPLES_FOR_P99: usize = 100;

/// The `q` quantile (0..=1) of an ascending sample, nearest rank; NaN when it is empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p99 and max of a sample, in its own unit; NaN when it is empty. The p99 is the raw
/// nearest-rank value whatever the sample size; tables use [`Summary`], which withholds it
/// from small samples.
pub fn percentiles(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    )
}

/// p50 / p99 / max of one sample and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Values in the sample.
    pub n: usize,
    /// Median (nearest rank); NaN when empty.
    pub p50: f64,
    /// 99th percentile; `None` below [`MIN_SAMPLES_FOR_P99`] values.
    pub p99: Option<f64>,
    /// Largest value; NaN when empty.
    pub max: f64,
}

impl Summary {
    /// Summarises `xs` (any order, its own unit).
    pub fn of(xs: &[f64]) -> Summary {
        let (p50, p99, max) = percentiles(xs);
        Summary {
            n: xs.len(),
            p50,
            p99: (xs.len() >= MIN_SAMPLES_FOR_P99).then_some(p99),
            max,
        }
    }

    /// The three values right-aligned in columns of `width` with `prec` decimals; a p99
    /// withheld for a small sample shows as `-`.
    pub fn cells(&self, width: usize, prec: usize) -> String {
        let p99 = match self.p99 {
            Some(v) => format!("{v:>width$.prec$}"),
            None => format!("{:>width$}", "-"),
        };
        format!(
            "{:>width$.prec$} {p99} {:>width$.prec$}",
            self.p50, self.max
        )
    }
}

/// The sentence that explains a `-` in a p99 column, when `n` values are too few for one.
pub fn p99_note(n: usize) -> Option<String> {
    (n < MIN_SAMPLES_FOR_P99).then(|| {
        format!(
            "p99 shown as - where a row has fewer than {MIN_SAMPLES_FOR_P99} values ({n} in the \
             smallest): with so few, the nearest-rank p99 is one of the largest values{}, so only \
             p50 and max are reported",
            if n <= 50 { " (the maximum itself)" } else { "" }
        )
    })
}

/// The line that judges `figure` (in ms, lower is better) against `goal_ms` on its p99, or on
/// its maximum, which is stricter, when the sample is too small for a p99.
pub fn goal_line(figure: &str, s: &Summary, goal_ms: f64) -> String {
    let (what, v) = match s.p99 {
        Some(p) => ("p99", p),
        None => ("max (too few runs for a p99)", s.max),
    };
    format!(
        "goal: {figure}, p99 under {goal_ms} ms, judged on the {what}: {}",
        if v < goal_ms { "met" } else { "NOT MET" }
    )
}

/// Smallest and largest of a set of per-run figures (NaN ignored; NaN both when none).
pub fn spread(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .filter(|x| !x.is_nan())
        .fold((f64::NAN, f64::NAN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// The outcome of comparing one figure of two sides over repeated runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first side is better in every run than the second in any, by the margin.
    First,
    /// The second side is better in every run than the first in any, by the margin.
    Second,
    /// The run ranges overlap, or differ by less than the margin.
    NoClearWinner,
}

/// Compares per-run figures of two sides. A side wins only when its worst run beats the other
/// side's best run by more than `min_rel_margin` (relative to the larger value): the
/// difference must exceed the run-to-run spread of both sides, not only their medians'.
pub fn compare(a: &[f64], b: &[f64], lower_is_better: bool, min_rel_margin: f64) -> Verdict {
    let (a_lo, a_hi) = spread(a);
    let (b_lo, b_hi) = spread(b);
    if a_lo.is_nan() || b_lo.is_nan() {
        return Verdict::NoClearWinner;
    }
    let beats = |worst: f64, best_other: f64| {
        let margin = min_rel_margin * worst.abs().max(best_other.abs());
        if lower_is_better {
            worst + margin < best_other
        } else {
            worst > best_other + margin
        }
    };
    let (a_worst, b_worst, a_best, b_best) = if lower_is_better {
        (a_hi, b_hi, a_lo, b_lo)
    } else {
        (a_lo, b_lo, a_hi, b_hi)
    };
    if beats(a_worst, b_best) {
        Verdict::First
    } else if beats(b_worst, a_best) {
        Verdict::Second
    } else {
        Verdict::NoClearWinner
    }
}

/// How a figure was timed: printed next to it, explained under the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Both ends read from CLOCK_MONOTONIC in the benchmark process.
    MonoHere,
    /// Read from one agent's /events: its own monotonic clock, in its process.
    AgentMono,
    /// The benchmark's CLOCK_REALTIME at the kill against the agent's wall-clock detection
    /// stamp, which it keeps in whole milliseconds.
    WallMs,
    /// A [`Clock::MonoHere`] figure minus a [`Clock::WallMs`] one, run by run.
    MonoMinusWallMs,
    /// CLOCK_MONOTONIC of the one host every process runs on, read in two processes: the
    /// benchmark at the fault, the process that knows it is active in its own log.
    MonoHost,
}

impl Clock {
    fn tag(self) -> &'static str {
        match self {
            Clock::MonoHere => "mono",
            Clock::AgentMono => "agent",
            Clock::WallMs => "wall",
            Clock::MonoMinusWallMs => "diff",
            Clock::MonoHost => "host",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Clock::MonoHere => "CLOCK_MONOTONIC, both ends read in the benchmark process",
            Clock::AgentMono => {
                "the agent's own monotonic clock, from its GET /events, counted from the moment \
                 it learnt the previous active was gone"
            }
            Clock::WallMs => {
                "CLOCK_REALTIME across processes: the kill stamped here (ns), the agent's detection \
                 stamped in whole ms (truncated), so this reads 0-1 ms low"
            }
            Clock::MonoMinusWallMs => {
                "a mono figure minus a wall figure, run by run: reads 0-1 ms high (see wall)"
            }
            Clock::MonoHost => {
                "CLOCK_MONOTONIC (one clock for the whole host), read by the benchmark at the \
                 fault and by the new active's process in its own log line"
            }
        }
    }
}

/// A benchmark table: rows of p50 / p99 / max with the clock each was timed on and how many
/// runs gave a value; under it, what the clocks are, why runs are missing from a row, and why
/// a p99 is withheld.
pub struct Table {
    unit: &'static str,
    prec: usize,
    runs: usize,
    label_width: usize,
    rows: Vec<(String, Clock, Summary)>,
    notes: Vec<String>,
}

impl Table {
    /// A table over `runs` runs, values in `unit` printed with `prec` decimals.
    pub fn new(unit: &'static str, prec: usize, runs: usize) -> Table {
        Table {
            unit,
            prec,
            runs,
            label_width: 20,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row; `missing` says why a run has no value in it, when some have none.
    pub fn row(&mut self, label: &str, clock: Clock, xs: &[f64], missing: &str) {
        let s = Summary::of(xs);
        if s.n < self.runs {
            self.notes.push(format!(
                "{label}: {} of {} runs have no value ({missing}); the row is over the other {}",
                self.runs - s.n,
                self.runs,
                s.n
            ));
        }
        self.label_width = self.label_width.max(label.chars().count());
        self.rows.push((label.to_owned(), clock, s));
    }

    /// The table as printed lines.
    pub fn render(&self) -> String {
        let w = self.label_width;
        let u = self.unit;
        let mut out = format!(
            "{:<w$} {:<6} {:>9} {:>9} {:>9} {:>9}\n",
            "",
            "clock",
            "runs",
            format!("p50 {u}"),
            format!("p99 {u}"),
            format!("max {u}")
        );
        for (label, clock, s) in &self.rows {
            out.push_str(&format!(
                "{label:<w$} {:<6} {:>9} {}\n",
                clock.tag(),
                format!("{}/{}", s.n, self.runs),
                s.cells(9, self.prec)
            ));
        }
        let mut clocks: Vec<Clock> = Vec::new();
        for (_, c, _) in &self.rows {
            if !clocks.contains(c) {
                clocks.push(*c);
            }
        }
        for c in clocks {
            out.push_str(&format!("  {:<6} {}\n", c.tag(), c.legend()));
        }
        // One note for the table, from its smallest row: the rows with enough values show
        // their p99, the others '-'.
        let smallest = self.rows.iter().map(|(_, _, s)| s.n).min().unwrap_or(0);
        if let Some(n) = p99_note(smallest) {
            out.push_str(&format!("  {n}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(&xs), (51.0, 99.0, 100.0));
        assert!(percentiles(&[]).0.is_nan());
        assert_eq!(percentiles(&[3.0]), (3.0, 3.0, 3.0));
    }

    #[test]
    fn p99_is_withheld_below_100_values() {
        let few: Vec<f64> = (1..=99).map(f64::from).collect();
        let s = Summary::of(&few);
        assert_eq!((s.n, s.p50, s.p99, s.max), (99, 50.0, None, 99.0));
        assert_eq!(s.cells(5, 1), " 50.0     -  99.0");
        assert!(p99_note(99).is_some_and(|n| !n.contains("maximum itself")));
        assert!(p99_note(20).is_some_and(|n| n.contains("maximum itself")));
        let enough: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Summary::of(&enough).p99, Some(99.0));
        assert_eq!(p99_note(100), None);
        assert!(Summary::of(&[]).p50.is_nan());
    }

    #[test]
    fn a_winner_needs_a_margin_beyond_the_spread() {
        // Overlapping ranges: no winner, even though the medians differ.
        assert_eq!(
            compare(&[4.1, 4.3, 5.0], &[4.2, 4.6, 6.0], true, 0.0),
            Verdict::NoClearWinner
        );
        // Disjoint ranges: the lower side wins a lower-is-better figure…
        assert_eq!(
            compare(&[1.0, 1.2], &[2.0, 2.5], true, 0.05),
            Verdict::First
        );
        assert_eq!(
            compare(&[2.0, 2.5], &[1.0, 1.2], true, 0.05),
            Verdict::Second
        );
        // …and the higher side a higher-is-better one.
        assert_eq!(
            compare(&[10.0, 11.0], &[5.0, 6.0], false, 0.05),
            Verdict::First
        );
        // Disjoint but closer than the margin: no winner.
        assert_eq!(
            compare(&[100.0, 100.2], &[100.3, 100.5], true, 0.01),
            Verdict::NoClearWinner
        );
        assert_eq!(compare(&[], &[1.0], true, 0.0), Verdict::NoClearWinner);
        assert_eq!(spread(&[3.0, f64::NAN, 1.0]), (1.0, 3.0));
    }

    #[test]
    fn a_table_names_its_clocks_its_missing_runs_and_a_withheld_p99() {
        let mut t = Table::new("ms", 1, 20);
        let all: Vec<f64> = (1..=20).map(f64::from).collect();
        t.row("kill → first price", Clock::MonoHere, &all, "");
        t.row(
            "kill → notified",
            Clock::WallMs,
            &all[..18],
            "no takeover in /events",
        );
        let s = t.render();
        assert!(s.contains("20/20") && s.contains("18/20"), "{s}");
        assert!(
            s.contains("2 of 20 runs have no value (no takeover in /events)"),
            "{s}"
        );
        assert!(
            s.contains("CLOCK_MONOTONIC") && s.contains("whole ms"),
            "{s}"
        );
        assert!(s.contains("p99 shown as - where"), "{s}");
        // p99 withheld: the cell shows '-', never the maximum under another name.
        let row = s
            .lines()
            .find(|l| l.starts_with("kill → first price"))
            .unwrap_or("");
        assert!(
            row.contains(" - ") && row.trim_end().ends_with("20.0"),
            "{row}"
        );
    }
}
