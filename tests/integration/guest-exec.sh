#!/usr/bin/env bash
# Boots a real guest under QEMU (TCG) and drives vmhpc-init's exec service from the host with
# the built vmhpc-exec: commands, exit codes and signals, stdin, a refused token, garbage on
# the port, the DAX root (no guest page cache for its files), the virtio-serial control port
# (READY, INFO), the job share over virtiofs, the virtio-blk fallback root, and SHUTDOWN.
# Needs: qemu-system-x86_64, python3, the warm package cache (busybox-static and the cloud
# kernel), and for the share: /usr/lib/qemu/virtiofsd run as root (skipped otherwise).
# GUEST_KERNEL_SOURCE=linux-source-6.1 runs it all on the kernel of our own (built or cached,
# docs/kernel.md) instead of Debian's: tests/integration/kernel-build.sh does.
. "$(dirname "$0")/lib.sh"
set -e

: "${VMHPC_BUILD_ROOT:=$(dirname "$VMHPC")}"
EXEC="$VMHPC_BUILD_ROOT/vmhpc-exec"
[ -x "$EXEC" ] || fail "no vmhpc-exec at $EXEC; build it or set VMHPC_BUILD_ROOT"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is not installed"
VIRTIOFSD=/usr/lib/qemu/virtiofsd

