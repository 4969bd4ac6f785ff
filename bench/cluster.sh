#!/usr/bin/env bash
# The Slurm tier's costs on a real Slurm 22.05 test cluster (tests/cluster/slurm.sh):
#  1. per-job start overhead, submit to the batch script's start (the VMs are ready then),
#     for NODES_LIST nodes x 1 VM, with the image uncached (every node cache emptied) and
#     cached, next to one node's `vmhpc run --vms 1` boot;
#  2. Slurm's throughput of bare jobs (`sbatch --wrap true`) with the plugin loaded and
#     without it (plugstack.conf emptied, `scontrol reconfigure`).
#
#   sudo bench/cluster.sh            # NODES_LIST="1 2 4" JOBS=40 by default
#   sudo THROUGHPUT_ONLY=1 bench/cluster.sh   # part 2 alone, on one node
# Prints Markdown tables for bench/RESULTS.md.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${VMHPC:=$ROOT/build/vmhpc}"
# Absolute: slurmd loads the plugin by this path from its own working directory.
VMHPC=$(realpath "$VMHPC")
: "${VMHPC_INIT:=$(dirname "$VMHPC")/vmhpc-init}"
: "${VMHPC_SPANK:=$(dirname "$VMHPC")/vmhpc.so}"
export VMHPC VMHPC_INIT VMHPC_SPANK
NODES_LIST=${NODES_LIST:-"1 2 4"}
JOBS=${JOBS:-40}
[ "$(id -u)" -eq 0 ] || { echo "run as root (namespaces, slurmd)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vmhpc-bench.XXXXXX)
export VMHPC_STORE="$WORK/store"
export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
. "$ROOT/tests/cluster/slurm.sh"
trap 'slurm_down; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

[ -z "${THROUGHPUT_ONLY:-}" ] || NODES_LIST=""
max_n=1
for n in $NODES_LIST; do [ "$n" -gt "$max_n" ] && max_n=$n; done
echo "building the image, starting $max_n nodes..." >&2
"$VMHPC" image build --level 1 "$ROOT/examples/tiny-mpi.ini" >/dev/null
slurm_up "$max_n"
ver=$("$VMHPC" image list --json | python3 -c 'import json,sys; print(max(e["version"] for e in json.load(sys.stdin) if e["name"] == "tiny-mpi"))')
cluster_push "tiny-mpi:$ver" tiny-mpi:1
REF="$CL_REGISTRY/vmhpc/tiny-mpi:1"
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
cp "$(dirname "$VMHPC")/mpi-ring" "$job/ring"
cat >"$job/start.sh" <<EOF
#!/bin/sh
date +%s.%N >"$job/started-\$SLURM_JOB_ID"
$VMHPC mpirun ./ring --hello >/dev/null
EOF
chmod +x "$job/start.sh"

wait_idle_all() {
	for _ in $(seq 600); do
		[ "$(sinfo -h -N -o '%t' | grep -vc '^idle')" -eq 0 ] && return 0
		sleep 0.2
	done
	echo "nodes not idle: $(sinfo -N)" >&2
	return 1
}

one_start() { # N: seconds from submit to the script's start
	local n=$1 t0 j
	t0=$(date +%s.%N)
	j=$(cd "$job" && sbatch --parsable -N "$n" --vm-image="$REF" --vms-per-node=1 -o /dev/null "$job/start.sh") ||
		{ echo "sbatch -N $n failed" >&2; return 1; }
	[ "$(slurm_wait "$j" 900)" = COMPLETED ] || { echo "job $j: $(slurm_job_field "$j" AdminComment)" >&2; return 1; }
	wait_idle_all
	python3 -c 'import sys; print("%.1f" % (float(open(sys.argv[1]).read()) - float(sys.argv[2])))' "$job/started-$j" "$t0"
}

# One node's own boot of 1 VM, the reference.
[ -n "${THROUGHPUT_ONLY:-}" ] || run_boot=$(cd "$job" && "$VMHPC" run --vms 1 -n 1 --json --image "tiny-mpi:$ver" -- ./ring --hello 2>&1 >/dev/null |
	python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"): print("%.1f" % json.loads(l)["boot_s"])')

[ -n "${THROUGHPUT_ONLY:-}" ] || echo
[ -n "${THROUGHPUT_ONLY:-}" ] || echo "| nodes x 1 VM | uncached: submit to start | cached: submit to start | one node's vmhpc run boot |"
[ -n "${THROUGHPUT_ONLY:-}" ] || echo "|---|---|---|---|"
for n in $NODES_LIST; do
	cluster_reset_caches >/dev/null
	unc=$(one_start "$n")
	cac=$(one_start "$n")
	echo "| $n | $unc s | $cac s | $run_boot s |"
done

throughput() { # the seconds JOBS bare jobs take, submit of the first to the end of the last
	local t0 i last
	t0=$(date +%s.%N)
	for i in $(seq "$JOBS"); do last=$(cd "$job" && sbatch --parsable -N 1 -o /dev/null --wrap true); done
	slurm_wait "$last" 600 >/dev/null
	while squeue -h | grep -q .; do sleep 0.1; done
	python3 -c 'import sys,time; print("%.1f" % (time.time() - float(sys.argv[1])))' "$t0"
}
with=$(throughput)
: >"$CL_DIR/plugstack.conf"
scontrol reconfigure
sleep 2
without=$(throughput)
echo
echo "| $JOBS bare jobs (sbatch --wrap true) | seconds | jobs/s |"
echo "|---|---|---|"
python3 -c 'import sys; n=int(sys.argv[1]); w=float(sys.argv[2]); wo=float(sys.argv[3])
print("| plugin loaded | %.1f | %.2f |" % (w, n / w)); print("| no plugin | %.1f | %.2f |" % (wo, n / wo))
print("| ratio (with / without, jobs/s) | | %.2f |" % (wo / w))' "$JOBS" "$with" "$without"
