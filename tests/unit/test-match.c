/* The image manager's matcher: Debian version order (checked against dpkg itself), the
 * expression parser's errors and columns, evaluation, explanations, ranking, and a fuzz
 * loop of 10^6 mutated expressions (run under ASan by make test). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "image/debversion.h"
#include "image/match.h"

static json_t *metadata(const char *os, const char *kernel, const char *mpich, const char *gfortran)
{
	json_t *pk = json_object(), *libs = json_object(),
	       *m = json_pack("{s:s, s:s, s:s}", "os", os, "arch", "x86_64", "kernel_release",
			      kernel);

	json_object_set_new(pk, "libc6", json_string("2.36-9+deb12u4"));
	if (mpich)
		json_object_set_new(pk, "mpich", json_string(mpich));
	if (gfortran) {
		json_object_set_new(pk, "libgfortran5", json_string(gfortran));
		json_object_set_new(libs, "libgfortran.so.5",
				    json_pack("{s:s}", "version", "5.0.0"));
	}
	json_object_set_new(m, "packages", pk);
	json_object_set_new(m, "libraries", libs);
	json_object_set_new(m, "binaries",
			    json_pack("[s, s]", "/usr/bin/busybox",
				      mpich ? "/usr/bin/mpiexec.hydra" : "/usr/local/bin/ep.x"));
	return m;
}

struct fixture {
	json_t *md[4];
	struct match_candidate c[4];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	f->md[0] = metadata("tiny", "6.1.0-13-cloud-amd64", "4.0.2-3", NULL);
	f->md[1] = metadata("tiny", "6.1.0-57-cloud-amd64", "4.0.2-3+b1", "12.2.0-14");
	f->md[2] = metadata("debian-12", "6.1.0-57-amd64", "4.1~rc1-1", "12.2.0-14");
	f->md[3] = metadata("debian-12", "5.10.0-30-amd64", NULL, NULL);
	for (int i = 0; i < 4; i++)
		f->c[i] = (struct match_candidate){.name = i < 2 ? "tiny-mpi" : "full",
						   .version = (uint32_t)(i % 2 + 1),
						   .created_s = 1000 + i,
						   .size_bytes = (uint64_t)(40 - i * 5) << 20,
						   .owner = i == 3 ? "alice" : "root",
						   .metadata = f->md[i]};
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	for (int i = 0; i < 4; i++)
		json_decref(f->md[i]);
	free(f);
	return 0;
}

static void test_debversion(void **state)
{
	/* Pairs whose order dpkg --compare-versions defines (deb-version(7) examples and
	 * the cases that trip simple comparisons). */
	static const char *const lower_higher[][2] = {
	    {"1.0", "1.1"},
	    {"1.0~rc1", "1.0"},
	    {"1.0~~", "1.0~"},
	    {"1.0", "1.0a"},
	    {"1.0a", "1.0+"},
	    {"1.9", "1.10"},
	    {"4.0.2-3", "4.0.2-3+b1"},
	    {"9:1.0", "10:0.1"},
	    {"0.2", "1:0.1"},
	    {"6.1", "6.1.0-57-cloud-amd64"},
	    {"2.36-9+deb12u4", "2.36-9+deb12u14"},
	    {"1.0-1", "1.0-1.1"},
	    {"007", "8"},
	    {"a", "b"},
	    {"1.0-1~bpo1", "1.0-1"},
	};
	static const char *const equal[][2] = {
	    {"1.0", "1.0"}, {"1.0", "1.0-0"}, {"0:1.0", "1.0"}, {"01", "1"}, {"1.00", "1.0"}};

	(void)state;
	for (size_t i = 0; i < sizeof(lower_higher) / sizeof(lower_higher[0]); i++) {
		assert_true(debversion_compare(lower_higher[i][0], lower_higher[i][1]) < 0);
		assert_true(debversion_compare(lower_higher[i][1], lower_higher[i][0]) > 0);
	}
	for (size_t i = 0; i < sizeof(equal) / sizeof(equal[0]); i++)
		assert_int_equal(debversion_compare(equal[i][0], equal[i][1]), 0);
	assert_true(debversion_compare(NULL, "0") < 0);
	assert_int_equal(debversion_compare(NULL, NULL), 0);
	/* Kernel releases: no epoch or revision ("-13-cloud-amd64" is not a revision). */
	assert_true(debversion_compare_plain("6.1.0-13-cloud-amd64", "6.1.0-57") < 0);
	assert_true(debversion_compare_plain("6.1.0-57-cloud-amd64", "6.1") > 0);
	assert_true(debversion_compare_plain("5.10.0-30-amd64", "6.1") < 0);
}

