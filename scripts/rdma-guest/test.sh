#!/usr/bin/env bash
# Build the real-verbs test binary (release) and run it in the two soft-RoCE guests, after
# the perftest baselines (ib_send_lat, ib_write_bw) between the same guests: one link, the
# Transport (and transport-tcp as baseline), and two omnode daemons with --transport rdma.
# Needs root and qemu-system-x86 (installed by run.sh with apt-get). Without root it skips
# with a reason; under CI=true it fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "rdma-guest: SKIP: needs root (debootstrap, chroot depmod; the guests themselves do not)" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
cargo build --release -p transport-rdma --bin rdma-guest-test
T="${CARGO_TARGET_DIR:-target}/release/rdma-guest-test"
# The omnode daemon for the `omnode` group: the all-features debug build that the README's
# test command (scripts/test.sh) makes anyway, so CI builds nothing more; debug info is
# stripped from the guest's copy. OMNODE_GUEST_BIN names another binary (built with `rdma`).
O="${OMNODE_GUEST_BIN:-}"
if [ -z "$O" ]; then
  cargo build --workspace --all-features --bins
  O="${CARGO_TARGET_DIR:-target}/debug/omnode"
fi
P="$(mktemp -d /tmp/omnode-rdma-payload.XXXXXX)"
trap 'rm -rf "$P"' EXIT
cp "$T" "$P/rdma-guest-test"
objcopy --strip-debug "$O" "$P/omnode"
scripts/rdma-guest/run.sh --payload "$P" --tests "${RDMA_GUEST_TESTS:-perftest rust transport omnode faults errors}" "$@"
