//! DFSA (direct file-system access): which of a moved process's path calls on MFS run on the
//! node where it now runs, against that node's own `/mfs` mount, instead of going home.
//!
//! A path under `/mfs/<node>/…` means the same file on every node (each node's mount reaches
//! the same servers), so an `open("/mfs/1/data")` made by a process that moved from node 1 to
//! node 2 can run on node 2: node 2's mount fetches the data straight from node 1's mfs
//! server, and the reads and writes on the resulting fd are local fd calls (no forwarding).
//! The seed's exceptions, each of which keeps the call going home:
//! - **a different mfs/dfsa setting between nodes**: only the mounts that home and this node
//!   both have at the same path, both with `dfsa=1` and the same read-only flag, count
//!   ([`agreed`]); and a mount that is not really there now (not a FUSE file system) counts for
//!   nothing ([`Dfsa::open`]);
//! - **paths that leave the DFSA tree**: a path must be absolute, under an agreed mount, with
//!   no `..` component ([`under`]); and it is resolved below the mount with `RESOLVE_BENEATH`
//!   before it runs here, so a symlink that points out of the mount (any absolute symlink, or
//!   `..` climbing out) sends the call home ([`Dfsa::stays_beneath`]);
//! - **chdir/fchdir/getcwd**: the working directory lives at home (relative paths are resolved
//!   there), so these never run here ([`path_args`] does not list them);
//! - **dup2 onto a non-DFSA fd**: a dup2/dup3 whose target is home-backed goes home already
//!   (the classification in [`crate::remote`]); onto a local fd it stays local;
//! - **traced processes**: `ptrace` brings the process home ([`crate::remote::GoHome::Ptrace`]).
//!
//! The check and the process's own call are two steps: a process that changes a symlink or
//! its path buffer in between only reaches files its own uid may reach on this node's mount.
//!
//! Must not know: FUSE, the mfs protocol, the daemon; it is given the mounts.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::homecall::{self, Slot};
use crate::remote::Req;

/// One `/mfs` mount of a node, as the migration offer carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub path: PathBuf,
    /// Mounted with `dfsa=1`.
    pub dfsa: bool,
    pub read_only: bool,
}

/// The mounts where a process from a node with `home`'s mounts may use DFSA on a node with
/// `local`'s: same path, both `dfsa=1`, same read-only flag. Pure.
pub fn agreed(home: &[Mount], local: &[Mount]) -> Vec<PathBuf> {
    home.iter()
        .filter(|h| h.dfsa && local.iter().any(|l| l == *h))
        .map(|h| h.path.clone())
        .collect()
}

/// The part of `path` below `mount` (`.` for the mount itself), when `path` is absolute, lies
/// under `mount` and has no `..` component. Pure.
pub fn under<'a>(mount: &[u8], path: &'a [u8]) -> Option<&'a [u8]> {
    let mount = trim_slashes(mount);
    if path.first() != Some(&b'/') || mount.is_empty() {
        return None;
    }
    let rest = path.strip_prefix(mount)?;
    let rest = match rest.first() {
        None => return Some(b"."),
        Some(b'/') => &rest[1..],
        Some(_) => return None, // /mfsx is not under /mfs
    };
    if rest.split(|&b| b == b'/').any(|c| c == b"..") {
        return None;
    }
    let rest = trim_slashes_front(rest);
    Some(if rest.is_empty() { b"." } else { rest })
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let mut p = p;
    while p.len() > 1 && p.last() == Some(&b'/') {
        p = &p[..p.len() - 1];
    }
    if p == b"/" { b"" } else { p }
}

fn trim_slashes_front(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|&&b| b == b'/').count();
    &p[n..]
}

/// The addresses (in the process) of the paths that must all be DFSA paths for forwarded call
/// `req` with arguments `args` to run here; `None`: the call never runs here by DFSA. Pure.
pub fn path_args(req: Req, args: [u64; 6]) -> Option<Vec<u64>> {
    match req {
        // open, creat, openat: an absolute path makes the dirfd irrelevant.
        Req::Openat { path, .. } => Some(vec![path]),
        Req::Sys { nr } => {
            if nr == libc::SYS_chdir {
                return None; // the working directory lives at home
            }
            let t = homecall::template(nr)?;
            let mut out: Vec<u64> = t
                .iter()
                .zip(args)
                .filter(|(s, _)| matches!(s, Slot::Path | Slot::PathOrNull))
                .map(|(_, a)| a)
                .collect();
            // symlink's target is text, not a path that is resolved: only the new name counts.
            if nr == libc::SYS_symlink || nr == libc::SYS_symlinkat {
                out.remove(0);
            }
            // utimensat(fd, NULL, …) works on an fd: not a path call.
            if t.get(1) == Some(&Slot::PathOrNull) && args[1] == 0 {
                return None;
            }
            (!out.is_empty()).then_some(out)
        }
        _ => None,
    }
}

