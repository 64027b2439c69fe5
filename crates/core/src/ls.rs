//! What `ls -l` style listing lines share, whichever front end sends
//! them (FTP's LIST, SFTP's longnames): the time column, names and owners
//! made safe for clients that split lines into columns, and the UTC
//! calendar arithmetic behind them (Howard Hinnant's `civil_from_days`),
//! which does not justify a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in half an average Gregorian year: `ls -l` shows the year
/// instead of the time for files older than this.
pub const SIX_MONTHS: i64 = 15_778_476;
/// How far in the future a time may be and still count as recent. `ls`
/// allows none, but storage clocks (an S3 backend's, say) may run slightly
/// ahead of ours, and a just-uploaded file should not show a year.
pub const FUTURE_SLACK: i64 = 3_600;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Nov 27 19:33` for a time within six months before `now` (or up to
/// [`FUTURE_SLACK`] after it), `Nov 27  2025` otherwise, as `ls` shows it.
pub fn time(t: SystemTime, now: SystemTime) -> String {
    let t = unix_seconds(t);
    let now = unix_seconds(now);
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let month = MONTHS
        .get(usize::from(month.saturating_sub(1)))
        .copied()
        .unwrap_or("???");
    let recent = t > now.saturating_sub(SIX_MONTHS) && t <= now.saturating_add(FUTURE_SLACK);
    if recent {
        format!(
            "{month} {day:>2} {:02}:{:02}",
            rem / 3_600,
            rem % 3_600 / 60
        )
    } else {
        format!("{month} {day:>2} {year:>5}")
    }
}

/// An owner for a listing column: whitespace and control characters become
/// `_`, so the line keeps its columns.
pub fn owner(owner: &str) -> String {
    owner
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A name for a listing line: control characters become `?`, as `ls -q`
/// does, so a name cannot break the line.
pub fn name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Whole seconds since the Unix epoch, rounded down (also before 1970),
/// saturating at the ends of `i64`.
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // -1.5 s is in the second that starts at -2.
            let partial = i64::from(before.subsec_nanos() > 0);
            0i64.saturating_sub(secs).saturating_sub(partial)
        }
    }
}

/// Narrows a value already known to be below 256 (a month, day, hour,
/// minute or second).
pub fn small(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// Year, month (1..=12) and day (1..=31) of a day number counted from
/// 1970-01-01, proleptic Gregorian. Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>): count from
/// 0000-03-01 so the leap day ends the year, in 400-year eras of 146097
/// days.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Far enough from the ends of i64 that nothing below overflows;
    // mdtm clamps such years anyway.
    let z = days.clamp(-(1 << 40), 1 << 40) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, small(month), small(day))
}
