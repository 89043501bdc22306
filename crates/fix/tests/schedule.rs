//! Session schedules as pure functions of an instant: open windows, session ids, next
//! changes, DST transitions, the week wrap, and validation of the configuration form.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use proptest::prelude::*;

use understudy_fix::schedule::{resolve_local, ScheduleSpec, SessionSchedule};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap()
}

fn daily(start: NaiveTime, end: NaiveTime, tz: Tz) -> SessionSchedule {
    SessionSchedule::Daily {
        start,
        end,
        tz,
        days: Vec::new(),
    }
}

fn spec(start: &str, end: &str, tz: &str) -> ScheduleSpec {
    ScheduleSpec {
        start: start.into(),
        end: end.into(),
        tz: tz.into(),
        ..ScheduleSpec::default()
    }
}

#[test]
fn always_is_open_and_never_changes() {
    let s = SessionSchedule::Always;
    let t = utc(2024, 1, 1, 0, 0);
    assert!(s.is_open(t));
    assert_eq!(s.session_id_at(t), None);
    assert_eq!(s.next_change(t), None);
}

#[test]
fn daily_in_london_follows_summer_time() {
    let s = daily(hm(8, 0), hm(17, 0), chrono_tz::Europe::London);
    // Winter: GMT = UTC.
    assert!(!s.is_open(utc(2024, 1, 15, 7, 59)));
    assert!(s.is_open(utc(2024, 1, 15, 8, 0)));
    assert!(!s.is_open(utc(2024, 1, 15, 17, 0)));
    assert_eq!(
        s.session_id_at(utc(2024, 1, 15, 12, 0)),
        Some(utc(2024, 1, 15, 8, 0))
    );
    // Closed: the id is the last start; the next change is the next start.
    assert_eq!(
        s.session_id_at(utc(2024, 1, 15, 20, 0)),
        Some(utc(2024, 1, 15, 8, 0))
    );
    assert_eq!(
        s.next_change(utc(2024, 1, 15, 20, 0)),
        Some(utc(2024, 1, 16, 8, 0))
    );
    // Summer: BST = UTC+1.
    assert!(s.is_open(utc(2024, 7, 15, 7, 0)));
    assert!(!s.is_open(utc(2024, 7, 15, 16, 0)));
    assert_eq!(
        s.next_change(utc(2024, 7, 15, 10, 0)),
        Some(utc(2024, 7, 15, 16, 0))
    );
}

#[test]
fn overnight_daily_session() {
    // 22:00 to 06:00 New York.
    let s = daily(hm(22, 0), hm(6, 0), chrono_tz::America::New_York);
    // 2024-01-16 03:00 UTC = 2024-01-15 22:00 EST.
    let start = utc(2024, 1, 16, 3, 0);
    assert!(!s.is_open(start - Duration::seconds(1)));
    assert!(s.is_open(start));
    assert!(s.is_open(utc(2024, 1, 16, 10, 59)));
    assert!(!s.is_open(utc(2024, 1, 16, 11, 0)));
    assert_eq!(s.session_id_at(utc(2024, 1, 16, 10, 0)), Some(start));
    assert_eq!(s.next_change(start), Some(utc(2024, 1, 16, 11, 0)));
}

#[test]
fn twenty_four_hour_session_changes_id_at_start() {
    let s = daily(hm(17, 0), hm(17, 0), chrono_tz::UTC);
    let t = utc(2024, 3, 1, 16, 59);
    assert!(s.is_open(t));
    assert!(s.is_open(utc(2024, 3, 1, 17, 0)));
    assert_eq!(s.next_change(t), Some(utc(2024, 3, 1, 17, 0)));
    assert_eq!(s.session_id_at(t), Some(utc(2024, 2, 29, 17, 0)));
    assert_eq!(
        s.session_id_at(utc(2024, 3, 1, 17, 0)),
        Some(utc(2024, 3, 1, 17, 0))
    );
}

#[test]
fn daily_on_weekdays_only() {
    let s = SessionSchedule::Daily {
        start: hm(9, 0),
        end: hm(17, 0),
        tz: chrono_tz::UTC,
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
    };
    // 2024-03-02 is a Saturday.
    assert!(!s.is_open(utc(2024, 3, 2, 12, 0)));
    assert_eq!(
        s.session_id_at(utc(2024, 3, 2, 12, 0)),
        Some(utc(2024, 3, 1, 9, 0))
    );
    assert_eq!(
        s.next_change(utc(2024, 3, 1, 18, 0)),
        Some(utc(2024, 3, 4, 9, 0))
    );
}

