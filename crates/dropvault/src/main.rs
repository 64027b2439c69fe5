//! The `dropvault` command: configuration, wiring, and what an operator
//! runs — the server, and user management for the `file` account backend.

mod admin;
mod config;
mod links;
mod logging;
mod ops;
mod progress;

use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dropvault_core::accounts::sshkey::{SshPublicKey, MAX_KEYS_PER_USER, MAX_KEY_LINE_LEN};
use dropvault_core::accounts::{AuthBackend, Password, UserFile};
use dropvault_core::vault::Quota;
use dropvault_core::vault::Vault;

use config::Config;

/// An FTP, FTPS and SFTP file-drop server that keeps every file encrypted at rest.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Settings can also come from
    /// DROPVAULT_<SECTION>_<KEY> environment variables; see docs/CONFIG.md.
    #[arg(long, global = true, env = "DROPVAULT_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server. With no configuration: FTP on 127.0.0.1:2121 with
    /// explicit FTPS, SFTP on 127.0.0.1:2222 (host key made on first start),
    /// HTTPS on 127.0.0.1:8443 (drop links, the account page), data in
    /// ./dropvault-data, and a `demo` user whose password is printed once.
    Serve,
    /// Manage the users of the `file` account backend.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Key-encryption key status, rotation, recovery key pair.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Decrypt one stored file to a plaintext file (or `-o -` for standard
    /// output), with the configured key provider or, when the key service
    /// is gone, the recovery key's private half.
    Decrypt {
        /// Whose file it is.
        #[arg(long)]
        user: String,
        /// The file's path as the user sees it, e.g. /reports/q3.pdf.
        path: String,
        /// Where to write the plaintext; `-` for standard output.
        #[arg(short, long)]
        out: PathBuf,
        /// Private recovery key (PKCS#8 PEM) instead of the key provider.
        #[arg(long)]
        recovery_key: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Read every stored file (of one user, or of all) and check its header
    /// and every segment. Exit status 1 if any file fails.
    Verify {
        /// Only this user's files.
        #[arg(long)]
        user: Option<String>,
        /// Private recovery key (PKCS#8 PEM) instead of the key provider.
        #[arg(long)]
        recovery_key: Option<PathBuf>,
    },
    /// Drop links: URLs through which anyone who has one uploads new
    /// files into one folder of a user's vault from a browser.
    Link {
        #[command(subcommand)]
        action: LinkAction,
    },
    /// The TLS certificate clients see.
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Uploads the scanner rejected, kept sealed when scan.quarantine = true.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Seal an existing plaintext folder tree into a user's vault. Reports
    /// each file it skips and why (links, special files, names already in
    /// the vault, rejected by the `[scan]` scanners); exit status 1 if any
    /// was skipped. The source is left as it is.
    Import {
        /// Whose vault receives the files.
        #[arg(long)]
        user: String,
        /// The folder to import.
        src: PathBuf,
        /// Folder in the vault to import into.
        #[arg(long, default_value = "/")]
        dest: String,
    },
}

