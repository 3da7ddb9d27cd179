//! The mfs server against a temp dir with real files: every operation's effect is checked on
//! the real file system, permissions per uid (as root: acting as nobody), escapes, special
//! files and read-only exports.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bytes::Bytes;
use mfs::Error;
use mfs::proto::{Cred, Handle, Kind, Op, ROOT, Reply, SetAttr};
use mfs::server::{Export, Server};

const NOBODY: u32 = 65534;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct T {
    rt: tokio::runtime::Runtime,
    srv: Server,
    dir: tempfile::TempDir,
}

impl T {
    fn new(read_only: bool) -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        T::at(dir, read_only)
    }
    fn at(dir: tempfile::TempDir, read_only: bool) -> T {
        let srv = Server::start(
            &Export {
                root: dir.path().to_path_buf(),
                read_only,
            },
            2,
        )
        .unwrap();
        T { rt: rt(), srv, dir }
    }
    fn p(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
    fn call_as(&self, cred: &Cred, op: Op, data: &[u8]) -> Result<(Reply, Bytes), Error> {
        self.rt.block_on(
            self.srv
                .call(cred.clone(), op, Bytes::copy_from_slice(data)),
        )
    }
    fn call(&self, op: Op) -> Result<Reply, Error> {
        self.call_as(&me(), op, b"").map(|r| r.0)
    }
    fn lookup(&self, parent: Handle, name: &str) -> Result<Handle, Error> {
        match self.call(Op::Lookup {
            parent,
            name: name.into(),
        })? {
            Reply::Entry { handle, .. } => Ok(handle),
            r => panic!("lookup answered {r:?}"),
        }
    }
}

fn me() -> Cred {
    // SAFETY: plain id queries.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Cred {
        uid,
        gid,
        groups: vec![],
    }
}

fn is_root() -> bool {
    // SAFETY: plain id query.
    unsafe { libc::geteuid() == 0 }
}

/// Tests that act as another uid need root; under CI they must run, so they fail there.
fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (it acts as uid {NOBODY}); CI must run it as root"
    );
    eprintln!("skipping {test}: needs root to act as uid {NOBODY}");
    false
}

