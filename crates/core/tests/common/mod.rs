//! Helpers shared by the integration tests.

pub(crate) mod garage;
pub(crate) mod slapd;
