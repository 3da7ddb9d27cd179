//! The magic folders of `/mfs` on this node: which node `here`, `home`, `magic`, `lastexec`
//! and `selected` stand for, for the process that reads them (see `mfs::magic` for what each
//! means). Owns the per-process records behind `magic` and `selected`; reads the migrator's
//! process table (guests here, ours elsewhere) and `/proc`, nothing else.
//! Must not know: FUSE or the mfs protocol.
//!
//! Who is asking: the kernel names the calling thread. That may be
//! - a process of this node that never moved: here = home = this node;
//! - a guest running here (moved in from its home): here = this node, home = its home;
//! - a deputy thread of this daemon running a path call (open) at home for one of our
//!   processes that runs elsewhere ([`acting_for`]): here = the node that process runs on,
//!   home = this node; its records are those of its home PID.
//!
//! Records are keyed by PID and the process's start time, so a reused PID starts afresh.
//! `lastexec`: an exec runs at home (a moved process that execs comes home for it), so it is
//! home — except after a remote start (`omnode run -jN`: moved to N as soon as it exec'd),
//! which counts as an exec on N ([`started_on`]) until the process execs again. A later exec is
//! told by a change of `/proc/PID/auxv` (written by every exec: entry point, random bytes'
//! address, …; with address randomisation off, a second exec of the same program may keep it,
//! and N then stays the answer). The node a moved process runs on learns it from the offer
//! ([`guest_lastexec`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use mfs::magic::Magic;
use runtime::NodeId;

/// The environment variable that selects `/mfs/selected` for a process and its children.
pub const SELECTED_ENV: &str = "OMNODE_MFS_SELECTED";
/// Records kept before the ones of ended processes are swept out.
const SWEEP_AT: usize = 4096;
/// How far up its ancestors a selection is looked for.
const MAX_DEPTH: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A remote start: the node, and the process's start time and auxv. The auxv is read at the
/// first question ([`lastexec_of`]), not when the exec is seen: the kernel sets the new
/// program's `/proc/PID/exe` before its auxv, and by the first question (a file call of the
/// program, or its freeze for the move) the exec is over.
struct ExecRecord {
    start: u64,
    auxv: Option<Vec<u8>>,
    node: NodeId,
}

/// Processes of this node that were started remotely (see [`started_on`]).
fn execs() -> &'static Mutex<HashMap<u32, ExecRecord>> {
    static E: OnceLock<Mutex<HashMap<u32, ExecRecord>>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Guests running here (their local PID) and the node of their last exec.
fn guest_execs() -> &'static Mutex<HashMap<u32, NodeId>> {
    static G: OnceLock<Mutex<HashMap<u32, NodeId>>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(HashMap::new()))
}

fn auxv(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/auxv")).ok()
}

/// Process `pid` of this node was started remotely: it exec'd and was moved to `node` at once
/// (`omnode run -jN`). Its `/mfs/lastexec` is `node` until it execs again.
pub fn started_on(pid: u32, node: NodeId) {
    let Some((start, _)) = stat(pid) else {
        return; // gone: nothing to remember
    };
    let mut e = lock(execs());
    if e.len() >= SWEEP_AT {
        e.retain(|p, r| stat(*p).is_some_and(|(st, _)| st == r.start));
    }
    e.insert(
        pid,
        ExecRecord {
            start,
            auxv: None,
            node,
        },
    );
}

/// The remote start of `pid` did not happen: it runs here, where it exec'd.
pub fn started_here(pid: u32) {
    lock(execs()).remove(&pid);
}

/// Where process `pid` of this node last exec'd, when that is not here.
pub fn lastexec_of(pid: u32) -> Option<NodeId> {
    let mut e = lock(execs());
    let r = e.get_mut(&pid)?;
    if stat(pid).is_none_or(|(st, _)| st != r.start) {
        return None;
    }
    let now = auxv(pid)?;
    match &r.auxv {
        None => r.auxv = Some(now),
        Some(a) if *a != now => return None, // it exec'd again
        Some(_) => {}
    }
    Some(r.node)
}

/// While alive: the guest with local PID `pid` last exec'd on `node` (from its offer).
pub struct GuestExec(u32);

impl Drop for GuestExec {
    fn drop(&mut self) {
        lock(guest_execs()).remove(&self.0);
    }
}

/// Records a guest's lastexec node (none: its home) until the guard is dropped.
pub fn guest_lastexec(pid: u32, node: Option<NodeId>) -> GuestExec {
    if let Some(n) = node {
        lock(guest_execs()).insert(pid, n);
    }
    GuestExec(pid)
}

/// Deputy threads of this daemon (thread id) and the home PID each acts for.
fn deputies() -> &'static Mutex<HashMap<u32, i32>> {
    static D: OnceLock<Mutex<HashMap<u32, i32>>> = OnceLock::new();
    D.get_or_init(|| Mutex::new(HashMap::new()))
}

