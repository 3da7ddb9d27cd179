//! The home side's view of an image being read while it streams: a producer thread reads the
//! frozen process (`migrate::Seized::stream_plan`) into a bounded channel of pieces; the
//! migration thread takes the ranges the protocol asks for and keeps only the bytes the target
//! has not acknowledged. Memory at home is bounded by the protocol's window plus a few pieces,
//! whatever the size of the process.
//!
//! Owns: the producer thread and the bytes in flight. Must not know: the protocol (it is given
//! offsets) or the image format (`migrate` writes it).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

/// Size of one piece from the producer: the protocol's chunk size, so a chunk the protocol
/// asks for is one piece (sent without a copy).
pub const PIECE: usize = 1024 * 1024;
/// Pieces the producer may run ahead of what the protocol asked for.
const AHEAD: usize = 4;

type Produced = (migrate::Seized, migrate::Result<migrate::Streamed>);

/// A `Write` that hands full pieces to a bounded channel (blocks when the reader lags).
struct ChanWriter {
    tx: mpsc::SyncSender<Bytes>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the migration gave up"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// An image being read from a frozen process (see the module documentation).
pub struct ImageSource {
    rx: Option<mpsc::Receiver<Bytes>>,
    /// Pieces held, by their image offset, oldest first.
    pieces: VecDeque<(u64, Bytes)>,
    /// End offset of the bytes received from the producer.
    produced: u64,
    /// Bytes below this were released (acknowledged by the target).
    released: u64,
    producer: Option<JoinHandle<Produced>>,
    seized: Option<migrate::Seized>,
    /// Most bytes held at once, for the log.
    pub peak: u64,
    /// The producer's report, once it finished.
    pub streamed: Option<migrate::Streamed>,
}

impl ImageSource {
    /// Starts reading `seized` per `plan` on a thread of its own, at most `ahead` pieces (1 to
    /// 4) ahead of what is sent.
    pub fn start(
        mut seized: migrate::Seized,
        plan: migrate::StreamPlan,
        pid: i32,
        ahead: usize,
    ) -> io::Result<ImageSource> {
        let (tx, rx) = mpsc::sync_channel(ahead.clamp(1, AHEAD));
        let producer = std::thread::Builder::new()
            .name(format!("mig-read-{pid}"))
            .spawn(move || {
                let w = ChanWriter {
                    tx,
                    buf: Vec::with_capacity(PIECE),
                };
                let r = seized.stream_plan(&plan, w);
                (seized, r)
            })?;
        Ok(ImageSource {
            rx: Some(rx),
            pieces: VecDeque::new(),
            produced: 0,
            released: 0,
            producer: Some(producer),
            seized: None,
            peak: 0,
            streamed: None,
        })
    }

    fn held(&self) -> u64 {
        self.produced - self.pieces.front().map_or(self.produced, |p| p.0)
    }

