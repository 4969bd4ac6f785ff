/* Path resolution the way a kernel does it under a chroot, over any tree that can say what
 * one path is: the image builder walks a host folder standing for the image's root
 * (closure.c), the library check walks an image's file index (needs.c). */
#pragma once

#include <limits.h>
#include <stddef.h>

#define PATHWALK_SYMLINKS_MAX 40 /* the kernel's own limit (MAXSYMLINKS) */

enum pathwalk_kind { PATHWALK_DIR, PATHWALK_FILE, PATHWALK_LINK, PATHWALK_OTHER };

/* The next component of the path at *p, slashes skipped: its start, its length in *ret_len,
 * and *p moved past it; NULL at the end of the path. */
const char *pathwalk_next(const char **p, size_t *ret_len);

/* Says what one absolute, clean path of the tree is (its parents are directories, never
 * links); for a link, its target into target. 0 or -errno (-ENOENT when absent). */
typedef int (*pathwalk_lookup_fn)(const char *path, enum pathwalk_kind *ret_kind,
				  char target[static PATH_MAX], void *userdata);

/* Resolves absolute path in the tree: every component looked up, links expanded (an
 * absolute target restarts at /), "." skipped, ".." stops at /. 0 with the resolved path in
 * out ("/" for the root) and its kind (never PATHWALK_LINK); -EINVAL (relative path),
 * -ENOENT, -ENOTDIR, -ELOOP, -ENAMETOOLONG or what lookup returned otherwise. */
int pathwalk_resolve(const char *path, pathwalk_lookup_fn lookup, void *userdata,
		     char out[static PATH_MAX], enum pathwalk_kind *ret_kind);
