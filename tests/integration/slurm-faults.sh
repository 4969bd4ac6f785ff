#!/usr/bin/env bash
# The Slurm tier's fault paths on a real Slurm 22.05 of 2 nodes (tests/cluster/slurm.sh),
# and the goal "0 orphans after 20 jobs with injected faults":
#  1. the registry down while the image is not cached: a clear AdminComment, nothing left,
#     no node drained;
#  2. the node daemon killed while a job's VMs run: the epilog still cleans everything up;
#  3. 20 jobs at once, mixing: plain successes (1 and 2 nodes, one through salloc + srun),
#     scancel during the boot, the supervisor SIGKILLed (during the boot and while the job
#     runs), a prolog fault (an unknown image), bad input at the node, and the time limit
#     (Slurm kills the job: TIMEOUT, Reason=TimeLimit). Each ends as its kind must, and then
#     the orphans are counted one by one: processes of the jobs (in every node namespace and
#     QEMU/virtiofsd anywhere), links other than lo and eth0 in every node namespace (taps,
#     bridges, VXLAN), network namespaces, /dev/shm/vmhpc-*, files and sockets under the
#     runtime and state folders, drained nodes. Any one fails the test.
. "$(dirname "$0")/lib.sh"
set -e

. "$(dirname "$0")/slurm-lib.sh"
# One core per node: at most one VM boots per node at a time, so that on a loaded 2-core
# machine under TCG each boot stays well within the prolog's limits (BatchStartTimeout).
SL_CPUS=1
SL_BOOT_TIMEOUT_MS=240000
slurm_test_start 2
N_JOBS=20
shm_before=$(ls /dev/shm 2>/dev/null | grep '^vmhpc-' || true)

nodes_idle() { # SECONDS
	local i
	for i in $(seq $((${1:-120} * 5))); do
		[ "$(sinfo -h -N -o '%t' | grep -c '^idle')" -eq "$SL_N" ] && return 0
		sleep 0.2
	done
	fail "nodes not idle: $(sinfo -N -o '%N %t %E')"
}

# Every orphan of the jobs on this cluster, one per line, "KIND: what" (empty: none).
orphans() {
	local i ns keep pid cmd
	for i in $(seq 1 "$SL_N"); do
		ns="vh$CL_ID-n$i"
		# Processes in the node's namespace other than its slurmd and its node daemon.
		keep=" $(cat "$CL_DIR/slurmd-n$i.pid") $(cat "$CL_DIR/n$i.pid") "
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			case "$keep" in *" $pid "*) continue ;; esac
			cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120) || continue
			[ -n "$cmd" ] && echo "process in $ns: $pid $cmd"
		done
		# Links: a job's bridge, taps and VXLAN live in the job's own namespace; none may
		# be left in the node's.
		ip -n "$ns" -br link | awk -v ns="$ns" '$1 != "lo" && $1 !~ /^eth0@/ { print "link in " ns ": " $1 }'
	done
	# QEMU and the supervisors anywhere (a sandboxed one may be in no node namespace);
	# virtiofsd by its socket in a job folder of this cluster.
	pgrep -a -f -- "$CL_DIR/(run|slurm)-n" | sed 's/^/process: /' || true
	ss -xapn 2>/dev/null | grep -F "$CL_DIR/run-n" | grep -o 'users:.*' | sed 's/^/socket user: /' || true
	# Network namespaces: named ones beyond the cluster's own; a job's own namespace is
	# unnamed and goes with its last process (counted above).
	ip netns list | awk '{print $1}' | grep "^vh$CL_ID-" | grep -vE "^vh$CL_ID-(front|n[0-9]+)$" | sed 's/^/netns: /' || true
	comm -13 <(echo "$shm_before" | sort) <(ls /dev/shm | grep '^vmhpc-' | sort) | sed 's/^/shm: /' || true
	# Files and sockets: the runtime folders keep only their empty jobs/; the state
	# folders nothing.
	find "$CL_DIR"/run-n* -mindepth 1 ! -path "$CL_DIR/run-n*/jobs" -printf 'file: %p\n' 2>/dev/null || true
	find "$CL_DIR"/slurm-n* -mindepth 1 -printf 'file: %p\n' 2>/dev/null || true
	sinfo -h -N -o '%N %t' | awk '$2 != "idle" { print "node: " $1 " " $2 }'
}

