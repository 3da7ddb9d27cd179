//! The round-trip checker: what /proc shows of a process, taken before a freeze and after the
//! thaw, and every difference between the two. It reads /proc only (not the image), so a value
//! the engine reads wrongly on both sides still shows up as a difference from the original.

use std::collections::BTreeMap;

/// One process as /proc shows it, in comparable lines, by topic.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub topics: BTreeMap<&'static str, Vec<String>>,
    /// Stopped by job control (state T) when the view was taken.
    pub stopped: bool,
}

/// Is `pid` stopped (state T)?
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    })
}

/// Lines of /proc/PID/status compared (the rest are counters or PIDs).
const STATUS: &[&str] = &[
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "NoNewPrivs",
    "Seccomp",
    "SigPnd",
    "ShdPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "THP_enabled",
    "VmLck",
    "Speculation_Store_Bypass",
    "Cpus_allowed_list",
    "Mems_allowed_list",
    "untag_mask",
    "x86_Thread_features",
];

/// Lines of /proc/PID/task/TID/status compared per thread.
const THREAD_STATUS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "NoNewPrivs",
    "Seccomp",
    "SigPnd",
    "SigBlk",
    "CapEff",
    "Cpus_allowed_list",
];

fn rd(pid: i32, f: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{f}"))
        .unwrap_or_else(|e| panic!("checker: reading /proc/{pid}/{f}: {e}"))
}

