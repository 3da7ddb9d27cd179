//! Thaw: rebuild a process from an image stream, by system calls injected into a fresh child.
//!
//! Phases, each a method of [`Thawing`]: [`Thawing::skeleton`] (checks, the new process on its
//! tracer thread, its address space emptied and the mappings made) → [`Thawing::pages`] (memory
//! contents from the stream, written by the caller's thread) → [`Thawing::attributes`] →
//! [`Thawing::fds`] (reopened files, or placeholders the caller supplies) →
//! [`Thawing::install_filter`] (optional seccomp user-notification filter, while the process is
//! still root) → [`Thawing::run`] (signals, credentials, registers; let go). Dropping a
//! [`Thawing`] before `run` kills the half-built process.

use crate::error::{Error, ImageError, Result};
use crate::image::*;
use crate::procfs::parse_maps;
use crate::seccomp::SeccompFilter;
use crate::sys::*;
use crate::tracer::{Slot, Tracer};
use std::io::{self, Read};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod attrs;
mod checks;
pub(crate) use checks::check_owner;
mod fds;
mod finish;
mod inject;
mod inproc;
mod into_shell;
mod locks;
mod maps;
mod memory;
mod spawn;
mod threads;
mod tree;
pub(crate) use tree::TreeSpot;
pub use tree::{ThawedTree, thaw_tree};
mod timers;

use checks::{check_file, fit_xstate, own_vdso_gadget, special_areas};
use inject::{Builder, GADGET_AT, call};
use maps::find_gap;
use spawn::{ChildGuard, spawn};

/// Options of [`thaw`].
#[derive(Debug, Clone, Default)]
pub struct ThawOptions {
    /// Recreate the process with its old PID (clone3 set_tid, needs root); falls back to a new
    /// PID when the old one stays taken.
    pub same_pid: bool,
    /// How long to wait for the old PID to be reaped (default 5 s).
    pub same_pid_wait: Option<Duration>,
    /// fds of the calling process to use as the thawed process's stdin/stdout/stderr where the
    /// frozen process had a terminal or pipe there. `None`: the caller's own fd 0/1/2.
    pub stdin: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// Per fd number of the image, an fd of the calling process to install there instead of
    /// reopening what the image describes (e.g. one end of a socketpair relayed to the home
    /// deputy). Every number must be an fd of the image.
    pub fd_placeholders: Vec<(i32, RawFd)>,
    /// A filter installed with SECCOMP_FILTER_FLAG_NEW_LISTENER before the switch to the
    /// process's own credentials; its listener comes back in [`Thawed::listener`]. Calls the
    /// engine injects after it that the filter traps are answered "continue".
    pub seccomp_filter: Option<SeccompFilter>,
    /// Thaw on behalf of this user (a root daemon serving an unprivileged caller): an image
    /// that would run as anyone else or with more than the user has is refused before
    /// anything is made, and the new process opens every file (mapped files, the
    /// executable, fds, cwd) with the user's file-system credentials, never root's.
    pub owner: Option<ThawOwner>,
    /// The main thread's TID cached by glibc (in its struct pthread, where clear_child_tid
    /// points) is left as the image has it even though the PID changes: for a guest, whose
    /// gettid is answered with its home PID everywhere. Patching it would disown the locks it
    /// holds (a rwlock's writer, a recursive mutex's owner are that TID): their unlock would
    /// then corrupt them.
    pub keep_cached_tid: bool,
}

/// The caller a thaw is for (see [`ThawOptions::owner`]).
#[derive(Debug, Clone, Default)]
pub struct ThawOwner {
    pub uid: u32,
    /// Every group the caller has (primary and supplementary).
    pub groups: Vec<u32>,
    /// The caller's hard limits (resource, hard limit): an image may not ask for more.
    pub hard_limits: Vec<(u32, u64)>,
    /// The caller's oom_score_adj: an image may not ask for less.
    pub oom_score_adj: i32,
}

