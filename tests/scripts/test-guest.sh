#!/usr/bin/env bash
# The small guest the real-QEMU unit tests (tests/unit/test-qmp.c) boot: busybox on Debian's
# cloud kernel, built with $VMHPC into DIR/store; its kernel and initramfs are written to
# DIR/kernel and DIR/initramfs. scripts/test-all.sh runs it once for both builds; test-qmp
# runs it itself when VMHPC_TEST_KERNEL is not set (`meson test` on its own).
#   usage: VMHPC=path/to/vmhpc tests/scripts/test-guest.sh DIR
set -euo pipefail
dir=${1:?usage: test-guest.sh DIR}
: "${VMHPC:?set VMHPC to the vmhpc binary}"
export VMHPC_STORE="$dir/store"
printf '[image]\nname = test-guest\n[kernel]\npackage = linux-image-cloud-amd64\nmodules = virtio_pci virtio_pmem nd_pmem\n[root]\npackages = busybox-static\nbinaries = /usr/bin/busybox\n' >"$dir/guest.ini"
if ! "$VMHPC" image build --level 1 "$dir/guest.ini" >"$dir/build.txt" 2>&1; then
	echo "test-guest: building the test guest failed:" >&2
	tail -n 20 "$dir/build.txt" >&2
	exit 1
fi
"$VMHPC" image cat test-guest kernel -o "$dir/kernel"
"$VMHPC" image cat test-guest initramfs -o "$dir/initramfs"
