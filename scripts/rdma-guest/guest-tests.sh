#!/bin/bash
# The guest test list, run by /init in both guests with ROLE (server|client), IP and PEER set.
# The server runs each tool as the listening side; the client retries until the server
# listens (the guests boot at about the same time, not exactly). Every step has a timeout.
step() { local name="$1"; shift; "$@"; local rc=$?; echo "### STEP $name RC=$rc"; return $rc; }
# client side: retry a command until it succeeds or `tries` attempts are used.
retry() { local tries="$1"; shift; local i; for i in $(seq 1 "$tries"); do "$@" && return 0; sleep 2; done; return 1; }
TESTS="$(cat /payload/tests.list)"
G="-d rxe0 -x 1"   # GID index 1: the IPv4-mapped RoCE v2 GID

for t in $TESTS; do
  case "$t" in
  perftest)
    step ibv_devinfo sh -c 'timeout 30 ibv_devinfo -d rxe0 | grep -E "PORT_ACTIVE|active_mtu|link_layer"'
    if [ "$ROLE" = server ]; then
      step ib_send_lat timeout 300 ib_send_lat $G -n 1000
      step ib_write_bw timeout 300 ib_write_bw $G -n 500
    else
      step ib_send_lat retry 60 timeout 300 ib_send_lat $G -n 1000 "$PEER"
      sleep 2
      step ib_write_bw retry 60 timeout 300 ib_write_bw $G -n 500 "$PEER"
    fi
    ;;
  rust)
    for b in /payload/bin/rdma-guest-test; do
      [ -x "$b" ] || { echo "### STEP rust-present RC=1"; continue; }
      sleep 2
      K="$(cat /payload/key)"
      # Run 1: completions by event (the default); 64 MiB bulk checked byte for byte.
      # Run 2: busy-poll mode (50 ms of polling before sleeping), for the latency ratio.
      if [ "$ROLE" = server ]; then
        step rdma-guest-test timeout 900 "$b" --key-hex "$K" server --listen "$IP:18600" --expect-refused 1
        step rdma-guest-test-busy-poll timeout 600 "$b" --key-hex "$K" --busy-poll-us 50000 server --listen "$IP:18601" --expect-refused 1
      else
        step rdma-guest-test timeout 900 "$b" --key-hex "$K" client --connect "$PEER:18600" --retry-secs 120 \
          --asks 500 --bulk-mib 64
        sleep 2
        step rdma-guest-test-busy-poll timeout 600 "$b" --key-hex "$K" --busy-poll-us 50000 client --connect "$PEER:18601" \
          --retry-secs 120 --asks 500 --bulk-mib 32
      fi
    done
    ;;
  transport)
    # The Transport omnode uses (TCP link first, RDMA decided on the side channel, no
    # fall-back allowed): asks, then 256 MiB on the bulk lane checked byte for byte; then
    # transport-tcp alone between the same guests, the baseline of BENCHMARKS.md.
    b=/payload/bin/rdma-guest-test
    K="$(cat /payload/key)"
    if [ "$ROLE" = server ]; then ME=2; OTHER=1; else ME=1; OTHER=2; fi
    sleep 2
    step transport-rdma timeout 900 "$b" --key-hex "$K" transport --node $ME --listen "$IP:18700" \
      --peer-id $OTHER --peer "$PEER:18700" --asks 500 --bulk-mib 256
    sleep 3
    step transport-tcp-baseline timeout 600 "$b" --key-hex "$K" transport --tcp --node $ME --listen "$IP:18710" \
      --peer-id $OTHER --peer "$PEER:18710" --asks 500 --bulk-mib 64
    ;;
  omnode)
    # Two omnode daemons with --transport rdma form a cluster over RDMA; the client's
    # daemon is SIGKILLed and restarted, and both see each other up over RDMA again.
    sleep 3
    bash /payload/omnode-test.sh
    ;;
  faults)
    # A route failure under a running RDMA link, and its mending. TCP (and the side
    # channel) run over a second address, 10.0.1.N, while RoCE keeps GID index 1
    # (10.0.0.N); the client (lower id) points the peer's 10.0.0.N at a MAC nobody has
    # (a blackhole route does not stop soft-RoCE on 6.1: it keeps a cached route):
    # the link must fall back to TCP (losses only with a Down or a send error), then,
    # after the route is deleted, switch back to RDMA with no Down and nothing lost.
    b=/payload/bin/rdma-guest-test
    K="$(cat /payload/key)"
    NIC="$(ls /sys/class/net | grep -v '^lo$' | head -1)"
    ip addr add "10.0.1.${IP##*.}/24" dev "$NIC"
    A="--key-hex $K faults --listen 10.0.1.${IP##*.}:18800 --peer 10.0.1.${PEER##*.}:18800"
    sleep 3
    if [ "$ROLE" = server ]; then
      step rdma-faults timeout 400 "$b" $A --node 2 --peer-id 1
    else
      step rdma-faults timeout 400 "$b" $A --node 1 --peer-id 2 \
        --break-cmd "ip neigh replace $PEER lladdr 52:54:00:00:00:99 dev $NIC nud permanent" \
        --mend-cmd "ip neigh del $PEER dev $NIC"
    fi
    ;;
  errors)
    # Actionable errors with the real device: no such device, a wrong GID index,
    # RLIMIT_MEMLOCK too low (CAP_IPC_LOCK dropped), and on the server the port down
    # (its NIC set down and up again). Last, because the port flap disturbs the wire.
    b=/payload/bin/rdma-guest-test
    K="$(cat /payload/key)"
    NIC="$(ls /sys/class/net | grep -v '^lo$' | head -1)"
    sleep 2
    if [ "$ROLE" = server ]; then
      step rdma-errors timeout 180 "$b" --key-hex "$K" errors --port-flap "$NIC"
    else
      step rdma-errors timeout 180 "$b" --key-hex "$K" errors
    fi
    ;;
  *) echo "### STEP unknown-test-$t RC=1" ;;
  esac
done
