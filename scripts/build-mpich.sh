#!/usr/bin/env bash
# Builds the libmpich.so.12 that the default image ships: Debian's own mpich source package
# (the version of the libmpich12 that apt gives the image builder), configured with the flags
# of its debian/rules, with vmhpc's patches from scripts/mpich/*.patch applied (today one:
# the upstream fix for MPI_Finalize hanging over UCX's TCP transport, see docs/mpi.md).
# Only lib/libmpich.la is built: hydra, libmpichfort and the headers stay Debian's.
#
# The result is cached: CACHE/libmpich.so.12.2.2 (CACHE is $VMHPC_MPICH_CACHE, default
# /var/cache/vmhpc/mpich, the path examples/tiny-mpi.ini names) with a stamp naming the
# source version and the patches' hash. A run with a matching stamp does nothing, so CI
# pays for the build once per machine (or cache); a new Debian version or patch rebuilds.
#
# Usage: scripts/build-mpich.sh [--check]   (--check: exit 1 if a build is needed, build nothing)
# Needs root the first time (build dependencies from Debian, the cache folder).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${VMHPC_MPICH_CACHE:-/var/cache/vmhpc/mpich}
out=$cache/libmpich.so.12.2.2
mirror=${VMHPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { echo "build-mpich: $*" >&2; }

# Which source the image's libmpich12 comes from: "mpich (4.0.2-3)" for the binNMU 4.0.2-3+b1.
# The image builder downloads the candidate version, so that is the one to match.
bin_version=$(apt-cache policy libmpich12 | awk '/Candidate:/ {print $2}')
[ -n "$bin_version" ] && [ "$bin_version" != "(none)" ] || {
	log "apt knows no libmpich12; run apt-get update"
	exit 1
}
src_version=$(apt-cache show "libmpich12=$bin_version" | awk -F'[()]' '/^Source:/ {print $2; exit}')
[ -n "$src_version" ] || src_version=${bin_version%%+b*}
patches=("$here"/mpich/*.patch)
key="mpich $src_version (libmpich12 $bin_version) patches $(cat "${patches[@]}" | sha256sum | cut -c1-16)"

if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$key" ]; then
	log "up to date: $out ($key)"
	exit 0
fi
if [ "${1:-}" = "--check" ]; then
	log "needs a build: $out ($key)"
	exit 1
fi

# Build dependencies of the part we build (debian/control's Build-Depends, less what only
# hydra, the Fortran bindings or the documentation need; gfortran stays because configure
# records the Fortran type sizes that libmpich itself answers for).
deps=(build-essential dpkg-dev patch gfortran libucx-dev libhwloc-dev libnuma-dev)
missing=()
for p in "${deps[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || {
		log "missing ${missing[*]}; run as root or apt-get install them"
		exit 1
	}
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
# VMHPC_MPICH_KEEP=1 keeps the build folder (to look into a failed build).
[ -n "${VMHPC_MPICH_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# The source package through a private apt configuration: the host's sources and lists stay
# untouched, and no deb-src line is needed there.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mkdir -p "$work/apt/sources" "$work/apt/lists/partial"
echo "deb-src $mirror $codename main" >"$work/apt/sources/src.list"
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/apt/sources"
	-o Dir::State::Lists="$work/apt/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -q >&2
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only "mpich=$src_version" >&2)
dpkg-source -x "$work"/mpich_*.dsc "$work/src" >&2
cd "$work/src"
for p in "${patches[@]}"; do
	log "applying $(basename "$p")"
	patch -p1 --forward <"$p" >&2
done

# debian/rules' flags for amd64 (ch4:ucx), so the library matches the rest of Debian's MPICH:
# same ABI, same defaults; the .so's name and SONAME come from MPILIBNAME. Left out:
# --with-slurm, which only hydra uses (Debian's libmpich.so.12 does not link libslurm) and
# which would need libslurm-dev.
export MPICHLIB_CPPFLAGS=$(dpkg-buildflags --get CPPFLAGS)
export MPICHLIB_CFLAGS=$(dpkg-buildflags --get CFLAGS)
export MPICHLIB_CXXFLAGS=$(dpkg-buildflags --get CXXFLAGS)
export MPICHLIB_FFLAGS="$(dpkg-buildflags --get FFLAGS) -fallow-invalid-boz -fallow-argument-mismatch"
export MPICHLIB_FCFLAGS="$(dpkg-buildflags --get FFLAGS) -cpp -fallow-invalid-boz -fallow-argument-mismatch"
export FFLAGS="$(dpkg-buildflags --get FFLAGS | sed -e 's/-g //') -fallow-invalid-boz -fallow-argument-mismatch"
export F77=gfortran FC=gfortran MPILIBNAME=mpich TZ=UTC+0
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
log "configuring (Debian's flags)"
./configure --build="$(dpkg-architecture -qDEB_BUILD_GNU_TYPE)" \
	--with-ucx=/usr --with-device=ch4:ucx --with-pm=hydra \
	--with-hwloc-prefix=/usr --with-wrapper-dl-type=none --enable-shared --disable-static \
	--without-yaksa --prefix=/usr --enable-fortran=all --disable-rpath \
	--disable-wrapper-rpath --sysconfdir=/etc/mpich --libdir="/usr/lib/$multiarch" \
	--includedir="/usr/include/$multiarch/mpich" --docdir=/usr/share/doc/mpich \
	--disable-silent-rules CPPFLAGS="" CFLAGS="" CXXFLAGS="" FCFLAGS="$FFLAGS" \
	BASH_SHELL=/bin/bash >"$work/configure.log" 2>&1 || {
	tail -30 "$work/configure.log" >&2
	log "configure failed (log above)"
	exit 1
}
log "building lib/libmpich.la ($(($(date +%s) - start)) s so far)"
# libmpich.la takes in the convenience libraries of the bundled sub-projects (MPL, json-c,
# yaksa, which configure embeds even with Debian's --without-yaksa, and ROMIO); the top-level Makefile builds them only through its recursive "all", which would
# also build hydra and the Fortran and C++ bindings. Build just those folders, then the library.
subdirs=$(make --no-print-directory -f Makefile -f <(printf 'vmhpc-print:\n\t@echo $(external_subdirs)\n') vmhpc-print)
{
	for d in $subdirs src/mpi/romio; do
		[ -f "$d/Makefile" ] || continue
		make -j"$(nproc)" -C "$d" || exit 1
	done
	make -j"$(nproc)" lib/libmpich.la
} >"$work/make.log" 2>&1 || {
	tail -30 "$work/make.log" >&2
	log "make failed (log above)"
	exit 1
}
built=lib/.libs/libmpich.so.12.2.2
[ "$(objdump -p "$built" | awk '/SONAME/ {print $2}')" = libmpich.so.12 ] || {
	log "$built has not the SONAME libmpich.so.12"
	exit 1
}
# As dh_strip leaves Debian's copy: no debug sections, same dynamic symbols.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$built"
cp "$built" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$key" >"$out.stamp"
log "built $out in $(($(date +%s) - start)) s ($key)"
