//! Thaw: rebuild a process from an image stream, by system calls injected into a fresh child.

use crate::error::{Error, ImageError, Result, errno};
use crate::image::*;
use crate::procfs::parse_maps;
use crate::sys::*;
use libc::pid_t;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

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
}

/// What a thaw did.
#[derive(Debug, Clone)]
pub struct Thawed {
    pub pid: i32,
    pub old_pid: i32,
    pub page_bytes: u64,
    /// Set when --same-pid was asked for but the old PID could not be had.
    pub pid_note: Option<String>,
    pub elapsed: Duration,
    /// Time spent streaming memory contents into the process.
    pub memory_time: Duration,
}

const TRAMP: u64 = 256 * 1024;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

fn terr(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::ThawSys {
        what: what.into(),
        source,
    }
}

/// Kills the half-built process unless disarmed.
struct ChildGuard {
    pid: pid_t,
    armed: bool,
}
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = wait(self.pid);
            let mut st = 0;
            // SAFETY: reap our child.
            unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL | libc::WNOHANG) };
        }
    }
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn child_main(fds: &[i32; 3]) -> ! {
    // Only raw system calls here: we may be the fork of a multi-threaded process.
    // SAFETY: raw syscalls with valid arguments.
    unsafe {
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        );
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL,
            0,
            0,
            0,
        );
        for (i, &fd) in fds.iter().enumerate() {
            if fd >= 0 && fd != i as i32 {
                libc::syscall(libc::SYS_dup3, fd, i as i32, 0);
            }
        }
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::syscall(libc::SYS_exit_group, 127);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

fn spawn(fds: &[i32; 3], set_tid: Option<pid_t>) -> io::Result<pid_t> {
    let tid: pid_t = set_tid.unwrap_or(0);
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: if set_tid.is_some() {
            &tid as *const pid_t as u64
        } else {
            0
        },
        set_tid_size: set_tid.is_some() as u64,
        cgroup: 0,
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; the child only makes raw syscalls.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        child_main(fds);
    }
    if r < 0 {
        return Err(errno());
    }
    Ok(r as pid_t)
}

fn check_file(path: &str, id: &FileId, same_boot: bool) -> Result<()> {
    let now = stat_id(path).map_err(|e| Error::FileChanged {
        path: path.into(),
        why: format!("cannot stat it: {e}"),
    })?;
    let why = if now.size != id.size {
        format!("size is {} bytes, was {}", now.size, id.size)
    } else if (now.mtime_sec, now.mtime_nsec) != (id.mtime_sec, id.mtime_nsec) {
        "modification time differs".to_string()
    } else if same_boot && (now.ino != id.ino || now.dev != id.dev) {
        "it was replaced (different inode)".to_string()
    } else {
        return Ok(());
    };
    Err(Error::FileChanged {
        path: path.into(),
        why,
    })
}

fn special_areas(vmas: &[Vma]) -> Vec<(VmaKind, u64, u64)> {
    vmas.iter()
        .filter(|v| matches!(v.kind, VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso))
        .map(|v| (v.kind, v.start, v.end))
        .collect()
}

