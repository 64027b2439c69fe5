//! Running hook commands (scan hooks and event hooks): the environment they
//! get and how long they may take.

/// A command for a hook (scan or event): `argv`, with the server's own
/// secrets taken out of the environment it inherits (the key service
/// token, and every `DROPVAULT_` setting, which may hold one).
pub(crate) fn hook_command(argv: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new(argv.first().map_or("", String::as_str));
    cmd.args(argv.iter().skip(1));
    for (name, _) in std::env::vars_os() {
        let secret = name.to_str().is_none_or(|n| {
            n.starts_with("DROPVAULT_") || matches!(n, "VAULT_TOKEN" | "BAO_TOKEN")
        });
        if secret {
            cmd.env_remove(&name);
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
