//! `omnode`: the daemon and its command-line front ends.
//!
//! Owns: the command line (one clap definition, from which the man pages and completions are
//! generated), the dispatch of classic openMosix names (`setpe`, ...) on argv[0], and the
//! wiring of the daemon. Must not know: how links, membership or checkpoints work inside
//! (their crates do).

mod balancer;
mod cgroup;
mod ckpt;
mod ckpt_daemon;
mod control;
mod cpufeat;
mod daemon;
mod deputy;
mod error;
mod fwdpath;
mod gohome;
mod imagestream;
mod install;
mod key;
mod loadmon;
mod logging;
mod members;
mod metrics;
mod mfscli;
mod mfsd;
mod mfsmagic;
mod migcli;
mod migrator;
mod mosctl;
mod mosmon;
mod notify;
mod reload;
mod remote;
mod setpe;
mod status;
mod takeback;
mod watchdog;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use error::Error;

/// Where the daemon's control socket lives on a real install.
pub const DEFAULT_SOCKET: &str = "/run/omnode/omnode.sock";
/// Where the cluster key lives on a real install.
pub const DEFAULT_KEY: &str = "/etc/omnode/cluster.key";
/// The TCP port every node listens on (the map gives addresses only).
pub const DEFAULT_PORT: u16 = 7431;

/// A classic openMosix command name and the `omnode` subcommand it runs. The install step,
/// the man pages and the completions derive from this table: add a name here once its
/// command works, and only then.
pub struct Classic {
    /// The name installed as a link to the `omnode` binary.
    pub name: &'static str,
    /// The subcommand it runs (`setpe -w -f F` is `omnode setpe -w -f F`).
    pub cmd: &'static str,
}

/// Every classic name this build answers to.
pub const CLASSIC: &[Classic] = &[
    Classic {
        name: "setpe",
        cmd: "setpe",
    },
    Classic {
        name: "migrate",
        cmd: "migrate",
    },
    Classic {
        name: "mosrun",
        cmd: "run",
    },
    Classic {
        name: "mps",
        cmd: "ps",
    },
    Classic {
        name: "mosctl",
        cmd: "mosctl",
    },
    Classic {
        name: "mosmon",
        cmd: "mon",
    },
];

#[derive(Parser, Debug)]
#[command(
    name = "omnode",
    version,
    about = "openMosix in user space: one daemon per node; the cluster behaves like one computer",
    long_about = "Without a subcommand, runs this node's daemon: it reads the cluster map \
(--map, else /etc/openmosix.map, /etc/mosix.map, /etc/hpc.map), finds which map entry is this \
machine, connects to every other node with the cluster key, and serves the control socket.\n\n\
Map lines are `ID ADDRESS RANGE`: `1 127.0.0.1 4` is nodes 1-4 at 127.0.0.1-127.0.0.4.\n\n\
SIGHUP reloads the map file (the same as `setpe -w`); SIGTERM and SIGINT stop the node.",
    after_help = "Examples:\n  omnode keygen --out /etc/omnode/cluster.key\n  omnode --map /etc/openmosix.map\n  \
omnode --map cluster.map --node 2 --socket /tmp/n2.sock --key-file cluster.key\n  \
omnode --discovery mdns          # zero-config: every node on the LAN with the same key\n  omnode status\n  omnode status --json\n  \
setpe -w -f /etc/openmosix.map   # load a new map into the running node",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,

    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// The control socket of the node to ask (commands that talk to a running daemon).
#[derive(clap::Args, Debug, Clone)]
pub struct SocketArg {
    /// The node's control socket: which node to ask.
    #[arg(long, env = "OMNODE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
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

    /// TCP port of every node of the cluster (1-65535; the same on every node).
    #[arg(long, default_value_t = DEFAULT_PORT, value_parser = parse_port)]
    pub port: u16,

    /// Where to serve the control socket that the CLI talks to.
    #[arg(long, env = "OMNODE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

    /// How to find the other nodes: `auto` uses the map when one is given or found, else
    /// mDNS; `map` never falls back; `mdns` ignores any map.
    #[arg(long, value_enum, default_value_t = DiscoveryMode::Auto)]
    pub discovery: DiscoveryMode,

    /// Link layer: `tcp` (default with a map), `p2p` (libp2p; default and required with
    /// mDNS) or `rdma` (RDMA verbs where both ends have a device, TCP otherwise; built
    /// with the `rdma` feature). RDMA needs the TCP port + 1 free for its side channel.
    #[arg(long, value_enum)]
    pub transport: Option<TransportKind>,

