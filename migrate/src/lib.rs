//! migrate: omnode's own checkpoint/restore engine for Linux processes (no CRIU).
//!
//! Owns: freezing an x86_64 process (all its threads) into an *image* (ptrace, /proc,
//! process_vm_readv, injected system calls), thawing an image into a new process, the image
//! format itself (versioned, checksummed sections; see [`image`]), and the home shell (the
//! original process parked and trimmed at home once its image has left; see [`HomeShell`]).
//!
//! Both directions come in phases a migrator can drive one by one, with a place for each
//! ending: [`seize`] → [`Seized::collect`] → [`Seized::stream`] → [`Seized::finish`]
//! ({kill, release, park as the home shell}); [`Thawing::skeleton`] → pages → attributes → fds
//! (with placeholders for home-backed fds) → [`Thawing::install_filter`] (seccomp user
//! notification, listener handed back) → run. [`freeze`] and [`thaw`] compose them.
//! Coming home is a thaw INTO the parked home shell ([`Thawing::into_shell`], same phases on
//! the original process, whose fds are kept; [`Thawing::back_to_shell`] parks it again on
//! failure); a supervised guest on its way home is frozen with [`seize_guest`]. A program
//! about to start is seized at its exec, before its first instruction, with [`watch_exec`]
//! (remote start); a whole tree's execs with [`watch_tree`] (each child stopped at its exec
//! comes back as a [`Seized`] on the tree's thread).
//!
//! Every ptrace call for a process comes from that process's own tracer thread (see
//! [`Tracer`]; a tree watch's thread holds every process of the tree, each under its own
//! key): the handles above are `Send`, the tracee state never leaves its thread.
//! Errors say what a caller can do about them ([`Error::kind`], [`Error::refusal`]).
//!
//! Must not know: networks, transports, nodes, the cluster, or the forwarding protocol (the
//! seccomp filter program and the meaning of placeholder fds are the caller's). An image is written to any
//! [`std::io::Write`] as one stream and read back from any [`std::io::Read`] with no seeking, so
//! the migrator can send it over any transport while the process is frozen.
//!
//! Anything it cannot restore exactly (sockets other than in-process socketpairs, pipes
//! shared with other processes and holding unread data, terminals other than the one of its stdio, shared
//! memory shared with other processes, SysV/POSIX shm, mapped memfds or deleted files, pidfds, inotify with unread
//! events or gaps in its watch descriptors, POSIX timers on CPU-time clocks, seccomp, child
//! processes, userfaultfd/sealed/device mappings, a parent-death signal, a traced process,
//! threads with credentials of their own) is refused before the process is touched; a refusal
//! or failure leaves it running as it was. Every check fails closed: what cannot be read is
//! refused. [`freeze`] never ends a process its caller could not thaw ([`can_thaw_here`]). A
//! pipe or FIFO whose other end lies outside the process is carried as external
//! ([`FdKind::External`]): thaw attaches what the caller names there.
//!
//! Trees: [`freeze_tree`] takes a process with all its descendants into a tree image
//! ([`image::TreeImage`]: one ordinary process image per live process, plus parent links,
//! process groups, zombies and the open file descriptions they share); [`thaw_tree`] forks
//! each child from its rebuilt parent with its old PID. What a tree cannot rebuild exactly is
//! refused with every process left running (see `freeze/tree.rs`).
//!
//! Users: [`freeze_for`] and [`ThawOptions::owner`] serve an unprivileged caller from a root
//! daemon: only what the caller could thaw is frozen (and ended only once the caller kept the
//! image), only the caller's own images are thawed, and with the caller's file-system
//! credentials from the first injected call on.
//!
//! Terminals: the terminal of the process's stdio travels as its settings (termios, set again
//! on the terminal attached at thaw) and whether it was the controlling terminal (a session
//! leader takes the new one as such); further fds of it (/dev/tty) are opened again there.
//!
//! Threads: [`freeze`] and [`seize`] seize every thread and keep each one's own state
//! ([`ThreadImage`]); thaw makes them again by injected clone3 (after the seccomp filter is
//! installed, so every thread inherits it). The home shell parks the main thread only: the
//! others have their rseq unregistered, then exit once P is trimmed.
//!
//! Files that live inside the process are carried with their state: pipes with both ends in
//! it, AF_UNIX stream socketpairs with both ends in it, eventfds, epoll registrations,
//! timerfds, signalfds, memfds, deleted files and inotify instances (watches re-added under
//! their descriptors). POSIX timers come back under their ids (PR_TIMER_CREATE_RESTORE_IDS),
//! aimed at the new TIDs of their threads. File locks (flock, fcntl, OFD) are taken again on
//! the same fds before it runs. A thawed process that had a terminal gets SIGWINCH.
//! They move with a migrated process ([`lives_inside`]; the others stay at home,
//! [`home_backed`]), except an epoll watching an fd that stays home and a deleted file.
//!
//! Carried beyond the registers and memory: each mapping's protections, grows-down flag,
//! madvise state, mlock, MAP_NORESERVE, commit charge and maximum protection (smaps'
//! VmFlags); THP disable, child subreaper, oom_score_adj, personality, limits, credentials.
//!
//! Not carried (yet, and not refused): namespaces, cgroups, capabilities other than what
//! setresuid implies, mlockall(MCL_FUTURE), the shadow stack (no CET on
//! these nodes), sharing between several mappings of one shared-anonymous object.

