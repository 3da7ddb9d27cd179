//! Freeze: stop a process, write its image to a stream, end it (or let it run on).

use crate::error::{Error, Result};
use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Options of [`freeze`].
#[derive(Debug, Clone, Default)]
pub struct FreezeOptions {
    /// Checkpoint only: the process runs on after its image is written.
    pub leave_running: bool,
}

/// What a freeze did.
#[derive(Debug, Clone)]
pub struct FreezeReport {
    pub pid: i32,
    /// Bytes written to the stream.
    pub image_bytes: u64,
    /// Memory contents shipped.
    pub page_bytes: u64,
    pub vmas: usize,
    /// How long the process was stopped.
    pub frozen: Duration,
    /// Time spent copying memory into the stream.
    pub memory_time: Duration,
}

const CHUNK: usize = 512 << 10;

fn unsup(pid: pid_t, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        pid,
        reason: reason.into(),
    }
}
fn ferr(pid: pid_t, what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Freeze {
        pid,
        what: what.into(),
        source,
    }
}

fn proc_read(pid: pid_t, file: &str) -> Result<String> {
    read_to_string(&format!("/proc/{pid}/{file}")).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoProcess { pid }
        } else {
            ferr(pid, format!("reading /proc/{pid}/{file}"))(e)
        }
    })
}

/// Checks done before the process is touched (and again once it is stopped).
fn check_status(pid: pid_t, seized: bool) -> Result<String> {
    let st = proc_read(pid, "status")?;
    let threads: u32 = status_field(&st, "Threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if threads > 1 {
        return Err(unsup(
            pid,
            format!("it has {threads} threads (threads are not supported yet)"),
        ));
    }
    if let Some(t) = status_field(&st, "TracerPid") {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::gettid() }.to_string();
        if t != "0" && !(seized && t == me) {
            return Err(unsup(
                pid,
                format!("it is already traced by process {t} (a debugger or another omnode)"),
            ));
        }
    }
    if let Some(s) = status_field(&st, "State") {
        if s.starts_with('Z') || s.starts_with('X') {
            return Err(unsup(pid, "it has already exited (zombie)"));
        }
    }
    if status_field(&st, "Seccomp").is_some_and(|v| v != "0") {
        return Err(unsup(
            pid,
            "it runs under a seccomp filter (not supported yet)",
        ));
    }
    let timers = read_to_string(&format!("/proc/{pid}/timers")).unwrap_or_default();
    let n = timers.lines().filter(|l| l.starts_with("ID:")).count();
    if n > 0 {
        return Err(unsup(
            pid,
            format!("it has {n} POSIX timers (timer_create; not supported yet)"),
        ));
    }
    let kids = read_to_string(&format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: Vec<&str> = kids.split_whitespace().collect();
    if !kids.is_empty() {
        return Err(unsup(
            pid,
            format!(
                "it has child processes ({}) (child processes are not supported yet)",
                kids.join(", ")
            ),
        ));
    }
    Ok(st)
}

/// Refuses shared anonymous memory that another process also maps (its contents would fork).
fn check_shared_anon(pid: pid_t, lines: &[crate::procfs::MapsLine]) -> Result<()> {
    let ours: Vec<u64> = lines
        .iter()
        .filter(|m| {
            m.shared && (m.name.starts_with("/dev/zero") || m.name.starts_with("[anon_shmem:"))
        })
        .map(|m| m.ino)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Some(other) = e.file_name().to_str().and_then(|s| s.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == pid {
            continue;
        }
        let Ok(maps) = read_to_string(&format!("/proc/{other}/maps")) else {
            continue;
        };
        let Ok(theirs) = parse_maps(&maps) else {
            continue;
        };
        if let Some(m) = theirs.iter().find(|m| {
            m.shared
                && (m.name.starts_with("/dev/zero") || m.name.starts_with("[anon_shmem:"))
                && ours.contains(&m.ino)
        }) {
            return Err(unsup(
                pid,
                format!(
                    "its shared anonymous memory ({}, inode {}) is also mapped by process {other} (not supported yet)",
                    m.name, m.ino
                ),
            ));
        }
    }
    Ok(())
}

