#!/usr/bin/env bash
# The bypass benchmark (issue 18): latency (ping-pong, half the round trip) and streaming
# bandwidth for messages of 8 B to 1 MiB, in one run:
#   (a) host  two host processes over the same channel library on a memfd (the limit)
#   (b) shm   two VMs over the channel (ivshmem-plain), our shm-pingpong in each
#   (c) tcp   the same two VMs over virtio-net TCP (the job's private network), the same
#             program with --tcp
# (b) and (c) run in one `vmhpc run --vms 2 --shm` job: the same VMs, one after the other.
# Latency is the median half round trip (the mean beside it): the machines here are shared,
# and a mean mostly measures preemption. Every message's content is checked (shm-pingpong). Prints a table and the goals' verdicts
# (TCG: 8 B latency >= 10x lower than TCP, 1 MiB bandwidth >= 5x higher).
#
# Then the same at the MPI level (MPI=0 skips it), with bench/mpi-osu (osu_latency and osu_bw
# as the OSU micro-benchmarks make them: Debian packages no OSU; built with Debian's mpicc,
# unmodified MPI calls; OSU's iteration counts / OSU_SCALE, default 20) for
#   (a) host  2 host processes, Debian's MPICH and UCX (shared memory: sysv/posix)
#   (b) shm   2 VMs, `vmhpc run --shm`, image tiny-mpi-shm (UCX's ivshmem transport)
#   (c) tcp   2 VMs without --shm, the same image (UCX over virtio-net TCP)
#   (d) 1vm   2 ranks in one VM with 2 VCPUs (UCX's shared memory inside the guest)
# OSU reports means; each figure is the median of REPEAT runs (default 1) of its job.
#
# Needs root (the job's taps, virtiofsd). Environment: BUILD (default build), ITERS
# (round trips per size, default 200; /10 from 64 KiB up), VMHPC_STORE (default: a temp
# store, the image built into it), ACCEL (tcg|kvm, else probed), SPIN_US (how long a wait
# spins before it yields and sleeps; default the library's, 20 us).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${BUILD:-build}
iters=${ITERS:-200}
sizes=8,64,512,4096,32768,262144,1048576
work=$(mktemp -d /tmp/vmhpc-bypass.XXXXXX)
trap 'rm -rf "$work"' EXIT
export VMHPC_STORE=${VMHPC_STORE:-$work/store}
export VMHPC_INIT=${VMHPC_INIT:-$repo/$build/vmhpc-init}
vmhpc=$repo/$build/vmhpc

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F)"
SHM_SPIN_US=${SPIN_US:-} "$repo/$build/shm-pingpong" --host --sizes $sizes --iters "$iters" >"$work/host.out"

"$vmhpc" image build --level 1 examples/tiny-mpi.ini >/dev/null
mkdir -p "$work/job"
chmod 0755 "$work" "$work/job"
cp "$repo/$build/shm-pingpong" bench/bypass-vm.sh "$work/job/"
(cd "$work/job" && BYPASS_SIZES=$sizes BYPASS_ITERS=$iters BYPASS_SPIN_US=${SPIN_US:-} "$vmhpc" run --vms 2 --shm \
	${ACCEL:+--accel "$ACCEL"} -- ./bypass-vm.sh >"$work/vm.out" 2>"$work/vm.err") ||
	{ cat "$work/vm.err" "$work/vm.out" >&2; exit 1; }
accel=$(grep -o 'VCPU, [0-9]* MB each, [a-z]*' "$work/vm.err" | awk '{print $NF}')
awk '/^== shm/{m=1;next} /^== tcp/{m=2;next} m==1 && /^[0-9]/{print > "'"$work"'/shm.out"} m==2 && /^[0-9]/{print > "'"$work"'/tcp.out"}' "$work/vm.out"
for f in host shm tcp; do
	grep -q '^1048576 ' "$work/$f.out" || { echo "no figures for $f" >&2; cat "$work/vm.out" "$work/vm.err" >&2; exit 1; }
done

echo "accelerator: ${accel:-unknown}; QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')"
echo "latency: median half round trip (mean in brackets); bandwidth: n messages one way"
printf '%8s | %18s %18s %18s | %9s %9s %9s\n' size "host us" "shm us" "tcp us" "host MB/s" "shm MB/s" "tcp MB/s"
join -j1 <(sort -k1,1 "$work/host.out") <(join -j1 <(sort -k1,1 "$work/shm.out") <(sort -k1,1 "$work/tcp.out")) |
	sort -n | awk '{printf "%8d | %8.2f (%7.2f) %8.2f (%7.2f) %8.2f (%7.2f) | %9.1f %9.1f %9.1f\n", $1, $2, $4, $5, $7, $8, $10, $3, $6, $9}'
