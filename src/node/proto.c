#include "node/proto.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/time.h"

static const char *const type_names[_NODE_MSG_TYPE_MAX] = {
    [NODE_MSG_REQUEST] = "request", [NODE_MSG_REQUEST_MUNGE] = "request-munge",
    [NODE_MSG_REPLY] = "reply",	    [NODE_MSG_META_JSON] = "meta-json",
    [NODE_MSG_WANT] = "want",	    [NODE_MSG_CHUNK] = "chunk",
    [NODE_MSG_END] = "end",	    [NODE_MSG_ERROR] = "error",
    [NODE_MSG_META] = "meta",
};

const char *node_msg_type_to_string(enum node_msg_type type)
{
	if ((int)type < 0 || type >= _NODE_MSG_TYPE_MAX)
		return NULL;
	return type_names[type];
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = (v >> 24) & 0xff;
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void node_proto_header_encode(enum node_msg_type type, uint32_t len,
			      uint8_t out[NODE_PROTO_HEADER_BYTES])
{
	put_le32(out, NODE_PROTO_MAGIC);
	out[4] = type & 0xff;
	out[5] = (type >> 8) & 0xff;
	out[6] = 0;
	out[7] = 0;
	put_le32(out + 8, len);
}

int node_proto_header_decode(const uint8_t in[NODE_PROTO_HEADER_BYTES], uint32_t max_payload,
			     enum node_msg_type *ret_type, uint32_t *ret_len)
{
	uint32_t type, len;

	if (get_le32(in) != NODE_PROTO_MAGIC || in[6] != 0 || in[7] != 0)
		return -EBADMSG;
	type = (uint32_t)in[4] | (uint32_t)in[5] << 8;
	if (type == 0 || type >= _NODE_MSG_TYPE_MAX)
		return -EBADMSG;
	len = get_le32(in + 8);
	if (max_payload > NODE_PROTO_MAX_PAYLOAD)
		max_payload = NODE_PROTO_MAX_PAYLOAD;
	if (len > max_payload)
		return -EMSGSIZE;
	*ret_type = (enum node_msg_type)type;
	*ret_len = len;
	return 0;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = events};
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	return 0;
}

/* Receives what the socket has, up to len bytes, waiting for some until deadline_ms
 * (CLOCK_MONOTONIC): how many, or -ETIMEDOUT, -ECONNRESET at end of file, another -errno. */
static ssize_t recv_some(int fd, void *buf, size_t len, int64_t deadline_ms)
{
	for (;;) {
		ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
		int left, r;

		if (n > 0)
			return n;
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		left = time_remaining_ms(deadline_ms);
		if (left == 0)
			return -ETIMEDOUT;
		r = wait_fd(fd, POLLIN, left);
		if (r < 0)
			return r;
	}
}

/* Receives len bytes by deadline_ms: a deadline for the whole, not a timeout between
 * bytes, so that a peer that trickles is as late as a silent one. */
