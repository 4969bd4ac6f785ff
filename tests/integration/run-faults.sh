#!/usr/bin/env bash
# `vmhpc run` when things go wrong: a VM killed during the job, a boot that times out, a QEMU
# that exits while booting, a guest that no longer answers at shutdown (QMP quit, then
# SIGKILL), Ctrl-C that mpiexec ignores (grace period; a second Ctrl-C), a background process
# left in a guest, the output's reader gone (`| head`), more ranks than VMs over 2 VCPUs each, more ranks than VCPUs (refused), and
# a guest out of memory. Every case must end in bounded time with a message naming what
# happened, and leave nothing behind.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "needs root (make test runs as root)"
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"
export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
cp "$ring" "$job/ring"
use_own_run_dir

run() { (cd "$job" && "$VMHPC" run "$@"); }

# (start_bg, wait_bounded, qemu_of: lib.sh)
# 1. A VM killed with SIGKILL during the job ends the job, naming the VM.
start_bg killvm --vms 2 -- ./ring --sleep 300
victim=$(qemu_of vm1)
[ -n "$victim" ] || fail "no QEMU for vm1"
kill -KILL "$victim"
wait_bounded "$pid" 40
[ "$code" -ne 0 ] || fail "a killed VM: exit 0"
grep -q "vm1 stopped (QEMU killed by signal 9" "$WORK/killvm.err" || fail "no message naming vm1: $(tail -5 "$WORK/killvm.err")"
nothing_left "a killed VM"
ok "SIGKILL of vm1's QEMU ends the job in $took s (exit $code) with a message naming vm1"

# 2. Ctrl-C that the program ignores: mpiexec is given the signal, and after the grace
# period the VMs are stopped anyway; a second Ctrl-C stops them at once.
cat >"$job/stubborn.sh" <<'EOS'
#!/bin/sh
trap '' INT TERM HUP
sleep 300
EOS
chmod +x "$job/stubborn.sh"
start_bg grace --vms 1 -n 1 -- ./stubborn.sh
sleep 1
kill -INT "$pid"
wait_bounded "$pid" 60
[ "$code" -eq 130 ] || fail "ignored Ctrl-C: exit $code, expected 130: $(tail -3 "$WORK/grace.err")"
grep -q "interrupted by Interrupt (SIGINT)" "$WORK/grace.err" || fail "no interruption message: $(tail -3 "$WORK/grace.err")"
nothing_left "ignored Ctrl-C"
ok "Ctrl-C ignored by the job: stopped after the grace period ($took s, exit 130)"
start_bg twice --vms 1 -n 1 -- ./stubborn.sh
sleep 1
kill -INT "$pid"
sleep 1
kill -INT "$pid"
wait_bounded "$pid" 20
[ "$code" -eq 130 ] || fail "second Ctrl-C: exit $code: $(tail -3 "$WORK/twice.err")"
[ "$took" -lt 9 ] || fail "a second Ctrl-C took $took s"
nothing_left "second Ctrl-C"
ok "a second Ctrl-C stops the job at once ($took s)"

# 3. A boot that cannot finish in time: the message names the VM and shows its console.
set +e
VMHPC_BOOT_TIMEOUT_MS=1000 run --vms 2 -- ./ring >/dev/null 2>"$WORK/boot.err"
code=$?
set -e
[ "$code" -ne 0 ] || fail "boot timeout: exit 0"
grep -q "did not report ready within 1 s" "$WORK/boot.err" || fail "boot timeout message: $(tail -5 "$WORK/boot.err")"
grep -q "the last lines of its console" "$WORK/boot.err" || fail "no console tail: $(tail -5 "$WORK/boot.err")"
nothing_left "boot timeout"
ok "a boot timeout names the VM and shows its console"

# 4. A QEMU that exits while booting.
cat >"$WORK/qemu-wrapper" <<'EOS'
#!/bin/sh
case "$*" in
*guest=vm1*) sleep 1; exit 3 ;;
esac
exec qemu-system-x86_64 "$@"
EOS
chmod +x "$WORK/qemu-wrapper"
set +e
VMHPC_QEMU="$WORK/qemu-wrapper" run --vms 2 -- ./ring >/dev/null 2>"$WORK/qexit.err"
code=$?
set -e
[ "$code" -ne 0 ] || fail "QEMU exit at boot: exit 0"
grep -q "vm1 stopped (QEMU exit 3) while booting" "$WORK/qexit.err" || fail "QEMU exit message: $(tail -5 "$WORK/qexit.err")"
nothing_left "QEMU exit at boot"
ok "a QEMU exiting during the boot is reported (vm1, exit 3)"

# 5. A guest that no longer answers: the time limit ends the job, SHUTDOWN gets no answer,
# QMP quit gets none either (QEMU is stopped), so QEMU is killed.
start_bg frozen --vms 2 --time 12s -- ./ring --sleep 300
frozen=$(qemu_of vm1)
kill -STOP "$frozen"
wait_bounded "$pid" 60
[ "$code" -eq 124 ] || fail "frozen VM: exit $code: $(tail -5 "$WORK/frozen.err")"
kill -0 "$frozen" 2>/dev/null && fail "the frozen QEMU $frozen still exists"
nothing_left "frozen VM"
ok "a frozen VM is killed at shutdown after SHUTDOWN and QMP quit went unanswered ($took s)"

