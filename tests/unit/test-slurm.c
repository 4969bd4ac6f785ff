/* The Slurm tier's pure parts: option values (src/slurm/options.h), the job token and VNI
 * (src/slurm/token.h), and the control socket's messages and descriptor passing
 * (src/slurm/control.h). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "slurm/control.h"
#include "slurm/options.h"
#include "slurm/token.h"

static void test_counts(void **state)
{
	char err[256];
	unsigned v = 0;

	assert_int_equal(slurmopt_parse_count("--vms-per-node", "2", 64, &v, err, sizeof(err)), 0);
	assert_int_equal(v, 2);
	assert_int_equal(slurmopt_parse_count("--vms-per-node", "64", 64, &v, err, sizeof(err)), 0);
	const char *bad[] = {"", "0", "65", "abc", "2x", "-1", " 2", "+2", "99999999999999", NULL};
	for (int i = 0; bad[i]; i++) {
		assert_int_equal(
		    slurmopt_parse_count("--vms-per-node", bad[i], 64, &v, err, sizeof(err)),
		    -EINVAL);
		assert_non_null(strstr(err, "--vms-per-node="));
		assert_non_null(strstr(err, "whole number from 1 to 64"));
	}
	assert_int_equal(slurmopt_parse_count("--vm-vcpus", NULL, 8, &v, err, sizeof(err)),
			 -EINVAL);
}

static void test_mem(void **state)
{
	char err[256];
	unsigned mb = 0;

	assert_int_equal(slurmopt_parse_mem_mb("512", &mb, err, sizeof(err)), 0);
	assert_int_equal(mb, 512);
	assert_int_equal(slurmopt_parse_mem_mb("512M", &mb, err, sizeof(err)), 0);
	assert_int_equal(mb, 512);
	assert_int_equal(slurmopt_parse_mem_mb("2G", &mb, err, sizeof(err)), 0);
	assert_int_equal(mb, 2048);
	assert_int_equal(slurmopt_parse_mem_mb("lots", &mb, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "e.g. 512M or 2G"));
	assert_int_equal(slurmopt_parse_mem_mb("64M", &mb, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "at least 128M"));
	assert_int_equal(slurmopt_parse_mem_mb("5000G", &mb, err, sizeof(err)), -EINVAL);
	assert_int_equal(slurmopt_parse_mem_mb("1.5G", &mb, err, sizeof(err)), -EINVAL);
	assert_int_equal(slurmopt_parse_mem_mb("", &mb, err, sizeof(err)), -EINVAL);
}

static void test_shm(void **state)
{
	char err[256];
	int v = 7;

	assert_int_equal(slurmopt_parse_shm("on", &v, err, sizeof(err)), 0);
	assert_int_equal(v, 1);
	assert_int_equal(slurmopt_parse_shm("off", &v, err, sizeof(err)), 0);
	assert_int_equal(v, 0);
	assert_int_equal(slurmopt_parse_shm("auto", &v, err, sizeof(err)), 0);
	assert_int_equal(v, SLURMOPT_SHM_AUTO);
	v = 7;
	assert_int_equal(slurmopt_parse_shm("yes please", &v, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "--vm-shm=yes please: give on, off or auto"));
	assert_int_equal(slurmopt_parse_shm("", &v, err, sizeof(err)), -EINVAL);
	assert_int_equal(slurmopt_parse_shm(NULL, &v, err, sizeof(err)), -EINVAL);
	assert_int_equal(v, 7);
}

static void test_image(void **state)
{
	char err[256];

	assert_int_equal(slurmopt_check_image("reg.example.org/team/app:3", err, sizeof(err)), 0);
	assert_int_equal(slurmopt_check_image("10.1.2.3:5000/vmhpc/tiny-mpi:1", err, sizeof(err)),
			 0);
	assert_int_equal(slurmopt_check_image("tiny-mpi", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "REGISTRY/REPOSITORY"));
	assert_int_equal(slurmopt_check_image("a b/c", err, sizeof(err)), -EINVAL);
	assert_int_equal(slurmopt_check_image("-x/y", err, sizeof(err)), -EINVAL);
	assert_int_equal(slurmopt_check_image("", err, sizeof(err)), -EINVAL);
	char longref[600];
	memset(longref, 'a', sizeof(longref) - 1);
	longref[sizeof(longref) - 1] = 0;
	longref[3] = '/';
	assert_int_equal(slurmopt_check_image(longref, err, sizeof(err)), -EINVAL);
}

static void test_cpus_on_node(void **state)
{
	unsigned c = 0;

	assert_int_equal(slurmopt_cpus_on_node("2", 0, &c), 0);
	assert_int_equal(c, 2);
	assert_int_equal(slurmopt_cpus_on_node("1(x2)", 1, &c), 0);
	assert_int_equal(c, 1);
	assert_int_equal(slurmopt_cpus_on_node("1(x2)", 2, &c), -EINVAL);
	assert_int_equal(slurmopt_cpus_on_node("4,2(x3),8", 0, &c), 0);
	assert_int_equal(c, 4);
	assert_int_equal(slurmopt_cpus_on_node("4,2(x3),8", 3, &c), 0);
	assert_int_equal(c, 2);
	assert_int_equal(slurmopt_cpus_on_node("4,2(x3),8", 4, &c), 0);
	assert_int_equal(c, 8);
	const char *bad[] = {"", "x", "2(3)", "2(x)", "2(x0)", "2;3", NULL};
	for (int i = 0; bad[i]; i++)
		assert_int_equal(slurmopt_cpus_on_node(bad[i], 0, &c), -EINVAL);
	/* read as far as the node asked for: the rest is checked by the node that needs it */
	assert_int_equal(slurmopt_cpus_on_node("2,,3", 1, &c), -EINVAL);
}

