#!/usr/bin/env bash
# Issue 13's figure: how often an MPI job hangs in MPI_Finalize, and how long runs take.
#
#   bench/mpi-finalize.sh            (root; after `ninja -C build` and scripts/build-mpich.sh)
#
#   VM_RUNS=100        runs of examples/mpi-stress.c across 2 VMs with the default image
#                      (Debian's MPICH with the fix, docs/mpi.md), each under --time VM_LIMIT_S
#   VM_BASE_RUNS=0     the same with Debian's unpatched libmpich (an image built from a copy of
#                      tiny-mpi.ini without the fix), each under --time VM_BASE_LIMIT_S (40)
#   NATIVE_RUNS=30     natively, no VM: 3 ranks of hydra in a network namespace with
#                      UCX_TLS=tcp,self (TCP between ranks, as between VMs), once with Debian's
#                      library and once with the fixed one, each run under NATIVE_LIMIT_S
#
# Prints, per series, runs, hangs (runs stopped by their limit), failures, and the wall time
# per run (p50, p90, p99, max; hung runs excluded). Copy the lines into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root (VM taps, network namespaces)" >&2; exit 1; }
VM_RUNS=${VM_RUNS:-100}
VM_BASE_RUNS=${VM_BASE_RUNS:-0}
NATIVE_RUNS=${NATIVE_RUNS:-30}
VM_LIMIT_S=${VM_LIMIT_S:-90}
VM_BASE_LIMIT_S=${VM_BASE_LIMIT_S:-40}
NATIVE_LIMIT_S=${NATIVE_LIMIT_S:-20}
ARGS=(--quiet --max 1M --iters 1)
vmhpc=$PWD/build/vmhpc
stress=$PWD/build/mpi-stress
fixed=/var/cache/vmhpc/mpich/libmpich.so.12.2.2
[ -x "$vmhpc" ] && [ -x "$stress" ] || { echo "build first: ninja -C build" >&2; exit 1; }
./scripts/build-mpich.sh --check

work=$(mktemp -d /tmp/vmhpc-bench-mpi.XXXXXX)
ns=vmhpc-bench-$$
export VMHPC_STORE=$work/store VMHPC_RUN_DIR=$work/run VMHPC_CACHE=${VMHPC_CACHE:-/var/cache/vmhpc}
cleanup() {
	"$vmhpc" cleanup >/dev/null 2>&1 || true
	if ip netns list | grep -qw "$ns"; then
		for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
		ip netns del "$ns"
	fi
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/job" "$work/lib"
chmod 0755 "$work"
chmod 0777 "$work/job"
cp "$stress" "$work/job/stress"

# stats NAME: summarizes $work/NAME.times (seconds per finished run) and the counters.
stats() {
	local name=$1 runs=$2 hangs=$3 fails=$4
	sort -n "$work/$name.times" 2>/dev/null | awk -v n="$name" -v r="$runs" -v h="$hangs" -v f="$fails" '
		{ t[NR] = $1 }
		function pct(p) { i = int(NR * p + 0.999); if (i < 1) i = 1; return t[i] }
		END {
			if (NR == 0) { printf "%-28s runs %3d  hangs %3d  failures %3d\n", n, r, h, f; exit }
			printf "%-28s runs %3d  hangs %3d  failures %3d  run time p50 %.1f s  p90 %.1f s  p99 %.1f s  max %.1f s\n",
				n, r, h, f, pct(0.5), pct(0.9), pct(0.99), t[NR]
		}'
}

# vm_series NAME IMAGE RUNS LIMIT_S
vm_series() {
	local name=$1 image=$2 runs=$3 limit=$4 hangs=0 fails=0 code s e
	: >"$work/$name.times"
	for i in $(seq 1 "$runs"); do
		s=$(date +%s.%N)
		set +e
		(cd "$work/job" && "$vmhpc" run --image "$image" --vms 2 --time "${limit}s" -- ./stress "${ARGS[@]}") \
			>"$work/out" 2>"$work/err"
		code=$?
		set -e
		e=$(date +%s.%N)
		if [ "$code" -eq 124 ]; then
			hangs=$((hangs + 1))
			grep -q VERIFIED "$work/out" && echo "$name run $i: VERIFIED, then hung in MPI_Finalize" >&2
		elif [ "$code" -ne 0 ] || ! grep -q VERIFIED "$work/out"; then
			fails=$((fails + 1))
			echo "$name run $i: exit $code: $(tail -n 2 "$work/err" | tr '\n' ' ')" >&2
		else
			echo "$e - $s" | bc >>"$work/$name.times"
		fi
	done
	stats "$name" "$runs" "$hangs" "$fails"
}

# native_series NAME LIBDIR-or-empty RUNS
native_series() {
	local name=$1 libdir=$2 runs=$3 hangs=0 fails=0 code s e
	: >"$work/$name.times"
	for i in $(seq 1 "$runs"); do
		s=$(date +%s.%N)
		set +e
		ip netns exec "$ns" env UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 UCX_WARN_UNUSED_ENV_VARS=n \
			${libdir:+LD_LIBRARY_PATH=$libdir} \
			timeout -s KILL "$NATIVE_LIMIT_S" mpiexec.hydra -n 3 "$stress" "${ARGS[@]}" \
			>"$work/out" 2>"$work/err"
		code=$?
		set -e
		e=$(date +%s.%N)
		if [ "$code" -eq 137 ]; then
			hangs=$((hangs + 1))
			for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
		elif [ "$code" -ne 0 ] || ! grep -q VERIFIED "$work/out"; then
			fails=$((fails + 1))
			echo "$name run $i: exit $code: $(tail -n 2 "$work/err" | tr '\n' ' ')" >&2
		else
			echo "$e - $s" | bc >>"$work/$name.times"
		fi
	done
	stats "$name" "$runs" "$hangs" "$fails"
}

echo "# $(date -u +%Y-%m-%d) $(uname -n): $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
	"mpi-stress ${ARGS[*]}"
if [ "$NATIVE_RUNS" -gt 0 ]; then
	ip netns add "$ns"
	ip -n "$ns" link add eth0 type veth peer name eth1
	ip -n "$ns" addr add 10.213.0.1/24 dev eth0
	for l in lo eth0 eth1; do ip -n "$ns" link set "$l" up; done
	ln -s "$fixed" "$work/lib/libmpich.so.12"
	native_series "native, Debian's libmpich" "" "$NATIVE_RUNS"
	native_series "native, fixed libmpich" "$work/lib" "$NATIVE_RUNS"
fi
"$vmhpc" image build --level 1 examples/tiny-mpi.ini >/dev/null 2>&1
if [ "$VM_BASE_RUNS" -gt 0 ]; then
	sed -e 's/^name = tiny-mpi$/name = tiny-mpi-debian/' -e '/^files = .*libmpich/d' \
		examples/tiny-mpi.ini >"$work/debian.ini"
	"$vmhpc" image build --level 1 "$work/debian.ini" >/dev/null 2>&1
	vm_series "2 VMs, Debian's libmpich" tiny-mpi-debian "$VM_BASE_RUNS" "$VM_BASE_LIMIT_S"
fi
vm_series "2 VMs, fixed libmpich" tiny-mpi "$VM_RUNS" "$VM_LIMIT_S"
