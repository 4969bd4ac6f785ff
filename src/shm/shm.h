/* The inter-VM shared-memory channel (docs/bypass.md): one region per job and node,
 * formatted by the host, mapped by every co-located VM of the job (ivshmem-plain BAR 2,
 * /sys/bus/pci/devices/<dev>/resource2) or by host processes (a /dev/shm file). Per
 * ordered pair of nodes one single-producer/single-consumer byte ring carries framed
 * messages. libc only: the guest's programs link it statically.
 *
 * All functions that can fail return 0 or -errno; those that check user input also
 * return a message in *ret_error (caller frees) naming the region and the fix. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHM_MAGIC		UINT64_C(0x314d4853434d4856) /* "VHMCSHM1", little-endian */
#define SHM_VERSION		2u			     /* 2: the heap after the rings */
#define SHM_MAX_NODES		64u
#define SHM_HEADER_BYTES	8192u
#define SHM_MIN_RING_BYTES	4096u
#define SHM_DEAD_MS_DEFAULT	5000u
#define SHM_SPIN_US_DEFAULT	2000u
#define SHM_CHUNK_BYTES_DEFAULT SIZE_MAX /* one piece: chunks no better between TCG VMs here */
#define SHM_HEAP_BLOCK_BYTES	16384u
#define SHM_MAX_MESSAGE		(UINT64_C(1) << 40)
/* The environment a guest program is given by vmhpc-init (docs/bypass.md). */
#define SHM_ENV_PATH "VMHPC_SHM"
#define SHM_ENV_KEY  "VMHPC_SHM_KEY"
#define SHM_ENV_NODE "VMHPC_SHM_NODE"
/* In a VM, its own key as vmhpc-init found it (16 hex digits): what a program should check
 * the region against before $VMHPC_SHM_KEY, which hydra overwrites with the launching VM's. */
#define SHM_KEY_FILE "/run/vmhpc/shm.key"

/* The 64-bit key of a job's region: FNV-1a over a fixed prefix and the job's token. Not a
 * secret and not a security measure (only the job's VMs map the region, and they hold the
 * token): it makes a stale region of an earlier job, or another job's, be refused. */
uint64_t shm_token_hash(const void *token, size_t token_bytes);
/* The key of group's region: in a job across nodes the VMs of each node share a region of
 * their own, and its key must differ from the other nodes' (UCX's transport reaches a peer
 * when their keys are equal). Group 0 is shm_token_hash() itself: a job of one node. */
uint64_t shm_group_key(const void *token, size_t token_bytes, unsigned group);

/* The size of region (a power of two, as a PCI BAR must be) that gives n_nodes nodes rings of
 * at least ring_bytes each; 0 when n_nodes is 0 or above SHM_MAX_NODES. */
size_t shm_region_size_for(unsigned n_nodes, size_t ring_bytes);

/* Host side: writes a fresh layout into base[0, size_bytes) (zeroes the control parts, sets
 * the ready flag last). size_bytes must be a power of two large enough for n_nodes. */
int shm_region_format(void *base, size_t size_bytes, unsigned n_nodes, uint64_t key,
		      char **ret_error);

/* Host side: creates the file at path (O_EXCL, mode 0600), sizes and formats it. */
int shm_region_create(const char *path, size_t size_bytes, unsigned n_nodes, uint64_t key,
		      char **ret_error);

/* Marks node's slot dead (its process or VM is gone): a peer waiting on it gets an error at
 * once instead of waiting for the heartbeat timeout. Used by vmhpc-init when it reaps a
 * command and by the host when a VM dies. base must be a formatted region. */
int shm_region_mark_dead(void *base, size_t size_bytes, unsigned node);

/* 0 when base holds a formatted region of key's job, else -EPROTO or -ESTALE (message). */
int shm_region_check(const void *base, size_t size_bytes, uint64_t key, char **ret_error);

/* Marks node's slot dead when the process that attached it (a pid of this OS) is gone;
 * 1 when it did, 0 when there was nothing to do. For vmhpc-init after it reaps a command. */
