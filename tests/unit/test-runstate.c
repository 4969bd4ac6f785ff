/* Unit tests of the job run state (src/vm/runstate.c): planted folders and records must
 * not make cleanup touch anything that is not provably this user's job, concurrent
 * creators and cleaners must never lose a live job, and a killed job is undone. The
 * "processes" are copies of sleep named like the runtime's children (virtiofsd); the
 * cases that need another uid (chown, setuid to 65534) or a bridge run only as root. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/fsutil.h"
#include "vm/runstate.h"

#define NOBODY	  65534
#define MAX_PIDS  32
#define PLANT_LNK "rsplant0"

struct fixture {
	char *tmp;	      /* 0755, so NOBODY can run the fakes in it */
	char *run;	      /* <tmp>/run: the run directory under test */
	char *vfsd;	      /* <tmp>/bin/virtiofsd: a copy of sleep */
	char *victim;	      /* <tmp>/victim/file: must survive every cleanup */
	pid_t pids[MAX_PIDS]; /* started by the test, killed at teardown */
	int n_pids;
	bool link_made;
};

static char *join(const char *a, const char *b)
{
	char *p = fs_path_join(a, b);

	assert_non_null(p);
	return p;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char *bin, *vdir;

	if (!f || fs_mkdtemp("/tmp", "test-runstate-", &f->tmp) < 0 || chmod(f->tmp, 0755) < 0)
		return -1;
	f->run = fs_path_join(f->tmp, "run");
	bin = fs_path_join(f->tmp, "bin");
	vdir = fs_path_join(f->tmp, "victim");
	if (!f->run || !bin || !vdir || mkdir(bin, 0755) < 0 || mkdir(vdir, 0755) < 0)
		return -1;
	f->vfsd = fs_path_join(bin, "virtiofsd");
	f->victim = fs_path_join(vdir, "file");
	if (!f->vfsd || !f->victim || fs_copy_file("/usr/bin/sleep", f->vfsd, 0755) < 0 ||
	    fs_write_atomic(f->victim, "keep", 4, 0644) < 0)
		return -1;
	free(bin);
	free(vdir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (!f)
		return 0;
	for (int i = 0; i < f->n_pids; i++) {
		kill(f->pids[i], SIGKILL);
		waitpid(f->pids[i], NULL, 0);
	}
	if (f->link_made)
		system("ip link del " PLANT_LNK " 2>/dev/null");
	fs_rm_rf(f->tmp);
	free(f->tmp);
	free(f->run);
	free(f->vfsd);
	free(f->victim);
	free(f);
	return 0;
}

static unsigned long long start_time(pid_t pid)
{
	char path[64], buf[1024], *p;
	FILE *fp;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fp = fopen(path, "re");
	assert_non_null(fp);
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	assert_non_null(p);
	p += 2;
	for (int field = 3; field < 22; field++) {
		p = strchr(p, ' ');
		assert_non_null(p);
		p++;
	}
	return strtoull(p, NULL, 10);
}

/* Starts `path 300` as uid (or as ourselves when uid is -1) and waits until it runs
 * path, so a check of its binary sees the binary and not our fork. */
static pid_t start(struct fixture *f, const char *path, int uid)
{
	char link[64], exe[PATH_MAX];
	pid_t pid;

	assert_true(f->n_pids < MAX_PIDS);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (uid >= 0 && (setgid((gid_t)uid) < 0 || setuid((uid_t)uid) < 0))
			_exit(126);
		execl(path, path, "300", (char *)NULL);
		_exit(127);
	}
	f->pids[f->n_pids++] = pid;
	snprintf(link, sizeof(link), "/proc/%d/exe", (int)pid);
	for (int i = 0; i < 500; i++) {
		ssize_t n = readlink(link, exe, sizeof(exe) - 1);

		if (n > 0) {
			exe[n] = '\0';
			if (strcmp(exe, path) == 0)
				return pid;
		}
		usleep(10000);
	}
	fail_msg("%s did not start", path);
	return -1;
}

/* True while our child pid runs (not exited, not reaped). */
static bool running(pid_t pid)
{
	return waitpid(pid, NULL, WNOHANG) == 0;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	assert_int_equal(fs_write_atomic(path, text, strlen(text), mode), 0);
}