/// DFSA for one moved process on this node: the agreed mounts, opened.
#[derive(Debug)]
pub struct Dfsa {
    roots: Vec<(Vec<u8>, OwnedFd)>,
}

/// `man 2 openat2`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

impl Dfsa {
    /// Opens the agreed mounts that are FUSE mounts right now (one that is unmounted, or
    /// unreadable, counts for nothing: its calls go home). `None` when none is left.
    pub fn open(paths: &[PathBuf]) -> Option<Dfsa> {
        let mut roots = Vec::new();
        for p in paths {
            let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: open of a NUL-terminated path; the fd is owned below.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                continue;
            }
            // SAFETY: fd was just opened and is ours alone.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fstatfs writes one statfs into the zeroed struct we own.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: as above; fd is valid.
            let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
            if r != 0 || st.f_type as i64 != FUSE_SUPER_MAGIC {
                tracing::info!(mount = %p.display(), "no mfs mounted here now: no DFSA through it");
                continue;
            }
            roots.push((p.as_os_str().as_bytes().to_vec(), fd));
        }
        (!roots.is_empty()).then_some(Dfsa { roots })
    }

    /// Whether every path in `paths` is a DFSA path here: lexically under a mount, and
    /// resolving below it (the file, or when it does not exist its directory).
    pub fn allows(&self, paths: &[Vec<u8>]) -> bool {
        paths.iter().all(|p| {
            self.roots.iter().any(|(m, fd)| {
                under(m, p).is_some_and(|rel| Self::stays_beneath(fd.as_raw_fd(), rel))
            })
        })
    }

    /// `rel` resolves below `root` (no symlink or `..` leads out; magic links refused); a
    /// missing last component is fine when its directory resolves below `root`.
    fn stays_beneath(root: i32, rel: &[u8]) -> bool {
        match Self::resolve(root, rel, false) {
            Ok(()) => true,
            Err(libc::ENOENT) => {
                let rel = trim_slashes(rel);
                let dir: &[u8] = match rel.iter().rposition(|&b| b == b'/') {
                    Some(i) => &rel[..i],
                    None => b".",
                };
                let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
                Self::resolve(root, dir, true).is_ok()
            }
            Err(_) => false,
        }
    }

    fn resolve(root: i32, rel: &[u8], dir: bool) -> Result<(), i32> {
        let c = CString::new(rel).map_err(|_| libc::EINVAL)?;
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_CLOEXEC | if dir { libc::O_DIRECTORY } else { 0 })
                as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and an open_how of the
        // size passed; the returned fd is closed at once.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        // SAFETY: the fd was just opened by us.
        unsafe { libc::close(fd as i32) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, dfsa: bool, ro: bool) -> Mount {
        Mount {
            path: p.into(),
            dfsa,
            read_only: ro,
        }
    }

    #[test]
    fn only_the_same_setting_on_both_nodes_counts() {
        let home = [m("/mfs", true, false), m("/other", true, false)];
        assert_eq!(
            agreed(&home, &[m("/mfs", true, false)]),
            vec![PathBuf::from("/mfs")]
        );
        assert!(
            agreed(&home, &[m("/mfs", false, false)]).is_empty(),
            "dfsa=0 here"
        );
        assert!(
            agreed(&home, &[m("/mfs", true, true)]).is_empty(),
            "read-only here"
        );
        assert!(
            agreed(&home, &[m("/mnt/mfs", true, false)]).is_empty(),
            "another path"
        );
        assert!(agreed(&[m("/mfs", false, false)], &[m("/mfs", false, false)]).is_empty());
        assert!(agreed(&[], &[m("/mfs", true, false)]).is_empty());
    }

    #[test]
    fn paths_under_the_mount_without_dotdot() {
        assert_eq!(under(b"/mfs", b"/mfs/1/a/b"), Some(&b"1/a/b"[..]));
        assert_eq!(under(b"/mfs/", b"/mfs//1/a"), Some(&b"1/a"[..]));
        assert_eq!(under(b"/mfs", b"/mfs"), Some(&b"."[..]));
        assert_eq!(under(b"/mfs", b"/mfs/"), Some(&b"."[..]));
        assert_eq!(under(b"/mfs", b"/mfs/1/./a"), Some(&b"1/./a"[..]));
        assert_eq!(under(b"/mfs", b"/mfsx/1"), None);
        assert_eq!(
            under(b"/mfs", b"mfs/1/a"),
            None,
            "relative: resolved at home"
        );
        assert_eq!(under(b"/mfs", b"/mfs/1/../../etc/passwd"), None);
        assert_eq!(under(b"/mfs", b"/mfs/1/a/.."), None);
        assert_eq!(under(b"/mfs", b"/etc/passwd"), None);
        assert_eq!(
            under(b"/", b"/etc/passwd"),
            None,
            "a mount at / is no mount"
        );
    }

    #[test]
    fn which_arguments_are_paths() {
        let open = Req::Openat {
            dirfd: libc::AT_FDCWD,
            path: 0x1000,
            flags: 0,
            mode: 0,
        };
        assert_eq!(path_args(open, [0; 6]), Some(vec![0x1000]));
        let args = [10, 11, 12, 13, 14, 15];
        let sys = |nr| path_args(Req::Sys { nr }, args);
        assert_eq!(sys(libc::SYS_newfstatat), Some(vec![11]));
        assert_eq!(sys(libc::SYS_stat), Some(vec![10]));
        assert_eq!(sys(libc::SYS_rename), Some(vec![10, 11]));
        assert_eq!(sys(libc::SYS_renameat2), Some(vec![11, 13]));
        assert_eq!(sys(libc::SYS_symlink), Some(vec![11]), "the target is text");
        assert_eq!(sys(libc::SYS_symlinkat), Some(vec![12]));
        assert_eq!(sys(libc::SYS_chdir), None, "cwd lives at home");
        assert_eq!(sys(libc::SYS_getcwd), None);
        assert_eq!(sys(libc::SYS_fsync), None);
        assert_eq!(
            path_args(
                Req::Sys {
                    nr: libc::SYS_utimensat
                },
                [3, 0, 0, 0, 0, 0]
            ),
            None,
            "utimensat on an fd"
        );
        assert_eq!(
            path_args(
                Req::Read {
                    fd: 3,
                    buf: 0,
                    len: 1
                },
                [0; 6]
            ),
            None
        );
    }

    /// Removes the directory tree when dropped, also when the test fails.
    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn resolution_stays_below_the_mount() {
        let t = Tree(PathBuf::from(format!(
            "/tmp/h11-dfsa-{}",
            std::process::id()
        )));
        let root = t.0.join("mnt");
        std::fs::create_dir_all(root.join("1/dir")).unwrap();
        std::fs::write(root.join("1/dir/file"), b"x").unwrap();
        std::fs::write(t.0.join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("1/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("1/up")).unwrap();
        std::os::unix::fs::symlink("dir/file", root.join("1/rel")).unwrap();
        std::os::unix::fs::symlink("1", root.join("home")).unwrap();
        let c = CString::new(root.as_os_str().as_bytes()).unwrap();
        // SAFETY: open of a NUL-terminated path; owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: just opened, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ok = |rel: &str| Dfsa::stays_beneath(fd.as_raw_fd(), rel.as_bytes());
        assert!(ok("1/dir/file"));
        assert!(ok("1/rel"), "a relative symlink inside");
        assert!(
            ok("home/dir/file"),
            "a magic-link-like symlink to a node folder"
        );
        assert!(
            ok("1/dir/new"),
            "a file to be created in a directory inside"
        );
        assert!(!ok("1/nodir/new"), "its directory is missing");
        assert!(!ok("1/abs"), "an absolute symlink leaves the mount");
        assert!(!ok("1/up"), "a symlink climbing out");
        let d = Dfsa {
            roots: vec![(root.as_os_str().as_bytes().to_vec(), fd)],
        };
        let p = |s: &str| format!("{}/{s}", root.display()).into_bytes();
        assert!(d.allows(&[p("1/dir/file"), p("1/dir/other")]));
        assert!(!d.allows(&[p("1/dir/file"), p("1/abs")]), "one path leaves");
        assert!(!d.allows(&[b"/etc/passwd".to_vec()]));
    }
}
