#!/usr/bin/env bash
# Real RDMA verbs without RDMA hardware: boot TWO qemu TCG guests (Debian kernel with
# rdma_rxe, a debootstrap minbase root filesystem packed as an initramfs) joined by a
# UDP `-netdev dgram` wire on 127.0.0.1 only, bring up soft-RoCE (rxe0 on eth0) in each,
# and run a test payload in both. Results come back as serial-console markers
#   ### STEP <name> RC=<n>
# which this script collects; it exits 0 only if every expected step passed in both guests.
#
# Usage (as root, on Debian bookworm):
#   scripts/rdma-guest/run.sh [--payload DIR] [--tests "perftest rust"] [--keep]
#     --payload DIR  files copied to /payload/bin in both guests (e.g. the rdma test binary)
#     --tests LIST   which guest test groups to run: perftest (ibv_devinfo, ib_send_lat,
#                    ib_write_bw between the guests), rust (/payload/bin/rdma-guest-test: one
#                    link), transport (the Transport, and transport-tcp as baseline), omnode
#                    (two daemons with --transport rdma, one SIGKILLed and restarted), faults (a
#                    route breaks under a link: TCP fall-back, switch back), errors (no device,
#                    wrong GID, port down, RLIMIT_MEMLOCK)
#     --keep         keep the work dir (serial logs) after a passing run
# Environment: OMNODE_RDMA_CACHE (cache dir, default ${XDG_CACHE_HOME:-/var/cache}/omnode-rdma-guest),
#   RDMA_GUEST_TIMEOUT (seconds for each guest, default 900), RDMA_GUEST_PORT (first of the two
#   UDP ports of the wire, default random in 40000-59999), RDMA_GUEST_HOST (the loopback
#   address of the wire, default 127.0.0.1).
#
# The base image (kernel + initramfs) is cached, keyed on the package versions and on this
# script's module list; only the small payload cpio is rebuilt per run. KVM does not work on
# the machines this was written for (kvm-pvm), so the guests run under TCG: slow but real.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PAYLOAD_DIR=""
TESTS="perftest"
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) PAYLOAD_DIR="$2"; shift 2 ;;
    --tests) TESTS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "rdma-guest: unknown argument $1" >&2; exit 2 ;;
  esac
done

CACHE="${OMNODE_RDMA_CACHE:-${XDG_CACHE_HOME:-/var/cache}/omnode-rdma-guest}"
GUEST_TIMEOUT="${RDMA_GUEST_TIMEOUT:-900}"
# A random even port pair, so two runs on one machine (CI, a developer) do not collide.
PORT="${RDMA_GUEST_PORT:-$(( 40000 + (RANDOM % 10000) * 2 ))}"
WIRE_HOST="${RDMA_GUEST_HOST:-127.0.0.1}"
MIRROR="${RDMA_GUEST_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
GUEST_PKGS="rdma-core,ibverbs-providers,ibverbs-utils,rdmacm-utils,perftest,iproute2,kmod,librdmacm1,libibverbs1"
MODULES="crc32_generic crc32-pclmul rdma_rxe ib_uverbs ib_core ip6_udp_tunnel udp_tunnel rdma_ucm rdma_cm iw_cm ib_cm configfs virtio_net net_failover failover virtio_pci virtio_pci_legacy_dev virtio_pci_modern_dev virtio virtio_ring"

