//! Freeze of a process tree: a process with all its descendants, in one tree image.
//!
//! Order: find the tree (/proc/PID/task/*/children) and refuse what thaw could not rebuild
//! before touching anything (another session, a process group led from outside the tree, a
//! zombie killed by a signal); seize every live process (each on its own tracer thread, as a
//! single freeze does); find the tree again and refuse if it changed meanwhile; collect each
//! one; then, with all of them stopped, the fds that several processes share: pipes whose
//! every end is inside the tree (their waiting bytes are copied with tee, the pipe keeps
//! them), files with one shared offset, and stdio or external fds inherited from the root.
//! Anything else shared between processes is refused. Only once the whole image is written
//! are the processes ended; any refusal or failure before that releases every one of them
//! untouched.

use super::*;
use crate::image::{Shared, SharedEnd, SharedKind, TreeImage, TreeProc};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What [`freeze_tree`] did.
#[derive(Debug, Clone)]
pub struct TreeFreezeReport {
    pub root: i32,
    /// Every process of the tree, parents first (zombies included).
    pub pids: Vec<i32>,
    pub zombies: usize,
    pub image_bytes: u64,
    pub page_bytes: u64,
    /// How long the first process was stopped (the whole tree was stopped at most that long).
    pub frozen: Duration,
}

fn stat_of(pid: pid_t) -> Result<Vec<String>> {
    let s = proc_read(pid, "stat")?;
    let f = stat_fields(&s).map_err(ferr(pid, "parsing stat"))?;
    if f.len() < 52 {
        return Err(unsup(pid, format!("cannot parse /proc/{pid}/stat")));
    }
    Ok(f)
}

fn num(pid: pid_t, f: &[String], n: usize) -> Result<i64> {
    f[n - 1]
        .parse()
        .map_err(|_| unsup(pid, format!("cannot parse field {n} of /proc/{pid}/stat")))
}

