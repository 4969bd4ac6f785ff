#include "image/initramfs.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "image/cpio.h"
#include "util/cleanup.h"
#include "util/fsutil.h"

/* The kernel's zstd unpacker works with windows up to 8 MiB; 4 MiB keeps it comfortable
 * and loses nothing on an archive of a few MiB. */
#define INITRAMFS_ZSTD_LEVEL	  19
#define INITRAMFS_ZSTD_WINDOW_LOG 22

static int compress(const void *data, size_t len, void **ret_data, size_t *ret_len)
{
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	size_t bound = ZSTD_compressBound(len), n;
	void *out = malloc(bound);

	if (!cctx || !out) {
		ZSTD_freeCCtx(cctx);
		free(out);
		return -ENOMEM;
	}
	ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, INITRAMFS_ZSTD_LEVEL);
	ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, INITRAMFS_ZSTD_WINDOW_LOG);
	ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
	n = ZSTD_compress2(cctx, out, bound, data, len);
	ZSTD_freeCCtx(cctx);
	if (ZSTD_isError(n)) {
		free(out);
		return -EIO;
	}
	*ret_data = out;
	*ret_len = n;
	return 0;
}

/* Adds every parent directory of path (relative) not added yet. */
static int add_parents(struct cpio_writer *w, const char *path, char ***seen, size_t *n_seen)
{
	_cleanup_free_ char *copy = strdup(path);

	if (!copy)
		return -ENOMEM;
	for (char *p = strchr(copy, '/'); p; p = strchr(p + 1, '/')) {
		bool known = false;
		char **grown;
		int r;

		*p = '\0';
		for (size_t i = 0; i < *n_seen && !known; i++)
			known = strcmp((*seen)[i], copy) == 0;
		if (!known) {
			r = cpio_add_directory(w, copy, 0755);
			if (r < 0)
				return r;
			grown = realloc(*seen, (*n_seen + 1) * sizeof(*grown));
			if (!grown)
				return -ENOMEM;
			*seen = grown;
			grown[*n_seen] = strdup(copy);
			if (!grown[*n_seen])
				return -ENOMEM;
			(*n_seen)++;
		}
		*p = '/';
	}
	return 0;
}

int initramfs_build(const char *init_path, const struct kernel_tree *k, char *const *module_paths,
		    size_t n_modules, void **ret_data, size_t *ret_len, size_t *ret_plain_bytes)
{
	static const char *const dirs[] = {"dev", "proc", "sys", "run", "tmp", "newroot"};
	struct cpio_writer *w = NULL;
	char **seen = NULL;
	size_t n_seen = 0, list_len = 0, plain_len = 0;
	_cleanup_free_ char *list = NULL;
	const void *plain;
	int r;

	r = cpio_writer_new(&w);
	if (r < 0)
		return r;
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]) && r == 0; i++)
		r = cpio_add_directory(w, dirs[i], 0755);
	/* The kernel opens /dev/console for init's stdio before any devtmpfs is mounted. */
	if (r == 0)
		r = cpio_add_char_device(w, "dev/console", 0600, 5, 1);
	if (r == 0)
		r = cpio_add_file_from_path(w, "init", 0755, init_path);
	list = strdup("");
	if (!list)
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < n_modules; i++) {
		_cleanup_free_ char *dest = NULL, *src = NULL;
		char *grown;

		if (asprintf(&dest, "lib/modules/%s/%s", k->release, module_paths[i]) < 0 ||
		    !(src = fs_path_join(k->modules_dir, module_paths[i]))) {
			r = -ENOMEM;
			break;
		}
		r = add_parents(w, dest, &seen, &n_seen);
		if (r == 0)
			r = cpio_add_file_from_path(w, dest, 0644, src);
		if (r < 0)
			break;
		grown = realloc(list, list_len + strlen(dest) + 3);
		if (!grown) {
			r = -ENOMEM;
			break;
		}
		list = grown;
		list_len += (size_t)sprintf(list + list_len, "/%s\n", dest);
	}
	if (r == 0)
		r = add_parents(w, INITRAMFS_MODULES_LIST, &seen, &n_seen);
	if (r == 0)
		r = cpio_add_file(w, INITRAMFS_MODULES_LIST, 0644, list, list_len);
	if (r == 0)
		r = cpio_finish(w, &plain, &plain_len);
	if (r == 0)
		r = compress(plain, plain_len, ret_data, ret_len);
	if (r == 0)
		*ret_plain_bytes = plain_len;
	for (size_t i = 0; i < n_seen; i++)
		free(seen[i]);
	free(seen);
	cpio_writer_free(w);
	return r;
}
