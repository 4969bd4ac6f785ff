/* Unit tests of a job's private network (src/net/netns.c) and of how a process enters it
 * (proc_join_namespaces through proc_run and qemu_vm_start): real namespaces, bridge and
 * taps, so they run as root (as the suite does here). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/netns.h"
#include "util/fsutil.h"
#include "util/proc.h"
#include "vm/qemu.h"

/* Runs argv inside j's namespaces; returns its stdout (caller frees); asserts exit 0. */
static char *run_in(const struct net_job *j, char *const argv[])
{
	struct proc_options opts = {.stdout_fd = -1, .namespaces = net_job_namespaces(j)};
	char *out = NULL, *err = NULL;
	int code = -1;

	assert_int_equal(proc_run(argv, &opts, &out, &err, &code), 0);
	if (code != 0)
		fail_msg("%s exited %d: %s", argv[0], code, err);
	free(err);
	return out;
}

static ino_t fd_inode(int fd)
{
	struct stat st;

	assert_int_equal(fstat(fd, &st), 0);
	return st.st_ino;
}

static ino_t path_inode(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_ino;
}

/* Whether any process has a namespace with inode ino, or any fd naming one. */
static bool namespace_in_use(ino_t ino)
{
	DIR *proc = opendir("/proc");
	struct dirent *de;
	bool found = false;
	dev_t nsfs_dev;
	struct stat self;

	/* Namespace files live on nsfs: an fd matches by device and inode. */
	assert_int_equal(stat("/proc/self/ns/net", &self), 0);
	nsfs_dev = self.st_dev;
	assert_non_null(proc);
	while (!found && (de = readdir(proc))) {
		char path[600];
		struct stat st;
		DIR *fds;
		struct dirent *fe;

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		for (const char *const *k = (const char *const[]){"net", "user", NULL}; *k; k++) {
			snprintf(path, sizeof(path), "/proc/%s/ns/%s", de->d_name, *k);
			if (stat(path, &st) == 0 && st.st_ino == ino && st.st_dev == nsfs_dev)
				found = true;
		}
		snprintf(path, sizeof(path), "/proc/%s/fd", de->d_name);
		fds = opendir(path);
		while (fds && !found && (fe = readdir(fds))) {
			snprintf(path, sizeof(path), "/proc/%.32s/fd/%.32s", de->d_name,
				 fe->d_name);
			if (stat(path, &st) == 0 && st.st_ino == ino && st.st_dev == nsfs_dev)
				found = true;
		}
		if (fds)
			closedir(fds);
	}
	closedir(proc);
	return found;
}

/* A bridge and 11 taps with short names, inside a namespace of the job's own, with no
 * address and IPv6 off; the host's namespace gets none of them. 11 VMs collided when tap
 * names carried the job id ("vmhpc<id>t10" is 16 characters, truncated to 15). */
static void test_root_namespace(void **state)
{
	struct net_job *j = NULL;
	char *error = NULL, *links, *addrs, *v6;
	char *ip_link[] = {"ip", "-o", "link", "show", NULL};
	char *ip_addr[] = {"ip", "-o", "addr", "show", NULL};
	char *cat_v6[] = {"cat", "/proc/sys/net/ipv6/conf/br0/disable_ipv6", NULL};

	(void)state;
	assert_int_equal(net_job_create(11, false, &j, &error), 0);
	assert_null(error);
	assert_true(net_job_netns_fd(j) >= 0);
	assert_int_equal(net_job_userns_fd(j), -1);
	assert_int_not_equal(fd_inode(net_job_netns_fd(j)), path_inode("/proc/self/ns/net"));

	links = run_in(j, ip_link);
	assert_non_null(strstr(links, ": br0: "));
	for (unsigned i = 0; i < 11; i++) {
		char needle[64];

		assert_non_null(net_job_tap(j, i));
		assert_true(strlen(net_job_tap(j, i)) < 16);
		snprintf(needle, sizeof(needle), ": %s: ", net_job_tap(j, i));
		if (!strstr(links, needle))
			fail_msg("no %s in the namespace: %s", net_job_tap(j, i), links);
		snprintf(needle, sizeof(needle), ": %s: ", net_job_tap(j, i));
		assert_non_null(strstr(strstr(links, needle), "master br0"));
		/* ...and not in ours */
		snprintf(needle, sizeof(needle), "/sys/class/net/%s", net_job_tap(j, i));
		assert_false(fs_exists(needle));
	}
	assert_null(net_job_tap(j, 11));
	assert_string_equal(net_job_tap(j, 10), "tap10");
	free(links);

	/* Nothing in the namespace has an address a guest could reach the host through. */
	addrs = run_in(j, ip_addr);
	if (strstr(addrs, "inet"))
		fail_msg("an address in the job's namespace: %s", addrs);
	free(addrs);
	v6 = run_in(j, cat_v6);
	assert_string_equal(v6, "1\n");
	free(v6);
	net_job_free(j);
}