/* A job directory <run>/jobs/<name> left behind by a dead owner: lock free, resources
 * as given. Makes run and jobs (0700) when missing. Returns the job directory. */
static char *plant_job(const char *run, const char *name, const char *resources)
{
	char *jobs = join(run, "jobs"), *dir = join(jobs, name), *p;

	if (mkdir(run, 0700) < 0)
		assert_int_equal(errno, EEXIST);
	if (mkdir(jobs, 0700) < 0)
		assert_int_equal(errno, EEXIST);
	assert_int_equal(mkdir(dir, 0700), 0);
	p = join(dir, "lock");
	write_file(p, "", 0600);
	free(p);
	p = join(dir, "resources");
	write_file(p, resources, 0600);
	free(p);
	free(jobs);
	return dir;
}

static bool exists(const char *path)
{
	return fs_exists(path);
}

/* chown -R of a planted run directory (lchown: the test plants no links in it). */
static void chown_tree(const char *path, uid_t uid)
{
	char cmd[PATH_MAX + 64];

	snprintf(cmd, sizeof(cmd), "chown -R %u:%u '%s'", (unsigned)uid, (unsigned)uid, path);
	assert_int_equal(system(cmd), 0);
}

static void test_symlink_refused(void **state)
{
	struct fixture *f = *state;
	char *real = join(f->tmp, "real"), *run2 = join(f->tmp, "run2"), *jobs_link;
	char *job = plant_job(real, "0000000a", ""), *real_jobs = join(real, "jobs");
	struct runstate *rs = NULL;

	/* run dir is a symlink to a folder that passes every other check */
	assert_int_equal(symlink(real, f->run), 0);
	assert_true(runstate_create(f->run, geteuid(), &rs) < 0);
	assert_null(rs);
	assert_true(runstate_clean_stale(f->run, geteuid()) < 0);
	assert_true(exists(job));

	/* jobs/ is a symlink */
	assert_int_equal(mkdir(run2, 0700), 0);
	jobs_link = join(run2, "jobs");
	assert_int_equal(symlink(real_jobs, jobs_link), 0);
	assert_true(runstate_create(run2, geteuid(), &rs) < 0);
	assert_true(runstate_clean_stale(run2, geteuid()) < 0);
	assert_true(exists(job));

	/* a job directory that is a symlink is not followed */
	assert_int_equal(unlink(jobs_link), 0);
	assert_int_equal(mkdir(jobs_link, 0700), 0);
	free(jobs_link);
	jobs_link = join(run2, "jobs/0000000b");
	assert_int_equal(symlink(job, jobs_link), 0);
	assert_int_equal(runstate_clean_stale(run2, geteuid()), 0);
	assert_true(exists(job));

	/* the real folder itself is stale and ours: the refusals above were the checks */
	assert_int_equal(runstate_clean_stale(real, geteuid()), 1);
	assert_false(exists(job));
	free(jobs_link);
	free(real_jobs);
	free(job);
	free(run2);
	free(real);
}

static void test_owner_mode_refused(void **state)
{
	struct fixture *f = *state;
	char *job = plant_job(f->run, "0000000b", ""), *jobs = join(f->run, "jobs");
	struct runstate *rs = NULL;

	assert_int_equal(chmod(f->run, 0755), 0);
	assert_int_equal(runstate_create(f->run, geteuid(), &rs), -EPERM);
	assert_int_equal(runstate_clean_stale(f->run, geteuid()), -EPERM);
	assert_int_equal(chmod(f->run, 0700), 0);
	assert_int_equal(chmod(jobs, 0711), 0);
	assert_int_equal(runstate_create(f->run, geteuid(), &rs), -EPERM);
	assert_int_equal(runstate_clean_stale(f->run, geteuid()), -EPERM);
	assert_int_equal(chmod(jobs, 0700), 0);
	/* the folder is ours, not the given owner's */
	assert_int_equal(runstate_create(f->run, geteuid() + 1, &rs), -EPERM);
	assert_int_equal(runstate_clean_stale(f->run, geteuid() + 1), -EPERM);
	assert_null(rs);
	assert_true(exists(job));

	if (geteuid() == 0) {
		char *other = plant_job(f->run, "0000000c", "");

		/* run dir, then jobs/, owned by someone else */
		assert_int_equal(chown(f->run, NOBODY, NOBODY), 0);
		assert_int_equal(runstate_create(f->run, 0, &rs), -EPERM);
		assert_int_equal(runstate_clean_stale(f->run, 0), -EPERM);
		assert_int_equal(chown(f->run, 0, 0), 0);
		assert_int_equal(chown(jobs, NOBODY, NOBODY), 0);
		assert_int_equal(runstate_create(f->run, 0, &rs), -EPERM);
		assert_int_equal(runstate_clean_stale(f->run, 0), -EPERM);
		assert_int_equal(chown(jobs, 0, 0), 0);
		/* a job directory of someone else in our folder is left alone */
		assert_int_equal(chown(other, NOBODY, NOBODY), 0);
		assert_int_equal(runstate_clean_stale(f->run, 0), 1);
		assert_true(exists(other));
		assert_false(exists(job));
		free(other);
	} else {
		assert_int_equal(runstate_clean_stale(f->run, geteuid()), 1);
		assert_false(exists(job));
	}
	free(jobs);
	free(job);
}