fn classify_vmas(pid: pid_t, maps: &str) -> Result<Vec<Vma>> {
    let lines = parse_maps(maps).map_err(ferr(pid, "parsing maps"))?;
    check_shared_anon(pid, &lines)?;
    let mut v = Vec::with_capacity(lines.len());
    for m in lines {
        let n = m.name.as_str();
        let mut file = None;
        let kind = match n {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" => VmaKind::Vvar,
            "[vvar_vclock]" => VmaKind::VvarVclock,
            "[vsyscall]" => VmaKind::Vsyscall,
            _ if m.shared && (n.starts_with("/dev/zero") || n.starts_with("[anon_shmem:")) => {
                VmaKind::SharedAnon
            }
            "" | "[heap]" | "[stack]" => VmaKind::Anon,
            _ if n.starts_with("[anon:") => VmaKind::Anon,
            _ if n.starts_with("/SYSV") => {
                return Err(unsup(
                    pid,
                    format!("it maps a SysV shared memory segment ({n}) (not supported yet)"),
                ));
            }
            _ if n.starts_with("/memfd:") => {
                return Err(unsup(
                    pid,
                    format!("it maps a memfd ({n}) (not supported yet)"),
                ));
            }
            _ if m.shared && n.starts_with("/dev/shm/") => {
                return Err(unsup(
                    pid,
                    format!("it maps POSIX shared memory {n} (not supported yet)"),
                ));
            }
            _ if n.ends_with(" (deleted)") => {
                return Err(unsup(
                    pid,
                    format!("it maps a deleted file ({n}), which cannot be mapped again"),
                ));
            }
            _ if n.starts_with('/') => {
                let id = stat_id(n).map_err(ferr(pid, format!("stat of mapped file {n}")))?;
                if id.ino != m.ino {
                    return Err(unsup(
                        pid,
                        format!("mapped file {n} was replaced on disk since it was mapped"),
                    ));
                }
                file = Some(id);
                VmaKind::File
            }
            _ => {
                return Err(unsup(
                    pid,
                    format!("it has a special mapping {n} (not supported)"),
                ));
            }
        };
        v.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot,
            shared: m.shared,
            growsdown: n == "[stack]",
            offset: m.offset,
            kind,
            name: m.name,
            file,
        });
    }
    Ok(v)
}

const SAFE_CHARDEVS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

