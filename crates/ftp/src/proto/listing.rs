//! Directory listing and timestamp formats: `ls -l` lines for LIST, RFC
//! 3659 fact lines for MLSD and MLST, and the `YYYYMMDDHHMMSS` time of MDTM
//! and the `modify` fact.
//!
//! All times are UTC. The calendar arithmetic and the `ls -l` columns
//! SFTP shares are in `dropvault_core::ls`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropvault_core::ls::{self, civil_from_days, small, unix_seconds};

/// The FEAT line advertising the MLST facts [`mlsx_facts`] emits, all of
/// them on by default (the `*`).
pub const MLST_FEAT: &str = "MLST type*;size*;modify*;perm*;";

/// RFC 3659 `perm` fact of a file: append, delete, rename, read, write.
const FILE_PERM: &str = "adfrw";
/// RFC 3659 `perm` fact of a directory: rename, list, create, delete,
/// make directory, purge, enter.
const DIR_PERM: &str = "flcdmpe";

/// What a listing shows about one directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The entry's name (not its full path), as the vault reports it.
    pub name: String,
    /// Whether the entry is a directory.
    pub is_dir: bool,
    /// Plaintext size in bytes; ignored for directories in MLSx facts.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

impl Fact {
    /// A file entry.
    pub fn file(name: impl Into<String>, size: u64, modified: SystemTime) -> Self {
        Fact {
            name: name.into(),
            is_dir: false,
            size,
            modified,
        }
    }

    /// A directory entry.
    pub fn dir(name: impl Into<String>, modified: SystemTime) -> Self {
        Fact {
            name: name.into(),
            is_dir: true,
            size: 0,
            modified,
        }
    }
}

/// One `ls -l` style line for LIST, without line terminator:
/// `-rw------- 1 alice alice      12345 Nov 27 19:33 name`.
///
/// Times within six months before `now` show hour and minute, older (and
/// future) ones the year, as `ls` does; `now` is a parameter to keep this
/// pure. Control characters in the name and whitespace in `owner` become
/// `?` and `_`, as `ls -q` does, because clients split these lines into
/// columns and lines.
pub fn list_line(fact: &Fact, owner: &str, now: SystemTime) -> String {
    let mode = if fact.is_dir {
        "drwx------"
    } else {
        "-rw-------"
    };
    let owner = ls::owner(owner);
    let owner = if owner.is_empty() {
        "ftp".into()
    } else {
        owner
    };
    let name = ls::name(&fact.name);
    let when = ls::time(fact.modified, now);
    format!("{mode} 1 {owner} {owner} {:>10} {when} {name}", fact.size)
}

/// The RFC 3659 fact line of an entry for MLSD, and after a leading space
/// for MLST: `type=file;size=123;modify=20261127193300;perm=adfrw; name`,
/// or `type=dir;modify=...;perm=flcdmpe; name`.
pub fn mlsx_facts(fact: &Fact) -> String {
    let modify = mdtm(fact.modified);
    let name = neutralise_line_ends(&fact.name);
    if fact.is_dir {
        format!("type=dir;modify={modify};perm={DIR_PERM}; {name}")
    } else {
        format!(
            "type=file;size={};modify={modify};perm={FILE_PERM}; {name}",
            fact.size
        )
    }
}

/// The fact line of the listed directory itself, which MLSD sends first:
/// `type=cdir;modify=...;perm=flcdmpe; name`. Pass the directory as a
/// [`Fact`] named `.` or by its path; `is_dir` and `size` are ignored.
pub fn mlsx_cdir(fact: &Fact) -> String {
    let modify = mdtm(fact.modified);
    let name = neutralise_line_ends(&fact.name);
    format!("type=cdir;modify={modify};perm={DIR_PERM}; {name}")
}

/// A time as `YYYYMMDDHHMMSS` in UTC, for MDTM and the `modify` fact.
/// Fractions of a second are dropped; times outside years 0000..=9999 are
/// clamped to that range so the result always has 14 digits.
pub fn mdtm(time: SystemTime) -> String {
    let dt = DateTime::from_unix(unix_seconds(time));
    let (year, month, day, hour, minute, second) = if dt.year < 0 {
        (0, 1, 1, 0, 0, 0)
    } else if dt.year > 9999 {
        (9999, 12, 31, 23, 59, 59)
    } else {
        (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)
    };
    format!("{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}")
}

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: small(rem / 3_600),
            minute: small(rem % 3_600 / 60),
            second: small(rem % 60),
        }
    }
}