#[test]
fn dst_gap_and_repeat_are_defined() {
    let london = chrono_tz::Europe::London;
    // 2024-03-31 01:30 does not exist in London (01:00 GMT → 02:00 BST): the clocks' jump,
    // 01:00 UTC.
    let gap = NaiveDate::from_ymd_opt(2024, 3, 31)
        .unwrap()
        .and_time(hm(1, 30));
    assert_eq!(resolve_local(london, gap), utc(2024, 3, 31, 1, 0));
    // 2024-10-27 01:30 happens twice (BST then GMT): the first, 00:30 UTC.
    let rep = NaiveDate::from_ymd_opt(2024, 10, 27)
        .unwrap()
        .and_time(hm(1, 30));
    assert_eq!(resolve_local(london, rep), utc(2024, 10, 27, 0, 30));

    // A session starting in the gap opens when the clocks jump.
    let s = daily(hm(1, 30), hm(12, 0), london);
    assert!(!s.is_open(utc(2024, 3, 31, 0, 59)));
    assert!(s.is_open(utc(2024, 3, 31, 1, 0)));
    assert_eq!(
        s.session_id_at(utc(2024, 3, 31, 5, 0)),
        Some(utc(2024, 3, 31, 1, 0))
    );
    // A period whose start and end are both in the gap does not happen that day.
    let empty = daily(hm(1, 10), hm(1, 50), london);
    assert!(!empty.is_open(utc(2024, 3, 31, 1, 0)));
    assert_eq!(
        empty.session_id_at(utc(2024, 3, 31, 12, 0)),
        Some(utc(2024, 3, 30, 1, 10))
    );
    // Ending in the repeated hour: the first 01:30.
    let s = daily(hm(0, 0), hm(1, 30), london);
    assert!(s.is_open(utc(2024, 10, 27, 0, 29)));
    assert!(!s.is_open(utc(2024, 10, 27, 0, 30)));
    assert!(!s.is_open(utc(2024, 10, 27, 1, 15)));
}

#[test]
fn weekly_across_the_week_wrap() {
    // Sunday 17:00 to Friday 17:00 New York (FX week).
    let fx = SessionSchedule::Weekly {
        start_day: Weekday::Sun,
        start: hm(17, 0),
        end_day: Weekday::Fri,
        end: hm(17, 0),
        tz: chrono_tz::America::New_York,
    };
    // 2024-01-07 is a Sunday; 17:00 EST = 22:00 UTC.
    let start = utc(2024, 1, 7, 22, 0);
    assert!(!fx.is_open(start - Duration::seconds(1)));
    for t in [start, utc(2024, 1, 8, 0, 0), utc(2024, 1, 12, 21, 59)] {
        assert!(fx.is_open(t), "{t}");
        assert_eq!(fx.session_id_at(t), Some(start));
    }
    assert!(!fx.is_open(utc(2024, 1, 12, 22, 0)));
    assert_eq!(fx.next_change(start), Some(utc(2024, 1, 12, 22, 0)));
    assert_eq!(
        fx.next_change(utc(2024, 1, 13, 12, 0)),
        Some(utc(2024, 1, 14, 22, 0))
    );

    // Friday 22:00 to Monday 06:00 UTC: open across Sunday → Monday.
    let wknd = SessionSchedule::Weekly {
        start_day: Weekday::Fri,
        start: hm(22, 0),
        end_day: Weekday::Mon,
        end: hm(6, 0),
        tz: chrono_tz::UTC,
    };
    let s = utc(2024, 1, 12, 22, 0);
    for t in [s, utc(2024, 1, 14, 23, 59), utc(2024, 1, 15, 5, 59)] {
        assert!(wknd.is_open(t), "{t}");
        assert_eq!(wknd.session_id_at(t), Some(s));
    }
    assert!(!wknd.is_open(utc(2024, 1, 15, 6, 0)));
    assert!(!wknd.is_open(utc(2024, 1, 17, 6, 0)));

    // Same day and time: a whole week, id changing at the start.
    let week = SessionSchedule::Weekly {
        start_day: Weekday::Sat,
        start: hm(8, 0),
        end_day: Weekday::Sat,
        end: hm(8, 0),
        tz: chrono_tz::UTC,
    };
    assert!(week.is_open(utc(2024, 1, 13, 7, 59)));
    assert_eq!(
        week.session_id_at(utc(2024, 1, 13, 7, 59)),
        Some(utc(2024, 1, 6, 8, 0))
    );
    assert_eq!(
        week.session_id_at(utc(2024, 1, 13, 8, 0)),
        Some(utc(2024, 1, 13, 8, 0))
    );
}

