#!/usr/bin/env bash
# A job whose VMs span several nodes, without Slurm: 3 "nodes" as network namespaces joined
# by veth pairs to a bridge (the node network, MTU 1500). On each node the job's VM boots
# inside that node's namespace (nsenter --net) with the same cluster config (node list, VNI,
# token) and is detached; from node 0, MPICH runs examples/mpi-ring.c over vm0, vm1, vm2 on
# the three nodes. A second job (another VNI) on nodes 1 and 2 reaches its own VMs across
# nodes but none of the first job's; a third with the first's VNI is refused. After
# teardown nothing is left: QEMU, virtiofsd, namespaces, links, sockets, job directories.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "needs root (make test runs as root)"
driver="${VMHPC_CLUSTER_DRIVER:?run through meson test}"
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$driver" ] || fail "no $driver"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >"$WORK/build.out" 2>&1 ||
	fail "building tiny-mpi: $(tail -5 "$WORK/build.out")"

# Unique names: several tests (and helpers) share this machine.
ID=$((($$ % 200) + 20))
NET="172.29.$ID"
BR="jcb$ID"
NODES=(n0 n1 n2)
ADDRS="$NET.10,$NET.11,$NET.12"
VNI_A=$((100000 + $$ % 100000))
VNI_B=$((VNI_A + 1))
# Another port than the default: a concurrent run of this test on the machine (other
# namespaces, same kernel) never collides, and the port is honoured end to end.
PORT=$((20000 + $$ % 20000))
TOKEN_A=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
TOKEN_B=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')

ns() { echo "jc$ID-$1"; }
on_node() { # NODE CMD...: CMD in that node's network namespace
	local n=$1
	shift
	nsenter --net="/run/netns/$(ns "$n")" "$@"
}

teardown() {
	local n
	pkill -KILL -f "qemu-system-x86_64 .*$WORK/" || true
	pkill -KILL -f "virtiofsd .*$WORK/" || true
	sleep 0.5
	for n in "${NODES[@]}"; do
		ip netns del "$(ns "$n")" 2>/dev/null || true
		ip link del "jc$ID$n" 2>/dev/null || true
	done
	ip link del "$BR" 2>/dev/null || true
}
on_exit teardown

# The node network.
ip link add "$BR" type bridge
ip link set "$BR" up
for k in 0 1 2; do
	n=${NODES[$k]}
	ip netns add "$(ns "$n")"
	ip link add "jc$ID$n" type veth peer name eth0 netns "$(ns "$n")"
	ip link set "jc$ID$n" master "$BR" up
	ip -n "$(ns "$n")" addr add "$NET.$((10 + k))/24" dev eth0
	ip -n "$(ns "$n")" link set eth0 up
	ip -n "$(ns "$n")" link set lo up
	mkdir -p "$WORK/run-$n" "$WORK/cache-$n"
	chmod 0700 "$WORK/run-$n"
done

mkdir "$WORK/job"
cp "$ring" "$WORK/job/ring"

# boot JOBNAME NODE NODE_INDEX ADDRS VNI TOKEN: boots one VM, prints nothing; the job id
# goes to $WORK/JOBNAME-NODE.id.
boot() {
	local name=$1 n=$2 k=$3 addrs=$4 vni=$5 token=$6
	on_node "$n" "$driver" boot "$VMHPC_STORE" "$WORK/cache-$n" "$WORK/run-$n" tiny-mpi 1 "$k" \
		"$addrs" "$vni:$PORT" "$token" "$WORK/job" >"$WORK/$name-$n.out" 2>&1 ||
		return 1
	sed -n 's/^job //p' "$WORK/$name-$n.out" >"$WORK/$name-$n.id"
}

# Job A: one VM on each node, booted side by side (as the nodes' prologs would).
t0=$(date +%s.%N)
pids=()
for k in 0 1 2; do
	boot a "${NODES[$k]}" "$k" "$ADDRS" "$VNI_A" "$TOKEN_A" &
	pids+=($!)
done
for k in 0 1 2; do
	wait "${pids[$k]}" || fail "booting job A on ${NODES[$k]}: $(cat "$WORK/a-${NODES[$k]}.out")"
done
t1=$(date +%s.%N)
cat "$WORK"/a-n*.out
for k in 0 1 2; do
	grep -q "^node $k: job .*, VMs vm$k of 3, VNI $VNI_A" "$WORK/a-n$k.out" ||
		fail "node $k's VM is not vm$k: $(cat "$WORK/a-n$k.out")"