/* A random version of 1 to 8 characters, starting with a digit as versions do. */
static void random_version(char v[12], unsigned *seed)
{
	static const char alphabet[] = "0123456789.~+-a:";
	size_t len = 1 + (size_t)rand_r(seed) % 8;

	v[0] = (char)('0' + rand_r(seed) % 10);
	for (size_t k = 1; k < len; k++)
		v[k] = alphabet[rand_r(seed) % (sizeof(alphabet) - 1)];
	v[len] = '\0';
}

/* What `dpkg --compare-versions a op b` says: 1 true, 0 false, -1 when dpkg refuses the
 * versions (a second ':', a trailing '-', ...) or could not run. */
static int dpkg_says(const char *a, const char *op, const char *b)
{
	char cmd[128];
	int st;

	snprintf(cmd, sizeof(cmd), "dpkg --compare-versions '%s' %s '%s' 2>/dev/null", a, op, b);
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) > 1)
		return -1;
	return WEXITSTATUS(st) == 0;
}

/* Random versions ordered by us and by dpkg itself: they must agree. */
static void test_debversion_against_dpkg(void **state)
{
	char a[12], b[12];
	unsigned seed = 7;
	int checked = 0;

	(void)state;
	/* dpkg is on every Debian machine this runs on: its absence is a failure. */
	assert_int_equal(system("command -v dpkg >/dev/null"), 0);
	for (int i = 0; i < 300; i++) {
		int lt, eq, gt, ours;

		random_version(a, &seed);
		random_version(b, &seed);
		lt = dpkg_says(a, "lt", b);
		eq = dpkg_says(a, "eq", b);
		gt = dpkg_says(a, "gt", b);
		if (lt < 0 || eq < 0 || gt < 0 || lt + eq + gt != 1)
			continue; /* malformed for dpkg */
		ours = debversion_compare(a, b);
		if ((lt && ours >= 0) || (eq && ours != 0) || (gt && ours <= 0)) {
			fprintf(stderr, "'%s' vs '%s': dpkg says %s, we say %d\n", a, b,
				lt   ? "lt"
				: eq ? "eq"
				     : "gt",
				ours);
			fail();
		}
		checked++;
	}
	assert_true(checked > 100);
}

static void expect_error(const char *text, const char *want)
{
	struct match_expr *e = NULL;
	char *error = NULL;

	assert_int_equal(match_parse(text, &e, &error), -22);
	assert_null(e);
	assert_non_null(error);
	if (!strstr(error, want)) {
		fprintf(stderr, "for '%s': got '%s', want '%s'\n", text, error, want);
		fail();
	}
	free(error);
}

static void test_parse_errors(void **state)
{
	(void)state;
	expect_error("", "column 1: an empty expression");
	expect_error("os = \"tiny\"", "column 4: '=' alone is not an operator: write '=='");
	expect_error("os == \"tiny\" & has(\"x\")", "column 14: '&' alone");
	expect_error("kernel > 5", "column 10: kernel is a version string; write the number in "
				   "quotes: \"5\"");
	expect_error("mpich >= 4.0.2",
		     "column 10: mpich is a version string; write the value in quotes: \"4.0.2\"");
	expect_error("size < \"1G\"", "column 8: size is a number");
	expect_error("(os == \"tiny\"", "column 14: expected ')' to close the '(' at column 1");
	expect_error("os ==", "column 6: expected a value after ==, found the end");
	expect_error("os \"tiny\"", "column 4: expected a comparison");
	expect_error("has(mpich)", "column 5: has() takes a name in quotes");
	expect_error("os == \"tiny", "column 7: a string that does not end");
	expect_error("os == \"a\\n\"", "only \\\" and \\\\ are escapes");
	expect_error("os == \"tiny\" os", "column 14: expected '&&', '||' or the end");
	expect_error("os == \"x\" && ", "column 14: expected a condition, found the end");
	expect_error("os == \"x\" $", "column 11: unexpected '$'");
	expect_error("\"5\" < size", "column 1: a number field compared with a string");
	{
		char deep[300];

		memset(deep, '!', 200);
		strcpy(deep + 200, "has(\"x\")");
		expect_error(deep, "nested more than");
	}
}

static struct match_expr *parse(const char *text)
{
	struct match_expr *e = NULL;
	char *error = NULL;

	if (match_parse(text, &e, &error) < 0) {
		fprintf(stderr, "'%s': %s\n", text, error);
		fail();
	}
	return e;
}

