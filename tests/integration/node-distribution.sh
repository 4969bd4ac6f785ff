#!/usr/bin/env bash
# vmhpc node: an image version distributed to 4 nodes of a test cluster (network
# namespaces, tests/cluster/cluster.sh) down the pipelined chain (and the binomial tree on
# request); every cache verifies; a second run moves 0 bytes; a forged or absent MUNGE
# credential and a plain user on the local socket are refused and change nothing; a node
# killed with kill -9 mid-distribution: the others re-parent and finish, and the restarted
# daemon's cache verifies and completes; a relay stopped (SIGSTOP) or slowed to a trickle
# mid-distribution is replaced, the fetch completes, and once resumed it corrupts nothing; a
# relay whose own download is slow is replaced by pace; a
# job whose image one of its nodes holds is rooted there (the registry may be down).
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 77; }
for t in munged docker-registry ip tc; do
	command -v "$t" >/dev/null || { echo "SKIP: $t is not installed (scripts/install-deps.sh)"; exit 77; }
done
. "$VMHPC_SOURCE_ROOT/tests/cluster/cluster.sh"
on_exit cluster_down

jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[int(k)] if k.isdigit() else v[k]
print(str(v).lower() if isinstance(v, bool) else v)' "$1" "$2"; }
metric() { # NODE NAME: a metric's value from the node's GET /metrics
	local i=${1#n}
	ip netns exec "vh$CL_ID-$1" curl -sf "http://$CL_NET.$((10 + i)):7420/metrics" |
		awk -v m="$2" '$1 == m {print $2}'
}
verify_cache() { # NODE
	VMHPC_STORE="$CL_DIR/cache-$1/store" "$VMHPC" image verify >"$WORK/verify-$1" 2>&1 ||
		fail "$1's cache does not verify: $(cat "$WORK/verify-$1")"
	grep -q " 0 problems" "$WORK/verify-$1" || fail "$1's cache: $(cat "$WORK/verify-$1")"
}

# Two versions: small (busybox, ~15 MB) and big (the same plus 24 MB of random bytes).
small_spec small >"$WORK/small.ini"
"$VMHPC" image build --level 1 "$WORK/small.ini" >/dev/null
# small:2: small:1 plus 200 kB of its own, for the second-version goal: a change small
# enough that the manifest would be a tenth of what a link carries if it went whole. Built
# next to small:1 alone, so that its unique bytes are what small:1 lacks (the versions
# below share some of them: /opt and the root's tables).
head -c 200000 /dev/urandom >"$WORK/v2.bin"
small_spec small "files = $WORK/v2.bin:/opt/v2.bin" >"$WORK/small2.ini"
"$VMHPC" image build --level 1 "$WORK/small2.ini" >/dev/null
unique2=$("$VMHPC" image list --json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["name"] == "small" and e["version"] == 2: print(e["unique_bytes"])')
[ -n "$unique2" ] || fail "small:2 was not built"
head -c 24000000 /dev/urandom >"$WORK/extra.bin"
small_spec big "files = $WORK/extra.bin:/opt/extra.bin" >"$WORK/big.ini"
"$VMHPC" image build --level 1 "$WORK/big.ini" >/dev/null

# Two more (24 MB of random bytes each, their own) for the stopped and the slowed relay.
for x in stop slow; do
	head -c 24000000 /dev/urandom >"$WORK/$x.bin"
	small_spec $x "files = $WORK/$x.bin:/opt/$x.bin" >"$WORK/$x.ini"
	"$VMHPC" image build --level 1 "$WORK/$x.ini" >/dev/null
done
# slowdl: 6 MB of its own, for a relay whose download is slow.
head -c 6000000 /dev/urandom >"$WORK/slowdl.bin"
small_spec slowdl "files = $WORK/slowdl.bin:/opt/slowdl.bin" >"$WORK/slowdl.ini"
"$VMHPC" image build --level 1 "$WORK/slowdl.ini" >/dev/null
# hold: 8 MB of its own, for a job whose image one of its nodes holds.
head -c 8000000 /dev/urandom >"$WORK/hold.bin"
small_spec hold "files = $WORK/hold.bin:/opt/hold.bin" >"$WORK/hold.ini"
"$VMHPC" image build --level 1 "$WORK/hold.ini" >/dev/null
rm -f "$WORK"/*.bin

CL_PEER_TIMEOUT_MS=2000
cluster_up 4 100mbit
cluster_push small:1 small:1
cluster_push small:1 smallb:1
cluster_push small:2 small:2
cluster_push big:1 big:1
cluster_push stop:1 stop:1
cluster_push slow:1 slow:1
cluster_push hold:1 hold:1
cluster_push slowdl:1 slowdl:1
ok "cluster of 4 nodes, registry and munged up ($CL_DIR)"
REF="$CL_REGISTRY/vmhpc/small:1"

# 1. Distribution to 4 nodes.
cluster_fetch "$REF" 'n[1-4]' --json >"$WORK/f1.json" || fail "fetch: $(cat "$WORK/f1.json")"
[ "$(jget "$WORK/f1.json" ok)" = true ] || fail "fetch failed: $(cat "$WORK/f1.json")"
chunk_bytes=$(jget "$WORK/f1.json" per_node.0.reply.bytes_received)
[ "$chunk_bytes" -gt 1000000 ] || fail "n1 received $chunk_bytes bytes"
for i in 0 1 2 3; do
	[ "$(jget "$WORK/f1.json" per_node.$i.reply.bytes_received)" = "$chunk_bytes" ] ||
		fail "node $i received other than $chunk_bytes bytes: $(cat "$WORK/f1.json")"
done
# The chain (the default): n1 from the registry, n2 from n1, n3 from n2, n4 from n3.
srcs=$(for i in 0 1 2 3; do jget "$WORK/f1.json" per_node.$i.reply.source; done | tr '\n' ' ')
[ "$srcs" = "registry n1 n2 n3 " ] || fail "sources are '$srcs', not the chain"
ok "small:1 reached n1..n4 in $(jget "$WORK/f1.json" seconds) s, $chunk_bytes bytes each, chain: $srcs"
for n in n1 n2 n3 n4; do verify_cache $n; done
ok "vmhpc image verify passes on every node's cache"
[ "$(metric n1 'vmhpc_node_sent_bytes_total{peer="n2"}')" = "$chunk_bytes" ] ||
	fail "n1's metrics: $(metric n1 'vmhpc_node_sent_bytes_total{peer="n2"}') sent to n2"
[ "$(metric n4 'vmhpc_node_received_bytes_total{source="n3"}')" = "$chunk_bytes" ] || fail "n4's metrics"
[ -z "$(metric n1 'vmhpc_node_sent_bytes_total{peer="n3"}')" ] || fail "n1 sent to n3 in a chain"
ok "metrics: n1 sent $chunk_bytes bytes to n2 only, n4 received them from n3"
# The binomial tree on request (the same content under another tag: 0 bytes, the shape
# shows in the sources): n1 from the registry, n2 and n3 from n1, n4 from n2.
cluster_fetch "$CL_REGISTRY/vmhpc/smallb:1" 'n[1-4]' --scheme binomial --json >"$WORK/fb.json" ||
	fail "binomial fetch: $(cat "$WORK/fb.json")"
srcs=$(for i in 0 1 2 3; do jget "$WORK/fb.json" per_node.$i.reply.source; done | tr '\n' ' ')
[ "$srcs" = "registry n1 n1 n2 " ] || fail "sources are '$srcs', not the binomial tree"
[ "$(jget "$WORK/fb.json" bytes_received)" = 0 ] || fail "binomial: bytes moved for chunks every node had"
expect_fail "an unknown scheme" "unknown distribution scheme \"ring\" (chain, binomial, central)" \
	cluster_fetch "$CL_REGISTRY/vmhpc/smallb:1" 'n[1-2]' --scheme ring
ok "--scheme binomial: sources $srcs, 0 bytes (every node had the chunks)"

# 2. Again: every node has it, 0 bytes move.
cluster_fetch "$REF" 'n[1-4]' --json >"$WORK/f2.json"
[ "$(jget "$WORK/f2.json" bytes_received)" = 0 ] || fail "second run moved bytes: $(cat "$WORK/f2.json")"
[ "$(metric n3 vmhpc_node_cache_hits_total)" = 1 ] || fail "n3: no cache hit counted"
ok "second run: 0 bytes moved, in $(jget "$WORK/f2.json" seconds) s"

# 3. Authentication. A credential from another munged (another key) is forged here.
other="$WORK/munge2"
mkdir -p "$other"
dd if=/dev/urandom of="$other/key" bs=1024 count=1 status=none
chmod 600 "$other/key"
munged -F -f --socket="$other/sock" --key-file="$other/key" --pid-file="$other/pid" \
	--seed-file="$other/seed" --log-file="$other/log" >/dev/null 2>&1 &
on_exit "kill -9 $!"
for _ in $(seq 50); do [ -S "$other/sock" ] && break; sleep 0.1; done
cp "$CL_DIR/cache-n1/state.json" "$WORK/state-before"
expect_fail "a forged MUNGE credential is refused" "MUNGE credential refused" \
	"$VMHPC" node fetch --image "$CL_REGISTRY/vmhpc/big:1" --nodes n1 \
	--peers "$CL_DIR/peers" --munge-socket "$other/sock"
# No credential at all: a plain request frame on the TCP port.
python3 - "$CL_NET.11" >"$WORK/plain.out" <<'PY'
import json, socket, struct, sys
s = socket.create_connection((sys.argv[1], 7420))
body = json.dumps({"op": "present", "ref": "x/y:z", "nodes": "n1"}).encode()
s.sendall(struct.pack("<IHHI", 0x4e484d56, 1, 0, len(body)) + body)
h = s.recv(12); n = struct.unpack("<I", h[8:12])[0]; d = b""
while len(d) < n: d += s.recv(n - len(d))
print(d.decode())
PY
grep -q "peers must send a MUNGE credential" "$WORK/plain.out" || fail "plain request: $(cat "$WORK/plain.out")"
ok "a request without a credential is refused: $(cat "$WORK/plain.out")"
# A holder asked (cached_only) for an image it does not hold: the race where it evicted the
# image between its `has` answer and the feed (docs/node.md). It refuses at once, with a
# reason, and starts no fetch of its own (which could ask the asker, which waits on it).
reg_before=$(metric n1 'vmhpc_node_received_bytes_total{source="registry"}')
munge -S "$CL_DIR/munge.sock" -s "{\"op\": \"feed\", \"ref\": \"$CL_REGISTRY/vmhpc/hold:1\", \"nodes\": [\"n1\", \"n2\"], \"scheme\": \"chain\", \"from\": \"n2\", \"cached_only\": true}" >"$WORK/feed.cred" ||
	fail "munge could not sign a feed request"
python3 - "$CL_NET.11" "$WORK/feed.cred" >"$WORK/feed.out" <<'PY'
import socket, struct, sys
cred = open(sys.argv[2], "rb").read().strip()
s = socket.create_connection((sys.argv[1], 7420)); s.settimeout(10)
s.sendall(struct.pack("<IHHI", 0x4e484d56, 2, 0, len(cred)) + cred)
h = b""
while len(h) < 12: h += s.recv(12 - len(h))
t, n = struct.unpack("<H", h[4:6])[0], struct.unpack("<I", h[8:12])[0]; d = b""
while len(d) < n: d += s.recv(n - len(d))
print(t, d.decode())
PY
grep -q "^8 n1 does not hold $CL_REGISTRY/vmhpc/hold:1 any more" "$WORK/feed.out" || fail "a cached_only feed of an image n1 lacks: $(cat "$WORK/feed.out")"
sleep 0.5
[ "$(metric n1 'vmhpc_node_received_bytes_total{source="registry"}')" = "$reg_before" ] || fail "a refused cached_only feed made n1 fetch"
[ -z "$(VMHPC_STORE="$CL_DIR/cache-n1/store" "$VMHPC" image list 2>/dev/null | grep '^hold ')" ] || fail "a refused cached_only feed left hold on n1"
ok "a holder asked for an image it no longer holds refuses at once and fetches nothing: $(cat "$WORK/feed.out")"
# A plain user on the local socket.
expect_fail "a plain user on the node's socket is refused" "only root or the Slurm user" \
	setpriv --reuid=65534 --regid=65534 --clear-groups "$VMHPC" node present \
	--socket "$CL_DIR/n1.sock" --image "$CL_REGISTRY/vmhpc/big:1" --job 1
cmp -s "$WORK/state-before" "$CL_DIR/cache-n1/state.json" || fail "a refused request changed n1's state"
[ "$(metric n1 vmhpc_node_cache_images)" = 2 ] || fail "a refused request added an image"
[ "$(metric n1 vmhpc_node_requests_refused_total)" = 3 ] || fail "n1 counted $(metric n1 vmhpc_node_requests_refused_total) refusals, not 3"
ok "refused requests changed nothing (state, images) and were counted"

# A second version after the first: each node (each link of the chain) moves at most 1.1x
# the bytes only small:2 has, in chunks and in what its link really carried (rx_bytes:
# the manifest, sent as a difference from small:1's, the protocol, TCP/IP). n1 pulls from
# the registry: small:2's patch against small:1 (docs/registry.md), not its whole OCI
# manifest and config.
rx_of() { ip netns exec "vh$CL_ID-$1" cat /sys/class/net/eth0/statistics/rx_bytes; }
for n in n1 n2 n3 n4; do eval "rx0_$n=$(rx_of $n)"; done
cluster_fetch "$CL_REGISTRY/vmhpc/small:2" 'n[1-4]' --json >"$WORK/fv2.json" || fail "small:2: $(cat "$WORK/fv2.json")"
for i in 0 1 2 3; do
	b=$(jget "$WORK/fv2.json" per_node.$i.reply.bytes_received)
	python3 -c 'import sys; sys.exit(0 if int(sys.argv[1]) <= 1.1 * int(sys.argv[2]) else 1)' "$b" "$unique2" ||
		fail "node $i received $b bytes of small:2, more than 1.1x its $unique2 own bytes"
done
links=
for n in n1 n2 n3 n4; do
	eval "l=\$((\$(rx_of $n) - rx0_$n))"
	python3 -c 'import sys; sys.exit(0 if int(sys.argv[1]) <= 1.1 * int(sys.argv[2]) else 1)' "$l" "$unique2" ||
		fail "$n's link carried $l bytes for small:2, more than 1.1x its $unique2 own bytes"
	links="$links $n:$l"
done
ok "small:2 after small:1: every node received $(jget "$WORK/fv2.json" per_node.3.reply.bytes_received) bytes of chunks for the $unique2 bytes only small:2 has; links carried$links"

# 4. kill -9 of n2 (n3's parent) mid-distribution of big:1: n3 re-parents to n1.
BIG="$CL_REGISTRY/vmhpc/big:1"
base=$(metric n2 'vmhpc_node_received_bytes_total{source="n1"}')
cluster_fetch "$BIG" 'n[1-4]' --json >"$WORK/f3.json" 2>"$WORK/f3.err" &
fetch_pid=$!
on_exit "kill $fetch_pid"
got=0
for _ in $(seq 400); do
	got=$(( $(metric n2 'vmhpc_node_received_bytes_total{source="n1"}') - base ))
	[ "$got" -gt 2000000 ] && break
	sleep 0.02
done
[ "$got" -gt 2000000 ] || fail "n2 did not start receiving big:1"
cluster_node_kill n2 9
if wait "$fetch_pid"; then fail "fetch succeeded although n2 was killed: $(cat "$WORK/f3.json")"; fi
grep -q "node n2" "$WORK/f3.err" || fail "the fetch does not name n2: $(cat "$WORK/f3.err")"
for i in 0 2 3; do
	[ "$(jget "$WORK/f3.json" per_node.$i.ok)" = true ] || fail "node $i failed: $(cat "$WORK/f3.json")"
done
[ "$(jget "$WORK/f3.json" per_node.2.reply.source)" = n1 ] ||
	fail "n3 did not re-parent to n1: $(jget "$WORK/f3.json" per_node.2.reply.source)"
[ "$(jget "$WORK/f3.json" per_node.3.reply.source)" = n3 ] ||
	fail "n4 left n3: $(jget "$WORK/f3.json" per_node.3.reply.source)"
grep -q "parent n2 failed" "$CL_DIR/n3.log" || fail "n3's log says nothing of n2"
ok "n2 killed after $got bytes: n1, n3, n4 finished, n3 re-parented to n1; fetch names n2"
for n in n1 n3 n4; do verify_cache $n; done
cluster_node_start n2
verify_cache n2
ok "the restarted n2's cache verifies"
cluster_fetch "$BIG" 'n[1-4]' --json >"$WORK/f4.json" || fail "re-fetch: $(cat "$WORK/f4.json")"
n2_bytes=$(jget "$WORK/f4.json" per_node.1.reply.bytes_received)
total_big=$(jget "$WORK/f3.json" per_node.0.reply.bytes_received)
[ "$n2_bytes" -lt "$total_big" ] || fail "n2 fetched everything again ($n2_bytes of $total_big)"
for i in 0 2 3; do
	[ "$(jget "$WORK/f4.json" per_node.$i.reply.bytes_received)" = 0 ] || fail "node $i received bytes again"
done
verify_cache n2
ok "n2 completed big:1 with the $n2_bytes bytes it lacked (of $total_big); the others moved 0"
# 5. A relay that stops (SIGSTOP: still connected, silent) mid-distribution of stop:1: n3
# re-parents to n1 after --peer-timeout-ms, n4 keeps n3 and both finish while n2 is
# stopped; the fetch waits for n2, which, resumed (SIGCONT), finishes too; nothing failed,
# and every cache verifies.
wait_receiving() { # NODE SOURCE BASE: until NODE got 2 MB more from SOURCE than BASE
	local got=0
	for _ in $(seq 400); do
		got=$(( $(metric "$1" "vmhpc_node_received_bytes_total{source=\"$2\"}") - $3 ))
		[ "$got" -gt 2000000 ] && return 0
		sleep 0.02
	done
	fail "$1 did not start receiving from $2"
}
base=$(metric n2 'vmhpc_node_received_bytes_total{source="n1"}')
d4=$(metric n4 vmhpc_node_distributions_total)
cluster_fetch "$CL_REGISTRY/vmhpc/stop:1" 'n[1-4]' --json >"$WORK/f5.json" 2>"$WORK/f5.err" &
fetch_pid=$!
on_exit "kill $fetch_pid"
wait_receiving n2 n1 "$base"
n2pid=$(cat "$CL_DIR/n2.pid")
kill -STOP "$n2pid"
on_exit "kill -CONT $n2pid"
for _ in $(seq 300); do
	[ "$(metric n4 vmhpc_node_distributions_total)" -gt "$d4" ] && break
	sleep 0.1
done
[ "$(metric n4 vmhpc_node_distributions_total)" -gt "$d4" ] || fail "n4 did not finish while n2 was stopped"
kill -0 "$fetch_pid" 2>/dev/null || fail "the fetch ended while n2 was stopped: $(cat "$WORK/f5.err")"
ok "n2 stopped (SIGSTOP) mid-way: n3 and n4 finished without it"
kill -CONT "$n2pid"
wait "$fetch_pid" || fail "fetch with a stopped relay failed: $(cat "$WORK/f5.err") $(cat "$WORK/f5.json")"
for i in 0 1 2 3; do
	[ "$(jget "$WORK/f5.json" per_node.$i.ok)" = true ] || fail "node $i failed: $(cat "$WORK/f5.json")"
done
[ "$(jget "$WORK/f5.json" per_node.2.reply.source)" = n1 ] ||
	fail "n3 did not re-parent to n1: $(jget "$WORK/f5.json" per_node.2.reply.source)"
[ "$(jget "$WORK/f5.json" per_node.3.reply.source)" = n3 ] || fail "n4 left n3"
grep -q "parent n2 failed (n2: no whole frame within" "$CL_DIR/n3.log" ||
	fail "n3's log does not say n2 went silent: $(grep n2 "$CL_DIR/n3.log" | tail -3)"
for n in n1 n2 n3 n4; do verify_cache $n; done
ok "n2 resumed (SIGCONT): every node has stop:1 (n2 from $(jget "$WORK/f5.json" per_node.1.reply.source)), nothing failed, every cache verifies"

# 6. A relay slowed to a trickle: n2's traffic to n3 shaped to 8 kbit/s mid-distribution of
# slow:1 (keepalives and bytes still flow, but no chunk arrives whole in time): n3 re-parents
# to n1; everything finishes and verifies.
shape_n2_to_n3() { # RATE, or "" to restore n2's plain shaping
	local ns="vh$CL_ID-n2"
	ip netns exec "$ns" tc qdisc del dev eth0 root
	if [ -z "$1" ]; then
		ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate 100mbit burst 64kb latency 100ms
		return
	fi
	# htb (prio and netem are not in every kernel): class 10 for n3's address, 20 for the rest.
	ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: htb default 20
	ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:10 htb rate "$1" ceil "$1" 2>/dev/null
	ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:20 htb rate 100mbit ceil 100mbit 2>/dev/null
	ip netns exec "$ns" tc filter add dev eth0 parent 1: protocol ip u32 match ip dst "$CL_NET.13/32" flowid 1:10
}
base=$(metric n3 'vmhpc_node_received_bytes_total{source="n2"}')
cluster_fetch "$CL_REGISTRY/vmhpc/slow:1" 'n[1-4]' --json >"$WORK/f6.json" 2>"$WORK/f6.err" &
fetch_pid=$!
on_exit "kill $fetch_pid"
wait_receiving n3 n2 "$base"
shape_n2_to_n3 8kbit
on_exit "ip netns exec vh$CL_ID-n2 tc qdisc del dev eth0 root"
wait "$fetch_pid" || fail "fetch with a slowed relay failed: $(cat "$WORK/f6.err") $(cat "$WORK/f6.json")"
shape_n2_to_n3 ""
[ "$(jget "$WORK/f6.json" per_node.2.reply.source)" = n1 ] ||
	fail "n3 did not leave the slowed n2: $(jget "$WORK/f6.json" per_node.2.reply.source)"
grep -q "slow:1: parent n2 failed (n2: no whole frame within" "$CL_DIR/n3.log" ||
	fail "n3's log does not say n2 was too slow: $(grep n2 "$CL_DIR/n3.log" | tail -3)"
for n in n1 n2 n3 n4; do verify_cache $n; done
ok "n2 slowed to 8 kbit/s towards n3: n3 re-parented to n1 after $(jget "$WORK/f6.json" per_node.2.seconds) s; all finished and verify"

# 6b. A relay whose own download is slow: n2's link towards it shaped to 4 Mbit/s from the
# start of slowdl:1's distribution. n2 sends n3 keepalives and what little it gets, never a
# late frame, so only the pace shows it: n3 sees less than --peer-min-rate (1 MB/s) over 4 s
# while n1 holds far more, and re-parents to n1; n4 keeps n3; both finish long before n2.
tc qdisc replace dev "vh${CL_ID}n2" root tbf rate 4mbit burst 16kb latency 100ms
on_exit "tc qdisc replace dev vh${CL_ID}n2 root tbf rate 100mbit burst 64kb latency 100ms"
cluster_fetch "$CL_REGISTRY/vmhpc/slowdl:1" 'n[1-4]' --json >"$WORK/f6b.json" 2>"$WORK/f6b.err" ||
	fail "fetch with a slow-downloading relay failed: $(cat "$WORK/f6b.err") $(cat "$WORK/f6b.json")"
tc qdisc replace dev "vh${CL_ID}n2" root tbf rate 100mbit burst 64kb latency 100ms
srcs=$(for i in 0 1 2 3; do jget "$WORK/f6b.json" per_node.$i.reply.source; done | tr '\n' ' ')
[ "$srcs" = "registry n1 n1 n3 " ] || fail "sources are '$srcs', not n3 re-parented to n1 (registry n1 n1 n3)"
grep -q "slowdl:1: parent n2 failed (n2: too slow: less than 1000000 bytes/s over 4 s, while n1 holds" "$CL_DIR/n3.log" ||
	fail "n3's log does not say n2 was too slow: $(grep n2 "$CL_DIR/n3.log" | tail -3)"
t2=$(jget "$WORK/f6b.json" per_node.1.seconds)
t4=$(jget "$WORK/f6b.json" per_node.3.seconds)
python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) + 2 < float(sys.argv[1]) else 1)" "$t2" "$t4" ||
	fail "n4 ($t4 s) did not finish well before the slow n2 ($t2 s)"
for n in n1 n2 n3 n4; do verify_cache $n; done
ok "n2's download at 4 Mbit/s: n3 re-parented to n1 by pace (sources $srcs); n4 done in $t4 s, n2 in $t2 s; all verify"

# 7. A node of the job holds the image: the root takes it from there, not from the
# registry. hold:1 fetched to n3 alone, then the registry stopped: n[1-4] still gets it,
# n1 from n3 (which moves nothing itself), n2 from n1, n4 from n3; every cache verifies.
cluster_fetch "$CL_REGISTRY/vmhpc/hold:1" n3 --json >"$WORK/h1.json" || fail "hold:1 to n3: $(cat "$WORK/h1.json")"
hold_bytes=$(jget "$WORK/h1.json" per_node.0.reply.bytes_received)
cluster_registry_stop
cluster_fetch "$CL_REGISTRY/vmhpc/hold:1" 'n[1-4]' --json >"$WORK/h2.json" 2>"$WORK/h2.err" ||
	fail "hold:1 with n3 holding it and the registry down: $(cat "$WORK/h2.err") $(cat "$WORK/h2.json")"
srcs=$(for i in 0 1 2 3; do jget "$WORK/h2.json" per_node.$i.reply.source; done | tr '\n' ' ')
[ "$srcs" = "n3 n1 cache n3 " ] || fail "sources are '$srcs', not rooted at n3 (n3 n1 cache n3)"
[ "$(jget "$WORK/h2.json" per_node.2.reply.bytes_received)" = 0 ] || fail "n3 received bytes"
[ "$(jget "$WORK/h2.json" per_node.0.reply.bytes_received)" = "$hold_bytes" ] || fail "n1 did not get all of hold:1"
for n in n1 n2 n3 n4; do verify_cache $n; done
ok "hold:1 held by n3, registry down: rooted at n3 (sources $srcs), $hold_bytes bytes each; every cache verifies"
cluster_registry_start || fail "the registry did not start again"

# 8. No path left: n1 (n2's parent) killed and the registry down: n2's error names n1.
cluster_node_kill n1 9
cluster_registry_stop
if cluster_fetch "$CL_REGISTRY/vmhpc/other:1" 'n[1-2]' >"$WORK/f7.out" 2>"$WORK/f7.err"; then
	fail "fetch with no path succeeded"
fi
grep -q "node n2: no path left for .*: n1 (.*registry: " "$WORK/f7.err" ||
	fail "n2's error does not name n1 and the registry: $(cat "$WORK/f7.err")"
ok "no path left: $(grep 'node n2' "$WORK/f7.err" | cut -c1-200)"
echo "node-distribution: $CHECKS checks passed"
