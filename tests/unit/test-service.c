/* vmhpc-init's exec service (service.c) and its boot-time control port reader (control.c),
 * run in this process: the service's loop is stepped by the test while the test plays its
 * peers over TCP on 127.0.0.1 and a socketpair standing in for the control port. Built with
 * the rest of the unit tests, so the sanitizer build runs the service under ASan and UBSan
 * (vmhpc-init itself is static and cannot be). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guest/console.h"
#include "guest/control.h"
#include "guest/frame.h"
#include "guest/service.h"
#include "guest/shmdev.h"
#include "shm/shm.h"
#include "util/cleanup.h"
#include "util/time.h"

#define AUTH_MS 300

static const uint8_t token[FRAME_TOKEN_BYTES] = {
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 1,	2,  3,	4,  5,	6,  7,	8,
    9,	  10,	11,   12,   13,	  14,	15,   16,   17, 18, 19, 20, 21, 22, 23, 24};

struct peer {
	int fd;
	struct frame_decoder *dec;
	uint8_t in[65536];
	size_t pos, len;
	struct frame f;
	bool eof;
};

struct fixture {
	struct service *s;
	int ctl; /* the host's end of the "control port" */
};

static struct fixture *fx_new(void)
{
	struct fixture *t = calloc(1, sizeof(*t));
	struct service_config sc = {.have_token = true,
				    .loopback_only = true,
				    .control_name = "test control",
				    .auth_timeout_ms = AUTH_MS};
	int sv[2];

	assert_non_null(t);
	memcpy(sc.token, token, sizeof(token));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
	sc.control_fd = sv[0];
	t->ctl = sv[1];
	assert_int_equal(service_new(&sc, &t->s), 0);
	assert_true(service_listening(t->s));
	assert_int_not_equal(service_port(t->s), 0);
	return t;
}

static void fx_free(struct fixture *t)
{
	service_free(t->s);
	close(t->ctl);
	free(t);
}

static struct peer *peer_wrap(int fd)
{
	struct peer *p = calloc(1, sizeof(*p));

	assert_non_null(p);
	assert_int_equal(frame_decoder_new(&p->dec), 0);
	p->fd = fd;
	return p;
}

static struct peer *peer_tcp(struct fixture *t)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(service_port(t->s))};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(fd >= 0);
	/* The kernel completes the handshake from the backlog; the service accepts later. */
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
	return peer_wrap(fd);
}

/* A peer with a small receive buffer: what it does not read backs up into the service. */
static struct peer *peer_tcp_small(struct fixture *t)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(service_port(t->s))};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), size = 4096;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)), 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
	return peer_wrap(fd);
}

static void peer_free(struct peer *p, bool close_fd)
{
	if (close_fd)
		close(p->fd);
	frame_decoder_free(p->dec);
	free(p);
}

/* Sends a frame, stepping the service while the socket is full. */
static void peer_send(struct fixture *t, struct peer *p, enum frame_type type, const void *data,
		      size_t len)
{
	struct frame_buf b = {0};

	assert_int_equal(frame_buf_put(&b, type, data, len), 0);
	while (b.len) {
		assert_int_equal(frame_buf_flush(&b, p->fd), 0);
		if (b.len)
			service_step(t->s, 5);
	}
	frame_buf_clear(&b);
}

/* Returns 1 with p->f set, 0 at EOF, stepping the service until then (at most 10 s). */
static int peer_next(struct fixture *t, struct peer *p)
{
	int64_t end = time_now_ms() + 10000;

	while (time_now_ms() < end) {
		if (p->pos < p->len) {
			size_t used;
			int r = frame_decoder_feed(p->dec, p->in + p->pos, p->len - p->pos, &used,
						   &p->f);

			assert_true(r >= 0);
			p->pos += used;
			if (r == 1)
				return 1;
			continue;
		}
		if (p->eof)
			return 0;
		{
			ssize_t n = read(p->fd, p->in, sizeof(p->in));

			if (n > 0) {
				p->pos = 0;
				p->len = (size_t)n;
				continue;
			}
			if (n == 0 || (n < 0 && errno == ECONNRESET)) {
				p->eof = true;
				continue;
			}
			assert_true(errno == EAGAIN);
		}
		service_step(t->s, 5);
	}
	fail_msg("no frame within 10 s");
	return -1;
}

