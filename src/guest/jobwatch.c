/* vmhpc-exec's job watch (jobwatch.h): a job whose ranks have all exited but whose mpiexec
 * does not end is reported and ended instead of waited on until the time limit.
 *
 * Why here: the host reaches VM 0 through its control port, which carries one session at a
 * time, and that session is busy with mpiexec for the whole job; a guest program next to
 * mpiexec can ask every VM over the job network, as hydra does, through the exec service that
 * is already there. Why by process: the launcher's daemons (hydra's proxies; Open MPI's orteds
 * and orterun) are the only parents of ranks in a VM, so "a live child of one of them" is a
 * rank, whatever the program is called. */
#include "guest/jobwatch.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS	    65536
#define MAX_HOSTS	    4096 /* a job across nodes: JOB_MAX_VMS_TOTAL (src/vm/job.h) */
#define PROBE_TIMEOUT_MS    10000
#define TERM_GRACE_MS	    3000
#define GRACE_S_DEFAULT	    20
#define INTERVAL_MS_DEFAULT 2000

/* The processes whose children are ranks: MPICH's proxy in every VM; Open MPI's orted in
 * the other VMs and orterun itself in VM 0 (it starts the local ranks; vmhpc run starts it by
 * that name, not through its mpirun link). Names as comm holds them: at most 15 characters.
 * Not "mpiexec": hydra's mpiexec started by that link is the parent of a proxy, not of ranks. */
static const char *const launcher_comms[] = {"hydra_pmi_proxy", "orted", "orterun"};
/* Children of those that are not ranks: the rsh agents orterun starts for the orteds (and
 * the line labeler a rank leaves behind for a moment, which is the rank's own child). */
#define AGENT_COMM "vmhpc-exec"

struct proc_entry {
	int pid, ppid;
	char state;
	bool launcher, agent;
};

