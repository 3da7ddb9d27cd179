//! The crate's error type, and THE one place where errors become errno values
//! ([`Error::errno`]): the server answers peers with it, the FUSE adapter answers the kernel.

use std::time::Duration;

use crate::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on the serving node failed; `what` names the file or handle.
    #[error("{op} {what}: {source}")]
    Os {
        op: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a file name (empty, or contains '/' or NUL)")]
    BadName(String),
    /// `.` and `..` are never looked up on the server: they would leave the directory.
    #[error("{0:?} would leave the directory it is looked up in")]
    Escape(String),
    #[error("the export is read-only")]
    ReadOnly,
    /// /proc, devices, sockets and fifos are not exported.
    #[error("{0} is not exported (special file or /proc)")]
    NotExported(String),
    #[error("unknown file handle {0} (the serving node restarted or forgot it)")]
    Stale(u64),
    #[error("unknown open file {0}")]
    BadFile(u64),
    #[error("{0} is not a regular file or directory that can be opened")]
    NotOpenable(String),
    /// The serving daemon could not take on the caller's credentials (it is not root):
    /// refused rather than run with the daemon's own rights.
    #[error("cannot act as uid {uid} gid {gid} (the mfs server is not root)")]
    Creds { uid: u32, gid: u32 },
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    #[error("node {node} did not answer within {after:?}")]
    Timeout { node: NodeId, after: Duration },
    /// The serving node refused with `errno`; `msg` is its reason.
    #[error("node {node}: {msg}")]
    Remote {
        node: NodeId,
        errno: i32,
        msg: String,
    },
    #[error("unexpected answer from node {node}: {what}")]
    Protocol { node: NodeId, what: String },
    #[error("the mfs server has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn os(op: &'static str, what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Os {
            op,
            what: what.into(),
            source,
        }
    }

    /// The errno a caller sees for this error. The only errno mapping of the crate.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::BadName(_) => libc::EINVAL,
            Error::Escape(_) => libc::EXDEV,
            Error::ReadOnly => libc::EROFS,
            Error::NotExported(_) => libc::ENOENT,
            Error::Stale(_) => libc::ESTALE,
            Error::BadFile(_) => libc::EBADF,
            Error::NotOpenable(_) => libc::EINVAL,
            Error::Creds { .. } => libc::EPERM,
            Error::Unreachable { .. } => libc::ENOTCONN,
            Error::Timeout { .. } => libc::EIO,
            Error::Remote { errno, .. } => *errno,
            Error::Protocol { .. } => libc::EIO,
            Error::Stopped => libc::ENOTCONN,
        }
    }

    /// What travels back to the asking node.
    pub fn to_fault(&self) -> crate::proto::Fault {
        crate::proto::Fault {
            errno: self.errno(),
            msg: self.to_string(),
        }
    }
}