static void expect(struct fixture *t, struct peer *p, enum frame_type type)
{
	assert_int_equal(peer_next(t, p), 1);
	if (p->f.type != type)
		fail_msg("got %s (%.*s), wanted %s", frame_type_to_string(p->f.type),
			 p->f.type == FRAME_ERROR ? (int)p->f.len : 0, (const char *)p->f.payload,
			 frame_type_to_string(type));
}

static void expect_error(struct fixture *t, struct peer *p, const char *text)
{
	expect(t, p, FRAME_ERROR);
	if (!memmem(p->f.payload, p->f.len, text, strlen(text)))
		fail_msg("ERROR \"%.*s\" lacks \"%s\"", (int)p->f.len, (const char *)p->f.payload,
			 text);
}

static void hello(struct fixture *t, struct peer *p)
{
	peer_send(t, p, FRAME_HELLO, token, sizeof(token));
	expect(t, p, FRAME_WELCOME);
	assert_int_equal(frame_get_u32(p->f.payload), FRAME_PROTO_VERSION);
}

static void send_exec(struct fixture *t, struct peer *p, char **argv, char **envp)
{
	struct frame_exec e = {.argv = argv, .envp = envp, .cwd = ""};
	uint8_t *data;
	size_t len;

	assert_int_equal(frame_exec_encode(&e, &data, &len), 0);
	peer_send(t, p, FRAME_EXEC, data, len);
	free(data);
	peer_send(t, p, FRAME_STDIN_EOF, NULL, 0);
}

/* Collects a command's output up to EXIT: returns its exit code. */
static int collect(struct fixture *t, struct peer *p, char *out, size_t *out_len, char *err,
		   size_t *err_len)
{
	for (;;) {
		assert_int_equal(peer_next(t, p), 1);
		if (p->f.type == FRAME_STDOUT || p->f.type == FRAME_STDERR) {
			char *dst = p->f.type == FRAME_STDOUT ? out : err;
			size_t *n = p->f.type == FRAME_STDOUT ? out_len : err_len;

			memcpy(dst + *n, p->f.payload, p->f.len);
			*n += p->f.len;
		} else if (p->f.type == FRAME_EXIT) {
			enum frame_exit_kind kind;
			uint32_t value;

			assert_int_equal(frame_exit_decode(p->f.payload, p->f.len, &kind, &value),
					 0);
			assert_int_equal(kind, FRAME_EXIT_CODE);
			return (int)value;
		} else {
			fail_msg("unexpected %s", frame_type_to_string(p->f.type));
		}
	}
}

static void test_hello_and_exec(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp(t);
	char *argv[] = {"/bin/sh", "-c",
			"echo out; echo err >&2; printf %s \"$VMHPC_TOKEN\"; exit 3", NULL};
	/* The caller's own VMHPC_TOKEN is replaced by the job's. */
	char *envp[] = {"PATH=/usr/bin:/bin", "VMHPC_TOKEN=bogus", NULL};
	char out[4096], err[4096], want[256];
	size_t out_len = 0, err_len = 0, n;

	hello(t, p);
	send_exec(t, p, argv, envp);
	assert_int_equal(collect(t, p, out, &out_len, err, &err_len), 3);
	n = (size_t)snprintf(want, sizeof(want), "out\n");
	for (size_t i = 0; i < sizeof(token); i++)
		n += (size_t)snprintf(want + n, sizeof(want) - n, "%02x", token[i]);
	assert_int_equal(out_len, n);
	assert_memory_equal(out, want, n);
	assert_int_equal(err_len, 4);
	assert_memory_equal(err, "err\n", 4);
	/* INFO on the same connection afterwards. */
	peer_send(t, p, FRAME_INFO, NULL, 0);
	expect(t, p, FRAME_INFO);
	assert_int_equal(p->f.len, FRAME_INFO_BYTES);
	peer_free(p, true);
	fx_free(t);
}

