/* Unit tests for the image spec parser (src/image/spec.c): a full spec, every error with
 * its line number, file-based parsing, and a cheap mutation fuzz. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "image/spec.h"
#include "util/cleanup.h"
#include "util/fsutil.h"

#define ORIGIN "test.ini"
#define BASE   "/base/dir"

static const char full_spec[] = "# vmhpc test spec\n"
				"; the other comment style\n"
				"\n"
				"[image]\n"
				"name = tiny-mpi.v1_2\n"
				"os=debian-12\n"
				"description =   A tiny MPI image # this is part of the value  \n"
				"boot_args = quiet loglevel=3\n"
				"mpi = mpich\n"
				"\n"
				"[kernel]\n"
				"package = linux-image-cloud-amd64\n"
				"modules = virtio_pci virtio_pmem\n"
				"\tnd_pmem   virtio_blk\n"
				"  # a commented-out item keeps the list open\n"
				"; so does this\n"
				"\n"
				"    virtio_net\n"
				"modules = virtiofs overlay\n"
				"\n"
				"[root]\n"
				"packages =\n"
				"    busybox-static mpich\n"
				"    libmpich12 libucx0\n"
				"binaries = /usr/bin/busybox /usr/bin/mpiexec.hydra\n"
				"plugin_dirs = /usr/lib/x86_64-linux-gnu/ucx\n"
				"files = etc/motd:/etc/motd /abs/hosts:/etc/hosts\n"
				"\tconf/app.conf:/etc/app:v1.conf\n"
				"tree = /srv/roots/extra\n"
				"[root]\n"
				"binaries = /usr/bin/hydra_pmi_proxy\n";

static void assert_strv(char **v, size_t n, const char *const *expected, size_t n_expected)
{
	assert_int_equal(n, n_expected);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(v[i], expected[i]);
}

static void check_full_spec(const struct image_spec *s)
{
	static const char *const modules[] = {"virtio_pci", "virtio_pmem", "nd_pmem", "virtio_blk",
					      "virtio_net", "virtiofs",	   "overlay"};
	static const char *const packages[] = {"busybox-static", "mpich", "libmpich12", "libucx0"};
	static const char *const binaries[] = {"/usr/bin/busybox", "/usr/bin/mpiexec.hydra",
					       "/usr/bin/hydra_pmi_proxy"};
	static const char *const plugin_dirs[] = {"/usr/lib/x86_64-linux-gnu/ucx"};

	assert_string_equal(s->origin, ORIGIN);
	assert_string_equal(s->name, "tiny-mpi.v1_2");
	assert_string_equal(s->os, "debian-12");
	assert_string_equal(s->description, "A tiny MPI image # this is part of the value");
	assert_string_equal(s->boot_args, "quiet loglevel=3");
	assert_string_equal(s->mpi, "mpich");
	assert_string_equal(s->kernel_package, "linux-image-cloud-amd64");
	assert_strv(s->modules, s->n_modules, modules, ARRAY_SIZE(modules));
	assert_strv(s->packages, s->n_packages, packages, ARRAY_SIZE(packages));
	assert_strv(s->binaries, s->n_binaries, binaries, ARRAY_SIZE(binaries));
	assert_strv(s->plugin_dirs, s->n_plugin_dirs, plugin_dirs, ARRAY_SIZE(plugin_dirs));
	assert_int_equal(s->n_files, 3);
	assert_string_equal(s->files[0].src, BASE "/etc/motd");
	assert_string_equal(s->files[0].dest, "/etc/motd");
	assert_string_equal(s->files[1].src, "/abs/hosts");
	assert_string_equal(s->files[1].dest, "/etc/hosts");
	assert_string_equal(s->files[2].src, BASE "/conf/app.conf");
	assert_string_equal(s->files[2].dest, "/etc/app:v1.conf");
	assert_string_equal(s->tree, "/srv/roots/extra");
}

static void test_full_spec(void **state)
{
	struct image_spec *s = NULL;
	char *err = NULL;

	assert_int_equal(spec_parse_string(full_spec, strlen(full_spec), ORIGIN, BASE, &s, &err),
			 0);
	assert_null(err);
	check_full_spec(s);
	assert_null(image_spec_free(s));
}

/* The same spec as a Windows editor would save it (and with a byte-order mark). */
static void test_full_spec_crlf(void **state)
{
	_cleanup_free_ char *crlf = malloc(3 + 2 * sizeof(full_spec));
	struct image_spec *s = NULL;
	char *err = NULL;
	size_t o = 0;

	assert_non_null(crlf);
	memcpy(crlf, "\xef\xbb\xbf", 3);
	o = 3;
	for (const char *c = full_spec; *c; c++) {
		if (*c == '\n')
			crlf[o++] = '\r';
		crlf[o++] = *c;
	}
	assert_int_equal(spec_parse_string(crlf, o, ORIGIN, BASE, &s, &err), 0);
	assert_null(err);
	check_full_spec(s);
	image_spec_free(s);
}

