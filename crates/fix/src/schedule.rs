//! Session schedules: when a FIX session may be logged on, and which *session period* (the
//! trading day or week its sequence numbers belong to) an instant falls in.
//!
//! Pure functions of an injected UTC instant; no clock is read here.
//!
//! * [`SessionSchedule::Always`] (the default): always open, one endless period, never a
//!   sequence reset.
//! * [`SessionSchedule::Daily`]: open from `start` to `end` local time in `tz` every day (or on
//!   the listed `days`, the weekday of the *start*). `end` before `start` is an overnight
//!   session ending the next day; `end == start` is a 24-hour session that closes and reopens
//!   (with a sequence reset) at `start` every day.
//! * [`SessionSchedule::Weekly`]: open from `start_day start` to the next `end_day end`
//!   (possibly across the week wrap, e.g. Friday 22:00 to Monday 06:00); the same day and time
//!   for both is a whole week.
//!
//! A *period* is the half-open interval `[start, end)` of UTC instants. The *session id* of
//! an instant is the start of the period containing it, or, between periods, of the last
//! period that started before it: a store recorded under another id belongs to an older
//! period and is reset before the next Logon.
//!
//! # Daylight saving time
//!
//! A local start or end time is turned into an instant per calendar date, as follows:
//!
//! * **Repeated** (clocks go back, e.g. 01:30 on the last Sunday of October in
//!   Europe/London): the *first* occurrence (still in summer time) is used.
//! * **Non-existent** (clocks go forward, e.g. 01:30 on the last Sunday of March in
//!   Europe/London): the first whole local minute after it that exists — the instant the
//!   clocks jump to (02:00 BST in the example).
//!
//! This mapping is monotone, so periods never overlap and keep their order. A period that
//! DST makes empty (start and end both inside the same gap) does not occur that day.

use std::fmt;

use chrono::{
    DateTime, Datelike, Duration as CDuration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime,
    TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::Deserialize;

/// When a session may be logged on. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionSchedule {
    /// Always open, never reset (the default).
    #[default]
    Always,
    /// Every day (or on `days`) from `start` to `end`, local time in `tz`.
    Daily {
        /// Local start time.
        start: NaiveTime,
        /// Local end time; at or before `start`: the next day.
        end: NaiveTime,
        /// Time zone of both.
        tz: Tz,
        /// Weekdays a period may *start* on; empty means every day.
        days: Vec<Weekday>,
    },
    /// Once a week from `start_day start` to the next `end_day end`, local time in `tz`.
    Weekly {
        /// Day of the start.
        start_day: Weekday,
        /// Local start time.
        start: NaiveTime,
        /// Day of the end (the first one at or after the start).
        end_day: Weekday,
        /// Local end time.
        end: NaiveTime,
        /// Time zone of both.
        tz: Tz,
    },
}

/// One session period, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    /// First instant of the period: its session id.
    pub start: DateTime<Utc>,
    /// First instant after it.
    pub end: DateTime<Utc>,
}

impl Period {
    /// Whether `t` is inside.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// A schedule as written in a configuration file (TOML inline table), before validation.
///
/// Daily: `{ start = "08:00", end = "17:00", tz = "Europe/London" }`, optionally with
/// `days = ["Mon", "Tue", "Wed", "Thu", "Fri"]`. Weekly: `{ start_day = "Sun", start =
/// "17:00", end_day = "Fri", end = "17:00", tz = "America/New_York" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `HH:MM` or `HH:MM:SS`.
    pub start: String,
    /// `HH:MM` or `HH:MM:SS`.
    pub end: String,
    /// IANA time zone name (`Europe/London`, `UTC`).
    pub tz: String,
    /// Daily form: weekdays a period may start on.
    pub days: Option<Vec<String>>,
    /// Weekly form: day of the start.
    pub start_day: Option<String>,
    /// Weekly form: day of the end.
    pub end_day: Option<String>,
}

