/* Unit tests of `vmhpc run`'s command-line parser. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cli/run-options.h"

#define ARGV(...)	   ((char *[]){"run", __VA_ARGS__, NULL})
#define ARGC(...)	   ((int)(sizeof((char *[]){"run", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(o, err, ...) run_options_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (o), (err))

static void test_defaults(void **state)
{
	struct run_options o;
	char *err = NULL;

	assert_int_equal(PARSE(&o, &err, "--", "./ring"), 0);
	assert_null(err);
	assert_int_equal(o.vms, 2);
	assert_int_equal(o.vcpus, 1);
	assert_int_equal(o.mem_mb, 256);
	assert_int_equal(o.ranks, 2);
	assert_string_equal(o.image, "tiny-mpi");
	assert_true(o.share);
	assert_null(o.workdir);
	assert_int_equal(o.time_limit_s, 0);
	assert_int_equal(o.shm, RUN_SHM_AUTO);
	assert_int_equal(o.argc, 1);
	assert_string_equal(o.argv[0], "./ring");
}

/* The channel: as asked; unasked, only for 2+ VMs of an image that carries its transport. */
static void test_shm_default(void **state)
{
	json_t *carries = json_pack("{s:s}", "bypass", "ivshmem");
	json_t *plain = json_pack("{s:s}", "mpi", "mpich");
	json_t *other = json_pack("{s:s}", "bypass", "something");
	struct run_options o;
	char *err = NULL;

	(void)state;
	assert_int_equal(PARSE(&o, &err, "--", "./ring"), 0);
	assert_true(run_shm_wanted(o.shm, o.vms, carries));
	assert_false(run_shm_wanted(o.shm, o.vms, plain));
	assert_false(run_shm_wanted(o.shm, o.vms, other));
	assert_false(run_shm_wanted(o.shm, o.vms, NULL));
	assert_int_equal(PARSE(&o, &err, "--vms", "1", "--", "./ring"), 0);
	assert_false(run_shm_wanted(o.shm, o.vms, carries));
	assert_int_equal(PARSE(&o, &err, "--no-shm", "--", "./ring"), 0);
	assert_false(run_shm_wanted(o.shm, o.vms, carries));
	assert_int_equal(PARSE(&o, &err, "--shm", "--", "./ring"), 0);
	assert_true(run_shm_wanted(o.shm, o.vms, plain));
	assert_int_equal(PARSE(&o, &err, "--shm", "--no-shm", "--", "./ring"), 0);
	assert_false(run_shm_wanted(o.shm, o.vms, carries));
	json_decref(carries);
	json_decref(plain);
	json_decref(other);
}

static void test_all_options(void **state)
{
	struct run_options o;
	char *err = NULL;

	assert_int_equal(PARSE(&o, &err, "--vms", "4", "--vcpus", "2", "--mem", "1G", "-n", "3",
			       "--image", "tiny-mpi:2", "--time", "10m", "--workdir", "/tmp",
			       "--oversubscribe", "--label", "--json", "--accel", "tcg", "--",
			       "prog", "--vms", "x"),
			 0);
	assert_int_equal(o.vms, 4);
	assert_int_equal(o.vcpus, 2);
	assert_int_equal(o.mem_mb, 1024);
	assert_int_equal(o.ranks, 3);
	assert_string_equal(o.image, "tiny-mpi:2");
	assert_int_equal(o.time_limit_s, 600);
	assert_string_equal(o.workdir, "/tmp");
	assert_true(o.oversubscribe && o.label && o.json);
	assert_string_equal(o.accel, "tcg");
	/* The program's own options are its own. */
	assert_int_equal(o.argc, 3);
	assert_string_equal(o.argv[1], "--vms");
}

static void test_program_without_dashes(void **state)
{
	struct run_options o;
	char *err = NULL;

	assert_int_equal(PARSE(&o, &err, "--vms", "3", "hostname", "-f"), 0);
	assert_int_equal(o.vms, 3);
	assert_int_equal(o.ranks, 3);
	assert_int_equal(o.argc, 2);
	assert_string_equal(o.argv[1], "-f");
}

/* err is passed by address: the parse in the same call sets it, in any order. */
static void expect_error(int r, char **err, const char *needle)
{
	assert_int_equal(r, -EINVAL);
	assert_non_null(*err);
	if (!strstr(*err, needle))
		fail_msg("'%s' does not contain '%s'", *err, needle);
	free(*err);
	*err = NULL;
}

static void test_errors(void **state)
{
	struct run_options o;
	char *err = NULL;

	expect_error(PARSE(&o, &err, "--vms", "0", "--", "x"), &err, "--vms '0'");
	expect_error(PARSE(&o, &err, "--vms", "-2", "--", "x"), &err, "--vms '-2'");
	expect_error(PARSE(&o, &err, "--vms", "65", "--", "x"), &err, "from 1 to 64");
	expect_error(PARSE(&o, &err, "--vcpus", "two", "--", "x"), &err, "--vcpus 'two'");
	expect_error(PARSE(&o, &err, "--mem", "12M", "--", "x"), &err, "--mem '12M'");
	expect_error(PARSE(&o, &err, "--mem", "1T", "--", "x"), &err, "--mem '1T'");
	expect_error(PARSE(&o, &err, "--time", "soon", "--", "x"), &err, "--time 'soon'");
	expect_error(PARSE(&o, &err, "--time", "0", "--", "x"), &err, "--time '0'");
	expect_error(PARSE(&o, &err, "--accel", "xen", "--", "x"), &err, "--accel 'xen'");
	expect_error(PARSE(&o, &err, "--bogus", "--", "x"), &err, "unknown option '--bogus'");
	expect_error(PARSE(&o, &err, "--workdir", "/tmp", "--no-share", "x"), &err, "exclude");
	expect_error(PARSE(&o, &err, "--vms", "2"), &err, "no program to run");
	expect_error(PARSE(&o, &err, "--"), &err, "no program to run");
}

static void test_durations_and_sizes(void **state)
{
	unsigned v;

	assert_int_equal(run_parse_duration("90", &v), 0);
	assert_int_equal(v, 90);
	assert_int_equal(run_parse_duration("90s", &v), 0);
	assert_int_equal(v, 90);
	assert_int_equal(run_parse_duration("2h", &v), 0);
	assert_int_equal(v, 7200);
	assert_int_equal(run_parse_duration("1d", &v), 0);
	assert_int_equal(v, 86400);
	assert_int_equal(run_parse_duration("10mm", &v), -EINVAL);
	assert_int_equal(run_parse_duration("", &v), -EINVAL);
	assert_int_equal(run_parse_duration("99999999999999999999", &v), -EINVAL);
	assert_int_equal(run_parse_duration("31d", &v), -EINVAL);
	assert_int_equal(run_parse_mem("256M", &v), 0);
	assert_int_equal(v, 256);
	assert_int_equal(run_parse_mem("512", &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(run_parse_mem("2g", &v), 0);
	assert_int_equal(v, 2048);
	assert_int_equal(run_parse_mem("63M", &v), -EINVAL);
	assert_int_equal(run_parse_mem("1.5G", &v), -EINVAL);
	assert_int_equal(run_parse_mem("G", &v), -EINVAL);
}

int main(void)
{
	/* clang-format off */
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_shm_default),
	    cmocka_unit_test(test_all_options),
	    cmocka_unit_test(test_program_without_dashes),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_durations_and_sizes),
	};
	/* clang-format on */

	return cmocka_run_group_tests(tests, NULL, NULL);
}
