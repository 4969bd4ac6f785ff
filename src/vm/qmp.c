/* QMP client: see qmp.h. The wire format is one JSON object per line in each direction;
 * the client tags every command with a numeric "id" and finds the waiting caller by it,
 * so replies may come in any order and events may come between them. */
#include "vm/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/log.h"
#include "util/time.h"

/* Bytes asked of the kernel per read(). */
#define QMP_READ_CHUNK_BYTES 65536
/* Reads per qmp_process() call, so one chatty peer cannot starve an event loop. */
#define QMP_READS_PER_STEP 16

enum qmp_state {
	QMP_STATE_CONNECTING,  /* non-blocking connect() in progress */
	QMP_STATE_GREETING,    /* waiting for {"QMP": ...} */
	QMP_STATE_NEGOTIATING, /* qmp_capabilities sent, waiting for its reply */
	QMP_STATE_READY,       /* commands flow */
	QMP_STATE_BROKEN,      /* terminal: error holds why */
};

struct qmp_command_slot {
	uint64_t id;
	char *line; /* serialized command with its newline, until it moves to the output */
	qmp_reply_fn fn;
	void *userdata;
};

struct qmp_client {
	int fd;
	enum qmp_state state;
	int error; /* why BROKEN */

	char *rbuf; /* bytes read, not yet a complete line */
	size_t rlen, rcap;
	size_t line_max;

	char *wbuf; /* bytes to write */
	size_t wlen, wcap, woff;

	struct qmp_command_slot *slots; /* commands without a reply yet, in send order */
	size_t n_slots, cap_slots;
	uint64_t next_id;
	uint64_t capabilities_id;

	qmp_event_fn event_fn;
	void *event_userdata;

	char version[64];
	char *last_error;
	bool in_command; /* inside qmp_command(): forbids nesting */
};

static void qmp_break(struct qmp_client *c, int error);

static int wbuf_append(struct qmp_client *c, const char *data, size_t len)
{
	if (c->woff > 0 && c->woff == c->wlen)
		c->woff = c->wlen = 0;
	if (c->wlen + len > c->wcap) {
		size_t cap = c->wcap ? c->wcap : 4096;
		char *grown;

		while (cap < c->wlen + len)
			cap *= 2;
		grown = realloc(c->wbuf, cap);
		if (!grown)
			return -ENOMEM;
		c->wbuf = grown;
		c->wcap = cap;
	}
	memcpy(c->wbuf + c->wlen, data, len);
	c->wlen += len;
	return 0;
}

/* Serializes one command as a line. */
static char *command_line(const char *command, json_t *args, uint64_t id)
{
	json_t *msg = json_object();
	char *text = NULL, *line = NULL;

	if (!msg)
		return NULL;
	if (json_object_set_new(msg, "execute", json_string(command)) < 0 ||
	    (args && json_object_set(msg, "arguments", args) < 0) ||
	    json_object_set_new(msg, "id", json_integer((json_int_t)id)) < 0)
		goto out;
	text = json_dumps(msg, JSON_COMPACT);
	if (!text)
		goto out;
	if (asprintf(&line, "%s\n", text) < 0)
		line = NULL;
out:
	free(text);
	json_decref(msg);
	return line;
}

static int slot_add(struct qmp_client *c, const char *command, json_t *args, qmp_reply_fn fn,
		    void *userdata, bool queue, uint64_t *ret_id)
{
	struct qmp_command_slot *s;
	uint64_t id = c->next_id++;
	char *line;
	int r;

	if (c->n_slots == c->cap_slots) {
		size_t cap = c->cap_slots ? c->cap_slots * 2 : 8;
		struct qmp_command_slot *grown = realloc(c->slots, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		c->slots = grown;
		c->cap_slots = cap;
	}
	line = command_line(command, args, id);
	if (!line)
		return -ENOMEM;
	if (!queue) {
		r = wbuf_append(c, line, strlen(line));
		free(line);
		line = NULL;
		if (r < 0)
			return r;
	}
	s = &c->slots[c->n_slots++];
	*s = (struct qmp_command_slot){.id = id, .line = line, .fn = fn, .userdata = userdata};
	if (ret_id)
		*ret_id = id;
	return 0;
}

static ssize_t slot_find(const struct qmp_client *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_slots; i++)
		if (c->slots[i].id == id)
			return (ssize_t)i;
	return -1;
}

