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