static void test_minimal_defaults(void **state)
{
	static const char text[] = "[image]\nname = a\ndescription =\n[kernel]\npackage = "
				   "linux-image-amd64";
	struct image_spec *s = NULL;
	char *err = NULL;

	/* No final newline, no os: the default applies. */
	assert_int_equal(spec_parse_string(text, strlen(text), NULL, NULL, &s, &err), 0);
	assert_string_equal(s->origin, "spec");
	assert_string_equal(s->name, "a");
	assert_string_equal(s->os, "tiny");
	assert_null(s->description);
	assert_null(s->boot_args);
	assert_null(s->tree);
	assert_int_equal(
	    s->n_modules + s->n_packages + s->n_binaries + s->n_plugin_dirs + s->n_files, 0);
	image_spec_free(s);
	assert_null(image_spec_free(NULL));
}

/* Parses text that must fail with -EINVAL and a message "test.ini:LINE: ..." (no line
 * when line is 0) that contains each of the NULL-terminated needles. */
static void expect_error_len(const char *text, size_t len, unsigned line, ...)
{
	struct image_spec *s = (struct image_spec *)(uintptr_t)0x1; /* must stay untouched */
	_cleanup_free_ char *err = NULL;
	static char copy[1024];
	char prefix[64];
	const char *needle;
	va_list ap;

	assert_int_equal(spec_parse_string(text, len, ORIGIN, BASE, &s, &err), -EINVAL);
	assert_ptr_equal(s, (struct image_spec *)(uintptr_t)0x1);
	assert_non_null(err);
	if (line)
		snprintf(prefix, sizeof(prefix), ORIGIN ":%u: ", line);
	else
		snprintf(prefix, sizeof(prefix), ORIGIN ": ");
	/* fail_msg() longjmps past cleanup handlers: report from a copy so nothing leaks. */
	snprintf(copy, sizeof(copy), "%s", err);
	if (strncmp(err, prefix, strlen(prefix)) != 0) {
		free(TAKE_PTR(err));
		fail_msg("message \"%s\" does not start with \"%s\"", copy, prefix);
	}
	va_start(ap, line);
	while ((needle = va_arg(ap, const char *)))
		if (!strstr(err, needle)) {
			va_end(ap);
			free(TAKE_PTR(err));
			fail_msg("message \"%s\" does not contain \"%s\"", copy, needle);
		}
	va_end(ap);
	/* Every message says what to do after what is wrong. */
	assert_non_null(strchr(err, ';'));
}

#define expect_error(text, line, ...) expect_error_len(text, strlen(text), line, __VA_ARGS__, NULL)

#define KERNEL "[kernel]\npackage = linux-image-amd64\n"

static void test_unknown_key(void **state)
{
	expect_error("[image]\nname = x\ncolour = red\n", 3, "\"colour\"", "[image]",
		     "name, os, description, boot_args, mpi");
	expect_error("[image]\nname = x\n" KERNEL "packages = a\n", 5, "\"packages\"", "[kernel]",
		     "package, source, modules");
	expect_error("[root]\nbinary = /x\n", 2, "\"binary\"",
		     "packages, binaries, plugin_dirs, files, tree");
}

static void test_unknown_section(void **state)
{
	expect_error("[image]\nname = x\n\n[rootfs]\n", 4, "rootfs", "[image], [kernel], [root]");
	expect_error("[image]\nname = x\n[root\n", 3, "\"[root\"", "']'");
	expect_error("[image] # c\n", 1, "after ']'");
	expect_error("[image]\nname = x\n  [root]\n", 3, "indented");
}

static void test_key_outside_section(void **state)
{
	expect_error("# comment\n\nname = x\n[image]\n", 3, "\"name\"", "outside any section");
}

