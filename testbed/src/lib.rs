//! A LAN of network namespaces on one machine, for tests (dev-only, never published).
//!
//! Owns: one "switch" namespace holding a bridge (`br0`, multicast snooping off so
//! multicast reaches every port), and per host one namespace joined to it by a veth pair
//! (`eth0` in the host, `vN` on the switch) with address `<subnet>.N/24`, `lo` up and a
//! default route via `eth0` (without one, joining a multicast group, as mDNS does, fails
//! with ENODEV). It starts commands inside a host (`ip netns exec`), cuts a host off the
//! bridge and plugs it back, and keeps a scratch directory. Nothing is created in the
//! caller's own namespace, and everything (processes started through the bed, veths,
//! namespaces, bridge, directory) is removed when the [`Bed`] is dropped, also when a test
//! panics. Names are unique per process and per bed.
//!
//! Must not know: omnode, transports, or what the hosts run.
//!
//! Needs root and `ip` (iproute2): [`Bed::new`] returns `Err(reason)` otherwise, and a
//! test prints `SKIPPED: <reason>` and returns.

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

static BEDS: AtomicU32 = AtomicU32::new(0);

/// The bridge inside the switch namespace.
const BRIDGE: &str = "br0";

/// One simulated machine: a network namespace with `eth0` on the bed's bridge.
pub struct Host {
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    /// Its address on the bed's /24.
    pub ip: Ipv4Addr,
    /// Its veth end on the switch (`vN`).
    port: String,
}

/// The hosts, their switch, and the processes started in them.
pub struct Bed {
    switch: String,
    hosts: Vec<Host>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

/// Run `ip ARGS`; the error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a bed can be built here: root (network namespaces) and iproute2.
pub fn check() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to create network namespaces".into());
    }
    ip(&["-V"]).map_err(|e| format!("needs iproute2: {e}"))
}

impl Bed {
    /// A bed of `n` hosts (1 to 250), host `i` at `subnet.i/24`, or why it cannot be
    /// built here. What was created before a failure is removed again.
    pub fn new(n: usize, subnet: [u8; 3]) -> Result<Bed, String> {
        check()?;
        if !(1..=250).contains(&n) {
            return Err(format!("a bed has 1 to 250 hosts, not {n}"));
        }
        let tag = format!(
            "omtb{}x{}",
            std::process::id(),
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        // Built before anything exists, so Drop removes whatever the next steps create.
        let mut bed = Bed {
            switch: format!("{tag}sw"),
            hosts: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| format!("cannot make a directory: {e}"))?,
        };
        let sw = bed.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        for i in 1..=n {
            let ns = format!("{tag}h{i}");
            let port = format!("v{i}");
            let addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8);
            ip(&["netns", "add", &ns])?;
            // Recorded before the veth exists, so Drop removes the namespace whatever fails next.
            bed.hosts.push(Host {
                ns: ns.clone(),
                ip: addr,
                port: port.clone(),
            });
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", BRIDGE])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let cidr = format!("{addr}/24");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(bed)
    }

    /// How many hosts.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// A scratch directory, removed with the bed.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` to be run inside host `i` (`ip netns exec`, which execs it: the child's
    /// pid is the program's). Add arguments, environment and stdio, then [`Bed::spawn`] it.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(i).ns]).arg(program);
        c
    }

    /// Start `cmd` (made by [`Bed::command`]); the bed kills it when dropped.
    pub fn spawn(&mut self, mut cmd: Command) -> io::Result<&mut Child> {
        let child = cmd.spawn()?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    /// SIGKILL the bed's process `pid` and reap it (like a machine dropping off the
    /// network). False if the bed started no such process or it was killed already.
    pub fn kill(&mut self, pid: u32) -> bool {
        let Some(at) = self.children.iter().position(|c| c.id() == pid) else {
            return false;
        };
        let mut c = self.children.swap_remove(at);
        let _ = c.kill();
        let _ = c.wait();
        true
    }

    /// Cut host `i` off the bridge (its switch port down: no FIN, no RST, just silence).
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.host(i).port,
            "down",
        ])
    }

    /// Plug host `i` back into the bridge.
    pub fn plug(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &self.host(i).port, "up"])
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Processes first: a namespace with a process inside outlives `ip netns del`.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = ip(&["-n", &self.switch, "link", "del", &h.port]);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["-n", &self.switch, "link", "del", BRIDGE]);
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bed(n: usize) -> Option<Bed> {
        match Bed::new(n, [10, 78, 0]) {
            Ok(b) => Some(b),
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    }

    fn namespaces() -> String {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether host `from` reaches host `to` (a TCP connect to a closed port, from a thread
    /// moved into `from`'s namespace: refused means reached), trying for up to `limit`.
    fn reaches(bed: &Bed, from: usize, to: usize, limit: std::time::Duration) -> bool {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(format!("/run/netns/{}", bed.host(from).ns)).unwrap();
        let to = std::net::SocketAddr::from((bed.host(to).ip, 9));
        std::thread::spawn(move || {
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let deadline = std::time::Instant::now() + limit;
            loop {
                let step = std::time::Duration::from_millis(300);
                match std::net::TcpStream::connect_timeout(&to, step) {
                    Ok(_) => return true,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
                    Err(_) if std::time::Instant::now() >= deadline => return false,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        })
        .join()
        .unwrap()
    }

    #[test]
    fn hosts_reach_each_other_until_cut_off_and_the_bed_cleans_up() {
        let Some(mut bed) = bed(3) else { return };
        assert_eq!(bed.hosts(), 3);
        assert_eq!(bed.host(2).ip, Ipv4Addr::new(10, 78, 0, 2));
        let (sw, h1) = (bed.switch.clone(), bed.host(1).ns.clone());
        assert!(namespaces().contains(&h1));
        let secs = std::time::Duration::from_secs;
        assert!(reaches(&bed, 1, 3, secs(5)), "host 1 cannot reach host 3");
        bed.cut(3).unwrap();
        assert!(
            !reaches(&bed, 1, 3, secs(1)),
            "host 3 reachable after the cut"
        );
        assert!(
            reaches(&bed, 1, 2, secs(5)),
            "host 2 unreachable after cutting host 3"
        );
        bed.plug(3).unwrap();
        assert!(
            reaches(&bed, 1, 3, secs(5)),
            "host 3 unreachable after plugging it back"
        );
        // A long-running child is killed with the bed.
        let mut sleep = bed.command(2, "sleep");
        sleep.arg("600");
        let pid = bed.spawn(sleep).unwrap().id();
        let dir = bed.dir().to_path_buf();
        assert!(dir.exists());
        drop(bed);
        let list = namespaces();
        assert!(!list.contains(&h1), "namespace {h1} left behind");
        assert!(!list.contains(&sw), "switch namespace {sw} left behind");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} left running"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn two_beds_at_once_have_their_own_names() {
        let Some(a) = bed(1) else { return };
        let Some(b) = bed(1) else { return };
        assert_ne!(a.host(1).ns, b.host(1).ns);
        assert_ne!(a.switch, b.switch);
    }
}
