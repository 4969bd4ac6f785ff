/* The reader of an image's file index: the JSON list rootfs.c writes of every path in the
 * root (path, type, mode, size, link target, the package or file it came from). One reader
 * for `vmhpc image ls`, `vmhpc run`'s checks before booting, and whatever else asks "is this
 * path in the image". Lookups are by exact path (sorted, binary search). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/manifest.h"
#include "store/store.h"

struct image_index_entry {
	const char *path;   /* absolute, as in the image */
	const char *type;   /* "file", "dir", "symlink", ... */
	const char *target; /* symlinks: the link target; else NULL */
	const char *source; /* the package or host file it came from; may be NULL */
	uint32_t mode;
	uint64_t size_bytes;
};

struct image_index;

/* Reads and parses m's index part from s. On failure *ret_error (caller frees) names the
 * image and the fix (`vmhpc image verify`). Free with image_index_free(). */
int image_index_load(struct store *s, const struct manifest *m, struct image_index **ret_index,
		     char **ret_error);

/* Parses index text (exposed for tests); -EBADMSG when it is not an index. */
int image_index_parse(const char *text, struct image_index **ret_index);

/* How many entries; entry i in path order (owned by idx). */
size_t image_index_count(const struct image_index *idx);
const struct image_index_entry *image_index_at(const struct image_index *idx, size_t i);

/* The entry for path, or NULL. */
const struct image_index_entry *image_index_find(const struct image_index *idx, const char *path);

/* Frees idx; NULL is a no-op. */
void image_index_free(struct image_index *idx);