#[test]
fn spec_validation() {
    let ok = SessionSchedule::try_from(&spec("08:00", "17:00:30", "Europe/London")).unwrap();
    assert!(matches!(ok, SessionSchedule::Daily { .. }));
    let err = |s: ScheduleSpec| SessionSchedule::try_from(&s).unwrap_err().field;
    assert_eq!(err(spec("8am", "17:00", "UTC")), "start");
    assert_eq!(err(spec("08:00", "24:00", "UTC")), "end");
    assert_eq!(err(spec("08:00", "17:00", "Europe/Londn")), "tz");
    let mut s = spec("08:00", "17:00", "UTC");
    s.days = Some(vec!["Mon".into(), "Funday".into()]);
    assert_eq!(err(s.clone()), "days");
    s.days = Some(vec![]);
    assert_eq!(err(s), "days");
    let mut s = spec("08:00", "17:00", "UTC");
    s.start_day = Some("Sun".into());
    assert_eq!(err(s.clone()), "end_day");
    s.end_day = Some("Fry".into());
    assert_eq!(err(s.clone()), "end_day");
    s.end_day = Some("friday".into());
    assert!(matches!(
        SessionSchedule::try_from(&s).unwrap(),
        SessionSchedule::Weekly {
            start_day: Weekday::Sun,
            end_day: Weekday::Fri,
            ..
        }
    ));
}

const ZONES: [Tz; 7] = [
    chrono_tz::UTC,
    chrono_tz::Europe::London,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Sydney,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
    chrono_tz::America::Santiago,
];

