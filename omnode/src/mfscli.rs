//! `omnode mfs select NODE` and `omnode mfs mount` (also reached as `mount.mfs`, which
//! mount(8) runs for `mount -t mfs` and for the seed's fstab line `mfs_mnt /mfs mfs dfsa=1 0 0`):
//! thin clients of the control socket; the daemon mounts.

use std::path::PathBuf;

use crate::Error;
use crate::control::{self, Request, Response};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Set /mfs/selected for a process (default: the calling shell) and the children it
    /// starts from now on. (Or set OMNODE_MFS_SELECTED=NODE in a program's environment.)
    Select {
        /// The node /mfs/selected stands for.
        node: u32,
        /// The process (yours; root: any). Default: the parent of this command (the shell).
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        socket: crate::SocketArg,
    },
    /// Mount /mfs at DIR through the running daemon (what `mount.mfs SPEC DIR -o OPTS` does).
    Mount(MountArgs),
}

/// mount(8)'s helper interface: `mount.mfs SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The source (`mfs_mnt` in the seed's fstab; any word).
    pub spec: String,
    /// Where to mount.
    pub dir: PathBuf,
    /// Options: ro, rw, dfsa=0|1, and mount(8)'s generic ones.
    #[arg(short = 'o', default_value = "")]
    pub options: String,
    /// Sloppy: accepted (unknown options are still refused by the daemon).
    #[arg(short = 's')]
    pub sloppy: bool,
    /// Fake: check the options and do nothing.
    #[arg(short = 'f')]
    pub fake: bool,
    /// Do not write /etc/mtab (there is none to write).
    #[arg(short = 'n')]
    pub no_mtab: bool,
    #[arg(short = 'v')]
    pub verbose: bool,
    /// The type mount(8) passes (mfs or mfs.SUBTYPE).
    #[arg(short = 't')]
    pub fstype: Option<String>,
    /// Another mount namespace: not supported (the daemon mounts in its own).
    #[arg(short = 'N')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

pub fn run(cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Select { node, pid, socket } => {
            // SAFETY: getppid has no preconditions.
            let pid = pid.unwrap_or_else(|| unsafe { libc::getppid() } as u32);
            answer(&socket.socket, &Request::MfsSelect { pid, node })
        }
        Cmd::Mount(a) => {
            if a.namespace.is_some() {
                return Err(Error::Config(
                    "mount.mfs: -N (another mount namespace) is not supported".into(),
                ));
            }
            if let Some(t) = &a.fstype
                && t != "mfs"
                && !t.starts_with("mfs.")
            {
                return Err(Error::Config(format!("mount.mfs: type '{t}' is not mfs")));
            }
            crate::mfsd::MountOptions::parse(&a.options)
                .map_err(|e| Error::Config(format!("mount.mfs: {e}")))?;
            if a.fake {
                return Ok(());
            }
            let dir = std::path::absolute(&a.dir)
                .map_err(|e| Error::Config(format!("mount.mfs: {}: {e}", a.dir.display())))?;
            let _ = (&a.spec, a.sloppy, a.no_mtab, a.verbose);
            answer(
                &a.socket.socket,
                &Request::MfsMount {
                    dir,
                    options: a.options,
                },
            )
        }
    }
}

fn answer(path: &std::path::Path, req: &Request) -> Result<(), Error> {
    match control::call(path, req)? {
        Response::Done(s) => {
            println!("{s}");
            Ok(())
        }
        Response::Error(e) => Err(Error::Refused {
            path: path.to_owned(),
            reason: e,
        }),
        other => Err(Error::Refused {
            path: path.to_owned(),
            reason: format!("unexpected answer {other:?}"),
        }),
    }
}
