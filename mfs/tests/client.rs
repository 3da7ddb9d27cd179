//! The client library over two in-process servers (nodes 1 and 2) on temp dirs: the /mfs
//! tree, caching that batches calls without changing results, close-to-open, stale handles
//! after a server restart, a node going away, and an fsx-style random run against a model.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use mfs::client::{BoxFuture, Config, Direct, Mfs, ROOT_INO, Remote};
use mfs::proto::{Cred, Kind, Op, Reply, Request, SetAttr};
use mfs::server::{Export, Server};
use mfs::{Error, NodeId};

/// Counts the operations that pass, by kind.
struct Counting {
    inner: Direct,
    reads: AtomicUsize,
    writes: AtomicUsize,
    lookups: AtomicUsize,
    listings: AtomicUsize,
}

impl Remote for Counting {
    fn call(
        &self,
        node: NodeId,
        req: Request,
        data: Bytes,
    ) -> BoxFuture<'static, Result<(Reply, Bytes), Error>> {
        match req.op {
            Op::Read { .. } => self.reads.fetch_add(1, Ordering::Relaxed),
            Op::Write { .. } => self.writes.fetch_add(1, Ordering::Relaxed),
            Op::Lookup { .. } => self.lookups.fetch_add(1, Ordering::Relaxed),
            Op::ReadDir { .. } | Op::ReadDirPlus { .. } => {
                self.listings.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
        self.inner.call(node, req, data)
    }
}

struct World {
    dirs: Vec<tempfile::TempDir>,
    direct: Direct,
    remote: Arc<Counting>,
    mfs: Mfs,
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

fn world(cfg: Config) -> World {
    let direct = Direct::new();
    let mut dirs = Vec::new();
    for n in [1, 2] {
        let d = tempfile::tempdir().unwrap();
        direct.add(
            n,
            Server::start(
                &Export {
                    root: d.path().into(),
                    read_only: false,
                },
                2,
            )
            .unwrap(),
        );
        dirs.push(d);
    }
    let remote = Arc::new(Counting {
        inner: direct.clone(),
        reads: 0.into(),
        writes: 0.into(),
        lookups: 0.into(),
        listings: 0.into(),
    });
    let mfs = Mfs::new(remote.clone(), cfg, vec![1, 2]);
    World {
        dirs,
        direct,
        remote,
        mfs,
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, Error>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

async fn path(w: &World, p: &str) -> Result<u64, Error> {
    let mut ino = ROOT_INO;
    for c in p.split('/').filter(|c| !c.is_empty()) {
        ino = w.mfs.lookup(&me(), ino, c.as_bytes()).await?.ino;
    }
    Ok(ino)
}

async fn names(w: &World, ino: u64) -> Vec<String> {
    let fh = w.mfs.opendir(&me(), ino).await.unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let items = w.mfs.readdir(fh, off).await.unwrap();
        let Some(last) = items.last() else { break };
        off = last.next;
        out.extend(
            items
                .into_iter()
                .map(|i| String::from_utf8(i.name).unwrap()),
        );
    }
    w.mfs.releasedir(fh).await.unwrap();
    out
}

#[tokio::test]
async fn the_tree_shows_every_node_and_the_magic_links() {
    let w = world(Config::new(1));
    std::fs::write(w.dirs[1].path().join("on2"), b"node two").unwrap();
    assert_eq!(
        names(&w, ROOT_INO).await,
        [
            ".", "..", "1", "2", "here", "home", "magic", "lastexec", "selected"
        ]
    );
    let here = w.mfs.lookup(&me(), ROOT_INO, b"here").await.unwrap();
    assert_eq!(here.attr.kind, Kind::Symlink);
    assert_eq!(w.mfs.readlink(&me(), here.ino).await.unwrap(), b"1");
    assert_eq!(
        errno(w.mfs.lookup(&me(), ROOT_INO, b"3").await),
        libc::ENOENT
    );
    assert_eq!(
        errno(w.mfs.lookup(&me(), ROOT_INO, b"01").await),
        libc::ENOENT
    );
    let ino = path(&w, "2/on2").await.unwrap();
    let o = w.mfs.open(&me(), ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&w.mfs.read(o.fh, 0, 100).await.unwrap()[..], b"node two");
    w.mfs.release(o.fh).await.unwrap();
    assert!(
        names(&w, path(&w, "2").await.unwrap())
            .await
            .contains(&"on2".to_string())
    );
    // Changes land on the right node's disk.
    let n1 = path(&w, "1").await.unwrap();
    let d = w.mfs.mkdir(&me(), n1, b"dir", 0o755).await.unwrap();
    let (e, o) = w
        .mfs
        .create(&me(), d.ino, b"f", 0o644, libc::O_WRONLY)
        .await
        .unwrap();
    w.mfs.write(o.fh, 0, b"hello").await.unwrap();
    w.mfs.release(o.fh).await.unwrap();
    assert_eq!(
        std::fs::read(w.dirs[0].path().join("dir/f")).unwrap(),
        b"hello"
    );
    assert_eq!(w.mfs.getattr(&me(), e.ino).await.unwrap().size, 5);
    w.mfs.rename(&me(), d.ino, b"f", n1, b"g", 0).await.unwrap();
    assert!(w.dirs[0].path().join("g").exists());
    // Across nodes: EXDEV, as between file systems.
    let n2 = path(&w, "2").await.unwrap();
    assert_eq!(
        errno(w.mfs.rename(&me(), n1, b"g", n2, b"g", 0).await),
        libc::EXDEV
    );
    w.mfs.unlink(&me(), n1, b"g").await.unwrap();
    w.mfs.rmdir(&me(), n1, b"dir").await.unwrap();
    assert!(!w.dirs[0].path().join("dir").exists());
    // /mfs itself cannot be changed.
    assert_eq!(
        errno(w.mfs.mkdir(&me(), ROOT_INO, b"x", 0o755).await),
        libc::EACCES
    );
    // df of a node is that node's file system.
    let s = w.mfs.statfs(&me(), n2).await.unwrap();
    assert!(s.blocks > 0 && s.bsize > 0);
}

/// READDIRPLUS: one call lists a directory with the attributes of every entry (the files'
/// own, as a lookup gives them), each counted as a lookup: forgetting it once drops the
/// inode; entries the kernel had no room for are kept for its next call (no second call to
/// the server) and forgotten when the directory is closed; `/mfs` itself lists node folders
/// without attributes under inode numbers no other entry gets.
#[tokio::test]
async fn readdirplus_lists_with_attributes_counted_as_lookups() {
    use std::os::unix::fs::MetadataExt;
    let w = world(Config::new(1));
    let dir = w.dirs[1].path().join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..40u32 {
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; i as usize * 3]).unwrap();
    }
    std::os::unix::fs::symlink("f1", dir.join("link")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let d = path(&w, "2/d").await.unwrap();
    let fh = w.mfs.opendir(&me(), d).await.unwrap();
    let before = w.remote.lookups.load(Ordering::Relaxed);
    let items = w.mfs.readdirplus(fh, 0).await.unwrap();
    assert_eq!(
        w.remote.listings.load(Ordering::Relaxed),
        1,
        "one listing call"
    );
    assert_eq!(
        w.remote.lookups.load(Ordering::Relaxed),
        before,
        "no lookup calls"
    );
    assert_eq!(items.len(), 2 + 42);
    assert_eq!(
        (&items[0].name[..], &items[1].name[..]),
        (&b"."[..], &b".."[..])
    );
    assert!(!items[0].counted && !items[1].counted);
    for it in &items[2..] {
        let name = String::from_utf8(it.name.clone()).unwrap();
        let local = std::fs::symlink_metadata(dir.join(&name)).unwrap();
        let a = it
            .attr
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has attributes"));
        assert!(it.counted, "{name} counted");
        assert_eq!(
            (a.size, a.perm & 0o7777, a.nlink),
            (local.size(), local.mode() & 0o7777, local.nlink() as u32),
            "{name}"
        );
        // The same inode and attributes a lookup gives.
        let e = w.mfs.lookup(&me(), d, &it.name).await.unwrap();
        assert_eq!((e.ino, &e.attr), (it.ino, a), "{name}");
        w.mfs.forget(it.ino, 1);
    }
    // Counted once by the listing, once by the lookup: the second forget drops it.
    for it in &items[2..] {
        assert!(w.mfs.getattr(&me(), it.ino).await.is_ok());
        w.mfs.forget(it.ino, 1);
        assert_eq!(errno(w.mfs.getattr(&me(), it.ino).await), libc::ESTALE);
    }
    // Where the kernel's buffer was full: the rest is its next call, from memory.
    let items = w.mfs.readdirplus(fh, 0).await.unwrap();
    let calls = w.remote.listings.load(Ordering::Relaxed);
    let at = items[9].next;
    let rest = items[10..].to_vec();
    w.mfs.unsent(fh, at, rest.clone());
    assert_eq!(w.mfs.readdirplus(fh, at).await.unwrap(), rest);
    assert_eq!(
        w.remote.listings.load(Ordering::Relaxed),
        calls,
        "no new call"
    );
    // Kept again, then the directory closes: forgotten (the server is told they are gone).
    w.mfs.unsent(fh, at, rest.clone());
    for it in &items[2..10] {
        w.mfs.forget(it.ino, 1);
    }
    w.mfs.releasedir(fh).await.unwrap();
    let gone = rest.iter().find(|i| i.counted).unwrap().ino;
    assert_eq!(errno(w.mfs.getattr(&me(), gone).await), libc::ESTALE);
    // /mfs: magic links with attributes, node folders looked up only when used.
    let fh = w.mfs.opendir(&me(), ROOT_INO).await.unwrap();
    let items = w.mfs.readdirplus(fh, 0).await.unwrap();
    let node1 = items.iter().find(|i| i.name == b"1").unwrap();
    assert!(node1.attr.is_none() && !node1.counted);
    let here = items.iter().find(|i| i.name == b"here").unwrap();
    assert_eq!(here.attr.as_ref().map(|a| a.kind), Some(Kind::Symlink));
    let again = w.mfs.readdirplus(fh, 0).await.unwrap();
    let node1_again = again.iter().find(|i| i.name == b"1").unwrap();
    // Node 2 was looked up above: it comes with attributes now; node 1 never was.
    assert!(
        again
            .iter()
            .find(|i| i.name == b"2")
            .unwrap()
            .attr
            .is_some()
    );
    assert_ne!(
        node1.ino, node1_again.ino,
        "a stand-in inode is never reused"
    );
    w.mfs.releasedir(fh).await.unwrap();
}

#[tokio::test]
async fn read_ahead_and_write_behind_batch_calls_and_keep_the_bytes() {
    let w = world(Config::new(1));
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let n2 = path(&w, "2").await.unwrap();
    let (e, o) = w
        .mfs
        .create(&me(), n2, b"big", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        assert_eq!(
            w.mfs
                .write(o.fh, (i * (128 << 10)) as u64, chunk)
                .await
                .unwrap() as usize,
            chunk.len()
        );
    }
    w.mfs.flush(o.fh).await.unwrap();
    w.mfs.release(o.fh).await.unwrap();
    let writes = w.remote.writes.load(Ordering::Relaxed);
    assert!(writes <= 5, "32 writes of 128 KiB became {writes} calls");
    assert_eq!(std::fs::read(w.dirs[1].path().join("big")).unwrap(), data);

    let o = w.mfs.open(&me(), e.ino, libc::O_RDONLY).await.unwrap();
    let mut got = Vec::new();
    loop {
        let b = w.mfs.read(o.fh, got.len() as u64, 128 << 10).await.unwrap();
        if b.is_empty() {
            break;
        }
        got.extend_from_slice(&b);
    }
    assert_eq!(got, data);
    let reads = w.remote.reads.load(Ordering::Relaxed);
    assert!(reads <= 6, "33 reads of 128 KiB became {reads} calls");
    // A read that straddles windows still gets every byte.
    let b = w.mfs.read(o.fh, (1 << 20) - 10, 100).await.unwrap();
    assert_eq!(&b[..], &data[(1 << 20) - 10..(1 << 20) + 90]);
    w.mfs.release(o.fh).await.unwrap();
}

#[tokio::test]
async fn close_to_open_sees_changes_made_elsewhere() {
    let w = world(Config::new(1));
    let file = w.dirs[1].path().join("f");
    std::fs::write(&file, b"first").unwrap();
    let ino = path(&w, "2/f").await.unwrap();
    let o = w.mfs.open(&me(), ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&w.mfs.read(o.fh, 0, 100).await.unwrap()[..], b"first");
    w.mfs.release(o.fh).await.unwrap();
    let o = w.mfs.open(&me(), ino, libc::O_RDONLY).await.unwrap();
    assert!(o.keep_cache, "unchanged file: cached data stays valid");
    w.mfs.release(o.fh).await.unwrap();
    // Another writer on node 2 changes the file (and its size).
    std::fs::write(&file, b"second version").unwrap();
    let o = w.mfs.open(&me(), ino, libc::O_RDONLY).await.unwrap();
    assert!(!o.keep_cache);
    assert_eq!(o.attr.size, 14);
    assert_eq!(
        &w.mfs.read(o.fh, 0, 100).await.unwrap()[..],
        b"second version"
    );
    w.mfs.release(o.fh).await.unwrap();
}

#[tokio::test]
async fn handles_are_found_again_after_a_server_restart() {
    let w = world(Config::new(1));
    std::fs::create_dir_all(w.dirs[1].path().join("a/b")).unwrap();
    std::fs::write(w.dirs[1].path().join("a/b/f"), b"kept").unwrap();
    std::fs::write(w.dirs[1].path().join("a/b/g"), b"replaced").unwrap();
    let f = path(&w, "2/a/b/f").await.unwrap();
    let g = path(&w, "2/a/b/g").await.unwrap();
    let b = path(&w, "2/a/b").await.unwrap();
    // Node 2 goes away: calls fail at once with ENOTCONN.
    w.direct.remove(2);
    assert_eq!(
        errno(w.mfs.open(&me(), f, libc::O_RDONLY).await),
        libc::ENOTCONN
    );
    assert_eq!(errno(w.mfs.lookup(&me(), b, b"f").await), libc::ENOTCONN);
    // It comes back with a new server (all its handles are new).
    let srv = Server::start(
        &Export {
            root: w.dirs[1].path().into(),
            read_only: false,
        },
        1,
    )
    .unwrap();
    w.direct.add(2, srv);
    // (Renamed, not removed: a removed file's inode number could be given to the new one.)
    std::fs::rename(
        w.dirs[1].path().join("a/b/g"),
        w.dirs[1].path().join("a/g.old"),
    )
    .unwrap();
    std::fs::write(w.dirs[1].path().join("a/b/g"), b"another file").unwrap();
    let o = w.mfs.open(&me(), f, libc::O_RDONLY).await.unwrap();
    assert_eq!(&w.mfs.read(o.fh, 0, 10).await.unwrap()[..], b"kept");
    w.mfs.release(o.fh).await.unwrap();
    assert!(names(&w, b).await.contains(&"g".to_string()));
    // The same name is another file now: the old inode is stale, not silently swapped.
    assert_eq!(
        errno(w.mfs.open(&me(), g, libc::O_RDONLY).await),
        libc::ESTALE
    );
}

/// fsx-style: random writes, reads, truncates and re-opens on one file through two
/// descriptors, checked against a model after every step.
#[tokio::test]
async fn random_operations_match_a_model() {
    let mut cfg = Config::new(1);
    cfg.read_ahead = 8192;
    cfg.write_behind = 4096;
    cfg.attr_ttl = std::time::Duration::from_millis(50);
    let w = world(cfg);
    let n2 = path(&w, "2").await.unwrap();
    let (e, o) = w
        .mfs
        .create(&me(), n2, b"fsx", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    let mut fhs = vec![
        o.fh,
        w.mfs.open(&me(), e.ino, libc::O_RDWR).await.unwrap().fh,
    ];
    let mut model: Vec<u8> = Vec::new();
    let mut seed: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    const MAX: u64 = 64 << 10;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for step in 0..3000 {
        let fh = fhs[rnd(2) as usize];
        match rnd(10) {
            0..=3 => {
                let off = rnd(MAX);
                let len = 1 + rnd(9000);
                let byte = (step % 251) as u8 + 1;
                let buf: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                w.mfs.write(fh, off, &buf).await.unwrap();
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&buf);
                *counts.entry("write").or_default() += 1;
            }
            4..=6 => {
                let off = rnd(MAX + 1000);
                let len = rnd(12000) as u32;
                let got = w.mfs.read(fh, off, len).await.unwrap();
                let s = (off as usize).min(model.len());
                let e = (off as usize + len as usize).min(model.len());
                let want = &model[s..e];
                if got[..] != want[..] {
                    let at = got.iter().zip(want).position(|(a, b)| a != b);
                    panic!(
                        "step {step}: read {len} at {off}: got {} bytes, want {}, first difference at {at:?}",
                        got.len(),
                        want.len()
                    );
                }
                *counts.entry("read").or_default() += 1;
            }
            7 => {
                let size = rnd(MAX);
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                w.mfs.setattr(&me(), e.ino, set, Some(fh)).await.unwrap();
                model.resize(size as usize, 0);
                *counts.entry("truncate").or_default() += 1;
            }
            8 => {
                let a = w.mfs.getattr(&me(), e.ino).await.unwrap();
                assert_eq!(a.size, model.len() as u64, "step {step}: size");
                *counts.entry("stat").or_default() += 1;
            }
            _ => {
                let i = rnd(2) as usize;
                w.mfs.flush(fhs[i]).await.unwrap();
                w.mfs.release(fhs[i]).await.unwrap();
                fhs[i] = w.mfs.open(&me(), e.ino, libc::O_RDWR).await.unwrap().fh;
                *counts.entry("reopen").or_default() += 1;
            }
        }
    }
    for fh in fhs {
        w.mfs.release(fh).await.unwrap();
    }
    assert_eq!(std::fs::read(w.dirs[1].path().join("fsx")).unwrap(), model);
    assert!(counts.values().all(|&c| c > 100), "{counts:?}");
}

/// A resolver with a table: (folder, pid) -> node, and the creations it was told of.
#[derive(Default)]
struct Table {
    map: std::sync::Mutex<HashMap<(mfs::magic::Magic, u32), NodeId>>,
    created: std::sync::Mutex<Vec<(u32, NodeId)>>,
}

impl mfs::magic::Resolver for Table {
    fn resolve(&self, which: mfs::magic::Magic, pid: u32) -> NodeId {
        self.map
            .lock()
            .unwrap()
            .get(&(which, pid))
            .copied()
            .unwrap_or(1)
    }
    fn created(&self, pid: u32, node: NodeId) {
        self.created.lock().unwrap().push((pid, node));
    }
}

/// Each magic link names the node the resolver gives for the calling PID, the same link
/// read by two processes gives two answers, and a creation is reported with its node.
#[tokio::test]
async fn magic_links_answer_per_calling_process() {
    use mfs::magic::Magic;
    let w = world(Config::new(1));
    let t = Arc::new(Table::default());
    w.mfs.set_resolver(t.clone());
    for (i, m) in Magic::ALL.into_iter().enumerate() {
        t.map.lock().unwrap().insert((m, 100), 2);
        t.map.lock().unwrap().insert((m, 200 + i as u32), 2);
    }
    for m in Magic::ALL {
        let e = w
            .mfs
            .lookup(&me(), ROOT_INO, m.name().as_bytes())
            .await
            .unwrap();
        assert_eq!(e.ino, m.ino());
        assert_eq!(e.attr.kind, Kind::Symlink);
        assert_eq!(w.mfs.readlink_for(&me(), 100, e.ino).await.unwrap(), b"2");
        assert_eq!(w.mfs.readlink_for(&me(), 101, e.ino).await.unwrap(), b"1");
        // Only the folder the resolver was given for pid 200+j says 2 for that pid.
        for (j, n) in Magic::ALL.into_iter().enumerate() {
            let want: &[u8] = if n == m { b"2" } else { b"1" };
            let got = w
                .mfs
                .readlink_for(&me(), 200 + j as u32, m.ino())
                .await
                .unwrap();
            assert_eq!(got, want, "{m:?} read by the process that has {n:?} set");
        }
    }
    // statfs through a magic link reaches the node it stands for, for the caller.
    std::fs::write(w.dirs[1].path().join("f"), b"x").unwrap();
    let via = w
        .mfs
        .statfs_for(&me(), 100, Magic::Here.ino())
        .await
        .unwrap();
    assert!(via.blocks > 0);
    let n2 = path(&w, "2").await.unwrap();
    let (e, o) = w
        .mfs
        .create(&me(), n2, b"tmp", 0o600, libc::O_RDWR)
        .await
        .unwrap();
    w.mfs.note_created(4242, e.ino);
    w.mfs.release(o.fh).await.unwrap();
    assert_eq!(*t.created.lock().unwrap(), vec![(4242, 2)]);
}

fn lk(typ: i32, start: u64, end: u64) -> mfs::proto::Lock {
    mfs::proto::Lock {
        typ,
        start,
        end,
        pid: 0,
    }
}

/// Locks of two owners (as two processes on two client nodes would be) on a file of node 2:
/// a conflicting one is refused at once or waited for until the holder lets go, ranges that
/// do not overlap coexist, getlk names the holder's range, and closing (drop_locks) or the
/// holder's node going away releases them.
#[tokio::test]
async fn locks_conflict_between_owners_and_go_when_the_owner_closes() {
    use mfs::proto::LOCK_TO_EOF;
    let w = world(Config::new(1));
    // A second client node (3) sharing node 2's server.
    let other = Mfs::new(Arc::new(w.direct.clone()), Config::new(3), vec![1, 2]);
    std::fs::write(w.dirs[1].path().join("f"), b"0123456789").unwrap();
    let a_ino = path(&w, "2/f").await.unwrap();
    let mut b_ino = ROOT_INO;
    for c in ["2", "f"] {
        b_ino = other.lookup(&me(), b_ino, c.as_bytes()).await.unwrap().ino;
    }
    let a = w.mfs.open(&me(), a_ino, libc::O_RDWR).await.unwrap();
    let b = other.open(&me(), b_ino, libc::O_RDWR).await.unwrap();
    let (oa, ob) = (7, 7); // the same owner number on two nodes: still two owners

    w.mfs
        .setlk(&me(), a_ino, oa, lk(libc::F_WRLCK, 0, 4), false)
        .await
        .unwrap();
    assert_eq!(
        errno(
            other
                .setlk(&me(), b_ino, ob, lk(libc::F_RDLCK, 3, 3), false)
                .await
        ),
        libc::EAGAIN
    );
    other
        .setlk(&me(), b_ino, ob, lk(libc::F_WRLCK, 5, LOCK_TO_EOF), false)
        .await
        .unwrap();
    let seen = other
        .getlk(&me(), b_ino, ob, lk(libc::F_WRLCK, 0, LOCK_TO_EOF))
        .await
        .unwrap();
    assert_eq!((seen.typ, seen.start, seen.end), (libc::F_WRLCK, 0, 4));
    let free = w
        .mfs
        .getlk(&me(), a_ino, oa, lk(libc::F_WRLCK, 0, 4))
        .await
        .unwrap();
    assert_eq!(free.typ, libc::F_UNLCK);

    // A waiter gets the lock once the holder closes the file.
    let waiter = {
        let other = Arc::new(other);
        let o2 = other.clone();
        let t = tokio::spawn(async move {
            o2.setlk(&me(), b_ino, 8, lk(libc::F_WRLCK, 0, 0), true)
                .await
        });
        (other, t)
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiter.1.is_finished(), "the lock was given while held");
    w.mfs.flush(a.fh).await.unwrap();
    w.mfs.drop_locks(a.fh, oa).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter.1)
        .await
        .expect("the waiter got the lock after the close")
        .unwrap()
        .unwrap();
    let other = waiter.0;
    // Node 3 goes away: its locks on node 2 go with it.
    assert_eq!(
        errno(
            w.mfs
                .setlk(&me(), a_ino, oa, lk(libc::F_WRLCK, 6, 6), false)
                .await
        ),
        libc::EAGAIN
    );
    let server2 = w.direct.server(2).unwrap();
    assert_eq!(
        server2.lock_owners(),
        3,
        "node 1's owner 7, node 3's owners 7 and 8"
    );
    server2.drop_client(3);
    assert_eq!(server2.lock_owners(), 1);
    w.mfs
        .setlk(&me(), a_ino, oa, lk(libc::F_WRLCK, 0, LOCK_TO_EOF), false)
        .await
        .unwrap();
    other.release(b.fh).await.unwrap();
    w.mfs.release(a.fh).await.unwrap();
}

/// Counts the lock calls that pass.
struct LockCount {
    inner: Direct,
    n: AtomicUsize,
}

impl Remote for LockCount {
    fn call(
        &self,
        node: NodeId,
        req: Request,
        data: Bytes,
    ) -> BoxFuture<'static, Result<(Reply, Bytes), Error>> {
        if matches!(req.op, Op::Lock { .. }) {
            self.n.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.call(node, req, data)
    }
}

/// A blocking lock waits on the serving node and is woken by the release (one call in a
/// second of waiting, not a poll), and an owner on node 1 asking for the lock of an owner on
/// node 3 that waits for node 1's owner gets EDEADLK instead of waiting forever.
#[tokio::test]
async fn a_blocking_lock_is_woken_by_the_release_and_a_cycle_is_edeadlk() {
    let w = world(Config::new(1));
    let count = Arc::new(LockCount {
        inner: w.direct.clone(),
        n: 0.into(),
    });
    let other = Arc::new(Mfs::new(count.clone(), Config::new(3), vec![1, 2]));
    for f in ["f1", "f2"] {
        std::fs::write(w.dirs[1].path().join(f), b"0123456789").unwrap();
    }
    let (a1, a2) = (
        path(&w, "2/f1").await.unwrap(),
        path(&w, "2/f2").await.unwrap(),
    );
    let mut b = Vec::new();
    for f in ["f1", "f2"] {
        let d = other.lookup(&me(), ROOT_INO, b"2").await.unwrap().ino;
        b.push(other.lookup(&me(), d, f.as_bytes()).await.unwrap().ino);
    }
    let (b1, b2) = (b[0], b[1]);
    let (oa, ob) = (11, 22);
    let wr = lk(libc::F_WRLCK, 0, 0);
    w.mfs.setlk(&me(), a1, oa, wr, true).await.unwrap();
    other.setlk(&me(), b2, ob, wr, true).await.unwrap();
    assert_eq!(count.n.load(Ordering::Relaxed), 1);

    // node 3's owner waits for f1, held by node 1's owner
    let o2 = other.clone();
    let waiter = tokio::spawn(async move { o2.setlk(&me(), b1, ob, wr, true).await });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert!(!waiter.is_finished(), "the lock was given while held");
    let calls = count.n.load(Ordering::Relaxed) - 1;
    assert_eq!(calls, 1, "a second of waiting took {calls} lock calls");

    // node 1's owner now asks for f2, held by the waiter: a cycle
    assert_eq!(
        errno(w.mfs.setlk(&me(), a2, oa, wr, true).await),
        libc::EDEADLK
    );
    // it gives f1 up: the waiter is woken
    w.mfs
        .setlk(&me(), a1, oa, lk(libc::F_UNLCK, 0, 0), false)
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was not woken by the release")
        .unwrap()
        .unwrap();
    assert!(count.n.load(Ordering::Relaxed) <= 3);
    // no cycle any more: node 1's owner waits for f2 until node 3's owner lets it go
    let m1 = Arc::new(w.mfs);
    let m = m1.clone();
    let again = tokio::spawn(async move { m.setlk(&me(), a2, oa, wr, true).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!again.is_finished());
    other
        .setlk(&me(), b2, ob, lk(libc::F_UNLCK, 0, 0), false)
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), again)
        .await
        .expect("not woken")
        .unwrap()
        .unwrap();
}
