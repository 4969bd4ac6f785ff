#!/usr/bin/env bash
# One MPI job across 3 nodes of a real Slurm 22.05 (tests/cluster/slurm.sh): sbatch -N 3
# --vm-image=... --vms-per-node=1 runs examples/mpi-ring.c over vm0..vm2, one VM on each
# node, on the job's own VXLAN segment; every rank says which VM it ran in; the result is
# VERIFIED and owned by the job's user; every node wrote its timings; the epilogs leave
# nothing on any node (no QEMU, supervisor, VXLAN, runtime or state folder) and no node
# is drained. A step on another node runs mpirun the same way; a step of several tasks may
# not. 2 nodes x 2 VMs of an image with the bypass: the channel within a node, TCP between;
# with --vm-shm=off TCP alone.
# Then a job whose image one node cannot have: nothing left anywhere.
. "$(dirname "$0")/lib.sh"
set -e

. "$(dirname "$0")/slurm-lib.sh"
slurm_test_start 3

nodes_idle() {
	local i
	for i in $(seq 300); do
		[ "$(sinfo -h -N -o '%t' | grep -c '^idle')" -eq 3 ] && return 0
		sleep 0.2
	done
	fail "nodes not idle: $(sinfo -N -o '%N %t %E')"
}
nothing_left_anywhere() {
	local what=$1 left i
	sleep 0.5
	left=$( (pgrep -a -f "qemu-system-x86_64 .*$CL_DIR/run-n" || true
		ls "$CL_DIR"/run-n*/jobs 2>/dev/null | grep -v ':$' | grep . || true
		ls "$CL_DIR"/slurm-n* 2>/dev/null | grep -v ':$' | grep . || true
		for i in 1 2 3; do ip -n "vh$CL_ID-n$i" -br link 2>/dev/null | grep -v '^lo\|^eth0' || true; done) | head -5)
	[ -z "$left" ] || fail "$what left: $left"
	sinfo -h -N -o '%t' | grep -qv '^idle' && fail "$what: a node is not idle: $(sinfo -N -o '%N %t %E')"
	return 0
}

