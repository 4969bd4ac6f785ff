/* Drives the VM runtime's handoff the way the node daemon and a Slurm prolog will: a
 * short-lived "prolog" process boots a detachable job and exits; a "supervisor" takes the
 * job over (its lock passed by SCM_RIGHTS), runs commands in every VM and stops it.
 *   job-handoff STORE CACHE RUNDIR IMAGE N_VMS WORKDIR
 * Each adopted VM writes WORKDIR/<vm name>.txt through the job folder share, so the
 * virtiofsd servers must have outlived the prolog too.
 * Prints what it checked; exit 0 when all held. tests/integration/job-handoff.sh runs it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/catalog.h"
#include "store/manifest.h"
#include "store/store.h"
#include "vm/job.h"

static void die(const char *what, int r, const char *error)
{
	fprintf(stderr, "job-handoff: %s: %s\n", what, error ? error : strerror(-r));
	exit(1);
}

static int send_fd(int sock, int fd, const char *id)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {.iov_base = (void *)id, .iov_len = strlen(id) + 1};
	struct msghdr msg = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

static int recv_fd(int sock, char *id, size_t id_size)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = id, .iov_len = id_size - 1};
	struct msghdr msg = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c;
	ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	int fd;

	if (n <= 0)
		return n < 0 ? -errno : -EPIPE;
	id[n] = '\0';
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return -EBADMSG;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/* The prolog: boots, detaches, hands the lock over, exits without stopping anything. */
static void prolog(int sock, const char *store_dir, const char *cache, const char *run_dir,
		   const char *image, unsigned n_vms, const char *workdir)
{
	struct stat st;
	struct store *s = NULL;
	struct manifest *m = NULL;
	struct job *j = NULL;
	char *error = NULL;
	int r, lock_fd;
	struct job_config cfg = {.cache_dir = cache,
				 .run_dir = run_dir,
				 .n_vms = n_vms,
				 .vcpus = 1,
				 .mem_mb = 256,
				 .boot_timeout_ms = 180000,
				 .detachable = true};

	if (stat(workdir, &st) < 0)
		die("the job folder", -errno, NULL);
	cfg.workdir = workdir;
	cfg.workdir_dev = st.st_dev;
	cfg.workdir_ino = st.st_ino;
	cfg.owner_uid = getuid();
	cfg.owner_gid = getgid();
	r = store_open(store_dir, &s);
	if (r < 0)
		die("opening the store", r, NULL);
	r = catalog_load(s, image, 0, &m, &error);
	if (r < 0)
		die("loading the image", r, error);
	cfg.store = s;
	cfg.image = m;
	r = job_boot(&cfg, &j, &error);
	if (r < 0)
		die("booting", r, error);
	printf("prolog: booted job %s with %u VMs\n", job_id(j), n_vms);
	fflush(stdout);
	{
		char id[16];

		snprintf(id, sizeof(id), "%s", job_id(j));
		r = job_detach(j, &lock_fd);
		if (r < 0)
			die("detaching", r, NULL);
		r = send_fd(sock, lock_fd, id);
		if (r < 0)
			die("sending the lock", r, NULL);
	}
	exit(0);
}

