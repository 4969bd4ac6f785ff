/* Blocking client of the exec service. The socket itself is non-blocking and every wait is a
 * poll(): while a command runs the client must keep reading the service's output even when
 * the service is not taking stdin, or both ends could block writing to each other. libc only. */
#include "guest/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/time.h"

#define READ_CHUNK	 (64u * 1024u)
#define STDIN_HIGH_WATER (256u * 1024u) /* stop reading stdin while this much is unsent */
#define KILL_GRACE_MS	 5000

struct exec_client {
	int fd;
	struct frame_decoder *dec;
	struct frame_buf out;
	uint8_t *in; /* bytes read from fd, not yet fed to the decoder */
	size_t in_pos, in_len;
	char *error; /* text of the last ERROR frame */
	bool have_ready;
	struct frame_info ready;
	bool resync;   /* skipping input up to the next READY header */
	bool welcomed; /* a HELLO was answered: a later WELCOME is an older session's, skipped */
	int forwarded_signal; /* the last signal exec_client_run passed on, 0 if none */
	struct run *run;      /* the command being run (exec_client_run_start), or NULL */
};

int exec_client_new(int fd, struct exec_client **ret)
{
	struct exec_client *c;
	int flags, r;

	if (fd < 0)
		return -EBADF;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = -1;
	c->in = malloc(READ_CHUNK);
	r = c->in ? frame_decoder_new(&c->dec) : -ENOMEM;
	if (r < 0) {
		exec_client_free(c);
		return r;
	}
	c->fd = fd;
	*ret = c;
	return 0;
}

struct exec_client *exec_client_free(struct exec_client *c)
{
	if (!c)
		return NULL;
	if (c->fd >= 0)
		close(c->fd);
	frame_decoder_free(c->dec);
	frame_buf_clear(&c->out);
	free(c->in);
	free(c->error);
	free(c->run);
	free(c);
	return NULL;
}

const char *exec_client_error(const struct exec_client *c)
{
	return c->error;
}

const struct frame_info *exec_client_ready(const struct exec_client *c)
{
	return c->have_ready ? &c->ready : NULL;
}

