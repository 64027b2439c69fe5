//! The `pkcs11` key provider: the KEK is an RSA key pair in a PKCS#11
//! token (an HSM; SoftHSM2 in tests). Its private half is sensitive and
//! never leaves the token; the token decrypts, this process never sees it.
//!
//! Wrapping needs only the public key, read from the token at start: it is
//! done here with aws-lc-rs, so only unwraps (logins) reach the token. What
//! is encrypted is `SHA-256("dropvault v1 pkcs11 data key for " ‖ user) ‖
//! DEK` with RSA-OAEP and an empty OAEP label (SoftHSM2 accepts no other),
//! and every unwrap checks the binding in constant time, so a key wrapped
//! for one user never opens as another's. The wrapped text names its
//! mechanism, `rsa-oaep-sha1:<base64>` or `rsa-oaep-sha256:<base64>`: an
//! unwrap uses what the text names, whatever `oaep_hash` says now.
//!
//! The key pair is found by its label (`CKA_LABEL`); key files record the
//! label, and any key pair still in the token opens the files made under
//! it, so a rotation is: make a new key pair, set `key_label` to it, run
//! `dropvault keys rotate`.
//!
//! Sessions are pooled (`sessions`), logged in with the user PIN. A module
//! is loaded and initialized once per process, shared by every provider
//! that names it. When the token goes away (unplugged, its files gone),
//! unwraps fail with [`KeyError::Unavailable`] and the module is
//! re-initialized (at most once a second) until the token is back:
//! SoftHSM2 marks a token it lost invalid for good, so only `C_Finalize`
//! and `C_Initialize` bring it back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    OaepAlgorithm, OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents,
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{binding_label, DataKey, KekStatus, KeyError, KeyProvider, Wrapped};
use crate::secret::Secret;

/// Environment variable with the user PIN, when neither `pin` nor
/// `pin_file` is set.
pub const PIN_ENV: &str = "DROPVAULT_KMS_PKCS11_PIN";
/// Largest PIN file read.
const MAX_PIN_FILE: u64 = 4096;
/// Smallest RSA key accepted (bits): 128-bit security.
const MIN_BITS: usize = 3072;
/// Longest wrapped text accepted (RSA-16384 in base64, with its prefix).
const MAX_WRAPPED_LEN: usize = 3000;
/// How long a call waits for a free session.
const SESSION_WAIT: Duration = Duration::from_secs(30);
/// Least time between two re-initializations of a module.
const REINIT_INTERVAL: Duration = Duration::from_secs(1);
/// Tries of one operation (a broken session or token is replaced between
/// them).
const ATTEMPTS: usize = 3;
/// Most key handles remembered (one per key label in use).
const MAX_CACHED_KEYS: usize = 64;
/// What the binding hashed into every wrapped key says it is.
const PURPOSE: &str = "pkcs11 data key";
/// Binding hash and data key.
const PLAIN_LEN: usize = 32 + 32;

/// `[kms.pkcs11]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module (a shared library).
    pub module: String,
    /// Label of the token holding the key.
    pub token_label: String,
    /// Label of the RSA key pair new wraps use.
    pub key_label: String,
    /// The user PIN (else `pin_file`, else `DROPVAULT_KMS_PKCS11_PIN`).
    pub pin: Secret,
    /// File holding the user PIN.
    pub pin_file: String,
    /// Hash of RSA-OAEP for new wraps: `sha1` (what SoftHSM2 2.6.1 can
    /// do) or `sha256`. Each key file records its own.
    pub oaep_hash: OaepHash,
    /// Token sessions kept open.
    pub sessions: usize,
}

/// The hash RSA-OAEP uses (and its MGF1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OaepHash {
    /// SHA-1.
    #[default]
    Sha1,
    /// SHA-256.
    Sha256,
}

impl OaepHash {
    /// The prefix of wrapped keys made with this hash.
    fn tag(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "rsa-oaep-sha1",
            OaepHash::Sha256 => "rsa-oaep-sha256",
        }
    }

    /// The mechanism as `keys status` shows it.
    pub fn describe(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "RSA-OAEP SHA-1",
            OaepHash::Sha256 => "RSA-OAEP SHA-256",
        }
    }

    fn algorithm(self) -> &'static OaepAlgorithm {
        match self {
            OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
            OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
        }
    }

    fn mechanism(self) -> Mechanism<'static> {
        let (hash, mgf) = match self {
            OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        };
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
    }
}