    /// Image bytes `[offset, offset + len)`: waits (at most `limit` per piece) for the
    /// producer to read them.
    pub fn get(&mut self, offset: u64, len: u64, limit: Duration) -> Result<Bytes, String> {
        if offset < self.released {
            return Err(format!(
                "image bytes at {offset} were asked for again after their acknowledgement"
            ));
        }
        while self.produced < offset + len {
            let Some(rx) = &self.rx else {
                return Err("the image reader has stopped".into());
            };
            match rx.recv_timeout(limit) {
                Ok(b) => {
                    let n = b.len() as u64;
                    self.pieces.push_back((self.produced, b));
                    self.produced += n;
                    self.peak = self.peak.max(self.held());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("reading the process memory took over {limit:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.rx = None;
                    return Err(match self.join() {
                        Some(Err(e)) => format!("reading the process: {e}"),
                        _ => format!(
                            "the image ended at {} bytes, {} expected",
                            self.produced,
                            offset + len
                        ),
                    });
                }
            }
        }
        let i = self
            .pieces
            .iter()
            .rposition(|(o, _)| *o <= offset)
            .ok_or_else(|| format!("image bytes at {offset} are no longer held"))?;
        let (o, b) = &self.pieces[i];
        let start = (offset - o) as usize;
        if start + len as usize <= b.len() {
            return Ok(b.slice(start..start + len as usize));
        }
        // the range spans pieces: copy it
        let mut v = Vec::with_capacity(len as usize);
        let mut at = offset;
        for (o, b) in self.pieces.iter().skip(i) {
            if at >= offset + len {
                break;
            }
            let s = (at - o) as usize;
            let e = (offset + len - o).min(b.len() as u64) as usize;
            v.extend_from_slice(&b[s..e]);
            at = o + e as u64;
        }
        Ok(Bytes::from(v))
    }

    /// The target holds the first `acked` bytes: pieces wholly below are dropped.
    pub fn release(&mut self, acked: u64) {
        self.released = self.released.max(acked);
        while let Some((o, b)) = self.pieces.front() {
            if o + b.len() as u64 <= self.released {
                self.pieces.pop_front();
            } else {
                break;
            }
        }
    }

    fn join(&mut self) -> Option<migrate::Result<()>> {
        let h = self.producer.take()?;
        match h.join() {
            Ok((seized, r)) => {
                self.seized = Some(seized);
                Some(r.map(|s| {
                    self.streamed = Some(s);
                }))
            }
            Err(_) => None,
        }
    }

    /// Stops reading (if it still reads) and gives the frozen process back. None when the
    /// producer thread panicked (its `Seized` was then dropped, which put the process back).
    pub fn finish(mut self) -> Option<migrate::Seized> {
        self.rx = None; // the producer's next send fails: it stops
        self.pieces.clear();
        let _ = self.join();
        self.seized.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A child with a few MiB of touched heap, killed when dropped.
    struct Kid(std::process::Child);
    impl Drop for Kid {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn state(pid: u32) -> char {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            })
            .unwrap_or('?')
    }

    /// The image taken piece by piece through an ImageSource (releasing as it goes, with
    /// unaligned and repeated ranges) is byte for byte the image written in one go, of exactly
    /// the planned length, and home never holds more than a few pieces; afterwards the process
    /// runs on.
    #[test]
    fn pieces_make_the_same_image_with_bounded_memory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but this test needs root (ptrace of a child)"
            );
            eprintln!("skipping: needs root (ptrace of a child)");
            return;
        }
        let mut kid = Kid(Command::new("python3")
            .args(["-c", "import time\nx = bytes(range(256)) * (32 << 12)\nprint('ready', flush=True)\ntime.sleep(60)"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"));
        let mut out = kid.0.stdout.take().unwrap();
        let mut line = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut line).unwrap();
        let pid = kid.0.id() as i32;
        let mut seized = migrate::seize(pid, migrate::DEFAULT_STOP_TIMEOUT).unwrap();
        let img = seized.collect().unwrap();
        let plan = seized.plan(&img).unwrap();
        let mut whole = Vec::new();
        seized.stream_plan(&plan, &mut whole).unwrap();
        assert_eq!(whole.len() as u64, plan.image_bytes, "planned length");
        assert!(plan.page_bytes >= 8 << 20, "{}", plan.page_bytes);

        let mut src = ImageSource::start(seized, plan.clone(), pid, AHEAD).unwrap();
        let mut got = Vec::new();
        let step = PIECE as u64 - 1000; // ranges that cross pieces
        let mut at = 0u64;
        while at < plan.image_bytes {
            let len = step.min(plan.image_bytes - at);
            let b = src.get(at, len, Duration::from_secs(10)).unwrap();
            // asking again for the same range gives the same bytes
            assert_eq!(src.get(at, len, Duration::from_secs(10)).unwrap(), b);
            got.extend_from_slice(&b);
            at += len;
            src.release(at);
        }
        assert_eq!(got.len(), whole.len());
        assert!(got == whole, "the pieces differ from the whole image");
        assert!(
            src.peak <= ((AHEAD + 3) * PIECE) as u64,
            "held {} bytes at once",
            src.peak
        );
        assert!(
            src.get(0, 10, Duration::from_secs(1)).is_err(),
            "released bytes came back"
        );
        let seized = src.finish().expect("the process comes back");
        drop(seized);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            matches!(state(pid as u32), 'S' | 'R'),
            "{}",
            state(pid as u32)
        );
    }
}
