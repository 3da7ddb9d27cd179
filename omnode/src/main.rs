//! `omnode`: the daemon and its command-line front ends.

mod ckpt;
mod control;
mod daemon;
mod error;
mod key;
mod loadmon;
mod members;
mod mfsd;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::Error;

/// Where the daemon's control socket lives on a real install.
pub const DEFAULT_SOCKET: &str = "/run/omnode/omnode.sock";
/// Where the cluster key lives on a real install.
pub const DEFAULT_KEY: &str = "/etc/omnode/cluster.key";
/// The TCP port every node listens on (the map gives addresses only).
pub const DEFAULT_PORT: u16 = 7431;

#[derive(Parser, Debug)]
#[command(
    name = "omnode",
    version,
    about = "openMosix in user space: one daemon per node; the cluster behaves like one computer",
    long_about = "Without a subcommand, runs this node's daemon: it reads the cluster map \
(--map, else /etc/openmosix.map, /etc/mosix.map, /etc/hpc.map), finds which map entry is this \
machine, connects to every other node with the cluster key, and serves the control socket.\n\n\
Map lines are `ID ADDRESS RANGE`: `1 127.0.0.1 4` is nodes 1-4 at 127.0.0.1-127.0.0.4.",
    after_help = "Examples:\n  omnode keygen --out /etc/omnode/cluster.key\n  omnode --map /etc/openmosix.map\n  \
omnode --map cluster.map --node 2 --socket /tmp/n2.sock --key-file cluster.key\n  \
omnode --discovery mdns          # zero-config: every node on the LAN with the same key\n  omnode status\n  omnode status --json"
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,

    /// The node's control socket (daemon: where to serve it; other commands: which node to ask).
    #[arg(long, global = true, env = "OMNODE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Cluster map file (default: the first of /etc/openmosix.map, /etc/mosix.map, /etc/hpc.map).
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// Which map node this is, when several map addresses are local (e.g. 127.0.0.N).
    #[arg(long, value_name = "N")]
    pub node: Option<u32>,

    /// The cluster key: the same file on every node (make one with `omnode keygen`).
    #[arg(long, value_name = "FILE", env = "OMNODE_KEY_FILE", default_value = DEFAULT_KEY)]
    pub key_file: PathBuf,

    /// TCP port of every node of the cluster.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// How to find the other nodes: `auto` uses the map when one is given or found, else
    /// mDNS; `map` never falls back; `mdns` ignores any map.
    #[arg(long, value_enum, default_value_t = DiscoveryMode::Auto)]
    pub discovery: DiscoveryMode,

    /// Link layer: `tcp` (default with a map) or `p2p` (libp2p; default and required with mDNS).
    #[arg(long, value_enum)]
    pub transport: Option<TransportKind>,

    /// mDNS mode: the address to stand on (default: the first non-loopback IPv4 address);
    /// the node id is its last two bytes unless --node says otherwise.
    #[arg(long, value_name = "IP")]
    pub listen: Option<std::net::IpAddr>,

    /// Load-monitor tick in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub load_tick_ms: u64,

    #[command(flatten)]
    pub mfs: mfsd::Args,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryMode {
    Auto,
    Map,
    Mdns,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    P2p,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make a new random cluster key (copy the same file to every node).
    Keygen {
        /// Where to write it (mode 0600).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Show the cluster as this node sees it: node, address, up/down, load, cpus, speed, memory.
    Status {
        /// One JSON object with a `nodes` array, for scripts.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Ckpt(ckpt::Cmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => daemon::run(cli.daemon, cli.socket),
        Some(Cmd::Keygen { out, force }) => key::generate(&out, force).map(|()| {
            println!(
                "wrote a new cluster key to {}; copy it to every node",
                out.display()
            );
        }),
        Some(Cmd::Status { json }) => status::run(&cli.socket, json),
        Some(Cmd::Ckpt(c)) => return ckpt::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omnode: {e}");
            ExitCode::FAILURE
        }
    }
}