log() { echo "rdma-guest: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, debootstrap, chroot depmod); run as root"

# 1. Host tools.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -q >/dev/null
  timeout 600 apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. Resolve the kernel package and the cache key.
KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[ -n "$KPKG" ] || die "cannot resolve the kernel package from linux-image-amd64 (apt-get update?)"
KVER="${KPKG#linux-image-}"
versions=""
for p in "$KPKG" ${GUEST_PKGS//,/ }; do
  v="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/{print $2}')"
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $p"
  versions+="$p=$v "
done
KEY="$(printf '%s|%s|%s|%s' "$versions" "$MODULES" "$SUITE" "base-format-1" | sha256sum | cut -c1-16)"
BASE="$CACHE/base-$KEY"
mkdir -p "$CACHE"

# 3. Build the base image once per key.
if [ ! -s "$BASE/base.cpio" ] || [ ! -s "$BASE/vmlinuz" ]; then
  log "building base image $BASE (kernel $KPKG; debootstrap takes about a minute)"
  T0=$(date +%s)
  build="$(mktemp -d "$CACHE/build.XXXXXX")"
  trap 'rm -rf "$build"' EXIT
  (cd "$build" && timeout 300 apt-get download -q "$KPKG" >/dev/null) || die "apt-get download $KPKG"
  dpkg -x "$build"/linux-image-*.deb "$build/kernel"
  timeout 900 debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$build/rootfs" "$MIRROR" \
    >"$build/debootstrap.log" 2>&1 || { tail -20 "$build/debootstrap.log" >&2; die "debootstrap"; }
  mdir="$build/kernel/lib/modules/$KVER"
  for m in $MODULES; do
    f="$(find "$mdir" -name "$m.ko*" | head -1)"
    [ -n "$f" ] || die "module $m not found in $KPKG"
    rel="${f#"$build/kernel/"}"
    mkdir -p "$build/rootfs/$(dirname "$rel")"
    cp "$f" "$build/rootfs/$rel"
  done
  cp "$mdir"/modules.order "$mdir"/modules.builtin* "$build/rootfs/lib/modules/$KVER/" 2>/dev/null || true
  chroot "$build/rootfs" depmod "$KVER" || die "depmod in the guest root"
  rm -rf "$build"/rootfs/usr/share/{doc,man,locale,info} "$build"/rootfs/var/cache/apt/* \
    "$build"/rootfs/var/lib/apt/lists/* "$build"/rootfs/usr/lib/udev/hwdb.bin "$build"/rootfs/etc/udev/hwdb.bin
  (cd "$build/rootfs" && find . -print0 | cpio --null -o -H newc --quiet >"$build/base.cpio")
  mkdir -p "$BASE.tmp"
  mv "$build/base.cpio" "$BASE.tmp/base.cpio"
  cp "$build/kernel/boot/vmlinuz-$KVER" "$BASE.tmp/vmlinuz"
  echo "$versions" >"$BASE.tmp/versions"
  rm -rf "$BASE"; mv "$BASE.tmp" "$BASE"
  rm -rf "$build"; trap - EXIT
  log "base image built in $(( $(date +%s) - T0 )) s"
else
  log "cached base image $BASE"
fi

# 4. The per-run payload cpio: /init, the guest test list, and the payload binaries.
WORK="$(mktemp -d /tmp/omnode-rdma-guest.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
}
KEEP_WORK=1
trap cleanup EXIT INT TERM
mkdir -p "$WORK/p/payload/bin"
cp "$HERE/guest-init.sh" "$WORK/p/init"
cp "$HERE/guest-tests.sh" "$WORK/p/payload/tests.sh"
cp "$HERE/omnode-test.sh" "$WORK/p/payload/omnode-test.sh"
chmod +x "$WORK/p/init" "$WORK/p/payload/tests.sh" "$WORK/p/payload/omnode-test.sh"
echo "$TESTS" >"$WORK/p/payload/tests.list"
# A fresh cluster key for this run (both guests get it; the client also tries a wrong one).
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$WORK/p/payload/key"
if [ -n "$PAYLOAD_DIR" ]; then cp -a "$PAYLOAD_DIR"/. "$WORK/p/payload/bin/"; fi
(cd "$WORK/p" && find . -print0 | cpio --null -o -H newc --quiet >"$WORK/payload.cpio")
cat "$BASE/base.cpio" "$WORK/payload.cpio" >"$WORK/initrd.cpio"

# 5. Boot both guests. The wire is UDP between two 127.0.0.1 ports; no other networking.
boot() { # role ip mac localport remoteport
  local role="$1" ip="$2" mac="$3" lp="$4" rp="$5"
  timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1536 -smp 1 \
    -nographic -no-reboot -monitor none -serial "file:$WORK/$role.log" \
    -kernel "$BASE/vmlinuz" -initrd "$WORK/initrd.cpio" \
    -netdev "dgram,id=n0,local.type=inet,local.host=$WIRE_HOST,local.port=$lp,remote.type=inet,remote.host=$WIRE_HOST,remote.port=$rp" \
    -device "virtio-net-pci,netdev=n0,mac=$mac" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init omnode.role=$role omnode.ip=$ip omnode.peer=$6" \
    >"$WORK/$role.qemu.log" 2>&1 &
  pids+=($!)
}
T0=$(date +%s)
boot server 10.0.0.1 52:54:00:00:00:01 "$PORT" $((PORT + 1)) 10.0.0.2
boot client 10.0.0.2 52:54:00:00:00:02 $((PORT + 1)) "$PORT" 10.0.0.1
log "two guests booting (TCG), serial logs in $WORK/{server,client}.log"
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
log "guests finished in $(( $(date +%s) - T0 )) s"

# 6. Collect the markers. Each guest prints '### STEP name RC=n' per step and '### DONE' last.
fail=0
for role in server client; do
  f="$WORK/$role.log"
  if ! grep -aq '^### DONE' "$f" 2>/dev/null; then
    log "$role: no '### DONE' marker (timeout ${GUEST_TIMEOUT}s, crash, or qemu failed to start); last lines:"
    tail -15 "$f" >&2 || true
    tail -5 "$WORK/$role.qemu.log" >&2 || true
    fail=1
  fi
  while read -r _ _ name rc; do
    echo "$role $name $rc"
    [ "$rc" = "RC=0" ] || fail=1
  done < <(grep -a '^### STEP ' "$f" | tr -d '\r')
  grep -a '^### INFO ' "$f" | tr -d '\r' | sed "s/^### INFO /$role info: /" || true
  if ! grep -aq '^### STEP ' "$f"; then fail=1; fi
done
if [ "$fail" = 0 ]; then
  KEEP_WORK=$KEEP
  log "PASS"
else
  log "FAIL (serial logs: $WORK)"
fi
exit "$fail"