static void test_syntax_error(void **state)
{
	expect_error("[image]\nname = x\nthis is junk\n", 3, "syntax error", "\"this is junk\"");
	expect_error("[image]\nname = x\nmy name = y\n", 3, "syntax error", "\"my name\"");
	expect_error("[image]\n= y\n", 2, "without a key");
	expect_error("[root]\n  busybox\n", 2, "continues no key", "busybox");
	expect_error("  busybox\n", 1, "continues no key");
}

static void test_missing_name(void **state)
{
	expect_error("\n[image]\nos = x\n" KERNEL, 2, "[image] has no name", "name =");
	expect_error(KERNEL, 0, "no name", "[image]");
	expect_error("", 0, "no name");
}

static void test_missing_kernel_package(void **state)
{
	expect_error("[image]\nname = x\n\n[kernel]\nmodules = virtio_blk\n", 4,
		     "[kernel] has no package", "package =");
	expect_error("[image]\nname = x\n", 0, "no package", "[kernel]");
	expect_error("[image]\nname = x\n[kernel]\npackage = linux-image-amd64\nsource = "
		     "linux-source-6.1\n",
		     3, "both package and source", "keep one");
	expect_error("[image]\nname = x\n[kernel]\nsource = Linux\n", 4, "\"Linux\"");
}

/* [kernel] source: a kernel built here instead of a Debian kernel package. */
static void test_kernel_source(void **state)
{
	static const char text[] = "[image]\nname = a\n[kernel]\nsource = linux-source-6.1\n"
				   "modules = virtio_pmem\n";
	struct image_spec *s = NULL;
	char *err = NULL;

	assert_int_equal(spec_parse_string(text, strlen(text), NULL, NULL, &s, &err), 0);
	assert_null(s->kernel_package);
	assert_string_equal(s->kernel_source, "linux-source-6.1");
	assert_int_equal(s->n_modules, 1);
	image_spec_free(s);
}

static void test_bad_names(void **state)
{
	char long_name[SPEC_NAME_MAX + 2];
	char text[256];

	expect_error("[image]\nname = a/b\n", 2, "image name 'a/b'", "A-Z a-z 0-9 . _ -");
	expect_error("[image]\nname = ..\n", 2, "image name '..'", "letter or digit");
	expect_error("[image]\nname = .\n", 2, "'.'");
	expect_error("[image]\nname = -x\n", 2, "'-x'", "does not start");
	expect_error("[image]\nname =\n", 2, "is empty");
	expect_error("[image]\nname = a b\n", 2, "'a b'");
	expect_error("[image]\nname = x\nos = ../etc\n", 3, "os '../etc'");

	memset(long_name, 'n', SPEC_NAME_MAX + 1);
	long_name[SPEC_NAME_MAX + 1] = '\0';
	snprintf(text, sizeof(text), "\n\n[image]\nname = %s\n", long_name);
	expect_error(text, 4, long_name, "too long", "1-64");
	/* 64 is fine. */
	long_name[SPEC_NAME_MAX] = '\0';
	assert_int_equal(spec_validate_name(long_name, NULL), 0);
}

static void test_validate_name(void **state)
{
	static const char *const good[] = {"a", "0", "tiny-mpi", "A.b_c-9", "x..y"};
	static const char *const bad[] = {"", "/", "..", ".", "a/b", "-a", "_a", "a\n", "é"};

	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		char *err = NULL;

		assert_int_equal(spec_validate_name(good[i], &err), 0);
		assert_null(err);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *err = NULL;

		assert_int_equal(spec_validate_name(bad[i], &err), -EINVAL);
		assert_non_null(err);
		assert_non_null(strstr(err, "image name"));
		assert_int_equal(spec_validate_name(bad[i], NULL), -EINVAL);
	}
	/* Control characters are escaped in the message. */
	{
		_cleanup_free_ char *err = NULL;

		assert_int_equal(spec_validate_name("a\x1b[2J", &err), -EINVAL);
		assert_non_null(strstr(err, "'a?[2J'"));
	}
}

static void test_bad_packages(void **state)
{
	expect_error("[image]\nname = x\n" KERNEL "[root]\npackages = busybox\n  mpich Bad_Name\n",
		     7, "\"Bad_Name\"", "Debian package name");
	expect_error("[root]\npackages = mpich=4.0\n", 2, "\"mpich=4.0\"");
	expect_error("[root]\npackages = libc6:amd64\n", 2, "\"libc6:amd64\"");
	expect_error("[root]\npackages = a\n", 2, "\"a\"");
	expect_error("[kernel]\npackage = Linux\n", 2, "package: \"Linux\"");
	expect_error("[kernel]\nmodules = virtio_blk drivers/net/virtio_net.ko\n", 2,
		     "\"drivers/net/virtio_net.ko\"", "module name");
}