static void test_token(void **state)
{
	char dir[] = "/tmp/test-slurm.XXXXXX", path[64], a[SLURMTOKEN_HEX_LEN + 1],
	     b[SLURMTOKEN_HEX_LEN + 1];
	char *error = NULL;
	int fd;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/key", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "0123456789abcdef0123456789abcdef", 32), 32);
	close(fd);
	if (geteuid() == 0) {
		assert_int_equal(slurmtoken_derive(path, 42, a, &error), 0);
		assert_int_equal(strlen(a), 64);
		assert_int_equal(slurmtoken_derive(path, 42, b, &error), 0);
		assert_string_equal(a, b); /* the same on every node */
		assert_int_equal(slurmtoken_derive(path, 43, b, &error), 0);
		assert_string_not_equal(a, b);
		chmod(path, 0644);
		assert_int_equal(slurmtoken_derive(path, 42, a, &error), -EPERM);
		assert_non_null(strstr(error, "mode 0600"));
		free(error);
		error = NULL;
	}
	unlink(path);
	assert_true(slurmtoken_derive(path, 42, a, &error) < 0);
	assert_non_null(strstr(error, "head -c 32 /dev/urandom"));
	free(error);
	rmdir(dir);
	assert_int_equal(slurmtoken_vni(0), 1);
	assert_int_equal(slurmtoken_vni(7), 8);
	assert_true(slurmtoken_vni(0xffffffffu) >= 1 && slurmtoken_vni(0xffffffffu) <= 0xffffff);
}

static void test_control(void **state)
{
	int sv[2], fds[SLURMCTL_MAX_FDS], p[2];
	unsigned n = 0;
	json_t *msg = NULL, *got = NULL;
	uid_t uid;
	char c;

	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(pipe(p), 0);
	msg = json_pack("{s:s, s:[s,s]}", "op", "mpirun", "argv", "./ring", "--hello");
	assert_int_equal(slurmctl_send(sv[0], msg, &p[1], 1), 0);
	assert_int_equal(slurmctl_recv(sv[1], 1000, &got, fds, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(json_string_value(json_object_get(got, "op")), "mpirun");
	assert_int_equal(write(fds[0], "x", 1), 1); /* the passed end writes into our pipe */
	assert_int_equal(read(p[0], &c, 1), 1);
	close(fds[0]);
	json_decref(got);
	assert_int_equal(slurmctl_peer_uid(sv[1], &uid), 0);
	assert_int_equal(uid, geteuid());
	/* not JSON */
	assert_int_equal(send(sv[0], "nope", 4, 0), 4);
	assert_int_equal(slurmctl_recv(sv[1], 1000, &got, fds, &n), -EBADMSG);
	/* nothing: a timeout; the peer gone: -EPIPE */
	assert_int_equal(slurmctl_recv(sv[1], 10, &got, fds, &n), -ETIMEDOUT);
	close(sv[0]);
	assert_int_equal(slurmctl_recv(sv[1], 1000, &got, fds, &n), -EPIPE);
	close(sv[1]);
	close(p[0]);
	close(p[1]);
	json_decref(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_counts),	 cmocka_unit_test(test_mem),
	    cmocka_unit_test(test_shm),		 cmocka_unit_test(test_image),
	    cmocka_unit_test(test_cpus_on_node), cmocka_unit_test(test_token),
	    cmocka_unit_test(test_control),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
