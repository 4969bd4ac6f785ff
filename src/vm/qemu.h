/* One QEMU process per VM: the command line built from a config (a pure function, so it
 * can be tested without QEMU), the process started in its own process group and tied to
 * our life (PR_SET_PDEATHSIG), waited for, killed and reaped. docs/vm.md explains every
 * option on the command line. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/proc.h"
#include "vm/accel.h"

/* The machine type that boots fastest here with a DAX root: see docs/vm.md. */
#define QEMU_MACHINE_DEFAULT "q35"
/* TCG translation buffer when the config says 0. QEMU's default (1 GiB) costs ~444 MiB of
 * host RSS per busy guest; 64 MiB costs a tiny guest no boot time (bench/machine-types.sh). */
#define QEMU_TCG_TB_MB_DEFAULT 64
/* The virtiofs tag when the config gives none. */
#define QEMU_VIRTIOFS_TAG_DEFAULT "job"
/* The name of the control port in the guest (/dev/virtio-ports/NAME). */
#define QEMU_CONTROL_PORT_NAME "org.vmhpc.control"
/* The fd number QEMU gets its end of the QMP socketpair on (config.qmp_socket NULL). */
#define QEMU_QMP_CHILD_FD 3

enum qemu_root {
	QEMU_ROOT_PMEM, /* virtio-pmem: the guest maps the file (mount -o ro,dax); pages shared */
	QEMU_ROOT_BLK,	/* virtio-blk read-only: the fallback where DAX is unavailable (microvm) */
	_QEMU_ROOT_MAX,
};

enum qemu_net {
	QEMU_NET_NONE,
	QEMU_NET_TAP, /* an existing tap, opened by name (in config.namespaces' network) */
	_QEMU_NET_MAX,
};

struct qemu_vm_config {
	const char *name;     /* VM name, for -name and messages; required */
	const char *qemu;     /* binary; NULL: $VMHPC_QEMU, else "qemu-system-x86_64" */
	enum accel accel;     /* ACCEL_TCG or ACCEL_KVM */
	const char *cpu;      /* -cpu; NULL: "host" on KVM, QEMU's default on TCG */
	const char *machine;  /* "q35", "pc", "microvm" (tuned options added), or a full -machine
			       * value containing ','; NULL: QEMU_MACHINE_DEFAULT */
	const char *firmware; /* -bios (e.g. /usr/share/qemu/qboot.rom); NULL: machine default */
	unsigned vcpus;	      /* 0: 1 */
	unsigned mem_mb;      /* guest RAM; required */
	unsigned tcg_tb_mb;   /* TCG translation buffer; 0: QEMU_TCG_TB_MB_DEFAULT */

	const char *kernel;  /* required */
	const char *initrd;  /* NULL: none */
	const char *cmdline; /* kernel command line; NULL: empty */

	const char *root_image;	  /* read-only root file system image, or NULL */
	uint64_t root_size_bytes; /* its size (a multiple of 4 KiB); 0: stat'ed at start */
	enum qemu_root root_kind;

	const char *virtiofs_socket; /* virtiofsd's socket; then guest RAM is a shared memfd */
	const char *virtiofs_tag;    /* NULL: QEMU_VIRTIOFS_TAG_DEFAULT */

	/* The job's shared-memory region (docs/bypass.md): a file mapped as ivshmem-plain
	 * (PCI 1af4:1110, BAR 2), shared with the job's other VMs on this node; NULL: none. */
	const char *shm_path;
	uint64_t shm_size_bytes; /* a power of two, as a PCI BAR's size must be */

	enum qemu_net net;
	const char *net_tap; /* QEMU_NET_TAP: interface name */
	const char *mac;     /* guest MAC; NULL: QEMU picks one (not unique across QEMUs!) */
	/* The MTU virtio-net offers the guest (VIRTIO_NET_F_MTU: its driver takes it, no guest
	 * configuration needed); 0: the default 1500. */
	unsigned net_mtu;
	/* Namespaces QEMU joins between fork and exec (the job's private network, and the
	 * user namespace owning it); NULL: ours. Not on the command line. */
	const struct proc_namespaces *namespaces;

	const char *control_socket; /* virtio-serial control port's unix socket (QEMU listens) */
	const char *qmp_socket;	    /* QMP on a unix socket QEMU listens on; NULL: a socketpair,
				     * see qemu_vm_take_qmp_fd() */
	const char *console_log;    /* serial console (ttyS0) written to this file, or NULL */
	bool console_pipe;	    /* serial console also readable from qemu_vm_console_fd() */
	const char *stderr_log;	    /* QEMU's own messages appended here; NULL: into the console
				     * pipe when there is one, else /dev/null */
	/* Called with QEMU's pid after fork and before exec (the child waits for it): a
	 * caller records the pid for cleanup before QEMU runs, so that no moment exists in
	 * which a QEMU that outlives a killed caller is not recorded. A negative return stops
	 * the start (the child exits without running QEMU). May be NULL. */
	int (*record_pid)(pid_t pid, void *userdata);
	void *record_userdata;
	bool outlive_caller; /* false: killed when the calling thread exits (PR_SET_PDEATHSIG);
			      * true: its own session, outlives us (a supervisor adopts it) */
};

