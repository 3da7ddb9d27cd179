//! The transport's settings: [`Config`], its defaults, and a `Debug` that hides the key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use runtime::NodeId;

#[cfg(doc)]
use crate::pnet_key;

/// Settings of one transport. [`Config::new`] fills sensible defaults.
#[derive(Clone)]
pub struct Config {
    /// This node's id (sent in the `Hello`).
    pub local: NodeId,
    /// Where to listen (IPv4 or IPv6 address and port; `0.0.0.0` and port 0 allowed).
    pub listen: SocketAddr,
    /// The cluster key. The pnet pre-shared key is derived from it ([`pnet_key`]); never
    /// logged, never sent.
    pub key: [u8; 32],
    /// Digest of the cluster configuration, sent in the `Hello`; peers with another
    /// digest are refused.
    pub cluster: String,
    /// Find peers on the local network with mDNS and link to them (`Event::Discovered`).
    /// Off: only the peers given to `set_peers` are dialled and accepted.
    pub mdns: bool,
    /// How often mDNS asks the network for peers (libp2p's default is 5 minutes).
    pub mdns_query_interval: Duration,
    /// Lifetime of this node's mDNS records at the peers; an mDNS-found peer that has
    /// not answered for this long is no longer re-dialled.
    pub mdns_ttl: Duration,
    /// Limit for connecting (TCP + pnet + noise + yamux) and for the `Hello` exchange.
    pub handshake_timeout: Duration,
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
            mdns: false,
            mdns_query_interval: Duration::from_secs(1),
            mdns_ttl: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            control_window: 1 << 20,
            bulk_window: 16 << 20,
            max_frame: 64 << 20,
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
            .field("mdns", &self.mdns)
            .field("mdns_query_interval", &self.mdns_query_interval)
            .field("mdns_ttl", &self.mdns_ttl)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("control_window", &self.control_window)
            .field("bulk_window", &self.bulk_window)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}
