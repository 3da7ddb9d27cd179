//! A link's outbound queue with two lanes, shared by every transport.
//!
//! Each lane ([`Lane::Control`], [`Lane::Bulk`]) is an ordered queue with its own window
//! counted in bytes (head + payload + framing). A sender waits while its lane's window is
//! full ([`Outq::send`]), fails at once ([`Outq::try_send`]), or waits at most until a
//! deadline; every failure hands the frame back. The link's writer takes frames with
//! [`Outq::pop`]: control frames always first, so a control frame never waits behind
//! queued bulk bytes. When the link ends the transport calls [`Outq::close`]: every
//! waiting sender wakes at once with its frame and [`QueueError::Closed`], and no new
//! frame is accepted (the writer may still drain what is queued, e.g. on shutdown).
//!
//! A frame larger than its whole window is accepted when its lane is empty, so any frame
//! up to the transport's `max_frame` can be sent.
//!
//! Knows no sockets and no time source other than the deadline a caller passes in.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Frame, Lane};
use crate::wire::FRAME_OVERHEAD;

/// Why a frame was not queued; the frame comes back beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The lane's window is full (only from `try_send`).
    Full,
    /// The deadline passed while waiting for room.
    Timeout,
    /// The link ended.
    Closed,
}

/// Bytes a frame counts against its lane's window.
pub fn cost(frame: &Frame) -> usize {
    FRAME_OVERHEAD + frame.head.len() + frame.payload.len()
}

struct LaneState {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// A sender found this lane full since the last wake-up: the next pop wakes the
    /// waiting senders (a pop with nobody waiting skips `Notify::notify_waiters`, which
    /// takes a lock).
    blocked: bool,
}

struct State {
    lanes: [LaneState; 2],
    closed: bool,
}

/// The two-lane outbound queue of one link. See the module docs.
pub struct Outq {
    windows: [usize; 2],
    state: Mutex<State>,
    /// Woken when a lane's bytes drop (one `Notify` per lane) or the queue closes.
    room: [Notify; 2],
    /// Woken when a frame is queued or the queue closes (the writer waits on it).
    ready: Notify,
}

