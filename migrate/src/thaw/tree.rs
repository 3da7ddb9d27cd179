//! Thaw of a process tree (a tree image, see [`crate::image::TreeImage`]).
//!
//! Parents are parents: each child is forked from its parent by an injected clone3 (with
//! its old PID, set_tid) at the very start of the parent's rebuild, while the parent is still
//! a copy of this process; the child waits in `pause()` with every signal blocked until its
//! own image is read, then its tracer thread seizes it and rebuilds it like a new process.
//! A zombie is forked the same way and calls exit_group with its old status at once, so the
//! parent's wait() gets it. Pipes between processes of the tree are made here once, their
//! waiting bytes written back, and each end handed to its processes as a placeholder fd;
//! files with a shared offset are opened here once and handed out the same way. Process
//! groups are set once every process exists. Nothing runs until every process is rebuilt; a
//! failure before that kills every process made.

use super::inject::Builder;
use super::*;
use crate::image::{SharedKind, TreeImage, TreeProc};
use std::os::fd::{AsRawFd, FromRawFd};

/// Where a process stands in a tree thaw (default: a lone process).
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeSpot {
    /// Already forked from its parent (waiting in pause): take it over instead of spawning.
    pub adopt: Option<i32>,
    /// Children to fork from it: (old PID, Some(wait status) for a zombie).
    pub forks: Vec<(i32, Option<i32>)>,
    /// The root led its session: setsid before forking (children are in its session).
    pub setsid: bool,
}

