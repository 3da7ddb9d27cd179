//! Hosts of a [`testbed::Bed`] (network namespaces on one bridge, 10.77.0.N/24, default
//! route via their veth, which multicast (mDNS) needs) running real `omnode` daemons, each
//! with its control socket and log in the bed's directory. The bed removes everything
//! (processes, namespaces, veths, bridge) when dropped, also when a test fails; this layer
//! prints each host's log then.
//!
//! Needs root and `ip` (iproute2): [`Bed::new`] returns `Err(reason)` otherwise, and tests
//! print the reason and skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::omnode_bin;

pub use testbed::Host;

/// The hosts' addresses: 10.77.0.N.
const SUBNET: [u8; 3] = [10, 77, 0];

pub struct Bed {
    bed: testbed::Bed,
    /// Each host's daemon (pid of a process the bed started), if running.
    daemons: Vec<Option<u32>>,
}

impl Bed {
    /// A bed of `n` hosts (at most 250) at 10.77.0.1..n, or why it cannot be built here.
    pub fn new(n: u8) -> Result<Bed, String> {
        let bed = testbed::Bed::new(usize::from(n), SUBNET)?;
        Ok(Bed {
            bed,
            daemons: vec![None; usize::from(n)],
        })
    }

    pub fn hosts(&self) -> usize {
        self.bed.hosts()
    }

    pub fn host(&self, i: u8) -> &Host {
        self.bed.host(usize::from(i))
    }

    pub fn socket(&self, i: u8) -> PathBuf {
        self.path().join(format!("h{i}.sock"))
    }

    pub fn log(&self, i: u8) -> PathBuf {
        self.path().join(format!("h{i}.log"))
    }

    /// Start `omnode ARGS --socket <host's socket>` on host `i` (stopping one already there).
    pub fn start(&mut self, i: u8, args: &[&str]) {
        self.stop(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let mut cmd = self.bed.command(usize::from(i), omnode_bin());
        cmd.args(args)
            .arg("--socket")
            .arg(self.socket(i))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let pid = self
            .bed
            .spawn(cmd)
            .expect("start omnode in a namespace")
            .id();
        self.daemons[usize::from(i) - 1] = Some(pid);
    }

    /// SIGKILL host `i`'s daemon (like a machine dropping off the network) and reap it.
    pub fn stop(&mut self, i: u8) {
        if let Some(pid) = self.daemons[usize::from(i) - 1].take() {
            self.bed.kill(pid);
        }
    }

    /// Write a file into the bed's directory (keys, maps) and return its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn log_text(&self, i: u8) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.bed.dir()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for i in 1..=self.hosts() as u8 {
            self.stop(i);
            if panicking {
                eprintln!("==== host {i} log ====\n{}", self.log_text(i));
            }
        }
        // `self.bed` removes the namespaces, veths and bridge as it drops.
    }
}