impl ThawOwner {
    /// The owner as process `pid` is now (its real uid, every group, hard limits and
    /// oom_score_adj from /proc): for a daemon, the caller on the other end of its socket
    /// (SO_PEERCRED's pid). Fails closed: what cannot be read or parsed is an error.
    pub fn of_process(pid: i32) -> std::result::Result<ThawOwner, String> {
        let read = |f: &str| {
            read_to_string(&format!("/proc/{pid}/{f}"))
                .map_err(|e| format!("cannot read /proc/{pid}/{f}: {e}"))
        };
        let st = read("status")?;
        let bad = |what: &str| format!("cannot parse {what} in /proc/{pid}/status");
        let ids = |key: &str| -> std::result::Result<Vec<u32>, String> {
            crate::procfs::status_field(&st, key)
                .ok_or_else(|| bad(key))?
                .split_whitespace()
                .map(|v| v.parse::<u32>().map_err(|_| bad(key)))
                .collect()
        };
        let uids = ids("Uid")?;
        let gids = ids("Gid")?;
        if uids.len() != 4 || gids.len() != 4 {
            return Err(bad("Uid/Gid"));
        }
        // the caller's real ids: a set-uid caller is not the user it runs for
        let mut groups = ids("Groups")?;
        groups.push(gids[0]);
        let mut hard_limits = Vec::new();
        for (i, l) in read("limits")?.lines().skip(1).enumerate() {
            let v: Vec<&str> = l
                .split_whitespace()
                .filter(|w| *w == "unlimited" || w.parse::<u64>().is_ok())
                .collect();
            let hard = match v.get(1).copied() {
                Some("unlimited") => u64::MAX,
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("cannot parse /proc/{pid}/limits"))?,
                None => return Err(format!("cannot parse /proc/{pid}/limits: {l}")),
            };
            hard_limits.push((i as u32, hard));
        }
        let oom_score_adj = read("oom_score_adj")?
            .trim()
            .parse()
            .map_err(|_| format!("cannot parse /proc/{pid}/oom_score_adj"))?;
        Ok(ThawOwner {
            uid: uids[0],
            groups,
            hard_limits,
            oom_score_adj,
        })
    }
}

/// What a thaw did.
#[derive(Debug)]
pub struct Thawed {
    pub pid: i32,
    pub old_pid: i32,
    pub page_bytes: u64,
    /// Set when --same-pid was asked for but the old PID could not be had.
    pub pid_note: Option<String>,
    pub elapsed: Duration,
    /// Time spent streaming memory contents into the process.
    pub memory_time: Duration,
    /// The seccomp listener of the installed filter, when one was asked for.
    pub listener: Option<OwnedFd>,
}

const TRAMP: u64 = 256 * 1024;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

fn terr(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::ThawSys {
        what: what.into(),
        source,
    }
}

/// The image stream, its process section read: hand it to [`Thawing::skeleton`], then to
/// [`Thawing::pages`].
pub struct ImageReader<R: Read> {
    sr: SectionReader<R>,
    buf: Vec<u8>,
    process: Arc<ProcessImage>,
}

impl<R: Read> ImageReader<R> {
    /// Reads and checks the header and the process section.
    pub fn new(input: R) -> Result<Self> {
        let mut sr = SectionReader::new(input)?;
        let mut buf = Vec::new();
        if sr.next(&mut buf)? != TAG_PROCESS {
            return Err(
                ImageError::Corrupt("first section is not the process section".into()).into(),
            );
        }
        let process = Arc::new(ProcessImage::decode_version(&buf, sr.version)?);
        Ok(ImageReader { sr, buf, process })
    }
    pub fn process(&self) -> &ProcessImage {
        &self.process
    }
}

/// Thread-side state of a thaw in progress.
struct Building {
    b: Builder,
    guard: ChildGuard,
    /// fd number of the seccomp listener inside the new process, closed in `run`.
    listener_in_child: Option<u64>,
    /// Thawing into the parked home shell: the shell, put back parked on failure.
    shell: Option<crate::shell::Shell>,
}

/// A process being rebuilt, on its tracer thread. `Send`; dropped before [`Thawing::run`], the
/// half-built process is killed.
#[derive(Debug)]
pub struct Thawing {
    tracer: Tracer,
    pid: i32,
    img: Arc<ProcessImage>,
    opts: ThawOptions,
    xstate: Vec<u8>,
    pid_note: Option<String>,
    t0: Instant,
    page_bytes: u64,
    memory_time: Duration,
    listener: Option<OwnedFd>,
    done: u8,
    /// Thawing into the home shell ([`Thawing::into_shell`]): P's fds to close, as they are not
    /// in the image.
    shell_close: Option<Vec<i32>>,
}