/* Removes slot i and returns it (the caller owns its line). */
static struct qmp_command_slot slot_take(struct qmp_client *c, size_t i)
{
	struct qmp_command_slot s = c->slots[i];

	memmove(&c->slots[i], &c->slots[i + 1], (c->n_slots - i - 1) * sizeof(c->slots[0]));
	c->n_slots--;
	return s;
}

/* Fails every pending command with error; callbacks may queue new ones (they fail too
 * once the client is broken, so this ends). */
static void slots_fail_all(struct qmp_client *c, int error)
{
	while (c->n_slots > 0) {
		struct qmp_command_slot s = slot_take(c, 0);

		free(s.line);
		if (s.fn && s.id != c->capabilities_id)
			s.fn(c, error, NULL, NULL, s.userdata);
	}
}

static void qmp_break(struct qmp_client *c, int error)
{
	if (c->state == QMP_STATE_BROKEN)
		return;
	log_debug("qmp: connection broken: %s", strerror(-error));
	c->state = QMP_STATE_BROKEN;
	c->error = error;
	c->wlen = c->woff = 0;
	slots_fail_all(c, error);
}

static int client_alloc(int fd, enum qmp_state state, struct qmp_client **ret)
{
	struct qmp_client *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->state = state;
	c->line_max = QMP_LINE_MAX_BYTES_DEFAULT;
	c->next_id = 1;
	*ret = c;
	return 0;
}

int qmp_connect(const char *path, struct qmp_client **ret)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	_cleanup_close_ int fd = -1;
	enum qmp_state state = QMP_STATE_GREETING;
	int r;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		if (errno != EINPROGRESS)
			return -errno;
		state = QMP_STATE_CONNECTING;
	}
	r = client_alloc(fd, state, ret);
	if (r < 0)
		return r;
	TAKE_FD(fd);
	return 0;
}

int qmp_client_new(int fd, struct qmp_client **ret)
{
	int flags = fcntl(fd, F_GETFL);
	int r;

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	r = client_alloc(fd, QMP_STATE_GREETING, ret);
	if (r < 0)
		close(fd);
	return r;
}

struct qmp_client *qmp_client_free(struct qmp_client *c)
{
	if (!c)
		return NULL;
	qmp_break(c, -ECANCELED);
	if (c->fd >= 0)
		close(c->fd);
	free(c->rbuf);
	free(c->wbuf);
	free(c->slots);
	free(c->last_error);
	free(c);
	return NULL;
}

void qmp_set_event_callback(struct qmp_client *c, qmp_event_fn fn, void *userdata)
{
	c->event_fn = fn;
	c->event_userdata = userdata;
}

void qmp_set_line_max(struct qmp_client *c, size_t bytes)
{
	c->line_max = bytes;
}

int qmp_fd(const struct qmp_client *c)
{
	return c->fd;
}

short qmp_poll_events(const struct qmp_client *c)
{
	switch (c->state) {
	case QMP_STATE_BROKEN:
		return 0;
	case QMP_STATE_CONNECTING:
		return POLLOUT;
	default:
		return (short)(POLLIN | (c->woff < c->wlen ? POLLOUT : 0));
	}
}

bool qmp_is_ready(const struct qmp_client *c)
{
	return c->state == QMP_STATE_READY;
}

int qmp_is_broken(const struct qmp_client *c)
{
	return c->state == QMP_STATE_BROKEN ? c->error : 0;
}

const char *qmp_qemu_version(const struct qmp_client *c)
{
	return c->version[0] ? c->version : NULL;
}

size_t qmp_pending(const struct qmp_client *c)
{
	size_t n = 0;

	for (size_t i = 0; i < c->n_slots; i++)
		if (c->slots[i].id != c->capabilities_id)
			n++;
	return n;
}