#[derive(Subcommand, Debug)]
enum LinkAction {
    /// Make a link and print its URL (shown once: only its hash is kept).
    Create {
        /// Whose vault uploads go to.
        #[arg(long)]
        user: String,
        /// The folder they go in (created if missing).
        #[arg(long, default_value = "/incoming")]
        folder: String,
        /// How long the link works: 90m, 12h, 7d, 2w; 0 = until revoked.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// Uploads it lets in, at most.
        #[arg(long)]
        max_uploads: Option<u64>,
        /// Bytes it lets in, all uploads together, e.g. 2GiB.
        #[arg(long)]
        max_bytes: Option<String>,
        /// Ask uploaders for a password, read from the first line of
        /// standard input.
        #[arg(long)]
        password: bool,
    },
    /// The links: id, user, folder, expiry, limits and what they let in.
    List {
        /// As a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a link: its URL stops working at once.
    Revoke {
        /// The id `list` shows.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum TlsAction {
    /// Print the SHA-256 fingerprint of the server's certificate (as
    /// `openssl x509 -noout -fingerprint -sha256` and FileZilla show it),
    /// its subject and end of validity.
    Fingerprint,
}

#[derive(Subcommand, Debug)]
enum QuarantineAction {
    /// Rejected uploads kept in quarantine: id, user, path, size, finding.
    List,
    /// Put a quarantined upload into its user's vault (where it was going,
    /// or --dest), never over an existing file.
    Release {
        /// The id `list` shows.
        id: String,
        /// Path in the user's vault instead of the original one.
        #[arg(long)]
        dest: Option<String>,
    },
    /// Delete a quarantined upload.
    Delete {
        /// The id `list` shows.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Provider, KEK name and versions, and how many key files sit at each
    /// version. Exit status 1 if the key service cannot be asked.
    Status,
    /// Re-wrap every key file under the KEK's current version (after
    /// rotating the key in the key service), and add missing recovery
    /// wraps. File data is not touched.
    Rotate,
    /// Generate a recovery key pair: keep the private half offline, set
    /// kms.recovery_public_key to the public half.
    RecoveryKeygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600).
        private: PathBuf,
        /// Where to write the public key (SubjectPublicKeyInfo PEM).
        public: PathBuf,
        /// RSA modulus size: 3072 or 4096.
        #[arg(long, default_value_t = 4096)]
        bits: u32,
    },
}

#[derive(Subcommand, Debug)]
enum UserAction {
    /// Add a user. Without --password-stdin a random password is generated
    /// and printed.
    Add {
        /// User name: letters, digits, '.', '_', '@', '-'; up to 64.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Change a user's password.
    Passwd {
        /// User name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user. Their files and key file stay unless --shred.
    Delete {
        /// User name.
        name: String,
        /// Destroy the user's key file first (their files become
        /// unreadable for good, even from backups of the ciphertext), then
        /// their files. With auth.backend = "pam", shreds the data and
        /// leaves the system account alone.
        #[arg(long)]
        shred: bool,
    },
    /// Set a user's own quota, over `[limits]` quota_bytes and
    /// quota_files (the users file; auth.backend = "file").
    SetQuota {
        /// User name.
        name: String,
        /// Plaintext bytes of stored files, e.g. 5GiB; 0 = no limit.
        #[arg(long)]
        bytes: Option<String>,
        /// Number of stored files; 0 = no limit.
        #[arg(long)]
        files: Option<u64>,
        /// Drop the user's own quota first (back to `[limits]`).
        #[arg(long)]
        clear: bool,
    },
    /// Show what a user's stored files take, and their quota.
    Usage {
        /// User name.
        name: String,
    },
    /// A user's SSH public keys, for logging in with a key instead of the
    /// password.
    Key {
        #[command(subcommand)]
        action: UserKeyAction,
    },
}

#[derive(Subcommand, Debug)]
enum UserKeyAction {
    /// Add public keys: `.pub` lines (ssh-ed25519 or
    /// ecdsa-sha2-nistp256/384/521; RSA is not supported) from --file or
    /// standard input, one or more. Prints each key's fingerprint. A key
    /// the user already has stays as it is; if any line is refused,
    /// nothing is added.
    Add {
        /// User name.
        name: String,
        /// Read the keys from this file (e.g. id_ed25519.pub) instead of
        /// standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List a user's keys: fingerprint, type, comment, when added.
    List {
        /// User name.
        name: String,
    },
    /// Delete a user's key.
    Delete {
        /// User name.
        name: String,
        /// The key's fingerprint, `SHA256:...` as `list` and
        /// `ssh-keygen -lf KEY.pub` show it.
        fingerprint: String,
    },
}

fn main() -> ExitCode {
    // Before any secret is read: no core file, no ptrace or
    // /proc/<pid>/{environ,mem} for other processes of the same user.
    let hardened = no_dumps();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln_safe(&format!("dropvault: configuration: {e}"));
            return ExitCode::from(2);
        }
    };
    logging::init(config.log.format);
    if let Err(e) = hardened {
        tracing::warn!(error = %e, "cannot disable core dumps; a crash may write memory (keys) to disk");
    }
    let result = match cli.command {
        Command::Serve => serve(config, cli.config.clone()).map(|()| true),
        Command::User { action } => user(&config, action).map(|()| true),
        Command::Keys { action } => keys(&config, action),
        Command::Decrypt {
            user,
            path,
            out,
            recovery_key,
            force,
        } => {
            ops::decrypt(&config, &user, &path, &out, recovery_key.as_deref(), force).map(|()| true)
        }
        Command::Verify { user, recovery_key } => {
            ops::verify(&config, user.as_deref(), recovery_key.as_deref())
        }
        Command::Link { action } => link(&config, action),
        Command::Tls { action } => tls(&config, action),
        Command::Quarantine { action } => quarantine(&config, action),
        Command::Import { user, src, dest } => data_dir(&config)
            .and_then(|()| known_user(&config, &user))
            .and_then(|_| ops::import(&config, &user, &src, &dest)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e}");
            eprintln_safe(&format!("dropvault: {e}"));
            ExitCode::FAILURE
        }
    }
}

pub(crate) type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// No core dumps (RLIMIT_CORE 0) and not dumpable (PR_SET_DUMPABLE 0),
/// which also makes /proc/<pid>/{environ,mem,fd} root's and refuses ptrace
/// to the server's own user, e.g. to a hook running as that user.
fn no_dumps() -> nix::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)
}

fn data_dir(config: &Config) -> Result<(), AnyError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    Ok(())
}

