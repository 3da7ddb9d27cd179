//! `omnode freeze` / `thaw` of a non-root user, served by the daemon (issue 8 part 7).
//!
//! Only root can thaw (PR_SET_MM_MAP's exe, the credentials), so a user's freeze and thaw go
//! through the root daemon, which checks the caller (SO_PEERCRED, then its /proc: uid, groups,
//! hard limits, oom_score_adj) and never opens a file for it: the CLI creates and reads the
//! image file itself and passes its stdio (and `--fd` files) as descriptors (SCM_RIGHTS).
//!
//! - freeze: the daemon freezes the process only if the caller could thaw it
//!   ([`migrate::freeze_for`]: same uid, no more groups or limits), streams the image to the
//!   CLI in frames (`u32-le len | bytes`, 0 ends the image, `u32::MAX` means an error line
//!   follows), and ends the process only after the CLI says it stored the image (synced).
//! - thaw: the CLI sends the image; the daemon thaws it for the caller
//!   ([`migrate::ThawOptions::owner`]: an image of another uid is refused, every file is opened
//!   as the caller), reports the PID and, with `--wait`, the exit status. It reaps the
//!   process (its child) in any case.
//!
//! Every wait on the peer has a time-out. Owns: this protocol. Must not know: the image format.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long either side waits for the other (a frozen process waits at most this long for
/// a CLI that went quiet, then runs on).
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
const FRAME: usize = 1 << 20;
const FRAME_ERROR: u32 = u32::MAX;

/// What the daemon says besides the image frames (one JSON line each).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Send the descriptors and the image now.
    Go,
    Froze {
        pid: i32,
        ended: bool,
        image_bytes: u64,
        page_bytes: u64,
        frozen_ms: f64,
    },
    Thawed {
        pid: i32,
        old_pid: i32,
    },
    /// The thawed process ended (`--wait`): its wait status.
    Exited {
        status: i32,
    },
    Error(String),
}

/// The caller on the other end of the socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

fn owner(peer: Peer) -> Result<migrate::ThawOwner, String> {
    let pid = peer
        .pid
        .ok_or("the caller's pid is unknown (SO_PEERCRED); refused")?;
    let o = migrate::ThawOwner::of_process(pid)?;
    if o.uid != peer.uid {
        return Err(format!(
            "the caller's uid {} is not its real uid {} (a set-uid caller); refused",
            peer.uid, o.uid
        ));
    }
    Ok(o)
}

fn send_line(s: &mut UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut v = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    v.push(b'\n');
    s.write_all(&v)
}

fn read_line<R: BufRead>(r: &mut R) -> Result<Reply, String> {
    let mut l = String::new();
    match r.by_ref().take(64 * 1024).read_line(&mut l) {
        Ok(0) => Err("the daemon closed the connection".into()),
        Ok(_) => serde_json::from_str(&l).map_err(|e| format!("unreadable answer: {e}")),
        Err(e) => Err(format!("reading the daemon's answer: {e}")),
    }
}