static void test_bad_paths(void **state)
{
	expect_error("[root]\nbinaries = /usr/bin/a\n\tusr/bin/mpiexec\n", 3,
		     "binaries \"usr/bin/mpiexec\"", "absolute");
	expect_error("[root]\nbinaries = /usr/bin/../../etc/shadow\n", 2, "\"..\"");
	expect_error("[root]\nplugin_dirs = lib/ucx\n", 2, "plugin_dirs \"lib/ucx\"");
	expect_error("[root]\nplugin_dirs = /usr/lib/..\n", 2, "plugin_dirs", "\"..\"");
	expect_error("[root]\ntree = roots/x\n", 2, "tree \"roots/x\"", "absolute");
	expect_error("[root]\ntree = /a\ntree = /b\n", 3, "tree given twice, first at line 2");
	/* ".." inside a name is no component. */
	{
		static const char text[] =
		    "[image]\nname=x\n" KERNEL "[root]\nbinaries = /usr/bin/a..b /x/..y/z\n";
		struct image_spec *s = NULL;
		char *err = NULL;

		assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, BASE, &s, &err), 0);
		assert_int_equal(s->n_binaries, 2);
		image_spec_free(s);
	}
}

static void test_bad_files(void **state)
{
	expect_error("[root]\nfiles = a:/a\n motd\n", 3, "files: \"motd\" has no ':'", "SRC:DEST");
	expect_error("[root]\nfiles = motd:etc/motd\n", 2, "\"motd:etc/motd\"", "DEST", "absolute");
	expect_error("[root]\nfiles = c:\\x:/etc/x\n", 2, "DEST", "must not contain ':'");
	expect_error("[root]\nfiles = :/etc/motd\n", 2, "empty SRC");
	expect_error("[root]\nfiles = motd:/etc/../motd\n", 2, "DEST \"/etc/../motd\"", "\"..\"");
	expect_error("[root]\nfiles = motd:/\n", 2, "directory");
	expect_error("[root]\nfiles = motd:/etc/\n", 2, "directory");
	expect_error("[root]\nfiles = a:/etc/motd\n\nfiles = b:/etc/motd\n", 4,
		     "\"/etc/motd\" given twice, first at line 2");
}

/* binaries = ./PATH: the user's own program, anchored at the spec's folder, going to
 * /usr/local/bin/NAME; absolute binaries are left as they are. */
static void test_own_programs(void **state)
{
	static const char text[] =
	    "[image]\nname=x\n" KERNEL "[root]\nbinaries = /usr/bin/busybox ./ring\n"
	    "\t../bin/ep.x\nbinaries = ./sub/dir/hello\n";
	struct image_spec *s = NULL;
	_cleanup_free_ char *err = NULL;

	assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, BASE, &s, &err), 0);
	assert_int_equal(s->n_binaries, 1);
	assert_string_equal(s->binaries[0], "/usr/bin/busybox");
	assert_int_equal(s->n_programs, 3);
	assert_string_equal(s->programs[0].src, BASE "/ring");
	assert_string_equal(s->programs[0].dest, "/usr/local/bin/ring");
	assert_string_equal(s->programs[0].given, "./ring");
	assert_int_equal(s->programs[0].line, 6);
	assert_string_equal(s->programs[1].src, BASE "/../bin/ep.x");
	assert_string_equal(s->programs[1].dest, "/usr/local/bin/ep.x");
	assert_int_equal(s->programs[1].line, 7);
	assert_string_equal(s->programs[2].dest, "/usr/local/bin/hello");
	assert_int_equal(s->programs[2].line, 8);
	image_spec_free(s);
	s = NULL;

	expect_error("[root]\nbinaries = ./ring\n\t./other/ring\n", 3, "\"./other/ring\"",
		     "\"./ring\" (line 2)", "/usr/local/bin/ring", "rename one");
	expect_error("[root]\nbinaries = ./dir/\n", 2, "names a folder");
	expect_error("[root]\nbinaries = ./..\n", 2, "names a folder");
	expect_error("[root]\nbinaries = ring\n", 2, "not an absolute path", "./ring");
	assert_int_equal(
	    spec_parse_string("[root]\nbinaries = ./ring\n", 23, ORIGIN, NULL, &s, &err), -EINVAL);
	assert_non_null(strstr(err, ORIGIN ":2: "));
	assert_non_null(strstr(err, "no folder to anchor"));
}