fn comm(pid: pid_t) -> String {
    read_to_string(&format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The children of `pid` (of every one of its threads).
fn children(pid: pid_t) -> Result<Vec<pid_t>> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoProcess { pid }
        } else {
            ferr(pid, format!("listing {dir}"))(e)
        }
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        let tid = e.file_name().to_string_lossy().into_owned();
        match read_to_string(&format!("{dir}/{tid}/children")) {
            Ok(s) => {
                for k in s.split_whitespace() {
                    out.push(
                        k.parse().map_err(|_| {
                            unsup(pid, format!("cannot parse {dir}/{tid}/children"))
                        })?,
                    );
                }
            }
            // a thread that ended meanwhile has no children
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ferr(pid, format!("reading {dir}/{tid}/children"))(e)),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tree under `root`, parents first, with the refusals that need no stop.
pub(super) fn discover(root: pid_t) -> Result<Vec<TreeProc>> {
    let rs = stat_of(root)?;
    let (root_pgid, root_sid) = (num(root, &rs, 5)? as i32, num(root, &rs, 6)? as i32);
    if rs[2].starts_with('Z') || rs[2].starts_with('X') {
        return Err(unsup(root, "it has already exited (zombie)"));
    }
    let mut procs = vec![TreeProc {
        pid: root,
        ppid: 0,
        pgid: root_pgid,
        zombie: None,
    }];
    let mut i = 0;
    while i < procs.len() {
        let p = procs[i].clone();
        i += 1;
        if p.zombie.is_some() {
            continue;
        }
        for k in children(p.pid)? {
            let f = match stat_of(k) {
                Ok(f) => f,
                Err(Error::NoProcess { .. }) => {
                    return Err(unsup(
                        root,
                        format!("its descendant {k} ended while the tree was read; try again"),
                    ));
                }
                Err(e) => return Err(e),
            };
            let state = f[2].as_str();
            let (pgid, sid) = (num(k, &f, 5)? as i32, num(k, &f, 6)? as i32);
            let zombie = if state.starts_with('Z') {
                let st = num(k, &f, 52)? as i32;
                if libc::WIFSIGNALED(st) {
                    return Err(unsup(
                        root,
                        format!(
                            "its descendant {k} ({}) ended by signal {} and waits to be reaped; a zombie killed by a signal cannot be made again yet",
                            comm(k),
                            libc::WTERMSIG(st)
                        ),
                    ));
                }
                Some(st)
            } else if state.starts_with('X') {
                continue;
            } else {
                None
            };
            if zombie.is_none() && sid != root_sid {
                return Err(unsup(
                    root,
                    format!(
                        "its descendant {k} ({}) is in session {sid}, not in the root's session {root_sid} (a tree spanning sessions cannot be rebuilt)",
                        comm(k)
                    ),
                ));
            }
            procs.push(TreeProc {
                pid: k,
                ppid: p.pid,
                pgid: if zombie.is_some() { p.pgid } else { pgid },
                zombie,
            });
        }
    }
    for p in &procs {
        if p.zombie.is_none()
            && p.pgid != root_pgid
            && !procs.iter().any(|q| q.pid == p.pgid && q.zombie.is_none())
        {
            return Err(unsup(
                root,
                format!(
                    "its descendant {} ({}) is in process group {}, which is neither the root's ({root_pgid}) nor led by a process of the tree",
                    p.pid,
                    comm(p.pid),
                    p.pgid
                ),
            ));
        }
    }
    Ok(procs)
}

/// Freezes `root` and all its descendants into `out` (a tree image, see
/// [`crate::image::TreeImage`]). All or nothing: every process is seized and checked
/// before any is ended; on any refusal or error every process runs on as it was. Without
/// `leave_running` all of them are killed once the whole image is written and flushed.
pub fn freeze_tree<W: Write>(
    root: i32,
    mut out: W,
    opts: &FreezeOptions,
) -> Result<TreeFreezeReport> {
    // SAFETY: getpid has no preconditions.
    if root <= 1 || root == unsafe { libc::getpid() } {
        return Err(unsup(root, "omnode cannot freeze itself or init"));
    }
    if !opts.leave_running {
        can_thaw_here().map_err(|reason| unsup(root, reason))?;
    }
    let procs = discover(root)?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    if procs.iter().any(|p| p.pid == me) {
        return Err(unsup(root, "omnode cannot freeze a tree it belongs to"));
    }
    // a descendant that ends meanwhile: the tree changed, nothing was changed
    let ended = |pid: pid_t, e: Error| {
        let st = read_to_string(&format!("/proc/{pid}/stat")).unwrap_or_default();
        let over = st.is_empty()
            || st
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']));
        if pid != root && (over || matches!(e, Error::NoProcess { .. })) {
            unsup(
                root,
                format!(
                    "its descendant {pid} ended while the tree was being frozen; nothing was changed, try again"
                ),
            )
        } else {
            e
        }
    };
    let mut seized: Vec<Seized> = Vec::new();
    for p in procs.iter().filter(|p| p.zombie.is_none()) {
        // dropping `seized` on an error releases the ones already stopped
        seized.push(
            seize_with(p.pid, DEFAULT_STOP_TIMEOUT, true, false, false, true)
                .map_err(|e| ended(p.pid, e))?,
        );
    }
    let again = discover(root)?;
    if again != procs {
        return Err(unsup(
            root,
            "the tree changed while it was being stopped (a process started or ended); nothing was changed, try again",
        ));
    }
    let mut imgs = Vec::with_capacity(seized.len());
    for s in seized.iter_mut() {
        let pid = s.pid();
        imgs.push(s.collect().map_err(|e| ended(pid, e))?);
    }
    let shared = shared_fds(&procs, &imgs)?;
    let tree = TreeImage { procs, shared };
    tree.check().map_err(Error::Image)?;

    let mut image_bytes = tree.write_head(&mut out).map_err(Error::Stream)?;
    let mut page_bytes = 0;
    for (s, img) in seized.iter_mut().zip(&imgs) {
        let st = s.stream(img, &mut out)?;
        image_bytes += st.image_bytes;
        page_bytes += st.page_bytes;
    }
    out.flush().map_err(Error::Stream)?;
    let frozen = seized.first().map(|s| s.frozen_for()).unwrap_or_default();
    let ending = if opts.leave_running {
        Ending::Release
    } else {
        Ending::Kill
    };
    let mut first_err = None;
    for s in seized {
        if let Err(e) = s.finish(ending) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(TreeFreezeReport {
        root,
        pids: tree.procs.iter().map(|p| p.pid).collect(),
        zombies: tree.procs.iter().filter(|p| p.zombie.is_some()).count(),
        image_bytes,
        page_bytes,
        frozen,
    })
}

/// One fd of a process of the tree, as the tree sees it.
struct Ent {
    pid: pid_t,
    fd: i32,
    link: String,
    flags: u32,
    class: Class,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// Attached at thaw from what the caller names (stdio of the root, --fd N=...).
    Outside,
    /// Reopened by path (its offset is its own unless shared).
    Path,
    /// Follows another fd of its own process.
    Follows,
    /// Made again inside the process (pipes inside it, eventfds, ...): must not be shared.
    Inner,
}

fn kcmp_same(a: (pid_t, i32), b: (pid_t, i32)) -> Result<bool> {
    // SAFETY: kcmp with integer arguments.
    let r = unsafe {
        libc::syscall(libc::SYS_kcmp, a.0, b.0, 0 /* KCMP_FILE */, a.1, b.1)
    };
    if r < 0 {
        return Err(ferr(
            a.0,
            format!("kcmp of fd {} of {} and fd {} of {}", a.1, a.0, b.1, b.0),
        )(io::Error::last_os_error()));
    }
    Ok(r == 0)
}

/// Pipe links (`pipe:[N]`) held by processes outside `tree` (and outside this process).
/// Fails closed: a process whose fds cannot be read is an error, not "holds nothing".
fn pipes_held_outside(
    tree: &BTreeSet<pid_t>,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, pid_t>> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut held = BTreeMap::new();
    let rd = std::fs::read_dir("/proc").map_err(ferr(0, "listing /proc"))?;
    for e in rd {
        let e = e.map_err(ferr(0, "listing /proc"))?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<pid_t>().ok()) else {
            continue;
        };
        if pid == me || tree.contains(&pid) {
            continue;
        }
        let dir = format!("/proc/{pid}/fd");
        let fds = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // ended meanwhile
            Err(e) => {
                // a zombie has no fd table to read
                let st = read_to_string(&format!("/proc/{pid}/stat")).unwrap_or_default();
                if st
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                {
                    continue;
                }
                return Err(unsup(
                    pid,
                    format!(
                        "cannot check whether process {pid} holds a pipe of the tree ({dir}: {e})"
                    ),
                ));
            }
        };
        for f in fds.flatten() {
            if let Ok(l) = std::fs::read_link(f.path()) {
                let l = l.to_string_lossy().into_owned();
                if wanted.contains(&l) {
                    held.entry(l).or_insert(pid);
                }
            }
        }
    }
    Ok(held)
}