/* Records of processes that are not the job's: none is killed; the one that is (a
 * virtiofsd of ours, same start time) is. */
static void test_foreign_pids_not_killed(void **state)
{
	struct fixture *f = *state;
	pid_t sleep_pid = start(f, "/usr/bin/sleep", -1);
	pid_t reused = start(f, f->vfsd, -1), ours = start(f, f->vfsd, -1), nobody_sleep = -1;
	char text[1024], *job;
	int len;

	len = snprintf(text, sizeof(text),
		       "pid %d %llu\n" /* ours, but sleep: not a runtime child */
		       "pid %d %llu\n" /* a virtiofsd, but another start time: a reused pid */
		       "pid 1 %llu\n"  /* init */
		       "pid %d 0\n"    /* no start time */
		       "link lo\n"     /* not the runtime's naming */
		       "link vmhpc0000000eb0\n"
		       "pid %d %llu\n", /* the job's own: killed */
		       (int)sleep_pid, start_time(sleep_pid), (int)reused, start_time(reused) + 1,
		       start_time(1), (int)ours, (int)ours, start_time(ours));
	if (geteuid() == 0) {
		nobody_sleep = start(f, "/usr/bin/sleep", NOBODY);
		assert_int_equal(system("ip link add " PLANT_LNK " type bridge"), 0);
		f->link_made = true;
		len += snprintf(text + len, sizeof(text) - (size_t)len,
				"pid %d %llu\nlink " PLANT_LNK "\n", (int)nobody_sleep,
				start_time(nobody_sleep));
	}
	job = plant_job(f->run, "0000000e", text);

	assert_int_equal(runstate_clean_stale(f->run, geteuid()), 1);
	assert_false(exists(job));
	assert_true(running(sleep_pid));
	assert_true(running(reused));
	assert_false(running(ours));
	assert_int_equal(kill(1, 0), 0);
	if (geteuid() == 0) {
		assert_true(running(nobody_sleep));
		assert_true(exists("/sys/class/net/" PLANT_LNK));
	}
	free(job);
}

/* As root, cleaning uid NOBODY's folder kills only NOBODY's virtiofsd, not root's. */
static void test_pid_of_other_uid_not_killed(void **state)
{
	struct fixture *f = *state;
	pid_t root_vfsd, nobody_vfsd;
	char text[256], *job;

	if (geteuid() != 0)
		skip();
	root_vfsd = start(f, f->vfsd, -1);
	nobody_vfsd = start(f, f->vfsd, NOBODY);
	snprintf(text, sizeof(text), "pid %d %llu\npid %d %llu\n", (int)root_vfsd,
		 start_time(root_vfsd), (int)nobody_vfsd, start_time(nobody_vfsd));
	job = plant_job(f->run, "0000000f", text);
	chown_tree(f->run, NOBODY);

	assert_int_equal(runstate_clean_stale(f->run, NOBODY), 1);
	assert_false(exists(job));
	assert_true(running(root_vfsd));
	assert_false(running(nobody_vfsd));
	free(job);
}

