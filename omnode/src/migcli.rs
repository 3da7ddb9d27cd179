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
    #[command(flatten)]
    pub socket: crate::SocketArg,
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
    println!("{:>8} {:>5} {:>5} {:<10} {:>5} CMD", "PID", "NODE", "HOME", "STATE", "MOVES");
    for r in rows {
        println!(
            "{:>8} {:>5} {:>5} {:<10} {:>5} {}",
            r.pid, r.node, r.home, r.state, r.moves, r.cmd
        );
    }
    Ok(())
}