fn gone(pid: i32) -> Error {
    Error::TracerGone {
        name: format!("omnode-thaw-{pid}"),
    }
}

/// Runs `f` on the tracer thread against the process being built.
fn on_thread<R: Send + 'static>(
    t: &Thawing,
    f: impl FnOnce(&mut Building) -> Result<R> + Send + 'static,
) -> Result<R> {
    let pid = t.pid;
    t.tracer
        .call(move |slot: &mut Slot| match slot.get::<Building>() {
            Some(b) => f(b),
            None => Err(gone(pid)),
        })?
}

impl Thawing {
    /// Phase 1: checks (files, vDSO layout, CPU features) before anything is created, then the
    /// new process (a traced child of the caller), its inherited mappings and fds dropped, the
    /// vDSO moved to its old place and every mapping of the image made.
    pub fn skeleton<R: Read>(reader: &ImageReader<R>, opts: &ThawOptions) -> Result<Thawing> {
        Self::skeleton_in(reader, opts, TreeSpot::default()).map(|(t, _)| t)
    }

    /// [`Thawing::skeleton`] of one process of a tree (see [`tree`]): `spot` says whether to
    /// take over a process already forked for it, and which children to fork from it.
    /// Returns the PIDs forked.
    pub(crate) fn skeleton_in<R: Read>(
        reader: &ImageReader<R>,
        opts: &ThawOptions,
        spot: TreeSpot,
    ) -> Result<(Thawing, Vec<i32>)> {
        let t0 = Instant::now();
        let arc = reader.process.clone();
        let img: &ProcessImage = &arc;
        // --- checks before creating anything
        let boot_id = read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let same_boot = !img.boot_id.is_empty() && boot_id.trim() == img.boot_id;
        check_file(&img.exe, &img.exe_id, same_boot)?;
        for v in &img.vmas {
            if let (VmaKind::File, Some(id)) = (v.kind, &v.file) {
                check_file(&v.name, id, same_boot)?;
            }
        }
        let self_maps = parse_maps(
            &read_to_string("/proc/self/maps").map_err(terr("reading /proc/self/maps"))?,
        )
        .map_err(terr("parsing /proc/self/maps"))?;
        let own: Vec<(VmaKind, u64, u64)> = self_maps
            .iter()
            .filter_map(|m| {
                let k = match m.name.as_str() {
                    "[vvar]" => VmaKind::Vvar,
                    "[vvar_vclock]" => VmaKind::VvarVclock,
                    "[vdso]" => VmaKind::Vdso,
                    _ => return None,
                };
                Some((k, m.start, m.end))
            })
            .collect();
        let theirs = special_areas(&img.vmas);
        if !theirs.is_empty() {
            let sizes =
                |v: &[(VmaKind, u64, u64)]| v.iter().map(|x| (x.0, x.2 - x.1)).collect::<Vec<_>>();
            if sizes(&own) != sizes(&theirs) {
                return Err(Error::TargetUnfit {
                    reason:
                        "the vDSO layout of this kernel differs from the one the process was frozen on"
                            .into(),
                });
            }
        }
        let xstate = fit_xstate(&img.xstate)?;
        let unnamed: Vec<(i32, String)> = img
            .fds
            .iter()
            .filter_map(|f| match &f.kind {
                FdKind::External { what, .. }
                    if !opts.fd_placeholders.iter().any(|p| p.0 == f.fd) =>
                {
                    Some((f.fd, what.clone()))
                }
                _ => None,
            })
            .collect();
        if !unnamed.is_empty() {
            return Err(Error::FdsNeedNames { fds: unnamed });
        }
        check_terminals(img, opts)?;
        if let Some(o) = &opts.owner {
            checks::check_owner(img, o)?;
        }
        let gadget = own_vdso_gadget(&self_maps)
            .ok_or_else(|| Error::Thaw("no vDSO in this process".into()))?;

        let tracer = Tracer::spawn(format!("omnode-thaw-{}", img.pid))?;
        let img2 = arc.clone();
        let opts2 = opts.clone();
        let (pid, pid_note, forked) = tracer.call(move |slot: &mut Slot| {
            build_skeleton(slot, &img2, &opts2, gadget, own, theirs, &spot)
        })??;
        Ok((
            Thawing {
                tracer,
                pid,
                img: arc,
                opts: opts.clone(),
                xstate,
                pid_note,
                t0,
                page_bytes: 0,
                memory_time: Duration::ZERO,
                listener: None,
                done: 1,
                shell_close: None,
            },
            forked,
        ))
    }