impl Default for Pkcs11Config {
    fn default() -> Self {
        Self {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "dropvault".into(),
            key_label: "dropvault-kek".into(),
            pin: Secret::default(),
            pin_file: String::new(),
            oaep_hash: OaepHash::Sha1,
            sessions: 4,
        }
    }
}

/// A loaded PKCS#11 module. A module is initialized once per process, so
/// every provider naming the same library shares one.
struct Module {
    path: PathBuf,
    state: RwLock<ModuleState>,
}

struct ModuleState {
    ctx: Pkcs11,
    /// Whether `C_Initialize` succeeded last.
    ready: bool,
    /// Bumped by every re-initialization: sessions, slots and object
    /// handles of an older one are void.
    generation: u64,
    reset_at: Option<Instant>,
}

/// The modules loaded in this process, by canonical path.
static MODULES: Mutex<Vec<Weak<Module>>> = Mutex::new(Vec::new());

impl Module {
    /// The module at `path`, loaded and initialized if no provider has it.
    fn get(path: &Path) -> Result<Arc<Module>, KeyError> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        modules.retain(|m| m.strong_count() > 0);
        if let Some(m) = modules
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.path == path)
        {
            return Ok(m);
        }
        let ctx = Pkcs11::new(&path).map_err(|e| {
            KeyError::BadConfig(format!(
                "PKCS#11 module {} cannot be loaded: {e}",
                path.display()
            ))
        })?;
        initialize(&ctx).map_err(|e| {
            KeyError::BadConfig(format!(
                "PKCS#11 module {} failed to initialize: {e}",
                path.display()
            ))
        })?;
        let module = Arc::new(Module {
            path,
            state: RwLock::new(ModuleState {
                ctx,
                ready: true,
                generation: 0,
                reset_at: None,
            }),
        });
        modules.push(Arc::downgrade(&module));
        Ok(module)
    }

    fn read(&self) -> RwLockReadGuard<'_, ModuleState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finalizes and initializes the module again, unless that happened
    /// since `seen` or less than [`REINIT_INTERVAL`] ago. Waits for every
    /// call in progress on the module to end.
    fn reset(&self, seen: u64) {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if st.generation != seen || st.reset_at.is_some_and(|t| t.elapsed() < REINIT_INTERVAL) {
            return;
        }
        st.generation += 1;
        st.reset_at = Some(Instant::now());
        if st.ready {
            if let Err(e) = st.ctx.clone().finalize() {
                tracing::debug!(error = %e, "C_Finalize failed");
            }
        }
        st.ready = match initialize(&st.ctx) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(module = %self.path.display(), error = %e, "re-initializing the PKCS#11 module failed");
                false
            }
        };
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if st.ready {
            if let Err(e) = st.ctx.clone().finalize() {
                tracing::debug!(error = %e, "C_Finalize failed");
            }
        }
    }
}

fn initialize(ctx: &Pkcs11) -> Result<(), P11Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Loaded by another part of this process (under another path).
        Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A session and the module generation it belongs to. Sessions are opened
/// "no drop": one of a finalized module is forgotten, never closed, as its
/// handle may by then name a session of the new generation.
struct Pooled {
    session: Session,
    generation: u64,
}

/// Open sessions, at most `max`, idle ones ready for the next call.
struct Pool {
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Pooled>,
    open: usize,
}

/// A session taken from the pool, or the right to open one; returned to
/// the pool on drop.
struct Lease<'a> {
    pool: &'a Pool,
    session: Option<Pooled>,
}

impl Pool {
    fn lease(&self) -> Result<Lease<'_>, String> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(s),
                });
            }
            if st.open < self.max {
                st.open += 1;
                return Ok(Lease {
                    pool: self,
                    session: None,
                });
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(format!("all {} token sessions stayed busy", self.max));
            };
            st = self
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.session.take() {
            Some(s) => st.idle.push(s),
            None => st.open = st.open.saturating_sub(1),
        }
        self.pool.freed.notify_one();
    }
}

