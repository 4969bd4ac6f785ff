#!/bin/sh
# Runs in VM 0 of bench/bypass.sh's MPI job (`vmhpc run --vms 2 --shm -n 1`, the only rank of
# the job's own mpiexec): starts mpi-osu (latency, then bw) over the two VMs with an mpiexec of
# its own, once per variant and round, so that every variant runs in the same two VMs, one
# after the other, and the rounds interleave them (a spell of load on the host falls on all
# alike). Every output line is led by "VARIANT TEST ".
#
# BYPASS_MPI_VARIANTS: words LABEL or LABEL=VAR=VALUE[;VAR=VALUE...] (settings given to both
# ranks with -genv), e.g. "shm tcp=UCX_TLS=tcp,sysv,posix,self;UCX_RNDV_THRESH=auto".
# BYPASS_MPI_HOSTS: mpiexec's -hosts (default vm0:1,vm1:1; vm0:2 for 2 ranks in one VM).
# BYPASS_MPI_SIZES, BYPASS_MPI_SCALE, BYPASS_ROUNDS as in bench/bypass.sh.
dir=$(cd "$(dirname "$0")" && pwd)
# vmhpc run passes no environment into the VMs: bench/bypass.sh writes its settings here.
# shellcheck disable=SC1091
[ -f "$dir/bypass.env" ] && . "$dir/bypass.env"
sizes=${BYPASS_MPI_SIZES:-8,64,512,4096,32768,262144,1048576}
scale=${BYPASS_MPI_SCALE:-20}
rounds=${BYPASS_ROUNDS:-1}
variants=${BYPASS_MPI_VARIANTS:-shm}
# This script is itself a rank of the job's mpiexec: its PMI and hydra variables
# (HYDI_CONTROL_FD above all) would make the inner mpiexec's proxies talk to the outer one.
for v in $(env | cut -d= -f1 | grep -E '^(PMI_|HYD|MPI_LOCAL)'); do
	unset "$v"
done
# The launcher line vmhpc itself gives mpiexec (docs/mpi.md).
mpiexec="/usr/bin/mpiexec.hydra -launcher ssh -launcher-exec /usr/bin/vmhpc-exec -iface eth0 -hosts ${BYPASS_MPI_HOSTS:-vm0:1,vm1:1} -n 2"
round=1
status=0
while [ "$round" -le "$rounds" ]; do
	for v in $variants; do
		label=${v%%=*}
		genv=
		if [ "$label" != "$v" ]; then
			old_ifs=$IFS
			IFS=';'
			for s in ${v#*=}; do
				genv="$genv -genv ${s%%=*} ${s#*=}"
			done
			IFS=$old_ifs
		fi
		for t in latency bw; do
			# shellcheck disable=SC2086 # mpiexec and genv are word lists
			$mpiexec $genv "$dir/mpi-osu" "$t" --sizes "$sizes" --scale "$scale" >"/tmp/osu.$$" 2>&1 || {
				echo "$label $t FAILED"
				sed "s/^/$label $t ! /" "/tmp/osu.$$" | tail -20
				status=1
			}
			grep -E '^[0-9]+ ' "/tmp/osu.$$" | sed "s/^/$label $t /"
		done
	done
	round=$((round + 1))
done
rm -f "/tmp/osu.$$"
exit $status
