//! `omnode freeze | thaw | image`: front end of the `migrate` checkpoint/restore engine.
//! These commands need no running daemon.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Stop a running process, write its image to a file (mode 0600), and end it.
    ///
    /// Carried: registers and FPU/vector state, memory (private, shared-anonymous owned by
    /// the process alone, read-only and PROT_NONE mappings included) with each mapping's
    /// protections, grows-down flag, madvise state (DONTDUMP, DONTFORK, WIPEONFORK, HUGEPAGE,
    /// NOHUGEPAGE, MERGEABLE, SEQUENTIAL, RANDOM), mlock/MLOCK_ONFAULT, MAP_NORESERVE and the
    /// maximum protection of shared file mappings; regular files, directories, O_PATH fds and
    /// /dev/null-like devices at their offsets and flags; stdio terminals and pipes (attached
    /// to thaw's); the terminal's settings (termios, set again on thaw's terminal), further
    /// fds of that terminal (/dev/tty opened by less, vi, top: opened again on thaw's), and a
    /// session leader's controlling terminal (thaw sends the program SIGWINCH, so that a
    /// full-screen program redraws at the new terminal's size); signal handlers, mask, pending
    /// signals, alternate stack; interval timers; POSIX timers (timer_create: the same ids,
    /// clocks, signals and values, aimed at the same threads, with the time left and the
    /// interval; vim's timer thread);
    /// limits, umask, cwd, credentials, no_new_privs, personality, THP disable, child
    /// subreaper, oom_score_adj; rseq, robust list, session and process-group leadership.
    /// Threads: every thread's registers (fs/gs base), FPU state, signal mask and pending
    /// signals, rseq, robust list, clear_child_tid, sigaltstack and name; a thread blocked in
    /// a system call (futex wait, sleep, read) makes that call again. Threads get their old
    /// TIDs back when those are free (thaw as root), also under a new PID: glibc keeps the TID
    /// of its timer thread, which a SIGEV_THREAD timer_create after the thaw needs.
    /// Files inside the process: a pipe whose both ends it holds and no other process does
    /// (with the bytes waiting in it and its size), a connected AF_UNIX stream socketpair whose
    /// both ends it holds (up to 64 KiB waiting on each end), eventfds (counter), epoll
    /// instances (their registrations; an edge-triggered event already reported may be
    /// reported once more), timerfds (time left, interval, unread expirations), signalfds, memfds (contents, seals)
    /// and deleted files (contents, up to 64 MiB each; made again under the same name and
    /// deleted at once); inotify instances (each watch added again under its descriptor, for
    /// the same file found again by its file handle; thaw refuses a path that names another
    /// file now); file locks (flock, fcntl and OFD locks, taken again on the same fds before
    /// the program runs; a thaw whose lock another process holds now fails, the image stays).
    ///
    /// Refused before the process is touched (it keeps running unchanged), because thaw could
    /// not restore it exactly: threads whose credentials differ from the main thread's, child
    /// processes (take them with --tree), other sockets, terminals other than the one of its stdio, a pipe or FIFO shared with another
    /// process with unread data in it, an epoll instance watching a closed fd or another epoll,
    /// a timerfd with TFD_TIMER_CANCEL_ON_SET, pidfds, an inotify instance with events not
    /// read yet or a removed watch (its descriptors must be 1 to n) or watching a file that
    /// has no name, a POSIX timer on a CPU-time clock, leases, SysV and POSIX
    /// shared memory, mapped memfds or deleted files, shared memory also mapped by another
    /// process, userfaultfd, sealed or device mappings, seccomp filters, a parent-death
    /// signal, a process already traced. Every check fails closed: what cannot be read is
    /// refused. `omnode migrate` (moving to another node) still refuses threads, POSIX timers,
    /// inotify and file locks.
    /// A pipe or FIFO above fd 2 whose other end lies outside the process (one a shell leaked)
    /// is carried as external: `thaw --fd N=FILE|N=null` says what it gets.
    /// A non-root user's freeze goes through the daemon (only root can thaw): it freezes the
    /// user's own dumpable processes that the user could thaw, and ends one only after this
    /// command has synced the image; --leave-running checkpoints without the daemon.
    ///
    /// With --tree, the process and all its descendants go into one tree image (root only):
    /// parent links, process groups, zombies (the exit status their parent's wait() will
    /// get), pipes between the processes with the bytes waiting in them, files they share
    /// with one offset, and the stdio and outside pipes they inherited from the process
    /// itself. Refused, with every process left running as it was: a descendant in another
    /// session or in a process group led from outside the tree, a zombie killed by a signal,
    /// shared memory between them, anything else several of them share (directories,
    /// eventfds, sockets, terminals above fd 2), an outside fd a descendant holds that the
    /// process itself does not, and whatever a single freeze refuses of any one of them.
    /// All or nothing: every process is stopped and checked before any is ended.
    Freeze(FreezeArgs),
    /// Recreate a frozen process from its image as a new process, report its PID (on stderr,
    /// or alone on stdout with --print-pid) and return.
    ///
    /// Mapped files and the executable must be the same as at freeze (size and mtime, and
    /// inode on the same machine), or the thaw is refused. A stdin/stdout/stderr that was a
    /// terminal or pipe is attached to this command's own, unless a file is named for it.
    Thaw(ThawArgs),
    /// Show what an image holds (command, memory map, fds, sizes) and verify its checksums.
    Image(ImageArgs),
}

