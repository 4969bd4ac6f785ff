#!/usr/bin/env bash
# The job folder trusts nothing a guest does (issue 19 items 1, 2, 7a), with real VMs:
# guest root cannot leave a root-owned, setuid/setgid or device file in the user's folder;
# files a rank writes are the user's; and a plain user (no sudo) can share a job folder
# for a 2-VM MPI run. (A folder swapped after the check: tests/unit/test-virtiofsd.c.)
# Everything made here (a user, folders, processes) is removed on exit, pass or fail.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "needs root: it makes a temporary user and runs as it"
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"
command -v cc >/dev/null || fail "no C compiler (build-essential) for the guest-side probe"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null

user="vmhpcst$$"
home="$WORK/home"
useradd -M -d "$home" -s /bin/sh "$user"
uid=$(id -u "$user")
gid=$(id -g "$user")
# Run in order at exit: the user's processes, what its runs left, then the user.
on_exit "pkill -KILL -u $uid"
on_exit "rm -rf /tmp/vmhpc-$uid"
on_exit "userdel -f $user"
on_exit "'$VMHPC' cleanup"
# The share runs with the user's rights: the user must reach the folder.
chmod 0755 "$WORK"
mkdir -p "$home/bin" "$home/cache" "$home/store"
cp "$VMHPC" "$home/bin/vmhpc"
job="$WORK/job"
mkdir -p "$job"
cp "$ring" "$job/ring"
# Creates files with setuid/setgid in the mode itself (open O_CREAT, mknod of a FIFO),
# where chmod(1) would set them afterwards.
cat >"$WORK/mkmode.c" <<'C'
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
int main(void)
{
	int fd = open("created-suid", O_CREAT | O_WRONLY, 06755);
	printf("open O_CREAT 06755: %s\n", fd >= 0 ? "made" : "refused");
	printf("mknod fifo 04644: %s\n", mknod("fifo-suid", S_IFIFO | 04644, 0) == 0 ? "made" : "refused");
	printf("mknod fifo 0644: %s\n", mknod("fifo", S_IFIFO | 0644, 0) == 0 ? "made" : "refused");
	return 0;
}
C
cc -static -O1 -o "$job/mkmode" "$WORK/mkmode.c"
chown -R "$uid:$gid" "$home" "$job"

# 1. Guest root (vmhpc-exec --user 0:0) against the folder of a user who ran `sudo vmhpc`.
attack='id -u >guest-root-uid; touch f; chown 0:0 f; chmod 4755 f; chmod 2755 f;
mknod blk b 254 0; mknod chr c 1 3; mkdir dd; chown 0:0 dd; chmod 6755 dd;
echo x >g; ./mkmode >mkmode.out; exit 0'
(cd "$job" && SUDO_UID=$uid SUDO_GID=$gid "$VMHPC" run --vms 1 -n 1 -- sh -c \
	"id -u >rank-uid; echo hello >by-rank; vmhpc-exec --user 0:0 vm0 -- sh -c '$attack'") \
	>"$WORK/attack.out" 2>"$WORK/attack.err" || fail "attack run: $(cat "$WORK/attack.err")"
[ "$(cat "$job/guest-root-uid")" = 0 ] || fail "the attack did not run as guest root: $(cat "$WORK/attack.err")"
[ "$(cat "$job/rank-uid")" = "$uid" ] || fail "the rank ran as $(cat "$job/rank-uid"), not $uid"
for f in f dd g by-rank fifo; do [ -e "$job/$f" ] || fail "$f was not made in the guest: $(ls -l "$job")"; done
notmine=$(find "$job" \( ! -user "$uid" -o ! -group "$gid" \) -printf '%p %u:%g\n')
[ -z "$notmine" ] || fail "files not owned by the user $uid:$gid: $notmine"
ok "every file guest root and the rank made is the user's ($uid:$gid), none root's"
setid=$(find "$job" -perm /6000 -printf '%p %m\n')
[ -z "$setid" ] || fail "setuid/setgid files in the job folder: $setid"
grep -q "open O_CREAT 06755: refused" "$job/mkmode.out" || fail "open with 06755: $(cat "$job/mkmode.out")"
grep -q "mknod fifo 04644: refused" "$job/mkmode.out" || fail "mknod with 04644: $(cat "$job/mkmode.out")"
grep -q "mknod fifo 0644: made" "$job/mkmode.out" || fail "a plain FIFO: $(cat "$job/mkmode.out")"
ok "no setuid/setgid bit: chmod, open(O_CREAT, 06755) and mknod(04644) are refused"
devs=$(find "$job" \( -type b -o -type c \) -printf '%p\n')
[ -z "$devs" ] || fail "device nodes in the job folder: $devs"
ok "no device node (block 254:0, char 1:3 refused)"
[ "$(stat -c %u:%g "$job/by-rank")" = "$uid:$gid" ] && [ "$(cat "$job/by-rank")" = hello ] ||
	fail "by-rank: $(stat -c %u:%g "$job/by-rank")"
ok "a file a rank writes appears on the host with the user's uid"

# 2. The folder is shared with the user's rights only: a folder the user cannot reach
#    is refused before any VM boots, though vmhpc runs as root.
mkdir -m 0700 "$WORK/rootonly"
expect_fail "a root-only folder, sudo'd for the user" "submitting user must be able to reach it" \
	env SUDO_UID="$uid" SUDO_GID="$gid" "$VMHPC" run --workdir "$WORK/rootonly" --vms 1 -n 1 -- hostname

# 3. (7a) The plain user, no sudo: its own store, a shared job folder, MPI over 2 VMs.
allow_unprivileged_taps
"$VMHPC" image export tiny-mpi -o "$WORK/tiny-mpi.tar"
chmod 0644 "$WORK/tiny-mpi.tar"
as_user() {
	runuser -u "$user" -- env -i PATH=/usr/bin:/bin HOME="$home" VMHPC_STORE="$home/store" \
		VMHPC_CACHE="$home/cache" "$@"
}
as_user "$home/bin/vmhpc" image import "$WORK/tiny-mpi.tar" >/dev/null || fail "import as $user"
rm -f "$job/ring-result.txt"
(cd "$job" && as_user "$home/bin/vmhpc" run --vms 2 -- ./ring) >"$WORK/user.out" 2>"$WORK/user.err" ||
	fail "the plain user's run: $(cat "$WORK/user.err")"
grep -q VERIFIED "$WORK/user.out" || fail "ring not verified: $(cat "$WORK/user.out" "$WORK/user.err")"
grep -q "ranks=2 token=1 sum=3 VERIFIED" "$job/ring-result.txt" || fail "result: $(cat "$job/ring-result.txt" 2>&1)"
[ "$(stat -c %u:%g "$job/ring-result.txt")" = "$uid:$gid" ] || fail "ring-result.txt is $(stat -c %u:%g "$job/ring-result.txt")"
left=$(pgrep -a -u "$uid" || true)
[ -z "$left" ] || fail "the plain user's run left processes: $left"
ok "a plain user (no sudo) shares its job folder: 2-VM MPI ring verified, nothing left running"
finish
