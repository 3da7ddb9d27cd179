//! Per-link bookkeeping shared by the transports: a link's control block (cancel it with
//! the first reason given, know when its task is done), the claim of a peer's single
//! link slot while an older link to that peer is still closing, the frame size check of
//! `send`, and ending a link's writer task. Knows no sockets.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Error, Frame};
use crate::wire::{FRAME_OVERHEAD, Refusal};

/// One link's control block, shared by its reader, writer and the transport's tables.
pub struct LinkCtl {
    /// Cancelled when the link is to end.
    pub cancel: CancellationToken,
    reason: Mutex<Option<String>>,
    /// Cancelled when the link task has finished and its `Down` (if any) is delivered.
    pub done: CancellationToken,
}

impl LinkCtl {
    /// A link that ends when `parent` (the transport's shutdown token) is cancelled.
    pub fn new(parent: &CancellationToken) -> Self {
        LinkCtl {
            cancel: parent.child_token(),
            reason: Mutex::new(None),
            done: CancellationToken::new(),
        }
    }

    /// End the link; the first reason given is the one reported.
    pub fn close(&self, reason: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        drop(r);
        self.cancel.cancel();
    }

    /// Why the link was closed, if it was.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What one look at a peer's link slot decided.
pub enum Claim {
    /// Installed (`Ok`) or refused (`Err`).
    Decided(Result<(), Refusal>),
    /// An older link holds the slot and is closing: look again once it is done.
    WaitFor(CancellationToken),
}

/// Claim a peer's link slot: `attempt` looks at it (under the transport's lock) and
/// installs the new link, refuses it, or names an older link to wait for. Up to three
/// looks, waiting at most a second each time for the older link to finish.
pub async fn claim(mut attempt: impl FnMut() -> Claim) -> Result<(), Refusal> {
    for _ in 0..3 {
        let wait = match attempt() {
            Claim::Decided(r) => return r,
            Claim::WaitFor(done) => done,
        };
        if tokio::time::timeout(Duration::from_secs(1), wait.cancelled())
            .await
            .is_err()
        {
            break;
        }
    }
    Err(Refusal::PreviousLinkStuck)
}

/// Lock a transport's state, also after a panic elsewhere poisoned the mutex (the state is
/// kept consistent under the lock, so going on is safe).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Err(TooLarge)` when `frame`, encoded, is larger than `limit` (a transport's `max_frame`).
pub fn check_size(frame: &Frame, limit: usize) -> Result<(), Error> {
    let size = FRAME_OVERHEAD + frame.head.len() + frame.payload.len();
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    Ok(())
}

/// Wait up to `limit` for a link's writer task to end (it flushes briefly on shutdown),
/// then abort it.
pub async fn join_or_abort(writer: JoinHandle<()>, limit: Duration) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(limit, writer).await.is_err() {
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept() {
        let root = CancellationToken::new();
        let ctl = LinkCtl::new(&root);
        assert_eq!(ctl.reason(), None);
        ctl.close("first");
        ctl.close("second");
        assert!(ctl.cancel.is_cancelled());
        assert_eq!(ctl.reason().as_deref(), Some("first"));
        let other = LinkCtl::new(&root);
        root.cancel();
        assert!(other.cancel.is_cancelled());
        assert_eq!(other.reason(), None);
    }

    #[test]
    fn frames_over_the_limit_are_refused() {
        let f = Frame::new(
            bytes::Bytes::from_static(b"head"),
            bytes::Bytes::from_static(b"payload"),
        );
        let size = FRAME_OVERHEAD + 4 + 7;
        assert!(check_size(&f, size).is_ok());
        assert!(matches!(
            check_size(&f, size - 1),
            Err(Error::TooLarge { size: s, limit }) if s == size && limit == size - 1
        ));
    }

    #[tokio::test]
    async fn a_writer_that_does_not_end_is_aborted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        join_or_abort(writer, Duration::from_millis(50)).await;
        // The task was dropped: its sender is gone.
        assert!(rx.await.is_err());
        join_or_abort(tokio::spawn(async {}), Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn claim_waits_for_the_old_link_then_gives_up() {
        let mut looks = 0;
        let old = CancellationToken::new();
        old.cancel();
        let r = claim(|| {
            looks += 1;
            if looks < 3 {
                Claim::WaitFor(old.clone())
            } else {
                Claim::Decided(Ok(()))
            }
        })
        .await;
        assert_eq!((r, looks), (Ok(()), 3));

        // An old link that never finishes: given up after the first second.
        let stuck = CancellationToken::new();
        let r = claim(|| Claim::WaitFor(stuck.clone())).await;
        assert_eq!(r, Err(Refusal::PreviousLinkStuck));
    }
}
