/* Unit tests of `vmhpc run`'s MPI launcher module: which MPI an image has, and the command
 * lines for MPICH and Open MPI, always under the job watch. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mpi/launcher.h"

static json_t *metadata(const char *mpi, const char *const *packages)
{
	json_t *m = json_object(), *p = json_object();

	for (; packages && *packages; packages++)
		json_object_set_new(p, *packages, json_string("1.0"));
	json_object_set_new(m, "packages", p);
	if (mpi)
		json_object_set_new(m, "mpi", json_string(mpi));
	return m;
}

static int pick(const char *mpi, const char *const *packages, enum launcher_mpi *ret,
		char **ret_error)
{
	json_t *m = metadata(mpi, packages);
	int r = launcher_mpi_of_image(m, "img:1", ret, ret_error);

	json_decref(m);
	return r;
}

static void test_mpi_of_image(void **state)
{
	static const char *const mpich[] = {"busybox-static", "mpich", "libmpich12", NULL};
	static const char *const ompi[] = {"busybox-static", "openmpi-bin", "libopenmpi3", NULL};
	static const char *const both[] = {"mpich", "openmpi-bin", NULL};
	static const char *const none[] = {"busybox-static", "libopenmpi3", NULL};
	enum launcher_mpi mpi = _LAUNCHER_MPI_MAX;
	char *err = NULL;

	assert_int_equal(pick(NULL, mpich, &mpi, &err), 0);
	assert_int_equal(mpi, LAUNCHER_MPICH);
	assert_int_equal(pick(NULL, ompi, &mpi, &err), 0);
	assert_int_equal(mpi, LAUNCHER_OPENMPI);
	/* The spec's explicit choice wins over the packages. */
	assert_int_equal(pick("openmpi", both, &mpi, &err), 0);
	assert_int_equal(mpi, LAUNCHER_OPENMPI);
	assert_int_equal(pick("mpich", none, &mpi, &err), 0);
	assert_int_equal(mpi, LAUNCHER_MPICH);
	assert_null(err);

	mpi = _LAUNCHER_MPI_MAX;
	assert_int_equal(pick(NULL, both, &mpi, &err), -EINVAL);
	assert_int_equal(mpi, _LAUNCHER_MPI_MAX); /* untouched on failure */
	assert_non_null(strstr(err, "img:1 has both MPICH"));
	assert_non_null(strstr(err, "mpi = mpich or mpi = openmpi"));
	free(err);
	err = NULL;
	assert_int_equal(pick(NULL, none, &mpi, &err), -ENOENT);
	assert_non_null(strstr(err, "img:1 has no MPI launcher"));
	free(err);
	err = NULL;
	assert_int_equal(pick(NULL, NULL, &mpi, &err), -ENOENT);
	free(err);
	err = NULL;
	assert_int_equal(pick("mvapich", mpich, &mpi, &err), -EINVAL);
	assert_non_null(strstr(err, "cannot launch"));
	free(err);
	assert_string_equal(launcher_mpi_to_string(LAUNCHER_OPENMPI), "openmpi");
	assert_null(launcher_mpi_to_string(_LAUNCHER_MPI_MAX));
}

/* The index of word in argv after from, or -1. */
static int find(char **argv, int from, const char *word)
{
	for (int i = from; argv[i]; i++)
		if (strcmp(argv[i], word) == 0)
			return i;
	return -1;
}

static bool has_env(char **envp, const char *kv)
{
	for (; *envp; envp++)
		if (strcmp(*envp, kv) == 0)
			return true;
	return false;
}

static const char *const hosts[] = {"vm0", "vm1", "vm2"};
static char *const prog[] = {"./ring", "--fail-rank", "1"};

