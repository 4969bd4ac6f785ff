/* Unit tests of the VM launcher layer (src/vm/): the QMP client against a scripted fake
 * peer in a forked child, the QEMU command-line builder (pure), the QEMU process
 * handling and the accelerator probe + cache against a fake QEMU (a shell script), and,
 * when VMHPC_TEST_KERNEL and VMHPC_TEST_INITRD name a guest, the same against the real
 * qemu-system-x86_64. `make test` (scripts/test-all.sh) builds a small image and passes
 * its kernel and initramfs so; there, as root with QEMU installed, a skip is a failure. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "util/fsutil.h"
#include "vm/accel.h"
#include "vm/qemu.h"
#include "vm/qmp.h"

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A temporary directory, removed at teardown even when the test fails; with the fake
 * QEMU in it and $VMHPC_QEMU naming it (setup_fake_qemu). */
struct fake_qemu {
	char *dir;
	char *path;
};

static int setup_tmpdir(void **state)
{
	struct fake_qemu *q = calloc(1, sizeof(*q));

	if (!q || fs_mkdtemp("/tmp", "test-qmp-", &q->dir) < 0) {
		free(q);
		return -1;
	}
	*state = q;
	return 0;
}

static int teardown_tmpdir(void **state)
{
	struct fake_qemu *q = *state;

	unsetenv("VMHPC_QEMU");
	unsetenv("FAKE_KVM");
	unsetenv("FAKE_TCG");
	unsetenv("FAKE_VERSION");
	unsetenv("FAKE_OUT");
	if (q) {
		if (q->dir)
			fs_rm_rf(q->dir);
		free(q->path);
		free(q->dir);
		free(q);
	}
	return 0;
}

/* ---- the fake QMP peer (runs in a forked child; failures exit non-zero) ---- */

#define PEER_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fake peer: %s:%d: check failed: %s\n", __FILE__,          \
				__LINE__, #cond);                                                  \
			_exit(1);                                                                  \
		}                                                                                  \
	} while (0)

struct peer {
	int fd;
	FILE *in;
};

static void peer_write(struct peer *p, const char *text)
{
	size_t len = strlen(text);

	while (len > 0) {
		ssize_t n = send(p->fd, text, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		/* The client may rightly have hung up (it refused what we sent). */
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			return;
		PEER_CHECK(n > 0);
		text += n;
		len -= (size_t)n;
	}
}

static void peer_sendf(struct peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void peer_sendf(struct peer *p, const char *fmt, ...)
{
	char *text;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&text, fmt, ap);
	va_end(ap);
	PEER_CHECK(n >= 0);
	peer_write(p, text);
	peer_write(p, "\r\n"); /* QEMU ends its lines so */
	free(text);
}

/* Reads one command; returns its "execute" (static buffer) and id. NULL at EOF. */
static const char *peer_read(struct peer *p, json_int_t *ret_id, json_t **ret_args)
{
	static char execute[128];
	char *line = NULL;
	size_t cap = 0;
	json_t *msg;

	if (getline(&line, &cap, p->in) < 0) {
		free(line);
		return NULL;
	}
	msg = json_loads(line, 0, NULL);
	free(line);
	PEER_CHECK(json_is_object(msg));
	PEER_CHECK(json_is_string(json_object_get(msg, "execute")));
	PEER_CHECK(json_is_integer(json_object_get(msg, "id")));
	snprintf(execute, sizeof(execute), "%s",
		 json_string_value(json_object_get(msg, "execute")));
	*ret_id = json_integer_value(json_object_get(msg, "id"));
	if (ret_args)
		*ret_args = json_incref(json_object_get(msg, "arguments"));
	json_decref(msg);
	return execute;
}

static void peer_expect(struct peer *p, const char *execute, json_int_t *ret_id)
{
	const char *got = peer_read(p, ret_id, NULL);

	PEER_CHECK(got && strcmp(got, execute) == 0);
}

#define GREETING                                                                                   \
	"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "         \
	"\"package\": \"fake\"}, \"capabilities\": [\"oob\"]}}"

static void peer_handshake(struct peer *p)
{
	json_int_t id;

	peer_sendf(p, GREETING);
	peer_expect(p, "qmp_capabilities", &id);
	peer_sendf(p, "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}", id);
}

typedef void (*peer_script)(struct peer *p);

struct fake {
	pid_t pid;
	struct qmp_client *client;
};

static void fake_start(struct fake *f, peer_script script)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		struct peer p = {.fd = sv[1]};

		close(sv[0]);
		p.in = fdopen(dup(sv[1]), "r");
		PEER_CHECK(p.in);
		script(&p);
		_exit(0);
	}
	close(sv[1]);
	assert_int_equal(qmp_client_new(sv[0], &f->client), 0);
}

