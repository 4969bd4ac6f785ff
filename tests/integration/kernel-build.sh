#!/usr/bin/env bash
# The guest kernel of our own (docs/kernel.md): `vmhpc kernel build` refuses a source package
# it was not written for and a fragment that loses a required option (naming it), a killed
# build leaves no kernel and no helper behind, two builds at once take turns; then the real
# kernel (built here once per machine, or taken from the cache) has its PVH note and every
# required option, and guest-exec.sh's whole boot runs on it.
# Needs: linux-source-6.1 and the kernel build dependencies (scripts/install-deps.sh); the
# first run on a machine compiles the kernel (~5 min of 2 idle cores).
. "$(dirname "$0")/lib.sh"
set -e

dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q "install ok installed" ||
	fail "linux-source-6.1 is not installed; run scripts/install-deps.sh"
FRAGMENT="$VMHPC_SOURCE_ROOT/kernel/vmhpc.config"
PRIVATE="$WORK/cache" # a cache of this test's own for the builds that must not finish
mkdir -p "$PRIVATE"

expect_fail "another source package" "written for linux-source-6.1" \
	env VMHPC_CACHE="$PRIVATE" "$VMHPC" kernel build --source linux-source-5.10
expect_fail "a missing fragment" "$WORK/nope.config" \
	env VMHPC_CACHE="$PRIVATE" "$VMHPC" kernel build --config "$WORK/nope.config"

# Killed half-way (while unpacking or configuring): no kernel, and make and tar die with it.
sed 's/^CONFIG_NR_CPUS=64$/CONFIG_NR_CPUS=32/' "$FRAGMENT" >"$WORK/other.config"
VMHPC_CACHE="$PRIVATE" "$VMHPC" kernel build --config "$WORK/other.config" >"$WORK/killed.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
	ls -d "$PRIVATE"/kernel/tmp-*/src/Makefile >/dev/null 2>&1 && break
	sleep 0.1
done
ls -d "$PRIVATE"/kernel/tmp-* >/dev/null 2>&1 || fail "the build made no work directory: $(cat "$WORK/killed.log")"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
sleep 1
left=$(pgrep -af "$PRIVATE" || true)
[ -z "$left" ] || fail "helpers of the killed build still run: $left"
[ -z "$(find "$PRIVATE/kernel" -mindepth 1 -maxdepth 1 -name 'linux-source-*' ! -name '*.log')" ] ||
	fail "a killed build left a kernel: $(ls "$PRIVATE/kernel")"
ok "a build killed half-way leaves no kernel in the cache and no helper running"

# A fragment that drops what a required option depends on: kconfig silently drops the option
# too, and the build names it.
sed 's/^CONFIG_MEMORY_HOTREMOVE=y$/# CONFIG_MEMORY_HOTREMOVE is not set/' "$FRAGMENT" >"$WORK/bad.config"
grep -q '^# CONFIG_MEMORY_HOTREMOVE is not set' "$WORK/bad.config" || fail "the fragment has no CONFIG_MEMORY_HOTREMOVE=y to drop"
# Two at once: one configures, the other waits on the lock, then tries itself.
VMHPC_CACHE="$PRIVATE" "$VMHPC" kernel build --config "$WORK/bad.config" >"$WORK/a.log" 2>&1 &
a=$!
sleep 0.5
set +e
VMHPC_CACHE="$PRIVATE" "$VMHPC" kernel build --config "$WORK/bad.config" >"$WORK/b.log" 2>&1
rc_b=$?
wait "$a"
rc_a=$?
set -e
[ $rc_a -ne 0 ] && [ $rc_b -ne 0 ] || fail "a fragment without MEMORY_HOTREMOVE was accepted: $(cat "$WORK/a.log" "$WORK/b.log")"
grep -q "lacks CONFIG_ZONE_DEVICE" "$WORK/a.log" || fail "the refusal does not name CONFIG_ZONE_DEVICE: $(cat "$WORK/a.log")"
grep -q "lacks CONFIG_ZONE_DEVICE" "$WORK/b.log" || fail "the second build: $(cat "$WORK/b.log")"
grep -q "waiting for it" "$WORK/b.log" || fail "the second build did not wait for the first: $(cat "$WORK/b.log")"
ok "a fragment that loses CONFIG_ZONE_DEVICE is refused naming it: $(grep -o 'lacks CONFIG_[A-Z_]*' "$WORK/a.log")"
ok "two builds at once: the second waited on the lock"
[ -z "$(find "$PRIVATE/kernel" -mindepth 1 -maxdepth 1 -name 'tmp-*')" ] ||
	fail "the killed build's work directory is still there: $(ls "$PRIVATE/kernel")"
[ -z "$(find "$PRIVATE/kernel" -mindepth 1 -maxdepth 1 -name 'linux-source-*' ! -name '*.log')" ] ||
	fail "a refused build left a kernel: $(ls "$PRIVATE/kernel")"
ok "the next build removed the killed build's work directory; nothing half-built is cached"

# ---- the real kernel: in the machine's cache, built once ----
t0=$SECONDS
dir=$(nice "$VMHPC" kernel build) || fail "vmhpc kernel build failed"
echo "# kernel in $dir ($((SECONDS - t0)) s)"
for f in vmlinux bzImage config release modules/modules.dep; do
	[ -e "$dir/$f" ] || fail "$dir lacks $f"
done
# XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry QEMU's -kernel uses for an ELF vmlinux.
readelf -n "$dir/vmlinux" | grep -A1 '^ *Xen' | grep -q '0x00000012' ||
	readelf -n "$dir/vmlinux" | grep -q 'PHYS32_ENTRY\|Unknown note type: (0x00000012)' ||
	fail "vmlinux has no PVH entry note: $(readelf -n "$dir/vmlinux" | head -20)"
for o in CONFIG_PVH CONFIG_VIRTIO_PMEM CONFIG_FS_DAX CONFIG_MEMCG CONFIG_VIRTIO_FS CONFIG_CPU_MITIGATIONS; do
	grep -qx "$o=y" "$dir/config" || fail "$dir/config lacks $o=y"
done
grep -qx '# CONFIG_MODULES is not set' "$dir/config" || fail "the kernel has module support"
t0=$SECONDS
again=$("$VMHPC" kernel build)
[ "$again" = "$dir" ] && [ $((SECONDS - t0)) -lt 30 ] || fail "a second build did not come from the cache"
ok "kernel $(cat "$dir/release"): PVH note, required options, no modules; cached (second call $((SECONDS - t0)) s)"

# guest-exec.sh's both boots and their checks (DAX root, overlay, virtiofs, control port,
# hydra, SHUTDOWN; then the virtio-blk root) on this kernel.
GUEST_KERNEL_SOURCE=linux-source-6.1 "$(dirname "$0")/guest-exec.sh" ||
	fail "guest-exec on our kernel failed"
ok "guest-exec's boots and checks pass on our kernel (PVH vmlinux)"
finish