static void test_mpich(void **state)
{
	struct launcher_job job = {.mpi = LAUNCHER_MPICH,
				   .hosts = hosts,
				   .n_hosts = 3,
				   .slots = 2,
				   .ranks = 5,
				   .argc = 3,
				   .argv = prog};
	struct launcher_command *c = NULL;
	int i, n;

	assert_int_equal(launcher_command_new(&job, &c), 0);
	/* The watch first, with the VM names, then hydra. */
	assert_string_equal(c->argv[0], "/usr/bin/vmhpc-exec");
	assert_string_equal(c->argv[1], "--job-watch");
	i = find(c->argv, 0, "--");
	assert_true(i > 0);
	assert_string_equal(c->argv[i - 1], "vm0,vm1,vm2");
	assert_string_equal(c->argv[i + 1], "/usr/bin/mpiexec.hydra");
	assert_string_equal(c->argv[find(c->argv, i, "-hosts") + 1], "vm0:2,vm1:2,vm2:2");
	assert_string_equal(c->argv[find(c->argv, i, "-n") + 1], "5");
	assert_string_equal(c->argv[find(c->argv, i, "-launcher-exec") + 1], "/usr/bin/vmhpc-exec");
	assert_int_equal(find(c->argv, 0, "--label-lines"), -1);
	assert_int_equal(find(c->argv, 0, "-prepend-pattern"), -1);
	/* PROGRAM and its arguments last, untouched. */
	for (n = 0; c->argv[n]; n++)
		;
	assert_string_equal(c->argv[n - 3], "./ring");
	assert_string_equal(c->argv[n - 1], "1");
	assert_true(has_env(c->envp, "UCX_TLS=tcp,sysv,posix,self"));
	assert_true(has_env(c->envp, "PATH=/usr/local/bin:/usr/bin:/usr/sbin"));
	assert_false(has_env(c->envp, "OMPI_ALLOW_RUN_AS_ROOT=1"));
	launcher_command_free(c);
	assert_null(launcher_command_free(NULL));
}

static void test_openmpi(void **state)
{
	struct launcher_job job = {.mpi = LAUNCHER_OPENMPI,
				   .hosts = hosts,
				   .n_hosts = 2,
				   .slots = 1,
				   .ranks = 2,
				   .label = true,
				   .argc = 1,
				   .argv = prog};
	struct launcher_command *c = NULL;
	int i, l, n;

	assert_int_equal(launcher_command_new(&job, &c), 0);
	i = find(c->argv, 0, "--");
	assert_string_equal(c->argv[i - 1], "vm0,vm1");
	assert_string_equal(c->argv[i + 1], "/usr/bin/orterun");
	assert_string_equal(c->argv[find(c->argv, i, "--host") + 1], "vm0:1,vm1:1");
	assert_string_equal(c->argv[find(c->argv, i, "plm_rsh_agent") + 1], "/usr/bin/vmhpc-exec");
	assert_string_equal(c->argv[find(c->argv, i, "btl_tcp_if_include") + 1], "eth0");
	assert_string_equal(c->argv[find(c->argv, i, "oob_tcp_if_include") + 1], "eth0");
	assert_string_equal(c->argv[find(c->argv, i, "pml") + 1], "ob1");
	/* --label: the rank's program runs under the line labeler. */
	l = find(c->argv, i, "--label-lines");
	assert_true(l > i);
	assert_string_equal(c->argv[l - 1], "/usr/bin/vmhpc-exec");
	assert_string_equal(c->argv[l + 1], "--");
	assert_string_equal(c->argv[l + 2], "./ring");
	for (n = 0; c->argv[n]; n++)
		;
	assert_int_equal(n, l + 3);
	assert_true(has_env(c->envp, "OMPI_ALLOW_RUN_AS_ROOT=1"));
	assert_true(has_env(c->envp, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"));
	assert_false(has_env(c->envp, "UCX_TLS=tcp,sysv,posix,self"));
	launcher_command_free(c);
}

static void test_bad_job(void **state)
{
	struct launcher_job job = {.mpi = _LAUNCHER_MPI_MAX,
				   .hosts = hosts,
				   .n_hosts = 1,
				   .slots = 1,
				   .ranks = 1,
				   .argc = 1,
				   .argv = prog};
	struct launcher_command *c = (struct launcher_command *)(uintptr_t)0x1;

	assert_int_equal(launcher_command_new(&job, &c), -EINVAL);
	job.mpi = LAUNCHER_MPICH;
	job.argc = 0;
	assert_int_equal(launcher_command_new(&job, &c), -EINVAL);
	assert_ptr_equal(c, (struct launcher_command *)(uintptr_t)0x1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mpi_of_image),
	    cmocka_unit_test(test_mpich),
	    cmocka_unit_test(test_openmpi),
	    cmocka_unit_test(test_bad_job),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
