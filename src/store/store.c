#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"

/* A store belongs to one owner (docs/store.md): an image may hold files only its builder
 * could read, so nobody else may read the store. */
#define STORE_DIR_MODE		 0700
#define STORE_ZSTD_LEVEL_DEFAULT 3
/* Chunks are immutable once named: read-only files make an accidental write fail loudly. */
#define STORE_CHUNK_MODE	   0400
#define STORE_TMP_MAX_AGE_S	   60
#define STORE_PROGRESS_EVERY_BYTES (8u * 1024 * 1024)
/* store_put_fd reads in large blocks so that the memmove of the unchunked tail is rare. */
#define STORE_READ_BUFFER_MIN_BYTES (8u * 1024 * 1024)

struct store {
	char *path;
	int dir_fd;
	int chunks_fd;
	int tmp_fd;
	int level;
	/* Reused across calls: a zstd context is ~1 MiB of tables, and allocating one per
	 * 64 KiB chunk would cost more than compressing it. This makes a struct store
	 * single-threaded; concurrent writers each open their own. */
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	void *cbuf; /* compressed bytes on their way to or from disk */
	size_t cbuf_size;
	void *pbuf; /* plain bytes for store_write_part */
	size_t pbuf_size;
};

/* Temp names must be unique among live writers: the pid separates processes, this counter
 * the calls of one process (several stores, several threads). */
static atomic_uint store_tmp_counter;

static void store_chunk_name(const uint8_t id[STORE_ID_BYTES], char out[STORE_ID_HEX_LEN + 4])
{
	char hex[STORE_ID_HEX_LEN + 1];

	store_id_to_hex(id, hex);
	out[0] = hex[0];
	out[1] = hex[1];
	out[2] = '/';
	memcpy(out + 3, hex, STORE_ID_HEX_LEN + 1);
}

static int store_grow(void **buf, size_t *size, size_t need)
{
	void *p;

	if (*size >= need)
		return 0;
	p = realloc(*buf, need);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*size = need;
	return 0;
}

