#!/usr/bin/env bash
# Makespan of JOBS CPU-bound jobs on a cluster of four daemons on 127.0.0.x, each in its own
# cgroup v1 capped at half a CPU (one machine behaving like four small ones), with its
# baselines in the same run:
#   ideal:        JOBS/4 jobs started directly in each node's cgroup (perfect static spread)
#   no balancing: all jobs `mosrun -h -L` at node 1 (kept at home, never moved)
#   omnode:       all jobs `mosrun` at node 1 (placed and moved by the balancer)
# Every job's output is checked against a local run. Needs root and the cgroup v1 cpu
# hierarchy. Usage: scripts/bench-balance.sh [JOBS, default 8] [WORK, default 1000] [reverse]
# (reverse: the three runs in the opposite order, to see the drift of a shared machine)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-8}
WORK=${2:-1000}
B=${OMNODE_BIN:-${CARGO_TARGET_DIR:-target}/debug/omnode}
[ -x "$B" ] || cargo build -q -p omnode
CG=/sys/fs/cgroup/cpu/omnode-bench-$$
W=$(mktemp -d /tmp/bal-bench.XXXXXX)
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
gcc -O1 -o "$W/spin" tests/progs/lcg.c
"$W/spin" "$WORK" >"$W/want"
PORT=$((20000 + RANDOM % 20000))
"$B" keygen --out "$W/key" >/dev/null
echo "1 127.0.0.221 4" >"$W/map"
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

# job NODE CMD...: run CMD in node NODE's cgroup, output to a file
JOBPIDS=()
job() {
    local n=$1; shift
    sh -c "echo \$\$ > $CG/n$n/cgroup.procs && exec \"\$@\"" sh "$@" >"$W/out.${#JOBPIDS[@]}" &
    JOBPIDS+=($!)
}
makespan() {
    local label=$1; shift
    rm -f "$W"/out.*
    JOBPIDS=()
    sleep 3 # loads back to idle
    local s e
    s=$(date +%s.%N)
    "$@"
    e=$(date +%s.%N)
    local bad=0
    for f in "$W"/out.*; do
        cmp -s "$f" "$W/want" || { bad=$((bad + 1)); echo "wrong output in $f: $(head -c 100 "$f")"; }
    done
    python3 -c "import sys; print(f'{sys.argv[1]:<14} {float(sys.argv[3])-float(sys.argv[2]):7.1f} s   wrong outputs: {sys.argv[4]}')" "$label" "$s" "$e" "$bad"
}
ideal() { for i in $(seq 0 $((JOBS - 1))); do job $((i % 4 + 1)) "$W/spin" "$WORK"; done; waitjobs; }
home() { for _ in $(seq $JOBS); do job 1 "$B" run -h -L --socket "$W/n1.sock" -- "$W/spin" "$WORK"; done; waitjobs; }
omnode() { for _ in $(seq $JOBS); do job 1 "$B" run --socket "$W/n1.sock" -- "$W/spin" "$WORK"; done; waitjobs; }
# waits for the jobs (not the daemons)
waitjobs() { for p in "${JOBPIDS[@]}"; do wait "$p" || echo "job $p exited with $?"; done; }
echo "$JOBS jobs of spin $WORK; one job alone: $( { TIMEFORMAT=%U; time "$W/spin" "$WORK" >/dev/null; } 2>&1 ) s CPU"
if [ "${3:-}" = reverse ]; then
    makespan omnode omnode
    makespan "no balancing" home
    makespan ideal ideal
else
    makespan ideal ideal
    makespan "no balancing" home
    makespan omnode omnode
fi
echo "moves by the balancer: $(grep -c 'balancer: moving' "$W/log1" || true)"
