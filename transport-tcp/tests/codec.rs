//! Property tests of the chunking/batching codec inside the encrypted stream.

use bytes::Bytes;
use proptest::prelude::*;
use runtime::transport::Frame;
use transport_tcp::codec::{MAX_CHUNK, Packer, UnpackError, Unpacker};

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
