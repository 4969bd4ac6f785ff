/* vmhpc-exec --label-lines (label.h): every line of a rank's output starts with its label. */
#include "guest/label.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

struct stream {
	int in, out; /* the pipe from PROGRAM, where its lines go */
	char buf[LABEL_MAX_LINE];
	size_t used;
};

struct emit_ctx {
	int fd;
	const char *prefix;
};

void label_feed(char *buf, size_t *used, const char *data, size_t len,
		void (*emit)(void *ctx, const char *line, size_t line_len), void *ctx)
{
	while (len > 0) {
		size_t room = LABEL_MAX_LINE - *used, take = len < room ? len : room;
		const char *nl = memchr(data, '\n', take);

		if (nl)
			take = (size_t)(nl - data) + 1;
		memcpy(buf + *used, data, take);
		*used += take;
		data += take;
		len -= take;
		if (nl) {
			emit(ctx, buf, *used - 1);
			*used = 0;
		} else if (*used == LABEL_MAX_LINE) {
			emit(ctx, buf, *used);
			*used = 0;
		}
	}
}

static void write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the reader is gone: the line is lost, as it would be anyway */
		p += n;
		len -= (size_t)n;
	}
}

/* Writes "PREFIX LINE\n" with one write, so that lines of ranks sharing a pipe never mix. */
static void emit_line(void *ctx, const char *line, size_t line_len)
{
	const struct emit_ctx *e = ctx;
	char out[LABEL_MAX_LINE + 128];
	size_t plen = strlen(e->prefix);

	memcpy(out, e->prefix, plen);
	memcpy(out + plen, line, line_len);
	out[plen + line_len] = '\n';
	write_all(e->fd, out, plen + line_len + 1);
}

/* The labeler: copies both pipes line by line until both reach EOF. */
static void relay(struct stream *s, const char *prefix)
{
	int open_streams = 2;

	/* The launcher's signals are for PROGRAM; this process ends at EOF, after the last
	 * line, however PROGRAM ends. */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	while (open_streams > 0) {
		struct pollfd p[2] = {{.fd = s[0].in, .events = POLLIN},
				      {.fd = s[1].in, .events = POLLIN}};

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < 2; i++) {
			struct emit_ctx e = {.fd = s[i].out, .prefix = prefix};
			char data[16384];
			ssize_t n;

			if (s[i].in < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			n = read(s[i].in, data, sizeof(data));
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n > 0) {
				label_feed(s[i].buf, &s[i].used, data, (size_t)n, emit_line, &e);
				continue;
			}
			/* EOF: a last line without '\n' still gets one, so the next label
			 * starts a line. */
			if (s[i].used)
				emit_line(&e, s[i].buf, s[i].used);
			s[i].used = 0;
			close(s[i].in);
			s[i].in = -1;
			p[i].fd = -1;
			open_streams--;
		}
	}
}

int label_main(int argc, char **argv)
{
	static struct stream s[2];
	const char *rank = getenv("PMI_RANK");
	char prefix[128];
	struct utsname u;
	int out[2], err[2], i = 1;
	pid_t pid;

	if (i < argc && strcmp(argv[i], "--") == 0)
		i++;
	if (i >= argc) {
		fprintf(stderr,
			"vmhpc-exec: usage: vmhpc-exec --label-lines -- PROGRAM [ARGS...]\n");
		return 2;
	}
	if (!rank)
		rank = getenv("OMPI_COMM_WORLD_RANK");
	if (uname(&u) < 0)
		snprintf(u.nodename, sizeof(u.nodename), "?");
	snprintf(prefix, sizeof(prefix), "[%.16s@%.64s] ", rank ? rank : "?", u.nodename);

	/* Not close-on-exec: PROGRAM's stdout and stderr become their write ends. */
	if (pipe(out) < 0 || pipe(err) < 0) {
		perror("vmhpc-exec: pipe");
		return 126;
	}
	pid = fork();
	if (pid < 0) {
		perror("vmhpc-exec: fork");
		return 126;
	}
	if (pid == 0) {
		/* The labeler: its own process group, so that the launcher's kill of the rank's
		 * group does not cut the last lines short; it ends at EOF in any case. */
		setpgid(0, 0);
		/* Nothing of PROGRAM's but its output: the launcher's PMI socket and the
		 * pipes' write ends stay PROGRAM's alone. */
		for (int fd = 3; fd < 1024; fd++)
			if (fd != out[0] && fd != err[0])
				close(fd);
		s[0].in = out[0];
		s[0].out = STDOUT_FILENO;
		s[1].in = err[0];
		s[1].out = STDERR_FILENO;
		relay(s, prefix);
		_exit(0);
	}
	if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(err[1], STDERR_FILENO) < 0) {
		perror("vmhpc-exec: dup2");
		return 126;
	}
	close(out[0]);
	close(out[1]);
	close(err[0]);
	close(err[1]);
	execvp(argv[i], argv + i);
	fprintf(stderr, "vmhpc-exec: %s: %s\n", argv[i], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
