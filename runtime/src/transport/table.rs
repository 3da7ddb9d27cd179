//! A transport's link table, shared by every transport: at most one link per peer, in
//! one of three phases, the look a new link takes at its peer's slot (the simultaneous
//! dial arbiter's common part), the sender's lookup (which link, or which typed error),
//! and closing every link at shutdown. The transport keeps what is its own in `L` (its
//! outbound queue, a peer identity) and decides conflicts between two links to one peer
//! (by node id, by identity), passing that rule to [`Table::claim_look`].
//!
//! Knows no sockets and no time; the caller holds it under its own lock.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::link::{Claim, LinkCtl};
use super::{Error, Frame, SendError, link};
use crate::NodeId;
use crate::wire::Refusal;

/// Where a link stands in its peer's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Installed, not `Up` yet (the arbiter waits for the peer's confirmation): it may
    /// vanish without an `Up`/`Down` pair.
    Reserved,
    /// `Up` emitted (or about to be); frames may be sent.
    Up,
    /// Ending; its `Down` is being delivered.
    Closing,
}

/// What the table needs of a transport's link entry.
pub trait Entry {
    fn ctl(&self) -> &LinkCtl;
}

/// One peer's link.
pub struct Slot<L> {
    /// The transport's number for this link (tells a link from its successor).
    pub id: u64,
    pub phase: Phase,
    pub link: L,
}

/// The links of one transport, by peer. See the module docs.
pub struct Table<L> {
    closed: bool,
    slots: HashMap<NodeId, Slot<L>>,
}

impl<L> Default for Table<L> {
    fn default() -> Self {
        Table {
            closed: false,
            slots: HashMap::new(),
        }
    }
}

impl<L: Entry> Table<L> {
    /// True once [`Table::close_all`] ran: no link is installed any more.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Shut down: refuse new links, close every link with `reason`; their done tokens.
    pub fn close_all(&mut self, reason: &str) -> Vec<CancellationToken> {
        self.closed = true;
        self.slots
            .values()
            .map(|s| {
                s.link.ctl().close(reason);
                s.link.ctl().done.clone()
            })
            .collect()
    }

    pub fn get(&self, peer: NodeId) -> Option<&Slot<L>> {
        self.slots.get(&peer)
    }

    pub fn contains(&self, peer: NodeId) -> bool {
        self.slots.contains_key(&peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Slot<L>)> {
        self.slots.iter().map(|(p, s)| (*p, s))
    }

    /// Peers whose link is up, sorted.
    pub fn up(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.phase == Phase::Up)
            .map(|(p, _)| *p)
            .collect();
        v.sort_unstable();
        v
    }

    /// The link `id` of `peer` if it still holds the slot.
    pub fn current(&mut self, peer: NodeId, id: u64) -> Option<&mut Slot<L>> {
        self.slots.get_mut(&peer).filter(|s| s.id == id)
    }

    /// Move link `id` of `peer` to `phase`; false when it no longer holds the slot.
    pub fn set_phase(&mut self, peer: NodeId, id: u64, phase: Phase) -> bool {
        match self.current(peer, id) {
            Some(s) => {
                s.phase = phase;
                true
            }
            None => false,
        }
    }

    /// Free `peer`'s slot if link `id` still holds it.
    pub fn remove(&mut self, peer: NodeId, id: u64) -> bool {
        if self.current(peer, id).is_some() {
            self.slots.remove(&peer);
            true
        } else {
            false
        }
    }

    /// Close the links of the peers `keep` rejects (removed from the peer list).
    pub fn close_unless(&self, keep: impl Fn(NodeId) -> bool, reason: &str) {
        for (p, s) in &self.slots {
            if !keep(*p) {
                s.link.ctl().close(reason);
            }
        }
    }

    /// For a sender: what `pick` takes from `peer`'s live link, or why `frame` cannot go
    /// (handed back): larger than `max_frame`, shut down, not a known peer (`listed`
    /// false), or no live link now.
    pub fn route<T>(
        &self,
        peer: NodeId,
        listed: bool,
        frame: Frame,
        max_frame: usize,
        pick: impl FnOnce(&L) -> T,
    ) -> Result<(T, Frame), SendError> {
        if let Err(e) = link::check_size(&frame, max_frame) {
            return Err(SendError::new(e, frame));
        }
        let error = if self.closed {
            Error::Closed
        } else {
            match self.slots.get(&peer) {
                Some(s) if s.phase == Phase::Up => return Ok((pick(&s.link), frame)),
                _ if !listed => Error::UnknownPeer(peer),
                _ => Error::Unreachable(peer),
            }
        };
        Err(SendError::new(error, frame))
    }