impl Outq {
    /// A queue whose control lane holds up to `control` bytes and bulk lane `bulk` bytes
    /// (both at least 1).
    pub fn new(control: usize, bulk: usize) -> Self {
        let lane = || LaneState {
            frames: VecDeque::new(),
            bytes: 0,
            blocked: false,
        };
        Outq {
            windows: [control.max(1), bulk.max(1)],
            state: Mutex::new(State {
                lanes: [lane(), lane()],
                closed: false,
            }),
            room: [Notify::new(), Notify::new()],
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        super::link::lock(&self.state)
    }

    /// Queue `frame` if its lane has room now.
    pub fn try_send(&self, frame: Frame) -> Result<(), (Frame, QueueError)> {
        let mut st = self.lock();
        if st.closed {
            return Err((frame, QueueError::Closed));
        }
        let l = frame.lane.index();
        let c = cost(&frame);
        let lane = &mut st.lanes[l];
        if lane.bytes > 0 && lane.bytes + c > self.windows[l] {
            lane.blocked = true;
            return Err((frame, QueueError::Full));
        }
        lane.bytes += c;
        lane.frames.push_back(frame);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// Queue `frame`, waiting for room in its lane until `deadline` (forever with `None`)
    /// or until the queue closes. Dropping the future drops the frame.
    pub async fn send(
        &self,
        frame: Frame,
        deadline: Option<Instant>,
    ) -> Result<(), (Frame, QueueError)> {
        let l = frame.lane.index();
        let mut frame = frame;
        loop {
            let mut room = pin!(self.room[l].notified());
            room.as_mut().enable();
            match self.try_send(frame) {
                Ok(()) => return Ok(()),
                Err((f, QueueError::Full)) => frame = f,
                Err(e) => return Err(e),
            }
            match deadline {
                None => room.await,
                Some(at) => {
                    if tokio::time::timeout_at(at, room).await.is_err() {
                        // One last look: room may have appeared at the deadline.
                        return match self.try_send(frame) {
                            Err((f, QueueError::Full)) => Err((f, QueueError::Timeout)),
                            r => r,
                        };
                    }
                }
            }
        }
    }

    /// Take the next frame to write: control before bulk. Works after `close` too.
    pub fn pop(&self) -> Option<Frame> {
        let mut st = self.lock();
        for l in [Lane::Control.index(), Lane::Bulk.index()] {
            let lane = &mut st.lanes[l];
            if let Some(f) = lane.frames.pop_front() {
                lane.bytes -= cost(&f);
                let wake = std::mem::take(&mut lane.blocked);
                drop(st);
                if wake {
                    self.room[l].notify_waiters();
                }
                return Some(f);
            }
        }
        None
    }

    /// Take the next frame only if it is on the control lane.
    pub fn pop_control(&self) -> Option<Frame> {
        let mut st = self.lock();
        let l = Lane::Control.index();
        let lane = &mut st.lanes[l];
        let f = lane.frames.pop_front()?;
        lane.bytes -= cost(&f);
        let wake = std::mem::take(&mut lane.blocked);
        drop(st);
        if wake {
            self.room[l].notify_waiters();
        }
        Some(f)
    }

    /// Wait until a frame is queued (true) or the queue is closed and empty (false).
    pub async fn ready(&self) -> bool {
        loop {
            let mut ready = pin!(self.ready.notified());
            ready.as_mut().enable();
            {
                let st = self.lock();
                if st.lanes.iter().any(|l| !l.frames.is_empty()) {
                    return true;
                }
                if st.closed {
                    return false;
                }
            }
            ready.await;
        }
    }

    /// True when nothing is queued on either lane.
    pub fn is_empty(&self) -> bool {
        self.lock().lanes.iter().all(|l| l.frames.is_empty())
    }

    /// Bytes queued on `lane`.
    pub fn queued(&self, lane: Lane) -> usize {
        self.lock().lanes[lane.index()].bytes
    }

    /// Refuse new frames and wake every waiting sender (they get their frame back with
    /// [`QueueError::Closed`]). What is queued stays for [`Outq::pop`] or [`Outq::clear`].
    pub fn close(&self) {
        self.lock().closed = true;
        for r in &self.room {
            r.notify_waiters();
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Drop every queued frame (the link is gone), returning how many there were.
    pub fn clear(&self) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for lane in &mut st.lanes {
            n += lane.frames.len();
            lane.frames.clear();
            lane.bytes = 0;
            lane.blocked = false;
        }
        drop(st);
        for r in &self.room {
            r.notify_waiters();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn f(lane: Lane, tag: u32, size: usize) -> Frame {
        Frame::on(
            lane,
            Bytes::copy_from_slice(&tag.to_be_bytes()),
            Bytes::from(vec![0u8; size]),
        )
    }

    fn tag(f: &Frame) -> u32 {
        u32::from_be_bytes(f.head[..4].try_into().unwrap())
    }

    #[test]
    fn control_goes_first_and_windows_are_per_lane() {
        let q = Outq::new(100, 100);
        q.try_send(f(Lane::Bulk, 1, 80)).unwrap();
        // The bulk lane is full: a second bulk frame is refused and handed back ...
        let (back, e) = q.try_send(f(Lane::Bulk, 2, 80)).unwrap_err();
        assert_eq!((tag(&back), e), (2, QueueError::Full));
        // ... but the control lane has its own window.
        q.try_send(f(Lane::Control, 3, 10)).unwrap();
        q.try_send(f(Lane::Control, 4, 10)).unwrap();
        assert_eq!(q.queued(Lane::Control), 2 * (FRAME_OVERHEAD + 14));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).map(|f| tag(&f)).collect();
        assert_eq!(order, vec![3, 4, 1]);
        assert!(q.is_empty());
        assert_eq!(q.queued(Lane::Bulk), 0);
    }

    #[test]
    fn a_frame_larger_than_the_window_passes_an_empty_lane() {
        let q = Outq::new(10, 10);
        q.try_send(f(Lane::Bulk, 1, 1000)).unwrap();
        assert_eq!(
            q.try_send(f(Lane::Bulk, 2, 1)).unwrap_err().1,
            QueueError::Full
        );
        assert_eq!(tag(&q.pop().unwrap()), 1);
        q.try_send(f(Lane::Bulk, 2, 1)).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_room_when_the_writer_pops() {
        let q = Arc::new(Outq::new(100, 100));
        q.try_send(f(Lane::Bulk, 1, 90)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.send(f(Lane::Bulk, 2, 90), None).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert_eq!(tag(&q.pop().unwrap()), 1);
        waiter.await.unwrap().unwrap();
        assert_eq!(tag(&q.pop().unwrap()), 2);
    }

    #[tokio::test]
    async fn close_wakes_every_waiting_sender_with_its_frame() {
        let q = Arc::new(Outq::new(10, 10));
        q.try_send(f(Lane::Control, 0, 100)).unwrap();
        q.try_send(f(Lane::Bulk, 0, 100)).unwrap();
        let waiters: Vec<_> = (1..=6)
            .map(|i| {
                let q = q.clone();
                let lane = if i % 2 == 0 {
                    Lane::Bulk
                } else {
                    Lane::Control
                };
                tokio::spawn(async move { q.send(f(lane, i, 5), None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        let mut back = vec![];
        for w in waiters {
            let (frame, e) = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a sender stayed blocked after close")
                .unwrap()
                .unwrap_err();
            assert_eq!(e, QueueError::Closed);
            back.push(tag(&frame));
        }
        assert_eq!(back, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            q.try_send(f(Lane::Control, 9, 0)).unwrap_err().1,
            QueueError::Closed
        );
        // What was queued can still be drained (flush on shutdown), then `ready` ends.
        assert!(q.ready().await);
        assert_eq!(q.clear(), 2);
        assert!(!q.ready().await);
    }

    #[tokio::test]
    async fn the_deadline_hands_the_frame_back() {
        let q = Outq::new(10, 10);
        q.try_send(f(Lane::Control, 1, 100)).unwrap();
        let at = Instant::now() + Duration::from_millis(30);
        let (frame, e) = q.send(f(Lane::Control, 2, 1), Some(at)).await.unwrap_err();
        assert_eq!((tag(&frame), e), (2, QueueError::Timeout));
        assert!(Instant::now() >= at);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send(bool, usize),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<bool>(), 0usize..300).prop_map(|(b, n)| Op::Send(b, n)),
            2 => Just(Op::Pop),
        ]
    }

    proptest! {
        /// Random interleavings of sends on both lanes and pops: every accepted frame comes
        /// out exactly once, in order within its lane, control never behind bulk, refused
        /// frames come back, and the byte counts stay within the windows.
        #[test]
        fn interleavings_keep_lane_order(ops in proptest::collection::vec(op(), 0..400)) {
            let q = Outq::new(500, 700);
            let mut next = 0u32;
            let mut accepted: [Vec<u32>; 2] = [vec![], vec![]];
            let mut popped: [Vec<u32>; 2] = [vec![], vec![]];
            let pop = |q: &Outq, popped: &mut [Vec<u32>; 2]| -> Option<()> {
                let before_control = q.queued(Lane::Control);
                let fr = q.pop()?;
                if fr.lane == Lane::Bulk {
                    assert_eq!(before_control, 0, "bulk left before queued control");
                }
                popped[fr.lane.index()].push(tag(&fr));
                Some(())
            };
            for o in ops {
                match o {
                    Op::Send(bulk, n) => {
                        let lane = if bulk { Lane::Bulk } else { Lane::Control };
                        next += 1;
                        match q.try_send(f(lane, next, n)) {
                            Ok(()) => accepted[lane.index()].push(next),
                            Err((back, e)) => {
                                prop_assert_eq!(e, QueueError::Full);
                                prop_assert_eq!(tag(&back), next);
                                prop_assert_eq!(back.payload.len(), n);
                            }
                        }
                        for (l, w) in [(Lane::Control, 500), (Lane::Bulk, 700)] {
                            let b = q.queued(l);
                            // Over the window only by a lone oversized frame.
                            prop_assert!(b <= w || b <= FRAME_OVERHEAD + 4 + 300);
                        }
                    }
                    Op::Pop => { let _ = pop(&q, &mut popped); }
                }
            }
            while pop(&q, &mut popped).is_some() {}
            prop_assert_eq!(&popped, &accepted);
        }
    }
}
