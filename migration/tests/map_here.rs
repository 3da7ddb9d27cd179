//! A moved process maps a file it opened at home: the remote supervisor maps the identical
//! local file instead of sending the process home (`Req::FileId`), and sends it home when the
//! file here differs or the mapping is shared. A forked child runs under the remote's filter
//! against the real kernel; an in-process home stand-in runs the forwarded calls on real files.
//! For the "differs" case the home port opens another file for that path (what a home whose
//! file differs from this node's does).

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::spawn_filtered;
use migration::forward::{Call, FwdMsg};
use migration::remote::{FdTable, GoHome, HomePort, Identity, Stop, Supervisor};
use migration::seccomp::{Program, Response, TrapSet};
use migration::standin::{self, ChannelPort};

/// Content of the file here (and, in the "same" case, at home).
const HERE: &[u8] = b"the library as this node has it\n";

/// The path the child opens, per test (set before the fork).
static SAME: OnceLock<std::ffi::CString> = OnceLock::new();
static DIFFERS: OnceLock<std::ffi::CString> = OnceLock::new();

fn program_same() -> i32 {
    program(&SAME)
}

fn program_differs() -> i32 {
    program(&DIFFERS)
}

/// Paths home rewrites (home's version of the file lives elsewhere): from → to.
struct Rewrite {
    inner: ChannelPort,
    from: Bytes,
    to: Option<Bytes>,
}

impl HomePort for Rewrite {
    fn send(&mut self, mut msg: FwdMsg) -> Result<(), String> {
        if let (
            FwdMsg::Request {
                call: Call::Openat { path, .. },
                ..
            },
            Some(to),
        ) = (&mut msg, &self.to)
            && *path == self.from
        {
            *path = to.clone();
        }
        self.inner.send(msg)
    }
    fn try_recv(&mut self) -> Option<FwdMsg> {
        self.inner.try_recv()
    }
    fn wake_fd(&self) -> std::os::fd::RawFd {
        self.inner.wake_fd()
    }
    fn clear_wake(&mut self) {
        self.inner.clear_wake()
    }
}

/// The moved program. Bits of the exit code: 1 open failed; 2 the shared mapping was not
/// refused with ENOSYS (the test's answer when it goes home); 4 the private mapping failed;
/// 8 it shows other bytes than HERE; 16 a second mapping of the same fd failed; 32 a read
/// of the fd (through home) failed; 64 close failed.
fn program(at: &OnceLock<std::ffi::CString>) -> i32 {
    let mut fails = 0;
    // SAFETY (whole body): raw system calls on our own buffers and mappings.
    unsafe {
        let Some(path) = at.get() else {
            return 1;
        };
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
            0,
        );
        if fd < 3 {
            return 1;
        }
        let fd = fd as i32;
        let len = HERE.len();
        let shared = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if shared != libc::MAP_FAILED || *libc::__errno_location() != libc::ENOSYS {
            fails |= 2;
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            libc::syscall(libc::SYS_close, fd);
            return fails | 4;
        }
        if std::slice::from_raw_parts(p.cast::<u8>(), len) != HERE {
            fails |= 8;
        }
        let q = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        if q == libc::MAP_FAILED {
            fails |= 16;
        }
        let mut buf = [0u8; 8];
        if libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), 8) != 8 || buf != HERE[..8] {
            fails |= 32;
        }
        if libc::syscall(libc::SYS_close, fd) != 0 {
            fails |= 64;
        }
    }
    fails
}

struct Rm(std::path::PathBuf);
impl Drop for Rm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `body` (opening the path it finds in `slot`) with home's file holding `home_content`
/// (`None`: home's file is the very file here); returns the exit code, the calls that went
/// home and the supervisor's count of files mapped here.
fn run(
    name: &str,
    home_content: Option<&[u8]>,
    slot: &OnceLock<std::ffi::CString>,
    body: fn() -> i32,
) -> (i32, Vec<(i64, GoHome)>, u64) {
    let dir = std::env::temp_dir().join(format!("h13dyn-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm = Rm(dir.clone());
    let here = dir.join("lib.so");
    std::fs::write(&here, HERE).unwrap();
    // only files everyone may read are compared here
    std::fs::set_permissions(&here, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let path = std::ffi::CString::new(here.to_str().unwrap()).unwrap();
    slot.set(path).unwrap();
    let to = home_content.map(|c| {
        let h = dir.join("home-lib.so");
        std::fs::write(&h, c).unwrap();
        Bytes::from(h.to_str().unwrap().to_string())
    });

    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (inner, standin) = standin::spawn(HashMap::new()).unwrap();
    let port = Rewrite {
        inner,
        from: Bytes::from(here.to_str().unwrap().to_string()),
        to,
    };
    let (mut child, listener) = spawn_filtered(&prog, body);
    listener.set_sync_wake_up().unwrap();
    let id = Identity {
        pid: 31_337,
        ppid: 31_000,
        pgid: 31_337,
        sid: 31_000,
        local_pid: child.pid,
    };
    let mut sup = Supervisor::new(listener, id, FdTable::new([]), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut went_home = Vec::new();
    loop {
        match sup.run(deadline).unwrap() {
            Stop::Exited => break,
            Stop::Deadline => panic!("the child did not finish: {:?}", sup.stats()),
            Stop::GoHome { notif, reason } => {
                went_home.push((i64::from(notif.data.nr), reason));
                // No home to go to here: refuse the call; the child checks the refusal.
                sup.listener()
                    .respond(notif.id, Response::Errno(libc::ENOSYS))
                    .unwrap();
            }
        }
    }
    let status = child.wait();
    assert!(libc::WIFEXITED(status), "{status:#x}");
    let mapped = sup.stats().mapped_here;
    drop(sup);
    let left = standin.join();
    assert!(
        left.is_empty(),
        "the file was closed at home too: {:?}",
        left.keys()
    );
    (libc::WEXITSTATUS(status), went_home, mapped)
}

#[test]
fn a_file_identical_here_is_mapped_here_and_a_shared_mapping_goes_home() {
    let (code, went_home, mapped) = run("same", None, &SAME, program_same);
    assert_eq!(code, 0, "failed checks (bits)");
    // only the shared mapping went home; both private ones ran here, proven once
    assert_eq!(went_home, vec![(libc::SYS_mmap, GoHome::MmapHomeFd)]);
    assert_eq!(mapped, 1);
}

#[test]
fn a_file_that_differs_here_sends_the_process_home() {
    // same size, one byte different: only the content tells them apart
    let mut home = HERE.to_vec();
    home[4] ^= 0x20;
    let (code, went_home, mapped) = run("differs", Some(&home), &DIFFERS, program_differs);
    // the private mapping went home too (and was refused there by this test): nothing ran
    // on the local file
    assert_eq!(code, 4, "failed checks (bits)");
    assert_eq!(
        went_home,
        vec![
            (libc::SYS_mmap, GoHome::MmapHomeFd),
            (libc::SYS_mmap, GoHome::MmapHomeFd)
        ]
    );
    assert_eq!(mapped, 0);
}
