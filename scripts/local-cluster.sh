#!/usr/bin/env bash
# Build omnode and start an N-node cluster on this machine (nodes at 127.0.0.1..N, which
# need no set-up on Linux). Prints each node's status command; Ctrl-C stops every node.
#
#   scripts/local-cluster.sh [N] [--release] [--port P] [-- extra omnode daemon flags]
#
# State (map, key, sockets, logs) goes to ${OMNODE_CLUSTER_DIR:-/tmp/omnode-cluster}.
# OMNODE_BIN=path runs that binary instead of building one. Every exit says why.
set -euo pipefail
say() { echo "local-cluster: $*" >&2; }
# Any command failing unexpectedly still says what failed, where.
trap 'rc=$?; say "line $LINENO: \`$BASH_COMMAND\` failed with status $rc"; exit $rc' ERR
n=4
port=7431
profile=debug
build_flags=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release; build_flags+=(--release); shift ;;
    --port)
      [ $# -ge 2 ] || { say "--port needs a value"; exit 2; }
      port="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) say "unknown option '$1' (see --help)"; exit 2 ;;
    *) n="$1"; shift ;;
  esac
done
case "$n" in ''|*[!0-9]*) say "N must be a number of nodes (1-254), not '$n'"; exit 2 ;; esac
if [ "$n" -lt 1 ] || [ "$n" -gt 254 ]; then say "N must be 1-254, not $n"; exit 2; fi
case "$port" in ''|*[!0-9]*) say "--port must be a TCP port (1-65535), not '$port'"; exit 2 ;; esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then say "--port must be 1-65535, not $port"; exit 2; fi

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -n "${OMNODE_BIN:-}" ]; then
  bin="$OMNODE_BIN"
else
  cargo build -p omnode "${build_flags[@]}" || { say "cargo build -p omnode failed (see above)"; exit 1; }
  bin="${CARGO_TARGET_DIR:-$top/target}/$profile/omnode"
fi
[ -x "$bin" ] || { say "$bin is not an executable omnode binary"; exit 1; }
dir=${OMNODE_CLUSTER_DIR:-/tmp/omnode-cluster}
mkdir -p "$dir" || { say "cannot create $dir"; exit 1; }

# A node cannot listen on a port something else holds: say so before starting anything.
for i in $(seq 1 "$n"); do
  if (exec 3<>"/dev/tcp/127.0.0.$i/$port") 2>/dev/null; then
    say "port $port on 127.0.0.$i is already in use (another omnode or another program);" \
      "stop it or choose another port with --port P"
    exit 1
  fi
done

echo "1 127.0.0.1 $n" > "$dir/openmosix.map"
if [ ! -f "$dir/cluster.key" ]; then
  "$bin" keygen --out "$dir/cluster.key" >/dev/null || { say "cannot write a cluster key to $dir/cluster.key"; exit 1; }
fi
pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'say "stopping the cluster"; cleanup; exit 130' INT
trap 'say "stopping the cluster"; cleanup; exit 143' TERM
for i in $(seq 1 "$n"); do
  "$bin" --map "$dir/openmosix.map" --node "$i" --key-file "$dir/cluster.key" --port "$port" \
    --socket "$dir/node$i.sock" "${extra[@]}" >"$dir/node$i.log" 2>&1 &
  pids+=($!)
done

# Why node $1 is not running: the last lines of its log, and a hint for the usual causes.
explain() {
  local log="$dir/node$1.log"
  say "node $1 exited; the end of $log:"
  tail -n 5 "$log" | sed 's/^/    /' >&2 || true
  if grep -qi "address already in use\|addrinuse" "$log" 2>/dev/null; then
    say "port $port on 127.0.0.$1 is already in use; stop what holds it or choose another port with --port P"
  fi
}

# Wait (bounded) until node 1 sees every node up, each with a load figure; stop at once if a
# node exits.
ready=no
for _ in $(seq 1 150); do
  for idx in "${!pids[@]}"; do
    if ! kill -0 "${pids[$idx]}" 2>/dev/null; then
      explain $((idx + 1))
      exit 1
    fi
  done
  s=$("$bin" status --json --socket "$dir/node1.sock" 2>/dev/null || true)
  up=$( (grep -o '"up":true' <<<"$s" || true) | wc -l)
  loads=$( (grep -o '"load":[0-9]' <<<"$s" || true) | wc -l)
  if [ "$up" -ge "$n" ] && [ "$loads" -ge "$n" ]; then ready=yes; break; fi
  sleep 0.2
done
if [ "$ready" != yes ]; then
  say "after 30 s node 1 does not see all $n nodes up with a load; logs in $dir/node*.log"
  "$bin" status --socket "$dir/node1.sock" >&2 || true
  exit 1
fi
"$bin" status --socket "$dir/node1.sock" || { say "node 1 does not answer on $dir/node1.sock; see $dir/node1.log"; exit 1; }
echo
echo "$n nodes running; logs in $dir/node*.log. Ask any node:"
echo "  $bin status --socket $dir/node2.sock      (or OMNODE_SOCKET=$dir/node2.sock $bin status --json)"
echo "Ctrl-C stops the cluster."
# Wait for the nodes; if one of them ends, say which and stop the others.
while :; do
  for idx in "${!pids[@]}"; do
    if ! kill -0 "${pids[$idx]}" 2>/dev/null; then
      explain $((idx + 1))
      exit 1
    fi
  done
  sleep 1
done
