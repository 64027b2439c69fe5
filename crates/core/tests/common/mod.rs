//! Helpers shared by the integration tests.

pub(crate) mod garage;
pub(crate) mod kek;
pub(crate) mod slapd;
pub(crate) mod softhsm;
