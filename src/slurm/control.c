/* The per-job control socket (control.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "slurm/control.h"
#include "util/cleanup.h"
#include "util/error.h"

static int make_addr(const char *path, struct sockaddr_un *sa, char **ret_error)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return error_set(ret_error, -ENAMETOOLONG,
				 "control socket %s: path longer than %zu bytes", path,
				 sizeof(sa->sun_path) - 1);
	strcpy(sa->sun_path, path);
	return 0;
}

int slurmctl_listen(const char *path, int *ret_fd, char **ret_error)
{
	struct sockaddr_un sa;
	_cleanup_close_ int fd = -1;
	int r;

	r = make_addr(path, &sa, ret_error);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return error_set(ret_error, -errno, "control socket: %s", strerror(errno));
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0666) < 0 ||
	    listen(fd, 16) < 0)
		return error_set(ret_error, -errno, "control socket %s: %s", path, strerror(errno));
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int slurmctl_connect(const char *path, int *ret_fd, char **ret_error)
{
	struct sockaddr_un sa;
	_cleanup_close_ int fd = -1;
	int r;

	r = make_addr(path, &sa, ret_error);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return error_set(ret_error, -errno, "control socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return error_set(ret_error, -errno, "connecting to %s: %s", path, strerror(errno));
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int slurmctl_peer_uid(int fd, uid_t *ret_uid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	*ret_uid = cred.uid;
	return 0;
}

int slurmctl_send(int fd, json_t *msg, const int *fds, unsigned n_fds)
{
	_cleanup_free_ char *text = json_dumps(msg, JSON_COMPACT);
	union {
		char buf[CMSG_SPACE(sizeof(int) * SLURMCTL_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (!text)
		return -ENOMEM;
	if (strlen(text) > SLURMCTL_MAX_MSG || n_fds > SLURMCTL_MAX_FDS)
		return -E2BIG;
	iov.iov_base = text;
	iov.iov_len = strlen(text);
	if (n_fds) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
	}
	while (sendmsg(fd, &mh, MSG_NOSIGNAL) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

int slurmctl_recv(int fd, int timeout_ms, json_t **ret_msg, int *ret_fds, unsigned *ret_n_fds)
{
	_cleanup_free_ char *buf = malloc(SLURMCTL_MAX_MSG + 1);
	union {
		char buf[CMSG_SPACE(sizeof(int) * SLURMCTL_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = buf, .iov_len = SLURMCTL_MAX_MSG};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf)};
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	unsigned n_fds = 0;
	json_t *msg;
	ssize_t n;
	int r;

	if (!buf)
		return -ENOMEM;
	do
		r = poll(&pfd, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == ECONNRESET ? -EPIPE : -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int got;

			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (ret_fds && ret_n_fds && n_fds < SLURMCTL_MAX_FDS)
				ret_fds[n_fds++] = got;
			else
				close(got);
		}
	}
	if (ret_n_fds)
		*ret_n_fds = n_fds;
	if (n == 0) {
		for (unsigned i = 0; i < n_fds; i++)
			close(ret_fds[i]);
		if (ret_n_fds)
			*ret_n_fds = 0;
		return -EPIPE;
	}
	buf[n] = 0;
	msg = json_loads(buf, 0, NULL);
	if (!msg || !json_is_object(msg)) {
		json_decref(msg);
		for (unsigned i = 0; i < n_fds; i++)
			close(ret_fds[i]);
		if (ret_n_fds)
			*ret_n_fds = 0;
		return -EBADMSG;
	}
	*ret_msg = msg;
	return 0;
}
