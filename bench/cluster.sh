#!/usr/bin/env bash
# The Slurm tier's costs on a real Slurm 22.05 test cluster (tests/cluster/slurm.sh):
#  1. per-job start overhead, submit to the batch script's start (the VMs are ready then),
#     for NODES_LIST nodes x 1 VM, with the image uncached (every node cache emptied) and
#     cached (the median of REPEAT jobs, default 3), next to one node's `vmhpc run --vms 1`
#     boot (median of REPEAT) and to Slurm's own submit-to-start of a job without VMs on
#     the same nodes (median of REPEAT): what the VMs add is the difference. The test
#     cluster's nodes share this machine's cores (a real cluster's do not): N boots at once
#     take N x one boot's CPU on `nproc` cores. So each row also has one node's `vmhpc run
#     --vms N` boot (median of REPEAT): N guests booting at once on the same cores, the
#     same CPU as N nodes x 1 VM here; the start over it is what the tier itself adds;
#  2. Slurm's throughput of bare jobs (`sbatch --wrap true`) with the plugin loaded and
#     without it (plugstack.conf emptied), REPEAT rounds of each, alternating, each after an
#     `scontrol reconfigure`; medians.
#
#   sudo bench/cluster.sh            # NODES_LIST="1 2 4" JOBS=200 by default
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
JOBS=${JOBS:-200} # a round of 40 lasts ~1 s, no longer than the sbatch loop: noise
REPEAT=${REPEAT:-3}
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
cat >"$job/bare.sh" <<EOF
#!/bin/sh
date +%s.%N >"$job/started-\$SLURM_JOB_ID"
EOF
chmod +x "$job/start.sh" "$job/bare.sh"
median() { sort -n | awk '{v[NR] = $1} END {printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

wait_idle_all() {
	for _ in $(seq 600); do
		[ "$(sinfo -h -N -o '%t' | grep -vc '^idle')" -eq 0 ] && return 0
		sleep 0.2
	done
	echo "nodes not idle: $(sinfo -N)" >&2
	return 1
}

one_start() { # N [bare]: seconds from submit to the script's start
	local n=$1 t0 j
	t0=$(date +%s.%N)
	if [ "${2:-}" = bare ]; then
		j=$(cd "$job" && sbatch --parsable -N "$n" -o /dev/null "$job/bare.sh")
	else
		j=$(cd "$job" && sbatch --parsable -N "$n" --vm-image="$REF" --vms-per-node=1 -o /dev/null "$job/start.sh")
	fi || { echo "sbatch -N $n failed" >&2; return 1; }
	[ "$(slurm_wait "$j" 900)" = COMPLETED ] || { echo "job $j: $(slurm_job_field "$j" AdminComment)" >&2; return 1; }
	wait_idle_all
	python3 -c 'import sys; print("%.1f" % (float(open(sys.argv[1]).read()) - float(sys.argv[2])))' "$job/started-$j" "$t0"
}

# One node's own boot of 1 VM, the reference (median of REPEAT), and the CPU that one such
# job takes (QEMU, virtiofsd and vmhpc: boot, run and shutdown; the boot is most of it).
run_one() { # VMS: one `vmhpc run --vms VMS` of the ring; prints "BOOT_S CPU_S"
	cd "$job" && python3 -c 'import json, resource, subprocess, sys
# --json writes its record to stderr, after the progress lines.
out = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
r = resource.getrusage(resource.RUSAGE_CHILDREN)
boot = [json.loads(l)["boot_s"] for l in out.splitlines() if l.startswith("{")][0]
print("%.2f %.2f" % (boot, r.ru_utime + r.ru_stime))' "$VMHPC" run --vms "$1" -n "$1" --oversubscribe --json --image "tiny-mpi:$ver" -- ./ring --hello
}
boot_s=()
cpu_s=()
for _ in $([ -n "${THROUGHPUT_ONLY:-}" ] || seq "$REPEAT"); do
	read -r b c < <(run_one 1)
	boot_s+=("$b")
	cpu_s+=("$c")
done
if [ -z "${THROUGHPUT_ONLY:-}" ]; then
	run_boot=$(printf '%s\n' "${boot_s[@]}" | median)
	run_cpu=$(printf '%s\n' "${cpu_s[@]}" | median)
	cores=$(nproc)
	echo
	echo "one node's vmhpc run --vms 1: boot $run_boot s, CPU of the whole job $run_cpu s (medians of $REPEAT); $cores cores here"
	echo
	echo "| nodes x 1 VM | uncached: submit to start | cached: submit to start | Slurm alone: a job without VMs | cached - Slurm alone | one node's vmhpc run boot | cached / boot | (cached - Slurm alone) / boot | one node booting N VMs at once (same CPU) | cached / that |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
fi
for n in $NODES_LIST; do
	cluster_reset_caches >/dev/null
	unc=$(one_start "$n")
	cac=$(for _ in $(seq "$REPEAT"); do one_start "$n"; done | median)
	bare=$(for _ in $(seq "$REPEAT"); do one_start "$n" bare; done | median)
	same_cpu=$(for _ in $(seq "$REPEAT"); do run_one "$n" | cut -d' ' -f1; done | median)
	python3 -c 'import sys
n, unc, cac, bare, boot, same = sys.argv[1], *map(float, sys.argv[2:])
print("| %s | %.1f s | %.1f s | %.1f s | %.1f s | %.1f s | %.2fx | %.2fx | %.1f s | %.2fx |" % (n, unc, cac, bare, cac - bare, boot, cac / boot, (cac - bare) / boot, same, cac / same))' \
		"$n" "$unc" "$cac" "$bare" "$run_boot" "$same_cpu"
done

throughput() { # the seconds JOBS bare jobs take, submit of the first to the end of the last
	local t0 i last
	t0=$(date +%s.%N)
	for i in $(seq "$JOBS"); do last=$(cd "$job" && sbatch --parsable -N 1 -o /dev/null --wrap true); done
	slurm_wait "$last" 600 >/dev/null
	while squeue -h | grep -q .; do sleep 0.1; done
	python3 -c 'import sys,time; print("%.1f" % (time.time() - float(sys.argv[1])))' "$t0"
}
plugstack=$(cat "$CL_DIR/plugstack.conf")
with_s=()
without_s=()
for _ in $(seq "$REPEAT"); do
	echo "$plugstack" >"$CL_DIR/plugstack.conf"
	scontrol reconfigure
	sleep 2
	with_s+=("$(throughput)")
	: >"$CL_DIR/plugstack.conf"
	scontrol reconfigure
	sleep 2
	without_s+=("$(throughput)")
done
with=$(printf '%s\n' "${with_s[@]}" | median)
without=$(printf '%s\n' "${without_s[@]}" | median)
echo
echo "| $JOBS bare jobs (sbatch --wrap true), median of $REPEAT alternating rounds | seconds | jobs/s |"
echo "|---|---|---|"
python3 -c 'import sys; n=int(sys.argv[1]); w=float(sys.argv[2]); wo=float(sys.argv[3])
print("| plugin loaded | %.1f | %.2f |" % (w, n / w)); print("| no plugin | %.1f | %.2f |" % (wo, n / wo))
print("| ratio (with / without, jobs/s) | | %.2f |" % (wo / w))' "$JOBS" "$with" "$without"