static void test_bad_token(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp(t);
	uint8_t wrong[FRAME_TOKEN_BYTES];

	memcpy(wrong, token, sizeof(wrong));
	wrong[31] ^= 1;
	peer_send(t, p, FRAME_HELLO, wrong, sizeof(wrong));
	expect_error(t, p, "wrong token");
	assert_int_equal(peer_next(t, p), 0); /* closed after the ERROR */
	peer_free(p, true);
	/* EXEC before HELLO is refused as well. */
	p = peer_tcp(t);
	peer_send(t, p, FRAME_INFO, NULL, 0);
	expect_error(t, p, "first frame must be HELLO");
	assert_int_equal(peer_next(t, p), 0);
	peer_free(p, true);
	fx_free(t);
}

/* SETUP is the boot sequence's, once: the service refuses it on TCP (and closes) and ignores
 * another on the control port. */
static void test_setup_refused(void **state)
{
	struct fixture *t = fx_new();
	struct peer *c = peer_wrap(t->ctl), *p = peer_tcp(t);
	uint8_t payload[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH];
	size_t len;

	expect(t, c, FRAME_READY); /* the host connected: READY first */
	assert_int_equal(frame_setup_encode(token, "/job", payload, &len), 0);
	peer_send(t, c, FRAME_SETUP, payload, len);
	/* Ignored, not answered: the next frame is the READY that answers HELLO. */
	peer_send(t, c, FRAME_HELLO, token, sizeof(token));
	expect(t, c, FRAME_READY);
	expect(t, c, FRAME_WELCOME);
	peer_send(t, p, FRAME_SETUP, payload, len);
	expect_error(t, p, "control port only");
	assert_int_equal(peer_next(t, p), 0);
	peer_free(p, true);
	peer_free(c, false);
	fx_free(t);
}

static void test_idle_unauthenticated_timeout(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp(t);
	int64_t start = time_now_ms();

	expect_error(t, p, "no HELLO in time");
	assert_true(time_now_ms() - start >= AUTH_MS - 20);
	assert_int_equal(peer_next(t, p), 0);
	peer_free(p, true);
	fx_free(t);
}

/* Many idle connections that never say HELLO keep nobody out: not a real client over TCP,
 * not the host on the control port. (Before the pools, 64 of them refused everyone.) */
static void test_idle_connections_lock_nobody_out(void **state)
{
	struct fixture *t = fx_new();
	struct peer *idle[80], *p, *c = peer_wrap(t->ctl);
	size_t evicted = 0;

	for (size_t i = 0; i < ARRAY_SIZE(idle); i++) {
		idle[i] = peer_tcp(t);
		for (int k = 0; k < 3; k++)
			service_step(t->s, 0);
	}
	p = peer_tcp(t);
	hello(t, p);
	peer_send(t, p, FRAME_INFO, NULL, 0);
	expect(t, p, FRAME_INFO);
	expect(t, c, FRAME_READY);
	peer_send(t, c, FRAME_HELLO, token, sizeof(token));
	expect(t, c, FRAME_READY);
	expect(t, c, FRAME_WELCOME);
	/* The oldest idle ones were told why they went. */
	for (size_t i = 0; i < ARRAY_SIZE(idle); i++) {
		char b[256];
		ssize_t n = read(idle[i]->fd, b, sizeof(b));

		/* Evicted for a newer one, or (on a slow machine) timed out first. */
		if (n > FRAME_HEADER_BYTES &&
		    (memmem(b, (size_t)n, "too many unauthenticated", 24) ||
		     memmem(b, (size_t)n, "no HELLO in time", 16)))
			evicted++;
		peer_free(idle[i], true);
	}
	assert_true(evicted >= ARRAY_SIZE(idle) - 9);
	peer_free(p, true);
	peer_free(c, false);
	fx_free(t);
}

/* A peer that asks and never reads: what the service queues for it stays bounded, and once
 * it reads, every answer arrives (backpressure, no loss). */