static void test_relative_src_without_base(void **state)
{
	static const char text[] = "[root]\nfiles = motd:/etc/motd\n";
	struct image_spec *s = NULL;
	_cleanup_free_ char *err = NULL;

	assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, NULL, &s, &err), -EINVAL);
	assert_non_null(strstr(err, ORIGIN ":2: "));
	assert_non_null(strstr(err, "relative"));
}

static void test_scalar_twice(void **state)
{
	expect_error("[image]\nname = a\nos = b\n\nname = c\n", 5, "name given twice",
		     "first at line 2");
	expect_error("[image]\nname = a\n" KERNEL "[kernel]\npackage = linux-image-rt-amd64\n", 6,
		     "package given twice, first at line 4");
}

static void test_continuation_after_scalar(void **state)
{
	expect_error("[image]\nname = a\n  b\n", 3, "after name", "line 2");
	expect_error("[image]\nname = a\ndescription = one\n\ttwo\n", 4, "after description");
}

static void test_mpi(void **state)
{
	struct image_spec *s = NULL;
	_cleanup_free_ char *err = NULL;
	static const char text[] = "[image]\nname = a\nmpi = openmpi\n" KERNEL;

	assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, BASE, &s, &err), 0);
	assert_string_equal(s->mpi, "openmpi");
	image_spec_free(s);
	expect_error("[image]\nname = a\nmpi = mvapich\n", 3, "\"mvapich\"", "mpich or openmpi");
	expect_error("[image]\nname = a\nmpi = MPICH\n", 3, "mpich or openmpi");
	expect_error("[image]\nname = a\nmpi = mpich\nmpi = openmpi\n", 4, "mpi given twice");
}

static void test_bypass(void **state)
{
	struct image_spec *s = NULL;
	_cleanup_free_ char *err = NULL;
	static const char text[] = "[image]\nname = a\nbypass = ivshmem\n" KERNEL;

	assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, BASE, &s, &err), 0);
	assert_string_equal(s->bypass, "ivshmem");
	image_spec_free(s);
	expect_error("[image]\nname = a\nbypass = xpmem\n", 3, "\"xpmem\"", "use ivshmem");
}

static void test_nul_byte(void **state)
{
	static const char text[] = "[image]\nname = a\n\nname\0b\n";

	expect_error_len(text, sizeof(text) - 1, 4, "NUL", NULL);
	expect_error_len("\0", 1, 1, "NUL", NULL);
}

static void test_limits(void **state)
{
	_cleanup_free_ char *big = NULL;
	struct image_spec *s = NULL;
	char *err = NULL;
	size_t len = SPEC_MAX_BYTES + 1;
	size_t o;
	char boot[1200];

	/* Oversize: -EFBIG, checked before anything is parsed. */
	big = malloc(len + 64);
	assert_non_null(big);
	memset(big, '#', len);
	big[len] = '\0';
	assert_int_equal(spec_parse_string(big, len, ORIGIN, BASE, &s, &err), -EFBIG);
	assert_null(s);
	assert_non_null(err);
	assert_non_null(strstr(err, ORIGIN ": "));
	assert_non_null(strstr(err, "1048576"));
	free(err);
	err = NULL;

	/* Exactly the limit is fine. */
	o = (size_t)snprintf(big, 128, "[image]\nname = x\n" KERNEL);
	memset(big + o, '\n', SPEC_MAX_BYTES - o);
	assert_int_equal(spec_parse_string(big, SPEC_MAX_BYTES, ORIGIN, BASE, &s, &err), 0);
	image_spec_free(s);

	/* One more list item than allowed, the last one on line 2 + SPEC_MAX_LIST_ITEMS. */
	o = (size_t)snprintf(big, 64, "[root]\npackages =\n");
	for (int i = 0; i <= SPEC_MAX_LIST_ITEMS; i++)
		o += (size_t)snprintf(big + o, 64, " p%d\n", i);
	expect_error(big, 2 + SPEC_MAX_LIST_ITEMS + 1, "packages has more than 4096 items");

	/* boot_args: 1024 chars at most, no control characters. */
	memset(boot, 'a', sizeof(boot));
	snprintf(boot, sizeof(boot), "[image]\nboot_args = ");
	boot[strlen(boot)] = 'a';
	boot[20 + 1025] = '\0';
	expect_error(boot, 2, "boot_args is longer than 1024");
	boot[20 + 1024] = '\0';
	{
		_cleanup_free_ char *text = NULL;

		assert_true(asprintf(&text, "%s\nname = x\n" KERNEL, boot) > 0);
		assert_int_equal(spec_parse_string(text, strlen(text), ORIGIN, BASE, &s, &err), 0);
		assert_int_equal(strlen(s->boot_args), 1024);
		image_spec_free(s);
	}
	expect_error("[image]\nboot_args = a\rb\n", 2, "control character");
}