impl View {
    /// Reads the view of `pid` (panics when /proc cannot be read: the checker fails closed).
    pub fn of(pid: i32) -> View {
        let mut t: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        // maps with protections, offsets and names, and each mapping's VmFlags
        let smaps = rd(pid, "smaps");
        let mut maps = Vec::new();
        let mut flags = Vec::new();
        let mut cur = String::new();
        for l in smaps.lines() {
            if let Some(f) = l.strip_prefix("VmFlags:") {
                let mut v: Vec<&str> = f.split_whitespace().collect();
                v.sort();
                flags.push(format!("{cur}: {}", v.join(" ")));
            } else if l.split(' ').next().is_some_and(|r| {
                r.split_once('-')
                    .is_some_and(|(a, _)| u64::from_str_radix(a, 16).is_ok())
            }) {
                let w: Vec<&str> = l.split_whitespace().collect();
                // range perms offset name (dev and inode left out: shared anonymous memory
                // gets a new inode)
                let name = w.get(5..).map(|n| n.join(" ")).unwrap_or_default();
                cur = format!("{} {} {} {name}", w[0], w[1], w[2]);
                maps.push(cur.clone());
            }
        }
        t.insert("maps", maps);
        t.insert("vmflags", flags);
        let st = rd(pid, "status");
        t.insert(
            "status",
            STATUS
                .iter()
                .filter_map(|k| {
                    st.lines()
                        .find(|l| l.split(':').next() == Some(k))
                        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                })
                .collect(),
        );
        t.insert(
            "limits",
            rd(pid, "limits").lines().map(String::from).collect(),
        );
        t.insert(
            "oom_score_adj",
            vec![rd(pid, "oom_score_adj").trim().into()],
        );
        t.insert("personality", vec![rd(pid, "personality").trim().into()]);
        t.insert("comm", vec![rd(pid, "comm").trim().into()]);
        t.insert("cmdline", vec![rd(pid, "cmdline").replace('\0', " ")]);
        let link = |f: &str| {
            std::fs::read_link(format!("/proc/{pid}/{f}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| panic!("checker: readlink /proc/{pid}/{f}: {e}"))
        };
        t.insert("cwd", vec![link("cwd")]);
        t.insert("exe", vec![link("exe")]);
        // fds: target, offset and flags
        let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("checker: listing /proc/{pid}/fd: {e}"))
            .map(|e| {
                let n: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
                let info = rd(pid, &format!("fdinfo/{n}"));
                let field = |k: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                // each file lock held through it, without its number and holder's PID
                let locks: String = info
                    .lines()
                    .filter_map(|l| l.strip_prefix("lock:"))
                    .map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        let keep: Vec<&str> = w
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != 0 && *i != 4)
                            .map(|(_, x)| *x)
                            .collect();
                        format!(" lock {}", keep.join(" "))
                    })
                    .collect();
                (
                    n,
                    format!(
                        "fd {n} -> {} pos {} flags {}{locks}",
                        link(&format!("fd/{n}")),
                        field("pos:"),
                        field("flags:")
                    ),
                )
            })
            .collect();
        fds.sort();
        // a pipe or socket inside the process gets a new inode: named by order instead
        let mut pipes: Vec<String> = Vec::new();
        let fds = fds
            .into_iter()
            .map(|(_, l)| {
                let Some(i) = l.find("pipe:[").or_else(|| l.find("socket:[")) else {
                    return l;
                };
                let j = i + l[i..].find(']').unwrap() + 1;
                let ino = l[i..j].to_string();
                let k = pipes.iter().position(|p| *p == ino).unwrap_or_else(|| {
                    pipes.push(ino.clone());
                    pipes.len() - 1
                });
                let kind = &l[i..i + l[i..].find('[').unwrap()];
                format!("{}{kind}#{k}{}", &l[..i], &l[j..])
            })
            .collect();
        t.insert("fds", fds);
        // every thread, main thread first (TIDs themselves change with the PID): its name and its
        // own lines of status (mask, pending signals, credentials, seccomp, affinity)
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("checker: listing /proc/{pid}/task: {e}"))
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        // the main thread first, then the others in TID order (thaw gives threads their old
        // TIDs when free, also under a new PID, so the main thread may sort anywhere)
        tids.sort_by_key(|&t| (t != pid, t));
        let mut threads = Vec::new();
        for (i, tid) in tids.iter().enumerate() {
            let st = rd(pid, &format!("task/{tid}/status"));
            let mut l = format!(
                "thread #{i} {}",
                rd(pid, &format!("task/{tid}/comm")).trim()
            );
            for k in THREAD_STATUS {
                let v = st
                    .lines()
                    .find(|x| x.split(':').next() == Some(k))
                    .map(|x| x.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                l.push_str(&format!(" {k}={v}"));
            }
            threads.push(l);
        }
        t.insert("threads", threads);
        // POSIX timers: id, signal and value, notification, clock; the thread a timer signals
        // named by its place in TID order
        let mut timers = Vec::new();
        let mut cur = String::new();
        for l in rd(pid, "timers").lines() {
            let l = if let Some(n) = l.strip_prefix("notify: ") {
                let (how, whom) = n.split_once('/').expect("checker: odd notify line");
                let (kind, id) = whom.split_once('.').expect("checker: odd notify target");
                let id: i32 = id.parse().expect("checker: odd notify target");
                let who = match tids.iter().position(|&x| x == id) {
                    Some(i) if kind == "tid" => format!("thread #{i}"),
                    _ if id == pid => "process".to_string(),
                    _ => format!("{kind} {id} (not one of its threads)"),
                };
                format!("notify: {how}/{who}")
            } else {
                l.to_string()
            };
            if l.starts_with("ID:") && !cur.is_empty() {
                timers.push(std::mem::take(&mut cur));
            }
            cur.push_str(&l);
            cur.push(' ');
        }
        if !cur.is_empty() {
            timers.push(cur);
        }
        t.insert("timers", timers);
        View {
            topics: t,
            stopped: stopped(pid),
        }
    }

    /// The lines of one topic.
    pub fn get(&self, topic: &str) -> &[String] {
        self.topics.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every difference from `before` to `self`, one line each ("topic: - old" / "+ new").
    pub fn diff_from(&self, before: &View) -> Vec<String> {
        let mut d = Vec::new();
        for (k, a) in &before.topics {
            let b = self.get(k);
            for l in a.iter().filter(|l| !b.contains(l)) {
                d.push(format!("{k}: - {l}"));
            }
            for l in b.iter().filter(|l| !a.contains(l)) {
                d.push(format!("{k}: + {l}"));
            }
        }
        d
    }
}

/// Freezes `pid` (left running or not), thaws the image and returns the thawed process with
/// every difference between what /proc showed of the original just before the freeze and of
/// the thawed process just after the thaw.
pub fn round_trip(p: &mut super::Proc, leave_running: bool) -> (super::Proc, Vec<String>) {
    let before = View::of(p.pid);
    let img = super::freeze(p.pid, leave_running)
        .unwrap_or_else(|e| panic!("round trip: freeze of {}: {e}", p.pid));
    if !leave_running {
        p.wait(super::T);
    }
    let q = super::thaw(&img);
    if stopped(p.pid) || before.stopped {
        // thaw stops it again as it lets it go: wait for that stop to land (bounded)
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped(q.pid) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let after = View::of(q.pid);
    let d = after.diff_from(&before);
    (q, d)
}
