#include "vm/runstate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

#define RESOURCES_MAX_BYTES (1024 * 1024)
/* A job directory is made under "tmp-<8 hex>", gets its lock taken inside, and only then
 * is renamed to its final name "<8 hex>": cleanup judges final names by their lock alone,
 * so it never sees a live job whose lock is not taken yet. */
#define TEMP_PREFIX "tmp-"
/* A temp directory whose lock is free is removed only when older than this: its creator
 * may be between mkdir and flock. */
#define TEMP_MAX_AGE_S 60
/* Job directories hold sockets and logs, flat; deeper trees are not ours. */
#define REMOVE_MAX_DEPTH 4

struct runstate {
	char job_id[RUNSTATE_JOB_ID_LEN + 1];
	char *dir;
	int jobs_fd;
	int dir_fd;
	int lock_fd;
	FILE *resources;
	uid_t owner;
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

/* Opens name (relative to at_fd) as a private folder of owner: a directory, not a
 * symlink, owned by owner, mode 0700. With create, makes it first when missing. Anyone
 * else's folder at a predictable path (/tmp/vmhpc-<uid>) could hold planted records. */
static int open_private_dir(int at_fd, const char *name, uid_t owner, bool create, int *ret_fd)
{
	_cleanup_close_ int fd = -1;
	bool created = false;
	struct stat st;

	if (create) {
		if (mkdirat(at_fd, name, 0700) == 0)
			created = true;
		else if (errno != EEXIST)
			return -errno;
	}
	fd = openat(at_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		log_debug("run state folder %s: %m", name);
		return -errno;
	}
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_uid != owner) {
		log_debug("run state folder %s is owned by uid %u, not %u: refused", name,
			  (unsigned)st.st_uid, (unsigned)owner);
		return -EPERM;
	}
	/* A umask may have taken bits from what we just made; what we made is ours to fix. */
	if (created && (st.st_mode & 07777) != 0700) {
		if (fchmod(fd, 0700) < 0)
			return -errno;
		st.st_mode = (st.st_mode & ~07777u) | 0700;
	}
	if ((st.st_mode & 07777) != 0700) {
		log_debug("run state folder %s has mode %04o, not 0700: refused", name,
			  (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	*ret_fd = TAKE_FD(fd);
	return 0;
}

/* Opens <run_dir>/jobs as the caller's private folder. */
static int open_jobs_dir(const char *run_dir, uid_t owner, bool create, int *ret_fd)
{
	_cleanup_close_ int run_fd = -1;
	int r;

	r = open_private_dir(AT_FDCWD, run_dir, owner, create, &run_fd);
	if (r < 0)
		return r;
	return open_private_dir(run_fd, "jobs", owner, create, ret_fd);
}

static bool is_hex_id(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == RUNSTATE_JOB_ID_LEN;
}

static void random_id(char out[RUNSTATE_JOB_ID_LEN + 1])
{
	uint32_t id;

	if (getrandom(&id, sizeof(id), 0) != sizeof(id))
		id = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 8;
	snprintf(out, RUNSTATE_JOB_ID_LEN + 1, "%08x", id);
}

/* Removes everything inside the directory dfd (not following symlinks), except the
 * entry named keep (NULL: none). Errors are skipped: the rest is still removed. */
static void remove_contents(int dfd, const char *keep, int depth)
{
	_cleanup_close_ int fd = dup(dfd);
	DIR *d;
	struct dirent *de;

	if (fd < 0 || depth > REMOVE_MAX_DEPTH)
		return;
	d = fdopendir(fd);
	if (!d)
		return;
	fd = -1; /* the DIR owns it now */
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (keep && strcmp(de->d_name, keep) == 0)
			continue;
		if (unlinkat(dfd, de->d_name, 0) == 0 || errno == ENOENT)
			continue;
		if (errno == EISDIR || errno == EPERM) {
			_cleanup_close_ int sub = openat(
			    dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

			if (sub >= 0) {
				remove_contents(sub, NULL, depth + 1);
				unlinkat(dfd, de->d_name, AT_REMOVEDIR);
			}
		}
	}
	closedir(d);
}

/* Removes the job directory `name` in jobs_fd, whose open fd is dfd: its contents through
 * dfd (so a directory renamed or replaced meanwhile is never entered), the lock last
 * (while it exists and is held, no other cleaner takes the directory), then the name,
 * which fails harmlessly if it now names another, non-empty directory. */
static void remove_job_dir(int jobs_fd, const char *name, int dfd)
{
	remove_contents(dfd, "lock", 0);
	unlinkat(dfd, "lock", 0);
	unlinkat(jobs_fd, name, AT_REMOVEDIR);
}

int runstate_create(const char *run_dir, uid_t owner, struct runstate **ret_state)
{
	_cleanup_close_ int jobs_fd = -1, dir_fd = -1, lock_fd = -1, res_fd = -1;
	char tmp[sizeof(TEMP_PREFIX) + RUNSTATE_JOB_ID_LEN], id[RUNSTATE_JOB_ID_LEN + 1];
	_cleanup_free_ char *jobs = NULL, *dir = NULL;
	struct runstate *rs;
	int attempt, r;

	r = open_jobs_dir(run_dir, owner, true, &jobs_fd);
	if (r < 0)
		return r;
	jobs = fs_path_join(run_dir, "jobs");
	if (!jobs)
		return -ENOMEM;

	for (attempt = 0; attempt < 16; attempt++) {
		random_id(id);
		snprintf(tmp, sizeof(tmp), TEMP_PREFIX "%s", id);
		if (mkdirat(jobs_fd, tmp, 0700) == 0)
			break;
		if (errno != EEXIST)
			return -errno;
	}
	if (attempt == 16)
		return -EEXIST;
	dir_fd = openat(jobs_fd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir_fd < 0 || fchmod(dir_fd, 0700) < 0) {
		r = -errno;
		goto fail;
	}
	lock_fd = openat(dir_fd, "lock", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (lock_fd < 0 || flock(lock_fd, LOCK_EX) < 0) {
		r = -errno;
		goto fail;
	}
	res_fd = openat(dir_fd, "resources",
			O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (res_fd < 0) {
		r = -errno;
		goto fail;
	}
	/* The lock is held: from here on the directory may carry a final name. */
	for (attempt = 0;; attempt++) {
		if (renameat2(jobs_fd, tmp, jobs_fd, id, RENAME_NOREPLACE) == 0)
			break;
		if (errno != EEXIST || attempt == 16) {
			r = -errno;
			goto fail;
		}
		random_id(id);
	}
	dir = fs_path_join(jobs, id);
	rs = calloc(1, sizeof(*rs));
	if (!dir || !rs) {
		free(rs);
		remove_job_dir(jobs_fd, id, dir_fd);
		return -ENOMEM;
	}
	rs->resources = fdopen(res_fd, "a");
	if (!rs->resources) {
		r = -errno;
		free(rs);
		remove_job_dir(jobs_fd, id, dir_fd);
		return r;
	}
	res_fd = -1;
	memcpy(rs->job_id, id, sizeof(rs->job_id));
	rs->dir = TAKE_PTR(dir);
	rs->jobs_fd = TAKE_FD(jobs_fd);
	rs->dir_fd = TAKE_FD(dir_fd);
	rs->lock_fd = TAKE_FD(lock_fd);
	rs->owner = owner;
	*ret_state = rs;
	return 0;
fail:
	if (dir_fd >= 0)
		remove_job_dir(jobs_fd, tmp, dir_fd);
	else
		unlinkat(jobs_fd, tmp, AT_REMOVEDIR);
	return r;
}

/* Fields 3 (state) and 22 (start time in clock ticks since boot) of /proc/PID/stat. */
static int process_stat(pid_t pid, char *ret_state, unsigned long long *ret_start)
{
	char path[64], buf[1024];
	_cleanup_close_ int fd = -1;
	ssize_t n;
	char *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
	if (!p || !p[1] || !p[2])
		return -EIO;
	p += 2;
	*ret_state = *p;
	/* After ") " come fields 3..: skip 19 of them to reach field 22. */
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (!p)
		return -EIO;
	*ret_start = strtoull(p, NULL, 10);
	return 0;
}

static unsigned long long process_start_time(pid_t pid)
{
	unsigned long long start = 0;
	char state;

	return process_stat(pid, &state, &start) == 0 ? start : 0;
}

/* The real uid of a process (the "Uid:" line of /proc/PID/status, within its first
 * lines). */
static int process_uid(pid_t pid, uid_t *ret_uid)
{
	char path[64], buf[4096];
	_cleanup_close_ int fd = -1;
	const char *line;
	unsigned uid;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = fs_read_full(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	line = strstr(buf, "\nUid:");
	if (!line || sscanf(line + 5, "%u", &uid) != 1)
		return -EIO;
	*ret_uid = uid;
	return 0;
}

/* True when the process runs a QEMU system emulator or virtiofsd: the only processes the
 * runtime records. Judged by the binary the kernel mapped (/proc/PID/exe), not by comm,
 * which any process sets for itself (prctl) or takes from the name of a link it was
 * started through. By the binary's name, not its full path: QEMU comes from $PATH or
 * $VMHPC_QEMU and virtiofsd from distribution-specific folders, and a path written into
 * the resources file would be as untrusted as the pid. An unreadable exe (another user's
 * process, for a non-root caller) proves nothing: the process is left alone. */
static bool process_is_runtime_child(pid_t pid)
{
	char path[64], exe[PATH_MAX];
	const char *base;
	ssize_t n;
	char *deleted;

	snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
	n = readlink(path, exe, sizeof(exe) - 1);
	if (n <= 0)
		return false;
	exe[n] = '\0';
	/* A binary replaced by a package upgrade while it ran. */
	deleted = strstr(exe, " (deleted)");
	if (deleted && deleted[10] == '\0')
		*deleted = '\0';
	base = strrchr(exe, '/');
	base = base ? base + 1 : exe;
	return strcmp(base, "virtiofsd") == 0 || strncmp(base, "qemu-system-", 12) == 0;
}

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_kill(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Kills a recorded process only when it can be shown to be this user's job's: still the
 * same process (start time), the owner's (any process, for root), a QEMU or virtiofsd.
 * The checks are made through a pidfd taken first, and the signal goes through it, so a
 * pid reused between check and kill is never hit. Waits up to 2 s for it to exit (a QEMU
 * must let go of its tap before the tap can go). */
static void kill_recorded(pid_t pid, unsigned long long start, uid_t owner)
{
	_cleanup_close_ int pidfd = -1;
	unsigned long long now_start = 0;
	char state = 0;
	uid_t uid;

	if (pid <= 1 || start == 0 || pid == getpid())
		return;
	pidfd = pidfd_open_(pid);
	if (pidfd < 0)
		return;
	if (process_stat(pid, &state, &now_start) < 0 || now_start != start || state == 'Z')
		return;
	if (process_uid(pid, &uid) < 0 || (owner != 0 && uid != owner)) {
		log_debug("pid %d is not uid %u's: left alone", (int)pid, (unsigned)owner);
		return;
	}
	if (!process_is_runtime_child(pid)) {
		log_debug("pid %d is neither QEMU nor virtiofsd: left alone", (int)pid);
		return;
	}
	if (pidfd_kill(pidfd, SIGKILL) < 0)
		return;
	/* The pidfd turns readable when the process has exited. Our own child we reap;
	 * someone else's its parent or init reaps. */
	for (int i = 0; i < 20; i++) {
		struct pollfd pfd = {.fd = pidfd, .events = POLLIN};

		if (poll(&pfd, 1, 100) > 0)
			break;
	}
	waitpid(pid, NULL, WNOHANG);
}

/* True for a link name of this job: "vmhpc<id>b" or "vmhpc<id>t<n>". */
static bool is_job_link(const char *job_id, const char *name)
{
	const char *p;

	if (strncmp(name, "vmhpc", 5) != 0 || strncmp(name + 5, job_id, RUNSTATE_JOB_ID_LEN) != 0)
		return false;
	p = name + 5 + RUNSTATE_JOB_ID_LEN;
	if (strcmp(p, "b") == 0)
		return true;
	if (p[0] != 't' || !p[1] || strlen(p + 1) > 3)
		return false;
	for (p++; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/* Reads the resources file of the job directory dfd, if it is a regular file of owner. */
static char *read_resources(int dfd, uid_t owner)
{
	_cleanup_close_ int fd = openat(dfd, "resources", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	char *text;
	struct stat st;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != owner ||
	    st.st_size > RESOURCES_MAX_BYTES)
		return NULL;
	text = malloc((size_t)st.st_size + 1);
	if (!text)
		return NULL;
	n = fs_read_full(fd, text, (size_t)st.st_size);
	if (n < 0) {
		free(text);
		return NULL;
	}
	text[n] = '\0';
	return text;
}

/* Undoes the resources recorded in the job directory dfd of job job_id. Lines of any
 * other kind (such as the "path" records of earlier versions) are ignored. */
static void undo_resources(int dfd, const char *job_id, uid_t owner)
{
	_cleanup_free_ char *text = read_resources(dfd, owner);

	if (!text)
		return;
	/* Processes first: a QEMU must let go of its tap before the tap can go. */
	for (int pass = 0; pass < 2; pass++) {
		_cleanup_free_ char *copy = strdup(text);
		char *save = NULL;

		if (!copy)
			return;
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
					kill_recorded(pid, start, owner);
			} else if (pass == 1 && strcmp(line, "link") == 0 &&
				   is_job_link(job_id, value)) {
				char *argv[] = {"ip", "link", "del", value, NULL};
				_cleanup_free_ char *sys = fs_path_join("/sys/class/net", value);
				int code;

				if (sys && fs_exists(sys))
					proc_run(argv, NULL, NULL, NULL, &code);
			}
		}
	}
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
	if (!is_job_link(rs->job_id, ifname))
		return -EINVAL;
	return append(rs, "link", ifname);
}

void runstate_release(struct runstate *rs)
{
	if (!rs)
		return;
	if (rs->resources)
		fclose(rs->resources);
	undo_resources(rs->dir_fd, rs->job_id, rs->owner);
	remove_job_dir(rs->jobs_fd, rs->job_id, rs->dir_fd);
	close(rs->lock_fd);
	close(rs->dir_fd);
	close(rs->jobs_fd);
	free(rs->dir);
	free(rs);
}

/* Takes the lock of job directory dfd when it is free; returns the locked fd, -1 when the
 * directory has no lock file, or -errno (-EWOULDBLOCK: its owner is alive; -ESTALE: it
 * was removed meanwhile). */
static int take_free_lock(int dfd)
{
	_cleanup_close_ int fd = openat(dfd, "lock", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;

	if (fd < 0)
		return errno == ENOENT ? -1 : -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return -errno;
	/* Freed because its owner (or another cleaner) has just removed the directory,
	 * unlinking the lock before letting go of it: nothing is left to clean. */
	if (fstat(fd, &st) < 0 || st.st_nlink == 0)
		return -ESTALE;
	return TAKE_FD(fd);
}

int runstate_clean_stale(const char *run_dir, uid_t owner)
{
	_cleanup_close_ int jobs_fd = -1, list_fd = -1;
	struct dirent *de;
	DIR *d;
	int n = 0, r;

	r = open_jobs_dir(run_dir, owner, false, &jobs_fd);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	list_fd = dup(jobs_fd);
	if (list_fd < 0)
		return -errno;
	d = fdopendir(list_fd);
	if (!d)
		return -errno;
	list_fd = -1;
	while ((de = readdir(d))) {
		bool temp = strncmp(de->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX)) == 0;
		const char *id = temp ? de->d_name + strlen(TEMP_PREFIX) : de->d_name;
		_cleanup_close_ int dfd = -1, lock = -1;
		struct stat st;

		/* Only names the runtime makes; anything else is not ours to judge. */
		if (!is_hex_id(id))
			continue;
		dfd = openat(jobs_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0 || fstat(dfd, &st) < 0 || st.st_uid != owner)
			continue;
		lock = take_free_lock(dfd);
		if (lock < -1)
			continue; /* its owner is alive (or the lock is unreadable) */
		if (lock == -1 && !temp) {
			/* The lock goes last when a job directory is removed: this one is
			 * being removed (or its remover died just before the rmdir). Never a
			 * job to undo; if it is empty, finish the removal. */
			unlinkat(jobs_fd, de->d_name, AT_REMOVEDIR);
			continue;
		}
		if (temp) {
			/* A creator that died before its rename: nothing was recorded yet. A
			 * young one may still be on its way to taking the lock. */
			if (time(NULL) - st.st_mtime < TEMP_MAX_AGE_S)
				continue;
			remove_job_dir(jobs_fd, de->d_name, dfd);
			continue;
		}
		log_debug("cleaning up job %s, left by a vmhpc that did not finish", de->d_name);
		undo_resources(dfd, id, owner);
		remove_job_dir(jobs_fd, de->d_name, dfd);
		n++;
	}
	closedir(d);
	return n;
}

int runstate_detach(struct runstate *rs)
{
	int fd = rs->lock_fd;

	if (rs->resources)
		fclose(rs->resources);
	close(rs->dir_fd);
	close(rs->jobs_fd);
	free(rs->dir);
	free(rs);
	return fd;
}

int runstate_attach(const char *run_dir, const char *job_id, uid_t owner, int lock_fd,
		    struct runstate **ret_state)
{
	_cleanup_close_ int jobs_fd = -1, dir_fd = -1, own_lock = -1, res_fd = -1;
	struct runstate *rs;
	struct stat st;
	int r;

	if (!is_hex_id(job_id))
		return -EINVAL;
	r = open_jobs_dir(run_dir, owner, false, &jobs_fd);
	if (r < 0)
		return r;
	dir_fd = openat(jobs_fd, job_id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir_fd < 0)
		return -errno;
	/* Only the owner's own job, as everywhere else here. */
	if (fstat(dir_fd, &st) < 0)
		return -errno;
	if (st.st_uid != owner || (st.st_mode & 07777) != 0700)
		return -EPERM;
	if (lock_fd < 0) {
		own_lock = openat(dir_fd, "lock", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		if (own_lock < 0)
			return -errno;
		if (flock(own_lock, LOCK_EX | LOCK_NB) < 0)
			return errno == EWOULDBLOCK ? -EBUSY : -errno;
		/* Freed because its owner has just removed the job: nothing to take over. */
		if (fstat(own_lock, &st) < 0 || st.st_nlink == 0)
			return -ESTALE;
	}
	res_fd = openat(dir_fd, "resources", O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	if (res_fd < 0)
		return -errno;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->dir = fs_path_join(run_dir, "jobs");
	if (rs->dir) {
		char *dir = fs_path_join(rs->dir, job_id);

		free(rs->dir);
		rs->dir = dir;
	}
	rs->resources = rs->dir ? fdopen(res_fd, "a") : NULL;
	if (!rs->resources) {
		free(rs->dir);
		free(rs);
		return -ENOMEM;
	}
	res_fd = -1;
	snprintf(rs->job_id, sizeof(rs->job_id), "%s", job_id);
	rs->jobs_fd = TAKE_FD(jobs_fd);
	rs->dir_fd = TAKE_FD(dir_fd);
	rs->lock_fd = lock_fd >= 0 ? lock_fd : TAKE_FD(own_lock);
	rs->owner = owner;
	*ret_state = rs;
	return 0;
}