/* Without root: a user namespace mapping root to the caller owns the network namespace;
 * programs run in it are root there (so QEMU may open the taps) and nobody else. */
static void test_user_namespace(void **state)
{
	struct net_job *j = NULL;
	char *error = NULL, *out;
	char *id[] = {"id", "-u", NULL};
	char *ip_link[] = {"ip", "-o", "link", "show", "tap1", NULL};

	(void)state;
	assert_int_equal(net_job_create(2, true, &j, &error), 0);
	assert_null(error);
	assert_true(net_job_userns_fd(j) >= 0);
	assert_int_not_equal(fd_inode(net_job_userns_fd(j)), path_inode("/proc/self/ns/user"));
	out = run_in(j, id);
	assert_string_equal(out, "0\n");
	free(out);
	out = run_in(j, ip_link);
	assert_non_null(strstr(out, "master br0"));
	free(out);
	net_job_free(j);
}

/* A plain user gets the job network, or, where the tun device is closed to it, a message
 * that says how to open it (not ip's bare "open: Permission denied"). */
static void test_plain_user(void **state)
{
	pid_t pid;
	int status;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct net_job *j = NULL;
		char *error = NULL;
		bool tun_open;
		int r;

		if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
			_exit(10);
		tun_open = access("/dev/net/tun", R_OK | W_OK) == 0;
		r = net_job_create(2, true, &j, &error);
		if (tun_open)
			_exit(r == 0 && net_job_userns_fd(j) >= 0 ? 0 : 11);
		if (r == -EACCES && error && strstr(error, "chmod 0666 /dev/net/tun"))
			_exit(0);
		fprintf(stderr, "net_job_create as nobody: %d %s\n", r, error ? error : "");
		_exit(12);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* Once our fds are closed (and no process is inside), the namespaces are gone, and with
 * them every link: nothing for a cleanup to find. */
static void test_gone_after_free(void **state)
{
	struct net_job *j = NULL;
	ino_t net, user;

	(void)state;
	assert_int_equal(net_job_create(3, true, &j, NULL), 0);
	net = fd_inode(net_job_netns_fd(j));
	user = fd_inode(net_job_userns_fd(j));
	assert_true(namespace_in_use(net));
	net_job_free(j);
	assert_false(namespace_in_use(net));
	assert_false(namespace_in_use(user));
}

/* QEMU (here a script standing in for it) runs inside the job's namespaces; we do not. */
static void test_qemu_joins(void **state)
{
	/* QEMU's stdout is /dev/null without a console pipe: the answer goes to stderr. */
	static const char script[] = "#!/bin/sh\n"
				     "readlink /proc/self/ns/net /proc/self/ns/user >&2\n";
	struct net_job *j = NULL;
	struct qemu_vm *vm = NULL;
	char *dir = NULL, *fake = NULL, *log = NULL, *text = NULL, expect[128];
	struct qemu_vm_config c = {
	    .name = "vm0", .accel = ACCEL_TCG, .mem_mb = 128, .kernel = "/k", .net = QEMU_NET_TAP};
	int status = -1;

	(void)state;
	assert_int_equal(fs_mkdtemp("/tmp", "test-netns-", &dir), 0);
	fake = fs_path_join(dir, "qemu");
	log = fs_path_join(dir, "out");
	assert_int_equal(fs_write_atomic(fake, script, strlen(script), 0755), 0);
	assert_int_equal(net_job_create(1, true, &j, NULL), 0);
	c.qemu = fake;
	c.net_tap = net_job_tap(j, 0);
	c.namespaces = net_job_namespaces(j);
	c.stderr_log = log;
	assert_int_equal(qemu_vm_start(&c, &vm), 0);
	assert_int_equal(qemu_vm_wait(vm, 10000, &status), 0);
	assert_int_equal(status, 0);
	assert_int_equal(fs_read_file(log, 4096, &text, NULL), 0);
	snprintf(expect, sizeof(expect), "net:[%lu]\nuser:[%lu]\n",
		 (unsigned long)fd_inode(net_job_netns_fd(j)),
		 (unsigned long)fd_inode(net_job_userns_fd(j)));
	assert_string_equal(text, expect);
	qemu_vm_free(vm);
	net_job_free(j);
	fs_rm_rf(dir);
	free(text);
	free(fake);
	free(log);
	free(dir);
}

static void test_mac_addresses(void **state)
{
	char a[NET_MAC_LEN], b[NET_MAC_LEN];

	(void)state;
	net_mac_address(0, a);
	net_mac_address(255, b);
	assert_string_equal(a, "52:54:00:00:00:01");
	assert_string_equal(b, "52:54:00:00:01:00");
	assert_string_not_equal(a, b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_root_namespace), cmocka_unit_test(test_user_namespace),
	    cmocka_unit_test(test_plain_user),	   cmocka_unit_test(test_gone_after_free),
	    cmocka_unit_test(test_qemu_joins),	   cmocka_unit_test(test_mac_addresses),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
