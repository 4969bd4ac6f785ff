#include "vm/runstate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "net/bridge.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

#define RESOURCES_MAX_BYTES (1024 * 1024)

struct runstate {
	char job_id[NET_JOB_ID_LEN + 1];
	char *dir;
	int lock_fd;
	FILE *resources;
};

const char *runstate_default_dir(void)
{
	static char buf[256];
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (geteuid() == 0)
		return "/run/vmhpc";
	if (xdg && *xdg)
		snprintf(buf, sizeof(buf), "%s/vmhpc", xdg);
	else
		snprintf(buf, sizeof(buf), "/tmp/vmhpc-%u", (unsigned)geteuid());
	return buf;
}

const char *runstate_job_id(const struct runstate *rs)
{
	return rs->job_id;
}
const char *runstate_job_dir(const struct runstate *rs)
{
	return rs->dir;
}

int runstate_create(const char *run_dir, struct runstate **ret_state)
{
	_cleanup_free_ char *jobs = fs_path_join(run_dir, "jobs");
	_cleanup_free_ char *lock = NULL, *res = NULL;
	struct runstate *rs;
	int r;

	if (!jobs)
		return -ENOMEM;
	r = fs_mkdir_p(jobs, 0700);
	if (r < 0)
		return r;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->lock_fd = -1;
	for (int attempt = 0; attempt < 16; attempt++) {
		uint32_t id;

		if (getrandom(&id, sizeof(id), 0) != sizeof(id))
			id = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 8;
		snprintf(rs->job_id, sizeof(rs->job_id), "%08x", id);
		free(rs->dir);
		rs->dir = fs_path_join(jobs, rs->job_id);
		if (!rs->dir) {
			r = -ENOMEM;
			goto fail;
		}
		if (mkdir(rs->dir, 0700) == 0)
			break;
		if (errno != EEXIST) {
			r = -errno;
			goto fail;
		}
	}
	lock = fs_path_join(rs->dir, "lock");
	res = fs_path_join(rs->dir, "resources");
	if (!lock || !res) {
		r = -ENOMEM;
		goto fail;
	}
	rs->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (rs->lock_fd < 0 || flock(rs->lock_fd, LOCK_EX) < 0) {
		r = -errno;
		goto fail;
	}
	rs->resources = fopen(res, "ae");
	if (!rs->resources) {
		r = -errno;
		goto fail;
	}
	*ret_state = rs;
	return 0;
fail:
	if (rs->dir)
		fs_rm_rf(rs->dir);
	if (rs->lock_fd >= 0)
		close(rs->lock_fd);
	free(rs->dir);
	free(rs);
	return r;
}

/* Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot. */
static unsigned long long process_start_time(pid_t pid)
{
	char path[64], buf[1024];
	_cleanup_close_ int fd = -1;
	ssize_t n;
	char *p;
	unsigned long long start = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
	if (!p)
		return 0;
	/* After ") " come fields 3..: skip 19 of them to reach field 22. */
	p += 2;
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (p)
		start = strtoull(p, NULL, 10);
	return start;
}

static int append(struct runstate *rs, const char *kind, const char *value)
{
	/* Flushed line by line: the record must outlive a SIGKILL right after (the kernel
	 * keeps written data; only a machine crash could lose it, and that loses the job's
	 * processes and links too). */
	if (fprintf(rs->resources, "%s %s\n", kind, value) < 0 || fflush(rs->resources) != 0)
		return -EIO;
	return 0;
}

int runstate_add_pid(struct runstate *rs, pid_t pid)
{
	char value[64];

	snprintf(value, sizeof(value), "%d %llu", (int)pid, process_start_time(pid));
	return append(rs, "pid", value);
}

int runstate_add_link(struct runstate *rs, const char *ifname)
{
	return append(rs, "link", ifname);
}

int runstate_add_path(struct runstate *rs, const char *path)
{
	return append(rs, "path", path);
}

/* Kills a recorded process if it is still the same process, and waits for it to go. */
static void kill_recorded(pid_t pid, unsigned long long start)
{
	if (pid <= 1 || start == 0 || process_start_time(pid) != start)
		return;
	kill(pid, SIGKILL);
	for (int i = 0; i < 200 && process_start_time(pid) == start; i++) {
		/* Our own child: reap it; someone else's: wait for its parent or init to. */
		if (waitpid(pid, NULL, WNOHANG) == pid)
			break;
		usleep(10000);
	}
}

