//! Helpers for the freeze/thaw tests: compile the C programs, spawn them cleanly, and make sure
//! every process is killed and reaped even when a test fails.
#![allow(dead_code)]

pub mod check;
pub mod runs;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long any one process in these tests may take.
pub const T: Duration = Duration::from_secs(60);

pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = "freeze/thaw tests need root (ptrace of other processes, clone3 set_tid)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: not skipping: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return false;
    }
    true
}

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Compiles tests/progs/NAME.c once per test binary.
pub fn prog(name: &str) -> PathBuf {
    let mut g = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("progs");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/progs")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    // built under a name of our own and renamed: test binaries (or nextest's per-test
    // processes) may build the same program at once
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let st = Command::new("gcc")
        .args(["-O2", "-mavx", "-pthread", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc is needed for these tests");
    assert!(st.success(), "gcc failed on {}", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    map.insert(name.into(), out.clone());
    out
}

/// A process we own (spawned or thawed): killed and reaped on drop.
pub struct Proc {
    pub pid: i32,
    pub reaped: Option<i32>,
}

impl Proc {
    pub fn new(pid: i32) -> Self {
        Proc { pid, reaped: None }
    }
    /// Waits for exit (up to `t`) and returns the raw wait status.
    pub fn wait(&mut self, t: Duration) -> i32 {
        if let Some(s) = self.reaped {
            return s;
        }
        let end = Instant::now() + t;
        loop {
            let mut st = 0;
            // SAFETY: our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG | libc::__WALL) };
            if r == self.pid {
                self.reaped = Some(st);
                return st;
            }
            assert!(
                r == 0,
                "waitpid({}) failed: {}",
                self.pid,
                std::io::Error::last_os_error()
            );
            assert!(
                Instant::now() < end,
                "process {} did not exit within {t:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks.
        self.reaped.is_none() && unsafe { libc::kill(self.pid, 0) } == 0 && !self.zombie()
    }
    fn zombie(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // SAFETY: our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(self.pid, &mut st, libc::__WALL);
            }
        }
    }
}

/// Spawns `cmd` with stdin from /dev/null, stdout (and stderr unless `err` is given) to `out`,
/// and no other inherited fds.
pub fn spawn(cmd: &mut Command, out: &Path, err: Option<&Path>) -> Proc {
    spawn_with(cmd, out, err, &[])
}

/// [`spawn`], with each (fd of ours, fd of the child) of `fds` installed in the child (after
/// its stdio: an fd 0..2 there replaces stdio).
pub fn spawn_with(cmd: &mut Command, out: &Path, err: Option<&Path>, fds: &[(i32, i32)]) -> Proc {
    let f = std::fs::File::create(out).unwrap();
    let e = match err {
        Some(p) => std::fs::File::create(p).unwrap(),
        None => f.try_clone().unwrap(),
    };
    cmd.stdin(Stdio::null()).stdout(f).stderr(e);
    let leak = inherited_pipe();
    let w = leak.as_ref().map(|p| p.1).unwrap_or(-1);
    // the fds the child keeps above 2, ascending
    let mut keep: Vec<i32> = fds.iter().map(|p| p.1).filter(|&d| d > 2).collect();
    if w >= 0 {
        keep.push(LEAKED_FD);
    }
    keep.sort();
    let fds = fds.to_vec();
    // SAFETY: dup2 and close_range are async-signal-safe; no allocation in the child.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &fds {
                if libc::dup2(from, to) != to {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if w >= 0 {
                // an unused write end of a pipe, as a careless shell leaks one
                if libc::dup2(w, LEAKED_FD) != LEAKED_FD {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut from = 3u32;
            for &k in &keep {
                if k as u32 > from {
                    libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0u32);
                }
                from = k as u32 + 1;
            }
            libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)] // reaped by Proc
    let c = cmd.spawn().expect("spawn");
    if let Some((r, w)) = leak {
        // SAFETY: our own pipe fds, closed once.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
    Proc::new(c.id() as i32)
}

/// The counter test program (40 iterations 10 ms apart, 1 MiB heap) writing to `dir/out`.
pub fn spawn_counter(dir: &Path) -> (Proc, PathBuf) {
    let out = dir.join("out");
    let p = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &out,
        None,
    );
    (p, out)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until `p` holds at least `n` lines.
pub fn wait_lines(p: &Path, n: usize, t: Duration) {
    let end = Instant::now() + t;
    while read(p).lines().count() < n {
        assert!(
            Instant::now() < end,
            "{} did not reach {n} lines",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn freeze(pid: i32, leave_running: bool) -> migrate::Result<Vec<u8>> {
    let mut img = Vec::new();
    migrate::freeze(pid, &mut img, &migrate::FreezeOptions { leave_running })?;
    Ok(img)
}

/// With this set, every program these helpers spawn inherits an unused pipe write end at
/// [`LEAKED_FD`], and [`thaw`] gives it /dev/null there (the suite run a second time).
pub const INHERITED_PIPE_ENV: &str = "OMNODE_TEST_INHERITED_PIPE";
pub const LEAKED_FD: i32 = 100;

/// (read end, write end) of a new pipe, when [`INHERITED_PIPE_ENV`] is set.
fn inherited_pipe() -> Option<(i32, i32)> {
    std::env::var_os(INHERITED_PIPE_ENV)?;
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    Some((p[0], p[1]))
}

pub fn thaw(img: &[u8]) -> Proc {
    let t = thaw_with(img, migrate::ThawOptions::default()).expect("thaw");
    Proc::new(t.pid)
}

/// `migrate::thaw` with `opts`; under [`INHERITED_PIPE_ENV`] the inherited pipe gets /dev/null.
pub fn thaw_with(img: &[u8], mut opts: migrate::ThawOptions) -> migrate::Result<migrate::Thawed> {
    let _null;
    if std::env::var_os(INHERITED_PIPE_ENV).is_some() {
        let r = migrate::ImageReader::new(img)?;
        let ext = r
            .process()
            .fds
            .iter()
            .find(|f| f.fd == LEAKED_FD)
            .map(|f| f.kind.clone());
        match ext {
            Some(migrate::FdKind::External { .. }) => {
                _null = std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .unwrap();
                use std::os::fd::AsRawFd;
                opts.fd_placeholders.push((LEAKED_FD, _null.as_raw_fd()));
            }
            // what an earlier thaw gave it
            Some(migrate::FdKind::Path { path, .. }) if path == "/dev/null" => {}
            o => panic!(
                "the inherited pipe at fd {LEAKED_FD} is not in the image as external: {o:?}"
            ),
        }
    }
    migrate::thaw(img, &opts)
}

pub fn exited_ok(st: i32) -> bool {
    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
}