/// Frames written to the CLI (a `Write` the engine streams the image into).
struct Frames {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Frames {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.s.write_all(&(self.buf.len() as u32).to_le_bytes())?;
        self.s.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl Write for Frames {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == FRAME {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()?;
        self.s.flush()
    }
}

/// Daemon side of a user's freeze (on a blocking thread).
pub fn serve_freeze(pid: i32, leave_running: bool, peer: Peer, mut s: UnixStream) {
    let _ = s.set_write_timeout(Some(PEER_TIMEOUT));
    let _ = s.set_read_timeout(Some(PEER_TIMEOUT));
    let fail = |s: &mut UnixStream, e: String| {
        tracing::info!(pid, uid = peer.uid, "freeze for a user refused: {e}");
        let _ = s.write_all(&FRAME_ERROR.to_le_bytes());
        let _ = send_line(s, &Reply::Error(e));
    };
    let o = match owner(peer) {
        Ok(o) => o,
        Err(e) => return fail(&mut s, e),
    };
    let (w, mut ack) = match (s.try_clone(), s.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return fail(&mut s, "cannot use the connection".into()),
    };
    let frames = Frames {
        s: w,
        buf: Vec::with_capacity(FRAME),
    };
    let stored = move || {
        // the end of the image, then the CLI's word that it has synced it
        if ack.write_all(&0u32.to_le_bytes()).is_err() {
            return false;
        }
        let mut l = String::new();
        let mut r = BufReader::new(&mut ack).take(64);
        r.read_line(&mut l).is_ok() && l == "stored\n"
    };
    match migrate::freeze_for(pid, frames, leave_running, &o, stored) {
        Ok((r, ended)) => {
            if leave_running {
                let _ = s.write_all(&0u32.to_le_bytes());
            }
            tracing::info!(pid, uid = peer.uid, ended, "froze a process for its user");
            let _ = send_line(
                &mut s,
                &Reply::Froze {
                    pid,
                    ended,
                    image_bytes: r.image_bytes,
                    page_bytes: r.page_bytes,
                    frozen_ms: r.frozen.as_secs_f64() * 1e3,
                },
            );
        }
        Err(e) => fail(&mut s, e.to_string()),
    }
}

/// Receives one byte and the descriptors sent with it.
fn recv_fds(s: &UnixStream) -> Result<Vec<OwnedFd>, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut b = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let m = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the caller's descriptors: {e}"))?;
    let mut fds = Vec::new();
    for c in m
        .cmsgs()
        .map_err(|e| format!("receiving the caller's descriptors: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: SCM_RIGHTS hands us new descriptors that nothing else owns.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if m.bytes != 1 {
        return Err("the caller sent no descriptors".into());
    }
    Ok(fds)
}

/// Daemon side of a user's thaw (on a blocking thread). `placeholders`: image fd numbers of
/// the descriptors sent after stdin, stdout and stderr.
pub fn serve_thaw(placeholders: Vec<i32>, wait: bool, peer: Peer, mut s: UnixStream) {
    let _ = s.set_write_timeout(Some(PEER_TIMEOUT));
    let _ = s.set_read_timeout(Some(PEER_TIMEOUT));
    let fail = |s: &mut UnixStream, e: String| {
        tracing::info!(uid = peer.uid, "thaw for a user refused: {e}");
        let _ = send_line(s, &Reply::Error(e));
    };
    let o = match owner(peer) {
        Ok(o) => o,
        Err(e) => return fail(&mut s, e),
    };
    if send_line(&mut s, &Reply::Go).is_err() {
        return;
    }
    let fds = match recv_fds(&s) {
        Ok(f) if f.len() == 3 + placeholders.len() => f,
        Ok(f) => {
            return fail(
                &mut s,
                format!(
                    "the caller sent {} descriptors, expected {}",
                    f.len(),
                    3 + placeholders.len()
                ),
            );
        }
        Err(e) => return fail(&mut s, e),
    };
    let opts = migrate::ThawOptions {
        stdin: Some(fds[0].as_raw_fd()),
        stdout: Some(fds[1].as_raw_fd()),
        stderr: Some(fds[2].as_raw_fd()),
        fd_placeholders: placeholders
            .iter()
            .zip(&fds[3..])
            .map(|(&n, f)| (n, f.as_raw_fd()))
            .collect(),
        owner: Some(o),
        ..Default::default()
    };
    let input = match s.try_clone() {
        Ok(i) => i,
        Err(e) => return fail(&mut s, format!("cannot use the connection: {e}")),
    };
    let t = match migrate::thaw(BufReader::with_capacity(1 << 16, input), &opts) {
        Ok(t) => t,
        Err(e) => return fail(&mut s, e.to_string()),
    };
    drop(fds);
    tracing::info!(pid = t.pid, uid = peer.uid, "thawed a process for its user");
    let _ = send_line(
        &mut s,
        &Reply::Thawed {
            pid: t.pid,
            old_pid: t.old_pid,
        },
    );
    // the process is the daemon's child: reaped here, its status sent with --wait
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(t.pid, &mut st, libc::__WALL) };
        if r == t.pid
            || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            break;
        }
    }
    if wait {
        let _ = s.set_write_timeout(Some(PEER_TIMEOUT));
        let _ = send_line(&mut s, &Reply::Exited { status: st });
    }
}