/// With every process stopped: what their fds share, and the refusals for what cannot be
/// shared after a thaw.
fn shared_fds(procs: &[TreeProc], imgs: &[ProcessImage]) -> Result<Vec<Shared>> {
    let root = procs[0].pid;
    let mut ents = Vec::new();
    for img in imgs {
        let pid = img.pid;
        for f in &img.fds {
            let path = format!("/proc/{pid}/fd/{}", f.fd);
            let link = std::fs::read_link(&path)
                .map_err(ferr(pid, format!("reading {path}")))?
                .to_string_lossy()
                .into_owned();
            let info = read_to_string(&format!("/proc/{pid}/fdinfo/{}", f.fd))
                .map_err(ferr(pid, format!("reading /proc/{pid}/fdinfo/{}", f.fd)))?;
            let (_, flags) = fdinfo(&info)
                .ok_or_else(|| unsup(pid, format!("cannot parse /proc/{pid}/fdinfo/{}", f.fd)))?;
            let class = match f.kind {
                FdKind::Stdio { .. } | FdKind::External { .. } => Class::Outside,
                FdKind::Path { .. } => Class::Path,
                FdKind::SharedWith { .. } => Class::Follows,
                _ => Class::Inner,
            };
            ents.push(Ent {
                pid,
                fd: f.fd,
                link,
                flags,
                class,
            });
        }
    }
    let pipe_of = |l: &str| l.starts_with("pipe:[");
    let mut shared = Vec::new();

    // --- pipes between processes of the tree: every end inside it, or carried as before
    let outside_pipes: BTreeSet<String> = ents
        .iter()
        .filter(|e| e.class == Class::Outside && pipe_of(&e.link))
        .map(|e| e.link.clone())
        .collect();
    let tree_pids: BTreeSet<pid_t> = procs.iter().map(|p| p.pid).collect();
    let held = pipes_held_outside(&tree_pids, &outside_pipes)?;
    let mut in_tree: BTreeSet<String> = BTreeSet::new();
    for link in &outside_pipes {
        let ends: Vec<&Ent> = ents
            .iter()
            .filter(|e| e.class == Class::Outside && &e.link == link)
            .collect();
        let write = |e: &Ent| e.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        if held.contains_key(link) {
            // an end outside the tree: as for one process, it is attached at thaw to what the
            // caller names; bytes waiting for a reader inside the tree would be lost
            for e in ends.iter().filter(|e| !write(e) && e.fd > 2) {
                let (_, data) = super::inproc::pipe_contents(e.fd, e.pid)
                    .map_err(ferr(e.pid, format!("reading what waits in fd {}", e.fd)))?;
                if !data.is_empty() {
                    return Err(unsup(
                        e.pid,
                        format!(
                            "fd {} is {link}, also held by process {} outside the tree, with {} bytes not read yet, which thaw could not give back",
                            e.fd,
                            held[link],
                            data.len()
                        ),
                    ));
                }
            }
            continue;
        }
        in_tree.insert(link.clone());
        let (size, data) = match ends.iter().find(|e| !write(e)) {
            Some(r) => super::inproc::pipe_contents(r.fd, r.pid).map_err(ferr(
                r.pid,
                format!("reading what waits in fd {} ({link})", r.fd),
            ))?,
            // no reader anywhere: nothing can read what waits there
            None => (65536, Vec::new()),
        };
        shared.push(Shared {
            kind: SharedKind::Pipe { size, data },
            ends: ends
                .iter()
                .map(|e| SharedEnd {
                    pid: e.pid,
                    fd: e.fd,
                    write: write(e),
                    flags: e.flags,
                })
                .collect(),
        });
    }

    // --- every other description held by more than one process
    let mut by_link: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in ents.iter().enumerate() {
        if e.class != Class::Follows && !in_tree.contains(&e.link) {
            by_link.entry(e.link.as_str()).or_default().push(i);
        }
    }
    // groups of one description: indices into ents
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for idx in by_link.values() {
        let mut local: Vec<Vec<usize>> = Vec::new();
        for &i in idx {
            let e = &ents[i];
            let mut put = false;
            for g in local.iter_mut() {
                let h = &ents[g[0]];
                if h.pid != e.pid && kcmp_same((h.pid, h.fd), (e.pid, e.fd))? {
                    g.push(i);
                    put = true;
                    break;
                }
                if h.pid == e.pid && g.iter().any(|&j| ents[j].pid != e.pid) {
                    // another fd of the same process in a group: compare with a foreign one
                    let o = g.iter().copied().find(|&j| ents[j].pid != e.pid).unwrap();
                    if kcmp_same((ents[o].pid, ents[o].fd), (e.pid, e.fd))? {
                        g.push(i);
                        put = true;
                        break;
                    }
                }
            }
            if !put {
                local.push(vec![i]);
            }
        }
        groups.extend(local.into_iter().filter(|g| {
            g.iter()
                .map(|&i| ents[i].pid)
                .collect::<BTreeSet<_>>()
                .len()
                > 1
        }));
    }
    let mut covered: BTreeSet<(pid_t, i32)> = BTreeSet::new();
    for g in &groups {
        let first = &ents[g[0]];
        let classes: BTreeSet<_> = g.iter().map(|&i| format!("{:?}", ents[i].class)).collect();
        let who = g
            .iter()
            .map(|&i| format!("fd {} of {}", ents[i].fd, ents[i].pid))
            .collect::<Vec<_>>()
            .join(", ");
        if g.iter().all(|&i| ents[i].class == Class::Path) {
            let img = imgs.iter().find(|m| m.pid == first.pid).expect("collected");
            let Some(FdKind::Path {
                path,
                flags,
                pos,
                is_dir,
            }) = img.fds.iter().find(|f| f.fd == first.fd).map(|f| &f.kind)
            else {
                unreachable!("class Path");
            };
            if *is_dir {
                return Err(unsup(
                    first.pid,
                    format!(
                        "{who} are one open directory ({path}), which a thawed tree cannot share yet"
                    ),
                ));
            }
            shared.push(Shared {
                kind: SharedKind::File {
                    path: path.clone(),
                    flags: *flags,
                    pos: *pos,
                },
                ends: g
                    .iter()
                    .map(|&i| SharedEnd {
                        pid: ents[i].pid,
                        fd: ents[i].fd,
                        write: false,
                        flags: ents[i].flags,
                    })
                    .collect(),
            });
            for &i in g {
                covered.insert((ents[i].pid, ents[i].fd));
            }
        } else if g.iter().all(|&i| ents[i].class == Class::Outside) {
            // attached at thaw from the root's: the root must hold it at the same number
            for &i in g {
                let e = &ents[i];
                if e.pid != root && !g.iter().any(|&j| ents[j].pid == root && ents[j].fd == e.fd) {
                    return Err(unsup(
                        e.pid,
                        format!(
                            "its fd {} ({}) is shared with another process ({who}) but is not the root's fd {}: thaw could not attach it (not supported yet)",
                            e.fd, e.link, e.fd
                        ),
                    ));
                }
                covered.insert((e.pid, e.fd));
            }
        } else {
            return Err(unsup(
                first.pid,
                format!(
                    "{who} are one open file ({}, as {}), which a thawed tree cannot share yet",
                    first.link,
                    classes.into_iter().collect::<Vec<_>>().join("/")
                ),
            ));
        }
    }
    // an outside fd of a descendant that is not the root's own: thaw has nothing to attach
    for e in &ents {
        if e.class == Class::Outside
            && e.pid != root
            && !in_tree.contains(&e.link)
            && !covered.contains(&(e.pid, e.fd))
        {
            return Err(unsup(
                e.pid,
                format!(
                    "its fd {} ({}) leads outside the tree and is not the root's fd {}: thaw could not attach it (not supported yet)",
                    e.fd, e.link, e.fd
                ),
            ));
        }
    }
    Ok(shared)
}
