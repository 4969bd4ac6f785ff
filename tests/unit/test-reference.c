#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "registry/reference.h"

static void check(const char *text, const char *registry, const char *repo, const char *tag,
		  const char *digest)
{
	struct reference *ref = NULL;
	char *error = NULL;

	assert_int_equal(reference_parse(text, &ref, &error), 0);
	assert_null(error);
	assert_string_equal(ref->registry, registry);
	assert_string_equal(ref->repository, repo);
	if (tag)
		assert_string_equal(ref->tag, tag);
	else
		assert_null(ref->tag);
	if (digest)
		assert_string_equal(ref->digest, digest);
	else
		assert_null(ref->digest);
	reference_free(ref);
}

static void test_good(void **state)
{
	char *s;
	struct reference *ref = NULL;

	check("registry.example.org/app", "registry.example.org", "app", "latest", NULL);
	check("127.0.0.1:5000/vmhpc/small:1", "127.0.0.1:5000", "vmhpc/small", "1", NULL);
	check("localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000", "a/b/c", "v1.2-rc_3", NULL);
	check("[::1]:5000/x:y", "[::1]:5000", "x", "y", NULL);
	check("r.io/a.b_c__d--e:_t", "r.io", "a.b_c__d--e", "_t", NULL);
	check("r.io/app@sha256:"
	      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	      "r.io", "app", NULL,
	      "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
	assert_int_equal(reference_parse("h:1/a/b:t", &ref, NULL), 0);
	s = reference_to_string(ref);
	assert_string_equal(s, "h:1/a/b:t");
	assert_string_equal(reference_target(ref), "t");
	free(s);
	reference_free(ref);
}

static void bad(const char *text, const char *needle)
{
	struct reference *ref = NULL;
	char *error = NULL;

	assert_int_equal(reference_parse(text, &ref, &error), -EINVAL);
	assert_null(ref);
	assert_non_null(error);
	if (!strstr(error, needle))
		fail_msg("'%s': message '%s' lacks '%s'", text, error, needle);
	free(error);
}

static void test_bad(void **state)
{
	bad("small:1", "names no registry");
	bad("https://r.io/app", "without a scheme");
	bad("r.io:/app", "is not a registry");
	bad("r.io:99999/app", "is not a registry");
	bad("r.io:12a/app", "is not a registry");
	bad("-r.io/app", "is not a registry");
	bad("r.io/", "repository");
	bad("r.io/App", "repository 'App'");
	bad("r.io/a//b", "repository");
	bad("r.io/a/", "repository");
	bad("r.io/-a", "repository");
	bad("r.io/a-", "repository");
	bad("r.io/a___b", "repository");
	bad("r.io/a:", "tag ''");
	bad("r.io/a:.x", "tag '.x'");
	bad("r.io/a:x y", "tag");
	bad("r.io/a@sha256:abc", "not a digest");
	bad("r.io/a@md5:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	    "not a digest");
	{
		char long_tag[200] = "r.io/a:";

		memset(long_tag + 7, 'x', 129);
		long_tag[7 + 129] = '\0';
		bad(long_tag, "at most 128");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_good),
	    cmocka_unit_test(test_bad),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
