//! The transport's settings: [`Config`], its defaults, and a `Debug` that hides the key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use runtime::NodeId;

/// Settings of one transport. [`Config::new`] fills sensible defaults.
#[derive(Clone)]
pub struct Config {
    /// This node's id.
    pub local: NodeId,
    /// Where to listen; dialled connections also leave from this IP (unless unspecified).
    pub listen: SocketAddr,
    /// The cluster key (Noise PSK). Never logged, never sent.
    pub key: [u8; 32],
    /// Digest of the cluster map, sent in the `Hello`; peers with another digest are refused.
    pub cluster: String,
    /// Limit for the Noise handshake plus the `Hello` exchange.
    pub handshake_timeout: Duration,
    /// Limit for one TCP connect.
    pub connect_timeout: Duration,
    /// First and largest pause between dial attempts (doubled each failure, ±50 % jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// An empty message is sent after this long without traffic.
    pub keepalive: Duration,
    /// A link that receives nothing (not even a keepalive) this long is declared down.
    pub idle_timeout: Duration,
    /// Bytes queued per peer on the control lane before `send` waits.
    pub control_window: usize,
    /// Bytes queued per peer on the bulk lane before `send` waits.
    pub bulk_window: usize,
    /// Largest encoded frame (head + payload + 4 bytes) sent or accepted.
    pub max_frame: usize,
    /// Bytes the kernel may hold unsent per link (`TCP_NOTSENT_LOWAT`): what a control
    /// frame may wait behind in the sending socket. 0 leaves the system default.
    pub unsent_limit: usize,
    /// The sockets' receive buffer (`SO_RCVBUF`, set before connecting): bounds what a
    /// control frame may wait behind in the receiving socket, and the throughput per
    /// round trip. `None` leaves the kernel's auto-tuning. Default 512 KiB: on loopback
    /// it keeps the ask p99 during a 1 GiB stream at a few ms (BENCHMARKS.md) without
    /// lowering throughput; a 10 Gbit/s LAN with a 0.2 ms round trip needs 256 KiB.
    pub recv_buffer: Option<u32>,
}

impl Config {
    pub fn new(
        local: NodeId,
        listen: SocketAddr,
        key: [u8; 32],
        cluster: impl Into<String>,
    ) -> Self {
        Config {
            local,
            listen,
            key,
            cluster: cluster.into(),
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            control_window: 1 << 20,
            bulk_window: 16 << 20,
            max_frame: 64 << 20,
            unsent_limit: 128 << 10,
            recv_buffer: Some(512 << 10),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("local", &self.local)
            .field("listen", &self.listen)
            .field("key", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("control_window", &self.control_window)
            .field("bulk_window", &self.bulk_window)
            .field("max_frame", &self.max_frame)
            .field("unsent_limit", &self.unsent_limit)
            .field("recv_buffer", &self.recv_buffer)
            .finish()
    }
}
