#!/usr/bin/env bash
# What a new version of an image costs in new bytes (issue 17's goal: an update of tiny-mpi
# with one changed package stores < 5 % new bytes). On tiny-mpi, in a temporary store, at the
# default compression level:
#   1. `vmhpc image update` with nothing changed (reproducible build: no version, 0 bytes);
#   2. a derived version with one more package (libbz2-1.0 and its library) -- a changed
#      package cannot be made on demand from Debian's archive, one added package moves the
#      same kind of bytes: that package's files plus the root's changed metadata blocks;
#   3. `vmhpc image update` after one file the spec copies from this machine changed.
# The physical floor of each is the compressed size of the content that changed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build/meson-info ] || meson setup build >/dev/null
ninja -C build >/dev/null
./scripts/build-mpich.sh >/dev/null
V=$PWD/build/vmhpc
W=$(mktemp -d /tmp/vmhpc-bench-update.XXXXXX)
trap 'rm -rf "$W"' EXIT
export VMHPC_STORE="$W/store" VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
echo "machine: $(nproc) cores, $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"

sed 's|^name = tiny-mpi|name = tm|' examples/tiny-mpi.ini >"$W/tm.ini"
echo "a file from this machine" >"$W/note"
printf 'files = %s:/etc/vmhpc-note\n' "$W/note" >>"$W/tm.ini"
t0=$(date +%s.%N)
"$V" image build "$W/tm.ini" >"$W/b1.out" 2>/dev/null
t1=$(date +%s.%N)
stored=$(sed -n 's/^  stored *\([0-9.]* [kMG]*B\).*/\1/p' "$W/b1.out")
printf 'tm:1 built in %.1f s, stored %s\n' "$(echo "$t1 - $t0" | bc)" "$stored"

t0=$(date +%s.%N)
"$V" image update tm >"$W/u1.out" 2>/dev/null
t1=$(date +%s.%N)
printf '1. update, nothing changed (%.1f s): %s\n' "$(echo "$t1 - $t0" | bc)" "$(head -n 1 "$W/u1.out")"

printf '[image]\nname = tm-bz2\nbase = tm:1\n[root]\npackages = libbz2-1.0\nbinaries = /usr/lib/x86_64-linux-gnu/libbz2.so.1.0\n' >"$W/bz2.ini"
"$V" image build "$W/bz2.ini" >"$W/b2.out" 2>/dev/null
"$V" image diff tm:1 tm-bz2:1 >"$W/d2.out"
printf '2. one package added: %s\n' "$(sed -n 's/^bytes: //p' "$W/d2.out")"

echo "the same file, changed" >"$W/note"
"$V" image update tm >"$W/u3.out" 2>/dev/null
printf '3. update, one host file changed: %s\n' "$(sed -n 's/^stored //p' "$W/u3.out")"
