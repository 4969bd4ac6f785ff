#include "vm/virtiofsd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/sock.h"
#include "vm/sandbox.h"

/* Where the child mounts its private tmpfs: any existing directory does, it is hidden
 * only in the child's mount namespace. */
/* The FHS's mount point for temporary mounts: hidden from virtiofsd alone under a private
 * tmpfs. Not /tmp, where programs and job folders often live (the folder is bound from its
 * fd, so any path works; the program must still be visible at the exec). */
#define SHARE_TMPFS_DIR "/mnt"
#define SHARE_NAME	"job"
#define LOG_TAIL_LINES	8
/* How long a started virtiofsd is watched for an early exit (bad option, capabilities). */
#define SETTLE_MS 150

/* The steps of the child, in order; the one that failed is reported through a pipe. */
enum step {
	STEP_FDS,
	STEP_USER,
	STEP_OPEN_DIR,
	STEP_USERNS,
	STEP_BIND,
	STEP_CAPS,
	STEP_SECCOMP,
	STEP_EXEC,
	_STEP_MAX,
};

static const char *step_to_string(enum step s)
{
	static const char *const names[_STEP_MAX] = {
	    [STEP_FDS] = "setting up its file descriptors",
	    [STEP_USER] = "switching to the submitting user",
	    [STEP_OPEN_DIR] = "opening the job folder as the submitting user",
	    [STEP_USERNS] = "entering a user namespace",
	    [STEP_BIND] = "mounting the job folder in its private mount namespace",
	    [STEP_CAPS] = "keeping its capabilities across exec",
	    [STEP_SECCOMP] = "loading its seccomp filter",
	    [STEP_EXEC] = "executing virtiofsd",
	};
	return s < _STEP_MAX ? names[s] : "?";
}

struct child_report {
	int step;
	int error; /* errno */
};

static _Noreturn void child_fail(int report_fd, enum step s, int r)
{
	struct child_report rep = {.step = (int)s, .error = r < 0 ? -r : r};

	(void)!write(report_fd, &rep, sizeof(rep));
	_exit(127);
}

/* The child: confines itself step by step (src/vm/sandbox.h), then execs virtiofsd. The
 * parent is single-threaded, so the allocations libseccomp makes here are safe. */
