//! Receive buffers from a fixed pool: a transport that receives into registered memory
//! (RDMA) takes a buffer with [`Pool::take`], fills it, and hands the frame up as a
//! [`Bytes`] ([`PoolBuf::freeze`]). When the last clone of that `Bytes` is dropped, the
//! buffer goes back to the pool and its credit is returned, so the peer may send again.
//! A pool never grows: when every buffer is out, `take` says so and the transport stops
//! granting credit (byte back-pressure down to the receiving application).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

struct Shared {
    free: Mutex<Vec<Box<[u8]>>>,
    buf_size: usize,
    count: usize,
    /// Called with the buffer size each time a buffer comes back (the credit to return).
    on_return: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

/// A fixed set of equally sized buffers. Cheap to clone.
#[derive(Clone)]
pub struct Pool(Arc<Shared>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("buf_size", &self.0.buf_size)
            .field("count", &self.0.count)
            .field("free", &self.available())
            .finish()
    }
}

impl Pool {
    /// `count` buffers of `buf_size` bytes each, allocated now.
    pub fn new(buf_size: usize, count: usize) -> Pool {
        Self::build(buf_size, count, None)
    }

    /// Like [`Pool::new`]; `on_return(bytes)` runs each time a buffer comes back (return the
    /// peer's credit there).
    pub fn with_credit(
        buf_size: usize,
        count: usize,
        on_return: impl Fn(usize) + Send + Sync + 'static,
    ) -> Pool {
        Self::build(buf_size, count, Some(Box::new(on_return)))
    }

    fn build(
        buf_size: usize,
        count: usize,
        on_return: Option<Box<dyn Fn(usize) + Send + Sync>>,
    ) -> Pool {
        let free = (0..count)
            .map(|_| vec![0u8; buf_size].into_boxed_slice())
            .collect();
        Pool(Arc::new(Shared {
            free: Mutex::new(free),
            buf_size,
            count,
            on_return,
        }))
    }

    pub fn buf_size(&self) -> usize {
        self.0.buf_size
    }

    /// Buffers not handed out now.
    pub fn available(&self) -> usize {
        super::link::lock(&self.0.free).len()
    }

    /// A free buffer, or `None` when all are in use.
    pub fn take(&self) -> Option<PoolBuf> {
        let buf = super::link::lock(&self.0.free).pop()?;
        Some(PoolBuf {
            buf: Some(buf),
            pool: self.0.clone(),
        })
    }
}

/// A buffer taken from a [`Pool`]; back to the pool when dropped (or, once frozen, when the
/// last `Bytes` pointing into it is dropped).
pub struct PoolBuf {
    buf: Option<Box<[u8]>>,
    pool: Arc<Shared>,
}

impl PoolBuf {
    /// The whole buffer, to receive into.
    pub fn as_mut(&mut self) -> &mut [u8] {
        self.buf
            .as_deref_mut()
            .expect("buffer present until dropped")
    }

    /// The first `len` bytes as `Bytes` (clamped to the buffer size), without copying.
    pub fn freeze(mut self, len: usize) -> Bytes {
        let buf = self.buf.take().expect("buffer present until dropped");
        let len = len.min(buf.len());
        let owner = Returned {
            buf: Some(buf),
            pool: self.pool.clone(),
        };
        Bytes::from_owner(owner).slice(..len)
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(&self.pool, buf);
        }
    }
}

fn give_back(pool: &Shared, buf: Box<[u8]>) {
    let n = buf.len();
    super::link::lock(&pool.free).push(buf);
    if let Some(f) = &pool.on_return {
        f(n);
    }
}

/// The owner behind a frozen buffer's `Bytes`.
struct Returned {
    buf: Option<Box<[u8]>>,
    pool: Arc<Shared>,
}

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(&self.pool, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_buffer_and_its_credit_come_back_when_the_last_bytes_is_dropped() {
        let credit = Arc::new(AtomicUsize::new(0));
        let c = credit.clone();
        let pool = Pool::with_credit(64, 2, move |n| {
            c.fetch_add(n, Ordering::SeqCst);
        });
        let mut a = pool.take().unwrap();
        a.as_mut()[..5].copy_from_slice(b"hello");
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "a pool never grows");
        drop(b);
        assert_eq!((pool.available(), credit.load(Ordering::SeqCst)), (1, 64));

        let bytes = a.freeze(5);
        assert_eq!(&bytes[..], b"hello");
        let head = bytes.slice(..2);
        drop(bytes);
        assert_eq!(pool.available(), 1, "a slice still holds the buffer");
        assert_eq!(&head[..], b"he");
        drop(head);
        assert_eq!((pool.available(), credit.load(Ordering::SeqCst)), (2, 128));
    }

    #[test]
    fn freeze_clamps_the_length() {
        let pool = Pool::new(8, 1);
        assert_eq!(pool.take().unwrap().freeze(100).len(), 8);
        assert_eq!(pool.available(), 1);
    }
}
