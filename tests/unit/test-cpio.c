/* Tests for the cpio newc writer: the bytes themselves, then GNU cpio reading them back. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "image/cpio.h"
#include "util/cleanup.h"
#include "util/fsutil.h"

enum kind { DIR_, FILE_, PATHFILE, LINK, CHARDEV };

struct entry {
	enum kind kind;
	const char *path;   /* as passed to the writer */
	const char *stored; /* as it must appear in the archive */
	mode_t mode;
	const char *data; /* file contents or link target */
	size_t len;
	unsigned major, minor;
};

static char big[1000];

/* Sizes 0..5 exercise every padding case of the data; name lengths vary too. */
static struct entry entries[] = {
    {DIR_, "dev", "dev", 0755, NULL, 0, 0, 0},
    {DIR_, "/etc/", "etc", 0750, NULL, 0, 0, 0},
    {DIR_, "usr", "usr", 0755, NULL, 0, 0, 0},
    {DIR_, "usr/bin", "usr/bin", 0755, NULL, 0, 0, 0},
    {DIR_, "usr/lib", "usr/lib", 0755, NULL, 0, 0, 0},
    {DIR_, "usr//lib/./x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", 0700, NULL, 0, 0, 0},
    {FILE_, "init", "init", 0755, "#!/bin/sh\nexec /bin/sh\n", 23, 0, 0},
    {FILE_, "etc/empty", "etc/empty", 0644, "", 0, 0, 0},
    {FILE_, "etc/1", "etc/1", 0644, "a", 1, 0, 0},
    {FILE_, "etc/22", "etc/22", 0600, "ab", 2, 0, 0},
    {FILE_, "etc/333", "etc/333", 0640, "abc", 3, 0, 0},
    {FILE_, "etc/4444", "etc/4444", 0444, "abcd", 4, 0, 0},
    {FILE_, "/etc/five", "etc/five", 0644, "abcde", 5, 0, 0},
    {FILE_, "usr/lib/x86_64-linux-gnu/data.bin", "usr/lib/x86_64-linux-gnu/data.bin", 0644, big,
     sizeof(big), 0, 0},
    {FILE_, "usr/bin/suid", "usr/bin/suid", 04755,
     "\x7f"
     "ELF",
     4, 0, 0},
    {PATHFILE, "usr/bin/fromfile", "usr/bin/fromfile", 0755, NULL, 12345, 0, 0},
    {LINK, "bin", "bin", 0, "usr/bin", 7, 0, 0},
    {LINK, "usr/bin/sh", "usr/bin/sh", 0, "/usr/bin/busybox", 16, 0, 0},
    {CHARDEV, "dev/console", "dev/console", 0600, NULL, 0, 5, 1},
};

struct fixture {
	char *dir;
	char *source; /* the file behind PATHFILE */
	char *source_data;
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (!fx || fs_mkdtemp("/tmp", "vmhpc-test-cpio-", &fx->dir) < 0)
		return -1;
	fx->source = fs_path_join(fx->dir, "source");
	fx->source_data = malloc(12345);
	if (!fx->source || !fx->source_data)
		return -1;
	for (size_t i = 0; i < 12345; i++)
		fx->source_data[i] = (char)(i * 7 + 3);
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i % 251);
	if (fs_write_atomic(fx->source, fx->source_data, 12345, 0644) < 0)
		return -1;
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
		if (entries[i].kind == PATHFILE)
			entries[i].data = fx->source_data;
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	if (!fx)
		return 0;
	if (fx->dir)
		fs_rm_rf(fx->dir);
	free(fx->dir);
	free(fx->source);
	free(fx->source_data);
	free(fx);
	return 0;
}

static struct cpio_writer *build(const struct fixture *fx)
{
	struct cpio_writer *w = NULL;

	assert_int_equal(cpio_writer_new(&w), 0);
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		const struct entry *e = &entries[i];
		int r = -1;

		switch (e->kind) {
		case DIR_:
			r = cpio_add_directory(w, e->path, e->mode);
			break;
		case FILE_:
			r = cpio_add_file(w, e->path, e->mode, e->data, e->len);
			break;
		case PATHFILE:
			r = cpio_add_file_from_path(w, e->path, e->mode, fx->source);
			break;
		case LINK:
			r = cpio_add_symlink(w, e->path, e->data);
			break;
		case CHARDEV:
			r = cpio_add_char_device(w, e->path, e->mode, e->major, e->minor);
			break;
		}
		assert_int_equal(r, 0);
	}
	return w;
}

