//! `omnode freeze | thaw | image`: front end of the `migrate` checkpoint/restore engine.
//! These commands need no running daemon.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Stop a running process, write its image to a file, and end it.
    ///
    /// Single-threaded x86_64 processes only. Anything that cannot be restored faithfully
    /// (threads, sockets, shared memory, epoll/eventfd/timerfd/signalfd/inotify, child
    /// processes, a process already traced) is refused before the process is touched; on
    /// any failure the process keeps running unchanged.
    Freeze(FreezeArgs),
    /// Recreate a frozen process from its image as a new process, print its PID and return.
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
}

#[derive(clap::Args, Debug)]
pub struct ThawArgs {
    /// Image file written by `omnode freeze`.
    pub image: PathBuf,
    /// Stay until the thawed process exits and return its exit status (128+N if killed by signal N).
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
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Image file to describe.
    pub image: PathBuf,
}

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
    let f = match File::create(&a.image) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot create image file {path}: {e}")),
    };
    let opts = migrate::FreezeOptions {
        leave_running: a.leave_running,
    };
    match migrate::freeze(a.pid, &f, &opts) {
        Ok(r) => {
            if let Err(e) = f.sync_data() {
                return fail(format_args!("image {path} may be incomplete: {e}"));
            }
            eprintln!(
                "omnode: froze {} into {path}: {:.1} MiB image, {:.1} MiB memory, stopped for {:.1} ms{}",
                r.pid,
                r.image_bytes as f64 / 1048576.0,
                r.page_bytes as f64 / 1048576.0,
                r.frozen.as_secs_f64() * 1e3,
                if a.leave_running {
                    " (still running)"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(&a.image);
            fail(e)
        }
    }
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
    let opts = migrate::ThawOptions {
        same_pid: a.same_pid,
        same_pid_wait: None,
        stdin: stdin.as_ref().map(|f| f.as_raw_fd()),
        stdout: stdout.as_ref().map(|f| f.as_raw_fd()),
        stderr: stderr.as_ref().map(|f| f.as_raw_fd()),
        ..Default::default()
    };
    let t = match migrate::thaw(BufReader::with_capacity(64 << 10, f), &opts) {
        Ok(t) => t,
        Err(e) => return fail(format_args!("{path}: {e}")),
    };
    if let Some(n) = &t.pid_note {
        eprintln!("omnode: {n}");
    }
    println!("{}", t.pid);
    let _ = std::io::stdout().flush();
    if !a.wait {
        return ExitCode::SUCCESS;
    }
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc_waitpid(t.pid, &mut st) };
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

unsafe extern "C" {
    #[link_name = "waitpid"]
    fn libc_waitpid_raw(pid: i32, status: *mut i32, options: i32) -> i32;
}
unsafe fn libc_waitpid(pid: i32, st: &mut i32) -> i32 {
    // SAFETY: plain waitpid on our child.
    unsafe { libc_waitpid_raw(pid, st, 0) }
}

fn image(a: ImageArgs) -> ExitCode {
    let path = a.image.display().to_string();
    let f = match File::open(&a.image) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("cannot open image {path}: {e}")),
    };
    let s = match migrate::inspect(BufReader::with_capacity(64 << 10, f)) {
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
    let _ = writeln!(o, "fds:");
    for f in &p.fds {
        let d = match &f.kind {
            migrate::FdKind::Path {
                path, flags, pos, ..
            } => format!("{path} (flags {flags:#o}, offset {pos})"),
            migrate::FdKind::SharedWith { fd, .. } => format!("same open file as fd {fd}"),
            migrate::FdKind::Stdio { what, .. } => format!("{what} (attached to thaw's stdio)"),
        };
        let _ = writeln!(o, "  {:>4}  {d}", f.fd);
    }
    print!("{o}");
    ExitCode::SUCCESS
}
