#!/usr/bin/env bash
# vmhpc node's cache through the prolog's local API (`vmhpc node present/release`): two jobs
# asking for one image at once fetch it once; --cache-max is held by evicting the least
# recently used image that no job pins; with every image pinned a full cache is a clear
# error that evicts nothing; the state survives a restart; the cache verifies throughout; a
# disk that fills mid-fetch is a clear error that leaves nothing half-made; a registry off
# the node's --registry list is refused before any connection.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 77; }
for t in munged docker-registry ip; do
	command -v "$t" >/dev/null || { echo "SKIP: $t is not installed (scripts/install-deps.sh)"; exit 77; }
done
. "$VMHPC_SOURCE_ROOT/tests/cluster/cluster.sh"
on_exit cluster_down

metric() {
	ip netns exec "vh$CL_ID-n1" curl -sf "http://$CL_NET.11:7420/metrics" | awk -v m="$1" '$1 == m {print $2}'
}
present() { # IMAGE JOB
	"$VMHPC" node present --socket "$CL_DIR/n1.sock" --image "$CL_REGISTRY/vmhpc/$1" --job "$2"
}
verify_cache() {
	VMHPC_STORE="$CL_DIR/cache-n1/store" "$VMHPC" image verify >"$WORK/verify" 2>&1 ||
		fail "the cache does not verify: $(cat "$WORK/verify")"
}
images() { python3 -c 'import json,sys; print(" ".join(sorted(i["name"] for i in json.load(open(sys.argv[1]))["images"])))' "$CL_DIR/cache-n1/state.json"; }

# a: busybox (~15 MB); b and c: a plus 12 MB of random bytes each (their own).
small_spec a >"$WORK/a.ini"
"$VMHPC" image build --level 1 "$WORK/a.ini" >/dev/null
for x in b c; do
	head -c 12000000 /dev/urandom >"$WORK/$x.bin"
	small_spec $x "files = $WORK/$x.bin:/opt/$x.bin" >"$WORK/$x.ini"
	"$VMHPC" image build --level 1 "$WORK/$x.ini" >/dev/null
done
CL_CACHE_MAX=35M
cluster_up 1
for x in a b c; do cluster_push $x:1 $x:1; done
ok "one node with --cache-max 35M, images a (~15 MB), b and c (~12 MB more each)"

# Two jobs ask for a at once: one fetch.
present a:1 job1 >"$WORK/p1" &
p1=$!
present a:1 job2 >"$WORK/p2" &
p2=$!
wait $p1 || fail "job1: $(cat "$WORK/p1")"
wait $p2 || fail "job2: $(cat "$WORK/p2")"
[ "$(metric vmhpc_node_cache_misses_total)" = 1 ] || fail "misses: $(metric vmhpc_node_cache_misses_total)"
[ "$(metric vmhpc_node_distributions_total)" = 1 ] || fail "a was fetched more than once"
recv=$(metric 'vmhpc_node_received_bytes_total{source="registry"}')
[ "$recv" = "$(metric vmhpc_node_cache_bytes)" ] || fail "received $recv bytes, cache holds $(metric vmhpc_node_cache_bytes)"
ok "two jobs asking for a at once: one fetch of $recv bytes"

present b:1 job3 >/dev/null || fail "b"
# a (jobs 1, 2) and b (job 3) pinned: c does not fit, nothing is evicted.
expect_fail "cache full with every image pinned" "node cache full" present c:1 job4
[ "$(images)" = "a b" ] || fail "images after the refusal: $(images)"
[ "$(metric vmhpc_node_evictions_total)" = 0 ] || fail "something was evicted"
verify_cache
ok "nothing evicted, the cache verifies"

# Job 3 ends: b is unpinned and goes; a, pinned and older, stays.
"$VMHPC" node release --socket "$CL_DIR/n1.sock" --job job3 >/dev/null
present c:1 job4 >/dev/null || fail "c after releasing job3"
[ "$(images)" = "a c" ] || fail "images: $(images)"
[ "$(metric vmhpc_node_evictions_total)" = 1 ] || fail "evictions: $(metric vmhpc_node_evictions_total)"
used=$(metric vmhpc_node_cache_bytes)
[ "$used" -le 35000000 ] || fail "cache holds $used bytes, more than --cache-max"
verify_cache
ok "release job3, then c: b (unpinned) evicted, a (pinned, least recently used) kept; $used bytes <= 35M"

# LRU among unpinned: release everything, touch a, then b needs room: c (older) goes.
for j in job1 job2 job4; do "$VMHPC" node release --socket "$CL_DIR/n1.sock" --job $j >/dev/null; done
present c:1 "" >/dev/null
present a:1 "" >/dev/null
present b:1 job5 >/dev/null || fail "b again"
[ "$(images)" = "a b" ] || fail "LRU: images $(images), expected a b (c least recently used)"
ok "unpinned: the least recently used (c) was evicted, not a"

# The state survives a restart: b is still pinned by job5, a is not.
cluster_node_kill n1 TERM
cluster_node_start n1
[ "$(images)" = "a b" ] || fail "after restart: $(images)"
[ "$(metric vmhpc_node_cache_images_pinned)" = 1 ] || fail "pins lost in the restart"
present a:1 job6 >"$WORK/p6"
grep -q '"source":"cache"' "$WORK/p6" || fail "a not served from the cache after restart: $(cat "$WORK/p6")"
verify_cache
ok "after a restart: same images, job5's pin kept, a served from the cache"