/// Kills the processes it holds when dropped armed.
pub(super) struct KillOnDrop(pub Vec<i32>);
impl KillOnDrop {
    pub(super) fn disarm(mut self) -> Vec<i32> {
        std::mem::take(&mut self.0)
    }
}
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill with integer arguments; our own children, made moments ago.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// On the tracer thread: PTRACE_SEIZE of a forked child (it waits in pause()).
pub(super) fn seize_forked(pid: i32) -> Result<()> {
    ptrace_req(
        Req::Seize,
        pid,
        (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as usize,
    )
    .map_err(terr(format!("PTRACE_SEIZE of forked child {pid}")))
}

/// On the tracer thread: stops the seized child (bounded wait for the interrupt stop).
pub(super) fn interrupt_forked(pid: i32) -> Result<()> {
    ptrace_req(Req::Interrupt, pid, 0).map_err(terr("PTRACE_INTERRUPT"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = wait_until(pid, deadline)
            .map_err(terr("waiting for the forked child to stop"))?
            .ok_or_else(|| Error::Thaw(format!("forked child {pid} did not stop within 5 s")))?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(Error::Thaw(format!("forked child {pid} died")));
        }
        if libc::WIFSTOPPED(st) && st >> 16 == libc::PTRACE_EVENT_STOP {
            return Ok(());
        }
        ptrace_req(Req::Cont, pid, 0).map_err(terr("PTRACE_CONT"))?;
    }
}

/// Offset in the trampoline of the fork code (between the gadget and the argument area).
const FORK_AT: u64 = 64;

/// On the tracer thread, at the start of a rebuild: setsid, then clone3 of each child with
/// its old PID. Returns the PIDs made (killed again if the caller fails later).
pub(super) fn fork_children(
    b: &mut Builder,
    spot: &TreeSpot,
    opts: &ThawOptions,
) -> Result<Vec<i32>> {
    if spot.setsid {
        b.sys("setsid", libc::SYS_setsid, &[])?;
    }
    let mut made = KillOnDrop(Vec::new());
    let wait_max = opts.same_pid_wait.unwrap_or(Duration::from_secs(5));
    for &(pid, zombie) in &spot.forks {
        // parent: `syscall; test rax,rax; jnz int3`; child: pause() forever, or exit_group
        let mut code = vec![0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, 0x00];
        match zombie {
            None => code.extend_from_slice(&[0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]),
            Some(st) => {
                code.push(0xbf); // mov edi, imm32
                code.extend_from_slice(&(((st >> 8) & 0xff) as u32).to_le_bytes());
                code.extend_from_slice(&[0xb8, 231, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xfe]);
            }
        }
        code[6] = (code.len() - 7) as u8;
        code.push(0xcc);
        let at = b.tramp + FORK_AT;
        write_mem(b.t.pid, &code, &[(at, code.len() as u64)])
            .map_err(terr("writing the fork code"))?;
        let deadline = Instant::now() + wait_max;
        let r = loop {
            let tid = b.data(&pid.to_ne_bytes())?;
            let mut args = [0u64; 11];
            args[4] = libc::SIGCHLD as u64; // exit_signal
            args[8] = tid; // set_tid
            args[9] = 1; // set_tid_size
            let mut raw = Vec::with_capacity(88);
            for a in args {
                raw.extend_from_slice(&a.to_ne_bytes());
            }
            let ap = b.data(&raw)?;
            let gadget = std::mem::replace(&mut b.t.gadget, at);
            let r = b.t.syscall_raw(libc::SYS_clone3, &[ap, 88]);
            b.t.gadget = gadget;
            b.data_off = 0;
            let r = r.map_err(terr(format!("clone3 of child {pid}")))?;
            if r == -(libc::EEXIST as i64) && Instant::now() < deadline {
                // the old process may not be reaped yet
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            break r;
        };
        if r < 0 {
            return Err(Error::Thaw(format!(
                "cannot make child {pid} again with its old PID (clone3: {}); its parent knows it by that PID",
                crate::error::from_neg(r)
            )));
        }
        if r != pid as i64 {
            made.0.push(r as i32);
            return Err(Error::Thaw(format!("child {pid} was made with PID {r}")));
        }
        made.0.push(pid);
    }
    Ok(made.disarm())
}

/// What [`thaw_tree`] did.
#[derive(Debug)]
pub struct ThawedTree {
    /// The root (a child of the caller).
    pub root: Thawed,
    /// Every live process: (old PID, new PID); the same but for the root when its PID was taken.
    pub pids: Vec<(i32, i32)>,
    pub zombies: usize,
    pub page_bytes: u64,
    pub elapsed: Duration,
}

/// (process, fd number in it) → our fd to hand it.
type LocalFds = Vec<((i32, i32), RawFd)>;

/// Local copies of what several processes share: pipes (made again with their bytes) and
/// files (opened once), kept open until every process has its copies.
fn shared_locals(tree: &TreeImage) -> Result<(Vec<OwnedFd>, LocalFds)> {
    let mut keep = Vec::new();
    let mut map = Vec::new();
    for s in &tree.shared {
        match &s.kind {
            SharedKind::Pipe { size, data } => {
                let mut p = [0i32; 2];
                // SAFETY: pipe2 writes two fds.
                if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                    return Err(terr("pipe2")(io::Error::last_os_error()));
                }
                // SAFETY: both just made, ours alone.
                let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
                let want = (*size as usize).max(data.len()) as libc::c_int;
                // SAFETY: fcntl with integer arguments.
                if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) } < want {
                    return Err(terr(format!("F_SETPIPE_SZ {want}"))(
                        io::Error::last_os_error(),
                    ));
                }
                let mut off = 0;
                while off < data.len() {
                    // SAFETY: write from a valid buffer; it fits the pipe (sized above).
                    let n = unsafe {
                        libc::write(w.as_raw_fd(), data[off..].as_ptr().cast(), data.len() - off)
                    };
                    if n <= 0 {
                        return Err(terr("writing a pipe's bytes back")(
                            io::Error::last_os_error(),
                        ));
                    }
                    off += n as usize;
                }
                for (fd, write) in [(&r, false), (&w, true)] {
                    // the file status flags of that side (O_NONBLOCK and the like)
                    if let Some(e) = s.ends.iter().find(|e| e.write == write) {
                        let fl = e.flags & !(libc::O_ACCMODE as u32 | libc::O_CLOEXEC as u32);
                        // SAFETY: fcntl with integer arguments.
                        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl as libc::c_int) }
                            != 0
                        {
                            return Err(terr("F_SETFL")(io::Error::last_os_error()));
                        }
                    }
                }
                for e in &s.ends {
                    let l = if e.write {
                        w.as_raw_fd()
                    } else {
                        r.as_raw_fd()
                    };
                    map.push(((e.pid, e.fd), l));
                }
                keep.push(r);
                keep.push(w);
            }
            SharedKind::File { path, flags, pos } => {
                let c = std::ffi::CString::new(path.as_str())
                    .map_err(|_| Error::Thaw(format!("a NUL in path {path:?}")))?;
                let fl = (*flags as libc::c_int
                    & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY))
                    | libc::O_CLOEXEC;
                // SAFETY: open of a NUL-terminated path.
                let fd = unsafe { libc::open(c.as_ptr(), fl) };
                if fd < 0 {
                    return Err(terr(format!("opening {path}"))(io::Error::last_os_error()));
                }
                // SAFETY: just opened, ours alone.
                let f = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: lseek with integer arguments.
                if unsafe { libc::lseek(fd, *pos as libc::off_t, libc::SEEK_SET) } < 0 {
                    return Err(terr(format!("lseek in {path}"))(io::Error::last_os_error()));
                }
                for e in &s.ends {
                    map.push(((e.pid, e.fd), fd));
                }
                keep.push(f);
            }
        }
    }
    Ok((keep, map))
}

