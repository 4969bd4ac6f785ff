#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zstd.h>

#include "image/builder.h"
#include "store/manifest.h"
#include "store/store.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "vm/materialize.h"

struct fixture {
	char *dir;	 /* the mkdtemp directory, removed at teardown */
	char *store_dir; /* dir/store */
	struct store *s;
};

static uint64_t prng_next(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* Random bytes with some runs of repeated text mixed in, so zstd has work to do. */
static uint8_t *test_data(size_t len, uint64_t seed)
{
	uint8_t *data = malloc(len + 8);

	assert_non_null(data);
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = prng_next(&seed);

		if ((i / 4096) % 3 == 0)
			memcpy(data + i, "vmhpc-xx", 8);
		else
			memcpy(data + i, &v, 8);
	}
	return data;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (!f)
		return 0;
	store_close(f->s);
	if (f->dir)
		fs_rm_rf(f->dir);
	free(f->store_dir);
	free(f->dir);
	free(f);
	return 0;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmpdir = getenv("TMPDIR");

	if (!f)
		return -1;
	*state = f;
	if (fs_mkdtemp(tmpdir && *tmpdir ? tmpdir : "/tmp", "test-store-", &f->dir) < 0)
		goto fail;
	f->store_dir = fs_path_join(f->dir, "store");
	if (!f->store_dir || store_open(f->store_dir, &f->s) < 0)
		goto fail;
	return 0;
fail:
	/* cmocka skips teardown when setup fails: clean up here. */
	teardown(state);
	*state = NULL;
	return -1;
}

static char *chunk_path(struct fixture *f, const uint8_t id[STORE_ID_BYTES])
{
	char hex[STORE_ID_HEX_LEN + 1];
	char *p = NULL;

	store_id_to_hex(id, hex);
	assert_true(asprintf(&p, "%s/chunks/%.2s/%s", f->store_dir, hex, hex) > 0);
	return p;
}

static void test_open_layout(void **state)
{
	struct fixture *f = *state;
	static const char *const subdirs[] = {"chunks", "tmp", "manifests"};
	struct store *s = NULL;
	char *file;
	struct stat st;
	int fd;

	for (size_t i = 0; i < 3; i++) {
		char *p = fs_path_join(f->store_dir, subdirs[i]);

		assert_int_equal(stat(p, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		free(p);
	}
	assert_string_equal(store_path(f->s), f->store_dir);

	/* Opening again is fine; opening a regular file is not. */
	assert_int_equal(store_open(f->store_dir, &s), 0);
	s = store_close(s);
	assert_null(s);
	assert_null(store_close(NULL));

	file = fs_path_join(f->dir, "plain-file");
	fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(store_open(file, &s), -ENOTDIR);
	assert_null(s);
	free(file);
}

static void test_hex(void **state)
{
	uint8_t id[STORE_ID_BYTES], back[STORE_ID_BYTES];
	char hex[STORE_ID_HEX_LEN + 1], bad[STORE_ID_HEX_LEN + 2];

	store_id_compute("abc", 3, id);
	store_id_to_hex(id, hex);
	assert_string_equal(hex,
			    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(store_id_from_hex(hex, back), 0);
	assert_memory_equal(id, back, STORE_ID_BYTES);

	assert_int_equal(store_id_from_hex("", back), -EINVAL);
	assert_int_equal(store_id_from_hex("ba7816bf", back), -EINVAL);
	memcpy(bad, hex, sizeof(hex));
	bad[10] = 'g';
	assert_int_equal(store_id_from_hex(bad, back), -EINVAL);
	memcpy(bad, hex, sizeof(hex));
	bad[STORE_ID_HEX_LEN] = '0';
	bad[STORE_ID_HEX_LEN + 1] = '\0';
	assert_int_equal(store_id_from_hex(bad, back), -EINVAL);
}

static void test_round_trip(void **state)
{
	struct fixture *f = *state;
	struct store_put_stats stats = {0};
	uint8_t *data = test_data(100000, 1);
	uint8_t id[STORE_ID_BYTES], expect[STORE_ID_BYTES];
	void *got = NULL;
	size_t got_len = 0;
	uint64_t stored = 0;

	assert_int_equal(store_put_chunk(f->s, data, 100000, id, &stats), 0);
	store_id_compute(data, 100000, expect);
	assert_memory_equal(id, expect, STORE_ID_BYTES);
	assert_true(store_has_chunk(f->s, id));
	assert_int_equal(stats.new_chunks, 1);
	assert_int_equal(stats.reused_chunks, 0);
	assert_int_equal(stats.plain_bytes, 100000);

	assert_int_equal(store_chunk_stored_bytes(f->s, id, &stored), 0);
	assert_int_equal(stored, stats.new_stored_bytes);
	assert_true(stored < 100000); /* a third of it is repeated text */

	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), 0);
	assert_int_equal(got_len, 100000);
	assert_memory_equal(got, data, 100000);
	free(got);

	/* The empty chunk is a chunk too. */
	assert_int_equal(store_put_chunk(f->s, "", 0, id, NULL), 0);
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), 0);
	assert_int_equal(got_len, 0);
	free(got);
	free(data);
}