/* Earlier versions recorded "path" lines for rm -rf; a planted one must do nothing. */
static void test_path_records_ignored(void **state)
{
	struct fixture *f = *state;
	char text[PATH_MAX * 2 + 32], *job, *vdir = join(f->tmp, "victim");

	snprintf(text, sizeof(text), "path %s\npath %s\n", f->victim, vdir);
	job = plant_job(f->run, "00000010", text);
	assert_int_equal(runstate_clean_stale(f->run, geteuid()), 1);
	assert_false(exists(job));
	assert_true(exists(f->victim));
	assert_true(exists(vdir));
	free(vdir);
	free(job);
}

#define N_CREATORS 4
#define N_CLEANERS 2
#define ITERATIONS 60

/* Creates and releases jobs; exits non-zero when a live job's directory went missing. */
static int creator(const char *run)
{
	for (int i = 0; i < ITERATIONS; i++) {
		struct runstate *rs;
		char *res;

		if (runstate_create(run, geteuid(), &rs) < 0)
			return 1;
		res = fs_path_join(runstate_job_dir(rs), "resources");
		if (!res || !fs_exists(res))
			return 2;
		usleep((useconds_t)(rand() % 2000));
		if (!fs_exists(res))
			return 3;
		free(res);
		runstate_release(rs);
	}
	return 0;
}

/* Cleans until stop_fd reaches EOF; exits non-zero when it cleaned anything (no job
 * here is stale) or failed. */
static int cleaner(const char *run, int stop_fd)
{
	for (;;) {
		struct pollfd pfd = {.fd = stop_fd, .events = POLLIN};
		int r = runstate_clean_stale(run, geteuid());

		if (r != 0)
			return r < 0 ? 4 : 5;
		if (poll(&pfd, 1, 0) > 0)
			return 0;
	}
}

static void test_concurrent_create_clean(void **state)
{
	struct fixture *f = *state;
	pid_t pids[N_CREATORS + N_CLEANERS];
	int stop[2], status;
	char *jobs;

	assert_int_equal(pipe(stop), 0);
	for (int i = 0; i < N_CREATORS + N_CLEANERS; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			close(stop[1]);
			srand((unsigned)getpid());
			_exit(i < N_CREATORS ? creator(f->run) : cleaner(f->run, stop[0]));
		}
	}
	close(stop[0]);
	for (int i = 0; i < N_CREATORS; i++) {
		assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail_msg("creator %d lost its job (status 0x%x)", i, status);
	}
	close(stop[1]);
	for (int i = N_CREATORS; i < N_CREATORS + N_CLEANERS; i++) {
		assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail_msg("cleaner %d cleaned a live job or failed (status 0x%x)", i,
				 status);
	}
	/* every creator released its jobs: nothing is left */
	jobs = join(f->run, "jobs");
	assert_int_equal(rmdir(jobs), 0);
	free(jobs);
}

/* A job whose owner was SIGKILLed: its virtiofsd, its bridge and its directory go; a
 * leftover temp directory goes when old, stays when young. */