static int recv_all(int fd, void *data, size_t len, int64_t deadline_ms)
{
	uint8_t *p = data;

	while (len > 0) {
		ssize_t n = recv_some(fd, p, len, deadline_ms);

		if (n < 0)
			return (int)n;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int node_proto_send(int fd, enum node_msg_type type, const void *payload, size_t len,
		    int timeout_ms)
{
	struct iovec part = {.iov_base = (void *)payload, .iov_len = len};

	return node_proto_sendv(fd, type, &part, len ? 1 : 0, timeout_ms);
}

int node_proto_sendv(int fd, enum node_msg_type type, const struct iovec *parts, int n,
		     int timeout_ms)
{
	uint8_t h[NODE_PROTO_HEADER_BYTES];
	struct iovec iov[5];
	struct msghdr msg = {.msg_iov = iov};
	size_t len = 0;

	if (n < 0 || n > 4)
		return -EINVAL;
	iov[0] = (struct iovec){.iov_base = h, .iov_len = sizeof(h)};
	for (int i = 0; i < n; i++) {
		iov[i + 1] = parts[i];
		len += parts[i].iov_len;
	}
	if (len > NODE_PROTO_MAX_PAYLOAD)
		return -EMSGSIZE;
	node_proto_header_encode(type, (uint32_t)len, h);
	msg.msg_iovlen = (size_t)n + 1;
	while (msg.msg_iovlen > 0) {
		ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		int r;

		if (sent < 0 && errno == EINTR)
			continue;
		if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(fd, POLLOUT, timeout_ms);
			if (r < 0)
				return r;
			continue;
		}
		if (sent < 0)
			return -errno;
		/* Skip what went out: whole parts, then into the first one left. */
		while (msg.msg_iovlen > 0 && (size_t)sent >= msg.msg_iov[0].iov_len) {
			sent -= (ssize_t)msg.msg_iov[0].iov_len;
			msg.msg_iov++;
			msg.msg_iovlen--;
		}
		if (msg.msg_iovlen > 0) {
			msg.msg_iov[0].iov_base = (uint8_t *)msg.msg_iov[0].iov_base + sent;
			msg.msg_iov[0].iov_len -= (size_t)sent;
		}
	}
	return 0;
}

/* One frame from source (the socket itself, or a node_proto_reader's buffer) through take:
 * its header, then its payload given time for its size. */
static int recv_frame(int (*take)(void *source, void *dst, size_t len, int64_t deadline_ms),
		      void *source, uint32_t max_payload, int timeout_ms,
		      enum node_msg_type *ret_type, char **ret_payload, size_t *ret_len)
{
	uint8_t h[NODE_PROTO_HEADER_BYTES];
	enum node_msg_type type;
	uint32_t len;
	char *buf;
	int r;

	r = take(source, h, sizeof(h), time_now_ms() + timeout_ms);
	if (r < 0)
		return r;
	r = node_proto_header_decode(h, max_payload, &type, &len);
	if (r < 0)
		return r;
	buf = malloc((size_t)len + 1);
	if (!buf)
		return -ENOMEM;
	r = take(source, buf, len,
		 time_now_ms() + timeout_ms + (int64_t)len / NODE_PROTO_SLOW_BYTES_PER_MS);
	if (r < 0) {
		free(buf);
		return r;
	}
	buf[len] = 0;
	*ret_type = type;
	*ret_payload = buf;
	*ret_len = len;
	return 0;
}

static int take_socket(void *source, void *dst, size_t len, int64_t deadline_ms)
{
	return recv_all(*(int *)source, dst, len, deadline_ms);
}

int node_proto_recv(int fd, uint32_t max_payload, int timeout_ms, enum node_msg_type *ret_type,
		    char **ret_payload, size_t *ret_len)
{
	return recv_frame(take_socket, &fd, max_payload, timeout_ms, ret_type, ret_payload,
			  ret_len);
}

#define READER_BYTES (256u * 1024)

struct node_proto_reader {
	int fd;
	uint8_t *buf;
	size_t start, end; /* unread bytes are buf[start, end) */
};

struct node_proto_reader *node_proto_reader_new(int fd)
{
	struct node_proto_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->buf = malloc(READER_BYTES);
	if (!r->buf) {
		free(r);
		return NULL;
	}
	r->fd = fd;
	return r;
}

void node_proto_reader_free(struct node_proto_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	free(r);
}

/* Fills dst with len bytes, first from what r holds, then from the socket by deadline_ms;
 * a read that is not for a larger payload than the buffer refills the buffer as far as the
 * socket allows, so that the next frames need no call. */
static int reader_take(void *source, void *dst, size_t len, int64_t deadline_ms)
{
	struct node_proto_reader *r = source;
	uint8_t *p = dst;

	while (len > 0) {
		size_t have = r->end - r->start;
		ssize_t n;

		if (have > 0) {
			size_t k = have < len ? have : len;

			memcpy(p, r->buf + r->start, k);
			r->start += k;
			p += k;
			len -= k;
			continue;
		}
		r->start = r->end = 0;
		/* A large remainder goes straight to dst; the buffer is for small frames. */
		if (len >= READER_BYTES)
			n = recv_some(r->fd, p, len, deadline_ms);
		else
			n = recv_some(r->fd, r->buf, READER_BYTES, deadline_ms);
		if (n < 0)
			return (int)n;
		if (len >= READER_BYTES) {
			p += n;
			len -= (size_t)n;
		} else
			r->end = (size_t)n;
	}
	return 0;
}

int node_proto_reader_recv(struct node_proto_reader *r, uint32_t max_payload, int timeout_ms,
			   enum node_msg_type *ret_type, char **ret_payload, size_t *ret_len)
{
	return recv_frame(reader_take, r, max_payload, timeout_ms, ret_type, ret_payload, ret_len);
}