#[derive(clap::Args, Debug)]
pub struct FreezeArgs {
    /// PID of the process to freeze.
    pub pid: i32,
    /// File to write the image to (created or truncated).
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Checkpoint only: let the process run on after its image is written.
    #[arg(long)]
    pub leave_running: bool,
    /// Take the process with all its descendants (a tree image; `thaw` rebuilds the tree,
    /// every descendant with its old PID). Root only.
    #[arg(long)]
    pub tree: bool,
    /// The daemon a non-root user's freeze goes through (only root can thaw, so only the
    /// daemon may end a user's process; it checks that the user could thaw it).
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct ThawArgs {
    /// Image file written by `omnode freeze`.
    pub image: PathBuf,
    /// Stay until the thawed process exits and return its exit status (128+N if killed by signal N).
    /// Run from a shell on a terminal, the thawed process gets the terminal's foreground (when it
    /// led its own process group; a frozen session leader gets a new session, and the terminal as
    /// its controlling terminal when thaw leads the terminal's session, e.g. `exec omnode thaw`):
    /// Ctrl-C and Ctrl-Z reach the program, and when it stops, thaw stops too (`fg` continues both).
    #[arg(long)]
    pub wait: bool,
    /// Keep the original PID if it is free (waits up to 5 s for it to be reaped); else a new PID.
    #[arg(long)]
    pub same_pid: bool,
    /// Where a terminal/pipe stdin of the frozen process now reads from (default: this command's stdin).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// Where a terminal/pipe stdout now goes (file is created or appended; default: this command's stdout).
    #[arg(long, value_name = "FILE")]
    pub stdout: Option<PathBuf>,
    /// Where a terminal/pipe stderr now goes (file is created or appended; default: this command's stderr).
    #[arg(long, value_name = "FILE")]
    pub stderr: Option<PathBuf>,
    /// Print the new PID alone on stdout (for scripts). Refused when the thawed program's own
    /// stdout would be this command's stdout (name a file with --stdout): the PID never goes
    /// into the program's output. Without it the PID is reported on stderr.
    #[arg(long)]
    pub print_pid: bool,
    /// What an fd whose other end lay outside the process (an inherited pipe or FIFO) gets
    /// now: `N=FILE` (opened for reading, or created/appended for writing, as that end was)
    /// or `N=null`. Thaw names the fds that need one.
    #[arg(long = "fd", value_name = "N=FILE|N=null")]
    pub fds: Vec<String>,
    /// The daemon a non-root user's thaw goes through (it thaws only the user's own images,
    /// as the user; --wait then waits for the exit status without job control).
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Image file to describe.
    pub image: PathBuf,
}

#[path = "ckpt_tty.rs"]
mod tty;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("omnode: {msg}");
    ExitCode::FAILURE
}

