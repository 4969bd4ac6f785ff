#!/usr/bin/env bash
# A new version of an image to N nodes that hold the old one (issue 14's goals "a second
# version reaches 8 nodes moving <= 1.1x its unique bytes per link" and "cached nodes receive
# 0 bytes"), on the test cluster (tests/cluster/cluster.sh, links shaped to RATE).
# Every node first gets tiny-mpi:1 (the default image). Then, for each size in EXTRA_KB, a
# new version (tiny-mpi plus that many KB of random bytes of its own) goes to all N nodes
# down the chain, and then once more. For each: the version's unique bytes (chunks no other
# version has, as stored), the chunk bytes each node took in (`bytes_received`), and what
# each node's link really carried in (its eth0's rx_bytes: the manifest, the protocol, MUNGE,
# TCP/IP headers included): the most of any node fed by another node, and the root's, which
# pulls from the registry (the OCI manifest and the config blob come whole from there).
#
#   sudo bench/versions.sh            # N=8 RATE=100mbit EXTRA_KB="100 3000"
# Prints a Markdown table for bench/RESULTS.md.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${VMHPC:=$ROOT/build/vmhpc}"
: "${VMHPC_INIT:=$(dirname "$VMHPC")/vmhpc-init}"
export VMHPC VMHPC_INIT
N=${N:-8}
RATE=${RATE:-100mbit}
EXTRA_KB=${EXTRA_KB:-"100 3000"}
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, tc)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vmhpc-bench.XXXXXX)
export VMHPC_STORE="$WORK/store"
. "$ROOT/tests/cluster/cluster.sh"
trap 'cluster_down; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"; }
newest() { "$VMHPC" image list --json | python3 -c 'import json,sys
print(max(e["version"] for e in json.load(sys.stdin) if e["name"] == "tiny-mpi"))'; }
unique_of() { "$VMHPC" image list --json | python3 -c 'import json,sys
for e in json.load(sys.stdin):
    if e["name"] == "tiny-mpi" and e["version"] == int(sys.argv[1]): print(e["unique_bytes"])' "$1"; }
rx_all() { # every node's eth0 rx_bytes, one per line
	local i
	for i in $(seq 1 "$N"); do
		ip netns exec "vh$CL_ID-n$i" cat /sys/class/net/eth0/statistics/rx_bytes
	done
}
max_delta() { # BEFORE-FILE AFTER-FILE [FIRST-LINE]: the largest per-node difference from that node on
	paste "$1" "$2" | awk -v from="${3:-1}" 'NR >= from {d = $2 - $1; if (d > m) m = d} END {print m + 0}'
}
root_delta() { # BEFORE-FILE AFTER-FILE: n1's (the root's: the registry's link to it)
	paste "$1" "$2" | awk 'NR == 1 {print $2 - $1}'
}
max_received() { # FETCH-JSON: the most chunk bytes any node took in
	python3 -c 'import json,sys; print(max(p["reply"]["bytes_received"] for p in json.load(open(sys.argv[1]))["per_node"]))' "$1"
}

echo "building images..." >&2
"$VMHPC" image build "$ROOT/examples/tiny-mpi.ini" >/dev/null
v1=$(newest)
cluster_up "$N" "$RATE"
cluster_push "tiny-mpi:$v1" tiny-mpi:1
cluster_fetch "$CL_REGISTRY/vmhpc/tiny-mpi:1" "n[1-$N]" >/dev/null

echo "| new version | its unique bytes | most chunk bytes a node took in | most bytes a node's link from another node carried in (n2-n$N) | link / unique | the root's link from the registry (n1) | link / unique | the same version again: chunk bytes / link bytes (most of any node) |"
echo "|---|---|---|---|---|---|---|---|"
tag=2
for kb in $EXTRA_KB; do
	head -c "$((kb * 1000))" /dev/urandom >"$WORK/extra.bin"
	{ cat "$ROOT/examples/tiny-mpi.ini"; printf 'files = %s:/opt/extra.bin\n' "$WORK/extra.bin"; } >"$WORK/v.ini"
	"$VMHPC" image build --level 1 "$WORK/v.ini" >/dev/null
	v=$(newest)
	unique=$(unique_of "$v")
	cluster_push "tiny-mpi:$v" "tiny-mpi:$tag"
	rx_all >"$WORK/rx0"
	cluster_fetch "$CL_REGISTRY/vmhpc/tiny-mpi:$tag" "n[1-$N]" --json >"$WORK/f1.json"
	rx_all >"$WORK/rx1"
	cluster_fetch "$CL_REGISTRY/vmhpc/tiny-mpi:$tag" "n[1-$N]" --json >"$WORK/f2.json"
	rx_all >"$WORK/rx2"
	python3 -c 'import sys
kb, u, r, l, lr, r2, l2, n = [int(a) for a in sys.argv[1:8]] + [sys.argv[8]]
print("| tiny-mpi + %d kB of its own, to %s nodes | %d | %d | %d | %.2fx | %d | %.2fx | %d / %d |" % (kb, n, u, r, l, l / u, lr, lr / u, r2, l2))' \
		"$kb" "$unique" "$(max_received "$WORK/f1.json")" "$(max_delta "$WORK/rx0" "$WORK/rx1" 2)" \
		"$(root_delta "$WORK/rx0" "$WORK/rx1")" \
		"$(max_received "$WORK/f2.json")" "$(max_delta "$WORK/rx1" "$WORK/rx2")" "$N"
	tag=$((tag + 1))
done
echo "floor: ~1.045x (Ethernet, IP and TCP headers are 66 of every 1514 bytes on the wire; a relay's link also brings the ACKs of what it sends on)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), links $RATE; $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
