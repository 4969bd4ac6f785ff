/* cpio "newc" writer (the kernel's initramfs format, see the kernel's
 * Documentation/driver-api/early-userspace/buffer-format.rst):
 *
 *   header: "070701" and 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime,
 *           filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check)
 *   name:   namesize bytes including the NUL, header + name padded to 4 bytes
 *   data:   filesize bytes, padded to 4 bytes
 *
 * Everything variable (owners, times, device of origin) is written as 0 and inodes are
 * numbered in order, so equal inputs give equal archives. */
#include "image/cpio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/pathwalk.h"

#define CPIO_MAGIC	  "070701"
#define CPIO_HEADER_BYTES 110
#define CPIO_TRAILER	  "TRAILER!!!"
#define CPIO_BLOCK_BYTES  512
/* filesize is 8 hex digits. */
#define CPIO_FILE_MAX_BYTES 0xffffffffull

struct cpio_writer {
	char *buf;
	size_t len, cap;
	uint32_t next_ino;
	bool finished;
};

int cpio_writer_new(struct cpio_writer **ret_writer)
{
	struct cpio_writer *w = calloc(1, sizeof(*w));

	if (!w)
		return -ENOMEM;
	w->next_ino = 1;
	*ret_writer = w;
	return 0;
}

struct cpio_writer *cpio_writer_free(struct cpio_writer *w)
{
	if (!w)
		return NULL;
	free(w->buf);
	free(w);
	return NULL;
}

/* Makes room for n more bytes. */
static int reserve(struct cpio_writer *w, size_t n)
{
	size_t cap;
	char *buf;

	if (n > SIZE_MAX - w->len)
		return -ENOMEM;
	if (w->len + n <= w->cap)
		return 0;
	cap = w->cap ? w->cap : 64 * 1024;
	while (cap < w->len + n) {
		if (cap > SIZE_MAX / 2) {
			cap = w->len + n;
			break;
		}
		cap *= 2;
	}
	buf = realloc(w->buf, cap);
	if (!buf)
		return -ENOMEM;
	w->buf = buf;
	w->cap = cap;
	return 0;
}

static void put_zeros_to_align4(struct cpio_writer *w)
{
	while (w->len % 4)
		w->buf[w->len++] = '\0';
}

/* Normalizes an entry path into out: leading '/', empty and "." components dropped.
 * -EINVAL when it is empty, has a ".." component or is CPIO_PATH_MAX bytes or longer. */
static int normalize_path(const char *path, char out[static CPIO_PATH_MAX])
{
	size_t len = 0;
	const char *p, *rest;
	size_t n;

	if (!path)
		return -EINVAL;
	rest = path;
	while ((p = pathwalk_next(&rest, &n))) {
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return -EINVAL; /* would let an archive write outside its root */
		if (!(n == 1 && p[0] == '.')) {
			if (len + (len > 0) + n >= CPIO_PATH_MAX)
				return -EINVAL;
			if (len > 0)
				out[len++] = '/';
			memcpy(out + len, p, n);
			len += n;
		}
	}
	if (len == 0)
		return -EINVAL;
	out[len] = '\0';
	return 0;
}

/* Appends one header and name, and reserves room for data_len bytes of data plus padding. */
static int put_header(struct cpio_writer *w, const char *name, uint32_t ino, mode_t mode,
		      uint32_t nlink, uint64_t data_len, unsigned rdev_major, unsigned rdev_minor)
{
	size_t name_size = strlen(name) + 1;
	char hdr[CPIO_HEADER_BYTES + 1];
	int r;

	if (data_len > CPIO_FILE_MAX_BYTES)
		return -EFBIG;
	r = reserve(w, CPIO_HEADER_BYTES + name_size + 3 + (size_t)data_len + 3);
	if (r < 0)
		return r;
	snprintf(hdr, sizeof(hdr),
		 CPIO_MAGIC "%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino,
		 (unsigned)mode, 0u, 0u, nlink, 0u, (unsigned)data_len, 0u, 0u, rdev_major,
		 rdev_minor, (unsigned)name_size, 0u);
	memcpy(w->buf + w->len, hdr, CPIO_HEADER_BYTES);
	w->len += CPIO_HEADER_BYTES;
	memcpy(w->buf + w->len, name, name_size);
	w->len += name_size;
	put_zeros_to_align4(w);
	return 0;
}

