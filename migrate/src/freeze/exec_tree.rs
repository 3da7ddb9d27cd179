//! Watching a process tree at its execs: each execve of a descendant of the root is a
//! placement point (`mosrun --tree make -j8` spreads its compilers).
//!
//! [`watch_tree`] seizes the root (about to exec its program, as for [`super::watch_exec`])
//! with PTRACE_O_TRACEFORK/VFORK/CLONE/EXEC: the kernel attaches every child it makes to the
//! same tracer thread, and only that thread may issue ptrace calls for them. So the thread
//! holds the whole tree: between jobs it polls each member (waitpid of that PID alone, so it
//! never takes the events of a member it handed over) and passes on what it sees — forks add
//! members, signals are delivered, job-control stops are kept (PTRACE_LISTEN), ends remove
//! members. A member other than the root that reaches its exec stops there and is reported
//! ([`TreeEvent::Exec`]); the caller answers with [`TreeCtl::release`] (it runs on here, still
//! watched) or [`TreeCtl::take`] (it is stopped at its program's first instruction, checked,
//! and comes back as a [`Seized`] whose tracer is a handle on this same thread: its freeze,
//! and later its home shell, run here too). An exec left unanswered for [`ANSWER_WAIT`] runs
//! on by itself. Dropping every handle ends the thread: members are detached (they run on as if
//! never watched).

use super::Seized;
use super::unsup;
use crate::error::{Error, Result, errno};
use crate::sys::*;
use crate::tracer::{Idle, Slots, Tracer};
use libc::pid_t;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// An exec stop nobody answered within this time runs on (at home).
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Between polls of the members when nothing happens (shorter right after an event).
const POLL_MAX: Duration = Duration::from_millis(4);
const POLL_MIN: Duration = Duration::from_micros(100);
/// Events handled per member and poll (a fork storm cannot starve the jobs).
const BURST: usize = 16;

/// What the tree watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEvent {
    /// Member `pid` (not the root) stopped at its exec of `exe`, before the new program ran;
    /// answer with [`TreeCtl::release`] or [`TreeCtl::take`].
    Exec { pid: i32, exe: PathBuf },
    /// The root and every member are gone (or were handed over).
    Ended,
}

/// The events of a tree watch. `Send`.
#[derive(Debug)]
pub struct TreeEvents {
    rx: mpsc::Receiver<TreeEvent>,
}

impl TreeEvents {
    /// The next event; `None` when nothing came within `timeout`, and
    /// `Some(TreeEvent::Ended)` also when the watch is gone.
    pub fn next(&self, timeout: Duration) -> Option<TreeEvent> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(TreeEvent::Ended),
        }
    }
}

/// Control of a tree watch: answers its exec events. `Send`, `Sync`, cloneable; the watch
/// (and its thread) lives while a clone or a taken [`Seized`] does.
#[derive(Debug, Clone)]
pub struct TreeCtl {
    root: pid_t,
    tracer: Arc<Tracer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Running,
    /// In its exec stop since then, reported, not answered yet.
    AtExec(Instant),
}

/// Thread-side state of the watch (in the root's slot).
struct TreeState {
    root: pid_t,
    members: BTreeMap<pid_t, Member>,
    /// Members whose parent is this process: a wait here would reap them.
    ours: std::collections::BTreeSet<pid_t>,
    events: mpsc::Sender<TreeEvent>,
    nap: Duration,
    _not_send: crate::tracer::NotSend,
}

/// Seizes `root` (about to exec its program; its caller tells the daemon so, as `mosrun
/// --tree` does) and watches its descendants' execs. The root itself is never reported (it
/// stays where it is); its own exec runs on.
pub fn watch_tree(root: i32) -> Result<(TreeCtl, TreeEvents)> {
    // SAFETY: getpid has no preconditions.
    if root <= 1 || root == unsafe { libc::getpid() } {
        return Err(unsup(root, "omnode cannot watch itself or init"));
    }
    let (etx, erx) = mpsc::channel();
    let idle: Idle = Box::new(move |slots: &mut Slots| poll(slots, root));
    let tracer = Tracer::spawn_with(format!("omnode-tree-{root}"), root, Some(idle))?;
    tracer.call(move |slot| {
        let opts = libc::PTRACE_O_TRACESYSGOOD
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACECLONE;
        ptrace_req(Req::Seize, root, opts as usize).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoProcess { pid: root },
            Some(libc::EPERM) => unsup(
                root,
                "not permitted to trace it (already traced, or not root?)",
            ),
            _ => super::ferr(root, "PTRACE_SEIZE")(e),
        })?;
        slot.set(TreeState {
            root,
            members: BTreeMap::from([(root, Member::Running)]),
            ours: std::collections::BTreeSet::from_iter(
                (ppid(root) == Some(unsafe_getpid())).then_some(root),
            ),
            events: etx,
            nap: POLL_MIN,
            _not_send: std::marker::PhantomData,
        });
        Ok::<(), Error>(())
    })??;
    Ok((
        TreeCtl {
            root,
            tracer: Arc::new(tracer),
        },
        TreeEvents { rx: erx },
    ))
}