fn quarantine(config: &Config, action: QuarantineAction) -> Result<bool, AnyError> {
    let vault = ops::vault(config, false)?;
    match action {
        QuarantineAction::List => {
            let entries = vault.quarantine_list()?;
            for q in &entries {
                println_safe(&format!(
                    "{}\t{}\t{}\t{} bytes\t{}",
                    q.id, q.user, q.path, q.size, q.finding
                ));
            }
            if entries.is_empty() {
                println_safe("quarantine is empty");
            }
        }
        QuarantineAction::Release { id, dest } => {
            let dest = dest
                .map(|d| {
                    dropvault_core::vault::VPath::resolve(&dropvault_core::vault::VPath::root(), &d)
                })
                .transpose()?;
            let (user, path) = vault.quarantine_release(&id, dest.as_ref())?;
            tracing::warn!(event = "quarantine_released", id, user, path = %path);
            println_safe(&format!("released {id} to {user}:{path}"));
        }
        QuarantineAction::Delete { id } => {
            let q = vault.quarantine_delete(&id)?;
            tracing::info!(
                event = "quarantine_deleted",
                id,
                user = q.user,
                path = q.path
            );
            println_safe(&format!("deleted {id} ({}:{})", q.user, q.path));
        }
    }
    Ok(true)
}

/// With the `file` backend, refuses a name that is not an account, so a
/// typo does not create a key and a folder for nobody; returns the users
/// file. Other backends' accounts are not listed: `None`.
fn known_user(config: &Config, name: &str) -> Result<Option<UserFile>, AnyError> {
    if config.auth.backend != AuthBackend::File {
        return Ok(None);
    }
    let users = UserFile::open(config.path(&config.auth.users_file))?;
    if !users.list()?.iter().any(|u| u == name) {
        return Err(format!("no user {name:?}").into());
    }
    Ok(Some(users))
}

fn keys(config: &Config, action: KeysAction) -> Result<bool, AnyError> {
    match action {
        // Needs no data folder: the pair goes where the operator says.
        KeysAction::RecoveryKeygen {
            private,
            public,
            bits,
        } => ops::recovery_keygen(&private, &public, bits).map(|()| true),
        KeysAction::Status => ops::keys_status(config),
        KeysAction::Rotate => ops::keys_rotate(config),
    }
}

/// A first user, `demo` with a random password shown once, when the users
/// file has none: a fresh install can be tried at once.
fn demo_user(config: &Config) -> Result<(), AnyError> {
    let users = UserFile::open(config.path(&config.auth.users_file))?;
    if users.list()?.is_empty() {
        let password = random_password();
        users.add("demo", &Password::new(password.clone()))?;
        println_safe(&format!(
            "No users yet: created user \"demo\" with password \"{password}\" (shown once; \
             change it with `dropvault user passwd demo --password-stdin`)."
        ));
    }
    Ok(())
}