done
ok "job A booted on 3 nodes (one VM each, vm0..vm2) in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"

# The VXLAN device lives in the job's namespace; its UDP socket in the node's.
for n in "${NODES[@]}"; do
	[ -z "$(on_node "$n" ip -d link show type vxlan)" ] || fail "a VXLAN device in $n's own namespace"
	on_node "$n" ss -uan | grep -q ":$PORT " || fail "no VXLAN socket on port $PORT in $n's namespace"
done
[ -z "$(ip -d link show type vxlan | grep -F "dstport $PORT")" ] || fail "a VXLAN device in the host's namespace"
ok "each node's VXLAN device is in the job's namespace, its UDP socket (port $PORT) in the node's"

A0=$(cat "$WORK/a-n0.id")
# The guests' MTU fits VXLAN over the 1500-byte node network, and the job's names resolve.
on_node n0 "$driver" exec "$WORK/run-n0" "$A0" 0 \
	'cat /sys/class/net/eth0/mtu; grep vm /etc/hosts | tr "\n" " "; echo; ping -c 1 -W 5 -s 1422 vm2 >/dev/null && echo bigping-ok' \
	>"$WORK/mtu.out" 2>&1 || fail "checking the guest's network: $(cat "$WORK/mtu.out")"
grep -qx 1450 "$WORK/mtu.out" || fail "the guest's MTU is not 1450: $(cat "$WORK/mtu.out")"
grep -q "10.77.0.1 vm0 .*10.77.0.2 vm1 .*10.77.0.3 vm2" "$WORK/mtu.out" || fail "/etc/hosts lacks the job's VMs: $(cat "$WORK/mtu.out")"
grep -q bigping-ok "$WORK/mtu.out" || fail "a 1450-byte packet did not reach vm2 on n2: $(cat "$WORK/mtu.out")"
ok "guest MTU 1450; every VM of the job in /etc/hosts; a 1450-byte packet (the guest MTU) crosses to vm2 on node n2"

# MPI across the three nodes, started from node 0's VM (job-wide vm0).
on_node n0 "$driver" mpirun "$WORK/run-n0" "$A0" "$WORK/job" ./ring --hello >"$WORK/hello.out" 2>&1 ||
	fail "MPI hello across nodes: $(cat "$WORK/hello.out")"
for r in 0 1 2; do
	grep -q "hello from rank $r of 3 on vm$r" "$WORK/hello.out" || fail "no rank $r on vm$r: $(cat "$WORK/hello.out")"
done
t2=$(date +%s.%N)
on_node n0 "$driver" mpirun "$WORK/run-n0" "$A0" "$WORK/job" ./ring >"$WORK/ring.out" 2>&1 ||
	fail "MPI ring across nodes: $(cat "$WORK/ring.out")"
t3=$(date +%s.%N)
cat "$WORK/ring.out"
grep -q "ring of 3 ranks: .*VERIFIED" "$WORK/ring.out" || fail "ring not verified: $(cat "$WORK/ring.out")"
grep -q "ranks=3 .*VERIFIED" "$WORK/job/ring-result.txt" || fail "result file: $(cat "$WORK/job/ring-result.txt" 2>&1)"
ok "mpi-ring over vm0, vm1, vm2 on 3 nodes: one rank per VM, ring + allreduce VERIFIED ($(awk "BEGIN{printf \"%.1f\", $t3 - $t2}") s)"

