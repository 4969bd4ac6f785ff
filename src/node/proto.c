#include "node/proto.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *const type_names[_NODE_MSG_TYPE_MAX] = {
    [NODE_MSG_REQUEST] = "request", [NODE_MSG_REQUEST_MUNGE] = "request-munge",
    [NODE_MSG_REPLY] = "reply",	    [NODE_MSG_META] = "meta",
    [NODE_MSG_WANT] = "want",	    [NODE_MSG_CHUNK] = "chunk",
    [NODE_MSG_END] = "end",	    [NODE_MSG_ERROR] = "error",
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

static int send_all(int fd, const void *data, size_t len, int timeout_ms)
{
	const uint8_t *p = data;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		int r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(fd, POLLOUT, timeout_ms);
			if (r < 0)
				return r;
			continue;
		}
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receives len bytes by deadline_ms (CLOCK_MONOTONIC): a deadline for the whole, not a
 * timeout between bytes, so that a peer that trickles is as late as a silent one. */
static int recv_all(int fd, void *data, size_t len, int64_t deadline_ms)
{
	uint8_t *p = data;

	while (len > 0) {
		ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
		int64_t left;
		int r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			left = deadline_ms - now_ms();
			if (left <= 0)
				return -ETIMEDOUT;
			r = wait_fd(fd, POLLIN, left > INT32_MAX ? INT32_MAX : (int)left);
			if (r < 0)
				return r;
			continue;
		}
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int node_proto_send(int fd, enum node_msg_type type, const void *payload, size_t len,
		    int timeout_ms)
{
	uint8_t h[NODE_PROTO_HEADER_BYTES];
	int r;

	if (len > NODE_PROTO_MAX_PAYLOAD)
		return -EMSGSIZE;
	node_proto_header_encode(type, (uint32_t)len, h);
	r = send_all(fd, h, sizeof(h), timeout_ms);
	if (r < 0 || len == 0)
		return r;
	return send_all(fd, payload, len, timeout_ms);
}

int node_proto_recv(int fd, uint32_t max_payload, int timeout_ms, enum node_msg_type *ret_type,
		    char **ret_payload, size_t *ret_len)
{
	uint8_t h[NODE_PROTO_HEADER_BYTES];
	enum node_msg_type type;
	uint32_t len;
	char *buf;
	int r;

	r = recv_all(fd, h, sizeof(h), now_ms() + timeout_ms);
	if (r < 0)
		return r;
	r = node_proto_header_decode(h, max_payload, &type, &len);
	if (r < 0)
		return r;
	buf = malloc((size_t)len + 1);
	if (!buf)
		return -ENOMEM;
	r = recv_all(fd, buf, len,
		     now_ms() + timeout_ms + (int64_t)len / NODE_PROTO_SLOW_BYTES_PER_MS);
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