static bool comm_is(const char *comm, size_t len, const char *name)
{
	return len == strlen(name) && memcmp(comm, name, len) == 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads "pid (comm) S ppid ..." of one process; 0, or -errno (it may have just gone). */
static int read_stat(const char *proc_dir, const char *pid, struct proc_entry *ret)
{
	char path[PATH_MAX], buf[1024];
	const char *open_paren, *close_paren;
	ssize_t n;
	int fd;

	if (snprintf(path, sizeof(path), "%s/%s/stat", proc_dir, pid) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -EIO;
	buf[n] = '\0';
	/* comm may hold blanks and parentheses: it ends at the last ')'. */
	open_paren = strchr(buf, '(');
	close_paren = strrchr(buf, ')');
	if (!open_paren || !close_paren || close_paren < open_paren)
		return -EIO;
	ret->pid = atoi(buf);
	ret->launcher = false;
	for (size_t i = 0; i < sizeof(launcher_comms) / sizeof(launcher_comms[0]); i++)
		ret->launcher |= comm_is(open_paren + 1, (size_t)(close_paren - open_paren - 1),
					 launcher_comms[i]);
	ret->agent = comm_is(open_paren + 1, (size_t)(close_paren - open_paren - 1), AGENT_COMM);
	if (sscanf(close_paren + 1, " %c %d", &ret->state, &ret->ppid) != 2)
		return -EIO;
	return 0;
}

int jobwatch_count_ranks(const char *proc_dir)
{
	struct proc_entry *procs;
	struct dirent *de;
	size_t n = 0;
	int count = 0;
	DIR *d;

	d = opendir(proc_dir);
	if (!d)
		return -errno;
	procs = calloc(MAX_PROCS, sizeof(*procs));
	if (!procs) {
		closedir(d);
		return -ENOMEM;
	}
	while ((de = readdir(d)) && n < MAX_PROCS) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		if (read_stat(proc_dir, de->d_name, &procs[n]) == 0)
			n++;
	}
	closedir(d);
	/* A zombie rank has exited; only its proxy has yet to reap it. */
	for (size_t i = 0; i < n; i++) {
		if (procs[i].state == 'Z' || procs[i].state == 'X' || procs[i].agent)
			continue;
		for (size_t k = 0; k < n; k++)
			if (procs[k].launcher && procs[k].pid == procs[i].ppid) {
				count++;
				break;
			}
	}
	free(procs);
	return count;
}

int jobwatch_count_ranks_main(void)
{
	int n = jobwatch_count_ranks("/proc");

	if (n < 0) {
		fprintf(stderr, "vmhpc-exec: reading /proc: %s\n", strerror(-n));
		return 1;
	}
	printf("%d\n", n);
	return 0;
}

/* Runs `SELF -n HOST -- SELF --count-ranks` and returns the count it printed, or -errno
 * (no answer within PROBE_TIMEOUT_MS, a failed connection, garbage). */
static int probe_host(const char *self, const char *host)
{
	char out[64] = "";
	size_t len = 0;
	int fds[2], status, r = 0;
	int64_t deadline = now_ms() + PROBE_TIMEOUT_MS;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(fds[1], STDOUT_FILENO);
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			dup2(null, STDERR_FILENO); /* the job's output stays the job's */
		}
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		execl(self, "vmhpc-exec", "-n", host, "--", self, "--count-ranks", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	for (;;) {
		struct pollfd p = {.fd = fds[0], .events = POLLIN};
		int64_t left = deadline - now_ms();
		ssize_t n;

		if (left <= 0) {
			r = -ETIMEDOUT;
			break;
		}
		if (poll(&p, 1, (int)left) < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		n = read(fds[0], out + len, sizeof(out) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == sizeof(out) - 1)
			break;
	}
	close(fds[0]);
	if (r < 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (r < 0)
		return r;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || len == 0 ||
	    !isdigit((unsigned char)out[0]))
		return -EPROTO;
	return atoi(out);
}

/* The ranks of the whole job, or -errno when any host did not answer: then nothing is
 * known, and a missing answer must never look like "no ranks left". */
static int probe_all(const char *self, char **hosts, int n_hosts)
{
	int total = 0;

	for (int i = 0; i < n_hosts; i++) {
		int n = probe_host(self, hosts[i]);

		if (n < 0)
			return n;
		total += n;
	}
	return total;
}

static int exit_status(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 1;
}

/* Waits up to timeout_ms for pid; returns 1 and *ret_status when it ended, else 0. */
static int wait_for(pid_t pid, int timeout_ms, int *ret_status)
{
	int64_t deadline = now_ms() + timeout_ms;

	do {
		pid_t w = waitpid(pid, ret_status, WNOHANG);

		if (w == pid)
			return 1;
		if (w < 0 && errno != EINTR)
			return 1; /* not our child any more: nothing left to wait for */
		poll(NULL, 0, 50);
	} while (now_ms() < deadline);
	return 0;
}

static int usage_error(const char *what)
{
	fprintf(stderr,
		"vmhpc-exec: %s\nusage: vmhpc-exec --job-watch [--grace-s N] [--interval-ms N] "
		"HOST[,HOST...] -- PROGRAM [ARGS...]\n",
		what);
	return 2;
}

int jobwatch_main(int argc, char **argv)
{
	static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	char *hosts[MAX_HOSTS], *host_list = NULL, self[PATH_MAX];
	long grace_s = GRACE_S_DEFAULT, interval_ms = INTERVAL_MS_DEFAULT;
	int n_hosts = 0, i, status = 0, seen = 0;
	int64_t next_probe = 0, empty_since = -1;
	ssize_t n;
	pid_t child;

	for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--grace-s") == 0 && i + 1 < argc) {
			grace_s = strtol(argv[++i], NULL, 10);
			if (grace_s < 1 || grace_s > 86400)
				return usage_error("--grace-s: give 1 to 86400 seconds");
		} else if (strcmp(argv[i], "--interval-ms") == 0 && i + 1 < argc) {
			interval_ms = strtol(argv[++i], NULL, 10);
			if (interval_ms < 100 || interval_ms > 3600000)
				return usage_error("--interval-ms: give 100 to 3600000");
		} else if (!host_list && argv[i][0] != '-') {
			host_list = argv[i];
		} else {
			return usage_error("unknown option or second host list");
		}
	}
	if (!host_list || i + 1 >= argc)
		return usage_error("a host list and a program after -- are needed");
	for (char *save = NULL, *h = strtok_r(host_list, ",", &save); h;
	     h = strtok_r(NULL, ",", &save)) {
		if (n_hosts == MAX_HOSTS)
			return usage_error("more than 4096 hosts");
		hosts[n_hosts++] = h;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return usage_error("cannot find my own binary in /proc/self/exe");
	self[n] = '\0';

	/* PROGRAM stays in the watch's process group: the exec service sends SIGNAL to that
	 * group and SIGKILLs it when its client is lost, and that must keep reaching mpiexec,
	 * its proxies and its ranks. The watch itself ignores those signals (PROGRAM decides
	 * how to end; the watch stays to report it), and leads its own group so that stopping
	 * the group never reaches whoever started it (in a guest it leads a session already). */
	if (getpgrp() != getpid())
		setpgid(0, 0);
	for (size_t s = 0; s < sizeof(forwarded) / sizeof(forwarded[0]); s++)
		signal(forwarded[s], SIG_IGN);
	child = fork();
	if (child < 0) {
		fprintf(stderr, "vmhpc-exec: fork: %s\n", strerror(errno));
		return 1;
	}
	if (child == 0) {
		for (size_t s = 0; s < sizeof(forwarded) / sizeof(forwarded[0]); s++)
			signal(forwarded[s], SIG_DFL); /* SIG_IGN would survive the exec */
		execvp(argv[i + 1], argv + i + 1);
		fprintf(stderr, "vmhpc-exec: %s: %s\n", argv[i + 1], strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}

	for (;;) {
		int64_t t;

		if (wait_for(child, 100, &status))
			return exit_status(status);
		t = now_ms();
		if (t >= next_probe) {
			int ranks = probe_all(self, hosts, n_hosts);

			next_probe = now_ms() + interval_ms;
			if (ranks > 0) {
				seen = 1;
				empty_since = -1;
			} else if (ranks == 0 && seen && empty_since < 0) {
				empty_since = t;
			}
		}
		if (empty_since >= 0 && t - empty_since >= grace_s * 1000)
			break;
	}

	fprintf(stderr,
		"vmhpc-exec: every rank of the job has exited, but %s has not ended %ld s "
		"later: stopping it\n",
		argv[i + 1], grace_s);
	kill(0, SIGTERM); /* PROGRAM and what it started here; the watch ignores it */
	if (!wait_for(child, TERM_GRACE_MS, &status)) {
		kill(child, SIGKILL);
		wait_for(child, TERM_GRACE_MS, &status);
	}
	return JOBWATCH_EXIT_STUCK;
}