    /// One look at `peer`'s slot for a new link (see [`link::claim`]): refused when shut
    /// down or `peer` is not `listed`; installed when the slot is free; otherwise
    /// `conflict` decides against the link holding it.
    pub fn claim_look(
        &mut self,
        local: NodeId,
        peer: NodeId,
        listed: bool,
        new: &mut Option<Slot<L>>,
        conflict: impl FnOnce(&Slot<L>) -> Claim,
    ) -> Claim {
        if self.closed {
            return Claim::Decided(Err(Refusal::ShuttingDown));
        }
        if !listed {
            return Claim::Decided(Err(Refusal::NotListed { peer, local }));
        }
        match self.slots.get(&peer) {
            Some(old) => conflict(old),
            None => match new.take() {
                Some(slot) => {
                    self.slots.insert(peer, slot);
                    Claim::Decided(Ok(()))
                }
                None => Claim::Decided(Err(Refusal::Malformed("link claimed twice".into()))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct L(LinkCtl, u8);
    impl Entry for L {
        fn ctl(&self) -> &LinkCtl {
            &self.0
        }
    }

    fn slot(root: &CancellationToken, id: u64, tag: u8) -> Option<Slot<L>> {
        Some(Slot {
            id,
            phase: Phase::Reserved,
            link: L(LinkCtl::new(root), tag),
        })
    }

    fn frame(n: usize) -> Frame {
        Frame::new(Bytes::from(vec![0; n]), Bytes::new())
    }

    #[test]
    fn a_sender_gets_the_live_link_or_a_typed_error_and_its_frame() {
        let root = CancellationToken::new();
        let mut t: Table<L> = Table::default();
        let err = |r: Result<(u8, Frame), SendError>| r.map(|(x, _)| x).map_err(|e| e.error);
        assert_eq!(
            err(t.route(2, false, frame(1), 100, |l| l.1)),
            Err(Error::UnknownPeer(2))
        );
        assert_eq!(
            err(t.route(2, true, frame(1), 100, |l| l.1)),
            Err(Error::Unreachable(2))
        );
        let mut new = slot(&root, 1, 7);
        assert!(matches!(
            t.claim_look(1, 2, true, &mut new, |_| unreachable!()),
            Claim::Decided(Ok(()))
        ));
        // Reserved: not sendable yet.
        assert_eq!(
            err(t.route(2, true, frame(1), 100, |l| l.1)),
            Err(Error::Unreachable(2))
        );
        assert!(t.set_phase(2, 1, Phase::Up));
        assert!(!t.set_phase(2, 9, Phase::Closing), "another link's id");
        assert_eq!(err(t.route(2, true, frame(1), 100, |l| l.1)), Ok(7));
        assert_eq!(t.up(), vec![2]);
        match t.route(2, true, frame(200), 100, |l| l.1) {
            Err(SendError {
                error:
                    Error::TooLarge {
                        size: 204,
                        limit: 100,
                    },
                frame,
            }) => {
                assert_eq!(frame.head.len(), 200)
            }
            _ => panic!("oversized frame not refused"),
        }
        let dones = t.close_all("bye");
        assert_eq!(dones.len(), 1);
        assert_eq!(t.get(2).unwrap().link.0.reason().as_deref(), Some("bye"));
        assert_eq!(
            err(t.route(2, true, frame(1), 100, |l| l.1)),
            Err(Error::Closed)
        );
    }

    #[test]
    fn claims_are_refused_when_closed_or_unlisted_and_conflicts_go_to_the_rule() {
        let root = CancellationToken::new();
        let mut t: Table<L> = Table::default();
        let mut new = slot(&root, 1, 1);
        assert!(matches!(
            t.claim_look(1, 2, false, &mut new, |_| unreachable!()),
            Claim::Decided(Err(Refusal::NotListed { peer: 2, local: 1 }))
        ));
        assert!(new.is_some(), "a refused link stays with the caller");
        assert!(matches!(
            t.claim_look(1, 2, true, &mut new, |_| unreachable!()),
            Claim::Decided(Ok(()))
        ));
        let mut second = slot(&root, 2, 2);
        let mut seen = 0;
        let r = t.claim_look(1, 2, true, &mut second, |old| {
            seen = old.id;
            Claim::Decided(Err(Refusal::Duplicate { local: 1, peer: 2 }))
        });
        assert!(matches!(r, Claim::Decided(Err(Refusal::Duplicate { .. }))));
        assert_eq!(seen, 1);
        assert!(!t.remove(2, 2) && t.remove(2, 1) && !t.contains(2));
        t.close_all("bye");
        assert!(matches!(
            t.claim_look(1, 2, true, &mut second, |_| unreachable!()),
            Claim::Decided(Err(Refusal::ShuttingDown))
        ));
    }
}
