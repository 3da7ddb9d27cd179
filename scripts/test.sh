#!/usr/bin/env bash
# Build everything (the integration tests run the real omnode binary) and run every test.
#
# Two builds, each in its own target folder so one never replaces the binary that the other's
# tests run: the default features (what `cargo build --release` gives a user; binaries and
# tests must compile) in target/default; then everything with all features is built and
# every test runs in the usual target folder (tests find target/<profile>/omnode beside
# themselves, or OMNODE_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${CARGO_TARGET_DIR:-$PWD/target}
echo "== default features (target folder $base/default)" >&2
CARGO_TARGET_DIR="$base/default" cargo build --workspace --bins --tests
echo "== all features (target folder $base)" >&2
CARGO_TARGET_DIR="$base" cargo build --workspace --all-features --bins
CARGO_TARGET_DIR="$base" cargo test --workspace --all-features --no-fail-fast "$@"
