/* Unit tests of the shared-memory channel (src/shm/shm.c) on the host: two processes
 * (fork) over a memfd or a /dev/shm file. Refusals of stale and foreign regions, message
 * framing across ring wrap-around, a peer that closes, one killed in the middle of a message
 * (heartbeat timeout, and marked dead), and a stress run: SHM_STRESS_MESSAGES messages
 * (default 10^7) of random sizes, each carrying its sequence number and content derived from
 * it, checked whole on arrival: no loss, no reordering, no corruption. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "shm/shm.h"

#define KEY UINT64_C(0x1234abcd5678ef90)

struct region {
	void *base;
	size_t size;
};

static struct region region_new(size_t size, unsigned nodes)
{
	struct region r = {.size = size};
	int fd = memfd_create("test-shm", MFD_CLOEXEC);
	char *error = NULL;

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	r.base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(r.base != MAP_FAILED);
	close(fd);
	assert_int_equal(shm_region_format(r.base, size, nodes, KEY, &error), 0);
	assert_null(error);
	return r;
}

/* Waits spin 20 us before they yield: the tests run on shared, overcommitted cores, where
 * the library's long default spin (meant for a VM's own VCPU) burns the time slice the peer
 * needs. */
static struct shm_channel *attach(struct region *r, unsigned node, unsigned dead_ms)
{
	struct shm_options o = {.node = node, .key = KEY, .dead_ms = dead_ms, .spin_us = 20};
	struct shm_channel *c = NULL;
	char *error = NULL;
	int k = shm_channel_attach(r->base, r->size, &o, &c, &error);

	if (k < 0)
		fail_msg("attach node %u: %s", node, error ? error : strerror(-k));
	return c;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Message seq: 8 bytes of seq, then bytes from a generator seeded by seq. */
static size_t fill(uint8_t *buf, uint64_t seq, size_t len)
{
	uint64_t s = seq * UINT64_C(0x9e3779b97f4a7c15) + 1;

	memcpy(buf, &seq, 8);
	for (size_t i = 8; i < len; i += 8) {
		uint64_t v = xorshift(&s);
		memcpy(buf + i, &v, len - i < 8 ? len - i : 8);
	}
	return len;
}

static int check(const uint8_t *buf, uint64_t seq, size_t len)
{
	static uint8_t want[1 << 20];

	if (len < 8)
		return -1;
	fill(want, seq, len);
	return memcmp(buf, want, len) ? -1 : 0;
}

static size_t random_size(uint64_t *s, size_t max)
{
	uint64_t x = xorshift(s);

	/* Mostly small (what MPI's eager messages are), sometimes large. */
	if ((x & 4095) == 0)
		return 8 + (size_t)((x >> 12) % (max - 8));
	return 8 + (size_t)((x >> 12) % 57);
}

static void test_refusals(void **state)
{
	struct region r = region_new(1 << 16, 2);
	struct shm_options o = {.node = 0, .key = KEY + 1};
	struct shm_channel *c = NULL, *c2 = NULL;
	char *error = NULL;
	uint8_t *b = r.base;

	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), -ESTALE);
	assert_non_null(strstr(error, "another job"));
	free(error), error = NULL;
	o.key = KEY;
	o.node = 2;
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), -EINVAL);
	free(error), error = NULL;
	o.node = 0;
	assert_int_equal(shm_channel_attach(r.base, r.size / 2, &o, &c, &error), -EPROTO);
	free(error), error = NULL;
	b[8] ^= 0xff; /* version */
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), -EPROTO);
	assert_non_null(strstr(error, "version"));
	free(error), error = NULL;
	b[8] ^= 0xff;
	b[0] ^= 0xff; /* magic */
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), -EPROTO);
	free(error), error = NULL;
	b[0] ^= 0xff;
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), 0);
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c2, &error), -EBUSY);
	free(error), error = NULL;
	assert_int_equal(shm_send(c, 0, "x", 1, 0), -EINVAL);
	assert_int_equal(shm_send(c, 2, "x", 1, 0), -EINVAL);
	/* The peer has not attached: a send waits, then times out. */
	assert_int_equal(shm_send(c, 1, "x", 1, 50), -ETIMEDOUT);
	size_t len;
	char buf[4];
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 50), -ETIMEDOUT);
	shm_channel_close(c);
	/* A closed slot can be taken again. */
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), 0);
	shm_channel_close(c);
	/* Formatting refuses sizes that are no power of two or too small. */
	assert_int_equal(shm_region_format(r.base, 3 * 4096, 2, KEY, &error), -EINVAL);
	free(error), error = NULL;
	assert_int_equal(shm_region_format(r.base, 8192, 2, KEY, &error), -EINVAL);
	free(error), error = NULL;
	/* An unformatted region is refused. */
	memset(r.base, 0, 8192);
	assert_int_equal(shm_channel_attach(r.base, r.size, &o, &c, &error), -EPROTO);
	free(error);
	munmap(r.base, r.size);
}

