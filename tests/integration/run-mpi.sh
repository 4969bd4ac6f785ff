#!/usr/bin/env bash
# `vmhpc run` end to end under TCG: MPI across 2 VMs, the job folder, exit codes, the time
# limit, Ctrl-C, SIGKILL + cleanup, DAX, and the checks made before booting. After every
# case nothing may be left: no QEMU, virtiofsd, tap, bridge, job directory or socket.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
chmod 0777 "$job"
# virtiofsd runs with the submitting user's rights (case 2 is uid 4321): it must reach the folder.
chmod 0755 "$WORK"
cp "$ring" "$job/ring"
use_own_run_dir

run() { (cd "$job" && "$VMHPC" run "$@"); }

# 1. MPI hello across 2 VMs: ranks and size right, one rank per VM; the report as JSON.
run --vms 2 --json -- ./ring --hello >"$WORK/hello.out" 2>"$WORK/hello.err" || fail "hello: $(cat "$WORK/hello.err")"
tail -n 1 "$WORK/hello.err" | python3 -c '
import json, sys
r = json.load(sys.stdin)
assert r["exit_code"] == 0 and r["vms"] == 2 and len(r["vm"]) == 2, r
for vm in r["vm"]:
    assert vm["ready_s"] > 0 and 0 < vm["guest_used_kb"] < 200000 and vm["host_pss_kb"] > 0, vm
    # The job ran in the job cgroup of each guest: its peak is known, nothing ran out of memory.
    assert 0 < vm["job_mem_peak_kb"] < 256 * 1024 and vm["oom_kills"] == 0, vm
assert r["boot_s"] > 0 and r["shutdown_s"] >= 0 and r["host_pss_total_kb"] > 0, r
' || fail "--json report: $(tail -n 1 "$WORK/hello.err")"
run --vms 2 -- ./ring --hello >"$WORK/hello.out" 2>"$WORK/hello.err" || fail "hello: $(cat "$WORK/hello.err")"
grep -q "hello from rank 0 of 2 on vm0" "$WORK/hello.out" || fail "no rank 0 on vm0: $(cat "$WORK/hello.out")"
grep -q "hello from rank 1 of 2 on vm1" "$WORK/hello.out" || fail "no rank 1 on vm1: $(cat "$WORK/hello.out")"
grep -q "boot (slowest VM)" "$WORK/hello.err" || fail "no timing table: $(cat "$WORK/hello.err")"
grep -q "used at ready .*job peak" "$WORK/hello.err" || fail "no job peak column: $(cat "$WORK/hello.err")"
grep -q "^vmhpc: image tiny-mpi:[0-9]*, the newest tiny-mpi (--image tiny-mpi:[0-9]* keeps" "$WORK/hello.err" ||
	fail "the default image is not named before booting: $(cat "$WORK/hello.err")"
nothing_left "hello"
ok "2-VM MPI hello: rank 0 on vm0, rank 1 on vm1, timing table printed"

# 2. Ring + reduction, result file in the job folder, owned by the submitting user.
SUDO_UID=4321 SUDO_GID=4321 run --vms 2 --label -- ./ring >"$WORK/ring.out" 2>"$WORK/ring.err" || fail "ring: $(cat "$WORK/ring.err")"
grep -q "VERIFIED" "$WORK/ring.out" || fail "ring not verified: $(cat "$WORK/ring.out")"
grep -q '^\[0@vm0\]' "$WORK/ring.out" || fail "--label did not prefix output: $(cat "$WORK/ring.out")"
grep -q "ranks=2 token=1 sum=3 VERIFIED" "$job/ring-result.txt" || fail "result file: $(cat "$job/ring-result.txt" 2>&1)"
[ "$(stat -c %u:%g "$job/ring-result.txt")" = "4321:4321" ] || fail "result file owned by $(stat -c %u:%g "$job/ring-result.txt")"
nothing_left "ring"
ok "ring + allreduce verified; ring-result.txt appears on the host owned by the user (4321)"