int qmp_send(struct qmp_client *c, const char *command, json_t *args, qmp_reply_fn fn,
	     void *userdata, uint64_t *ret_id)
{
	if (c->state == QMP_STATE_BROKEN)
		return c->error;
	if (!command || !command[0] || (args && !json_is_object(args)))
		return -EINVAL;
	/* Before the handshake is done, the command waits in its slot. */
	return slot_add(c, command, args, fn, userdata, c->state != QMP_STATE_READY, ret_id);
}

int qmp_cancel(struct qmp_client *c, uint64_t id)
{
	ssize_t i = id == c->capabilities_id ? -1 : slot_find(c, id);
	struct qmp_command_slot s;

	if (i < 0)
		return -ENOENT;
	s = slot_take(c, (size_t)i);
	free(s.line);
	return 0;
}

static int error_class_to_errno(const char *class)
{
	if (!class)
		return -EIO;
	if (strcmp(class, "CommandNotFound") == 0)
		return -EOPNOTSUPP;
	if (strcmp(class, "DeviceNotFound") == 0)
		return -ENODEV;
	return -EIO;
}

/* The handshake is done: everything queued goes out in order. */
static int become_ready(struct qmp_client *c)
{
	c->state = QMP_STATE_READY;
	for (size_t i = 0; i < c->n_slots; i++) {
		struct qmp_command_slot *s = &c->slots[i];
		int r;

		if (!s->line)
			continue;
		r = wbuf_append(c, s->line, strlen(s->line));
		if (r < 0)
			return r;
		free(s->line);
		s->line = NULL;
	}
	return 0;
}

static int handle_greeting(struct qmp_client *c, json_t *msg)
{
	json_t *qmp = json_object_get(msg, "QMP");
	json_t *v = json_object_get(json_object_get(qmp, "version"), "qemu");

	if (!json_is_object(qmp))
		return -EBADMSG;
	if (json_is_object(v))
		snprintf(c->version, sizeof(c->version),
			 "%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT,
			 json_integer_value(json_object_get(v, "major")),
			 json_integer_value(json_object_get(v, "minor")),
			 json_integer_value(json_object_get(v, "micro")));
	c->state = QMP_STATE_NEGOTIATING;
	c->capabilities_id = c->next_id;
	return slot_add(c, "qmp_capabilities", NULL, NULL, NULL, false, NULL);
}

static int handle_reply(struct qmp_client *c, json_t *msg)
{
	json_t *id = json_object_get(msg, "id");
	json_t *ret = json_object_get(msg, "return");
	json_t *err = json_object_get(msg, "error");
	const char *class = NULL, *desc = NULL;
	_cleanup_free_ char *error_desc = NULL;
	struct qmp_command_slot s;
	ssize_t i;
	int error = 0;

	if (!json_is_integer(id) || json_integer_value(id) < 0) {
		/* QEMU sends id-less errors only for input it could not parse, which we never
		 * send; nobody waits for it. */
		log_debug("qmp: reply without a usable id dropped");
		return 0;
	}
	i = slot_find(c, (uint64_t)json_integer_value(id));
	if (i < 0 || c->slots[i].line) {
		log_debug("qmp: reply to unknown or cancelled id %" JSON_INTEGER_FORMAT " dropped",
			  json_integer_value(id));
		return 0;
	}
	if (err) {
		class = json_string_value(json_object_get(err, "class"));
		desc = json_string_value(json_object_get(err, "desc"));
		error = error_class_to_errno(class);
		if (asprintf(&error_desc, "%s: %s", class ? class : "Error",
			     desc ? desc : "(no description)") < 0)
			error_desc = NULL;
	}
	s = slot_take(c, (size_t)i);
	if (s.id == c->capabilities_id) {
		/* Without capabilities accepted no command would ever run. */
		if (error)
			return -EPROTO;
		return become_ready(c);
	}
	if (s.fn)
		s.fn(c, error, error ? NULL : ret, error_desc, s.userdata);
	return 0;
}

