#!/usr/bin/env bash
# A job's network reaches its own VMs only (net/netns.h): not the host by any of its
# addresses (IPv4, IPv6 link-local on every interface, all-nodes multicast, ARP), not
# another job, not another user; 11 VMs get distinct taps; a job killed with SIGKILL
# leaves no link, namespace or process; a plain user's job works in a user namespace of
# its own with nothing another user could join. Everything made here is removed on exit.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "run as root: the test makes host listeners and a temporary user"
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
# The ring inside an image too, for the plain user's run without a job folder.
cp "$ring" "$WORK/ring"
sed 's/^name = tiny-mpi$/name = tiny-mpi-ring/' "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >"$WORK/ring.ini"
printf 'files = %s:/usr/bin/mpi-ring\n' "$WORK/ring" >>"$WORK/ring.ini"
"$VMHPC" image build --level 1 "$WORK/ring.ini" >/dev/null
on_exit "'$VMHPC' cleanup"

job="$WORK/job"
mkdir -p "$job"
chmod 0777 "$job"
run() { (cd "$job" && VMHPC_BOOT_TIMEOUT_MS=600000 "$VMHPC" run "$@"); }
links_before=$(ip -o link show | awk -F': ' '{print $2}' | sort)

# QEMUs whose parent is pid $1.
qemus_of() { pgrep -P "$1" -f qemu-system-x86_64 || true; }
ns_of() { readlink "/proc/$1/ns/$2"; }
# Whether any process is in namespace $1 ("net:[N]") or holds an fd on it.
ns_in_use() {
	local p
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$1" ] && return 0
		[ "$(readlink "$p/ns/user" 2>/dev/null)" = "$1" ] && return 0
		ls -l "$p/fd" 2>/dev/null | grep -qF -- "$1" && return 0
	done
	return 1
}
# Links of ours in the host's namespace (other people's jobs may add theirs meanwhile).
no_new_links() {
	local now new
	now=$(ip -o link show | awk -F': ' '{print $2}' | sort)
	new=$(comm -13 <(echo "$links_before") <(echo "$now") | grep -E '^(br0|tap[0-9]+)(@|$)' || true)
	[ -z "$new" ] || fail "$1: links appeared in the host's namespace: $new"
}
wait_ready() { # log pid
	for _ in $(seq 1 600); do
		grep -q "VMs ready" "$1" 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || fail "the job ended before it was ready: $(cat "$1")"
		sleep 0.5
	done
	fail "the job never became ready: $(cat "$1")"
}

# 1. The host is out of reach. Listeners on every host address (TCP and UDP, IPv4 and
# IPv6) note anything that arrives; the guests try every host address they could know.
port=$((20000 + RANDOM % 20000))
python3 - "$port" "$WORK/listener.log" >"$WORK/listener.out" 2>&1 <<'EOF' &
import select, socket, sys
port, log = int(sys.argv[1]), sys.argv[2]
socks = []
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(fam, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        socks.append(s)
print("listening", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            c, peer = s.accept()
            c.close()
        else:
            _, peer = s.recvfrom(2048)
        with open(log, "a") as f:
            f.write("%s from %s\n" % (s.type, peer))
EOF
listener=$!
on_exit "kill $listener"
for _ in $(seq 1 50); do grep -q listening "$WORK/listener.out" && break; sleep 0.1; done
grep -q listening "$WORK/listener.out" || fail "host listeners: $(cat "$WORK/listener.out")"
# The listeners answer from the host itself (so the probes below could succeed).
python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 2).close()"
for _ in $(seq 1 50); do [ -s "$WORK/listener.log" ] && break; sleep 0.1; done
[ -s "$WORK/listener.log" ] || fail "the host listener does not see a local connection"
: >"$WORK/listener.log"

v4=$(ip -o -4 addr show | awk '{split($4, a, "/"); if (a[1] !~ /^127\./) print a[1]}' | tr '\n' ' ')
v6=$(ip -o -6 addr show | awk '{split($4, a, "/"); if (a[1] != "::1") print a[1]}' | tr '\n' ' ')
[ -n "$v4" ] || fail "the host has no IPv4 address to try"
cat >"$job/probe.sh" <<'EOF'
# In every VM: try the host ($V4, $V6 on $PORT), then the other VM (positive controls).
me=$(hostname)
for a in $V4; do
	nc -w 2 "$a" "$PORT" </dev/null >/dev/null 2>&1 && echo "REACHED tcp $a"
	echo x | nc -u -w 1 "$a" "$PORT" >/dev/null 2>&1
	ping -c 1 -W 1 "$a" >/dev/null 2>&1 && echo "REACHED ping $a"
	arping -c 1 -w 2 -I eth0 "$a" 2>&1 | grep -q "Received [1-9]" && echo "REACHED arp $a"
done
for a in $V6; do
	case $a in fe80:*) a="$a%eth0" ;; esac
	nc -w 2 "$a" "$PORT" </dev/null >/dev/null 2>&1 && echo "REACHED tcp6 $a"
	ping6 -c 1 -W 1 "$a" >/dev/null 2>&1 && echo "REACHED ping6 $a"