fn serve(config: Config, config_file: Option<PathBuf>) -> Result<(), AnyError> {
    raise_open_file_limit(config.ftp.max_sessions);
    data_dir(&config)?;
    let keyring = Arc::new(ops::keyring(
        &config,
        dropvault_core::keys::MissingKek::Create,
    )?);
    tracing::info!(
        provider = keyring.provider().kind(),
        kek = keyring.provider().key_name(),
        "key provider ready"
    );
    let scanner = dropvault_core::scan::Scanner::new(config.scan_settings()?)?.map(Arc::new);
    hook_accounts(&config);
    if scanner.is_some() {
        tracing::info!(clamd = %config.scan.clamd, command = ?config.scan.command,
            on_error = ?config.scan.on_error, quarantine = config.scan.quarantine,
            "uploads are scanned before they are committed");
    }
    let vault = Arc::new(
        ops::vault(&config, true)?
            .with_scanner(scanner)
            .with_staging_limit(config.max_staging_bytes()?),
    );
    let events = Arc::new(dropvault_core::events::Hooks::start(
        config.hook_settings()?,
    )?);
    if config.auth.backend == AuthBackend::File {
        demo_user(&config)?;
    }
    let auth = dropvault_core::accounts::from_config(&config.auth, &config.data_dir)?;
    let ftp = config.ftp_config()?;
    let http_listen = config.http_listen()?;
    // One certificate for FTPS and HTTPS, loaded when either is on.
    let server_cert = if ftp.tls != dropvault_ftp::TlsMode::Off || http_listen.is_some() {
        let files = cert_files(&config);
        dropvault_ftp::tls::cert::ensure_self_signed(&files)?;
        let server_cert = dropvault_ftp::tls::ServerCert::load(&files)?;
        announce_cert(&files)?;
        Some(server_cert)
    } else {
        None
    };
    let server_tls = server_cert
        .clone()
        .map(dropvault_ftp::tls::server_config)
        .transpose()?;
    let tls = server_tls
        .clone()
        .filter(|_| ftp.tls != dropvault_ftp::TlsMode::Off);
    let https_tls = server_tls.filter(|_| http_listen.is_some());
    let http_config = dropvault_http::HttpConfig {
        max_upload_bytes: config.max_upload_bytes(),
    };
    let admin_listen = config.admin_listen()?;
    let admin_token = match config.admin.token_file.trim() {
        "" => None,
        file => Some(admin::read_token(&config.path(file))?),
    };
    let probes = admin::Probes {
        keyring: keyring.clone(),
        vault: vault.clone(),
    };
    let services = dropvault_core::session::Services {
        auth,
        keyring,
        vault,
        events: events.clone(),
    };
    let gate = Arc::new(dropvault_core::session::Gate::new(
        services,
        config.gate_config()?,
    ));
    let reload = Reload {
        file: config_file,
        running: config.clone(),
        server_cert,
        vault: gate.services().vault.clone(),
        events: gate.services().events.clone(),
        gate: gate.clone(),
    };
    // Every transfer holds a blocking thread (a large download two) for
    // its file I/O and cipher work; the rest of the pool serves logins,
    // listings and the like, so transfers at the session limit never queue
    // them. Threads only exist while used.
    let blocking_threads = config.ftp.max_sessions.saturating_mul(2).saturating_add(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads.max(512))
        .build()?;
    let ssh = config.ssh_config()?;
    let sftp_listen = config.sftp_listen()?;
    let host_key = match sftp_listen {
        Some(_) => {
            let path = config.path(&config.sftp.host_key);
            let (key, created) = dropvault_sftp::hostkey::load_or_create(&path)?;
            let fingerprint = dropvault_sftp::hostkey::fingerprint(&key);
            if created {
                tracing::info!(file = %path.display(), %fingerprint, "SSH host key created");
            }
            Some((key, fingerprint))
        }
        None => None,
    };
    runtime.block_on(async move {
        // Signal handlers go in before anyone can learn the server is up,
        // so a SIGTERM right after the ready line still drains.
        let signal = shutdown_signal()?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(expire_staging(gate.services().vault.clone()));
        tokio::spawn(reload_on_hangup(reload, hangup));
        // Before the FTP ready line, which tells the server is up.
        let admin = match admin_listen {
            Some(addr) => {
                let listener = admin::bind(addr, admin_token.is_some()).await?;
                Some(tokio::spawn(admin::serve(
                    listener,
                    admin_token,
                    probes,
                    stopped(stop_rx.clone()),
                )))
            }
            None => None,
        };
        let https = match (http_listen, https_tls) {
            (Some(addr), Some(tls)) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let addr = listener.local_addr()?;
                tracing::info!(event = "listening", https = %addr);
                println_safe(&format!("dropvault: HTTPS on {addr}"));
                Some(tokio::spawn(dropvault_http::serve(
                    listener,
                    tls,
                    gate.clone(),
                    http_config,
                    stopped(stop_rx.clone()),
                )))
            }
            _ => None,
        };
        let control = tokio::net::TcpListener::bind(config.listen()?).await?;
        let implicit_tls = match config.implicit_listen()? {
            Some(addr) if tls.is_some() => Some(tokio::net::TcpListener::bind(addr).await?),
            _ => None,
        };
        let control_addr = control.local_addr()?;
        let implicit_addr = implicit_tls.as_ref().map(|l| l.local_addr()).transpose()?;
        tracing::info!(event = "listening", ftp = %control_addr, implicit_ftps = ?implicit_addr,
            data_dir = %config.data_dir.display(), "dropvault serving");
        println_safe(&format!(
            "dropvault: FTP on {control_addr}{}{}",
            if tls.is_some() {
                " (explicit FTPS available)"
            } else {
                ""
            },
            implicit_addr
                .map(|a| format!(", implicit FTPS on {a}"))
                .unwrap_or_default()
        ));
        let sftp = match (sftp_listen, host_key) {
            (Some(addr), Some((key, fingerprint))) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let addr = listener.local_addr()?;
                tracing::info!(event = "listening", sftp = %addr, host_key = %fingerprint);
                println_safe(&format!(
                    "dropvault: SFTP on {addr} (host key {fingerprint})"
                ));
                Some(tokio::spawn(dropvault_sftp::serve_ssh(
                    ssh,
                    key,
                    gate.clone(),
                    listener,
                    stopped(stop_rx.clone()),
                )))
            }
            _ => None,
        };
        let listeners = dropvault_ftp::Listeners {
            control,
            implicit_tls,
        };
        dropvault_ftp::serve(ftp, gate, tls, listeners, stopped(stop_rx)).await?;
        if let Some(sftp) = sftp {
            sftp.await.map_err(std::io::Error::other)??;
        }
        if let Some(admin) = admin {
            admin.await.map_err(std::io::Error::other)?;
        }
        if let Some(https) = https {
            https.await.map_err(std::io::Error::other)?;
        }
        Ok::<(), AnyError>(())
    })?;
    // Events still queued get a few seconds to go out.
    events.shutdown(std::time::Duration::from_secs(5));
    tracing::info!(event = "stopped", "dropvault stopped");
    Ok(())
}

