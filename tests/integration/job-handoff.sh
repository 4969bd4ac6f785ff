#!/usr/bin/env bash
# The VM runtime as a library for a supervisor (the node daemon, a Slurm prolog): a job's
# VMs booted by a short-lived process outlive it, are handed over with their lock, and are
# run and stopped by the supervisor; a second supervisor is refused; `vmhpc run`'s VMs
# still die with it. Nothing may be left behind.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "needs root (make test runs as root)"
driver="${VMHPC_HANDOFF_DRIVER:?run through meson test}"
[ -x "$driver" ] || fail "no $driver"
export VMHPC_CACHE="$WORK/cache"
run_dir="$WORK/run"
mkdir -p "$VMHPC_CACHE/node" "$run_dir"
chmod 0700 "$run_dir"

printf '[image]\nname = handoff\n[kernel]\npackage = linux-image-cloud-amd64\nmodules = virtio_pci virtio_pmem nd_pmem virtio_net virtio_console overlay virtiofs\n[root]\npackages = busybox-static\nbinaries = /usr/bin/busybox\n' >"$WORK/handoff.ini"
"$VMHPC" image build --level 1 "$WORK/handoff.ini" >"$WORK/build.out" 2>&1 ||
	fail "building the test image: $(tail -5 "$WORK/build.out")"

qemus() { pgrep -f "qemu-system-x86_64 .*$run_dir" || true; }
on_exit "pkill -KILL -f 'qemu-system-x86_64 .*$run_dir'"

mkdir "$WORK/share"
"$driver" "$VMHPC_STORE" "$VMHPC_CACHE/node" "$run_dir" handoff 2 "$WORK/share" >"$WORK/driver.out" 2>&1 ||
	fail "handoff driver: $(cat "$WORK/driver.out")"
cat "$WORK/driver.out"
grep -q "prolog: booted job" "$WORK/driver.out" || fail "no boot"
[ "$(grep -c '^vm[01]$' "$WORK/driver.out")" -eq 2 ] || fail "hostname did not run in both VMs"
for vm in vm0 vm1; do
	[ "$(cat "$WORK/share/$vm.txt" 2>/dev/null)" = "$vm" ] || fail "$vm did not write through the share: $(ls -l "$WORK/share")"
done
ok "a detached job's VMs (and their virtiofsd) outlived the process that booted them and were run by another"
[ -z "$(qemus)" ] || fail "QEMU left running: $(qemus)"
[ -z "$(ls "$run_dir/jobs" 2>/dev/null)" ] || fail "job directory left: $(ls "$run_dir/jobs")"
grep -q "^ok - one event loop ran" "$WORK/driver.out" || fail "no side-by-side run"
[ "$(grep -c '^done-vm[01]$' "$WORK/driver.out")" -eq 2 ] || fail "the side-by-side commands' output is missing"
ok "one event loop ran a command in every VM at once (job_exec_start/fds/step)"
ok "the supervisor's shutdown left no QEMU and no job directory"
finish