# Disk full: n1's cache on a 10 MB tmpfs (--cache-max far above it) fills while b:1
# (~27 MB) arrives: a clear error naming the node and the cache folder, no temp file or
# state entry left, the store verifies; with room (the tmpfs grown) the next fetch
# succeeds with only what it lacked.
SMALL="$WORK/smallfs"
mkdir -p "$SMALL"
mount -t tmpfs -o size=10m vmhpc-node-cache-test "$SMALL"
on_exit "umount -l '$SMALL'"
cluster_node_kill n1 TERM
cluster_node_start n1 --cache "$SMALL/cache" --cache-max 1G
expect_fail "a full disk mid-fetch" "node n1: the node cache $SMALL/cache is out of disk space" \
	present b:1 job7
[ "$(df --output=avail -B1 "$SMALL" | tail -1)" -lt 2000000 ] || fail "the tmpfs did not fill: $(df -h "$SMALL")"
left=$(find "$SMALL/cache/store/tmp" -type f | head -3)
[ -z "$left" ] || fail "temp files left in the full cache: $left"
grep -q '"name": *"b"' "$SMALL/cache/state.json" 2>/dev/null && fail "b is in the state: $(cat "$SMALL/cache/state.json")"
VMHPC_STORE="$SMALL/cache/store" versions >"$WORK/list"
grep -q "^b:" "$WORK/list" && fail "b is committed in the full cache: $(cat "$WORK/list")"
VMHPC_STORE="$SMALL/cache/store" "$VMHPC" image verify >"$WORK/verify" 2>&1 ||
	fail "the full cache does not verify: $(cat "$WORK/verify")"
[ "$(metric vmhpc_node_errors_total)" = 1 ] || fail "errors: $(metric vmhpc_node_errors_total)"
ok "disk full mid-fetch: no temp file, no state entry, no version of b; the cache verifies"
partial=$(metric vmhpc_node_cache_bytes)
mount -o remount,size=64m "$SMALL"
present b:1 job7 >"$WORK/p7" || fail "b:1 with room: $(cat "$WORK/p7")"
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_received"])' "$WORK/p7")
total=$(metric vmhpc_node_cache_bytes)
[ "$partial" -gt 0 ] && [ "$got" -lt "$total" ] || fail "with room: received $got of $total bytes (partial $partial)"
VMHPC_STORE="$SMALL/cache/store" "$VMHPC" image verify >"$WORK/verify" 2>&1 ||
	fail "the cache does not verify after the fetch with room: $(cat "$WORK/verify")"
ok "with room: b:1 arrived, $got of its $total bytes moved (the rest was kept from the failed fetch); verifies"

# Registries: a node pulls only from its --registry list. A lure in the front-end answers
# everything with a Basic challenge and logs what it gets. n1, holding the site's
# credentials, refuses an image there before any connection; started without a list it
# would connect (the lure sees it), and with the credentials it refuses to start at all.
cluster_lure_start || fail "the lure did not start"
cluster_node_kill n1 TERM
VMHPC_REGISTRY_AUTH=node:site-secret cluster_node_start n1
expect_fail "an image in a registry off the list" \
	"node n1: registry $LURE is not one this node pulls from (its --registry list: $CL_REGISTRY)" \
	"$VMHPC" node present --socket "$CL_DIR/n1.sock" --image "$LURE/vmhpc/a:1" --job job8
expect_fail "a fetch of it over TCP" "is not one this node pulls from" \
	cluster_fetch "$LURE/vmhpc/a:1" n1
[ ! -s "$LURE_LOG" ] || fail "n1 reached the lure: $(cat "$LURE_LOG")"
grep -q "$LURE" "$CL_DIR/cache-n1/state.json" && fail "the lure's image is in the state"
present a:1 job8 >/dev/null || fail "an image of the listed registry was refused"
ok "with --registry $CL_REGISTRY: an image at $LURE refused (local present, fetch over TCP), the lure got no request; a listed one served"
cluster_node_kill n1 TERM
out=$(VMHPC_REGISTRY_AUTH=node:site-secret "$VMHPC" node --foreground --cache "$WORK/nolist" \
	--listen 127.0.0.1:0 --socket "$WORK/nolist.sock" 2>&1) && fail "a node with VMHPC_REGISTRY_AUTH and no list started"
case "$out" in *"name the ones this node may pull from with --registry"*) ;; *) fail "no list, credentials: $out" ;; esac
[ ! -e "$WORK/nolist" ] || fail "the refused daemon made its cache"
CL_ANY_REGISTRY=1 cluster_node_start n1
grep -q "no --registry list: jobs may make this node pull from any registry" "$CL_DIR/n1.log" ||
	fail "a node without a list does not warn: $(tail -3 "$CL_DIR/n1.log")"
"$VMHPC" node present --socket "$CL_DIR/n1.sock" --image "$LURE/vmhpc/a:1" --job job9 >/dev/null 2>&1 &&
	fail "the lure served an image"
grep -q "^GET /v2/vmhpc/a/manifests/1 AUTH=-" "$LURE_LOG" || fail "the lure saw nothing: the check above proves nothing"
ok "VMHPC_REGISTRY_AUTH without --registry: the daemon refuses to start; without a list (warned) it does reach the lure"
echo "node-cache: $CHECKS checks passed"
