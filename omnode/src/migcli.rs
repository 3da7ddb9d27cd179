//! `omnode migrate PID NODE|home` and `omnode ps` (classic names `migrate`, `mps`): thin
//! clients of the control socket.

use std::path::Path;

use crate::Error;
use crate::control::{self, Request, Response};

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The process to move (yours; root: any).
    pub pid: i32,
    /// The node to move it to, or `home`.
    pub node: String,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// `{"processes":[{"pid":N,"node":N,"home":N,"state":"...","moves":N,"cmd":"..."}]}`.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (like mtop), until interrupted.
    #[arg(long, value_name = "SECS", conflicts_with = "json")]
    pub watch: Option<f64>,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Start on one of these nodes (`-j2`: node 2; `-j2,3`: the best of them now).
    #[arg(short = 'j', value_name = "NODES", conflicts_with_all = ["home", "best"])]
    pub nodes: Option<String>,
    /// Start at home (the balancer may still move it later, unless -L).
    #[arg(short = 'h', conflicts_with = "best")]
    pub home: bool,
    /// Start on the best node now (the default).
    #[arg(short = 'b')]
    pub best: bool,
    /// Allow automatic moves (the default).
    #[arg(short = 'l', conflicts_with = "lock")]
    pub unlock: bool,
    /// Lock: never move it automatically (an explicit `migrate` still may).
    #[arg(short = 'L')]
    pub lock: bool,
    /// Spread the process tree: the program itself stays at home and every program it or
    /// its descendants start (each exec) is placed like a `mosrun` of its own (`mosrun -t
    /// make -j8` puts the compilers on other nodes; shells, make and compiler drivers, which
    /// start others, stay home). Each child keeps its home PID, so wait() and signals work as
    /// at home. Without -t the children run where their parent runs.
    #[arg(short = 't', long = "tree")]
    pub tree: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    #[command(flatten)]
    pub socket: crate::SocketArg,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub cmd: Vec<std::ffi::OsString>,
}

/// `mosrun`: becomes the program (same PID: `$?`, `wait` and job control are the program's),
/// after asking the daemon to place it ([`crate::balancer`]: the best node now, home with
/// `-h`, one of a list with `-j`). Placed elsewhere, the daemon has seized it before it answers:
/// the exec stops it before the program's first instruction and it moves from there.
pub fn run(a: RunArgs) -> Result<(), Error> {
    use crate::balancer::Placement;
    use std::os::unix::process::CommandExt;
    let path = &a.socket.socket;
    let place = match &a.nodes {
        Some(nodes) => Placement::Among(
            nodes
                .split(',')
                .map(|n| {
                    n.parse().map_err(|_| {
                        Error::Config(format!("-j{nodes}: '{n}' is not a node number"))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        None if a.home => Placement::Home,
        None => Placement::Best,
    };
    let req = Request::Place {
        pid: std::process::id() as i32,
        place,
        lock: a.lock,
        tree: a.tree,
    };
    match control::call(path, &req)? {
        Response::Done(_) => {}
        Response::Error(e) => return Err(refused(path, e)),
        other => return Err(refused(path, format!("unexpected answer {other:?}"))),
    }
    let err = std::process::Command::new(&a.cmd[0])
        .args(&a.cmd[1..])
        .exec();
    Err(Error::Config(format!(
        "cannot run {}: {err}",
        std::path::Path::new(&a.cmd[0]).display()
    )))
}

fn refused(path: &Path, reason: String) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

pub fn migrate(a: MigrateArgs) -> Result<(), Error> {
    let path = &a.socket.socket;
    match control::call(
        path,
        &Request::Migrate {
            pid: a.pid,
            to: a.node,
        },
    )? {
        Response::Done(s) => {
            println!("{s}");
            Ok(())
        }
        Response::Error(e) => Err(refused(path, e)),
        other => Err(refused(path, format!("unexpected answer {other:?}"))),
    }
}

pub fn ps(a: PsArgs) -> Result<(), Error> {
    if let Some(secs) = a.watch {
        let every = std::time::Duration::from_secs_f64(secs.clamp(0.1, 3600.0));
        loop {
            // clear the screen, then the table
            print!("\x1b[H\x1b[2J");
            // keeps watching while the daemon is away, saying so
            if let Err(e) = ps(PsArgs {
                watch: None,
                json: false,
                socket: a.socket.clone(),
            }) {
                println!("omnode: {e}");
            }
            std::thread::sleep(every);
        }
    }
    let path = &a.socket.socket;
    let rows = match control::call(path, &Request::Ps)? {
        Response::Ps(r) => r,
        Response::Error(e) => return Err(refused(path, e)),
        other => return Err(refused(path, format!("unexpected answer {other:?}"))),
    };
    if a.json {
        let v = serde_json::json!({ "processes": rows });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:>8} {:>5} {:>5} {:<10} {:>5} CMD",
        "PID", "NODE", "HOME", "STATE", "MOVES"
    );
    for r in rows {
        println!(
            "{:>8} {:>5} {:>5} {:<10} {:>5} {}",
            r.pid, r.node, r.home, r.state, r.moves, r.cmd
        );
    }
    Ok(())
}
