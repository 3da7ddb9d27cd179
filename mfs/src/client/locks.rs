//! Locks through the client: each call goes to the serving node (see [`crate::server`]); a
//! blocking lock waits there, woken when a lock of the file is released (no polling), and is
//! asked again each time the server's bounded wait ends; EDEADLK when the server finds a
//! cycle of waiting owners; the (inode, owner) pairs that took a lock are
//! remembered so that a close drops them with one call, and closes of files never locked
//! cost nothing.

use bytes::Bytes;

use super::{FIRST_INO, Mfs, eacces};
use crate::Error;
use crate::proto::{Cred, Lock, Op, Reply};
use crate::server::MAX_LOCK_WAIT_MS;

impl Mfs {
    /// Set, change or remove (`lock.typ` F_UNLCK) a lock of `owner` on `ino`. `wait`: retry
    /// while another owner holds a conflicting lock (F_SETLKW, flock without LOCK_NB);
    /// errors of the serving node (it went down) end the wait.
    pub async fn setlk(
        &self,
        cred: &Cred,
        ino: u64,
        owner: u64,
        lock: Lock,
        wait: bool,
    ) -> Result<(), Error> {
        if ino < FIRST_INO {
            return Err(eacces());
        }
        if lock.typ != libc::F_UNLCK {
            // Before the first try: a close racing with this lock must find it.
            self.lockers.lock().expect("lockers").insert((ino, owner));
        }
        loop {
            let r = self
                .on(
                    cred,
                    &[ino],
                    |h| Op::Lock {
                        handle: h[0],
                        client: self.cfg.local,
                        owner,
                        lock,
                        wait_ms: if wait { MAX_LOCK_WAIT_MS } else { 0 },
                    },
                    Bytes::new(),
                )
                .await;
            match r {
                Ok(_) => return Ok(()),
                // The server's wait ended without the lock: ask again at once.
                Err(e) if wait && matches!(e.errno(), libc::EAGAIN | libc::EACCES) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The first lock of another owner that would conflict with `lock`; F_UNLCK if none.
    pub async fn getlk(
        &self,
        cred: &Cred,
        ino: u64,
        owner: u64,
        lock: Lock,
    ) -> Result<Lock, Error> {
        if ino < FIRST_INO {
            return Err(eacces());
        }
        let (node, r, _) = self
            .on(
                cred,
                &[ino],
                |h| Op::GetLock {
                    handle: h[0],
                    client: self.cfg.local,
                    owner,
                    lock,
                },
                Bytes::new(),
            )
            .await?;
        match r {
            Reply::Lock(l) => Ok(l),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to getlk"),
            }),
        }
    }

    /// The file `fh` is closed by `owner`: every lock it holds on the file goes (POSIX on
    /// flush: any close by the process; flock on release: the last close of that open file).
    pub async fn drop_locks(&self, fh: u64, owner: u64) -> Result<(), Error> {
        let Some((ino, cred)) = self
            .files
            .lock()
            .expect("open files")
            .get(&fh)
            .map(|f| (f.ino, f.cred.clone()))
        else {
            return Err(Error::BadFile(fh));
        };
        self.drop_locks_of(&cred, ino, owner).await
    }

    async fn drop_locks_of(&self, cred: &Cred, ino: u64, owner: u64) -> Result<(), Error> {
        if !self.lockers.lock().expect("lockers").remove(&(ino, owner)) {
            return Ok(());
        }
        self.on(
            cred,
            &[ino],
            |h| Op::DropLocks {
                handle: h[0],
                client: self.cfg.local,
                owner,
            },
            Bytes::new(),
        )
        .await
        .map(drop)
    }
}