    /// PID of the new process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn phase(&mut self, n: u8, name: &str) -> Result<()> {
        if self.done + 1 != n {
            return Err(Error::Thaw(format!(
                "thaw phase {name} out of order (phase {} was the last done)",
                self.done
            )));
        }
        self.done = n;
        Ok(())
    }

    /// Phase 2: the memory contents, streamed from `reader` (the caller's thread writes them);
    /// the cached TID patched. Returns the bytes written.
    pub fn pages<R: Read>(&mut self, reader: &mut ImageReader<R>) -> Result<u64> {
        self.phase(2, "pages")?;
        if !Arc::ptr_eq(&reader.process, &self.img) {
            return Err(Error::Thaw("pages from another image stream".into()));
        }
        let mem_t = Instant::now();
        let (total, memf) =
            memory::write_contents(&mut reader.sr, &mut reader.buf, self.pid, &self.img)?;
        self.memory_time = mem_t.elapsed();
        if !self.opts.keep_cached_tid {
            memory::patch_cached_tid(&memf, self.pid, &self.img)?;
        }
        self.page_bytes = total;
        Ok(total)
    }

    /// Phase 3: limits, name, cwd, umask, personality, signal handlers, mm fields, session.
    pub fn attributes(&mut self) -> Result<()> {
        self.phase(3, "attributes")?;
        let (img, pid) = (self.img.clone(), self.pid);
        let keep_exe = self.shell_close.is_some();
        on_thread(self, move |bd| {
            attrs::set_attributes(&mut bd.b, &img, pid, keep_exe)
        })
    }

    /// Phase 4: the fd table: reopened files at their offsets, shared descriptions, stdio, and
    /// the caller's placeholders.
    pub fn fds(&mut self) -> Result<()> {
        self.phase(4, "fds")?;
        for &(n, _) in &self.opts.fd_placeholders {
            if !self.img.fds.iter().any(|f| f.fd == n) {
                return Err(Error::Thaw(format!(
                    "a placeholder was given for fd {n}, which the image does not have"
                )));
            }
        }
        let img = self.img.clone();
        let ph = self.opts.fd_placeholders.clone();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let close = self.shell_close.clone().unwrap_or_default();
        on_thread(self, move |bd| {
            for fd in close {
                bd.b.sys("close", libc::SYS_close, &[fd as u64])?;
            }
            fds::restore_fds(&mut bd.b, &img, &ph, me)
        })
    }

    /// Phase 5 (optional): installs `filter` with SECCOMP_FILTER_FLAG_NEW_LISTENER by an
    /// injected seccomp(2) while the process still has root's credentials, and takes the
    /// listener out with pidfd_getfd.
    pub fn install_filter(&mut self, filter: &SeccompFilter) -> Result<()> {
        self.phase(5, "install filter")?;
        let prog = filter.0.clone();
        let pid = self.pid;
        let l = on_thread(self, move |bd| {
            let mut bytes = Vec::with_capacity(prog.len() * 8);
            for i in &prog {
                bytes.extend_from_slice(&i.code.to_ne_bytes());
                bytes.push(i.jt);
                bytes.push(i.jf);
                bytes.extend_from_slice(&i.k.to_ne_bytes());
            }
            let insns = bd.b.data(&bytes)?;
            let mut fprog = Vec::with_capacity(16);
            fprog.extend_from_slice(&(prog.len() as u64).to_ne_bytes()); // u16 len + padding
            fprog.extend_from_slice(&insns.to_ne_bytes());
            let fp = bd.b.data(&fprog)?;
            let r = bd.b.t.syscall_raw(
                libc::SYS_seccomp,
                &[
                    libc::SECCOMP_SET_MODE_FILTER as u64,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    fp,
                ],
            );
            let fd = match r.map_err(terr("seccomp"))? {
                r if (-4095..0).contains(&r) => {
                    let e = crate::error::from_neg(r);
                    return Err(Error::ThawSys {
                        what: if r == -(libc::EACCES as i64) {
                            "installing the seccomp filter (needs root, or no_new_privs)".into()
                        } else {
                            "installing the seccomp filter".into()
                        },
                        source: e,
                    });
                }
                r => r as u64,
            };
            bd.listener_in_child = Some(fd);
            let l = crate::seccomp::pidfd_getfd(pid, fd as RawFd)
                .map_err(terr("pidfd_getfd of the seccomp listener"))?;
            bd.b.t.listener = Some(l.try_clone().map_err(terr("dup of the listener"))?);
            Ok(l)
        })?;
        self.listener = Some(l);
        Ok(())
    }

    /// Phase 6: pending signals, timers, credentials (the user's, last), rseq, registers, FPU
    /// state and signal mask; then the process is let go.
    pub fn run(mut self) -> Result<Thawed> {
        self.run_inner()
    }

    /// [`Thawing::run`] of a thaw into the home shell: on failure (P not yet let go) the shell
    /// comes back parked, so the copy where the image came from can run on.
    pub fn run_home(mut self) -> std::result::Result<Thawed, (Option<crate::HomeShell>, Error)> {
        match self.run_inner() {
            Ok(t) => Ok(t),
            Err(e) => {
                let pid = self.pid;
                let alive = self
                    .tracer
                    .call(|slot: &mut Slot| slot.get::<crate::shell::Shell>().is_some())
                    .unwrap_or(false);
                let sh = alive.then(|| crate::HomeShell::from_parts(self.tracer, pid));
                Err((sh, e))
            }
        }
    }

    fn run_inner(&mut self) -> Result<Thawed> {
        if self.done == 4 {
            self.done = 5; // no filter
        }
        self.phase(6, "run")?;
        let (img, pid, xstate) = (self.img.clone(), self.pid, std::mem::take(&mut self.xstate));
        let keep_creds = self.shell_close.is_some();
        self.tracer.call(move |slot: &mut Slot| {
            let Some(mut bd) = slot.take::<Building>() else {
                return Err(gone(pid));
            };
            let tramp = bd.b.tramp;
            let mut signals = bd.shell.as_mut().map(|s| s.take_signals());
            let r = finish::finish(
                &mut bd.b,
                &img,
                pid,
                tramp,
                xstate,
                bd.listener_in_child,
                keep_creds,
            );
            if let Some(v) = signals.as_mut() {
                // signals that arrived during the injected calls of the rebuild
                v.extend(bd.b.t.stashed.drain(..).filter_map(|info| {
                    info.get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                }));
            }
            match r {
                Ok(()) => bd.guard.armed = false,
                Err(e) => {
                    if let Some(sh) = bd.shell.take() {
                        // not yet let go: back to a parked shell
                        drop(bd);
                        crate::shell::restore_parked(slot, sh)?;
                    }
                    return Err(e);
                }
            }
            // signals that reached P while it was rebuilt, now that it runs as itself
            for sig in signals.into_iter().flatten() {
                // SAFETY: kill with integer arguments.
                unsafe { libc::kill(pid, sig) };
            }
            Ok(())
        })??;
        Ok(Thawed {
            pid: self.pid,
            old_pid: self.img.pid,
            page_bytes: self.page_bytes,
            pid_note: self.pid_note.take(),
            elapsed: self.t0.elapsed(),
            memory_time: self.memory_time,
            listener: self.listener.take(),
        })
    }
}