/* Frees the client (the peer sees EOF) and checks the peer's script passed. */
static void fake_end(struct fake *f)
{
	int status;

	f->client = qmp_client_free(f->client);
	assert_int_equal(waitpid(f->pid, &status, 0), f->pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* Waits for EOF from the client, so the peer outlives everything the test sends. */
static void peer_wait_eof(struct peer *p)
{
	json_int_t id;

	while (peer_read(p, &id, NULL))
		;
}

/* ---- event and reply recorders ---- */

struct recorder {
	char events[16][32];
	size_t n_events;
	char replies[16][64]; /* "cmd:echo" or "err:N:desc" in arrival order */
	size_t n_replies;
};

static void record_event(struct qmp_client *c, const char *event, json_t *data, void *userdata)
{
	struct recorder *r = userdata;

	if (r->n_events < 16)
		snprintf(r->events[r->n_events++], sizeof(r->events[0]), "%s", event);
}

static void record_reply(struct qmp_client *c, int error, json_t *result, const char *desc,
			 void *userdata)
{
	struct recorder *r = userdata;

	if (r->n_replies >= 16)
		return;
	if (error)
		snprintf(r->replies[r->n_replies++], sizeof(r->replies[0]), "err:%d:%s", error,
			 desc ? desc : "");
	else
		snprintf(r->replies[r->n_replies++], sizeof(r->replies[0]), "ok:%s",
			 json_string_value(json_object_get(result, "echo")));
}

static void pump_until(struct qmp_client *c, struct recorder *r, size_t n_replies)
{
	int64_t deadline = now_ms() + 5000;

	while (r->n_replies < n_replies && now_ms() < deadline)
		if (qmp_wait(c, 100) < 0)
			break;
}

/* ---- QMP tests ---- */

static void script_out_of_order(struct peer *p)
{
	json_int_t id[3];
	const char *names[3];
	char saved[3][32];

	peer_handshake(p);
	for (int i = 0; i < 3; i++) {
		names[i] = peer_read(p, &id[i], NULL);
		PEER_CHECK(names[i]);
		snprintf(saved[i], sizeof(saved[i]), "%s", names[i]);
	}
	PEER_CHECK(strcmp(saved[0], "query-status") == 0);
	PEER_CHECK(strcmp(saved[1], "query-name") == 0);
	PEER_CHECK(strcmp(saved[2], "query-version") == 0);
	/* ids are distinct */
	PEER_CHECK(id[0] != id[1] && id[1] != id[2] && id[0] != id[2]);
	/* answer 3, event, 1, event, 2; the id comes first in one reply, last in others */
	peer_sendf(p, "{\"return\": {\"echo\": \"%s\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		   saved[2], id[2]);
	peer_sendf(p,
		   "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}");
	peer_sendf(p, "{\"id\": %" JSON_INTEGER_FORMAT ", \"return\": {\"echo\": \"%s\"}}", id[0],
		   saved[0]);
	peer_sendf(p, "{\"event\": \"POWERDOWN\", \"data\": {}, \"timestamp\": {}}");
	/* a reply nobody asked for is dropped */
	peer_sendf(p, "{\"return\": {\"echo\": \"stray\"}, \"id\": 987654}");
	peer_sendf(p, "{\"return\": {\"echo\": \"%s\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		   saved[1], id[1]);
	peer_wait_eof(p);
}

static void test_out_of_order_replies(void **state)
{
	struct fake f;
	struct recorder rec = {0};

	fake_start(&f, script_out_of_order);
	qmp_set_event_callback(f.client, record_event, &rec);
	/* queued before the greeting even arrived: they go out after the handshake */
	assert_int_equal(qmp_send(f.client, "query-status", NULL, record_reply, &rec, NULL), 0);
	assert_int_equal(qmp_send(f.client, "query-name", NULL, record_reply, &rec, NULL), 0);
	assert_int_equal(qmp_send(f.client, "query-version", NULL, record_reply, &rec, NULL), 0);
	assert_false(qmp_is_ready(f.client));
	assert_int_equal(qmp_pending(f.client), 3);
	pump_until(f.client, &rec, 3);
	assert_true(qmp_is_ready(f.client));
	assert_string_equal(qmp_qemu_version(f.client), "7.2.22");
	assert_int_equal(rec.n_replies, 3);
	assert_string_equal(rec.replies[0], "ok:query-version");
	assert_string_equal(rec.replies[1], "ok:query-status");
	assert_string_equal(rec.replies[2], "ok:query-name");
	assert_int_equal(rec.n_events, 2);
	assert_string_equal(rec.events[0], "STOP");
	assert_string_equal(rec.events[1], "POWERDOWN");
	assert_int_equal(qmp_pending(f.client), 0);
	assert_int_equal(qmp_is_broken(f.client), 0);
	fake_end(&f);
}

static void script_blocking(struct peer *p)
{
	json_int_t id;
	json_t *args = NULL;
	const char *cmd;

	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	/* events before the reply arrive during qmp_command */
	peer_sendf(p, "{\"event\": \"STOP\", \"timestamp\": {}}");
	peer_sendf(p, "{\"event\": \"RESUME\", \"timestamp\": {}}");
	peer_sendf(p,
		   "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": "
		   "%" JSON_INTEGER_FORMAT "}",
		   id);
	cmd = peer_read(p, &id, &args);
	PEER_CHECK(cmd && strcmp(cmd, "human-monitor-command") == 0);
	PEER_CHECK(json_is_object(args));
	PEER_CHECK(strcmp(json_string_value(json_object_get(args, "command-line")), "info name") ==
		   0);
	json_decref(args);
	peer_sendf(p, "{\"return\": \"vm0\\r\\n\", \"id\": %" JSON_INTEGER_FORMAT "}", id);
	peer_expect(p, "quit", &id);
	/* as QEMU does: the SHUTDOWN event, the reply, then the socket closes */
	peer_sendf(p, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": "
		      "\"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}");
	peer_sendf(p, "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}", id);
}

static void test_blocking_command(void **state)
{
	struct fake f;
	struct recorder rec = {0};
	json_t *reply = NULL, *args;

	fake_start(&f, script_blocking);
	qmp_set_event_callback(f.client, record_event, &rec);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, &reply, 5000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "status")), "running");
	assert_true(json_is_true(json_object_get(reply, "running")));
	json_decref(reply);
	assert_int_equal(rec.n_events, 2);
	assert_string_equal(rec.events[0], "STOP");
	assert_string_equal(rec.events[1], "RESUME");

	args = json_pack("{s:s}", "command-line", "info name");
	assert_int_equal(qmp_command(f.client, "human-monitor-command", args, &reply, 5000), 0);
	json_decref(args);
	assert_string_equal(json_string_value(reply), "vm0\r\n");
	json_decref(reply);

	assert_int_equal(qmp_command(f.client, "quit", NULL, NULL, 5000), 0);
	assert_int_equal(rec.n_events, 3);
	assert_string_equal(rec.events[2], "SHUTDOWN");
	/* then the peer is gone: the client notices and stays broken */
	for (int i = 0; i < 50 && !qmp_is_broken(f.client); i++)
		qmp_wait(f.client, 100);
	assert_int_equal(qmp_is_broken(f.client), -ECONNRESET);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 1000), -ECONNRESET);
	assert_int_equal(qmp_poll_events(f.client), 0);
	fake_end(&f);
}