fn errno(r: Result<impl std::fmt::Debug, Error>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

#[test]
fn operations_change_the_real_files() {
    let t = T::new(false);
    // create + write + read
    let (h, fh) = match t
        .call(Op::Create {
            parent: ROOT,
            name: b"a.txt".to_vec(),
            mode: 0o640,
            flags: libc::O_RDWR,
        })
        .unwrap()
    {
        Reply::Created { handle, fh, attr } => {
            assert_eq!(attr.kind, Kind::File);
            (handle, fh)
        }
        r => panic!("{r:?}"),
    };
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    match t
        .call_as(&me(), Op::Write { fh, offset: 5 }, &data)
        .unwrap()
        .0
    {
        Reply::Written(n) => assert_eq!(n as usize, data.len()),
        r => panic!("{r:?}"),
    }
    let on_disk = std::fs::read(t.p("a.txt")).unwrap();
    assert_eq!(&on_disk[5..], &data[..]);
    assert_eq!(&on_disk[..5], &[0; 5]);
    assert_eq!(
        std::fs::metadata(t.p("a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let (r, got) = t
        .call_as(
            &me(),
            Op::Read {
                fh,
                offset: 1000,
                size: 4096,
            },
            b"",
        )
        .unwrap();
    assert_eq!(r, Reply::Data);
    assert_eq!(&got[..], &on_disk[1000..5096]);
    // a read past the end is short
    let (_, got) = t
        .call_as(
            &me(),
            Op::Read {
                fh,
                offset: 199_000,
                size: 4096,
            },
            b"",
        )
        .unwrap();
    assert_eq!(got.len(), on_disk.len() - 199_000);
    t.call(Op::Fsync {
        fh,
        datasync: false,
    })
    .unwrap();
    t.call(Op::Release { fh }).unwrap();
    assert_eq!(errno(t.call(Op::Release { fh })), libc::EBADF);

    // getattr matches stat
    let md = std::fs::metadata(t.p("a.txt")).unwrap();
    match t.call(Op::GetAttr { handle: h }).unwrap() {
        Reply::Attr(a) => {
            assert_eq!(
                (a.size, a.ino, a.perm, a.uid),
                (md.len(), md.ino(), 0o640, md.uid())
            );
        }
        r => panic!("{r:?}"),
    }
    // setattr: chmod, truncate, mtime
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(10),
        mtime: Some(mfs::proto::TimeSet::At(1_000_000, 5)),
        ..Default::default()
    };
    t.call(Op::SetAttr { handle: h, set }).unwrap();
    let md = std::fs::metadata(t.p("a.txt")).unwrap();
    assert_eq!(
        (md.len(), md.mode() & 0o777, md.mtime()),
        (10, 0o600, 1_000_000)
    );

    // mkdir, rename into it, link, symlink, readlink, readdir
    let d = match t
        .call(Op::Mkdir {
            parent: ROOT,
            name: b"d".to_vec(),
            mode: 0o750,
        })
        .unwrap()
    {
        Reply::Entry { handle, attr } => {
            assert_eq!(attr.kind, Kind::Dir);
            handle
        }
        r => panic!("{r:?}"),
    };
    assert_eq!(std::fs::metadata(t.p("d")).unwrap().mode() & 0o777, 0o750);
    t.call(Op::Rename {
        parent: ROOT,
        name: b"a.txt".to_vec(),
        new_parent: d,
        new_name: b"b.txt".to_vec(),
        flags: 0,
    })
    .unwrap();
    assert!(!t.p("a.txt").exists() && t.p("d/b.txt").exists());
    t.call(Op::Link {
        handle: h,
        new_parent: ROOT,
        new_name: b"hard".to_vec(),
    })
    .unwrap();
    assert_eq!(
        std::fs::metadata(t.p("hard")).unwrap().ino(),
        std::fs::metadata(t.p("d/b.txt")).unwrap().ino()
    );
    let l = match t
        .call(Op::Symlink {
            parent: ROOT,
            name: b"sl".to_vec(),
            target: b"d/b.txt".to_vec(),
        })
        .unwrap()
    {
        Reply::Entry { handle, attr } => {
            assert_eq!(attr.kind, Kind::Symlink);
            handle
        }
        r => panic!("{r:?}"),
    };
    assert_eq!(std::fs::read_link(t.p("sl")).unwrap(), Path::new("d/b.txt"));
    assert_eq!(
        t.call(Op::ReadLink { handle: l }).unwrap(),
        Reply::Link(b"d/b.txt".to_vec())
    );
    let fh = match t.call(Op::OpenDir { handle: ROOT }).unwrap() {
        Reply::Opened { fh, .. } => fh,
        r => panic!("{r:?}"),
    };
    let mut names: Vec<(String, Kind)> = Vec::new();
    let mut off = 0;
    loop {
        match t
            .call(Op::ReadDir {
                fh,
                offset: off,
                max: 2,
            })
            .unwrap()
        {
            Reply::Dir { entries, eof } => {
                off += entries.len() as u64;
                names.extend(
                    entries
                        .into_iter()
                        .map(|e| (String::from_utf8(e.name).unwrap(), e.kind)),
                );
                if eof {
                    break;
                }
            }
            r => panic!("{r:?}"),
        }
    }
    names.sort();
    let mut want: Vec<(String, Kind)> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let k = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                Kind::File
            };
            (e.file_name().into_string().unwrap(), k)
        })
        .collect();
    want.sort();
    assert_eq!(names, want);
    t.call(Op::ReleaseDir { fh }).unwrap();

    // errors, as the kernel gives them
    assert_eq!(errno(t.lookup(ROOT, "nope")), libc::ENOENT);
    assert_eq!(
        errno(t.call(Op::Mkdir {
            parent: ROOT,
            name: b"d".to_vec(),
            mode: 0o755
        })),
        libc::EEXIST
    );
    assert_eq!(
        errno(t.call(Op::Rmdir {
            parent: ROOT,
            name: b"d".to_vec()
        })),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(t.call(Op::Unlink {
            parent: ROOT,
            name: b"d".to_vec()
        })),
        libc::EISDIR
    );
    let excl = Op::Create {
        parent: ROOT,
        name: b"hard".to_vec(),
        mode: 0o644,
        flags: libc::O_RDWR | libc::O_EXCL,
    };
    assert_eq!(errno(t.call(excl)), libc::EEXIST);
    // unlink and rmdir
    t.call(Op::Unlink {
        parent: d,
        name: b"b.txt".to_vec(),
    })
    .unwrap();
    t.call(Op::Rmdir {
        parent: ROOT,
        name: b"d".to_vec(),
    })
    .unwrap();
    assert!(!t.p("d").exists());
    // statfs gives the real numbers of the file system
    match t.call(Op::StatFs { handle: ROOT }).unwrap() {
        Reply::StatFs(s) => {
            // SAFETY: statvfs into a zeroed struct for a valid path.
            let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
            let c = std::ffi::CString::new(t.dir.path().to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0);
            assert_eq!((s.blocks, s.bsize as u64), (v.f_blocks, v.f_bsize));
        }
        r => panic!("{r:?}"),
    }
    // a forgotten handle is stale
    let h2 = t.lookup(ROOT, "hard").unwrap();
    assert_eq!(h2, h, "one handle per inode");
    t.call(Op::Forget { handle: h2, n: 3 }).unwrap(); // create, link, lookup
    assert_eq!(errno(t.call(Op::GetAttr { handle: h2 })), libc::ESTALE);
}

