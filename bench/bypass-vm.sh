#!/bin/sh
# Runs in each of the 2 VMs of bench/bypass.sh (as the job's program, rank 0 in vm0 and rank
# 1 in vm1): the same sizes over the shared-memory channel, then over virtio-net TCP, in the
# same VMs. Rank 0 prints the figures; rank 1 serves.
dir=$(dirname "$0")
sizes=${BYPASS_SIZES:-8,64,512,4096,32768,262144,1048576}
iters=${BYPASS_ITERS:-200}
echo "== shm"
export SHM_SPIN_US="${BYPASS_SPIN_US:-}"
[ -n "$SHM_SPIN_US" ] || unset SHM_SPIN_US
"$dir/shm-pingpong" --sizes "$sizes" --iters "$iters" || exit 1
echo "== tcp"
# rank 1 listens in vm1 (10.77.0.2), rank 0 connects to it.
"$dir/shm-pingpong" --tcp 10.77.0.2:7777 --sizes "$sizes" --iters "$iters" || exit 1