    /// `--transport rdma`: the RDMA device to use (e.g. mlx5_0, rxe0; default: the first).
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,

    /// `--transport rdma`: the GID table index (RoCE v2 over IPv4 is usually 1; see show_gids).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rdma_gid_index: u8,

    /// `--transport rdma`: refuse to start without a usable RDMA device, and leave a peer
    /// unlinked rather than link it over TCP.
    #[arg(long)]
    pub no_fallback: bool,

    /// mDNS mode: the address to stand on (default: the first non-loopback IPv4 address);
    /// the node id is its last two bytes unless --node says otherwise.
    #[arg(long, value_name = "IP")]
    pub listen: Option<std::net::IpAddr>,

    /// Load-monitor tick in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub load_tick_ms: u64,

    /// Serve Prometheus metrics (text format) over HTTP at this address, e.g. 127.0.0.1:9431.
    #[arg(long, value_name = "ADDR", env = "OMNODE_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Log format: `text` (plain when not on a terminal) or `json` (one object per line, for
    /// log collectors). The level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = logging::Format::Text, env = "OMNODE_LOG_FORMAT")]
    pub log_format: logging::Format,

    #[command(flatten)]
    pub mfs: mfsd::Args,

    /// For tests only: CPU features (comma-separated /proc/cpuinfo names, or `xsave_size`)
    /// this node pretends not to have when it admits migrations.
    #[arg(
        long,
        hide = true,
        value_name = "LIST",
        env = "OMNODE_MASK_CPU_FEATURES"
    )]
    pub mask_cpu_features: Option<String>,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed: every node listens on one fixed port, the same on every node (1-65535)".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("'{s}' is not a TCP port (1-65535)")),
    }
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
    Rdma,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Load, show or check the map of the running node; leave the cluster (the classic
    /// setpe: -w -f FILE, -r, -c -f FILE, -off).
    Setpe(setpe::Args),
    /// Move a running process to another node (`migrate PID NODE`; `home` brings it back).
    Migrate(migcli::MigrateArgs),
    /// Run a program under the cluster (`mosrun -j2 prog args`): it becomes the program.
    #[command(disable_help_flag = true)]
    Run(migcli::RunArgs),
    /// The node's flags and figures, the classic mosctl: stay, nostay, lstay, nolstay, block,
    /// noblock, quiet, noquiet, expel, bring, getload, getspeed, getmem, getfree, getutil,
    /// isup, status, whois, setspeed.
    Mosctl(mosctl::Args),
    /// Live bars of load, speed, memory and utilisation per node (`mosmon`; keys l s m u d
    /// t q, arrows scroll).
    Mon(mosmon::Args),
    /// Processes of this node running elsewhere, and guests running here (`mps`).
    Ps(migcli::PsArgs),
    #[command(flatten)]
    Ckpt(ckpt::Cmd),
    /// MFS: choose /mfs/selected (`select NODE`), mount /mfs through the daemon (`mount`,
    /// also run as `mount.mfs` by mount(8)).
    #[command(subcommand)]
    Mfs(mfscli::Cmd),
    /// Print the help of omnode or of one of its commands (`omnode help setpe`).
    Help {
        /// The command whose help to print.
        command: Option<String>,
    },
    /// Write man pages and shell completions for omnode and its classic names (used by
    /// scripts/install.sh and packaging).
    #[command(hide = true)]
    Generate(install::GenerateArgs),
}

/// The arguments as clap should see them: a classic name in argv[0] becomes its subcommand
/// (`setpe -w` is `omnode setpe -w`), and setpe's one-dash `-off` becomes `--off`.
pub fn dispatch(mut args: Vec<OsString>) -> Vec<OsString> {
    let name = args
        .first()
        .map(|a| {
            std::path::Path::new(a)
                .file_name()
                .unwrap_or(a.as_os_str())
                .to_owned()
        })
        .unwrap_or_default();
    if let Some(c) = CLASSIC.iter().find(|c| name == c.name) {
        args.splice(0..1, [OsString::from("omnode"), OsString::from(c.cmd)]);
    } else if name == "mount.mfs" {
        // mount(8)'s helper for `mount -t mfs` (a link /sbin/mount.mfs -> omnode).
        args.splice(0..1, ["omnode", "mfs", "mount"].map(OsString::from));
    }
    if args.get(1).is_some_and(|a| a == "setpe") {
        for a in args.iter_mut().skip(2) {
            if a == "-off" {
                *a = "--off".into();
            }
        }
    }
    args
}

