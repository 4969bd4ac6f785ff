#include "vm/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/cleanup.h"

#ifndef O_TMPFILE_BIT
#define O_TMPFILE_BIT (O_TMPFILE & ~O_DIRECTORY)
#endif

int sandbox_become_user(uid_t uid, gid_t gid)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg;

	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0)
		return -errno;
	if (ru == uid && eu == uid && su == uid && rg == gid && eg == gid && sg == gid)
		return 0;
	/* Groups first, uid last: after setresuid we could change neither. */
	if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
		return -errno;
	/* A uid change makes the process non-dumpable, which would leave its /proc/self
	 * files (uid_map among them) owned by root and closed to it. It runs as the user
	 * now: being ptraceable by that user gives the user nothing new. */
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

int sandbox_open_checked_dir(const char *path, dev_t dev, ino_t ino, int *ret_fd)
{
	_cleanup_close_ int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat sb;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0)
		return -errno;
	if (sb.st_dev != dev || sb.st_ino != ino)
		return -ESTALE;
	/* O_PATH needs no right on the directory itself: check it can be listed. */
	if (faccessat(fd, ".", R_OK | X_OK, AT_EACCESS) < 0)
		return -errno;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

static int write_proc_self(const char *name, const char *text)
{
	char path[64];
	_cleanup_close_ int fd = -1;
	size_t len = strlen(text);

	snprintf(path, sizeof(path), "/proc/self/%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, text, len) != (ssize_t)len)
		return -errno;
	return 0;
}

int sandbox_enter_userns(void)
{
	uid_t uid = geteuid();
	gid_t gid = getegid();
	char map[64];
	int r;

	if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
		return -errno;
	/* The kernel allows an unprivileged gid map only once setgroups is denied, which
	 * also keeps the supplementary groups exactly as they were. */
	r = write_proc_self("setgroups", "deny");
	if (r < 0)
		return r;
	/* Identity: the guest sees the user's files owned by the uid its ranks run as, and
	 * virtiofs in the guest checks permissions against that. */
	snprintf(map, sizeof(map), "%u %u 1", (unsigned)uid, (unsigned)uid);
	r = write_proc_self("uid_map", map);
	if (r < 0)
		return r;
	snprintf(map, sizeof(map), "%u %u 1", (unsigned)gid, (unsigned)gid);
	return write_proc_self("gid_map", map);
}

int sandbox_bind_dir(int dirfd, const char *tmpfs_dir, const char *name)
{
	char source[64], target[4096];

	/* Nothing we mount may propagate back to the host's namespace. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return -errno;
	if (mount("vmhpc-share", tmpfs_dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "mode=0700,size=64k") < 0)
		return -errno;
	snprintf(target, sizeof(target), "%s/%s", tmpfs_dir, name);
	if (mkdir(target, 0700) < 0)
		return -errno;
	/* The fd, not the user's path: what was checked is what gets shared. MS_REC because
	 * a bind of a tree with mounts below it is refused in a user namespace. */
	snprintf(source, sizeof(source), "/proc/self/fd/%d", dirfd);
	if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -errno;
	return 0;
}

int sandbox_keep_caps_across_exec(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &h, d) < 0)
		return -errno;
	/* Ambient capabilities must be both permitted and inheritable. */
	for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
		d[i].inheritable = d[i].permitted;
	if (syscall(SYS_capset, &h, d) < 0)
		return -errno;
	for (int cap = 0; cap <= 63; cap++) {
		if (!(d[cap / 32].permitted & (1u << (cap % 32))))
			continue;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
			return -errno;
	}
	return 0;
}

/* Fails sys with errno when its mode argument (index mode_arg) has any bit of bits. */
static int deny_mode_bits(scmp_filter_ctx ctx, int sys, unsigned mode_arg, unsigned bits,
			  int flags_arg, unsigned flag)
{
	int r;

	for (unsigned bit = 1; bit; bit <<= 1) {
		if (!(bits & bit))
			continue;
		if (flags_arg >= 0)
			r = seccomp_rule_add(
			    ctx, SCMP_ACT_ERRNO(EPERM), sys, 2,
			    SCMP_CMP((unsigned)flags_arg, SCMP_CMP_MASKED_EQ, flag, flag),
			    SCMP_CMP(mode_arg, SCMP_CMP_MASKED_EQ, bit, bit));
		else
			r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), sys, 1,
					     SCMP_CMP(mode_arg, SCMP_CMP_MASKED_EQ, bit, bit));
		if (r < 0)
			return r;
	}
	return 0;
}

int sandbox_seccomp_load(void)
{
	static const int no_effect[] = {
	    SCMP_SYS(setgroups), SCMP_SYS(setresuid), SCMP_SYS(setresgid),
	    SCMP_SYS(setuid),	 SCMP_SYS(setgid),    SCMP_SYS(setfsuid),
	    SCMP_SYS(setfsgid),	 SCMP_SYS(setreuid),  SCMP_SYS(setregid),
	};
	const unsigned setid = S_ISUID | S_ISGID;
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	int fchmodat2, r = 0;

	if (!ctx)
		return -ENOMEM;
	/* virtiofsd takes on the guest caller's uid and gid for each request that creates
	 * a file; made no-ops, every file it creates belongs to the user it runs as. */
	for (size_t i = 0; i < ARRAY_SIZE(no_effect) && r == 0; i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(0), no_effect[i], 0);
	/* With capabilities over the user's own files, the kernel would let it set setuid
	 * and setgid bits there; a guest root must not make such a file for the host. */
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(chmod), 1, setid, -1, 0);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(fchmod), 1, setid, -1, 0);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(fchmodat), 2, setid, -1, 0);
	fchmodat2 = seccomp_syscall_resolve_name("fchmodat2");
#ifdef __x86_64__
	if (fchmodat2 < 0)
		fchmodat2 = 452; /* libseccomp older than the call (Linux 6.6) */
#endif
	if (r == 0 && fchmodat2 >= 0)
		r = deny_mode_bits(ctx, fchmodat2, 2, setid, -1, 0);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(creat), 1, setid, -1, 0);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(open), 2, setid, 1, O_CREAT);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(open), 2, setid, 1, O_TMPFILE_BIT);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(openat), 3, setid, 2, O_CREAT);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(openat), 3, setid, 2, O_TMPFILE_BIT);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(mknod), 1, setid, -1, 0);
	if (r == 0)
		r = deny_mode_bits(ctx, SCMP_SYS(mknodat), 2, setid, -1, 0);
	/* Device nodes already fail in a user namespace (no CAP_MKNOD over the host);
	 * refused here too, should that ever change. */
	for (int k = 0; k < 2 && r == 0; k++) {
		unsigned type = k ? S_IFBLK : S_IFCHR;

		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mknod), 1,
				     SCMP_CMP(1, SCMP_CMP_MASKED_EQ, S_IFMT, type));
		if (r == 0)
			r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mknodat), 1,
					     SCMP_CMP(2, SCMP_CMP_MASKED_EQ, S_IFMT, type));
	}
	/* openat2 passes its mode in a struct seccomp cannot read; glibc falls back to
	 * openat on ENOSYS. */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(openat2), 0);
	if (r == 0)
		r = seccomp_load(ctx);
	seccomp_release(ctx);
	return r;
}
