#!/usr/bin/env bash
# DFSA: what a moved process's file calls on /mfs cost when they run where it runs (DFSA) vs
# when they go home (forwarded), with the unmoved process as the baseline, in the same run.
# Two daemons on 127.0.16.1-2, each in its own mount namespace with MFS at the same path (as
# every node of a real cluster has /mfs); a file of SIZE_MB on node 1's export. The program
# (C, below) sleeps 1 s (it is moved meanwhile), then reads the file through <mnt>/1/ with
# read(2) of 64 KiB, and stats it 2000 times; it prints its own timings.
# Runs: unmoved on node 1; moved to node 2 with dfsa=1 on both; moved to node 2 with node 2
# restarted with --mfs-dfsa 0 (every call goes home).
# Needs root. Usage: scripts/bench-dfsa.sh [SIZE_MB, default 256] (uses $OMNODE_BIN or
# target/debug/omnode built with --features mfs).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-256}
B=${OMNODE_BIN:-${CARGO_TARGET_DIR:-target}/debug/omnode}
W=$(mktemp -d /tmp/h11-bench-dfsa.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$W"
}
trap cleanup EXIT
cat >"$W/prog.c" <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    static char buf[65536];
    sleep(1);
    double t0 = now();
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 3;
    long long total = 0; ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    close(fd);
    double t1 = now();
    struct stat st;
    for (int i = 0; i < 2000; i++) if (stat(argv[1], &st) != 0) return 4;
    double t2 = now();
    printf("read %.0f MiB/s (%lld bytes in %.2f s), stat %.1f us\n",
           total / 1048576.0 / (t1 - t0), total, t1 - t0, (t2 - t1) / 2000 * 1e6);
    return 0;
}
C
gcc -O2 -o "$W/prog" "$W/prog.c"
PORT=$((20000 + RANDOM % 20000))
"$B" keygen --out "$W/key" >/dev/null
echo "1 127.0.16.1 2" >"$W/map"
mkdir -p "$W/mfs" "$W/e1" "$W/e2"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/e1/data"
declare -A NODE
start() { # start NODE EXTRA...
    local n=$1; shift
    RUST_LOG=info unshare --mount --propagation private "$B" --map "$W/map" --node "$n" \
        --key-file "$W/key" --port $PORT --socket "$W/n$n.sock" --mfs "$W/mfs" \
        --mfs-export "$W/e$n" "$@" >>"$W/log$n" 2>&1 &
    NODE[$n]=$!
    PIDS+=($!)
}
ready() { # ready NODE: its mount shows both nodes
    for _ in $(seq 300); do
        nsenter -t "${NODE[$1]}" -m -- sh -c "ls $W/mfs/1/data $W/mfs/2 >/dev/null 2>&1" && return
        sleep 0.1
    done
    echo "node $1: no mount of both nodes" >&2; cat "$W/log$1" >&2; exit 1
}
run() { # run LABEL MOVE(0|1)
    nsenter -t "${NODE[1]}" -m -- "$W/prog" "$W/mfs/1/data" >"$W/out" &
    local pid=$!
    if [ "$2" = 1 ]; then
        sleep 0.3
        "$B" migrate "$pid" 2 --socket "$W/n1.sock" >/dev/null
    fi
    wait "$pid"
    printf '%-40s %s\n' "$1" "$(cat "$W/out")"
}
start 1; start 2; ready 1; ready 2
run "unmoved (node 1, its own mount)" 0
run "moved to node 2, dfsa=1 (DFSA)" 1
kill "${NODE[2]}"; wait "${NODE[2]}" 2>/dev/null || true
start 2 --mfs-dfsa 0; ready 1; ready 2
run "moved to node 2, dfsa=0 (forwarded)" 1
grep -h "guest ended" "$W/log2" | sed 's/.*guest ended/guest ended/'
