#!/bin/sh
# Runs in each of the 2 VMs of bench/bypass.sh (as the job's program, rank 0 in vm0 and rank
# 1 in vm1): the same sizes over the shared-memory channel, then over virtio-net TCP, in the
# same VMs, BYPASS_ROUNDS times (the parts interleaved, so that a spell of load on the host
# falls on all of them alike). Rank 0 prints the figures, each line led by its part's label;
# rank 1 serves and prints nothing. Both ranks go through the same steps in the same order.
#
# BYPASS_VARIANTS: the channel's settings to compare side by side, words LABEL or
# LABEL=VAR=VALUE[,VAR=VALUE...], e.g. "shm shm-chunk64k=SHM_CHUNK_BYTES=65536" (the
# first is the run of record; default "shm": the library's defaults).
#
# Why labels and no "== part" headers: the job's output interleaves the lines of both VMs
# as they arrive, so rank 1's header of the next part could land before rank 0's last
# figures of this one, which then counted for the wrong part (a run found "no figures").
dir=$(dirname "$0")
# vmhpc run passes no environment into the VMs: bench/bypass.sh writes its settings here.
# shellcheck disable=SC1091
[ -f "$dir/bypass.env" ] && . "$dir/bypass.env"
sizes=${BYPASS_SIZES:-8,64,512,4096,32768,262144,1048576}
iters=${BYPASS_ITERS:-200}
rounds=${BYPASS_ROUNDS:-1}
variants=${BYPASS_VARIANTS:-shm}
port=7777
round=1
while [ "$round" -le "$rounds" ]; do
	for v in $variants; do
		# A barrier over TCP first: both ranks' previous processes on the channel have
		# closed. A process that attaches while the peer's previous one is still attached
		# cannot tell it from its own peer (docs/bypass.md, "Limits").
		"$dir/shm-pingpong" --tcp 10.77.0.2:$port --sizes 1 --iters 1 >/dev/null || exit 1
		port=$((port + 1))
		label=${v%%=*}
		settings=
		[ "$label" = "$v" ] || settings=$(echo "${v#*=}" | tr ',' ' ')
		(
			# shellcheck disable=SC2086,SC2163 # settings are words VAR=VALUE
			[ -z "$settings" ] || export $settings
			exec "$dir/shm-pingpong" --label "$label" --sizes "$sizes" --iters "$iters"
		) || exit 1
	done
	# rank 1 listens in vm1 (10.77.0.2), rank 0 connects to it; a port per round.
	"$dir/shm-pingpong" --label tcp --tcp 10.77.0.2:$port --sizes "$sizes" --iters "$iters" || exit 1
	port=$((port + 1))
	round=$((round + 1))
done