static _Noreturn void child_run(const struct virtiofsd_config *c, int listen_fd, int log_fd,
				int report_fd, int go_fd, char **argv)
{
	_cleanup_close_ int dir_fd = -1;
	int null_fd, r;

	/* The parent's word that it recorded our pid: end of file means it died or gave up
	 * first, and a server nobody recorded must not run. */
	if (go_fd >= 0) {
		char go;
		ssize_t n;

		do
			n = read(go_fd, &go, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			_exit(127);
	}

	/* A terminal's Ctrl-C reaches vmhpc, which then stops us in order; a server that
	 * outlives vmhpc (a handed-over job) leaves its session too. */
	if (c->outlive_caller)
		setsid();
	else
		setpgid(0, 0);
	/* Move what we keep above the three standard fds and fd 3 (virtiofsd's --fd). */
	listen_fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 10);
	log_fd = log_fd >= 0 ? fcntl(log_fd, F_DUPFD_CLOEXEC, 10) : -1;
	report_fd = fcntl(report_fd, F_DUPFD_CLOEXEC, 10);
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (report_fd < 0)
		_exit(127);
	if (listen_fd < 0 || null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 ||
	    dup2(log_fd >= 0 ? log_fd : null_fd, STDOUT_FILENO) < 0 ||
	    dup2(log_fd >= 0 ? log_fd : null_fd, STDERR_FILENO) < 0 || dup2(listen_fd, 3) < 0)
		child_fail(report_fd, STEP_FDS, -errno);

	r = sandbox_become_user(c->uid, c->gid);
	if (r < 0)
		child_fail(report_fd, STEP_USER, r);
	/* As the user: a folder the user cannot reach is not shared, and a folder swapped
	 * since the caller checked it (a parent turned into a symlink) is refused. */
	r = sandbox_open_checked_dir(c->dir, c->dir_dev, c->dir_ino, &dir_fd);
	if (r < 0)
		child_fail(report_fd, STEP_OPEN_DIR, r);
	r = sandbox_enter_userns();
	if (r < 0)
		child_fail(report_fd, STEP_USERNS, r);
	/* A bind mount's source must be in our own mount namespace, which is new: open the
	 * folder again in it, and again it must be the one checked. */
	close(TAKE_FD(dir_fd));
	r = sandbox_open_checked_dir(c->dir, c->dir_dev, c->dir_ino, &dir_fd);
	if (r < 0)
		child_fail(report_fd, STEP_OPEN_DIR, r);
	r = sandbox_bind_dir(dir_fd, SHARE_TMPFS_DIR, SHARE_NAME);
	if (r < 0)
		child_fail(report_fd, STEP_BIND, r);
	{
		/* virtiofsd holds an fd per inode the guest has looked up; without
		 * CAP_SYS_RESOURCE over the host it cannot raise its hard limit (it then goes
		 * on with the soft one, often 1024), so it gets all of the hard limit here. */
		struct rlimit rl;

		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	r = sandbox_keep_caps_across_exec();
	if (r < 0)
		child_fail(report_fd, STEP_CAPS, r);
	/* The credentials no longer change from here: set now, the death signal stays. */
	if (!c->outlive_caller && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		child_fail(report_fd, STEP_FDS, -errno);
	r = sandbox_seccomp_load();
	if (r < 0)
		child_fail(report_fd, STEP_SECCOMP, r);
	execv(argv[0], argv);
	child_fail(report_fd, STEP_EXEC, -errno);
}

char *virtiofsd_log_tail(const char *log_path)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	const char *p;
	int lines = 0;

	if (!log_path || fs_read_file(log_path, 1u << 20, &text, &len) < 0 || len == 0)
		return NULL;
	while (len > 0 && text[len - 1] == '\n')
		text[--len] = '\0';
	p = text + len;
	while (p > text && lines < LOG_TAIL_LINES)
		if (*--p == '\n')
			lines++;
	return strdup(p == text ? p : p + 1);
}

static int exited_at_start(const struct virtiofsd_config *c, int status, char **ret_error)
{
	_cleanup_free_ char *tail = virtiofsd_log_tail(c->log_path);
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

	/* The log lives in the job directory, which a failed boot removes: its lines go
	 * into the message instead of its path. */
	return error_set(ret_error, -EIO, "virtiofsd for %s exited at start (exit %d)%s%s", c->dir,
			 code, tail ? "; its log says:\n" : " without a message", tail ? tail : "");
}

int virtiofsd_start(const struct virtiofsd_config *c, pid_t *ret_pid, char **ret_error)
{
	_cleanup_close_ int listen_fd = -1, log_fd = -1, report_rd = -1, report_wr = -1;
	_cleanup_close_ int go_rd = -1, go_wr = -1;
	char source_opt[64];
	char *argv[] = {(char *)(c->program ? c->program : VIRTIOFSD_PATH), "--fd=3",
			/* raised in the child instead, see there */
			"--rlimit-nofile=0", "-o", source_opt,
			/* the guest may cache, but revalidates: files written on the host
			 * meanwhile are seen; the job folder is the user's ordinary directory */
			"-o", "cache=auto", "-o", "sandbox=namespace",
			/* no xattrs: no security.capability for the guest to set */
			"-o", "no_xattr", "-o", "log_level=warn", NULL};
	struct child_report rep;
	ssize_t n;
	pid_t pid;
	int r, status;

	if (access(argv[0], X_OK) < 0)
		return error_set(ret_error, -ENOENT,
				 "%s not found; install qemu-system-x86 (or run with --no-share)",
				 argv[0]);
	snprintf(source_opt, sizeof(source_opt), "source=%s/%s", SHARE_TMPFS_DIR, SHARE_NAME);
	r = sock_listen_unix(c->socket_path, SOCK_STREAM, 0, 1, &listen_fd);
	if (r < 0)
		return error_set(ret_error, r, "making virtiofsd's socket %s: %s", c->socket_path,
				 strerror(-r));
	if (c->log_path) {
		log_fd = open(c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (log_fd < 0)
			return error_set(ret_error, -errno, "opening %s: %m", c->log_path);
	}
	{
		int p[2];

		if (pipe2(p, O_CLOEXEC) < 0)
			return -errno;
		report_rd = p[0];
		report_wr = p[1];
		if (c->record_pid) {
			if (pipe2(p, O_CLOEXEC) < 0)
				return -errno;
			go_rd = p[0];
			go_wr = p[1];
		}
	}
	pid = fork();
	if (pid < 0)
		return error_set(ret_error, -errno, "starting virtiofsd: %m");
	if (pid == 0) {
		if (go_wr >= 0)
			close(go_wr); /* so that our death reads as end of file there */
		child_run(c, listen_fd, log_fd, report_wr, go_rd, argv);
	}
	close(TAKE_FD(report_wr));
	if (c->record_pid) {
		r = c->record_pid(pid, c->record_userdata);
		if (r < 0 || write(go_wr, "g", 1) != 1) {
			r = r < 0 ? r : -EIO;
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return error_set(ret_error, r, "recording virtiofsd's pid: %s",
					 strerror(-r));
		}
	}
	/* EOF: the exec closed the child's end; a report: the step that failed. */
	do
		n = read(report_rd, &rep, sizeof(rep));
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof(rep)) {
		waitpid(pid, NULL, 0);
		if (rep.step == STEP_OPEN_DIR && rep.error == ESTALE)
			return error_set(ret_error, -ESTALE,
					 "the job folder %s is no longer the directory that was "
					 "checked (it was moved or replaced since); run again",
					 c->dir);
		if (rep.step == STEP_OPEN_DIR)
			return error_set(ret_error, -rep.error,
					 "virtiofsd: opening the job folder %s as uid %u: %s; the "
					 "submitting user must be able to reach it",
					 c->dir, (unsigned)c->uid, strerror(rep.error));
		if (rep.step == STEP_USERNS)
			return error_set(ret_error, -rep.error,
					 "virtiofsd: entering a user namespace: %s; enable "
					 "unprivileged user namespaces (sysctl "
					 "kernel.unprivileged_userns_clone=1, "
					 "user.max_user_namespaces) or run with --no-share",
					 strerror(rep.error));
		return error_set(ret_error, -rep.error, "virtiofsd for %s: %s: %s", c->dir,
				 step_to_string((enum step)rep.step), strerror(rep.error));
	}
	/* Watch it briefly: what it checks before waiting for QEMU fails within this. */
	for (int waited = 0; waited < SETTLE_MS; waited += 10) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return exited_at_start(c, status, ret_error);
		poll(NULL, 0, 10);
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