fn collect_fds(pid: pid_t) -> Result<Vec<Fd>> {
    use std::os::unix::fs::FileTypeExt;
    let dir = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&dir).map_err(ferr(pid, format!("listing {dir}")))?;
    let mut fds = Vec::new();
    for e in rd {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        let link = link.to_string_lossy().into_owned();
        let info = read_to_string(&format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let (pos, flags) = fdinfo(&info);
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let stdio_ok = fd <= 2;
        let refuse = |what: &str| unsup(pid, format!("fd {fd} is {what} (not supported yet)"));
        if let Some(k) = link.strip_prefix("anon_inode:") {
            let what = match k.trim_matches(|c| c == '[' || c == ']') {
                "eventpoll" => "an epoll instance".to_string(),
                "eventfd" => "an eventfd".to_string(),
                "timerfd" => "a timerfd".to_string(),
                "signalfd" => "a signalfd".to_string(),
                "inotify" => "an inotify instance".to_string(),
                "pidfd" => "a pidfd".to_string(),
                o => format!("an anonymous-inode file ({o})"),
            };
            return Err(refuse(&what));
        }
        if link.starts_with("socket:") {
            return Err(refuse("a socket"));
        }
        if link.starts_with("pipe:") {
            if stdio_ok {
                fds.push(Fd {
                    fd,
                    kind: FdKind::Stdio {
                        what: "pipe".into(),
                        cloexec,
                    },
                });
                continue;
            }
            return Err(refuse("a pipe"));
        }
        if !link.starts_with('/') {
            return Err(refuse(&link));
        }
        if link.ends_with(" (deleted)") {
            return Err(refuse(&format!("a deleted file ({link})")));
        }
        let md = std::fs::metadata(e.path()).map_err(ferr(pid, format!("stat of fd {fd}")))?;
        let ft = md.file_type();
        let is_tty = ft.is_char_device()
            && (link.starts_with("/dev/pts/")
                || link.starts_with("/dev/tty")
                || link == "/dev/console");
        if is_tty || ft.is_fifo() {
            if stdio_ok {
                fds.push(Fd {
                    fd,
                    kind: FdKind::Stdio {
                        what: if is_tty {
                            format!("terminal {link}")
                        } else {
                            format!("fifo {link}")
                        },
                        cloexec,
                    },
                });
                continue;
            }
            return Err(refuse(&format!(
                "{} {link}",
                if is_tty { "a terminal" } else { "a fifo" }
            )));
        }
        if ft.is_char_device() && !SAFE_CHARDEVS.contains(&link.as_str()) {
            return Err(refuse(&format!("device {link}")));
        }
        if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
            return Err(refuse(&format!("special file {link}")));
        }
        fds.push(Fd {
            fd,
            kind: FdKind::Path {
                path: link,
                flags,
                pos,
                is_dir: ft.is_dir(),
            },
        });
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

/// Marks fds that share an open file description with an earlier one (kcmp).
fn find_shared(pid: pid_t, fds: &mut [Fd]) {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<Option<(u64, u64)>> = fds
        .iter()
        .map(|f| match f.kind {
            FdKind::Path { .. } => std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
                .ok()
                .map(|m| (m.dev(), m.ino())),
            _ => None,
        })
        .collect();
    for j in 0..fds.len() {
        let Some(idj) = ids[j] else { continue };
        for i in 0..j {
            if ids[i] != Some(idj) || matches!(fds[i].kind, FdKind::SharedWith { .. }) {
                continue;
            }
            // SAFETY: kcmp syscall with integer args.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    pid,
                    0, /* KCMP_FILE */
                    fds[i].fd,
                    fds[j].fd,
                )
            };
            if r == 0 {
                let cloexec = match fds[j].kind {
                    FdKind::Path { flags, .. } => flags & libc::O_CLOEXEC as u32 != 0,
                    _ => false,
                };
                fds[j].kind = FdKind::SharedWith {
                    fd: fds[i].fd,
                    cloexec,
                };
                break;
            }
        }
    }
}

/// Holds a seized process; puts everything back and detaches on drop unless it was ended.
struct Seized {
    pid: pid_t,
    orig_regs: Option<libc::user_regs_struct>,
    orig_mask: Option<u64>,
    stashed: Vec<Vec<u8>>,
    active: bool,
}