#[test]
fn paths_cannot_leave_the_export() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret"), b"s").unwrap();
    let inner = outer.path().join("export");
    std::fs::create_dir(&inner).unwrap();
    std::fs::create_dir(inner.join("sub")).unwrap();
    std::os::unix::fs::symlink(outer.path(), inner.join("up")).unwrap();
    std::os::unix::fs::symlink("../secret", inner.join("rel")).unwrap();
    let srv = Server::start(
        &Export {
            root: inner.clone(),
            read_only: false,
        },
        1,
    )
    .unwrap();
    let rt = rt();
    let call = |op: Op| rt.block_on(srv.call(me(), op, Bytes::new())).map(|r| r.0);
    let lookup = |p: Handle, n: &[u8]| {
        call(Op::Lookup {
            parent: p,
            name: n.to_vec(),
        })
    };
    assert_eq!(errno(lookup(ROOT, b"..")), libc::EXDEV);
    assert_eq!(errno(lookup(ROOT, b".")), libc::EXDEV);
    assert_eq!(errno(lookup(ROOT, b"sub/../../secret")), libc::EINVAL);
    assert_eq!(errno(lookup(ROOT, b"")), libc::EINVAL);
    let sub = match lookup(ROOT, b"sub").unwrap() {
        Reply::Entry { handle, .. } => handle,
        r => panic!("{r:?}"),
    };
    assert_eq!(errno(lookup(sub, b"..")), libc::EXDEV);
    // A symlink is looked up as itself, never followed on the server.
    let up = match lookup(ROOT, b"up").unwrap() {
        Reply::Entry { handle, attr } => {
            assert_eq!(attr.kind, Kind::Symlink);
            handle
        }
        r => panic!("{r:?}"),
    };
    assert_eq!(errno(lookup(up, b"secret")), libc::ENOTDIR);
    assert_eq!(errno(call(Op::OpenDir { handle: up })), libc::ENOTDIR);
    let rel = match lookup(ROOT, b"rel").unwrap() {
        Reply::Entry { handle, .. } => handle,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        errno(call(Op::Open {
            handle: rel,
            flags: libc::O_RDONLY
        })),
        libc::EINVAL
    );
    // Creating through a symlink is refused too.
    std::os::unix::fs::symlink(outer.path().join("made"), inner.join("dangling")).unwrap();
    let c = Op::Create {
        parent: ROOT,
        name: b"dangling".to_vec(),
        mode: 0o644,
        flags: libc::O_WRONLY,
    };
    assert_eq!(errno(call(c)), libc::ELOOP);
    assert!(!outer.path().join("made").exists());
}

