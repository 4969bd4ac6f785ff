/* The inter-VM shared-memory channel (shm.h, docs/bypass.md).
 *
 * Layout of a region (all integers little-endian, as every x86 guest writes them):
 *   [0, 8 KiB)        header: magic, version, sizes, key, ready flag; one 64-byte slot per
 *                     node (state, generation, heartbeat), each on a cache line of its own
 *   [8 KiB, ctl_end)  one 128-byte control block per ring: head (written by the producer
 *                     only) and tail (written by the consumer only) on separate cache lines
 *   [data, heap)      the rings' data areas, ring_bytes (a power of two) each
 *   [heap, size)      the heap: whatever follows the rings, handed out in blocks by
 *                     shm_region_alloc (an owner table, CAS per block) to the UCX
 *                     transport (src/ucx/), whose FIFOs and buffers live there
 * There is one ring per ordered pair (i, j), i != j: i produces, j consumes.
 *
 * Ordering: a producer copies bytes into the ring, then stores head with release; the
 * consumer loads head with acquire before reading those bytes, and stores tail with release
 * after it is done with them; the producer loads tail with acquire before reusing the
 * space. Indices grow without wrapping (64 bits); the offset is index & (ring_bytes - 1).
 *
 * A message is an 8-byte length and its bytes, streamed through the ring: a message larger
 * than the ring flows through it while the consumer copies out. No thread anywhere: the
 * waiting side polls with a backoff (spin, yield, then sleeps up to 1 ms) so an idle rank
 * gives its VCPU back. */
#include "shm/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_LINE 64

enum slot_state {
	SLOT_FREE = 0,
	SLOT_ATTACHED = 1,
	SLOT_CLOSED = 2,
	SLOT_DEAD = 3,
	SLOT_ATTACHING = 4, /* taken; pid and rings being set up; not yet to be sent to */
};

struct slot {
	alignas(CACHE_LINE) _Atomic uint32_t state;
	uint32_t pid; /* for people reading a dump; never trusted */
	_Atomic uint64_t generation;
	_Atomic uint64_t heartbeat;
};

struct header {
	uint64_t magic;
	uint32_t version;
	uint32_t n_nodes;
	uint64_t size_bytes;
	uint64_t ring_bytes;
	uint64_t key;
	uint64_t ctl_offset;
	uint64_t data_offset;
	_Atomic uint32_t ready; /* set last, with release, by shm_region_format */
	alignas(CACHE_LINE) struct slot slots[SHM_MAX_NODES];
	/* Version 2: the heap after the rings (shm_region_alloc). */
	alignas(CACHE_LINE) uint64_t heap_offset;
	uint64_t heap_bytes;
};

struct ring_ctl {
	alignas(CACHE_LINE) _Atomic uint64_t head;
	alignas(CACHE_LINE) _Atomic uint64_t tail;
};

_Static_assert(sizeof(struct slot) == CACHE_LINE, "one slot per cache line");
_Static_assert(sizeof(struct ring_ctl) == 2 * CACHE_LINE, "head and tail on lines of their own");
_Static_assert(sizeof(struct header) <= SHM_HEADER_BYTES, "header fits its area");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "lock-free 64-bit atomics");

/* The channel's copy: 8-byte words with `rep movsq`, the rest with memcpy. Under TCG, the
 * accelerator of the machines here, QEMU runs `rep movsq` as one tight loop, while the C
 * library's SSE2 memcpy costs an emulated instruction per 16 bytes: measured in a guest,
 * 2.2 against 1.4 GB/s at 1 MiB and 3.4 against 1.7 GB/s at 8 KiB; natively both run at the
 * same speed (12.5 and 12.7 GB/s on the host). Elsewhere than x86-64, memcpy. */
static void *copy_words(void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
	size_t words = len / 8, rest = len % 8;
	void *d = dst;

	__asm__ volatile("rep movsq" : "+D"(d), "+S"(src), "+c"(words) : : "memory");
	if (rest)
		memcpy(d, src, rest);
	return dst;
#else
	return memcpy(dst, src, len);
#endif
}

struct shm_channel {
	uint8_t *base;
	size_t size_bytes;
	bool mapped_here;
	struct header *hdr;
	unsigned node, n_nodes;
	uint64_t ring_bytes;
	unsigned dead_ms;
	unsigned spin_us, yield_us; /* the backoff's phases */
	size_t chunk_bytes;	    /* most bytes a send copies before publishing them */
	void *(*copy)(void *, const void *, size_t);
	uint64_t heartbeat; /* our own, mirrored */
	/* Per peer, the other side's index as last read: a producer reloads the consumer's
	 * tail (and a consumer the producer's head) only when the cached one does not
	 * suffice, so the shared cache lines move once per batch, not once per message. */
	uint64_t peer_tail[SHM_MAX_NODES], peer_head[SHM_MAX_NODES];
	/* Per peer, the generation of a holder that had left (or not come) when we attached:
	 * a slot CLOSED or DEAD at this generation is a process of an earlier set, which we
	 * wait to be replaced, not a peer that went away (peer_gone). */
	uint64_t stale_gen[SHM_MAX_NODES];
};