int main(int argc, char **argv)
{
	int sv[2], status, r, lock_fd;
	char id[16], *error = NULL;
	struct job *j = NULL, *busy = NULL;
	unsigned n_vms;
	pid_t pid;

	if (argc != 7) {
		fprintf(stderr, "usage: job-handoff STORE CACHE RUNDIR IMAGE N_VMS WORKDIR\n");
		return 2;
	}
	n_vms = (unsigned)atoi(argv[5]);
	/* As the node daemon does: QEMUs whose starter exits are re-parented to us, so we
	 * can reap them and read their exit status. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair", -errno, NULL);
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		prolog(sv[1], argv[1], argv[2], argv[3], argv[4], n_vms, argv[6]);
	}
	close(sv[1]);
	lock_fd = recv_fd(sv[0], id, sizeof(id));
	if (lock_fd < 0)
		die("receiving the job from the prolog", lock_fd, NULL);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("the prolog failed", -EIO, NULL);
	printf("ok - the prolog exited; job %s was handed over\n", id);

	/* While we hold its lock, nobody else can take the job. */
	r = job_attach(argv[3], id, -1, &busy, &error);
	if (r != -EBUSY)
		die("a second attach while the lock is held should be refused", r ? r : -EIO,
		    error);
	free(error);
	error = NULL;
	printf("ok - a second supervisor is refused while the lock is held\n");

	r = job_attach(argv[3], id, lock_fd, &j, &error);
	if (r < 0)
		die("attaching", r, error);
	for (unsigned i = 0; i < n_vms; i++) {
		char script[4200];
		char *args[] = {"/bin/sh", "-c", script, NULL}, *env[] = {NULL};
		struct frame_exec req = {.cwd = "/", .argv = args, .envp = env};
		struct exec_client_io io = {
		    .stdin_fd = -1, .stdout_fd = 1, .stderr_fd = 2, .signal_fd = -1};

		snprintf(script, sizeof(script), "hostname; hostname > '%s/%s.txt'", argv[6],
			 job_vm_name(j, i));
		r = job_exec(j, i, &req, &io, 60000, &status, &error);
		if (r < 0 || status != 0)
			die("running hostname in an adopted VM", r < 0 ? r : -EIO, error);
	}
	printf("ok - the supervisor ran a command in each of the %u adopted VMs, writing to the "
	       "job folder\n",
	       n_vms);
	/* One event loop, every VM at once: each command sleeps 3 s, so together they must
	 * take about 3 s, not 3 s per VM. */
	{
		char *args[] = {"/bin/sh", "-c", "sleep 3; echo done-$(hostname)", NULL};
		char *env[] = {NULL};
		struct frame_exec req = {.cwd = "/", .argv = args, .envp = env};
		struct exec_client_io io = {
		    .stdin_fd = -1, .stdout_fd = 1, .stderr_fd = 2, .signal_fd = -1};
		bool done[JOB_MAX_VMS] = {false};
		unsigned left = n_vms;
		struct timespec t0, t1;
		double took;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (unsigned i = 0; i < n_vms; i++) {
			r = job_exec_start(j, i, &req, &io, 60000, &error);
			if (r < 0)
				die("starting a command without blocking", r, error);
		}
		while (left > 0) {
			struct pollfd fds[64];
			unsigned n = 0, first[JOB_MAX_VMS], count[JOB_MAX_VMS];
			int timeout = -1;

			for (unsigned i = 0; i < n_vms; i++) {
				int t;

				first[i] = n;
				count[i] =
				    done[i] ? 0
					    : job_exec_fds(j, i, fds + n, (unsigned)(64 - n), &t);
				n += count[i];
				if (!done[i] && (timeout < 0 || (t >= 0 && t < timeout)))
					timeout = t;
			}
			if (poll(fds, n, timeout) < 0 && errno != EINTR)
				die("poll", -errno, NULL);
			for (unsigned i = 0; i < n_vms; i++) {
				if (done[i])
					continue;
				r = job_exec_step(j, i, fds + first[i], count[i], &status, &error);
				if (r < 0 || (r == 1 && status != 0))
					die("a command run without blocking", r < 0 ? r : -EIO,
					    error);
				if (r == 1) {
					done[i] = true;
					left--;
				}
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
		if (took > 3.0 * n_vms - 0.5)
			die("the commands did not run side by side", -EIO, NULL);
		printf("ok - one event loop ran a 3 s command in each of the %u VMs at once (%.1f "
		       "s)\n",
		       n_vms, took);
	}
	r = job_check_vms(j, &error);
	if (r < 0)
		die("the adopted VMs should be running", r, error);
	job_shutdown(j, 10000, NULL);
	job_free(j);
	printf("ok - the supervisor stopped the job\n");
	return 0;
}
