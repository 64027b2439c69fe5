//! A key provider that counts its calls and failures in the process's
//! metrics: every call a [`Keyring`](super::Keyring) makes goes through it.

use std::sync::Arc;

use super::{DataKey, KekStatus, KeyError, KeyProvider, Wrapped};
use crate::metrics::metrics;

/// `inner`, with every call counted.
#[derive(Debug)]
pub(super) struct Metered(pub(super) Arc<dyn KeyProvider>);

/// Counts one call named `operation` that ended in `result`.
fn counted<T>(operation: &'static str, result: Result<T, KeyError>) -> Result<T, KeyError> {
    metrics().key_call(operation, result.as_ref().err().map(KeyError::is_transient));
    result
}

impl KeyProvider for Metered {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn key_name(&self) -> &str {
        self.0.key_name()
    }

    fn wrap(&self, user: &str, dek: &DataKey) -> Result<Wrapped, KeyError> {
        counted("wrap", self.0.wrap(user, dek))
    }

    fn unwrap(&self, user: &str, wrapped: &Wrapped) -> Result<DataKey, KeyError> {
        counted("unwrap", self.0.unwrap(user, wrapped))
    }

    fn holds(&self, key_name: &str) -> bool {
        self.0.holds(key_name)
    }

    fn unwrap_named(
        &self,
        key_name: &str,
        user: &str,
        wrapped: &Wrapped,
    ) -> Result<DataKey, KeyError> {
        counted("unwrap", self.0.unwrap_named(key_name, user, wrapped))
    }

    fn current_version(&self) -> Result<u32, KeyError> {
        counted("version", self.0.current_version())
    }

    fn rewrap(&self, items: &[(&str, Wrapped)]) -> Vec<Result<Wrapped, KeyError>> {
        let results = self.0.rewrap(items);
        for r in &results {
            metrics().key_call("rewrap", r.as_ref().err().map(KeyError::is_transient));
        }
        results
    }

    fn status(&self) -> Result<KekStatus, KeyError> {
        counted("status", self.0.status())
    }
}
