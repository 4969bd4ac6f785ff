/* The guest kernel: a Debian kernel package (a meta package such as
 * linux-image-cloud-amd64 is followed to the real one), its bzImage and its modules, with
 * the load order of the modules a guest needs resolved from modules.dep. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct kernel_tree {
	char *package;	    /* the real package, e.g. linux-image-6.1.0-56-cloud-amd64 */
	char *version;	    /* its Debian version */
	char *release;	    /* uname -r, e.g. 6.1.0-56-cloud-amd64 */
	char *vmlinuz_path; /* the kernel image QEMU boots (a bzImage, or a PVH vmlinux) */
	char *modules_dir;  /* .../lib/modules/<release> */
	bool builtin_only;  /* a kernel without module support: every module is built in */
	bool pvh;	    /* vmlinuz_path is an ELF vmlinux with the PVH entry note */
};

/* Fetches package (following one level of meta-package dependency) into cache_dir and
 * makes sure modules.dep exists (depmod -b). Caller frees with kernel_tree_free(). */
int kernel_fetch(const char *cache_dir, const char *package, struct kernel_tree **ret_tree,
		 char **ret_error);

/* The kernel `vmhpc kernel build` left in dir (image/kbuild.h): its PVH vmlinux, no
 * modules. package is the source package it was built from. Caller frees. */
int kernel_from_build(const char *dir, const char *package, struct kernel_tree **ret_tree,
		      char **ret_error);

/* Resolves module names (dashes or underscores) and their dependencies into load order:
 * *ret_paths (caller frees each and the array) are paths relative to modules_dir. A module
 * built into the kernel is skipped; an unknown one is an error naming it. A builtin_only
 * kernel resolves every name to nothing. */
int kernel_resolve_modules(const struct kernel_tree *k, char *const *names, size_t n_names,
			   char ***ret_paths, size_t *ret_n, char **ret_error);

/* True when path is an ELF file with the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) that
 * QEMU's -kernel boots without a decompressor. */
bool kernel_has_pvh_note(const char *path);

/* Extracts the uncompressed vmlinux from a bzImage into out_path (atomically), with the
 * decompressor its payload names (gzip, xz, zstd, lz4, lzma, bzip2). -ENOEXEC when the
 * result (or the input) is not a kernel with the PVH note; -ENOTSUP for an unknown
 * compression. */
int kernel_extract_vmlinux(const char *bzimage_path, const char *out_path);

/* Frees k; NULL is a no-op. Returns NULL. */
struct kernel_tree *kernel_tree_free(struct kernel_tree *k);
