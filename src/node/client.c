#include "node/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "node/auth.h"
#include "node/proto.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"

int node_peer_address(const char *peers_file, const char *name, uint16_t default_port,
		      char **ret_addr, char **ret_error)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	char *save = NULL, *line;
	int r;

	if (peers_file) {
		r = fs_read_file(peers_file, 1u << 20, &text, &len);
		if (r < 0)
			return error_set(ret_error, r, "reading the peers file %s: %s", peers_file,
					 strerror(-r));
		for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			char n[128], a[256];

			if (line[0] == '#' || sscanf(line, "%127s %255s", n, a) != 2)
				continue;
			if (strcmp(n, name) == 0) {
				*ret_addr = strdup(a);
				return *ret_addr ? 0 : -ENOMEM;
			}
		}
		return error_set(ret_error, -ENOENT, "node %s is not in the peers file %s", name,
				 peers_file);
	}
	if (asprintf(ret_addr, "%s:%u", name, default_port) < 0)
		return -ENOMEM;
	return 0;
}

int node_connect_tcp(const char *addr, int timeout_ms, int *ret_fd, char **ret_error)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	_cleanup_free_ char *host = strdup(addr);
	_cleanup_close_ int fd = -1;
	struct pollfd p;
	char *colon;
	int r, err = 0;
	socklen_t elen = sizeof(err);

	if (!host)
		return -ENOMEM;
	colon = strrchr(host, ':');
	if (!colon)
		return error_set(ret_error, -EINVAL, "'%s' is not HOST:PORT", addr);
	*colon = 0;
	r = getaddrinfo(host, colon + 1, &hints, &ai);
	if (r != 0)
		return error_set(ret_error, -EHOSTUNREACH, "resolving %s: %s", addr,
				 gai_strerror(r));
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		freeaddrinfo(ai);
		return error_set(ret_error, r, "socket: %s", strerror(-r));
	}
	r = connect(fd, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	if (r < 0 && errno != EINPROGRESS)
		return error_set(ret_error, -errno, "connecting to %s: %s", addr, strerror(errno));
	if (r < 0) {
		p = (struct pollfd){.fd = fd, .events = POLLOUT};
		do
			r = poll(&p, 1, timeout_ms);
		while (r < 0 && errno == EINTR);
		if (r == 0)
			return error_set(ret_error, -ETIMEDOUT,
					 "connecting to %s: no answer within %d ms", addr,
					 timeout_ms);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
			err = errno;
		if (err)
			return error_set(ret_error, -err, "connecting to %s: %s", addr,
					 strerror(err));
	}
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int node_send_signed(int fd, const char *munge_socket, json_t *req, int timeout_ms,
		     char **ret_error)
{
	_cleanup_free_ char *text = json_dumps(req, JSON_COMPACT), *cred = NULL;
	int r;

	if (!text)
		return -ENOMEM;
	r = node_auth_encode(munge_socket, text, strlen(text), &cred, ret_error);
	if (r < 0)
		return r;
	r = node_proto_send(fd, NODE_MSG_REQUEST_MUNGE, cred, strlen(cred), timeout_ms);
	if (r < 0)
		return error_set(ret_error, r, "sending the request: %s", strerror(-r));
	return 0;
}

static int read_reply(int fd, int timeout_ms, json_t **ret_reply, char **ret_error)
{
	_cleanup_free_ char *payload = NULL;
	enum node_msg_type type;
	json_error_t jerr;
	json_t *reply, *ok;
	size_t len;
	int r;

	r = node_proto_recv(fd, NODE_PROTO_MAX_PAYLOAD, timeout_ms, &type, &payload, &len);
	if (r == -ETIMEDOUT)
		return error_set(ret_error, r, "no reply within %d s", timeout_ms / 1000);
	if (r < 0)
		return error_set(ret_error, r, "reading the reply: %s", strerror(-r));
	if (type != NODE_MSG_REPLY)
		return error_set(ret_error, -EBADMSG, "expected a reply, got a %s frame",
				 node_msg_type_to_string(type));
	reply = json_loadb(payload, len, 0, &jerr);
	if (!json_is_object(reply)) {
		json_decref(reply);
		return error_set(ret_error, -EBADMSG, "the reply is not a JSON object");
	}
	ok = json_object_get(reply, "ok");
	if (!json_is_true(ok)) {
		const char *e = json_string_value(json_object_get(reply, "error"));

		r = error_set(ret_error, -EREMOTEIO, "%s", e ? e : "refused without a reason");
		json_decref(reply);
		return r;
	}
	*ret_reply = reply;
	return 0;
}

int node_client_local(const char *path, json_t *req, int timeout_ms, json_t **ret_reply,
		      char **ret_error)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	_cleanup_free_ char *text = json_dumps(req, JSON_COMPACT);
	_cleanup_close_ int fd = -1;
	int r;

	if (!text)
		return -ENOMEM;
	if (strlen(path) >= sizeof(sa.sun_path))
		return error_set(ret_error, -ENAMETOOLONG, "socket path %s is too long", path);
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return error_set(ret_error, -errno,
				 "connecting to the node daemon at %s: %s (is `vmhpc node` "
				 "running?)",
				 path, strerror(errno));
	r = node_proto_send(fd, NODE_MSG_REQUEST, text, strlen(text), timeout_ms);
	if (r < 0)
		return error_set(ret_error, r, "sending to %s: %s", path, strerror(-r));
	return read_reply(fd, timeout_ms, ret_reply, ret_error);
}

int node_client_peer(const char *addr, const char *munge_socket, json_t *req, int timeout_ms,
		     json_t **ret_reply, char **ret_error)
{
	_cleanup_close_ int fd = -1;
	int r;

	r = node_connect_tcp(addr, timeout_ms < 5000 ? timeout_ms : 5000, &fd, ret_error);
	if (r < 0)
		return r;
	r = node_send_signed(fd, munge_socket, req, timeout_ms, ret_error);
	if (r < 0)
		return r;
	return read_reply(fd, timeout_ms, ret_reply, ret_error);
}

const char *node_error_past_name(const char *node, const char *error)
{
	size_t n = strlen(node);

	if (strncmp(error, "node ", 5) == 0 && strncmp(error + 5, node, n) == 0 &&
	    strncmp(error + 5 + n, ": ", 2) == 0)
		return error + 5 + n + 2;
	return error;
}
