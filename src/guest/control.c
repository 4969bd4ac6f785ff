/* The control port before the exec service takes it over (control.h). */
#include "guest/control.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guest/console.h"
#include "util/cleanup.h"
#include "util/time.h"

#define SCAN_INTERVAL_MS 50
#define HUP_SLEEP_MS	 20   /* the port reports POLLHUP without pause while no host is there */
#define WAITING_NOTE_MS	 5000 /* say once that we are still waiting, after this long */

static inline void cleanup_closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

/* One look through /sys/class/virtio-ports: 0 and the open port, or -ENOENT / -errno. */
static int scan_once(char *ret_path, size_t path_size, int *ret_fd)
{
	_cleanup_(cleanup_closedirp) DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int r = -ENOENT;

	while (d && (e = readdir(d))) {
		char path[PATH_MAX], name[128] = "";
		_cleanup_close_ int fd = -1;
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, name, sizeof(name) - 1);
		if (n <= 0)
			continue;
		name[n] = '\0';
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, CONTROL_PORT_NAME) != 0)
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		*ret_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (*ret_fd >= 0) {
			snprintf(ret_path, path_size, "%s", path);
			return 0;
		}
		/* devtmpfs may not have the node yet: the next scan tries again. */
		r = -errno;
	}
	return r;
}

int control_open(int timeout_ms, char *ret_path, size_t path_size, int *ret_fd)
{
	int64_t end = time_now_ms() + timeout_ms;
	int r;

	for (;;) {
		r = scan_once(ret_path, path_size, ret_fd);
		if (r == 0 || time_now_ms() >= end)
			return r;
		console_sleep_ms(SCAN_INTERVAL_MS);
	}
}

int control_read_setup(int fd, int timeout_ms, struct frame_setup *ret)
{
	int64_t start = time_now_ms(), end = start + timeout_ms;
	_cleanup_free_ uint8_t *payload = malloc(FRAME_MAX_PAYLOAD);
	uint8_t hdr[FRAME_HEADER_BYTES];
	enum frame_type type = 0;
	uint32_t len = 0;
	bool in_payload = false, noted = false;
	size_t have = 0;

	if (!payload)
		return -ENOMEM;
	for (;;) {
		size_t want = in_payload ? len : FRAME_HEADER_BYTES;
		uint8_t *dst = in_payload ? payload : hdr;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int64_t now;
		ssize_t n;
		int r;

		if (have == want) {
			if (!in_payload) {
				r = frame_header_check(hdr, &type, &len);
				if (r < 0)
					return -EBADMSG;
				in_payload = true;
				have = 0;
				continue;
			}
			if (type == FRAME_SETUP) {
				r = frame_setup_decode(payload, len, ret);
				explicit_bzero(payload, len);
				return r < 0 ? -EBADMSG : 0;
			}
			/* A host program that skipped SETUP (or an old one): its frame has no
			 * receiver yet. Drop it and keep waiting; the console says why. */
			console_say("control port: dropped %s while waiting for the host's SETUP",
				    frame_type_to_string(type));
			in_payload = false;
			have = 0;
			continue;
		}
		now = time_now_ms();
		if (now >= end)
			return -ETIMEDOUT;
		if (!noted && now - start >= WAITING_NOTE_MS) {
			console_say("still waiting for the host's SETUP on the control port");
			noted = true;
		}
		r = poll(&p, 1, (int)(end - now));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		if (!(p.revents & POLLIN)) {
			/* No host program on the other end (or it left): a frame it started is
			 * lost with it; the next host starts from the beginning. */
			in_payload = false;
			have = 0;
			console_sleep_ms(HUP_SLEEP_MS);
			continue;
		}
		n = read(fd, dst + have, want - have);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			return -errno;
		}
		if (n == 0) {
			in_payload = false;
			have = 0;
			console_sleep_ms(HUP_SLEEP_MS);
			continue;
		}
		have += (size_t)n;
	}
}

bool control_share_valid(const char *p)
{
	static const char *const reserved[] = {"/proc", "/sys", "/dev", "/run"};
	size_t len = strlen(p);

	if (p[0] != '/' || len < 2 || len > FRAME_SETUP_MAX_PATH)
		return false;
	if (strstr(p, "/./") || strstr(p, "/../") || strstr(p, "//") ||
	    strcmp(p + len - 2, "/.") == 0 || (len >= 3 && strcmp(p + len - 3, "/..") == 0) ||
	    p[len - 1] == '/')
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(reserved); i++) {
		size_t n = strlen(reserved[i]);

		if (strncmp(p, reserved[i], n) == 0 && (p[n] == '\0' || p[n] == '/'))
			return false;
	}
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}