no_orphans() { # WHAT
	local left
	sleep 0.5
	left=$(orphans)
	[ -z "$left" ] || fail "$1 left $(echo "$left" | wc -l) orphan(s):
$left"
}

wait_supervisor() { # JOB: prints the pid of its supervisor on n1 once it exists
	local i pid
	for i in $(seq 12000); do
		pid=$(cat "$CL_DIR/slurm-n1/$1/pid" 2>/dev/null || true)
		[ -n "$pid" ] && { echo "$pid"; return 0; }
		sleep 0.1
	done
	return 1
}

cat >"$job/ring.sh" <<EOF
#!/bin/sh
$VMHPC mpirun ./ring
EOF
cat >"$job/long.sh" <<EOF
#!/bin/sh
$VMHPC mpirun ./ring && echo RAN && sleep 600
EOF
chmod +x "$job/ring.sh" "$job/long.sh"
chown "$USER_UID:$USER_GID" "$job/ring.sh" "$job/long.sh"

# 1. The registry down, the image never pulled here.
cluster_push "$(versions | grep '^tiny-mpi:' | sort -t: -k2 -n | tail -1)" tiny-mpi:uncached
cluster_registry_stop
j=$(as_user sbatch --parsable -N 1 --vm-image="$CL_REGISTRY/vmhpc/tiny-mpi:uncached" -o "$job/reg-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 300)
comment=$(slurm_job_field "$j" AdminComment)
cluster_registry_start || fail "the registry did not start again"
case "$state:$comment" in
CANCELLED:*vmhpc:\ n1:*tiny-mpi:uncached*) ;;
*) fail "registry down: $state, AdminComment '$comment'" ;;
esac
nodes_idle
no_orphans "the registry down"
ok "registry down, image not cached: $state, AdminComment: $(echo "$comment" | cut -c1-140); nothing left, no node drained"

# 2. The node daemon killed while the job's VMs run: the epilog cannot release the image's
# pin (logged), but stops the VMs and removes everything; the node stays in service.
j=$(as_user sbatch --parsable -N 1 -w n1 -c 1 --vm-image="$REF" -o "$job/dk-%j.out" "$job/long.sh")
for _ in $(seq 1800); do grep -q RAN "$job/dk-$j.out" 2>/dev/null && break; sleep 0.2; done
grep -q RAN "$job/dk-$j.out" || fail "job $j did not run: $(slurm_job_field "$j" JobState) $(slurm_job_field "$j" AdminComment) $(cat "$job/dk-$j.out" 2>&1)"
cluster_node_kill n1
scancel "$j"
[ "$(slurm_wait "$j" 120)" = CANCELLED ] || fail "job $j: $(slurm_job_field "$j" JobState)"
nodes_idle
cluster_node_start n1 || fail "the node daemon of n1 did not start again"
# The pin the daemon reloads is noted for the next epilog on n1 to release (checked after
# the 20 jobs below); nothing else may be left.
unreleased="$CL_DIR/slurm-n1/unreleased/$j"
[ -f "$unreleased" ] || fail "the failed release of job $j was not noted: $(find "$CL_DIR/slurm-n1")"
left=$(orphans) # not in a pipeline: the filter's own arguments name $CL_DIR
left=$(echo "$left" | grep -vxF -e "file: $CL_DIR/slurm-n1/unreleased" -e "file: $unreleased" || true)
[ -z "$left" ] || fail "the node daemon killed during a job left: $left"
ok "node daemon killed during job $j: the epilog stopped the VMs and removed everything, n1 idle, the pin noted for later"

