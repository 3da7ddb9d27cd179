//! Credit accounting for one RC link, sans-IO: a sender never overruns the receiver.
//!
//! Two kinds of credit flow from receiver to sender:
//! * **receive credits**: receive buffers the peer has posted. Every message consumes one
//!   (a two-sided send, and also an RDMA write *with immediate*, which completes into a
//!   receive). Sending with no posted receive would stall the QP (RNR) or break it.
//! * **slot credits**: free slots of the peer's registered bulk ring. An RDMA write lands
//!   in slot `next_slot` (round robin: the receiver frees slots in arrival order, which is
//!   the sending order on an RC QP).
//!
//! The receiver counts what it has freed (`owed_*`) and returns it in the header of every
//! message it sends ([`Credits::piggyback`]); when it has nothing to send and owes at
//! least half of a window it sends a credit-only message ([`Credits::should_send_credit`]).
//! One receive credit is reserved for credit-only messages, so two sides that both wait
//! for credit can always tell each other about freed buffers: no deadlock.

/// Why the peer's credit grant is refused (the link must go down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    #[error("peer granted {got} receive credits, more than the {depth} buffers it posted")]
    TooManyRecv { got: u32, depth: u32 },
    #[error("peer granted {got} slot credits, more than its {slots} slots")]
    TooManySlots { got: u32, slots: u32 },
}

/// The smallest receive depth the credit scheme works with.
pub const MIN_RECV_DEPTH: u32 = 3;

/// What a message needs from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A data message into a posted receive buffer.
    Recv,
    /// An RDMA write into a ring slot (also consumes a receive, for its immediate).
    Slot,
    /// A credit-only message (may use the reserved last receive credit).
    Credit,
}

/// One side's view of a link's credits. `recv_depth` and `slots` are the peer's (learnt
/// in the exchange); what this side owes is counted in the same units.
#[derive(Clone, Debug)]
pub struct Credits {
    recv: u32,
    slots: u32,
    next_slot: u32,
    peer_recv_depth: u32,
    peer_slots: u32,
    owed_recv: u32,
    /// Of `owed_recv`, buffers that carried data (not credit-only messages).
    owed_data: u32,
    owed_slots: u32,
    own_recv_depth: u32,
    own_slots: u32,
}

impl Credits {
    /// `peer_*`: what the peer posted/exposes; `own_*`: what this side posted/exposes.
    /// Needs at least 3 receive buffers each way ([`MIN_RECV_DEPTH`]; one is reserved for
    /// credit messages).
    pub fn new(
        peer_recv_depth: u32,
        peer_slots: u32,
        own_recv_depth: u32,
        own_slots: u32,
    ) -> Credits {
        Credits {
            recv: peer_recv_depth,
            slots: peer_slots,
            next_slot: 0,
            peer_recv_depth,
            peer_slots,
            owed_recv: 0,
            owed_data: 0,
            owed_slots: 0,
            own_recv_depth,
            own_slots,
        }
    }

    /// Whether a message needing `need` may go now.
    pub fn can(&self, need: Need) -> bool {
        match need {
            Need::Recv => self.recv >= 2,
            Need::Slot => self.recv >= 2 && self.slots >= 1,
            Need::Credit => self.recv >= 1,
        }
    }

    /// Spend the credit for one message; for [`Need::Slot`] returns the slot to write.
    /// `None` when [`Credits::can`] says no.
    pub fn take(&mut self, need: Need) -> Option<Option<u32>> {
        if !self.can(need) {
            return None;
        }
        self.recv -= 1;
        if need == Need::Slot {
            self.slots -= 1;
            let s = self.next_slot;
            self.next_slot = (self.next_slot + 1) % self.peer_slots.max(1);
            return Some(Some(s));
        }
        Some(None)
    }

    /// The peer returned credits (from a message header).
    pub fn grant(&mut self, recv: u32, slots: u32) -> Result<(), CreditError> {
        let r = self.recv.saturating_add(recv);
        if r > self.peer_recv_depth {
            return Err(CreditError::TooManyRecv {
                got: r,
                depth: self.peer_recv_depth,
            });
        }
        let s = self.slots.saturating_add(slots);
        if s > self.peer_slots {
            return Err(CreditError::TooManySlots {
                got: s,
                slots: self.peer_slots,
            });
        }
        self.recv = r;
        self.slots = s;
        Ok(())
    }

    /// This side re-posted one receive buffer (owes the peer one receive credit); `data`
    /// says whether it had carried data or only credit.
    pub fn reposted(&mut self, data: bool) {
        self.owed_recv = (self.owed_recv + 1).min(self.own_recv_depth);
        if data {
            self.owed_data = (self.owed_data + 1).min(self.owed_recv);
        }
    }

    /// This side is done with one ring slot (owes the peer one slot credit). Slots must be
    /// freed in the order they were written (the sender writes them round robin).
    pub fn slot_freed(&mut self) {
        self.owed_slots = (self.owed_slots + 1).min(self.own_slots);
    }

    /// Credits to put in the header of the message about to go; they are then no longer owed.
    pub fn piggyback(&mut self) -> (u32, u32) {
        let r = (self.owed_recv, self.owed_slots);
        self.owed_recv = 0;
        self.owed_data = 0;
        self.owed_slots = 0;
        r
    }

    /// True when this side owes enough that a credit-only message should go (and may):
    /// half its buffers were used by data, or all but one by anything. A credit-only
    /// message alone never triggers one back (no endless credit ping-pong; needs a
    /// receive depth of at least 3).
    pub fn should_send_credit(&self) -> bool {
        let owes_recv =
            self.owed_data * 2 >= self.own_recv_depth || self.owed_recv + 1 >= self.own_recv_depth;
        let owes_slots = self.own_slots > 0 && self.owed_slots * 2 >= self.own_slots.max(1);
        (owes_recv || owes_slots) && self.can(Need::Credit)
    }

