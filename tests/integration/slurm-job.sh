#!/usr/bin/env bash
# The Slurm tier end to end on a real Slurm 22.05 (tests/cluster/slurm.sh): slurmctld, one
# slurmd and one `vmhpc node` per node namespace, a registry, the vmhpc SPANK plugin.
#  1. a job without --vm-image runs untouched (no VMs, no vmhpc state, no variables);
#  2. sbatch --vm-image: the image reaches the node through its daemon, the prolog boots the
#     VMs, `vmhpc mpirun ./ring` in the batch script runs examples/mpi-ring.c across them
#     (VERIFIED, --label, the job folder shared and owned by the job's user, a plain user),
#     the timings file is in the job folder, and the epilog leaves nothing;
#  3. `vmhpc mpirun` outside a VM job, and a plain user refused on another's job;
#  4. scancel while the VMs boot leaves nothing, and the node is not drained;
#  5. prolog faults (an unknown image; the supervisor killed half-way through the boot):
#     a clear reason in the job's record, nothing left, no drained node;
#  6. bad input refused at submit (garbage values), and at the node (more VCPUs than the
#     job's cores there, more memory than the node has).
. "$(dirname "$0")/lib.sh"
set -e

. "$(dirname "$0")/slurm-lib.sh"
slurm_test_start 1

# nothing_left_slurm WHAT: no QEMU, supervisor, runtime job folder or state folder of a job
# on any node, and no node drained.
nothing_left_slurm() {
	local what=$1 left i
	sleep 0.5
	left=$( (pgrep -a -f "qemu-system-x86_64 .*$CL_DIR/run-n" || true
		ls "$CL_DIR"/run-n*/jobs 2>/dev/null | grep -v ':$' | grep . || true
		ls "$CL_DIR"/slurm-n* 2>/dev/null | grep -v ':$' | grep . || true) | head -5)
	[ -z "$left" ] || fail "$what left: $left"
	for i in $(seq 1 "$SL_N"); do
		case "$(slurm_node_state "n$i")" in
		idle | mixed | allocated | completing) ;;
		*) fail "$what: node n$i is $(slurm_node_state "n$i"): $(sinfo -R 2>&1)" ;;
		esac
	done
}

wait_idle() {
	local i
	for i in $(seq 100); do
		[ "$(slurm_node_state n1)" = idle ] && return 0
		sleep 0.2
	done
	fail "n1 is $(slurm_node_state n1), not idle: $(sinfo -R)"
}

# 1. A job without --vm-image: untouched.
cat >"$job/plain.sh" <<'EOF'
#!/bin/sh
echo "plain job on $(hostname) VMHPC_SLURM_JOB_DIR=${VMHPC_SLURM_JOB_DIR:-unset}"
EOF
chmod +x "$job/plain.sh"
j=$(as_user sbatch --parsable -N 1 -o "$job/plain-%j.out" "$job/plain.sh")
[ "$(slurm_wait "$j" 60)" = COMPLETED ] || fail "plain job: $(slurm_job_field "$j" JobState); $(cat "$job/plain-$j.out")"
grep -q "plain job on n1 VMHPC_SLURM_JOB_DIR=unset" "$job/plain-$j.out" || fail "plain job's output: $(cat "$job/plain-$j.out")"
[ -z "$(ls "$CL_DIR/slurm-n1" 2>/dev/null)" ] || fail "a plain job made vmhpc state: $(ls "$CL_DIR/slurm-n1")"
ok "a job without --vm-image runs untouched (no VMs, no state, no variables)"

# 2. MPI across the job's VMs.
cat >"$job/ring.sh" <<'EOF'
#!/bin/sh
vmhpc mpirun --label ./ring
EOF
sed -i "s|^vmhpc |$VMHPC |" "$job/ring.sh"
chmod +x "$job/ring.sh"
t0=$(date +%s.%N)
j=$(as_user sbatch --parsable -N 1 -c 2 --vm-image="$REF" --vms-per-node=2 --vm-vcpus=1 \
	--vm-mem=256M -o "$job/ring-%j.out" "$job/ring.sh")
