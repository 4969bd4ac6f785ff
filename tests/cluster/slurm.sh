#!/usr/bin/env bash
# A real Slurm 22.05 on the test cluster of tests/cluster/cluster.sh: its namespaces, bridge,
# registry, munged and one `vmhpc node` per node, plus slurmctld in the host's namespace and
# one slurmd per node namespace (each in a UTS namespace of its own, named as its node), with
# the vmhpc SPANK plugin loaded from plugstack.conf. Config, state, spool and logs live in
# the cluster's temp folder; the controller's port is derived from $$ so that parallel runs
# never collide. slurm_down (called by cluster_down's EXIT trap through slurm_up's caller)
# stops everything and removes what jobs left.
#
# Sourced by tests/integration/slurm-*.sh:
#   . tests/cluster/slurm.sh
#   slurm_up 3 [PLUGIN.so]   # n1..n3; plugstack.conf loads PLUGIN (default $VMHPC_SPANK)
#   slurm_sbatch ARGS...     # prints the job id
#   slurm_wait JOB [SECONDS] # until the job has left the queue; prints its final state
#   slurm_node_state n1      # e.g. "idle", "drained"
# Needs root, slurm-wlm (slurmctld, slurmd, the clients), and what cluster.sh needs.

. "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"


SL_PORT=$((6900 + ($$ % 1000) * 2)) # slurmctld; slurmd uses SL_PORT+1 in every node namespace
SL_N=0
SL_CTLD_PID=""
SL_HOST=$(hostname -s)
export SLURM_CONF=""

slurm_down() {
	local i pid
	if [ -n "$SL_CTLD_PID" ]; then
		kill -9 "$SL_CTLD_PID" 2>/dev/null || true
		wait "$SL_CTLD_PID" 2>/dev/null || true
	fi
	for i in $(seq 1 "$SL_N"); do
		pid=$(cat "$CL_DIR/slurmd-n$i.pid" 2>/dev/null || true)
		[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
		# Every process of the node (slurmstepds, a job's supervisor) is in its namespace.
		for pid in $(ip netns pids "vh$CL_ID-n$i" 2>/dev/null || true); do
			kill -9 "$pid" 2>/dev/null || true
		done
	done
	# Whatever the plugin left (a failed test): per-node supervisors and their VMs, found by
	# the run folders of this cluster alone.
	if [ -n "$CL_DIR" ]; then
		for pid in $(pgrep -f -- "$CL_DIR/run-n" 2>/dev/null || true); do
			kill -9 "$pid" 2>/dev/null || true
		done
	fi
	SL_CTLD_PID=""
	SL_N=0
	cluster_down
}

slurm_up() { # N [PLUGIN]
	local n=$1 plugin=${2:-${VMHPC_SPANK:-}} i cpus mem
	cluster_up "$n" || return 1
	SL_N=$n
	export SLURM_CONF="$CL_DIR/slurm.conf"
	mkdir -p "$CL_DIR/state" "$CL_DIR/etc"
	cpus=${SL_CPUS:-$(nproc)} # SL_CPUS: fewer, to bound how many VMs boot at once
	mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))
	# The job key: every node derives each job's token from it (docs/slurm.md).
	head -c 32 /dev/urandom >"$CL_DIR/etc/job.key"
	chmod 600 "$CL_DIR/etc/job.key"
	cat >"$SLURM_CONF" <<CONF