impl TreeCtl {
    pub fn root(&self) -> i32 {
        self.root
    }

    /// Lets member `pid`, stopped at its exec, run its program here; it stays watched (its
    /// own children's execs are reported).
    pub fn release(&self, pid: i32) -> Result<()> {
        self.tracer.call(move |slot| {
            let t = slot
                .get::<TreeState>()
                .ok_or_else(|| unsup(pid, "the tree watch is gone"))?;
            match t.members.get(&pid) {
                Some(Member::AtExec(_)) => {
                    t.members.insert(pid, Member::Running);
                    ptrace_req(Req::Cont, pid, 0).map_err(super::ferr(pid, "PTRACE_CONT"))
                }
                _ => Err(unsup(pid, "it is not stopped at its exec in this tree")),
            }
        })?
    }

    /// Member `pid`, stopped at its exec, stopped again at the first instruction of its new
    /// program and checked for migration like [`super::seize`] does: it leaves the tree (its
    /// children are not watched) and comes back as a [`Seized`] held by this thread. A refusal
    /// lets it run its program here, unwatched.
    pub fn take(&self, pid: i32, timeout: Duration) -> Result<Seized> {
        self.tracer.call(move |slot| {
            let t = slot
                .get::<TreeState>()
                .ok_or_else(|| unsup(pid, "the tree watch is gone"))?;
            match t.members.get(&pid) {
                Some(Member::AtExec(_)) => {
                    t.members.remove(&pid);
                    Ok(())
                }
                _ => Err(unsup(pid, "it is not stopped at its exec in this tree")),
            }
        })??;
        // from here on `pid` has a handle of its own on this thread; dropping it (a refusal,
        // an error) releases it, and the thread lets it go
        let tracer = self.tracer.sibling(pid);
        let deadline = Instant::now() + timeout;
        let (stop_start, pre_map) =
            tracer.call(move |slot| super::at_exec::stop_after_exec(slot, pid, deadline))??;
        Ok(Seized {
            pid,
            tracer,
            was_stopped: false,
            stop_start,
            collected: false,
            streamed: false,
            pre_map: Some(pre_map),
            guest: false,
            moving: true,
            tree: false,
        })
    }
}

fn ppid(pid: pid_t) -> Option<pid_t> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::procfs::status_field(&st, "PPid")?.parse().ok()
}

fn unsafe_getpid() -> pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Has `pid` ended? Seen without reaping it (WNOWAIT).
fn ended_unreaped(pid: pid_t) -> bool {
    // SAFETY: waitid with a zeroed siginfo out-parameter.
    unsafe {
        let mut si: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut si,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG | libc::__WALL,
        );
        // a tracee's stops are reported too (CLD_TRAPPED): only an end counts
        r == 0
            && si.si_pid() == pid
            && matches!(
                si.si_code,
                libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED
            )
    }
}

/// On the tracer thread, between jobs: one poll of every member.
fn poll(slots: &mut Slots, root: pid_t) -> Option<Duration> {
    let t = slots.slot(root).get::<TreeState>()?;
    let mut busy = false;
    let pids: Vec<pid_t> = t.members.keys().copied().collect();
    for pid in pids {
        match t.members.get(&pid) {
            Some(Member::AtExec(since)) => {
                if since.elapsed() > ANSWER_WAIT {
                    tracing::warn!(pid, "tree watch: its exec was not answered; it runs here");
                    t.members.insert(pid, Member::Running);
                    let _ = ptrace_req(Req::Cont, pid, 0);
                }
                continue;
            }
            Some(Member::Running) => {}
            None => continue,
        }
        for _ in 0..BURST {
            if t.ours.contains(&pid) && ended_unreaped(pid) {
                // our own child (a test's root): its end is left for our own wait
                t.members.remove(&pid);
                t.ours.remove(&pid);
                busy = true;
                break;
            }
            let mut st = 0;
            // SAFETY: plain waitpid of one traced PID.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL | libc::WNOHANG) };
            if r == 0 {
                break;
            }
            busy = true;
            if r == -1 {
                if errno().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // not ours any more (ECHILD): gone
                t.members.remove(&pid);
                break;
            }
            if !t.on_status(pid, st) {
                break;
            }
        }
    }
    if t.members.is_empty() {
        let _ = t.events.send(TreeEvent::Ended);
        drop(slots.slot(root).take::<TreeState>());
        return None;
    }
    t.nap = if busy {
        POLL_MIN
    } else {
        (t.nap * 2).min(POLL_MAX)
    };
    Some(t.nap)
}

