//! Locks: waiting lock calls (EDEADLK through the wait graph), the per-owner OFD lock
//! descriptors, and a departed client's locks.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;

use super::{LOCAL_RECHECK, LockKey, MAX_LOCK_WAIT_MS, Server, Shared};
use crate::proto::{Cred, Handle, Kind, Lock, Op, Reply};
use crate::{Error, lockwait, sys};

impl Server {
    /// Node `client` is gone: every lock it held here is released.
    pub fn drop_client(&self, client: u32) {
        let gone: Vec<Arc<OwnedFd>> = {
            let mut locks = self.shared.locks.lock().expect("lock table");
            let keys: Vec<LockKey> = locks.keys().filter(|k| k.0 == client).copied().collect();
            keys.iter().filter_map(|k| locks.remove(k)).collect()
        };
        self.shared
            .graph
            .lock()
            .expect("lock graph")
            .client_gone(client);
        self.shared.released.notify_waiters();
        if !gone.is_empty() {
            tracing::info!(
                client,
                owners = gone.len(),
                "mfs: locks of a departed node released"
            );
        }
    }

    /// Lock owners holding a descriptor here (tests, metrics).
    pub fn lock_owners(&self) -> usize {
        self.shared.locks.lock().expect("lock table").len()
    }

    /// A lock call that waits (up to `wait_ms`): tried, and tried again each time a lock of
    /// this server is released; refused with EDEADLK when the owners it would wait for wait
    /// (through any chain) for it. A conflicting lock of a local process of this node sends no
    /// release notice: while only such locks are in the way it is tried again every
    /// [`LOCAL_RECHECK`].
    pub(super) async fn lock_wait(
        &self,
        cred: Cred,
        handle: Handle,
        who: lockwait::Owner,
        lock: Lock,
        wait_ms: u32,
    ) -> Result<(Reply, Bytes), Error> {
        let until = tokio::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(wait_ms.min(MAX_LOCK_WAIT_MS)));
        let graph = &self.shared.graph;
        let unwait = || graph.lock().expect("lock graph").unwait(who);
        loop {
            // Registered before the try: a release between the try and the wait still wakes.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let op = Op::Lock {
                handle,
                client: who.0,
                owner: who.1,
                lock,
                wait_ms: 0,
            };
            let r = self.job(cred.clone(), op, Bytes::new()).await;
            let busy = matches!(&r, Err(e) if matches!(e.errno(), libc::EAGAIN | libc::EACCES));
            if !busy {
                unwait();
                return r;
            }
            let ours = {
                let mut g = graph.lock().expect("lock graph");
                if g.would_deadlock(who, handle, lock) {
                    g.unwait(who);
                    return Err(Error::os(
                        "lock",
                        format!("handle {handle}: waiting would deadlock"),
                        std::io::Error::from_raw_os_error(libc::EDEADLK),
                    ));
                }
                g.wait(who, handle, lock);
                !g.holders(who, handle, lock).is_empty()
            };
            let now = tokio::time::Instant::now();
            if now >= until {
                unwait();
                return r;
            }
            let nap = if ours {
                until
            } else {
                (now + LOCAL_RECHECK).min(until)
            };
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(nap) => {}
            }
        }
    }
}

impl Shared {
    /// The lock descriptor of `key` (opened on first use, as the caller: for reading and
    /// writing if it may, else for what it may).
    pub(super) fn lock_fd(
        &self,
        key: LockKey,
        create: bool,
    ) -> Result<Option<Arc<OwnedFd>>, Error> {
        if let Some(fd) = self.locks.lock().expect("lock table").get(&key) {
            return Ok(Some(fd.clone()));
        }
        if !create {
            return Ok(None);
        }
        let (fd, kind) = self.node(key.1)?;
        let what = format!("handle {}", key.1);
        if kind != Kind::File {
            return Err(Error::NotOpenable(what));
        }
        let name = Self::proc_name(fd.as_fd());
        let modes: &[i32] = if self.read_only {
            &[libc::O_RDONLY]
        } else {
            &[libc::O_RDWR, libc::O_WRONLY, libc::O_RDONLY]
        };
        let mut last = None;
        for &m in modes {
            match sys::openat(self.proc_fd.as_fd(), &name, m | libc::O_NOCTTY, 0) {
                Ok(f) => {
                    let f = Arc::new(f);
                    let mut locks = self.locks.lock().expect("lock table");
                    return Ok(Some(locks.entry(key).or_insert(f).clone()));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::os(
            "open for locking",
            what,
            last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EACCES)),
        ))
    }

    pub(super) fn setlk(&self, key: LockKey, l: Lock) -> Result<(), Error> {
        let what = || format!("lock on handle {}", key.1);
        let Some(fd) = self.lock_fd(key, l.typ != libc::F_UNLCK)? else {
            return Ok(()); // nothing held: nothing to unlock
        };
        sys::ofd_setlk(fd.as_fd(), l.typ, l.start, l.end)
            .map_err(|e| Error::os("lock", what(), e))?;
        self.graph
            .lock()
            .expect("lock graph")
            .granted((key.0, key.2), key.1, l);
        // An unlock, or a write lock made a read lock: waiters may go on now.
        self.released.notify_waiters();
        Ok(())
    }

    pub(super) fn getlk(&self, key: LockKey, l: Lock) -> Result<Lock, Error> {
        let fd = self.lock_fd(key, true)?.expect("created");
        let (typ, start, end, pid) = sys::ofd_getlk(fd.as_fd(), l.typ, l.start, l.end)
            .map_err(|e| Error::os("getlk", format!("handle {}", key.1), e))?;
        // OFD locks have no PID (-1); a local process's lock has its PID on this node.
        Ok(Lock {
            typ,
            start,
            end,
            pid: u32::try_from(pid).unwrap_or(0),
        })
    }
}