static void test_stale_job_cleaned(void **state)
{
	struct fixture *f = *state;
	char buf[PATH_MAX + 64], dir[PATH_MAX], link[32] = "", *p, *old_tmp, *young_tmp, *other;
	struct timespec old[2] = {{.tv_sec = time(NULL) - 3600}, {.tv_sec = time(NULL) - 3600}};
	int fds[2], status, vfsd = 0;
	pid_t owner;
	ssize_t n;

	assert_int_equal(pipe(fds), 0);
	owner = fork();
	assert_true(owner >= 0);
	if (owner == 0) {
		struct runstate *rs;
		pid_t child;

		close(fds[0]);
		if (runstate_create(f->run, geteuid(), &rs) < 0)
			_exit(1);
		/* Started as the runtime starts nothing: without dying with us, so only the
		 * cleanup can stop it. */
		child = fork();
		if (child == 0) {
			execl(f->vfsd, f->vfsd, "300", (char *)NULL);
			_exit(127);
		}
		if (child < 0 || runstate_add_pid(rs, child) < 0)
			_exit(1);
		snprintf(link, sizeof(link), "vmhpc%sb", runstate_job_id(rs));
		if (runstate_add_link(rs, link) < 0)
			_exit(1);
		if (geteuid() == 0) {
			snprintf(buf, sizeof(buf), "ip link add %s type bridge", link);
			if (system(buf) != 0)
				_exit(1);
		}
		dprintf(fds[1], "%s %d %s\n", runstate_job_dir(rs), (int)child, link);
		close(fds[1]);
		pause();
		_exit(0);
	}
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(sscanf(buf, "%4095s %d %31s", dir, &vfsd, link), 3);
	/* wait for the exec, so the record names a virtiofsd */
	for (int i = 0; i < 500; i++) {
		char exe[PATH_MAX], proc[64];
		ssize_t m;

		snprintf(proc, sizeof(proc), "/proc/%d/exe", vfsd);
		m = readlink(proc, exe, sizeof(exe) - 1);
		if (m > 0 && (exe[m] = '\0', strcmp(exe, f->vfsd) == 0))
			break;
		usleep(10000);
	}
	assert_int_equal(kill(owner, SIGKILL), 0);
	assert_int_equal(waitpid(owner, &status, 0), owner);
	/* its virtiofsd is now our child (we are a subreaper): teardown reaps it if need be */
	f->pids[f->n_pids++] = vfsd;
	assert_true(exists(dir));
	assert_true(running(vfsd));

	old_tmp = join(f->run, "jobs/tmp-0000abcd");
	young_tmp = join(f->run, "jobs/tmp-0000abce");
	other = join(f->run, "jobs/notes");
	assert_int_equal(mkdir(old_tmp, 0700), 0);
	assert_int_equal(mkdir(young_tmp, 0700), 0);
	assert_int_equal(mkdir(other, 0700), 0);
	p = join(old_tmp, "lock");
	write_file(p, "", 0600);
	free(p);
	assert_int_equal(utimensat(AT_FDCWD, old_tmp, old, 0), 0);

	assert_int_equal(runstate_clean_stale(f->run, geteuid()), 1);
	assert_false(exists(dir));
	assert_false(running(vfsd));
	if (geteuid() == 0) {
		snprintf(buf, sizeof(buf), "/sys/class/net/%s", link);
		assert_false(exists(buf));
	}
	assert_false(exists(old_tmp));
	assert_true(exists(young_tmp));
	assert_true(exists(other));
	assert_int_equal(runstate_clean_stale(f->run, geteuid()), 0);
	free(old_tmp);
	free(young_tmp);
	free(other);
}

static void test_release(void **state)
{
	struct fixture *f = *state;
	struct runstate *rs = NULL;
	pid_t vfsd = start(f, f->vfsd, -1);
	char name[32], *dir;
	struct stat st;

	assert_int_equal(runstate_create(f->run, geteuid(), &rs), 0);
	assert_int_equal(strlen(runstate_job_id(rs)), 8);
	dir = strdup(runstate_job_dir(rs));
	assert_int_equal(lstat(dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_int_equal(lstat(f->run, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);

	assert_int_equal(runstate_add_link(rs, "eth0"), -EINVAL);
	assert_int_equal(runstate_add_link(rs, "vmhpc00000000b"), -EINVAL);
	snprintf(name, sizeof(name), "vmhpc%st", runstate_job_id(rs));
	assert_int_equal(runstate_add_link(rs, name), -EINVAL);
	snprintf(name, sizeof(name), "vmhpc%st1x", runstate_job_id(rs));
	assert_int_equal(runstate_add_link(rs, name), -EINVAL);
	snprintf(name, sizeof(name), "vmhpc%st12", runstate_job_id(rs));
	assert_int_equal(runstate_add_link(rs, name), 0);
	assert_int_equal(runstate_add_pid(rs, vfsd), 0);
	/* a live job is not stale */
	assert_int_equal(runstate_clean_stale(f->run, geteuid()), 0);
	assert_true(exists(dir));

	runstate_release(rs);
	assert_false(exists(dir));
	assert_false(running(vfsd));
	runstate_release(NULL);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_symlink_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_owner_mode_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_pids_not_killed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pid_of_other_uid_not_killed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_path_records_ignored, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_concurrent_create_clean, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stale_job_cleaned, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_release, setup, teardown),
	};

	/* Orphans of a killed job owner become our children, so the test can reap them. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
