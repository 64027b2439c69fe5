//! The dropvault at-rest format.
//!
//! A sealed file is a 96-byte header followed by STREAM segments of
//! AES-256-GCM, each holding 64 KiB of plaintext (the final one fewer). The
//! header names the data key by id, carries a random salt from which the
//! file's keys are derived (HKDF-SHA256), and is authenticated by an
//! HMAC-SHA256 tag that commits the file to that one key. The full
//! specification is `docs/FORMAT.md`.
//!
//! Layout of this crate:
//! - [`header`]: parsing and building the header (pure);
//! - [`stream`]: the sans-io [`Encryptor`] and [`Decryptor`], segment
//!   layout, length arithmetic;
//! - [`blocking`]: `std::io` reader and writer;
//! - `tokio_io` (feature `tokio`): the same over tokio's async traits.
//!
//! All cryptography is aws-lc-rs.

pub mod blocking;
mod error;
pub mod header;
mod keys;
pub mod stream;
#[cfg(feature = "tokio")]
pub mod tokio_io;

pub use blocking::{open_decryptor, open_to_vec, seal_to_vec, DecryptingReader, EncryptingWriter};
pub use error::{Error, Result};
pub use header::{HEADER_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN, TAG_LEN};
pub use keys::{DataKey, KeyId, DATA_KEY_LEN, KEY_ID_LEN, SALT_LEN};
pub use stream::{
    ciphertext_len, plaintext_len, resume_point, whole_segments, Decryptor, Encryptor, Layout,
    Segment,
};
#[cfg(feature = "tokio")]
pub use tokio_io::{AsyncDecryptingReader, AsyncEncryptingWriter};