SERIAL=
# On failure, the guest's console says why more often than not.
fail() {
	echo "FAIL: $*" >&2
	if [ -n "$SERIAL" ] && [ -f "$SERIAL" ]; then
		echo "--- last lines of the guest console ($SERIAL):" >&2
		tail -n 40 "$SERIAL" >&2
	fi
	exit 1
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- the image: busybox, vmhpc-exec, a 20 MB file to read through DAX ----
head -c 20000000 /dev/urandom >"$WORK/big.bin"
mkdir "$WORK/share"
KERNEL_LINE="package = linux-image-cloud-amd64"
[ -z "${GUEST_KERNEL_SOURCE:-}" ] || KERNEL_LINE="source = $GUEST_KERNEL_SOURCE"
cat >"$WORK/guest.ini" <<EOF
[image]
name = guest-exec
[kernel]
$KERNEL_LINE
modules = virtio_pci virtio_pmem nd_pmem virtio_blk virtio_net virtiofs overlay virtio_console
[root]
# MPICH's runtime as in examples/tiny-mpi.ini: hydra must start its proxy through vmhpc-exec.
packages = busybox-static mpich libmpich12 libhwloc15 libslurm38 libucx0 libnuma1
	libudev1 libc6 libibverbs1 ibverbs-providers librdmacm1 libnl-3-200 libnl-route-3-200
binaries = /usr/bin/busybox /usr/bin/mpiexec.hydra /usr/bin/hydra_pmi_proxy
# (vmhpc-exec itself the builder adds to every image.)
files = $WORK/big.bin:/data/big.bin
EOF
"$VMHPC" image build --level 1 "$WORK/guest.ini" >"$WORK/build.txt" || fail "image build failed: $(cat "$WORK/build.txt")"
for part in kernel initramfs root; do
	"$VMHPC" image cat guest-exec "$part" -o "$WORK/$part"
done
release=$("$VMHPC" image show --json guest-exec | python3 -c 'import json, sys; print(json.load(sys.stdin)["metadata"]["kernel_release"])')
ok "built guest-exec (kernel $release)"

TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
BAD_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
[ ${#TOKEN} -eq 64 ] || fail "token generation"

QEMU_PID=
VFS_PID=
stop_qemu() {
	if [ -n "$QEMU_PID" ]; then
		kill -9 "$QEMU_PID" 2>/dev/null || true
		wait "$QEMU_PID" 2>/dev/null || true
	fi
	QEMU_PID=
	if [ -n "$VFS_PID" ]; then
		kill -9 "$VFS_PID" 2>/dev/null || true
		wait "$VFS_PID" 2>/dev/null || true
	fi
	VFS_PID=
}
on_exit stop_qemu

# boot NAME ROOT_KIND [--share]: starts QEMU in the background; sets PORT, CTL, SERIAL.
boot() {
	local name=$1 kind=$2 share=${3:-} size disk=() fs=() mem=() append
	PORT=$(free_port)
	CTL="$WORK/$name.ctl"
	SERIAL="$WORK/$name.console"
	size=$(stat -c %s "$WORK/root")
	# No token and no share path here: the host sends them in SETUP on the control port.
	append="console=ttyS0 swiotlb=noforce quiet panic=-1 vmhpc.root=$kind"
	# "self" is another name of this VM: hydra launches a proxy there through its launcher.
	append+=" vmhpc.name=$name vmhpc.ip=10.0.2.15/24"
	append+=" vmhpc.hosts=$name=10.0.2.15,self=10.0.2.15,peer=10.0.2.16"
	append+=" vmhpc.overlay_mb=32 vmhpc.exec_port=7000"
	if [ "$kind" = pmem ]; then
		disk=(-object "memory-backend-file,id=pm0,mem-path=$WORK/root,share=on,readonly=on,size=$size"
			-device virtio-pmem-pci,memdev=pm0)
	else
		disk=(-drive "file=$WORK/root,if=none,id=d0,format=raw,readonly=on" -device virtio-blk-pci,drive=d0)
	fi
	if [ -n "$share" ]; then
		"$VIRTIOFSD" --socket-path="$WORK/vfs.sock" -o source="$WORK/share" -o cache=auto \
			-o sandbox=chroot >"$WORK/virtiofsd.log" 2>&1 &
		VFS_PID=$!
		for _ in $(seq 100); do [ -S "$WORK/vfs.sock" ] && break; sleep 0.05; done
		[ -S "$WORK/vfs.sock" ] || fail "virtiofsd did not start: $(cat "$WORK/virtiofsd.log")"
		fs=(-chardev "socket,id=vfs,path=$WORK/vfs.sock" -device vhost-user-fs-pci,chardev=vfs,tag=job)
		mem=(-object memory-backend-memfd,id=ram,size=256M,share=on -numa node,memdev=ram)
	fi
	qemu-system-x86_64 -machine q35 -accel tcg -m 256M,slots=1,maxmem=1G -smp 1 \
		-nodefaults -nographic -no-reboot -monitor none \
		-kernel "$WORK/kernel" -initrd "$WORK/initramfs" -append "$append" \
		"${disk[@]}" "${fs[@]}" "${mem[@]}" \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:7000" -device virtio-net-pci,netdev=n0,romfile= \
		-device virtio-serial-pci -chardev "socket,id=ctl,path=$CTL,server=on,wait=off" \
		-device virtserialport,chardev=ctl,name=org.vmhpc.control \
		-serial "file:$SERIAL" >"$WORK/$name.qemu.log" 2>&1 &
	QEMU_PID=$!
	# What the host runtime does first: SETUP (the token and the job folder), then INFO once
	# the guest serves. Retried while QEMU makes its socket and the guest boots.
	"$EXEC" --token "$TOKEN" --unix "$CTL" --setup ${share:+--share "$WORK/share"} \
		--wait-ms 90000 --info >/dev/null || fail "SETUP over the control port: $(tail -5 "$SERIAL")"
}

# gx [OPTIONS] -- PROGRAM ARGS...: vmhpc-exec against the booted guest's TCP port.
gx() {
	local opts=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		opts+=("$1")
		shift
	done
	"$EXEC" --token "$TOKEN" --port "$PORT" "${opts[@]}" 127.0.0.1 "$@"
}

wait_service() {
	local t0=$SECONDS
	"$EXEC" --token "$TOKEN" --port "$PORT" --wait-ms 90000 127.0.0.1 -- true ||
		fail "the exec service did not answer within 90 s"
	kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited: $(cat "$WORK"/*.qemu.log)"
	echo "# service answered after $((SECONDS - t0)) s"
}

# shutdown_and_wait [sigterm]: SHUTDOWN (or SIGTERM to PID 1), then QEMU must be gone
# within 10 s.
shutdown_and_wait() {
	local t0 t1 how=SHUTDOWN
	t0=$(date +%s%N)
	if [ "${1:-}" = sigterm ]; then
		how="SIGTERM to PID 1"
		gx -- kill -TERM 1 || true # the guest may go before the EXIT reaches us
	else
		"$EXEC" --token "$TOKEN" --port "$PORT" --shutdown 127.0.0.1 || fail "SHUTDOWN refused"
	fi
	for _ in $(seq 200); do
		kill -0 "$QEMU_PID" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$QEMU_PID" 2>/dev/null && fail "QEMU still runs 10 s after SHUTDOWN"
	wait "$QEMU_PID" 2>/dev/null || true
	t1=$(date +%s%N)
	QEMU_PID=
	grep -q "powering off" "$SERIAL" || fail "the console lacks 'powering off'"
	ok "$how: QEMU exited $(((t1 - t0) / 1000000)) ms after the request"
}

# ---- boot 1: DAX root, control port, share ----
share=
if [ "$(id -u)" = 0 ] && [ -x "$VIRTIOFSD" ]; then share=--share; fi
boot vm0 pmem $share
wait_service
grep -q "vmhpc-init: ready" "$SERIAL" || fail "the console lacks 'vmhpc-init: ready'"

out=$(gx -- uname -r)
[ "$out" = "$release" ] || fail "uname -r gave '$out', want $release"
ok "uname -r runs in the guest: $out"

set +e
gx -- sh -c 'exit 7'
rc=$?
gx -- sh -c 'kill -9 $$'
rc9=$?
gx -- /no/such/program 2>"$WORK/nosuch.err"
rc127=$?
set -e
[ $rc -eq 7 ] || fail "exit 7 came back as $rc"
[ $rc9 -eq 137 ] || fail "SIGKILL came back as $rc9, want 137"
[ $rc127 -eq 127 ] && grep -q "/no/such/program" "$WORK/nosuch.err" || fail "a missing program gave $rc127: $(cat "$WORK/nosuch.err")"
ok "exit codes propagate: 7, 128+9 for a killed command, 127 for a missing program"

out=$(gx -- sh -c 'echo out; echo err >&2' 2>"$WORK/err.txt")
[ "$out" = out ] && [ "$(cat "$WORK/err.txt")" = err ] || fail "stdout/stderr mixed up: '$out' / '$(cat "$WORK/err.txt")'"
out=$(printf 'hello\nworld\n' | gx -- cat)
[ "$out" = "$(printf 'hello\nworld')" ] || fail "stdin through cat gave '$out'"
head -c 3000000 /dev/urandom >"$WORK/in.bin"
want=$(md5sum <"$WORK/in.bin" | cut -d' ' -f1)
got=$(gx -- md5sum <"$WORK/in.bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "3 MB through stdin: md5 $got, want $want"
out=$(gx -n -- cat)
[ -z "$out" ] || fail "-n should give EOF on stdin"
ok "stdout and stderr apart; stdin passes through (3 MB, md5 equal)"

# Not through gx: a function run with & is a subshell, and the signal must reach vmhpc-exec.
"$EXEC" --token "$TOKEN" --port "$PORT" 127.0.0.1 -- sleep 60 &
client=$!
sleep 1
kill -TERM "$client"
set +e
wait "$client"
rc=$?
set -e
[ $rc -eq 143 ] || fail "SIGTERM to vmhpc-exec gave $rc, want 143 (forwarded to the command)"
out=$(gx -- sh -c 'ps | grep -c "[s]leep 60" || true')
[ "$out" = 0 ] || fail "sleep 60 still runs in the guest"
ok "SIGTERM is forwarded to the remote command (128+15)"

[ "$(gx --user 65534:65533 -- id -u)" = 65534 ] || fail "--user: the command did not run as uid 65534"
[ "$(gx --user 65534:65533 -- id -g)" = 65533 ] || fail "--user: the command did not run as gid 65533"
gx -- sh -c '(sleep 0.2 &); (sleep 0.2 &); exit 0'
sleep 1
zombies=$(gx -- ps -o stat | grep -c '^Z' || true)
[ "$zombies" = 0 ] || fail "$zombies zombies: orphans are not reaped by PID 1"
ok "commands run as the requested uid/gid; orphaned children are reaped"

expect_fail "a wrong token" "wrong token" "$EXEC" --token "$BAD_TOKEN" --port "$PORT" 127.0.0.1 -- true
grep -q "refused: wrong token" "$SERIAL" || fail "the refusal is not on the console"
[ "$(gx -- echo still here)" = "still here" ] || fail "the right token is not served after a wrong one"
ok "a wrong token is refused and logged; the right one still works"

python3 - "$PORT" <<'EOF' || fail "sending garbage failed"
import os, random, socket, struct, sys, time
port = int(sys.argv[1])
random.seed(7)
def send(data, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if read:
            while s.recv(4096):
                pass
    except OSError:
        pass
    s.close()
for i in range(30):
    send(os.urandom(random.randint(1, 4000)))                   # noise
send(b"VH\x01\x00" + struct.pack(">I", 1 << 30))               # oversize
send(b"VH\x63\x00\x00\x00\x00\x00")                            # unknown type
send(b"VH\x01\x00\x00\x00\x00\x20" + b"x" * 10)                # truncated HELLO
send(b"VH\x03\x00\x00\x00\x00\x30" + os.urandom(0x30))         # EXEC before HELLO
for i in range(20):                                            # half a header, then gone
    send(b"VH\x01"[: random.randint(1, 3)], read=False)
EOF
[ "$(gx -- echo alive)" = alive ] || fail "the service does not answer after garbage"
grep -q "bad frame stream" "$SERIAL" || fail "garbage was not logged"
ok "garbage, oversize, truncated and unauthenticated frames close only their peer"

mounts=$(gx -- cat /proc/mounts)
echo "$mounts" | grep -q '^/dev/pmem0 .* ro,.*dax' || fail "no ro,dax pmem mount: $mounts"
echo "$mounts" | grep -q '^overlay / overlay' || fail "/ is not the overlay: $mounts"
echo "$mounts" | grep -q '^tmpfs /dev/shm tmpfs' || fail "no tmpfs on /dev/shm: $mounts"
echo "$mounts" | grep -q '^devpts /dev/pts devpts' || fail "no /dev/pts: $mounts"
out=$(gx -- sh -c 'a=$(grep "^Cached:" /proc/meminfo | tr -s " " | cut -d" " -f2)
	cat /data/big.bin >/dev/null
	b=$(grep "^Cached:" /proc/meminfo | tr -s " " | cut -d" " -f2)
	echo $a $b')
read -r before after <<<"$out"
grew=$((after - before))
[ "$grew" -lt 2048 ] || fail "reading 20 MB from the DAX root grew Cached by $grew kB ($before -> $after)"
ok "root is ro,dax on /dev/pmem0 under an overlay; reading 20 MB grew Cached by $grew kB"

[ "$(gx -- hostname)" = vm0 ] || fail "hostname is not vm0"
gx -- cat /etc/hosts | grep -q '^10.0.2.16 peer$' || fail "/etc/hosts lacks the peer: $(gx -- cat /etc/hosts)"
gx -- sh -c 'echo written >/etc/motd && cat /etc/motd' | grep -q written || fail "the overlay is not writable"
ok "hostname, /etc/hosts from vmhpc.hosts, writable overlay"

# vmhpc-exec inside the guest, called as hydra calls its launcher.
out=$(gx -- /usr/bin/vmhpc-exec -x vm0 '"/bin/echo"' '$((6*7))' from '$(hostname)')
[ "$out" = "42 from vm0" ] || fail "hydra-style call inside the guest gave '$out'"
set +e
gx -- /usr/bin/vmhpc-exec -x vm0 'exit 3'
rc=$?
set -e
[ $rc -eq 3 ] || fail "in-guest exit code came back as $rc"
ok "in the guest, vmhpc-exec -x HOST 'CMDLINE' (token from \$VMHPC_TOKEN, host from /etc/hosts) works"

# The token and the share path never were on the kernel command line; the token reaches
# commands in $VMHPC_TOKEN and root in a 0400 file; SETUP is taken once.
cmdline=$(gx -- cat /proc/cmdline)
case "$cmdline" in *"$TOKEN"* | *vmhpc.token* | *vmhpc.share*) fail "secrets on the command line: $cmdline" ;; esac
[ "$(gx -- sh -c 'printf %s "$VMHPC_TOKEN"')" = "$TOKEN" ] || fail "commands lack \$VMHPC_TOKEN"
[ "$(gx -- stat -c '%a %u' /run/vmhpc/token)" = "400 0" ] || fail "/run/vmhpc/token is not 0400 root"
[ "$(gx --no-env -- cat /run/vmhpc/token)" = "$TOKEN" ] || fail "/run/vmhpc/token has another token"
expect_fail "an unprivileged user reading the token file" "Permission denied" \
	"$EXEC" --token "$TOKEN" --port "$PORT" --user 65534 127.0.0.1 -- cat /run/vmhpc/token
[ "$("$EXEC" --token "$TOKEN" --unix "$CTL" --setup -- echo after-second-setup)" = after-second-setup ] ||
	fail "the control port after a second SETUP"
grep -q "SETUP is taken once" "$SERIAL" || fail "a second SETUP was not refused: $(tail -5 "$SERIAL")"
ok "no token or share on the kernel command line; \$VMHPC_TOKEN, /run/vmhpc/token 0400; SETUP once"

# MPICH's hydra with vmhpc-exec as its ssh: a wrapper logs the launcher's argv on the way.
out=$(gx -- sh -c 'cd /tmp
	printf "#!/bin/sh\necho \"\$@\" >/tmp/launcher.argv\nexec /usr/bin/vmhpc-exec \"\$@\"\n" >/tmp/ssh
	chmod +x /tmp/ssh
	mpiexec.hydra -launcher ssh -launcher-exec /tmp/ssh -hosts self -n 2 /usr/bin/hostname')
[ "$out" = "$(printf 'vm0\nvm0')" ] || fail "mpiexec.hydra through vmhpc-exec printed '$out'"
argv=$(gx -- cat /tmp/launcher.argv)
case "$argv" in
'-x self "/usr/bin/hydra_pmi_proxy" --control-port vm0:'*) ;;
*) fail "hydra called its launcher with: $argv" ;;
esac
set +e
gx -- sh -c 'cd /tmp; mpiexec.hydra -launcher ssh -launcher-exec /usr/bin/vmhpc-exec -hosts self -n 1 sh -c "exit 5"'
rc=$?
set -e
[ $rc -eq 5 ] || fail "a rank's exit code 5 came back through hydra as $rc"
ok "mpiexec.hydra -launcher ssh -launcher-exec vmhpc-exec runs its proxy and ranks; exit code 5 propagates"

info=$("$EXEC" --token "$TOKEN" --unix "$CTL" --info) || fail "INFO over the control port failed"
used=$(echo "$info" | sed -n 's/^mem_used_kb=//p')
total=$(echo "$info" | sed -n 's/^mem_total_kb=//p')
[ -n "$used" ] && [ "$used" -gt 0 ] && [ "$used" -lt "$total" ] || fail "INFO: $info"
[ "$("$EXEC" --token "$TOKEN" --unix "$CTL" -- uname -n)" = vm0 ] || fail "exec over the control port"
expect_fail "a wrong token on the control port" "wrong token" "$EXEC" --token "$BAD_TOKEN" --unix "$CTL" -- true
[ "$("$EXEC" --token "$TOKEN" --unix "$CTL" -- echo again)" = again ] || fail "control port after a refusal"
# A host program that dies while its command floods the port: the command ends, and the next
# connection starts clean (READY first, no stale output).
"$EXEC" --token "$TOKEN" --unix "$CTL" -- yes >/dev/null &
client=$!
sleep 1
kill -9 "$client"
wait "$client" 2>/dev/null || true
"$EXEC" --token "$TOKEN" --unix "$CTL" --info >/dev/null || fail "control port after a killed client"
out=$("$EXEC" --token "$TOKEN" --unix "$CTL" -- sh -c 'ps | grep -c "[y]es$" || true')
[ "$out" = 0 ] || fail "yes still runs after its client was killed"
ok "control port: READY, INFO (guest uses $used of $total kB), exec, refusal, killed client, reconnect"

if [ -n "$share" ]; then
	echo from-host >"$WORK/share/in.txt"
	out=$(gx -- cat "$WORK/share/in.txt")
	[ "$out" = from-host ] || fail "the guest does not see the share's file: '$out'"
	gx -- sh -c "cd '$WORK/share' && echo from-guest > out.txt"
	[ "$(cat "$WORK/share/out.txt")" = from-guest ] || fail "the guest's write did not reach the host"
	[ "$(gx --cwd "$WORK/share" -- pwd)" = "$WORK/share" ] || fail "--cwd in the share"
	ok "virtiofs share at the same path, read and write both ways"
else
	echo "# skipped the share: needs root and $VIRTIOFSD"
fi

shutdown_and_wait

# ---- boot 2: the virtio-blk fallback ----
boot vm1 blk
wait_service
gx -- cat /proc/mounts | grep -q '^/dev/vda .* ro' || fail "root=blk did not mount /dev/vda: $(gx -- cat /proc/mounts)"
[ "$(gx -- hostname)" = vm1 ] || fail "hostname is not vm1"
ok "vmhpc.root=blk mounts /dev/vda read-only under the overlay"
shutdown_and_wait sigterm

pgrep -f "$WORK" >/dev/null && fail "a process still uses $WORK: $(pgrep -af "$WORK")"
finish
