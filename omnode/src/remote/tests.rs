use super::*;

/// The image channel holds at most its bound of unread bytes: more is refused without
/// blocking; what the builder reads frees room, is counted exactly, and each used-up
/// chunk wakes the shell; the bytes come out whole and in order.
#[test]
fn feed_channel_is_bounded_in_bytes_and_counts_consumption() {
    let (wtx, wrx) = mpsc::channel();
    let (mut tx, mut rx) = feed_channel(10, Some(wtx));
    tx.send(Bytes::from_static(b"abcdef")).unwrap();
    tx.send(Bytes::from_static(b"ghij")).unwrap();
    let e = tx.send(Bytes::from_static(b"k")).unwrap_err();
    assert!(e.contains("10 image bytes unread"), "{e}");
    let mut buf = [0u8; 4];
    assert_eq!(rx.read(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"abcd");
    assert_eq!(tx.consumed.load(Ordering::Acquire), 4);
    assert!(wrx.try_recv().is_err(), "no wake before a chunk is used up");
    // 4 read: room for 4 more, not 5
    assert!(tx.send(Bytes::from_static(b"klmno")).is_err());
    tx.send(Bytes::from_static(b"klmn")).unwrap();
    let mut all = b"abcd".to_vec();
    drop(tx);
    rx.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"abcdefghijklmn");
    assert_eq!(rx.consumed.load(Ordering::Acquire), 14);
    assert_eq!(wrx.try_iter().filter(|w| matches!(w, In::Wake)).count(), 3);
}