static int set_error(char **ret_error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_error(char **ret_error, int r, const char *fmt, ...)
{
	va_list ap;

	if (ret_error && !*ret_error) {
		va_start(ap, fmt);
		if (vasprintf(ret_error, fmt, ap) < 0)
			*ret_error = NULL;
		va_end(ap);
	}
	return r;
}

uint64_t shm_token_hash(const void *token, size_t token_bytes)
{
	static const char prefix[] = "vmhpc-shm-v1";
	uint64_t h = UINT64_C(0xcbf29ce484222325);
	const uint8_t *p = token;

	for (size_t i = 0; i < sizeof(prefix) - 1; i++)
		h = (h ^ (uint8_t)prefix[i]) * UINT64_C(0x100000001b3);
	for (size_t i = 0; i < token_bytes; i++)
		h = (h ^ p[i]) * UINT64_C(0x100000001b3);
	return h ? h : 1;
}

uint64_t shm_group_key(const void *token, size_t token_bytes, unsigned group)
{
	uint64_t h = shm_token_hash(token, token_bytes);

	if (group == 0)
		return h;
	for (unsigned i = 0; i < 4; i++)
		h = (h ^ ((group >> (8 * i)) & 0xff)) * UINT64_C(0x100000001b3);
	return h ? h : 1;
}

static size_t n_rings(unsigned n_nodes)
{
	return (size_t)n_nodes * (n_nodes - 1);
}

static size_t ctl_end(unsigned n_nodes)
{
	size_t end = SHM_HEADER_BYTES + n_rings(n_nodes) * sizeof(struct ring_ctl);

	return (end + 4095) & ~(size_t)4095;
}

static bool is_pow2(uint64_t x)
{
	return x && !(x & (x - 1));
}

size_t shm_region_size_for(unsigned n_nodes, size_t ring_bytes)
{
	size_t need, size = 4096;

	if (n_nodes == 0 || n_nodes > SHM_MAX_NODES)
		return 0;
	if (ring_bytes < SHM_MIN_RING_BYTES)
		ring_bytes = SHM_MIN_RING_BYTES;
	need = ctl_end(n_nodes) + (n_nodes > 1 ? n_rings(n_nodes) : 1) * ring_bytes;
	while (size < need)
		size <<= 1;
	return size;
}

/* The largest power-of-two ring that fits n_nodes' rings into size_bytes, or 0. */
static uint64_t ring_bytes_for(size_t size_bytes, unsigned n_nodes)
{
	size_t rings = n_nodes > 1 ? n_rings(n_nodes) : 1, end = ctl_end(n_nodes);
	uint64_t ring = UINT64_C(1) << 62;

	if (size_bytes <= end)
		return 0;
	while (ring >= SHM_MIN_RING_BYTES && ring * rings > size_bytes - end)
		ring >>= 1;
	return ring >= SHM_MIN_RING_BYTES ? ring : 0;
}

int shm_region_format(void *base, size_t size_bytes, unsigned n_nodes, uint64_t key,
		      char **ret_error)
{
	struct header *hdr = base;
	uint64_t ring;

	if (n_nodes < 1 || n_nodes > SHM_MAX_NODES)
		return set_error(ret_error, -EINVAL,
				 "shared-memory region for %u nodes: between 1 and %u are possible",
				 n_nodes, SHM_MAX_NODES);
	if (!is_pow2(size_bytes))
		return set_error(ret_error, -EINVAL,
				 "shared-memory region of %zu bytes: the size must be a power of "
				 "two (a PCI BAR's is)",
				 size_bytes);
	ring = ring_bytes_for(size_bytes, n_nodes);
	if (!ring)
		return set_error(ret_error, -EINVAL,
				 "shared-memory region of %zu bytes is too small for %u nodes: "
				 "give it at least %zu",
				 size_bytes, n_nodes,
				 shm_region_size_for(n_nodes, SHM_MIN_RING_BYTES));
	atomic_store_explicit(&hdr->ready, 0, memory_order_release);
	memset(base, 0, ctl_end(n_nodes));
	hdr->magic = SHM_MAGIC;
	hdr->version = SHM_VERSION;
	hdr->n_nodes = n_nodes;
	hdr->size_bytes = size_bytes;
	hdr->ring_bytes = ring;
	hdr->key = key;
	hdr->ctl_offset = SHM_HEADER_BYTES;
	hdr->data_offset = ctl_end(n_nodes);
	hdr->heap_offset = hdr->data_offset + ring * (n_nodes > 1 ? n_rings(n_nodes) : 1);
	hdr->heap_bytes = size_bytes - hdr->heap_offset;
	/* The heap's owner table (its first bytes; see heap_view) starts all free. */
	memset((uint8_t *)base + hdr->heap_offset, 0,
	       hdr->heap_bytes / (SHM_HEAP_BLOCK_BYTES + 8) * 8);
	atomic_store_explicit(&hdr->ready, 1, memory_order_release);
	return 0;
}

int shm_region_create(const char *path, size_t size_bytes, unsigned n_nodes, uint64_t key,
		      char **ret_error)
{
	void *base;
	int fd, r;

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return set_error(ret_error, -errno, "creating shared-memory region %s: %s", path,
				 strerror(errno));
	if (ftruncate(fd, (off_t)size_bytes) < 0) {
		r = set_error(ret_error, -errno, "sizing shared-memory region %s to %zu bytes: %s",
			      path, size_bytes, strerror(errno));
		goto fail;
	}
	base = mmap(NULL, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		r = set_error(ret_error, -errno, "mapping shared-memory region %s: %s", path,
			      strerror(errno));
		goto fail;
	}
	r = shm_region_format(base, size_bytes, n_nodes, key, ret_error);
	munmap(base, size_bytes);
	if (r < 0)
		goto fail;
	close(fd);
	return 0;
fail:
	close(fd);
	unlink(path);
	return r;
}

/* Checks the header of a mapped region; 0 or -errno with a message. */
static int check_header(const void *base, size_t size_bytes, const char *what, char **ret_error)
{
	const struct header *hdr = base;

	if (size_bytes < SHM_HEADER_BYTES)
		return set_error(ret_error, -EPROTO,
				 "%s: %zu bytes is too small for a vmhpc shared-memory region",
				 what, size_bytes);
	if (!atomic_load_explicit(&hdr->ready, memory_order_acquire))
		return set_error(ret_error, -EPROTO,
				 "%s is not a formatted vmhpc shared-memory region (ready flag "
				 "unset): the host formats it before the VMs start",
				 what);
	if (hdr->magic != SHM_MAGIC)
		return set_error(ret_error, -EPROTO,
				 "%s: no vmhpc shared-memory region here (magic %016llx)", what,
				 (unsigned long long)hdr->magic);
	if (hdr->version != SHM_VERSION)
		return set_error(ret_error, -EPROTO,
				 "%s: region layout version %u, this program knows %u: use the "
				 "vmhpc that made the region",
				 what, hdr->version, SHM_VERSION);
	if (hdr->size_bytes != size_bytes || hdr->n_nodes < 1 || hdr->n_nodes > SHM_MAX_NODES ||
	    !is_pow2(hdr->ring_bytes) || hdr->data_offset != ctl_end(hdr->n_nodes) ||
	    hdr->ctl_offset != SHM_HEADER_BYTES ||
	    hdr->ring_bytes * (hdr->n_nodes > 1 ? n_rings(hdr->n_nodes) : 1) >
		size_bytes - hdr->data_offset ||
	    hdr->heap_offset !=
		hdr->data_offset +
		    hdr->ring_bytes * (hdr->n_nodes > 1 ? n_rings(hdr->n_nodes) : 1) ||
	    hdr->heap_offset + hdr->heap_bytes != size_bytes)
		return set_error(ret_error, -EPROTO,
				 "%s: the region's header (size %llu, %u nodes, rings of %llu "
				 "bytes) does not fit the %zu bytes mapped",
				 what, (unsigned long long)hdr->size_bytes, hdr->n_nodes,
				 (unsigned long long)hdr->ring_bytes, size_bytes);
	return 0;
}

int shm_region_info(const void *base, size_t size_bytes, unsigned *ret_nodes,
		    size_t *ret_ring_bytes)
{
	const struct header *hdr = base;
	int r = check_header(base, size_bytes, "region", NULL);

	if (r < 0)
		return r;
	if (ret_nodes)
		*ret_nodes = hdr->n_nodes;
	if (ret_ring_bytes)
		*ret_ring_bytes = hdr->ring_bytes;
	return 0;
}

size_t shm_region_heap_bytes_for(size_t size_bytes, unsigned n_nodes)
{
	uint64_t ring;

	if (n_nodes < 1 || n_nodes > SHM_MAX_NODES || !is_pow2(size_bytes))
		return 0;
	ring = ring_bytes_for(size_bytes, n_nodes);
	if (!ring)
		return 0;
	return size_bytes - ctl_end(n_nodes) - ring * (n_nodes > 1 ? n_rings(n_nodes) : 1);
}

int shm_region_heap(const void *base, size_t size_bytes, uint64_t *ret_offset, uint64_t *ret_bytes)
{
	const struct header *hdr = base;
	int r = check_header(base, size_bytes, "region", NULL);

	if (r < 0)
		return r;
	*ret_offset = hdr->heap_offset;
	*ret_bytes = hdr->heap_bytes;
	return 0;
}

/* The heap: a table of one owner word per block, then the blocks. An owner is
 * (node + 1) << 32 | pid, 0 for a free block; blocks are claimed one by one with CAS, so
 * processes of all VMs allocate at once without a lock. */
struct heap_view {
	_Atomic uint64_t *owner;
	uint64_t n_blocks, data_offset;
};

static int heap_view(void *base, size_t size_bytes, struct heap_view *v)
{
	struct header *hdr = base;
	uint64_t table;
	int r = check_header(base, size_bytes, "region", NULL);

	if (r < 0)
		return r;
	v->n_blocks = hdr->heap_bytes / (SHM_HEAP_BLOCK_BYTES + 8);
	table =
	    (v->n_blocks * 8 + SHM_HEAP_BLOCK_BYTES - 1) & ~(uint64_t)(SHM_HEAP_BLOCK_BYTES - 1);
	v->owner = (_Atomic uint64_t *)((uint8_t *)base + hdr->heap_offset);
	v->data_offset = hdr->heap_offset + table;
	if (v->data_offset + v->n_blocks * SHM_HEAP_BLOCK_BYTES > size_bytes)
		v->n_blocks = (size_bytes - v->data_offset) / SHM_HEAP_BLOCK_BYTES;
	return 0;
}

static uint64_t heap_owner(unsigned node)
{
	return ((uint64_t)(node + 1) << 32) | (uint32_t)getpid();
}

/* Frees the blocks of node's processes that are gone (a pid of this OS: only the caller's
 * own node can be judged); the number freed. */
static uint64_t heap_reclaim(struct heap_view *v, unsigned node)
{
	uint64_t freed = 0;

	for (uint64_t i = 0; i < v->n_blocks; i++) {
		uint64_t o = atomic_load_explicit(&v->owner[i], memory_order_relaxed);

		if (o >> 32 != (uint64_t)node + 1 || kill((pid_t)(uint32_t)o, 0) == 0 ||
		    errno != ESRCH)
			continue;
		if (atomic_compare_exchange_strong_explicit(
			&v->owner[i], &o, 0, memory_order_acq_rel, memory_order_relaxed))
			freed++;
	}
	return freed;
}

static int heap_claim(struct heap_view *v, uint64_t want, uint64_t owner, uint64_t *ret_first)
{
	for (uint64_t start = 0; start + want <= v->n_blocks; start++) {
		uint64_t i;

		for (i = 0; i < want; i++) {
			uint64_t expected = 0;

			if (!atomic_compare_exchange_strong_explicit(
				&v->owner[start + i], &expected, owner, memory_order_acq_rel,
				memory_order_relaxed))
				break;
		}
		if (i == want) {
			*ret_first = start;
			return 0;
		}
		while (i-- > 0)
			atomic_store_explicit(&v->owner[start + i], 0, memory_order_release);
	}
	return -ENOSPC;
}

int shm_region_alloc(void *base, size_t size_bytes, unsigned node, size_t bytes,
		     uint64_t *ret_offset)
{
	struct heap_view v;
	uint64_t want, first;
	int r = heap_view(base, size_bytes, &v);

	if (r < 0)
		return r;
	if (bytes == 0 || node >= SHM_MAX_NODES)
		return -EINVAL;
	want = (bytes + SHM_HEAP_BLOCK_BYTES - 1) / SHM_HEAP_BLOCK_BYTES;
	r = heap_claim(&v, want, heap_owner(node), &first);
	if (r == -ENOSPC && heap_reclaim(&v, node) > 0)
		r = heap_claim(&v, want, heap_owner(node), &first);
	if (r < 0)
		return r;
	*ret_offset = v.data_offset + first * SHM_HEAP_BLOCK_BYTES;
	return 0;
}

void shm_region_free(void *base, size_t size_bytes, unsigned node, uint64_t offset, size_t bytes)
{
	struct heap_view v;
	uint64_t owner = heap_owner(node);

	if (heap_view(base, size_bytes, &v) < 0 || offset < v.data_offset)
		return;
	for (uint64_t i = (offset - v.data_offset) / SHM_HEAP_BLOCK_BYTES,
		      end = i + (bytes + SHM_HEAP_BLOCK_BYTES - 1) / SHM_HEAP_BLOCK_BYTES;
	     i < end && i < v.n_blocks; i++) {
		uint64_t expected = owner;

		atomic_compare_exchange_strong_explicit(&v.owner[i], &expected, 0,
							memory_order_acq_rel, memory_order_relaxed);
	}
}

int shm_region_check(const void *base, size_t size_bytes, uint64_t key, char **ret_error)
{
	const struct header *hdr = base;
	int r = check_header(base, size_bytes, "shared-memory region", ret_error);

	if (r < 0)
		return r;
	if (hdr->key != key)
		return set_error(ret_error, -ESTALE, "shared-memory region belongs to another job");
	return 0;
}

int shm_region_reap(void *base, size_t size_bytes, unsigned node)
{
	struct header *hdr = base;
	uint32_t expected = SLOT_ATTACHED;
	pid_t pid;

	if (check_header(base, size_bytes, "region", NULL) < 0 || node >= hdr->n_nodes)
		return 0;
	if (atomic_load_explicit(&hdr->slots[node].state, memory_order_acquire) != SLOT_ATTACHED)
		return 0;
	pid = (pid_t)hdr->slots[node].pid;
	if (pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH)
		return 0;
	return atomic_compare_exchange_strong_explicit(&hdr->slots[node].state, &expected,
						       SLOT_DEAD, memory_order_acq_rel,
						       memory_order_acquire)
		   ? 1
		   : 0;
}

int shm_region_mark_dead(void *base, size_t size_bytes, unsigned node)
{
	struct header *hdr = base;
	int r = check_header(base, size_bytes, "region", NULL);

	if (r < 0)
		return r;
	if (node >= hdr->n_nodes)
		return -EINVAL;
	/* Only an attached slot becomes dead: a closed one stays closed (its last holder left
	 * cleanly), a free one had nobody. */
	uint32_t expected = SLOT_ATTACHED;
	atomic_compare_exchange_strong_explicit(&hdr->slots[node].state, &expected, SLOT_DEAD,
						memory_order_acq_rel, memory_order_acquire);
	return 0;
}

static struct ring_ctl *ring_ctl(struct shm_channel *c, unsigned from, unsigned to)
{
	size_t idx = (size_t)from * (c->n_nodes - 1) + (to < from ? to : to - 1);

	return (struct ring_ctl *)(c->base + c->hdr->ctl_offset) + idx;
}

static uint8_t *ring_data(struct shm_channel *c, unsigned from, unsigned to)
{
	size_t idx = (size_t)from * (c->n_nodes - 1) + (to < from ? to : to - 1);

	return c->base + c->hdr->data_offset + idx * c->ring_bytes;
}

int shm_channel_attach(void *base, size_t size_bytes, const struct shm_options *options,
		       struct shm_channel **ret_channel, char **ret_error)
{
	struct shm_channel *c;
	struct header *hdr = base;
	uint32_t state;
	int r;

	r = check_header(base, size_bytes, "shared-memory region", ret_error);
	if (r < 0)
		return r;
	if (hdr->key != options->key)
		return set_error(
		    ret_error, -ESTALE,
		    "shared-memory region belongs to another job (key %016llx, this job's "
		    "%016llx): a stale region was left behind or the wrong device was found",
		    (unsigned long long)hdr->key, (unsigned long long)options->key);
	if (options->node >= hdr->n_nodes)
		return set_error(ret_error, -EINVAL,
				 "shared-memory region has %u nodes, node %u asked for",
				 hdr->n_nodes, options->node);
	struct slot *s = &hdr->slots[options->node];
	state = atomic_load_explicit(&s->state, memory_order_acquire);
	/* ATTACHING, not ATTACHED: a peer waiting to send to us starts at ATTACHED. Taken
	 * straight to ATTACHED (as before), a peer spinning in shm_send wrote its first
	 * message between this CAS and the drop of stale bytes below, which then dropped
	 * it: both sides waited for each other until their timeouts (bench/bypass.sh:
	 * "receive of 1 bytes: Connection timed out"; ~1 first message in 6 on the host,
	 * test_attach_race). */
	do {
		if (state == SLOT_ATTACHED || state == SLOT_ATTACHING)
			return set_error(ret_error, -EBUSY,
					 "shared-memory region: node %u is held by another process "
					 "(pid %u in its VM): one process per node attaches",
					 options->node, s->pid);
	} while (!atomic_compare_exchange_weak_explicit(
	    &s->state, &state, SLOT_ATTACHING, memory_order_acq_rel, memory_order_acquire));
	s->pid = (uint32_t)getpid();
	c = calloc(1, sizeof(*c));
	if (!c) {
		atomic_store_explicit(&s->state, SLOT_CLOSED, memory_order_release);
		return -ENOMEM;
	}
	c->base = base;
	c->size_bytes = size_bytes;
	c->hdr = hdr;
	c->node = options->node;
	c->n_nodes = hdr->n_nodes;
	c->ring_bytes = hdr->ring_bytes;
	c->dead_ms = options->dead_ms ? options->dead_ms : SHM_DEAD_MS_DEFAULT;
	c->spin_us = options->spin_us ? options->spin_us : SHM_SPIN_US_DEFAULT;
	c->yield_us = c->spin_us + 180;
	c->chunk_bytes = options->chunk_bytes ? options->chunk_bytes : SHM_CHUNK_BYTES_DEFAULT;
	c->copy = options->libc_copy ? memcpy : copy_words;
	/* Bytes an earlier holder of a peer's slot left for us are not ours: drop them. No
	 * peer sends to us before it sees us attached with the new generation, and that
	 * store comes after this. */
	for (unsigned p = 0; p < c->n_nodes; p++) {
		if (p == c->node)
			continue;
		struct ring_ctl *rc = ring_ctl(c, p, c->node);
		atomic_store_explicit(&rc->tail,
				      atomic_load_explicit(&rc->head, memory_order_acquire),
				      memory_order_release);
	}
	for (unsigned p = 0; p < c->n_nodes; p++) {
		if (p == c->node)
			continue;
		struct slot *ps = &hdr->slots[p];
		uint32_t pst = atomic_load_explicit(&ps->state, memory_order_acquire);
		uint64_t pgen = atomic_load_explicit(&ps->generation, memory_order_acquire);
		/* A holder attached now is a peer (its close will count); one that is CLOSED or
		 * DEAD left before us: only a later generation is. ATTACHING has not counted its
		 * generation up yet. */
		c->stale_gen[p] = pst == SLOT_ATTACHED ? pgen - 1 : pgen;
		c->peer_tail[p] =
		    atomic_load_explicit(&ring_ctl(c, c->node, p)->tail, memory_order_acquire);
		c->peer_head[p] =
		    atomic_load_explicit(&ring_ctl(c, p, c->node)->head, memory_order_acquire);
	}
	atomic_fetch_add_explicit(&s->generation, 1, memory_order_release);
	atomic_store_explicit(&s->state, SLOT_ATTACHED, memory_order_release);
	*ret_channel = c;
	return 0;
}

int shm_channel_open(const char *path, const struct shm_options *options,
		     struct shm_channel **ret_channel, char **ret_error)
{
	struct stat st;
	void *base;
	int fd, r;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return set_error(ret_error, -errno, "opening shared-memory region %s: %s%s", path,
				 strerror(errno),
				 errno == EACCES ? " (vmhpc-init gives it to the job's user)" : "");
	if (fstat(fd, &st) < 0 || st.st_size <= 0) {
		r = set_error(ret_error, st.st_size <= 0 ? -EPROTO : -errno,
			      "shared-memory region %s has no size", path);
		close(fd);
		return r;
	}
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		return set_error(ret_error, -errno, "mapping shared-memory region %s: %s", path,
				 strerror(errno));
	r = shm_channel_attach(base, (size_t)st.st_size, options, ret_channel, ret_error);
	if (r < 0) {
		munmap(base, (size_t)st.st_size);
		return r;
	}
	(*ret_channel)->mapped_here = true;
	return 0;
}

void shm_channel_close(struct shm_channel *c)
{
	if (!c)
		return;
	uint32_t expected = SLOT_ATTACHED;
	atomic_compare_exchange_strong_explicit(&c->hdr->slots[c->node].state, &expected,
						SLOT_CLOSED, memory_order_acq_rel,
						memory_order_acquire);
	if (c->mapped_here)
		munmap(c->base, c->size_bytes);
	free(c);
}

unsigned shm_channel_nodes(const struct shm_channel *c)
{
	return c->n_nodes;
}

unsigned shm_channel_node(const struct shm_channel *c)
{
	return c->node;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* One waiting loop's state. Spins for spin_us, then yields for 180 us more, then sleeps
 * from 10 us doubling to 1 ms, so an idle rank gives its VCPU back. The phases go by the
 * clock, not by counts: a spin costs ~40 ns on the host and far more under TCG. Why the
 * spin is long (2 ms by default): once both sides of a ping-pong sleep, every message pays
 * the guest's timer granularity (measured under TCG: 8 B latency ~540 us with a 20 us spin,
 * ~1 us with 2 ms; bench/RESULTS.md). */
struct backoff {
	unsigned spins;
	unsigned sleep_us;
	uint64_t wait_start_us;
	uint64_t start_ms, deadline_ms; /* deadline 0: none */
	uint64_t peer_heartbeat, peer_seen_ms;
	uint64_t now_ms;
};

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void backoff_restart(struct backoff *b)
{
	b->spins = 0;
	b->sleep_us = 10;
}

static void backoff_init(struct backoff *b, int timeout_ms)
{
	memset(b, 0, sizeof(*b));
	b->start_ms = b->now_ms = now_ms();
	b->peer_seen_ms = b->now_ms;
	if (timeout_ms >= 0)
		b->deadline_ms = b->start_ms + (uint64_t)timeout_ms;
	backoff_restart(b);
}

static void heartbeat(struct shm_channel *c)
{
	atomic_store_explicit(&c->hdr->slots[c->node].heartbeat, ++c->heartbeat,
			      memory_order_relaxed);
}

/* Waits one step; returns true when the clock was read in this step (b->now_ms fresh). */
static bool backoff_step(struct shm_channel *c, struct backoff *b)
{
	uint64_t us, waited;

	if (b->spins++ == 0) {
		b->wait_start_us = now_us();
		return false;
	}
	if ((b->spins & 15) != 0) {
		cpu_relax();
		return false;
	}
	heartbeat(c);
	us = now_us();
	waited = us - b->wait_start_us;
	if (waited >= c->spin_us && waited < c->yield_us) {
		sched_yield();
	} else if (waited >= c->yield_us) {
		struct timespec ts = {0, (long)b->sleep_us * 1000};
		nanosleep(&ts, NULL);
		if (b->sleep_us < 1000)
			b->sleep_us *= 2;
	}
	b->now_ms = us / 1000;
	return true;
}

static bool timed_out(const struct backoff *b)
{
	return b->deadline_ms && b->now_ms >= b->deadline_ms;
}

/* Whether peer's slot has gone away since generation gen (0: any generation). A slot left
 * CLOSED or DEAD by a holder that was gone before we attached is not gone: that peer has not
 * come yet (a program run again on the same region; bench/bypass-vm.sh runs several in a
 * row), so a send or receive waits for it, within its timeout, instead of failing at once. */
static bool peer_gone(struct shm_channel *c, unsigned peer, uint64_t gen)
{
	struct slot *s = &c->hdr->slots[peer];
	uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
	uint64_t g = atomic_load_explicit(&s->generation, memory_order_acquire);

	if (st == SLOT_CLOSED || st == SLOT_DEAD)
		return g > c->stale_gen[peer];
	return gen && g != gen;
}

/* In the middle of a message: the peer is dead when its slot says so, when it attached
 * again, or when its heartbeat has not moved for dead_ms. */
static bool peer_dead_midway(struct shm_channel *c, unsigned peer, uint64_t gen, struct backoff *b)
{
	uint64_t hb;

	if (peer_gone(c, peer, gen))
		return true;
	hb = atomic_load_explicit(&c->hdr->slots[peer].heartbeat, memory_order_relaxed);
	if (hb != b->peer_heartbeat) {
		b->peer_heartbeat = hb;
		b->peer_seen_ms = b->now_ms;
		return false;
	}
	return b->now_ms - b->peer_seen_ms >= c->dead_ms;
}

/* Copies len bytes into the ring at index pos (wrapping). */
static void ring_put(const struct shm_channel *c, uint8_t *data, uint64_t pos, const uint8_t *src,
		     size_t len)
{
	size_t off = pos & (c->ring_bytes - 1),
	       first = c->ring_bytes - off < len ? c->ring_bytes - off : len;

	c->copy(data + off, src, first);
	if (len > first)
		c->copy(data, src + first, len - first);
}

static void ring_get(const struct shm_channel *c, const uint8_t *data, uint64_t pos, uint8_t *dst,
		     size_t len)
{
	size_t off = pos & (c->ring_bytes - 1),
	       first = c->ring_bytes - off < len ? c->ring_bytes - off : len;

	if (dst) {
		c->copy(dst, data + off, first);
		if (len > first)
			c->copy(dst + first, data, len - first);
	}
}

int shm_send(struct shm_channel *c, unsigned peer, const void *buf, size_t len, int timeout_ms)
{
	struct ring_ctl *rc;
	struct backoff b;
	uint8_t *data;
	uint8_t frame[8];
	uint64_t head, gen = 0, len64 = len;
	size_t sent = 0, total;

	if (peer >= c->n_nodes || peer == c->node || len64 > SHM_MAX_MESSAGE || (!buf && len))
		return -EINVAL;
	rc = ring_ctl(c, c->node, peer);
	data = ring_data(c, c->node, peer);
	total = sizeof(frame) + len;
	backoff_init(&b, timeout_ms);

	/* The peer must have attached (it drops stale bytes first), and there must be room
	 * for the length: until then the timeout applies. Once the length is published the
	 * message is finished, however long the peer takes, unless it goes away. */
	for (;;) {
		struct slot *s = &c->hdr->slots[peer];
		uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);

		if (st == SLOT_ATTACHED) {
			gen = atomic_load_explicit(&s->generation, memory_order_acquire);
			head = atomic_load_explicit(&rc->head, memory_order_relaxed);
			if (c->ring_bytes - (head - c->peer_tail[peer]) >= total)
				break;
			c->peer_tail[peer] = atomic_load_explicit(&rc->tail, memory_order_acquire);
			if (c->ring_bytes - (head - c->peer_tail[peer]) >= sizeof(frame))
				break;
		} else if (peer_gone(c, peer, 0)) {
			return -EPIPE;
		}
		if (backoff_step(c, &b) && timed_out(&b))
			return -ETIMEDOUT;
	}
	for (int i = 0; i < 8; i++)
		frame[i] = (uint8_t)(len64 >> (8 * i));
	backoff_restart(&b);
	while (sent < total) {
		head = atomic_load_explicit(&rc->head, memory_order_relaxed);
		uint64_t room = c->ring_bytes - (head - c->peer_tail[peer]);
		if (room < total - sent) {
			c->peer_tail[peer] = atomic_load_explicit(&rc->tail, memory_order_acquire);
			room = c->ring_bytes - (head - c->peer_tail[peer]);
		}
		if (room == 0) {
			if (backoff_step(c, &b) && peer_gone(c, peer, gen))
				return -EPIPE;
			continue;
		}
		/* At most chunk_bytes before head moves: the receiver can copy the first chunk
		 * out while we copy the next in. By default as much as there is room for: on
		 * the host chunks halved 1 MiB ping-pong latency, between two TCG VMs on two busy
		 * cores they showed no consistent gain (bench/RESULTS.md, runs 3 and 4): the
		 * two copies have no idle core to overlap on. */
		size_t n = total - sent < room ? total - sent : (size_t)room, done = 0;
		if (n > c->chunk_bytes)
			n = c->chunk_bytes;
		if (sent < sizeof(frame)) {
			size_t h = sizeof(frame) - sent < n ? sizeof(frame) - sent : n;
			ring_put(c, data, head, frame + sent, h);
			done = h;
		}
		if (n > done)
			ring_put(c, data, head + done,
				 (const uint8_t *)buf + (sent + done - sizeof(frame)), n - done);
		atomic_store_explicit(&rc->head, head + n, memory_order_release);
		sent += n;
		if (sent < total)
			heartbeat(c);
		backoff_restart(&b);
	}
	return 0;
}

