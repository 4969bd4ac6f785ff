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
};

/* Looks for the device under sysfs_pci (NULL: /sys/bus/pci/devices) and fills d when the
 * host asked for a channel (have_node). Returns 0 when found (or not asked for); -ENODEV with
 * one line in *ret_message (static text, not freed) when asked for and not there; -EPROTO
 * when the region is not this job's. */
int shmdev_setup(struct shmdev *d, const char *sysfs_pci, bool have_node, unsigned node,
		 const uint8_t *token, size_t token_bytes, const char **ret_message);

/* In a command's child, still root: makes the BAR the user's (0600). */
void shmdev_give(const struct shmdev *d, uid_t uid, gid_t gid);

/* After reaping a command: marks the VM's slot dead if the process holding it is gone. */
void shmdev_reap(const struct shmdev *d);
