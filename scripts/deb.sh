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
# OMNODE_DEB_PROFILE=dev packs a debug build; OMNODE_DEB_PREBUILT=1 packs the binary already
# in the target folder instead of building one (the test packs the binary the tests run).
profile="${OMNODE_DEB_PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) say "OMNODE_DEB_PROFILE must be release or dev, not '$profile'"; exit 2 ;;
esac
if [ -z "${OMNODE_DEB_PREBUILT:-}" ]; then
  cargo build --profile "$profile" -p omnode
fi
bin="${CARGO_TARGET_DIR:-$top/target}/$dir/omnode"
[ -x "$bin" ] || { say "no omnode binary at $bin (build it, or unset OMNODE_DEB_PREBUILT)"; exit 1; }
gen="$top/dist/gen"
rm -rf "$gen"
mkdir -p "$gen"
"$bin" generate --man "$gen/man1" --completions "$gen/completions" >/dev/null
sed "s|@BINDIR@|/usr/bin|g" dist/omnode.service >"$gen/omnode.service"
sed "s|@BINDIR@|/usr/bin|g" dist/openmosix.init >"$gen/openmosix"
chmod 0755 "$gen/openmosix"
cargo deb -p omnode --no-build --profile "$profile" "$@"