# Job B on nodes 1 and 2 (its own VNI and token): vm0 on n1, vm1 on n2. Its addresses are
# the same as job A's first two: only the segments keep them apart.
ADDRS_B="$NET.11,$NET.12"
boot b n1 0 "$ADDRS_B" "$VNI_B" "$TOKEN_B" & pb1=$!
boot b n2 1 "$ADDRS_B" "$VNI_B" "$TOKEN_B" & pb2=$!
wait $pb1 || fail "booting job B on n1: $(cat "$WORK/b-n1.out")"
wait $pb2 || fail "booting job B on n2: $(cat "$WORK/b-n2.out")"
B1=$(cat "$WORK/b-n1.id")
on_node n1 "$driver" exec "$WORK/run-n1" "$B1" 0 '
	for c in ping arping arp nc; do command -v $c >/dev/null || echo "MISSING $c"; done
	ping -c 2 -W 3 10.77.0.2 >/dev/null 2>&1 && echo PEER ping
	ping -c 2 -W 2 10.77.0.3 >/dev/null 2>&1 && echo REACHED ping
	arping -c 2 -w 3 -I eth0 10.77.0.3 2>&1 | grep -q "Received [1-9]" && echo REACHED arp
	# A frame to job A vm2s MAC, sent blind: the ARP entry is made by hand.
	arp -s 10.77.0.3 52:54:00:00:00:03 2>/dev/null; ping -c 2 -W 2 10.77.0.3 >/dev/null 2>&1 && echo REACHED mac
	nc -w 3 10.77.0.3 7000 </dev/null >/dev/null 2>&1 && echo REACHED tcp
	true' >"$WORK/iso.out" 2>&1 || fail "job B's probe: $(cat "$WORK/iso.out")"
cat "$WORK/iso.out"
! grep -q MISSING "$WORK/iso.out" || fail "the probe lacks a tool in the guest: $(cat "$WORK/iso.out")"
grep -q "PEER ping" "$WORK/iso.out" || fail "job B's vm0 (n1) does not reach its vm1 (n2)"
! grep -q REACHED "$WORK/iso.out" || fail "job B reached job A's vm2: $(cat "$WORK/iso.out")"
ok "job B (VNI $VNI_B) reaches its own VM across nodes, none of job A's (ping, ARP, a frame to A's MAC, TCP to the exec port)"

# A's ring still runs while B is up (B's same addresses do not disturb A's segment).
on_node n0 "$driver" mpirun "$WORK/run-n0" "$A0" "$WORK/job" ./ring >"$WORK/ring2.out" 2>&1 ||
	fail "MPI ring with job B up: $(cat "$WORK/ring2.out")"
grep -q "ring of 3 ranks: .*VERIFIED" "$WORK/ring2.out" || fail "ring with job B up: $(cat "$WORK/ring2.out")"
ok "job A's ring is still VERIFIED with job B on the same nodes and addresses"

# The same VNI twice on one node is refused, and leaves nothing.
if on_node n0 "$driver" boot "$VMHPC_STORE" "$WORK/cache-n0" "$WORK/run-n0" tiny-mpi 1 0 "$ADDRS" "$VNI_A:$PORT" "$TOKEN_B" "$WORK/job" >"$WORK/dup.out" 2>&1; then
	fail "a second job with job A's VNI booted"
fi
grep -q "VXLAN id $VNI_A on UDP port $PORT is in use on this node" "$WORK/dup.out" || fail "duplicate VNI: $(cat "$WORK/dup.out")"
[ "$(ls "$WORK/run-n0/jobs" | wc -l)" -eq 1 ] || fail "the refused job left its directory: $(ls "$WORK/run-n0/jobs")"
ok "a job with a VNI already used on the node is refused: $(tail -1 "$WORK/dup.out" | cut -c1-120)"

# A job of 100 nodes (only node 0 booted here): its host list no longer fits the kernel
# command line as NAME=ADDR pairs and goes as vmhpc.hosts_seq; the guest still knows all.
VNI_C=$((VNI_A + 2))
many=$(for k in $(seq 0 99); do printf '192.0.2.%d,' $((k + 1)); done)
boot c n0 0 "${many%,}" "$VNI_C" "$TOKEN_B" || fail "booting a 100-node job's node 0: $(cat "$WORK/c-n0.out")"
C0=$(cat "$WORK/c-n0.id")
qpid=$(pgrep -f "qemu-system-x86_64 .*run-n0/jobs/$C0/" | head -1)
[ -n "$qpid" ] && tr '\0' ' ' <"/proc/$qpid/cmdline" | grep -q "vmhpc.hosts_seq=vm:10.77.0.1:100 " ||
	fail "the 100-VM job's QEMU was not given vmhpc.hosts_seq"
on_node n0 "$driver" exec "$WORK/run-n0" "$C0" 0 'grep -c " vm[0-9]*$" /etc/hosts; grep "^10.77.0.100 vm99$" /etc/hosts; ip -o -4 addr show eth0' >"$WORK/seq.out" 2>&1 ||
	fail "reading the 100-VM job's hosts: $(cat "$WORK/seq.out")"