/// Everything made so far: killed unless the tree runs.
struct Made {
    thawings: Vec<Thawing>,
    forked: KillOnDrop,
}

/// Rebuilds the tree stored in `input` (written by [`crate::freeze_tree`]) and lets every
/// process run. The root becomes a child of the caller (with its old PID when `same_pid` and
/// free, else a new one); every other process gets its old PID back (refused if it is
/// taken: its parent knows it by it). `opts` applies to the root: its stdio, and the
/// placeholders of the fds that led outside the tree; a descendant holding the same outside
/// fd gets the same.
pub fn thaw_tree<R: Read>(mut input: R, opts: &ThawOptions) -> Result<ThawedTree> {
    let t0 = Instant::now();
    if opts.seccomp_filter.is_some() {
        return Err(Error::Thaw(
            "a tree is thawed without a seccomp filter".into(),
        ));
    }
    let tree = TreeImage::read_head(&mut input)?;
    let (_keep, locals) = shared_locals(&tree)?;
    let root = tree.procs[0].clone();
    let mut made = Made {
        thawings: Vec::new(),
        forked: KillOnDrop(Vec::new()),
    };
    let mut page_bytes = 0;
    let live: Vec<TreeProc> = tree.live().cloned().collect();
    for p in &live {
        let mut reader = ImageReader::new(&mut input)?;
        if reader.process().pid != p.pid {
            return Err(Error::Image(crate::ImageError::Corrupt(format!(
                "the tree lists process {} where the image of {} follows",
                p.pid,
                reader.process().pid
            ))));
        }
        let is_root = p.pid == root.pid;
        let mut popts = if is_root {
            opts.clone()
        } else {
            ThawOptions {
                owner: opts.owner.clone(),
                same_pid_wait: opts.same_pid_wait,
                ..Default::default()
            }
        };
        let img = reader.process();
        let mut ph: Vec<(i32, RawFd)> = Vec::new();
        for f in &img.fds {
            if let Some(&(_, l)) = locals.iter().find(|(k, _)| *k == (p.pid, f.fd)) {
                ph.push((f.fd, l));
            } else if is_root {
                if let Some(&x) = opts.fd_placeholders.iter().find(|x| x.0 == f.fd) {
                    ph.push(x);
                }
            } else if matches!(f.kind, FdKind::External { .. }) {
                // the root's, which the freeze checked it is
                match opts.fd_placeholders.iter().find(|x| x.0 == f.fd) {
                    Some(&x) => ph.push(x),
                    None => {
                        return Err(Error::FdsNeedNames {
                            fds: vec![(
                                f.fd,
                                format!("of the root and of its descendant {}", p.pid),
                            )],
                        });
                    }
                }
            }
        }
        popts.fd_placeholders = ph;
        let spot = TreeSpot {
            adopt: (!is_root).then_some(p.pid),
            forks: tree
                .procs
                .iter()
                .filter(|c| c.ppid == p.pid)
                .map(|c| (c.pid, c.zombie))
                .collect(),
            setsid: is_root && img.session_leader,
        };
        // the terminal a session-leading root had as its controlling terminal
        let ctty = img
            .terminal
            .as_ref()
            .filter(|t| spot.setsid && t.ctty)
            .map(|t| t.fd);
        if spot.setsid {
            // done before the forks (children belong to its session); not again later
            let mut copy = (*reader.process).clone();
            copy.session_leader = false;
            copy.pgrp_leader = false;
            reader.process = Arc::new(copy);
        }
        let (mut t, forked) = Thawing::skeleton_in(&reader, &popts, spot)?;
        made.forked.0.extend(forked);
        page_bytes += t.pages(&mut reader)?;
        t.attributes()?;
        t.fds()?;
        if let Some(fd) = ctty {
            // as a lone session leader's thaw does (fds::restore_terminal): nothing when no
            // terminal is attached there now
            on_thread(&t, move |bd| {
                let r =
                    bd.b.t
                        .syscall_raw(libc::SYS_ioctl, &[fd as u64, libc::TIOCSCTTY, 0])
                        .map_err(terr("ioctl(TIOCSCTTY)"))?;
                if r < 0 && r != -(libc::ENOTTY as i64) {
                    return Err(Error::Thaw(format!(
                        "the root led its session with its terminal as the controlling terminal, and the terminal at fd {fd} cannot become its controlling terminal ({}): thaw it in a terminal of its own",
                        crate::error::from_neg(r)
                    )));
                }
                Ok(())
            })?;
        }
        made.thawings.push(t);
    }
    // process groups: leaders made theirs in `attributes`; members join them
    let root_new = made.thawings[0].pid();
    for (i, p) in live.iter().enumerate().skip(1) {
        if p.pgid == p.pid || (p.pgid == root.pgid && root.pgid != root.pid) {
            continue; // its own (done), or the root's group it was born in
        }
        let target = if p.pgid == root.pid { root_new } else { p.pgid };
        let t = &mut made.thawings[i];
        on_thread(t, move |bd| {
            bd.b.sys("setpgid", libc::SYS_setpgid, &[0, target as u64])
                .map(|_| ())
        })?;
    }
    // let them go: children first, the root last
    let mut pids = Vec::new();
    let mut thawed_root = None;
    let thawings = std::mem::take(&mut made.thawings);
    made.forked.disarm_all();
    let n = thawings.len();
    let mut rest: Vec<Thawing> = thawings;
    while let Some(t) = rest.pop() {
        let old = live[rest.len()].pid;
        match t.run() {
            Ok(th) => {
                pids.push((old, th.pid));
                if rest.is_empty() {
                    thawed_root = Some(th);
                }
            }
            Err(e) => {
                // those not yet let go are killed as `rest` drops
                return Err(e);
            }
        }
    }
    pids.reverse();
    debug_assert_eq!(pids.len(), n);
    Ok(ThawedTree {
        root: thawed_root.expect("the root is thawed last"),
        pids,
        zombies: tree.procs.iter().filter(|p| p.zombie.is_some()).count(),
        page_bytes,
        elapsed: t0.elapsed(),
    })
}

impl KillOnDrop {
    fn disarm_all(&mut self) {
        self.0.clear();
    }
}
