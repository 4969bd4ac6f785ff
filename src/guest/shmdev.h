/* The job's shared-memory channel inside a guest (docs/bypass.md): vmhpc-init finds the
 * ivshmem-plain device (PCI 1af4:1110), gives its BAR 2 (sysfs resource2, mapped by user
 * space without a kernel module) to the user each command runs as, tells every command
 * where it is (VMHPC_SHM, VMHPC_SHM_KEY, VMHPC_SHM_NODE), and marks the VM's slot dead
 * when the process holding it is gone. libc only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SHMDEV_ENV_MAX 3

struct shmdev {
	bool present;
	char resource[512]; /* /sys/bus/pci/devices/<addr>/resource2 */
	uint64_t key;
	unsigned node;
	void *base; /* mapped by init, for marking the slot dead; NULL: not mapped */
	size_t size_bytes;
	char env[SHMDEV_ENV_MAX][540]; /* NAME=value strings for commands */
	bool ucx;		       /* the image's UCX has our transport (SHMDEV_UCX_MODULE) */
};

/* Where images that carry the UCX transport over the channel have it (docs/bypass.md). */
#define SHMDEV_UCX_MODULE "/usr/lib/x86_64-linux-gnu/ucx/libuct_cma.so.0"

/* Looks for the device under sysfs_pci (NULL: /sys/bus/pci/devices) and fills d when the
 * host asked for a channel (have_node). Returns 0 when found (or not asked for); -ENODEV with
 * one line in *ret_message (static text, not freed) when asked for and not there; -EPROTO
 * when the region is not this job's (group's: shm_group_key). */
int shmdev_setup(struct shmdev *d, const char *sysfs_pci, bool have_node, unsigned node,
		 unsigned group, const uint8_t *token, size_t token_bytes,
		 const char **ret_message);

/* 1 when the shared object at path is vmhpc's UCX transport (it defines uct_ivshmem_init),
 * 0 when not (or unreadable). */
int shmdev_is_ucx_transport(const char *path);

/* For a command's environment entry: when the channel and the transport are there and entry
 * is a UCX_TLS=LIST naming transports (not "^..." nor "all" nor already ivshmem), a new
 * "UCX_TLS=ivshmem,LIST" (caller frees) so UCX uses the channel between VMs; else NULL. */
char *shmdev_ucx_tls(const struct shmdev *d, const char *entry);

/* In a command's child, still root: makes the BAR the user's (0600). */
void shmdev_give(const struct shmdev *d, uid_t uid, gid_t gid);

/* After reaping a command: marks the VM's slot dead if the process holding it is gone. */
void shmdev_reap(const struct shmdev *d);
