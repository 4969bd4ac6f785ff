#!/usr/bin/env bash
# Distribution of an image version to 1, 2, 4 and 8 nodes of a test cluster
# (tests/cluster/cluster.sh: network namespaces, every link shaped with tc, the registry's
# too), three schemes side by side: the pipelined binomial tree (`vmhpc node fetch`), every
# node pulling from the registry ("central", `vmhpc node fetch --central`), and the floor
# (the image's bytes over one link's rate). Every run starts from empty node caches.
#
#   sudo VMHPC=build/vmhpc bench/distribution.sh [RATE] [LARGE_MB]
# RATE defaults to 100mbit; LARGE_MB (default 300) sizes the larger image (tiny-mpi plus
# random bytes). Prints a Markdown table for bench/RESULTS.md.
set -eu
: "${VMHPC:=$(cd "$(dirname "$0")/.." && pwd)/build/vmhpc}"
: "${VMHPC_INIT:=$(dirname "$VMHPC")/vmhpc-init}"
export VMHPC VMHPC_INIT
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${1:-100mbit}
LARGE_MB=${2:-300}
NODES_LIST=${NODES_LIST:-"1 2 4 8"}
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, tc)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vmhpc-bench.XXXXXX)
export VMHPC_STORE="$WORK/store"
. "$ROOT/tests/cluster/cluster.sh"
trap 'cluster_down; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

rate_bits=$(python3 -c 'import re,sys; m=re.fullmatch(r"(\d+)(k|m|g)bit", sys.argv[1]); print(int(m[1]) * {"k": 10**3, "m": 10**6, "g": 10**9}[m[2]])' "$RATE")
echo "building images..." >&2
"$VMHPC" image build "$ROOT/examples/tiny-mpi.ini" >/dev/null
head -c "$((LARGE_MB * 1000000))" /dev/urandom >"$WORK/large.bin"
sed 's/^name = tiny-mpi$/name = large/' "$ROOT/examples/tiny-mpi.ini" >"$WORK/large.ini"
printf 'files = %s:/opt/large.bin\n' "$WORK/large.bin" >>"$WORK/large.ini"
"$VMHPC" image build --level 1 "$WORK/large.ini" >/dev/null
rm -f "$WORK/large.bin"

max_n=0
for n in $NODES_LIST; do [ "$n" -gt "$max_n" ] && max_n=$n; done
cluster_up "$max_n" "$RATE"
cluster_push tiny-mpi tiny-mpi:1
cluster_push large large:1

jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"; }

echo "| image | bytes | nodes | tree (s) | central (s) | floor (s) | tree / floor | central / tree |"
echo "|---|---|---|---|---|---|---|---|"
for img in tiny-mpi large; do
	for n in $NODES_LIST; do
		cluster_reset_caches
		cluster_fetch "$CL_REGISTRY/vmhpc/$img:1" "n[1-$n]" --json >"$WORK/tree.json"
		cluster_reset_caches
		cluster_fetch "$CL_REGISTRY/vmhpc/$img:1" "n[1-$n]" --central --json >"$WORK/central.json"
		bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["per_node"][0]["reply"]["bytes_received"])' "$WORK/tree.json")
		t=$(jget "$WORK/tree.json" seconds)
		c=$(jget "$WORK/central.json" seconds)
		python3 -c 'import sys
img, b, n, t, c, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
f = b * 8 / rate
print("| %s | %.1f MB | %d | %.2f | %.2f | %.2f | %.2f | %.2f |" % (img, b / 1e6, n, t, c, f, t / f, c / t))' \
			"$img" "$bytes" "$n" "$t" "$c" "$rate_bits"
	done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(. /etc/os-release; echo "$PRETTY_NAME"), links $RATE; $(date -u '+%Y-%m-%d %H:%M UTC')"