static void test_reuse(void **state)
{
	struct fixture *f = *state;
	struct store_put_stats stats = {0};
	uint8_t *data = test_data(50000, 2);
	uint8_t id1[STORE_ID_BYTES], id2[STORE_ID_BYTES];
	uint64_t stored = 0;

	assert_int_equal(store_put_chunk(f->s, data, 50000, id1, &stats), 0);
	assert_int_equal(store_put_chunk(f->s, data, 50000, id2, &stats), 0);
	assert_memory_equal(id1, id2, STORE_ID_BYTES);
	assert_int_equal(stats.new_chunks, 1);
	assert_int_equal(stats.reused_chunks, 1);
	assert_int_equal(stats.plain_bytes, 100000);
	assert_int_equal(store_chunk_stored_bytes(f->s, id1, &stored), 0);
	assert_int_equal(stats.new_stored_bytes, stored);
	free(data);
}

/* Stores a chunk, applies damage to its file, and checks that get refuses it. */
static void check_damage(struct fixture *f, uint64_t seed, off_t flip_at, off_t truncate_to)
{
	uint8_t *data = test_data(70000, seed);
	uint8_t id[STORE_ID_BYTES];
	void *got = (void *)0x1;
	size_t got_len = 12345;
	char *path;
	struct stat st;
	int fd;

	assert_int_equal(store_put_chunk(f->s, data, 70000, id, NULL), 0);
	path = chunk_path(f, id);
	/* Chunk files are read-only; as non-root we must make this one writable first. */
	assert_int_equal(chmod(path, 0644), 0);
	fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	if (truncate_to >= 0) {
		assert_int_equal(ftruncate(fd, truncate_to), 0);
	} else {
		uint8_t b;
		off_t at = flip_at >= 0 ? flip_at : st.st_size + flip_at;

		assert_int_equal(pread(fd, &b, 1, at), 1);
		b ^= 0x20;
		assert_int_equal(pwrite(fd, &b, 1, at), 1);
	}
	close(fd);

	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), -EBADMSG);
	/* Outputs are untouched on failure. */
	assert_ptr_equal(got, (void *)0x1);
	assert_int_equal(got_len, 12345);
	free(path);
	free(data);
}

static void test_corrupt(void **state)
{
	struct fixture *f = *state;

	check_damage(f, 10, 0, -1);	/* magic number */
	check_damage(f, 11, 5, -1);	/* frame header: the content size */
	check_damage(f, 12, 20000, -1); /* inside a block */
	check_damage(f, 13, -1, -1);	/* last byte */
}

static void test_truncated(void **state)
{
	struct fixture *f = *state;

	check_damage(f, 20, 0, 1000);
	check_damage(f, 21, 0, 3);
	check_damage(f, 22, 0, 0);
}

