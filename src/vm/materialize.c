#include "vm/materialize.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"

void materialized_image_done(struct materialized_image *mi)
{
	free(mi->kernel_path);
	free(mi->initrd_path);
	free(mi->root_path);
	memset(mi, 0, sizeof(*mi));
}

/* The digest of a part: SHA-256 over its chunk ids, so equal content gives one file. */
static void part_digest(const struct store_part *part, char hex[STORE_ID_HEX_LEN + 1])
{
	uint8_t id[STORE_ID_BYTES];
	size_t len = part->n_chunks * sizeof(*part->chunks);

	store_id_compute(part->n_chunks ? (const void *)part->chunks : (const void *)"", len, id);
	store_id_to_hex(id, hex);
}

/* Checks a cached part against the chunk ids it was written from: 0 when it is whole,
 * -ENOENT when absent, -EBADMSG when damaged (not a regular file, wrong size, or a range
 * that does not hash to its chunk's id).
 *
 * Why every byte, every time: a truncated or bit-flipped part makes every boot of the
 * image fail (or worse, run on wrong bytes), and nothing else would ever notice, since
 * the store's verify does not read this cache. Measured on this machine, SHA-256 of a
 * 100 MB root takes ~85 ms (OpenSSL with SHA-NI, warm page cache): small beside a VM
 * boot, and the read warms the page cache the VMs map next anyway. A "verified" marker
 * would save that but trust bytes changed after it was written, which is the damage
 * in question. */
static int check_cached_part(const char *path, const struct store_part *part)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	_cleanup_free_ uint8_t *buf = NULL;
	struct stat st;

	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -EBADMSG;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != part->size_bytes)
		return -EBADMSG;
	buf = malloc(STORE_CHUNK_MAX_BYTES);
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < part->n_chunks; i++) {
		uint8_t id[STORE_ID_BYTES];
		size_t len = part->chunks[i].size_bytes;
		ssize_t n;

		if (len > STORE_CHUNK_MAX_BYTES)
			return -EBADMSG;
		n = fs_read_full(fd, buf, len);
		if (n < 0)
			return (int)n;
		if ((size_t)n != len)
			return -EBADMSG;
		store_id_compute(buf, len, id);
		if (memcmp(id, part->chunks[i].id, STORE_ID_BYTES) != 0)
			return -EBADMSG;
	}
	return 0;
}

static int materialize_part(struct store *s, const struct store_part *part, const char *dir,
			    const char *what, char **ret_path, bool *written, char **ret_error)
{
	char hex[STORE_ID_HEX_LEN + 1];
	_cleanup_free_ char *path = NULL, *tmp = NULL;
	_cleanup_close_ int fd = -1;
	int r;

	part_digest(part, hex);
	if (asprintf(&path, "%s/%s", dir, hex) < 0 || asprintf(&tmp, "%s/.%s.XXXXXX", dir, hex) < 0)
		return -ENOMEM;
	r = check_cached_part(path, part);
	if (r == 0) {
		*ret_path = TAKE_PTR(path);
		return 0;
	}
	if (r != -ENOENT && r != -EBADMSG)
		return error_set(ret_error, r, "reading the node cache's %s %s: %s", what, path,
				 strerror(-r));
	/* A damaged copy is replaced below by the rename of a fresh one. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return error_set(ret_error, -errno, "node cache %s: %s", dir, strerror(errno));
	r = store_write_part(s, part, fd);
	if (r == 0 && (fchmod(fd, 0400) < 0 || fsync(fd) < 0))
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		if (r == -EBADMSG || r == -ENOENT)
			return error_set(
			    ret_error, r,
			    "the image's %s is damaged in the store (%s); run `vmhpc image "
			    "verify`",
			    what, strerror(-r));
		return error_set(ret_error, r, "writing the image's %s to the node cache %s: %s",
				 what, dir, strerror(-r));
	}
	*written = true;
	*ret_path = TAKE_PTR(path);
	return 0;
}

int materialize_image(struct store *s, const struct manifest *m, const char *cache_dir,
		      struct materialized_image *ret, char **ret_error)
{
	_cleanup_free_ char *dir = fs_path_join(cache_dir, "parts");
	struct materialized_image mi = {0};
	int r;

	if (!dir)
		return -ENOMEM;
	/* Private like the store it copies from (docs/store.md). */
	r = fs_mkdir_p(dir, 0700);
	if (r < 0)
		return error_set(ret_error, r, "node cache %s: %s", dir, strerror(-r));
	r = materialize_part(s, &m->parts[MANIFEST_PART_KERNEL], dir, "kernel", &mi.kernel_path,
			     &mi.written, ret_error);
	if (r == 0)
		r = materialize_part(s, &m->parts[MANIFEST_PART_INITRAMFS], dir, "initramfs",
				     &mi.initrd_path, &mi.written, ret_error);
	if (r == 0)
		r = materialize_part(s, &m->parts[MANIFEST_PART_ROOT], dir, "root", &mi.root_path,
				     &mi.written, ret_error);
	if (r < 0) {
		materialized_image_done(&mi);
		return r;
	}
	mi.root_bytes = m->parts[MANIFEST_PART_ROOT].size_bytes;
	*ret = mi;
	return 0;
}

int materialize_check(const struct manifest *m, const char *cache_dir, bool repair,
		      unsigned *ret_damaged, char **ret_error)
{
	static const enum manifest_part_kind kinds[] = {
	    MANIFEST_PART_KERNEL, MANIFEST_PART_INITRAMFS, MANIFEST_PART_ROOT};
	unsigned damaged = 0;

	for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
		const struct store_part *part = &m->parts[kinds[k]];
		char hex[STORE_ID_HEX_LEN + 1];
		_cleanup_free_ char *path = NULL;
		int r;

		part_digest(part, hex);
		if (asprintf(&path, "%s/parts/%s", cache_dir, hex) < 0)
			return -ENOMEM;
		r = check_cached_part(path, part);
		if (r == 0 || r == -ENOENT)
			continue;
		if (r != -EBADMSG)
			return error_set(ret_error, r, "reading the node cache %s: %s", path,
					 strerror(-r));
		damaged++;
		/* Removing it is the repair: the next materialize writes it again. */
		r = repair ? fs_rm_rf(path) : 0;
		if (r < 0)
			return error_set(ret_error, r, "removing the damaged %s: %s", path,
					 strerror(-r));
	}
	*ret_damaged = damaged;
	return 0;
}