state=$(slurm_wait "$j" 600)
t1=$(date +%s.%N)
wait_idle # the epilog has run: it writes the timings
[ "$state" = COMPLETED ] || fail "ring job $j: $state $(slurm_job_field "$j" AdminComment): $(cat "$job/ring-$j.out" 2>&1); $(tail -20 "$CL_DIR/slurm-n1/$j/supervisor.log" "$CL_DIR/slurmd-n1.log" 2>&1)"
grep -q "VERIFIED" "$job/ring-$j.out" || fail "ring not verified: $(cat "$job/ring-$j.out")"
grep -q '^\[0@vm0\]' "$job/ring-$j.out" || fail "--label did not prefix: $(cat "$job/ring-$j.out")"
grep -q 'ring of 2 ranks' "$job/ring-$j.out" || fail "not 2 ranks: $(cat "$job/ring-$j.out")"
grep -q "ranks=2 token=1 sum=3 VERIFIED" "$job/ring-result.txt" || fail "result file: $(cat "$job/ring-result.txt" 2>&1)"
[ "$(stat -c %u:%g "$job/ring-result.txt")" = "$USER_UID:$USER_GID" ] || fail "result file owned by $(stat -c %u:%g "$job/ring-result.txt")"
ok "sbatch --vm-image ... --vms-per-node=2: ring over 2 VMs VERIFIED, labelled, result owned by the user ($(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s submit to end)"
timings="$job/vmhpc-$j.n1.json"
[ -f "$timings" ] || fail "no timings file $timings: $(ls "$job")"
python3 - "$timings" <<'EOF' || fail "timings: $(cat "$timings")"
import json, sys
t = json.load(open(sys.argv[1]))
assert t["vms"] == 2 and len(t["vm"]) == 2, t
for k in ("distribution_s", "boot_s", "run_s", "shutdown_s"):
    assert t[k] > 0, k
assert t["vm"][0]["guest_used_kb"] > 0 and t["vm"][0]["host_pss_kb"] > 0, t
print("ok: distribution %.2f s (%s), boot %.2f s, run %.2f s, shutdown %.2f s" % (
    t["distribution_s"], t["distribution_source"], t["boot_s"], t["run_s"], t["shutdown_s"]))
EOF
[ "$(stat -c %u "$timings")" = "$USER_UID" ] || fail "timings file owned by $(stat -c %u "$timings")"
ok "per-job timings in the job folder: $(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print("distribution %.2f s, boot %.2f s, run %.2f s, shutdown %.2f s" % (t["distribution_s"], t["boot_s"], t["run_s"], t["shutdown_s"]))' "$timings")"
# The same timings in the node daemon's metrics: the epilog gave them with its release.
metrics=$("$VMHPC" node metrics --socket "$CL_DIR/n1.sock")
python3 - "$timings" "$j" "$metrics" <<'EOF' || fail "metrics against the timings file: $metrics"
import json, re, sys
t, job, m = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
def metric(name, labels):
    v = re.search(r"^%s\{%s\} (\S+)$" % (name, re.escape(labels)), m, re.M)
    assert v, (name, labels)
    return float(v.group(1))
for p in ("distribution", "boot", "run", "shutdown"):
    got = metric("vmhpc_node_last_job_seconds", 'job="%s",phase="%s"' % (job, p))
    assert abs(got - t[p + "_s"]) < 0.001, (p, got, t[p + "_s"])
    assert metric("vmhpc_node_job_seconds_total", 'phase="%s"' % p) >= got, p