/// Why an attempt failed.
enum Fail {
    /// The token or the module looks broken: re-initialize (the
    /// generation the attempt saw) and try again.
    Reconnect(u64, String),
    /// The session is broken: it is dropped; try again.
    Session(String),
    /// The operation itself failed while the token works.
    Data(P11Error),
    /// A final answer.
    Key(KeyError),
}

/// What the provider remembers of the token within one module generation.
#[derive(Default)]
struct Found {
    generation: u64,
    slot: Option<Slot>,
    keys: Vec<(String, ObjectHandle)>,
}

/// A known ciphertext of the current public key, decrypted to tell a
/// broken token from a bad wrapped key.
struct Probe {
    ciphertext: Vec<u8>,
    plain: [u8; 32],
}

/// Data keys wrapped by an RSA key pair in a PKCS#11 token.
pub struct Pkcs11Provider {
    token_label: String,
    key_label: String,
    hash: OaepHash,
    /// Names the token in errors: `PKCS#11 token "<label>"`.
    address: String,
    pin: AuthPin,
    /// Set when the token refused the PIN: no more tries (a token locks
    /// the PIN after a few).
    pin_rejected: AtomicBool,
    public: OaepPublicEncryptingKey,
    bits: usize,
    probe: Probe,
    found: Mutex<Found>,
    pool: Pool,
    module: Arc<Module>,
}

