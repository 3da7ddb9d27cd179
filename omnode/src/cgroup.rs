//! This node's own load: what the daemon's cgroup (v1 `cpu` / `cpuset` / `memory`, or v2)
//! lets it use and how busy that cgroup is; the whole machine when the daemon runs in the
//! root cgroup.
//!
//! [`Scope::detect`] reads `/proc/self/mountinfo` and `/proc/self/cgroup` once, at start, and
//! resolves the files to read; [`Scope::sample`] reads them each tick:
//!
//! - runnable: threads in state `R` among the cgroup's tasks (v1 `tasks`, v2
//!   `cgroup.threads`), the sampling thread itself not counted; the machine's
//!   `procs_running` (minus the sampler) in the root cgroup;
//! - CPUs: the cgroup's cpuset (`cpuset.effective_cpus`, v2 `cpuset.cpus.effective`), else
//!   the CPUs this process may run on (`Cpus_allowed_list`);
//! - capacity: the lowest CFS quota / period (v1 `cpu.cfs_quota_us`, v2 `cpu.max`) of the
//!   cgroup and its ancestors, at most the CPU count;
//! - memory: the lowest memory limit of the cgroup and its ancestors (v1
//!   `memory.limit_in_bytes`, v2 `memory.max`) when below the machine's, and the usage
//!   without reclaimable file cache; else `/proc/meminfo`;
//! - speed: `cpu MHz` (else `bogomips`) of `/proc/cpuinfo`.
//!
//! Every figure comes from a file that was read and parsed; a file that cannot be read or
//! parsed makes the whole sample an [`Error`] naming the file, never a default that would
//! look like a real figure (the load monitor then advertises no load at all).
//!
//! Processes the daemon starts (guests included) inherit its cgroup, so they are counted and
//! capped with it.

use std::path::{Path, PathBuf};

use balance::load::Load;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {what} from {text:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_err(path: &Path, what: &'static str, text: &str) -> Error {
    Error::Parse {
        path: path.to_owned(),
        what,
        text: text.chars().take(80).collect(),
    }
}

/// One cgroup hierarchy mounted in this mount namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Where it is mounted (e.g. `/sys/fs/cgroup/cpu`).
    pub point: PathBuf,
    /// The cgroup path of the mount's root (`/` unless a sub-tree is bind-mounted).
    pub root: String,
    /// v1 controllers (and `name=` options); empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup mounts listed in a `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or("");
            let (root, point) = (unescape(pre.get(3)?), unescape(pre.get(4)?));
            match fstype {
                "cgroup2" => Some(Mount {
                    point: point.into(),
                    root,
                    controllers: Vec::new(),
                    v2: true,
                }),
                "cgroup" => Some(Mount {
                    point: point.into(),
                    root,
                    controllers: opts.split(',').map(String::from).collect(),
                    v2: false,
                }),
                _ => None,
            }
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..=i + 3]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's membership from a `/proc/self/cgroup` text: `(v1 controllers, path)` per
/// hierarchy, the v2 one with no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrl.is_empty() {
                Vec::new()
            } else {
                ctrl.split(',').map(String::from).collect()
            };
            Some((ctrls, path.to_string()))
        })
        .collect()
}

