//! Command handlers, grouped by what they touch.

pub(super) mod datachan;
pub(super) mod files;
pub(super) mod listing;
pub(super) mod login;
pub(super) mod misc;
pub(super) mod tls;
pub(super) mod transfer;
