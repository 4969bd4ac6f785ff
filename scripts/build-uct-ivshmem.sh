#!/usr/bin/env bash
# Builds the UCX transport over the job's shared-memory region (src/ucx/uct_ivshmem.c,
# docs/bypass.md) for Debian's UCX, as the module file Debian's libuct.so.0 loads:
# CACHE/libuct_cma.so.0 (CACHE is $VMHPC_UCX_CACHE, default /var/cache/vmhpc/ucx, the path
# examples/tiny-mpi-shm.ini names). Images that want the channel ship it as
# /usr/lib/x86_64-linux-gnu/ucx/libuct_cma.so.0: Debian's UCX 1.13 loads transport modules
# only under the names fixed at its build (ib, rdmacm, cma), and CMA cannot work between VMs.
#
# The transport is an "mm" mapper: it needs the internal headers of UCX's mm base, which
# libucx-dev lacks, so the headers come from Debian's source package of the libucx0 that apt
# gives the image builder (fetched through a private apt configuration: the host's sources
# stay untouched). No configure run: the few build macros the headers read are set below as
# Debian's build sets them (debian/rules: no statistics, no debug data; assertions on).
# The result is cached with a stamp naming the UCX version and our sources' hash.
#
# Usage: scripts/build-uct-ivshmem.sh [--check]
#   --check  exit 1 if the module is missing or stale, make nothing
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cache=${VMHPC_UCX_CACHE:-/var/cache/vmhpc/ucx}
out=$cache/libuct_cma.so.0
mirror=${VMHPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { echo "build-uct-ivshmem: $*" >&2; }

bin_version=$(apt-cache policy libucx0 | awk '/Candidate:/ {print $2}')
[ -n "$bin_version" ] && [ "$bin_version" != "(none)" ] || {
	log "apt knows no libucx0; run apt-get update"
	exit 1
}
src_version=${bin_version%%+b*}
sources=("$root/src/ucx/uct_ivshmem.c" "$root/src/shm/shm.c" "$root/src/shm/shm.h" "$0")
key="ucx $src_version (libucx0 $bin_version) sources $(cat "${sources[@]}" | sha256sum | cut -c1-16)"

case "${1:-}" in
"" | --check) ;;
*)
	log "usage: $0 [--check]"
	exit 2
	;;
esac
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$key" ]; then
	log "up to date: $out ($key)"
	exit 0
fi
if [ "${1:-}" = --check ]; then
	log "missing or stale: $out (wanted: $key); run $0"
	exit 1
fi
for p in gcc libucx-dev dpkg-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || {
		log "missing $p: apt-get install $p (scripts/install-deps.sh does)"
		exit 1
	}
done
mkdir -p "$cache"
# One build at a time (tests run in parallel); another may have finished while this waited.
exec 8>"$cache/.lock"
flock 8
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$key" ]; then
	log "up to date: $out ($key), made while this waited"
	exit 0
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mkdir -p "$work/apt/sources" "$work/apt/lists/partial"
echo "deb-src $mirror $codename main" >"$work/apt/sources/src.list"
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/apt/sources"
	-o Dir::State::Lists="$work/apt/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -q >"$work/apt.log" 2>&1 || {
	cat "$work/apt.log" >&2
	log "apt-get update of $mirror failed"
	exit 1
}
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only "ucx=$src_version" >"$work/apt.log" 2>&1) || {
	cat "$work/apt.log" >&2
	log "could not fetch Debian's source package ucx=$src_version"
	exit 1
}
dpkg-source -x "$work"/ucx_*.dsc "$work/src" >/dev/null
[ -f "$work/src/src/uct/sm/mm/base/mm_iface.h" ] || {
	log "ucx $src_version has no src/uct/sm/mm/base/mm_iface.h: the mm base moved; see docs/bypass.md"
	exit 1
}
cat >"$work/config.h" <<'H'
#define ENABLE_DEBUG_DATA 0
#define ENABLE_PARAMS_CHECK 1
#define ENABLE_ASSERT 1
#define ENABLE_MT 1
#define UCS_MAX_LOG_LEVEL UCS_LOG_LEVEL_INFO
H
gcc -std=gnu11 -D_GNU_SOURCE -O2 -g0 -fPIC -shared -Wall -Wextra -Wno-unused-parameter -Werror \
	-include "$work/config.h" -I"$work/src/src" -I"$root/src" \
	-Wl,-soname,libuct_cma.so.0 -Wl,-z,defs \
	-o "$work/libuct_cma.so.0" "$root/src/ucx/uct_ivshmem.c" "$root/src/shm/shm.c" \
	-luct -lucs -lpthread
nm -D --defined-only "$work/libuct_cma.so.0" | grep -q ' uct_ivshmem_init$' || {
	log "the module exports no uct_ivshmem_init"
	exit 1
}
strip --strip-unneeded "$work/libuct_cma.so.0"
cp "$work/libuct_cma.so.0" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$key" >"$out.stamp"
log "made $out in $(($(date +%s) - start)) s ($key)"
