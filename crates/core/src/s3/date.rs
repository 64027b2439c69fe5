//! The three time formats S3 speaks: `x-amz-date` (`20130524T000000Z`),
//! ISO 8601 in XML answers (`2009-10-12T17:50:30.000Z`) and HTTP dates in
//! `Last-Modified` (`Wed, 12 Oct 2009 17:50:30 GMT`). Only UTC, only what
//! S3 servers send; anything else is `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ls::civil_from_days;

const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Seconds since the epoch of a UTC date and time, if they are valid.
fn to_system_time(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
) -> Option<SystemTime> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * DAY
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    let since = Duration::new(secs.unsigned_abs(), 0);
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(since)?
    } else {
        UNIX_EPOCH.checked_sub(since)?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// `t` as `x-amz-date`: `YYYYMMDDTHHMMSSZ`. Times before 1970 (a broken
/// clock) are written as the epoch; the server refuses them either way.
pub(crate) fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    let (year, month, day) = civil_from_days(secs.div_euclid(DAY));
    let rest = secs.rem_euclid(DAY);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `t` in RFC 3339, UTC, to the second: `2026-12-06T14:03:32Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = amz_date(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// Exactly `n` ASCII digits as a number.
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// ISO 8601 / RFC 3339 in UTC as S3 lists write it:
/// `2009-10-12T17:50:30.000Z`, fraction optional, `Z` or `+00:00`.
pub(crate) fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let body = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (d.next()?, d.next()?, d.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let (hour, minute, second) = (t.next()?, t.next()?, t.next()?);
    if hour.len() != 2 || minute.len() != 2 || second.len() != 2 {
        return None;
    }
    let nanos = match fraction {
        None => 0,
        Some(f) if f.is_empty() || f.len() > 9 => return None,
        Some(f) => digits(f)? * 10u32.pow(9 - u32::try_from(f.len()).ok()?),
    };
    to_system_time(
        i64::from(digits(year)?),
        digits(month)?,
        digits(day)?,
        digits(hour)?,
        digits(minute)?,
        digits(second)?,
        nanos,
    )
}

/// An HTTP date in the IMF-fixdate form every current server sends:
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day = parts.next()?;
    let month = parts.next()?;
    let year = parts.next()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month)?;
    let mut t = time.splitn(3, ':');
    let (hour, minute, second) = (t.next()?, t.next()?, t.next()?);
    if hour.len() != 2 || minute.len() != 2 || second.len() != 2 {
        return None;
    }
    to_system_time(
        i64::from(digits(year)?),
        u32::try_from(month).ok()? + 1,
        digits(day)?,
        digits(hour)?,
        digits(minute)?,
        digits(second)?,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn amz_date_of_the_documentation_example() {
        // 2013-05-24T00:00:00Z, the instant of AWS's signing examples.
        assert_eq!(amz_date(at(1_369_353_600)), "20130524T000000Z");
        assert_eq!(amz_date(at(0)), "19700101T000000Z");
        assert_eq!(amz_date(at(951_782_400 + 3661)), "20000229T010101Z");
    }

    #[test]
    fn iso8601_as_s3_writes_it() {
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00.000Z"),
            Some(at(1_369_353_600))
        );
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:01Z"),
            Some(at(1_369_353_601))
        );
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00.5+00:00"),
            Some(at(1_369_353_600) + Duration::from_millis(500))
        );
        for bad in [
            "",
            "2013-05-24",
            "2013-05-24T00:00:00",
            "2013-02-30T00:00:00Z",
            "2013-13-01T00:00:00Z",
            "2013-05-24T24:00:00Z",
            "2013-05-24T00:00:00.Z",
            "2013-05-24T00:00:00.1234567890Z",
            "+013-05-24T00:00:00Z",
            "2013-05-24T00:00:00+02:00",
            "２０１３-05-24T00:00:00Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Fri, 24 May 2013 00:00:00 GMT"),
            Some(at(1_369_353_600))
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 01:01:01 GMT"),
            Some(at(951_782_400 + 3661))
        );
        for bad in [
            "",
            "Fri, 24 May 2013 00:00:00",
            "Fri, 24 Mai 2013 00:00:00 GMT",
            "Fri, 24 May 2013 00:00:00 UTC",
            "Fri 24 May 2013 00:00:00 GMT",
            "Fri, 29 Feb 2013 00:00:00 GMT",
            "Fri, 24 May 2013 00:00:00 GMT x",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 1, 10_957, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m.into(), d.into()), days);
        }
    }
}
