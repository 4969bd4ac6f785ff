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

/* Whether a UDP socket of our network namespace is bound to port (/proc/self/net/udp). */
static bool udp_port_open(unsigned port)
{
	char line[512], needle[16];
	FILE *f = fopen("/proc/self/net/udp", "re");
	bool found = false;

	assert_non_null(f);
	snprintf(needle, sizeof(needle), ":%04X ", port);
	/* Line by line: proc files have no size for a reader that trusts st_size. */
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

/* The VXLAN link of a job across nodes: made in the job's namespace on its bridge with the
 * MTU and one flood entry per remote, its UDP socket in ours (the node's), nothing of it in
 * ours; the same VNI twice on a port is refused; all of it goes with the job's namespace. */
static void test_vxlan(void **state)
{
	struct net_job *j = NULL, *k = NULL, *bad = NULL;
	char *error = NULL, *out;
	const char *remotes[] = {"192.0.2.1", "192.0.2.2"};
	unsigned port = 30000 + (unsigned)getpid() % 20000, vni = 5000 + (unsigned)getpid() % 1000;
	struct net_vxlan vx = {
	    .vni = vni,
	    .port = (uint16_t)port,
	    .mtu = 1450,
	    .remote_addrs = remotes,
	    .n_remotes = 2,
	    .entries = (const struct net_fdb_entry[]){{"52:54:00:00:00:07", "192.0.2.2"}},
	    .n_entries = 1};
	char *link[] = {"ip", "-d", "-o", "link", "show", "vxlan0", NULL};
	char *tap[] = {"ip", "-o", "link", "show", "tap1", NULL};
	char *fdb[] = {"bridge", "fdb", "show", "dev", "vxlan0", NULL};
	char want[64];

	(void)state;
	assert_int_equal(net_job_create(2, false, &j, NULL), 0);
	assert_int_equal(net_job_add_vxlan(j, &vx, &error), 0);
	assert_null(error);
	out = run_in(j, link);
	snprintf(want, sizeof(want), "vxlan id %u ", vni);
	if (!strstr(out, "master br0") || !strstr(out, "mtu 1450") || !strstr(out, want) ||
	    !strstr(out, "nolearning"))
		fail_msg("vxlan0: %s", out);
	snprintf(want, sizeof(want), "dstport %u ", port);
	assert_non_null(strstr(out, want));
	free(out);
	out = run_in(j, tap);
	assert_non_null(strstr(out, "mtu 1450"));
	free(out);
	out = run_in(j, fdb);
	if (!strstr(out, "00:00:00:00:00:00 dst 192.0.2.1") ||
	    !strstr(out, "00:00:00:00:00:00 dst 192.0.2.2") ||
	    !strstr(out, "52:54:00:00:00:07 dst 192.0.2.2"))
		fail_msg("flood entries: %s", out);
	free(out);
	/* The socket is ours (the node's), the device is not. */
	assert_true(udp_port_open(port));

	/* Another job, same VNI and port: refused, saying why. */
	assert_int_equal(net_job_create(1, false, &k, NULL), 0);
	assert_int_equal(net_job_add_vxlan(k, &vx, &error), -EEXIST);
	assert_non_null(strstr(error, "in use on this node"));
	free(error);
	error = NULL;
	/* Another VNI on the same port: its own segment, the same socket. */
	vx.vni = vni + 1;
	assert_int_equal(net_job_add_vxlan(k, &vx, NULL), 0);

	/* Bad input. */
	vx.vni = 0;
	assert_int_equal(net_job_add_vxlan(k, &vx, NULL), -EINVAL);
	vx.vni = 1u << 24;
	assert_int_equal(net_job_add_vxlan(k, &vx, NULL), -EINVAL);
	vx.vni = vni + 2;
	remotes[1] = "node2";
	assert_int_equal(net_job_add_vxlan(k, &vx, &error), -EINVAL);
	assert_non_null(strstr(error, "node2"));
	free(error);
	error = NULL;
	assert_int_equal(net_job_create(1, true, &bad, NULL), 0);
	assert_int_equal(net_job_add_vxlan(bad, &vx, &error), -EPERM);
	assert_non_null(strstr(error, "root"));
	free(error);
	net_job_free(bad);

	net_job_free(k);
	net_job_free(j);
	/* The kernel closes the socket once the last device using it is gone with its
	 * namespace (namespaces are torn down by a work queue: give it a moment). */
	for (int t = 0; t < 100 && udp_port_open(port); t++)
		usleep(20000);
	assert_false(udp_port_open(port));
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
	    cmocka_unit_test(test_vxlan),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