static unsigned long field(const char *hdr, int index)
{
	char buf[9];

	memcpy(buf, hdr + 6 + index * 8, 8);
	buf[8] = '\0';
	for (int i = 0; i < 8; i++)
		assert_non_null(strchr("0123456789ABCDEF", buf[i]));
	return strtoul(buf, NULL, 16);
}

static mode_t type_of(enum kind k)
{
	switch (k) {
	case DIR_:
		return S_IFDIR;
	case LINK:
		return S_IFLNK;
	case CHARDEV:
		return S_IFCHR;
	default:
		return S_IFREG;
	}
}

/* Walks the archive by hand and checks every field against the entry list. */
static void test_cpio_bytes(void **state)
{
	struct cpio_writer *w = build(*state);
	const void *data;
	const char *p;
	size_t len, off = 0, n = sizeof(entries) / sizeof(entries[0]);

	assert_int_equal(cpio_finish(w, &data, &len), 0);
	p = data;
	assert_int_equal(len % 512, 0);
	for (size_t i = 0; i <= n; i++) {
		const char *h = p + off;
		unsigned long namesize, filesize;
		const char *name;

		assert_true(off + 110 <= len);
		assert_memory_equal(h, "070701", 6);
		namesize = field(h, 11);
		filesize = field(h, 6);
		name = h + 110;
		assert_int_equal(name[namesize - 1], '\0');
		assert_int_equal(field(h, 2), 0);  /* uid */
		assert_int_equal(field(h, 3), 0);  /* gid */
		assert_int_equal(field(h, 5), 0);  /* mtime */
		assert_int_equal(field(h, 7), 0);  /* devmajor */
		assert_int_equal(field(h, 8), 0);  /* devminor */
		assert_int_equal(field(h, 12), 0); /* check */
		off += 110 + namesize;
		assert_int_equal(strlen(name) + 1, namesize);
		while (off % 4) /* name padding is zeros */
			assert_int_equal(p[off++], 0);
		if (i == n) {
			assert_string_equal(name, "TRAILER!!!");
			assert_int_equal(filesize, 0);
			for (; off < len; off++)
				assert_int_equal(p[off], 0);
			break;
		}
		const struct entry *e = &entries[i];
		assert_string_equal(name, e->stored);
		assert_int_equal(field(h, 0), i + 1); /* inodes count from 1 */
		assert_int_equal(field(h, 1),
				 type_of(e->kind) | (e->kind == LINK ? 0777 : e->mode));
		assert_int_equal(field(h, 4), e->kind == DIR_ ? 2 : 1);
		assert_int_equal(field(h, 9), e->major);
		assert_int_equal(field(h, 10), e->minor);
		assert_int_equal(filesize, e->len);
		if (e->len)
			assert_memory_equal(p + off, e->data, e->len);
		off += filesize;
		while (off % 4)
			assert_int_equal(p[off++], 0);
	}

	/* Finishing again changes nothing; adding afterwards is refused. */
	{
		const void *again;
		size_t again_len;

		assert_int_equal(cpio_finish(w, &again, &again_len), 0);
		assert_ptr_equal(again, data);
		assert_int_equal(again_len, len);
		assert_int_equal(cpio_add_directory(w, "late", 0755), -EINVAL);
	}

	/* Equal inputs, equal bytes. */
	{
		struct cpio_writer *w2 = build(*state);
		const void *data2;
		size_t len2;

		assert_int_equal(cpio_finish(w2, &data2, &len2), 0);
		assert_int_equal(len2, len);
		assert_memory_equal(data2, data, len);
		cpio_writer_free(w2);
	}
	assert_null(cpio_writer_free(w));
	assert_null(cpio_writer_free(NULL));
}

static char *run(const char *cmd)
{
	char *out = NULL;
	size_t size = 0;
	FILE *mem = open_memstream(&out, &size);
	FILE *p = popen(cmd, "re");
	char buf[4096];
	size_t n;

	assert_non_null(mem);
	assert_non_null(p);
	while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
		fwrite(buf, 1, n, mem);
	if (pclose(p) != 0)
		fail_msg("command failed: %s", cmd);
	fclose(mem);
	return out;
}

