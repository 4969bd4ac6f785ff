#!/usr/bin/env bash
# Who may boot an image in the Slurm tier (docs/slurm.md): a registry with Bearer tokens and
# per-user rights (tests/cluster/cluster.sh CL_REGISTRY_AUTH=token), the node daemons (and
# slurmd's environment) holding credentials that read everything. The prolog asks the
# registry as the job's user, with the user's own ~/.docker/config.json:
#  1. a user allowed to read the image: the job runs it (mpi-ring VERIFIED);
#  2. the same image, now cached on the node, for a user whose credentials have no right to
#     its repository: cancelled before any VM, "may not read" in AdminComment;
#  3. no credentials at all, and 4. a wrong password: the same;
#  5. nothing left, no node drained; the node daemon's own credentials, which slurmd's
#     environment holds too, never answered for the user (2-4 would have run);
#  6. an image in a registry of the user's own: the nodes pull from their --registry list
#     only, so the job is cancelled and the node credentials never reach it.
. "$(dirname "$0")/lib.sh"
set -e

command -v useradd >/dev/null || fail "no useradd (Debian's passwd package)"
command -v openssl >/dev/null || fail "no openssl"
. "$(dirname "$0")/slurm-lib.sh"
export CL_REGISTRY_AUTH=token
# alice may read vmhpc/*; bob only bob/*.
export CL_TOKEN_USERS="alice:alice-pw=vmhpc/ bob:bob-pw=bob/"
slurm_test_start 1

# The job's user: one with a home, where its registry credentials live.
tuser="vmhpct$$"
useradd --no-create-home --home-dir "$WORK/home" --shell /bin/sh --user-group "$tuser"
on_exit "userdel $tuser"
mkdir -p "$WORK/home/.docker"
USER_UID=$(id -u "$tuser")
USER_GID=$(id -g "$tuser")
chown -R "$USER_UID:$USER_GID" "$WORK/home" "$job"
chmod 0700 "$WORK/home"
creds() { # USER:PASSWORD, or nothing: the user's ~/.docker/config.json
	if [ -n "${1:-}" ]; then
		printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$CL_REGISTRY" "$(printf %s "$1" | base64 -w0)" \
			>"$WORK/home/.docker/config.json"
		chown "$USER_UID:$USER_GID" "$WORK/home/.docker/config.json"
		chmod 0600 "$WORK/home/.docker/config.json"
	else
		rm -f "$WORK/home/.docker/config.json"
	fi
}
cat >"$job/ring.sh" <<EOF
#!/bin/sh
$VMHPC mpirun ./ring
EOF
chmod +x "$job/ring.sh"
chown "$USER_UID:$USER_GID" "$job/ring.sh"
[ -n "${VMHPC_REGISTRY_AUTH:-}" ] || fail "the cluster's node credentials are not in the environment"

nothing_left() { # WHAT
	local left
	sleep 0.5
	left=$( (pgrep -a -f "qemu-system-x86_64 .*$CL_DIR/run-n" || true
		ls "$CL_DIR"/run-n*/jobs 2>/dev/null | grep -v ':$' | grep . || true
		ls "$CL_DIR"/slurm-n* 2>/dev/null | grep -v ':$' | grep . || true) | head -5)
	[ -z "$left" ] || fail "$1 left: $left"
	case "$(slurm_node_state n1)" in
	idle | completing) ;;
	*) fail "$1: n1 is $(slurm_node_state n1): $(sinfo -R 2>&1)" ;;
	esac
}

# 1. Allowed.
creds alice:alice-pw
j=$(as_user sbatch --parsable -N 1 --vm-image="$REF" -o "$job/ok-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 300)
[ "$state" = COMPLETED ] && grep -q VERIFIED "$job/ok-$j.out" ||
	fail "alice's job $j: $state; $(slurm_job_field "$j" AdminComment); $(cat "$job/ok-$j.out" 2>&1 | tail -5)"
nothing_left "an allowed job"
ok "a user the registry lets read $REF runs it (job $j VERIFIED)"

# 2-4. Refused, though n1 now has the image in its cache.
refused() { # LABEL WORDS
	local label=$1 words=$2 j state comment
	j=$(as_user sbatch --parsable -N 1 --vm-image="$REF" -o "$job/no-%j.out" "$job/ring.sh")
	state=$(slurm_wait "$j" 300)
	comment=$(slurm_job_field "$j" AdminComment)
	case "$state:$comment" in
	CANCELLED:*"vmhpc: n1: uid $USER_UID may not read image $REF"*"$words"*) ;;
	*) fail "$label: job $j $state, AdminComment '$comment'; $(cat "$job/no-$j.out" 2>&1 | tail -3)" ;;
	esac
	grep -q VERIFIED "$job/no-$j.out" 2>/dev/null && fail "$label: the job ran"
	nothing_left "$label"
	ok "$label: job $j $state before any VM booted: $(echo "$comment" | cut -c1-160)"
}
creds bob:bob-pw
refused "credentials without the right to the repository" "refused the credentials from"
creds
refused "no credentials" "wants credentials"
creds alice:wrong
refused "a wrong password" "refused the credentials from"

# And allowed again: a refusal leaves nothing that gets in a later job's way.
creds alice:alice-pw
j=$(as_user sbatch --parsable -N 1 --vm-image="$REF" -o "$job/ok-%j.out" "$job/ring.sh")
[ "$(slurm_wait "$j" 300)" = COMPLETED ] || fail "alice's second job $j: $(slurm_job_field "$j" AdminComment)"
nothing_left "a second allowed job"
ok "alice again after the refusals: job $j COMPLETED; n1 not drained, nothing left"

# 6. A registry of the user's own (a lure that says yes to the user's question and answers
# everything else with a Basic challenge): the prolog's check passes, but the node daemons
# pull from their --registry list only: the job is cancelled, and the node credentials
# never reach the lure.
cluster_lure_start || fail "the lure did not start"
j=$(as_user sbatch --parsable -N 1 --vm-image="$LURE/vmhpc/app:1" -o "$job/lure-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 300)
comment=$(slurm_job_field "$j" AdminComment)
case "$state:$comment" in
CANCELLED:"vmhpc: n1: image $LURE/vmhpc/app:1: registry $LURE is not one this node pulls from"*) ;;
*) fail "a job naming the user's registry: $j $state, AdminComment '$comment'" ;;
esac
grep -q "^HEAD /v2/vmhpc/app/manifests/1 AUTH=-" "$LURE_LOG" ||
	fail "the prolog did not ask the lure as the user: $(cat "$LURE_LOG")"
grep -v "AUTH=-$" "$LURE_LOG" && fail "credentials reached the user's registry"
nothing_left "a job naming the user's registry"
ok "an image in the user's own registry: the user's check passed, the node refused it (job $j $state); no credentials reached it"
CHECKS_DONE=1
finish