static void test_missing(void **state)
{
	struct fixture *f = *state;
	uint8_t id[STORE_ID_BYTES];
	void *got = NULL;
	size_t got_len = 0;
	uint64_t stored;

	store_id_compute("not stored", 10, id);
	assert_false(store_has_chunk(f->s, id));
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), -ENOENT);
	assert_int_equal(store_get_compressed_chunk(f->s, id, &got, &got_len), -ENOENT);
	assert_int_equal(store_chunk_stored_bytes(f->s, id, &stored), -ENOENT);
	assert_int_equal(store_remove_chunk(f->s, id), 0);

	assert_int_equal(store_put_chunk(f->s, "now stored", 10, id, NULL), 0);
	assert_true(store_has_chunk(f->s, id));
	assert_int_equal(store_remove_chunk(f->s, id), 0);
	assert_false(store_has_chunk(f->s, id));
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), -ENOENT);
}

/* A zero-length chunk file (what a crash before writeback can leave) is rewritten, not reused. */
static void test_empty_file_rewritten(void **state)
{
	struct fixture *f = *state;
	struct store_put_stats stats = {0};
	uint8_t id[STORE_ID_BYTES];
	void *got = NULL;
	size_t got_len = 0;
	char *path;

	assert_int_equal(store_put_chunk(f->s, "some bytes", 10, id, NULL), 0);
	path = chunk_path(f, id);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(store_put_chunk(f->s, "some bytes", 10, id, &stats), 0);
	assert_int_equal(stats.new_chunks, 1);
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), 0);
	assert_int_equal(got_len, 10);
	free(got);
	free(path);
}

static void count_progress(uint64_t done_bytes, void *userdata)
{
	uint64_t *last = userdata;

	assert_true(done_bytes >= *last);
	*last = done_bytes;
}

