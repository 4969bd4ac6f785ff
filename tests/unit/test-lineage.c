/* What a version was built from: the recorded spec reads back to the same spec, derived
 * specs merge with their base as documented, and the mistakes a derived spec can make are
 * named. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "image/lineage.h"

static const char base_text[] = "[image]\n"
				"name = app\n"
				"os = debian-12\n"
				"description = the base\n"
				"mpi = mpich\n"
				"[kernel]\n"
				"package = linux-image-cloud-amd64\n"
				"modules = virtio_pci virtio_pmem\n"
				"[root]\n"
				"packages = busybox-static mpich libmpich12\n"
				"binaries = /usr/bin/busybox /usr/bin/mpiexec.hydra ./bin/ring\n"
				"plugin_dirs = /usr/lib/x86_64-linux-gnu/ucx\n"
				"files = motd:/etc/motd conf/hosts:/etc/hosts\n";

static struct image_spec *parse(const char *text, const char *base_dir)
{
	struct image_spec *s = NULL;
	char *error = NULL;

	if (spec_parse_string(text, strlen(text), "test.ini", base_dir, &s, &error) < 0) {
		fprintf(stderr, "%s\n", error);
		fail();
	}
	return s;
}

static char *text_of(const struct image_spec *s)
{
	char *t = NULL;

	assert_int_equal(lineage_spec_text(s, &t), 0);
	return t;
}

/* Recording a spec in a manifest and reading it back gives the same spec. */
static void test_round_trip(void **state)
{
	struct image_spec *s = parse(base_text, "/home/u/specs"), *back = NULL;
	struct manifest *m = manifest_new();
	char *t1 = text_of(s), *t2, *error = NULL;

	(void)state;
	m->name = strdup("app");
	m->version = 3;
	assert_int_equal(lineage_record(m->metadata, s, "base:2"), 0);
	assert_string_equal(json_string_value(json_object_get(m->metadata, LINEAGE_BASE_KEY)),
			    "base:2");
	/* Lines, not text: a manifest's metadata holds no control characters. */
	assert_true(json_is_array(json_object_get(m->metadata, LINEAGE_SPEC_KEY)));
	assert_int_equal(lineage_recorded_spec(m, &back, &error), 0);
	t2 = text_of(back);
	assert_string_equal(t1, t2);
	assert_string_equal(back->files[0].src, "/home/u/specs/motd");
	assert_string_equal(back->files[1].src, "/home/u/specs/conf/hosts");
	assert_int_equal(back->n_programs, 1);
	assert_string_equal(back->programs[0].src, "/home/u/specs/bin/ring");
	assert_string_equal(back->programs[0].dest, "/usr/local/bin/ring");
	assert_string_equal(back->mpi, "mpich");
	free(t1);
	free(t2);
	image_spec_free(s);
	image_spec_free(back);
	manifest_free(m);
}

static void test_not_recorded(void **state)
{
	struct manifest *m = manifest_new();
	struct image_spec *s = NULL;
	char *error = NULL;

	(void)state;
	m->name = strdup("old");
	m->version = 1;
	assert_int_equal(lineage_recorded_spec(m, &s, &error), -ENOENT);
	assert_non_null(strstr(error, "old:1 was built before vmhpc recorded specs"));
	free(error);
	manifest_free(m);
}

static bool has(char *const *items, size_t n, const char *item)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(items[i], item) == 0)
			return true;
	return false;
}