static void test_backpressure_requests(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp_small(t);
	const size_t n_info = 60000;
	struct frame_buf b = {0};
	size_t answers = 0, max_queued = 0;
	int64_t end;

	hello(t, p);
	for (size_t i = 0; i < n_info; i++)
		assert_int_equal(frame_buf_put(&b, FRAME_INFO, NULL, 0), 0);
	/* Write as much as goes for a while, never reading. */
	end = time_now_ms() + 1500;
	while (time_now_ms() < end && b.len) {
		size_t q;

		assert_int_equal(frame_buf_flush(&b, p->fd), 0);
		service_step(t->s, 5);
		q = service_queued_bytes(t->s);
		if (q > max_queued)
			max_queued = q;
	}
	assert_true(max_queued < 1024 * 1024);
	/* Now read: everything comes, and the rest of the requests go through. */
	while (answers < n_info) {
		assert_int_equal(frame_buf_flush(&b, p->fd), 0);
		expect(t, p, FRAME_INFO);
		answers++;
	}
	assert_int_equal(b.len, 0);
	frame_buf_clear(&b);
	peer_free(p, true);
	fx_free(t);
}

/* A command writing more than the bound to a peer that does not read: the service stops
 * reading the command's pipe, and every byte arrives later. */
static void test_backpressure_output(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp(t);
	char *argv[] = {"head", "-c", "8000000", "/dev/zero", NULL};
	char *envp[] = {"PATH=/usr/bin:/bin", NULL};
	size_t got = 0, max_queued = 0;
	int64_t end;

	hello(t, p);
	send_exec(t, p, argv, envp);
	end = time_now_ms() + 1500;
	while (time_now_ms() < end) {
		size_t q;

		service_step(t->s, 5);
		q = service_queued_bytes(t->s);
		if (q > max_queued)
			max_queued = q;
	}
	assert_true(max_queued < 1024 * 1024);
	for (;;) {
		assert_int_equal(peer_next(t, p), 1);
		if (p->f.type == FRAME_EXIT)
			break;
		assert_int_equal(p->f.type, FRAME_STDOUT);
		for (size_t i = 0; i < p->f.len; i++)
			assert_int_equal(p->f.payload[i], 0);
		got += p->f.len;
	}
	assert_int_equal(got, 8000000);
	peer_free(p, true);
	fx_free(t);
}

static void test_shutdown_ends_the_loop(void **state)
{
	struct fixture *t = fx_new();
	struct peer *p = peer_tcp(t);
	int64_t end = time_now_ms() + 5000;
	int r = 0;

	hello(t, p);
	peer_send(t, p, FRAME_SHUTDOWN, NULL, 0);
	while (r == 0 && time_now_ms() < end)
		r = service_step(t->s, 10);
	assert_int_equal(r, 1);
	peer_free(p, true);
	fx_free(t);
}

/* ---- control.c: the boot sequence's SETUP reader ---- */

static void test_control_read_setup(void **state)
{
	uint8_t payload[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH], hello_frame[64];
	struct frame_buf b = {0};
	struct frame_setup got;
	size_t len;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
	/* A stray frame first (dropped), then SETUP, then the HELLO that must stay unread. */
	assert_int_equal(frame_buf_put(&b, FRAME_INFO, NULL, 0), 0);
	assert_int_equal(frame_setup_encode(token, "/home/u/job", payload, &len), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_SETUP, payload, len), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_HELLO, token, sizeof(token)), 0);
	assert_int_equal(frame_buf_flush(&b, sv[1]), 0);
	assert_int_equal(b.len, 0);
	frame_buf_clear(&b);
	assert_int_equal(control_read_setup(sv[0], 2000, &got), 0);
	assert_memory_equal(got.token, token, sizeof(token));
	assert_string_equal(got.share, "/home/u/job");
	assert_int_equal(read(sv[0], hello_frame, sizeof(hello_frame)),
			 FRAME_HEADER_BYTES + FRAME_TOKEN_BYTES);
	assert_int_equal(hello_frame[2], FRAME_HELLO);
	/* Nothing: a bounded wait. */
	{
		int64_t start = time_now_ms();

		assert_int_equal(control_read_setup(sv[0], 200, &got), -ETIMEDOUT);
		assert_true(time_now_ms() - start >= 190);
	}
	/* A SETUP with a relative path cannot be used. */
	assert_int_equal(frame_setup_encode(token, "/x", payload, &len), 0);
	payload[FRAME_TOKEN_BYTES] = 'x';
	assert_int_equal(frame_buf_put(&b, FRAME_SETUP, payload, len), 0);
	assert_int_equal(frame_buf_flush(&b, sv[1]), 0);
	frame_buf_clear(&b);
	assert_int_equal(control_read_setup(sv[0], 2000, &got), -EBADMSG);
	/* Garbage: the stream cannot be followed. */
	assert_int_equal(write(sv[1], "GET / HTTP/1.0\r\n", 16), 16);
	assert_int_equal(control_read_setup(sv[0], 2000, &got), -EBADMSG);
	close(sv[0]);
	close(sv[1]);
}