static int handle_line(struct qmp_client *c, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *msg, *event;
	int r = 0;

	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	if (len == 0)
		return 0;
	msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!msg) {
		log_debug("qmp: not JSON (%s at column %d)", jerr.text, jerr.column);
		return -EBADMSG;
	}
	if (!json_is_object(msg)) {
		r = -EBADMSG;
		goto out;
	}
	if (c->state == QMP_STATE_GREETING) {
		r = handle_greeting(c, msg);
		goto out;
	}
	event = json_object_get(msg, "event");
	if (json_is_string(event)) {
		json_t *data = json_object_get(msg, "data");

		if (c->event_fn)
			c->event_fn(c, json_string_value(event), json_is_object(data) ? data : NULL,
				    c->event_userdata);
	} else if (json_object_get(msg, "return") || json_object_get(msg, "error")) {
		r = handle_reply(c, msg);
	} else {
		log_debug("qmp: message of unknown shape ignored");
	}
out:
	json_decref(msg);
	return r;
}

/* Dispatches every complete line in rbuf and keeps the rest. */
static int dispatch_lines(struct qmp_client *c)
{
	size_t start = 0;
	int r = 0;

	while (c->state != QMP_STATE_BROKEN) {
		char *nl = memchr(c->rbuf + start, '\n', c->rlen - start);
		size_t len;

		if (!nl)
			break;
		len = (size_t)(nl - (c->rbuf + start));
		/* QEMU ends lines with "\r\n": the '\r' does not count against the limit. */
		if (len > c->line_max + 1 || (len == c->line_max + 1 && nl[-1] != '\r'))
			return -EMSGSIZE;
		r = handle_line(c, c->rbuf + start, len);
		if (r < 0)
			return r;
		start += len + 1;
	}
	if (c->state == QMP_STATE_BROKEN)
		return 0;
	memmove(c->rbuf, c->rbuf + start, c->rlen - start);
	c->rlen -= start;
	if (c->rlen > c->line_max + 1)
		return -EMSGSIZE;
	return 0;
}

static int step_connect(struct qmp_client *c)
{
	int err = 0;
	socklen_t len = sizeof(err);
	struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};

	if (poll(&pfd, 1, 0) <= 0)
		return 0;
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	if (err)
		return -err;
	c->state = QMP_STATE_GREETING;
	return 1;
}

static int step_write(struct qmp_client *c)
{
	int progress = 0;

	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			return errno == EPIPE ? -ECONNRESET : -errno;
		}
		c->woff += (size_t)n;
		progress = 1;
	}
	if (c->woff == c->wlen)
		c->woff = c->wlen = 0;
	return progress;
}

static int step_read(struct qmp_client *c)
{
	int progress = 0;

	for (int i = 0; i < QMP_READS_PER_STEP && c->state != QMP_STATE_BROKEN; i++) {
		ssize_t n;
		int r;

		if (c->rcap - c->rlen < QMP_READ_CHUNK_BYTES) {
			/* Grow geometrically, but never far beyond what one line may take. */
			size_t want = c->rlen + QMP_READ_CHUNK_BYTES;
			size_t bound = c->line_max + 2 + QMP_READ_CHUNK_BYTES;
			size_t cap = c->rcap * 2 > want ? c->rcap * 2 : want;
			char *grown;

			if (cap > bound)
				cap = bound > want ? bound : want;
			grown = realloc(c->rbuf, cap);

			if (!grown)
				return -ENOMEM;
			c->rbuf = grown;
			c->rcap = cap;
		}
		n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			return -errno;
		}
		if (n == 0) {
			if (c->rlen > 0)
				log_debug("qmp: peer closed in the middle of a line");
			return -ECONNRESET;
		}
		c->rlen += (size_t)n;
		progress = 1;
		r = dispatch_lines(c);
		if (r < 0)
			return r;
		/* Keep a buffer that held a long line from pinning memory. */
		if (c->rlen == 0 && c->rcap > 4 * QMP_READ_CHUNK_BYTES) {
			free(c->rbuf);
			c->rbuf = NULL;
			c->rcap = 0;
		}
	}
	return progress;
}