struct qemu_vm;

/* The QEMU binary: $VMHPC_QEMU when set, else "qemu-system-x86_64". Borrowed. */
const char *qemu_binary(void);

/* Builds QEMU's argv for config (pure: touches no file). On success *ret_argv is a
 * NULL-terminated array the caller frees with qemu_argv_free(); on a config that cannot
 * work, -EINVAL (or -EOPNOTSUPP) with *ret_error (may be NULL; caller frees) naming the
 * field and the fix. */
int qemu_build_argv(const struct qemu_vm_config *config, char ***ret_argv, char **ret_error);

/* Frees an argv from qemu_build_argv; NULL is a no-op. */
void qemu_argv_free(char **argv);

/* Starts QEMU for config: its own process group, stdin /dev/null, killed by the kernel
 * when the thread that called this exits (keep VMs owned by a long-lived thread) unless
 * config.outlive_caller (then in its own session, for qemu_vm_adopt elsewhere). Returns
 * -ENOENT when the binary is missing, -EINVAL for a bad config (reason logged at debug),
 * setns()'s -errno when config.namespaces cannot be joined.
 * The caller frees *ret_vm with qemu_vm_free(). */
int qemu_vm_start(const struct qemu_vm_config *config, struct qemu_vm **ret_vm);

/* Takes charge of a QEMU another process started with outlive_caller: pid must still have
 * start_time (field 22 of /proc/PID/stat), else -ESRCH. It is reaped only when we are its
 * parent or subreaper (PR_SET_CHILD_SUBREAPER); otherwise its exit is seen through a pidfd
 * and its status reads as 255. The sockets are removed by qemu_vm_free. Caller frees. */
int qemu_vm_adopt(const char *name, pid_t pid, unsigned long long start_time,
		  const char *control_socket, const char *qmp_socket, struct qemu_vm **ret_vm);

/* Frees vm but leaves QEMU running and its sockets in place (the job was handed over);
 * NULL is a no-op. */
void qemu_vm_release(struct qemu_vm *vm);

/* QEMU's pid (also its process group id). */
pid_t qemu_vm_pid(const struct qemu_vm *vm);

/* A pidfd of QEMU that polls readable once it exited, or -1 (kernel without pidfd_open).
 * Owned by vm. */
int qemu_vm_pidfd(const struct qemu_vm *vm);

/* Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat), 0 if gone:
 * with the pid it names one process, even after the pid is reused. */
unsigned long long qemu_process_start_time(pid_t pid);

/* Read end of the console pipe (config.console_pipe), or -1. Owned by vm; keep reading
 * it while the guest runs, or the guest's console writes stall. */
int qemu_vm_console_fd(const struct qemu_vm *vm);

/* Hands over our end of the QMP socketpair (for qmp_client_new), or -1 when config used
 * qmp_socket or it was taken already. The caller owns it. */
int qemu_vm_take_qmp_fd(struct qemu_vm *vm);

/* Waits up to timeout_ms (<0: forever; 0: just check) for QEMU to exit and reaps it;
 * *ret_status (may be NULL) is its exit code, or 128+signal. -ETIMEDOUT if it still
 * runs. Once reaped, returns the same status again. */
int qemu_vm_wait(struct qemu_vm *vm, int timeout_ms, int *ret_status);

/* SIGKILLs QEMU's process group (unless already reaped) and reaps it. */
int qemu_vm_kill(struct qemu_vm *vm);

/* Kills and reaps QEMU if it still runs, closes its fds, removes the QMP and control
 * sockets QEMU made, frees vm; NULL is a no-op. Returns NULL. */
struct qemu_vm *qemu_vm_free(struct qemu_vm *vm);
static inline void qemu_vm_freep(struct qemu_vm **vm)
{
	qemu_vm_free(*vm);
}
#define _cleanup_qemu_vm_ __attribute__((cleanup(qemu_vm_freep)))

/* Host memory of process pid in KiB, from /proc/PID/smaps_rollup: resident (Rss) and
 * proportional (Pss: pages shared with other processes, such as a DAX root's page
 * cache, counted in fractions). */
int qemu_vm_host_memory(pid_t pid, uint64_t *ret_rss_kb, uint64_t *ret_pss_kb);