/* GNU cpio lists and extracts exactly what was written. */
static void test_cpio_gnu_cpio(void **state)
{
	const struct fixture *fx = *state;
	struct cpio_writer *w = build(fx);
	_cleanup_free_ char *archive = fs_path_join(fx->dir, "archive.cpio");
	_cleanup_free_ char *out = fs_path_join(fx->dir, "out");
	_cleanup_free_ char *cmd = NULL, *listing = NULL, *expected = NULL;
	size_t expected_len = 0;
	const void *data;
	size_t len;
	FILE *e;

	if (access("/usr/bin/cpio", X_OK) != 0 && access("/bin/cpio", X_OK) != 0)
		skip();
	assert_int_equal(cpio_finish(w, &data, &len), 0);
	assert_int_equal(fs_write_atomic(archive, data, len, 0644), 0);
	cpio_writer_free(w);

	e = open_memstream(&expected, &expected_len);
	assert_non_null(e);
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
		fprintf(e, "%s\n", entries[i].stored);
	fclose(e);
	assert_true(asprintf(&cmd, "cpio -t --quiet < '%s'", archive) > 0);
	listing = run(cmd);
	assert_string_equal(listing, expected);

	assert_int_equal(fs_mkdir_p(out, 0755), 0);
	free(cmd);
	assert_true(asprintf(&cmd, "cd '%s' && cpio -idm --quiet --no-absolute-filenames < '%s'",
			     out, archive) > 0);
	free(run(cmd));

	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		const struct entry *en = &entries[i];
		_cleanup_free_ char *path = fs_path_join(out, en->stored);
		struct stat st;

		assert_int_equal(lstat(path, &st), 0);
		assert_int_equal(st.st_mode & S_IFMT, type_of(en->kind));
		if (en->kind != LINK)
			assert_int_equal(st.st_mode & 07777, en->mode);
		if (en->kind == FILE_ || en->kind == PATHFILE) {
			_cleanup_free_ char *got = NULL;
			size_t got_len;

			assert_int_equal(fs_read_file(path, 1 << 20, &got, &got_len), 0);
			assert_int_equal(got_len, en->len);
			assert_memory_equal(got, en->data, en->len);
			assert_int_equal(st.st_mtime, 0);
		} else if (en->kind == LINK) {
			char target[256];
			ssize_t n = readlink(path, target, sizeof(target) - 1);

			assert_true(n >= 0);
			target[n] = '\0';
			assert_string_equal(target, en->data);
		} else if (en->kind == CHARDEV) {
			assert_int_equal(major(st.st_rdev), en->major);
			assert_int_equal(minor(st.st_rdev), en->minor);
		}
	}
}

static void test_cpio_bad_input(void **state)
{
	const struct fixture *fx = *state;
	struct cpio_writer *w = NULL;
	char long_path[CPIO_PATH_MAX + 1];
	static const char *const bad[] = {"",	"/",	"//",	  ".",	  "./",
					  "..", "../x", "a/../b", "a/..", "/..//etc"};
	const void *data;
	size_t len;

	assert_int_equal(cpio_writer_new(&w), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(cpio_add_directory(w, bad[i], 0755), -EINVAL);
		assert_int_equal(cpio_add_file(w, bad[i], 0644, "x", 1), -EINVAL);
		assert_int_equal(cpio_add_symlink(w, bad[i], "x"), -EINVAL);
		assert_int_equal(cpio_add_char_device(w, bad[i], 0600, 1, 3), -EINVAL);
		assert_int_equal(cpio_add_file_from_path(w, bad[i], 0644, fx->source), -EINVAL);
	}
	assert_int_equal(cpio_add_file(w, NULL, 0644, "x", 1), -EINVAL);
	memset(long_path, 'a', CPIO_PATH_MAX);
	long_path[CPIO_PATH_MAX] = '\0';
	assert_int_equal(cpio_add_file(w, long_path, 0644, "x", 1), -EINVAL);
	long_path[CPIO_PATH_MAX - 1] = '\0'; /* the longest allowed */
	assert_int_equal(cpio_add_file(w, long_path, 0644, "x", 1), 0);
	/* Names that merely contain dots are fine. */
	assert_int_equal(cpio_add_file(w, "..a/b..", 0644, "x", 1), 0);
	assert_int_equal(cpio_add_symlink(w, "l", ""), -EINVAL);
	assert_int_equal(cpio_add_file_from_path(w, "f", 0644, "/nonexistent/vmhpc"), -ENOENT);
	assert_int_equal(cpio_add_file_from_path(w, "f", 0644, fx->dir), -EISDIR);

	/* Nothing refused left bytes behind: two good entries and the trailer. */
	assert_int_equal(cpio_finish(w, &data, &len), 0);
	/* 110 + 4096 (name) + 2 (pad) + 4 (data, padded) = 4212; 110 + 8 + 2 + 4 = 124;
	 * trailer 110 + 11 + 3 = 124; 4460 rounded up to 512 bytes. */
	assert_int_equal(len, 4608);
	assert_memory_equal((const char *)data + 110, long_path, CPIO_PATH_MAX - 1);
	cpio_writer_free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_cpio_bytes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cpio_gnu_cpio, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cpio_bad_input, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
