#!/usr/bin/env bash
# The bypass benchmark (issue 18): latency (ping-pong, half the round trip) and streaming
# bandwidth for messages of 8 B to 1 MiB, in one run:
#   (a) host  two host processes over the same channel library on a memfd (the limit)
#   (b) shm   two VMs over the channel (ivshmem-plain), our shm-pingpong in each
#   (c) tcp   the same two VMs over virtio-net TCP (the job's private network), the same
#             program with --tcp
# (b) and (c) run in one `vmhpc run --vms 2 --shm` job: the same VMs, ROUNDS times, the parts
# interleaved (bench/bypass-vm.sh). Latency is the median half round trip (the mean beside
# it): the machines here are shared, and a mean mostly measures preemption. Every message's
# content is checked (shm-pingpong). Each figure is the median over the rounds; a goal's
# verdict (TCG: 8 B latency >= 10x lower than TCP, 1 MiB bandwidth >= 5x higher) says in how
# many rounds it held, and is "met" only when it held in every round.
#
# Then the same at the MPI level (MPI=0 skips it), with bench/mpi-osu (osu_latency and osu_bw
# as the OSU micro-benchmarks make them: Debian packages no OSU; built with Debian's mpicc,
# unmodified MPI calls; OSU's iteration counts / OSU_SCALE, default 20) for
#   (a) host  2 host processes, Debian's MPICH and UCX (shared memory: sysv/posix)
#   (b) shm   2 VMs, `vmhpc run --shm`, image tiny-mpi-shm (UCX's ivshmem transport)
#   (c) tcp   the same 2 VMs, UCX told to use TCP (UCX_TLS and UCX_RNDV_THRESH as a job
#             without --shm has them): virtio-net TCP
#   (d) 1vm   2 ranks in one VM with 2 VCPUs (UCX's shared memory inside the guest)
# (b), (c) and the MPI_VARIANTS run in one job, ROUNDS times interleaved
# (bench/bypass-mpi-vm.sh); (d) in a job of its own. mpi-osu prints OSU's mean and the median
# over iterations; the tables show both, each the median over the rounds.
#
# Needs root (the job's taps, virtiofsd). Environment: BUILD (default build), ITERS
# (round trips per size, default 200; /10 from 64 KiB up), ROUNDS (default 3; REPEAT is
# the same), VMHPC_STORE (default: a temp store, the images built into it), ACCEL (tcg|kvm,
# else probed), VARIANTS (channel settings compared beside "shm", words
# LABEL=VAR=VALUE[,VAR=VALUE], bench/bypass-vm.sh), MPI_VARIANTS (UCX settings compared
# beside "shm" and "tcp", words LABEL=VAR=VALUE[;VAR=VALUE], bench/bypass-mpi-vm.sh),
# MPI_SIZES, OSU_SCALE, KEEP=1 (leave the raw figures in the work folder), MPI=0 (the
# channel's part only), CHANNEL=0 (the MPI part only).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${BUILD:-build}
iters=${ITERS:-200}
rounds=${ROUNDS:-${REPEAT:-3}}
sizes=8,64,512,4096,32768,262144,1048576
work=$(mktemp -d /tmp/vmhpc-bypass.XXXXXX)
if [ "${KEEP:-0}" = 1 ]; then
	echo "KEEP=1: the raw figures stay in $work (its store too, unless VMHPC_STORE is set)"
	trap 'rm -rf "$work/job" "$work/store"' EXIT
else
	trap 'rm -rf "$work"' EXIT
fi
export VMHPC_STORE=${VMHPC_STORE:-$work/store}
export VMHPC_INIT=${VMHPC_INIT:-$repo/$build/vmhpc-init}
vmhpc=$repo/$build/vmhpc
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(load), $(date -u '+%F %H:%M') UTC; $rounds round(s)"
mkdir -p "$work/job"
chmod 0755 "$work" "$work/job"
# vmhpc run passes no environment of ours into the VMs: the guest scripts read this file.
params() { for a in "$@"; do printf '%s=%q\n' "${a%%=*}" "${a#*=}"; done >"$work/job/bypass.env"; }
# median_of COLUMN FILES...: per size (column 1), the median of COLUMN over the files (rounds).
# Files are fig.LABEL.ROUND: labels hold no dot, so fig.shm.* is not fig.shm-chunk64k.*.
median_of() {
	local col=$1
	shift
	cat "$@" | awk -v c="$col" '{v[$1] = v[$1] " " $c} END {for (s in v) print s, v[s]}' |
		while read -r s vals; do
			printf '%s %s\n' "$s" "$(tr ' ' '\n' <<<"$vals" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')"
		done | sort -n
}
# verdict WHAT SIZE COLUMN GOAL A B: for each round, A / B at SIZE from fig.A.R and fig.B.R;
# "met" only when every round met the goal.
verdict() {
	local what=$1 size=$2 col=$3 goal=$4 a=$5 b=$6 r ratios=""
	for r in $(seq "$rounds"); do
		ratios="$ratios $(awk -v s="$size" -v c="$col" '$1==s {print $c}' "$work/fig.$a.$r") $(awk -v s="$size" -v c="$col" '$1==s {print $c}' "$work/fig.$b.$r")"
	done
	awk -v what="$what" -v goal="$goal" -v r="$ratios" 'BEGIN {
		n = split(r, v, " "); met = 0; list = "";
		for (i = 1; i < n; i += 2) { x = v[i] / v[i + 1]; list = list sprintf(" %.1fx", x); if (x >= goal) met++ }
		k = n / 2;
		printf "goal %s >= %dx: per round%s -> %s (%d of %d rounds)\n", what, goal, list, (met == k) ? "met" : "NOT met", met, k }'
}

