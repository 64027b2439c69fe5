//! Running hook commands (scan hooks and event hooks): who they run as,
//! the environment and folder they get, and how long they may take.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

/// Environment variables a hook inherits from the server; every other one
/// (the key service token, `DROPVAULT_` settings, cloud credentials, the
/// PKCS#11 PIN, ...) stays behind, and none that
/// [`is_secret_env`](crate::secret::is_secret_env) names ever passes.
const KEPT_ENV: [&str; 7] = [
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
];
/// `PATH` when the server has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// An unprivileged account hooks run as (`scan.run_as`, `hooks.run_as`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The account's name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group; the hook gets no supplementary groups.
    pub gid: u32,
    /// Its home folder (the hook's `HOME`).
    pub home: PathBuf,
}

/// Why a `run_as` setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunAsError {
    /// No such account.
    #[error("no user {0:?} on this system")]
    NoSuchUser(String),
    /// The account database could not be read.
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// What failed.
        source: nix::errno::Errno,
    },
}

impl RunAs {
    /// The account `name` hooks are to run as: `None` when `name` is empty
    /// or the server is not root (it cannot switch users: hooks then run
    /// as the server's own user).
    pub fn resolve(name: &str) -> Result<Option<Self>, RunAsError> {
        if name.is_empty() || !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| RunAsError::Lookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| RunAsError::NoSuchUser(name.to_owned()))?;
        Ok(Some(Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }))
    }
}

/// A command for a hook (scan or event): `argv`, run as `run_as` (if
/// given) with no supplementary groups, in `/`, with only the environment
/// variables in [`KEPT_ENV`] of the server's own. Its file descriptors are
/// not inherited (Rust opens every file close-on-exec).
pub(crate) fn hook_command(argv: &[String], run_as: Option<&RunAs>) -> std::process::Command {
    let mut cmd = std::process::Command::new(argv.first().map_or("", String::as_str));
    cmd.args(argv.iter().skip(1)).env_clear().current_dir("/");
    for name in KEPT_ENV
        .into_iter()
        .filter(|n| !crate::secret::is_secret_env(n))
    {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    match run_as {
        // With a uid set and no groups given, std clears the supplementary
        // groups (setgroups(0)) before setuid.
        Some(user) => {
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                cmd.env("HOME", home);
            }
        }
    }
    cmd
}

/// Waits for `child` to exit, at most `timeout`; then kills it. `Ok(None)`
/// means it was killed.
pub(crate) fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{is_secret_env, SECRET_ENV};

    #[test]
    fn no_secret_is_kept_and_every_setting_is_secret() {
        for name in KEPT_ENV {
            assert!(!is_secret_env(name), "{name}");
        }
        for name in SECRET_ENV {
            assert!(is_secret_env(name), "{name}");
        }
        for name in [
            "DROPVAULT_KMS_TRANSIT_SECRET_ID_FILE",
            "DROPVAULT_KMS_PKCS11_PIN_FILE",
        ] {
            assert!(is_secret_env(name), "{name}");
        }
    }

    /// Whatever the server's environment holds, a hook sees the kept
    /// variables and its own account's, nothing else.
    #[test]
    fn a_hook_sees_only_the_kept_variables() {
        let argv = ["/usr/bin/env".to_owned()];
        let out = hook_command(&argv, None).output().expect("run env");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        assert!(names.contains(&"PATH"), "{text}");
        for name in names {
            assert!(
                KEPT_ENV.contains(&name) || name == "HOME",
                "hook got {name}"
            );
        }
    }
}
