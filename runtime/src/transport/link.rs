//! Per-link bookkeeping shared by the transports: a link's control block (cancel it with
//! the first reason given, know when its task is done) and the claim of a peer's single
//! link slot while an older link to that peer is still closing. Knows no sockets.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
    /// Installed (`Ok`) or refused with a reason (`Err`).
    Decided(Result<(), String>),
    /// An older link holds the slot and is closing: look again once it is done.
    WaitFor(CancellationToken),
}

/// Claim a peer's link slot: `attempt` looks at it (under the transport's lock) and
/// installs the new link, refuses it, or names an older link to wait for. Up to three
/// looks, waiting at most a second each time for the older link to finish.
pub async fn claim(mut attempt: impl FnMut() -> Claim) -> Result<(), String> {
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
    Err("previous link did not close in time".into())
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
        assert_eq!(r, Err("previous link did not close in time".into()));
    }
}