# 3. 20 jobs at once with injected faults. kind -> the state it must end in.
declare -A kind expect
submit() { # KIND EXPECTED-STATE SBATCH-ARGS...: the job's id in $j
	local k=$1 e=$2
	shift 2
	j=$(as_user sbatch --parsable -o "$job/mix-%j.out" "$@")
	kind[$j]=$k
	expect[$j]=$e
}
injectors=()
t0=$(date +%s.%N)
for r in 1 2 3 4 5; do submit ok COMPLETED -N 1 -c 1 --vm-image="$REF" "$job/ring.sh"; done
for r in 1 2; do submit ok-2nodes COMPLETED -N 2 -c 1 --vm-image="$REF" "$job/ring.sh"; done
for r in 1 2 3; do
	submit cancel-boot CANCELLED -N 1 -w n1 -c 1 --vm-image="$REF" "$job/long.sh"
	(pid=$(wait_supervisor "$j") && sleep "$r" && scancel "$j") &
	injectors+=($!)
done
# Killed during the boot: the supervisor is stopped as soon as it exists, so that it cannot
# report its VMs ready while the test sleeps (a boot of our kernel takes about as long as
# the sleep); then killed. Should it have made its socket before it was stopped, the boot
# was over: that job is marked late and its mpirun must fail instead (checked below).
for r in 1 2; do
	submit kill-boot CANCELLED -N 1 -w n1 -c 1 --vm-image="$REF" "$job/long.sh"
	(pid=$(wait_supervisor "$j") && kill -STOP "$pid" &&
		{ [ ! -e "$CL_DIR/slurm-n1/$j/ctl.sock" ] || touch "$WORK/late-$j"; } &&
		sleep "$r" && kill -9 "$pid") &
	injectors+=($!)
done
# Killed once the job runs: the batch script's mpirun fails, or the script sleeps on; the
# test cancels it then, as a user would.
submit kill-run CANCELLED -N 1 -w n1 -c 1 --vm-image="$REF" "$job/long.sh"
(for _ in $(seq 7500); do grep -q RAN "$job/mix-$j.out" 2>/dev/null && break; sleep 0.2; done
	kill -9 "$(cat "$CL_DIR/slurm-n1/$j/pid")" && sleep 2 && scancel "$j") &
injectors+=($!)
for r in 1 2; do submit unknown-image CANCELLED -N 1 --vm-image="$CL_REGISTRY/vmhpc/nosuch:$r" "$job/ring.sh"; done
for r in 1 2; do submit too-many-vcpus CANCELLED -N 1 -c 1 --vm-image="$REF" --vms-per-node=2 --vm-vcpus=1 "$job/ring.sh"; done
for r in 1 2; do submit time-limit TIMEOUT -N 1 -c 1 --time=1 --vm-image="$REF" "$job/long.sh"; done
# Through salloc: the allocation's command runs on the submit host, where `vmhpc mpirun`
# is told to go through srun; through srun it reaches the job's node, where the plugin tells
# it the supervisor's socket.
(cd "$job" && setpriv --reuid="$USER_UID" --regid="$USER_GID" --clear-groups \
	salloc -N 1 -c 1 --vm-image="$REF" sh -c "'$VMHPC' mpirun ./ring 2>&1 | sed 's/^/direct: /'; srun -N 1 -n 1 '$VMHPC' mpirun ./ring") >"$WORK/salloc.out" 2>&1 &
salloc_pid=$!
for _ in $(seq 100); do
	sa=$(squeue -h -o %i | grep -vxF -f <(printf '%s\n' "${!kind[@]}") | head -1 || true)
	[ -n "$sa" ] && break
	sleep 0.1
done
[ -n "${sa:-}" ] || fail "no job for salloc: $(squeue) $(cat "$WORK/salloc.out")"
kind[$sa]=salloc-srun
expect[$sa]=COMPLETED
[ "${#kind[@]}" -eq "$N_JOBS" ] || fail "submitted ${#kind[@]} jobs, not $N_JOBS"