/* Adds a whole entry whose data is in memory. */
static int add_entry(struct cpio_writer *w, const char *path, mode_t mode, uint32_t nlink,
		     const void *data, size_t len, unsigned rdev_major, unsigned rdev_minor)
{
	char name[CPIO_PATH_MAX];
	int r;

	if (!w || w->finished)
		return -EINVAL;
	r = normalize_path(path, name);
	if (r < 0)
		return r;
	if (w->next_ino == UINT32_MAX)
		return -E2BIG;
	r = put_header(w, name, w->next_ino, mode, nlink, len, rdev_major, rdev_minor);
	if (r < 0)
		return r;
	if (len > 0)
		memcpy(w->buf + w->len, data, len);
	w->len += len;
	put_zeros_to_align4(w);
	w->next_ino++;
	return 0;
}

int cpio_add_directory(struct cpio_writer *w, const char *path, mode_t mode)
{
	return add_entry(w, path, S_IFDIR | (mode & 07777), 2, NULL, 0, 0, 0);
}

int cpio_add_file(struct cpio_writer *w, const char *path, mode_t mode, const void *data,
		  size_t len)
{
	if (len > 0 && !data)
		return -EINVAL;
	return add_entry(w, path, S_IFREG | (mode & 07777), 1, data, len, 0, 0);
}

int cpio_add_symlink(struct cpio_writer *w, const char *path, const char *target)
{
	size_t n;

	if (!target)
		return -EINVAL;
	n = strlen(target);
	/* The kernel reads link targets up to PATH_MAX; an empty one is meaningless. */
	if (n == 0 || n >= CPIO_PATH_MAX)
		return -EINVAL;
	return add_entry(w, path, S_IFLNK | 0777, 1, target, n, 0, 0);
}

int cpio_add_char_device(struct cpio_writer *w, const char *path, mode_t mode, unsigned major,
			 unsigned minor)
{
	return add_entry(w, path, S_IFCHR | (mode & 07777), 1, NULL, 0, major, minor);
}

int cpio_add_file_from_path(struct cpio_writer *w, const char *path, mode_t mode,
			    const char *src_path)
{
	_cleanup_close_ int fd = -1;
	char name[CPIO_PATH_MAX];
	size_t start;
	struct stat st;
	ssize_t n;
	int r;

	if (!w || w->finished || !src_path)
		return -EINVAL;
	r = normalize_path(path, name);
	if (r < 0)
		return r;
	if (w->next_ino == UINT32_MAX)
		return -E2BIG;
	fd = open(src_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	if ((uint64_t)st.st_size > CPIO_FILE_MAX_BYTES)
		return -EFBIG;

	/* Read straight into the archive: no second copy of a large library. */
	start = w->len;
	r = put_header(w, name, w->next_ino, S_IFREG | (mode & 07777), 1, (uint64_t)st.st_size, 0,
		       0);
	if (r < 0)
		return r;
	n = fs_read_full(fd, w->buf + w->len, (size_t)st.st_size);
	if (n >= 0 && (size_t)n == (size_t)st.st_size) {
		char extra;

		/* A file that grew while we read would be cut silently; refuse it instead. */
		if (read(fd, &extra, 1) != 0)
			n = -EIO;
	} else if (n >= 0) {
		n = -EIO; /* shrank while we read */
	}
	if (n < 0) {
		log_debug("adding %s to cpio archive: %s changed or failed while read: %s", name,
			  src_path, strerror((int)-n));
		w->len = start; /* drop the half-written entry */
		return (int)n;
	}
	w->len += (size_t)n;
	put_zeros_to_align4(w);
	w->next_ino++;
	return 0;
}

int cpio_finish(struct cpio_writer *w, const void **ret_data, size_t *ret_len)
{
	int r;

	if (!w)
		return -EINVAL;
	if (!w->finished) {
		/* All room first, so that a failure leaves no half trailer behind. */
		r = reserve(w, CPIO_HEADER_BYTES + sizeof(CPIO_TRAILER) + 3 + CPIO_BLOCK_BYTES);
		if (r < 0)
			return r;
		/* The trailer is an empty entry; the kernel and GNU cpio stop reading there. */
		r = put_header(w, CPIO_TRAILER, 0, 0, 1, 0, 0, 0);
		if (r < 0)
			return r;
		while (w->len % CPIO_BLOCK_BYTES)
			w->buf[w->len++] = '\0';
		w->finished = true;
	}
	*ret_data = w->buf;
	*ret_len = w->len;
	return 0;
}
