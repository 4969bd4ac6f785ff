#!/usr/bin/env bash
# The store benchmark, in one run: raw throughput (bench-store: chunker, chunker+SHA-256,
# the whole put path, next to sha256sum and zstd -3 on the same bytes), then dedup across
# 5 image versions that each add one file, then the default image's sizes per part.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
vmhpc="$PWD/$build/vmhpc"
work=$(mktemp -d /tmp/vmhpc-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export VMHPC_STORE="$work/store"

echo "== throughput (256 MB)"
"./$build/bench-store" --size-mb "${SIZE_MB:-256}"

echo
echo "== dedup: 5 versions of tiny-mpi, each adding one file"
spec=examples/tiny-mpi.ini
extras=(/usr/bin/mpichversion /usr/bin/hydra_nameserver /usr/bin/hydra_persist /usr/bin/mpivars)
for i in 0 1 2 3 4; do
	cp "$spec" "$work/v$i.ini"
	list=""
	for j in $(seq 0 $((i - 1))); do list="$list ${extras[$j]}"; done
	[ -n "$list" ] && sed -i "s|^binaries = |binaries =$list |" "$work/v$i.ini"
	/usr/bin/time -f "%e" -o "$work/t$i" "$vmhpc" image build "$work/v$i.ini" >/dev/null 2>&1
	echo "version $((i + 1)): built in $(cat "$work/t$i") s (+${list:-nothing})"
done
"$vmhpc" image list
"$vmhpc" image list --json | python3 -c '
import json, sys, os
v = json.load(sys.stdin)
one = v[0]["stored_bytes"]
total = 0
for root, _, files in os.walk(os.path.join(os.environ["VMHPC_STORE"], "chunks")):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
print("one version stored: %.1f MB; all 5 versions stored: %.1f MB = %.3fx one version (goal <= 1.3x)"
      % (one / 1e6, total / 1e6, total / one))
'

echo
echo "== the default image, per part"
"$vmhpc" image show --json tiny-mpi:1 | python3 -c '
import json, sys, os, subprocess
m = json.load(sys.stdin)
store = os.environ["VMHPC_STORE"]
man = json.load(open(os.path.join(store, "manifests/tiny-mpi/1.json")))
print("%-10s %12s %12s %8s" % ("part", "plain MB", "stored MB", "chunks"))
tp = ts = 0
for part in ("kernel", "initramfs", "root", "index"):
    ids = {c[0] for c in man["parts"][part]["chunks"]}
    stored = sum(os.path.getsize(os.path.join(store, "chunks", i[:2], i)) for i in ids)
    plain = man["parts"][part]["size"]
    tp += plain; ts += stored
    print("%-10s %12.2f %12.2f %8d" % (part, plain / 1e6, stored / 1e6, len(ids)))
print("%-10s %12.2f %12.2f" % ("total", tp / 1e6, ts / 1e6))
print("root content (file bytes): %.1f MB in %d entries" % (m["metadata"]["root_content_bytes"] / 1e6, m["metadata"]["root_files"]))
'
echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(date -u +%F)"