/* Undoes a job directory's resources file, then removes the directory. */
static void undo_job_dir(const char *dir)
{
	_cleanup_free_ char *res = fs_path_join(dir, "resources");
	_cleanup_free_ char *text = NULL;
	char *save = NULL;

	if (res && fs_read_file(res, RESOURCES_MAX_BYTES, &text, NULL) == 0) {
		/* Processes first: a QEMU must let go of its tap before the tap can go. */
		for (int pass = 0; pass < 3; pass++) {
			_cleanup_free_ char *copy = strdup(text);

			if (!copy)
				break;
			for (char *line = strtok_r(copy, "\n", &save); line;
			     line = strtok_r(NULL, "\n", &save)) {
				char *value = strchr(line, ' ');

				if (!value)
					continue;
				*value++ = '\0';
				if (pass == 0 && strcmp(line, "pid") == 0) {
					int pid = 0;
					unsigned long long start = 0;

					if (sscanf(value, "%d %llu", &pid, &start) == 2)
						kill_recorded(pid, start);
				} else if (pass == 1 && strcmp(line, "link") == 0) {
					char *argv[] = {"ip", "link", "del", value, NULL};
					_cleanup_free_ char *sys =
					    fs_path_join("/sys/class/net", value);
					int code;

					if (sys && fs_exists(sys))
						proc_run(argv, NULL, NULL, NULL, &code);
				} else if (pass == 2 && strcmp(line, "path") == 0 &&
					   value[0] == '/') {
					fs_rm_rf(value);
				}
			}
		}
	}
	fs_rm_rf(dir);
}

void runstate_release(struct runstate *rs)
{
	if (!rs)
		return;
	if (rs->resources)
		fclose(rs->resources);
	undo_job_dir(rs->dir);
	if (rs->lock_fd >= 0)
		close(rs->lock_fd);
	free(rs->dir);
	free(rs);
}

int runstate_detach(struct runstate *rs)
{
	int fd = rs->lock_fd;

	if (rs->resources)
		fclose(rs->resources);
	free(rs->dir);
	free(rs);
	return fd;
}

int runstate_attach(const char *run_dir, const char *job_id, int lock_fd,
		    struct runstate **ret_state)
{
	_cleanup_free_ char *jobs = fs_path_join(run_dir, "jobs");
	_cleanup_free_ char *lock = NULL, *res = NULL;
	struct runstate *rs;
	int r;

	if (strlen(job_id) != NET_JOB_ID_LEN ||
	    strspn(job_id, "0123456789abcdef") != NET_JOB_ID_LEN)
		return -EINVAL;
	rs = calloc(1, sizeof(*rs));
	if (!rs || !jobs)
		return -ENOMEM;
	rs->lock_fd = -1;
	snprintf(rs->job_id, sizeof(rs->job_id), "%s", job_id);
	rs->dir = fs_path_join(jobs, job_id);
	lock = rs->dir ? fs_path_join(rs->dir, "lock") : NULL;
	res = rs->dir ? fs_path_join(rs->dir, "resources") : NULL;
	if (!lock || !res) {
		r = -ENOMEM;
		goto fail;
	}
	if (lock_fd >= 0) {
		rs->lock_fd = lock_fd;
	} else {
		rs->lock_fd = open(lock, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		if (rs->lock_fd < 0) {
			r = -errno;
			goto fail;
		}
		if (flock(rs->lock_fd, LOCK_EX | LOCK_NB) < 0) {
			r = errno == EWOULDBLOCK ? -EBUSY : -errno;
			goto fail;
		}
	}
	rs->resources = fopen(res, "ae");
	if (!rs->resources) {
		r = -errno;
		goto fail;
	}
	*ret_state = rs;
	return 0;
fail:
	if (rs->lock_fd >= 0 && rs->lock_fd != lock_fd)
		close(rs->lock_fd);
	free(rs->dir);
	free(rs);
	return r;
}

int runstate_clean_stale(const char *run_dir)
{
	_cleanup_free_ char *jobs = fs_path_join(run_dir, "jobs");
	DIR *d = jobs ? opendir(jobs) : NULL;
	struct dirent *de;
	int n = 0;

	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		_cleanup_free_ char *dir = NULL, *lock = NULL;
		_cleanup_close_ int fd = -1;

		if (de->d_name[0] == '.')
			continue;
		dir = fs_path_join(jobs, de->d_name);
		lock = dir ? fs_path_join(dir, "lock") : NULL;
		if (!lock)
			continue;
		fd = open(lock, O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0)
			continue; /* its owner is alive */
		log_info("cleaning up job %s, left by a vmhpc that did not finish", de->d_name);
		undo_job_dir(dir);
		n++;
	}
	closedir(d);
	return n;
}