/// A schedule that does not validate: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// `start`, `end`, `tz`, `days`, `start_day` or `end_day`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ScheduleError {}

/// Parses `HH:MM` or `HH:MM:SS` (24-hour clock, `00:00` to `23:59:59`).
pub fn parse_time(s: &str) -> Result<NaiveTime, String> {
    let ok_shape = matches!(s.len(), 5 | 8)
        && s.bytes().enumerate().all(|(i, b)| {
            if i % 3 == 2 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        });
    let t = if ok_shape {
        let fmt = if s.len() == 5 { "%H:%M" } else { "%H:%M:%S" };
        NaiveTime::parse_from_str(s, fmt).ok()
    } else {
        None
    };
    t.ok_or_else(|| {
        format!("{s:?} is not a time; use \"HH:MM\" or \"HH:MM:SS\" (00:00 to 23:59:59)")
    })
}

/// Parses a weekday: `Mon` or `Monday`, any case.
pub fn parse_day(s: &str) -> Result<Weekday, String> {
    s.parse::<Weekday>()
        .map_err(|_| format!("{s:?} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

/// Parses an IANA time zone name.
pub fn parse_tz(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>().map_err(|_| {
        format!(
            "{s:?} is not a time zone of the IANA database; use e.g. \"Europe/London\" or \"UTC\""
        )
    })
}

impl TryFrom<&ScheduleSpec> for SessionSchedule {
    type Error = ScheduleError;

    fn try_from(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        let e = |field: &'static str| move |reason: String| ScheduleError { field, reason };
        let start = parse_time(&spec.start).map_err(e("start"))?;
        let end = parse_time(&spec.end).map_err(e("end"))?;
        let tz = parse_tz(&spec.tz).map_err(e("tz"))?;
        match (&spec.start_day, &spec.end_day) {
            (None, None) => {
                let mut days = Vec::new();
                if let Some(list) = &spec.days {
                    if list.is_empty() {
                        return Err(e("days")(
                            "must list at least one day (leave it out for every day)".into(),
                        ));
                    }
                    for d in list {
                        let d = parse_day(d).map_err(e("days"))?;
                        if days.contains(&d) {
                            return Err(e("days")(format!("{d} is listed twice")));
                        }
                        days.push(d);
                    }
                }
                Ok(SessionSchedule::Daily {
                    start,
                    end,
                    tz,
                    days,
                })
            }
            (Some(sd), Some(ed)) => {
                if spec.days.is_some() {
                    return Err(e("days")(
                        "not allowed with start_day/end_day (a weekly schedule)".into(),
                    ));
                }
                Ok(SessionSchedule::Weekly {
                    start_day: parse_day(sd).map_err(e("start_day"))?,
                    start,
                    end_day: parse_day(ed).map_err(e("end_day"))?,
                    end,
                    tz,
                })
            }
            (Some(_), None) => Err(e("end_day")(
                "required with start_day (a weekly schedule)".into(),
            )),
            (None, Some(_)) => Err(e("start_day")(
                "required with end_day (a weekly schedule)".into(),
            )),
        }
    }
}

/// The instant a local date and time in `tz` stands for (see the module documentation for
/// repeated and non-existent local times).
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let pick = |r: LocalResult<DateTime<Tz>>| match r {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => None,
    };
    if let Some(t) = pick(tz.from_local_datetime(&local)) {
        return t;
    }
    // In a gap: the first whole minute after it that exists. Gaps in the database are at
    // most a day long (Pacific/Apia, 2011-12-30).
    let mut m = local
        .with_second(0)
        .and_then(|m| m.with_nanosecond(0))
        .unwrap_or(local);
    for _ in 0..3 * 24 * 60 {
        m += CDuration::minutes(1);
        if let Some(t) = pick(tz.from_local_datetime(&m)) {
            return t;
        }
    }
    // Unreachable with the IANA database; read the local time as UTC rather than fail.
    Utc.from_utc_datetime(&local)
}

impl SessionSchedule {
    fn tz(&self) -> Option<Tz> {
        match self {
            SessionSchedule::Always => None,
            SessionSchedule::Daily { tz, .. } | SessionSchedule::Weekly { tz, .. } => Some(*tz),
        }
    }

    /// The period starting on local date `d`, if one does (and DST leaves it non-empty).
    fn period_starting_on(&self, d: NaiveDate) -> Option<Period> {
        let (tz, start, end, len_days) = match self {
            SessionSchedule::Always => return None,
            SessionSchedule::Daily {
                start,
                end,
                tz,
                days,
            } => {
                if !days.is_empty() && !days.contains(&d.weekday()) {
                    return None;
                }
                (*tz, *start, *end, i64::from(end <= start))
            }
            SessionSchedule::Weekly {
                start_day,
                start,
                end_day,
                end,
                tz,
            } => {
                if d.weekday() != *start_day {
                    return None;
                }
                let k = (i64::from(end_day.num_days_from_monday()) + 7
                    - i64::from(start_day.num_days_from_monday()))
                    % 7;
                (
                    *tz,
                    *start,
                    *end,
                    if k == 0 && end <= start { 7 } else { k },
                )
            }
        };
        let s = resolve_local(tz, d.and_time(start));
        let e = resolve_local(tz, (d + CDuration::days(len_days)).and_time(end));
        (s < e).then_some(Period { start: s, end: e })
    }

    /// Every period starting within 9 local days of `now` (covering the one containing it,
    /// the last one before it and the next one), in order.
    fn periods_near(&self, now: DateTime<Utc>) -> Vec<Period> {
        let Some(tz) = self.tz() else {
            return Vec::new();
        };
        let today = now.with_timezone(&tz).date_naive();
        (-9..=9)
            .filter_map(|k| self.period_starting_on(today + CDuration::days(k)))
            .collect()
    }

    /// Whether the session may be logged on at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self {
            SessionSchedule::Always => true,
            _ => self.periods_near(now).iter().any(|p| p.contains(now)),
        }
    }

    /// The period containing `now`, if the session is open on a schedule.
    pub fn period_at(&self, now: DateTime<Utc>) -> Option<Period> {
        self.periods_near(now)
            .into_iter()
            .rev()
            .find(|p| p.contains(now))
    }

    /// The session id at `now`: the start of the period containing `now`, or of the last
    /// period that started before it. `None` for [`SessionSchedule::Always`] (one endless
    /// period).
    pub fn session_id_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.periods_near(now)
            .iter()
            .map(|p| p.start)
            .filter(|s| *s <= now)
            .max()
    }

    /// The first instant after `now` at which [`is_open`](Self::is_open) or
    /// [`session_id_at`](Self::session_id_at) changes: the next start or end. `None` for
    /// [`SessionSchedule::Always`].
    pub fn next_change(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.periods_near(now)
            .iter()
            .flat_map(|p| [p.start, p.end])
            .filter(|t| *t > now)
            .min()
    }

    /// The session id as whole seconds since the Unix epoch, as the store records it.
    pub fn session_id_secs(&self, now: DateTime<Utc>) -> Option<i64> {
        self.session_id_at(now).map(|t| t.timestamp())
    }
}

impl fmt::Display for SessionSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionSchedule::Always => write!(f, "always"),
            SessionSchedule::Daily {
                start,
                end,
                tz,
                days,
            } => {
                write!(f, "daily {start}-{end} {tz}")?;
                if !days.is_empty() {
                    let d: Vec<String> = days.iter().map(|d| d.to_string()).collect();
                    write!(f, " on {}", d.join(","))?;
                }
                Ok(())
            }
            SessionSchedule::Weekly {
                start_day,
                start,
                end_day,
                end,
                tz,
            } => write!(f, "weekly {start_day} {start} - {end_day} {end} {tz}"),
        }
    }
}