static void test_put_fd_write_part(void **state)
{
	struct fixture *f = *state;
	const size_t len = 5u * 1000 * 1000 + 17;
	uint8_t *data = test_data(len, 3);
	struct store_part part = {0}, part2 = {0};
	struct store_put_stats stats = {0};
	char *in = fs_path_join(f->dir, "in"), *out = fs_path_join(f->dir, "out");
	char *back = NULL;
	size_t back_len = 0;
	uint64_t progress = 0, sum = 0;
	int fd;

	assert_int_equal(fs_write_atomic(in, data, len, 0644), 0);
	fd = open(in, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(store_put_fd(f->s, fd, NULL, &part, &stats, count_progress, &progress), 0);
	close(fd);

	assert_int_equal(part.size_bytes, len);
	assert_int_equal(progress, len);
	assert_true(part.n_chunks > 10);
	for (size_t i = 0; i < part.n_chunks; i++) {
		sum += part.chunks[i].size_bytes;
		assert_true(part.chunks[i].size_bytes <= CHUNKER_MAX_BYTES_DEFAULT);
	}
	assert_int_equal(sum, len);
	assert_int_equal(stats.plain_bytes, len);
	assert_int_equal(stats.new_chunks + stats.reused_chunks, part.n_chunks);

	/* The same bytes from memory give the same chunks, all of them already present. */
	memset(&stats, 0, sizeof(stats));
	assert_int_equal(store_put_buffer(f->s, data, len, NULL, &part2, &stats), 0);
	assert_int_equal(part2.n_chunks, part.n_chunks);
	assert_memory_equal(part2.chunks, part.chunks, part.n_chunks * sizeof(*part.chunks));
	assert_int_equal(stats.new_chunks, 0);
	assert_int_equal(stats.reused_chunks, part.n_chunks);

	fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(store_write_part(f->s, &part, fd), 0);
	close(fd);
	assert_int_equal(fs_read_file(out, 2 * len, &back, &back_len), 0);
	assert_int_equal(back_len, len);
	assert_memory_equal(back, data, len);

	assert_int_equal(store_sync(f->s), 0);

	/* A part whose sizes do not add up is refused; so is one naming a missing chunk. */
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	part.size_bytes++;
	assert_int_equal(store_write_part(f->s, &part, fd), -EBADMSG);
	part.size_bytes--;
	assert_int_equal(store_remove_chunk(f->s, part.chunks[part.n_chunks / 2].id), 0);
	assert_int_equal(store_write_part(f->s, &part, fd), -ENOENT);
	close(fd);

	store_part_done(&part);
	assert_int_equal(part.n_chunks, 0);
	assert_null(part.chunks);
	store_part_done(&part2);
	free(back);
	free(in);
	free(out);
	free(data);
}

static void test_put_empty(void **state)
{
	struct fixture *f = *state;
	struct store_part part = {0};
	struct chunker_params bad = {.min_bytes = 1, .avg_bytes = 2, .max_bytes = 3};
	int fd;

	assert_int_equal(store_put_buffer(f->s, NULL, 0, NULL, &part, NULL), 0);
	assert_int_equal(part.n_chunks, 0);
	assert_int_equal(part.size_bytes, 0);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(store_put_fd(f->s, fd, NULL, &part, NULL, NULL, NULL), 0);
	assert_int_equal(part.n_chunks, 0);
	assert_int_equal(store_put_fd(f->s, fd, &bad, &part, NULL, NULL, NULL), -EINVAL);
	close(fd);
}

static void test_put_compressed(void **state)
{
	struct fixture *f = *state;
	struct store_put_stats stats = {0};
	uint8_t *data = test_data(60000, 4);
	uint8_t id[STORE_ID_BYTES], other[STORE_ID_BYTES];
	void *comp = NULL, *got = NULL;
	size_t comp_len = 0, got_len = 0;
	struct store *s2 = NULL;
	char *dir2 = fs_path_join(f->dir, "store2");
	uint8_t *raw;
	size_t raw_len, bound = ZSTD_compressBound(60000);
	ZSTD_CCtx *cctx;

	assert_int_equal(store_put_chunk(f->s, data, 60000, id, NULL), 0);
	assert_int_equal(store_get_compressed_chunk(f->s, id, &comp, &comp_len), 0);
	assert_int_equal(store_open(dir2, &s2), 0);

	/* The wrong id, garbage, a truncated frame: all refused, nothing stored. */
	store_id_compute("something else", 14, other);
	assert_int_equal(store_put_compressed_chunk(s2, other, comp, comp_len, &stats), -EBADMSG);
	assert_false(store_has_chunk(s2, other));
	assert_int_equal(store_put_compressed_chunk(s2, id, data, 1000, &stats), -EBADMSG);
	assert_int_equal(store_put_compressed_chunk(s2, id, comp, comp_len - 1, &stats), -EBADMSG);
	assert_false(store_has_chunk(s2, id));

	/* A frame that does not declare its size is refused even when the bytes are right. */
	raw = malloc(bound);
	assert_non_null(raw);
	cctx = ZSTD_createCCtx();
	assert_non_null(cctx);
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
	raw_len = ZSTD_compress2(cctx, raw, bound, data, 60000);
	assert_false(ZSTD_isError(raw_len));
	assert_int_equal(ZSTD_getFrameContentSize(raw, raw_len), ZSTD_CONTENTSIZE_UNKNOWN);
	assert_int_equal(store_put_compressed_chunk(s2, id, raw, raw_len, &stats), -EBADMSG);
	ZSTD_freeCCtx(cctx);
	free(raw);
	assert_int_equal(stats.new_chunks, 0);

	assert_int_equal(store_put_compressed_chunk(s2, id, comp, comp_len, &stats), 0);
	assert_int_equal(stats.new_chunks, 1);
	assert_int_equal(stats.new_stored_bytes, comp_len);
	assert_int_equal(stats.plain_bytes, 60000);
	assert_int_equal(store_put_compressed_chunk(s2, id, comp, comp_len, &stats), 0);
	assert_int_equal(stats.reused_chunks, 1);
	assert_int_equal(store_get_chunk(s2, id, &got, &got_len), 0);
	assert_int_equal(got_len, 60000);
	assert_memory_equal(got, data, 60000);

	store_close(s2);
	free(got);
	free(comp);
	free(dir2);
	free(data);
}

struct id_set {
	uint8_t ids[16][STORE_ID_BYTES];
	size_t n;
	size_t seen;
	int stop_after;
};

static int collect(const uint8_t id[STORE_ID_BYTES], void *userdata)
{
	struct id_set *set = userdata;
	bool found = false;

	for (size_t i = 0; i < set->n; i++)
		found = found || memcmp(set->ids[i], id, STORE_ID_BYTES) == 0;
	assert_true(found);
	set->seen++;
	if (set->stop_after > 0 && set->seen >= (size_t)set->stop_after)
		return -ECANCELED;
	return 0;
}

static void touch(const char *dir, const char *name)
{
	char *p = fs_path_join(dir, name);
	int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	close(fd);
	free(p);
}

static void test_foreach(void **state)
{
	struct fixture *f = *state;
	struct id_set set = {0};
	char *chunks = fs_path_join(f->store_dir, "chunks");
	char *junk_dir, hex[STORE_ID_HEX_LEN + 1];

	assert_int_equal(store_foreach_chunk(f->s, collect, &set), 0);
	assert_int_equal(set.seen, 0);

	for (size_t i = 0; i < 16; i++) {
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "chunk number %zu", i);

		assert_int_equal(store_put_chunk(f->s, buf, (size_t)n, set.ids[i], NULL), 0);
	}
	set.n = 16;

	/* Things that are not chunks: stray names at both levels, a misplaced id. */
	touch(chunks, "README");
	junk_dir = fs_path_join(chunks, "zz");
	assert_int_equal(mkdir(junk_dir, 0755), 0);
	store_id_to_hex(set.ids[0], hex);
	touch(junk_dir, hex);
	free(junk_dir);
	junk_dir = fs_path_join(chunks, hex[0] == '0' ? "11" : "00");
	assert_int_equal(fs_mkdir_p(junk_dir, 0755), 0);
	touch(junk_dir, hex); /* right name, wrong prefix */
	touch(junk_dir, "not-a-chunk");
	hex[5] = 'X';
	touch(junk_dir, hex);
	free(junk_dir);

	assert_int_equal(store_foreach_chunk(f->s, collect, &set), 0);
	assert_int_equal(set.seen, 16);

	set.seen = 0;
	set.stop_after = 3;
	assert_int_equal(store_foreach_chunk(f->s, collect, &set), -ECANCELED);
	assert_int_equal(set.seen, 3);
	free(chunks);
}

