//! The image bytes from the protocol shell to the builder thread, bounded in bytes.

use super::*;

/// Image bytes from the protocol shell to the builder thread. It counts the bytes the builder
/// took ([`FeedTx`] bounds what is fed by it; the shell acknowledges it to home).
pub(crate) struct ChunkReader {
    pub(super) rx: mpsc::Receiver<Bytes>,
    pub(super) cur: Bytes,
    /// Bytes read out so far (shared with the feeding side).
    pub(super) consumed: Arc<AtomicU64>,
    pub(super) total: u64,
    /// Wakes the protocol shell each time a chunk is used up (it then acknowledges).
    pub(super) wake: Option<mpsc::Sender<In>>,
}

impl ChunkReader {
    /// A reader of chunks that are not bounded or acknowledged on consumption.
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> ChunkReader {
        ChunkReader {
            rx,
            cur: Bytes::new(),
            consumed: Arc::new(AtomicU64::new(0)),
            total: 0,
            wake: None,
        }
    }
}

/// The protocol shell's end of the image channel to the builder, bounded in bytes: bytes fed
/// and not yet read by the builder never exceed `limit` (the protocol's window). It never
/// blocks: bytes past the bound are refused (the protocol already keeps home within the
/// window, so a refusal means a fault, and the move ends before the commit).
pub(crate) struct FeedTx {
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) fed: u64,
    pub(super) consumed: Arc<AtomicU64>,
    pub(super) limit: u64,
}

impl FeedTx {
    pub(crate) fn send(&mut self, data: Bytes) -> Result<(), String> {
        let len = data.len() as u64;
        let held = self.fed - self.consumed.load(Ordering::Acquire).min(self.fed);
        if held + len > self.limit {
            return Err(format!(
                "the builder has {held} image bytes unread; {len} more would pass the bound of {}",
                self.limit
            ));
        }
        self.tx
            .send(data)
            .map_err(|_| "the builder stopped reading the image".to_string())?;
        self.fed += len;
        Ok(())
    }
}

/// A byte-bounded image channel (see [`FeedTx`]); `wake` is poked each time the builder used
/// up a chunk.
pub(crate) fn feed_channel(limit: u64, wake: Option<mpsc::Sender<In>>) -> (FeedTx, ChunkReader) {
    let (tx, rx) = mpsc::channel();
    let consumed = Arc::new(AtomicU64::new(0));
    (
        FeedTx {
            tx,
            fed: 0,
            consumed: consumed.clone(),
            limit,
        },
        ChunkReader {
            rx,
            cur: Bytes::new(),
            consumed,
            total: 0,
            wake,
        },
    )
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(b) => self.cur = b,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no image data for 30 s",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        self.total += n as u64;
        self.consumed.store(self.total, Ordering::Release);
        if self.cur.is_empty() {
            // drop the used-up chunk now, then let the shell acknowledge
            self.cur = Bytes::new();
            if let Some(w) = &self.wake {
                let _ = w.send(In::Wake);
            }
        }
        Ok(n)
    }
}
