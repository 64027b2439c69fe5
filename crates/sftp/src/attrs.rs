//! What a client sees of a vault entry: [`Attrs`] with plaintext size,
//! type and mode bits and modification time, and the `ls -l` style
//! `longname` of listings.
//!
//! Modes are fixed, not stored: files `0644`, folders `0755`. The vault
//! keeps no owners or modes (only the logged-in user ever sees the files),
//! so these are what clients that copy modes locally should apply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropvault_core::ls;
use dropvault_core::vault::{Entry, EntryKind};

use crate::proto::{Attrs, NameEntry, S_IFDIR, S_IFREG};

/// Mode of every file.
pub(crate) const FILE_MODE: u32 = S_IFREG | 0o644;
/// Mode of every folder.
pub(crate) const DIR_MODE: u32 = S_IFDIR | 0o755;

/// Seconds since 1970, as SFTP version 3 carries them (32 bits, clamped).
pub(crate) fn wire_time(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The time a client sent.
pub(crate) fn from_wire_time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// Attributes of a vault entry.
pub(crate) fn entry_attrs(e: &Entry) -> Attrs {
    let t = wire_time(e.modified);
    Attrs {
        size: Some(e.size),
        uid_gid: None,
        permissions: Some(match e.kind {
            EntryKind::File => FILE_MODE,
            EntryKind::Dir => DIR_MODE,
        }),
        times: Some((t, t)),
    }
}

/// A listing entry: name, `ls -l` line, attributes.
pub(crate) fn name_entry(e: &Entry, owner: &str, now: SystemTime) -> NameEntry {
    NameEntry {
        filename: e.name.clone(),
        longname: longname(e, owner, now),
        attrs: entry_attrs(e),
    }
}

/// `-rw-r--r--    1 alice    alice        1234 Jan  2 15:04 name`, as
/// OpenSSH's server formats it. Times within six months before `now` show
/// hour and minute, others the year. Control characters in the name and
/// whitespace or control characters in the owner become `?` and `_`, as
/// `ls -q` does: clients split these lines into columns.
pub(crate) fn longname(e: &Entry, owner: &str, now: SystemTime) -> String {
    let mode = match e.kind {
        EntryKind::File => "-rw-r--r--",
        EntryKind::Dir => "drwxr-xr-x",
    };
    let owner = ls::owner(owner);
    let name = ls::name(&e.name);
    format!(
        "{mode}    1 {owner:<8} {owner:<8} {:>8} {} {name}",
        e.size,
        ls::time(e.modified, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn longnames_look_like_ls() {
        // 2006-01-02 15:04:05 UTC
        let t = at(1_136_214_245);
        let file = Entry {
            name: "report.pdf".into(),
            kind: EntryKind::File,
            size: 1234,
            modified: t,
        };
        assert_eq!(
            longname(&file, "alice", at(1_136_214_245 + 86_400)),
            "-rw-r--r--    1 alice    alice        1234 Jan  2 15:04 report.pdf"
        );
        assert_eq!(
            longname(&file, "alice", at(1_136_214_245 + 400 * 86_400)),
            "-rw-r--r--    1 alice    alice        1234 Jan  2  2006 report.pdf"
        );
        let dir = Entry {
            name: "a\nb".into(),
            kind: EntryKind::Dir,
            size: 0,
            modified: t,
        };
        assert!(longname(&dir, "a b", t).starts_with("drwxr-xr-x    1 a_b "));
        assert!(longname(&dir, "x", t).ends_with(" a?b"));
    }

    #[test]
    fn attrs_carry_type_size_and_time() {
        let e = Entry {
            name: "f".into(),
            kind: EntryKind::File,
            size: 7,
            modified: at(100),
        };
        let a = entry_attrs(&e);
        assert_eq!(a.size, Some(7));
        assert_eq!(a.permissions, Some(0o100_644));
        assert_eq!(a.times, Some((100, 100)));
        assert_eq!(wire_time(at(u64::from(u32::MAX) + 5)), u32::MAX);
        assert_eq!(wire_time(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn dates_before_1970_and_far_ahead_do_not_panic() {
        assert_eq!(ls::civil_from_days(0), (1970, 1, 1));
        assert_eq!(ls::civil_from_days(-1), (1969, 12, 31));
        let _ = ls::time(UNIX_EPOCH - Duration::from_secs(1 << 40), at(0));
        let _ = ls::time(at(1 << 50), at(0));
    }
}