impl std::fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("module", &self.module.path)
            .field("token", &self.token_label)
            .field("key", &self.key_label)
            .field("oaep_hash", &self.hash)
            .field("pin", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Pkcs11Provider {
    /// Loads the module, finds the token and the key, logs in (relative
    /// paths are inside `base`), and checks that the token decrypts what
    /// the key's public half encrypts with `oaep_hash`.
    pub fn new(config: &Pkcs11Config, base: &std::path::Path) -> Result<Self, KeyError> {
        let bad = |m: String| KeyError::BadConfig(format!("kms.pkcs11: {m}"));
        if config.sessions == 0 {
            return Err(bad("sessions must be at least 1".into()));
        }
        if config.token_label.is_empty() || config.key_label.is_empty() {
            return Err(bad("token_label and key_label must be set".into()));
        }
        let pin = AuthPin::from(read_pin(config, base)?.as_str());
        let module = Module::get(Path::new(&config.module))?;
        let address = format!("PKCS#11 token {:?}", config.token_label);
        let st = module.read();
        let generation = st.generation;
        let start = |e: P11Error| KeyError::Unavailable {
            address: address.clone(),
            reason: e.to_string(),
        };
        let tokens = list_tokens(&st.ctx).map_err(start)?;
        let slot = match tokens
            .iter()
            .filter(|(_, l)| *l == config.token_label)
            .collect::<Vec<_>>()[..]
        {
            [(slot, _)] => *slot,
            [] => {
                let present: Vec<&str> = tokens.iter().map(|(_, l)| l.as_str()).collect();
                return Err(KeyError::Unavailable {
                    address,
                    reason: format!(
                        "no token labelled {:?} in {} (tokens present: {})",
                        config.token_label,
                        module.path.display(),
                        if present.is_empty() {
                            "none".to_owned()
                        } else {
                            present.join(", ")
                        }
                    ),
                });
            }
            _ => {
                return Err(bad(format!(
                    "several tokens are labelled {:?}",
                    config.token_label
                )))
            }
        };
        let session = st.ctx.open_ro_session_no_drop(slot).map_err(start)?;
        log_in(&session, &pin, &config.token_label).map_err(|f| match f {
            Fail::Key(e) => e,
            Fail::Data(e) => start(e),
            Fail::Session(reason) | Fail::Reconnect(_, reason) => KeyError::Unavailable {
                address: address.clone(),
                reason,
            },
        })?;
        let found = find_keys(&session, &config.key_label).map_err(start)?;
        let key = one_key(&found, &config.token_label, &config.key_label)?
            .ok_or_else(|| no_key(&config.token_label, &config.key_label))?;
        let (public, bits) =
            read_public_key(&session, key, &config.token_label, &config.key_label)?;
        let probe = first_probe(&session, key, &public, config)?;
        drop(st);
        let provider = Self {
            token_label: config.token_label.clone(),
            key_label: config.key_label.clone(),
            hash: config.oaep_hash,
            address,
            pin,
            pin_rejected: AtomicBool::new(false),
            public,
            bits,
            probe,
            found: Mutex::new(Found {
                generation,
                slot: Some(slot),
                keys: vec![(config.key_label.clone(), key)],
            }),
            pool: Pool {
                max: config.sessions,
                state: Mutex::new(PoolState {
                    idle: vec![Pooled {
                        session,
                        generation,
                    }],
                    open: 1,
                }),
                freed: Condvar::new(),
            },
            module,
        };
        tracing::info!(
            token = %provider.token_label,
            key = %provider.key_label,
            bits,
            mechanism = provider.hash.describe(),
            "PKCS#11 key-encryption key ready"
        );
        Ok(provider)
    }

    /// Runs `op` with a logged-in session and the private key labelled
    /// `label`, replacing broken sessions and re-initializing the module
    /// when the token looks lost. `data_error` says what a failure of `op`
    /// itself means (the token being fine).
    fn run<T>(
        &self,
        label: &str,
        op: &dyn Fn(&Session, ObjectHandle) -> Result<T, P11Error>,
        data_error: &dyn Fn(P11Error) -> KeyError,
    ) -> Result<T, KeyError> {
        let mut reason = String::new();
        for _ in 0..ATTEMPTS {
            match self.attempt(label, op) {
                Ok(v) => return Ok(v),
                Err(Fail::Key(e)) => return Err(e),
                Err(Fail::Data(e)) => return Err(data_error(e)),
                Err(Fail::Session(r)) => reason = r,
                Err(Fail::Reconnect(generation, r)) => {
                    tracing::warn!(token = %self.token_label, reason = %r, "PKCS#11 token unusable; re-initializing the module");
                    reason = r;
                    self.module.reset(generation);
                }
            }
        }
        Err(self.unavailable(reason))
    }

    fn unavailable(&self, reason: String) -> KeyError {
        KeyError::Unavailable {
            address: self.address.clone(),
            reason,
        }
    }

    fn attempt<T>(
        &self,
        label: &str,
        op: &dyn Fn(&Session, ObjectHandle) -> Result<T, P11Error>,
    ) -> Result<T, Fail> {
        let mut lease = self
            .pool
            .lease()
            .map_err(|r| Fail::Key(self.unavailable(r)))?;
        let st = self.module.read();
        let generation = st.generation;
        if !st.ready {
            return Err(Fail::Reconnect(generation, "module not initialized".into()));
        }
        if lease
            .session
            .as_ref()
            .is_some_and(|s| s.generation != generation)
        {
            // Void since the module was re-initialized: forget it.
            lease.session = None;
        }
        if lease.session.is_none() {
            if self.pin_rejected.load(Ordering::Relaxed) {
                return Err(Fail::Key(KeyError::BadConfig(format!(
                    "PIN rejected by token {:?}; restart with the right one",
                    self.token_label
                ))));
            }
            let slot = self.slot(&st.ctx, generation)?;
            let session = st
                .ctx
                .open_ro_session_no_drop(slot)
                .map_err(|e| classify(e, generation))?;
            let pooled = Pooled {
                session,
                generation,
            };
            if let Err(f) = log_in(&pooled.session, &self.pin, &self.token_label) {
                if matches!(f, Fail::Key(_)) {
                    self.pin_rejected.store(true, Ordering::Relaxed);
                }
                close(pooled.session);
                return Err(f);
            }
            lease.session = Some(pooled);
        }
        let Some(pooled) = lease.session.as_ref() else {
            return Err(Fail::Session("no session".into()));
        };
        let session = &pooled.session;
        let result = self
            .key(session, label, generation)
            .and_then(|key| op(session, key).map_err(|e| classify(e, generation)));
        let result = match result {
            // Did the operation fail, or the token? A token that still
            // opens the probe works.
            Err(Fail::Data(e)) => Err(match self.check_probe(session, generation) {
                Ok(()) => Fail::Data(e),
                Err(f) => f,
            }),
            other => other,
        };
        if matches!(result, Err(Fail::Session(_))) {
            if let Some(p) = lease.session.take() {
                close(p.session);
            }
        }
        result
    }

    /// The token's slot, found again after a re-initialization.
    fn slot(&self, ctx: &Pkcs11, generation: u64) -> Result<Slot, Fail> {
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        found.renew(generation);
        if let Some(slot) = found.slot {
            return Ok(slot);
        }
        let tokens = list_tokens(ctx).map_err(|e| classify(e, generation))?;
        match tokens.iter().find(|(_, l)| *l == self.token_label) {
            Some((slot, _)) => {
                found.slot = Some(*slot);
                Ok(*slot)
            }
            None => Err(Fail::Reconnect(generation, "token not present".into())),
        }
    }

    /// The private key labelled `label`. A token that shows no key at all
    /// (not even the current one) is taken for lost, as SoftHSM2 hides
    /// every object of a token it lost.
    fn key(&self, session: &Session, label: &str, generation: u64) -> Result<ObjectHandle, Fail> {
        {
            let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
            found.renew(generation);
            if let Some((_, h)) = found.keys.iter().find(|(l, _)| l == label) {
                return Ok(*h);
            }
        }
        let found = find_keys(session, label).map_err(|e| classify(e, generation))?;
        match one_key(&found, &self.token_label, label).map_err(Fail::Key)? {
            Some(h) => {
                let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
                if found.generation == generation {
                    if found.keys.len() >= MAX_CACHED_KEYS {
                        found.keys.clear();
                    }
                    found.keys.push((label.to_owned(), h));
                }
                Ok(h)
            }
            None if label != self.key_label => {
                self.key(session, &self.key_label, generation)?;
                Err(Fail::Key(no_key(&self.token_label, label)))
            }
            None => Err(Fail::Reconnect(
                generation,
                format!("the token shows no key labelled {label:?}"),
            )),
        }
    }

    fn check_probe(&self, session: &Session, generation: u64) -> Result<(), Fail> {
        let key = self.key(session, &self.key_label, generation)?;
        let plain = session
            .decrypt(&self.hash.mechanism(), key, &self.probe.ciphertext)
            .map(Zeroizing::new)
            .map_err(|e| match classify(e, generation) {
                Fail::Data(e) => Fail::Reconnect(generation, format!("probe decrypt: {e}")),
                f => f,
            })?;
        verify_slices_are_equal(&plain, &self.probe.plain)
            .map_err(|_| Fail::Reconnect(generation, "probe decrypted to something else".into()))
    }

    fn unwrap_with(&self, label: &str, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            user: user.to_owned(),
        };
        let (hash, ciphertext) = parse_wrapped(&wrapped.ciphertext).ok_or_else(failed)?;
        let mechanism = hash.mechanism();
        let plain = self.run(
            label,
            &|session, key| {
                session
                    .decrypt(&mechanism, key, &ciphertext)
                    .map(Zeroizing::new)
            },
            &|e| match e {
                P11Error::Pkcs11(
                    rv @ (RvError::MechanismInvalid
                    | RvError::MechanismParamInvalid
                    | RvError::ArgumentsBad
                    | RvError::KeyFunctionNotPermitted),
                    _,
                ) => KeyError::BadConfig(format!(
                    "{} cannot decrypt {} with key {label:?} ({rv})",
                    self.address,
                    hash.describe()
                )),
                _ => failed(),
            },
        )?;
        if plain.len() != PLAIN_LEN
            || verify_slices_are_equal(&plain[..32], user_binding(user).as_ref()).is_err()
        {
            return Err(failed());
        }
        DataKey::from_slice(&plain[32..]).ok_or_else(failed)
    }
}

