/* The check of what a job-folder program needs from an image (src/image/needs.c): real
 * programs and libraries compiled with cc at test time (RPATH, RUNPATH, sonames, static),
 * scripts, against synthetic image indexes and dpkg file lists; damaged ELF files and a
 * fuzz loop must give clear errors, never a crash. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "image/index.h"
#include "image/needs.h"
#include "util/fsutil.h"

/* The test's temp folder (symlinks resolved), its job folder, build folder and dpkg lists;
 * short, so that paths built from them always fit. */
static char top[256], job[300], bld[300], dpkg[300];
static bool have_cc, have_static;

#define ENTRY(p, t) "{\"path\":\"" p "\",\"type\":\"" t "\",\"mode\":493,\"size\":0},"
#define LINK(p, target)                                                                            \
	"{\"path\":\"" p "\",\"type\":\"l\",\"mode\":511,\"size\":0,\"target\":\"" target "\"},"
#define BASE_ENTRIES                                                                               \
	ENTRY("/usr", "d")                                                                         \
	ENTRY("/usr/bin", "d")                                                                     \
	ENTRY("/usr/lib", "d")                                                                     \
	ENTRY("/usr/lib64", "d")                                                                   \
	ENTRY("/usr/lib/x86_64-linux-gnu", "d")                                                    \
	ENTRY("/tmp", "d")                                                                         \
	LINK("/bin", "usr/bin")                                                                    \
	LINK("/lib", "usr/lib")                                                                    \
	LINK("/lib64", "usr/lib64")                                                                \
	LINK("/usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")    \
	ENTRY("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "f")                               \
	ENTRY("/usr/lib/x86_64-linux-gnu/libc.so.6", "f")                                          \
	ENTRY("/usr/bin/busybox", "f")                                                             \
	LINK("/usr/bin/sh", "busybox")                                                             \
	LINK("/usr/bin/env", "/bin/busybox")

/* The base image plus extra entries (each ending in ','). */
static struct image_index *make_index(const char *extra)
{
	struct image_index *idx = NULL;
	char *text = NULL;

	assert_true(asprintf(&text,
			     "[%s%s{\"path\":\"/etc\",\"type\":\"d\",\"mode\":493,\"size\":0}]",
			     BASE_ENTRIES, extra) > 0);
	assert_int_equal(image_index_parse(text, &idx), 0);
	free(text);
	return idx;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
	unlink(path);
	assert_int_equal(fs_write_atomic(path, text, strlen(text), mode), 0);
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char *cmd = NULL;
	va_list ap;
	int r;

	va_start(ap, fmt);
	assert_true(vasprintf(&cmd, fmt, ap) > 0);
	va_end(ap);
	r = system(cmd);
	free(cmd);
	return r;
}

/* Checks job/name; returns needs_check's result, *ret filled. */
static int check(const char *name, const struct image_index *idx, struct needs_result *ret,
		 char **ret_error)
{
	char program[PATH_MAX], display[PATH_MAX];
	struct needs_options o = {.program = program,
				  .display_name = display,
				  .job_dir = job,
				  .index = idx,
				  .dpkg_info_dir = dpkg};

	snprintf(program, sizeof(program), "%s/%s", job, name);
	snprintf(display, sizeof(display), "./%s", name);
	*ret = (struct needs_result){0};
	*ret_error = NULL;
	return needs_check(&o, ret, ret_error);
}

/* Asserts that job/name loads in idx with nothing missing. */
static void assert_complete(const char *name, const struct image_index *idx)
{
	struct needs_result res;
	char *error;

	assert_int_equal(check(name, idx, &res, &error), 0);
	for (size_t i = 0; i < res.n_missing; i++)
		print_error("%s: unexpected missing %s (by %s)\n", name, res.missing[i].name,
			    res.missing[i].needed_by);
	assert_int_equal(res.n_missing, 0);
	assert_null(error);
	needs_result_done(&res);
}

static int setup(void **state)
{
	const char *cc = getenv("CC") ? getenv("CC") : "cc";
	char tmpl[] = "/tmp/test-needs-XXXXXX", real[PATH_MAX];

	if (!mkdtemp(tmpl) || !realpath(tmpl, real) || strlen(real) >= sizeof(top))
		return -1;
	strcpy(top, real);
	snprintf(job, sizeof(job), "%s/job", top);
	snprintf(bld, sizeof(bld), "%s/build", top);
	snprintf(dpkg, sizeof(dpkg), "%s/dpkg", top);
	if (sh("mkdir -p %s/lib %s %s", job, bld, dpkg) != 0)
		return -1;
	{
		char path[PATH_MAX];

#define SRC(name, text)                                                                            \
	snprintf(path, sizeof(path), "%s/" name, bld);                                             \
	write_text(path, text, 0644)
		SRC("main.c", "int main(void) { return 0; }\n");
		SRC("usea.c", "int a(void);\nint main(void) { return a(); }\n");
		SRC("a.c", "int b(void);\nint a(void) { return b(); }\n");
		SRC("b.c", "int b(void) { return 0; }\n");
		SRC("usec.c", "int c(void);\nint main(void) { return c(); }\n");
		SRC("c.c", "int c(void) { return 0; }\n");
#undef SRC
		snprintf(path, sizeof(path), "%s/libc6:amd64.list", dpkg);
		write_text(path,
			   "/.\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libm.so.6\n"
			   "/usr/bin/ldd\n",
			   0644);
		snprintf(path, sizeof(path), "%s/python3-minimal:amd64.list", dpkg);
		write_text(path, "/usr/bin/python3\n/usr/share/doc/python3-minimal\n", 0644);
		snprintf(path, sizeof(path), "%s/libneedsc1.list", dpkg);
		write_text(path, "/usr/lib/x86_64-linux-gnu/libneedsc.so.1\n", 0644);
	}
	have_cc = sh("%s -o %s/plain %s/main.c 2>/dev/null", cc, job, bld) == 0;
	if (!have_cc)
		return 0;
	if (sh("set -e; cd %1$s;"
	       "%2$s -o %3$s/usem main.c -Wl,--no-as-needed -lm;"
	       "%2$s -shared -fPIC -o libneedsb.so b.c -Wl,-soname,libneedsb.so;"
	       "%2$s -shared -fPIC -o %3$s/lib/libneedsa.so a.c -Wl,-soname,libneedsa.so "
	       "  -Wl,--no-as-needed -L. -lneedsb;"
	       "%2$s -o %3$s/usea usea.c -L%3$s/lib -lneedsa -Wl,-rpath-link,%1$s "
	       "  -Wl,-rpath,'$ORIGIN/lib' -Wl,--disable-new-dtags;"
	       "%2$s -o %3$s/usea-runpath usea.c -L%3$s/lib -lneedsa -Wl,-rpath-link,%1$s "
	       "  -Wl,-rpath,'$ORIGIN/lib' -Wl,--enable-new-dtags;"
	       "%2$s -shared -fPIC -o libneedsc.so.1.2.3 c.c -Wl,-soname,libneedsc.so.1;"
	       "%2$s -o %3$s/usec usec.c -L. -l:libneedsc.so.1.2.3",
	       bld, cc, job) != 0)
		return -1;
	have_static = sh("%s -static -o %s/static %s/main.c 2>/dev/null", cc, job, bld) == 0;
	return 0;
}

static int teardown(void **state)
{
	if (top[0])
		sh("rm -rf %s", top);
	return 0;
}

static void need_cc(void)
{
	if (!have_cc)
		skip();
}

/* A plain program: libc and the interpreter, both in the image (the interpreter through
 * /lib64 -> usr/lib64 and a relative link). Without a job folder the same. */
static void test_all_present(void **state)
{
	struct image_index *idx;

	need_cc();
	idx = make_index("");
	assert_complete("plain", idx);
	image_index_free(idx);
}

static void test_one_missing(void **state)
{
	struct image_index *idx;
	struct needs_result res;
	char *error, *text;

	need_cc();
	idx = make_index("");
	assert_int_equal(check("usem", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "libm.so.6");
	assert_string_equal(res.missing[0].needed_by, "./usem");
	assert_false(res.missing[0].is_interpreter);
	assert_string_equal(res.missing[0].package, "libc6");
	assert_string_equal(res.missing[0].package_path, "/lib/x86_64-linux-gnu/libm.so.6");
	text = needs_format(&res, "./usem", "tiny-mpi", 2);
	assert_non_null(text);
	assert_non_null(strstr(text, "./usem needs libm.so.6, which image tiny-mpi:2 lacks; add "
				     "package libc6 to the image's packages"));
	assert_non_null(strstr(text, "binaries = ./usem"));
	assert_non_null(strstr(text, "docs/image-spec.md \"My program needs library X\""));
	free(text);
	needs_result_done(&res);
	image_index_free(idx);

	/* Present in the image: nothing missing. */
	idx = make_index(ENTRY("/usr/lib/x86_64-linux-gnu/libm.so.6", "f"));
	assert_complete("usem", idx);
	image_index_free(idx);

	/* Everything missing, each reported, the interpreter first; no package known. */
	{
		struct image_index *empty = NULL;
		char *saved = strdup(dpkg);

		assert_int_equal(image_index_parse("[]", &empty), 0);
		strcpy(dpkg, "/nonexistent");
		assert_int_equal(check("usem", empty, &res, &error), 0);
		strcpy(dpkg, saved);
		free(saved);
		assert_int_equal(res.n_missing, 3);
		assert_string_equal(res.missing[0].name, "/lib64/ld-linux-x86-64.so.2");
		assert_true(res.missing[0].is_interpreter);
		assert_string_equal(res.missing[1].name, "libm.so.6");
		assert_string_equal(res.missing[2].name, "libc.so.6");
		assert_null(res.missing[2].package);
		text = needs_format(&res, "./usem", "empty", 1);
		assert_non_null(strstr(text,
				       "./usem needs libc.so.6, which image empty:1 lacks; it "
				       "is not from a Debian package here"));
		free(text);
		needs_result_done(&res);
		image_index_free(empty);
	}
}

/* The program's RPATH ($ORIGIN/lib) finds libneedsa.so in the job folder, which is read:
 * its own libneedsb.so is missing until it is put beside it. The program's DT_RPATH
 * serves libneedsa's needs (ld.so's loader chain); a DT_RUNPATH would not. */
static void test_rpath_chain(void **state)
{
	struct image_index *idx;
	struct needs_result res;
	char *error, from[PATH_MAX], to[PATH_MAX];

	need_cc();
	idx = make_index("");
	assert_int_equal(check("usea", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "libneedsb.so");
	assert_string_equal(res.missing[0].needed_by, "./lib/libneedsa.so (loaded for ./usea)");
	assert_null(res.missing[0].package);
	needs_result_done(&res);

	snprintf(from, sizeof(from), "%s/libneedsb.so", bld);
	snprintf(to, sizeof(to), "%s/lib/libneedsb.so", job);
	assert_int_equal(fs_copy_file(from, to, 0755), 0);
	assert_complete("usea", idx);

	assert_int_equal(check("usea-runpath", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "libneedsb.so");
	needs_result_done(&res);

	/* Found in the image instead: the system directories come after the RPATH. */
	unlink(to);
	image_index_free(idx);
	idx = make_index(ENTRY("/usr/lib/libneedsb.so", "f"));
	assert_complete("usea", idx);
	assert_complete("usea-runpath", idx);

	/* A damaged library in the job folder is an error naming it. */
	{
		char lib[PATH_MAX], saved[PATH_MAX];

		snprintf(lib, sizeof(lib), "%s/lib/libneedsa.so", job);
		snprintf(saved, sizeof(saved), "%s/libneedsa.so.saved", bld);
		assert_int_equal(rename(lib, saved), 0);
		assert_int_equal(sh("head -c 3000 %s > %s", saved, lib), 0);
		assert_int_equal(check("usea", idx, &res, &error), -EBADMSG);
		assert_non_null(error);
		assert_non_null(strstr(error, "library libneedsa.so needed by ./usea is a damaged "
					      "ELF file"));
		free(error);
		assert_int_equal(rename(saved, lib), 0);
	}
	image_index_free(idx);
}

/* DT_NEEDED libneedsc.so.1, present in the image only as a chain of links (relative,
 * absolute, through /lib -> usr/lib); a broken chain is missing, with the package hint. */
static void test_symlink_chain(void **state)
{
	struct image_index *idx;
	struct needs_result res;
	char *error;

#define CHAIN                                                                                      \
	LINK("/usr/lib/x86_64-linux-gnu/libneedsc.so.1", "libneedsc.so.1.2")                       \
	LINK("/usr/lib/x86_64-linux-gnu/libneedsc.so.1.2", "/lib/x86_64-linux-gnu/real/../real/x") \
	ENTRY("/usr/lib/x86_64-linux-gnu/real", "d")
	need_cc();
	idx = make_index(CHAIN ENTRY("/usr/lib/x86_64-linux-gnu/real/x", "f"));
	assert_complete("usec", idx);
	image_index_free(idx);

	idx = make_index(CHAIN);
	assert_int_equal(check("usec", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "libneedsc.so.1");
	assert_string_equal(res.missing[0].package, "libneedsc1");
	needs_result_done(&res);
	image_index_free(idx);

	/* A loop is missing too, not a hang. */
	idx = make_index(LINK("/usr/lib/x86_64-linux-gnu/libneedsc.so.1", "libneedsc.so.1"));
	assert_int_equal(check("usec", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	needs_result_done(&res);
	image_index_free(idx);
#undef CHAIN
}

static void test_static(void **state)
{
	struct image_index *idx = NULL;

	need_cc();
	if (!have_static)
		skip(); /* no libc.a */
	assert_int_equal(image_index_parse("[]", &idx), 0);
	assert_complete("static", idx);
	image_index_free(idx);
}

static void test_scripts(void **state)
{
	struct image_index *idx = make_index("");
	struct needs_result res;
	char path[PATH_MAX], *error, *text;

	snprintf(path, sizeof(path), "%s/ok.sh", job);
	write_text(path, "#!/bin/sh\necho hi\n", 0755);
	assert_complete("ok.sh", idx);
	snprintf(path, sizeof(path), "%s/data", job);
	write_text(path, "just some text\n", 0755);
	assert_complete("data", idx);
	snprintf(path, sizeof(path), "%s/empty", job);
	write_text(path, "", 0755);
	assert_complete("empty", idx);

	snprintf(path, sizeof(path), "%s/py", job);
	write_text(path, "#! /usr/bin/python3 -u\nprint(1)\n", 0755);
	assert_int_equal(check("py", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "/usr/bin/python3");
	assert_true(res.missing[0].is_interpreter);
	assert_string_equal(res.missing[0].package, "python3-minimal");
	text = needs_format(&res, "./py", "tiny-mpi", 1);
	assert_non_null(strstr(text, "./py needs interpreter /usr/bin/python3, which image "
				     "tiny-mpi:1 lacks; add package python3-minimal"));
	assert_non_null(strstr(text, "the interpreter's path to [root] binaries"));
	free(text);
	needs_result_done(&res);

	snprintf(path, sizeof(path), "%s/envpy", job);
	write_text(path, "#!/usr/bin/env python3\n", 0755);
	assert_int_equal(check("envpy", idx, &res, &error), 0);
	assert_int_equal(res.n_missing, 1);
	assert_string_equal(res.missing[0].name, "python3");
	assert_string_equal(res.missing[0].package, "python3-minimal");
	needs_result_done(&res);
	image_index_free(idx);
	idx = make_index(LINK("/usr/bin/python3", "python3.11") ENTRY("/usr/bin/python3.11", "f"));
	assert_complete("envpy", idx);
	assert_complete("py", idx);

	/* An interpreter in the job folder, relative to the working directory (the job folder). */
	snprintf(path, sizeof(path), "%s/rel", job);
	write_text(path, "#!ok.sh\n", 0755);
	assert_complete("rel", idx);

	/* A link out of the job folder leads into the image in the VMs, not to the host. */
	snprintf(path, sizeof(path), "%s/inimage", job);
	assert_int_equal(symlink("/bin/busybox", path), 0);
	assert_complete("inimage", idx);
	snprintf(path, sizeof(path), "%s/outlink", job);
	assert_int_equal(symlink("/usr/bin/cc", path), 0);
	assert_int_equal(check("outlink", idx, &res, &error), -ENOENT);
	assert_non_null(strstr(error, "./outlink: No such file or directory as the VMs see it"));
	free(error);

	snprintf(path, sizeof(path), "%s/noint", job);
	write_text(path, "#!   \n", 0755);
	assert_int_equal(check("noint", idx, &res, &error), -ENOEXEC);
	assert_non_null(strstr(error, "names no interpreter"));
	free(error);
	image_index_free(idx);
}

/* Truncated copies of a real program: a clear error naming it, never a crash. */
static void test_truncated(void **state)
{
	static const size_t lengths[] = {4, 20, 63, 64, 200, 1000, 4000};
	struct image_index *idx;
	struct needs_result res;
	char src[PATH_MAX], path[PATH_MAX], *error;

	need_cc();
	idx = make_index("");
	snprintf(src, sizeof(src), "%s/plain", job);
	snprintf(path, sizeof(path), "%s/cut", job);
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		assert_int_equal(
		    sh("head -c %zu %s > %s && chmod +x %s", lengths[i], src, path, path), 0);
		assert_int_equal(check("cut", idx, &res, &error), -EBADMSG);
		assert_non_null(error);
		assert_string_equal(error, "./cut is a damaged ELF file (truncated or inconsistent "
					   "headers); build it again");
		free(error);
	}
	image_index_free(idx);
}

/* Random damage to a program with an RPATH library: no crash, no leak (ASan), and either a
 * result or an error message. */
static void test_fuzz(void **state)
{
	struct image_index *idx;
	char src[PATH_MAX], path[PATH_MAX];
	char *data = NULL;
	size_t len = 0;
	unsigned seed = 13;
	int iterations =
	    getenv("NEEDS_FUZZ_ITERATIONS") ? atoi(getenv("NEEDS_FUZZ_ITERATIONS")) : 2000;

	need_cc();
	idx = make_index("");
	snprintf(src, sizeof(src), "%s/usea", job);
	snprintf(path, sizeof(path), "%s/fuzz", job);
	assert_int_equal(fs_read_file(src, 1u << 20, &data, &len), 0);
	for (int it = 0; it < iterations; it++) {
		char *copy = malloc(len), *error = NULL;
		struct needs_result res;
		size_t n = len;
		int r, flips = 1 + rand_r(&seed) % 8;

		assert_non_null(copy);
		memcpy(copy, data, len);
		for (int f = 0; f < flips; f++) {
			/* Mostly the headers and the dynamic section's neighbourhood. */
			size_t at = rand_r(&seed) % 2 ? (size_t)rand_r(&seed) % 1024
						      : (size_t)rand_r(&seed) % len;

			copy[at] = (char)rand_r(&seed);
		}
		if (rand_r(&seed) % 8 == 0)
			n = (size_t)rand_r(&seed) % len;
		unlink(path);
		assert_int_equal(fs_write_atomic(path, copy, n, 0755), 0);
		free(copy);
		r = check("fuzz", idx, &res, &error);
		if (r < 0)
			assert_non_null(error);
		else
			assert_null(error);
		free(error);
		needs_result_done(&res);
	}
	free(data);
	image_index_free(idx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_all_present), cmocka_unit_test(test_one_missing),
	    cmocka_unit_test(test_rpath_chain), cmocka_unit_test(test_symlink_chain),
	    cmocka_unit_test(test_static),	cmocka_unit_test(test_scripts),
	    cmocka_unit_test(test_truncated),	cmocka_unit_test(test_fuzz),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
