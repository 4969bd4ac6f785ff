/* The kernel build's check of the final .config (src/image/kbuild.c). The build itself is
 * tested in tests/integration/kernel-build.sh. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "image/kbuild.h"
#include "util/fsutil.h"

/* The repo's fragment sets every option the check asks for. */
__attribute__((noinline)) static char *fragment_text(void)
{
	char *text = NULL;

	assert_int_equal(fs_read_file(VMHPC_KERNEL_CONFIG, 1 << 20, &text, NULL), 0);
	return text;
}

static void test_fragment_has_all(void **state)
{
	char *text = fragment_text();
	const char *missing = NULL;

	(void)state;
	assert_int_equal(kbuild_check_config(text, &missing), 0);
	assert_null(missing);
	free(text);
}

static void test_missing_named(void **state)
{
	char *text = fragment_text(), *p;
	const char *missing = NULL;

	(void)state;
	/* "# CONFIG_VIRTIO_PMEM is not set", as kconfig writes a dropped option. */
	p = strstr(text, "\nCONFIG_VIRTIO_PMEM=y\n");
	if (!p)
		fail_msg("kernel/vmhpc.config has no CONFIG_VIRTIO_PMEM=y line");
	else
		p[1] = '#';
	assert_int_equal(kbuild_check_config(text, &missing), -ENOENT);
	assert_string_equal(missing, "CONFIG_VIRTIO_PMEM");
	free(text);
	/* A prefix of another option's name is not that option. */
	assert_int_equal(kbuild_check_config("CONFIG_64BIT=y\nCONFIG_PVH_X=y\n", &missing),
			 -ENOENT);
	assert_string_equal(missing, "CONFIG_PVH");
	assert_int_equal(kbuild_check_config("", &missing), -ENOENT);
	assert_string_equal(missing, "CONFIG_64BIT");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fragment_has_all),
	    cmocka_unit_test(test_missing_named),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