read -r _ shm_lat _ < <(grep '^8 ' "$work/shm.out")
read -r _ tcp_lat _ < <(grep '^8 ' "$work/tcp.out")
read -r _ _ shm_bw _ < <(grep '^1048576 ' "$work/shm.out")
read -r _ _ tcp_bw _ < <(grep '^1048576 ' "$work/tcp.out")
awk -v sl="$shm_lat" -v tl="$tcp_lat" -v sb="$shm_bw" -v tb="$tcp_bw" 'BEGIN {
	lr = tl / sl; br = sb / tb;
	lv = (lr >= 10) ? "met" : "NOT met"; bv = (br >= 5) ? "met" : "NOT met";
	printf "goal 8 B latency >= 10x lower than TCP: %.1fx -> %s\n", lr, lv;
	printf "goal 1 MiB bandwidth >= 5x higher than TCP: %.1fx -> %s\n", br, bv }'

[ "${MPI:-1}" = 1 ] || exit 0
osu=$repo/$build/mpi-osu
[ -x "$osu" ] || { echo "no $osu (Debian's mpich and libmpich-dev are needed to build it)" >&2; exit 1; }
"$repo/scripts/build-uct-ivshmem.sh" 2>/dev/null
"$vmhpc" image build --level 1 examples/tiny-mpi-shm.ini >/dev/null
cp "$osu" "$work/job/"
scale=${OSU_SCALE:-20}
repeat=${REPEAT:-1}
msizes=8,64,512,4096,32768,262144,1048576
# osu TEST CASE: "SIZE VALUE" lines, the median of $repeat runs per size.
osu_run() {
	local test=$1 case=$2 i
	for i in $(seq "$repeat"); do
		case $case in
		host) timeout 900 mpiexec -n 2 "$osu" "$test" --sizes $msizes --scale "$scale" ;;
		shm) (cd "$work/job" && timeout 900 "$vmhpc" run --vms 2 --shm --image tiny-mpi-shm ${ACCEL:+--accel "$ACCEL"} -- ./mpi-osu "$test" --sizes $msizes --scale "$scale") ;;
		tcp) (cd "$work/job" && timeout 900 "$vmhpc" run --vms 2 --image tiny-mpi-shm ${ACCEL:+--accel "$ACCEL"} -- ./mpi-osu "$test" --sizes $msizes --scale "$scale") ;;
		1vm) (cd "$work/job" && timeout 900 "$vmhpc" run --vms 1 --vcpus 2 -n 2 --image tiny-mpi-shm ${ACCEL:+--accel "$ACCEL"} -- ./mpi-osu "$test" --sizes $msizes --scale "$scale") ;;
		esac 2>>"$work/osu.err" | grep -E '^[0-9]+ ' || { echo "mpi-osu $test $case failed" >&2; tail -20 "$work/osu.err" >&2; exit 1; }
	done | sort -k1,1n -k2,2g | awk -v n="$repeat" '{v[$1]=v[$1] " " $2; c[$1]++} END {for (s in v) {split(substr(v[s],2), a, " "); print s, a[int((c[s]+1)/2)]}}' | sort -k1,1n >"$work/osu-$test-$case.out"
	grep -q '^1048576 ' "$work/osu-$test-$case.out" || { echo "no 1 MiB figure for mpi-osu $test $case" >&2; exit 1; }
}
for t in latency bw; do
	for c in host shm tcp 1vm; do
		osu_run "$t" "$c"
	done
done
echo
echo "MPI level (bench/mpi-osu: osu_latency / osu_bw, means, OSU's counts / $scale, median of $repeat run(s)); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%8s | %9s %9s %9s %9s | %9s %9s %9s %9s\n' size "host us" "shm us" "tcp us" "1vm us" "host MB/s" "shm MB/s" "tcp MB/s" "1vm MB/s"
paste "$work"/osu-latency-{host,shm,tcp,1vm}.out "$work"/osu-bw-{host,shm,tcp,1vm}.out |
	awk '{printf "%8d | %9.2f %9.2f %9.2f %9.2f | %9.1f %9.1f %9.1f %9.1f\n", $1, $2, $4, $6, $8, $10, $12, $14, $16}'
read -r _ shm_lat < <(grep '^8 ' "$work/osu-latency-shm.out")
read -r _ tcp_lat < <(grep '^8 ' "$work/osu-latency-tcp.out")
read -r _ shm_bw < <(grep '^1048576 ' "$work/osu-bw-shm.out")
read -r _ tcp_bw < <(grep '^1048576 ' "$work/osu-bw-tcp.out")
awk -v sl="$shm_lat" -v tl="$tcp_lat" -v sb="$shm_bw" -v tb="$tcp_bw" 'BEGIN {
	lr = tl / sl; br = sb / tb;
	printf "MPI goal 8 B latency >= 10x lower than TCP: %.1fx -> %s\n", lr, (lr >= 10) ? "met" : "NOT met";
	printf "MPI goal 1 MiB bandwidth >= 5x higher than TCP: %.1fx -> %s\n", br, (br >= 5) ? "met" : "NOT met" }'