static void test_group_key(void **state)
{
	const uint8_t token[32] = {1, 2, 3};
	uint64_t k0 = shm_group_key(token, sizeof(token), 0);

	(void)state;
	/* A job of one node keeps the token's hash; each node of a job across nodes has a
	 * key of its own, the same wherever it is computed. */
	assert_true(k0 == shm_token_hash(token, sizeof(token)));
	assert_true(shm_group_key(token, sizeof(token), 1) != k0);
	assert_true(shm_group_key(token, sizeof(token), 2) !=
		    shm_group_key(token, sizeof(token), 1));
	assert_true(shm_group_key(token, sizeof(token), 256) !=
		    shm_group_key(token, sizeof(token), 1));
	assert_true(shm_group_key(token, sizeof(token), 7) ==
		    shm_group_key(token, sizeof(token), 7));
}

static void test_region_size(void **state)
{
	size_t s = shm_region_size_for(2, 1 << 20);
	struct region r;
	unsigned nodes;
	size_t ring;

	assert_true(s >= 2 * (1 << 20) && (s & (s - 1)) == 0);
	assert_int_equal(shm_region_size_for(0, 4096), 0);
	assert_int_equal(shm_region_size_for(SHM_MAX_NODES + 1, 4096), 0);
	r = region_new(s, 2);
	assert_int_equal(shm_region_info(r.base, r.size, &nodes, &ring), 0);
	assert_int_equal(nodes, 2);
	assert_true(ring >= (1 << 20));
	munmap(r.base, r.size);
	s = shm_region_size_for(11, 4096);
	r = region_new(s, 11);
	assert_int_equal(shm_region_info(r.base, r.size, &nodes, &ring), 0);
	assert_int_equal(nodes, 11);
	munmap(r.base, r.size);
}

/* Ping-pong between two processes through a small ring, messages of 0 bytes to 4x the ring;
 * EMSGSIZE for a short buffer; the peer's close seen as EPIPE. */
static void test_pingpong(void **state)
{
	struct region r = region_new(1 << 15, 2); /* rings of 4 KiB */
	static uint8_t buf[1 << 16], msg[1 << 16];
	size_t sizes[] = {8, 9, 100, 4095, 4096, 4097, 10000, 1 << 14, 1 << 16};
	size_t len;
	pid_t pid;
	int status;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shm_channel *c = attach(&r, 1, 0);
		for (;;) {
			int k = shm_recv(c, 0, buf, sizeof(buf), &len, 10000);
			if (k == -EPIPE) {
				shm_channel_close(c);
				_exit(0);
			}
			if (k < 0)
				_exit(10);
			if (shm_send(c, 0, buf, len, 10000) < 0)
				_exit(11);
		}
	}
	struct shm_channel *c = attach(&r, 0, 0);
	assert_int_equal(shm_send(c, 1, NULL, 0, 5000), 0);
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 5000), 0);
	assert_int_equal(len, 0);
	for (int round = 0; round < 50; round++)
		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			uint64_t seq = (uint64_t)round * 100 + i;
			fill(msg, seq, sizes[i]);
			assert_int_equal(shm_send(c, 1, msg, sizes[i], 5000), 0);
			assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 5000), 0);
			assert_int_equal(len, sizes[i]);
			assert_int_equal(check(buf, seq, len), 0);
		}
	/* A buffer too short: the message is consumed, its head kept. */
	fill(msg, 7, 5000);
	assert_int_equal(shm_send(c, 1, msg, 5000, 5000), 0);
	assert_int_equal(shm_recv(c, 1, buf, 100, &len, 5000), -EMSGSIZE);
	assert_int_equal(len, 5000);
	assert_memory_equal(buf, msg, 100);
	/* And the stream goes on. */
	assert_int_equal(shm_send(c, 1, msg, 16, 5000), 0);
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 5000), 0);
	assert_int_equal(len, 16);
	shm_channel_close(c);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* Attached again after the child closed: that child was of an earlier set, so we wait
	 * for node 1's next process (test_next_set) and time out, not -EPIPE. */
	c = attach(&r, 0, 0);
	assert_int_equal(shm_send(c, 1, msg, 8, 100), -ETIMEDOUT);
	assert_int_equal(shm_recv(c, 1, buf, 8, &len, 100), -ETIMEDOUT);
	shm_channel_close(c);
	munmap(r.base, r.size);
}

