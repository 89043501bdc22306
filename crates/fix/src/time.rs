//! UTCTimestamp (`YYYYMMDD-HH:MM:SS[.fff…]`) formatting and parsing, written without a date
//! library because the session layer needs only this one format, always in UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 for a proleptic Gregorian date (Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Appends `t` as a FIX UTCTimestamp with millisecond precision (valid in FIX 4.2 and 4.4).
/// Times before 1970 are written as the epoch: a wall clock that far off is not worth a branch
/// in every caller.
pub fn write_utc_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs() as i64;
    let millis = since.subsec_millis();
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{y:04}{mo:02}{d:02}-{h:02}:{mi:02}:{s:02}.{millis:03}");
}

/// Formats `t` as a FIX UTCTimestamp string.
pub fn format_utc_timestamp(t: SystemTime) -> String {
    let mut v = Vec::with_capacity(21);
    write_utc_timestamp(&mut v, t);
    String::from_utf8(v).unwrap_or_default()
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
}

/// Parses a FIX UTCTimestamp (`YYYYMMDD-HH:MM:SS` with an optional fraction of 1–9 digits).
/// Returns `None` for anything malformed or before 1970.
pub fn parse_utc_timestamp(b: &[u8]) -> Option<SystemTime> {
    if b.len() < 17 || b[8] != b'-' || b[11] != b':' || b[14] != b':' {
        return None;
    }
    let y = digits(&b[0..4])?;
    let mo = digits(&b[4..6])?;
    let d = digits(&b[6..8])?;
    let h = digits(&b[9..11])?;
    let mi = digits(&b[12..14])?;
    let s = digits(&b[15..17])?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut nanos = 0u32;
    if b.len() > 17 {
        let frac = &b[17..];
        if frac[0] != b'.' || frac.len() < 2 || frac.len() > 10 {
            return None;
        }
        let f = digits(&frac[1..])?;
        let scale = 10i64.pow((9 - (frac.len() - 1)) as u32);
        nanos = (f * scale) as u32;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_value() {
        // 2024-02-29T13:45:07.123Z
        let t = UNIX_EPOCH + Duration::from_millis(1_709_214_307_123);
        assert_eq!(format_utc_timestamp(t), "20240229-13:45:07.123");
        assert_eq!(parse_utc_timestamp(b"20240229-13:45:07.123"), Some(t));
        assert_eq!(
            parse_utc_timestamp(b"20240229-13:45:07"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_214_307))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"20230229-00:00:00"[..],
            b"20241301-00:00:00",
            b"20240101-24:00:00",
            b"20240101 00:00:00",
            b"20240101-00:00:00.",
            b"20240101-00:00:00.1234567890",
            b"2024010-00:00:00",
            b"",
        ] {
            assert_eq!(parse_utc_timestamp(bad), None, "{:?}", bad);
        }
    }

    proptest! {
        #[test]
        fn round_trip(ms in 0u64..8_000_000_000_000) {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let s = format_utc_timestamp(t);
            prop_assert_eq!(parse_utc_timestamp(s.as_bytes()), Some(t));
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_utc_timestamp(&b);
        }
    }
}
