/* Confining a helper (virtiofsd) in a forked child before it execs: it runs with one
 * user's rights, in a user namespace of its own, sees a directory pinned by fd instead of
 * a path, keeps capabilities over that user's files only, and cannot take on another
 * uid or make setuid/setgid files or device nodes. Every call returns 0 or -errno and is
 * meant for the child of a single-threaded parent, between fork() and execve(). */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Becomes uid:gid with no supplementary groups, unless already running as exactly them
 * (then the groups are left alone: an unprivileged caller cannot change them). */
int sandbox_become_user(uid_t uid, gid_t gid);

/* Opens path (O_PATH|O_DIRECTORY) with the current rights and checks it is the directory
 * dev:ino the caller checked (-ESTALE when it is another one) and that these rights can
 * list it (-EACCES). *ret_fd is O_CLOEXEC. */
int sandbox_open_checked_dir(const char *path, dev_t dev, ino_t ino, int *ret_fd);

/* Enters a new user and mount namespace in which the current uid and gid map to
 * themselves ("U U 1"), with setgroups denied. */
int sandbox_enter_userns(void);

/* Makes the mount namespace private, mounts a tmpfs on tmpfs_dir (an existing directory)
 * and bind-mounts dirfd's directory on tmpfs_dir/name: a path whose every component
 * belongs to this namespace. */
int sandbox_bind_dir(int dirfd, const char *tmpfs_dir, const char *name);

/* Raises every permitted capability into the ambient set, so a non-root uid keeps them
 * across execve (they are capabilities in the user namespace only). */
int sandbox_keep_caps_across_exec(void);

/* Loads the seccomp filter: the set*id calls and setgroups succeed without effect;
 * chmod/open/creat/mknod asking for setuid or setgid bits, and mknod of a device node,
 * fail with EPERM; openat2 (whose mode seccomp cannot see) fails with ENOSYS. Sets
 * no_new_privs. */
int sandbox_seccomp_load(void);