static void script_errors(struct peer *p)
{
	json_int_t id;

	peer_handshake(p);
	peer_expect(p, "no-such-command", &id);
	peer_sendf(p,
		   "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
		   "no-such-command has not been found\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		   id);
	peer_expect(p, "device_del", &id);
	peer_sendf(
	    p,
	    "{\"id\": %" JSON_INTEGER_FORMAT
	    ", \"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}",
	    id);
	peer_expect(p, "cont", &id);
	peer_sendf(p,
		   "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": "
		   "%" JSON_INTEGER_FORMAT "}",
		   id);
	/* an error without an id (QEMU: input it could not parse) waits for nobody */
	peer_sendf(p, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}");
	peer_expect(p, "query-status", &id);
	peer_sendf(p, "{\"return\": {\"status\": \"paused\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		   id);
	peer_wait_eof(p);
}

static void test_error_replies(void **state)
{
	struct fake f;
	json_t *reply = NULL, *args;

	fake_start(&f, script_errors);
	assert_int_equal(qmp_command(f.client, "no-such-command", NULL, &reply, 5000), -EOPNOTSUPP);
	assert_null(reply);
	assert_string_equal(qmp_last_error(f.client),
			    "CommandNotFound: The command no-such-command has not been found");
	args = json_pack("{s:s}", "id", "x");
	assert_int_equal(qmp_command(f.client, "device_del", args, &reply, 5000), -ENODEV);
	json_decref(args);
	assert_string_equal(qmp_last_error(f.client), "DeviceNotFound: Device 'x' not found");
	assert_int_equal(qmp_command(f.client, "cont", NULL, &reply, 5000), -EIO);
	assert_string_equal(qmp_last_error(f.client), "GenericError: nope");
	/* errors do not break the connection */
	assert_int_equal(qmp_command(f.client, "query-status", NULL, &reply, 5000), 0);
	assert_null(qmp_last_error(f.client));
	assert_string_equal(json_string_value(json_object_get(reply, "status")), "paused");
	json_decref(reply);
	fake_end(&f);
}

static void script_oversize(struct peer *p)
{
	json_int_t id;
	char *big = malloc(3000);

	PEER_CHECK(big);
	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	memset(big, 'x', 2999);
	big[2999] = '\0';
	peer_sendf(p, "{\"return\": {\"junk\": \"%s\"}, \"id\": %" JSON_INTEGER_FORMAT "}", big,
		   id);
	free(big);
	peer_wait_eof(p);
}

static void script_oversize_no_newline(struct peer *p)
{
	json_int_t id;
	char *big = malloc(1 << 20);

	PEER_CHECK(big);
	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	memset(big, ' ', (1 << 20) - 1);
	big[(1 << 20) - 1] = '\0';
	/* a megabyte of blanks and no newline: the client must stop buffering */
	peer_write(p, "{\"return\": ");
	peer_write(p, big);
	free(big);
	peer_wait_eof(p);
}

static void test_oversize_line(void **state)
{
	struct fake f;
	struct recorder rec = {0};

	fake_start(&f, script_oversize);
	qmp_set_line_max(f.client, 1024);
	assert_int_equal(qmp_send(f.client, "query-status", NULL, record_reply, &rec, NULL), 0);
	pump_until(f.client, &rec, 1);
	assert_int_equal(rec.n_replies, 1);
	assert_string_equal(rec.replies[0], "err:-90:"); /* -EMSGSIZE */
	assert_int_equal(qmp_is_broken(f.client), -EMSGSIZE);
	assert_int_equal(qmp_send(f.client, "query-status", NULL, NULL, NULL, NULL), -EMSGSIZE);
	fake_end(&f);

	fake_start(&f, script_oversize_no_newline);
	qmp_set_line_max(f.client, 4096);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -EMSGSIZE);
	fake_end(&f);
}

static void script_garbage(struct peer *p)
{
	json_int_t id;

	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	peer_write(p, "\x01\xff garbage {{{ \r\n");
	peer_wait_eof(p);
}

static void script_not_object(struct peer *p)
{
	json_int_t id;

	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	/* well-formed JSON of another shape is ignored; a non-object is refused */
	peer_sendf(p, "{\"something\": \"else\"}");
	peer_sendf(p, "[1, 2, 3]");
	peer_wait_eof(p);
}

static void script_bad_greeting(struct peer *p)
{
	peer_sendf(p, "{\"return\": {}, \"id\": 1}");
	peer_wait_eof(p);
}

static void script_caps_refused(struct peer *p)
{
	json_int_t id;

	peer_sendf(p, GREETING);
	peer_expect(p, "qmp_capabilities", &id);
	peer_sendf(p,
		   "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": "
		   "%" JSON_INTEGER_FORMAT "}",
		   id);
	peer_wait_eof(p);
}

static void test_garbage(void **state)
{
	struct fake f;

	fake_start(&f, script_garbage);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -EBADMSG);
	assert_int_equal(qmp_is_broken(f.client), -EBADMSG);
	fake_end(&f);

	fake_start(&f, script_not_object);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -EBADMSG);
	fake_end(&f);

	fake_start(&f, script_bad_greeting);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -EBADMSG);
	assert_false(qmp_is_ready(f.client));
	fake_end(&f);

	fake_start(&f, script_caps_refused);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -EPROTO);
	fake_end(&f);
}

static void script_close_mid_reply(struct peer *p)
{
	json_int_t id;

	peer_handshake(p);
	peer_expect(p, "query-status", &id);
	peer_write(p, "{\"return\": {\"status\": \"runn");
	/* and the peer exits: the socket closes */
}

static void script_close_before_greeting(struct peer *p) {}

static void test_peer_closes(void **state)
{
	struct fake f;
	struct recorder rec = {0};

	fake_start(&f, script_close_mid_reply);
	assert_int_equal(qmp_send(f.client, "query-status", NULL, record_reply, &rec, NULL), 0);
	assert_int_equal(qmp_send(f.client, "query-name", NULL, record_reply, &rec, NULL), 0);
	pump_until(f.client, &rec, 2);
	/* every pending command gets the error, in order */
	assert_int_equal(rec.n_replies, 2);
	assert_string_equal(rec.replies[0], "err:-104:"); /* -ECONNRESET */
	assert_string_equal(rec.replies[1], "err:-104:");
	fake_end(&f);

	fake_start(&f, script_close_before_greeting);
	assert_int_equal(qmp_command(f.client, "query-status", NULL, NULL, 5000), -ECONNRESET);
	fake_end(&f);
}

static void script_slow(struct peer *p)
{
	json_int_t id1, id2;

	peer_handshake(p);
	peer_expect(p, "query-status", &id1);
	peer_expect(p, "query-name", &id2);
	/* the first reply comes after the client gave up on it */
	peer_sendf(p, "{\"return\": {\"echo\": \"late\"}, \"id\": %" JSON_INTEGER_FORMAT "}", id1);
	peer_sendf(p, "{\"return\": {\"echo\": \"query-name\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		   id2);
	peer_wait_eof(p);
}

static void test_timeout(void **state)
{
	struct fake f;
	json_t *reply = NULL;
	int64_t t0;

	fake_start(&f, script_slow);
	t0 = now_ms();
	assert_int_equal(qmp_command(f.client, "query-status", NULL, &reply, 300), -ETIMEDOUT);
	assert_true(now_ms() - t0 >= 290);
	assert_true(now_ms() - t0 < 3000);
	assert_null(reply);
	assert_int_equal(qmp_pending(f.client), 0);
	/* the connection stays usable; the late reply is dropped, not misdelivered */
	assert_int_equal(qmp_command(f.client, "query-name", NULL, &reply, 5000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "echo")), "query-name");
	json_decref(reply);
	fake_end(&f);
}

static void script_hold(struct peer *p)
{
	/* greets, then answers nothing (the client is freed meanwhile) */
	peer_sendf(p, GREETING);
	peer_wait_eof(p);
}

static void test_cancel_and_free(void **state)
{
	struct fake f;
	struct recorder rec = {0};
	uint64_t id;

	fake_start(&f, script_hold);
	assert_int_equal(qmp_send(f.client, "query-status", NULL, record_reply, &rec, &id), 0);
	assert_int_equal(qmp_send(f.client, "query-name", NULL, record_reply, &rec, NULL), 0);
	assert_int_equal(qmp_cancel(f.client, id), 0);
	assert_int_equal(qmp_cancel(f.client, id), -ENOENT);
	assert_int_equal(qmp_send(f.client, "", NULL, NULL, NULL, NULL), -EINVAL);
	/* freeing with a command pending tells its callback */
	f.client = qmp_client_free(f.client);
	assert_int_equal(rec.n_replies, 1);
	assert_string_equal(rec.replies[0], "err:-125:"); /* -ECANCELED */
	fake_end(&f);
	assert_null(qmp_client_free(NULL));
}

static void test_connect_path(void **state)
{
	_cleanup_qmp_client_ struct qmp_client *c = NULL;
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct fake_qemu *q = *state;
	char *path;
	json_t *reply = NULL;
	int lfd, status;
	pid_t pid;

	path = fs_path_join(q->dir, "qmp.sock");
	assert_int_equal(qmp_connect(path, &c), -ENOENT);
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct peer p;
		json_int_t id;

		p.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		PEER_CHECK(p.fd >= 0);
		p.in = fdopen(dup(p.fd), "r");
		peer_handshake(&p);
		peer_expect(&p, "query-status", &id);
		peer_sendf(
		    &p, "{\"return\": {\"status\": \"running\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
		    id);
		peer_wait_eof(&p);
		_exit(0);
	}
	close(lfd);
	assert_int_equal(qmp_connect(path, &c), 0);
	assert_int_equal(qmp_command(c, "query-status", NULL, &reply, 5000), 0);
	json_decref(reply);
	c = qmp_client_free(c);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	free(path);
}

