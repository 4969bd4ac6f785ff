#!/usr/bin/env bash
# What the job network across nodes costs: two VMs of one job on two "nodes" (network
# namespaces joined by veth to a bridge, the job's segment over VXLAN, guest MTU 1450) vs
# two VMs of a job on one node (the job's bridge alone, MTU 1500). bench/shm-pingpong.c
# --tcp between job-wide vm0 and vm1, started by MPICH from vm0 as `vmhpc mpirun` would:
# half round trip and streaming bandwidth per message size.
#   bench/jobnet.sh [BUILD_DIR]     (root; tiny-mpi is built into a temporary store)
set -euo pipefail

build=$(cd "${1:-build}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
driver="$build/tests/job-cluster"
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
[ -x "$driver" ] && [ -x "$build/shm-pingpong" ] || { echo "build $build first" >&2; exit 1; }

work=$(mktemp -d /tmp/vmhpc-jobnet.XXXXXX)
ID=$((($$ % 200) + 20))
NET="172.28.$ID"
BR="jnb$ID"
export VMHPC_STORE="$work/store" VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
vni=$((200000 + $$ % 100000))
port=$((40000 + $$ % 20000))

teardown() {
	pkill -KILL -f "qemu-system-x86_64 .*$work/" || true
	pkill -KILL -f "virtiofsd .*$work/" || true
	sleep 0.5
	for n in n0 n1; do
		ip netns del "jn$ID-$n" 2>/dev/null || true
		ip link del "jn$ID$n" 2>/dev/null || true
	done
	ip link del "$BR" 2>/dev/null || true
	rm -rf "$work"
}
trap teardown EXIT

"$build/vmhpc" image build --level 1 "$src/examples/tiny-mpi.ini" >/dev/null
ip link add "$BR" type bridge
ip link set "$BR" up
for k in 0 1; do
	ns="jn$ID-n$k"
	ip netns add "$ns"
	ip link add "jn${ID}n$k" type veth peer name eth0 netns "$ns"
	ip link set "jn${ID}n$k" master "$BR" up
	ip -n "$ns" addr add "$NET.$((10 + k))/24" dev eth0
	ip -n "$ns" link set eth0 up
	mkdir -p "$work/run-n$k" "$work/cache-n$k"
	chmod 0700 "$work/run-n$k"
done
mkdir "$work/job"
cp "$build/shm-pingpong" "$work/job/"

boot() { # NODE INDEX N_VMS ADDRS -> job id
	nsenter --net="/run/netns/jn$ID-$1" "$driver" boot "$VMHPC_STORE" "$work/cache-$1" "$work/run-$1" \
		tiny-mpi "$3" "$2" "$4" "$vni:$port" "$token" "$work/job" | sed -n 's/^job //p'
}
pingpong() { # NODE ID -> rank 0's lines (rank 0 on vm0 connects to rank 1 on vm1)
	nsenter --net="/run/netns/jn$ID-$1" "$driver" mpirun "$work/run-$1" "$2" "$work/job" \
		./shm-pingpong --tcp 10.77.0.2:5555 --sizes 8,1024,65536,1048576 --iters 500 |
		sed -n 's/^\[0@vm0\] //p' | grep '^[0-9]'
}

# Across nodes: vm0 on n0, vm1 on n1.
boot n0 0 1 "$NET.10,$NET.11" >"$work/a0" &
p=$!
boot n1 1 1 "$NET.10,$NET.11" >"$work/a1"
wait $p
pingpong n0 "$(cat "$work/a0")" >"$work/vxlan.out"
nsenter --net="/run/netns/jn$ID-n0" "$driver" stop "$work/run-n0" "$(cat "$work/a0")" >/dev/null
nsenter --net="/run/netns/jn$ID-n1" "$driver" stop "$work/run-n1" "$(cat "$work/a1")" >/dev/null
# One node, two VMs on its bridge.
b0=$(boot n0 0 2 -)
pingpong n0 "$b0" >"$work/bridge.out"
nsenter --net="/run/netns/jn$ID-n0" "$driver" stop "$work/run-n0" "$b0" >/dev/null

echo "# $(date -u '+%F %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%8s | %14s %14s | %14s %14s\n' size "1 node us" "2 nodes us" "1 node MB/s" "2 nodes MB/s"
join -j1 <(sort -k1,1 "$work/bridge.out") <(sort -k1,1 "$work/vxlan.out") | sort -n |
	awk '{printf "%8s | %14s %14s | %14s %14s\n", $1, $2, $5, $3, $6}'