/// Rebuilds the process stored in `input` as a new child of the caller and lets it run: the
/// phases of [`Thawing`] in order.
pub fn thaw<R: Read>(input: R, opts: &ThawOptions) -> Result<Thawed> {
    let mut reader = ImageReader::new(input)?;
    let mut t = Thawing::skeleton(&reader, opts)?;
    t.pages(&mut reader)?;
    t.attributes()?;
    t.fds()?;
    if let Some(f) = &opts.seccomp_filter {
        t.install_filter(f)?;
    }
    t.run()
}

/// On the tracer thread: the new process, emptied, with the image's mappings.
/// A terminal above fd 2 is opened again from the terminal attached at its stdio fd: that must
/// be a terminal now. The settings must be the kernel's struct termios of this machine.
fn check_terminals(img: &ProcessImage, opts: &ThawOptions) -> Result<()> {
    if let Some(t) = &img.terminal {
        if t.termios.len() != 36 {
            return Err(Error::TargetUnfit {
                reason: format!(
                    "the image's terminal settings are {} bytes, this machine's struct termios 36",
                    t.termios.len()
                ),
            });
        }
    }
    for f in &img.fds {
        if let FdKind::Terminal { like, .. } = f.kind {
            let ours = match like {
                0 => opts.stdin,
                1 => opts.stdout,
                _ => opts.stderr,
            }
            .unwrap_or(like);
            // SAFETY: isatty only queries the fd.
            if unsafe { libc::isatty(ours) } != 1 {
                return Err(Error::Thaw(format!(
                    "fd {} was another open file of the terminal at fd {like}, and what thaw attaches at fd {like} is no terminal: thaw it from a terminal (without a file for fd {like})",
                    f.fd
                )));
            }
        }
    }
    Ok(())
}