static void test_schema(void **state)
{
	json_t *schema = json_loads(
	    "[{\"name\": \"query-status\", \"meta-type\": \"command\", \"arg-type\": \"0\"},"
	    " {\"name\": \"SHUTDOWN\", \"meta-type\": \"event\"},"
	    " {\"name\": \"123\", \"meta-type\": \"object\", \"members\":"
	    "   [{\"name\": \"mem-path\", \"type\": \"str\"}, {\"name\": \"readonly\"}]},"
	    " {\"name\": \"str\", \"meta-type\": \"builtin\"}, 17, null]",
	    0, NULL);

	assert_non_null(schema);
	assert_true(qmp_schema_has_command(schema, "query-status"));
	assert_false(qmp_schema_has_command(schema, "SHUTDOWN"));
	assert_false(qmp_schema_has_command(schema, "system_powerdown"));
	assert_true(qmp_schema_has_member(schema, "readonly"));
	assert_false(qmp_schema_has_member(schema, "query-status"));
	assert_false(qmp_schema_has_command(NULL, "x"));
	json_decref(schema);
}

/* ---- the command line ---- */

static ssize_t argv_find(char **argv, const char *opt, const char *value)
{
	for (size_t i = 0; argv[i]; i++)
		if (strcmp(argv[i], opt) == 0 &&
		    (!value || (argv[i + 1] && strcmp(argv[i + 1], value) == 0)))
			return (ssize_t)i;
	return -1;
}

static bool argv_has(char **argv, const char *opt, const char *value)
{
	return argv_find(argv, opt, value) >= 0;
}

static size_t argv_count(char **argv, const char *opt)
{
	size_t n = 0;

	for (size_t i = 0; argv[i]; i++)
		n += strcmp(argv[i], opt) == 0;
	return n;
}

static struct qemu_vm_config full_config(void)
{
	return (struct qemu_vm_config){
	    .name = "job1-vm0",
	    .qemu = "/usr/bin/qemu-system-x86_64",
	    .accel = ACCEL_TCG,
	    .machine = "q35",
	    .vcpus = 2,
	    .mem_mb = 256,
	    .kernel = "/cache/k",
	    .initrd = "/cache/i",
	    .cmdline = "console=ttyS0 quiet swiotlb=noforce",
	    .root_image = "/cache/root,v1.img",
	    .root_size_bytes = 79691776, /* 76 MiB */
	    .root_kind = QEMU_ROOT_PMEM,
	    .virtiofs_socket = "/run/job1/fs.sock",
	    .net = QEMU_NET_TAP,
	    .net_tap = "tap0",
	    .mac = "52:54:00:00:00:01",
	    .control_socket = "/run/job1/vm0.ctl",
	    .console_log = "/run/job1/vm0.console",
	};
}

static void test_argv_full(void **state)
{
	struct qemu_vm_config c = full_config();
	char **argv = NULL, *error = NULL;

	assert_int_equal(qemu_build_argv(&c, &argv, &error), 0);
	assert_null(error);
	assert_string_equal(argv[0], "/usr/bin/qemu-system-x86_64");
	assert_true(argv_has(argv, "-name", "guest=job1-vm0"));
	assert_true(argv_has(argv, "-nodefaults", NULL));
	assert_true(argv_has(argv, "-no-user-config", NULL));
	assert_true(argv_has(argv, "-nographic", NULL));
	assert_true(argv_has(argv, "-no-reboot", NULL));
	assert_true(
	    argv_has(argv, "-machine", "q35,vmport=off,sata=off,smbus=off,memory-backend=mem"));
	assert_true(argv_has(argv, "-accel", "tcg,tb-size=64"));
	assert_false(argv_has(argv, "-cpu", NULL));
	assert_true(argv_has(argv, "-smp", "2"));
	/* 76 MiB root: device area rounded up to 128 MiB */
	assert_true(argv_has(argv, "-m", "256M,slots=1,maxmem=384M"));
	assert_true(argv_has(argv, "-object", "memory-backend-memfd,id=mem,size=256M,share=on"));
	assert_true(argv_has(argv, "-kernel", "/cache/k"));
	assert_true(argv_has(argv, "-initrd", "/cache/i"));
	assert_true(argv_has(argv, "-append", "console=ttyS0 quiet swiotlb=noforce"));
	/* the ',' in the path is doubled */
	assert_true(argv_has(argv, "-object",
			     "memory-backend-file,id=rootmem,mem-path=/cache/root,,v1.img,share=on,"
			     "readonly=on,size=79691776"));
	assert_true(argv_has(argv, "-device", "virtio-pmem-pci,memdev=rootmem,id=root"));
	assert_true(argv_has(argv, "-chardev", "socket,id=fs0,path=/run/job1/fs.sock"));
	assert_true(argv_has(argv, "-device", "vhost-user-fs-pci,chardev=fs0,tag=job"));
	assert_true(argv_has(argv, "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no"));
	assert_true(
	    argv_has(argv, "-device", "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:00:00:01"));
	assert_true(
	    argv_has(argv, "-chardev", "socket,id=ctl,path=/run/job1/vm0.ctl,server=on,wait=off"));
	assert_true(argv_has(argv, "-device", "virtio-serial-pci,id=vser0,max_ports=2"));
	assert_true(argv_has(argv, "-device",
			     "virtserialport,bus=vser0.0,chardev=ctl,name=org.vmhpc.control"));
	assert_true(argv_has(argv, "-chardev", "socket,id=qmp,fd=3"));
	assert_true(argv_has(argv, "-mon", "chardev=qmp,mode=control"));
	assert_true(argv_has(argv, "-chardev", "file,id=console,path=/run/job1/vm0.console"));
	assert_true(argv_has(argv, "-serial", "chardev:console"));
	assert_int_equal(argv_count(argv, "-blockdev"), 0);
	assert_false(argv_has(argv, "-global", NULL));
	assert_false(argv_has(argv, "-device", "ivshmem-plain,memdev=shm"));
	qemu_argv_free(argv);

	/* The job's shared-memory region: a shared file backend and ivshmem-plain. */
	c.shm_path = "/run/job1/shm";
	c.shm_size_bytes = 8u << 20;
	assert_int_equal(qemu_build_argv(&c, &argv, &error), 0);
	assert_true(
	    argv_has(argv, "-object",
		     "memory-backend-file,id=shm,mem-path=/run/job1/shm,size=8388608,share=on"));
	assert_true(argv_has(argv, "-device", "ivshmem-plain,memdev=shm"));
	qemu_argv_free(argv);
}