fn help(command: Option<String>) -> Result<(), Error> {
    let mut cli = Cli::command();
    match command {
        None => cli.print_long_help()?,
        Some(name) => {
            let names: Vec<String> = cli
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| s.get_name().to_string())
                .collect();
            match cli.find_subcommand_mut(&name) {
                Some(sub) => sub.print_long_help()?,
                None => {
                    return Err(Error::Config(format!(
                        "no command '{name}'; the commands are: {}",
                        names.join(", ")
                    )));
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(dispatch(std::env::args_os().collect()));
    let result = match cli.cmd {
        None => daemon::run(cli.daemon),
        Some(Cmd::Keygen { out, force }) => key::generate(&out, force).map(|()| {
            println!(
                "wrote a new cluster key to {}; copy it to every node",
                out.display()
            );
        }),
        Some(Cmd::Status { json, socket }) => status::run(&socket.socket, json),
        Some(Cmd::Setpe(a)) => setpe::run(a),
        Some(Cmd::Migrate(a)) => migcli::migrate(a),
        Some(Cmd::Ps(a)) => migcli::ps(a),
        Some(Cmd::Run(a)) => migcli::run(a),
        Some(Cmd::Mosctl(a)) => mosctl::run(a),
        Some(Cmd::Mon(a)) => mosmon::run(a),
        Some(Cmd::Ckpt(c)) => return ckpt::run(c),
        Some(Cmd::Mfs(c)) => mfscli::run(c),
        Some(Cmd::Help { command }) => help(command),
        Some(Cmd::Generate(a)) => install::generate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omnode: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn classic_names_dispatch_to_their_subcommand() {
        assert_eq!(
            dispatch(os(&["/usr/sbin/setpe", "-w", "-f", "m"])),
            os(&["omnode", "setpe", "-w", "-f", "m"])
        );
        assert_eq!(
            dispatch(os(&["setpe", "-off"])),
            os(&["omnode", "setpe", "--off"])
        );
        assert_eq!(
            dispatch(os(&["omnode", "status", "-off"])),
            os(&["omnode", "status", "-off"])
        );
        let m = dispatch(os(&[
            "/sbin/mount.mfs",
            "mfs_mnt",
            "/mfs",
            "-o",
            "rw,dfsa=1",
        ]));
        assert_eq!(
            m,
            os(&[
                "omnode",
                "mfs",
                "mount",
                "mfs_mnt",
                "/mfs",
                "-o",
                "rw,dfsa=1"
            ])
        );
        let c = Cli::try_parse_from(m).unwrap();
        assert!(
            matches!(c.cmd, Some(Cmd::Mfs(mfscli::Cmd::Mount(ref a))) if a.options == "rw,dfsa=1")
        );
        // Every classic name names an existing subcommand.
        let cli = Cli::command();
        for c in CLASSIC {
            assert!(cli.find_subcommand(c.cmd).is_some(), "{}", c.name);
        }
    }

    #[test]
    fn options_only_on_the_commands_that_use_them() {
        let cli = Cli::command();
        let has = |sub: &str, long: &str| {
            cli.find_subcommand(sub)
                .unwrap()
                .get_arguments()
                .any(|a| a.get_long() == Some(long))
        };
        // freeze and thaw: a non-root user's go through the daemon
        assert!(has("status", "socket") && has("setpe", "socket"));
        assert!(has("freeze", "socket") && has("thaw", "socket"));
        for sub in ["keygen", "image"] {
            assert!(!has(sub, "socket"), "{sub} offers --socket");
        }
        assert!(Cli::try_parse_from(["omnode", "keygen", "--socket", "x"]).is_err());
        assert!(Cli::try_parse_from(["omnode", "--map", "m", "status"]).is_err());
    }

    #[test]
    fn port_zero_is_refused_with_a_reason() {
        let e = Cli::try_parse_from(["omnode", "--port", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port 0 is not allowed"), "{e}");
        let ok = Cli::try_parse_from(["omnode", "--port", "9000"]).unwrap();
        assert_eq!(ok.daemon.port, 9000);
    }

    #[test]
    fn help_of_help_works() {
        let h = Cli::try_parse_from(["omnode", "help", "--help"]).unwrap_err();
        assert_eq!(h.kind(), clap::error::ErrorKind::DisplayHelp);
        let c = Cli::try_parse_from(["omnode", "help", "setpe"]).unwrap();
        assert!(matches!(c.cmd, Some(Cmd::Help { command: Some(ref s) }) if s == "setpe"));
    }
}
