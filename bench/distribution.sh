#!/usr/bin/env bash
# Distribution of an image version to 1, 2, 4 and 8 nodes of a test cluster
# (tests/cluster/cluster.sh: network namespaces, every link shaped with tc, the registry's
# too), the schemes side by side in one run: the pipelined chain (the default,
# `vmhpc node fetch`), the pipelined binomial tree (`--scheme binomial`), every node pulling
# from the registry ("central", `--scheme central`), and the floor (the image's bytes over
# one link's rate). Every run starts from empty node caches. "uplink copies" is the most
# any one node sent (its metrics), in copies of the image: the chain's goal is 1.
#
#   sudo VMHPC=build/vmhpc bench/distribution.sh [RATE] [LARGE_MB]
# RATE defaults to 100mbit; LARGE_MB (default 300) sizes the larger image (tiny-mpi plus
# random bytes). CL_TMPFS=4G puts every node's cache on memory instead of this machine's one
# disk (tests/cluster/cluster.sh). Prints a Markdown table for bench/RESULTS.md.
set -eu
: "${VMHPC:=$(cd "$(dirname "$0")/.." && pwd)/build/vmhpc}"
: "${VMHPC_INIT:=$(dirname "$VMHPC")/vmhpc-init}"
export VMHPC VMHPC_INIT
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${1:-100mbit}
LARGE_MB=${2:-300}
NODES_LIST=${NODES_LIST:-"1 2 4 8"}
IMAGES=${IMAGES:-"tiny-mpi large"} # IMAGES=tiny-mpi skips building the large one
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, tc)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vmhpc-bench.XXXXXX)
export VMHPC_STORE="$WORK/store"
. "$ROOT/tests/cluster/cluster.sh"
trap 'cluster_down; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

rate_bits=$(python3 -c 'import re,sys; m=re.fullmatch(r"(\d+)(k|m|g)bit", sys.argv[1]); print(int(m[1]) * {"k": 10**3, "m": 10**6, "g": 10**9}[m[2]])' "$RATE")
echo "building images..." >&2
"$VMHPC" image build "$ROOT/examples/tiny-mpi.ini" >/dev/null
case " $IMAGES " in *" large "*)
	head -c "$((LARGE_MB * 1000000))" /dev/urandom >"$WORK/large.bin"
	sed 's/^name = tiny-mpi$/name = large/' "$ROOT/examples/tiny-mpi.ini" >"$WORK/large.ini"
	printf 'files = %s:/opt/large.bin\n' "$WORK/large.bin" >>"$WORK/large.ini"
	"$VMHPC" image build --level 1 "$WORK/large.ini" >/dev/null
	rm -f "$WORK/large.bin"
esac

max_n=0
for n in $NODES_LIST; do [ "$n" -gt "$max_n" ] && max_n=$n; done
cluster_up "$max_n" "$RATE"
# A push resumes where a failed one stopped (the registry keeps what it got): once more on
# a failure, which the loaded machine's registry has caused (a stalled request).
cluster_push tiny-mpi tiny-mpi:1 || cluster_push tiny-mpi tiny-mpi:1
case " $IMAGES " in *" large "*) cluster_push large large:1 || cluster_push large large:1 ;; esac

jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"; }

# The most bytes any node of n[1-N] sent to peers (from each node's metrics).
max_sent() { # N
	local i m=0 s
	for i in $(seq 1 "$1"); do
		s=$(ip netns exec "vh$CL_ID-n$i" curl -sf "http://$CL_NET.$((10 + i)):7420/metrics" |
			awk '$1 ~ /^vmhpc_node_sent_bytes_total/ {t += $2} END {print t + 0}')
		[ "$s" -gt "$m" ] && m=$s
	done
	echo "$m"
}
run() { # IMG N SCHEME: one distribution from empty caches; leaves $WORK/SCHEME.json
	cluster_reset_caches
	cluster_fetch "$CL_REGISTRY/vmhpc/$1:1" "n[1-$2]" --scheme "$3" --json >"$WORK/$3.json" ||
		{ echo "fetch $1 to $2 nodes ($3) failed: $(cat "$WORK/$3.json")" >&2; exit 1; }
	max_sent "$2" >"$WORK/$3.sent"
}

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "| image | bytes | nodes | chain (s) | binomial (s) | central (s) | floor (s) | chain / floor | chain / 1 node | central / chain | uplink copies chain / binomial |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for img in $IMAGES; do
	one=""
	for n in $NODES_LIST; do
		# Interleaved per row, so that a change in the machine's load hits every scheme.
		run "$img" "$n" chain
		run "$img" "$n" binomial
		run "$img" "$n" central
		bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["per_node"][0]["reply"]["bytes_received"])' "$WORK/chain.json")
		ch=$(jget "$WORK/chain.json" seconds)
		[ -n "$one" ] || one=$ch
		python3 -c 'import sys
img, b, n, ch, bi, c, rate, one, sc, sb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
f = b * 8 / rate
print("| %s | %.1f MB | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f / %.2f |" % (img, b / 1e6, n, ch, bi, c, f, ch / f, ch / one, c / ch, sc / b, sb / b))' \
			"$img" "$bytes" "$n" "$ch" "$(jget "$WORK/binomial.json" seconds)" \
			"$(jget "$WORK/central.json" seconds)" "$rate_bits" "$one" \
			"$(cat "$WORK/chain.sent")" "$(cat "$WORK/binomial.sent")"
		echo "  ($img, $n nodes done at $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(. /etc/os-release; echo "$PRETTY_NAME"), links $RATE; $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
