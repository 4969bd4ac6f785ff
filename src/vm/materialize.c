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
	if (access(path, R_OK) == 0) {
		*ret_path = TAKE_PTR(path);
		return 0;
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return error_set(ret_error, -errno, "node cache %s: %s", dir, strerror(errno));
	r = store_write_part(s, part, fd);
	if (r == 0 && (fchmod(fd, 0444) < 0 || fsync(fd) < 0))
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
	r = fs_mkdir_p(dir, 0755);
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