static void test_clean_tmp(void **state)
{
	struct fixture *f = *state;
	char *tmp = fs_path_join(f->store_dir, "tmp");
	char *old = fs_path_join(tmp, "old.123.0"), *fresh = fs_path_join(tmp, "fresh.123.1");
	struct timespec times[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};

	touch(tmp, "old.123.0");
	touch(tmp, "fresh.123.1");
	assert_int_equal(utimensat(AT_FDCWD, old, times, 0), 0);
	assert_int_equal(store_clean_tmp(f->s, false), 0);
	assert_false(fs_exists(old));
	assert_true(fs_exists(fresh));
	/* Under the exclusive lock (gc) no writer lives: the fresh one goes too. */
	assert_int_equal(store_clean_tmp(f->s, true), 0);
	assert_false(fs_exists(fresh));
	free(old);
	free(fresh);
	free(tmp);
}

static void test_lock(void **state)
{
	struct fixture *f = *state;
	char *lock_path = fs_path_join(f->store_dir, "lock");
	int fd1 = -1, fd2 = -1, fd3 = -1, status;
	pid_t pid;

	assert_int_equal(store_lock(f->s, STORE_LOCK_WRITE, &fd1), 0);
	assert_int_equal(store_lock(f->s, STORE_LOCK_WRITE, &fd2), 0);
	assert_true(fd1 >= 0 && fd2 >= 0 && fd1 != fd2);
	assert_int_equal(store_lock(f->s, _STORE_LOCK_KIND_MAX, &fd3), -EINVAL);
	assert_int_equal(fd3, -1);

	/* An exclusive lock from another process must not be granted while writers hold it. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(lock_path, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			_exit(2);
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			_exit(1);
		_exit(errno == EWOULDBLOCK ? 0 : 3);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	close(fd1);
	close(fd2);
	assert_int_equal(store_lock(f->s, STORE_LOCK_COLLECT, &fd3), 0);
	/* ... and while collection holds it, a shared try fails. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(lock_path, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			_exit(2);
		if (flock(fd, LOCK_SH | LOCK_NB) == 0)
			_exit(1);
		_exit(errno == EWOULDBLOCK ? 0 : 3);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	close(fd3);
	free(lock_path);
}

/* A store belongs to one owner: directories 0700, chunks 0400; a store others could read
 * is closed to them when its owner opens it. */
static void test_private_modes(void **state)
{
	struct fixture *f = *state;
	static const char *const subdirs[] = {"", "chunks", "tmp", "manifests"};
	uint8_t id[STORE_ID_BYTES];
	struct store *s = NULL;
	struct stat st;
	char *path;

	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		path = fs_path_join(f->store_dir, subdirs[i]);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0700);
		free(path);
	}
	assert_int_equal(store_put_chunk(f->s, "private bytes", 13, id, NULL), 0);
	path = chunk_path(f, id);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0400);
	free(path);

	assert_int_equal(chmod(f->store_dir, 0755), 0);
	assert_int_equal(store_open(f->store_dir, &s), 0);
	store_close(s);
	assert_int_equal(stat(f->store_dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
}

static void flip_byte(const char *path, off_t at)
{
	uint8_t b;
	int fd;

	assert_int_equal(chmod(path, 0600), 0);
	fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, at), 1);
	b ^= 0x41;
	assert_int_equal(pwrite(fd, &b, 1, at), 1);
	close(fd);
}