static void test_argv_variants(void **state)
{
	struct qemu_vm_config c = {
	    .name = "v",
	    .accel = ACCEL_KVM,
	    .mem_mb = 128,
	    .kernel = "/k",
	    .qmp_socket = "/run/q.sock",
	    .console_pipe = true,
	    .net = QEMU_NET_TAP,
	    .net_tap = "vmhpc-t0",
	};
	char **argv = NULL;

	/* KVM: -cpu host; no initrd; no root; qmp on a path; console on stdio; tap */
	unsetenv("VMHPC_QEMU");
	assert_int_equal(qemu_build_argv(&c, &argv, NULL), 0);
	assert_string_equal(argv[0], "qemu-system-x86_64");
	assert_true(argv_has(argv, "-accel", "kvm"));
	assert_true(argv_has(argv, "-cpu", "host"));
	assert_true(argv_has(argv, "-machine", "q35,vmport=off,sata=off,smbus=off"));
	assert_true(argv_has(argv, "-m", "128M"));
	assert_true(argv_has(argv, "-smp", "1"));
	assert_true(argv_has(argv, "-append", ""));
	assert_false(argv_has(argv, "-initrd", NULL));
	assert_false(argv_has(argv, "-object", NULL));
	assert_true(
	    argv_has(argv, "-chardev", "socket,id=qmp,path=/run/q.sock,server=on,wait=off"));
	assert_true(argv_has(argv, "-chardev", "stdio,id=console,signal=off"));
	assert_true(
	    argv_has(argv, "-netdev", "tap,id=net0,ifname=vmhpc-t0,script=no,downscript=no"));
	assert_true(argv_has(argv, "-device", "virtio-net-pci,netdev=net0,romfile="));
	qemu_argv_free(argv);

	/* microvm: virtio-mmio devices, virtio-blk root, no pmem; firmware; tb-size */
	c = full_config();
	c.machine = "microvm";
	c.root_kind = QEMU_ROOT_BLK;
	c.firmware = "/usr/share/qemu/qboot.rom";
	c.tcg_tb_mb = 32;
	c.cpu = "max";
	assert_int_equal(qemu_build_argv(&c, &argv, NULL), 0);
	assert_true(argv_has(argv, "-machine", "microvm,x-option-roms=off,memory-backend=mem"));
	assert_true(argv_has(argv, "-global", "virtio-mmio.force-legacy=false"));
	assert_true(argv_has(argv, "-bios", "/usr/share/qemu/qboot.rom"));
	assert_true(argv_has(argv, "-accel", "tcg,tb-size=32"));
	assert_true(argv_has(argv, "-cpu", "max"));
	assert_true(argv_has(argv, "-m", "256M"));
	assert_true(argv_has(argv, "-blockdev",
			     "driver=raw,node-name=root,read-only=on,file.driver=file,"
			     "file.filename=/cache/root,,v1.img,file.read-only=on"));
	assert_true(argv_has(argv, "-device", "virtio-blk-device,drive=root,id=rootblk"));
	assert_true(argv_has(argv, "-device", "vhost-user-fs-device,chardev=fs0,tag=job"));
	assert_true(
	    argv_has(argv, "-device", "virtio-net-device,netdev=net0,mac=52:54:00:00:00:01"));
	assert_true(argv_has(argv, "-device", "virtio-serial-device,id=vser0,max_ports=2"));
	assert_false(argv_has(argv, "-device", "virtio-pmem-pci,memdev=rootmem,id=root"));
	qemu_argv_free(argv);

	/* a machine value with options is taken as it is; VMHPC_QEMU names the binary */
	setenv("VMHPC_QEMU", "/opt/qemu/bin/qemu-system-x86_64", 1);
	c = full_config();
	c.qemu = NULL;
	c.machine = "pc,hpet=off";
	c.virtiofs_socket = NULL;
	assert_int_equal(qemu_build_argv(&c, &argv, NULL), 0);
	assert_string_equal(argv[0], "/opt/qemu/bin/qemu-system-x86_64");
	assert_true(argv_has(argv, "-machine", "pc,hpet=off"));
	assert_false(argv_has(argv, "-object", "memory-backend-memfd,id=mem,size=256M,share=on"));
	qemu_argv_free(argv);
	unsetenv("VMHPC_QEMU");
}

static void expect_config_error(struct qemu_vm_config *c, int error, const char *needle)
{
	char **argv = NULL, *msg = NULL;

	assert_int_equal(qemu_build_argv(c, &argv, &msg), error);
	assert_null(argv);
	assert_non_null(msg);
	if (!strstr(msg, needle))
		fail_msg("error \"%s\" lacks \"%s\"", msg, needle);
	free(msg);
}

static void test_argv_bad_configs(void **state)
{
	struct qemu_vm_config c;

	c = full_config();
	c.machine = "microvm";
	expect_config_error(&c, -EOPNOTSUPP, "virtio-blk");
	c = full_config();
	c.mem_mb = 0;
	expect_config_error(&c, -EINVAL, "memory");
	c = full_config();
	c.name = NULL;
	expect_config_error(&c, -EINVAL, "name");
	c = full_config();
	c.kernel = NULL;
	expect_config_error(&c, -EINVAL, "kernel");
	c = full_config();
	c.root_size_bytes = 1000;
	expect_config_error(&c, -EINVAL, "4096");
	c = full_config();
	c.mac = "52:54:00:00:00";
	expect_config_error(&c, -EINVAL, "MAC");
	c = full_config();
	c.net_tap = "vmhpc1234abcdt10"; /* 16 characters: the kernel would truncate it */
	expect_config_error(&c, -EINVAL, "longer than 15");
	c = full_config();
	c.net_tap = NULL;
	expect_config_error(&c, -EINVAL, "tap");
	c = full_config();
	c.net = _QEMU_NET_MAX;
	expect_config_error(&c, -EINVAL, "network kind");
	c = full_config();
	c.root_kind = _QEMU_ROOT_MAX;
	expect_config_error(&c, -EINVAL, "root kind");
	c = full_config();
	c.console_pipe = true;
	expect_config_error(&c, -EINVAL, "console");
	c = full_config();
	c.vcpus = 100000;
	expect_config_error(&c, -EINVAL, "VCPUs");
	c = full_config();
	c.accel = _ACCEL_MAX;
	expect_config_error(&c, -EINVAL, "accelerator");
	c = full_config();
	c.shm_path = "/run/job1/shm";
	c.shm_size_bytes = 3u << 20;
	expect_config_error(&c, -EINVAL, "power of two");
	c.shm_size_bytes = 4u << 20;
	c.machine = "microvm";
	c.root_kind = QEMU_ROOT_BLK;
	expect_config_error(&c, -EINVAL, "microvm has no PCI");
}

static void test_accel_strings(void **state)
{
	enum accel a;

	assert_string_equal(accel_to_string(ACCEL_TCG), "tcg");
	assert_string_equal(accel_to_string(ACCEL_KVM), "kvm");
	assert_null(accel_to_string(_ACCEL_MAX));
	assert_int_equal(accel_from_string("kvm", &a), 0);
	assert_int_equal(a, ACCEL_KVM);
	assert_int_equal(accel_from_string("hvf", &a), -EINVAL);
	assert_int_equal(accel_from_string(NULL, &a), -EINVAL);
}

/* ---- the process, against a fake QEMU ---- */

/* A shell script standing in for qemu-system-x86_64: --version prints $FAKE_VERSION;
 * otherwise it behaves as $FAKE_KVM or $FAKE_TCG says (whichever accelerator its
 * arguments ask for). */