guest = sum(vm["guest_used_kb"] for vm in t["vm"]) * 1024
assert metric("vmhpc_node_last_job_guest_used_bytes", 'job="%s"' % job) == guest
assert metric("vmhpc_node_last_job_host_pss_bytes", 'job="%s"' % job) == t["host_pss_total_kb"] * 1024
assert re.search(r"^vmhpc_node_jobs_total 1$", m, re.M), "jobs_total"
EOF
ok "n1's metrics: the job's phases and memory as in its timings file ($(echo "$metrics" | grep -c '^vmhpc_node_.*job') job series)"
nothing_left_slurm "the ring job"
ok "after the job: no QEMU, no supervisor, no runtime or state folder, node idle"

# 3. vmhpc mpirun outside a VM job, and in a job without --vm-image.
expect_fail "mpirun outside Slurm" "SLURM_JOB_ID is not set" env -u SLURM_JOB_ID "$VMHPC" mpirun ./ring
cat >"$job/novm.sh" <<EOF
#!/bin/sh
$VMHPC mpirun ./ring
EOF
chmod +x "$job/novm.sh"
j=$(as_user sbatch --parsable -N 1 -o "$job/novm-%j.out" "$job/novm.sh")
[ "$(slurm_wait "$j" 60)" = FAILED ] || fail "mpirun in a job without VMs did not fail: $(cat "$job/novm-$j.out")"
grep -q "submitted without --vm-image" "$job/novm-$j.out" || fail "novm: $(cat "$job/novm-$j.out")"
ok "vmhpc mpirun in a job without VMs: $(grep -o 'has no VMs.*' "$job/novm-$j.out" | cut -c1-80)"

# 4. scancel while the VMs boot.
cat >"$job/sleep.sh" <<EOF
#!/bin/sh
$VMHPC mpirun ./ring
EOF
chmod +x "$job/sleep.sh"
j=$(as_user sbatch --parsable -N 1 -c 2 --vm-image="$REF" --vms-per-node=2 --vm-vcpus=1 -o "$job/cancel-%j.out" "$job/sleep.sh")
for _ in $(seq 300); do pgrep -f "qemu-system-x86_64 .*$CL_DIR/run-n1" >/dev/null && break; sleep 0.1; done
pgrep -f "qemu-system-x86_64 .*$CL_DIR/run-n1" >/dev/null || fail "no QEMU started for job $j"
scancel "$j"
[ "$(slurm_wait "$j" 120)" = CANCELLED ] || fail "cancelled job: $(slurm_job_field "$j" JobState)"
wait_idle
nothing_left_slurm "scancel during the boot"
ok "scancel while the VMs booted: nothing left, node idle"

# 5. Prolog faults. (a) an image the registry does not have.
j=$(as_user sbatch --parsable -N 1 --vm-image="$CL_REGISTRY/vmhpc/nosuch:1" -o "$job/f1-%j.out" "$job/sleep.sh")
state=$(slurm_wait "$j" 120)
comment=$(slurm_job_field "$j" AdminComment)
case "$state:$comment" in
CANCELLED:*vmhpc:*nosuch*) ;;
*) fail "unknown image: $state, AdminComment '$comment'" ;;
esac
wait_idle
nothing_left_slurm "an unknown image"
# The helper's own lines reach the node's slurmd log through the plugin (slurm_info).
grep -q "vmhpc slurm prolog: .*nosuch" "$CL_DIR"/slurmd-n*.log ||
	fail "the prolog's message about the unknown image is not in slurmd's log: $(grep -h vmhpc "$CL_DIR"/slurmd-n*.log | tail -5)"