/* A damaged chunk (not just an empty one) is found by the next put of the same bytes and
 * written again, by a plain put (a rebuild) and by a compressed put (a re-import). */
static void test_damaged_chunk_repaired(void **state)
{
	struct fixture *f = *state;
	uint8_t *data = test_data(70000, 77);
	struct store_put_stats stats = {0};
	uint8_t id[STORE_ID_BYTES];
	void *got = NULL, *compressed = NULL;
	size_t got_len = 0, clen = 0;
	char *path;

	assert_int_equal(store_put_chunk(f->s, data, 70000, id, NULL), 0);
	assert_int_equal(store_get_compressed_chunk(f->s, id, &compressed, &clen), 0);
	path = chunk_path(f, id);

	flip_byte(path, 20000);
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), -EBADMSG);
	assert_int_equal(store_put_chunk(f->s, data, 70000, id, &stats), 0);
	assert_int_equal(stats.repaired_chunks, 1);
	assert_int_equal(stats.new_chunks, 1);
	assert_int_equal(stats.reused_chunks, 0);
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), 0);
	assert_int_equal(got_len, 70000);
	assert_memory_equal(got, data, 70000);
	free(got);

	/* A whole chunk is reused, not rewritten. */
	memset(&stats, 0, sizeof(stats));
	assert_int_equal(store_put_chunk(f->s, data, 70000, id, &stats), 0);
	assert_int_equal(stats.reused_chunks, 1);
	assert_int_equal(stats.repaired_chunks, 0);

	flip_byte(path, 5);
	memset(&stats, 0, sizeof(stats));
	assert_int_equal(store_put_compressed_chunk(f->s, id, compressed, clen, &stats), 0);
	assert_int_equal(stats.repaired_chunks, 1);
	assert_int_equal(store_get_chunk(f->s, id, &got, &got_len), 0);
	assert_memory_equal(got, data, 70000);
	free(got);
	free(compressed);
	free(path);
	free(data);
}