impl Drop for Pkcs11Provider {
    fn drop(&mut self) {
        let st = self.module.read();
        let mut pool = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for p in pool.idle.drain(..) {
            if st.ready && p.generation == st.generation {
                close(p.session);
            }
        }
    }
}

impl Found {
    /// Forgets what an older module generation found.
    fn renew(&mut self, generation: u64) {
        if self.generation != generation {
            *self = Found {
                generation,
                ..Found::default()
            };
        }
    }
}

impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    /// The label of the key pair new wraps use.
    fn key_name(&self) -> &str {
        &self.key_label
    }

    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        let mut plain = Zeroizing::new(Vec::with_capacity(PLAIN_LEN));
        plain.extend_from_slice(user_binding(user).as_ref());
        plain.extend_from_slice(dek.expose_secret());
        let mut out = vec![0u8; self.public.ciphertext_size()];
        let ct = self
            .public
            .encrypt(self.hash.algorithm(), &plain, &mut out, None)
            .map_err(|_| KeyError::WrapFailed)?;
        Ok(Wrapped {
            key_version: 1,
            ciphertext: format!("{}:{}", self.hash.tag(), B64.encode(ct)),
        })
    }

    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        self.unwrap_with(&self.key_label, user, wrapped)
    }

    /// Any key pair in the token: whether it is still there shows at
    /// unwrap.
    fn holds(&self, _key_name: &str) -> bool {
        true
    }

    fn unwrap_named(
        &self,
        key_name: &str,
        user: &str,
        wrapped: &Wrapped,
    ) -> Result<DataKey, KeyError> {
        self.unwrap_with(key_name, user, wrapped)
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        // Proves that the token is there and the key decrypts.
        let plain = self.run(
            &self.key_label,
            &|session, key| {
                session
                    .decrypt(&self.hash.mechanism(), key, &self.probe.ciphertext)
                    .map(Zeroizing::new)
            },
            &|e| self.unavailable(e.to_string()),
        )?;
        verify_slices_are_equal(&plain, &self.probe.plain)
            .map_err(|_| self.unavailable("the key decrypts its probe wrongly".into()))?;
        Ok(KekStatus {
            provider: self.kind(),
            key_name: self.key_label.clone(),
            key_type: format!("rsa-{}", self.bits),
            latest_version: 1,
            min_decryption_version: 1,
            current_version: 1,
            details: vec![
                ("token", self.token_label.clone()),
                ("mechanism", self.hash.describe().to_owned()),
            ],
        })
    }
}