/// Logs and prints the TLS certificate's fingerprint, subject and expiry.
fn announce_cert(files: &dropvault_ftp::tls::CertFiles) -> Result<(), AnyError> {
    let cert = dropvault_ftp::tls::cert::summary(&files.cert)?;
    tracing::info!(cert = %files.cert.display(), fingerprint = %cert.fingerprint,
        subject = %cert.subject, not_after = %cert.not_after, "TLS certificate");
    println_safe(&format!(
        "dropvault: TLS certificate SHA-256 fingerprint {} ({}, valid until {})",
        cert.fingerprint, cert.subject, cert.not_after
    ));
    Ok(())
}

/// What SIGHUP rereads, and where it goes.
struct Reload {
    /// The configuration file the server started with (the environment is
    /// read again too).
    file: Option<PathBuf>,
    /// The configuration in force.
    running: Config,
    /// The TLS certificate and key, when FTPS or HTTPS is on.
    server_cert: Option<Arc<dropvault_ftp::tls::ServerCert>>,
    vault: Arc<dropvault_core::vault::Vault>,
    events: Arc<dropvault_core::events::Hooks>,
    gate: Arc<dropvault_core::session::Gate>,
}

/// Rereads the configuration on each SIGHUP: the TLS certificate and key,
/// the scan and hook settings, the bandwidth limits and quotas (for
/// sessions that log in afterwards). A configuration that does not load, or
/// whose new parts cannot be used, is refused with a log line and the
/// running one stays; sessions are not touched either way. (The users
/// file is reread by itself when it changes.)
async fn reload_on_hangup(mut reload: Reload, mut hangup: tokio::signal::unix::Signal) {
    while hangup.recv().await.is_some() {
        tracing::info!(event = "reload", "SIGHUP: rereading the configuration");
        let (result, back) = match tokio::task::spawn_blocking(move || {
            let result = reload.apply();
            (result, reload)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(event = "reload_refused", error = %e, "reload failed");
                return;
            }
        };
        reload = back;
        match result {
            Ok(()) => tracing::info!(event = "reloaded", "configuration reloaded"),
            Err(e) => tracing::error!(event = "reload_refused", error = %e,
                "new configuration refused; the running one stays"),
        }
    }
}

impl Reload {
    /// Loads the configuration again and applies what can change while
    /// running, all of it checked before any of it is applied.
    fn apply(&mut self) -> Result<(), AnyError> {
        let new = Config::load(self.file.as_deref(), std::env::vars())?;
        let scanner = dropvault_core::scan::Scanner::new(new.scan_settings()?)?.map(Arc::new);
        let hooks = new.hook_settings()?;
        hooks.check()?;
        let rates = new.rates()?;
        let quota = new.quota()?;
        if let Some(cert) = &self.server_cert {
            let files = cert_files(&new);
            dropvault_ftp::tls::cert::ensure_self_signed(&files)?;
            cert.reload(&files)?;
            announce_cert(&files)?;
        }
        self.vault.set_scanner(scanner);
        self.gate.set_rates(rates);
        self.vault.set_quota(quota);
        self.events.reconfigure(hooks)?;
        hook_accounts(&new);
        for (section, changed) in self.restart_only_changes(&new) {
            if changed {
                tracing::warn!(
                    event = "reload",
                    section,
                    "changed settings in this section take effect at the next start"
                );
            }
        }
        self.running = new;
        Ok(())
    }