done
# Every node on the segment answers ff02::1: only the job's VMs may.
# (Both VMs probe at once, right after boot: the other's link-local address may still be
# in duplicate address detection for a second or two. Asked again until someone answers.)
for try in 1 2 3 4 5 6; do
	responders=$(ping6 -c 2 -w 3 -I eth0 ff02::1 2>/dev/null | sed -n 's/.* from \([0-9a-f:]*\): .*/RESPONDER \1/p' | sort -u)
	[ -n "$responders" ] && break
	sleep 1
done
[ -n "$responders" ] && echo "$responders"
ip neigh show dev eth0 | sed 's/^/NEIGH /'
# Positive controls: the same probes reach the other VM.
other=10.77.0.1
[ "$me" = vm0 ] && other=10.77.0.2
nc -w 2 "$other" 7000 </dev/null >/dev/null 2>&1 && echo "PEER tcp"
ping -c 1 -W 3 "$other" >/dev/null 2>&1 && echo "PEER ping"
arping -c 1 -w 3 -I eth0 "$other" 2>&1 | grep -q "Received [1-9]" && echo "PEER arp"
true
EOF
run --vms 2 --label -- env V4="$v4" V6="$v6" PORT="$port" sh ./probe.sh >"$WORK/probe.out" 2>"$WORK/probe.err" ||
	fail "probe job: $(tail -5 "$WORK/probe.err")"
! grep REACHED "$WORK/probe.out" || fail "a guest reached the host: $(grep REACHED "$WORK/probe.out")"
[ ! -s "$WORK/listener.log" ] || fail "the host's listeners heard a guest: $(cat "$WORK/listener.log")"
for vm in vm0 vm1; do
	for what in tcp ping arp; do
		grep -q "@$vm\] PEER $what" "$WORK/probe.out" || fail "$vm: no $what to the other VM: $(cat "$WORK/probe.out")"
	done
done
# The VMs' EUI-64 link-local addresses (MACs 52:54:00:00:00:01 and :02).
responders=$(sed -n 's/.*RESPONDER //p' "$WORK/probe.out" | sort -u | tr '\n' ' ')
[ -n "$responders" ] || fail "nobody answered ff02::1, not even the other VM: $(cat "$WORK/probe.out")"
for r in $responders; do
	case $r in fe80::5054:ff:fe00:1 | fe80::5054:ff:fe00:2) ;; *) fail "ff02::1 answered by $r (only the job's VMs may answer)" ;; esac
done
no_new_links "probe job"
ok "no host address reached (IPv4 ${v4}; IPv6 ${v6:-none}; TCP, UDP, ping, ARP, ff02::1); vm0<->vm1 by TCP, ping, ARP"

# 2. Two concurrent jobs do not see each other: job A's vm0 takes an extra address that
# A's vm1 reaches and job B does not (the jobs' own addresses are the same by design).
mkdir -p "$WORK/jobA"
chmod 0777 "$WORK/jobA"
cat >"$WORK/jobA/a.sh" <<'EOF'
if [ "$(hostname)" = vm0 ]; then ip addr add 10.77.0.200/24 dev eth0 && touch alias; fi
if [ "$(hostname)" = vm1 ]; then
	while [ ! -e alias ]; do sleep 0.5; done
	ping -c 1 -W 3 10.77.0.200 >/dev/null && touch alias-ok