pub fn run(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::Freeze(a) => freeze(a),
        Cmd::Thaw(a) => thaw(a),
        Cmd::Image(a) => image(a),
    }
}

fn freeze(a: FreezeArgs) -> ExitCode {
    let path = a.image.display().to_string();
    // 0600: an image holds the process's whole memory (its secrets); a file that existed is
    // made 0600 too before anything is written into it
    let f = match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&a.image)
        .and_then(|f| {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Ok(f)
        }) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot create image file {path}: {e}")),
    };
    if a.tree {
        return freeze_tree(&a, f, &path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && !a.leave_running {
        let mut f = f;
        return match crate::ckpt_daemon::freeze(&a.socket.socket, a.pid, false, &mut f) {
            Ok(crate::ckpt_daemon::Reply::Froze {
                pid,
                ended: true,
                image_bytes,
                page_bytes,
                frozen_ms,
            }) => {
                eprintln!(
                    "omnode: froze {pid} into {path} (through the daemon): {:.1} MiB image, {:.1} MiB memory, stopped for {frozen_ms:.1} ms",
                    image_bytes as f64 / 1048576.0,
                    page_bytes as f64 / 1048576.0,
                );
                ExitCode::SUCCESS
            }
            r => {
                drop(f);
                let _ = std::fs::remove_file(&a.image);
                match r {
                    Ok(crate::ckpt_daemon::Reply::Error(e)) | Err(e) => fail(e),
                    Ok(o) => fail(format_args!(
                        "the daemon did not end process {} ({o:?}); it runs on",
                        a.pid
                    )),
                }
            }
        };
    }
    let opts = migrate::FreezeOptions {
        leave_running: a.leave_running,
    };
    let r = migrate::freeze(a.pid, &f, &opts);
    image_written(&a, f, &path, r, |r| {
        format!(
            "omnode: froze {} into {path}: {:.1} MiB image, {:.1} MiB memory, stopped for {:.1} ms{}",
            r.pid,
            r.image_bytes as f64 / 1048576.0,
            r.page_bytes as f64 / 1048576.0,
            r.frozen.as_secs_f64() * 1e3,
            still_running(&a)
        )
    })
}

/// " (still running)" after a freeze with --leave-running.
fn still_running(a: &FreezeArgs) -> &'static str {
    if a.leave_running {
        " (still running)"
    } else {
        ""
    }
}

/// The end of a freeze into `f` (the image at `path`): synced and reported with `say`, or,
/// on an error, the image file removed and the error reported.
fn image_written<R>(
    a: &FreezeArgs,
    f: File,
    path: &str,
    r: migrate::Result<R>,
    say: impl FnOnce(&R) -> String,
) -> ExitCode {
    match r {
        Ok(r) => {
            if let Err(e) = f.sync_data() {
                return fail(format_args!("image {path} may be incomplete: {e}"));
            }
            eprintln!("{}", say(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(&a.image);
            fail(e)
        }
    }
}

fn freeze_tree(a: &FreezeArgs, f: File, path: &str) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        drop(f);
        let _ = std::fs::remove_file(&a.image);
        return fail(
            "freeze --tree needs root (thawing a tree makes processes with chosen PIDs); nothing was changed",
        );
    }
    let opts = migrate::FreezeOptions {
        leave_running: a.leave_running,
    };
    let r = migrate::freeze_tree(a.pid, std::io::BufWriter::with_capacity(1 << 20, &f), &opts);
    image_written(a, f, path, r, |r| {
        format!(
            "omnode: froze the tree of {} ({} processes: {}{}) into {path}: {:.1} MiB image, {:.1} MiB memory, stopped for {:.1} ms{}",
            r.root,
            r.pids.len(),
            r.pids
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            if r.zombies > 0 {
                format!(", {} of them zombies", r.zombies)
            } else {
                String::new()
            },
            r.image_bytes as f64 / 1048576.0,
            r.page_bytes as f64 / 1048576.0,
            r.frozen.as_secs_f64() * 1e3,
            still_running(a)
        )
    })
}