/// Day number counted from 1970-01-01 of a proleptic Gregorian date, the
/// inverse of [`civil_from_days`] (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads an MFMT / MDTM time, `YYYYMMDDHHMMSS` with an optional fraction
/// of a second (`.sss`), UTC. `None` unless it is a real date and time of
/// the years 1 to 9999 (a leap second counts as the second before it).
pub fn parse_mdtm(text: &[u8]) -> Option<SystemTime> {
    let mut parts = text.splitn(2, |&b| b == b'.');
    let whole = parts.next()?;
    let fraction = parts.next();
    if whole.len() != 14 || !whole.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        whole
            .get(r)?
            .iter()
            .try_fold(0i64, |n, d| Some(n * 10 + i64::from(d - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(8..10)?, num(10..12)?, num(12..14)?);
    if y < 1 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    // February 30th and the like come back as another date.
    if civil_from_days(days) != (y, small(mo), small(d)) {
        return None;
    }
    let nanos = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.iter().all(u8::is_ascii_digit) => f
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(9)
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0')),
        Some(_) => return None,
    };
    let secs = days * 86_400 + h * 3_600 + mi * 60 + sec.min(59);
    let time = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Some(time + Duration::from_nanos(u64::from(nanos)))
}

/// Replaces CR and LF, which would split an MLSD line or an MLST reply.
fn neutralise_line_ends(name: &str) -> String {
    name.replace(['\r', '\n'], "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-11-27 19:33:00 UTC.
    const NOV_27_2026: u64 = 1_795_807_980;

    #[test]
    fn mdtm_known_times() {
        assert_eq!(mdtm(UNIX_EPOCH), "19700101000000");
        assert_eq!(mdtm(at(1_800_000_000)), "20270115080000");
        assert_eq!(mdtm(at(NOV_27_2026)), "20261127193300");
        assert_eq!(mdtm(at(951_782_400)), "20000229000000"); // leap day, 400-year rule
        assert_eq!(mdtm(at(4_107_542_399)), "21000228235959"); // 2100 is not leap
        assert_eq!(mdtm(at(4_107_542_400)), "21000301000000");
        assert_eq!(mdtm(at(1_700_000_000)), "20231114221320");
        assert_eq!(mdtm(at(253_402_300_799)), "99991231235959");
        // Sub-second parts are dropped.
        assert_eq!(
            mdtm(UNIX_EPOCH + Duration::from_millis(59_999)),
            "19700101000059"
        );
    }

    #[test]
    fn mdtm_before_epoch_and_clamping() {
        assert_eq!(mdtm(UNIX_EPOCH - Duration::from_secs(1)), "19691231235959");
        assert_eq!(
            mdtm(UNIX_EPOCH - Duration::from_millis(500)),
            "19691231235959"
        );
        assert_eq!(
            mdtm(UNIX_EPOCH - Duration::from_secs(2_208_988_800)),
            "19000101000000"
        );
        assert_eq!(mdtm(at(253_402_300_800)), "99991231235959"); // year 10000
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 2)) {
            assert_eq!(mdtm(far), "99991231235959");
        }
        if let Some(far) = UNIX_EPOCH.checked_sub(Duration::from_secs(100_000_000_000)) {
            assert_eq!(mdtm(far), "00000101000000");
        }
    }

    #[test]
    fn civil_from_days_round_trips() {
        // 1600-01-01 to 2500-12-31, every day: the days follow each other
        // and days_from_civil inverts civil_from_days.
        let start = days_from_civil(1600, 1, 1);
        let end = days_from_civil(2500, 12, 31);
        let mut prev = civil_from_days(start - 1);
        assert_eq!(prev, (1599, 12, 31));
        for day in start..=end {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), day);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            let next_day = (y, m, d) == (prev.0, prev.1, prev.2 + 1);
            let next_month =
                d == 1 && ((y, m) == (prev.0, prev.1 + 1) || (y, m) == (prev.0 + 1, 1));
            assert!(next_day || next_month, "{prev:?} -> {:?}", (y, m, d));
            prev = (y, m, d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn list_line_recent_file() {
        let fact = Fact::file("name", 12_345, at(NOV_27_2026));
        let now = at(NOV_27_2026 + 86_400);
        assert_eq!(
            list_line(&fact, "alice", now),
            "-rw------- 1 alice alice      12345 Nov 27 19:33 name"
        );
    }

    #[test]
    fn list_line_old_and_future_show_the_year() {
        let fact = Fact::file("old.txt", 0, at(NOV_27_2026));
        let now = at(NOV_27_2026 + ls::SIX_MONTHS as u64 + 1);
        assert_eq!(
            list_line(&fact, "alice", now),
            "-rw------- 1 alice alice          0 Nov 27  2026 old.txt"
        );
        // Just inside six months: still the time.
        let now = at(NOV_27_2026 + ls::SIX_MONTHS as u64 - 1);
        assert!(list_line(&fact, "alice", now).contains("Nov 27 19:33"));
        // A little in the future: the time; far in the future: the year.
        let now = at(NOV_27_2026 - 60);
        assert!(list_line(&fact, "alice", now).contains("Nov 27 19:33"));
        let now = at(NOV_27_2026 - 86_400);
        assert!(list_line(&fact, "alice", now).contains("Nov 27  2026"));
    }

    #[test]
    fn list_line_directory_day_padding_and_big_sizes() {
        // 2026-03-05 07:08:09 UTC
        let t = 1_772_694_489;
        assert_eq!(mdtm(at(t)), "20260305070809");
        let fact = Fact::dir("My Docs", at(t));
        assert_eq!(
            list_line(&fact, "bob", at(t)),
            "drwx------ 1 bob bob          0 Mar  5 07:08 My Docs"
        );
        let fact = Fact::file("big", 123_456_789_012_345, at(t));
        assert_eq!(
            list_line(&fact, "bob", at(t)),
            "-rw------- 1 bob bob 123456789012345 Mar  5 07:08 big"
        );
    }

    #[test]
    fn list_line_neutralises_names_and_owners() {
        let fact = Fact::file("a\r\nb\tc", 1, at(NOV_27_2026));
        assert_eq!(
            list_line(&fact, "John Smith", at(NOV_27_2026)),
            "-rw------- 1 John_Smith John_Smith          1 Nov 27 19:33 a??b?c"
        );
        assert!(list_line(&fact, "", at(NOV_27_2026)).starts_with("-rw------- 1 ftp ftp "));
    }

    #[test]
    fn mlsx_lines() {
        let file = Fact::file("report 2026.pdf", 123, at(NOV_27_2026));
        assert_eq!(
            mlsx_facts(&file),
            "type=file;size=123;modify=20261127193300;perm=adfrw; report 2026.pdf"
        );
        let dir = Fact::dir("sub", at(NOV_27_2026));
        assert_eq!(
            mlsx_facts(&dir),
            "type=dir;modify=20261127193300;perm=flcdmpe; sub"
        );
        let cdir = Fact::dir(".", at(0));
        assert_eq!(
            mlsx_cdir(&cdir),
            "type=cdir;modify=19700101000000;perm=flcdmpe; ."
        );
        let evil = Fact::file("x\r\n226 done", 1, at(0));
        assert_eq!(
            mlsx_facts(&evil),
            "type=file;size=1;modify=19700101000000;perm=adfrw; x??226 done"
        );
        // A name with ';' and '=' is fine: it follows the "; " separator.
        let odd = Fact::file("a;b=c", 1, at(0));
        assert!(mlsx_facts(&odd).ends_with("; a;b=c"));
    }

    #[test]
    fn parse_mdtm_reads_what_mdtm_writes() {
        for secs in [0u64, 1, 59, 86_399, 951_782_400, NOV_27_2026, 1_800_000_000] {
            assert_eq!(parse_mdtm(mdtm(at(secs)).as_bytes()), Some(at(secs)));
        }
        assert_eq!(
            parse_mdtm(b"20261127193300.250"),
            Some(at(NOV_27_2026) + Duration::from_millis(250))
        );
        assert_eq!(
            parse_mdtm(b"19691231235959"),
            Some(UNIX_EPOCH - Duration::from_secs(1))
        );
        assert_eq!(
            parse_mdtm(b"20240229000000").map(mdtm).as_deref(),
            Some("20240229000000")
        );
        for bad in [
            &b""[..],
            b"2024022900000",
            b"202402290000000",
            b"20230229000000",
            b"20241301000000",
            b"20240100000000",
            b"20240101240000",
            b"20240101236000",
            b"00000101000000",
            b"2024010100000x",
            b"20240101000000.",
            b"20240101000000.1234567890",
            b"20240101000000.x",
            b"+2024010100000",
        ] {
            assert_eq!(parse_mdtm(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