impl TreeState {
    /// One wait status of member `pid`; false when it is not to be polled again now.
    fn on_status(&mut self, pid: pid_t, st: i32) -> bool {
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            self.members.remove(&pid);
            return false;
        }
        if !libc::WIFSTOPPED(st) {
            return true;
        }
        let cont = |sig: i32| {
            let _ = ptrace_req(Req::Cont, pid, sig as usize);
        };
        match st >> 16 {
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                if let Ok(child) = geteventmsg(pid) {
                    // it reports its own first stop (PTRACE_EVENT_STOP), continued below
                    self.members
                        .entry(child as pid_t)
                        .or_insert(Member::Running);
                }
                cont(0);
                true
            }
            libc::PTRACE_EVENT_EXEC => {
                if pid == self.root {
                    // the root stays where it is: its execs run on
                    cont(0);
                    return true;
                }
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                self.members.insert(pid, Member::AtExec(Instant::now()));
                if self.events.send(TreeEvent::Exec { pid, exe }).is_err() {
                    // nobody listens: it runs on
                    self.members.insert(pid, Member::Running);
                    cont(0);
                    return true;
                }
                false
            }
            libc::PTRACE_EVENT_STOP => {
                let sig = libc::WSTOPSIG(st);
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // a job-control stop: it stays stopped, as its shell expects
                    let _ = ptrace_req(Req::Listen, pid, 0);
                } else {
                    // a new child's first stop, or the end of a stop (SIGCONT)
                    cont(0);
                }
                true
            }
            0 => {
                // a signal: delivered, as if we were not here
                cont(libc::WSTOPSIG(st));
                true
            }
            _ => {
                cont(0);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() }) == 0
    }

    fn skip() -> bool {
        if root() {
            return false;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "needs root (ptrace of a process tree); CI must run it"
        );
        eprintln!("skipped: needs root (ptrace)");
        true
    }

    /// `sh -c 'read go; exec sh -c SCRIPT'`: the root execs a shell running `script` once a
    /// line arrives on its stdin.
    fn tree(script: &str) -> (std::process::Child, std::process::ChildStdin) {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read go; exec /bin/sh -c \"$0\"", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let go = child.stdin.take().unwrap();
        (child, go)
    }

    /// Every exec below the root is reported with its program, grandchildren too; released,
    /// each runs as if never watched and the output is that of an unwatched run.
    #[test]
    fn execs_of_children_and_grandchildren_are_reported_and_released() {
        if skip() {
            return;
        }
        let script = "/bin/echo one; /bin/sh -c '/bin/echo two; /bin/true'; /bin/echo three";
        let (child, mut go) = tree(script);
        let (ctl, events) = watch_tree(child.id() as i32).unwrap();
        go.write_all(b"go\n").unwrap();
        let mut seen = Vec::new();
        loop {
            match events.next(Duration::from_secs(10)) {
                Some(TreeEvent::Exec { pid, exe }) => {
                    seen.push(exe.file_name().unwrap().to_string_lossy().into_owned());
                    ctl.release(pid).unwrap();
                }
                Some(TreeEvent::Ended) => break,
                None => panic!("no event within 10 s; seen {seen:?}"),
            }
        }
        drop(ctl);
        let out = child.wait_with_output().unwrap();
        let plain = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert_eq!(out.stdout, plain.stdout);
        assert!(out.status.success(), "{:?}", out.status);
        // echo one, the inner sh, echo two, true; echo three unless the root's shell
        // execs its last command itself (the root's execs are not reported)
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let sh = sh.file_name().unwrap().to_string_lossy().into_owned();
        let n = |w: &str| seen.iter().filter(|s| *s == w).count();
        assert!(
            n("echo") >= 2 && n("true") == 1 && n(&sh) == 1,
            "execs seen: {seen:?}"
        );
    }

    /// A child taken at its exec stops at its program's first instruction (nothing of it ran)
    /// while its siblings go on; dropped, it runs on and the tree's output is complete.
    #[test]
    fn a_taken_child_is_stopped_at_its_entry_and_runs_on_when_dropped() {
        if skip() {
            return;
        }
        let script = "/bin/echo first; /bin/echo second";
        let (child, mut go) = tree(script);
        let (ctl, events) = watch_tree(child.id() as i32).unwrap();
        go.write_all(b"go\n").unwrap();
        let mut took = false;
        loop {
            match events.next(Duration::from_secs(10)) {
                Some(TreeEvent::Exec { pid, .. }) if !took => {
                    took = true;
                    let s = ctl.take(pid, Duration::from_secs(5)).unwrap();
                    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                    assert!(st.contains("State:\tt"), "not in a tracing stop:\n{st}");
                    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
                    assert!(!maps.contains("[heap]"), "the program already ran:\n{maps}");
                    drop(s);
                }
                Some(TreeEvent::Exec { pid, .. }) => ctl.release(pid).unwrap(),
                Some(TreeEvent::Ended) => break,
                None => panic!("no event within 10 s"),
            }
        }
        assert!(took);
        drop(ctl);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        assert_eq!(out.stdout, b"first\nsecond\n");
    }
}