/// `thaw` of a tree image (see `freeze --tree`): the root gets thaw's stdio (or the files
/// named) and the --fd names; every descendant its old PID.
fn thaw_tree(a: &ThawArgs, input: BufReader<File>, path: &str) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return fail(format_args!("{path}: thawing a tree needs root"));
    }
    if a.print_pid && a.stdout.is_none() {
        return fail(format_args!(
            "{path}: --print-pid would write the PID into the thawed tree's stdout; name a file for it with --stdout FILE"
        ));
    }
    let mut keep: Vec<File> = Vec::new();
    let mut std3 = [None, None, None];
    for (i, p) in [&a.stdin, &a.stdout, &a.stderr].into_iter().enumerate() {
        if let Some(p) = p {
            let f = if i == 0 {
                File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))
            } else {
                open_out(p)
            };
            match f {
                Ok(f) => {
                    std3[i] = Some(f.as_raw_fd());
                    keep.push(f);
                }
                Err(e) => return fail(e),
            }
        }
    }
    let mut named = Vec::new();
    for spec in &a.fds {
        let Some((n, target)) = spec.split_once('=') else {
            return fail(format_args!("--fd {spec}: expected N=FILE or N=null"));
        };
        let Ok(n) = n.parse::<i32>() else {
            return fail(format_args!("--fd {spec}: {n} is not an fd number"));
        };
        let p = if target == "null" {
            "/dev/null"
        } else {
            target
        };
        match std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(target != "null")
            .open(p)
            .or_else(|_| File::open(p))
        {
            Ok(f) => {
                named.push((n, f.as_raw_fd()));
                keep.push(f);
            }
            Err(e) => return fail(format_args!("--fd {spec}: cannot open {p}: {e}")),
        }
    }
    let opts = migrate::ThawOptions {
        same_pid: a.same_pid,
        stdin: std3[0],
        stdout: std3[1],
        stderr: std3[2],
        fd_placeholders: named,
        ..Default::default()
    };
    let t = match migrate::thaw_tree(input, &opts) {
        Ok(t) => t,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    if let Some(n) = &t.root.pid_note {
        eprintln!("omnode: {n}");
    }
    if a.print_pid {
        println!("{}", t.root.pid);
        let _ = std::io::stdout().flush();
    } else {
        eprintln!(
            "omnode: thawed the tree of {} as PID {} ({} processes{})",
            t.root.old_pid,
            t.root.pid,
            t.pids.len() + t.zombies,
            if t.zombies > 0 {
                format!(", {} of them zombies", t.zombies)
            } else {
                String::new()
            }
        );
    }
    if !a.wait {
        return ExitCode::SUCCESS;
    }
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc_waitpid(t.root.pid, &mut st) };
        if r == t.root.pid && st & 0xff != 0x7f {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return fail(format_args!("lost track of process {}", t.root.pid));
        }
    }
    let code = if st & 0x7f == 0 {
        (st >> 8) & 0xff
    } else {
        128 + (st & 0x7f)
    };
    ExitCode::from(code as u8)
}

fn open_out(p: &PathBuf) -> Result<File, String> {
    File::options()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| format!("cannot open {}: {e}", p.display()))
}

