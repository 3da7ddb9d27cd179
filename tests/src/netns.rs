//! A multi-host test bed on one machine: each host is a network namespace with one veth
//! (`eth0`, address 10.77.0.N/24) plugged into a bridge of the bed's own; nothing leaves the
//! machine. Each host has a default route through its veth, which multicast (mDNS) needs.
//! Hosts run real `omnode` processes (`ip netns exec`). Everything (processes, namespaces,
//! veths, bridge) is removed when the [`Bed`] is dropped, also when a test fails.
//!
//! Needs root and `ip` (iproute2): [`Bed::new`] returns `Err(reason)` otherwise, and tests
//! print the reason and skip.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::omnode_bin;

static BEDS: AtomicU32 = AtomicU32::new(0);

/// One simulated machine.
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
    veth: String,
    daemon: Option<Child>,
}

pub struct Bed {
    tag: String,
    bridge: String,
    pub dir: tempfile::TempDir,
    hosts: Vec<Host>,
}

fn ip(args: &[&str]) -> Result<(), String> {
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

impl Bed {
    /// A bed of `n` hosts (at most 250) at 10.77.0.1..n, or why it cannot be built here.
    pub fn new(n: u8) -> Result<Bed, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to create network namespaces".into());
        }
        ip(&["-V"]).map_err(|e| format!("needs iproute2: {e}"))?;
        let tag = format!(
            "om{}x{}",
            std::process::id() % 100_000,
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("{tag}br");
        let mut bed = Bed {
            tag,
            bridge,
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &bed.bridge, "type", "bridge"])?;
        ip(&["link", "set", &bed.bridge, "up"])?;
        for i in 1..=n {
            bed.add_host(i)?;
        }
        Ok(bed)
    }

    fn add_host(&mut self, i: u8) -> Result<(), String> {
        let ns = format!("{}h{i}", self.tag);
        let veth = format!("{}v{i}", self.tag);
        let addr = Ipv4Addr::new(10, 77, 0, i);
        ip(&["netns", "add", &ns])?;
        // Recorded before the veth exists, so Drop removes the namespace whatever fails next.
        self.hosts.push(Host {
            ns: ns.clone(),
            ip: addr,
            veth: veth.clone(),
            daemon: None,
        });
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge])?;
        ip(&["link", "set", &veth, "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"])?;
        Ok(())
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn host(&self, i: u8) -> &Host {
        &self.hosts[usize::from(i) - 1]
    }

    pub fn socket(&self, i: u8) -> PathBuf {
        self.dir.path().join(format!("h{i}.sock"))
    }

    pub fn log(&self, i: u8) -> PathBuf {
        self.dir.path().join(format!("h{i}.log"))
    }

    /// Start `omnode ARGS --socket <host's socket>` on host `i` (stopping one already there).
    pub fn start(&mut self, i: u8, args: &[&str]) {
        self.stop(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let socket = self.socket(i);
        let host = &mut self.hosts[usize::from(i) - 1];
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(omnode_bin())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start omnode in a namespace");
        host.daemon = Some(child);
    }

    /// SIGKILL host `i`'s daemon (like a machine dropping off the network) and reap it.
    pub fn stop(&mut self, i: u8) {
        if let Some(mut c) = self.hosts[usize::from(i) - 1].daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Write a file into the bed's directory (keys, maps) and return its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn log_text(&self, i: u8) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for i in 1..=self.hosts.len() as u8 {
            self.stop(i);
            if panicking {
                eprintln!("==== host {i} log ====\n{}", self.log_text(i));
            }
        }
        for h in &self.hosts {
            let _ = ip(&["link", "del", &h.veth]);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