/// While alive, the calling thread's file calls are those of home process `pid` (a moved
/// process whose path calls this thread runs at home).
pub struct Acting(u32);

impl Drop for Acting {
    fn drop(&mut self) {
        lock(deputies()).remove(&self.0);
    }
}

/// The calling thread acts for home process `pid` until the guard is dropped.
pub fn acting_for(pid: i32) -> Acting {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    lock(deputies()).insert(tid, pid);
    Acting(tid)
}

/// A process's start time since boot in clock ticks (field 22 of /proc/PID/stat), and its
/// parent. None: the process is gone (or unreadable: no record applies — fail closed to
/// "never moved, nothing selected").
fn stat(pid: u32) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... starttime is field 22 overall, index 19 here.
    Some((f.get(19)?.parse().ok()?, f.get(1)?.parse().ok()?))
}

/// Now, in the clock ticks of [`stat`]'s start times.
fn now_ticks() -> Option<u64> {
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((secs * hz.max(1) as f64) as u64)
}

/// `OMNODE_MFS_SELECTED` in the environment `pid` started with.
fn env_selected(pid: u32) -> Option<NodeId> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let v = kv
            .strip_prefix(SELECTED_ENV.as_bytes())?
            .strip_prefix(b"=")?;
        std::str::from_utf8(v).ok()?.trim().parse().ok()
    })
}

/// The process the records are about, and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subject {
    pid: u32,
    here: NodeId,
    home: NodeId,
    lastexec: NodeId,
}

#[derive(Debug, Clone, Copy)]
struct Selection {
    node: NodeId,
    /// The selected process's start time (tells it from a later process with its PID).
    start: u64,
    /// When it was made: children started later inherit it.
    at: u64,
}

/// This node's answers.
pub struct Resolver {
    local: NodeId,
    created: Mutex<HashMap<u32, (u64, NodeId)>>,
    selected: Mutex<HashMap<u32, Selection>>,
}

impl Resolver {
    pub fn new(local: NodeId) -> Resolver {
        Resolver {
            local,
            created: Mutex::new(HashMap::new()),
            selected: Mutex::new(HashMap::new()),
        }
    }

    fn subject(&self, pid: u32) -> Subject {
        let rows = crate::migrator::global()
            .map(|m| m.rows())
            .unwrap_or_default();
        let acting = lock(deputies()).get(&pid).copied();
        if let Some(home_pid) = acting {
            let here = rows
                .iter()
                .find(|r| r.pid == home_pid && r.home == self.local)
                .map_or(self.local, |r| r.node);
            return Subject {
                pid: home_pid as u32,
                here,
                home: self.local,
                lastexec: lastexec_of(home_pid as u32).unwrap_or(self.local),
            };
        }
        if let Some(r) = rows.iter().find(|r| {
            r.local_pid == Some(pid as i32) && r.node == self.local && r.home != self.local
        }) {
            return Subject {
                pid,
                here: self.local,
                home: r.home,
                lastexec: lock(guest_execs()).get(&pid).copied().unwrap_or(r.home),
            };
        }
        // One of ours; its parked home shell (if it moved) stands for where it runs.
        let here = rows
            .iter()
            .find(|r| r.pid == pid as i32 && r.home == self.local)
            .map_or(self.local, |r| r.node);
        Subject {
            pid,
            here,
            home: self.local,
            lastexec: lastexec_of(pid).unwrap_or(self.local),
        }
    }

    /// `omnode mfs select NODE` for `pid`: its `/mfs/selected` and that of the children it
    /// starts from now on.
    pub fn select(&self, pid: u32, node: NodeId) -> Result<(), String> {
        let (start, _) = stat(pid).ok_or_else(|| format!("no process {pid}"))?;
        let at = now_ticks().ok_or("cannot read /proc/uptime")?;
        let mut sel = lock(&self.selected);
        if sel.len() >= SWEEP_AT {
            sel.retain(|p, s| stat(*p).is_some_and(|(st, _)| st == s.start));
        }
        sel.insert(pid, Selection { node, start, at });
        Ok(())
    }

    /// The nearest choice: the process's own selection, then its own environment, then a
    /// selection of an ancestor made before the process started.
    fn selected(&self, s: Subject) -> Option<NodeId> {
        let sel = lock(&self.selected);
        let (start, mut pid) = stat(s.pid)?;
        if let Some(x) = sel.get(&s.pid).filter(|x| x.start == start) {
            return Some(x.node);
        }
        if let Some(n) = env_selected(s.pid) {
            return Some(n);
        }
        // `below`: the start of the chain's process just below `pid` — it must have been
        // started (forked) after the selection of `pid` to inherit it.
        let mut below = start;
        for _ in 0..MAX_DEPTH {
            if sel.is_empty() || pid <= 1 {
                break;
            }
            let Some((pstart, ppid)) = stat(pid) else {
                break;
            };
            if let Some(x) = sel.get(&pid).filter(|x| x.start == pstart && below >= x.at) {
                return Some(x.node);
            }
            below = pstart;
            pid = ppid;
        }
        None
    }
}