fn thaw(a: ThawArgs) -> ExitCode {
    let path = a.image.display().to_string();
    let f = match File::open(&a.image) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot open image {path}: {e}")),
    };
    let stdin = match a
        .stdin
        .as_ref()
        .map(|p| File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display())))
    {
        Some(Err(e)) => return fail(e),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let stdout = match a.stdout.as_ref().map(open_out) {
        Some(Err(e)) => return fail(e),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let stderr = match a.stderr.as_ref().map(open_out) {
        Some(Err(e)) => return fail(e),
        Some(Ok(f)) => Some(f),
        None => None,
    };
    let mut input = BufReader::with_capacity(64 << 10, f);
    match std::io::BufRead::fill_buf(&mut input) {
        Ok(head) if migrate::image::is_tree_image(head) => return thaw_tree(&a, input, &path),
        Ok(_) => {}
        Err(e) => return fail(format_args!("cannot read image {path}: {e}")),
    }
    let reader = match migrate::ImageReader::new(input) {
        Ok(r) => r,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    // --fd N=FILE / N=null for the fds that lay outside the process
    let mut named: Vec<(i32, File)> = Vec::new();
    for spec in &a.fds {
        let Some((n, target)) = spec.split_once('=') else {
            return fail(format_args!("--fd {spec}: expected N=FILE or N=null"));
        };
        let Ok(n) = n.parse::<i32>() else {
            return fail(format_args!("--fd {spec}: {n} is not an fd number"));
        };
        let Some(flags) = reader.process().fds.iter().find_map(|f| match &f.kind {
            migrate::FdKind::External { flags, .. } if f.fd == n => Some(*flags),
            _ => None,
        }) else {
            return fail(format_args!(
                "--fd {spec}: fd {n} of the image is not one that lay outside the process"
            ));
        };
        let path = if target == "null" {
            "/dev/null"
        } else {
            target
        };
        let mut o = std::fs::OpenOptions::new();
        match flags & libc_o_accmode() {
            0 => o.read(true),
            1 => o.append(true).create(true),
            _ => o.read(true).append(true).create(true),
        };
        match o.open(path) {
            Ok(f) => named.push((n, f)),
            Err(e) => return fail(format_args!("--fd {spec}: cannot open {path}: {e}")),
        }
    }
    let opts = migrate::ThawOptions {
        fd_placeholders: named.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect(),
        same_pid: a.same_pid,
        same_pid_wait: None,
        stdin: stdin.as_ref().map(|f| f.as_raw_fd()),
        stdout: stdout.as_ref().map(|f| f.as_raw_fd()),
        stderr: stderr.as_ref().map(|f| f.as_raw_fd()),
        ..Default::default()
    };
    let stdout_is_ours = reader
        .process()
        .fds
        .iter()
        .any(|f| f.fd == 1 && matches!(f.kind, migrate::FdKind::Stdio { .. }))
        && a.stdout.is_none();
    if a.print_pid && stdout_is_ours {
        return fail(format_args!(
            "{path}: --print-pid would write the PID into the thawed program's own stdout (it is this command's stdout); name a file for it with --stdout FILE"
        ));
    }
    // job control only when thaw waits in the foreground of a terminal (a shell's foreground job)
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let unnamed: Vec<String> = reader
            .process()
            .fds
            .iter()
            .filter(|f| {
                matches!(f.kind, migrate::FdKind::External { .. })
                    && !named.iter().any(|n| n.0 == f.fd)
            })
            .map(|f| f.fd.to_string())
            .collect();
        if !unnamed.is_empty() {
            return fail(format_args!(
                "{path}: fds {} lay outside the process; name what each gets (--fd N=FILE or --fd N=null)",
                unnamed.join(", ")
            ));
        }
        drop(reader);
        return thaw_through_daemon(&a, &opts, &named);
    }
    // a session leader that had its terminal as controlling terminal takes thaw's, when thaw
    // leads that terminal's session; then thaw does no job control (it has no terminal left)
    let p = reader.process();
    let released = p.session_leader
        && p.terminal.as_ref().is_some_and(|t| t.ctty)
        && a.stdin.is_none()
        && tty::release_for_session_leader();
    let term = if a.wait && !released {
        tty::Terminal::of_stdin()
    } else {
        None
    };
    let mut fg: Option<i32> = None;
    let t = match thaw_phases(reader, &opts, |pid| {
        fg = term.as_ref().and_then(|t| t.hand_to(pid));
    }) {
        Ok(t) => t,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    if let Some(n) = &t.pid_note {
        eprintln!("omnode: {n}");
    }
    if a.print_pid {
        println!("{}", t.pid);
        let _ = std::io::stdout().flush();
    } else {
        eprintln!("omnode: thawed process {} as PID {}", t.old_pid, t.pid);
    }
    if !a.wait {
        return ExitCode::SUCCESS;
    }
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc_waitpid(t.pid, &mut st) };
        if r == t.pid && st & 0xff == 0x7f {
            // stopped (Ctrl-Z, SIGSTOP): as a shell would, say so and give the shell control
            let sig = (st >> 8) & 0xff;
            match (&term, fg) {
                (Some(term), Some(pgrp)) => {
                    eprintln!(
                        "\nomnode: process {} stopped by signal {sig}; `fg` continues it",
                        t.pid
                    );
                    term.stop_with(pgrp);
                }
                _ => eprintln!(
                    "omnode: process {} stopped by signal {sig}; `kill -CONT {}` continues it",
                    t.pid, t.pid
                ),
            }
            continue;
        }
        if r == t.pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return fail(format_args!("lost track of process {}", t.pid));
        }
    }
    let code = if st & 0x7f == 0 {
        (st >> 8) & 0xff
    } else {
        128 + (st & 0x7f)
    };
    ExitCode::from(code as u8)
}

