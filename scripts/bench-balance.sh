#!/usr/bin/env bash
# Makespan of JOBS CPU-bound jobs on a cluster of four daemons on 127.0.0.x, each in its own
# cgroup v1 capped at half a CPU (one machine behaving like four small ones), with its
# baselines in the same run:
#   ideal:        computed, not run: the jobs' total CPU work over the cluster's total CPU
#                 capacity (4 x 0.5 CPU), and never less than one job alone on one node;
#                 the CPU work of a job is measured by running it alone in node 1's cgroup
#                 (user + system time), in this run
#   static spread: JOBS/4 jobs started directly in each node's cgroup (no daemon involved)
#   no balancing: all jobs `mosrun -h -L` at node 1 (kept at home, never moved)
#   omnode:       all jobs `mosrun` at node 1 (placed and moved by the balancer)
# Every job's output is checked against a local run; the load average is printed before and
# after. Needs root and the cgroup v1 cpu hierarchy.
# Usage: scripts/bench-balance.sh [JOBS, default 8] [WORK, default 1000] [reverse]
# (reverse: the runs in the opposite order, to see the drift of a shared machine)
# Environment: BENCH_ADDR (node 1's address, default 127.0.0.221; nodes 2-4 follow),
# BENCH_CGROUP (cgroup name prefix, default omnode-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-8}
WORK=${2:-1000}
B=${OMNODE_BIN:-${CARGO_TARGET_DIR:-target}/debug/omnode}
[ -x "$B" ] || cargo build -q -p omnode
CG=/sys/fs/cgroup/cpu/${BENCH_CGROUP:-omnode-bench}-$$
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
echo "1 ${BENCH_ADDR:-127.0.0.221} 4" >"$W/map"
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
    python3 -c "import sys; m=float(sys.argv[3])-float(sys.argv[2]); print(f'{sys.argv[1]:<14} {m:7.1f} s  = {m/float(sys.argv[5]):.2f} x ideal   wrong outputs: {sys.argv[4]}   load average now: {open(\"/proc/loadavg\").read().split()[0]}')" "$label" "$s" "$e" "$bad" "$IDEAL"
}
static() { for i in $(seq 0 $((JOBS - 1))); do job $((i % 4 + 1)) "$W/spin" "$WORK"; done; waitjobs; }
home() { for _ in $(seq $JOBS); do job 1 "$B" run -h -L --socket "$W/n1.sock" -- "$W/spin" "$WORK"; done; waitjobs; }
omnode() { for _ in $(seq $JOBS); do job 1 "$B" run --socket "$W/n1.sock" -- "$W/spin" "$WORK"; done; waitjobs; }
# waits for the jobs (not the daemons)
waitjobs() { for p in "${JOBPIDS[@]}"; do wait "$p" || echo "job $p exited with $?"; done; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# One job alone in node 1's cgroup: its CPU work (user + system) and its wall time there.
ALONE=$(sh -c "echo \$\$ > $CG/n1/cgroup.procs && exec bash -c 'TIMEFORMAT=\"%U %S %R\"; time \"\$0\" \"\$1\" >/dev/null' '$W/spin' '$WORK'" 2>&1)
read -r U S R <<<"$ALONE"
IDEAL=$(python3 -c "import sys; u,s,j=float(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]); w=u+s; print(f'{max(j*w/(4*0.5), w/0.5):.1f}')" "$U" "$S" "$JOBS")
echo "$JOBS jobs of lcg $WORK; one job alone in a node's cgroup: $U s user + $S s system CPU, $R s wall"
echo "ideal (computed: $JOBS x $(python3 -c "print(f'{$U+$S:.2f}')") s CPU / 2.0 CPUs of capacity, at least one job at 0.5 CPU): $IDEAL s"
if [ "${3:-}" = reverse ]; then
    makespan omnode omnode
    makespan "no balancing" home
    makespan "static spread" static
else
    makespan "static spread" static
    makespan "no balancing" home
    makespan omnode omnode
fi
echo "moves by the balancer: $(grep -c 'balancer: moving' "$W/log1" || true)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