if [ "${CHANNEL:-1}" = 1 ]; then
for _ in $(seq "$rounds"); do
	"$repo/$build/shm-pingpong" --host --label host --sizes $sizes --iters "$iters"
done | grep '^host ' >"$work/host.lines"

"$vmhpc" image build --level 1 examples/tiny-mpi.ini >/dev/null
cp "$repo/$build/shm-pingpong" bench/bypass-vm.sh "$work/job/"
variants="shm ${VARIANTS:-}"
params BYPASS_SIZES="$sizes" BYPASS_ITERS="$iters" BYPASS_ROUNDS="$rounds" BYPASS_VARIANTS="$variants"
(cd "$work/job" && "$vmhpc" run --vms 2 --shm ${ACCEL:+--accel "$ACCEL"} -- ./bypass-vm.sh >"$work/vm.out" 2>"$work/vm.err") ||
	{ cat "$work/vm.err" "$work/vm.out" >&2; exit 1; }
accel=$(grep -o 'VCPU, [0-9]* MB each, [a-z]*' "$work/vm.err" | awk '{print $NF}')
labels="host $(for v in $variants; do echo "${v%%=*}"; done | tr '\n' ' ')tcp"
cat "$work/host.lines" "$work/vm.out" | awk -v labels="$labels" -v dir="$work" '
	BEGIN { n = split(labels, l, " "); for (i = 1; i <= n; i++) want[l[i]] = 1 }
	want[$1] && $2 ~ /^[0-9]+$/ && NF == 5 { r = ++count[$1, $2]; print $2, $3, $4, $5 > (dir "/fig." $1 "." r) }'
for l in $labels; do
	for r in $(seq "$rounds"); do
		grep -q '^1048576 ' "$work/fig.$l.$r" 2>/dev/null ||
			{ echo "no figures for $l in round $r" >&2; cat "$work/vm.out" "$work/vm.err" >&2; exit 1; }
	done
done
echo "accelerator: ${accel:-unknown}; QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'); load after the VM job $(load)"
echo "latency: median half round trip, us (in brackets the mean); bandwidth: n messages one way, MB/s; each the median of $rounds round(s)"
header=$(printf '%8s |' size; for l in $labels; do printf ' %20s' "$l us"; done; printf ' |'; for l in $labels; do printf ' %10s' "$l MB/s"; done)
echo "$header"
for l in $labels; do
	median_of 2 "$work/fig.$l".* >"$work/$l.lat"
	median_of 4 "$work/fig.$l".* >"$work/$l.mean"
	median_of 3 "$work/fig.$l".* >"$work/$l.bw"