int qmp_process(struct qmp_client *c)
{
	int r, progress = 0;

	if (c->state == QMP_STATE_BROKEN)
		return c->error;
	if (c->state == QMP_STATE_CONNECTING) {
		r = step_connect(c);
		if (r <= 0)
			goto done;
		progress = 1;
	}
	r = step_write(c);
	if (r < 0)
		goto done;
	progress |= r;
	r = step_read(c);
	if (r < 0)
		goto done;
	progress |= r;
	/* Reading may have queued output (capabilities, commands released by the
	 * handshake): send it now instead of waiting for another wake-up. */
	r = step_write(c);
done:
	if (r < 0) {
		qmp_break(c, r);
		return r;
	}
	return progress | r;
}

int qmp_wait(struct qmp_client *c, int timeout_ms)
{
	struct pollfd pfd;
	int n;

	if (c->state == QMP_STATE_BROKEN)
		return c->error;
	pfd = (struct pollfd){.fd = c->fd, .events = qmp_poll_events(c)};
	n = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	if (n == 0)
		return 0;
	return qmp_process(c);
}

struct sync_reply {
	bool done;
	int error;
	json_t *result;
	char *desc;
};

static void sync_reply_fn(struct qmp_client *c, int error, json_t *result, const char *error_desc,
			  void *userdata)
{
	struct sync_reply *s = userdata;

	s->done = true;
	s->error = error;
	s->result = json_incref(result);
	s->desc = error_desc ? strdup(error_desc) : NULL;
}

int qmp_command(struct qmp_client *c, const char *command, json_t *args, json_t **ret_reply,
		int timeout_ms)
{
	struct sync_reply s = {0};
	int64_t deadline = timeout_ms < 0 ? -1 : time_now_ms() + timeout_ms;
	uint64_t id;
	int r;

	if (c->in_command)
		return -EBUSY;
	free(c->last_error);
	c->last_error = NULL;
	r = qmp_send(c, command, args, sync_reply_fn, &s, &id);
	if (r < 0)
		return r;
	c->in_command = true;
	while (!s.done) {
		int wait_ms = -1;

		if (deadline >= 0) {
			int64_t left = deadline - time_now_ms();

			if (left <= 0) {
				qmp_cancel(c, id);
				c->in_command = false;
				return -ETIMEDOUT;
			}
			wait_ms = left > 60000 ? 60000 : (int)left;
		}
		r = qmp_wait(c, wait_ms);
		/* A broken connection fails our slot too, which sets s.done. */
		if (r < 0 && !s.done) {
			qmp_cancel(c, id);
			c->in_command = false;
			return r;
		}
	}
	c->in_command = false;
	if (s.error) {
		c->last_error = s.desc;
		json_decref(s.result);
		return s.error;
	}
	free(s.desc);
	if (ret_reply)
		*ret_reply = s.result;
	else
		json_decref(s.result);
	return 0;
}

const char *qmp_last_error(const struct qmp_client *c)
{
	return c->last_error;
}

bool qmp_schema_has_command(json_t *schema, const char *name)
{
	size_t i;
	json_t *e;

	json_array_foreach(schema, i, e)
	{
		const char *meta = json_string_value(json_object_get(e, "meta-type"));
		const char *n = json_string_value(json_object_get(e, "name"));

		if (meta && n && strcmp(meta, "command") == 0 && strcmp(n, name) == 0)
			return true;
	}
	return false;
}

bool qmp_schema_has_member(json_t *schema, const char *name)
{
	size_t i, j;
	json_t *e, *m;

	json_array_foreach(schema, i, e)
	{
		const char *meta = json_string_value(json_object_get(e, "meta-type"));

		if (!meta || strcmp(meta, "object") != 0)
			continue;
		json_array_foreach(json_object_get(e, "members"), j, m)
		{
			const char *n = json_string_value(json_object_get(m, "name"));

			if (n && strcmp(n, name) == 0)
				return true;
		}
	}
	return false;
}
