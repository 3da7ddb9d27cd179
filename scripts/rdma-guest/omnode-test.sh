#!/bin/bash
# Two omnode daemons over --transport rdma (run by guest-tests.sh in both guests; node 1 is
# the server guest at 10.0.0.1, node 2 the client at 10.0.0.2). Prints '### STEP' markers.
# The client kills its daemon with SIGKILL and restarts it; both must see the other up over
# RDMA before and after. Every wait is bounded.
O=/payload/bin/omnode
step() { local name="$1"; shift; "$@"; local rc=$?; echo "### STEP $name RC=$rc"; return $rc; }
[ -x "$O" ] || { echo "### STEP omnode-present RC=1"; exit 0; }
mkdir -p /tmp/om && chmod 700 /tmp/om
cat /payload/key >/tmp/om/cluster.key && chmod 600 /tmp/om/cluster.key
echo "1 10.0.0.1 2" >/tmp/om/openmosix.map
if [ "$ROLE" = server ]; then ME=1; OTHER=2; else ME=2; OTHER=1; fi
SOCK=/tmp/om/omnode.sock
start() {
  RUST_LOG=info "$O" --map /tmp/om/openmosix.map --node $ME --key-file /tmp/om/cluster.key \
    --socket $SOCK --transport rdma --no-fallback --rdma-device rxe0 >>/tmp/om/omnode.log 2>&1 &
  echo $! >/tmp/om/pid
}
# "up rdma" when this node sees node $OTHER up over an RDMA link.
linked() {
  timeout 20 "$O" status --json --socket $SOCK 2>/dev/null | tr -d ' ' |
    grep -q "\"id\":$OTHER,[^}]*\"up\":true[^}]*\"link\":\"rdma\""
}
alive() { kill -0 "$(cat /tmp/om/pid)" 2>/dev/null; }
wait_linked() { # seconds of wall time
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    linked && return 0
    alive || { echo "### INFO omnode daemon exited"; break; }
    sleep 1
  done
  tail -25 /tmp/om/omnode.log | sed 's/^/### INFO omnode log: /'
  return 1
}
start
step omnode-rdma-up wait_linked 180
timeout 20 "$O" status --socket $SOCK
if [ "$ROLE" = client ]; then
  sleep 3
  kill -9 "$(cat /tmp/om/pid)"; wait "$(cat /tmp/om/pid)" 2>/dev/null
  echo "### INFO omnode node $ME SIGKILLed; restarting"
  sleep 2
  start
  step omnode-rdma-up-after-restart wait_linked 120
  sleep 5
  step omnode-rdma-still-up linked
  # Stay up while the server checks that it sees us again (it ends 30 s after its check).
  sleep 25
else
  # The peer goes away (SIGKILL) and comes back: see it down, then up over RDMA again.
  down() { ! linked; }
  end=$((SECONDS + 120)); while linked && [ $SECONDS -lt $end ]; do sleep 1; done
  step omnode-peer-seen-gone down
  step omnode-rdma-up-after-peer-restart wait_linked 120
  sleep 10
  step omnode-rdma-still-up linked
  # Stay up while the client checks that it sees us again.
  sleep 20
fi
timeout 20 "$O" status --socket $SOCK
grep -E "linked over|RDMA link ended|not linked|ERROR|WARN|panick" /tmp/om/omnode.log | sed 's/^/### INFO omnode log: /' | tail -30
alive || { echo "### INFO omnode daemon is not running at the end; log tail:"; tail -20 /tmp/om/omnode.log | sed 's/^/### INFO omnode log: /'; }
kill "$(cat /tmp/om/pid)" 2>/dev/null; sleep 1