# 3. A failing rank's exit code comes back; a crashing rank fails the job.
set +e
run --vms 2 --time 120 -- ./ring --fail-rank 1 >/dev/null 2>"$WORK/fail.err"
code=$?
set -e
[ "$code" -eq 3 ] || fail "failing rank: exit $code, expected 3: $(tail -3 "$WORK/fail.err")"
grep -q "the job failed with exit code 3" "$WORK/fail.err" || fail "no failure message"
set +e
run --vms 2 --time 120 -- ./ring --crash-rank 1 >/dev/null 2>"$WORK/crash.err"
code=$?
set -e
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || fail "crashing rank: exit $code: $(tail -3 "$WORK/crash.err")"
grep -q "Segmentation fault" "$WORK/crash.err" || fail "the crash is not reported: $(tail -5 "$WORK/crash.err")"
nothing_left "failing rank"
ok "a rank failing with code 3 makes vmhpc run exit 3; a crashing rank fails the job (exit $code)"

# 4. The time limit kills the job.
start=$(date +%s)
set +e
run --vms 2 --time 8s -- ./ring --sleep 300 >/dev/null 2>"$WORK/time.err"
code=$?
set -e
[ "$code" -eq 124 ] || fail "time limit: exit $code: $(tail -3 "$WORK/time.err")"
grep -q "time limit of 8 s reached" "$WORK/time.err" || fail "no time-limit message"
[ $(($(date +%s) - start)) -lt 120 ] || fail "time limit took too long"
nothing_left "time limit"
ok "--time 8s stops a 300 s job with exit 124 and a message"

# 5. Ctrl-C (SIGINT) during the run.
(cd "$job" && exec "$VMHPC" run --vms 2 -- ./ring --sleep 300) >/dev/null 2>"$WORK/int.err" &
pid=$!
for _ in $(seq 1 240); do grep -q "VMs ready" "$WORK/int.err" 2>/dev/null && break; sleep 0.5; done
grep -q "VMs ready" "$WORK/int.err" || fail "the job never became ready: $(cat "$WORK/int.err")"
sleep 4
kill -INT "$pid"
set +e
wait "$pid"
code=$?
set -e
[ "$code" -eq 130 ] || fail "Ctrl-C: exit $code, expected 130: $(tail -3 "$WORK/int.err")"
grep -q "interrupted by Interrupt" "$WORK/int.err" || fail "no interruption message: $(tail -3 "$WORK/int.err")"
nothing_left "Ctrl-C"

# Ctrl-C while the VMs boot.
(cd "$job" && exec "$VMHPC" run --vms 2 -- ./ring) >/dev/null 2>"$WORK/int2.err" &
pid=$!
for _ in $(seq 1 60); do pgrep -P "$pid" -f qemu-system >/dev/null && break; sleep 0.2; done
sleep 1
kill -INT "$pid"
set +e
wait "$pid"
code=$?
set -e
[ "$code" -eq 130 ] || fail "Ctrl-C at boot: exit $code: $(tail -3 "$WORK/int2.err")"
nothing_left "Ctrl-C at boot"
ok "Ctrl-C during the run or the boot stops the job (exit 130) and leaves nothing"

# 6. SIGKILL of vmhpc run, then `vmhpc cleanup`.
(cd "$job" && exec "$VMHPC" run --vms 2 -- ./ring --sleep 300) >/dev/null 2>"$WORK/kill.err" &
pid=$!
for _ in $(seq 1 240); do grep -q "VMs ready" "$WORK/kill.err" 2>/dev/null && break; sleep 0.5; done
sleep 3
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
# The job's taps and bridge went with its network namespace (net-isolation.sh checks
# that in detail); its directory is left for cleanup.
"$VMHPC" cleanup | grep -q "cleaned up 1 job" || fail "cleanup found nothing"
sleep 0.5
nothing_left "SIGKILL + cleanup"
ok "SIGKILL of vmhpc run leaves its job directory; vmhpc cleanup removes everything"

