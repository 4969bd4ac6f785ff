#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "registry/auth.h"

static void test_challenge_bearer(void **state)
{
	struct auth_challenge c;

	assert_int_equal(
	    auth_challenge_parse("Bearer realm=\"https://auth.docker.io/token\",service=\"registry."
				 "docker.io\",scope=\"repository:samalba/my-app:pull,push\"",
				 &c),
	    0);
	assert_int_equal(c.scheme, AUTH_SCHEME_BEARER);
	assert_string_equal(c.realm, "https://auth.docker.io/token");
	assert_string_equal(c.service, "registry.docker.io");
	assert_string_equal(c.scope, "repository:samalba/my-app:pull,push");
	auth_challenge_done(&c);

	/* Case, spaces, unquoted values, an escape, and parameters we ignore. */
	assert_int_equal(auth_challenge_parse("bearer  Realm = \"http://h/t\\\"x\" , "
					      "error=\"invalid_token\",service=reg",
					      &c),
			 0);
	assert_int_equal(c.scheme, AUTH_SCHEME_BEARER);
	assert_string_equal(c.realm, "http://h/t\"x");
	assert_string_equal(c.service, "reg");
	assert_null(c.scope);
	assert_string_equal(auth_scheme_to_string(c.scheme), "Bearer");
	auth_challenge_done(&c);
}

static void test_challenge_basic(void **state)
{
	struct auth_challenge c;

	assert_int_equal(auth_challenge_parse("Basic realm=\"vmhpc-test\"", &c), 0);
	assert_int_equal(c.scheme, AUTH_SCHEME_BASIC);
	assert_string_equal(c.realm, "vmhpc-test");
	auth_challenge_done(&c);
	assert_int_equal(auth_challenge_parse("Basic", &c), 0);
	assert_null(c.realm);
	auth_challenge_done(&c);
}

static void test_challenge_bad(void **state)
{
	struct auth_challenge c;
	char *huge = malloc(AUTH_HEADER_MAX + 100);

	assert_int_equal(auth_challenge_parse("", &c), -EINVAL);
	assert_int_equal(auth_challenge_parse("Negotiate abc", &c), -EOPNOTSUPP);
	assert_int_equal(auth_challenge_parse("Bearer service=\"x\"", &c), -EINVAL); /* no realm */
	assert_int_equal(auth_challenge_parse("Bearer realm=\"unterminated", &c), -EINVAL);
	assert_int_equal(auth_challenge_parse("Bearer realm", &c), -EINVAL);
	assert_int_equal(auth_challenge_parse("Bearer realm=\"a\" service=\"b\"", &c), -EINVAL);
	assert_int_equal(auth_challenge_parse("Bearer =x", &c), -EINVAL);
	memset(huge, 'a', AUTH_HEADER_MAX + 99);
	memcpy(huge, "Bearer realm=", 13);
	huge[AUTH_HEADER_MAX + 99] = '\0';
	assert_int_equal(auth_challenge_parse(huge, &c), -EINVAL);
	free(huge);
}

static void test_config(void **state)
{
	/* base64("alice:pa:ss") = YWxpY2U6cGE6c3M= */
	const char *text = "{\"auths\": {"
			   "\"other:5000\": {\"auth\": \"eDp5\"},"
			   "\"https://reg.example:5000/v1/\": {\"auth\": \"YWxpY2U6cGE6c3M=\"},"
			   "\"plain.example\": {\"username\": \"bob\", \"password\": \"pw\"},"
			   "\"bad.example\": {\"auth\": \"!!!!\"},"
			   "\"nocolon.example\": {\"auth\": \"YWxpY2U=\"},"
			   "\"helper.example\": {}}}";
	struct auth_credentials c = {0};
	char *error = NULL, *header;

	assert_int_equal(auth_credentials_from_config(text, "reg.example:5000", &c, &error), 0);
	assert_string_equal(c.user, "alice");
	assert_string_equal(c.password, "pa:ss");
	header = auth_basic_header(&c);
	assert_string_equal(header, "Basic YWxpY2U6cGE6c3M=");
	free(header);
	auth_credentials_done(&c);

	assert_int_equal(auth_credentials_from_config(text, "PLAIN.example", &c, &error), 0);
	assert_string_equal(c.user, "bob");
	assert_string_equal(c.password, "pw");
	auth_credentials_done(&c);

	assert_int_equal(auth_credentials_from_config(text, "reg.example", &c, &error), -ENOENT);
	assert_int_equal(auth_credentials_from_config(text, "none.example", &c, &error), -ENOENT);
	assert_null(error);
	assert_int_equal(auth_credentials_from_config(text, "bad.example", &c, &error), -EINVAL);
	assert_non_null(strstr(error, "not base64"));
	free(error), error = NULL;
	assert_int_equal(auth_credentials_from_config(text, "nocolon.example", &c, &error),
			 -EINVAL);
	assert_non_null(strstr(error, "user:password"));
	free(error), error = NULL;
	assert_int_equal(auth_credentials_from_config(text, "helper.example", &c, &error), -EINVAL);
	assert_non_null(strstr(error, "credential helpers"));
	free(error), error = NULL;
	assert_int_equal(auth_credentials_from_config("{\"auths\": [1]}", "x", &c, &error),
			 -EINVAL);
	free(error), error = NULL;
	assert_int_equal(auth_credentials_from_config("not json", "x", &c, &error), -EINVAL);
	free(error), error = NULL;
	assert_int_equal(auth_credentials_from_config("{}", "x", &c, &error), -ENOENT);
}

static void test_find_env(void **state)
{
	struct auth_credentials c = {0};
	char *error = NULL;

	setenv("VMHPC_REGISTRY_AUTH", "u:p:q", 1);
	assert_int_equal(auth_credentials_find("any", &c, &error), 0);
	assert_string_equal(c.user, "u");
	assert_string_equal(c.password, "p:q");
	assert_string_equal(c.source, "VMHPC_REGISTRY_AUTH");
	auth_credentials_done(&c);
	setenv("VMHPC_REGISTRY_AUTH", ":p", 1);
	assert_int_equal(auth_credentials_find("any", &c, &error), -EINVAL);
	free(error), error = NULL;
	unsetenv("VMHPC_REGISTRY_AUTH");
	setenv("DOCKER_CONFIG", "/nonexistent-vmhpc-test", 1);
	assert_int_equal(auth_credentials_find("any", &c, &error), -ENOENT);
	assert_null(error);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_challenge_bearer), cmocka_unit_test(test_challenge_basic),
	    cmocka_unit_test(test_challenge_bad),    cmocka_unit_test(test_config),
	    cmocka_unit_test(test_find_env),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