static void test_control_share_valid(void **state)
{
	assert_true(control_share_valid("/home/user/job"));
	assert_true(control_share_valid("/home/user/my job"));
	assert_false(control_share_valid("/"));
	assert_false(control_share_valid("home/user"));
	assert_false(control_share_valid("/home/../etc"));
	assert_false(control_share_valid("/home/./x"));
	assert_false(control_share_valid("/home//x"));
	assert_false(control_share_valid("/home/x/"));
	assert_false(control_share_valid("/home/x/.."));
	assert_false(control_share_valid("/proc/1"));
	assert_false(control_share_valid("/run"));
	assert_false(control_share_valid("/dev/shm"));
	assert_true(control_share_valid("/devel"));
	assert_false(control_share_valid("/home/a\nb"));
}

/* The UCX_TLS rewrite (docs/bypass.md): only with the device and the transport, only for an
 * explicit list that does not name ivshmem already. */
static void test_shmdev_ucx_tls(void **state)
{
	struct shmdev d = {.present = true, .ucx = true};
	char path[] = "/tmp/test-shmdev-XXXXXX";
	char *t;
	int fd;

	(void)state;
	t = shmdev_ucx_tls(&d, "UCX_TLS=tcp,sysv,posix,self");
	assert_string_equal(t, "UCX_TLS=ivshmem,tcp,sysv,posix,self");
	free(t);
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=^cma"));
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=all"));
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=ivshmem,self"));
	assert_null(shmdev_ucx_tls(&d, "UCX_NET_DEVICES=eth0"));
	d.ucx = false;
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=tcp,self"));
	d.ucx = true;
	d.present = false;
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=tcp,self"));
	assert_null(shmdev_ucx_tls(NULL, "UCX_TLS=tcp,self"));
	/* The module is told by its symbol; Debian's CMA module or another file is not it. */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\177ELF....uct_cma_init...", 24), 24);
	close(fd);
	assert_int_equal(shmdev_is_ucx_transport(path), 0);
	fd = open(path, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "uct_ivshmem_init", 16), 16);
	close(fd);
	assert_int_equal(shmdev_is_ucx_transport(path), 1);
	unlink(path);
	assert_int_equal(shmdev_is_ucx_transport("/nonexistent/libuct_cma.so.0"), 0);
}

/* A fake sysfs PCI tree with one device dir holding vendor, device and a resource2 file. */
static void fake_pci_device(const char *root, const char *addr, const char *vendor,
			    const char *device, size_t region_bytes)
{
	char path[512];
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", root, addr);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/%s/vendor", root, addr);
	assert_non_null(f = fopen(path, "w"));
	fprintf(f, "%s\n", vendor);
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s/device", root, addr);
	assert_non_null(f = fopen(path, "w"));
	fprintf(f, "%s\n", device);
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s/resource2", root, addr);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)region_bytes), 0);
	close(fd);
}

/* The guest's side of the bad input (docs/bypass.md): asked for a channel, vmhpc-init
 * finds no device (another PCI device only), or a device whose region is another job's, of
 * another layout version, or unformatted: each gives one line saying MPI uses TCP, no
 * variables for commands and no UCX_TLS rewrite; the job's own region is taken. */