fi
while [ ! -e stop ]; do sleep 0.5; done
EOF
(cd "$WORK/jobA" && VMHPC_BOOT_TIMEOUT_MS=600000 exec "$VMHPC" run --vms 2 -- sh ./a.sh) >"$WORK/a.out" 2>"$WORK/a.err" &
jobA=$!
on_exit "kill -9 $jobA"
for _ in $(seq 1 600); do [ -e "$WORK/jobA/alias-ok" ] && break; kill -0 $jobA || break; sleep 0.5; done
[ -e "$WORK/jobA/alias-ok" ] || fail "job A's vm1 does not reach its vm0's extra address: $(cat "$WORK/a.err")"
(cd "$job" && VMHPC_BOOT_TIMEOUT_MS=600000 exec "$VMHPC" run --vms 2 -n 1 -- sh -c 'sleep 2
	ping -c 2 -W 2 10.77.0.200 >/dev/null && echo REACHED ping
	arping -c 2 -w 3 -I eth0 10.77.0.200 | grep "Received [1-9]" && echo REACHED arp
	ping -c 1 -W 2 10.77.0.2 >/dev/null && echo PEER ok; true') >"$WORK/b.out" 2>"$WORK/b.err" &
jobB=$!
for _ in $(seq 1 600); do grep -q "VMs ready" "$WORK/b.err" 2>/dev/null && break; kill -0 $jobB 2>/dev/null || break; sleep 0.5; done
qa=$(qemus_of $jobA | head -1)
qb=$(qemus_of $jobB | head -1)
[ -n "$qa" ] && [ -n "$qb" ] || fail "no QEMU found for job A ($qa) or B ($qb)"
[ "$(ns_of "$qa" net)" != "$(ns_of "$qb" net)" ] || fail "jobs A and B share a network namespace"
[ "$(ns_of "$qa" net)" != "$(ns_of self net)" ] || fail "job A's QEMU is in the host's network namespace"
wait $jobB || fail "job B: $(tail -5 "$WORK/b.err")"
! grep REACHED "$WORK/b.out" || fail "job B reached job A: $(cat "$WORK/b.out")"
grep -q "PEER ok" "$WORK/b.out" || fail "job B's vm0 does not reach its own vm1: $(cat "$WORK/b.out")"
touch "$WORK/jobA/stop"
wait $jobA || fail "job A: $(tail -5 "$WORK/a.err")"
no_new_links "two jobs"
ok "two concurrent jobs: separate namespaces; B reaches neither A's address by ping nor by ARP"

# 3. 11 VMs: tap names no longer collide (vmhpc<id>t10 was truncated to 15 characters).
run --vms 11 --oversubscribe --mem 128M --no-share -- hostname >"$WORK/eleven.out" 2>"$WORK/eleven.err" ||
	fail "11 VMs: $(tail -5 "$WORK/eleven.err")"
[ "$(sort -u "$WORK/eleven.out" | tr '\n' ' ')" = "vm0 vm1 vm10 vm2 vm3 vm4 vm5 vm6 vm7 vm8 vm9 " ] ||
	fail "11 VMs printed: $(cat "$WORK/eleven.out")"
no_new_links "11 VMs"
ok "--vms 11 --mem 128M: every VM answers"

# 4. SIGKILL of vmhpc run and its QEMUs: the kernel removes the namespace and its links.
(cd "$job" && VMHPC_BOOT_TIMEOUT_MS=600000 exec "$VMHPC" run --vms 2 -- sleep 300) >/dev/null 2>"$WORK/kill.err" &
pid=$!
wait_ready "$WORK/kill.err" $pid
qemus=$(qemus_of $pid | tr '\n' ' ')
[ -n "$qemus" ] || fail "no QEMU under the killed run"
set -- $qemus
netns=$(ns_of "$1" net)
[ "$netns" != "$(ns_of self net)" ] || fail "the job's QEMU runs in the host's namespace"
kill -9 $pid $qemus
wait $pid 2>/dev/null || true
for _ in $(seq 1 50); do ns_in_use "$netns" || break; sleep 0.2; done
! ns_in_use "$netns" || fail "the killed job's namespace $netns is still held"
# A killed QEMU stays a zombie until whoever inherited it reaps it: that is gone enough.
running() { case "$(ps -o stat= -p "$1" 2>/dev/null)" in "" | Z*) return 1 ;; esac; }
for q in $qemus; do
	for _ in $(seq 1 25); do running "$q" || break; sleep 0.2; done
	! running "$q" || fail "QEMU $q survived"
done
no_new_links "SIGKILL"
"$VMHPC" cleanup >/dev/null
ok "kill -9 of vmhpc run and its QEMUs: namespace $netns gone, no link or QEMU left"