fn find_gap(busy: &mut [(u64, u64)], size: u64, lo: u64) -> Option<u64> {
    busy.sort();
    let mut cand = lo;
    for &(s, e) in busy.iter() {
        if e <= cand {
            continue;
        }
        if s >= cand + size {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    if cand + size <= TASK_SIZE {
        Some(cand)
    } else {
        None
    }
}

fn own_vdso_gadget(maps: &[crate::procfs::MapsLine]) -> Option<u64> {
    let v = maps.iter().find(|m| m.name == "[vdso]")?;
    // SAFETY: our own vdso is mapped readable for its whole length.
    let s = unsafe { std::slice::from_raw_parts(v.start as *const u8, (v.end - v.start) as usize) };
    s.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| v.start + i as u64)
}

/// Layout of the trampoline area mapped into the new process.
const GADGET_AT: u64 = 0; // `syscall; int3`
const DATA_AT: u64 = 4096; // arguments (paths, structs), bump-allocated per call or batch
const DATA_END: u64 = 128 << 10;
const OUT_AT: u64 = 128 << 10; // results of a batch, 8 bytes each
const CODE_AT: u64 = 136 << 10; // code of a batch
const MAX_BATCH: usize = 1000;

/// One injected system call, with a description for error messages.
struct Call {
    what: String,
    nr: i64,
    a: [u64; 6],
}
fn call(what: impl Into<String>, nr: i64, args: &[u64]) -> Call {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    Call {
        what: what.into(),
        nr,
        a,
    }
}

struct Builder {
    t: Tracee,
    tramp: u64,
    data_off: u64,
}

impl Builder {
    /// One call on its own, one ptrace stop (use `run` for many independent calls).
    fn sys(&mut self, what: &str, nr: i64, args: &[u64]) -> Result<u64> {
        self.data_off = 0;
        self.t.syscall(nr, args).map_err(terr(what.to_string()))
    }
    /// Many calls with one ptrace stop per MAX_BATCH; fails on the first call that failed.
    fn run(&mut self, calls: &[Call]) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(MAX_BATCH) {
            let list: Vec<(i64, [u64; 6])> = chunk.iter().map(|c| (c.nr, c.a)).collect();
            let r = self
                .t
                .batch(self.tramp + CODE_AT, self.tramp + OUT_AT, &list)
                .map_err(terr("injected system calls"))?;
            for (c, v) in chunk.iter().zip(r) {
                if (-4095..0).contains(&v) {
                    return Err(terr(c.what.clone())(crate::error::from_neg(v)));
                }
                out.push(v as u64);
            }
        }
        self.data_off = 0;
        Ok(out)
    }
    /// Copies `data` into the argument area; valid until the next `sys`/`run`.
    fn data(&mut self, data: &[u8]) -> Result<u64> {
        let off = (self.data_off + 15) & !15;
        if DATA_AT + off + data.len() as u64 > DATA_END {
            return Err(Error::Thaw(
                "arguments too large for the scratch area".into(),
            ));
        }
        let a = self.tramp + DATA_AT + off;
        write_mem(self.t.pid, data, &[(a, data.len() as u64)])
            .map_err(terr("writing into the new process"))?;
        self.data_off = off + data.len() as u64;
        Ok(a)
    }
    fn cstr(&mut self, p: &str) -> Result<u64> {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        self.data(&b)
    }
}

/// XCR0 (the xsave features the kernel enabled) and the standard-format xsave size for them,
/// or None without OSXSAVE.
fn own_xsave() -> Option<(u64, usize)> {
    // SAFETY: cpuid is always available on x86_64; xgetbv only runs when OSXSAVE says it may.
    unsafe {
        let c = std::arch::x86_64::__cpuid(1);
        if c.ecx & (1 << 27) == 0 {
            return None;
        }
        let (lo, hi): (u32, u32);
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
        let d = std::arch::x86_64::__cpuid_count(0xd, 0);
        Some(((hi as u64) << 32 | lo as u64, d.ebx as usize))
    }
}

/// Makes the frozen xsave area fit this CPU: refuses state components it lacks, and pads or
/// trims the (standard-format) area to this CPU's size; components past the end are in their
/// init state per the header's XSTATE_BV.
fn fit_xstate(x: &[u8]) -> Result<Vec<u8>> {
    let Some((have, size)) = own_xsave() else {
        return Ok(x.to_vec());
    };
    let used = x
        .get(512..520)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| Error::Thaw("the image's FPU state is too short".into()))?;
    if used & !have != 0 {
        return Err(Error::Thaw(format!(
            "the frozen FPU/vector state uses CPU features {used:#x} that this CPU lacks (it has {have:#x}); nodes need the same CPU features"
        )));
    }
    let mut v = x.to_vec();
    if size >= 576 && v.len() != size {
        v.resize(size, 0);
    }
    Ok(v)
}

