//! Errors of the checkpoint/restore engine. Every message is one line a person can act on.

use std::io;

/// What is wrong with an image stream.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an omnode image (bad magic)")]
    BadMagic,
    #[error(
        "image format version {found} is not supported (this omnode reads version {supported})"
    )]
    WrongVersion { found: u32, supported: u32 },
    #[error("image is truncated (ends inside {0})")]
    Truncated(&'static str),
    #[error("image is corrupt: checksum mismatch in {0} section")]
    Checksum(&'static str),
    #[error("image is corrupt: {0}")]
    Corrupt(String),
}

/// Errors of `freeze`, `thaw` and `image`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process uses something the engine does not support yet; nothing was changed.
    #[error("cannot freeze {pid}: {reason}")]
    Unsupported { pid: i32, reason: String },
    #[error("cannot freeze {pid}: no such process")]
    NoProcess { pid: i32 },
    #[error("cannot freeze {pid}: {what} failed: {source}")]
    Freeze {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot thaw: {0}")]
    Thaw(String),
    #[error("cannot thaw: {what} failed: {source}")]
    ThawSys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot thaw: {path} is not the file the process had ({why}); refusing to restore against a different file"
    )]
    FileChanged { path: String, why: String },
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("image stream: {0}")]
    Stream(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn errno() -> io::Error {
    io::Error::last_os_error()
}

pub(crate) fn from_neg(ret: i64) -> io::Error {
    io::Error::from_raw_os_error((-ret) as i32)
}
