//! One RSA-4096 key-encryption key for every test of a test binary
//! (generating one takes a second or two), kept in cargo's scratch folder.

#![allow(dead_code)] // each test binary uses its own part of it

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dropvault_core::keys::LocalRsaProvider;

/// The shared KEK file, made on first use.
pub(crate) fn kek_path() -> &'static Path {
    static KEK: OnceLock<PathBuf> = OnceLock::new();
    KEK.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dropvault-test-kek.pem");
        LocalRsaProvider::open_or_create(&path).expect("generate");
        path
    })
}

/// A provider of the shared KEK.
pub(crate) fn provider() -> Arc<LocalRsaProvider> {
    Arc::new(LocalRsaProvider::open(kek_path()).expect("open kek"))
}
