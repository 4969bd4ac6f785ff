#include "util/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/cleanup.h"

int fs_mkdir_p(const char *path, mode_t mode)
{
	_cleanup_free_ char *copy = strdup(path);

	if (!copy)
		return -ENOMEM;
	for (char *p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(copy, mode) < 0) {
		struct stat st;

		if (errno != EEXIST)
			return -errno;
		if (stat(copy, &st) < 0)
			return -errno;
		if (!S_ISDIR(st.st_mode))
			return -ENOTDIR;
	}
	return 0;
}

static int rm_rf_at(int at_fd, const char *name)
{
	struct stat st;

	if (fstatat(at_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st.st_mode)) {
		int fd = openat(at_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *d;
		struct dirent *de;
		int r = 0;

		if (fd < 0)
			return -errno;
		d = fdopendir(fd);
		if (!d) {
			close(fd);
			return -errno;
		}
		while ((de = readdir(d))) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			r = rm_rf_at(dirfd(d), de->d_name);
			if (r < 0)
				break;
		}
		closedir(d);
		if (r < 0)
			return r;
		if (unlinkat(at_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
			return -errno;
		return 0;
	}
	if (unlinkat(at_fd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int fs_rm_rf(const char *path)
{
	return rm_rf_at(AT_FDCWD, path);
}

int fs_fsync_dir(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		return -errno;
	return 0;
}

int fs_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

ssize_t fs_read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, (char *)buf + done, len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

static int write_atomic(const char *path, const void *data, size_t len, mode_t mode,
			bool no_replace)
{
	_cleanup_free_ char *dir = dir_of(path);
	_cleanup_free_ char *tmp = NULL;
	_cleanup_close_ int fd = -1;
	int r;

	if (!dir || asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
		return -ENOMEM;
	/* A unique name: two writers of one path (processes or threads) never share it. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = fchmod(fd, mode) < 0 ? -errno : 0;
	if (r == 0)
		r = fs_write_all(fd, data, len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && close(TAKE_FD(fd)) < 0)
		r = -errno;
	if (r == 0) {
		/* link() refuses to replace, which makes "create if absent" atomic. */
		if (no_replace) {
			if (link(tmp, path) < 0)
				r = -errno;
		} else if (rename(tmp, path) < 0) {
			r = -errno;
		}
	}
	if (r < 0 || no_replace)
		unlink(tmp);
	if (r < 0)
		return r;
	return fs_fsync_dir(dir);
}

int fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	return write_atomic(path, data, len, mode, false);
}

int fs_write_atomic_new(const char *path, const void *data, size_t len, mode_t mode)
{
	return write_atomic(path, data, len, mode, true);
}

static int read_file(const char *path, int extra_flags, size_t max_bytes, char **ret_data,
		     size_t *ret_len)
{
	/* O_NONBLOCK: opening a fifo for reading would wait for a writer; this way it opens
	 * at once and fstat refuses it. It changes nothing for a regular file. */
	_cleanup_close_ int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | extra_flags);
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	ssize_t n;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	if ((uint64_t)st.st_size > max_bytes)
		return -EFBIG;
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return -ENOMEM;
	n = fs_read_full(fd, buf, (size_t)st.st_size);
	if (n < 0)
		return (int)n;
	buf[n] = '\0';
	if (ret_len)
		*ret_len = (size_t)n;
	*ret_data = TAKE_PTR(buf);
	return 0;
}

int fs_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len)
{
	return read_file(path, 0, max_bytes, ret_data, ret_len);
}

int fs_read_file_nofollow(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len)
{
	return read_file(path, O_NOFOLLOW, max_bytes, ret_data, ret_len);
}

int fs_copy_fd(int in_fd, const char *dst_path, mode_t mode)
{
	_cleanup_close_ int out = -1;
	char buf[65536];
	int r = 0;

	out = open(dst_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (out < 0)
		return -errno;
	for (;;) {
		ssize_t n = read(in_fd, buf, sizeof(buf));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		if (n == 0)
			break;
		r = fs_write_all(out, buf, (size_t)n);
		if (r < 0)
			break;
	}
	if (r == 0 && close(TAKE_FD(out)) < 0)
		r = -errno;
	if (r < 0)
		unlink(dst_path);
	return r;
}

int fs_copy_file(const char *src_path, const char *dst_path, mode_t mode)
{
	_cleanup_close_ int in = open(src_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;

	if (in < 0)
		return -errno;
	/* A device or fifo never ends (/dev/zero) or never starts: only regular files. */
	if (fstat(in, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	return fs_copy_fd(in, dst_path, mode);
}

int fs_open_temp_beside(const char *path, mode_t mode, char **ret_tmp_path, int *ret_fd)
{
	_cleanup_free_ char *tmp = NULL;
	int fd;

	if (asprintf(&tmp, "%s.partial.XXXXXX", path) < 0)
		return -ENOMEM;
	/* mkostemp creates with O_CREAT|O_EXCL under a random name: a symlink planted at
	 * any name is never followed, and the name cannot be guessed ahead. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, mode) < 0) {
		int r = -errno;

		close(fd);
		unlink(tmp);
		return r;
	}
	*ret_tmp_path = TAKE_PTR(tmp);
	*ret_fd = fd;
	return 0;
}

int fs_identity_enter(const struct fs_identity *id, struct fs_identity_saved *ret_saved)
{
	struct fs_identity_saved saved = {0};
	int n, r;

	*ret_saved = saved;
	if (!id)
		return 0;
	n = getgroups(0, NULL);
	if (n < 0)
		return -errno;
	saved.groups = malloc(((size_t)n + 1) * sizeof(gid_t));
	if (!saved.groups)
		return -ENOMEM;
	n = getgroups(n, saved.groups);
	if (n < 0) {
		r = -errno;
		goto fail;
	}
	saved.n_groups = n;
	/* The raw system call changes this thread's groups only, like setfsuid/setfsgid
	 * below; glibc's setgroups() would change every thread's. */
	if (syscall(SYS_setgroups, id->n_groups, id->groups) < 0) {
		r = -errno;
		goto fail;
	}
	saved.fsgid = (gid_t)setfsgid(id->gid);
	saved.fsuid = (uid_t)setfsuid(id->uid);
	saved.active = true;
	/* setfsuid/setfsgid report no errors; asking with an invalid id (-1) reads the
	 * current one back. */
	if ((uid_t)setfsuid((uid_t)-1) != id->uid || (gid_t)setfsgid((gid_t)-1) != id->gid) {
		fs_identity_leave(&saved);
		return -EPERM;
	}
	*ret_saved = saved;
	return 0;
fail:
	free(saved.groups);
	return r;
}

void fs_identity_leave(struct fs_identity_saved *saved)
{
	if (!saved->active)
		return;
	/* fsuid first: with fsuid 0 back, the capabilities it dropped return. A failure
	 * here could only leave us with fewer rights, never more. */
	(void)setfsuid(saved->fsuid);
	(void)setfsgid(saved->fsgid);
	(void)syscall(SYS_setgroups, (size_t)saved->n_groups, saved->groups);
	free(saved->groups);
	*saved = (struct fs_identity_saved){0};
}

int fs_mkdtemp(const char *parent, const char *prefix, char **ret_path)
{
	char *path = NULL;

	if (asprintf(&path, "%s/%sXXXXXX", parent, prefix) < 0)
		return -ENOMEM;
	if (!mkdtemp(path)) {
		int r = -errno;

		free(path);
		return r;
	}
	*ret_path = path;
	return 0;
}

char *fs_path_join(const char *a, const char *b)
{
	char *out = NULL;
	size_t la = strlen(a);

	while (*b == '/')
		b++;
	if (asprintf(&out, "%s%s%s", a, (la > 0 && a[la - 1] == '/') ? "" : "/", b) < 0)
		return NULL;
	return out;
}

bool fs_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}