static void test_shmdev_setup(void **state)
{
	char root[] = "/tmp/test-shmdev-pci-XXXXXX", res[600];
	uint8_t job_token[32] = {1, 2, 3}, other[32] = {9};
	const size_t size = 1u << 20;
	const char *message = NULL;
	struct shmdev d;
	char *error = NULL;

	(void)state;
	assert_non_null(mkdtemp(root));
	/* Not asked for (no vmhpc.shm_node): nothing, no message. */
	assert_int_equal(
	    shmdev_setup(&d, root, false, 0, 0, job_token, sizeof(job_token), &message), 0);
	assert_false(d.present);
	assert_null(message);
	/* Asked for, no ivshmem device (a virtio-net one only). */
	fake_pci_device(root, "0000:00:02.0", "0x1af4", "0x1000", 4096);
	assert_int_equal(shmdev_setup(&d, root, true, 1, 0, job_token, sizeof(job_token), &message),
			 -ENODEV);
	assert_false(d.present);
	assert_non_null(strstr(message, "no shared-memory device"));
	assert_non_null(strstr(message, "uses TCP"));
	assert_null(strchr(message, '\n'));
	assert_null(shmdev_ucx_tls(&d, "UCX_TLS=tcp,self"));
	/* The device, holding nothing formatted. */
	fake_pci_device(root, "0000:00:03.0", "0x1af4", "0x1110", size);
	snprintf(res, sizeof(res), "%s/0000:00:03.0/resource2", root);
	message = NULL;
	assert_int_equal(shmdev_setup(&d, root, true, 1, 0, job_token, sizeof(job_token), &message),
			 -EPROTO);
	assert_non_null(strstr(message, "no region of this job"));
	assert_false(d.present);
	/* Another job's region. */
	unlink(res);
	assert_int_equal(
	    shm_region_create(res, size, 2, shm_token_hash(other, sizeof(other)), &error), 0);
	message = NULL;
	assert_int_equal(shmdev_setup(&d, root, true, 1, 0, job_token, sizeof(job_token), &message),
			 -EPROTO);
	assert_non_null(strstr(message, "uses TCP"));
	assert_false(d.present);
	/* This job's region of another layout version (byte 8: the version). */
	unlink(res);
	assert_int_equal(
	    shm_region_create(res, size, 2, shm_token_hash(job_token, sizeof(job_token)), &error),
	    0);
	int fd = open(res, O_RDWR);
	uint32_t version = SHM_VERSION + 1;
	assert_int_equal(pwrite(fd, &version, sizeof(version), 8), (ssize_t)sizeof(version));
	message = NULL;
	assert_int_equal(shmdev_setup(&d, root, true, 1, 0, job_token, sizeof(job_token), &message),
			 -EPROTO);
	assert_false(d.present);
	/* The right one: found, the variables for commands set. */
	version = SHM_VERSION;
	assert_int_equal(pwrite(fd, &version, sizeof(version), 8), (ssize_t)sizeof(version));
	close(fd);
	/* ... but not by a VM of another node of a job across nodes (group 2: its own key). */
	message = NULL;
	assert_int_equal(shmdev_setup(&d, root, true, 1, 2, job_token, sizeof(job_token), &message),
			 -EPROTO);
	assert_false(d.present);
	message = NULL;
	assert_int_equal(shmdev_setup(&d, root, true, 1, 0, job_token, sizeof(job_token), &message),
			 0);
	assert_true(d.present);
	assert_null(message);
	assert_string_equal(d.resource, res);
	assert_string_equal(d.env[2], "VMHPC_SHM_NODE=1");
	if (d.base)
		munmap(d.base, d.size_bytes);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hello_and_exec),
	    cmocka_unit_test(test_shmdev_ucx_tls),
	    cmocka_unit_test(test_shmdev_setup),
	    cmocka_unit_test(test_bad_token),
	    cmocka_unit_test(test_setup_refused),
	    cmocka_unit_test(test_idle_unauthenticated_timeout),
	    cmocka_unit_test(test_idle_connections_lock_nobody_out),
	    cmocka_unit_test(test_backpressure_requests),
	    cmocka_unit_test(test_backpressure_output),
	    cmocka_unit_test(test_shutdown_ends_the_loop),
	    cmocka_unit_test(test_control_read_setup),
	    cmocka_unit_test(test_control_share_valid),
	};
	sigset_t mask;

	/* As vmhpc-init does: the service reads these from a signalfd; SIGPIPE stays blocked
	 * for the stdin pipes of commands that exit early. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGPWR);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGPIPE);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