static void test_parse_file(void **state)
{
	_cleanup_free_ char *tmp = NULL;
	_cleanup_free_ char *real = NULL;
	_cleanup_free_ char *sub = NULL;
	_cleanup_free_ char *path = NULL;
	_cleanup_free_ char *missing = NULL;
	_cleanup_free_ char *expected = NULL;
	static const char text[] = "[image]\nname = f\n" KERNEL "[root]\nfiles = "
				   "data/motd:/etc/motd\n";
	struct image_spec *s = NULL;
	char *err = NULL;

	assert_int_equal(fs_mkdtemp(P_tmpdir, "test-spec-", &tmp), 0);
	real = realpath(tmp, NULL);
	assert_non_null(real);
	sub = fs_path_join(tmp, "specs");
	assert_int_equal(fs_mkdir_p(sub, 0755), 0);
	path = fs_path_join(sub, "tiny.ini");
	assert_int_equal(fs_write_atomic(path, text, strlen(text), 0644), 0);

	assert_int_equal(spec_parse_file(path, &s, &err), 0);
	assert_null(err);
	assert_string_equal(s->origin, path);
	assert_int_equal(s->n_files, 1);
	assert_true(asprintf(&expected, "%s/specs/data/motd", real) > 0);
	assert_string_equal(s->files[0].src, expected);
	image_spec_free(s);
	s = NULL;

	/* A path with "." and ".." still gives an absolute, resolved base. */
	{
		_cleanup_free_ char *odd = NULL;

		assert_true(asprintf(&odd, "%s/specs/./../specs/tiny.ini", tmp) > 0);
		assert_int_equal(spec_parse_file(odd, &s, &err), 0);
		assert_string_equal(s->files[0].src, expected);
		image_spec_free(s);
		s = NULL;
	}

	/* A missing file: -ENOENT and the path in the message. */
	missing = fs_path_join(sub, "nope.ini");
	assert_int_equal(spec_parse_file(missing, &s, &err), -ENOENT);
	assert_null(s);
	assert_non_null(err);
	assert_non_null(strstr(err, missing));
	assert_non_null(strstr(err, strerror(ENOENT)));
	free(err);
	err = NULL;

	/* A directory is no spec. */
	assert_int_equal(spec_parse_file(sub, &s, &err), -EISDIR);
	assert_non_null(strstr(err, sub));
	free(err);
	err = NULL;

	/* Errors inside the file name the file. */
	assert_int_equal(fs_rm_rf(path), 0);
	assert_int_equal(fs_write_atomic(path, "[image]\nnam = x\n", 16, 0644), 0);
	assert_int_equal(spec_parse_file(path, &s, &err), -EINVAL);
	{
		_cleanup_free_ char *prefix = NULL;

		assert_true(asprintf(&prefix, "%s:2: ", path) > 0);
		assert_int_equal(strncmp(err, prefix, strlen(prefix)), 0);
	}
	free(err);

	assert_int_equal(fs_rm_rf(tmp), 0);
}

/* A small deterministic generator, so a failing fuzz case can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 11);
}

/* Bytes that matter to the grammar, more often than the rest. */
static const char fuzz_bytes[] = "[]=:#; \t\n\r/.-_\\aZ9\x01\xff";

