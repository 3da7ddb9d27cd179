//! Errors of the checkpoint/restore engine. Every message is one line a person can act on.

use std::io;

/// What is wrong with an image stream.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an omnode image (bad magic)")]
    BadMagic,
    #[error(
        "image format version {found} is not supported (this omnode reads versions 1 to {supported})"
    )]
    WrongVersion { found: u32, supported: u32 },
    /// A version-2 image holds a record this reader does not know and may not skip: state
    /// it could not restore.
    #[error(
        "image holds state this omnode cannot restore (process record {tag}); thaw it with a newer omnode"
    )]
    UnknownRecord { tag: u32 },
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
    /// This node cannot take the process (CPU features, vDSO layout); another node may.
    #[error("cannot thaw here: {reason}")]
    TargetUnfit { reason: String },
    /// The process did not stop within the time-out (e.g. it sleeps uninterruptibly, state D);
    /// it was left running as it was.
    #[error(
        "cannot freeze {pid}: it did not stop within {waited:?} (uninterruptible sleep?); left as it was"
    )]
    Stuck {
        pid: i32,
        waited: std::time::Duration,
    },
    /// A home-shell operation that needs a state the shell is not in.
    #[error("home shell of {pid}: {what}")]
    Shell { pid: i32, what: String },
    /// The image has fds whose other end lay outside the process (pipes, FIFOs) and no
    /// placeholder was given for them; nothing was created. Each: (fd, what it was).
    #[error(
        "cannot thaw: {} lay outside the process; name what each gets (omnode thaw --fd N=FILE or --fd N=null)",
        .fds.iter().map(|(n, w)| format!("fd {n} ({w})")).collect::<Vec<_>>().join(", ")
    )]
    FdsNeedNames { fds: Vec<(i32, String)> },
    /// The image is not its caller's to thaw ([`crate::ThawOwner`]): it would run as another
    /// user, or with more than the caller has (groups, limits); nothing was created.
    #[error("cannot thaw: the image is not yours to thaw: {reason}")]
    NotOwner { reason: String },
    /// The tracer thread of a process is gone (it panicked): a bug, reported, never a hang.
    #[error("tracer thread {name} is gone")]
    TracerGone { name: String },
}

/// What a caller (the migrator) can do about an error, decided without parsing strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// This target cannot take the process (CPU features, vDSO layout, a file that differs
    /// here): another node may.
    RetryElsewhere,
    /// The process cannot move at all (threads, sockets, ...): it stays home.
    CannotMove,
    /// The process did not stop in time: it stays home, a later attempt may work.
    TryLater,
    /// The process is gone (exited or killed meanwhile).
    ProcessGone,
    /// A broken or truncated image.
    BadImage,
    /// A system-call or stream failure.
    Io,
}

/// The two refusal kinds: see [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    RetryElsewhere,
    CannotMove,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unsupported { .. } | Error::FdsNeedNames { .. } | Error::NotOwner { .. } => {
                ErrorKind::CannotMove
            }
            Error::NoProcess { .. } => ErrorKind::ProcessGone,
            Error::Freeze { source, .. } if source.raw_os_error() == Some(libc::ESRCH) => {
                ErrorKind::ProcessGone
            }
            Error::FileChanged { .. } | Error::TargetUnfit { .. } => ErrorKind::RetryElsewhere,
            Error::Stuck { .. } => ErrorKind::TryLater,
            Error::Image(_) => ErrorKind::BadImage,
            Error::Freeze { .. }
            | Error::Thaw(_)
            | Error::ThawSys { .. }
            | Error::Stream(_)
            | Error::Shell { .. }
            | Error::TracerGone { .. } => ErrorKind::Io,
        }
    }
    /// `Some` when the error is a refusal (nothing was changed) rather than a failure.
    pub fn refusal(&self) -> Option<RefusalKind> {
        match self.kind() {
            ErrorKind::RetryElsewhere => Some(RefusalKind::RetryElsewhere),
            ErrorKind::CannotMove => Some(RefusalKind::CannotMove),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn errno() -> io::Error {
    io::Error::last_os_error()
}

pub(crate) fn from_neg(ret: i64) -> io::Error {
    io::Error::from_raw_os_error((-ret) as i32)
}