static const char fake_qemu_script[] =
    "#!/bin/sh\n"
    "if [ \"$1\" = --version ]; then\n"
    "  echo \"QEMU emulator version ${FAKE_VERSION:-99.1.0} (fake)\"; echo Copyright; exit 0\n"
    "fi\n"
    "mode=$FAKE_TCG\n"
    "case \" $* \" in *' kvm '*) mode=$FAKE_KVM ;; esac\n"
    "case \"$mode\" in\n"
    "abort) echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2\n"
    "       kill -ABRT $$ ;;\n"
    "hang) echo 'SeaBIOS (fake)'; sleep 60 ;;\n"
    "banner) echo 'SeaBIOS (fake)'; echo 'Linux version (fake)'; sleep 60 ;;\n"
    "ready) echo 'Linux version (fake)'; printf 'vmhpc-init: ready\\r\\n'; sleep 60 ;;\n"
    "panic) echo 'Kernel panic - not syncing (fake)'; exit 0 ;;\n"
    "exit3) echo 'to stderr' >&2; exit 3 ;;\n"
    "qmp)\n"
    "  printf '{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 99}}, "
    "\"capabilities\": []}}\\r\\n' >&3\n"
    "  while read -r line <&3; do\n"
    "    id=$(echo \"$line\" | sed -n 's/.*\"id\":\\([0-9]*\\).*/\\1/p')\n"
    "    case \"$line\" in\n"
    "    *quit*) printf '{\"return\": {}, \"id\": %s}\\r\\n' \"$id\" >&3; exit 0 ;;\n"
    "    *) printf '{\"return\": {\"status\": \"running\"}, \"id\": %s}\\r\\n' \"$id\" >&3 ;;\n"
    "    esac\n"
    "  done ;;\n"
    "fds) ls /proc/self/fd > \"$FAKE_OUT\"; exit 0 ;;\n"
    "*) exit 99 ;;\n"
    "esac\n";

static int setup_fake_qemu(void **state)
{
	struct fake_qemu *q;

	if (setup_tmpdir(state) < 0)
		return -1;
	q = *state;
	q->path = fs_path_join(q->dir, "qemu-system-x86_64");
	if (!q->path ||
	    fs_write_atomic(q->path, fake_qemu_script, strlen(fake_qemu_script), 0755) < 0)
		return -1;
	setenv("VMHPC_QEMU", q->path, 1);
	unsetenv("FAKE_VERSION");
	return 0;
}

/* True once no process of group pgid is left (a killed child of QEMU is a zombie until
 * init reaps it, so give it a moment). */
static bool group_gone(pid_t pgid)
{
	for (int i = 0; i < 200; i++) {
		if (kill(-pgid, 0) < 0 && errno == ESRCH)
			return true;
		usleep(10000);
	}
	return false;
}

static struct qemu_vm_config small_config(void)
{
	return (struct qemu_vm_config){
	    .name = "fake",
	    .accel = ACCEL_TCG,
	    .mem_mb = 64,
	    .kernel = "/nonexistent/k",
	};
}

static void test_process(void **state)
{
	struct fake_qemu *q = *state;
	struct qemu_vm_config c = small_config();
	struct qemu_vm *vm = NULL;
	_cleanup_qmp_client_ struct qmp_client *client = NULL;
	char *out = NULL, *log_path, *fds_path, *text = NULL;
	json_t *reply = NULL;
	uint64_t rss, pss;
	pid_t pid;
	size_t len;
	int status;

	log_path = fs_path_join(q->dir, "stderr.log");
	fds_path = fs_path_join(q->dir, "fds");

	/* exit status and stderr log */
	setenv("FAKE_TCG", "exit3", 1);
	c.stderr_log = log_path;
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	assert_int_equal(qemu_vm_wait(vm, 10000, &status), 0);
	assert_int_equal(status, 3);
	assert_int_equal(qemu_vm_wait(vm, 0, &status), 0); /* again: same answer */
	assert_int_equal(status, 3);
	vm = qemu_vm_free(vm);
	assert_int_equal(fs_read_file(log_path, 4096, &text, &len), 0);
	assert_string_equal(text, "to stderr\n");
	free(text);

	/* a running QEMU: wait times out, kill reaps it (and its children: the group) */
	setenv("FAKE_TCG", "hang", 1);
	c.stderr_log = NULL;
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	pid = qemu_vm_pid(vm);
	assert_true(pid > 0);
	assert_int_equal(getpgid(pid), pid);
	assert_int_equal(qemu_vm_host_memory(pid, &rss, &pss), 0);
	assert_true(rss > 0 && pss > 0 && pss <= rss);
	assert_int_equal(qemu_vm_wait(vm, 0, &status), -ETIMEDOUT);
	assert_int_equal(qemu_vm_wait(vm, 200, &status), -ETIMEDOUT);
	assert_int_equal(qemu_vm_kill(vm), 0);
	assert_int_equal(qemu_vm_wait(vm, 0, &status), 0);
	assert_int_equal(status, 128 + SIGKILL);
	assert_true(group_gone(pid)); /* nothing left in its process group */
	vm = qemu_vm_free(vm);
	assert_int_equal(qemu_vm_host_memory(pid, &rss, &pss), -ENOENT);

	/* qemu_vm_free alone kills and reaps */
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	pid = qemu_vm_pid(vm);
	vm = qemu_vm_free(vm);
	assert_true(group_gone(pid));

	/* QEMU gets exactly stdin/out/err and the QMP socket on fd 3 */
	setenv("FAKE_TCG", "fds", 1);
	setenv("FAKE_OUT", fds_path, 1);
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	assert_int_equal(qemu_vm_wait(vm, 10000, &status), 0);
	assert_int_equal(status, 0);
	vm = qemu_vm_free(vm);
	assert_int_equal(fs_read_file(fds_path, 4096, &text, &len), 0);
	/* ls itself opens one more for the directory it lists */
	assert_true(strncmp(text, "0\n1\n2\n3\n", 8) == 0);
	assert_true(strlen(text) <= 10);
	free(text);
	unsetenv("FAKE_OUT");

	/* QMP over the socketpair */
	setenv("FAKE_TCG", "qmp", 1);
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	assert_int_equal(qmp_client_new(qemu_vm_take_qmp_fd(vm), &client), 0);
	assert_int_equal(qemu_vm_take_qmp_fd(vm), -1);
	assert_int_equal(qmp_command(client, "query-status", NULL, &reply, 10000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "status")), "running");
	json_decref(reply);
	assert_string_equal(qmp_qemu_version(client), "99.1.0");
	assert_int_equal(qmp_command(client, "quit", NULL, NULL, 10000), 0);
	assert_int_equal(qemu_vm_wait(vm, 10000, &status), 0);
	assert_int_equal(status, 0);
	vm = qemu_vm_free(vm);

	/* a missing binary */
	setenv("VMHPC_QEMU", "/nonexistent/qemu", 1);
	assert_int_equal(qemu_vm_start(&c, &vm), -ENOENT);
	assert_null(vm);

	free(out);
	free(log_path);
	free(fds_path);
}

static bool kvm_usable(void)
{
	return access("/dev/kvm", R_OK | W_OK) == 0;
}

