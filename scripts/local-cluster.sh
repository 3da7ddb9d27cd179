#!/usr/bin/env bash
# Build omnode and start an N-node cluster on this machine (nodes at 127.0.0.1..N, which
# need no set-up on Linux). Prints each node's status command; Ctrl-C stops every node.
#
#   scripts/local-cluster.sh [N] [--release] [-- extra omnode daemon flags]
#
# State (map, key, sockets, logs) goes to ${OMNODE_CLUSTER_DIR:-/tmp/omnode-cluster}.
set -euo pipefail
n=4
profile=debug
build_flags=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release; build_flags+=(--release); shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) n="$1"; shift ;;
  esac
done
case "$n" in ''|*[!0-9]*) echo "local-cluster: N must be a number of nodes (1-254), not '$n'" >&2; exit 2 ;; esac
if [ "$n" -lt 1 ] || [ "$n" -gt 254 ]; then echo "local-cluster: N must be 1-254" >&2; exit 2; fi

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build -p omnode "${build_flags[@]}"
bin="$top/target/$profile/omnode"
dir=${OMNODE_CLUSTER_DIR:-/tmp/omnode-cluster}
mkdir -p "$dir"
echo "1 127.0.0.1 $n" > "$dir/openmosix.map"
[ -f "$dir/cluster.key" ] || "$bin" keygen --out "$dir/cluster.key" >/dev/null
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for i in $(seq 1 "$n"); do
  "$bin" --map "$dir/openmosix.map" --node "$i" --key-file "$dir/cluster.key" \
    --socket "$dir/node$i.sock" "${extra[@]}" >"$dir/node$i.log" 2>&1 &
  pids+=($!)
done
# Wait (bounded) until node 1 sees every node up, each with a load figure.
for _ in $(seq 1 100); do
  s=$("$bin" status --json --socket "$dir/node1.sock" 2>/dev/null || true)
  up=$(grep -o '"up":true' <<<"$s" | wc -l)
  loads=$(grep -o '"load":[0-9]' <<<"$s" | wc -l)
  [ "$up" -ge "$n" ] && [ "$loads" -ge "$n" ] && break
  sleep 0.2
done
"$bin" status --socket "$dir/node1.sock" || { echo "node 1 did not start; see $dir/node1.log" >&2; exit 1; }
echo
echo "$n nodes running; logs in $dir/node*.log. Ask any node:"
echo "  $bin status --socket $dir/node2.sock      (or OMNODE_SOCKET=$dir/node2.sock $bin status --json)"
echo "Ctrl-C stops the cluster."
wait