# The third mpirun runs in a step on the job's third node (srun -r 2), through that node's
# supervisor: same VMs, same ranks.
cat >"$job/ring.sh" <<EOF
#!/bin/sh
$VMHPC mpirun --label ./ring --hello && $VMHPC mpirun ./ring &&
srun -N 1 -n 1 -r 2 -o "$job/remote-%j.out" sh -c 'echo "step on \$SLURMD_NODENAME"; exec $VMHPC mpirun --label ./ring --hello' &&
if srun -o "$job/many-%j.out" $VMHPC mpirun ./ring; then echo "a step of 3 tasks ran mpirun"; exit 1; fi
EOF
chmod +x "$job/ring.sh"
t0=$(date +%s.%N)
j=$(as_user sbatch --parsable -N 3 --vm-image="$REF" --vms-per-node=1 -o "$job/ring-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 900)
t1=$(date +%s.%N)
nodes_idle
[ "$state" = COMPLETED ] || fail "3-node job $j: $state $(slurm_job_field "$j" AdminComment): $(cat "$job/ring-$j.out" 2>&1)"
for g in 0 1 2; do
	grep -q "^\[$g@vm$g\] hello from rank $g of 3 on vm$g" "$job/ring-$j.out" || fail "rank $g not on vm$g: $(cat "$job/ring-$j.out")"
done
grep -q "ring of 3 ranks: token 3 (expected 3), allreduce 6 (expected 6): VERIFIED" "$job/ring-$j.out" || fail "ring: $(cat "$job/ring-$j.out")"
[ "$(stat -c %u "$job/ring-result.txt")" = "$USER_UID" ] || fail "result owned by $(stat -c %u "$job/ring-result.txt")"
grep -q "^step on n3$" "$job/remote-$j.out" || fail "the step did not run on n3: $(cat "$job/remote-$j.out" 2>&1)"
for g in 0 1 2; do
	grep -q "^\[$g@vm$g\] hello from rank $g of 3 on vm$g" "$job/remote-$j.out" ||
		fail "from n3: rank $g not on vm$g: $(cat "$job/remote-$j.out")"
done
ok "srun -r 2 vmhpc mpirun (a step on n3, through n3's supervisor): ranks 0..2 on vm0..vm2"
[ "$(grep -c "run it once, in the batch script or in a step of one task" "$job/many-$j.out")" = 3 ] ||
	fail "srun vmhpc mpirun over 3 tasks: $(cat "$job/many-$j.out" 2>&1)"
grep -q VERIFIED "$job/many-$j.out" && fail "srun vmhpc mpirun over 3 tasks ran the program"
ok "srun vmhpc mpirun over 3 tasks: each refused (one MPI job per task would run), nothing ran"
ok "sbatch -N 3 --vms-per-node=1: ranks 0..2 on vm0..vm2 (one per node), ring VERIFIED ($(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s submit to end)"
for i in 1 2 3; do
	[ -f "$job/vmhpc-$j.n$i.json" ] || fail "no timings from n$i: $(ls "$job")"
done
ok "timings from every node: $(for i in 1 2 3; do python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print("%s boot %.1f s (image from %s)" % (t["node"], t["boot_s"], t["distribution_source"]))' "$job/vmhpc-$j.n$i.json"; done | tr '\n' ';')"
nothing_left_anywhere "the 3-node job"
ok "after the job: nothing left on any node, none drained"

# 2 nodes x 2 VMs of an image with the bypass (examples/tiny-mpi-shm.ini): the VMs of each
# node share a region of their own (keys differ per node), so UCX takes the channel between
# the two ranks of a node and TCP between nodes, by itself; the ring verifies and nothing is
# left.
"$VMHPC_SOURCE_ROOT/scripts/build-uct-ivshmem.sh" 2>"$WORK/uct.err" ||
	fail "building the UCX transport: $(cat "$WORK/uct.err")"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi-shm.ini" >/dev/null
cluster_push "$(versions | grep '^tiny-mpi-shm:' | sort -t: -k2 -n | tail -1)" tiny-mpi-shm:1
printf '#!/bin/sh\nUCX_LOG_LEVEL=info exec ./ring "$@"\n' >"$job/ring-info"
printf '#!/bin/sh\n%s mpirun --label ./ring-info\n' "$VMHPC" >"$job/shm.sh"
chmod +x "$job/ring-info" "$job/shm.sh"
chown "$USER_UID:$USER_GID" "$job/ring-info" "$job/shm.sh"
# run_2x2 NAME [SBATCH-OPTIONS]: the ring over 2 nodes x 2 VMs of tiny-mpi-shm, output in
# $job/NAME-JOB.out; fails unless the job completes and the ring verifies. Sets j.
run_2x2() {
	local name=$1 state
	shift
	j=$(as_user sbatch --parsable -N 2 -c 2 --vm-image="$CL_REGISTRY/vmhpc/tiny-mpi-shm:1" \
		--vms-per-node=2 --vm-vcpus=1 "$@" -o "$job/$name-%j.out" "$job/shm.sh")
	state=$(slurm_wait "$j" 900)
	nodes_idle
	[ "$state" = COMPLETED ] || fail "2x2 job $name $j: $state $(slurm_job_field "$j" AdminComment): $(tail -20 "$job/$name-$j.out" 2>&1)"
	grep -q "ring of 4 ranks: .*VERIFIED" "$job/$name-$j.out" || fail "2x2 ring $name: $(tail -20 "$job/$name-$j.out")"
}
run_2x2 shm
# UCX reports each endpoint configuration once per rank (not once per endpoint): besides
# the one to itself (self/memory0), each rank has exactly two, one over the region (to the
# one other rank of its node: another node's region has another key, so it cannot be for a
# rank there) and one over TCP alone (shared by the two ranks of the other node).
for r in 0 1 2 3; do
	cfgs=$(grep "^\[$r@vm$r\].*ep_cfg" "$job/shm-$j.out" | grep -v 'self/memory0' || true)
	[ "$(echo "$cfgs" | grep -c 'tag(ivshmem/region')" -eq 1 ] &&
		[ "$(echo "$cfgs" | grep -c 'tag(tcp/eth0) ')" -eq 1 ] && [ "$(echo "$cfgs" | grep -c .)" -eq 2 ] ||
		fail "rank $r's endpoint configurations are not one over the region and one over TCP: $cfgs"
done
nothing_left_anywhere "the 2x2 job with the bypass"
ok "2 nodes x 2 VMs with the bypass: ring VERIFIED; each rank reaches its node's other VM over the region and the other node's over TCP, by itself; nothing left"
# The same job with --vm-shm=off: no region, so every rank reaches every other over TCP.
run_2x2 noshm --vm-shm=off
grep 'ep_cfg' "$job/noshm-$j.out" | grep -q 'ivshmem/region' &&
	fail "--vm-shm=off, yet UCX took the channel: $(grep 'ivshmem/region' "$job/noshm-$j.out" | head -3)"
for r in 0 1 2 3; do
	grep "^\[$r@vm$r\].*ep_cfg" "$job/noshm-$j.out" | grep -q 'tag(tcp/eth0) ' ||
		fail "--vm-shm=off: rank $r has no configuration over TCP: $(grep "^\[$r@" "$job/noshm-$j.out" | head -5)"
done
nothing_left_anywhere "the 2x2 job with --vm-shm=off"
ok "2 nodes x 2 VMs, --vm-shm=off: ring VERIFIED, every rank over TCP alone, no region; nothing left"

# A job that cannot get its image: every node's prolog records it, nothing is left.
j=$(as_user sbatch --parsable -N 3 --vm-image="$CL_REGISTRY/vmhpc/nosuch:1" -o "$job/f-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 120)
nodes_idle
case "$state:$(slurm_job_field "$j" AdminComment)" in
CANCELLED:*vmhpc:*nosuch*) ;;
*) fail "unknown image on 3 nodes: $state '$(slurm_job_field "$j" AdminComment)'" ;;
esac
nothing_left_anywhere "a 3-node job without its image"
ok "3-node job with an unknown image: $state, $(slurm_job_field "$j" AdminComment | cut -c1-100)"
CHECKS_DONE=1
finish
