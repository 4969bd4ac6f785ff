/* The boot initramfs: only vmhpc-init (as /init) and the kernel modules needed to reach
 * the root, the network and the shared folders, as a zstd-compressed cpio. */
#pragma once

#include <stddef.h>

#include "image/kernel.h"

/* Path inside the initramfs of the list of modules to load, one path per line, in order. */
#define INITRAMFS_MODULES_LIST "etc/vmhpc/modules"

/* Builds it from init_path (a static vmhpc-init) and module_paths (relative to
 * k->modules_dir, in load order). *ret_data (caller frees) is the compressed archive;
 * *ret_plain_bytes the cpio's size before compression. */
int initramfs_build(const char *init_path, const struct kernel_tree *k, char *const *module_paths,
		    size_t n_modules, void **ret_data, size_t *ret_len, size_t *ret_plain_bytes);