static void test_merge(void **state)
{
	struct image_spec *base = parse(base_text, "/b"), *merged = NULL;
	struct image_spec *child = parse("[image]\n"
					 "name = app-fortran\n"
					 "base = app:1\n"
					 "[kernel]\n"
					 "modules = virtio_net\n"
					 "remove_modules = virtio_pmem\n"
					 "[root]\n"
					 "packages = libgfortran5 mpich\n"
					 "remove_packages = busybox-static\n"
					 "binaries = ./ring\n"
					 "remove_binaries = /usr/bin/busybox\n"
					 "files = motd2:/etc/motd\n"
					 "remove_files = /etc/hosts\n",
					 "/c");
	char *error = NULL;

	(void)state;
	assert_int_equal(lineage_merge(base, child, &merged, &error), 0);
	assert_string_equal(merged->name, "app-fortran");
	assert_string_equal(merged->os, "debian-12"); /* from the base */
	assert_string_equal(merged->description, "the base");
	assert_string_equal(merged->kernel_package, "linux-image-cloud-amd64");
	assert_null(merged->base);
	assert_int_equal(merged->n_modules, 2);
	assert_true(has(merged->modules, merged->n_modules, "virtio_net"));
	assert_false(has(merged->modules, merged->n_modules, "virtio_pmem"));
	assert_int_equal(merged->n_packages, 3); /* mpich once */
	assert_true(has(merged->packages, merged->n_packages, "libgfortran5"));
	assert_false(has(merged->packages, merged->n_packages, "busybox-static"));
	assert_int_equal(merged->n_binaries, 1);
	assert_string_equal(merged->binaries[0], "/usr/bin/mpiexec.hydra");
	/* The child's ./ring replaces the base's program of that name. */
	assert_int_equal(merged->n_programs, 1);
	assert_string_equal(merged->programs[0].src, "/c/ring");
	/* files by DEST: the child's /etc/motd replaces the base's; /etc/hosts removed. */
	assert_int_equal(merged->n_files, 1);
	assert_string_equal(merged->files[0].src, "/c/motd2");
	assert_int_equal(merged->n_plugin_dirs, 1);
	image_spec_free(merged);
	image_spec_free(child);
	image_spec_free(base);
}

static void expect_merge_error(const char *child_text, const char *want)
{
	struct image_spec *base = parse(base_text, "/b"), *child = parse(child_text, "/c");
	struct image_spec *merged = NULL;
	char *error = NULL;

	assert_int_equal(lineage_merge(base, child, &merged, &error), -EINVAL);
	assert_null(merged);
	if (!strstr(error, want)) {
		fprintf(stderr, "got '%s', want '%s'\n", error, want);
		fail();
	}
	free(error);
	image_spec_free(child);
	image_spec_free(base);
}

static void test_merge_errors(void **state)
{
	(void)state;
	expect_merge_error("[image]\nname = x\nbase = app\n[root]\nremove_packages = libfoo1\n",
			   "remove_packages: libfoo1 is not among the packages of the base app");
	expect_merge_error("[image]\nname = x\nbase = app\n[root]\nremove_binaries = /bin/x\n",
			   "remove_binaries: /bin/x is not among the binaries of the base app");
	expect_merge_error("[image]\nname = x\nbase = app\n[root]\nremove_files = /etc/x\n",
			   "remove_files: /etc/x is not the DEST of any files entry of the base");
	expect_merge_error("[image]\nname = x\nbase = app\n[kernel]\nremove_modules = fuse\n",
			   "remove_modules: fuse is not among the modules of the base app");
}

static int parse_error(const char *text, char **ret_error)
{
	struct image_spec *s = NULL;
	int r = spec_parse_string(text, strlen(text), "t.ini", "/", &s, ret_error);

	image_spec_free(s);
	return r;
}

/* The parser's side: base and the removals. */
static void test_parse(void **state)
{
	struct image_spec *s = NULL;
	char *error = NULL;

	(void)state;
	/* A derived spec needs no kernel package of its own. */
	s = parse("[image]\nname = x\nbase = app:2\n", "/c");
	assert_string_equal(s->base, "app:2");
	assert_null(s->kernel_package);
	assert_null(s->os); /* the base's, later */
	image_spec_free(s);
	assert_int_equal(parse_error("[image]\nname = x\n[kernel]\npackage = kk\n[root]\n"
				     "remove_packages = mpich\n",
				     &error),
			 -EINVAL);
	assert_non_null(strstr(error, "remove_packages takes away from a base version, and this "
				      "spec has none"));
	free(error);
	error = NULL;
	assert_int_equal(parse_error("[image]\nname = x\nbase = app:0\n", &error), -EINVAL);
	assert_non_null(strstr(error, "t.ini:3: base \"app:0\": the version after ':'"));
	free(error);
	error = NULL;
	assert_int_equal(parse_error("[image]\nname = x\nbase = ../a\n", &error), -EINVAL);
	assert_non_null(strstr(error, "t.ini:3: "));
	free(error);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip), cmocka_unit_test(test_not_recorded),
	    cmocka_unit_test(test_merge),      cmocka_unit_test(test_merge_errors),
	    cmocka_unit_test(test_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
