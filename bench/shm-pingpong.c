/* Ping-pong and streaming bandwidth between two processes, over the shared-memory channel
 * (src/shm/) or over TCP, with every message's content checked (bench/bypass.sh, the
 * integration test run-shm.sh). Static, libc only: it runs inside the guests from the job
 * folder.
 *
 *   shm-pingpong [--sizes LIST] [--iters N] [--quick]          over the channel: the region,
 *       key and node from VMHPC_SHM, VMHPC_SHM_KEY and the rank (PMI_RANK, else VMHPC_SHM_NODE)
 *   shm-pingpong --host ...                                    two host processes (fork) over
 *       a memfd region of the same layout: the limit
 *   shm-pingpong --tcp ADDR:PORT ...                           rank 0 connects to ADDR, rank 1
 *       listens on PORT (any address)
 *
 * SHM_SPIN_US sets how long a wait spins before it yields and sleeps (shm_options.spin_us),
 * SHM_CHUNK_BYTES how many bytes a send copies before it publishes them (chunk_bytes),
 * SHM_COPY=libc copies with the C library's memcpy instead of the channel's (libc_copy).
 * Rank 0 prints one line per size: "SIZE LAT_US BW_MBPS MEAN_LAT_US" (LAT_US: the median
 * half round trip), after "LABEL " with --label LABEL (bench/bypass-vm.sh: lines of two
 * VMs arrive interleaved in the job's output, so each line names its part). Exit 0 only
 * when every message arrived whole and in order. */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm.h"

#define MAX_SIZE (1u << 20)

struct transport {
	int (*send)(struct transport *t, const void *buf, size_t len);
	int (*recv)(struct transport *t, void *buf, size_t len);
	struct shm_channel *ch;
	unsigned peer;
	int fd;
	int timeout_ms;
};

/* What was going on when something failed, for the error message. */
static const char *last_op = "start";
static size_t last_size;

static int shm_tsend(struct transport *t, const void *buf, size_t len)
{
	last_op = "send";
	last_size = len;
	return shm_send(t->ch, t->peer, buf, len, t->timeout_ms);
}

static int shm_trecv(struct transport *t, void *buf, size_t len)
{
	size_t got;
	int r;

	last_op = "receive";
	last_size = len;
	r = shm_recv(t->ch, t->peer, buf, len, &got, t->timeout_ms);

	if (r == 0 && got != len)
		return -EBADMSG;
	return r;
}