static size_t mutate(char *buf, size_t len, size_t cap)
{
	size_t at = len ? rng() % len : 0;

	switch (rng() % 7) {
	case 0: /* replace a byte */
		if (len)
			buf[at] = (rng() % 4) ? fuzz_bytes[rng() % (sizeof(fuzz_bytes) - 1)]
					      : (char)(rng() & 0xff);
		break;
	case 1: /* insert a byte (sometimes NUL) */
		if (len < cap) {
			memmove(buf + at + 1, buf + at, len - at);
			buf[at] =
			    (rng() % 16) ? fuzz_bytes[rng() % (sizeof(fuzz_bytes) - 1)] : '\0';
			len++;
		}
		break;
	case 2: { /* delete a run */
		size_t n = rng() % 8 + 1;

		if (at + n > len)
			n = len - at;
		memmove(buf + at, buf + at + n, len - at - n);
		len -= n;
		break;
	}
	case 3: { /* duplicate a run (repeats keys and sections) */
		size_t n = rng() % 40 + 1;

		if (at + n > len)
			n = len - at;
		if (len + n <= cap) {
			memmove(buf + at + n, buf + at, len - at);
			len += n;
		}
		break;
	}
	case 4: /* cut the tail */
		len = at;
		break;
	case 5: /* indent or un-indent at a line start */
		while (at > 0 && buf[at - 1] != '\n')
			at--;
		if (len && (buf[at] == ' ' || buf[at] == '\t')) {
			memmove(buf + at, buf + at + 1, len - at - 1);
			len--;
		} else if (len < cap) {
			memmove(buf + at + 1, buf + at, len - at);
			buf[at] = '\t';
			len++;
		}
		break;
	default: /* swap two bytes */
		if (len) {
			size_t b = rng() % len;
			char c = buf[at];

			buf[at] = buf[b];
			buf[b] = c;
		}
		break;
	}
	return len;
}

static void test_fuzz(void **state)
{
	size_t cap = sizeof(full_spec) * 2;
	_cleanup_free_ char *buf = malloc(cap);
	size_t ok = 0, failed = 0;

	assert_non_null(buf);
	for (int iter = 0; iter < 5000; iter++) {
		struct image_spec *s = NULL;
		char *err = NULL;
		size_t len = sizeof(full_spec) - 1;
		int rounds = (int)(rng() % 6) + 1;
		int r;

		memcpy(buf, full_spec, len);
		for (int i = 0; i < rounds; i++)
			len = mutate(buf, len, cap);
		r = spec_parse_string(buf, len, ORIGIN, BASE, &s, &err);
		if (r == 0) {
			assert_non_null(s);
			assert_null(err);
			assert_non_null(s->name);
			assert_int_equal(spec_validate_name(s->name, NULL), 0);
			assert_non_null(s->os);
			assert_non_null(s->kernel_package);
			for (size_t i = 0; i < s->n_files; i++) {
				assert_true(s->files[i].src[0] == '/');
				assert_true(s->files[i].dest[0] == '/');
			}
			for (size_t i = 0; i < s->n_binaries; i++)
				assert_true(s->binaries[i][0] == '/');
			image_spec_free(s);
			ok++;
		} else {
			if (r != -EINVAL)
				fail_msg("iteration %d: unexpected %d", iter, r);
			assert_null(s);
			if (!err || strncmp(err, ORIGIN ":", strlen(ORIGIN ":")) != 0)
				fail_msg("iteration %d: failure without a proper message: %s", iter,
					 err ? err : "(none)");
			free(err);
			failed++;
		}
	}
	/* The mutations must exercise both paths. */
	assert_true(ok > 100);
	assert_true(failed > 100);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_full_spec),
	    cmocka_unit_test(test_full_spec_crlf),
	    cmocka_unit_test(test_minimal_defaults),
	    cmocka_unit_test(test_unknown_key),
	    cmocka_unit_test(test_kernel_source),
	    cmocka_unit_test(test_unknown_section),
	    cmocka_unit_test(test_key_outside_section),
	    cmocka_unit_test(test_syntax_error),
	    cmocka_unit_test(test_missing_name),
	    cmocka_unit_test(test_missing_kernel_package),
	    cmocka_unit_test(test_bad_names),
	    cmocka_unit_test(test_validate_name),
	    cmocka_unit_test(test_bad_packages),
	    cmocka_unit_test(test_bad_paths),
	    cmocka_unit_test(test_bad_files),
	    cmocka_unit_test(test_own_programs),
	    cmocka_unit_test(test_relative_src_without_base),
	    cmocka_unit_test(test_scalar_twice),
	    cmocka_unit_test(test_continuation_after_scalar),
	    cmocka_unit_test(test_mpi),
	    cmocka_unit_test(test_bypass),
	    cmocka_unit_test(test_nul_byte),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_parse_file),
	    cmocka_unit_test(test_fuzz),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
