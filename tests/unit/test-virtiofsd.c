/* Unit tests of virtiofsd_start (src/vm/virtiofsd.h): it refuses a job folder that is not
 * the directory the caller checked (another inode; a parent swapped for a symlink after
 * the check), starts the real virtiofsd confined (seccomp on, the caller's uid, waiting
 * on the socket), and reports a server that exits at start with the lines of its log. The
 * guest side is tested with real VMs in tests/integration/share-trust.sh. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/fsutil.h"
#include "vm/virtiofsd.h"

static char base[64];
static char path_buf[16][256];

/* base/name, in one of 16 rotating buffers (a few live at once). */
static const char *at(const char *name)
{
	static unsigned next;
	char *p = path_buf[next++ % 16];

	snprintf(p, sizeof(path_buf[0]), "%s/%s", base, name);
	return p;
}

static int setup(void **state)
{
	snprintf(base, sizeof(base), "/tmp/test-virtiofsd.XXXXXX");
	assert_non_null(mkdtemp(base));
	assert_int_equal(mkdir(at("parent"), 0755), 0);
	assert_int_equal(mkdir(at("parent/job"), 0755), 0);
	assert_int_equal(mkdir(at("secret"), 0700), 0);
	assert_int_equal(mkdir(at("secret/job"), 0700), 0);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
	return system(cmd) == 0 ? 0 : -1;
}

static struct virtiofsd_config config_for(const char *dir)
{
	struct virtiofsd_config c = {.dir = dir,
				     .uid = getuid(),
				     .gid = getgid(),
				     .socket_path = at("fs.sock"),
				     .log_path = at("virtiofsd.log")};
	struct stat sb;

	assert_int_equal(stat(dir, &sb), 0);
	c.dir_dev = sb.st_dev;
	c.dir_ino = sb.st_ino;
	unlink(c.socket_path);
	unlink(c.log_path);
	return c;
}

static void test_refuses_another_inode(void **state)
{
	struct virtiofsd_config c = config_for(at("parent/job"));
	char *error = NULL;
	pid_t pid = -1;

	c.dir_ino++;
	assert_int_equal(virtiofsd_start(&c, &pid, &error), -ESTALE);
	assert_non_null(error);
	assert_non_null(strstr(error, "no longer the directory that was checked"));
	assert_int_equal(pid, -1);
	free(error);
}

static void test_refuses_parent_swapped_for_symlink(void **state)
{
	struct virtiofsd_config c = config_for(at("parent/job"));
	char *error = NULL;
	pid_t pid = -1;

	/* After the check, parent/ becomes a symlink to secret/: parent/job now names
	 * secret/job, which must not be shared. */
	assert_int_equal(rename(at("parent"), at("parent.old")), 0);
	assert_int_equal(symlink(at("secret"), at("parent")), 0);
	assert_int_equal(virtiofsd_start(&c, &pid, &error), -ESTALE);
	assert_non_null(error);
	assert_non_null(strstr(error, "no longer the directory that was checked"));
	assert_int_equal(pid, -1);
	free(error);
	assert_int_equal(unlink(at("parent")), 0);
	assert_int_equal(rename(at("parent.old"), at("parent")), 0);
}

static void test_starts_confined(void **state)
{
	struct virtiofsd_config c = config_for(at("parent/job"));
	char *error = NULL, *status = NULL, proc[64];
	size_t len;
	pid_t pid = -1;
	int r;

	r = virtiofsd_start(&c, &pid, &error);
	if (r < 0)
		fail_msg("virtiofsd_start: %s", error ? error : strerror(-r));
	assert_true(pid > 0);
	assert_true(fs_exists(c.socket_path));
	assert_int_equal(kill(pid, 0), 0); /* still running: waiting for QEMU */
	snprintf(proc, sizeof(proc), "/proc/%d/status", (int)pid);
	{
		FILE *f = fopen(proc, "r");

		assert_non_null(f);
		status = calloc(1, 1 << 16);
		assert_non_null(status);
		len = fread(status, 1, (1 << 16) - 1, f);
		fclose(f);
		assert_true(len > 0);
	}
	/* Our seccomp filter is in place, and no_new_privs with it. */
	if (!strstr(status, "Seccomp:\t2"))
		fail_msg("%s", status);
	assert_non_null(strstr(status, "NoNewPrivs:\t1"));
	virtiofsd_stop(pid);
	free(status);
}

static void test_exit_at_start_quotes_log(void **state)
{
	struct virtiofsd_config c = config_for(at("parent/job"));
	/* Not under /mnt: the child hides /mnt under its private tmpfs before the exec. The
	 * build directory it lands in may well be under /tmp, as a CI clone can be. */
	char dir[] = "test-virtiofsd-standin.XXXXXX", script[4096];
	char *error = NULL;
	pid_t pid = -1;
	FILE *f;

	assert_non_null(mkdtemp(dir));
	assert_non_null(realpath(dir, script));
	strcat(script, "/standin.sh");
	f = fopen(script, "w");

	assert_non_null(f);
	fputs("#!/bin/sh\necho 'standin: setgroups() failed: Operation not permitted' >&2\nexit "
	      "3\n",
	      f);
	fclose(f);
	assert_int_equal(chmod(script, 0755), 0);
	c.program = script;
	assert_int_equal(virtiofsd_start(&c, &pid, &error), -EIO);
	assert_non_null(error);
	/* The log goes with the job directory: its lines must be in the message. */
	assert_non_null(strstr(error, "exit 3"));
	assert_non_null(strstr(error, "standin: setgroups() failed"));
	assert_int_equal(pid, -1);
	free(error);
	assert_int_equal(unlink(script), 0);
	assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_refuses_another_inode),
	    cmocka_unit_test(test_refuses_parent_swapped_for_symlink),
	    cmocka_unit_test(test_starts_confined),
	    cmocka_unit_test(test_exit_at_start_quotes_log),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
