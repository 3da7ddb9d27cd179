//! The plaintext stream inside the encrypted link: `runtime::transport::pieces` (frames
//! as lane-tagged pieces), cut into chunks of at most [`MAX_CHUNK`] bytes, each sealed as
//! one Noise message. An empty chunk is a keepalive.

pub use runtime::transport::pieces::{
    Large, PIECE, Packer, RECORD_OVERHEAD, UnpackError, Unpacker,
};

/// Largest Noise message (65535) minus the AEAD tag.
pub const MAX_CHUNK: usize = 65535 - 16;