# 7. DAX: reading a 41 MB library from the root does not grow the guest's page cache.
run --vms 1 -n 1 -- sh -c 'grep ^Cached: /proc/meminfo; cat /usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2 >/dev/null; grep ^Cached: /proc/meminfo; grep " / \| /rom" /proc/mounts' >"$WORK/dax.out" 2>"$WORK/dax.err" || fail "dax: $(cat "$WORK/dax.err")"
before=$(grep Cached "$WORK/dax.out" | head -1 | awk '{print $2}')
after=$(grep Cached "$WORK/dax.out" | tail -1 | awk '{print $2}')
[ -n "$before" ] && [ -n "$after" ] || fail "no meminfo: $(cat "$WORK/dax.out")"
[ $((after - before)) -lt 8192 ] || fail "page cache grew by $((after - before)) kB reading libmpich: DAX is not in effect"
ok "reading libmpich (41 MB) grew the guest page cache by $((after - before)) kB (DAX)"

# 8. Without root: the job's network is in a user + network namespace of its own.
if command -v setpriv >/dev/null; then
	allow_unprivileged_taps
	[ -e /tmp/vmhpc-65534 ] || on_exit "rm -rf /tmp/vmhpc-65534"
	mkdir -p "$WORK/nobody/bin" "$WORK/nobody/cache"
	cp "$VMHPC" "$WORK/nobody/bin/vmhpc"
	chmod -R a+rX "$VMHPC_STORE" "$WORK/nobody"
	chmod a+rx "$WORK"
	chown 65534:65534 "$WORK/nobody/cache"
	setpriv --reuid=65534 --regid=65534 --clear-groups env -u VMHPC_RUN_DIR HOME="$WORK/nobody" \
		VMHPC_STORE="$VMHPC_STORE" VMHPC_CACHE="$WORK/nobody/cache" \
		"$WORK/nobody/bin/vmhpc" run --no-share --vms 2 -- hostname >"$WORK/nobody.out" 2>"$WORK/nobody.err" ||
		fail "unprivileged run: $(cat "$WORK/nobody.err")"
	[ "$(sort "$WORK/nobody.out" | tr '\n' ' ')" = "vm0 vm1 " ] || fail "unprivileged run printed: $(cat "$WORK/nobody.out")"
	[ -z "$(ls "/tmp/vmhpc-65534/jobs" 2>/dev/null)" ] || fail "the unprivileged run left its job directory"
	ok "an unprivileged run (private user + network namespace, no share) reaches both VMs"
fi

# 9. Refused before booting.
expect_fail "too many VCPUs" "virtual CPUs, but this machine has" run --vms 4 --vcpus 4 -- ./ring
expect_fail "unknown image" "no image named 'nosuch'" run --image nosuch -- ./ring
expect_fail "unknown version" "has no version 99" run --image tiny-mpi:99 -- ./ring
expect_fail "program not in the job folder" "not an executable file in the job folder" run -- ./no-such-program
expect_fail "program not in the image" "is not in the image" run -- no-such-program
expect_fail "memory below the floor" "below what a guest needs" run --mem 64M -- ./ring
expect_fail "missing workdir" "--workdir /no/such/dir" run --workdir /no/such/dir -- ./ring
expect_fail "--require that no version satisfies" 'tiny-mpi:1 fails 1 clause: mpich >= "99" (mpich is "4.0.2' run --require 'mpich >= "99"' -- ./ring
expect_fail "--image outside --require" "does not satisfy --require" run --image tiny-mpi:1 --require '!has("mpich")' -- ./ring
expect_fail "--require with a mistake" "column 7: mpich is a version string" run --require 'mpich>4' -- ./ring
nothing_left "refusals"

# 10. --require picks the version to boot by what the job needs.
run --vms 1 --require 'os == "tiny" && mpich >= "4.0.2" && has("libucx0")' -- ./ring --hello >"$WORK/req.out" 2>"$WORK/req.err" ||
	fail "--require: $(cat "$WORK/req.err")"
grep -q "^vmhpc: tiny-mpi:[0-9]* satisfies --require" "$WORK/req.err" || fail "--require: the chosen version is not named: $(cat "$WORK/req.err")"
grep -q "hello from rank 0 of 1" "$WORK/req.out" || fail "--require: $(cat "$WORK/req.out")"
nothing_left "--require"
ok "--require boots the version that satisfies it, and refuses before booting when none does"
finish
