#!/usr/bin/env bash
# The shared-memory channel between VMs (docs/bypass.md): `vmhpc run --shm` gives 2 VMs one
# region as ivshmem-plain; in each, our static shm-pingpong (from the job folder, run as the
# submitting user) finds it through VMHPC_SHM*, and the two exchange messages of 8 B to
# 1 MiB with every message's content checked - a data path between VMs without the network.
# Without --shm the program is told there is no channel. A VM killed mid-message and a
# job interrupted while a rank spins end in bounded time. Nothing is left behind: the
# region lives in the job directory.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }
pp="${VMHPC_BUILD_ROOT:?}/shm-pingpong"
[ -x "$pp" ] || fail "no $pp: build first"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
cp "$pp" "$job/shm-pingpong"
use_own_run_dir
run() { (cd "$job" && "$VMHPC" run "$@"); }

# 1. Two VMs over the channel: every size arrives whole and in order.
run --vms 2 --shm -- ./shm-pingpong --sizes 8,4096,65536,1048576 --iters 50 \
	>"$WORK/shm.out" 2>"$WORK/shm.err" || fail "ping-pong over the channel: $(cat "$WORK/shm.err" "$WORK/shm.out")"
grep -q "^ok: every message arrived whole and in order" "$WORK/shm.out" ||
	fail "no ok line: $(cat "$WORK/shm.out" "$WORK/shm.err")"
grep -q "^1048576 " "$WORK/shm.out" || fail "no 1 MiB line: $(cat "$WORK/shm.out")"
ok "2 VMs over the channel: $(grep '^8 \|^1048576 ' "$WORK/shm.out" | tr '\n' ';')"
nothing_left "a job with the channel"

# 2. Without --shm there is no device and the program says so (MPI would use TCP).
run --vms 2 -- ./shm-pingpong --sizes 8 --iters 5 >"$WORK/no.out" 2>"$WORK/no.err" && code=0 || code=$?
[ "$code" -ne 0 ] || fail "ping-pong without --shm succeeded: $(cat "$WORK/no.out")"
grep -q "no VMHPC_SHM" "$WORK/no.err" "$WORK/no.out" || fail "no hint without --shm: $(cat "$WORK/no.err")"
ok "without --shm: no channel, the program says so (exit $code)"
nothing_left "a job without the channel"

# 3. --shm with one VM: nothing to share, so no region and no device in the guest.
run --vms 1 --shm -- ./shm-pingpong --sizes 8 --iters 1 >"$WORK/one.out" 2>"$WORK/one.err" && code=0 || code=$?
[ "$code" -ne 0 ] && grep -q "no VMHPC_SHM" "$WORK/one.err" "$WORK/one.out" ||
	fail "--shm with 1 VM gave a channel (exit $code): $(cat "$WORK/one.err" "$WORK/one.out")"
ok "--shm with 1 VM: no region"
nothing_left "a one-VM job"

# 4. A plain user: vmhpc-init gives the BAR (resource2) to the command's user, who is not
# root in the guest, and the channel works the same.
user="vmhpcshm$$"
home="$WORK/home-$user"
useradd -M -d "$home" -s /bin/sh "$user"
on_exit "userdel -f $user"
uid=$(id -u "$user")
on_exit "rm -rf /tmp/vmhpc-$uid"
mkdir -p "$home/job" "$WORK/bin"
cp "$VMHPC" "$WORK/bin/vmhpc"
cp "$pp" "$home/job/shm-pingpong"
chown -R "$user:" "$home"
chmod a+rx "$WORK" "$WORK/bin" "$WORK/bin/vmhpc"
"$VMHPC" image export tiny-mpi -o "$WORK/img.tar"
chmod a+r "$WORK/img.tar"
allow_unprivileged_taps
as_user() { setpriv --reuid="$user" --regid="$user" --clear-groups env -i PATH=/usr/bin:/bin:/usr/sbin HOME="$home" VMHPC_BOOT_TIMEOUT_MS=600000 "$@"; }
as_user "$WORK/bin/vmhpc" image import "$WORK/img.tar" >/dev/null || fail "import as $user"
(cd "$home/job" && as_user "$WORK/bin/vmhpc" run --vms 2 --shm -- ./shm-pingpong --sizes 8,1048576 --iters 20) \
	>"$WORK/user.out" 2>"$WORK/user.err" || fail "the plain user's ping-pong: $(tail -20 "$WORK/user.err") $(cat "$WORK/user.out")"
grep -q "^ok: every message arrived whole and in order" "$WORK/user.out" || fail "plain user: no ok line: $(cat "$WORK/user.out")"
[ -z "$(ls "/tmp/vmhpc-$uid/jobs" 2>/dev/null)" ] || fail "the plain user's job directory is left"
ok "plain user $user (uid $uid): the BAR is the command's user's, ping-pong over the channel works"

# 5. A peer VM that dies in the middle of 1 MiB messages over the channel: the job ends with
# an error naming it, in bounded time, not a hang (the rank left in vm0 would otherwise get
# -ECONNRESET from the library after its heartbeat timeout; test-shm covers that part).
# (start_bg, wait_bounded, qemu_of: lib.sh)
start_bg killvm --vms 2 --shm -- ./shm-pingpong --sizes 1048576 --iters 100000
sleep 4 # both ranks are streaming by now
kill -KILL "$(qemu_of vm1)"
wait_bounded "$pid" 60
[ "$code" -ne 0 ] || fail "vm1 killed mid-message: exit 0"
grep -q "vm1 stopped" "$WORK/killvm.err" || fail "no message naming vm1: $(tail -5 "$WORK/killvm.err")"
ok "vm1 killed during 1 MiB messages over the channel: the job ended in $took s (exit $code) naming it"
nothing_left "a VM killed mid-message"

# 6. The job stopped (SIGINT) while its ranks spin on the channel: one waits in the first
# exchange for a peer that never comes (a rank given a node no other rank takes).
printf '#!/bin/sh\n[ "$PMI_RANK" = 1 ] && exec sleep 600\nexec ./shm-pingpong --sizes 8 --iters 1\n' >"$job/one-waits"
chmod +x "$job/one-waits"
start_bg sigint --vms 2 --shm -- ./one-waits
sleep 3
kill -INT "$pid"
wait_bounded "$pid" 60
[ "$code" -eq 130 ] || fail "SIGINT while a rank spins on the channel: exit $code, not 130: $(tail -5 "$WORK/sigint.err")"
ok "SIGINT while a rank spins on the channel: exit 130 in $took s"
nothing_left "a job interrupted while a rank spins"
finish