int shm_region_reap(void *base, size_t size_bytes, unsigned node);

/* The heap a region of size_bytes formatted for n_nodes gets: the bytes after the rings
 * (0 for a size that cannot be formatted). */
size_t shm_region_heap_bytes_for(size_t size_bytes, unsigned n_nodes);

/* The region's heap: its offset from the region's start and its length. */
int shm_region_heap(const void *base, size_t size_bytes, uint64_t *ret_offset, uint64_t *ret_bytes);

/* Takes bytes (whole blocks of SHM_HEAP_BLOCK_BYTES, page-aligned) out of the region's heap
 * for this process of node (processes of all VMs allocate at once, without a lock):
 * *ret_offset from the region's start. When the heap is used up, the blocks of node's
 * processes that are gone are taken back first; then -ENOSPC. */
int shm_region_alloc(void *base, size_t size_bytes, unsigned node, size_t bytes,
		     uint64_t *ret_offset);

/* Gives back what shm_region_alloc gave this process of node at offset. */
void shm_region_free(void *base, size_t size_bytes, unsigned node, uint64_t offset, size_t bytes);

/* Reads the header: the number of nodes and the ring size. */
int shm_region_info(const void *base, size_t size_bytes, unsigned *ret_nodes,
		    size_t *ret_ring_bytes);

struct shm_channel;

struct shm_options {
	unsigned node; /* this process's node (VM index) */
	uint64_t key;  /* shm_token_hash() of the job's token */
	unsigned
	    dead_ms; /* a peer silent this long in the middle of a message is dead; 0: default */
	unsigned spin_us; /* a wait spins this long, yields 180 us more, then sleeps; 0: default */
	size_t chunk_bytes; /* a send publishes its bytes at most this many at a time, so that
			     * the receiver copies out while the sender copies in; 0: default,
			     * as much as there is room for (docs/bypass.md, bench/RESULTS.md) */
	bool libc_copy;	    /* copy with the C library's memcpy, not the channel's own word
			     * copy (for the bench: docs/bypass.md) */
};

/* Maps the region at path (a /dev/shm file or a PCI resource2) read-write and attaches as
 * options->node. Refuses a region of the wrong magic, version, size or key (-EPROTO,
 * -ESTALE) and a slot another live process holds (-EBUSY). Free with shm_channel_close(). */
int shm_channel_open(const char *path, const struct shm_options *options,
		     struct shm_channel **ret_channel, char **ret_error);

/* The same over memory the caller mapped (and unmaps after close). */
int shm_channel_attach(void *base, size_t size_bytes, const struct shm_options *options,
		       struct shm_channel **ret_channel, char **ret_error);

/* Detaches (the peers see the slot closed) and unmaps what shm_channel_open mapped.
 * NULL is a no-op. */
void shm_channel_close(struct shm_channel *channel);

unsigned shm_channel_nodes(const struct shm_channel *channel);
unsigned shm_channel_node(const struct shm_channel *channel);

/* Sends one message of len bytes to node peer; waits (polling with backoff) until the peer
 * has attached and there is room, at most timeout_ms (< 0: no limit). A message larger than
 * the ring streams through it. -ETIMEDOUT, -EPIPE (the peer closed or died),
 * -EINVAL (bad peer or length). */
int shm_send(struct shm_channel *channel, unsigned peer, const void *buf, size_t len,
	     int timeout_ms);

/* Receives the next message from node peer into buf (capacity cap); *ret_len is its length.
 * A longer message is consumed whole, its first cap bytes kept, and -EMSGSIZE returned.
 * -ETIMEDOUT before a message starts; -EPIPE when the peer closed or died with no message
 * pending; -ECONNRESET when it died in the middle of one (marked dead, attached again, or
 * silent for dead_ms). After -ECONNRESET the channel must be closed. */
int shm_recv(struct shm_channel *channel, unsigned peer, void *buf, size_t cap, size_t *ret_len,
	     int timeout_ms);
