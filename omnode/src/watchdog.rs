//! The guest watchdog: a moved process must not outlive the daemon that supervises it.
//!
//! Owns: one tiny process per guest, forked from the daemon before the guest is confirmed. It
//! holds a pidfd of the daemon and one of the guest and sleeps in `poll`; when the daemon's
//! pidfd becomes readable (the daemon ended, even by SIGKILL) it sends SIGKILL to the guest
//! through its pidfd (no PID reuse race) and exits; when the guest ends first it just exits.
//! Must not know: migrations, protocols, the guest's image.
//!
//! Why not `PR_SET_PDEATHSIG` on the guest: the kernel sends that signal when the *thread*
//! that created the guest exits, and the guest is created by a tracer thread that ends when the
//! rebuild is done; the thaw also resets the guest's own parent-death signal to the value it
//! had at home. A separate process is told of the daemon's end by the kernel whatever thread
//! made what.
//!
//! The child runs only raw system calls (it is the fork of a multi-threaded process), blocks
//! every signal it can, leaves the daemon's session (a Ctrl-C aimed at the daemon's terminal
//! does not end it), and closes every fd but its two pidfds (it must not keep the daemon's
//! sockets or the guest's seccomp listener open).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A running watchdog; dropping it ends and reaps it (the guest is then no longer watched).
#[derive(Debug)]
pub struct Watchdog {
    pid: libc::pid_t,
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; on success a fresh fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The watchdog's whole life, in the forked child: raw system calls only.
fn child(daemon: RawFd, guest: RawFd) -> ! {
    // SAFETY: raw syscalls on integers and on pointers to locals that outlive each call.
    unsafe {
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        );
        libc::syscall(libc::SYS_setsid);
        // close every fd except the two pidfds
        let (lo, hi) = (daemon.min(guest) as u32, daemon.max(guest) as u32);
        if lo > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, lo - 1, 0u32);
        }
        if hi > lo + 1 {
            libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, hi + 1, u32::MAX, 0u32);
        let mut fds = [
            libc::pollfd {
                fd: daemon,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: guest,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            fds[0].revents = 0;
            fds[1].revents = 0;
            let r = libc::syscall(libc::SYS_poll, fds.as_mut_ptr(), 2u64, -1i32);
            if r < 0 {
                continue; // EINTR (only SIGSTOP/SIGCONT can reach us)
            }
            if fds[0].revents != 0 {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    guest,
                    libc::SIGKILL,
                    0usize,
                    0u32,
                );
                libc::syscall(libc::SYS_exit_group, 0);
            }
            if fds[1].revents != 0 {
                libc::syscall(libc::SYS_exit_group, 0);
            }
        }
    }
}

impl Watchdog {
    /// Starts the watchdog of `guest` (a process of this daemon).
    pub fn start(guest: libc::pid_t) -> io::Result<Watchdog> {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let daemon = pidfd_open(me)?;
        let g = pidfd_open(guest)?;
        let (dfd, gfd) = (daemon.as_raw_fd(), g.as_raw_fd());
        // SAFETY: the child calls only raw system calls (see `child`), so forking a
        // multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child(dfd, gfd);
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watchdog { pid })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: our own unreaped child: its PID cannot have been reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            while libc::waitpid(self.pid, &mut st, 0) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn gone_or_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    /// The watchdog ends by itself when its guest ends, and leaves our guest alone meanwhile.
    #[test]
    fn ends_with_its_guest() {
        let mut guest = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let w = Watchdog::start(guest.id() as i32).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!gone_or_zombie(w.pid()), "the watchdog ended early");
        assert!(guest.wait().unwrap().success(), "the guest was killed");
        let t0 = Instant::now();
        while !gone_or_zombie(w.pid()) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the watchdog outlives its guest"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The watchdog kills the guest when the watched process (here a forked stand-in for the
    /// daemon) dies by SIGKILL.
    #[test]
    fn kills_the_guest_when_the_daemon_dies() {
        // A stand-in daemon: a child that starts a guest and its watchdog, then waits.
        let (rd, wr) = {
            let mut p = [0; 2];
            // SAFETY: pipe2 into a local array.
            assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: fresh fds.
            unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
        };
        let guest = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let gpid = guest.id() as i32;
        // SAFETY: the child only makes raw calls and the watchdog's (also raw) then pauses.
        let daemon = unsafe { libc::fork() };
        if daemon == 0 {
            let w = Watchdog::start(gpid);
            let wpid: i32 = w.as_ref().map(|w| w.pid()).unwrap_or(-1);
            std::mem::forget(w);
            // SAFETY: write 4 bytes from a local to our pipe, then wait to be killed.
            unsafe {
                libc::write(wr.as_raw_fd(), (&wpid as *const i32).cast(), 4);
                loop {
                    libc::pause();
                }
            }
        }
        drop(wr);
        let mut wpid = 0i32;
        // SAFETY: read 4 bytes into a local.
        let n = unsafe { libc::read(rd.as_raw_fd(), (&mut wpid as *mut i32).cast(), 4) };
        assert_eq!(n, 4);
        assert!(wpid > 0, "the watchdog did not start");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!gone_or_zombie(gpid), "the guest died before its daemon");
        // SAFETY: our own child.
        unsafe { libc::kill(daemon, libc::SIGKILL) };
        let mut st = 0;
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(daemon, &mut st, 0) };
        let mut guest = guest;
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = guest.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the guest outlived its daemon"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }
}
