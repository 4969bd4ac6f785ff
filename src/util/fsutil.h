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

/* Reads a whole regular file (at most max_bytes; -EFBIG beyond) into a NUL-terminated
 * buffer the caller frees. Never blocks on a fifo: -EISDIR for a directory, -EINVAL for
 * any other non-regular file. */
int fs_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len);

/* Like fs_read_file, but a symlink at path is refused (-ELOOP) instead of followed: for
 * files inside a store, where a planted link must not redirect a read. */
int fs_read_file_nofollow(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len);

/* Writes all of len bytes to fd, retrying short writes and EINTR. */
int fs_write_all(int fd, const void *data, size_t len);

/* Reads up to len bytes, retrying short reads; returns bytes read (0 at EOF) or -errno. */
ssize_t fs_read_full(int fd, void *buf, size_t len);

/* Copies a regular file's bytes to dst_path (created with mode, replacing nothing). */
int fs_copy_file(const char *src_path, const char *dst_path, mode_t mode);

/* Copies everything readable from in_fd to dst_path (created with mode, replacing nothing;
 * removed again on failure). in_fd stays open. */
int fs_copy_fd(int in_fd, const char *dst_path, mode_t mode);

/* Creates a new file "<path>.<random>" beside path with O_EXCL|O_NOFOLLOW (a link planted
 * at any guessable name is never followed), for writing and renaming onto path later.
 * Returns the fd (O_CLOEXEC) and the temp path (caller frees and unlinks on failure). */
int fs_open_temp_beside(const char *path, mode_t mode, char **ret_tmp_path, int *ret_fd);

/* Whose rights reading a source uses: a user's fsuid, fsgid and supplementary groups. */
struct fs_identity {
	uid_t uid;
	gid_t gid;
	const gid_t *groups; /* owned by the caller */
	size_t n_groups;
};

/* What fs_identity_enter replaced, for fs_identity_leave. */
struct fs_identity_saved {
	bool active;
	uid_t fsuid;
	gid_t fsgid;
	gid_t *groups;
	int n_groups;
};

/* Makes this thread check file access as id (setfsuid, setfsgid, supplementary groups)
 * until fs_identity_leave(). id NULL: nothing changes. Needs CAP_SETUID and CAP_SETGID. */
int fs_identity_enter(const struct fs_identity *id, struct fs_identity_saved *ret_saved);
/* Restores what fs_identity_enter saved and frees it; an inactive saved is a no-op. */
void fs_identity_leave(struct fs_identity_saved *saved);

/* Makes a fresh private directory "<parent>/<prefix>XXXXXX"; returns its path (caller frees). */
int fs_mkdtemp(const char *parent, const char *prefix, char **ret_path);

/* Returns path joined as "a/b" (caller frees), or NULL on out of memory. */
char *fs_path_join(const char *a, const char *b);

/* True when path exists (any type, without following a final symlink). */
bool fs_exists(const char *path);