/* Two sets of processes one after the other on one region (bench/bypass-vm.sh runs several
 * programs in a row in the same VMs): whichever process of the second set comes first finds
 * its peer's slot CLOSED by the first set and must wait for the peer's next process, not fail
 * with -EPIPE at once (as a run of the bench did: "send of 1 bytes: Broken pipe"). A peer of
 * its own set that closes is still -EPIPE. */
static void test_next_set(void **state)
{
	struct region r = region_new(1 << 16, 2);
	uint8_t buf[8];
	size_t len;
	int status;
	pid_t pid;

	(void)state;
	/* First set: both attach, exchange, close. */
	struct shm_channel *c0 = attach(&r, 0, 0), *c1 = attach(&r, 1, 0);
	assert_int_equal(shm_send(c0, 1, "a", 1, 1000), 0);
	assert_int_equal(shm_recv(c1, 0, buf, sizeof(buf), &len, 1000), 0);
	shm_channel_close(c1);
	shm_channel_close(c0);
	for (int first = 0; first < 2; first++) {
		/* Node `first` of the next set comes first and talks; the other comes 200 ms later.
		 */
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			unsigned node = first ? 0 : 1;
			usleep(200 * 1000);
			struct shm_channel *c = attach(&r, node, 0);
			int k = node == 0 ? shm_send(c, 1, "b", 1, 5000)
					  : shm_recv(c, 0, buf, sizeof(buf), &len, 5000);
			/* Then wait for the other to close: -EPIPE now. */
			if (k == 0)
				k = shm_recv(c, 1 - node, buf, sizeof(buf), &len, 5000) == -EPIPE
					? 0
					: -1;
			shm_channel_close(c);
			_exit(k == 0 ? 0 : 1);
		}
		unsigned node = first ? 1 : 0;
		struct shm_channel *c = attach(&r, node, 0);
		int k = node == 0 ? shm_send(c, 1, "b", 1, 5000)
				  : shm_recv(c, 0, buf, sizeof(buf), &len, 5000);
		assert_int_equal(k, 0);
		shm_channel_close(c);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}
	munmap(r.base, r.size);
}

/* A sender already waiting when its peer attaches: the first message must arrive. The slot
 * used to go straight to ATTACHED before the attach dropped stale bytes, so a sender
 * spinning on it could publish its message just before the drop, which lost it; both sides
 * then waited until their timeouts (bench/bypass.sh hung on its first exchange). On the
 * host that lost about 1 first message in 6; 400 tries catch it. */
