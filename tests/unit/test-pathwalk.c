/* Path resolution under a root (src/util/pathwalk.c) over an in-memory tree: links
 * relative and absolute, "." and "..", loops, a file used as a directory, long paths. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/pathwalk.h"

struct node {
	const char *path;
	enum pathwalk_kind kind;
	const char *target;
};

static const struct node tree[] = {
    {"/lib", PATHWALK_LINK, "usr/lib"},
    {"/usr", PATHWALK_DIR, NULL},
    {"/usr/lib", PATHWALK_DIR, NULL},
    {"/usr/lib/libc.so.6", PATHWALK_FILE, NULL},
    {"/usr/lib/libm.so", PATHWALK_LINK, "/lib/libm.so.6"},
    {"/usr/lib/libm.so.6", PATHWALK_FILE, NULL},
    {"/usr/lib/up", PATHWALK_LINK, "../../etc/../usr/./lib/libc.so.6"},
    {"/usr/lib/escape", PATHWALK_LINK, "../../../../../usr/lib/libc.so.6"},
    {"/loop1", PATHWALK_LINK, "loop2"},
    {"/loop2", PATHWALK_LINK, "/loop1"},
    {"/empty", PATHWALK_LINK, ""},
    {"/dev", PATHWALK_DIR, NULL},
    {"/dev/null", PATHWALK_OTHER, NULL},
    {"/etc", PATHWALK_DIR, NULL},
};

static unsigned lookups;

static int lookup(const char *path, enum pathwalk_kind *ret_kind, char target[static PATH_MAX],
		  void *userdata)
{
	(void)userdata;
	lookups++;
	for (size_t i = 0; i < sizeof(tree) / sizeof(tree[0]); i++) {
		if (strcmp(tree[i].path, path) != 0)
			continue;
		*ret_kind = tree[i].kind;
		if (tree[i].target)
			strcpy(target, tree[i].target);
		return 0;
	}
	return -ENOENT;
}

static int resolve(const char *path, char out[static PATH_MAX], enum pathwalk_kind *kind)
{
	return pathwalk_resolve(path, lookup, NULL, out, kind);
}

static void test_links_and_dots(void **state)
{
	char out[PATH_MAX];
	enum pathwalk_kind kind;

	(void)state;
	assert_int_equal(resolve("/lib/libc.so.6", out, &kind), 0);
	assert_string_equal(out, "/usr/lib/libc.so.6");
	assert_int_equal(kind, PATHWALK_FILE);
	/* A link whose absolute target goes through another link. */
	assert_int_equal(resolve("/usr/lib/libm.so", out, &kind), 0);
	assert_string_equal(out, "/usr/lib/libm.so.6");
	assert_int_equal(resolve("/usr/lib/up", out, &kind), 0);
	assert_string_equal(out, "/usr/lib/libc.so.6");
	/* ".." above the root stays at the root, as under chroot. */
	assert_int_equal(resolve("/usr/lib/escape", out, &kind), 0);
	assert_string_equal(out, "/usr/lib/libc.so.6");
	assert_int_equal(resolve("//./usr//lib/./../lib/libc.so.6", out, &kind), 0);
	assert_string_equal(out, "/usr/lib/libc.so.6");
	assert_int_equal(resolve("/", out, &kind), 0);
	assert_string_equal(out, "/");
	assert_int_equal(kind, PATHWALK_DIR);
	assert_int_equal(resolve("/lib", out, &kind), 0);
	assert_string_equal(out, "/usr/lib");
	assert_int_equal(kind, PATHWALK_DIR);
	assert_int_equal(resolve("/dev/null", out, &kind), 0);
	assert_int_equal(kind, PATHWALK_OTHER);
}

static void test_errors(void **state)
{
	char out[PATH_MAX], long_path[PATH_MAX + 8];
	enum pathwalk_kind kind;

	(void)state;
	assert_int_equal(resolve("usr/lib", out, &kind), -EINVAL);
	assert_int_equal(resolve("/nope/x", out, &kind), -ENOENT);
	assert_int_equal(resolve("/usr/lib/libc.so.6/x", out, &kind), -ENOTDIR);
	assert_int_equal(resolve("/empty", out, &kind), -ENOENT);
	lookups = 0;
	assert_int_equal(resolve("/loop1", out, &kind), -ELOOP);
	assert_true(lookups <= PATHWALK_SYMLINKS_MAX + 2); /* stops, not spins */
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	assert_int_equal(resolve(long_path, out, &kind), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_links_and_dots),
	    cmocka_unit_test(test_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
