//! The magic folders of `/mfs`: `here`, `home`, `magic`, `lastexec` and `selected`, symbolic
//! links whose target (a node number) depends on the process that reads them, as openMosix's
//! oMFS had them. The kernel gives the calling PID with each request (FUSE does not cache
//! symlink targets unless asked to), and a [`Resolver`] — the daemon, which knows the process
//! table — says which node each one stands for.
//!
//! What each means (decided per process):
//! - `here`: the node the process runs on.
//! - `home`: its home node (for a guest running here, the node it came from; for our own
//!   processes, this node). Processes that never moved see `home` = `here`.
//! - `magic`: the node of the process's last successful `O_CREAT` anywhere in `/mfs`, and
//!   `here` before it created any — so a temp file created through `/mfs/magic/tmp/x` (which
//!   lands `here`) is found again through the same path after the process moved.
//! - `lastexec`: the node on which the process last completed an `execve`.
//! - `selected`: the node chosen with `omnode mfs select NODE` for the process or an ancestor
//!   (before forking it), else the process's `OMNODE_MFS_SELECTED` environment variable, else
//!   `here`.

use crate::NodeId;

/// One of the magic folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Magic {
    Here,
    Home,
    Magic,
    LastExec,
    Selected,
}

impl Magic {
    pub const ALL: [Magic; 5] = [
        Magic::Here,
        Magic::Home,
        Magic::Magic,
        Magic::LastExec,
        Magic::Selected,
    ];

    /// Its name in `/mfs`.
    pub fn name(self) -> &'static str {
        match self {
            Magic::Here => "here",
            Magic::Home => "home",
            Magic::Magic => "magic",
            Magic::LastExec => "lastexec",
            Magic::Selected => "selected",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<Magic> {
        Magic::ALL.into_iter().find(|m| m.name().as_bytes() == name)
    }

    /// Its local inode number (2 to 6; `/mfs` itself is 1).
    pub fn ino(self) -> u64 {
        match self {
            Magic::Here => 2,
            Magic::Home => 3,
            Magic::Magic => 4,
            Magic::LastExec => 5,
            Magic::Selected => 6,
        }
    }

    pub fn from_ino(ino: u64) -> Option<Magic> {
        Magic::ALL.into_iter().find(|m| m.ino() == ino)
    }
}

/// Says which node a magic folder stands for, for a calling process. Must answer at once
/// (it runs on the FUSE request path): no network, at most a few reads of `/proc`.
pub trait Resolver: Send + Sync + 'static {
    /// The node `which` stands for, for process `pid` (this node's PID; 0: unknown caller,
    /// answer for a process that never moved).
    fn resolve(&self, which: Magic, pid: u32) -> NodeId;

    /// Process `pid` created a file on `node` with `O_CREAT` (for [`Magic::Magic`]).
    fn created(&self, pid: u32, node: NodeId);
}

/// For a node whose processes never move: every magic folder is this node.
#[derive(Debug, Clone, Copy)]
pub struct Unmoved(pub NodeId);

impl Resolver for Unmoved {
    fn resolve(&self, _which: Magic, _pid: u32) -> NodeId {
        self.0
    }
    fn created(&self, _pid: u32, _node: NodeId) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_inodes_round_trip_and_are_distinct() {
        for m in Magic::ALL {
            assert_eq!(Magic::from_name(m.name().as_bytes()), Some(m));
            assert_eq!(Magic::from_ino(m.ino()), Some(m));
        }
        let mut inos: Vec<u64> = Magic::ALL.iter().map(|m| m.ino()).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), Magic::ALL.len());
        assert!(inos.iter().all(|&i| i > 1 && i < 16));
        assert_eq!(Magic::from_name(b"there"), None);
        assert_eq!(Magic::from_ino(1), None);
    }
}