/// Rebuilds the process stored in `input` as a new child of the caller and lets it run.
pub fn thaw<R: Read>(input: R, opts: &ThawOptions) -> Result<Thawed> {
    let t0 = Instant::now();
    let mut sr = SectionReader::new(input)?;
    let mut buf = Vec::new();
    if sr.next(&mut buf)? != TAG_PROCESS {
        return Err(ImageError::Corrupt("first section is not the process section".into()).into());
    }
    let img = ProcessImage::decode(&buf)?;

    // --- checks before creating anything
    let boot_id = read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let same_boot = !img.boot_id.is_empty() && boot_id.trim() == img.boot_id;
    check_file(&img.exe, &img.exe_id, same_boot)?;
    for v in &img.vmas {
        if let (VmaKind::File, Some(id)) = (v.kind, &v.file) {
            check_file(&v.name, id, same_boot)?;
        }
    }
    let self_maps =
        parse_maps(&read_to_string("/proc/self/maps").map_err(terr("reading /proc/self/maps"))?)
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
            return Err(Error::Thaw(
                "the vDSO layout of this kernel differs from the one the process was frozen on"
                    .into(),
            ));
        }
    }
    let xstate = fit_xstate(&img.xstate)?;
    let gadget =
        own_vdso_gadget(&self_maps).ok_or_else(|| Error::Thaw("no vDSO in this process".into()))?;

    // --- the new process
    let fds = [
        opts.stdin.unwrap_or(-1),
        opts.stdout.unwrap_or(-1),
        opts.stderr.unwrap_or(-1),
    ];
    let mut pid_note = None;
    let pid = if opts.same_pid {
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
    let mut guard = ChildGuard { pid, armed: true };
    let st = wait(pid).map_err(terr("waiting for the new process"))?;
    if !libc::WIFSTOPPED(st) {
        return Err(Error::Thaw(
            "the new process did not stop as expected".into(),
        ));
    }
    ptrace(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as usize,
    )
    .map_err(terr("PTRACE_SETOPTIONS"))?;
    let base = getregs(pid).map_err(terr("PTRACE_GETREGS"))?;
    let mut b = Builder {
        t: Tracee {
            pid,
            gadget,
            base,
            stashed: Vec::new(),
            int3: false,
        },
        tramp: 0,
        data_off: 0,
    };

    // trampoline + scratch area, free in both layouts
    let child_maps =
        parse_maps(&read_to_string(&format!("/proc/{pid}/maps")).map_err(terr("reading maps"))?)
            .map_err(terr("parsing maps"))?;
    let mut busy: Vec<(u64, u64)> = child_maps.iter().map(|m| (m.start, m.end)).collect();
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

    // --- the mappings: open each file once, map everything, close the files
    let mode_of = |v: &Vma| -> u64 {
        (if v.shared && v.prot & libc::PROT_WRITE as u32 != 0 {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        }) as u64
    };
    let mut files: Vec<(&str, u64)> = Vec::new();
    for v in img.vmas.iter().filter(|v| v.kind == VmaKind::File) {
        if !files.contains(&(v.name.as_str(), mode_of(v))) {
            files.push((v.name.as_str(), mode_of(v)));
        }
    }
    let mut calls = Vec::new();
    for &(path, mode) in &files {
        let p = b.cstr(path)?;
        calls.push(call(
            format!("open {path}"),
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, p, mode | libc::O_CLOEXEC as u64],
        ));
    }
    let fds = b.run(&calls)?;
    let mut calls = Vec::new();
    let mut mapped = Vec::new();
    for v in &img.vmas {
        let fixed = libc::MAP_FIXED as u64;
        let (flags, fd, off) = match v.kind {
            VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso | VmaKind::Vsyscall => continue,
            VmaKind::Anon => {
                let mut f = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | fixed;
                if v.growsdown {
                    f |= libc::MAP_GROWSDOWN as u64;
                }
                (f, u64::MAX, 0)
            }
            VmaKind::SharedAnon => (
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64 | fixed,
                u64::MAX,
                0,
            ),
            VmaKind::File => {
                let i = files
                    .iter()
                    .position(|f| *f == (v.name.as_str(), mode_of(v)))
                    .unwrap();
                let f = if v.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64
                    | fixed;
                (f, fds[i], v.offset)
            }
        };
        calls.push(call(
            format!("mmap of {:#x}-{:#x} {}", v.start, v.end, v.name),
            libc::SYS_mmap,
            &[v.start, v.len(), v.prot as u64, flags, fd, off],
        ));
        mapped.push(v.start);
    }
    for fd in &fds {
        calls.push(call("close", libc::SYS_close, &[*fd]));
    }
    let r = b.run(&calls)?;
    for (want, got) in mapped.iter().zip(r) {
        if *want != got {
            return Err(Error::Thaw(format!("mapping {want:#x} landed at {got:#x}")));
        }
    }

    // --- memory contents, streamed
    let mem_t = Instant::now();
    let memf = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(terr("opening /proc/PID/mem"))?;
    let mut wr: Vec<(u64, u64)> = Vec::new();
    let total = read_pages(&mut sr, &mut buf, |runs, data| {
        let mut off = 0usize;
        let mut wr_start = 0usize;
        wr.clear();
        for &(a, l) in runs {
            let i = img.vmas.partition_point(|v| v.start <= a);
            let v = i.checked_sub(1).map(|i| &img.vmas[i]);
            let ok = v.filter(|v| {
                a + l <= v.end
                    && (matches!(v.kind, VmaKind::Anon | VmaKind::SharedAnon)
                        || (v.kind == VmaKind::File && !v.shared))
            });
            let Some(v) = ok else {
                return Err(ImageError::Corrupt(format!(
                    "page data at {a:#x} lies outside the memory map"
                ))
                .into());
            };
            if v.prot & libc::PROT_WRITE as u32 != 0 {
                if wr.is_empty() {
                    wr_start = off;
                }
                if wr_start + wr.iter().map(|x| x.1 as usize).sum::<usize>() != off {
                    write_mem(pid, &data[wr_start..off], &wr)
                        .map_err(terr(format!("writing memory at {:#x}", wr[0].0)))?;
                    wr.clear();
                    wr_start = off;
                }
                wr.push((a, l));
            } else {
                memf.write_all_at(&data[off..off + l as usize], a)
                    .map_err(terr(format!("writing memory at {a:#x}")))?;
            }
            off += l as usize;
        }
        if !wr.is_empty() {
            let len: usize = wr.iter().map(|x| x.1 as usize).sum();
            write_mem(pid, &data[wr_start..wr_start + len], &wr)
                .map_err(terr(format!("writing memory at {:#x}", wr[0].0)))?;
        }
        Ok(())
    })?;
    let memory_time = mem_t.elapsed();

    // cached TID in glibc's struct pthread (clear_child_tid points at it)
    if pid != img.pid && img.clear_child_tid != 0 {
        let mut v = [0u8; 4];
        if memf.read_exact_at(&mut v, img.clear_child_tid).is_ok()
            && i32::from_ne_bytes(v) == img.pid
        {
            memf.write_all_at(&pid.to_ne_bytes(), img.clear_child_tid)
                .map_err(terr("patching the cached TID"))?;
        }
    }

    // --- process attributes
    for &(res, cur, max) in &img.rlimits {
        let l = libc::rlimit64 {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: prlimit64 with a valid pointer.
        if unsafe { libc::prlimit64(pid, res as _, &l, std::ptr::null_mut()) } != 0 {
            // Raising a hard limit needs CAP_SYS_RESOURCE: keep as much as we may.
            let mut now = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as above.
            unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut now) };
            let c = libc::rlimit64 {
                rlim_cur: cur.min(now.rlim_max),
                rlim_max: max.min(now.rlim_max),
            };
            // SAFETY: as above.
            if unsafe { libc::prlimit64(pid, res as _, &c, std::ptr::null_mut()) } != 0 {
                return Err(terr(format!("setting resource limit {res}"))(errno()));
            }
            tracing::warn!(
                pid,
                res,
                cur,
                max,
                "resource limit lowered to {}:{} (no CAP_SYS_RESOURCE)",
                c.rlim_cur,
                c.rlim_max
            );
        }
    }
    let mut calls = Vec::new();
    let mut name = img.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let p = b.data(&name)?;
    calls.push(call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, p, 0, 0, 0],
    ));
    let p = b.cstr(&img.cwd)?;
    calls.push(call(format!("chdir {}", img.cwd), libc::SYS_chdir, &[p]));
    calls.push(call("umask", libc::SYS_umask, &[img.umask as u64]));
    calls.push(call(
        "personality",
        libc::SYS_personality,
        &[img.personality as u64],
    ));
    // signal handlers: the image's, and default for whatever we (and so the child) had set
    let mut acts: Vec<SigAction> = img.sigactions.clone();
    for sig in 1..=64u32 {
        if sig == 9 || sig == 19 || acts.iter().any(|a| a.sig == sig) {
            continue;
        }
        let mut o = [0u64; 4];
        // SAFETY: query only.
        let r =
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, 0usize, o.as_mut_ptr(), 8usize) };
        if r == 0 && o != [0; 4] {
            acts.push(SigAction {
                sig,
                ..Default::default()
            });
        }
    }
    for a in &acts {
        let mut s = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            s.extend_from_slice(&w.to_ne_bytes());
        }
        let p = b.data(&s)?;
        calls.push(call(
            format!("rt_sigaction {}", a.sig),
            libc::SYS_rt_sigaction,
            &[a.sig as u64, p, 0, 8],
        ));
    }
    let mut s = Vec::with_capacity(24);
    s.extend_from_slice(&img.altstack.0.to_ne_bytes());
    s.extend_from_slice(&(img.altstack.1 & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
    s.extend_from_slice(&[0u8; 4]);
    s.extend_from_slice(&img.altstack.2.to_ne_bytes());
    let p = b.data(&s)?;
    calls.push(call("sigaltstack", libc::SYS_sigaltstack, &[p, 0]));
    calls.push(call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[img.clear_child_tid],
    ));
    if img.robust_list.0 != 0 {
        calls.push(call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[img.robust_list.0, img.robust_list.1],
        ));
    }
    let p = b.cstr(&img.exe)?;
    calls.push(call(
        format!("open {}", img.exe),
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            p,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        ],
    ));
    let exe_fd = *b.run(&calls)?.last().unwrap();

    // mm fields, auxv and exe
    let mut calls = Vec::new();
    let auxv = b.data(&img.auxv)?;
    let mut s = Vec::with_capacity(104);
    for w in img.mm.words().into_iter().chain([auxv]) {
        s.extend_from_slice(&w.to_ne_bytes());
    }
    s.extend_from_slice(&(img.auxv.len() as u32).to_ne_bytes());
    s.extend_from_slice(&(exe_fd as u32).to_ne_bytes());
    let p = b.data(&s)?;
    calls.push(call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            p,
            104,
            0,
        ],
    ));
    calls.push(call("close", libc::SYS_close, &[exe_fd]));
    // session and process group
    if img.session_leader {
        calls.push(call("setsid", libc::SYS_setsid, &[]));
    } else if img.pgrp_leader {
        calls.push(call("setpgid", libc::SYS_setpgid, &[0, 0]));
    }
    let present: Vec<i32> = img.fds.iter().map(|f| f.fd).collect();
    for fd in 0..3 {
        if !present.contains(&fd) {
            calls.push(call("close", libc::SYS_close, &[fd as u64]));
        }
    }
    b.run(&calls)?;

    // file descriptors (one by one: each depends on the fd number the last open returned)
    for f in &img.fds {
        let fd = f.fd as u64;
        match &f.kind {
            FdKind::Stdio { cloexec, .. } => {
                if *cloexec {
                    b.sys(
                        "fcntl",
                        libc::SYS_fcntl,
                        &[fd, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64],
                    )?;
                }
            }
            FdKind::SharedWith { fd: o, cloexec } => {
                let fl = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                b.sys(
                    &format!("dup3 to fd {fd}"),
                    libc::SYS_dup3,
                    &[*o as u64, fd, fl],
                )?;
            }
            FdKind::Path {
                path,
                flags,
                pos,
                is_dir,
            } => {
                let fl = *flags
                    & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
                let p = b.cstr(path)?;
                let r = b.sys(
                    &format!("open {path} for fd {fd}"),
                    libc::SYS_openat,
                    &[libc::AT_FDCWD as u64, p, fl as u64],
                )?;
                if r != fd {
                    b.sys(
                        "dup3",
                        libc::SYS_dup3,
                        &[r, fd, (fl & libc::O_CLOEXEC as u32) as u64],
                    )?;
                    b.sys("close", libc::SYS_close, &[r])?;
                }
                let r =
                    b.t.syscall_raw(libc::SYS_lseek, &[fd, *pos, libc::SEEK_SET as u64])
                        .map_err(terr("lseek"))?;
                if r < 0 && !*is_dir && !path.starts_with("/dev/") {
                    return Err(terr(format!("seeking {path} to {pos}"))(
                        crate::error::from_neg(r),
                    ));
                }
            }
        }
    }

    // pending signals (all signals are blocked in the child until the final mask is set),
    // then credentials last: they drop the privileges needed above
    let mut calls = Vec::new();
    for ps in &img.pending {
        let sig = i32::from_ne_bytes(ps.info[..4].try_into().unwrap()) as u64;
        let p = b.data(&ps.info)?;
        calls.push(if ps.shared {
            call(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                &[pid as u64, sig, p],
            )
        } else {
            call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[pid as u64, pid as u64, sig, p],
            )
        });
    }
    if img.no_new_privs {
        calls.push(call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        ));
    }
    let c = &img.creds;
    let mut gs = Vec::new();
    for g in &c.groups {
        gs.extend_from_slice(&g.to_ne_bytes());
    }
    let p = b.data(&gs)?;
    // A periodic timer that has just expired shows value 0 with its signal still pending (the
    // kernel re-arms it when that signal is dequeued): arm it for one interval from now, which
    // is what that re-arming would have done.
    for (which, t) in img.itimers.iter().enumerate() {
        let mut t = *t;
        if t[2] == 0 && t[3] == 0 {
            t[2] = t[0];
            t[3] = t[1];
        }
        if t[2] != 0 || t[3] != 0 {
            let mut v = Vec::with_capacity(32);
            for w in t {
                v.extend_from_slice(&w.to_ne_bytes());
            }
            let p = b.data(&v)?;
            calls.push(call(
                "setitimer",
                libc::SYS_setitimer,
                &[which as u64, p, 0],
            ));
        }
    }
    calls.push(call(
        "setgroups",
        libc::SYS_setgroups,
        &[c.groups.len() as u64, p],
    ));
    calls.push(call(
        "setresgid",
        libc::SYS_setresgid,
        &[c.gid[0] as u64, c.gid[1] as u64, c.gid[2] as u64],
    ));
    calls.push(call(
        "setresuid",
        libc::SYS_setresuid,
        &[c.uid[0] as u64, c.uid[1] as u64, c.uid[2] as u64],
    ));
    calls.push(call(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0],
    ));
    calls.push(call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        &[libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0],
    ));
    if let Some((p, l, s)) = img.rseq {
        calls.push(call("rseq", libc::SYS_rseq, &[p, l as u64, 0, s as u64]));
    }
    b.run(&calls)?;
    // last call: remove the trampoline (we stop at syscall exit, so rip needn't be valid)
    let r =
        b.t.syscall_exit_stop(libc::SYS_munmap, &[tramp, TRAMP])
            .map_err(terr("munmap of the trampoline"))?;
    if r != 0 {
        return Err(terr("munmap of the trampoline")(crate::error::from_neg(r)));
    }

    let regs = regs_from_slice(&img.regs);
    setregs(pid, &regs).map_err(terr("PTRACE_SETREGS"))?;
    set_xstate(pid, &xstate).map_err(|e| {
        Error::Thaw(format!(
            "this CPU cannot take the frozen FPU/vector state ({e}); nodes need the same CPU features"
        ))
    })?;
    set_sigmask(pid, img.sigmask).map_err(terr("PTRACE_SETSIGMASK"))?;
    if img.stopped {
        // it was stopped by job control: it stops again as soon as it is let go
        // SAFETY: signal to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    ptrace(libc::PTRACE_DETACH, pid, 0, 0).map_err(terr("PTRACE_DETACH"))?;
    guard.armed = false;
    Ok(Thawed {
        pid,
        old_pid: img.pid,
        page_bytes: total,
        pid_note,
        elapsed: t0.elapsed(),
        memory_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_with_unknown_features_is_refused_and_sizes_are_fitted() {
        let Some((_, size)) = own_xsave() else { return };
        let mut x = vec![0u8; 832];
        x[512..520].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = fit_xstate(&x).expect_err("bit 62 is no CPU feature");
        assert!(e.to_string().contains("same CPU features"), "{e}");
        x[512..520].copy_from_slice(&3u64.to_le_bytes()); // x87 + SSE
        assert_eq!(fit_xstate(&x).unwrap().len(), size);
        assert!(fit_xstate(&[0u8; 100]).is_err());
    }

    #[test]
    fn find_gap_skips_busy_ranges() {
        let mut busy = vec![(0x2000, 0x5000), (0x1000, 0x1800), (0x6000, 0x7000)];
        assert_eq!(find_gap(&mut busy, 0x800, 0x1000), Some(0x1800));
        assert_eq!(find_gap(&mut busy, 0x1000, 0x1000), Some(0x5000));
        assert_eq!(find_gap(&mut busy, 0x2000, 0x1000), Some(0x7000));
    }
}
