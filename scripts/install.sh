#!/usr/bin/env bash
# Install omnode: the binary, a link for each classic openMosix name it answers to (setpe,
# ...; dispatched on argv[0]), the systemd unit, the init script /etc/init.d/openmosix, the
# options file /etc/default/omnode (kept if present), man pages and shell completions.
#
#   scripts/install.sh                      # build --release, install under /usr/local
#   PREFIX=/usr scripts/install.sh          # under /usr
#   DESTDIR=/tmp/root scripts/install.sh    # into a staging root (packaging, tests)
#
# OMNODE_BIN=path installs that binary instead of building one. SYSCONFDIR (default /etc)
# and UNITDIR (default $PREFIX/lib/systemd/system) move the configuration and the unit.
set -euo pipefail
say() { echo "install: $*" >&2; }
trap 'rc=$?; say "line $LINENO: \`$BASH_COMMAND\` failed with status $rc"; exit $rc' ERR

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
top=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${OMNODE_BIN:-}" ]; then
  bin=$OMNODE_BIN
else
  (cd "$top" && cargo build --release -p omnode) || { say "cargo build --release -p omnode failed (see above)"; exit 1; }
  bin="${CARGO_TARGET_DIR:-$top/target}/release/omnode"
fi
[ -x "$bin" ] || { say "$bin is not an executable omnode binary"; exit 1; }

bindir="$PREFIX/bin"
root() { echo "$DESTDIR$1"; }
install -d "$(root "$bindir")" "$(root "$UNITDIR")" "$(root "$SYSCONFDIR/init.d")" \
  "$(root "$SYSCONFDIR/default")" "$(root "$PREFIX/share/man/man1")"
install -d -m 0700 "$(root "$SYSCONFDIR/omnode")"

install -m 0755 "$bin" "$(root "$bindir/omnode")"
# The classic names come from the binary's own table: only commands that work get a link.
names=$("$bin" generate --names)
for name in $names; do
  ln -sfn omnode "$(root "$bindir/$name")"
done
# mount(8) runs /sbin/mount.mfs for `mount -t mfs` and the seed's fstab line
# `mfs_mnt /mfs mfs dfsa=1 0 0`: omnode answers to that name too (the daemon mounts).
install -d "$(root /sbin)"
ln -sfn "$bindir/omnode" "$(root /sbin/mount.mfs)"

sed "s|@BINDIR@|$bindir|g" "$top/dist/omnode.service" >"$(root "$UNITDIR/omnode.service")"
chmod 0644 "$(root "$UNITDIR/omnode.service")"
sed "s|@BINDIR@|$bindir|g" "$top/dist/openmosix.init" >"$(root "$SYSCONFDIR/init.d/openmosix")"
chmod 0755 "$(root "$SYSCONFDIR/init.d/openmosix")"
defaults=$(root "$SYSCONFDIR/default/omnode")
if [ -e "$defaults" ]; then
  say "kept the existing $defaults"
else
  install -m 0644 "$top/dist/default-omnode" "$defaults"
fi

"$bin" generate --man "$(root "$PREFIX/share/man/man1")" >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" generate --completions "$tmp" >/dev/null
install -d "$(root "$PREFIX/share/bash-completion/completions")" \
  "$(root "$PREFIX/share/zsh/site-functions")" "$(root "$PREFIX/share/fish/vendor_completions.d")"
install -m 0644 "$tmp"/bash/* "$(root "$PREFIX/share/bash-completion/completions")/"
install -m 0644 "$tmp"/zsh/* "$(root "$PREFIX/share/zsh/site-functions")/"
install -m 0644 "$tmp"/fish/* "$(root "$PREFIX/share/fish/vendor_completions.d")/"

echo "installed omnode into ${DESTDIR:-/}: $bindir/omnode, classic names: ${names//$'\n'/ }"
echo "  unit $UNITDIR/omnode.service, init script $SYSCONFDIR/init.d/openmosix, options $SYSCONFDIR/default/omnode"
echo "next: omnode keygen --out $SYSCONFDIR/omnode/cluster.key (copy it to every node), write /etc/openmosix.map,"
echo "      then systemctl daemon-reload && systemctl enable --now omnode   (or $SYSCONFDIR/init.d/openmosix start)"