ClusterName=vh$CL_ID
SlurmctldHost=$SL_HOST($CL_NET.254)
SlurmctldPort=$SL_PORT
SlurmdPort=$((SL_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$CL_DIR/munge.sock
CredType=cred/munge
StateSaveLocation=$CL_DIR/state
SlurmdSpoolDir=$CL_DIR/spool-%n
SlurmctldPidFile=$CL_DIR/slurmctld.pid
SlurmdPidFile=$CL_DIR/slurmd-%n.pid
SlurmctldLogFile=$CL_DIR/slurmctld.log
SlurmdLogFile=$CL_DIR/slurmd-%n.log
SlurmdDebug=info
SlurmctldDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Batch jobs scheduled when submitted, not up to 3 s later (Slurm's default batch_sched_delay;
# docs/slurm.md): the Slurm tier's start is measured from submit (bench/cluster.sh).
SchedulerParameters=batch_sched_delay=0
SwitchType=switch/none
ReturnToService=2
PrologFlags=Alloc
PlugStackConfig=$CL_DIR/plugstack.conf
BatchStartTimeout=300
PrologEpilogTimeout=600
MessageTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=DEFAULT CPUs=$cpus RealMemory=$mem State=UNKNOWN
CONF
	[ -z "${SL_EXTRA_CONF:-}" ] || echo "$SL_EXTRA_CONF" >>"$SLURM_CONF"
	for i in $(seq 1 "$n"); do
		echo "NodeName=n$i NodeAddr=$CL_NET.$((10 + i))" >>"$SLURM_CONF"
	done
	echo "PartitionName=main Nodes=n[1-$n] Default=YES MaxTime=INFINITE State=UP" >>"$SLURM_CONF"
	: >"$CL_DIR/plugstack.conf"
	if [ -n "$plugin" ]; then
		# %n: each node's own daemon socket and run folder (several nodes share this machine).
		echo "required $plugin vmhpc=$VMHPC socket=$CL_DIR/%n.sock run_dir=$CL_DIR/run-%n state_dir=$CL_DIR/slurm-%n key=$CL_DIR/etc/job.key peers=$CL_DIR/peers registry_insecure=1 boot_timeout_ms=${SL_BOOT_TIMEOUT_MS:-180000}" \
			>"$CL_DIR/plugstack.conf"
	fi
	slurmctld -D -i -f "$SLURM_CONF" >>"$CL_DIR/slurmctld.out" 2>&1 &
	SL_CTLD_PID=$!
	cluster_wait_port "" "$CL_NET.254" "$SL_PORT" || {
		cluster_log "slurmctld: $(tail -20 "$CL_DIR/slurmctld.log" "$CL_DIR/slurmctld.out" 2>&1)"
		return 1
	}
	for i in $(seq 1 "$n"); do
		mkdir -p "$CL_DIR/spool-n$i"
		# nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup file system
		# slurmd 22.05 looks for. The UTS namespace gives each slurmd its node's host name.
		nsenter --net="/run/netns/vh$CL_ID-n$i" unshare --uts sh -c \
			"hostname n$i; exec slurmd -D -N n$i -f '$SLURM_CONF'" >>"$CL_DIR/slurmd-n$i.out" 2>&1 &
		echo $! >"$CL_DIR/slurmd-n$i.pid"
	done
	for i in $(seq 300); do
		[ "$(sinfo -h -o '%t' -N 2>/dev/null | grep -c '^idle')" -eq "$n" ] && return 0
		sleep 0.2
	done
	cluster_log "nodes not idle: $(sinfo -N 2>&1); $(tail -5 "$CL_DIR"/slurmd-n*.log "$CL_DIR"/slurmd-n*.out 2>&1)"
	return 1
}

slurm_sbatch() { # ARGS...: the job id on stdout, sbatch's error on stderr
	sbatch --parsable "$@"
}

slurm_wait() { # JOB [SECONDS]: the job's final state
	local job=$1 t=${2:-300} i state
	for i in $(seq $((t * 5))); do
		state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
		case "$state" in
		COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
			echo "$state"
			return 0
			;;
		esac
		sleep 0.2
	done
	echo "TIMEOUT-WAITING($state)"
	return 1
}

slurm_job_field() { # JOB FIELD: a field first on its line (Comment, AdminComment) is the
	# rest of that line: it may hold blanks.
	scontrol show job "$1" | awk -v f="$2=" '{
		for (i = 1; i <= NF; i++) if (index($i, f) == 1) {
			if (i == 1) { sub(/^ *[^=]*=/, ""); print } else { sub(/^[^=]*=/, "", $i); print $i }
			exit
		} }'
}

slurm_node_state() { # NODE
	sinfo -h -N -n "$1" -o '%T' | head -1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -eu
	trap slurm_down EXIT
	trap 'exit 130' INT TERM
	slurm_up "${1:-3}" "${2:-}"
	echo "Slurm cluster of ${1:-3} nodes up: export SLURM_CONF=$SLURM_CONF"
	sinfo
	echo "Ctrl-C tears it down."
	while :; do sleep 3600 & wait $!; done
fi