/* Creates name under at_fd if missing; anything there that is not a directory is an error. */
static int store_mkdirat(int at_fd, const char *name)
{
	struct stat st;

	if (mkdirat(at_fd, name, STORE_DIR_MODE) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	if (fstatat(at_fd, name, &st, 0) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int store_open_subdir(int dir_fd, const char *name, int *ret_fd)
{
	int r, fd;

	r = store_mkdirat(dir_fd, name);
	if (r < 0)
		return r;
	fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

/* A store made before stores were private (0755) is closed to others the first time its
 * owner opens it: the top directory's mode alone guards everything below it. Someone
 * else's store is left as it is; its owner decides. */
static int store_tighten(int dir_fd)
{
	struct stat st;

	if (fstat(dir_fd, &st) < 0)
		return -errno;
	if (st.st_uid != geteuid() || (st.st_mode & 077) == 0)
		return 0;
	if (fchmod(dir_fd, STORE_DIR_MODE) < 0)
		return -errno;
	return 0;
}

int store_open(const char *dir, struct store **ret_store)
{
	struct store *s;
	int r, manifests_fd = -1;

	if (!dir || !*dir || !ret_store)
		return -EINVAL;
	r = fs_mkdir_p(dir, STORE_DIR_MODE);
	if (r < 0)
		return log_debug_errno(r, "creating store directory %s: %m", dir);

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir_fd = s->chunks_fd = s->tmp_fd = -1;
	s->level = STORE_ZSTD_LEVEL_DEFAULT;
	s->path = strdup(dir);
	if (!s->path) {
		r = -ENOMEM;
		goto fail;
	}
	s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dir_fd < 0) {
		r = -errno;
		goto fail;
	}
	r = store_tighten(s->dir_fd);
	if (r < 0)
		goto fail;
	r = store_open_subdir(s->dir_fd, "chunks", &s->chunks_fd);
	if (r < 0)
		goto fail;
	r = store_open_subdir(s->dir_fd, "tmp", &s->tmp_fd);
	if (r < 0)
		goto fail;
	/* The catalog keeps manifests here; created now so that a fresh store is complete. */
	r = store_open_subdir(s->dir_fd, "manifests", &manifests_fd);
	if (r < 0)
		goto fail;
	close(manifests_fd);

	s->cctx = ZSTD_createCCtx();
	s->dctx = ZSTD_createDCtx();
	if (!s->cctx || !s->dctx) {
		r = -ENOMEM;
		goto fail;
	}
	*ret_store = s;
	return 0;
fail:
	log_debug_errno(r, "opening store %s: %m", dir);
	store_close(s);
	return r;
}

struct store *store_close(struct store *s)
{
	if (!s)
		return NULL;
	if (s->dir_fd >= 0)
		close(s->dir_fd);
	if (s->chunks_fd >= 0)
		close(s->chunks_fd);
	if (s->tmp_fd >= 0)
		close(s->tmp_fd);
	ZSTD_freeCCtx(s->cctx);
	ZSTD_freeDCtx(s->dctx);
	free(s->cbuf);
	free(s->pbuf);
	free(s->path);
	free(s);
	return NULL;
}

const char *store_path(const struct store *s)
{
	return s->path;
}

void store_set_compression_level(struct store *s, int level)
{
	if (level < ZSTD_minCLevel())
		level = ZSTD_minCLevel();
	if (level > ZSTD_maxCLevel())
		level = ZSTD_maxCLevel();
	s->level = level;
}

void store_id_to_hex(const uint8_t id[STORE_ID_BYTES], char out[STORE_ID_HEX_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < STORE_ID_BYTES; i++) {
		out[2 * i] = digits[id[i] >> 4];
		out[2 * i + 1] = digits[id[i] & 0xf];
	}
	out[STORE_ID_HEX_LEN] = '\0';
}

static int store_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int store_id_from_hex(const char *hex, uint8_t id[STORE_ID_BYTES])
{
	uint8_t tmp[STORE_ID_BYTES];

	if (!hex)
		return -EINVAL;
	for (size_t i = 0; i < STORE_ID_BYTES; i++) {
		int hi, lo;

		/* A NUL stops here too: hex[2 * i + 1] is never read past the terminator. */
		hi = store_hex_digit(hex[2 * i]);
		if (hi < 0)
			return -EINVAL;
		lo = store_hex_digit(hex[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		tmp[i] = (uint8_t)(hi << 4 | lo);
	}
	if (hex[STORE_ID_HEX_LEN] != '\0')
		return -EINVAL;
	memcpy(id, tmp, sizeof(tmp));
	return 0;
}

/* Names as written by the store: lowercase only, so that one id has one path. */
static bool store_is_lower_hex(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[len] == '\0';
}

void store_id_compute(const void *data, size_t len, uint8_t id[STORE_ID_BYTES])
{
	unsigned int n = 0;

	/* Cannot fail for SHA-256 short of a broken libcrypto; a zeroed id then fails every
	 * later verification instead of passing silently. */
	if (!EVP_Digest(data, len, id, &n, EVP_sha256(), NULL) || n != STORE_ID_BYTES)
		memset(id, 0, STORE_ID_BYTES);
}

/* Checks that compressed is exactly one zstd frame whose declared size is at most
 * STORE_CHUNK_MAX_BYTES, and returns that size. */
static int store_frame_size(const void *compressed, size_t len, size_t *ret_size)
{
	unsigned long long content;
	size_t frame;

	content = ZSTD_getFrameContentSize(compressed, len);
	if (content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR)
		return -EBADMSG;
	if (content > STORE_CHUNK_MAX_BYTES)
		return -EBADMSG;
	frame = ZSTD_findFrameCompressedSize(compressed, len);
	if (ZSTD_isError(frame) || frame != len)
		return -EBADMSG;
	*ret_size = (size_t)content;
	return 0;
}

/* Decompresses one frame into dst (cap from store_frame_size) and checks it hashes to id. */
static int store_decompress_verify(struct store *s, const uint8_t id[STORE_ID_BYTES],
				   const void *compressed, size_t len, void *dst, size_t plain)
{
	uint8_t got[STORE_ID_BYTES];
	size_t n;

	n = ZSTD_decompressDCtx(s->dctx, dst, plain, compressed, len);
	if (ZSTD_isError(n) || n != plain)
		return -EBADMSG;
	store_id_compute(dst, plain, got);
	if (memcmp(got, id, STORE_ID_BYTES) != 0)
		return -EBADMSG;
	return 0;
}

/* Reads a chunk file's bytes into s->cbuf. */
static int store_read_compressed(struct store *s, const uint8_t id[STORE_ID_BYTES], size_t *ret_len)
{
	char name[STORE_ID_HEX_LEN + 4];
	_cleanup_close_ int fd = -1;
	struct stat st;
	ssize_t n;
	int r;

	store_chunk_name(id, name);
	fd = openat(s->chunks_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADMSG;
	/* A frame holding at most STORE_CHUNK_MAX_BYTES cannot be bigger than this. */
	if ((uint64_t)st.st_size > ZSTD_compressBound(STORE_CHUNK_MAX_BYTES))
		return -EBADMSG;
	/* One byte more than the file, to notice it growing under us. */
	r = store_grow(&s->cbuf, &s->cbuf_size, (size_t)st.st_size + 1);
	if (r < 0)
		return r;
	n = fs_read_full(fd, s->cbuf, (size_t)st.st_size + 1);
	if (n < 0)
		return (int)n;
	if (n != st.st_size)
		return -EBADMSG;
	*ret_len = (size_t)n;
	return 0;
}

int store_get_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES], void **ret_data,
		    size_t *ret_len)
{
	_cleanup_free_ void *plain = NULL;
	size_t clen, size;
	int r;

	r = store_read_compressed(s, id, &clen);
	if (r < 0)
		return r;
	r = store_frame_size(s->cbuf, clen, &size);
	if (r < 0)
		return r;
	plain = malloc(size ? size : 1);
	if (!plain)
		return -ENOMEM;
	r = store_decompress_verify(s, id, s->cbuf, clen, plain, size);
	if (r < 0)
		return r;
	*ret_data = TAKE_PTR(plain);
	*ret_len = size;
	return 0;
}

int store_get_compressed_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES], void **ret_data,
			       size_t *ret_len)
{
	void *copy;
	size_t clen;
	int r;

	r = store_read_compressed(s, id, &clen);
	if (r < 0)
		return r;
	copy = malloc(clen ? clen : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, s->cbuf, clen);
	*ret_data = copy;
	*ret_len = clen;
	return 0;
}

bool store_has_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES])
{
	char name[STORE_ID_HEX_LEN + 4];
	struct stat st;

	store_chunk_name(id, name);
	return fstatat(s->chunks_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

int store_chunk_stored_bytes(struct store *s, const uint8_t id[STORE_ID_BYTES], uint64_t *ret_bytes)
{
	char name[STORE_ID_HEX_LEN + 4];
	struct stat st;

	store_chunk_name(id, name);
	if (fstatat(s->chunks_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	*ret_bytes = (uint64_t)st.st_size;
	return 0;
}

int store_remove_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES])
{
	char name[STORE_ID_HEX_LEN + 4];

	store_chunk_name(id, name);
	if (unlinkat(s->chunks_fd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

/* Checks the chunk file already under id's name: 0 when it decompresses and hashes to id,
 * -ENOENT when there is none, -EBADMSG when it is damaged (a zero-length file, which a
 * crash between rename and writeback leaves on ext4 and xfs, see store_chunk_commit; a
 * flipped bit; a truncation), so that the put writes it again and a rebuild or re-import
 * repairs the store. Checking only that the file exists would trust a damaged chunk
 * forever. The cost is one read, decompression and SHA-256 of at most 256 KiB per reused
 * chunk: far less than compressing a new one at the builder's level 19, and a rebuild
 * reads the store no more than `verify` does. */
static int store_chunk_check(struct store *s, const uint8_t id[STORE_ID_BYTES])
{
	size_t clen, size;
	int r;

	r = store_read_compressed(s, id, &clen);
	if (r < 0)
		return r == -ELOOP ? -EBADMSG : r;
	r = store_frame_size(s->cbuf, clen, &size);
	if (r < 0)
		return r;
	r = store_grow(&s->pbuf, &s->pbuf_size, size ? size : 1);
	if (r < 0)
		return r;
	return store_decompress_verify(s, id, s->cbuf, clen, s->pbuf, size);
}

/* True when the put can reuse the chunk already stored; false when it must write it (absent
 * or damaged: the rename then replaces the damaged file). Errors other than damage (EIO,
 * ENOMEM) are returned. */
static int store_chunk_reusable(struct store *s, const uint8_t id[STORE_ID_BYTES],
				struct store_put_stats *stats, bool *ret_reuse)
{
	int r = store_chunk_check(s, id);

	*ret_reuse = r == 0;
	if (r == -EBADMSG) {
		log_debug("chunk file for this id is damaged; writing it again");
		if (stats)
			stats->repaired_chunks++;
		return 0;
	}
	return r == -ENOENT ? 0 : r;
}

/* Writes compressed under the chunk's name, atomically: a temp file in tmp/, then rename.
 *
 * There is deliberately no fsync here. An fsync per 64 KiB chunk is a journal commit each
 * and would cap a put at a few thousand chunks per second. Nothing depends on one chunk
 * being durable on its own: a chunk matters only once a manifest names it, and the
 * catalog calls store_sync() (one syncfs for everything written so far) before it
 * commits a manifest. A crash before that can lose a chunk or, with delayed allocation
 * (ext4, xfs), leave it empty; no manifest names it yet, and the next put rewrites it
 * (store_chunk_present). Any other damage fails verification on read. */
static int store_chunk_commit(struct store *s, const char *name, const void *compressed, size_t len,
			      bool start_writeback)
{
	char tmp[STORE_ID_HEX_LEN + 64];
	char sub[3] = {name[0], name[1], '\0'};
	int fd = -1, r;

	for (int attempt = 0;; attempt++) {
		snprintf(tmp, sizeof(tmp), "%.16s.%ld.%u", name + 3, (long)getpid(),
			 atomic_fetch_add(&store_tmp_counter, 1));
		/* O_EXCL|O_NOFOLLOW: never write through anything already at the name. */
		fd = openat(s->tmp_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    STORE_CHUNK_MODE);
		if (fd >= 0)
			break;
		/* EEXIST: the leftover of a dead process that had our pid; take the next name. */
		if (errno != EEXIST || attempt >= 100)
			return -errno;
	}

	r = fs_write_all(fd, compressed, len);
	/* A received chunk's bytes start for the disk now (without waiting for them): the
	 * commit's one syncfs then finds little left to write, instead of every chunk of the
	 * version at once (a node fetching an image sat ~0.3 s in it, docs/node.md). */
	if (r == 0 && start_writeback)
		(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		goto fail;

	if (renameat(s->tmp_fd, tmp, s->chunks_fd, name) < 0) {
		if (errno != ENOENT) {
			r = -errno;
			goto fail;
		}
		/* The first chunk of this prefix: make its directory and try again. */
		r = store_mkdirat(s->chunks_fd, sub);
		if (r < 0)
			goto fail;
		if (renameat(s->tmp_fd, tmp, s->chunks_fd, name) < 0) {
			r = -errno;
			goto fail;
		}
	}
	return 0;
fail:
	(void)unlinkat(s->tmp_fd, tmp, 0);
	return r;
}

int store_put_chunk(struct store *s, const void *data, size_t len, uint8_t ret_id[STORE_ID_BYTES],
		    struct store_put_stats *stats)
{
	char name[STORE_ID_HEX_LEN + 4];
	uint8_t id[STORE_ID_BYTES];
	size_t clen;
	bool reuse;
	int r;

	if (len > STORE_CHUNK_MAX_BYTES)
		return -EFBIG;
	store_id_compute(data, len, id);
	store_chunk_name(id, name);

	r = store_chunk_reusable(s, id, stats, &reuse);
	if (r < 0)
		return r;
	if (reuse) {
		if (stats) {
			stats->plain_bytes += len;
			stats->reused_chunks++;
		}
		memcpy(ret_id, id, STORE_ID_BYTES);
		return 0;
	}

	r = store_grow(&s->cbuf, &s->cbuf_size, ZSTD_compressBound(len));
	if (r < 0)
		return r;
	/* ZSTD_compressCCtx writes the content size into the frame header, which is what
	 * store_frame_size insists on when reading. */
	clen = ZSTD_compressCCtx(s->cctx, s->cbuf, s->cbuf_size, data, len, s->level);
	if (ZSTD_isError(clen)) {
		log_debug("compressing chunk: %s", ZSTD_getErrorName(clen));
		return -EIO;
	}
	r = store_chunk_commit(s, name, s->cbuf, clen, false);
	if (r < 0)
		return r;
	if (stats) {
		stats->plain_bytes += len;
		stats->new_chunks++;
		stats->new_stored_bytes += clen;
	}
	memcpy(ret_id, id, STORE_ID_BYTES);
	return 0;
}

int store_put_compressed_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES],
			       const void *compressed, size_t len, struct store_put_stats *stats)
{
	_cleanup_free_ void *plain = NULL;
	char name[STORE_ID_HEX_LEN + 4];
	size_t size;
	bool reuse;
	int r;

	r = store_frame_size(compressed, len, &size);
	if (r < 0)
		return r;
	plain = malloc(size ? size : 1);
	if (!plain)
		return -ENOMEM;
	r = store_decompress_verify(s, id, compressed, len, plain, size);
	if (r < 0)
		return r;

	store_chunk_name(id, name);
	r = store_chunk_reusable(s, id, stats, &reuse);
	if (r < 0)
		return r;
	if (reuse) {
		if (stats) {
			stats->plain_bytes += size;
			stats->reused_chunks++;
		}
		return 0;
	}
	r = store_chunk_commit(s, name, compressed, len, true);
	if (r < 0)
		return r;
	if (stats) {
		stats->plain_bytes += size;
		stats->new_chunks++;
		stats->new_stored_bytes += len;
	}
	return 0;
}

/* Opens the directory name under dirfd for reading (flags: O_NOFOLLOW or 0); NULL with errno
 * set when it cannot. The caller closedir()s it. */
static DIR *open_dir_at(int dirfd, const char *name, int flags)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | flags);
	DIR *d;

	if (fd < 0)
		return NULL;
	d = fdopendir(fd);
	if (!d) {
		int e = errno;

		close(fd);
		errno = e;
	}
	return d;
}

int store_foreach_chunk(struct store *s,
			int (*fn)(const uint8_t id[STORE_ID_BYTES], void *userdata), void *userdata)
{
	DIR *top = open_dir_at(s->chunks_fd, ".", 0);
	struct dirent *de;
	int r = 0;

	if (!top)
		return -errno;
	while (r >= 0 && (errno = 0, de = readdir(top))) {
		DIR *sub;
		struct dirent *se;

		if (!store_is_lower_hex(de->d_name, 2))
			continue;
		sub = open_dir_at(dirfd(top), de->d_name, O_NOFOLLOW);
		if (!sub) {
			if (errno == ENOTDIR || errno == ELOOP || errno == ENOENT)
				continue;
			r = -errno;
			break;
		}
		while ((errno = 0, se = readdir(sub))) {
			uint8_t id[STORE_ID_BYTES];

			if (se->d_type != DT_REG && se->d_type != DT_UNKNOWN)
				continue;
			/* A file under the wrong prefix has no path get could find: skip it. */
			if (!store_is_lower_hex(se->d_name, STORE_ID_HEX_LEN) ||
			    memcmp(se->d_name, de->d_name, 2) != 0)
				continue;
			if (store_id_from_hex(se->d_name, id) < 0)
				continue;
			r = fn(id, userdata);
			if (r < 0)
				break;
		}
		if (r >= 0 && errno != 0)
			r = -errno;
		closedir(sub);
	}
	if (r >= 0 && errno != 0)
		r = -errno;
	closedir(top);
	return r < 0 ? r : 0;
}

static int store_part_append(struct store_part *part, size_t *cap, const uint8_t id[STORE_ID_BYTES],
			     size_t len)
{
	if (part->n_chunks == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct store_chunk_ref *p;

		p = reallocarray(part->chunks, ncap, sizeof(*p));
		if (!p)
			return -ENOMEM;
		part->chunks = p;
		*cap = ncap;
	}
	memcpy(part->chunks[part->n_chunks].id, id, STORE_ID_BYTES);
	part->chunks[part->n_chunks].size_bytes = (uint32_t)len;
	part->n_chunks++;
	part->size_bytes += len;
	return 0;
}

/* Chunks data[0..len) into part; `final` says no more bytes follow, so the tail may be
 * cut short. Returns the bytes consumed. */
static ssize_t store_put_span(struct store *s, const struct chunker_params *params,
			      const uint8_t *data, size_t len, bool final, struct store_part *part,
			      size_t *cap, struct store_put_stats *stats)
{
	size_t pos = 0;

	while (pos < len && (final || len - pos >= params->max_bytes)) {
		uint8_t id[STORE_ID_BYTES];
		size_t n = chunker_next(params, data + pos, len - pos);
		int r;

		r = store_put_chunk(s, data + pos, n, id, stats);
		if (r < 0)
			return r;
		r = store_part_append(part, cap, id, n);
		if (r < 0)
			return r;
		pos += n;
	}
	return (ssize_t)pos;
}

int store_put_fd(struct store *s, int fd, const struct chunker_params *params,
		 struct store_part *ret_part, struct store_put_stats *stats,
		 store_progress_fn progress, void *userdata)
{
	struct store_part part = {0};
	struct chunker_params defaults;
	_cleanup_free_ uint8_t *buf = NULL;
	size_t buf_size, fill = 0, cap = 0;
	uint64_t next_progress = STORE_PROGRESS_EVERY_BYTES;
	bool eof = false;
	int r;

	if (!params) {
		chunker_params_default(&defaults);
		params = &defaults;
	}
	r = chunker_params_validate(params);
	if (r < 0)
		return r;

	/* At least two maximal chunks, so that each refill makes room for a whole one. */
	buf_size = 2 * params->max_bytes;
	if (buf_size < STORE_READ_BUFFER_MIN_BYTES)
		buf_size = STORE_READ_BUFFER_MIN_BYTES;
	buf = malloc(buf_size);
	if (!buf)
		return -ENOMEM;

	while (!eof) {
		ssize_t n = fs_read_full(fd, buf + fill, buf_size - fill);

		if (n < 0) {
			r = (int)n;
			goto fail;
		}
		fill += (size_t)n;
		eof = fill < buf_size;

		n = store_put_span(s, params, buf, fill, eof, &part, &cap, stats);
		if (n < 0) {
			r = (int)n;
			goto fail;
		}
		/* Fewer than max_bytes remain (or none, at the end): keep them for the next cut. */
		memmove(buf, buf + n, fill - (size_t)n);
		fill -= (size_t)n;

		if (progress && part.size_bytes >= next_progress) {
			progress(part.size_bytes, userdata);
			next_progress = part.size_bytes + STORE_PROGRESS_EVERY_BYTES;
		}
	}
	if (progress)
		progress(part.size_bytes, userdata);
	*ret_part = part;
	return 0;
fail:
	store_part_done(&part);
	return r;
}

int store_put_buffer(struct store *s, const void *data, size_t len,
		     const struct chunker_params *params, struct store_part *ret_part,
		     struct store_put_stats *stats)
{
	struct store_part part = {0};
	struct chunker_params defaults;
	size_t cap = 0;
	ssize_t n;
	int r;

	if (!params) {
		chunker_params_default(&defaults);
		params = &defaults;
	}
	r = chunker_params_validate(params);
	if (r < 0)
		return r;
	if (len > 0 && !data)
		return -EINVAL;

	n = store_put_span(s, params, data, len, true, &part, &cap, stats);
	if (n < 0) {
		store_part_done(&part);
		return (int)n;
	}
	*ret_part = part;
	return 0;
}

int store_write_part(struct store *s, const struct store_part *part, int fd)
{
	uint64_t total = 0;
	int r;

	for (size_t i = 0; i < part->n_chunks; i++)
		total += part->chunks[i].size_bytes;
	if (total != part->size_bytes)
		return -EBADMSG;

	for (size_t i = 0; i < part->n_chunks; i++) {
		const struct store_chunk_ref *ref = &part->chunks[i];
		size_t clen, size;

		r = store_read_compressed(s, ref->id, &clen);
		if (r < 0)
			return r;
		r = store_frame_size(s->cbuf, clen, &size);
		if (r < 0)
			return r;
		if (size != ref->size_bytes)
			return -EBADMSG;
		r = store_grow(&s->pbuf, &s->pbuf_size, size ? size : 1);
		if (r < 0)
			return r;
		r = store_decompress_verify(s, ref->id, s->cbuf, clen, s->pbuf, size);
		if (r < 0)
			return r;
		r = fs_write_all(fd, s->pbuf, size);
		if (r < 0)
			return r;
	}
	return 0;
}

void store_part_done(struct store_part *part)
{
	if (!part)
		return;
	free(part->chunks);
	*part = (struct store_part){0};
}

int store_sync(struct store *s)
{
	if (syncfs(s->dir_fd) < 0)
		return -errno;
	return 0;
}

int store_clean_tmp(struct store *s, bool exclusive)
{
	DIR *d = open_dir_at(s->tmp_fd, ".", 0);
	struct dirent *de;
	time_t now = time(NULL);
	int r = 0;

	if (!d)
		return -errno;
	while ((errno = 0, de = readdir(d))) {
		struct stat st;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed by someone else meanwhile */
		if (S_ISDIR(st.st_mode))
			continue;
		/* A live writer touches its temp file within milliseconds; a minute-old one
		 * belongs to a writer that died. Under the exclusive lock no writer lives. */
		if (!exclusive && now - st.st_mtime < STORE_TMP_MAX_AGE_S)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT) {
			r = -errno;
			break;
		}
		log_debug("removed stale temp file %s/tmp/%s", s->path, de->d_name);
	}
	if (r == 0 && errno != 0)
		r = -errno;
	closedir(d);
	return r;
}

int store_lock(struct store *s, enum store_lock_kind kind, int *ret_fd)
{
	_cleanup_close_ int fd = -1;
	int op;

	switch (kind) {
	case STORE_LOCK_WRITE:
		op = LOCK_SH;
		break;
	case STORE_LOCK_COLLECT:
		op = LOCK_EX;
		break;
	default:
		return -EINVAL;
	}
	fd = openat(s->dir_fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	/* flock works on a read-only fd too: a user who may not create the file can still
	 * lock a store someone else set up. */
	if (fd < 0 && (errno == EACCES || errno == EROFS))
		fd = openat(s->dir_fd, "lock", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (flock(fd, op) < 0)
		if (errno != EINTR)
			return -errno;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int store_read_part(struct store *s, const struct store_part *part, size_t max_bytes,
		    char **ret_data)
{
	_cleanup_free_ char *buf = NULL;
	size_t off = 0;

	if (part->size_bytes > max_bytes)
		return -EFBIG;
	buf = malloc(part->size_bytes + 1);
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < part->n_chunks; i++) {
		_cleanup_free_ void *data = NULL;
		size_t len = 0;
		int r = store_get_chunk(s, part->chunks[i].id, &data, &len);

		if (r < 0)
			return r;
		if (off + len > part->size_bytes)
			return -EBADMSG;
		memcpy(buf + off, data, len);
		off += len;
	}
	buf[off] = '\0';
	*ret_data = TAKE_PTR(buf);
	return 0;
}
