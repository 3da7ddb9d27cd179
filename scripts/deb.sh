#!/usr/bin/env bash
# Build the .deb with cargo-deb (`cargo install cargo-deb --locked` once): stages what
# cargo-deb packs (man pages, completions, the unit and init script with their paths filled
# in) under dist/gen, then runs `cargo deb -p omnode`. The package carries what
# scripts/install.sh installs with PREFIX=/usr; its postinst makes the classic-name links.
set -euo pipefail
say() { echo "deb: $*" >&2; }
trap 'rc=$?; say "line $LINENO: \`$BASH_COMMAND\` failed with status $rc"; exit $rc' ERR
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v cargo-deb >/dev/null || { say "cargo-deb is not installed: cargo install cargo-deb --locked"; exit 1; }
cargo build --release -p omnode
bin="${CARGO_TARGET_DIR:-$top/target}/release/omnode"
gen="$top/dist/gen"
rm -rf "$gen"
mkdir -p "$gen"
"$bin" generate --man "$gen/man1" --completions "$gen/completions" >/dev/null
sed "s|@BINDIR@|/usr/bin|g" dist/omnode.service >"$gen/omnode.service"
sed "s|@BINDIR@|/usr/bin|g" dist/openmosix.init >"$gen/openmosix"
chmod 0755 "$gen/openmosix"
cargo deb -p omnode --no-build "$@"
