#!/usr/bin/env bash
# Makes the libmpich.so.12 that the default image ships: Debian's own, with the upstream fix
# for MPI_Finalize deadlocking over UCX's TCP transport (scripts/mpich/0001-*.patch: the PMI
# barrier before the endpoint closes, not after, as upstream MPICH has it; docs/mpi.md), for the libmpich12 that apt gives the image builder.
#
# Two ways to the same change, the first when it applies:
#  1. Debian's binary, patched in place: when the package's libmpich.so.12.2.2 is the one
#     measured in docs/mpi.md (sha256 below), MPIDI_UCX_mpi_finalize_hook's call of
#     MPIR_pmi_barrier after the endpoint closes (ucx_init.c:400) is neutralized and a call is
#     made at the function's start instead, before the closes, as the source patch does (two
#     edits of 13 and 5 bytes, below). Seconds; input and output sha256 are checked.
#  2. Otherwise (another Debian version, or --from-source): Debian's source package with the
#     patch applied, configured with the flags of its debian/rules, and only lib/libmpich.la
#     built (hydra, libmpichfort and the headers stay Debian's). Measured here: ~3 min of
#     configure and about an hour of compiling on 2 busy cores (docs/mpi.md).
#
# The result is cached: CACHE/libmpich.so.12.2.2 (CACHE is $VMHPC_MPICH_CACHE, default
# /var/cache/vmhpc/mpich, the path examples/tiny-mpi.ini names) with a stamp naming the
# Debian version and the patch's hash. A run with a matching stamp does nothing.
#
# Usage: scripts/build-mpich.sh [--check | --from-source]
#   --check        exit 1 if the library is missing or stale, make nothing
#   --from-source  build from the source package even when the binary patch applies
# Needs root the first time (the cache folder, build dependencies for a source build).
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
# The binary patch's output hash stands for its edits (it changes with any of them).
binary_sha256=$(sed -n 's/^patched_sha256=//p' "$0")
key="mpich $src_version (libmpich12 $bin_version) patches $(cat "${patches[@]}" | sha256sum | cut -c1-16) binary ${binary_sha256:0:16}"

mode=${1:-}
case "$mode" in
"" | --check | --from-source) ;;
*)
	log "usage: $0 [--check | --from-source]"
	exit 2
	;;
esac
if [ "$mode" != --from-source ] && [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$key" ]; then
	log "up to date: $out ($key)"
	exit 0
fi
if [ "$mode" = --check ]; then
	log "missing or stale: $out (wanted: $key); run $0"
	exit 1
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
# VMHPC_MPICH_KEEP=1 keeps the build folder (to look into a failed build).
[ -n "${VMHPC_MPICH_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
start=$(date +%s)

install_result() {
	cp "$1" "$out.tmp"
	mv -f "$out.tmp" "$out"
	echo "$key" >"$out.stamp"
	log "made $out in $(($(date +%s) - start)) s by $2 ($key)"
}

# Way 1. Debian 12's libmpich12 4.0.2-3+b1 (amd64): where the two edits go, what is there
# now, and what the patched file must be. Found with objdump -d: MPIDI_UCX_mpi_finalize_hook
# starts at 0x2f8d70 (the one function that calls ucp_disconnect_nb, ucp_request_is_completed,
# ucp_worker_destroy and ucp_cleanup); its callee at 0x2d5e50 raises "**pmi_barrier"
# (MPIR_pmi_barrier).
#  - 0x2f8d7e, before the closes: "lea MPIDI_global(%rip),%rax; mov 0x1088(%rax),%ebx" (load
#    is_initialized, 13 bytes) becomes "call MPIR_pmi_barrier; mov MPIDI_global+0x1088(%rip),
#    %ebx; 2-byte nop": the barrier, then the same load without %rax, which nothing reads
#    before it is set again. No argument register is live at a function's third instruction
#    and %rsp is 16-byte aligned there (6 pushes + 0x18). The barrier's status is not checked
#    (the source patch jumps to fn_fail on it; a failed PMI barrier here means hydra is gone).
#  - 0x2f8ee5, after the closes: "call MPIR_pmi_barrier" becomes "xor %eax,%eax; nopl (%rax)"
#    (mpi_errno = MPI_SUCCESS, so the status check after it falls through).
debian_sha256=86406bb225ffe9ef2f9176406407b4569671417d0ff3f3b8ac490c5380199f72
edits=(
	"$((0x2f8d7e)) 488d057b674d028b9888100000 \xe8\xcd\xd0\xfd\xff\x8b\x1d\xff\x77\x4d\x02\x66\x90"
	"$((0x2f8ee5)) e866cffdff \x31\xc0\x0f\x1f\x00"
)
patched_sha256=e080c4bf610862e0c6df8004d0c174de9caf454cf54bbe8c8710612b6e7b8ce7
if [ "$mode" != --from-source ]; then
	(cd "$work" && apt-get -o APT::Sandbox::User=root download -q "libmpich12=$bin_version" >&2)
	dpkg-deb -x "$work"/libmpich12_*.deb "$work/deb"
	lib=$(echo "$work"/deb/usr/lib/*/libmpich.so.12.2.2)
	if [ "$(sha256sum <"$lib" | cut -c1-64)" = "$debian_sha256" ]; then
		for e in "${edits[@]}"; do
			read -r offset old new <<<"$e"
			[ "$(od -An -tx1 -j "$offset" -N $((${#old} / 2)) "$lib" | tr -d ' \n')" = "$old" ] || {
				log "unexpected bytes at $offset"
				exit 1
			}
			printf "$new" | dd of="$lib" bs=1 seek="$offset" conv=notrunc status=none
		done
		got=$(sha256sum <"$lib" | cut -c1-64)
		[ "$got" = "$patched_sha256" ] || {
			log "the patched library's sha256 is $got, not $patched_sha256"
			exit 1
		}
		install_result "$lib" "patching Debian's binary"
		exit 0
	fi
	log "libmpich12 $bin_version is not the binary measured in docs/mpi.md: building from source"
fi

# Way 2. Build dependencies of the part we build (debian/control's Build-Depends, less what only
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
install_result "$built" "building Debian's source"
