/* A writer for cpio "newc" archives (the format the kernel unpacks as an initramfs).
 * Entries get uid/gid 0 and mtime 0 so that equal inputs give equal bytes. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longest entry path the writer accepts. */
#define CPIO_PATH_MAX 4096

struct cpio_writer;

/* Creates a writer that builds the archive in memory. Free with cpio_writer_free(). */
int cpio_writer_new(struct cpio_writer **ret_writer);
/* Frees w and its buffer; NULL is a no-op. Returns NULL. */
struct cpio_writer *cpio_writer_free(struct cpio_writer *w);

/* Each adds one entry; path is relative ("init", "lib/modules/x.ko"); a leading '/' is
 * dropped. mode holds permission bits only. -EINVAL for an empty or over-long path. */
int cpio_add_directory(struct cpio_writer *w, const char *path, mode_t mode);
int cpio_add_file(struct cpio_writer *w, const char *path, mode_t mode, const void *data,
		  size_t len);
/* Reads src_path from the host and adds its bytes under path. */
int cpio_add_file_from_path(struct cpio_writer *w, const char *path, mode_t mode,
			    const char *src_path);
int cpio_add_symlink(struct cpio_writer *w, const char *path, const char *target);
int cpio_add_char_device(struct cpio_writer *w, const char *path, mode_t mode, unsigned major,
			 unsigned minor);

/* Appends the TRAILER!!! entry and pads to 512 bytes; returns the archive, owned by w
 * (valid until cpio_writer_free). No entry may be added afterwards (-EINVAL). */
int cpio_finish(struct cpio_writer *w, const void **ret_data, size_t *ret_len);
