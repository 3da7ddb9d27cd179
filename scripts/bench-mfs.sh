#!/usr/bin/env bash
# MFS sequential throughput on loopback, with its baselines in the same run:
#   write and read SIZE_MB through /mfs/2/ (node 1's mount, node 2's export) with dd bs=1M,
#   the same dd on node 2's export directly (local disk, same page cache), cp of a file both
#   ways, the read again with the kernel's default 128 KiB read-ahead for the mount (omnode
#   sets 1 MiB), and a raw TCP stream of the same size (python3, 1 MiB send/recv) on 127.0.0.1.
# Needs root (mount). Usage: scripts/bench-mfs.sh [SIZE_MB, default 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
cargo build -q --release -p omnode --features mfs
B=${CARGO_TARGET_DIR:-target}/release/omnode
W=$(mktemp -d /var/tmp/mfs-bench.XXXXXX)   # on disk, not tmpfs
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    umount -l "$W/m1" "$W/m2" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
"$B" keygen --out "$W/key" >/dev/null
echo "1 127.0.0.121 2" >"$W/map"
for n in 1 2; do
    mkdir -p "$W/m$n" "$W/e$n"
    RUST_LOG=warn "$B" --map "$W/map" --node $n --key-file "$W/key" --port $PORT \
        --socket "$W/n$n.sock" --mfs "$W/m$n" --mfs-export "$W/e$n" >"$W/log$n" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do [ -d "$W/m1/2" ] && ls "$W/m1/2" >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s.%N; }
# rate LABEL START END: MiB/s for SIZE_MB in END-START seconds
rate() { python3 -c "import sys; print(f'{sys.argv[1]:<44} {$SIZE_MB/($3-$2):8.0f} MiB/s  ({$3-$2:.2f} s)')" "$1" "$2" "$3"; }
run() { local label=$1; shift; sync; local s; s=$(now); "$@"; rate "$label" "$s" "$(now)"; }

head -c $((SIZE_MB << 20)) /dev/urandom >"$W/e2/src"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/e2/src2"
cat "$W/e2/src" "$W/e2/src2" >/dev/null   # both in the page cache, for every reader alike

echo "SIZE_MB=$SIZE_MB  $(nproc) cpus  load $(cut -d' ' -f1-3 /proc/loadavg)"
run "write local disk (dd bs=1M conv=fsync)" dd if=/dev/zero of="$W/e2/w.local" bs=1M count=$SIZE_MB conv=fsync status=none
run "write through /mfs/2 (dd bs=1M conv=fsync)" dd if=/dev/zero of="$W/m1/2/w.mfs" bs=1M count=$SIZE_MB conv=fsync status=none
run "read local (dd bs=1M, page cache)" dd if="$W/e2/src" of=/dev/null bs=1M status=none
run "read through /mfs/2 (dd bs=1M, first read)" dd if="$W/m1/2/src" of=/dev/null bs=1M status=none
run "cp local -> local" cp "$W/e2/src2" "$W/e1/cp.local"
run "cp /mfs/2 -> local" cp "$W/m1/2/src2" "$W/e1/cp.mfs"
cmp "$W/e2/src2" "$W/e1/cp.mfs"
# The same read with the kernel's default read-ahead for the mount (128 KiB; omnode sets
# 1 MiB): what the larger read requests bring, in this run.
dev=$(mountpoint -d "$W/m1")
echo 3 >/proc/sys/vm/drop_caches; cat "$W/e2/src" >/dev/null
echo 128 >"/sys/class/bdi/$dev/read_ahead_kb"
run "read through /mfs/2, kernel read-ahead 128 KiB" dd if="$W/m1/2/src" of=/dev/null bs=1M status=none
echo 1024 >"/sys/class/bdi/$dev/read_ahead_kb"
run "raw TCP 127.0.0.1 (python3, 1 MiB chunks)" python3 - "$SIZE_MB" <<'PY'
import socket, sys, threading
n = int(sys.argv[1]) << 20
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); buf = bytearray(1 << 20); got = 0
    while got < n:
        k = c.recv_into(buf)
        if k == 0: break
        got += k
    c.close()
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); chunk = b"\0" * (1 << 20)
for _ in range(n >> 20): s.sendall(chunk)
s.close(); t.join()
PY
