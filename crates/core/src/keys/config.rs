//! `[kms]`: which key provider holds the KEK, its settings, and the one
//! place providers are built from them ([`from_config`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    KeyError, KeyProvider, LocalRsaProvider, Pkcs11Config, Pkcs11Provider, TransitAuth,
    TransitConfig, TransitProvider,
};
use crate::secret::Secret;

/// `kms.provider`: where the key-encryption key is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsProvider {
    /// An RSA key in a file (`kms.local_key`).
    #[default]
    Local,
    /// A key in the transit engine of OpenBao or Vault (`[kms.transit]`).
    Transit,
    /// An RSA key in a PKCS#11 token (`[kms.pkcs11]`).
    Pkcs11,
}

/// `[kms]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsConfig {
    /// The provider new and existing key files are wrapped by.
    pub provider: KmsProvider,
    /// RSA private key of the `local` provider (relative to the data
    /// folder).
    pub local_key: String,
    /// RSA public key (SPKI PEM) every data key is also wrapped to; empty
    /// = none.
    pub recovery_public_key: String,
    /// Settings of the `transit` provider.
    pub transit: TransitSettings,
    /// Settings of the `pkcs11` provider.
    pub pkcs11: Pkcs11Config,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            provider: KmsProvider::Local,
            local_key: "kek.pem".into(),
            recovery_public_key: String::new(),
            transit: TransitSettings::default(),
            pkcs11: Pkcs11Config::default(),
        }
    }
}

/// `[kms.transit]` (each key also accepted flat, as `kms.transit_<key>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransitSettings {
    /// `http(s)://host:port` of OpenBao or Vault.
    pub address: String,
    /// Mount path of the transit engine.
    pub mount: String,
    /// Name of the transit key.
    pub key: String,
    /// Key version new wraps use; 0 = the latest.
    pub key_version: u32,
    /// Token; the configuration also takes it from
    /// `DROPVAULT_KMS_TRANSIT_TOKEN`, `VAULT_TOKEN` or `BAO_TOKEN`.
    pub token: Secret,
    /// AppRole role id (instead of a token).
    pub role_id: String,
    /// File holding the AppRole secret id, read at each login.
    pub secret_id_file: String,
    /// CA certificate (PEM) for an `https://` address; empty = the
    /// system's.
    pub ca_cert: String,
    /// Allow an `http://` address that is not loopback.
    pub allow_http: bool,
    /// Proxy URL to reach the service through; empty = straight.
    pub proxy: String,
    /// Limit for one request, in seconds.
    pub timeout_secs: u64,
    /// How long the key's version numbers are cached, in seconds.
    pub version_cache_secs: u64,
}

impl Default for TransitSettings {
    fn default() -> Self {
        Self {
            address: String::new(),
            mount: "transit".into(),
            key: "dropvault".into(),
            key_version: 0,
            token: Secret::default(),
            role_id: String::new(),
            secret_id_file: String::new(),
            ca_cert: String::new(),
            allow_http: false,
            proxy: String::new(),
            timeout_secs: 10,
            version_cache_secs: 30,
        }
    }
}

impl TransitSettings {
    /// The provider's settings; relative paths are inside `base`.
    fn provider_config(&self, base: &Path) -> Result<TransitConfig, KeyError> {
        let auth = if !self.role_id.is_empty() {
            TransitAuth::AppRole {
                role_id: self.role_id.clone(),
                secret_id_file: base.join(&self.secret_id_file),
            }
        } else if !self.token.is_empty() {
            TransitAuth::Token(Zeroizing::new(self.token.expose().to_owned()))
        } else {
            return Err(KeyError::BadConfig(
                "kms.provider = \"transit\" needs a token (kms.transit.token, \
                 DROPVAULT_KMS_TRANSIT_TOKEN, VAULT_TOKEN or BAO_TOKEN) or an AppRole \
                 (kms.transit.role_id and kms.transit.secret_id_file)"
                    .into(),
            ));
        };
        Ok(TransitConfig {
            address: self.address.clone(),
            mount: self.mount.clone(),
            key: self.key.clone(),
            key_version: self.key_version,
            auth,
            ca_cert: (!self.ca_cert.is_empty()).then(|| base.join(&self.ca_cert)),
            allow_http: self.allow_http,
            proxy: Some(self.proxy.clone()).filter(|p| !p.is_empty()),
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            version_cache: Duration::from_secs(self.version_cache_secs),
        })
    }
}