int exec_client_connect(const struct sockaddr *addr, socklen_t addr_len, int timeout_ms,
			int *ret_fd)
{
	_cleanup_close_ int fd = -1;
	struct pollfd p;
	int err = 0, r;
	socklen_t err_len = sizeof(err);

	fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) {
		int one = 1;

		/* Frames are small and interactive (a launcher's handshakes): no Nagle delay. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (connect(fd, addr, addr_len) < 0) {
		if (errno != EINPROGRESS)
			return -errno;
		p = (struct pollfd){.fd = fd, .events = POLLOUT};
		do
			r = poll(&p, 1, timeout_ms);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) < 0)
			return -errno;
		if (err)
			return -err;
	}
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int exec_client_resync(struct exec_client *c)
{
	struct frame_decoder *fresh = NULL;
	int r = frame_decoder_new(&fresh);

	if (r < 0)
		return r;
	frame_decoder_free(c->dec);
	c->dec = fresh;
	c->resync = true;
	return 0;
}

/* Drops buffered input up to the next READY header; keeps a tail that may be its start. */
static void skip_to_ready(struct exec_client *c)
{
	static const uint8_t header[FRAME_HEADER_BYTES] = {
	    FRAME_MAGIC0, FRAME_MAGIC1, FRAME_READY, 0, 0, 0, 0, FRAME_INFO_BYTES};
	size_t avail = c->in_len - c->in_pos, keep;

	for (size_t i = 0; i + FRAME_HEADER_BYTES <= avail; i++) {
		if (memcmp(c->in + c->in_pos + i, header, FRAME_HEADER_BYTES) == 0) {
			c->in_pos += i;
			c->resync = false;
			return;
		}
	}
	keep = avail < FRAME_HEADER_BYTES - 1 ? avail : FRAME_HEADER_BYTES - 1;
	memmove(c->in, c->in + c->in_len - keep, keep);
	c->in_pos = 0;
	c->in_len = keep;
}

/* Feeds buffered bytes to the decoder, reading the socket once when they run out: 1 and
 * *f for a frame, 0 when the socket has nothing more now, -errno otherwise (-ECONNRESET at
 * EOF, -EPROTO at EOF inside a frame or for a malformed stream). */
static int pump(struct exec_client *c, struct frame *f)
{
	for (;;) {
		ssize_t n;
		size_t used;
		int r;

		if (c->resync)
			skip_to_ready(c);
		if (!c->resync && c->in_pos < c->in_len) {
			r = frame_decoder_feed(c->dec, c->in + c->in_pos, c->in_len - c->in_pos,
					       &used, f);
			c->in_pos += used;
			if (r != 0)
				return r < 0 ? -EPROTO : 1;
			continue;
		}
		if (c->in_pos == c->in_len)
			c->in_pos = c->in_len = 0;
		n = read(c->fd, c->in + c->in_len, READ_CHUNK - c->in_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		if (n == 0)
			return frame_decoder_partial(c->dec) ? -EPROTO : -ECONNRESET;
		c->in_len += (size_t)n;
	}
}

static void note_error(struct exec_client *c, const struct frame *f)
{
	char *text = malloc((size_t)f->len + 1);

	if (!text)
		return;
	if (f->len)
		memcpy(text, f->payload, f->len);
	text[f->len] = '\0';
	/* The text is shown to people: no terminal control characters from a peer. */
	for (char *p = text; *p; p++)
		if ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\t')
			*p = '?';
	free(c->error);
	c->error = text;
}

/* Waits for the next frame that is not READY (READY is recorded on the way), flushing
 * queued output meanwhile. ERROR frames are recorded and returned like any other. */
static int wait_frame(struct exec_client *c, int64_t deadline, struct frame *f)
{
	for (;;) {
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		int r = frame_buf_flush(&c->out, c->fd);

		if (r < 0)
			return r;
		r = pump(c, f);
		if (r < 0)
			return r;
		if (r > 0) {
			if (f->type == FRAME_READY) {
				if (frame_info_decode(f->payload, f->len, &c->ready) == 0)
					c->have_ready = true;
				continue;
			}
			/* On the control port a retried connect may leave the answer to an
			 * earlier HELLO in flight; it says nothing about this request. */
			if (f->type == FRAME_WELCOME && c->welcomed)
				continue;
			if (f->type == FRAME_ERROR)
				note_error(c, f);
			return 0;
		}
		if (c->out.len)
			p.events |= POLLOUT;
		r = poll(&p, 1, time_remaining_ms(deadline));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
	}
}

/* Writes what is queued, waiting up to the deadline. */
static int flush_all(struct exec_client *c, int64_t deadline)
{
	for (;;) {
		struct pollfd p = {.fd = c->fd, .events = POLLOUT};
		int r = frame_buf_flush(&c->out, c->fd);

		if (r < 0 || c->out.len == 0)
			return r;
		r = poll(&p, 1, time_remaining_ms(deadline));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
	}
}

int exec_client_setup(struct exec_client *c, const uint8_t token[FRAME_TOKEN_BYTES],
		      const char *share_path, int timeout_ms)
{
	_cleanup_free_ uint8_t *payload = malloc(FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH);
	size_t len;
	int r;

	if (!payload)
		return -ENOMEM;
	r = frame_setup_encode(token, share_path, payload, &len);
	if (r < 0)
		return r;
	r = frame_buf_put(&c->out, FRAME_SETUP, payload, len);
	if (r < 0)
		return r;
	return flush_all(c, time_deadline_after_ms(timeout_ms));
}

int exec_client_wait_ready(struct exec_client *c, int timeout_ms, struct frame_info *ret_info)
{
	int64_t deadline = time_deadline_after_ms(timeout_ms);

	while (!c->have_ready) {
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		struct frame f;
		int r = frame_buf_flush(&c->out, c->fd);

		if (r < 0)
			return r;
		r = pump(c, &f);

		if (r < 0)
			return r;
		if (r > 0) {
			if (f.type != FRAME_READY)
				return -EPROTO; /* nothing else may come before READY */
			r = frame_info_decode(f.payload, f.len, &c->ready);
			if (r < 0)
				return -EPROTO;
			c->have_ready = true;
			break;
		}
		if (c->out.len)
			p.events |= POLLOUT;
		r = poll(&p, 1, time_remaining_ms(deadline));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
	}
	if (ret_info)
		*ret_info = c->ready;
	return 0;
}

int exec_client_hello(struct exec_client *c, const uint8_t token[FRAME_TOKEN_BYTES], int timeout_ms)
{
	struct frame f;
	int r;

	r = frame_buf_put(&c->out, FRAME_HELLO, token, FRAME_TOKEN_BYTES);
	if (r < 0)
		return r;
	c->welcomed = false; /* this HELLO's answer is awaited, not skipped */
	r = wait_frame(c, time_deadline_after_ms(timeout_ms), &f);
	if (r == -ECONNRESET && c->error)
		return -EACCES;
	if (r < 0)
		return r;
	if (f.type == FRAME_ERROR)
		return -EACCES;
	if (f.type != FRAME_WELCOME)
		return -EPROTO;
	if (frame_get_u32(f.payload) != FRAME_PROTO_VERSION)
		return -EPROTONOSUPPORT;
	c->welcomed = true;
	return 0;
}

int exec_client_info(struct exec_client *c, int timeout_ms, struct frame_info *ret_info)
{
	struct frame f;
	int r;

	r = frame_buf_put(&c->out, FRAME_INFO, NULL, 0);
	if (r < 0)
		return r;
	r = wait_frame(c, time_deadline_after_ms(timeout_ms), &f);
	if (r < 0)
		return r;
	if (f.type != FRAME_INFO)
		return -EPROTO;
	return frame_info_decode(f.payload, f.len, ret_info) < 0 ? -EPROTO : 0;
}

int exec_client_shutdown(struct exec_client *c, int timeout_ms)
{
	int64_t deadline = time_deadline_after_ms(timeout_ms);
	struct frame f;
	int r;

	r = frame_buf_put(&c->out, FRAME_SHUTDOWN, NULL, 0);
	if (r < 0)
		return r;
	for (;;) {
		r = wait_frame(c, deadline, &f);
		/* A guest that powers off may take the connection down before its ack arrives. */
		if (r == -ECONNRESET || r == -EPIPE)
			return 0;
		if (r < 0)
			return r;
		if (f.type == FRAME_SHUTDOWN)
			return 0;
		if (f.type == FRAME_ERROR)
			return -EPROTO;
		/* Output of a command still running on this connection: not ours to show. */
	}
}

/* Writes all of data to fd, waiting when fd is non-blocking. */
static int write_all(int fd, const uint8_t *data, size_t len)
{
	while (len > 0) {
		ssize_t n = frame_send(fd, data, len);

		if (n < 0) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};

			if (n == -EINTR)
				continue;
			if (n != -EAGAIN && n != -EWOULDBLOCK)
				return (int)n;
			poll(&p, 1, -1);
			continue;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_signal(struct exec_client *c, int sig)
{
	uint8_t payload[4];

	frame_put_u32(payload, (uint32_t)sig);
	return frame_buf_put(&c->out, FRAME_SIGNAL, payload, sizeof(payload));
}

struct run_state {
	bool stdin_open;
	bool broken_pipe;
	bool timed_out;
	bool done;
	int status;
	int64_t deadline;
	unsigned signals;   /* how many signals were forwarded */
	int64_t give_up_at; /* after the first signal: when the wait ends anyway (-1: never) */
};

/* Handles one frame of a running command. */
static int run_frame(struct exec_client *c, const struct exec_client_io *io, struct run_state *s,
		     const struct frame *f)
{
	enum frame_exit_kind kind;
	uint32_t value;
	int fd, r;

	switch (f->type) {
	case FRAME_STDOUT:
	case FRAME_STDERR:
		fd = f->type == FRAME_STDOUT ? io->stdout_fd : io->stderr_fd;
		if (fd < 0 || s->broken_pipe || f->len == 0)
			return 0;
		r = write_all(fd, f->payload, f->len);
		if (r == -EPIPE) {
			/* Our reader is gone (`vmhpc-exec ... | head`): end the command as a
			 * local pipeline would, and keep draining until its EXIT. */
			s->broken_pipe = true;
			return send_signal(c, SIGKILL);
		}
		return r;
	case FRAME_EXIT:
		if (frame_exit_decode(f->payload, f->len, &kind, &value) < 0)
			return -EPROTO;
		s->status = kind == FRAME_EXIT_CODE ? (int)value : 128 + (int)value;
		s->done = true;
		return 0;
	case FRAME_ERROR:
		return -EPROTO;
	case FRAME_INFO:
	case FRAME_SHUTDOWN:
	case FRAME_WELCOME: /* an older HELLO's, on the control port */
		return 0;   /* answers to requests someone else queued on this connection */
	default:
		return -EPROTO;
	}
}

/* The state of the command exec_client_run_start started, kept in the client between
 * steps. */
struct run {
	struct run_state s;
	struct exec_client_io io;
	uint8_t chunk[READ_CHUNK];
};

static void run_free(struct exec_client *c)
{
	free(c->run);
	c->run = NULL;
}

int exec_client_run_start(struct exec_client *c, const struct frame_exec *req,
			  const struct exec_client_io *io, int timeout_ms)
{
	_cleanup_free_ uint8_t *payload = NULL;
	size_t len;
	int r;

	if (c->run)
		return -EBUSY;
	if (io->n_watch_fds > EXEC_CLIENT_MAX_WATCH_FDS)
		return -E2BIG;
	r = frame_exec_encode(req, &payload, &len);
	if (r < 0)
		return r;
	c->run = calloc(1, sizeof(*c->run));
	if (!c->run)
		return -ENOMEM;
	c->run->io = *io;
	c->run->s = (struct run_state){.stdin_open = io->stdin_fd >= 0,
				       .deadline = time_deadline_after_ms(timeout_ms),
				       .give_up_at = -1};
	r = frame_buf_put(&c->out, FRAME_EXEC, payload, len);
	if (r == 0 && !c->run->s.stdin_open)
		r = frame_buf_put(&c->out, FRAME_STDIN_EOF, NULL, 0);
	if (r < 0)
		run_free(c);
	return r;
}

unsigned exec_client_run_fds(const struct exec_client *c, struct pollfd *fds, unsigned max,
			     int *ret_timeout_ms)
{
	const struct run *run = c->run;
	const struct run_state *s;
	unsigned n = 0;
	int timeout;

	*ret_timeout_ms = 0;
	if (!run || max < 1)
		return 0;
	s = &run->s;
	timeout = time_remaining_ms(s->deadline);
	if (s->give_up_at >= 0) {
		int64_t left = s->give_up_at - time_now_ms();

		if (timeout < 0 || left < timeout)
			timeout = left > 0 ? (int)left : 0;
	}
	fds[n++] =
	    (struct pollfd){.fd = c->fd, .events = (short)(POLLIN | (c->out.len ? POLLOUT : 0))};
	if (s->stdin_open && c->out.len < STDIN_HIGH_WATER && n < max)
		fds[n++] = (struct pollfd){.fd = run->io.stdin_fd, .events = POLLIN};
	if (run->io.signal_fd >= 0 && n < max)
		fds[n++] = (struct pollfd){.fd = run->io.signal_fd, .events = POLLIN};
	for (unsigned w = 0; w < run->io.n_watch_fds && n < max; w++)
		fds[n++] = (struct pollfd){.fd = run->io.watch_fds[w], .events = POLLIN};
	*ret_timeout_ms = timeout;
	return n;
}

/* What polled ready among the run's own fds: stdin, signals, watched fds. */
static int run_handle_events(struct exec_client *c, const struct pollfd *fds, unsigned n)
{
	struct run *run = c->run;
	struct run_state *s = &run->s;
	int r;

	for (unsigned i = 0; i < n; i++) {
		if (!fds[i].revents || fds[i].fd == c->fd)
			continue;
		if (fds[i].fd == run->io.stdin_fd && s->stdin_open) {
			ssize_t got = read(run->io.stdin_fd, run->chunk, READ_CHUNK);

			if (got < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (got <= 0) {
				/* EOF, or an error that ends our stdin just the same. */
				s->stdin_open = false;
				r = frame_buf_put(&c->out, FRAME_STDIN_EOF, NULL, 0);
			} else {
				r = frame_buf_put(&c->out, FRAME_STDIN, run->chunk, (size_t)got);
			}
			if (r < 0)
				return r;
		} else if (fds[i].fd == run->io.signal_fd) {
			struct signalfd_siginfo si;

			if (read(run->io.signal_fd, &si, sizeof(si)) != (ssize_t)sizeof(si))
				continue;
			c->forwarded_signal = (int)si.ssi_signo;
			/* A second signal: the user wants out now. */
			if (s->signals++ > 0)
				return -EINTR;
			r = send_signal(c, (int)si.ssi_signo);
			if (r < 0)
				return r;
			if (run->io.signal_grace_ms > 0)
				s->give_up_at = time_now_ms() + run->io.signal_grace_ms;
		} else {
			for (unsigned w = 0; w < run->io.n_watch_fds; w++)
				if (fds[i].fd == run->io.watch_fds[w] &&
				    (fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
					/* A watched fd: what the command needs is gone. */
					return -ECANCELED;
		}
	}
	return 0;
}

/* One step of the run; 1 when it ended (*ret_status set), 0 while it runs, <0 failed. */
static int run_step(struct exec_client *c, const struct pollfd *fds, unsigned n, int *ret_status)
{
	struct run *run = c->run;
	struct run_state *s = &run->s;
	struct frame f;
	int r;

	r = run_handle_events(c, fds, n);
	if (r < 0)
		return r;
	r = frame_buf_flush(&c->out, c->fd);
	if (r < 0)
		return r;
	/* Every whole frame already here first: output is never held back by input. */
	while (!s->done && (r = pump(c, &f)) > 0) {
		if (f.type == FRAME_READY) {
			if (frame_info_decode(f.payload, f.len, &c->ready) == 0)
				c->have_ready = true;
			continue;
		}
		if (f.type == FRAME_ERROR)
			note_error(c, &f);
		r = run_frame(c, &run->io, s, &f);
		if (r < 0)
			return r;
	}
	if (r < 0)
		return r;
	if (s->done) {
		if (s->timed_out)
			return -ETIMEDOUT;
		if (s->broken_pipe)
			return -EPIPE;
		*ret_status = s->status;
		return 1;
	}
	if (s->give_up_at >= 0 && time_now_ms() >= s->give_up_at)
		return -EINTR;
	if (time_remaining_ms(s->deadline) == 0) {
		if (s->timed_out)
			return -ETIMEDOUT;
		s->timed_out = true;
		s->deadline = time_now_ms() + KILL_GRACE_MS;
		r = send_signal(c, SIGKILL);
		if (r < 0)
			return r;
		return frame_buf_flush(&c->out, c->fd);
	}
	return 0;
}

int exec_client_run_step(struct exec_client *c, const struct pollfd *fds, unsigned n,
			 int *ret_status)
{
	int r;

	if (!c->run)
		return -EINVAL;
	r = run_step(c, fds, n, ret_status);
	/* Ended either way: the client can run the next command. */
	if (r != 0)
		run_free(c);
	return r;
}

int exec_client_run(struct exec_client *c, const struct frame_exec *req,
		    const struct exec_client_io *io, int timeout_ms, int *ret_status)
{
	struct pollfd p[3 + EXEC_CLIENT_MAX_WATCH_FDS];
	unsigned n = 0;
	int r, timeout;

	r = exec_client_run_start(c, req, io, timeout_ms);
	if (r < 0)
		return r;
	while ((r = exec_client_run_step(c, p, n, ret_status)) == 0) {
		n = exec_client_run_fds(c, p, ARRAY_SIZE(p), &timeout);
		if (poll(p, n, timeout) < 0) {
			if (errno != EINTR) {
				run_free(c);
				return -errno;
			}
			n = 0;
		}
	}
	return r < 0 ? r : 0;
}

int exec_client_forwarded_signal(const struct exec_client *c)
{
	return c->forwarded_signal;
}
