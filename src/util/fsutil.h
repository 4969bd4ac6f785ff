/* File-system helpers: durable writes, directory trees, whole-file reads. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates dir and its missing parents with mode; an existing directory is fine. */
int fs_mkdir_p(const char *path, mode_t mode);

/* Removes path and everything below it; a missing path is fine. */
int fs_rm_rf(const char *path);

/* fsyncs the directory at path (makes a rename or unlink in it durable). */
int fs_fsync_dir(const char *path);

/* Writes data to path durably and atomically: a temp file beside it, fsync, rename,
 * fsync of the directory. A crash at any point leaves either the old file or the new. */
int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Like fs_write_atomic, but fails with -EEXIST (and writes nothing) when path exists. */
int fs_write_atomic_new(const char *path, const void *data, size_t len, mode_t mode);

/* Reads a whole file (at most max_bytes; -EFBIG beyond) into a NUL-terminated buffer
 * the caller frees. */
int fs_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len);

/* Writes all of len bytes to fd, retrying short writes and EINTR. */
int fs_write_all(int fd, const void *data, size_t len);

/* Reads up to len bytes, retrying short reads; returns bytes read (0 at EOF) or -errno. */
ssize_t fs_read_full(int fd, void *buf, size_t len);

/* Copies a regular file's bytes to dst_path (created with mode, replacing nothing). */
int fs_copy_file(const char *src_path, const char *dst_path, mode_t mode);

/* Makes a fresh private directory "<parent>/<prefix>XXXXXX"; returns its path (caller frees). */
int fs_mkdtemp(const char *parent, const char *prefix, char **ret_path);

/* Returns path joined as "a/b" (caller frees), or NULL on out of memory. */
char *fs_path_join(const char *a, const char *b);

/* True when path exists (any type, without following a final symlink). */
bool fs_exists(const char *path);
