#include "vm/virtiofsd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/proc.h"

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int virtiofsd_start(const char *dir, const char *socket_path, const char *log_path, int timeout_ms,
		    pid_t *ret_pid, char **ret_error)
{
	_cleanup_free_ char *sock_opt = NULL, *source_opt = NULL;
	long deadline = now_ms() + timeout_ms;
	pid_t pid;
	int r, status;

	if (access(VIRTIOFSD_PATH, X_OK) < 0)
		return error_set(ret_error, -ENOENT,
				 "%s not found; install qemu-system-x86 (or run with --no-share)",
				 VIRTIOFSD_PATH);
	if (asprintf(&sock_opt, "--socket-path=%s", socket_path) < 0 ||
	    asprintf(&source_opt, "source=%s", dir) < 0)
		return -ENOMEM;
	{
		/* cache=auto: the guest may cache, but revalidates, so files written on the
		 * host meanwhile are seen; the job folder is the user's ordinary directory. */
		char *argv[] = {
		    VIRTIOFSD_PATH, sock_opt,	      "-o", source_opt, "-o", "cache=auto",
		    "-o",	    "log_level=warn", NULL};

		r = proc_spawn(argv, log_path, &pid);
	}
	if (r < 0)
		return error_set(ret_error, r, "starting virtiofsd: %s", strerror(-r));
	while (!fs_exists(socket_path)) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return error_set(
			    ret_error, -EIO, "virtiofsd for %s exited at start (exit %d); see %s",
			    dir, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
			    log_path ? log_path : "its log");
		if (now_ms() > deadline) {
			virtiofsd_stop(pid);
			return error_set(ret_error, -ETIMEDOUT,
					 "virtiofsd for %s did not start; see %s", dir,
					 log_path ? log_path : "its log");
		}
		usleep(5000);
	}
	*ret_pid = pid;
	return 0;
}

void virtiofsd_stop(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	for (int i = 0; i < 100; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}