# 6. A process left in the background by the job cannot hold the job open.
start=$SECONDS
run --vms 1 -n 1 -- sh -c 'sleep 1000 >/dev/null 2>&1 & echo started' >"$WORK/bg.out" 2>"$WORK/bg.err" ||
	fail "background process: $(tail -3 "$WORK/bg.err")"
[ $((SECONDS - start)) -lt 60 ] || fail "a background process held the job for $((SECONDS - start)) s"
grep -q started "$WORK/bg.out" || fail "no output: $(cat "$WORK/bg.out")"
nothing_left "background process"
ok "a background process in the guest does not hold the job open"

# 7. More ranks than VMs: 4 ranks over 2 VMs x 2 VCPUs.
run --vms 2 --vcpus 2 --oversubscribe -n 4 -- ./ring >"$WORK/ranks.out" 2>"$WORK/ranks.err" ||
	fail "4 ranks on 2 VMs: $(tail -5 "$WORK/ranks.err")"
grep -q "ring of 4 ranks.*VERIFIED" "$WORK/ranks.out" || fail "4 ranks: $(cat "$WORK/ranks.out")"
nothing_left "4 ranks"
ok "4 ranks over 2 VMs x 2 VCPUs verified"

# 8. More ranks than virtual CPUs is refused before anything boots, like more VCPUs than cores.
set +e
run --vms 2 -n 3 -- ./ring >"$WORK/over.out" 2>"$WORK/over.err"
code=$?
set -e
[ "$code" -eq 2 ] || fail "-n 3 on 2 VMs x 1 VCPU: exit $code, expected 2: $(cat "$WORK/over.err")"
grep -q -- "-n 3 ranks, but 2 VMs x 1 VCPU = 2 virtual CPUs; use -n 2 or less, more --vms or --vcpus, or --oversubscribe" "$WORK/over.err" ||
	fail "-n 3: no clear refusal: $(cat "$WORK/over.err")"
grep -q "ready after" "$WORK/over.err" && fail "-n 3: VMs were booted"
nothing_left "-n above VCPUs"
ok "-n above VMs x VCPUs is refused before booting (exit 2)"

# 9. A rank that needs more memory than its VM has: the guest's kernel kills it, and the run
# says so and names --mem (not only "exit code 9").
cat >"$job/hog.c" <<'EOS'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
	size_t mb = strtoul(argv[1], NULL, 10);
	for (size_t i = 0; i < mb; i++) {
		char *p = malloc(1 << 20);
		if (!p)
			return 3;
		memset(p, 1, 1 << 20);
	}
	printf("touched %zu MiB\n", mb);
	return 0;
}
EOS
cc -O1 -o "$job/hog" "$job/hog.c"
set +e
run --vms 1 --mem 128M -- ./hog 400 >"$WORK/oom.out" 2>"$WORK/oom.err"
code=$?
set -e
[ "$code" -ne 0 ] || fail "400 MiB in a 128M VM: exit 0: $(cat "$WORK/oom.out")"
grep -q "vm0 ran out of memory: its kernel killed [0-9]* process.* of the job .*give each VM more with --mem, e.g. --mem 256M" "$WORK/oom.err" ||
	fail "no out-of-memory message naming --mem: $(cat "$WORK/oom.err")"
nothing_left "out of memory"
run --vms 1 --mem 128M --json -- ./hog 30 >"$WORK/fit.out" 2>"$WORK/fit.err" || fail "30 MiB in a 128M VM: $(cat "$WORK/fit.err")"
tail -n 1 "$WORK/fit.err" | python3 -c '
import json, sys
vm = json.load(sys.stdin)["vm"][0]
# 30 MiB touched by the rank, plus mpiexec and hydra: the peak covers it and stays below --mem.
assert 30 * 1024 < vm["job_mem_peak_kb"] < 128 * 1024 and vm["oom_kills"] == 0, vm
' || fail "job peak after 30 MiB: $(tail -n 1 "$WORK/fit.err")"
nothing_left "job peak"
ok "out of memory in a guest is named with --mem (exit $code); a job's peak memory is reported"

# The job's output piped into a reader that goes away (`| head -2`): the job is stopped and
# torn down, exit 141 as a shell pipeline's writer has; SIGPIPE killed vmhpc before, and
# left its job folder, network and zombies to the next run's cleanup.
cat >"$job/chatty.sh" <<'EOS'
#!/bin/sh
i=0
while [ $i -lt 1000000 ]; do echo "line $i"; i=$((i + 1)); done
EOS
chmod +x "$job/chatty.sh"
set +e
run --vms 1 -- ./chatty.sh 2>"$WORK/pipe.err" | head -2 >"$WORK/pipe.out"
code=${PIPESTATUS[0]}
set -e
[ "$code" -eq 141 ] || fail "| head: exit $code: $(tail -5 "$WORK/pipe.err")"
[ "$(cat "$WORK/pipe.out")" = "line 0
line 1" ] || fail "| head read: $(cat "$WORK/pipe.out")"
grep -q "the job's output has no reader any more" "$WORK/pipe.err" || fail "no message: $(tail -5 "$WORK/pipe.err")"
nothing_left "output reader gone"
ok "the output's reader gone (| head): the job stopped, exit $code, nothing left"
finish
