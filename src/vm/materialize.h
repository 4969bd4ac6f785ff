/* The node's copies of image parts that VMs map: kernel, initramfs and root written once
 * from the store into <cache>/parts/<digest> (read-only, temp file + rename), where the
 * digest names the part's content. Every VM of an image on this node maps the same root
 * file, so the host page cache holds one copy of it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "store/manifest.h"
#include "store/store.h"

struct materialized_image {
	char *kernel_path;
	char *initrd_path;
	char *root_path;
	uint64_t root_bytes;
	bool written; /* false when every part was already in the cache */
};

/* Makes sure the parts of m are in cache_dir and fills ret (release with
 * materialized_image_done). A cached part is re-hashed against its chunk ids before it is
 * reused, and written again when damaged. On failure *ret_error (caller frees) says what
 * failed. */
int materialize_image(struct store *s, const struct manifest *m, const char *cache_dir,
		      struct materialized_image *ret, char **ret_error);

void materialized_image_done(struct materialized_image *mi);

/* Checks the parts of m that cache_dir holds (absent ones are fine); *ret_damaged counts the
 * damaged ones, which repair removes (the next materialize_image writes them again). On
 * failure *ret_error (caller frees) says what failed. */
int materialize_check(const struct manifest *m, const char *cache_dir, bool repair,
		      unsigned *ret_damaged, char **ret_error);
