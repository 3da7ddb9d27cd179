#!/usr/bin/env bash
# MFS sequential throughput on loopback, with its baselines in the same run:
#   write and read SIZE_MB through /mfs/2/ (node 1's mount, node 2's export) with dd bs=1M,
#   the same dd on node 2's export directly (local disk, same page cache), cp of a file both
#   ways, the read again with the kernel's default 128 KiB read-ahead for the mount (omnode
#   sets 1 MiB), and a raw TCP stream of the same size (python3, 1 MiB send/recv) on 127.0.0.1.
# The FUSE baseline: mfs/examples/passthrough.rs (same fuser, same 1 MiB requests) mounted over
# node 2's export at $W/pt, the same dd through it. Many small files: untar /usr/include/linux (or
# the repository if absent) into local disk, the passthrough and /mfs/2, then walk it (readdir,
# µs per entry) and stat every file (µs per stat), dentry and inode caches dropped before each.
# Metadata: a directory of 1000 files, `ls -l` of it (cold: caches dropped; warm: again at
# once) and `stat` of one file in a loop, local disk vs passthrough vs /mfs/2.
# Needs root (mount). Usage: scripts/bench-mfs.sh [SIZE_MB, default 1024]
# PARTS: any of "write read pt cp ra128 tcp small meta" (default all).
# IP: node 1's address (node 2 is the next one), default 127.0.38.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
PARTS=${PARTS:-write read pt cp ra128 tcp small meta}
IP=${IP:-127.0.38.1}
want() { [[ " $PARTS " == *" $1 "* ]]; }
cargo build -q --release -p omnode --features mfs
cargo build -q --release -p mfs --features fuse --example passthrough
PT=${CARGO_TARGET_DIR:-target}/release/examples/passthrough
B=${CARGO_TARGET_DIR:-target}/release/omnode
W=$(mktemp -d /var/tmp/mfs-bench.XXXXXX)   # on disk, not tmpfs
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    umount -l "$W/m1" "$W/m2" "$W/pt" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
"$B" keygen --out "$W/key" >/dev/null
echo "1 $IP 2" >"$W/map"
for n in 1 2; do
    mkdir -p "$W/m$n" "$W/e$n"
    RUST_LOG=warn "$B" --map "$W/map" --node $n --key-file "$W/key" --port $PORT \
        --socket "$W/n$n.sock" --mfs "$W/m$n" --mfs-export "$W/e$n" >"$W/log$n" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do [ -d "$W/m1/2" ] && ls "$W/m1/2" >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$W/pt"
"$PT" "$W/e2" "$W/pt" 2>"$W/log-pt" &
PIDS+=($!)
for _ in $(seq 100); do mountpoint -q "$W/pt" && break; sleep 0.1; done
echo 1024 >"/sys/class/bdi/$(mountpoint -d "$W/pt")/read_ahead_kb"   # as omnode does for /mfs

now() { date +%s.%N; }
# rate LABEL START END: MiB/s for SIZE_MB in END-START seconds
rate() { python3 -c "import sys; print(f'{sys.argv[1]:<44} {$SIZE_MB/($3-$2):8.0f} MiB/s  ({$3-$2:.2f} s)')" "$1" "$2" "$3"; }
run() { local label=$1; shift; sync; local s; s=$(now); "$@"; rate "$label" "$s" "$(now)"; }

if want read || want pt || want cp || want ra128; then
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/e2/src"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/e2/src2"
cat "$W/e2/src" "$W/e2/src2" >/dev/null   # both in the page cache, for every reader alike
fi