impl Seized {
    fn release(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if let Some(mut r) = self.orig_regs.take() {
            restart_fixup(&mut r, false);
            let _ = setregs(self.pid, &r);
        }
        if let Some(m) = self.orig_mask.take() {
            let _ = set_sigmask(self.pid, m);
        }
        let _ = ptrace(libc::PTRACE_DETACH, self.pid, 0, 0);
        for info in self.stashed.drain(..) {
            let sig = i32::from_ne_bytes(info[..4].try_into().unwrap());
            // SAFETY: plain kill.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
    fn kill(&mut self) {
        self.active = false;
        // When we are also its parent, a plain wait would reap it and take the exit status away
        // from our caller: only wait for death then (WNOWAIT).
        let st = read_to_string(&format!("/proc/{}/status", self.pid)).unwrap_or_default();
        // SAFETY: getpid has no preconditions.
        let parent = status_field(&st, "PPid").and_then(|v| v.parse::<i32>().ok())
            == Some(unsafe { libc::getpid() });
        // SAFETY: plain kill; we are the tracer, so collect the exit notification.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if parent {
            // SAFETY: waitid with a zeroed siginfo out-parameter.
            unsafe {
                let mut si: libc::siginfo_t = std::mem::zeroed();
                while libc::waitid(
                    libc::P_PID,
                    self.pid as u32,
                    &mut si,
                    libc::WEXITED | libc::WNOWAIT | libc::__WALL,
                ) == -1
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            return;
        }
        loop {
            match wait(self.pid) {
                Ok(st) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => break,
                Ok(_) => {
                    let _ = ptrace(libc::PTRACE_CONT, self.pid, 0, 0);
                }
                Err(_) => break,
            }
        }
    }
}
impl Drop for Seized {
    fn drop(&mut self) {
        self.release()
    }
}

/// Turns "interrupted in syscall X" into "about to execute syscall X".
/// `for_image`: -ERESTART_RESTARTBLOCK re-executes the original call (the restart block does not
/// survive the move); otherwise it becomes restart_syscall like the kernel would do.
pub(crate) fn restart_fixup(r: &mut libc::user_regs_struct, for_image: bool) {
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            -516 => {
                r.rax = if for_image {
                    r.orig_rax
                } else {
                    libc::SYS_restart_syscall as u64
                };
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
}

fn find_gadget(pid: pid_t, vmas: &[Vma]) -> Option<u64> {
    let cands = vmas.iter().filter(|v| v.kind == VmaKind::Vdso).chain(
        vmas.iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind == VmaKind::File),
    );
    for v in cands {
        let len = v.len().min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if read_mem(pid, &mut buf, &[(v.start, len as u64)]).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(v.start + i as u64);
        }
    }
    None
}

/// /proc/PID/limits lists RLIMIT_* 0..15 in order, after one header line.
fn parse_limits(s: &str) -> Vec<(u32, u64, u64)> {
    let val = |v: &str| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().unwrap_or(u64::MAX)
        }
    };
    s.lines()
        .skip(1)
        .enumerate()
        .filter_map(|(i, l)| {
            // the name column is 26 characters wide
            let rest = l.get(26..)?;
            let mut w = rest.split_whitespace();
            Some((i as u32, val(w.next()?), val(w.next()?)))
        })
        .collect()
}