/// The tokens present in the module's slots: (slot, label).
fn list_tokens(ctx: &Pkcs11) -> Result<Vec<(Slot, String)>, P11Error> {
    let mut out = Vec::new();
    for slot in ctx.get_slots_with_token()? {
        match ctx.get_token_info(slot) {
            Ok(info) => out.push((slot, info.label().trim().to_owned())),
            Err(e) => tracing::debug!(error = %e, "C_GetTokenInfo failed"),
        }
    }
    Ok(out)
}

/// Logs the application in to the token (once per token: a session opened
/// later shares the login).
fn log_in(session: &Session, pin: &AuthPin, token: &str) -> Result<(), Fail> {
    let refused = |what: &str| Fail::Key(KeyError::BadConfig(format!("{what} (token {token:?})")));
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => Err(Fail::Key(
            KeyError::BadConfig(format!("PIN rejected by token {token:?}")),
        )),
        Err(P11Error::Pkcs11(RvError::PinLocked, _)) => Err(refused(
            "the user PIN is locked after too many wrong PINs; the security officer must reset it",
        )),
        Err(P11Error::Pkcs11(RvError::PinExpired, _)) => {
            Err(refused("the user PIN has expired; set a new one"))
        }
        Err(P11Error::Pkcs11(RvError::UserPinNotInitialized, _)) => {
            Err(refused("the token has no user PIN yet; initialize it"))
        }
        Err(e) => Err(Fail::Session(format!("login: {e}"))),
    }
}