static void test_accel_probe_fake(void **state)
{
	char *detail = NULL;
	bool works;
	int64_t t0;

	setenv("FAKE_KVM", "abort", 1);
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 5000, &works, &detail), 0);
	assert_false(works);
	assert_non_null(strstr(detail, "status 134"));
	assert_non_null(strstr(detail, "failed to set MSR 0x10a"));
	free(detail);

	setenv("FAKE_KVM", "hang", 1);
	t0 = now_ms();
	assert_int_equal(accel_probe(ACCEL_KVM, "qemu64", "k", "i", 400, &works, &detail), 0);
	assert_false(works);
	assert_true(now_ms() - t0 < 3000);
	assert_non_null(strstr(detail, "no ready line within 400 ms"));
	free(detail);

	/* A KVM guest whose kernel never printed its banner is given up after 3 s, not the
	 * whole timeout (the firmware's banner does not count)... */
	t0 = now_ms();
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 20000, &works, &detail), 0);
	assert_false(works);
	assert_true(now_ms() - t0 >= 2900 && now_ms() - t0 < 8000);
	assert_non_null(strstr(detail, "printed nothing within 3000 ms"));
	free(detail);
	/* ...but one whose kernel has begun gets all of it. */
	setenv("FAKE_KVM", "banner", 1);
	t0 = now_ms();
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 4000, &works, &detail), 0);
	assert_false(works);
	assert_true(now_ms() - t0 >= 3900);
	assert_non_null(strstr(detail, "no ready line within 4000 ms"));
	free(detail);

	setenv("FAKE_KVM", "ready", 1);
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 5000, &works, &detail), 0);
	assert_true(works);
	assert_non_null(strstr(detail, "ready after"));
	free(detail);

	setenv("FAKE_KVM", "panic", 1);
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 5000, &works, &detail), 0);
	assert_false(works);
	assert_non_null(strstr(detail, "status 0"));
	free(detail);

	setenv("VMHPC_QEMU", "/nonexistent/qemu", 1);
	assert_int_equal(accel_probe(ACCEL_KVM, NULL, "k", "i", 5000, &works, &detail), -ENOENT);
}

static void test_accel_detect_fake(void **state)
{
	struct fake_qemu *q = *state;
	enum accel a = _ACCEL_MAX;
	char *detail = NULL, *cache;
	int64_t t0;

	cache = fs_path_join(q->dir, "cache/accel");
	setenv("FAKE_KVM", "abort", 1);
	setenv("FAKE_TCG", "ready", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, &detail), 0);
	assert_int_equal(a, ACCEL_TCG);
	if (!kvm_usable()) {
		/* no probe without /dev/kvm */
		assert_non_null(strstr(detail, "/dev/kvm"));
		free(detail);
		free(cache);
		skip();
	}
	assert_non_null(strstr(detail, "KVM unusable"));
	assert_null(strstr(detail, "cached"));
	free(detail);

	/* cached: no probe even though KVM would "work" now */
	setenv("FAKE_KVM", "ready", 1);
	t0 = now_ms();
	assert_int_equal(accel_detect(cache, "k", "i", &a, &detail), 0);
	assert_int_equal(a, ACCEL_TCG);
	assert_non_null(strstr(detail, "cached"));
	assert_true(now_ms() - t0 < 2000);
	free(detail);

	/* another QEMU version is another key: probed, kvm */
	setenv("FAKE_VERSION", "99.2.0", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, &detail), 0);
	assert_int_equal(a, ACCEL_KVM);
	assert_null(strstr(detail, "cached"));
	free(detail);
	assert_int_equal(accel_detect(cache, "k", "i", &a, NULL), 0);
	assert_int_equal(a, ACCEL_KVM);

	/* a guest that boots nowhere: tcg, but nothing cached */
	setenv("FAKE_VERSION", "99.3.0", 1);
	setenv("FAKE_KVM", "panic", 1);
	setenv("FAKE_TCG", "panic", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, &detail), 0);
	assert_int_equal(a, ACCEL_TCG);
	assert_non_null(strstr(detail, "inconclusive"));
	free(detail);
	setenv("FAKE_KVM", "ready", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, NULL), 0);
	assert_int_equal(a, ACCEL_KVM);

	free(cache);
}

static void test_accel_cache_damaged(void **state)
{
	struct fake_qemu *q = *state;
	enum accel a;
	char *cache, *detail = NULL;
	DIR *d;
	struct dirent *de;

	if (!kvm_usable()) {
		skip();
	}
	cache = fs_path_join(q->dir, "cache");
	setenv("FAKE_KVM", "ready", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, NULL), 0);
	assert_int_equal(a, ACCEL_KVM);
	/* damage every cache file: the next call probes again instead of failing */
	d = opendir(cache);
	assert_non_null(d);
	while ((de = readdir(d))) {
		char *p;

		if (de->d_name[0] == '.')
			continue;
		p = fs_path_join(cache, de->d_name);
		assert_int_equal(fs_write_atomic(p, "{\"key\": 17", 10, 0644), 0);
		free(p);
	}
	closedir(d);
	setenv("FAKE_KVM", "abort", 1);
	setenv("FAKE_TCG", "ready", 1);
	assert_int_equal(accel_detect(cache, "k", "i", &a, &detail), 0);
	assert_int_equal(a, ACCEL_TCG);
	assert_null(strstr(detail, "cached"));
	free(detail);
	free(cache);
}

/* ---- against the real QEMU, when a guest is given ---- */

static const char *test_kernel(void)
{
	return getenv("VMHPC_TEST_KERNEL");
}

static const char *test_initrd(void)
{
	return getenv("VMHPC_TEST_INITRD");
}

static bool have_guest(void)
{
	return test_kernel() && test_initrd() && access(test_kernel(), R_OK) == 0 &&
	       access(test_initrd(), R_OK) == 0;
}

/* The real-QEMU cases need a guest: the one scripts/test-all.sh built (VMHPC_TEST_KERNEL,
 * VMHPC_TEST_INITRD), else one built here with tests/scripts/test-guest.sh (meson passes
 * VMHPC and VMHPC_TEST_GUEST_SCRIPT), so that `meson test` on its own runs them too. Without
 * either they fail, naming what is missing: a test that cannot run is not a pass. */
static char guest_dir[] = "/tmp/vmhpc-test-qmp-guest.XXXXXX";
static bool guest_dir_made;

static int setup_guest(void **state)
{
	const char *script = getenv("VMHPC_TEST_GUEST_SCRIPT");
	char cmd[PATH_MAX * 2], path[PATH_MAX];

	(void)state;
	if (test_kernel() || !script || !getenv("VMHPC"))
		return 0;
	if (!mkdtemp(guest_dir))
		return 0;
	guest_dir_made = true;
	snprintf(cmd, sizeof(cmd), "'%s' '%s'", script, guest_dir);
	if (system(cmd) != 0)
		return 0; /* the script said why; the cases fail on no guest */
	snprintf(path, sizeof(path), "%s/kernel", guest_dir);
	setenv("VMHPC_TEST_KERNEL", path, 1);
	snprintf(path, sizeof(path), "%s/initramfs", guest_dir);
	setenv("VMHPC_TEST_INITRD", path, 1);
	return 0;
}

static int teardown_guest(void **state)
{
	char cmd[PATH_MAX];

	(void)state;
	if (guest_dir_made) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", guest_dir);
		(void)!system(cmd);
	}
	return 0;
}

static void need_guest(void)
{
	if (!have_guest())
		fail_msg("no test guest: run through meson test (it builds one with "
			 "tests/scripts/test-guest.sh) or set VMHPC_TEST_KERNEL and "
			 "VMHPC_TEST_INITRD");
}