static void test_attach_race(void **state)
{
	struct region r = region_new(1 << 16, 2);
	struct shm_options o0 = {.node = 0, .key = KEY, .spin_us = 1000000};
	int lost = 0, tries = 400;

	(void)state;
	for (int i = 0; i < tries && !lost; i++) {
		struct shm_channel *c0 = NULL;
		pid_t pid;
		int status, k;

		assert_int_equal(shm_region_format(r.base, r.size, 2, KEY, NULL), 0);
		assert_int_equal(shm_channel_attach(r.base, r.size, &o0, &c0, NULL), 0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct shm_options o1 = {.node = 1, .key = KEY, .spin_us = 20};
			struct shm_channel *c1 = NULL;
			uint8_t buf[8];
			size_t len;

			if (shm_channel_attach(r.base, r.size, &o1, &c1, NULL) < 0)
				_exit(2);
			k = shm_recv(c1, 0, buf, sizeof(buf), &len, 2000);
			_exit(k == 0 && len == 1 && buf[0] == 'h' ? 0 : 1);
		}
		/* Spinning (a long spin_us) in the wait for the peer's slot when it attaches. */
		k = shm_send(c0, 1, "h", 1, 10000);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (k < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			lost++;
		shm_channel_close(c0);
	}
	if (lost)
		fail_msg("a first message sent while the peer attached was lost");
	munmap(r.base, r.size);
}

/* The same through shm_region_create + shm_channel_open on a /dev/shm file. */
static void test_open_path(void **state)
{
	char path[64], *error = NULL;
	struct shm_options o = {.node = 0, .key = KEY};
	struct shm_channel *c = NULL;
	uint8_t buf[64];
	size_t len;
	pid_t pid;
	int status;

	snprintf(path, sizeof(path), "/dev/shm/vmhpc-test-%d", (int)getpid());
	unlink(path);
	assert_int_equal(shm_region_create(path, 1 << 16, 2, KEY, &error), 0);
	assert_int_equal(shm_region_create(path, 1 << 16, 2, KEY, &error), -EEXIST);
	free(error), error = NULL;
	pid = fork();
	if (pid == 0) {
		struct shm_options o1 = {.node = 1, .key = KEY};
		struct shm_channel *c1 = NULL;
		if (shm_channel_open(path, &o1, &c1, NULL) < 0)
			_exit(1);
		if (shm_send(c1, 0, "hello", 5, 5000) < 0)
			_exit(2);
		shm_channel_close(c1);
		_exit(0);
	}
	assert_int_equal(shm_channel_open(path, &o, &c, &error), 0);
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 5000), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(buf, "hello", 5);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	/* The peer sent and closed: nothing more, so EPIPE, not a wait. */
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 5000), -EPIPE);
	shm_channel_close(c);
	o.key = KEY ^ 1;
	assert_int_equal(shm_channel_open(path, &o, &c, &error), -ESTALE);
	free(error), error = NULL;
	unlink(path);
	assert_int_equal(shm_channel_open(path, &o, &c, &error), -ENOENT);
	free(error);
}

/* A sender killed in the middle of a message larger than the ring. */
static void killed_midway(bool mark_dead)
{
	struct region r = region_new(1 << 15, 2);
	static uint8_t buf[1 << 20];
	size_t len;
	pid_t pid;
	struct timespec t0, t1;

	pid = fork();
	if (pid == 0) {
		struct shm_channel *c = attach(&r, 1, 0);
		shm_send(c, 0, buf, sizeof(buf), -1); /* blocks: nobody reads */
		_exit(3);
	}
	struct shm_channel *c = attach(&r, 0, 300);
	/* Let the child fill the ring, then kill it. */
	usleep(200 * 1000);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	if (mark_dead)
		assert_int_equal(shm_region_mark_dead(r.base, r.size, 1), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 1000), -ECONNRESET);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (mark_dead)
		assert_true(s < 0.2);
	else
		assert_true(s >= 0.25 && s < 3);
	/* Marked dead, the peer takes no message; unmarked, a message goes into its ring (it
	 * looks attached) and is dropped by whoever attaches to its slot next. */
	assert_int_equal(shm_send(c, 1, buf, 8, 5000), mark_dead ? -EPIPE : 0);
	shm_channel_close(c);
	munmap(r.base, r.size);
}

static void test_killed_heartbeat(void **state)
{
	killed_midway(false);
}

static void test_killed_marked(void **state)
{
	killed_midway(true);
}