/// A non-root user's thaw: the daemon thaws the image as the user (only root can thaw).
fn thaw_through_daemon(
    a: &ThawArgs,
    opts: &migrate::ThawOptions,
    named: &[(i32, File)],
) -> ExitCode {
    let path = a.image.display().to_string();
    let mut f = match File::open(&a.image) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot open image {path}: {e}")),
    };
    let stdio = [
        opts.stdin.unwrap_or(0),
        opts.stdout.unwrap_or(1),
        opts.stderr.unwrap_or(2),
    ];
    let named: Vec<(i32, i32)> = named.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect();
    let (reply, mut conn) =
        match crate::ckpt_daemon::thaw(&a.socket.socket, &mut f, stdio, &named, a.wait) {
            Ok(r) => r,
            Err(e) => return fail(format_args!("{path}: {e}")),
        };
    let pid = match reply {
        crate::ckpt_daemon::Reply::Thawed { pid, old_pid } => {
            if a.print_pid {
                println!("{pid}");
                let _ = std::io::stdout().flush();
            } else {
                eprintln!("omnode: thawed process {old_pid} as PID {pid} (through the daemon)");
            }
            pid
        }
        crate::ckpt_daemon::Reply::Error(e) => return fail(format_args!("{path}: {e}")),
        o => return fail(format_args!("{path}: unexpected answer {o:?}")),
    };
    if !a.wait {
        return ExitCode::SUCCESS;
    }
    match crate::ckpt_daemon::exit_status(&mut conn) {
        Ok(st) if st & 0x7f == 0 => ExitCode::from(((st >> 8) & 0xff) as u8),
        Ok(st) => ExitCode::from((128 + (st & 0x7f)) as u8),
        Err(e) => fail(format_args!("lost track of process {pid}: {e}")),
    }
}

const fn libc_o_accmode() -> u32 {
    3 // O_ACCMODE
}

/// [`migrate::thaw`], from an image whose process section was already read.
/// `before_run` gets the new PID once the process has its group and session and before it
/// runs (the moment to hand it the terminal).
fn thaw_phases<R: std::io::Read>(
    mut reader: migrate::ImageReader<R>,
    opts: &migrate::ThawOptions,
    before_run: impl FnOnce(i32),
) -> migrate::Result<migrate::Thawed> {
    let mut t = migrate::Thawing::skeleton(&reader, opts)?;
    t.pages(&mut reader)?;
    t.attributes()?;
    t.fds()?;
    before_run(t.pid());
    t.run()
}

unsafe extern "C" {
    #[link_name = "waitpid"]
    fn libc_waitpid_raw(pid: i32, status: *mut i32, options: i32) -> i32;
}
unsafe fn libc_waitpid(pid: i32, st: &mut i32) -> i32 {
    // SAFETY: plain waitpid on our child.
    unsafe {
        libc_waitpid_raw(pid, st, 2 /* WUNTRACED */)
    }
}