#[test]
fn special_files_and_proc_are_not_exported() {
    let t = T::new(false);
    let fifo = std::ffi::CString::new(t.p("fifo").to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(t.p("sock")).unwrap();
    std::fs::write(t.p("plain"), b"x").unwrap();
    if is_root() {
        let dev = std::ffi::CString::new(t.p("null").to_str().unwrap()).unwrap();
        // SAFETY: valid path; /dev/null's numbers.
        assert_eq!(
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
    }
    for name in ["fifo", "sock", "null"] {
        assert_eq!(errno(t.lookup(ROOT, name)), libc::ENOENT, "{name}");
    }
    let fh = match t.call(Op::OpenDir { handle: ROOT }).unwrap() {
        Reply::Opened { fh, .. } => fh,
        r => panic!("{r:?}"),
    };
    match t
        .call(Op::ReadDir {
            fh,
            offset: 0,
            max: 100,
        })
        .unwrap()
    {
        Reply::Dir { entries, eof } => {
            assert!(eof);
            let names: Vec<_> = entries.iter().map(|e| e.name.as_slice()).collect();
            assert_eq!(names, vec![b"plain".as_slice()]);
        }
        r => panic!("{r:?}"),
    }
    // The whole root: /proc is hidden, /etc is there.
    let srv = Server::start(
        &Export {
            root: "/".into(),
            read_only: true,
        },
        1,
    )
    .unwrap();
    let rt = rt();
    let lookup = |n: &[u8]| {
        rt.block_on(srv.call(
            me(),
            Op::Lookup {
                parent: ROOT,
                name: n.to_vec(),
            },
            Bytes::new(),
        ))
    };
    assert_eq!(errno(lookup(b"proc")), libc::ENOENT);
    assert!(lookup(b"etc").is_ok());
    let fh = match rt
        .block_on(srv.call(me(), Op::OpenDir { handle: ROOT }, Bytes::new()))
        .unwrap()
        .0
    {
        Reply::Opened { fh, .. } => fh,
        r => panic!("{r:?}"),
    };
    match rt
        .block_on(srv.call(
            me(),
            Op::ReadDir {
                fh,
                offset: 0,
                max: 1000,
            },
            Bytes::new(),
        ))
        .unwrap()
        .0
    {
        Reply::Dir { entries, .. } => {
            let names: Vec<_> = entries.iter().map(|e| e.name.as_slice()).collect();
            assert!(
                names.contains(&b"etc".as_slice()) && !names.contains(&b"proc".as_slice()),
                "{names:?}"
            );
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_read_only_export_refuses_every_change() {
    let t = T::new(true);
    std::fs::write(t.p("f"), b"hello").unwrap();
    std::fs::create_dir(t.p("d")).unwrap();
    let f = t.lookup(ROOT, "f").unwrap();
    let fh = match t
        .call(Op::Open {
            handle: f,
            flags: libc::O_RDONLY,
        })
        .unwrap()
    {
        Reply::Opened { fh, .. } => fh,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        &t.call_as(
            &me(),
            Op::Read {
                fh,
                offset: 0,
                size: 100
            },
            b""
        )
        .unwrap()
        .1[..],
        b"hello"
    );
    let refused = [
        Op::Open {
            handle: f,
            flags: libc::O_WRONLY,
        },
        Op::Open {
            handle: f,
            flags: libc::O_RDONLY | libc::O_TRUNC,
        },
        Op::Write { fh, offset: 0 },
        Op::Create {
            parent: ROOT,
            name: b"n".to_vec(),
            mode: 0o644,
            flags: libc::O_WRONLY,
        },
        Op::Mkdir {
            parent: ROOT,
            name: b"n".to_vec(),
            mode: 0o755,
        },
        Op::Unlink {
            parent: ROOT,
            name: b"f".to_vec(),
        },
        Op::Rmdir {
            parent: ROOT,
            name: b"d".to_vec(),
        },
        Op::Rename {
            parent: ROOT,
            name: b"f".to_vec(),
            new_parent: ROOT,
            new_name: b"g".to_vec(),
            flags: 0,
        },
        Op::Link {
            handle: f,
            new_parent: ROOT,
            new_name: b"g".to_vec(),
        },
        Op::Symlink {
            parent: ROOT,
            name: b"g".to_vec(),
            target: b"f".to_vec(),
        },
        Op::SetAttr {
            handle: f,
            set: SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        },
    ];
    for op in refused {
        let what = format!("{op:?}");
        assert_eq!(errno(t.call_as(&me(), op, b"XX")), libc::EROFS, "{what}");
    }
    assert_eq!(std::fs::read(t.p("f")).unwrap(), b"hello");
    assert!(t.p("d").exists() && !t.p("g").exists() && !t.p("n").exists());
    assert_eq!(std::fs::metadata(t.p("f")).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn the_kernel_checks_permissions_for_the_calling_uid() {
    if !need_root("the_kernel_checks_permissions_for_the_calling_uid") {
        return;
    }
    let t = T::new(false);
    let nobody = Cred {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![],
    };
    let as_nobody = |op: Op| t.call_as(&nobody, op, b"data").map(|r| r.0);
    std::fs::write(t.p("private"), b"root only").unwrap();
    std::fs::set_permissions(t.p("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(t.p("public"), b"everyone").unwrap();
    std::fs::set_permissions(t.p("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(t.p("closed")).unwrap();
    std::fs::set_permissions(t.p("closed"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(t.p("closed/inside"), b"x").unwrap();

    let private = t.lookup(ROOT, "private").unwrap();
    let public = t.lookup(ROOT, "public").unwrap();
    let closed = t.lookup(ROOT, "closed").unwrap();
    assert_eq!(
        errno(as_nobody(Op::Open {
            handle: private,
            flags: libc::O_RDONLY
        })),
        libc::EACCES
    );
    assert_eq!(
        errno(as_nobody(Op::Open {
            handle: public,
            flags: libc::O_WRONLY
        })),
        libc::EACCES
    );
    assert!(
        as_nobody(Op::Open {
            handle: public,
            flags: libc::O_RDONLY
        })
        .is_ok()
    );
    assert_eq!(
        errno(as_nobody(Op::Lookup {
            parent: closed,
            name: b"inside".to_vec()
        })),
        libc::EACCES
    );
    assert_eq!(
        errno(as_nobody(Op::OpenDir { handle: closed })),
        libc::EACCES
    );
    // The export root is root's 0755 directory: nobody may not create in it.
    let c = Op::Create {
        parent: ROOT,
        name: b"n".to_vec(),
        mode: 0o644,
        flags: libc::O_WRONLY,
    };
    assert_eq!(errno(as_nobody(c)), libc::EACCES);
    assert_eq!(
        errno(as_nobody(Op::Unlink {
            parent: ROOT,
            name: b"public".to_vec()
        })),
        libc::EACCES
    );
    let chown = Op::SetAttr {
        handle: public,
        set: SetAttr {
            uid: Some(NOBODY),
            ..Default::default()
        },
    };
    assert_eq!(errno(as_nobody(chown)), libc::EPERM);
    let chmod = Op::SetAttr {
        handle: public,
        set: SetAttr {
            mode: Some(0o666),
            ..Default::default()
        },
    };
    assert_eq!(errno(as_nobody(chmod)), libc::EPERM);
    assert!(t.p("public").exists() && !t.p("n").exists());

    // In a directory of its own, nobody creates files that are its own.
    std::fs::create_dir(t.p("mine")).unwrap();
    std::os::unix::fs::chown(t.p("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mine = t.lookup(ROOT, "mine").unwrap();
    let c = Op::Create {
        parent: mine,
        name: b"f".to_vec(),
        mode: 0o600,
        flags: libc::O_WRONLY,
    };
    assert!(as_nobody(c).is_ok());
    let md = std::fs::metadata(t.p("mine/f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (NOBODY, NOBODY, 0o600)
    );
    // A supplementary group opens a group-readable file.
    std::fs::write(t.p("grp"), b"g").unwrap();
    std::os::unix::fs::chown(t.p("grp"), Some(0), Some(4242)).unwrap();
    std::fs::set_permissions(t.p("grp"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let grp = t.lookup(ROOT, "grp").unwrap();
    let member = Cred {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![4242],
    };
    assert!(
        t.call_as(
            &member,
            Op::Open {
                handle: grp,
                flags: libc::O_RDONLY
            },
            b""
        )
        .is_ok()
    );
    assert_eq!(
        errno(as_nobody(Op::Open {
            handle: grp,
            flags: libc::O_RDONLY
        })),
        libc::EACCES
    );
    // And the workers went back to root's rights afterwards.
    assert!(
        t.call(Op::Open {
            handle: private,
            flags: libc::O_RDWR
        })
        .is_ok()
    );
}

/// READDIRPLUS: each listed entry comes with the handle and attributes a lookup gives, and
/// counts as one lookup — also when the file already had a handle (found again by a stat of
/// the name, not a new descriptor): the server lets a handle go only after as many forgets.
#[test]
fn readdirplus_entries_are_lookups() {
    let t = T::new(false);
    std::fs::write(t.p("a"), b"12345").unwrap();
    std::fs::create_dir(t.p("d")).unwrap();
    std::os::unix::fs::symlink("a", t.p("l")).unwrap();
    let list = || {
        let fh = match t.call(Op::OpenDir { handle: ROOT }).unwrap() {
            Reply::Opened { fh, .. } => fh,
            r => panic!("opendir answered {r:?}"),
        };
        let op = Op::ReadDirPlus {
            fh,
            dir: ROOT,
            offset: 0,
            max: 100,
        };
        let Reply::DirPlus { mut entries, eof } = t.call(op).unwrap() else {
            panic!("not a listing with attributes")
        };
        assert!(eof);
        t.call(Op::ReleaseDir { fh }).unwrap();
        entries.sort_by(|x, y| x.entry.name.cmp(&y.entry.name));
        entries
    };
    let first = list();
    let names: Vec<&[u8]> = first.iter().map(|e| &e.entry.name[..]).collect();
    assert_eq!(names, [&b"a"[..], b"d", b"l"]);
    for e in &first {
        let (h, attr) = e.found.clone().expect("found");
        let name = String::from_utf8(e.entry.name.clone()).unwrap();
        assert_eq!(
            t.lookup(ROOT, &name).unwrap(),
            h,
            "{name}: the lookup's handle"
        );
        assert_eq!(
            t.call(Op::GetAttr { handle: h }).unwrap(),
            Reply::Attr(attr)
        );
    }
    assert_eq!(first[0].found.as_ref().unwrap().1.size, 5);
    assert_eq!(first[2].found.as_ref().unwrap().1.kind, Kind::Symlink);
    // Listed again: the same handles (already there), one more lookup each.
    let second = list();
    assert_eq!(second, first);
    for e in &first {
        let h = e.found.as_ref().unwrap().0;
        // Three lookups: two listings and the lookup above.
        t.call(Op::Forget { handle: h, n: 2 }).unwrap();
        assert!(t.call(Op::GetAttr { handle: h }).is_ok(), "still held once");
        t.call(Op::Forget { handle: h, n: 1 }).unwrap();
        assert_eq!(errno(t.call(Op::GetAttr { handle: h })), libc::ESTALE);
    }
}