static void test_stress(void **state)
{
	const char *env = getenv("SHM_STRESS_MESSAGES");
	uint64_t count = env ? strtoull(env, NULL, 10) : 10000000;
	struct region r = region_new(1 << 18, 2); /* rings of 64 KiB: large messages wrap */
	static uint8_t msg[1 << 17], buf[1 << 17];
	uint64_t s = 42, bytes = 0;
	struct timespec t0, t1;
	size_t len;
	pid_t pid;
	int status;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	if (pid == 0) {
		struct shm_channel *c = attach(&r, 1, 0);
		uint64_t rs = 42;
		for (uint64_t seq = 0; seq < count; seq++) {
			size_t n = random_size(&rs, sizeof(msg));
			fill(msg, seq, n);
			if (shm_send(c, 0, msg, n, 30000) < 0)
				_exit(1);
		}
		shm_channel_close(c);
		_exit(0);
	}
	struct shm_channel *c = attach(&r, 0, 0);
	for (uint64_t seq = 0; seq < count; seq++) {
		size_t want = random_size(&s, sizeof(msg));
		int k = shm_recv(c, 1, buf, sizeof(buf), &len, 30000);
		if (k < 0)
			fail_msg("message %llu: %s", (unsigned long long)seq, strerror(-k));
		if (len != want || check(buf, seq, len) != 0) {
			uint64_t got;
			memcpy(&got, buf, 8);
			fail_msg("message %llu: %zu bytes (want %zu), sequence %llu",
				 (unsigned long long)seq, len, want, (unsigned long long)got);
		}
		bytes += len;
	}
	assert_int_equal(shm_recv(c, 1, buf, sizeof(buf), &len, 30000), -EPIPE);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	shm_channel_close(c);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	print_message("stress: %llu messages, %.1f MB in %.2f s (%.0f msg/s)\n",
		      (unsigned long long)count, (double)bytes / 1e6, sec, (double)count / sec);
	munmap(r.base, r.size);
}

/* The heap after the rings (layout version 2, for the UCX transport): blocks handed out
 * without overlap, given back and reused, -ENOSPC when used up, and the blocks of a process
 * that died without freeing them taken back when the heap is full. */
static void test_heap(void **state)
{
	struct region r = region_new(1u << 20, 2);
	uint64_t off, bytes, a, b, c;
	size_t n = 0;
	int status;
	pid_t pid;

	(void)state;
	assert_int_equal(shm_region_heap(r.base, r.size, &off, &bytes), 0);
	assert_int_equal(bytes, shm_region_heap_bytes_for(r.size, 2));
	assert_true(off + bytes == r.size && bytes > 4 * SHM_HEAP_BLOCK_BYTES);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, 1, &a), 0);
	assert_int_equal(shm_region_alloc(r.base, r.size, 1, SHM_HEAP_BLOCK_BYTES + 1, &b), 0);
	assert_true(a >= off && b >= a + SHM_HEAP_BLOCK_BYTES && a % 4096 == 0);
	assert_true(b + 2 * SHM_HEAP_BLOCK_BYTES <= r.size);
	/* Freed by its owner: the same block comes back. */
	shm_region_free(r.base, r.size, 0, a, 1);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, 100, &c), 0);
	assert_int_equal(c, a);
	/* Another node's free does not release ours. */
	shm_region_free(r.base, r.size, 1, c, 100);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, 100, &a), 0);
	assert_true(a != c);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, r.size, &a), -ENOSPC);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, 0, &a), -EINVAL);
	/* A child of node 0 takes every block left and dies: they come back to node 0, not to
	 * node 1 (whose processes' pids this OS cannot judge). */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		while (shm_region_alloc(r.base, r.size, 0, SHM_HEAP_BLOCK_BYTES, &a) == 0)
			n++;
		_exit(n > 0 ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(shm_region_alloc(r.base, r.size, 1, SHM_HEAP_BLOCK_BYTES, &a), -ENOSPC);
	assert_int_equal(shm_region_alloc(r.base, r.size, 0, SHM_HEAP_BLOCK_BYTES, &a), 0);
	munmap(r.base, r.size);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_group_key),	  cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_region_size),	  cmocka_unit_test(test_pingpong),
	    cmocka_unit_test(test_open_path),	  cmocka_unit_test(test_killed_heartbeat),
	    cmocka_unit_test(test_killed_marked), cmocka_unit_test(test_stress),
	    cmocka_unit_test(test_heap),	  cmocka_unit_test(test_attach_race),
	    cmocka_unit_test(test_next_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
