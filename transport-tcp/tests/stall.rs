//! A peer that stops (SIGSTOP) or dies (SIGKILL) while senders are blocked on its full
//! queue: every blocked sender returns `Unreachable`, with its frame, within the idle
//! time-out, and the link is reported down.
//!
//! The peer is a real process (this test binary re-executed with `STALL_CHILD` set), so
//! SIGSTOP and SIGKILL act on a real node. `harness = false`: `main` is either the child
//! or the test runner.

use transport_tcp::{Config, Transport};

const CLUSTER: &str = "stall-test-map";
/// This transport's loopback addresses: 127.0.2.N.
const NET: &str = "127.0.2";

include!("../../testbed/shared/stall.rs");
