//! `dropvault link create|list|revoke`: drop links, kept in the storage
//! the server uses (so every node on a shared bucket sees them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropvault_core::links::{rfc3339, Link, Links, NewLink};
use dropvault_core::size::parse_size;
use dropvault_core::vault::VPath;

use crate::config::Config;
use crate::{ops, println_safe, AnyError};

/// A lifetime as `link create --expires` takes it: a number and a unit
/// (`s`, `m`, `h`, `d`, `w`); "0" = never.
pub(crate) fn lifetime(s: &str) -> Result<Option<Duration>, AnyError> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--expires {s:?}: a number and a unit, e.g. 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("--expires {s:?}: the unit is s, m, h, d or w").into()),
    };
    match n.checked_mul(secs) {
        Some(0) => Err("--expires: a link that has expired at once is no link".into()),
        Some(secs) => Ok(Some(Duration::from_secs(secs))),
        None => Err(format!("--expires {s:?}: too long").into()),
    }
}

fn time(secs: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Options of `link create`.
pub(crate) struct Create {
    pub(crate) user: String,
    pub(crate) folder: String,
    pub(crate) expires: String,
    pub(crate) max_uploads: Option<u64>,
    pub(crate) max_bytes: Option<String>,
    pub(crate) password: Option<dropvault_core::accounts::Password>,
}

/// Makes a link and prints where it uploads to and, last, its URL.
pub(crate) fn create(config: &Config, c: Create) -> Result<(), AnyError> {
    let base = config
        .public_url()
        .ok_or("http.listen is off and http.public_url is empty: a link would have no URL")?;
    let max_bytes = c
        .max_bytes
        .as_deref()
        .map(|s| parse_size(s).map_err(|e| format!("--max-bytes {s:?}: {e}")))
        .transpose()?;
    if c.max_uploads == Some(0) || max_bytes == Some(0) {
        return Err("--max-uploads and --max-bytes must be at least 1".into());
    }
    let folder = VPath::resolve(&VPath::root(), &c.folder).map_err(|e| format!("--folder: {e}"))?;
    let vault = ops::vault(config, true)?;
    // There from the start, so the user sees where drops will land.
    vault
        .make_folders(&c.user, &folder)
        .map_err(|e| format!("--folder {}: {e}", c.folder))?;
    let links = Links::new(vault.storage().clone());
    let (link, token) = links.create(NewLink {
        user: c.user,
        folder: c.folder,
        lifetime: lifetime(&c.expires)?,
        max_uploads: c.max_uploads,
        max_bytes,
        password: c.password,
    })?;
    tracing::info!(event = "link_created", link = %link.id, user = %link.user,
        folder = %link.folder, expires = %link.expires.map_or("never".to_owned(), time));
    println_safe(&format!(
        "link {} for {}: uploads into {}, {}",
        link.id,
        link.user,
        link.folder,
        link.expires
            .map_or("does not expire".to_owned(), |e| format!(
                "expires {}",
                time(e)
            ))
    ));
    println_safe(&format!("{base}/d/{token}"));
    Ok(())
}

/// Prints the links (with what each let in).
pub(crate) fn list(config: &Config, json: bool) -> Result<(), AnyError> {
    let vault = ops::vault(config, false)?;
    let links = Links::new(vault.storage().clone());
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for link in links.list()? {
        let used = links.usage(&link.id)?;
        rows.push((link, used));
    }
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(l, u)| {
                serde_json::json!({
                    "id": l.id, "user": l.user, "folder": l.folder,
                    "created": time(l.created), "expires": l.expires.map(time),
                    "expired": l.expired(now),
                    "max_uploads": l.max_uploads, "max_bytes": l.max_bytes,
                    "password": l.has_password(), "uploads": u.uploads, "bytes": u.bytes,
                })
            })
            .collect();
        println_safe(&serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        println_safe("no links");
    }
    for (l, u) in &rows {
        println_safe(&row(l, u.uploads, u.bytes, now));
    }
    Ok(())
}

fn row(l: &Link, uploads: u64, bytes: u64, now: SystemTime) -> String {
    let limit = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    format!(
        "{}\t{}\t{}\t{}{}\tuploads {}/{}\tbytes {}/{}{}",
        l.id,
        l.user,
        l.folder,
        l.expires.map_or("never".to_owned(), time),
        if l.expired(now) { " (expired)" } else { "" },
        uploads,
        limit(l.max_uploads),
        bytes,
        limit(l.max_bytes),
        if l.has_password() { "\tpassword" } else { "" },
    )
}

/// Revokes link `id`.
pub(crate) fn revoke(config: &Config, id: &str) -> Result<(), AnyError> {
    let vault = ops::vault(config, false)?;
    Links::new(vault.storage().clone()).revoke(id)?;
    tracing::warn!(event = "link_revoked", link = %id);
    println_safe(&format!("revoked link {id}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(lifetime("0").expect("test"), None);
        assert_eq!(
            lifetime("7d").expect("test"),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(
            lifetime("90m").expect("test"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(lifetime("1s").expect("test"), Some(Duration::from_secs(1)));
        assert_eq!(
            lifetime("2w").expect("test"),
            Some(Duration::from_secs(1_209_600))
        );
        assert!(lifetime("0s").is_err());
        assert!(lifetime("7y").is_err());
        assert!(lifetime("d").is_err());
    }
}