/* Temp files beside a target never follow a link planted at a guessable name. */
static void test_temp_beside_never_follows(void **state)
{
	struct fixture *f = *state;
	char *target = fs_path_join(f->dir, "out.tar");
	char *victim = fs_path_join(f->dir, "victim");
	char *planted = NULL, *tmp = NULL, *text = NULL;
	struct stat st;
	int fd = -1;

	assert_true(asprintf(&planted, "%s.partial", target) > 0);
	assert_int_equal(fs_write_atomic(victim, "secret", 6, 0600), 0);
	assert_int_equal(symlink(victim, planted), 0);
	assert_int_equal(fs_open_temp_beside(target, 0600, &tmp, &fd), 0);
	assert_true(fd >= 0);
	assert_string_not_equal(tmp, planted);
	assert_int_equal(strncmp(tmp, target, strlen(target)), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(fs_write_all(fd, "tar bytes", 9), 0);
	close(fd);
	assert_int_equal(rename(tmp, target), 0);
	assert_int_equal(fs_read_file(victim, 100, &text, NULL), 0);
	assert_string_equal(text, "secret");
	free(text);
	assert_int_equal(lstat(planted, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	free(tmp);
	free(planted);
	free(victim);
	free(target);
}

/* Reading a fifo or a device returns at once with an error, never blocks or fills. */
static void test_read_file_special(void **state)
{
	struct fixture *f = *state;
	char *fifo = fs_path_join(f->dir, "fifo"), *link = fs_path_join(f->dir, "link");
	char *dst = fs_path_join(f->dir, "copy");
	char *text = NULL;

	assert_int_equal(mkfifo(fifo, 0600), 0);
	alarm(20); /* a hang fails the test instead of blocking the suite */
	assert_int_equal(fs_read_file(fifo, 100, &text, NULL), -EINVAL);
	assert_int_equal(fs_copy_file(fifo, dst, 0600), -EINVAL);
	assert_int_equal(fs_copy_file("/dev/zero", dst, 0600), -EINVAL);
	assert_false(fs_exists(dst));
	assert_int_equal(fs_read_file(f->dir, 100, &text, NULL), -EISDIR);
	assert_int_equal(symlink("/etc/hostname", link), 0);
	assert_int_equal(fs_read_file_nofollow(link, 100, &text, NULL), -ELOOP);
	alarm(0);
	assert_null(text);
	free(fifo);
	free(link);
	free(dst);
}

/* Reading with another identity: what that user may not read fails, and our own rights
 * come back afterwards. Needs root (CAP_SETUID); without it the switch is refused. */
static void test_identity(void **state)
{
	struct fixture *f = *state;
	char *secret = fs_path_join(f->dir, "secret");
	const gid_t groups[] = {65534};
	const struct fs_identity nobody = {
	    .uid = 65534, .gid = 65534, .groups = groups, .n_groups = 1};
	struct fs_identity_saved saved;
	int fd;

	assert_int_equal(fs_write_atomic(secret, "x", 1, 0600), 0);
	assert_int_equal(fs_identity_enter(NULL, &saved), 0);
	assert_false(saved.active);
	fs_identity_leave(&saved);
	if (geteuid() != 0) {
		assert_int_equal(fs_identity_enter(&nobody, &saved), -EPERM);
		free(secret);
		return;
	}
	/* The fixture's directory is 0700 and root's: let nobody reach the file. */
	assert_int_equal(chmod(f->dir, 0711), 0);
	assert_int_equal(fs_identity_enter(&nobody, &saved), 0);
	fd = open(secret, O_RDONLY | O_CLOEXEC);
	assert_int_equal(fd, -1);
	assert_int_equal(errno, EACCES);
	fs_identity_leave(&saved);
	fd = open(secret, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(getgroups(0, NULL) >= 0, 1);
	free(secret);
}

/* A one-part-per-kind manifest whose parts are really in the store. */
static struct manifest *stored_manifest(struct fixture *f)
{
	struct manifest *m = manifest_new();

	assert_non_null(m);
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		size_t len = 100000 + 1000 * (size_t)p;
		uint8_t *data = test_data(len, 500 + (uint64_t)p);

		assert_int_equal(store_put_buffer(f->s, data, len, NULL, &m->parts[p], NULL), 0);
		free(data);
	}
	return m;
}

/* A damaged node-cache part (truncated, or a byte changed) is written again by the next
 * materialize, and materialize_check finds and removes one. */
static void test_materialize_repairs_cache(void **state)
{
	struct fixture *f = *state;
	struct manifest *m = stored_manifest(f);
	char *cache = fs_path_join(f->dir, "node");
	struct materialized_image mi = {0};
	char *error = NULL;
	unsigned damaged = 99;
	struct stat st;

	assert_int_equal(materialize_image(f->s, m, cache, &mi, &error), 0);
	assert_true(mi.written);
	assert_int_equal(stat(mi.kernel_path, &st), 0);
	assert_int_equal((uint64_t)st.st_size, m->parts[MANIFEST_PART_KERNEL].size_bytes);
	materialized_image_done(&mi);

	assert_int_equal(materialize_image(f->s, m, cache, &mi, &error), 0);
	assert_false(mi.written);
	assert_int_equal(materialize_check(m, cache, false, &damaged, &error), 0);
	assert_int_equal(damaged, 0);

	/* Truncated: rewritten whole. */
	assert_int_equal(chmod(mi.kernel_path, 0600), 0);
	assert_int_equal(truncate(mi.kernel_path, 4096), 0);
	materialized_image_done(&mi);
	assert_int_equal(materialize_image(f->s, m, cache, &mi, &error), 0);
	assert_true(mi.written);
	assert_int_equal(stat(mi.kernel_path, &st), 0);
	assert_int_equal((uint64_t)st.st_size, m->parts[MANIFEST_PART_KERNEL].size_bytes);

	/* Same size, one byte changed: found too. */
	flip_byte(mi.root_path, 50000);
	assert_int_equal(materialize_check(m, cache, false, &damaged, &error), 0);
	assert_int_equal(damaged, 1);
	assert_true(fs_exists(mi.root_path));
	assert_int_equal(materialize_check(m, cache, true, &damaged, &error), 0);
	assert_int_equal(damaged, 1);
	assert_false(fs_exists(mi.root_path));
	materialized_image_done(&mi);
	assert_int_equal(materialize_image(f->s, m, cache, &mi, &error), 0);
	assert_true(mi.written);
	assert_int_equal(materialize_check(m, cache, false, &damaged, &error), 0);
	assert_int_equal(damaged, 0);
	assert_null(error);
	materialized_image_done(&mi);
	manifest_free(m);
	free(cache);
}

static char *make_work_dir(struct fixture *f, const char *name, const char *lock)
{
	char *dir = NULL;

	assert_true(asprintf(&dir, "%s/tmp/%s", f->store_dir, name) > 0);
	assert_int_equal(mkdir(dir, 0700), 0);
	if (lock) {
		char *p = fs_path_join(dir, lock);

		assert_int_equal(fs_write_atomic(p, "", 0, 0600), 0);
		free(p);
	}
	return dir;
}

/* Stale-build cleanup removes only dead builds: a directory whose lock file is held, or
 * that has no lock file yet and is young (a build setting up), stays. */
static void test_clean_stale_work_dirs(void **state)
{
	struct fixture *f = *state;
	char *live = make_work_dir(f, "build-live00", ".lock");
	char *dead = make_work_dir(f, "build-dead00", ".lock");
	char *setup = make_work_dir(f, "build-setup0", NULL);
	char *old = make_work_dir(f, "build-old000", NULL);
	char *lock = fs_path_join(live, ".lock");
	struct timeval times[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
	int fd = open(lock, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX), 0);
	assert_int_equal(utimes(old, times), 0);
	assert_int_equal(builder_clean_stale(f->s), 0);
	assert_true(fs_exists(live));
	assert_true(fs_exists(setup));
	assert_false(fs_exists(dead));
	assert_false(fs_exists(old));
	close(fd);
	assert_int_equal(builder_clean_stale(f->s), 0);
	assert_false(fs_exists(live));
	free(live);
	free(dead);
	free(setup);
	free(old);
	free(lock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_open_layout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hex, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reuse, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_empty_file_rewritten, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_put_fd_write_part, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_put_empty, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_put_compressed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreach, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_clean_tmp, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_private_modes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_damaged_chunk_repaired, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_temp_beside_never_follows, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_read_file_special, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_identity, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_materialize_repairs_cache, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_clean_stale_work_dirs, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
