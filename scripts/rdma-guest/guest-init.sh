#!/bin/bash
# /init of the rdma guest (PID 1 in the initramfs). Brings up soft-RoCE on eth0 and runs
# /payload/tests.sh; reports every step as '### STEP name RC=n' on the serial console,
# then '### DONE' and powers off. Never waits forever: every command has a timeout.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run && mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
ROLE=; IP=; PEER=
for a in $(cat /proc/cmdline); do
  case "$a" in
    omnode.role=*) ROLE="${a#*=}" ;;
    omnode.ip=*) IP="${a#*=}" ;;
    omnode.peer=*) PEER="${a#*=}" ;;
  esac
done
export ROLE IP PEER
step() { # name command...: run with a timeout, print the marker
  local name="$1"; shift
  "$@"; local rc=$?
  echo "### STEP $name RC=$rc"
  return $rc
}
off() { echo "### DONE"; sync; echo o >/proc/sysrq-trigger; sleep 30; }
echo "### INFO role=$ROLE ip=$IP peer=$PEER uptime=$(cut -d' ' -f1 /proc/uptime)"
step modprobe timeout 60 modprobe -a crc32_generic rdma_rxe ib_uverbs rdma_ucm virtio_pci virtio_net || off
ip link set lo up
# The one virtio NIC (the kernel names it eth0 without udev; take whatever is there).
NIC=
for i in $(seq 1 100); do
  NIC="$(ls /sys/class/net | grep -v '^lo$' | head -1)"; [ -n "$NIC" ] && break; sleep 0.2
done
echo "### INFO nic=$NIC"
step nic-up sh -c "ip link set $NIC up && ip addr add $IP/24 dev $NIC" || off
step rxe-add timeout 60 rdma link add rxe0 type rxe netdev "$NIC" || off
for i in $(seq 1 50); do grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null && break; sleep 0.2; done
step rxe-active grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state || off
ulimit -l unlimited
cd /tmp
timeout 1200 bash /payload/tests.sh
echo "### INFO rxe0 sent_pkts=$(cat /sys/class/infiniband/rxe0/ports/1/hw_counters/sent_pkts 2>/dev/null) rcvd_pkts=$(cat /sys/class/infiniband/rxe0/ports/1/hw_counters/rcvd_pkts 2>/dev/null) $NIC tx_packets=$(cat /sys/class/net/$NIC/statistics/tx_packets) rx_packets=$(cat /sys/class/net/$NIC/statistics/rx_packets)"
echo "### INFO uptime=$(cut -d' ' -f1 /proc/uptime)"
off