echo "SIZE_MB=$SIZE_MB  $(nproc) cpus  load $(cut -d' ' -f1-3 /proc/loadavg)"
if want write; then
run "write local disk (dd bs=1M conv=fsync)" dd if=/dev/zero of="$W/e2/w.local" bs=1M count=$SIZE_MB conv=fsync status=none
run "write through /mfs/2 (dd bs=1M conv=fsync)" dd if=/dev/zero of="$W/m1/2/w.mfs" bs=1M count=$SIZE_MB conv=fsync status=none
fi
if want read; then
run "read local (dd bs=1M, page cache)" dd if="$W/e2/src" of=/dev/null bs=1M status=none
# PERF=FILE: a flat profile of both daemons during this read (perf report -i FILE).
[ -n "${PERF:-}" ] && { perf record -q -o "$PERF" -F 499 -g -p "${PIDS[0]},${PIDS[1]}" 2>/dev/null & PERFPID=$!; sleep 0.5; }
run "read through /mfs/2 (dd bs=1M, first read)" dd if="$W/m1/2/src" of=/dev/null bs=1M status=none
[ -n "${PERF:-}" ] && { kill -INT $PERFPID; wait $PERFPID || true; }
fi
if want pt; then
run "write through FUSE passthrough (dd conv=fsync)" dd if=/dev/zero of="$W/pt/w.pt" bs=1M count=$SIZE_MB conv=fsync status=none
run "read through FUSE passthrough (dd bs=1M)" dd if="$W/pt/src2" of=/dev/null bs=1M status=none
fi
if want cp; then
run "cp local -> local" cp "$W/e2/src2" "$W/e1/cp.local"
run "cp /mfs/2 -> local" cp "$W/m1/2/src2" "$W/e1/cp.mfs"
cmp "$W/e2/src2" "$W/e1/cp.mfs"
rm -f "$W/e1/cp.local" "$W/e1/cp.mfs"
fi
# The same read with the kernel's default read-ahead for the mount (128 KiB; omnode sets
# 1 MiB): what the larger read requests bring, in this run.
if want ra128; then
dev=$(mountpoint -d "$W/m1")
echo 3 >/proc/sys/vm/drop_caches; cat "$W/e2/src" >/dev/null
echo 128 >"/sys/class/bdi/$dev/read_ahead_kb"
run "read through /mfs/2, kernel read-ahead 128 KiB" dd if="$W/m1/2/src" of=/dev/null bs=1M status=none
echo 1024 >"/sys/class/bdi/$dev/read_ahead_kb"
fi
want tcp && run "raw TCP 127.0.0.1 (python3, 1 MiB chunks)" python3 - "$SIZE_MB" <<'PY'
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

# Many small files: untar, then readdir and stat latency, local disk vs passthrough vs /mfs/2.
if [ -d /usr/include/linux ]; then tar -C /usr/include -cf "$W/small.tar" linux; else git archive --format=tar HEAD >"$W/small.tar"; fi
echo "small files: $(tar -tf "$W/small.tar" | grep -vc '/$') files, $(( $(stat -c %s "$W/small.tar") >> 20 )) MiB tar"
small() {
    local label=$1 dir=$2 s
    mkdir -p "$dir"; sync; s=$(now)
    tar -C "$dir" -xf "$W/small.tar"
    python3 - "$label" "$s" "$(now)" "$dir" <<'PY'
import os, sys, time
label, s, e, top = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def drop():
    os.sync(); open("/proc/sys/vm/drop_caches", "w").write("2")
drop(); t = time.perf_counter(); files = []; n = 0
stack = [top]
while stack:
    d = stack.pop()
    with os.scandir(d) as it:
        for x in it:
            n += 1
            (stack if x.is_dir(follow_symlinks=False) else files).append(x.path)
rd = time.perf_counter() - t
drop(); t = time.perf_counter()
for f in files: os.lstat(f)
st = time.perf_counter() - t
print(f"{label:<22} untar {e - s:6.2f} s   readdir {rd / n * 1e6:7.1f} us/entry   stat {st / len(files) * 1e6:7.1f} us/file")
PY
}
if want small; then
small "local disk" "$W/e2/small.local"
small "FUSE passthrough" "$W/pt/small.pt"
small "/mfs/2" "$W/m1/2/small.mfs"
fi

# Metadata: `ls -l` of a directory of 1000 files (cold: dentry and inode caches dropped; warm:
# at once again), and stat(2) of one file 2000 times (the first after the caches are dropped).
meta() {
    local label=$1 dir=$2
    python3 - "$label" "$dir" <<'PY'
import os, subprocess, sys, time
label, d = sys.argv[1], sys.argv[2]
def drop():
    os.sync(); open("/proc/sys/vm/drop_caches", "w").write("2")
drop(); t = time.perf_counter()
out = subprocess.run(["ls", "-l", d], capture_output=True, check=True).stdout
cold = time.perf_counter() - t
lines = out.count(b"\n") - 1
t = time.perf_counter(); subprocess.run(["ls", "-l", d], capture_output=True, check=True)
warm = time.perf_counter() - t
f = os.path.join(d, "f500"); drop(); t = time.perf_counter(); os.stat(f); first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(2000): os.stat(f)
loop = (time.perf_counter() - t) / 2000
print(f"{label:<22} ls -l {lines} files: cold {cold * 1e3:7.1f} ms  warm {warm * 1e3:7.1f} ms   stat: first {first * 1e6:7.0f} us  then {loop * 1e6:6.1f} us")
PY
}
if want meta; then
mkdir -p "$W/e2/many"
for i in $(seq 0 999); do echo "$i" >"$W/e2/many/f$i"; done
meta "local disk" "$W/e2/many"
meta "FUSE passthrough" "$W/pt/many"
meta "/mfs/2" "$W/m1/2/many"
fi