for j in "${!kind[@]}"; do
	state=$(slurm_wait "$j" 1500) || fail "job $j (${kind[$j]}) did not end: $state"
	if [ "${kind[$j]}" = kill-boot ] && [ -e "$WORK/late-$j" ]; then
		# Its VMs were ready before the kill: the batch script's mpirun finds no supervisor.
		[ "$state" = FAILED ] && grep -q "not running on this node" "$job/mix-$j.out" ||
			fail "job $j (kill-boot, killed after the boot): $state; $(cat "$job/mix-$j.out" 2>&1 | tail -5)"
		kind[$j]=kill-boot-late
		continue
	fi
	if [ "$state" != "${expect[$j]}" ]; then
		fail "job $j (${kind[$j]}): $state, expected ${expect[$j]}; $(slurm_job_field "$j" AdminComment); $(cat "$job/mix-$j.out" 2>&1 | tail -5)"
	fi
	case "${kind[$j]}" in
	ok | ok-2nodes) grep -q VERIFIED "$job/mix-$j.out" || fail "job $j (${kind[$j]}): $(cat "$job/mix-$j.out")" ;;
	unknown-image | too-many-vcpus | kill-boot)
		case "$(slurm_job_field "$j" AdminComment)" in
		vmhpc:*) ;;
		*) fail "job $j (${kind[$j]}): no reason in AdminComment" ;;
		esac
		;;
	time-limit)
		[ "$(slurm_job_field "$j" Reason)" = TimeLimit ] || fail "job $j: Reason=$(slurm_job_field "$j" Reason)"
		grep -q RAN "$job/mix-$j.out" || fail "time-limit job $j did not run before its limit: $(cat "$job/mix-$j.out")"
		;;
	esac
done
for p in "${injectors[@]}"; do wait "$p" || true; done
wait "$salloc_pid" || fail "salloc ... srun vmhpc mpirun: $(cat "$WORK/salloc.out")"
grep -q VERIFIED "$WORK/salloc.out" || fail "salloc: $(cat "$WORK/salloc.out")"
grep -q "^direct: .*outside its steps (in salloc's shell: .srun" "$WORK/salloc.out" || fail "salloc's own shell: $(cat "$WORK/salloc.out")"
t1=$(date +%s.%N)
nodes_idle 300
summary=$(for j in "${!kind[@]}"; do echo "${kind[$j]}"; done | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}')
no_orphans "$N_JOBS jobs with injected faults"
ok "$N_JOBS jobs ($summary) each ended as expected in $(printf '%.0f' "$(echo "$t1 - $t0" | bc)") s; 0 orphans (processes, links, netns, /dev/shm, files, sockets, drained nodes) on $SL_N nodes (load $(cut -d' ' -f1-3 /proc/loadavg))"

# The node daemon's metrics hold the jobs' timings (given by the epilogs with the release),
# and no pin is left: the one of the job whose daemon was killed went with a later epilog.
m=$("$VMHPC" node metrics --socket "$CL_DIR/n1.sock")
echo "$m" | grep -qx 'vmhpc_node_cache_images_pinned 0' || fail "a pin is left on n1: $(echo "$m" | grep pinned)"
jobs=$(echo "$m" | awk '$1 == "vmhpc_node_jobs_total" {print $2}')
[ "${jobs:-0}" -ge 3 ] || fail "vmhpc_node_jobs_total ${jobs:-missing}: $m"
for p in distribution boot run shutdown; do
	echo "$m" | grep -qE "^vmhpc_node_job_seconds_total\{phase=\"$p\"\} [0-9.]+$" || fail "no $p seconds: $m"
done
boot=$(echo "$m" | awk -F'[ ]' '/^vmhpc_node_job_seconds_total\{phase="boot"\}/ {print $2}')
[ "$(echo "$boot > 0" | bc)" = 1 ] || fail "boot seconds $boot"
echo "$m" | grep -qE '^vmhpc_node_last_job_host_pss_bytes\{job="[0-9]+"\} [1-9]' || fail "no host memory: $m"
echo "$m" | grep -qE '^vmhpc_node_last_job_guest_used_bytes\{job="[0-9]+"\} [1-9]' || fail "no guest memory: $m"
ok "n1's metrics: $jobs jobs' timings, boot $boot s in all; $(echo "$m" | grep '^vmhpc_node_last_job_host_pss_bytes' | cut -c1-80)"
CHECKS_DONE=1
finish
