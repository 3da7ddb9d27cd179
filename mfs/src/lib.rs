//! MFS: every node's files under `/mfs/<node>/<path>`, as openMosix's oMFS had them.
//!
//! Owns: the wire messages between nodes ([`proto`]); the serving side that runs each
//! operation on a local export root with the caller's ids and never lets a path leave the
//! export ([`server`]); the client library — an inode table, attribute caching with
//! close-to-open consistency, read-ahead and write-behind — that reaches servers through the
//! [`client::Remote`] trait ([`client`]); who holds and who waits for which lock, for EDEADLK
//! ([`lockwait`]); the one mapping from errors to errno ([`Error::errno`]);
//! and, behind the `fuse` feature, the thin FUSE adapter ([`fuse`]).
//!
//! Must not know: the actor runtime, sockets or transports (the daemon implements
//! [`client::Remote`] with them), processes or migration (the magic folders ask the daemon
//! through [`magic::Resolver`], never look themselves).

pub mod client;
mod error;
pub mod lockwait;
pub mod magic;
pub mod proto;
pub mod server;
mod sys;

#[cfg(feature = "fuse")]
pub mod fuse;

pub use error::Error;

/// A node's number (the openMosix node id), as in the runtime.
pub type NodeId = u32;