/// What [`from_config`] does when the `local` provider's KEK file is
/// missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingKek {
    /// Generate one: the server, and commands that create data keys.
    Create,
    /// Fail: commands that only read (a new KEK could open nothing
    /// stored).
    Refuse,
}

/// The key provider `config` names; relative paths are inside `base` (the
/// data folder). Secrets from the environment are already in `config`
/// (the configuration maps them); secrets in files (`*_file`) are read
/// here, by the provider being built.
pub fn from_config(
    config: &KmsConfig,
    base: &Path,
    missing: MissingKek,
) -> Result<Arc<dyn KeyProvider>, KeyError> {
    Ok(match config.provider {
        KmsProvider::Local => {
            let path = base.join(&config.local_key);
            Arc::new(match missing {
                MissingKek::Create => LocalRsaProvider::open_or_create(&path)?,
                MissingKek::Refuse => LocalRsaProvider::open(&path)?,
            })
        }
        KmsProvider::Transit => {
            Arc::new(TransitProvider::new(config.transit.provider_config(base)?)?)
        }
        KmsProvider::Pkcs11 => Arc::new(Pkcs11Provider::new(&config.pkcs11, base)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transit(token: &str, role_id: &str) -> KmsConfig {
        KmsConfig {
            provider: KmsProvider::Transit,
            transit: TransitSettings {
                address: "http://127.0.0.1:8200".into(),
                token: Secret::new(token.into()),
                role_id: role_id.into(),
                secret_id_file: "secret-id".into(),
                ..TransitSettings::default()
            },
            ..KmsConfig::default()
        }
    }

    #[test]
    fn each_provider_is_built_from_its_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = from_config(&KmsConfig::default(), dir.path(), MissingKek::Refuse);
        assert!(refused.is_err(), "no KEK file and none may be made");
        let local = from_config(&KmsConfig::default(), dir.path(), MissingKek::Create)
            .expect("local KEK made");
        assert_eq!(local.kind(), "local");
        assert!(dir.path().join("kek.pem").exists());
        let reopened = from_config(&KmsConfig::default(), dir.path(), MissingKek::Refuse)
            .expect("existing KEK");
        assert_eq!(reopened.key_name(), local.key_name());
        let token =
            from_config(&transit("s.t", ""), dir.path(), MissingKek::Refuse).expect("token");
        assert_eq!(
            (token.kind(), token.key_name()),
            ("transit", "transit/dropvault")
        );
        let approle =
            from_config(&transit("", "role"), dir.path(), MissingKek::Refuse).expect("AppRole");
        assert!(format!("{approle:?}").contains("secret-id"), "{approle:?}");
    }

    #[test]
    fn transit_without_a_token_or_an_approle_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        match from_config(&transit("", ""), dir.path(), MissingKek::Refuse) {
            Err(KeyError::BadConfig(m)) => assert!(m.contains("VAULT_TOKEN"), "{m}"),
            other => panic!("expected BadConfig, got {other:?}"),
        }
    }

    #[test]
    fn pkcs11_needs_its_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = KmsConfig {
            provider: KmsProvider::Pkcs11,
            pkcs11: Pkcs11Config {
                module: dir.path().join("no-such-module.so").display().to_string(),
                ..Pkcs11Config::default()
            },
            ..KmsConfig::default()
        };
        assert!(from_config(&config, dir.path(), MissingKek::Create).is_err());
    }
}