/// The private keys labelled `label`.
fn find_keys(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, P11Error> {
    session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
}

/// The one key of `found`; several are a configuration error.
fn one_key(
    found: &[ObjectHandle],
    token: &str,
    label: &str,
) -> Result<Option<ObjectHandle>, KeyError> {
    match found {
        [] => Ok(None),
        [key] => Ok(Some(*key)),
        _ => Err(KeyError::BadConfig(format!(
            "{} private keys are labelled {label:?} in token {token:?}; key labels must be unique",
            found.len()
        ))),
    }
}

fn no_key(token: &str, label: &str) -> KeyError {
    KeyError::BadConfig(format!(
        "token {token:?} holds no private key labelled {label:?}"
    ))
}

/// Checks the private key (RSA, sensitive) and reads its public half: from
/// the private key object, else from the public key of the same label.
fn read_public_key(
    session: &Session,
    key: ObjectHandle,
    token: &str,
    label: &str,
) -> Result<(OaepPublicEncryptingKey, usize), KeyError> {
    let bad = |m: String| KeyError::BadConfig(format!("key {label:?} in token {token:?}: {m}"));
    let unavailable = |e: P11Error| KeyError::Unavailable {
        address: format!("PKCS#11 token {token:?}"),
        reason: e.to_string(),
    };
    let wanted = [
        AttributeType::KeyType,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
    ];
    let mut attrs = session.get_attributes(key, &wanted).map_err(unavailable)?;
    let mut components = rsa_components(&attrs);
    for a in &attrs {
        match a {
            Attribute::KeyType(t) if *t != KeyType::RSA => {
                return Err(bad(format!("a {t} key, not RSA")));
            }
            Attribute::Sensitive(false) => {
                return Err(bad(
                    "the private key is not sensitive (CKA_SENSITIVE false), so it can be \
                     read out of the token; make a new key pair"
                        .into(),
                ));
            }
            Attribute::Extractable(true) => tracing::warn!(
                token,
                key = label,
                "the private key is extractable (CKA_EXTRACTABLE true): it can be \
                 exported wrapped under another key"
            ),
            _ => {}
        }
    }
    if components.is_none() {
        let public = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(unavailable)?;
        if let Some(p) = public.first() {
            attrs = session
                .get_attributes(*p, &[AttributeType::Modulus, AttributeType::PublicExponent])
                .map_err(unavailable)?;
            components = rsa_components(&attrs);
        }
    }
    let (n, e) = components.ok_or_else(|| {
        bad("neither the private key nor a public key of that label shows the modulus".into())
    })?;
    let key: PublicEncryptingKey = PublicKeyComponents { n, e }
        .try_into()
        .map_err(|_| bad("not a usable RSA public key".into()))?;
    let bits = key.key_size_bits();
    if bits < MIN_BITS {
        return Err(bad(format!(
            "RSA-{bits} is too short; use at least {MIN_BITS} bits"
        )));
    }
    let key =
        OaepPublicEncryptingKey::new(key).map_err(|_| bad("not a usable RSA public key".into()))?;
    Ok((key, bits))
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[start..]
}

/// Modulus and public exponent among `attrs`, without leading zero bytes.
fn rsa_components(attrs: &[Attribute]) -> Option<(&[u8], &[u8])> {
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(strip_zeros(v)),
            Attribute::PublicExponent(v) => e = Some(strip_zeros(v)),
            _ => {}
        }
    }
    Some((n.filter(|v| !v.is_empty())?, e.filter(|v| !v.is_empty())?))
}

/// Encrypts a random value to the public key and has the token decrypt it:
/// proves the key pair matches and the token does the mechanism. The
/// result is kept to tell a lost token from a bad wrapped key later.
fn first_probe(
    session: &Session,
    key: ObjectHandle,
    public: &OaepPublicEncryptingKey,
    config: &Pkcs11Config,
) -> Result<Probe, KeyError> {
    let (token, label, hash) = (&config.token_label, &config.key_label, config.oaep_hash);
    let mut plain = [0u8; 32];
    SystemRandom::new()
        .fill(&mut plain)
        .map_err(|_| KeyError::Random)?;
    let mut out = vec![0u8; public.ciphertext_size()];
    let ciphertext = public
        .encrypt(hash.algorithm(), &plain, &mut out, None)
        .map_err(|_| KeyError::WrapFailed)?
        .to_vec();
    match session
        .decrypt(&hash.mechanism(), key, &ciphertext)
        .map(Zeroizing::new)
    {
        Ok(p) if verify_slices_are_equal(&p, &plain).is_ok() => Ok(Probe { ciphertext, plain }),
        Ok(_) => Err(KeyError::BadConfig(format!(
            "key {label:?} in token {token:?}: the private key does not open what the public \
             key encrypts"
        ))),
        Err(P11Error::Pkcs11(
            rv @ (RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::ArgumentsBad),
            _,
        )) => Err(KeyError::BadConfig(format!(
            "token {token:?} cannot decrypt {} ({rv}){}",
            hash.describe(),
            if hash == OaepHash::Sha1 {
                ""
            } else {
                "; SoftHSM2 before 2.7 does only SHA-1: set oaep_hash = \"sha1\""
            }
        ))),
        Err(P11Error::Pkcs11(rv @ RvError::KeyFunctionNotPermitted, _)) => {
            Err(KeyError::BadConfig(format!(
                "key {label:?} in token {token:?} may not decrypt ({rv}); make the key pair \
                 for decryption (pkcs11-tool --usage-decrypt)"
            )))
        }
        Err(e) => Err(KeyError::Unavailable {
            address: format!("PKCS#11 token {token:?}"),
            reason: format!("test decryption: {e}"),
        }),
    }
}