fn build_skeleton(
    slot: &mut Slot,
    img: &ProcessImage,
    opts: &ThawOptions,
    gadget: u64,
    own: Vec<(VmaKind, u64, u64)>,
    theirs: Vec<(VmaKind, u64, u64)>,
    spot: &TreeSpot,
) -> Result<(i32, Option<String>, Vec<i32>)> {
    // --- the new process
    let fds = [
        opts.stdin.unwrap_or(-1),
        opts.stdout.unwrap_or(-1),
        opts.stderr.unwrap_or(-1),
    ];
    let mut pid_note = None;
    let pid = if let Some(p) = spot.adopt {
        tree::seize_forked(p)?;
        p
    } else if opts.same_pid {
        let deadline = Instant::now() + opts.same_pid_wait.unwrap_or(Duration::from_secs(5));
        loop {
            match spawn(&fds, Some(img.pid)) {
                Ok(p) => break p,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let st = read_to_string(&format!("/proc/{}/stat", img.pid)).unwrap_or_default();
                    let zombie = st
                        .rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
                    if (st.is_empty() || zombie) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    pid_note = Some(format!(
                        "PID {} is taken; the process got a new PID",
                        img.pid
                    ));
                    break spawn(&fds, None).map_err(terr("clone3"))?;
                }
                Err(e) => return Err(terr(format!("clone3 with PID {}", img.pid))(e)),
            }
        }
    } else {
        spawn(&fds, None).map_err(terr("clone3"))?
    };
    slot.set(Building {
        b: Builder {
            t: Tracee::new(pid, gadget, unsafe_zeroed_regs()),
            tramp: 0,
            data_off: 0,
        },
        guard: ChildGuard { pid, armed: true },
        listener_in_child: None,
        shell: None,
    });
    let bd = slot.get::<Building>().expect("just set");
    if spot.adopt.is_some() {
        tree::interrupt_forked(pid)?;
    } else {
        let st = wait(pid).map_err(terr("waiting for the new process"))?;
        if !libc::WIFSTOPPED(st) {
            return Err(Error::Thaw(
                "the new process did not stop as expected".into(),
            ));
        }
        ptrace_req(
            Req::SetOptions,
            pid,
            (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as usize,
        )
        .map_err(terr("PTRACE_SETOPTIONS"))?;
    }
    bd.b.t.base = getregs(pid).map_err(terr("PTRACE_GETREGS"))?;
    let b = &mut bd.b;

    // trampoline + scratch area, free in both layouts
    let child_maps =
        parse_maps(&read_to_string(&format!("/proc/{pid}/maps")).map_err(terr("reading maps"))?)
            .map_err(terr("parsing maps"))?;
    let (tramp, busy) = place_trampoline(b, pid, &child_maps, img)?;
    // a tree: its session, then its children forked from it while it is still a copy of us
    // (each takes over from there as the new process does), before anything is dropped
    let forked = tree::fork_children(b, spot, opts)?;
    let forked_guard = tree::KillOnDrop(forked);

    // drop what the child inherited from us: rseq, fds, every mapping but ours and the vdso
    let mut calls = Vec::new();
    if let Some((p, l, s)) = get_rseq(pid).map_err(terr("PTRACE_GET_RSEQ_CONFIGURATION"))? {
        calls.push(call(
            "rseq unregister",
            libc::SYS_rseq,
            &[p, l as u64, 1, s as u64],
        ));
    }
    calls.push(call(
        "close_range",
        libc::SYS_close_range,
        &[3, u32::MAX as u64, 0],
    ));
    if opts.owner.is_some() {
        // from here on every file is opened as the user (the file-system uid and gid drop
        // root's file capabilities; the rest of root's stays for PR_SET_MM and the like)
        let c = &img.creds;
        let mut g = Vec::with_capacity(c.groups.len() * 4);
        for x in &c.groups {
            g.extend_from_slice(&x.to_ne_bytes());
        }
        let p = b.data(&g)?;
        calls.push(call(
            "setgroups",
            libc::SYS_setgroups,
            &[c.groups.len() as u64, p],
        ));
        calls.push(call("setfsgid", libc::SYS_setfsgid, &[c.gid[3] as u64]));
        calls.push(call("setfsuid", libc::SYS_setfsuid, &[c.uid[3] as u64]));
    }
    let mut keep: Vec<(u64, u64)> = vec![(tramp, tramp + TRAMP)];
    keep.extend(own.iter().map(|x| (x.1, x.2)));
    keep.sort();
    let mut cur = 0u64;
    for &(s, e) in keep.iter().chain(std::iter::once(&(TASK_SIZE, TASK_SIZE))) {
        if s > cur {
            calls.push(call("munmap", libc::SYS_munmap, &[cur, s - cur]));
        }
        cur = cur.max(e);
    }
    // vvar, vvar_vclock and vdso move together to their old addresses
    if theirs.is_empty() {
        for &(_, s, e) in &own {
            calls.push(call("munmap of the vdso", libc::SYS_munmap, &[s, e - s]));
        }
    } else if own.iter().map(|x| x.1).ne(theirs.iter().map(|x| x.1)) {
        let total: u64 = own.iter().map(|x| x.2 - x.1).sum();
        let mut busy2 = busy.clone();
        busy2.push((tramp, tramp + TRAMP));
        let tmp = find_gap(&mut busy2, total, 0x2000_0000)
            .ok_or_else(|| Error::Thaw("no free address range".into()))?;
        let mv = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let mut off = 0;
        let mut staged = Vec::new();
        for &(_, s, e) in &own {
            calls.push(call(
                "mremap of the vdso",
                libc::SYS_mremap,
                &[s, e - s, e - s, mv, tmp + off],
            ));
            staged.push((tmp + off, e - s));
            off += e - s;
        }
        for (&(a, l), &(_, dst, _)) in staged.iter().zip(theirs.iter()) {
            calls.push(call(
                "mremap of the vdso",
                libc::SYS_mremap,
                &[a, l, l, mv, dst],
            ));
        }
    }
    b.run(&calls)?;
    if opts.owner.is_some() {
        checks::check_fs_creds(pid, &img.creds)?;
    }

    // --- the mappings: open each file once, map everything, close the files
    maps::map_vmas(b, img)?;
    Ok((pid, pid_note, forked_guard.disarm()))
}

