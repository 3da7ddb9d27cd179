//! `setpe` (also `omnode setpe`): the classic openMosix map tool, over the control socket.
//!
//! - `setpe -w -f FILE`: load the map FILE into the running node (nodes added and removed
//!   without restarting anyone; the daemon remembers FILE for SIGHUP).
//! - `setpe -r`: print the map in use.
//! - `setpe -c -f FILE`: check FILE only (file and line on error); nothing is changed and no
//!   daemon is needed.
//! - `setpe -off`: this node leaves the cluster (its daemon stops).

use std::path::{Path, PathBuf};

use discovery::map::Map;

use crate::control::{self, Request, Response};
use crate::{Error, SocketArg};

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("action")
        .required(true)
        .args(["write", "read", "check", "off"])
))]
#[command(
    after_help = "Examples:\n  setpe -w -f /etc/openmosix.map   # load a new map into the running node\n  \
setpe -r                         # print the map in use\n  setpe -c -f new.map              # check a map, change nothing\n  \
setpe -off                       # this node leaves the cluster\n\n\
Every node of a cluster must end up with the same map: load the new map on every running \
node (nodes whose maps differ refuse each other until they agree); new nodes start with it."
)]
pub struct Args {
    /// Load the map given with -f into the running node.
    #[arg(short = 'w', long = "write", requires = "file")]
    pub write: bool,
    /// Print the map the running node uses.
    #[arg(short = 'r', long = "read")]
    pub read: bool,
    /// Only check the map given with -f: print what is wrong (file and line); change nothing.
    #[arg(short = 'c', long = "check", requires = "file")]
    pub check: bool,
    /// The map file (for -w and -c).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// This node leaves the cluster: its daemon stops (written `-off`, as in openMosix).
    #[arg(long = "off")]
    pub off: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(a: Args) -> Result<(), Error> {
    let socket = &a.socket.socket;
    if a.check {
        let file = a.file.as_deref().expect("clap requires -f with -c");
        let map = Map::load(file)?;
        println!(
            "{}: a valid map of {} nodes ({}); nothing changed",
            file.display(),
            map.len(),
            ids(&map)
        );
        return Ok(());
    }
    if a.write {
        let file = a.file.as_deref().expect("clap requires -f with -w");
        // Say what is wrong here, with file and line, before asking the daemon.
        Map::load(file)?;
        let path = absolute(file)?;
        return match ask(socket, Request::SetMap { path })? {
            Response::Done(text) => {
                println!("{text}");
                Ok(())
            }
            other => Err(unexpected(socket, other)),
        };
    }
    if a.read {
        return match ask(socket, Request::GetMap)? {
            Response::Map { file, text } => {
                println!("# the map in use, from {file}");
                print!("{text}");
                Ok(())
            }
            other => Err(unexpected(socket, other)),
        };
    }
    // -off (clap requires one action).
    match ask(socket, Request::Leave)? {
        Response::Done(text) => {
            println!("{text}");
            Ok(())
        }
        other => Err(unexpected(socket, other)),
    }
}

fn ids(map: &Map) -> String {
    let ids: Vec<String> = map.ids().map(|i| i.to_string()).collect();
    if ids.len() > 8 {
        format!("ids {}..{}", ids[0], ids[ids.len() - 1])
    } else {
        format!("ids {}", ids.join(", "))
    }
}

fn absolute(file: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(file).map_err(|e| {
        Error::Config(format!(
            "{}: cannot make the path absolute: {e}",
            file.display()
        ))
    })
}

fn ask(socket: &Path, req: Request) -> Result<Response, Error> {
    match control::call(socket, &req)? {
        Response::Error(reason) => Err(Error::Refused {
            path: socket.to_owned(),
            reason,
        }),
        r => Ok(r),
    }
}

fn unexpected(socket: &Path, r: Response) -> Error {
    Error::Refused {
        path: socket.to_owned(),
        reason: format!("unexpected answer: {r:?}"),
    }
}