int shm_recv(struct shm_channel *c, unsigned peer, void *buf, size_t cap, size_t *ret_len,
	     int timeout_ms)
{
	struct ring_ctl *rc;
	const uint8_t *data;
	struct backoff b;
	uint8_t frame[8];
	uint64_t head, tail, len64 = 0, gen;
	size_t got = 0;

	if (peer >= c->n_nodes || peer == c->node || (!buf && cap))
		return -EINVAL;
	rc = ring_ctl(c, peer, c->node);
	data = ring_data(c, peer, c->node);
	backoff_init(&b, timeout_ms);

	/* Wait for a whole length word (the sender publishes it only with room for all 8). */
	tail = atomic_load_explicit(&rc->tail, memory_order_relaxed);
	for (;;) {
		if (c->peer_head[peer] - tail >= sizeof(frame))
			break;
		head = c->peer_head[peer] = atomic_load_explicit(&rc->head, memory_order_acquire);
		if (head - tail >= sizeof(frame))
			break;
		if (peer_gone(c, peer, 0)) {
			/* It may have sent its last message and closed: look once more. */
			head = c->peer_head[peer] =
			    atomic_load_explicit(&rc->head, memory_order_acquire);
			if (head - tail >= sizeof(frame))
				break;
			return -EPIPE;
		}
		if (backoff_step(c, &b) && timed_out(&b))
			return -ETIMEDOUT;
	}
	gen = atomic_load_explicit(&c->hdr->slots[peer].generation, memory_order_acquire);
	ring_get(c, data, tail, frame, sizeof(frame));
	for (int i = 0; i < 8; i++)
		len64 |= (uint64_t)frame[i] << (8 * i);
	if (len64 > SHM_MAX_MESSAGE)
		return -ECONNRESET; /* not a length any sender writes: the stream is broken */
	tail += sizeof(frame);
	atomic_store_explicit(&rc->tail, tail, memory_order_release);

	backoff_restart(&b);
	b.peer_heartbeat =
	    atomic_load_explicit(&c->hdr->slots[peer].heartbeat, memory_order_relaxed);
	b.peer_seen_ms = b.now_ms;
	while (got < len64) {
		head = c->peer_head[peer];
		if (head - tail < len64 - got)
			head = c->peer_head[peer] =
			    atomic_load_explicit(&rc->head, memory_order_acquire);
		if (head == tail) {
			if (backoff_step(c, &b) && peer_dead_midway(c, peer, gen, &b)) {
				head = c->peer_head[peer] =
				    atomic_load_explicit(&rc->head, memory_order_acquire);
				if (head == tail)
					return -ECONNRESET;
			}
			continue;
		}
		uint64_t avail = head - tail;
		size_t n = len64 - got < avail ? (size_t)(len64 - got) : (size_t)avail;
		/* The part beyond cap is consumed and dropped. */
		if (got < cap) {
			size_t keep = cap - got < n ? cap - got : n;
			ring_get(c, data, tail, (uint8_t *)buf + got, keep);
		}
		tail += n;
		atomic_store_explicit(&rc->tail, tail, memory_order_release);
		got += n;
		if (b.spins) {
			/* Progress after a wait: the peer is alive. */
			backoff_restart(&b);
			b.now_ms = b.peer_seen_ms = now_ms();
		}
	}
	*ret_len = (size_t)len64;
	return len64 > cap ? -EMSGSIZE : 0;
}