static int tcp_tsend(struct transport *t, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	last_op = "TCP send";
	last_size = len;
	while (len) {
		ssize_t n = send(t->fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int tcp_trecv(struct transport *t, void *buf, size_t len)
{
	uint8_t *p = buf;

	last_op = "TCP receive";
	last_size = len;
	while (len) {
		ssize_t n = recv(t->fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -EPIPE : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Content of message seq: a 32-bit pattern from seq, so a lost, reordered or damaged message
 * shows. Only the first and last 64 bytes and every 4 KiB are written and checked on large
 * messages, so that neither dominates what is measured (under TCG, writing every word of a
 * 1 MiB message cost about as much as sending it; OSU's programs touch no data at all). */
static size_t next_checked(size_t i, size_t len)
{
	return i + ((i < 64 || i + 68 > len) ? 4 : 4096);
}

static void fill(uint8_t *buf, size_t len, uint32_t seq)
{
	for (size_t i = 0; i + 4 <= len; i = next_checked(i, len)) {
		uint32_t v = seq * 2654435761u + (uint32_t)i;
		memcpy(buf + i, &v, 4);
	}
}

static bool check(const uint8_t *buf, size_t len, uint32_t seq)
{
	for (size_t i = 0; i + 4 <= len; i = next_checked(i, len)) {
		uint32_t v;
		memcpy(&v, buf + i, 4);
		if (v != seq * 2654435761u + (uint32_t)i)
			return false;
	}
	return true;
}

static uint8_t sbuf[MAX_SIZE], rbuf[MAX_SIZE];
static const char *label; /* --label: the first word of every figure line */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int run(struct transport *t, unsigned rank, const size_t *sizes, size_t n_sizes,
	       unsigned iters)
{
	uint32_t seq = 1;
	int r = 0;

	/* A first exchange with a long timeout: the other rank may start much later (its VM's
	 * launcher under load). */
	t->timeout_ms = 600000;
	if ((r = rank == 0 ? t->send(t, "h", 1) : t->recv(t, rbuf, 1)) < 0 ||
	    (r = rank == 0 ? t->recv(t, rbuf, 1) : t->send(t, "h", 1)) < 0)
		return r;
	t->timeout_ms = 60000;

	for (size_t k = 0; k < n_sizes; k++) {
		size_t size = sizes[k];
		unsigned n = iters;
		double t0, lat_us, mean_us, bw;

		if (size >= 65536)
			n = iters / 10 > 5 ? iters / 10 : 5;
		/* Latency: n round trips, after one to warm up; the median of the round trips,
		 * halved (the machines here are shared: a mean mostly measures preemption; the
		 * mean is printed too). */
		double sum = 0, *rt = calloc(n, sizeof(*rt));
		if (!rt)
			return -ENOMEM;
		for (unsigned i = 0; i <= n; i++, seq++) {
			t0 = now_s();
			if (rank == 0) {
				fill(sbuf, size, seq);
				if ((r = t->send(t, sbuf, size)) < 0 ||
				    (r = t->recv(t, rbuf, size)) < 0)
					goto out;
				if (!check(rbuf, size, seq)) {
					r = -EBADMSG;
					goto out;
				}
			} else {
				if ((r = t->recv(t, rbuf, size)) < 0)
					goto out;
				if (!check(rbuf, size, seq)) {
					r = -EBADMSG;
					goto out;
				}
				if ((r = t->send(t, rbuf, size)) < 0)
					goto out;
			}
			if (i > 0) {
				rt[i - 1] = now_s() - t0;
				sum += rt[i - 1];
			}
		}
	out:
		if (r < 0) {
			free(rt);
			return r;
		}
		qsort(rt, n, sizeof(*rt), cmp_double);
		lat_us = rt[n / 2] / 2 * 1e6;
		mean_us = sum / n / 2 * 1e6;
		free(rt);
		/* Bandwidth: n messages one way, then one byte back. */
		t0 = now_s();
		for (unsigned i = 0; i < n; i++, seq++) {
			if (rank == 0) {
				fill(sbuf, size, seq);
				if ((r = t->send(t, sbuf, size)) < 0)
					return r;
			} else {
				if ((r = t->recv(t, rbuf, size)) < 0)
					return r;
				if (!check(rbuf, size, seq))
					return -EBADMSG;
			}
		}
		if (rank == 0 ? (r = t->recv(t, rbuf, 1)) < 0 : (r = t->send(t, "k", 1)) < 0)
			return r;
		bw = (double)size * n / (now_s() - t0) / 1e6;
		if (rank == 0) {
			printf("%s%s%zu %.2f %.1f %.2f\n", label ? label : "", label ? " " : "",
			       size, lat_us, bw, mean_us);
			fflush(stdout);
		}
	}
	return 0;
}

/* A size from the environment (0 when unset: the library's default). */
static size_t env_size(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? (size_t)strtoull(v, NULL, 0) : 0;
}

static bool libc_copy(void)
{
	const char *v = getenv("SHM_COPY");

	return v && strcmp(v, "libc") == 0;
}

static int open_shm(struct transport *t, unsigned rank)
{
	const char *path = getenv(SHM_ENV_PATH), *key = getenv(SHM_ENV_KEY);
	struct shm_options o = {.node = rank};
	const char *spin = getenv("SHM_SPIN_US");
	char *error = NULL;
	int r;

	if (!path || !key) {
		fprintf(stderr,
			"shm-pingpong: no %s/%s: this VM has no shared-memory channel "
			"(vmhpc run --shm)\n",
			SHM_ENV_PATH, SHM_ENV_KEY);
		return -ENODEV;
	}
	o.key = strtoull(key, NULL, 16);
	o.spin_us = spin ? (unsigned)atoi(spin) : 0;
	o.chunk_bytes = env_size("SHM_CHUNK_BYTES");
	o.libc_copy = libc_copy();
	r = shm_channel_open(path, &o, &t->ch, &error);
	if (r < 0) {
		fprintf(stderr, "shm-pingpong: %s\n", error ? error : strerror(-r));
		free(error);
		return r;
	}
	t->send = shm_tsend;
	t->recv = shm_trecv;
	t->peer = 1 - rank;
	return 0;
}

static int open_tcp(struct transport *t, unsigned rank, const char *spec)
{
	char host[256];
	const char *colon = strrchr(spec, ':');
	int one = 1, fd;

	if (!colon || (size_t)(colon - spec) >= sizeof(host))
		return -EINVAL;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = 0;
	if (rank == 1) {
		struct sockaddr_in a = {.sin_family = AF_INET,
					.sin_port = htons((uint16_t)atoi(colon + 1))};
		int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0)
			return -errno;
		fd = accept(l, NULL, NULL);
		close(l);
	} else {
		/* An address, not a name: a static program cannot load glibc's NSS modules. */
		struct sockaddr_in a = {.sin_family = AF_INET,
					.sin_port = htons((uint16_t)atoi(colon + 1))};
		if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
			return -EINVAL;
		for (int tries = 0;; tries++) {
			fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
				break;
			close(fd);
			fd = -1;
			/* The listener may not be up yet: the other VM's rank may start much
			 * later (as for the first exchange in run(): up to 10 min). */
			if (tries > 6000)
				break;
			usleep(100000);
		}
	}
	if (fd < 0)
		return -ECONNREFUSED;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	t->fd = fd;
	t->send = tcp_tsend;
	t->recv = tcp_trecv;
	return 0;
}

int main(int argc, char **argv)
{
	size_t sizes[32] = {8, 64, 512, 4096, 32768, 262144, 1048576}, n_sizes = 7;
	unsigned iters = 1000, rank;
	const char *tcp = NULL, *env;
	bool host = false;
	struct transport t = {.fd = -1};
	int r;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--host") == 0) {
			host = true;
		} else if (strcmp(argv[i], "--tcp") == 0 && i + 1 < argc) {
			tcp = argv[++i];
		} else if (strcmp(argv[i], "--label") == 0 && i + 1 < argc) {
			label = argv[++i];
		} else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
			iters = (unsigned)atoi(argv[++i]);
		} else if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
			char *list = argv[++i], *tok;
			n_sizes = 0;
			for (tok = strtok(list, ","); tok && n_sizes < 32; tok = strtok(NULL, ","))
				sizes[n_sizes++] = strtoul(tok, NULL, 10);
		} else {
			fprintf(stderr, "usage: shm-pingpong [--host | --tcp HOST:PORT] [--sizes "
					"8,64,...] [--iters N] [--label WORD]\n");
			return 2;
		}
	}
	for (size_t k = 0; k < n_sizes; k++)
		if (sizes[k] < 1 || sizes[k] > MAX_SIZE) {
			fprintf(stderr, "shm-pingpong: sizes are 1..%u bytes\n", MAX_SIZE);
			return 2;
		}
	if (host) {
		/* Two host processes over a memfd region: the same library, no VM. */
		size_t size = shm_region_size_for(2, 2u << 20);
		int fd = memfd_create("shm-pingpong", MFD_CLOEXEC);
		void *base;
		pid_t pid;
		int status;

		if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
			return 1;
		base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (base == MAP_FAILED || shm_region_format(base, size, 2, 1, NULL) < 0)
			return 1;
		pid = fork();
		rank = pid == 0 ? 1 : 0;
		const char *spin = getenv("SHM_SPIN_US");
		struct shm_options o = {.node = rank,
					.key = 1,
					.spin_us = spin ? (unsigned)atoi(spin) : 0,
					.chunk_bytes = env_size("SHM_CHUNK_BYTES"),
					.libc_copy = libc_copy()};
		if (shm_channel_attach(base, size, &o, &t.ch, NULL) < 0)
			return 1;
		t.send = shm_tsend;
		t.recv = shm_trecv;
		t.peer = 1 - rank;
		r = run(&t, rank, sizes, n_sizes, iters);
		shm_channel_close(t.ch);
		if (pid == 0)
			_exit(r < 0 ? 1 : 0);
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			r = r < 0 ? r : -EIO;
	} else {
		env = getenv("PMI_RANK");
		if (!env)
			env = getenv("OMPI_COMM_WORLD_RANK");
		if (!env)
			env = getenv(SHM_ENV_NODE);
		if (!env) {
			fprintf(stderr, "shm-pingpong: no rank (PMI_RANK or %s)\n", SHM_ENV_NODE);
			return 2;
		}
		rank = (unsigned)atoi(env);
		if (rank > 1)
			return 0; /* two ranks take part; others have nothing to do */
		r = tcp ? open_tcp(&t, rank, tcp) : open_shm(&t, rank);
		if (r < 0) {
			fprintf(stderr, "shm-pingpong: rank %u: %s\n", rank, strerror(-r));
			return 1;
		}
		r = run(&t, rank, sizes, n_sizes, iters);
		if (t.ch)
			shm_channel_close(t.ch);
		if (t.fd >= 0)
			close(t.fd);
	}
	if (r < 0) {
		fprintf(stderr, "shm-pingpong: rank %u: %s of %zu bytes: %s\n", rank, last_op,
			last_size, strerror(-r));
		return 1;
	}
	if (rank == 0)
		printf("ok: every message arrived whole and in order\n");
	return 0;
}