pub mod error;
mod freeze;
pub mod image;
mod procfs;
pub mod seccomp;
mod shell;
mod sys;
mod thaw;
mod tracer;

pub use error::{Error, ErrorKind, ImageError, RefusalKind, Result};
pub use freeze::{
    DEFAULT_STOP_TIMEOUT, Ending, ExecWatch, Finished, FreezeOptions, FreezeReport, Seized,
    StreamPlan, Streamed, TreeCtl, TreeEvent, TreeEvents, TreeFreezeReport, can_thaw_here, freeze,
    freeze_for, freeze_tree, home_backed, lives_inside, seize, seize_guest, watch_exec, watch_tree,
};
pub use image::{
    Fd, FdKind, FileLock, InotifyWatch, LockKind, PosixTimer, ProcessImage, ThreadImage, Vma,
    VmaKind,
};
pub use seccomp::SeccompFilter;
pub use shell::{HomeShell, ShellArg, ShellEvent, SigInfo};
pub use thaw::{ImageReader, ThawOptions, ThawOwner, Thawed, ThawedTree, Thawing, thaw, thaw_tree};
pub use tracer::Tracer;

use image::*;
use std::io::Read;

/// Per-mapping totals of an image, for `omnode image`.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub process: ProcessImage,
    /// Bytes of memory contents shipped for each entry of `process.vmas`.
    pub vma_bytes: Vec<u64>,
    pub page_bytes: u64,
    pub image_bytes: u64,
}

/// Reads a whole image, checking every checksum, and sums what it holds.
pub fn inspect<R: Read>(input: R) -> Result<ImageSummary> {
    let mut sr = SectionReader::new(input)?;
    let mut buf = Vec::new();
    if sr.next(&mut buf)? != TAG_PROCESS {
        return Err(ImageError::Corrupt("first section is not the process section".into()).into());
    }
    let process = ProcessImage::decode_version(&buf, sr.version)?;
    let mut vma_bytes = vec![0u64; process.vmas.len()];
    let total = read_pages(&mut sr, &mut buf, |runs, _| {
        for &(a, l) in runs {
            let i = process.vmas.partition_point(|v| v.start <= a);
            match i.checked_sub(1) {
                Some(i) if a + l <= process.vmas[i].end => vma_bytes[i] += l,
                _ => {
                    return Err(ImageError::Corrupt(format!(
                        "page data at {a:#x} lies outside the memory map"
                    ))
                    .into());
                }
            }
        }
        Ok(())
    })?;
    Ok(ImageSummary {
        process,
        vma_bytes,
        page_bytes: total,
        image_bytes: sr.bytes,
    })
}
