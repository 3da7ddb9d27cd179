//! Property tests of the chunking/batching codec inside the encrypted stream.

use bytes::Bytes;
use proptest::prelude::*;
use runtime::transport::{Frame, Lane};
use transport_tcp::codec::{MAX_CHUNK, PIECE, Packer, UnpackError, Unpacker};

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let small = (
        prop::collection::vec(any::<u8>(), 0..100),
        prop::collection::vec(any::<u8>(), 0..300),
    );
    let large = (
        prop::collection::vec(any::<u8>(), 0..10),
        8_000usize..40_000,
    );
    let frame = prop_oneof![
        8 => small.prop_map(|(h, p)| Frame::new(Bytes::from(h), Bytes::from(p))),
        1 => large.prop_map(|(h, n)| Frame::new(Bytes::from(h), Bytes::from((0..n).map(|i| (i % 253) as u8).collect::<Vec<_>>()))),
    ];
    prop::collection::vec(frame, 0..60)
}

/// Pack `frames` into chunks of at most `max_chunk`, flushing after every
/// `flush_every`-th frame (never when 0).
fn pack(frames: &[Frame], max_chunk: usize, flush_every: usize) -> Vec<Vec<u8>> {
    let mut p = Packer::new(max_chunk);
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut sink = |c: &[u8]| -> Result<(), ()> {
        assert!(c.len() <= max_chunk && !c.is_empty());
        chunks.push(c.to_vec());
        Ok(())
    };
    for (i, f) in frames.iter().enumerate() {
        p.push(f, &mut sink).unwrap();
        if flush_every > 0 && i % flush_every == 0 {
            p.flush(&mut sink).unwrap();
        }
    }
    p.flush(&mut sink).unwrap();
    assert_eq!(p.pending(), 0);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_frames_round_trip(frames in frames(), max_chunk in prop_oneof![1usize..64, 64usize..4096, Just(MAX_CHUNK)],
                             flush_every in 0usize..5, use_fill in any::<bool>()) {
        let chunks = pack(&frames, max_chunk, flush_every);
        let mut u = Unpacker::new(1 << 20);
        let mut out = Vec::new();
        for c in &chunks {
            if use_fill {
                u.fill_with(c.len() + 3, |buf| { buf[..c.len()].copy_from_slice(c); Ok::<_, ()>(c.len()) }).unwrap();
            } else {
                u.push_chunk(c);
            }
            while let Some(f) = u.next_frame().unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn garbage_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
                            max_frame in 0usize..2000) {
        let mut u = Unpacker::new(max_frame);
        'outer: for c in &chunks {
            u.push_chunk(c);
            loop {
                match u.next_frame() {
                    Ok(Some(f)) => prop_assert!(f.head.len() + f.payload.len() + 4 <= max_frame),
                    Ok(None) => break,
                    Err(UnpackError::TooLarge { size, limit }) => { prop_assert!(size > limit); break 'outer; }
                    Err(UnpackError::Malformed(_)) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn failed_fill_appends_nothing(frames in frames()) {
        let chunks = pack(&frames, MAX_CHUNK, 0);
        let mut u = Unpacker::new(1 << 20);
        let mut out = Vec::new();
        for c in &chunks {
            // A chunk that fails to open (bad tag) leaves the stream as it was.
            let failed = u.fill_with(c.len(), |buf| { buf.fill(0xAA); Err::<usize, ()>(()) });
            prop_assert!(failed.is_err());
            u.push_chunk(c);
            while let Some(f) = u.next_frame().unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
    }
}

/// Frames on both lanes, some larger than a piece.
fn lane_frames() -> impl Strategy<Value = Vec<Frame>> {
    let frame = (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop_oneof![3 => 0usize..50, 1 => 50usize..20_000],
    )
        .prop_map(|(bulk, h, n)| {
            let lane = if bulk { Lane::Bulk } else { Lane::Control };
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            Frame::on(lane, Bytes::from(h), Bytes::from(payload))
        });
    prop::collection::vec(frame, 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The writer's interleaving: a bulk frame is cut into pieces and control frames go
    /// between its pieces (`order` says after which piece the next control frame is
    /// taken). Every frame arrives whole, on its lane, and each lane in order.
    #[test]
    fn interleaved_lanes_arrive_whole_and_in_lane_order(
        frames in lane_frames(),
        piece in prop_oneof![1usize..16, 16usize..2048, Just(PIECE)],
        max_chunk in prop_oneof![1usize..64, Just(MAX_CHUNK)],
        order in prop::collection::vec(any::<bool>(), 0..400),
    ) {
        let mut p = Packer::with_piece(max_chunk, piece);
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut sink = |c: &[u8]| -> Result<(), ()> {
            assert!(c.len() <= max_chunk);
            chunks.push(c.to_vec());
            Ok(())
        };
        let mut control: std::collections::VecDeque<&Frame> =
            frames.iter().filter(|f| f.lane == Lane::Control).collect();
        let mut coin = order.iter().copied().cycle();
        for f in frames.iter().filter(|f| f.lane == Lane::Bulk) {
            if let Some(mut large) = p.push_split(f, &mut sink).unwrap() {
                while !large.is_empty() {
                    if coin.next().unwrap_or(false) {
                        if let Some(c) = control.pop_front() {
                            p.push(c, &mut sink).unwrap();
                        }
                    }
                    p.piece(&mut large, &mut sink).unwrap();
                }
            }
            if coin.next().unwrap_or(false) {
                if let Some(c) = control.pop_front() {
                    p.push(c, &mut sink).unwrap();
                }
            }
        }
        for c in control {
            p.push(c, &mut sink).unwrap();
        }
        p.flush(&mut sink).unwrap();
        let mut u = Unpacker::new(1 << 20);
        let mut got = Vec::new();
        for c in &chunks {
            u.push_chunk(c);
            while let Some(f) = u.next_frame().unwrap() {
                got.push(f);
            }
        }
        for lane in [Lane::Control, Lane::Bulk] {
            let want: Vec<&Frame> = frames.iter().filter(|f| f.lane == lane).collect();
            let have: Vec<&Frame> = got.iter().filter(|f| f.lane == lane).collect();
            prop_assert_eq!(have, want);
        }
        prop_assert_eq!(got.len(), frames.len());
    }

    /// A split frame whose total exceeds the reader's limit is refused at its first
    /// piece, before anything is assembled.
    #[test]
    fn a_split_frame_over_the_limit_is_refused_at_once(n in 2_000usize..5_000) {
        let mut p = Packer::with_piece(MAX_CHUNK, 512);
        let mut chunks = Vec::new();
        let f = Frame::on(Lane::Bulk, Bytes::from_static(b"h"), Bytes::from(vec![1u8; n]));
        let large = p.push_split(&f, &mut |c: &[u8]| -> Result<(), ()> { chunks.push(c.to_vec()); Ok(()) }).unwrap();
        prop_assert!(large.is_some());
        p.flush(&mut |c: &[u8]| -> Result<(), ()> { chunks.push(c.to_vec()); Ok(()) }).unwrap();
        let mut u = Unpacker::new(1_000);
        for c in &chunks { u.push_chunk(c); }
        let refused = matches!(u.next_frame(), Err(UnpackError::TooLarge { size, limit: 1_000 }) if size == n + 5);
        prop_assert!(refused);
    }
}