done
for s in ${sizes//,/ }; do
	printf '%8d |' "$s"
	for l in $labels; do
		printf ' %9.2f (%8.2f)' "$(awk -v s="$s" '$1==s {print $2}' "$work/$l.lat")" "$(awk -v s="$s" '$1==s {print $2}' "$work/$l.mean")"
	done
	printf ' |'
	for l in $labels; do printf ' %10.1f' "$(awk -v s="$s" '$1==s {print $2}' "$work/$l.bw")"; done
	echo
done
verdict "8 B latency lower than TCP (median half round trip)" 8 2 10 tcp shm
verdict "1 MiB bandwidth higher than TCP" 1048576 3 5 shm tcp
for v in ${VARIANTS:-}; do
	l=${v%%=*}
	verdict "8 B latency lower than TCP with $l" 8 2 10 tcp "$l"
	verdict "1 MiB bandwidth higher than TCP with $l" 1048576 3 5 "$l" tcp
done
fi # CHANNEL

[ "${MPI:-1}" = 1 ] || exit 0
osu=$repo/$build/mpi-osu
[ -x "$osu" ] || { echo "no $osu (Debian's mpich and libmpich-dev are needed to build it)" >&2; exit 1; }
"$repo/scripts/build-uct-ivshmem.sh" 2>/dev/null
# tiny-mpi-shm derives from tiny-mpi (built above unless CHANNEL=0; a no-op when it exists).
"$vmhpc" image build --level 1 examples/tiny-mpi.ini >/dev/null
"$vmhpc" image build --level 1 examples/tiny-mpi-shm.ini >/dev/null
cp "$osu" bench/bypass-mpi-vm.sh "$work/job/"
scale=${OSU_SCALE:-20}
msizes=${MPI_SIZES:-8,64,512,4096,32768,262144,1048576}
# What a job without --shm gives UCX (docs/bypass.md): TCP between the VMs, UCX's own
# rendezvous threshold.
mpi_variants="shm tcp=UCX_TLS=tcp,sysv,posix,self;UCX_RNDV_THRESH=auto ${MPI_VARIANTS:-}"
echo
echo "MPI level: load before $(load), $(date -u '+%H:%M') UTC"
for r in $(seq "$rounds"); do
	for t in latency bw; do
		timeout 900 mpiexec -n 2 "$osu" "$t" --sizes "$msizes" --scale "$scale" 2>>"$work/osu.err" |
			grep -E '^[0-9]+ ' | sed "s/^/host $t /" || { echo "mpi-osu $t on the host failed" >&2; tail -20 "$work/osu.err" >&2; exit 1; }
	done
done >"$work/mpi.lines"
mpi_job() {
	(cd "$work/job" && timeout 3600 "$vmhpc" run -n 1 "$@" -- ./bypass-mpi-vm.sh) 2>>"$work/osu.err"
}
params BYPASS_MPI_SIZES="$msizes" BYPASS_MPI_SCALE="$scale" BYPASS_ROUNDS="$rounds" BYPASS_MPI_VARIANTS="$mpi_variants"
mpi_job --vms 2 --shm --image tiny-mpi-shm ${ACCEL:+--accel "$ACCEL"} >>"$work/mpi.lines" ||
	{ echo "the MPI job over 2 VMs failed" >&2; grep -E 'FAILED|!' "$work/mpi.lines" >&2; tail -20 "$work/osu.err" >&2; exit 1; }
params BYPASS_MPI_SIZES="$msizes" BYPASS_MPI_SCALE="$scale" BYPASS_ROUNDS="$rounds" BYPASS_MPI_VARIANTS=1vm BYPASS_MPI_HOSTS=vm0:2
mpi_job --vms 1 --vcpus 2 --image tiny-mpi-shm ${ACCEL:+--accel "$ACCEL"} >>"$work/mpi.lines" ||
	{ echo "the MPI job in 1 VM failed" >&2; grep -E 'FAILED|!' "$work/mpi.lines" >&2; tail -20 "$work/osu.err" >&2; exit 1; }
mlabels="host $(for v in $mpi_variants; do echo "${v%%=*}"; done | tr '\n' ' ')1vm"
awk -v dir="$work" '$3 ~ /^[0-9]+$/ && NF == 5 { r = ++count[$1, $2, $3]; print $3, $4, $5 > (dir "/fig." $1 "-" $2 "." r) }' "$work/mpi.lines"
for l in $mlabels; do
	for t in latency bw; do
		for r in $(seq "$rounds"); do
			grep -q '^1048576 ' "$work/fig.$l-$t.$r" 2>/dev/null ||
				{ echo "no MPI figures for $l $t in round $r" >&2; cat "$work/mpi.lines" >&2; exit 1; }
		done
		median_of 2 "$work/fig.$l-$t".* >"$work/mpi-$l-$t.mean"
		median_of 3 "$work/fig.$l-$t".* >"$work/mpi-$l-$t.median"
	done
done
echo "MPI level (bench/mpi-osu: osu_latency / osu_bw, OSU's counts / $scale, at least 5 timed iterations): median over iterations (in brackets OSU's mean), each the median of $rounds round(s); load after $(load), $(date -u '+%H:%M') UTC"
printf '%8s |' size; for l in $mlabels; do printf ' %20s' "$l us"; done; printf ' |'; for l in $mlabels; do printf ' %20s' "$l MB/s"; done; echo
for s in ${msizes//,/ }; do
	printf '%8d |' "$s"
	for l in $mlabels; do
		printf ' %9.2f (%8.2f)' "$(awk -v s="$s" '$1==s {print $2}' "$work/mpi-$l-latency.median")" "$(awk -v s="$s" '$1==s {print $2}' "$work/mpi-$l-latency.mean")"
	done
	printf ' |'
	for l in $mlabels; do
		printf ' %9.1f (%8.1f)' "$(awk -v s="$s" '$1==s {print $2}' "$work/mpi-$l-bw.median")" "$(awk -v s="$s" '$1==s {print $2}' "$work/mpi-$l-bw.mean")"
	done
	echo
done
# Column 3 of mpi-osu's lines is the median over iterations, column 2 OSU's mean.
verdict "MPI 8 B latency lower than TCP (median over iterations)" 8 3 10 tcp-latency shm-latency
verdict "MPI 8 B latency lower than TCP (OSU's mean)" 8 2 10 tcp-latency shm-latency
verdict "MPI 1 MiB bandwidth higher than TCP (median over windows)" 1048576 3 5 shm-bw tcp-bw
verdict "MPI 1 MiB bandwidth higher than TCP (OSU's mean)" 1048576 2 5 shm-bw tcp-bw
for v in ${MPI_VARIANTS:-}; do
	l=${v%%=*}
	verdict "MPI 8 B latency lower than TCP with $l (median)" 8 3 10 tcp-latency "$l-latency"
	verdict "MPI 1 MiB bandwidth higher than TCP with $l (median)" 1048576 3 5 "$l-bw" tcp-bw
done