/// Maps the trampoline (syscall gadget + int3, and scratch) at an address free both in the
/// process now (`maps`) and in the image, and makes it the builder's gadget. Returns its
/// address and the ranges that were busy (sorted), for later searches of free space.
fn place_trampoline(
    b: &mut Builder,
    pid: i32,
    maps: &[crate::procfs::MapsLine],
    img: &ProcessImage,
) -> Result<(u64, Vec<(u64, u64)>)> {
    let mut busy: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    busy.extend(img.vmas.iter().map(|v| (v.start, v.end)));
    let tramp = find_gap(&mut busy, TRAMP, 0x1000_0000)
        .ok_or_else(|| Error::Thaw("no free address range".into()))?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let r = b.sys(
        "mmap of the trampoline",
        libc::SYS_mmap,
        &[
            tramp,
            TRAMP,
            rwx,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if r != tramp {
        return Err(Error::Thaw("trampoline landed at the wrong address".into()));
    }
    write_mem(pid, &[0x0f, 0x05, 0xcc], &[(tramp + GADGET_AT, 3)])
        .map_err(terr("writing the trampoline"))?;
    b.t.gadget = tramp + GADGET_AT;
    b.t.int3 = true;
    b.tramp = tramp;
    Ok((tramp, busy))
}

fn unsafe_zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: plain integer struct; every bit pattern is valid.
    unsafe { std::mem::zeroed() }
}
