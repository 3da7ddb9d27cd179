//! Support for the cluster integration tests: start real `omnode` processes on loopback
//! addresses (127.0.0.N needs no set-up), ask them for status, kill and restart them.
//! Everything started is killed when the [`Cluster`] is dropped, also when a test fails.
//!
//! The tests run the `omnode` binary of this workspace's target directory: build it first
//! (`cargo build -p omnode`; the README's test command does), or point `OMNODE_BIN` at one.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod cgcluster;
pub mod moving;
pub mod netns;

/// The `omnode` binary under test.
pub fn omnode_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OMNODE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> → target/<profile>/omnode
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("omnode"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p omnode` first, or set OMNODE_BIN",
        bin.display()
    );
    bin
}

/// A TCP port free on 127.0.0.1 now (the tests' nodes listen on 127.0.0.N with it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 100 ms until it returns `Some`, at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nodes of one map, each a real `omnode` process.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub map: PathBuf,
    pub key: PathBuf,
    pub port: u16,
    /// Extra daemon flags for every node (e.g. `--transport p2p`).
    pub extra: Vec<String>,
    nodes: Vec<(u32, Option<Child>)>,
}

impl Cluster {
    /// Write `map_text` and a fresh key into a new directory; start nothing yet.
    pub fn new(map_text: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let map = dir.path().join("openmosix.map");
        std::fs::write(&map, map_text).unwrap();
        let key = dir.path().join("cluster.key");
        let out = run_cli(&["keygen", "--out", key.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir,
            map,
            key,
            port: free_port(),
            extra: Vec::new(),
            nodes: Vec::new(),
        }
    }

    pub fn socket(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("node{id}.sock"))
    }

    pub fn log(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// Start node `id` with this cluster's map and key.
    pub fn start(&mut self, id: u32) {
        let (map, key) = (self.map.clone(), self.key.clone());
        self.start_with(id, &map, &key);
    }

    /// Start node `id` with another map or key file.
    pub fn start_with(&mut self, id: u32, map: &Path, key: &Path) {
        self.start_with_args(id, map, key, &[]);
    }

    /// Start node `id` with another map or key file and extra daemon flags for it alone.
    pub fn start_with_args(&mut self, id: u32, map: &Path, key: &Path, args: &[&str]) {
        self.kill(id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(id))
            .unwrap();
        let child = Command::new(omnode_bin())
            .args(["--map", map.to_str().unwrap(), "--node", &id.to_string()])
            .args([
                "--key-file",
                key.to_str().unwrap(),
                "--port",
                &self.port.to_string(),
            ])
            .args([
                "--socket",
                self.socket(id).to_str().unwrap(),
                "--load-tick-ms",
                "250",
            ])
            .args(&self.extra)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start omnode");
        self.nodes.push((id, Some(child)));
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&mut self, id: u32) -> Option<u32> {
        self.nodes
            .iter_mut()
            .find(|(n, _)| *n == id)
            .and_then(|(_, c)| c.as_mut())
            .and_then(|c| matches!(c.try_wait(), Ok(None)).then(|| c.id()))
    }

    /// Wait (at most `limit`) for node `id` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, id: u32, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self
            .nodes
            .iter_mut()
            .find(|(n, _)| *n == id)
            .and_then(|(_, c)| c.as_mut())?;
        wait_for(limit, || child.try_wait().ok().flatten())
    }

    /// SIGKILL node `id` (no clean shutdown, like a crash) and reap it.
    pub fn kill(&mut self, id: u32) {
        for (n, child) in self.nodes.iter_mut() {
            if *n == id {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        self.nodes.retain(|(_, c)| c.is_some());
    }

    /// `omnode status --json` of node `id`, or None while it does not answer.
    pub fn status(&self, id: u32) -> Option<serde_json::Value> {
        let out = run_cli(&[
            "status",
            "--json",
            "--socket",
            self.socket(id).to_str().unwrap(),
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Ids of the nodes that node `id` reports up with a numeric load.
    pub fn up_with_load(&self, id: u32) -> Option<Vec<u64>> {
        let s = self.status(id)?;
        let nodes = s["nodes"].as_array()?;
        Some(
            nodes
                .iter()
                .filter(|n| n["up"].as_bool() == Some(true) && n["load"].is_number())
                .filter_map(|n| n["id"].as_u64())
                .collect(),
        )
    }

    /// Ids node `id` reports up (load or not).
    pub fn up(&self, id: u32) -> Option<Vec<u64>> {
        let s = self.status(id)?;
        Some(
            s["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["up"].as_bool() == Some(true))
                .filter_map(|n| n["id"].as_u64())
                .collect(),
        )
    }

    pub fn log_text(&self, id: u32) -> String {
        std::fs::read_to_string(self.log(id)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u32> = self.nodes.iter().map(|(n, _)| *n).collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "==== {} ====\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
    }
}

/// Run `omnode ARGS` to completion.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(omnode_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run omnode")
}
