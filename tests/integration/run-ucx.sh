#!/usr/bin/env bash
# MPI between two VMs over the shared-memory channel, unmodified (docs/bypass.md): an image
# with the UCX transport (examples/tiny-mpi-shm.ini, scripts/build-uct-ivshmem.sh), `vmhpc
# run --shm`, and MPICH programs built with Debian's mpicc:
#  1. UCX between the VMs uses ivshmem/region, by itself (no user environment): UCX's own
#     report of its lanes (UCX_LOG_LEVEL=info) says so, and the ring verifies;
#  2. with UCX_TLS=ivshmem,self the region is the only path UCX has: the ring verifies, so
#     its messages crossed the region; mpi-osu's content checks pass from 8 B to 1 MiB;
#  3. without --shm, and with --shm on an image without the transport: TCP, and not one
#     line about ivshmem;
#  4. a VM killed in the middle of 1 MiB messages over the channel ends the job with an
#     error naming it (no hang); SIGINT while ranks spin on the channel ends it too; nothing
#     is left behind.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }
for p in mpi-ring mpi-osu; do
	[ -x "${VMHPC_BUILD_ROOT:?}/$p" ] || fail "no $VMHPC_BUILD_ROOT/$p: Debian's mpich and libmpich-dev build it"
done
"$VMHPC_SOURCE_ROOT/scripts/build-uct-ivshmem.sh" 2>"$WORK/build.err" ||
	fail "building the UCX transport: $(cat "$WORK/build.err")"
export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi-shm.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
cp "$VMHPC_BUILD_ROOT/mpi-ring" "$VMHPC_BUILD_ROOT/mpi-osu" "$job/"
printf '#!/bin/sh\nUCX_LOG_LEVEL=info exec ./mpi-ring "$@"\n' >"$job/ring-info"
printf '#!/bin/sh\nUCX_TLS=ivshmem,self exec "$@"\n' >"$job/only-shm"
chmod +x "$job/ring-info" "$job/only-shm"
use_own_run_dir
run() { (cd "$job" && "$VMHPC" run "$@"); }

# 1.
run --vms 2 --shm --image tiny-mpi-shm -- ./ring-info >"$WORK/1.out" 2>&1 ||
	fail "ring over the channel: $(tail -20 "$WORK/1.out")"
grep -q "VERIFIED" "$WORK/1.out" || fail "ring not verified: $(tail -20 "$WORK/1.out")"
# Each rank's endpoint to the other rank (not to itself: that one has self/memory0).
lanes=$(grep 'ep_cfg' "$WORK/1.out" | grep -v 'self/memory0' || true)
[ "$(echo "$lanes" | grep -c 'am(ivshmem/region')" -eq 2 ] ||
	fail "the ranks' endpoints to each other do not use ivshmem: $(grep ep_cfg "$WORK/1.out")"
ok "2 VMs, --shm: UCX chose the channel by itself ($(echo "$lanes" | head -1 | grep -o 'tag([^)]*)'))"
nothing_left "a job over the channel"

# 2.
run --vms 2 --shm --image tiny-mpi-shm -- ./only-shm ./mpi-ring >"$WORK/2.out" 2>&1 ||
	fail "ring with UCX_TLS=ivshmem,self: $(tail -20 "$WORK/2.out")"
grep -q "VERIFIED" "$WORK/2.out" || fail "ring over the region only not verified: $(tail -20 "$WORK/2.out")"
run --vms 2 --shm --image tiny-mpi-shm -- ./only-shm ./mpi-osu bw --sizes 8,4096,65536,1048576 --scale 20 \
	>"$WORK/2b.out" 2>&1 || fail "mpi-osu bw over the region only: $(tail -20 "$WORK/2b.out")"
grep -q "^1048576 [0-9]" "$WORK/2b.out" && ! grep -q DAMAGED "$WORK/2b.out" ||
	fail "mpi-osu bw over the region: $(tail -20 "$WORK/2b.out")"
ok "UCX_TLS=ivshmem,self: ring verified and 8 B-1 MiB windows arrived whole over the region alone ($(grep '^1048576 ' "$WORK/2b.out") MB/s at 1 MiB)"
nothing_left "jobs over the region alone"

# 3.
run --vms 2 --image tiny-mpi-shm -- ./ring-info >"$WORK/3.out" 2>&1 || fail "ring without --shm: $(tail -20 "$WORK/3.out")"
grep -q "VERIFIED" "$WORK/3.out" && ! grep -q ivshmem "$WORK/3.out" &&
	grep 'ep_cfg' "$WORK/3.out" | grep -v 'self/memory0' | grep -q 'am(tcp/eth0' ||
	fail "without --shm: not plain TCP: $(grep -E 'ep_cfg|ivshmem|WARN' "$WORK/3.out")"
run --vms 2 --shm --image tiny-mpi -- ./ring-info >"$WORK/3b.out" 2>&1 || fail "ring, --shm, no transport: $(tail -20 "$WORK/3b.out")"
grep -q "VERIFIED" "$WORK/3b.out" && ! grep -q ivshmem "$WORK/3b.out" ||
	fail "--shm on an image without the transport: $(grep -E 'ep_cfg|ivshmem|WARN' "$WORK/3b.out")"
ok "without --shm, or on an image without the transport: TCP, no line about ivshmem"
nothing_left "jobs over TCP"

# 4. The job runs 1 MiB windows long enough to be killed in the middle of one.
qemu_of() { pgrep -f "qemu-system-x86_64 -name guest=$1 .*$VMHPC_RUN_DIR/jobs/" | head -1; }
start_bg() {
	local name=$1
	shift
	(cd "$job" && exec "$VMHPC" run "$@") >"$WORK/$name.out" 2>"$WORK/$name.err" &
	pid=$!
	for _ in $(seq 1 480); do grep -q "ready after" "$WORK/$name.err" 2>/dev/null && break; sleep 0.25; done
	grep -q "ready after" "$WORK/$name.err" || fail "$name: the job never became ready: $(cat "$WORK/$name.err")"
	sleep 6 # the ranks are exchanging by now (MPI_Init takes ~2-4 s under TCG)
}
wait_bounded() {
	local p=$1 limit=$2
	for _ in $(seq 1 $((limit * 4))); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
	if kill -0 "$p" 2>/dev/null; then
		kill -KILL "$p"
		fail "vmhpc run (pid $p) did not end within $limit s"
	fi
	set +e
	wait "$p"
	code=$?
	set -e
}
start_bg killvm --vms 2 --shm --image tiny-mpi-shm -- ./mpi-osu bw --sizes 1048576,1048576,1048576,1048576
kill -KILL "$(qemu_of vm1)"
wait_bounded "$pid" 60
[ "$code" -ne 0 ] || fail "a VM killed mid-message: exit 0"
grep -q "vm1 stopped" "$WORK/killvm.err" || fail "no message naming vm1: $(tail -5 "$WORK/killvm.err")"
ok "vm1 killed during 1 MiB messages over the channel: the job ended (exit $code) naming it"
nothing_left "a VM killed mid-message"
start_bg sigint --vms 2 --shm --image tiny-mpi-shm -- ./mpi-osu bw --sizes 1048576,1048576,1048576,1048576
kill -INT "$pid"
wait_bounded "$pid" 60
[ "$code" -eq 130 ] || fail "SIGINT while ranks spin on the channel: exit $code, not 130"
ok "SIGINT while ranks spin on the channel: exit 130"
nothing_left "a job interrupted over the channel"