/// `omnode image` of a tree image: the tree, what its processes share, and each process's
/// totals (every checksum verified).
fn image_tree(path: &str, mut input: BufReader<File>) -> ExitCode {
    let tree = match migrate::image::TreeImage::read_from(&mut input) {
        Ok(t) => t,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    println!("tree image: {} processes", tree.procs.len());
    for p in &tree.procs {
        let what = match p.zombie {
            Some(st) if libc::WIFEXITED(st) => {
                format!("zombie, exited with {}", libc::WEXITSTATUS(st))
            }
            Some(st) => format!("zombie, wait status {st:#x}"),
            None => match migrate::inspect(&mut input) {
                Ok(s) => format!(
                    "{} ({}): {} mappings, {:.1} MiB memory, {} fds",
                    s.process.comm,
                    s.process.exe,
                    s.process.vmas.len(),
                    s.page_bytes as f64 / 1048576.0,
                    s.process.fds.len()
                ),
                Err(e) => return fail(format_args!("{path}: process {}: {e}", p.pid)),
            },
        };
        println!(
            "  pid {} parent {} group {}: {what}",
            p.pid,
            if p.ppid == 0 {
                "(thaw)".to_string()
            } else {
                p.ppid.to_string()
            },
            p.pgid
        );
    }
    for s in &tree.shared {
        let ends = s
            .ends
            .iter()
            .map(|e| format!("{}:{}{}", e.pid, e.fd, if e.write { "w" } else { "" }))
            .collect::<Vec<_>>()
            .join(" ");
        match &s.kind {
            migrate::image::SharedKind::Pipe { size, data } => println!(
                "  pipe ({size} bytes, {} waiting) between {ends}",
                data.len()
            ),
            migrate::image::SharedKind::File { path, pos, .. } => {
                println!("  file {path} at offset {pos}, shared by {ends}")
            }
        }
    }
    ExitCode::SUCCESS
}

fn image(a: ImageArgs) -> ExitCode {
    let path = a.image.display().to_string();
    let f = match File::open(&a.image) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot open image {path}: {e}")),
    };
    let mut input = BufReader::with_capacity(64 << 10, f);
    if let Ok(head) = std::io::BufRead::fill_buf(&mut input) {
        if migrate::image::is_tree_image(head) {
            return image_tree(&path, input);
        }
    }
    let s = match migrate::inspect(input) {
        Ok(s) => s,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    let p = &s.process;
    let cmd: Vec<String> = p
        .cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut o = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "image:    {path} ({} bytes, checksums ok)",
        s.image_bytes
    );
    let _ = writeln!(o, "pid:      {}   comm: {}", p.pid, p.comm);
    let _ = writeln!(o, "command:  {}", cmd.join(" "));
    let _ = writeln!(o, "exe:      {}", p.exe);
    let _ = writeln!(o, "cwd:      {}", p.cwd);
    let _ = writeln!(
        o,
        "creds:    uid {} gid {}   session leader: {}",
        p.creds.uid[1], p.creds.gid[1], p.session_leader
    );
    let _ = writeln!(
        o,
        "memory:   {:.2} MiB of contents in {} mappings",
        s.page_bytes as f64 / 1048576.0,
        p.vmas.len()
    );
    for (v, n) in p.vmas.iter().zip(&s.vma_bytes) {
        let prot = format!(
            "{}{}{}{}",
            if v.prot & 1 != 0 { 'r' } else { '-' },
            if v.prot & 2 != 0 { 'w' } else { '-' },
            if v.prot & 4 != 0 { 'x' } else { '-' },
            if v.shared { 's' } else { 'p' }
        );
        let _ = writeln!(
            o,
            "  {:012x}-{:012x} {prot} {:>10} KiB shipped  {}",
            v.start,
            v.end,
            n / 1024,
            v.name
        );
    }
    if let Some(t) = &p.terminal {
        let _ = writeln!(
            o,
            "terminal: at fd {}, its settings carried{}",
            t.fd,
            if t.ctty {
                "; its controlling terminal"
            } else {
                ""
            }
        );
    }
    if !p.threads.is_empty() {
        let _ = writeln!(
            o,
            "threads:  {} besides the main thread: {}",
            p.threads.len(),
            p.threads
                .iter()
                .map(|t| format!("{} {}", t.tid, t.comm))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for t in &p.posix_timers {
        let how = match t.notify & !libc::SIGEV_THREAD_ID {
            libc::SIGEV_NONE => "no notification".to_string(),
            _ if t.notify & libc::SIGEV_THREAD_ID != 0 => {
                format!("signal {} to thread {}", t.signo, t.target)
            }
            _ => format!("signal {}", t.signo),
        };
        let _ = writeln!(
            o,
            "timer:    POSIX timer {} on clock {}, {how}, {}.{:09} s left, every {}.{:09} s",
            t.id, t.clock, t.left.0, t.left.1, t.interval.0, t.interval.1
        );
    }
    for l in &p.file_locks {
        let _ = writeln!(
            o,
            "lock:     {:?} {} lock on fd {}, bytes {} to {}",
            l.kind,
            if l.write { "write" } else { "read" },
            l.fd,
            l.start,
            l.end.map_or("EOF".to_string(), |e| e.to_string())
        );
    }
    let _ = writeln!(o, "fds:");
    for f in &p.fds {
        let d = match &f.kind {
            migrate::FdKind::Path {
                path, flags, pos, ..
            } => format!("{path} (flags {flags:#o}, offset {pos})"),
            migrate::FdKind::SharedWith { fd, .. } => format!("same open file as fd {fd}"),
            migrate::FdKind::Stdio { what, .. } => format!("{what} (attached to thaw's stdio)"),
            migrate::FdKind::External { what, .. } => {
                format!(
                    "{what}, outside the process (thaw needs --fd {}=FILE or =null)",
                    f.fd
                )
            }
            migrate::FdKind::Pipe {
                pipe,
                write,
                size,
                data,
                ..
            } => format!(
                "{} end of pipe:[{pipe}] inside the process ({size} bytes big, {} bytes waiting)",
                if *write { "write" } else { "read" },
                data.len()
            ),
            migrate::FdKind::EventFd {
                count, semaphore, ..
            } => format!(
                "eventfd, count {count}{}",
                if *semaphore { ", semaphore" } else { "" }
            ),
            migrate::FdKind::TimerFd {
                clockid,
                value,
                interval,
                ticks,
                ..
            } => format!(
                "timerfd on clock {clockid}, {}.{:09} s left, every {}.{:09} s, {ticks} expirations unread",
                value.0, value.1, interval.0, interval.1
            ),
            migrate::FdKind::SignalFd { mask, .. } => format!("signalfd for mask {mask:#x}"),
            migrate::FdKind::SocketPair { pair, data, .. } => format!(
                "one end of socketpair {pair} inside the process ({} bytes waiting)",
                data.len()
            ),
            migrate::FdKind::Contents {
                name, memfd, data, ..
            } => format!(
                "{} {name}, {} bytes carried in the image",
                if *memfd { "memfd" } else { "deleted file" },
                data.len()
            ),
            migrate::FdKind::Terminal { like, .. } => {
                format!("the terminal at fd {like}, opened again (as /dev/tty)")
            }
            migrate::FdKind::Epoll { watches, .. } => format!(
                "epoll watching fds {}",
                watches
                    .iter()
                    .map(|w| format!("{} (events {:#x})", w.fd, w.events))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            migrate::FdKind::Inotify { watches, .. } => format!(
                "inotify watching {}",
                watches
                    .iter()
                    .map(|w| format!("{} (wd {}, mask {:#x})", w.path, w.wd, w.mask))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(o, "  {:>4}  {d}", f.fd);
    }
    print!("{o}");
    ExitCode::SUCCESS
}