    /// The sections a reload does not apply, and whether each changed.
    fn restart_only_changes(&self, new: &Config) -> [(&'static str, bool); 7] {
        let (old, debug) = (&self.running, |v: &dyn std::fmt::Debug| format!("{v:?}"));
        // The certificate and key files are reloaded.
        let mut ftp = new.ftp.clone();
        (ftp.tls_cert, ftp.tls_key) = (old.ftp.tls_cert.clone(), old.ftp.tls_key.clone());
        [
            ("data_dir", old.data_dir != new.data_dir),
            ("ftp", debug(&old.ftp) != debug(&ftp)),
            ("sftp", debug(&old.sftp) != debug(&new.sftp)),
            ("auth", debug(&old.auth) != debug(&new.auth)),
            ("kms", debug(&old.kms) != debug(&new.kms)),
            ("storage", debug(&old.storage) != debug(&new.storage)),
            ("log", debug(&old.log) != debug(&new.log)),
        ]
    }
}

/// Says who the configured hook commands run as. `run_as` applies only to
/// a server running as root; otherwise they run as the server's own user,
/// a warning if `run_as` names another account than the default.
fn hook_accounts(config: &Config) {
    let root = nix::unistd::geteuid().is_root();
    for (key, command, run_as) in [
        ("scan.run_as", &config.scan.command, &config.scan.run_as),
        ("hooks.run_as", &config.hooks.command, &config.hooks.run_as),
    ] {
        if command.is_empty() {
            continue;
        }
        let own = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name);
        match (root, run_as.as_str()) {
            (true, "") => tracing::warn!(
                setting = key,
                "hook commands run as root: set an unprivileged account"
            ),
            (true, name) => tracing::info!(setting = key, user = name, "hook commands run as"),
            (false, "" | "nobody") => tracing::info!(setting = key, user = %own,
                "hook commands run as the server's own user (run_as applies only to root)"),
            (false, name) => tracing::warn!(setting = key, run_as = name, user = %own,
                "not root: cannot switch users; hook commands run as the server's own user"),
        }
    }
}

/// The certificate and key the configuration names, or the self-signed
/// pair in the data folder.
fn cert_files(config: &Config) -> dropvault_ftp::tls::CertFiles {
    let cert = (!config.ftp.tls_cert.is_empty()).then(|| config.path(&config.ftp.tls_cert));
    let key = (!config.ftp.tls_key.is_empty()).then(|| config.path(&config.ftp.tls_key));
    dropvault_ftp::tls::CertFiles::new(cert.as_deref(), key.as_deref(), &config.data_dir)
}

/// `dropvault tls fingerprint`: reads the certificate, never creates one.
fn tls(config: &Config, action: TlsAction) -> Result<bool, AnyError> {
    match action {
        TlsAction::Fingerprint => {
            let files = cert_files(config);
            if files.self_signed && !files.cert.exists() {
                return Err(format!(
                    "{}: no certificate yet; `dropvault serve` generates it at its first start",
                    files.cert.display()
                )
                .into());
            }
            let cert = dropvault_ftp::tls::cert::summary(&files.cert)?;
            println_safe(&format!("SHA256 Fingerprint={}", cert.fingerprint));
            println_safe(&format!("subject: {}", cert.subject));
            println_safe(&format!("valid until: {}", cert.not_after));
            println_safe(&format!("file: {}", files.cert.display()));
            Ok(true)
        }
    }
}

/// Removes interrupted uploads' staging files older than
/// [`STAGING_TTL`](dropvault_core::vault::STAGING_TTL): now, and then every
/// hour for as long as the server runs.
/// Open files a session may hold at once: its control connection, a data
/// connection or passive listener, and a file or two of storage.
const FILES_PER_SESSION: u64 = 4;

/// Raises the open-file limit to its hard limit, since the soft one (1024
/// on most systems) runs out long before `max_sessions`, and warns when
/// even the hard limit is too low for them.
fn raise_open_file_limit(max_sessions: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
    let need = (max_sessions as u64)
        .saturating_mul(FILES_PER_SESSION)
        .saturating_add(64);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((have, _)) if have < need => tracing::warn!(
            open_files = have,
            needed = need,
            max_sessions,
            "the open-file limit is too low for ftp.max_sessions: raise it (LimitNOFILE= in \
             systemd, ulimit -Hn) or lower max_sessions"
        ),
        Ok((have, _)) => tracing::debug!(open_files = have, "open-file limit"),
        Err(_) => {}
    }
}

