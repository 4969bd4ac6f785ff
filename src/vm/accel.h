/* Which accelerator QEMU should use on this host, decided by booting a guest rather than
 * by looking for /dev/kvm: on some hosts /dev/kvm exists but QEMU aborts with -cpu host
 * (it cannot set MSR 0x10a) or the guest hangs in early boot. The answer is cached per
 * host kernel, QEMU version and /dev/kvm state. */
#pragma once

#include <stdbool.h>

enum accel {
	ACCEL_TCG,
	ACCEL_KVM,
	_ACCEL_MAX,
};

/* Default deadline for the probe boot to print its ready line. */
#define ACCEL_PROBE_TIMEOUT_MS_DEFAULT 10000

/* What the guest's /init prints on the console once it is up (src/guest/init.c). */
#define ACCEL_READY_LINE "vmhpc-init: ready"

/* "tcg" or "kvm" (NULL for values out of range). */
const char *accel_to_string(enum accel accel);

/* Parses "tcg" or "kvm"; -EINVAL for anything else. */
int accel_from_string(const char *s, enum accel *ret);

/* Boots kernel + initrd once with accel (KVM: `-cpu cpu`, NULL meaning "host"; TCG:
 * QEMU's default CPU) and waits up to timeout_ms for ACCEL_READY_LINE on the serial
 * console. *ret_works tells whether it came; *ret_detail (caller frees) says what
 * happened ("ready after 812 ms", "QEMU exited with status 134: qemu-system-x86_64:
 * error: failed to set MSR 0x10a to 0x69", "no ready line within 10000 ms"). QEMU is
 * killed and reaped on every path. Returns -errno only when the probe could not be run
 * at all (QEMU missing, no memory). */
int accel_probe(enum accel accel, const char *cpu, const char *kernel, const char *initrd,
		int timeout_ms, bool *ret_works, char **ret_detail);

/* Decides kvm or tcg for this host: from the cache file under cache_dir (created if
 * missing) when its key matches (QEMU's version line, the host kernel release, /dev/kvm's
 * presence and access), else by a KVM probe boot of kernel + initrd (-cpu host). When
 * that fails, a TCG boot of the same guest checks that the guest itself is sound: only
 * then is "tcg" cached (atomically), so a broken kernel or initramfs cannot make a KVM
 * host fall back to TCG for good. Without a usable /dev/kvm it answers tcg at once.
 * *ret_detail (may be NULL; caller frees) tells why, and whether it came from the cache.
 * Returns -errno when QEMU could not be run; a cache that cannot be written only means
 * the next call probes again. */
int accel_detect(const char *cache_dir, const char *kernel, const char *initrd,
		 enum accel *ret_accel, char **ret_detail);