static unsigned matches(struct fixture *f, const char *text)
{
	struct match_expr *e = parse(text);
	unsigned mask = 0;

	for (int i = 0; i < 4; i++)
		if (match_eval(e, &f->c[i]))
			mask |= 1u << i;
	match_expr_free(e);
	return mask;
}

static void test_eval(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(matches(f, "os == \"tiny\""), 0x3);
	assert_int_equal(matches(f, "os != \"tiny\""), 0xc);
	assert_int_equal(matches(f, "kernel >= \"6.1\""), 0x7);
	assert_int_equal(matches(f, "kernel >= \"6.1.0-57\""), 0x6);
	assert_int_equal(matches(f, "mpich >= \"4.0.2\""), 0x7);
	assert_int_equal(matches(f, "mpich > \"4.0.2-3\""), 0x6);
	assert_int_equal(matches(f, "mpich < \"4.1\""), 0x7); /* 4.1~rc1 < 4.1; absent: false */
	assert_int_equal(matches(f, "!(mpich >= \"0\")"), 0x8);
	assert_int_equal(matches(f, "has(\"libgfortran5\")"), 0x6);
	assert_int_equal(matches(f, "has(\"libgfortran.so.5\")"), 0x6);
	assert_int_equal(matches(f, "has(\"mpiexec.hydra\")"), 0x7);	   /* a binary by name */
	assert_int_equal(matches(f, "has(\"/usr/local/bin/ep.x\")"), 0x8); /* by image path */
	assert_int_equal(matches(f, "has(\"bin/ep.x\")"), 0x0);
	assert_int_equal(matches(f, "lib(\"libgfortran.so.5\") >= \"5\""), 0x6);
	assert_int_equal(matches(f, "pkg(\"libc6\") == \"2.36-9+deb12u4\""), 0xf);
	assert_int_equal(matches(f, "\"4.0.2\" <= mpich"), 0x7);
	assert_int_equal(matches(f, "size <= 30M"), 0xc);
	assert_int_equal(matches(f, "version == 2 && name == \"tiny-mpi\""), 0x2);
	assert_int_equal(matches(f, "owner == \"alice\" || os == \"tiny\" && has(\"mpich\")"), 0xb);
	assert_int_equal(matches(f, "(owner == \"alice\" || os == \"tiny\") && has(\"mpich\")"),
			 0x3);
	assert_int_equal(matches(f, "created > 1001"), 0xc);
	assert_int_equal(matches(f, "os == \"debian-12\" && kernel >= \"6.1\" && mpich >= "
				    "\"4.0.2\" && has(\"libgfortran5\")"),
			 0x4);
}

static void test_check_names(void **state)
{
	struct fixture *f = *state;
	struct match_expr *e = parse("mpihc >= \"4\" || os == \"tiny\"");
	char *error = NULL;

	assert_int_equal(match_check(e, f->c, 4, &error), -22);
	assert_non_null(strstr(error, "column 1: unknown name 'mpihc'"));
	free(error);
	match_expr_free(e);
	/* A package that only some candidates have is a name, not a mistake. */
	e = parse("libgfortran5 >= \"12\" && pkg(\"nothing-has-this\") == \"1\"");
	assert_int_equal(match_check(e, f->c, 4, NULL), 0);
	match_expr_free(e);
}

static void test_explain(void **state)
{
	struct fixture *f = *state;
	struct match_expr *e =
	    parse("os == \"debian-12\" && kernel >= \"6.1\" && mpich >= \"4.0.2\" && "
		  "has(\"libgfortran5\")");
	char *why = NULL;

	assert_int_equal(match_explain(e, &f->c[2], &why), 0);
	assert_string_equal(why, "");
	free(why);
	assert_int_equal(match_explain(e, &f->c[0], &why), 2);
	assert_string_equal(why, "os == \"debian-12\" (os is \"tiny\"); has(\"libgfortran5\") "
				 "(neither a package, a library nor a binary of this version)");
	free(why);
	assert_int_equal(match_explain(e, &f->c[3], &why), 3);
	assert_string_equal(why, "kernel >= \"6.1\" (kernel is \"5.10.0-30-amd64\"); mpich >= "
				 "\"4.0.2\" (no package mpich); has(\"libgfortran5\") (neither a "
				 "package, a library nor a binary of this version)");
	free(why);
	match_expr_free(e);
	e = parse("!(os == \"tiny\") && (size < 1K || version > 5)");
	assert_int_equal(match_explain(e, &f->c[0], &why), 3);
	assert_string_equal(why, "!(os == \"tiny\") (true for this version); size < 1K (size is "
				 "41943040); version > 5 (version is 1)");
	free(why);
	match_expr_free(e);
}

