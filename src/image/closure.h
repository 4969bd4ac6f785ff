/* The library closure of a set of programs, resolved the way the dynamic loader would,
 * across stacked roots ("layers": unpacked Debian packages, an imported root tree, the
 * host's /), without running anything. Paths inside the image are usr-merged: /bin,
 * /sbin, /lib and /lib64 become /usr/bin, /usr/sbin, /usr/lib and /usr/lib64. */
#pragma once

#include <limits.h>
#include <stddef.h>

struct closure_layer {
	const char *root; /* directory that stands for "/" ("/" for the host) */
};

struct closure_file {
	char *image_path; /* where the loader looks for it in the image, e.g.
			     /usr/lib/x86_64-linux-gnu/libc.so.6 */
	char *
	    real_image_path; /* the same after symlinks, e.g. .../libc.so.6 or libmpich.so.12.2.2 */
	char *host_path;     /* the regular file on this machine to copy from */
	size_t layer;	     /* index into the layers it was found in */
	int is_elf;	     /* 1 when it is an ELF object (a program or a library) */
};

struct closure {
	size_t n_files;
	struct closure_file
	    *files; /* requested paths first, then libraries, no duplicate image_path */
};

/* Resolves each of paths (absolute paths as seen in the image, e.g. /usr/bin/mpiexec.hydra)
 * in the layers (earlier layers win), then, for every ELF file, its interpreter and the
 * DT_NEEDED libraries recursively (RPATH, RUNPATH with $ORIGIN, then the system library
 * directories). Non-ELF files are taken as they are. On failure *ret_error (caller frees)
 * names the missing path or library and who needs it, and what to do. The caller frees
 * ret with closure_done(). */
int closure_resolve(const struct closure_layer *layers, size_t n_layers, char *const *paths,
		    size_t n_paths, struct closure *ret, char **ret_error);

/* Finds one image path in the layers, following symlinks inside each layer's root (as a
 * chroot would). On success *ret_host_path is the regular file on this machine and
 * *ret_real_image_path its path in the image after symlinks (both caller frees) and
 * *ret_layer its layer. -ENOENT when no layer has it. */
int closure_lookup(const struct closure_layer *layers, size_t n_layers, const char *image_path,
		   char **ret_host_path, char **ret_real_image_path, size_t *ret_layer);

/* Returns the usr-merged form of an absolute path, also cleaned lexically ("//", "." and
 * ".." removed) (caller frees), NULL on no memory or a path of PATH_MAX bytes or more. */
char *closure_usrmerge_path(const char *path);

/* Expands $ORIGIN (to origin), $LIB and $PLATFORM, also in braces, in the n bytes at s
 * into out, as glibc's ld.so does in DT_NEEDED, DT_RPATH and DT_RUNPATH; unknown tokens
 * stay as they are. -ENAMETOOLONG when the result does not fit, -ENOMEM. */
int closure_expand_tokens(const char *s, size_t n, const char *origin, char out[static PATH_MAX]);

/* Steps through a ':'-separated search list (DT_RPATH or DT_RUNPATH) from *pos: writes the
 * next entry's "DIR/name", tokens expanded, into candidate and moves *pos past it. Returns 1,
 * 0 at the end of the list, or -ENOMEM. Relative and empty entries (which name the working
 * directory) and paths too long are skipped. */
int closure_next_candidate(const char **pos, const char *origin, const char *name,
			   char candidate[static PATH_MAX]);

/* Releases everything c holds; leaves it empty. */
void closure_done(struct closure *c);