/* Reads the console pipe until the ready line, or the deadline. */
static bool wait_ready(int fd, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	char window[4096 + 1];
	size_t len = 0;

	while (now_ms() < deadline) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		ssize_t n;

		if (poll(&pfd, 1, 200) <= 0)
			continue;
		if (len > 2048) {
			memmove(window, window + len - 64, 64);
			len = 64;
		}
		n = read(fd, window + len, sizeof(window) - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		window[len] = '\0';
		if (memmem(window, len, ACCEL_READY_LINE, strlen(ACCEL_READY_LINE)))
			return true;
	}
	return false;
}

static void test_real_qemu_qmp(void **state)
{
	struct qemu_vm_config c = {
	    .name = "test-qmp-real",
	    .accel = ACCEL_TCG,
	    .mem_mb = 256,
	    .kernel = test_kernel(),
	    .initrd = test_initrd(),
	    .cmdline = "console=ttyS0 quiet panic=-1",
	    .console_pipe = true,
	};
	_cleanup_qmp_client_ struct qmp_client *client = NULL;
	struct recorder rec = {0};
	struct qemu_vm *vm = NULL;
	json_t *reply = NULL;
	uint64_t rss, pss;
	int status;

	need_guest();
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	assert_int_equal(qmp_client_new(qemu_vm_take_qmp_fd(vm), &client), 0);
	qmp_set_event_callback(client, record_event, &rec);
	assert_int_equal(qmp_command(client, "query-status", NULL, &reply, 10000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "status")), "running");
	json_decref(reply);
	assert_non_null(qmp_qemu_version(client));

	assert_int_equal(qmp_command(client, "query-qmp-schema", NULL, &reply, 10000), 0);
	assert_true(qmp_schema_has_command(reply, "system_powerdown"));
	assert_true(qmp_schema_has_command(reply, "quit"));
	assert_false(qmp_schema_has_command(reply, "no-such-command"));
	assert_true(qmp_schema_has_member(reply, "mem-path"));
	json_decref(reply);
	assert_int_equal(qmp_command(client, "no-such-command", NULL, NULL, 10000), -EOPNOTSUPP);

	assert_true(wait_ready(qemu_vm_console_fd(vm), 60000));
	assert_int_equal(qemu_vm_host_memory(qemu_vm_pid(vm), &rss, &pss), 0);
	print_message("real QEMU (TCG, tb-size %d MiB): guest ready, QEMU RSS %" PRIu64
		      " KiB, PSS %" PRIu64 " KiB\n",
		      QEMU_TCG_TB_MB_DEFAULT, rss, pss);

	assert_int_equal(qmp_command(client, "stop", NULL, NULL, 10000), 0);
	assert_int_equal(qmp_command(client, "query-status", NULL, &reply, 10000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "status")), "paused");
	json_decref(reply);
	assert_int_equal(qmp_command(client, "cont", NULL, NULL, 10000), 0);

	assert_int_equal(qmp_command(client, "quit", NULL, NULL, 10000), 0);
	assert_int_equal(qemu_vm_wait(vm, 10000, &status), 0);
	assert_int_equal(status, 0);
	assert_true(rec.n_events >= 3);
	assert_string_equal(rec.events[0], "STOP");
	assert_string_equal(rec.events[1], "RESUME");
	assert_string_equal(rec.events[rec.n_events - 1], "SHUTDOWN");
	vm = qemu_vm_free(vm);
}

static void test_real_accel(void **state)
{
	struct fake_qemu *q = *state;
	char *cache, *detail = NULL, *detail2 = NULL;
	enum accel a, a2;
	int64_t t0, first_ms, second_ms;
	bool works;

	need_guest();
	/* TCG always works: the guest itself is sound */
	assert_int_equal(
	    accel_probe(ACCEL_TCG, NULL, test_kernel(), test_initrd(), 60000, &works, &detail), 0);
	print_message("probe tcg: %s\n", detail);
	assert_true(works);
	free(detail);

	cache = fs_path_join(q->dir, "cache");
	t0 = now_ms();
	assert_int_equal(accel_detect(cache, test_kernel(), test_initrd(), &a, &detail), 0);
	first_ms = now_ms() - t0;
	t0 = now_ms();
	assert_int_equal(accel_detect(cache, test_kernel(), test_initrd(), &a2, &detail2), 0);
	second_ms = now_ms() - t0;
	print_message("accel_detect: %s in %" PRId64 " ms: %s\n", accel_to_string(a), first_ms,
		      detail);
	print_message("accel_detect again: %s in %" PRId64 " ms: %s\n", accel_to_string(a2),
		      second_ms, detail2);
	assert_int_equal(a, a2);
	if (kvm_usable())
		assert_non_null(strstr(detail2, "cached"));
	assert_true(second_ms < 1000);
	/* VMHPC_TEST_EXPECT_ACCEL pins the answer expected on this machine (tcg where it
	 * was written: /dev/kvm exists there, but KVM does not work). */
	if (getenv("VMHPC_TEST_EXPECT_ACCEL")) {
		enum accel want;

		assert_int_equal(accel_from_string(getenv("VMHPC_TEST_EXPECT_ACCEL"), &want), 0);
		assert_int_equal(a, want);
	}
	free(detail);
	free(detail2);
	free(cache);
}

static void test_real_kvm_hang(void **state)
{
	char *detail = NULL;
	bool works;
	int64_t t0;

	need_guest();
	if (!kvm_usable())
		skip(); /* no /dev/kvm to open: nothing of KVM's to test (test-summary names it) */
	/* -cpu qemu64 under KVM hangs in early boot on the machines this was written on;
	 * elsewhere it boots. Either way the probe returns within its deadline. */
	t0 = now_ms();
	assert_int_equal(
	    accel_probe(ACCEL_KVM, "qemu64", test_kernel(), test_initrd(), 3000, &works, &detail),
	    0);
	print_message("probe kvm -cpu qemu64: %s: %s\n", works ? "works" : "fails", detail);
	assert_true(now_ms() - t0 < 6000);
	free(detail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_out_of_order_replies),
	    cmocka_unit_test(test_blocking_command),
	    cmocka_unit_test(test_error_replies),
	    cmocka_unit_test(test_oversize_line),
	    cmocka_unit_test(test_garbage),
	    cmocka_unit_test(test_peer_closes),
	    cmocka_unit_test(test_timeout),
	    cmocka_unit_test(test_cancel_and_free),
	    cmocka_unit_test_setup_teardown(test_connect_path, setup_tmpdir, teardown_tmpdir),
	    cmocka_unit_test(test_schema),
	    cmocka_unit_test(test_argv_full),
	    cmocka_unit_test(test_argv_variants),
	    cmocka_unit_test(test_argv_bad_configs),
	    cmocka_unit_test(test_accel_strings),
	    cmocka_unit_test_setup_teardown(test_process, setup_fake_qemu, teardown_tmpdir),
	    cmocka_unit_test_setup_teardown(test_accel_probe_fake, setup_fake_qemu,
					    teardown_tmpdir),
	    cmocka_unit_test_setup_teardown(test_accel_detect_fake, setup_fake_qemu,
					    teardown_tmpdir),
	    cmocka_unit_test_setup_teardown(test_accel_cache_damaged, setup_fake_qemu,
					    teardown_tmpdir),
	    cmocka_unit_test(test_real_qemu_qmp),
	    cmocka_unit_test_setup_teardown(test_real_accel, setup_tmpdir, teardown_tmpdir),
	    cmocka_unit_test(test_real_kvm_hang),
	};

	/* A peer that dies must not take the test with it. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup_guest, teardown_guest);
}
