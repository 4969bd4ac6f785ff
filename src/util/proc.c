#include "util/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/cleanup.h"

struct sink {
	int fd;
	char *buf;
	size_t len;
};

static void sink_read(struct sink *s)
{
	char chunk[8192];
	ssize_t n = read(s->fd, chunk, sizeof(chunk));

	if (n <= 0) {
		if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
			close(s->fd);
			s->fd = -1;
		}
		return;
	}
	if (s->len + (size_t)n > PROC_OUTPUT_MAX_BYTES)
		return; /* keep draining so the child never blocks, but drop the excess */
	char *grown = realloc(s->buf, s->len + (size_t)n + 1);
	if (!grown)
		return;
	s->buf = grown;
	memcpy(s->buf + s->len, chunk, (size_t)n);
	s->len += (size_t)n;
	s->buf[s->len] = '\0';
}

int proc_join_namespaces(const struct proc_namespaces *ns)
{
	if (!ns)
		return 0;
	/* User first: joining the network namespace needs CAP_SYS_ADMIN in the user namespace
	 * that owns it, which a plain user has only once inside it. */
	if (ns->user_fd >= 0 && setns(ns->user_fd, CLONE_NEWUSER) < 0)
		return -errno;
	if (ns->net_fd >= 0 && setns(ns->net_fd, CLONE_NEWNET) < 0)
		return -errno;
	return 0;
}

static void child_exec(char *const argv[], const struct proc_options *opts, int out_w, int err_w,
		       pid_t parent)
{
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

	/* Die with the parent: a build killed with SIGKILL must not leave mke2fs running. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
	/* First: the dup2()s below may land on the fds that name the namespaces. */
	if (opts && proc_join_namespaces(opts->namespaces) < 0)
		_exit(126);
	if (opts && opts->stdin_fd > 0)
		dup2(opts->stdin_fd, STDIN_FILENO);
	else if (devnull >= 0)
		dup2(devnull, STDIN_FILENO);
	if (out_w >= 0)
		dup2(out_w, STDOUT_FILENO);
	if (err_w >= 0)
		dup2(err_w, STDERR_FILENO);
	if (opts && opts->cwd && chdir(opts->cwd) < 0)
		_exit(126);

	if (opts && opts->extra_env)
		for (char *const *e = opts->extra_env; *e; e++)
			putenv(*e);
	execvp(argv[0], argv);
	_exit(127);
}

int proc_run(char *const argv[], const struct proc_options *opts, char **ret_stdout,
	     char **ret_stderr, int *ret_exit_code)
{
	int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
	struct sink out = {.fd = -1}, err = {.fd = -1};
	bool collect_out = !(opts && opts->stdout_fd >= 0);
	pid_t parent = getpid(), pid;
	int status;

	if ((collect_out && pipe2(out_pipe, O_CLOEXEC) < 0) || pipe2(err_pipe, O_CLOEXEC) < 0) {
		int r = -errno;

		if (out_pipe[0] >= 0) {
			close(out_pipe[0]);
			close(out_pipe[1]);
		}
		return r;
	}
	pid = fork();
	if (pid < 0) {
		int r = -errno;

		if (collect_out) {
			close(out_pipe[0]);
			close(out_pipe[1]);
		}
		close(err_pipe[0]);
		close(err_pipe[1]);
		return r;
	}
	if (pid == 0)
		child_exec(argv, opts, collect_out ? out_pipe[1] : opts->stdout_fd, err_pipe[1],
			   parent);
	if (collect_out)
		close(out_pipe[1]);
	close(err_pipe[1]);
	out.fd = collect_out ? out_pipe[0] : -1;
	err.fd = err_pipe[0];
	while (out.fd >= 0 || err.fd >= 0) {
		struct pollfd pfd[2] = {{.fd = out.fd, .events = POLLIN},
					{.fd = err.fd, .events = POLLIN}};

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (out.fd >= 0 && pfd[0].revents)
			sink_read(&out);
		if (err.fd >= 0 && pfd[1].revents)
			sink_read(&err);
	}
	if (out.fd >= 0)
		close(out.fd);
	if (err.fd >= 0)
		close(err.fd);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			free(out.buf);
			free(err.buf);
			return -errno;
		}
	}
	if (ret_stdout)
		*ret_stdout = out.buf ? out.buf : strdup("");
	else
		free(out.buf);
	if (ret_stderr)
		*ret_stderr = err.buf ? err.buf : strdup("");
	else
		free(err.buf);
	*ret_exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	return 0;
}

int proc_spawn(char *const argv[], const char *log_path, pid_t *ret_pid)
{
	pid_t parent = getpid(), pid;
	int log_fd = open(log_path ? log_path : "/dev/null",
			  O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

	if (log_fd < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int r = -errno;

		close(log_fd);
		return r;
	}
	if (pid == 0) {
		setpgid(0, 0); /* a terminal's Ctrl-C reaches vmhpc, which then stops us in order */
		child_exec(argv, NULL, log_fd, log_fd, parent);
	}
	close(log_fd);
	*ret_pid = pid;
	return 0;
}

char *proc_last_line(const char *text)
{
	const char *end, *start;

	if (!text)
		return strdup("");
	end = text + strlen(text);
	while (end > text && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		end--;
	start = end;
	while (start > text && start[-1] != '\n')
		start--;
	return strndup(start, (size_t)(end - start));
}
