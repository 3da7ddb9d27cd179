#!/usr/bin/env bash
# Build everything (the integration tests run the real omnode binary) and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-features --bins
cargo test --workspace --all-features --no-fail-fast "$@"