# 5. A plain user: its own user + network namespace, the MPI ring works, and there is
# nothing another user could join.
user="vmhpcnet$$"
home="$WORK/home-$user"
useradd -M -d "$home" -s /bin/sh "$user"
on_exit "userdel -f $user"
uid=$(id -u "$user")
on_exit "rm -rf /tmp/vmhpc-$uid"
mkdir -p "$home" "$WORK/bin"
chown "$user:" "$home"
cp "$VMHPC" "$WORK/bin/vmhpc"
chmod a+rx "$WORK" "$WORK/bin" "$WORK/bin/vmhpc"
"$VMHPC" image export tiny-mpi-ring -o "$WORK/ring.tar"
chmod a+r "$WORK/ring.tar"
allow_unprivileged_taps
as_user() { setpriv --reuid="$user" --regid="$user" --clear-groups env -i PATH=/usr/bin:/bin:/usr/sbin HOME="$home" VMHPC_BOOT_TIMEOUT_MS=600000 "$@"; }
as_user "$WORK/bin/vmhpc" image import "$WORK/ring.tar" >/dev/null || fail "import as $user"
# The ring writes its result into the job folder: the user's own, shared into the VMs.
mkdir "$home/job"
chown "$user:" "$home/job"
(cd "$home/job" && as_user "$WORK/bin/vmhpc" run --image tiny-mpi-ring --vms 2 -- mpi-ring) >"$WORK/user.out" 2>"$WORK/user.err" ||
	fail "the plain user's ring: $(grep -v '^  ' "$WORK/user.err" | tail -20)"
grep -q "VERIFIED" "$WORK/user.out" || fail "ring not verified: $(cat "$WORK/user.out")"
[ "$(stat -c %U "$home/job/ring-result.txt")" = "$user" ] || fail "ring-result.txt: $(ls -l "$home/job")"
ok "plain user $user: 2-VM MPI ring VERIFIED, its result in the user's shared job folder"

(cd / && exec setpriv --reuid="$user" --regid="$user" --clear-groups env -i PATH=/usr/bin:/bin:/usr/sbin HOME="$home" VMHPC_BOOT_TIMEOUT_MS=600000 "$WORK/bin/vmhpc" run --no-share --image tiny-mpi-ring --vms 2 -- mpi-ring --sleep 300) >/dev/null 2>"$WORK/user2.err" &
pid=$!
on_exit "kill -9 $pid"
wait_ready "$WORK/user2.err" $pid
qemus=$(pgrep -u "$user" -f qemu-system-x86_64 | tr '\n' ' ')
[ "$(echo $qemus | wc -w)" -eq 2 ] || fail "expected 2 QEMUs of $user, found: $qemus"
set -- $qemus
[ "$(ns_of "$1" net)" = "$(ns_of "$2" net)" ] || fail "the user's VMs are in different networks"
[ "$(ns_of "$1" net)" != "$(ns_of self net)" ] || fail "the user's QEMU is in the host's network namespace"
[ "$(ns_of "$1" user)" != "$(ns_of self user)" ] || fail "the user's QEMU is in the host's user namespace"
for q in $qemus; do
	cmd=$(tr '\0' ' ' <"/proc/$q/cmdline")
	case "$cmd" in *mcast* | *239.* | *"socket,id=net0"* | *dgram*) fail "QEMU's command line names a group: $cmd" ;; esac
	case "$cmd" in *"tap,id=net0,ifname=tap"*) ;; *) fail "QEMU's netdev is not a tap: $cmd" ;; esac
	# No network socket of QEMU's in the host's namespace (the old multicast group was one).
	! ss -H -a -p -u -t -w 2>/dev/null | grep -q "pid=$q," || fail "QEMU $q has a socket on the host: $(ss -H -a -p -u -t | grep "pid=$q,")"
done
# Another user can neither enter the job's namespace nor open the job's directory.
! setpriv --reuid=65534 --regid=65534 --clear-groups nsenter --net="/proc/$1/ns/net" true 2>/dev/null ||
	fail "another user entered the job's network namespace"
! setpriv --reuid=65534 --regid=65534 --clear-groups ls "/tmp/vmhpc-$uid/jobs" >/dev/null 2>&1 ||
	fail "another user can list the job's directory"
netns=$(ns_of "$1" net)
kill -INT $pid
wait $pid 2>/dev/null || true
for _ in $(seq 1 50); do ns_in_use "$netns" || break; sleep 0.2; done
! ns_in_use "$netns" || fail "the user's job namespace $netns outlived the job"
[ -z "$(pgrep -u "$user" -f qemu-system-x86_64)" ] || fail "the user's QEMUs outlived the job"
no_new_links "plain user"
ok "plain user: QEMUs in a user + network namespace of the job's own, tap netdev, no group or host socket; another user cannot enter"
finish