/// Number of CPUs in a list like `0-3,8,10-11`; None when it does not parse.
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    let mut n = 0u32;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                n = n.checked_add(b - a + 1)?;
            }
            None => {
                let _: u32 = part.trim().parse().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// A cgroup directory of one controller, as seen in this mount namespace, and the
/// directories of its ancestors up to the mount point (self first).
#[derive(Debug, Clone, PartialEq)]
struct Dir {
    path: PathBuf,
    ancestors: Vec<PathBuf>,
}

impl Dir {
    /// The directory of cgroup `path` in `mount`, or None if `path` is outside the mount
    /// (another cgroup namespace) or is the mount's root (the machine, for our purposes).
    fn of(mount: &Mount, path: &str) -> Option<Dir> {
        let rel = if mount.root == "/" {
            path.strip_prefix('/')?
        } else {
            path.strip_prefix(mount.root.as_str())?
                .trim_start_matches('/')
        };
        let rel = rel.trim_end_matches('/');
        if rel.is_empty() {
            return None;
        }
        let full = mount.point.join(rel);
        let mut ancestors = Vec::new();
        let mut p = full.clone();
        loop {
            ancestors.push(p.clone());
            if p == mount.point || !p.pop() || !p.starts_with(&mount.point) {
                break;
            }
        }
        Some(Dir {
            path: full,
            ancestors,
        })
    }
}

/// Which files measure this node: a cgroup's, or the machine's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scope {
    /// Task list of the cgroup whose runnable threads are this node's load (v1 `tasks` of
    /// the `cpu` cgroup, else of the `cpuset` one; v2 `cgroup.threads`). None: the machine.
    tasks: Option<PathBuf>,
    /// (quota file, period file or None for v2 `cpu.max`) per level, self first.
    quotas: Vec<(PathBuf, Option<PathBuf>)>,
    /// The cpuset's effective CPU list. None: `Cpus_allowed_list` of this process.
    cpuset: Option<PathBuf>,
    /// (limit file, usage file, stat file, stat key) per level, self first.
    memory: Vec<(PathBuf, PathBuf, PathBuf, &'static str)>,
    /// Where /proc is (tests point it elsewhere).
    proc: PathBuf,
}

impl Scope {
    /// Reads this process's mounts and cgroups.
    pub fn detect() -> Result<Scope, Error> {
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        let cgroup = read(Path::new("/proc/self/cgroup"))?;
        Ok(Scope::from_texts(&mountinfo, &cgroup, Path::new("/proc")))
    }

    /// The scope described by a mountinfo and a /proc/self/cgroup text, with /proc at `proc`.
    pub fn from_texts(mountinfo: &str, cgroup: &str, proc: &Path) -> Scope {
        let mounts = parse_mountinfo(mountinfo);
        let member = parse_proc_cgroup(cgroup);
        let v1 = |ctrl: &str| -> Option<Dir> {
            let (_, path) = member.iter().find(|(c, _)| c.iter().any(|x| x == ctrl))?;
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|x| x == ctrl))?;
            Dir::of(mount, path)
        };
        let v2 = || -> Option<(Dir, Vec<String>)> {
            let (_, path) = member.iter().find(|(c, _)| c.is_empty())?;
            let mount = mounts.iter().find(|m| m.v2)?;
            // Controllers enabled for our cgroup are those of the parent's subtree_control;
            // simpler and equivalent for reading: the interface files that exist.
            let dir = Dir::of(mount, path)?;
            let ctrls = std::fs::read_to_string(dir.path.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            Some((dir, ctrls))
        };
        let mut s = Scope {
            proc: proc.to_owned(),
            ..Scope::default()
        };
        let (cpu, cpuset, mem) = (v1("cpu"), v1("cpuset"), v1("memory"));
        let v2 = v2();
        let has2 = |c: &str| v2.as_ref().is_some_and(|(_, cs)| cs.iter().any(|x| x == c));
        // runnable threads: the cgroup that shares out CPU time, else the one that pins CPUs
        s.tasks = match (&cpu, &cpuset, &v2) {
            (Some(d), _, _) | (None, Some(d), _) => Some(d.path.join("tasks")),
            (None, None, Some((d, _))) => Some(d.path.join("cgroup.threads")),
            _ => None,
        };
        if let Some(d) = &cpu {
            s.quotas = d
                .ancestors
                .iter()
                .map(|a| {
                    (
                        a.join("cpu.cfs_quota_us"),
                        Some(a.join("cpu.cfs_period_us")),
                    )
                })
                .collect();
        } else if has2("cpu") {
            let (d, _) = v2.as_ref().expect("has2");
            // the mount point itself (the root cgroup) has no cpu.max
            s.quotas = d
                .ancestors
                .iter()
                .filter(|a| a.as_path() != mountpoint_of(d))
                .map(|a| (a.join("cpu.max"), None))
                .collect();
        }
        if let Some(d) = &cpuset {
            s.cpuset = Some(d.path.join("cpuset.effective_cpus"));
        } else if has2("cpuset") {
            s.cpuset = v2
                .as_ref()
                .map(|(d, _)| d.path.join("cpuset.cpus.effective"));
        }
        if let Some(d) = &mem {
            s.memory = d
                .ancestors
                .iter()
                .map(|a| {
                    (
                        a.join("memory.limit_in_bytes"),
                        a.join("memory.usage_in_bytes"),
                        a.join("memory.stat"),
                        "total_inactive_file",
                    )
                })
                .collect();
        } else if has2("memory") {
            let (d, _) = v2.as_ref().expect("has2");
            s.memory = d
                .ancestors
                .iter()
                .filter(|a| a.as_path() != mountpoint_of(d))
                .map(|a| {
                    (
                        a.join("memory.max"),
                        a.join("memory.current"),
                        a.join("memory.stat"),
                        "inactive_file",
                    )
                })
                .collect();
        }
        s
    }

    /// True when the runnable processes are counted in a cgroup, not on the machine.
    pub fn in_cgroup(&self) -> bool {
        self.tasks.is_some()
    }

    /// A one-line description for the log.
    pub fn describe(&self) -> String {
        match &self.tasks {
            None => "the machine (root cgroup)".into(),
            Some(t) => format!(
                "cgroup {}{}{}",
                t.parent().unwrap_or(t).display(),
                if self.quotas.is_empty() {
                    ""
                } else {
                    ", cpu quota"
                },
                if self.memory.is_empty() {
                    ""
                } else {
                    ", memory limit"
                },
            ),
        }
    }

    /// One measurement. `Load::load` holds the raw runnable count (the caller smooths it).
    pub fn sample(&self) -> Result<Load, Error> {
        let runnable = match &self.tasks {
            None => {
                let p = self.proc.join("stat");
                let stat = read(&p)?;
                let running = field(&stat, "procs_running")
                    .ok_or_else(|| parse_err(&p, "procs_running", &stat))?;
                (running - 1.0).max(0.0)
            }
            Some(t) => self.runnable_in(t)? as f64,
        };
        let cpus = match &self.cpuset {
            Some(p) => {
                let t = read(p)?;
                parse_cpu_list(&t).ok_or_else(|| parse_err(p, "a CPU list", &t))?
            }
            None => {
                let p = self.proc.join("self/status");
                let t = read(&p)?;
                t.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .and_then(parse_cpu_list)
                    .ok_or_else(|| parse_err(&p, "Cpus_allowed_list", &t))?
            }
        };
        if cpus == 0 {
            return Err(parse_err(
                self.cpuset
                    .as_deref()
                    .unwrap_or(Path::new("Cpus_allowed_list")),
                "a non-empty CPU list",
                "",
            ));
        }
        let mut capacity = f64::from(cpus);
        for (q, period) in &self.quotas {
            if let Some(c) = quota(q, period.as_deref())? {
                capacity = capacity.min(c);
            }
        }
        let p = self.proc.join("cpuinfo");
        let cpuinfo = read(&p)?;
        let speed = cpu_speed(&cpuinfo).ok_or_else(|| parse_err(&p, "cpu MHz or bogomips", ""))?;
        let p = self.proc.join("meminfo");
        let meminfo = read(&p)?;
        let kib = |k: &'static str| {
            field(&meminfo, k)
                .map(|v| v as u64 * 1024)
                .ok_or_else(|| parse_err(&p, k, ""))
        };
        let (mut total, mut free) = (kib("MemTotal:")?, kib("MemAvailable:")?);
        for (limit, usage, stat, key) in &self.memory {
            let lt = read(limit)?;
            let l = lt.trim();
            // v1 "no limit" is a huge number; v2 says "max"
            let Some(limit_b) = (if l == "max" {
                None
            } else {
                Some(
                    l.parse::<u64>()
                        .map_err(|_| parse_err(limit, "a memory limit", l))?,
                )
            }) else {
                continue;
            };
            if limit_b < total {
                let ut = read(usage)?;
                let used: u64 = ut
                    .trim()
                    .parse()
                    .map_err(|_| parse_err(usage, "a memory usage", &ut))?;
                let st = read(stat)?;
                let cache = field(&st, &format!("{key} "))
                    .ok_or_else(|| parse_err(stat, "inactive file cache", ""))?
                    as u64;
                let working = used.saturating_sub(cache);
                total = limit_b;
                free = free.min(limit_b.saturating_sub(working));
            }
        }
        free = free.min(total);
        Ok(Load {
            load: runnable,
            cpus,
            speed,
            free_mem: free,
            total_mem: total,
            capacity,
        })
    }

    /// Threads of the task list in state R, the calling thread not counted.
    fn runnable_in(&self, tasks: &Path) -> Result<u32, Error> {
        let list = read(tasks)?;
        let me = std::fs::read_link(self.proc.join("thread-self"))
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok());
        let mut n = 0;
        for tid in list.lines() {
            let Ok(tid) = tid.trim().parse::<u32>() else {
                return Err(parse_err(tasks, "a thread id", tid));
            };
            if Some(tid) == me {
                continue;
            }
            // A thread that ended since the list was read is simply not runnable.
            let Ok(stat) = std::fs::read_to_string(self.proc.join(format!("{tid}/stat"))) else {
                continue;
            };
            if thread_state(&stat) == Some('R') {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn mountpoint_of(d: &Dir) -> &Path {
    d.ancestors.last().map(PathBuf::as_path).unwrap_or(&d.path)
}

/// CPUs' worth of a quota file; None when there is no quota.
fn quota(q: &Path, period: Option<&Path>) -> Result<Option<f64>, Error> {
    let t = read(q)?;
    let t = t.trim();
    let (quota, period) = match period {
        // v1: quota in µs (-1: none), period in its own file
        Some(pf) => {
            let quota: i64 = t.parse().map_err(|_| parse_err(q, "a CFS quota", t))?;
            if quota < 0 {
                return Ok(None);
            }
            let pt = read(pf)?;
            let period: u64 = pt
                .trim()
                .parse()
                .map_err(|_| parse_err(pf, "a CFS period", &pt))?;
            (quota as u64, period)
        }
        // v2: "max 100000" or "50000 100000"
        None => {
            let mut it = t.split_whitespace();
            let (a, b) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let period: u64 = b.parse().map_err(|_| parse_err(q, "cpu.max", t))?;
            if a == "max" {
                return Ok(None);
            }
            (a.parse().map_err(|_| parse_err(q, "cpu.max", t))?, period)
        }
    };
    if period == 0 {
        return Err(parse_err(q, "a non-zero CFS period", "0"));
    }
    Ok(Some(quota as f64 / period as f64))
}

/// The state letter of a /proc/PID/stat text (after the command's closing parenthesis).
fn thread_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The first number after `key` at the start of a line.
fn field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// MHz from /proc/cpuinfo, bogomips if no MHz is given.
fn cpu_speed(cpuinfo: &str) -> Option<u32> {
    let value = |key: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with(key))
            .find_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
    };
    value("cpu MHz")
        .or_else(|| value("bogomips"))
        .or_else(|| value("BogoMIPS"))
        .filter(|v| v.is_finite() && *v >= 1.0)
        .map(|v| v.round() as u32)
}

#[cfg(test)]
mod tests;