ok "unknown image: job $state, AdminComment: $(echo "$comment" | cut -c1-110); the prolog's lines in slurmd's log"
# (b) the supervisor killed with SIGKILL half-way through the boot.
j=$(as_user sbatch --parsable -N 1 -c 2 --vm-image="$REF" --vms-per-node=2 --vm-vcpus=1 -o "$job/f2-%j.out" "$job/sleep.sh")
for _ in $(seq 300); do pgrep -f "qemu-system-x86_64 .*$CL_DIR/run-n1" >/dev/null && break; sleep 0.1; done
pid=$(cat "$CL_DIR/slurm-n1/$j/pid" 2>/dev/null) || fail "no supervisor pid for job $j"
kill -9 "$pid"
state=$(slurm_wait "$j" 120)
comment=$(slurm_job_field "$j" AdminComment)
case "$state:$comment" in
CANCELLED:*vmhpc:*supervisor*) ;;
*) fail "killed supervisor: $state, AdminComment '$comment'" ;;
esac
wait_idle
nothing_left_slurm "a supervisor killed during the boot"
ok "supervisor killed half-way: job $state ($(echo "$comment" | cut -c1-80)), nothing left, node idle"

# 6. Bad input. At submit:
expect_fail "--vms-per-node=abc" "give a whole number" as_user sbatch -N 1 --vm-image="$REF" --vms-per-node=abc "$job/sleep.sh"
expect_fail "--vm-vcpus=0" "give a whole number" as_user sbatch -N 1 --vm-image="$REF" --vm-vcpus=0 "$job/sleep.sh"
expect_fail "--vm-mem=lots" "--vm-mem=lots" as_user sbatch -N 1 --vm-image="$REF" --vm-mem=lots "$job/sleep.sh"
expect_fail "--vm-image without a registry" "REGISTRY/REPOSITORY" as_user sbatch -N 1 --vm-image=tiny-mpi "$job/sleep.sh"
expect_fail "--vms-per-node without --vm-image" "give --vm-image" as_user sbatch -N 1 --vms-per-node=2 "$job/sleep.sh"
expect_fail "--vm-shm=maybe" "give on, off or auto" as_user sbatch -N 1 --vm-image="$REF" --vm-shm=maybe "$job/sleep.sh"
expect_fail "--vm-shm without --vm-image" "give --vm-image" as_user sbatch -N 1 --vm-shm=off "$job/sleep.sh"
# At the node: more VCPUs than the job's cores there; more memory than the node has.
j=$(as_user sbatch --parsable -N 1 -c 1 --vm-image="$REF" --vms-per-node=2 --vm-vcpus=1 -o "$job/b1-%j.out" "$job/sleep.sh")
[ "$(slurm_wait "$j" 60)" = CANCELLED ] || fail "too many VCPUs: $(slurm_job_field "$j" JobState)"
comment=$(slurm_job_field "$j" AdminComment)
case "$comment" in *"Slurm gave job $j 1 core on n1"*) ;; *) fail "too many VCPUs: '$comment'" ;; esac
ok "2 VMs x 1 VCPU on 1 core: $(echo "$comment" | cut -c1-120)"
j=$(as_user sbatch --parsable -N 1 --vm-image="$REF" --vm-mem=4000G -o "$job/b2-%j.out" "$job/sleep.sh")
[ "$(slurm_wait "$j" 60)" = CANCELLED ] || fail "too much memory: $(slurm_job_field "$j" JobState)"
comment=$(slurm_job_field "$j" AdminComment)
case "$comment" in *"of memory"*) ;; *) fail "too much memory: '$comment'" ;; esac
ok "--vm-mem above the node's memory: $(echo "$comment" | cut -c1-120)"
wait_idle
nothing_left_slurm "the bad input"

# 7. No `vmhpc node` on the node: a clear reason, the node stays in service.
cluster_node_kill n1
j=$(as_user sbatch --parsable -N 1 --vm-image="$REF" -o "$job/d-%j.out" "$job/sleep.sh")
[ "$(slurm_wait "$j" 60)" = CANCELLED ] || fail "no node daemon: $(slurm_job_field "$j" JobState)"
comment=$(slurm_job_field "$j" AdminComment)
case "$comment" in *"no \`vmhpc node\` daemon answers"*) ;; *) fail "no node daemon: '$comment'" ;; esac
wait_idle
nothing_left_slurm "a missing node daemon"
ok "no vmhpc node on n1: $(echo "$comment" | cut -c1-110)"
CHECKS_DONE=1
finish