    /// Receive and slot credits available now.
    pub fn available(&self) -> (u32, u32) {
        (self.recv, self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_last_receive_credit_is_kept_for_credit_messages() {
        let mut c = Credits::new(3, 1, 3, 1);
        assert_eq!(c.take(Need::Slot), Some(Some(0)));
        assert_eq!(c.take(Need::Slot), None, "no slot left");
        assert_eq!(c.take(Need::Recv), Some(None));
        assert!(!c.can(Need::Recv), "one receive credit left: reserved");
        assert_eq!(c.take(Need::Credit), Some(None));
        assert!(!c.can(Need::Credit));
        c.grant(2, 1).unwrap();
        assert_eq!(
            c.take(Need::Slot),
            Some(Some(0)),
            "one slot: round robin wraps"
        );
    }

    #[test]
    fn a_peer_granting_more_than_it_posted_is_refused() {
        let mut c = Credits::new(4, 2, 4, 2);
        assert_eq!(
            c.grant(1, 0),
            Err(CreditError::TooManyRecv { got: 5, depth: 4 })
        );
        c.take(Need::Slot).unwrap();
        assert_eq!(
            c.grant(0, 2),
            Err(CreditError::TooManySlots { got: 3, slots: 2 })
        );
        assert_eq!(c.grant(1, 1), Ok(()));
        assert_eq!(c.available(), (4, 2));
    }

    /// One direction's receiver as the verbs see it: posted buffers and ring slots in use.
    struct Receiver {
        posted: u32,
        slots_busy: Vec<bool>,
    }

    proptest! {
        /// Two sides send random mixes of messages with random delays in freeing buffers.
        /// Invariants checked at every step: no message arrives without a posted receive,
        /// no write lands in a busy slot, and everything wanted is eventually sent (no
        /// deadlock), with credit-only messages bounded.
        #[test]
        fn two_sides_never_overrun_and_never_deadlock(
            depth in MIN_RECV_DEPTH..8, slots in 1u32..6,
            wants in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..200),
            holds in proptest::collection::vec(0u8..4, 1..64),
        ) {
            let mut side = [Credits::new(depth, slots, depth, slots), Credits::new(depth, slots, depth, slots)];
            let mut rx = [
                Receiver { posted: depth, slots_busy: vec![false; slots as usize] },
                Receiver { posted: depth, slots_busy: vec![false; slots as usize] },
            ];
            // messages in flight to side i: (is_slot, slot, recv_grant, slot_grant)
            // in flight to side i: (slot, receive credits, slot credits, carries data)
            type Msg = (Option<u32>, u32, u32, bool);
            let mut wire: [std::collections::VecDeque<Msg>; 2] = Default::default();
            // buffers/slots side i holds before freeing: (ticks_left, slot, carried data)
            let mut held: [Vec<(u8, Option<u32>, bool)>; 2] = Default::default();
            let mut todo: [Vec<bool>; 2] = [
                wants.iter().map(|w| w.0).collect(),
                wants.iter().map(|w| w.1).collect(),
            ];
            let mut credit_msgs = 0u32;
            let mut steps = 0u32;
            let mut h = 0usize;
            while todo.iter().any(|t| !t.is_empty()) || wire.iter().any(|w| !w.is_empty())
                || held.iter().any(|x| !x.is_empty()) {
                steps += 1;
                prop_assert!(steps < 100_000, "deadlock: {:?} {:?}", side[0], side[1]);
                for i in 0..2 {
                    let j = 1 - i;
                    // deliver one message to i
                    if let Some((slot, gr, gs, data)) = wire[i].pop_front() {
                        prop_assert!(rx[i].posted > 0, "receive without a posted buffer");
                        rx[i].posted -= 1;
                        if let Some(s) = slot {
                            prop_assert!(!rx[i].slots_busy[s as usize], "write into a busy slot");
                            rx[i].slots_busy[s as usize] = true;
                        }
                        side[i].grant(gr, gs).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        held[i].push((holds[h % holds.len()], slot, data));
                        h += 1;
                    }
                    // free what i held long enough
                    let mut k = 0;
                    while k < held[i].len() {
                        // Ring slots are freed in arrival order (the contract of
                        // `slot_freed`); plain receive buffers in any order.
                        let earlier_slot = held[i][..k].iter().any(|x| x.1.is_some());
                        if held[i][k].0 == 0 && !(held[i][k].1.is_some() && earlier_slot) {
                            let (_, slot, data) = held[i].remove(k);
                            rx[i].posted += 1;
                            side[i].reposted(data);
                            if let Some(s) = slot {
                                rx[i].slots_busy[s as usize] = false;
                                side[i].slot_freed();
                            }
                        } else {
                            held[i][k].0 = held[i][k].0.saturating_sub(1);
                            k += 1;
                        }
                    }
                    // i sends its next wanted message to j, or credit
                    let need = todo[i].last().map(|&bulk| if bulk { Need::Slot } else { Need::Recv });
                    if let Some(n) = need.filter(|&n| side[i].can(n)) {
                        let slot = side[i].take(n).unwrap();
                        let (gr, gs) = side[i].piggyback();
                        wire[j].push_back((slot, gr, gs, true));
                        todo[i].pop();
                    } else if side[i].should_send_credit() {
                        side[i].take(Need::Credit).unwrap();
                        let (gr, gs) = side[i].piggyback();
                        wire[j].push_back((None, gr, gs, false));
                        credit_msgs += 1;
                    }
                }
            }
            prop_assert!(credit_msgs <= 4 * (wants.len() as u32 + 2), "{credit_msgs} credit messages");
        }
    }
}