static void test_rank(void **state)
{
	struct fixture *f = *state;
	struct match_candidate c[4];
	enum match_rank rank;
	const char *field;

	memcpy(c, f->c, sizeof(c));
	assert_int_equal(match_rank_parse("newest", &rank, &field), 0);
	match_sort(c, 4, rank, field);
	assert_int_equal(c[0].created_s, 1003);
	assert_int_equal(c[3].created_s, 1000);
	assert_int_equal(match_rank_parse("smallest", &rank, &field), 0);
	match_sort(c, 4, rank, field);
	assert_int_equal(c[0].size_bytes, 25u << 20);
	assert_int_equal(match_rank_parse("mpich", &rank, &field), 0);
	assert_int_equal(rank, MATCH_RANK_FIELD);
	match_sort(c, 4, rank, field);
	assert_int_equal(c[0].created_s, 1002); /* 4.1~rc1 */
	assert_int_equal(c[1].created_s, 1001); /* 4.0.2-3+b1 */
	assert_int_equal(c[3].created_s, 1003); /* no mpich: last */
	assert_int_equal(match_rank_parse("kernel", &rank, &field), 0);
	match_sort(c, 4, rank, field);
	assert_int_equal(c[3].created_s, 1003); /* 5.10 */
	assert_int_equal(match_rank_parse("", &rank, &field), -22);
	assert_int_equal(match_rank_parse("a b", &rank, &field), -22);
}

/* Mutated and random expressions: every one either parses or fails with a message; what
 * parses evaluates and explains without a fault. 10^6 inputs (ASan in make test). */
static void test_fuzz(void **state)
{
	static const char *const seeds[] = {
	    "os == \"debian-12\" && kernel >= \"6.1\" && mpich >= \"4.0.2\" && has(\"x\")",
	    "!(a < \"1\" || pkg(\"b\") != \"2\") && size <= 10G",
	    "lib(\"libc.so.6\") > \"1\" || ((version == 3))",
	    "\"4\" <= mpich && created > 0 && owner == \"a\\\"b\\\\\"",
	};
	static const char pieces[] = "()!&|=<>\" \\abcz019.+-~KMGT,";
	struct fixture *f = *state;
	unsigned seed = 1;
	char buf[160];
	long parsed = 0;

	for (long i = 0; i < 1000000; i++) {
		struct match_expr *e = NULL;
		char *error = NULL;
		size_t len;

		if (i % 4 == 3) {
			len = (size_t)rand_r(&seed) % 40;
			for (size_t k = 0; k < len; k++)
				buf[k] = pieces[rand_r(&seed) % (sizeof(pieces) - 1)];
		} else {
			const char *s = seeds[rand_r(&seed) % 4];
			int edits = 1 + rand_r(&seed) % 4;

			len = strlen(s);
			memcpy(buf, s, len);
			for (int k = 0; k < edits && len > 0; k++) {
				size_t at = (size_t)rand_r(&seed) % len;

				switch (rand_r(&seed) % 4) {
				case 0: /* replace */
					buf[at] = pieces[rand_r(&seed) % (sizeof(pieces) - 1)];
					break;
				case 1: /* delete */
					memmove(buf + at, buf + at + 1, len - at - 1);
					len--;
					break;
				case 2: /* insert */
					if (len + 1 < sizeof(buf)) {
						memmove(buf + at + 1, buf + at, len - at);
						buf[at] =
						    pieces[rand_r(&seed) % (sizeof(pieces) - 1)];
						len++;
					}
					break;
				default: /* any byte */
					buf[at] = (char)(1 + rand_r(&seed) % 255);
					break;
				}
			}
		}
		buf[len] = '\0';
		if (match_parse(buf, &e, &error) == 0) {
			char *why = NULL;

			parsed++;
			(void)match_check(e, f->c, 4, &error);
			free(error);
			error = NULL;
			for (int k = 0; k < 4; k++) {
				(void)match_eval(e, &f->c[k]);
				if (match_explain(e, &f->c[k], &why) >= 0)
					free(why);
			}
			match_expr_free(e);
		} else {
			assert_non_null(error);
			assert_int_equal(strncmp(error, "column ", 7), 0);
		}
		free(error);
	}
	assert_true(parsed > 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_debversion),
	    cmocka_unit_test(test_debversion_against_dpkg),
	    cmocka_unit_test(test_parse_errors),
	    cmocka_unit_test_setup_teardown(test_eval, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check_names, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_explain, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rank, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_fuzz, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
