#!/usr/bin/env bash
# `mosrun -t make -jJOBS` of a real C code base on a cluster of four daemons, each in its own
# cgroup v1 capped at half a CPU (one machine behaving like four small ones), against the same
# make on one node (started in node 1's cgroup, no daemon involved), in the same run.
# The code base: liblzma of xz 5.2 (Debian ships it as xz-utils), taken from the lzma-sys
# crate's copy in the cargo registry (no network needed): its ~60 .c files, compiled as
# lzma-sys's build.rs does, then archived into liblzma.a. Both builds must give identical
# objects (cmp); the script says how many compiles ran elsewhere (node 1's log).
# Needs root and the cgroup v1 cpu hierarchy.
# Usage: scripts/bench-tree.sh [JOBS, default 8] [reverse]
# Environment: BENCH_ADDR (node 1's address, default 127.0.31.101; nodes 2-4 follow),
# BENCH_CGROUP (cgroup name prefix, default h10tree-bench), LZMA_SRC (an xz-5.2 tree).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-8}
B=${OMNODE_BIN:-${CARGO_TARGET_DIR:-target}/debug/omnode}
[ -x "$B" ] || cargo build -q -p omnode
SRC=${LZMA_SRC:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/lzma-sys-0.1.*/xz-5.2 2>/dev/null | head -1)}
[ -d "$SRC/src/liblzma" ] || { echo "no xz-5.2 source (set LZMA_SRC)"; exit 1; }
CG=/sys/fs/cgroup/cpu/${BENCH_CGROUP:-h10tree-bench}-$$
W=$(mktemp -d /tmp/h10tree-bench.XXXXXX)
cleanup() {
    for d in "$CG"/n*; do
        [ -d "$d" ] || continue
        for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    done
    sleep 0.5
    rmdir "$CG"/n* "$CG" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
mkdir "$CG"
for n in 1 2 3 4; do
    mkdir "$CG/n$n"
    echo 100000 >"$CG/n$n/cpu.cfs_period_us"
    echo 50000 >"$CG/n$n/cpu.cfs_quota_us"
done
# the project: a copy of the sources and a Makefile (objects by path, as build.rs lists them)
mkproject() {
    local d=$1
    mkdir -p "$d"
    cp -r "$SRC" "$d/xz-5.2"
    cp "$SRC/../config.h" "$d/config.h"
    (
        cd "$d"
        {
            printf 'SRCS ='
            for dir in common lzma lz check delta rangecoder simple; do
                for f in xz-5.2/src/liblzma/$dir/*.c; do
                    case "$f" in *crc32_small.c | *crc64_small.c) continue ;; esac
                    printf ' %s' "$f"
                done
            done
            printf ' xz-5.2/src/common/tuklib_cpucores.c xz-5.2/src/common/tuklib_physmem.c\n'
            printf 'OBJS = $(SRCS:.c=.o)\n'
            printf 'INC ='
            for i in api lzma lz check simple delta common rangecoder; do printf ' -Ixz-5.2/src/liblzma/%s' "$i"; done
            printf ' -Ixz-5.2/src/common -I.\n'
            printf 'liblzma.a: $(OBJS)\n\tar rcs $@ $(OBJS)\n'
            printf '%%.o: %%.c\n\tcc -O2 -std=c99 -pthread -DHAVE_CONFIG_H=1 $(INC) -c $< -o $@\n'
        } >Makefile
    )
}
mkproject "$W/one"
mkproject "$W/tree"
NFILES=$(grep -o '\.c' <(grep '^SRCS' "$W/one/Makefile") | wc -l)
PORT=$((20000 + RANDOM % 20000))
"$B" keygen --out "$W/key" >/dev/null
A=${BENCH_ADDR:-127.0.31.101}
echo "1 $A 4" >"$W/map"
for n in 1 2 3 4; do
    sh -c "echo \$\$ > $CG/n$n/cgroup.procs && exec '$B' --map '$W/map' --node $n --key-file '$W/key' \
        --port $PORT --socket '$W/n$n.sock' --load-tick-ms 250" >"$W/log$n" 2>&1 &
done
for _ in $(seq 300); do
    up=$("$B" status --json --socket "$W/n1.sock" 2>/dev/null |
        python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["up"] and n["load"] is not None))' 2>/dev/null || echo 0)
    [ "$up" = 4 ] && break
    sleep 0.1
done
[ "$up" = 4 ] || { echo "cluster did not form"; exit 1; }
in1() { sh -c "echo \$\$ > $CG/n1/cgroup.procs && exec \"\$@\"" sh "$@"; }
run() {
    local label=$1 dir=$2; shift 2
    sleep 3 # loads back to idle
    local s e rc=0
    s=$(date +%s.%N)
    (cd "$dir" && in1 "$@" >"$W/$label.out" 2>&1) || rc=$?
    e=$(date +%s.%N)
    python3 -c "import sys; print(f'{sys.argv[1]:<22} {float(sys.argv[3])-float(sys.argv[2]):7.1f} s   exit {sys.argv[4]}   load average now: {open(\"/proc/loadavg\").read().split()[0]}')" "$label" "$s" "$e" "$rc"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "code base: liblzma (xz 5.2, $SRC), $NFILES C files, make -j$JOBS"
if [ "${2:-}" = reverse ]; then
    run "mosrun -t (cluster)" "$W/tree" "$B" run -t --socket "$W/n1.sock" -- make -j"$JOBS"
    run "one node" "$W/one" make -j"$JOBS"
else
    run "one node" "$W/one" make -j"$JOBS"
    run "mosrun -t (cluster)" "$W/tree" "$B" run -t --socket "$W/n1.sock" -- make -j"$JOBS"
fi
same=0 differ=0
while read -r o; do
    if cmp -s "$W/one/$o" "$W/tree/$o"; then same=$((same + 1)); else differ=$((differ + 1)); fi
done < <(cd "$W/one" && find . -name '*.o')
echo "objects identical: $same, differing or missing: $differ"
echo "execs placed on other nodes: $(grep -c 'mosrun --tree: placed on node' "$W/log1" || true)," \
    "moved: $(grep -c 'mosrun: process .* moved to node' "$W/log1" || true)," \
    "not moved (ran at home): $(grep -c 'mosrun: not moved' "$W/log1" || true)," \
    "came home: $(grep -c 'the process came home' "$W/log1" || true)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