grep -qx 100 "$WORK/seq.out" && grep -q "^10.77.0.100 vm99$" "$WORK/seq.out" && grep -q "10.77.0.1/24" "$WORK/seq.out" ||
	fail "the 100-VM job's /etc/hosts or address: $(cat "$WORK/seq.out")"
on_node n0 "$driver" stop "$WORK/run-n0" "$C0" >/dev/null || fail "stopping the 100-node job"
ok "a 100-node job's host list goes as vmhpc.hosts_seq: the guest lists vm0..vm99 (vm99 at 10.77.0.100)"

# Teardown, each node as its epilog would.
for n in n1 n2; do
	on_node "$n" "$driver" stop "$WORK/run-$n" "$(cat "$WORK/b-$n.id")" >/dev/null || fail "stopping job B on $n"
done
for n in "${NODES[@]}"; do
	on_node "$n" "$driver" stop "$WORK/run-$n" "$(cat "$WORK/a-$n.id")" >/dev/null || fail "stopping job A on $n"
done
sleep 1
left=$(pgrep -a -f "qemu-system-x86_64 .*$WORK/" || true)
[ -z "$left" ] || fail "QEMU left: $left"
left=$(pgrep -a -f "virtiofsd .*$WORK/" || true)
[ -z "$left" ] || fail "virtiofsd left: $left"
for n in "${NODES[@]}"; do
	[ -z "$(ls "$WORK/run-$n/jobs" 2>/dev/null)" ] || fail "job directory left on $n: $(ls "$WORK/run-$n/jobs")"
	! on_node "$n" ss -uan | grep -q ":$PORT " || fail "a VXLAN socket left in $n's namespace"
	links=$(on_node "$n" ip -o link show | grep -v -e ' lo:' -e ' eth0@' || true)
	[ -z "$links" ] || fail "links left in $n's namespace: $links"
done
ok "after teardown: no QEMU, virtiofsd, job directory, VXLAN socket or link left on any node"

# The booting process killed half-way (a cancelled prolog): `vmhpc cleanup` on the node
# finds the stale job, and with its QEMU gone the job's namespace, VXLAN device and the
# node's VXLAN socket go too.
# nsenter itself, not through on_node: $! must be the booting process (nsenter execs it),
# not a subshell around it.
nsenter --net="/run/netns/$(ns n0)" "$driver" boot "$VMHPC_STORE" "$WORK/cache-n0" "$WORK/run-n0" tiny-mpi 1 0 "$ADDRS" \
	"$((VNI_A + 3)):$PORT" "$TOKEN_A" "$WORK/job" >"$WORK/killed.out" 2>&1 &
bpid=$!
for i in $(seq 300); do
	pgrep -f "qemu-system-x86_64 .*run-n0/jobs/" >/dev/null && on_node n0 ss -uan | grep -q ":$PORT " && break
	sleep 0.1
done
on_node n0 ss -uan | grep -q ":$PORT " || fail "the killed job's boot never got to QEMU and its VXLAN: $(cat "$WORK/killed.out")"
kill -9 $bpid
wait $bpid 2>/dev/null || true
grep -q "^job " "$WORK/killed.out" && fail "the boot finished before it was killed: $(cat "$WORK/killed.out")"
on_node n0 env VMHPC_RUN_DIR="$WORK/run-n0" "$VMHPC" cleanup >"$WORK/cleanup.out" 2>&1 || fail "vmhpc cleanup: $(cat "$WORK/cleanup.out")"
for i in $(seq 50); do
	on_node n0 ss -uan | grep -q ":$PORT " || break
	sleep 0.1
done
left=$( (pgrep -a -f "qemu-system-x86_64 .*$WORK/" || true; ls "$WORK/run-n0/jobs" 2>/dev/null || true
	on_node n0 ss -uan | grep ":$PORT " || true) | head -5)
[ -z "$left" ] || fail "a boot killed half-way left, after vmhpc cleanup: $left"
ok "a boot killed half-way: vmhpc cleanup leaves no QEMU, job directory or VXLAN socket on the node"
teardown
left=$( (ip netns list | grep "jc$ID-" || true; ip -o link show | grep -e "jc$ID" -e "$BR" || true) | head -5)
[ -z "$left" ] || fail "left in the host: $left"
ok "the test's namespaces, veths and bridge are gone"
finish