fn arb_schedule() -> impl Strategy<Value = SessionSchedule> {
    let time = (0u32..24, prop_oneof![Just(0u32), Just(30), 0u32..60])
        .prop_map(|(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap());
    let day = (0u8..7).prop_map(|d| Weekday::try_from(d).unwrap());
    let tz = (0..ZONES.len()).prop_map(|i| ZONES[i]);
    prop_oneof![
        (
            time.clone(),
            time.clone(),
            tz.clone(),
            proptest::collection::btree_set(0u8..7, 0..4)
        )
            .prop_map(|(start, end, tz, days)| SessionSchedule::Daily {
                start,
                end,
                tz,
                days: days
                    .into_iter()
                    .map(|d| Weekday::try_from(d).unwrap())
                    .collect(),
            }),
        (day.clone(), time.clone(), day, time, tz).prop_map(
            |(start_day, start, end_day, end, tz)| SessionSchedule::Weekly {
                start_day,
                start,
                end_day,
                end,
                tz,
            }
        ),
    ]
}

/// 2020-01-01 to 2030-01-01, biased towards DST transition weekends.
fn arb_instant() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        (1_577_836_800i64..1_893_456_000).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        // Around the last Sunday of March/October and first Sunday of April, 2024.
        (0usize..4, -172_800i64..172_800).prop_map(|(i, off)| {
            let base = [
                utc(2024, 3, 31, 1, 0),
                utc(2024, 10, 27, 1, 0),
                utc(2024, 4, 7, 0, 0),
                utc(2024, 3, 10, 7, 0),
            ][i];
            base + Duration::seconds(off)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Nothing changes before `next_change`, and something does at it.
    #[test]
    fn state_flips_only_at_next_change(s in arb_schedule(), now in arb_instant(), f in 0.0f64..1.0) {
        let open = s.is_open(now);
        let id = s.session_id_at(now);
        prop_assert!(id.is_some());
        let next = s.next_change(now).expect("a scheduled session changes");
        prop_assert!(next > now);
        prop_assert!(next - now <= Duration::days(8));
        let span = (next - now).num_seconds();
        let mid = now + Duration::seconds(((span - 1) as f64 * f) as i64);
        for t in [mid, next - Duration::seconds(1)] {
            if t >= now {
                prop_assert_eq!(s.is_open(t), open, "at {}", t);
                prop_assert_eq!(s.session_id_at(t), id, "at {}", t);
            }
        }
        prop_assert!(s.is_open(next) != open || s.session_id_at(next) != id);
    }

    /// Within one open period the session id is its start, from the first instant to the
    /// last; the id is never in the future.
    #[test]
    fn session_start_is_stable_within_a_period(s in arb_schedule(), now in arb_instant()) {
        let id = s.session_id_at(now).expect("scheduled");
        prop_assert!(id <= now);
        if let Some(p) = s.period_at(now) {
            prop_assert_eq!(p.start, id);
            prop_assert!(s.is_open(p.start));
            prop_assert_eq!(s.session_id_at(p.start), Some(id));
            let last = p.end - Duration::seconds(1);
            prop_assert!(s.is_open(last));
            prop_assert_eq!(s.session_id_at(last), Some(id));
            prop_assert_eq!(s.next_change(now), Some(p.end));
        } else {
            prop_assert!(!s.is_open(now));
        }
    }

    /// A weekly session that crosses the end of the week (start day after end day) is open
    /// continuously from its start to its end, with one id.
    #[test]
    fn weekly_session_across_the_week_wrap(
        sd in 3u8..7, ed in 0u8..3, h in 0u32..24, k in 0i64..1000,
        tzi in 0..ZONES.len(), week in 0i64..500,
    ) {
        let tz = ZONES[tzi];
        let s = SessionSchedule::Weekly {
            start_day: Weekday::try_from(sd).unwrap(),
            start: hm(h, 0),
            end_day: Weekday::try_from(ed).unwrap(),
            end: hm(h, 0),
            tz,
        };
        let now = utc(2020, 1, 1, 0, 0) + Duration::hours(week * 7 * 24 / 3);
        let id = s.session_id_at(now).expect("scheduled");
        let mut start = id;
        if !s.is_open(now) {
            start = s.next_change(now).expect("next start");
        }
        let p = s.period_at(start).expect("open at its start");
        prop_assert_eq!(p.start, start);
        // Local length: from start day to end day across the wrap, ± a DST hour.
        let days = (i64::from(ed) + 7 - i64::from(sd)) % 7;
        let len = (p.end - p.start).num_minutes();
        prop_assert!((len - days * 1440).abs() <= 60, "length {} min for {} days", len, days);
        let t = p.start + Duration::seconds(k * (p.end - p.start).num_seconds() / 1000);
        prop_assert!(s.is_open(t));
        prop_assert_eq!(s.session_id_at(t), Some(start));
    }
}

#[test]
fn gateway_config_schedule_keys() {
    use understudy_fix::gateway::GatewayConfig;
    let file = std::path::Path::new("gw.toml");
    let base = |client: &str, upstream: &str| {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:9878\"\ncomp_id = \"GW\"\nstore_dir = \"/tmp/understudy-no-such-store\"\ndefault_route = \"EXCH\"\n\
             [[client]]\ncomp_id = \"C1\"\n{client}\n\
             [[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:9900\"]\ntarget_comp_id = \"EXCH\"\n{upstream}\n"
        )
    };
    let cfg = GatewayConfig::parse(
        file,
        &base(
            "schedule = { start = \"08:00\", end = \"17:00\", tz = \"Europe/London\", days = [\"Mon\", \"Fri\"] }",
            "schedule = { start_day = \"Sun\", start = \"17:00\", end_day = \"Fri\", end = \"17:00\", tz = \"America/New_York\" }",
        ),
    )
    .expect("valid");
    assert!(
        matches!(cfg.client_schedules[0], SessionSchedule::Daily { ref days, .. } if days.len() == 2)
    );
    assert!(matches!(
        cfg.upstreams[0].schedule,
        SessionSchedule::Weekly { .. }
    ));
    let none = GatewayConfig::parse(file, &base("", "")).expect("valid");
    assert_eq!(none.client_schedules, vec![SessionSchedule::Always]);
    assert_eq!(none.upstreams[0].schedule, SessionSchedule::Always);

    let err = |c: &str, u: &str| {
        let e = GatewayConfig::parse(file, &base(c, u)).unwrap_err();
        assert_eq!(e.file, file);
        (e.key, e.reason)
    };
    let (k, r) = err(
        "schedule = { start = \"08:00\", end = \"17:00\", tz = \"Mars/Olympus\" }",
        "",
    );
    assert_eq!(k, "client[0].schedule.tz");
    assert!(r.contains("Mars/Olympus"), "{r}");
    let (k, _) = err(
        "",
        "schedule = { start = \"8h\", end = \"17:00\", tz = \"UTC\" }",
    );
    assert_eq!(k, "upstream[0].schedule.start");
    let (k, _) = err(
        "schedule = { start = \"08:00\", end = \"17:00\", tz = \"UTC\", days = [\"Xyz\"] }",
        "",
    );
    assert_eq!(k, "client[0].schedule.days");
    let (k, _) = err(
        "",
        "schedule = { start_day = \"Sun\", start = \"17:00\", end_day = \"Fry\", end = \"17:00\", tz = \"UTC\" }",
    );
    assert_eq!(k, "upstream[0].schedule.end_day");
    let (k, r) = err(
        "schedule = { start = \"08:00\", end = \"17:00\", tz = \"UTC\", zone = \"x\" }",
        "",
    );
    assert_eq!(k, "(syntax)");
    assert!(r.contains("zone"), "{r}");
}