async fn expire_staging(vault: Arc<Vault>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        let v = vault.clone();
        let ttl = dropvault_core::vault::STAGING_TTL;
        if let Ok(n) = tokio::task::spawn_blocking(move || v.expire_staging(ttl)).await {
            if n > 0 {
                tracing::info!(
                    event = "staging_expired",
                    files = n,
                    "removed staging files of uploads interrupted over a week ago"
                );
            }
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now; the future completes on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

fn user(config: &Config, action: UserAction) -> Result<(), AnyError> {
    if let UserAction::Usage { name } = &action {
        return user_usage(config, name);
    }
    if let UserAction::Delete { name, shred: true } = &action {
        data_dir(config)?;
        // With the file backend the account must exist: a typo must not
        // shred someone else.
        let account = known_user(config, name)?;
        let (had_key, removed) = ops::shred(config, name)?;
        let key = if had_key {
            "key file destroyed"
        } else {
            "no key file"
        };
        match account {
            Some(users) => {
                users.delete(name)?;
                println_safe(&format!(
                    "deleted {name}; shredded: {key}, {removed} files removed"
                ));
            }
            None => println_safe(&format!(
                "shredded the data of {name}: {key}, {removed} files removed (the system \
                 account stays)"
            )),
        }
        return Ok(());
    }
    if config.auth.backend != AuthBackend::File {
        if let UserAction::Key { .. } = action {
            return Err(
                "SSH keys are kept in the users file and work only with auth.backend = \
                        \"file\"; PAM accounts log in with their password, LDAP accounts with \
                        their password or the keys in their directory entry"
                    .into(),
            );
        }
        return Err(
            "user management is for auth.backend = \"file\"; PAM users are system accounts, \
             LDAP users the directory's"
                .into(),
        );
    }
    data_dir(config)?;
    let users = UserFile::open(config.path(&config.auth.users_file))?;
    match action {
        UserAction::Add {
            name,
            password_stdin,
        } => {
            let (password, generated) = password_from(password_stdin)?;
            users.add(&name, &password)?;
            if generated {
                println_safe(&format!("added {name} with password {}", password.expose()));
            } else {
                println_safe(&format!("added {name}"));
            }
        }
        UserAction::List => {
            for name in users.list()? {
                println_safe(&name);
            }
        }
        UserAction::Passwd {
            name,
            password_stdin,
        } => {
            let (password, generated) = password_from(password_stdin)?;
            users.set_password(&name, &password)?;
            if generated {
                println_safe(&format!("new password for {name}: {}", password.expose()));
            } else {
                println_safe(&format!("password of {name} changed"));
            }
        }
        UserAction::Delete { name, .. } => {
            users.delete(&name)?;
            println_safe(&format!("deleted {name}"));
        }
        UserAction::SetQuota {
            name,
            bytes,
            files,
            clear,
        } => {
            let bytes = bytes
                .map(|b| dropvault_core::size::parse_size(&b))
                .transpose()?;
            users.set_quota(&name, Quota { bytes, files }, clear)?;
            let quota = users.quota(&name)?.or(config.quota()?);
            println_safe(&format!("quota of {name}: {}", quota_text(quota)));
        }
        // Answered above, for every backend.
        UserAction::Usage { .. } => {}
        UserAction::Key { action } => user_key(&users, action)?,
    }
    Ok(())
}

/// `dropvault user usage NAME`: counts the user's files now.
fn user_usage(config: &Config, name: &str) -> Result<(), AnyError> {
    let own = match known_user(config, name)? {
        Some(users) => users.quota(name)?,
        None => Quota::default(),
    };
    let quota = own.or(config.quota()?);
    match ops::vault(config, false)?.usage(name)? {
        Some(used) => println_safe(&format!(
            "{name}: {} bytes in {} files; quota {}",
            used.bytes,
            used.files,
            quota_text(quota)
        )),
        None => println_safe(&format!(
            "{name}: more than {} files and folders (ftp.max_listing_entries): not counted; \
             quota {}",
            config.max_listing_entries()?,
            quota_text(quota)
        )),
    }
    if config.auth.backend == AuthBackend::Ldap {
        println_safe("(a quota in the user's directory entry, if any, is not shown)");
    }
    Ok(())
}

/// A quota as `user` commands print it.
fn quota_text(quota: Quota) -> String {
    let part = |limit: Option<u64>, unit: &str| match limit.unwrap_or(0) {
        0 => format!("no limit on {unit}"),
        n => format!("{n} {unit}"),
    };
    format!(
        "{}, {}",
        part(quota.bytes, "bytes"),
        part(quota.files, "files")
    )
}

/// `dropvault user key ...`.
fn user_key(users: &UserFile, action: UserKeyAction) -> Result<(), AnyError> {
    match action {
        UserKeyAction::Add { name, file } => {
            let keys = match &file {
                Some(path) => {
                    let f = std::fs::File::open(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    read_key_lines(std::io::BufReader::new(f))
                        .map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => read_key_lines(std::io::stdin().lock())
                    .map_err(|e| format!("standard input: {e}"))?,
            };
            let added = users.add_keys(&name, &keys)?;
            for (key, new) in keys.iter().zip(added) {
                let what = if new { "added" } else { "already present" };
                println_safe(&format!(
                    "{what} {} ({}{}{})",
                    key.fingerprint(),
                    key.kind(),
                    if key.comment().is_empty() { "" } else { " " },
                    key.comment()
                ));
            }
        }
        UserKeyAction::List { name } => {
            let keys = users.keys(&name)?;
            if keys.is_empty() {
                eprintln_safe(&format!("{name} has no SSH keys"));
            }
            for k in keys {
                println_safe(&format!(
                    "{}\t{}\t{}\t{}",
                    k.key.fingerprint(),
                    k.key.kind(),
                    k.key.comment(),
                    k.added.as_deref().unwrap_or("-")
                ));
            }
        }
        UserKeyAction::Delete { name, fingerprint } => {
            let key = users.delete_key(&name, &fingerprint)?;
            println_safe(&format!(
                "deleted {} ({}) of {name}",
                key.fingerprint(),
                key.kind()
            ));
        }
    }
    Ok(())
}

/// Parses `.pub` lines, skipping blank lines and `#` comments: every line
/// must be a key accepted for users, else nothing is returned. Reads at
/// most [`MAX_KEYS_PER_USER`] keys of at most [`MAX_KEY_LINE_LEN`] bytes.
fn read_key_lines(mut input: impl BufRead) -> Result<Vec<SshPublicKey>, AnyError> {
    use std::io::Read;
    let max_line = u64::try_from(MAX_KEY_LINE_LEN).unwrap_or(u64::MAX);
    let mut keys = Vec::new();
    let mut line = Vec::new();
    for number in 1usize.. {
        line.clear();
        // One byte over the limit (plus the line end) tells a long line.
        let n = (&mut input)
            .take(max_line + 2)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        // Blank and comment lines count too, so the input is bounded.
        if number > MAX_KEYS_PER_USER * 10 {
            return Err("too many lines".into());
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| format!("line {number}: not UTF-8 text"))?
            .trim_end_matches(['\n', '\r']);
        if text.len() > MAX_KEY_LINE_LEN {
            return Err(format!("line {number}: longer than {MAX_KEY_LINE_LEN} bytes").into());
        }
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if keys.len() == MAX_KEYS_PER_USER {
            return Err(format!("more than {MAX_KEYS_PER_USER} keys").into());
        }
        keys.push(SshPublicKey::parse_line(trimmed).map_err(|e| format!("line {number}: {e}"))?);
    }
    if keys.is_empty() {
        return Err("no public key given".into());
    }
    Ok(keys)
}

/// The password from stdin's first line, or a generated one.
fn link(config: &Config, action: LinkAction) -> Result<bool, AnyError> {
    match action {
        LinkAction::Create {
            user,
            folder,
            expires,
            max_uploads,
            max_bytes,
            password,
        } => {
            data_dir(config)?;
            known_user(config, &user)?;
            let password = if password {
                Some(password_from(true)?.0)
            } else {
                None
            };
            links::create(
                config,
                links::Create {
                    user,
                    folder,
                    expires,
                    max_uploads,
                    max_bytes,
                    password,
                },
            )?;
        }
        LinkAction::List { json } => links::list(config, json)?,
        LinkAction::Revoke { id } => links::revoke(config, &id)?,
    }
    Ok(true)
}

fn password_from(stdin: bool) -> Result<(Password, bool), AnyError> {
    if !stdin {
        return Ok((Password::new(random_password()), true));
    }
    let mut line = String::new();
    std::io::stdin().lock().take_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err("empty password on standard input".into());
    }
    Ok((Password::new(pw), false))
}

/// Reads one line of at most 4 KiB.
trait TakeLine {
    fn take_line(&mut self, out: &mut String) -> std::io::Result<usize>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, out: &mut String) -> std::io::Result<usize> {
        use std::io::Read;
        self.take(4096).read_line(out)
    }
}

/// 20 random characters from an unambiguous alphabet (about 110 bits).
fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    // aws-lc's RNG does not fail on Linux; a failure would panic below
    // rather than hand out a predictable password.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator");
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

pub(crate) fn println_safe(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn eprintln_safe(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIM1eeSXRznHqj4Gt9jtLh8zgKQMX5hoAcwD/QZYBFgxz alice@laptop";

    fn read(text: &[u8]) -> Result<Vec<SshPublicKey>, String> {
        read_key_lines(text).map_err(|e| e.to_string())
    }

    #[test]
    fn key_lines_skip_blanks_and_comments() {
        let text = format!("# mine\n\n{ED}\r\n  \n{ED}");
        let keys = read(text.as_bytes()).expect("two keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].comment(), "alice@laptop");
    }

    #[test]
    fn key_lines_are_bounded_and_all_or_nothing() {
        assert!(read(b"").expect_err("empty").contains("no public key"));
        assert!(read(b"# only a comment\n").is_err());
        let bad = format!("{ED}\nssh-rsa AAAAB3NzaC1yc2E\n");
        let err = read(bad.as_bytes()).expect_err("rsa");
        assert!(err.starts_with("line 2: RSA"), "{err}");
        let long = format!("{ED} {}\n", "c".repeat(MAX_KEY_LINE_LEN));
        assert!(read(long.as_bytes())
            .expect_err("long")
            .contains("longer than"));
        let many = format!("{ED}\n").repeat(MAX_KEYS_PER_USER + 1);
        assert!(read(many.as_bytes())
            .expect_err("many")
            .contains("more than"));
        let blank = "\n".repeat(MAX_KEYS_PER_USER * 10 + 1);
        assert!(read(blank.as_bytes())
            .expect_err("blank")
            .contains("too many"));
        assert!(read(b"\xff\xfe\n").expect_err("binary").contains("UTF-8"));
    }
}
