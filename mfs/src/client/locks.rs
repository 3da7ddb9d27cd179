//! Locks through the client: each call goes to the serving node (see [`crate::server`]); a
//! blocking lock is retried until granted; the (inode, owner) pairs that took a lock are
//! remembered so that a close drops them with one call, and closes of files never locked
//! cost nothing.

use std::time::Duration;

use bytes::Bytes;

use super::{FIRST_INO, Mfs, eacces};
use crate::Error;
use crate::proto::{Cred, Lock, Op, Reply};

/// The longest pause between two tries of a blocking lock held by another owner.
const LOCK_RETRY_MAX: Duration = Duration::from_millis(50);

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
        let mut pause = Duration::from_millis(1);
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
                    },
                    Bytes::new(),
                )
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if wait && matches!(e.errno(), libc::EAGAIN | libc::EACCES) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LOCK_RETRY_MAX);
                }
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