fn sigmask_field(st: &str, key: &str) -> u64 {
    status_field(st, key)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// Freezes process `pid` into `out`. Without `leave_running` the process is killed once the whole
/// image has been written and flushed. On any error the process is left running, untouched.
pub fn freeze<W: Write>(pid: i32, out: W, opts: &FreezeOptions) -> Result<FreezeReport> {
    // SAFETY: getpid has no preconditions.
    if pid <= 1 || pid == unsafe { libc::getpid() } {
        return Err(unsup(pid, "omnode cannot freeze itself or init"));
    }
    // --- checks before touching anything
    check_status(pid, false)?;
    classify_vmas(pid, &proc_read(pid, "maps")?)?;
    collect_fds(pid)?;

    let was_stopped = proc_read(pid, "status")
        .map(|st| status_field(&st, "State").is_some_and(|s| s.starts_with('T')))
        .unwrap_or(false);
    // --- stop it
    if let Err(e) = ptrace(
        libc::PTRACE_SEIZE,
        pid,
        0,
        libc::PTRACE_O_TRACESYSGOOD as usize,
    ) {
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoProcess { pid },
            Some(libc::EPERM) => unsup(
                pid,
                "not permitted to trace it (already traced, or not root?)",
            ),
            _ => ferr(pid, "PTRACE_SEIZE")(e),
        });
    }
    let stop_start = Instant::now();
    let mut g = Seized {
        pid,
        orig_regs: None,
        orig_mask: None,
        stashed: Vec::new(),
        active: true,
    };
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).map_err(ferr(pid, "PTRACE_INTERRUPT"))?;
    loop {
        let st = wait(pid).map_err(ferr(pid, "waiting for the process to stop"))?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            g.active = false;
            return Err(Error::NoProcess { pid });
        }
        if libc::WIFSTOPPED(st) {
            if st >> 16 == libc::PTRACE_EVENT_STOP {
                break;
            }
            let mut info = vec![0u8; 128];
            ptrace(libc::PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr() as usize)
                .map_err(ferr(pid, "PTRACE_GETSIGINFO"))?;
            g.stashed.push(info);
            ptrace(libc::PTRACE_CONT, pid, 0, 0).map_err(ferr(pid, "PTRACE_CONT"))?;
        }
    }

    // --- authoritative checks, now that it cannot change
    let status = check_status(pid, true)?;
    let maps = proc_read(pid, "maps")?;
    let vmas = classify_vmas(pid, &maps)?;
    let mut fds = collect_fds(pid)?;
    find_shared(pid, &mut fds);

    let regs = getregs(pid).map_err(ferr(pid, "PTRACE_GETREGS"))?;
    let xstate = get_xstate(pid).map_err(ferr(pid, "reading the xsave area"))?;
    let sigmask = get_sigmask(pid).map_err(ferr(pid, "PTRACE_GETSIGMASK"))?;
    let rseq = get_rseq(pid).map_err(ferr(pid, "PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let mut pending = Vec::new();
    for shared in [false, true] {
        for info in peek_siginfo(pid, shared).map_err(ferr(pid, "PTRACE_PEEKSIGINFO"))? {
            pending.push(PendingSignal { shared, info });
        }
    }

    let stat = stat_fields(&proc_read(pid, "stat")?).map_err(ferr(pid, "parsing stat"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(ferr(pid, "reading its executable"))?
        .to_string_lossy()
        .into_owned();
    if exe.ends_with(" (deleted)") {
        return Err(unsup(pid, format!("its executable was deleted ({exe})")));
    }
    let exe_id = stat_id(&exe).map_err(ferr(pid, format!("stat of {exe}")))?;
    let exe_now =
        stat_id(&format!("/proc/{pid}/exe")).map_err(ferr(pid, "stat of its executable"))?;
    if exe_now.ino != exe_id.ino || exe_now.dev != exe_id.dev {
        return Err(unsup(
            pid,
            format!("its executable {exe} was replaced on disk"),
        ));
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(ferr(pid, "reading its cwd"))?
        .to_string_lossy()
        .into_owned();
    if cwd.ends_with(" (deleted)") {
        return Err(unsup(
            pid,
            format!("its working directory was deleted ({cwd})"),
        ));
    }
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(ferr(pid, "reading auxv"))?;
    let personality = u32::from_str_radix(proc_read(pid, "personality")?.trim(), 16).unwrap_or(0);
    let comm = proc_read(pid, "comm")?.trim_end_matches('\n').to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let boot_id = read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let ids = |k: &str| -> [u32; 4] {
        let mut a = [0u32; 4];
        for (i, v) in status_field(&status, k)
            .unwrap_or("")
            .split_whitespace()
            .take(4)
            .enumerate()
        {
            a[i] = v.parse().unwrap_or(0);
        }
        a
    };
    let creds = Creds {
        uid: ids("Uid"),
        gid: ids("Gid"),
        groups: status_field(&status, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    };
    let umask = status_field(&status, "Umask")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0o022);
    let no_new_privs = status_field(&status, "NoNewPrivs").is_some_and(|v| v != "0");
    // /proc/PID/limits rather than prlimit(): that needs CAP_SYS_RESOURCE for other users' processes
    let rlimits = parse_limits(&proc_read(pid, "limits")?);
    let mut robust = (0u64, 0u64);
    // SAFETY: get_robust_list writes two words.
    unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &mut robust.0, &mut robust.1) };

    // --- injected queries
    let gadget = find_gadget(pid, &vmas)
        .ok_or_else(|| unsup(pid, "no syscall instruction found in its code"))?;
    g.orig_regs = Some(regs);
    g.orig_mask = Some(sigmask);
    set_sigmask(pid, !0u64).map_err(ferr(pid, "PTRACE_SETSIGMASK"))?;
    let mut t = Tracee {
        pid,
        gadget,
        base: regs,
        stashed: Vec::new(),
        int3: false,
    };
    let inj = |e: io::Error| ferr(pid, "injected system call")(e);
    let prw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    // scratch area: [0, 2048) sigactions, 2048 sigaltstack, 2080 tid address, 2304 results,
    // 4096.. code of the batch
    const SCRATCH: u64 = 16384;
    let scratch = t
        .syscall(
            libc::SYS_mmap,
            &[
                0,
                SCRATCH,
                prw | libc::PROT_EXEC as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(inj)?;
    let res: Result<_> = (|| {
        let want = sigmask_field(&status, "SigCgt") | sigmask_field(&status, "SigIgn");
        let sigs: Vec<u32> = (1..=64u32)
            .filter(|&sig| want & (1u64 << (sig - 1)) != 0 && sig != 9 && sig != 19)
            .collect();
        let mut calls = vec![
            (libc::SYS_brk, [0; 6]),
            (libc::SYS_sigaltstack, [0, scratch + 2048, 0, 0, 0, 0]),
            (
                libc::SYS_prctl,
                [libc::PR_GET_TID_ADDRESS as u64, scratch + 2080, 0, 0, 0, 0],
            ),
        ];
        for which in 0..3u64 {
            calls.push((
                libc::SYS_getitimer,
                [which, scratch + 2560 + 32 * which, 0, 0, 0, 0],
            ));
        }
        for &sig in &sigs {
            calls.push((
                libc::SYS_rt_sigaction,
                [sig as u64, 0, scratch + 32 * (sig as u64 - 1), 8, 0, 0],
            ));
        }
        // all of it in one ptrace stop
        let r = t
            .batch(scratch + 4096, scratch + 2304, &calls)
            .map_err(inj)?;
        if let Some(e) = r[1..].iter().find(|&&v| (-4095..0).contains(&v)) {
            return Err(inj(crate::error::from_neg(*e)));
        }
        let mut b = vec![0u8; 2656];
        read_mem(pid, &mut b, &[(scratch, 2656)]).map_err(ferr(pid, "reading injected results"))?;
        let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let acts = sigs
            .iter()
            .map(|&sig| {
                let o = 32 * (sig as usize - 1);
                SigAction {
                    sig,
                    handler: w(o),
                    flags: w(o + 8),
                    restorer: w(o + 16),
                    mask: w(o + 24),
                }
            })
            .collect::<Vec<_>>();
        let alt = (
            w(2048),
            u32::from_ne_bytes(b[2056..2060].try_into().unwrap()),
            w(2064),
        );
        let mut itimers = [[0u64; 4]; 3];
        for (k, t) in itimers.iter_mut().enumerate() {
            for (j, v) in t.iter_mut().enumerate() {
                *v = w(2560 + 32 * k + 8 * j);
            }
        }
        Ok((r[0] as u64, acts, alt, w(2080), itimers))
    })();
    let unmap = t
        .syscall_exit_stop(libc::SYS_munmap, &[scratch, SCRATCH])
        .map_err(inj)
        .and_then(|r| {
            if r == 0 {
                Ok(())
            } else {
                Err(inj(crate::error::from_neg(r)))
            }
        });
    let (brk, sigactions, altstack, ctid, itimers) = res?;
    unmap?;
    g.stashed.append(&mut t.stashed);
    // Put registers and mask back now, not after the (possibly long) memory copy: should omnode
    // die from here on, the kernel detaches and the process simply runs on.
    let mut back = regs;
    restart_fixup(&mut back, false);
    setregs(pid, &back).map_err(ferr(pid, "PTRACE_SETREGS"))?;
    g.orig_regs = None;
    set_sigmask(pid, sigmask).map_err(ferr(pid, "PTRACE_SETSIGMASK"))?;
    g.orig_mask = None;

    let mut img_regs = regs;
    restart_fixup(&mut img_regs, true);
    let f = |n| field_u64(&stat, n);
    let pgrp = f(5) as i32;
    let sid = f(6) as i32;
    for info in &g.stashed {
        pending.push(PendingSignal {
            shared: false,
            info: info.clone(),
        });
    }
    let img = ProcessImage {
        pid,
        boot_id,
        comm,
        cmdline,
        exe,
        exe_id,
        regs: regs_to_vec(&img_regs),
        xstate,
        sigmask,
        rseq,
        mm: MmFields {
            start_code: f(26),
            end_code: f(27),
            start_data: f(45),
            end_data: f(46),
            start_brk: f(47),
            brk,
            start_stack: f(28),
            arg_start: f(48),
            arg_end: f(49),
            env_start: f(50),
            env_end: f(51),
        },
        auxv,
        personality,
        rlimits,
        umask,
        cwd,
        creds,
        no_new_privs,
        session_leader: sid == pid,
        pgrp_leader: pgrp == pid,
        stopped: was_stopped,
        sigactions,
        altstack,
        pending,
        clear_child_tid: ctid,
        robust_list: robust,
        itimers,
        vmas,
        fds,
    };

    // --- stream it
    let mem_start = Instant::now();
    let sio = |e: io::Error| Error::Stream(e);
    let mut sw = SectionWriter::new(io::BufWriter::with_capacity(1 << 16, out)).map_err(sio)?;
    sw.section(TAG_PROCESS, &[&img.encode()]).map_err(sio)?;
    let (page_bytes, sections) = dump_pages(pid, &img.vmas, &mut sw)?;
    let mut end = [0u8; 16];
    end[..8].copy_from_slice(&page_bytes.to_le_bytes());
    end[8..].copy_from_slice(&sections.to_le_bytes());
    sw.section(TAG_END, &[&end]).map_err(sio)?;
    sw.w.flush().map_err(sio)?;
    let memory_time = mem_start.elapsed();

    if opts.leave_running {
        g.release();
    } else {
        g.kill();
    }
    let frozen = stop_start.elapsed();
    Ok(FreezeReport {
        pid,
        image_bytes: sw.bytes,
        page_bytes,
        vmas: img.vmas.len(),
        frozen,
        memory_time,
    })
}

struct Dumper<'a, W: Write> {
    pid: pid_t,
    sw: &'a mut SectionWriter<W>,
    runs: Vec<(u64, u64)>,
    data: Vec<u8>,
    used: usize,
    via_mem: bool,
    mem: Option<File>,
    total: u64,
    sections: u64,
}

impl<W: Write> Dumper<'_, W> {
    fn add(&mut self, mut a: u64, mut l: u64, readable: bool) -> Result<()> {
        if !self.runs.is_empty() && self.via_mem == readable {
            self.flush()?;
        }
        self.via_mem = !readable;
        while l > 0 {
            let take = l.min((CHUNK - self.used) as u64);
            // never merge with an earlier run: it may belong to the neighbouring mapping
            self.runs.push((a, take));
            self.used += take as usize;
            a += take;
            l -= take;
            if self.used == CHUNK || self.runs.len() == 1024 {
                self.flush()?;
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let pid = self.pid;
        let buf = &mut self.data[..self.used];
        if self.via_mem {
            if self.mem.is_none() {
                self.mem = Some(
                    File::open(format!("/proc/{pid}/mem"))
                        .map_err(ferr(pid, "opening /proc/PID/mem"))?,
                );
            }
            let m = self.mem.as_ref().unwrap();
            let mut off = 0usize;
            for &(a, l) in &self.runs {
                m.read_exact_at(&mut buf[off..off + l as usize], a)
                    .map_err(ferr(pid, format!("reading memory at {a:#x}")))?;
                off += l as usize;
            }
        } else {
            read_mem(pid, buf, &self.runs).map_err(ferr(
                pid,
                format!("reading memory at {:#x}", self.runs[0].0),
            ))?;
        }
        let mut hdr = Vec::with_capacity(4 + self.runs.len() * 16);
        hdr.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for &(a, l) in &self.runs {
            hdr.extend_from_slice(&a.to_le_bytes());
            hdr.extend_from_slice(&l.to_le_bytes());
        }
        self.sw
            .section(TAG_PAGES, &[&hdr, buf])
            .map_err(Error::Stream)?;
        self.total += self.used as u64;
        self.sections += 1;
        self.runs.clear();
        self.used = 0;
        Ok(())
    }
}

fn dump_pages<W: Write>(pid: pid_t, vmas: &[Vma], sw: &mut SectionWriter<W>) -> Result<(u64, u64)> {
    let pagemap =
        File::open(format!("/proc/{pid}/pagemap")).map_err(ferr(pid, "opening pagemap"))?;
    let mut d = Dumper {
        pid,
        sw,
        runs: Vec::new(),
        data: vec![0u8; CHUNK],
        used: 0,
        via_mem: false,
        mem: None,
        total: 0,
        sections: 0,
    };
    let mut pm: Vec<u8> = Vec::new();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        match v.kind {
            VmaKind::SharedAnon => {
                d.add(v.start, v.len(), readable)?;
                continue;
            }
            VmaKind::Anon => {}
            VmaKind::File if !v.shared => {}
            _ => continue,
        }
        let n = (v.len() / PAGE) as usize;
        // pagemap in slices of 64Ki pages (256 MiB of address space)
        let mut i0 = 0usize;
        while i0 < n {
            let m = (n - i0).min(65536);
            pm.resize(m * 8, 0);
            let off = (v.start / PAGE + i0 as u64) * 8;
            pagemap
                .read_exact_at(&mut pm, off)
                .map_err(ferr(pid, format!("reading pagemap at {:#x}", v.start)))?;
            let mut run: Option<(u64, u64)> = None;
            for k in 0..m {
                let e = u64::from_ne_bytes(pm[k * 8..k * 8 + 8].try_into().unwrap());
                let present = e >> 63 & 1 == 1;
                let swapped = e >> 62 & 1 == 1;
                let filepg = e >> 61 & 1 == 1;
                let want = match v.kind {
                    VmaKind::File => (present && !filepg) || swapped,
                    _ => present || swapped,
                };
                let addr = v.start + (i0 + k) as u64 * PAGE;
                match (&mut run, want) {
                    (Some(r), true) => r.1 += PAGE,
                    (None, true) => run = Some((addr, PAGE)),
                    (Some(r), false) => {
                        let (a, l) = *r;
                        d.add(a, l, readable)?;
                        run = None;
                    }
                    (None, false) => {}
                }
            }
            if let Some((a, l)) = run {
                d.add(a, l, readable)?;
            }
            i0 += m;
        }
    }
    d.flush()?;
    Ok((d.total, d.sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_resource_order() {
        let s = std::fs::read_to_string("/proc/self/limits").unwrap();
        let l = parse_limits(&s);
        assert_eq!(l.len(), 16);
        let mut want = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut want) };
        assert_eq!(l[7], (7, want.rlim_cur, want.rlim_max));
    }

    #[test]
    fn restart_fixup_reexecutes_interrupted_calls() {
        // SAFETY: plain struct.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.orig_rax = 35;
        r.rax = (-516i64) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, true);
        assert_eq!((r.rax, r.rip, r.orig_rax), (35, 0x1000, u64::MAX));
        r.orig_rax = 230;
        r.rax = (-516i64) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, false);
        assert_eq!(r.rax, libc::SYS_restart_syscall as u64);
        r.orig_rax = 0;
        r.rax = (-4i64) as u64; // EINTR stays
        r.rip = 0x1002;
        restart_fixup(&mut r, true);
        assert_eq!((r.rax, r.rip), ((-4i64) as u64, 0x1002));
    }
}
