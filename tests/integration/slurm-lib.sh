# The start that tests/integration/slurm-*.sh share (sourced after lib.sh): the tools
# checked, tiny-mpi built, a Slurm cluster of N nodes up (tests/cluster/slurm.sh) with the
# image pushed as $REF, and a job folder $job owned by a plain user (nobody), as a user's
# would be, with mpi-ring in it as ./ring; as_user runs a command there as that user.
# On failure, the nodes' last log lines are shown before the teardown.

slurm_test_start() { # N
	local n=$1 ring
	[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (namespaces, slurmd)"; exit 77; }
	for t in slurmctld slurmd sbatch munged docker-registry nsenter; do
		command -v "$t" >/dev/null || { echo "SKIP: $t is not installed (scripts/install-deps.sh)"; exit 77; }
	done
	: "${VMHPC_SPANK:=$VMHPC_BUILD_ROOT/vmhpc.so}"
	[ -f "$VMHPC_SPANK" ] || fail "no SPANK plugin $VMHPC_SPANK: build with libslurm-dev installed"
	ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
	[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"
	export VMHPC_SPANK

	export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
	"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
	. "$VMHPC_SOURCE_ROOT/tests/cluster/slurm.sh"
	exec 9>&2 # cleanups run with their output dropped; this one before the teardown
	on_exit '[ "${CHECKS_DONE:-}" = 1 ] || tail -n 30 "$CL_DIR"/slurmd-n*.log "$CL_DIR"/slurmctld.log >&9'
	on_exit slurm_down
	slurm_up "$n"
	cluster_push "$(versions | grep '^tiny-mpi:' | sort -t: -k2 -n | tail -1)" tiny-mpi:1
	REF="$CL_REGISTRY/vmhpc/tiny-mpi:1"
	ok "Slurm cluster of $n node(s) up ($CL_DIR), tiny-mpi pushed as $REF"

	USER_UID=$(id -u nobody)
	USER_GID=$(id -g nobody)
	job="$WORK/job"
	mkdir -p "$job"
	chmod 0755 "$WORK"
	cp "$ring" "$job/ring"
	chown -R "$USER_UID:$USER_GID" "$job"
}

as_user() { (cd "$job" && setpriv --reuid="$USER_UID" --regid="$USER_GID" --clear-groups "$@"); }
