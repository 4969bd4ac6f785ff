#!/usr/bin/env bash
# The UCX transport over the shared-memory channel (src/ucx/uct_ivshmem.c, docs/bypass.md),
# loaded by Debian's own UCX 1.13 on the host: a private copy of Debian's libucs/libuct/
# libucp/libucm (UCX looks for modules next to libucs) with our module as
# ucx/libuct_cma.so.0, a region made as `vmhpc run --shm` makes it, then:
#  1. ucx_info -d lists the ivshmem transport; without VMHPC_SHM it does not;
#  2. ucx_perftest between two processes, UCP tag latency and 1 MiB bandwidth, with
#     UCX_TLS=ivshmem only (nothing else could carry them);
#  3. an unmodified MPICH program (examples/mpi-ring.c) over it, 2 ranks;
#  4. a region of another job (wrong key) or of another layout version is refused with one
#     warning and the transport is absent (UCX would use TCP).
. "$(dirname "$0")/lib.sh"
set -e

command -v ucx_perftest >/dev/null || fail "no ucx_perftest: apt-get install ucx-utils (scripts/install-deps.sh)"
"$VMHPC_SOURCE_ROOT/scripts/build-uct-ivshmem.sh" 2>"$WORK/build.err" ||
	fail "building the module: $(cat "$WORK/build.err")"
module=${VMHPC_UCX_CACHE:-/var/cache/vmhpc/ucx}/libuct_cma.so.0
lib="$WORK/lib"
mkdir -p "$lib/ucx"
for l in libucs.so.0 libuct.so.0 libucp.so.0 libucm.so.0; do
	cp -L "/usr/lib/x86_64-linux-gnu/$l" "$lib/"
done
cp "$module" "$lib/ucx/libuct_cma.so.0"
region=/dev/shm/vmhpc-ucx-host-$$
on_exit "rm -f $region"
key=0123456789abcdef
"$VMHPC_SHM_REGION" "$region" 2 "$key" >/dev/null
export LD_LIBRARY_PATH="$lib"

# 1.
VMHPC_SHM=$region VMHPC_SHM_KEY=$key ucx_info -d >"$WORK/info" 2>&1
grep -q "Transport: ivshmem" "$WORK/info" || fail "ucx_info -d lists no ivshmem: $(head -50 "$WORK/info")"
ucx_info -d >"$WORK/info0" 2>&1
! grep -q "ivshmem" "$WORK/info0" || fail "ivshmem listed without VMHPC_SHM"
ok "Debian's UCX loads the module: ivshmem listed with VMHPC_SHM, absent without"

# 2. The port is derived from our pid so that concurrent runs do not collide.
export VMHPC_SHM=$region VMHPC_SHM_KEY=$key UCX_TLS=ivshmem
port=$((20000 + $$ % 20000))
perf() {
	timeout 120 ucx_perftest -p "$port" >"$WORK/server.out" 2>&1 &
	local server=$!
	sleep 1
	timeout 120 ucx_perftest -p "$port" localhost "$@" >"$WORK/client.out" 2>&1 || {
		kill "$server" 2>/dev/null
		fail "ucx_perftest $*: $(tail -5 "$WORK/client.out" "$WORK/server.out")"
	}
	wait "$server" || fail "ucx_perftest server for $*: $(tail -5 "$WORK/server.out")"
	port=$((port + 1))
	grep '^Final:' "$WORK/client.out"
}
lat=$(perf -t tag_lat -s 8 -n 20000 | awk '{print $3}')
bw=$(perf -t tag_bw -s 1048576 -n 300 | awk '{print $6}')
[ -n "$lat" ] && [ -n "$bw" ] || fail "no figures from ucx_perftest"
ok "ucx_perftest over ivshmem only: 8 B tag latency ${lat} us (median), 1 MiB tag bandwidth ${bw} MB/s"

# 3. MPICH's mpiexec passes the environment to both ranks.
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || { command -v mpicc >/dev/null && mpicc -O2 -o "$WORK/mpi-ring" \
	"$VMHPC_SOURCE_ROOT/examples/mpi-ring.c" && ring="$WORK/mpi-ring"; }
[ -x "$ring" ] || fail "no mpi-ring and no mpicc"
UCX_TLS=ivshmem,self timeout 120 mpiexec -n 2 "$ring" >"$WORK/ring.out" 2>&1 ||
	fail "mpi-ring over ivshmem: $(tail -20 "$WORK/ring.out")"
ok "MPICH's mpi-ring, 2 ranks, UCX_TLS=ivshmem,self: $(tail -1 "$WORK/ring.out")"
unset UCX_TLS

# 4. Refusals: another job's key; a region of another layout version.
VMHPC_SHM_KEY=fedcba9876543210 ucx_info -d >"$WORK/info-key" 2>&1
! grep -q "Transport: ivshmem" "$WORK/info-key" || fail "a region of another job was used"
[ "$(grep -c "vmhpc ivshmem:.*another job" "$WORK/info-key")" -eq 1 ] ||
	fail "no single warning for another job's region: $(grep -i warn "$WORK/info-key")"
ok "another job's region refused: $(grep -o 'vmhpc ivshmem:.*' "$WORK/info-key")"
printf '\x07' | dd of="$region" bs=1 seek=8 conv=notrunc status=none # the version field
ucx_info -d >"$WORK/info-ver" 2>&1
! grep -q "Transport: ivshmem" "$WORK/info-ver" || fail "a region of layout version 7 was used"
grep -q "vmhpc ivshmem:.*version 7" "$WORK/info-ver" || fail "no warning naming the version: $(grep -i warn "$WORK/info-ver")"
ok "a region of another layout version refused"