/// What a failed call says about the session or the token.
fn classify(e: P11Error, generation: u64) -> Fail {
    match &e {
        P11Error::Pkcs11(
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::OperationActive,
            _,
        ) => Fail::Session(e.to_string()),
        P11Error::Pkcs11(
            RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::CryptokiNotInitialized
            | RvError::SlotIdInvalid,
            _,
        ) => Fail::Reconnect(generation, e.to_string()),
        _ => Fail::Data(e),
    }
}

fn close(session: Session) {
    if let Err(e) = session.close() {
        tracing::debug!(error = %e, "C_CloseSession failed");
    }
}

/// Hash and ciphertext of a wrapped key, `rsa-oaep-<hash>:<base64>`.
fn parse_wrapped(text: &str) -> Option<(OaepHash, Vec<u8>)> {
    if text.len() > MAX_WRAPPED_LEN {
        return None;
    }
    let (tag, b64) = text.split_once(':')?;
    let hash = [OaepHash::Sha1, OaepHash::Sha256]
        .into_iter()
        .find(|h| h.tag() == tag)?;
    Some((hash, B64.decode(b64).ok()?))
}

fn user_binding(user: &str) -> digest::Digest {
    digest::digest(&digest::SHA256, &binding_label(PURPOSE, user))
}

/// The user PIN: `pin`, else the first line of `pin_file` (relative to
/// `base`), else the environment variable [`PIN_ENV`].
fn read_pin(config: &Pkcs11Config, base: &Path) -> Result<Zeroizing<String>, KeyError> {
    if !config.pin.is_empty() {
        return Ok(Zeroizing::new(config.pin.expose().to_owned()));
    }
    if !config.pin_file.is_empty() {
        let path = base.join(&config.pin_file);
        let file = std::fs::File::open(&path).map_err(|e| KeyError::io(&path, e))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_PIN_FILE)
            .read_to_string(&mut text)
            .map_err(|e| KeyError::io(&path, e))?;
        let pin = text.lines().next().unwrap_or_default();
        if pin.is_empty() {
            return Err(KeyError::BadConfig(format!(
                "kms.pkcs11.pin_file {}: empty",
                path.display()
            )));
        }
        return Ok(Zeroizing::new(pin.to_owned()));
    }
    match std::env::var(PIN_ENV).map(Zeroizing::new) {
        Ok(pin) if !pin.is_empty() => Ok(pin),
        _ => Err(KeyError::BadConfig(format!(
            "kms.pkcs11: no PIN; set pin, pin_file or {PIN_ENV}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_text_names_its_hash() {
        let sha1 = parse_wrapped("rsa-oaep-sha1:AAEC").expect("sha1");
        assert_eq!(sha1, (OaepHash::Sha1, vec![0, 1, 2]));
        let sha256 = parse_wrapped("rsa-oaep-sha256:AAEC").expect("sha256");
        assert_eq!(sha256.0, OaepHash::Sha256);
        for bad in [
            "AAEC",
            "rsa-oaep-md5:AAEC",
            "rsa-oaep-sha1:not base64!",
            "vault:v1:x",
        ] {
            assert!(parse_wrapped(bad).is_none(), "{bad}");
        }
        let long = format!("rsa-oaep-sha1:{}", "A".repeat(MAX_WRAPPED_LEN));
        assert!(parse_wrapped(&long).is_none());
    }

    #[test]
    fn the_pin_comes_from_the_setting_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pin"), "1234\nignored\n").expect("write");
        let mut config = Pkcs11Config {
            pin_file: "pin".into(),
            ..Pkcs11Config::default()
        };
        let pin = read_pin(&config, dir.path()).expect("pin file");
        assert_eq!(pin.as_str(), "1234");
        config.pin = Secret::new("5678".into());
        let pin = read_pin(&config, dir.path()).expect("pin");
        assert_eq!(pin.as_str(), "5678");
        std::fs::write(dir.path().join("pin"), "\n").expect("write");
        config.pin = Secret::default();
        assert!(matches!(
            read_pin(&config, dir.path()),
            Err(KeyError::BadConfig(_))
        ));
    }
}