// ---------------------------------------------------------------- the CLI side

fn connect(socket: &std::path::Path, req: &crate::control::Request) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "only root can thaw, so a user's freeze and thaw go through the omnode daemon, and its socket {} cannot be reached: {e}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(PEER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| e.to_string())?;
    Ok(s)
}

/// CLI side of a freeze through the daemon: the image goes into `file` (created 0600 by the
/// caller), which is synced before the daemon may end the process.
pub fn freeze(
    socket: &std::path::Path,
    pid: i32,
    leave_running: bool,
    file: &mut std::fs::File,
) -> Result<Reply, String> {
    let s = connect(
        socket,
        &crate::control::Request::Freeze { pid, leave_running },
    )?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(FRAME + 4, s);
    let mut buf = vec![0u8; FRAME];
    loop {
        let mut n = [0u8; 4];
        r.read_exact(&mut n)
            .map_err(|e| format!("the daemon stopped sending the image: {e}"))?;
        match u32::from_le_bytes(n) {
            0 => break,
            FRAME_ERROR => return read_line(&mut r),
            n if n as usize > FRAME => return Err(format!("the daemon sent a frame of {n} bytes")),
            n => {
                let b = &mut buf[..n as usize];
                r.read_exact(b)
                    .map_err(|e| format!("the daemon stopped sending the image: {e}"))?;
                file.write_all(b)
                    .map_err(|e| format!("writing the image: {e}"))?;
            }
        }
    }
    // stored only once on disk: the daemon ends the process after this
    file.sync_all()
        .map_err(|e| format!("syncing the image: {e}"))?;
    let _ = w.write_all(b"stored\n");
    read_line(&mut r)
}

/// CLI side of a thaw through the daemon: sends the caller's stdio (or the files named for
/// it), the descriptors for `--fd`, and the image; returns the daemon's `Thawed` reply, and
/// with `wait` the connection to read the exit status from.
pub fn thaw(
    socket: &std::path::Path,
    image: &mut std::fs::File,
    stdio: [RawFd; 3],
    named: &[(i32, RawFd)],
    wait: bool,
) -> Result<(Reply, BufReader<UnixStream>), String> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let s = connect(
        socket,
        &crate::control::Request::Thaw {
            placeholders: named.iter().map(|n| n.0).collect(),
            wait,
        },
    )?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    match read_line(&mut r)? {
        Reply::Go => {}
        Reply::Error(e) => return Ok((Reply::Error(e), r)),
        o => return Err(format!("unexpected answer {o:?}")),
    }
    let mut fds: Vec<RawFd> = stdio.to_vec();
    fds.extend(named.iter().map(|n| n.1));
    let iov = [std::io::IoSlice::new(b"F")];
    let cm = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(w.as_raw_fd(), &iov, &cm, MsgFlags::empty(), None)
        .map_err(|e| format!("sending descriptors to the daemon: {e}"))
        .and_then(|_| std::io::copy(image, &mut w).map_err(|e| format!("sending the image: {e}")));
    let _ = w.shutdown(std::net::Shutdown::Write);
    // a daemon that refused stops reading: its reason beats our broken pipe
    let reply = match (sent, read_line(&mut r)) {
        (_, Ok(reply @ Reply::Error(_))) => reply,
        (Err(e), _) => return Err(e),
        (Ok(_), reply) => reply?,
    };
    if wait {
        // the program may run for long: no time-out on its exit status
        let _ = r.get_ref().set_read_timeout(None);
    }
    Ok((reply, r))
}

/// Reads the exit status the daemon sends when the thawed process ends (`--wait`).
pub fn exit_status(r: &mut BufReader<UnixStream>) -> Result<i32, String> {
    match read_line(r)? {
        Reply::Exited { status } => Ok(status),
        Reply::Error(e) => Err(e),
        o => Err(format!("unexpected answer {o:?}")),
    }
}
