#!/usr/bin/env bash
# Matching image requests over many versions (issue 17's goal: 1,000 versions in < 10 ms).
# Runs bench/match.c's synthetic store at 100, 1,000 and 10,000 versions; no VM, no store.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build/meson-info ] || meson setup build >/dev/null
ninja -C build bench-match >/dev/null
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
for n in 100 1000 10000; do
	echo "--"
	build/bench-match "$n"
done