impl mfs::magic::Resolver for Resolver {
    fn resolve(&self, which: Magic, pid: u32) -> NodeId {
        if pid == 0 {
            return self.local;
        }
        let s = self.subject(pid);
        match which {
            Magic::Here => s.here,
            Magic::Home => s.home,
            Magic::LastExec => s.lastexec,
            Magic::Magic => {
                let rec = lock(&self.created).get(&s.pid).copied();
                match rec {
                    Some((start, node)) if stat(s.pid).is_some_and(|(st, _)| st == start) => node,
                    _ => s.here,
                }
            }
            Magic::Selected => self.selected(s).unwrap_or(s.here),
        }
    }

    fn created(&self, pid: u32, node: NodeId) {
        let s = self.subject(pid);
        let Some((start, _)) = stat(s.pid) else {
            return;
        };
        let mut c = lock(&self.created);
        if c.len() >= SWEEP_AT {
            c.retain(|p, (st, _)| stat(*p).is_some_and(|(now, _)| now == *st));
        }
        c.insert(s.pid, (start, node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfs::magic::Resolver as _;

    #[test]
    fn a_process_that_never_moved_sees_this_node_everywhere_until_it_creates_or_selects() {
        let r = Resolver::new(4);
        let me = std::process::id();
        for m in Magic::ALL {
            assert_eq!(r.resolve(m, me), 4, "{m:?}");
        }
        r.created(me, 2);
        assert_eq!(r.resolve(Magic::Magic, me), 2);
        assert_eq!(r.resolve(Magic::Here, me), 4);
        r.select(me, 3).unwrap();
        assert_eq!(r.resolve(Magic::Selected, me), 3);
        // Another process (our parent, started before the selection) is not affected.
        let parent = stat(me).unwrap().1;
        assert_eq!(r.resolve(Magic::Selected, parent), 4);
        assert_eq!(r.resolve(Magic::Magic, parent), 4);
        assert!(r.select(u32::MAX - 1, 3).is_err());
    }

    #[test]
    fn a_selection_reaches_children_started_after_it_and_a_childs_environment_is_nearer() {
        let r = Resolver::new(1);
        let me = std::process::id();
        let before = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // Start times are in clock ticks: let one pass between the first child and the
        // selection, and between the selection and the second child.
        std::thread::sleep(std::time::Duration::from_millis(30));
        r.select(me, 2).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let after = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let with_env = std::process::Command::new("sleep")
            .arg("5")
            .env(SELECTED_ENV, "7")
            .spawn()
            .unwrap();
        let mut kids = [before, after, with_env];
        // spawn returns once the kernel let go of the parent's memory in execve, a moment
        // before it has set up the new program's environment: wait until /proc shows it
        for k in &kids {
            let t0 = std::time::Instant::now();
            while std::fs::read(format!("/proc/{}/environ", k.id())).is_ok_and(|e| e.is_empty())
                && t0.elapsed() < std::time::Duration::from_secs(5)
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let got: Vec<NodeId> = kids
            .iter()
            .map(|k| r.resolve(Magic::Selected, k.id()))
            .collect();
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        // Before the selection: none; after: the parent's; its own environment is nearer.
        assert_eq!(got, [1, 2, 7]);
    }

    /// A remote start counts as an exec on the node it went to, until the process really
    /// execs again (here: a shell that execs sleep when told to).
    #[test]
    fn a_remote_start_is_lastexec_until_the_next_exec() {
        use std::io::Write;
        let r = Resolver::new(1);
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = sh.id();
        assert_eq!(
            r.resolve(Magic::LastExec, pid),
            1,
            "never started elsewhere"
        );
        started_on(pid, 3);
        assert_eq!(r.resolve(Magic::LastExec, pid), 3);
        assert_eq!(r.resolve(Magic::Home, pid), 1);
        sh.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let execd = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        let after = r.resolve(Magic::LastExec, pid);
        let _ = sh.kill();
        let _ = sh.wait();
        assert!(execd, "sh did not exec sleep");
        assert_eq!(after, 1, "it exec'd here since");
        // A guest: its offer's node, and its home when the offer had none.
        let me = std::process::id();
        {
            let _g = guest_lastexec(me, Some(2));
            assert_eq!(lock(guest_execs()).get(&me), Some(&2));
        }
        assert!(
            lock(guest_execs()).get(&me).is_none(),
            "the guard forgets it"
        );
    }

    #[test]
    fn a_deputy_thread_answers_for_the_process_it_acts_for() {
        let r = Resolver::new(1);
        let me = std::process::id();
        r.created(me, 3);
        let seen = std::thread::spawn(move || {
            let _g = acting_for(me as i32);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            r.resolve(Magic::Magic, tid)
        })
        .join()
        .unwrap();
        assert_eq!(seen, 3, "the deputy thread sees its process's record");
        assert!(lock(deputies()).is_empty(), "the guard unregisters");
    }
}
