/* The image file index reader: parsing, lookups by path, and damaged text refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "image/index.h"

static const char sample[] =
    "[{\"path\":\"/usr/bin/busybox\",\"type\":\"file\",\"mode\":493,\"size\":2000,"
    "\"source\":\"busybox-static\"},"
    "{\"path\":\"/bin\",\"type\":\"symlink\",\"mode\":511,\"size\":0,\"target\":\"usr/bin\","
    "\"source\":\"base\"},"
    "{\"path\":\"/usr\",\"type\":\"dir\",\"mode\":493,\"size\":0,\"source\":\"base\"}]";

static void test_find(void **state)
{
	struct image_index *idx = NULL;
	const struct image_index_entry *e;

	assert_int_equal(image_index_parse(sample, &idx), 0);
	assert_int_equal(image_index_count(idx), 3);
	/* In path order, whatever order the builder wrote. */
	assert_string_equal(image_index_at(idx, 0)->path, "/bin");
	assert_string_equal(image_index_at(idx, 2)->path, "/usr/bin/busybox");
	assert_null(image_index_at(idx, 3));
	e = image_index_find(idx, "/usr/bin/busybox");
	assert_non_null(e);
	assert_int_equal(e->mode, 0755);
	assert_int_equal(e->size_bytes, 2000);
	assert_string_equal(e->source, "busybox-static");
	e = image_index_find(idx, "/bin");
	assert_non_null(e);
	assert_string_equal(e->target, "usr/bin");
	assert_null(image_index_find(idx, "/usr/bin"));
	assert_null(image_index_find(idx, "/usr/bin/busybox/"));
	assert_null(image_index_find(idx, ""));
	image_index_free(idx);
	image_index_free(NULL);
}

static void test_damaged(void **state)
{
	static const char *const bad[] = {
	    "",
	    "{}",
	    "[1]",
	    "[{\"type\":\"file\",\"mode\":1,\"size\":1}]",
	    "[{\"path\":\"relative\",\"type\":\"file\",\"mode\":1,\"size\":1}]",
	    "[{\"path\":\"/x\",\"mode\":1,\"size\":1}]",
	    "[{\"path\":\"/x\",\"type\":\"file\",\"mode\":99999,\"size\":1}]",
	    "[{\"path\":\"/x\",\"type\":\"file\",\"mode\":1,\"size\":-5}]",
	    "[{\"path\":\"/x\",\"path\":\"/y\",\"type\":\"file\",\"mode\":1,\"size\":1}]",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct image_index *idx = NULL;

		assert_int_equal(image_index_parse(bad[i], &idx), -EBADMSG);
		assert_null(idx);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_find),
	    cmocka_unit_test(test_damaged),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
