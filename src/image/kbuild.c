#include "image/kbuild.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

#define FRAGMENT_MAX_BYTES (1u * 1024 * 1024)
#define CONFIG_MAX_BYTES   (4u * 1024 * 1024)
#define WORK_PREFIX	   "tmp-"
#define LOCK_NAME	   ".lock"

/* What the guest needs from its kernel, checked in the final .config: kconfig drops an
 * option whose dependencies the fragment does not also enable, silently, so asking for it
 * is not enough. */
static const char *const required[] = {
    "CONFIG_64BIT",
    "CONFIG_PVH",  /* the uncompressed vmlinux boots through QEMU's PVH entry */
    "CONFIG_ACPI", /* q35's PCI host and power off */
    "CONFIG_PCI",
    "CONFIG_PCI_MSI",
    "CONFIG_SERIAL_8250_CONSOLE", /* the ready line and the boot log */
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_ZSTD", /* the boot initramfs is zstd (src/image/initramfs.c) */
    "CONFIG_BINFMT_ELF",
    "CONFIG_BINFMT_SCRIPT",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_DEVTMPFS",
    "CONFIG_TMPFS",
    "CONFIG_UNIX98_PTYS",
    "CONFIG_VIRTIO_PCI",
    "CONFIG_VIRTIO_PMEM", /* the image's root */
    "CONFIG_LIBNVDIMM",
    "CONFIG_BLK_DEV_PMEM",
    "CONFIG_ZONE_DEVICE",
    "CONFIG_FS_DAX",
    "CONFIG_VIRTIO_BLK", /* the root's fallback */
    "CONFIG_VIRTIO_NET",
    "CONFIG_VIRTIO_CONSOLE", /* the control port */
    "CONFIG_VIRTIO_BALLOON",
    "CONFIG_EXT4_FS",
    "CONFIG_OVERLAY_FS",
    "CONFIG_FUSE_FS",
    "CONFIG_VIRTIO_FS", /* the job folder */
    "CONFIG_NET",
    "CONFIG_INET",
    "CONFIG_IPV6", /* net-isolation.sh probes with IPv6 link-local addresses */
    "CONFIG_UNIX",
    "CONFIG_CGROUPS", /* the job cgroup (src/guest/jobcg.c) */
    "CONFIG_MEMCG",
    "CONFIG_VM_EVENT_COUNTERS", /* oom_kill in /proc/vmstat (src/guest/jobcg.c) */
    "CONFIG_SYSVIPC",		/* MPI's shared memory */
    "CONFIG_SHMEM",
    "CONFIG_FUTEX",
    "CONFIG_POSIX_TIMERS", /* alarm(), setitimer(): busybox nc -w, user programs */
    "CONFIG_EPOLL",
    "CONFIG_EVENTFD",
    "CONFIG_SIGNALFD",
    "CONFIG_CROSS_MEMORY_ATTACH", /* UCX's cma, Open MPI's vader */
    "CONFIG_CPU_MITIGATIONS",	  /* mitigations stay on */
};

int kbuild_check_config(const char *config_text, const char **ret_missing)
{
	for (size_t i = 0; i < ARRAY_SIZE(required); i++) {
		char want[128];
		const char *p = config_text;
		size_t n = (size_t)snprintf(want, sizeof(want), "%s=y", required[i]);
		bool found = false;

		while ((p = strstr(p, want))) {
			if ((p == config_text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) {
				found = true;
				break;
			}
			p += n;
		}
		if (!found) {
			*ret_missing = required[i];
			return -ENOENT;
		}
	}
	return 0;
}

/* First 16 hex digits of the SHA-256 of data: enough to tell fragments apart. */
static void short_hash(const char *data, size_t len, char out[17])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL);
	for (unsigned i = 0; i < 8; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Runs argv; a failure becomes an error naming what, with the last line it printed. */
static int run(char *const argv[], const char *cwd, int log_fd, const char *what, char **ret_error)
{
	struct proc_options po = {.cwd = cwd, .stdout_fd = log_fd};
	_cleanup_free_ char *err = NULL, *last = NULL;
	int code = 0, r;

	r = proc_run(argv, &po, NULL, &err, &code);
	if (r < 0 || code != 0) {
		if (log_fd >= 0 && err)
			fs_write_all(log_fd, err, strlen(err));
		last = proc_last_line(err);
		return error_set(ret_error, r < 0 ? r : -EIO, "%s failed (%s)%s", what,
				 r < 0	? strerror(-r)
				 : last ? last
					: "exit code",
				 code == 127 ? "; install the kernel build dependencies "
					       "(scripts/install-deps.sh)"
					     : "");
	}
	return 0;
}

/* The installed version of a Debian package, or -ENOENT. */
static int package_version(const char *package, char **ret_version)
{
	char *argv[] = {"dpkg-query", "-W", "-f=${Status} ${Version}", (char *)package, NULL};
	_cleanup_free_ char *out = NULL;
	const char *v;
	int code = 0, r;

	r = proc_run(argv, NULL, &out, NULL, &code);
	if (r < 0)
		return r;
	if (code != 0 || !out || !strstr(out, "install ok installed"))
		return -ENOENT;
	v = strrchr(out, ' ');
	*ret_version = strdup(v ? v + 1 : out);
	return *ret_version ? 0 : -ENOMEM;
}

/* Removes work directories of builds that died; the caller holds the lock, so no live
 * build owns one. */
static void clean_stale(const char *kdir)
{
	DIR *d = opendir(kdir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		_cleanup_free_ char *p = NULL;

		if (strncmp(de->d_name, WORK_PREFIX, strlen(WORK_PREFIX)) != 0)
			continue;
		p = fs_path_join(kdir, de->d_name);
		if (p) {
			log_debug("removing %s, left by a kernel build that did not finish", p);
			fs_rm_rf(p);
		}
	}
	closedir(d);
}

static int copy_out(const char *obj, const char *rel, const char *out, const char *name)
{
	_cleanup_free_ char *src = fs_path_join(obj, rel), *dst = fs_path_join(out, name);

	if (!src || !dst)
		return -ENOMEM;
	return fs_copy_file(src, dst, 0644);
}

/* Configures, checks and compiles in work; the result goes to work/out. */
static int build_in(const struct kbuild_options *o, const char *tarball, const char *work,
		    char **ret_error)
{
	_cleanup_free_ char *src = fs_path_join(work, "src"), *obj = fs_path_join(work, "obj"),
			    *out = fs_path_join(work, "out"), *log_path = NULL, *config_path = NULL,
			    *config = NULL, *objarg = NULL, *jobs = NULL, *modules = NULL;
	_cleanup_close_ int log_fd = -1;
	const char *missing = NULL;
	long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int r;

	if (!src || !obj || !out)
		return -ENOMEM;
	log_path = fs_path_join(work, "build.log");
	config_path = fs_path_join(obj, ".config");
	modules = fs_path_join(out, "modules");
	if (!log_path || !config_path || !modules || asprintf(&objarg, "O=%s", obj) < 0 ||
	    asprintf(&jobs, "-j%d",
		     o->jobs > 0  ? o->jobs
		     : n_cpus > 0 ? (int)n_cpus
				  : 1) < 0)
		return -ENOMEM;
	if (fs_mkdir_p(src, 0755) < 0 || fs_mkdir_p(obj, 0755) < 0 || fs_mkdir_p(modules, 0755) < 0)
		return -errno;
	log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (log_fd < 0)
		return -errno;

	log_info("kernel: unpacking %s", tarball);
	{
		char *argv[] = {"tar", "-xf", (char *)tarball, "-C", src, "--strip-components=1",
				NULL};
		r = run(argv, NULL, log_fd, "unpacking the kernel source", ret_error);
		if (r < 0)
			return r;
	}
	log_info("kernel: configuring (tinyconfig + %s)", o->fragment_path);
	{
		char *tiny[] = {"make", "-s", objarg, "ARCH=x86_64", "tinyconfig", NULL};
		char *merge[] = {"scripts/kconfig/merge_config.sh", "-m", "-O", obj, config_path,
				 (char *)o->fragment_path,	    NULL};
		char *old[] = {"make", "-s", objarg, "ARCH=x86_64", "olddefconfig", NULL};

		r = run(tiny, src, log_fd, "make tinyconfig", ret_error);
		if (r == 0)
			r = run(merge, src, log_fd, "merging the config fragment", ret_error);
		if (r == 0)
			r = run(old, src, log_fd, "make olddefconfig", ret_error);
		if (r < 0)
			return r;
	}
	r = fs_read_file(config_path, CONFIG_MAX_BYTES, &config, NULL);
	if (r < 0)
		return error_set(ret_error, r, "reading %s: %s", config_path, strerror(-r));
	if (kbuild_check_config(config, &missing) < 0)
		return error_set(ret_error, -EINVAL,
				 "the kernel configured from %s lacks %s, which vmhpc guests "
				 "need; set %s=y in the fragment (and what it depends on: see "
				 "`make menuconfig`, search %s)",
				 o->fragment_path, missing, missing, missing + strlen("CONFIG_"));
	log_info("kernel: compiling (make %s bzImage; minutes)", jobs);
	{
		char *argv[] = {"make", objarg, "ARCH=x86_64", jobs, "bzImage", NULL};

		r = run(argv, src, log_fd, "compiling the kernel", ret_error);
		if (r < 0)
			return r;
	}
	{
		/* The symbol table is of no use to QEMU and costs every image its bytes. */
		_cleanup_free_ char *src_elf = fs_path_join(obj, "vmlinux"),
				    *dst_elf = fs_path_join(out, "vmlinux");
		char *argv[] = {"objcopy", "--strip-all", src_elf, dst_elf, NULL};

		if (!src_elf || !dst_elf)
			return -ENOMEM;
		r = run(argv, NULL, log_fd, "stripping vmlinux", ret_error);
		if (r < 0)
			return r;
	}
	r = copy_out(obj, "arch/x86/boot/bzImage", out, "bzImage");
	if (r == 0)
		r = copy_out(obj, ".config", out, "config");
	if (r == 0)
		r = copy_out(obj, "include/config/kernel.release", out, "release");
	if (r == 0) {
		/* No modules: the image builder reads an empty modules.dep as "everything is
		 * built in" (src/image/kernel.c). */
		_cleanup_free_ char *dep = fs_path_join(modules, "modules.dep");

		r = dep ? fs_write_atomic(dep, "", 0, 0644) : -ENOMEM;
	}
	if (r < 0)
		return error_set(ret_error, r, "copying the built kernel from %s: %s", obj,
				 strerror(-r));
	return fs_fsync_dir(out);
}

int kbuild_ensure(const struct kbuild_options *o, char **ret_dir, char **ret_error)
{
	_cleanup_free_ char *version = NULL, *tarball = NULL, *fragment = NULL, *kdir = NULL,
			    *key = NULL, *dir = NULL, *lock_path = NULL, *work = NULL, *out = NULL,
			    *probe = NULL;
	_cleanup_close_ int lock_fd = -1;
	size_t fragment_len = 0;
	char hash[17];
	int r;

	if (strcmp(o->source, KBUILD_SOURCE_DEFAULT) != 0)
		return error_set(ret_error, -ENOTSUP,
				 "kernel source '%s' is not supported: the config fragment is "
				 "written for %s; use source = %s",
				 o->source, KBUILD_SOURCE_DEFAULT, KBUILD_SOURCE_DEFAULT);
	r = package_version(o->source, &version);
	if (r < 0)
		return error_set(ret_error, r,
				 "Debian package %s is not installed; install it (apt-get install "
				 "%s, or scripts/install-deps.sh)",
				 o->source, o->source);
	if (asprintf(&tarball, "/usr/src/%s.tar.xz", o->source) < 0)
		return -ENOMEM;
	if (access(tarball, R_OK) < 0)
		return error_set(ret_error, -errno,
				 "%s: %m; reinstall %s (apt-get install --reinstall %s)", tarball,
				 o->source, o->source);
	r = fs_read_file(o->fragment_path, FRAGMENT_MAX_BYTES, &fragment, &fragment_len);
	if (r < 0)
		return error_set(
		    ret_error, r,
		    "kernel config fragment %s: %s; give the repo's kernel/vmhpc.config "
		    "(VMHPC_KERNEL_CONFIG)",
		    o->fragment_path, strerror(-r));
	short_hash(fragment, fragment_len, hash);
	kdir = fs_path_join(o->cache_dir, "kernel");
	if (!kdir || asprintf(&key, "%s-%s-%s", o->source, version, hash) < 0)
		return -ENOMEM;
	dir = fs_path_join(kdir, key);
	probe = dir ? fs_path_join(dir, "vmlinux") : NULL;
	if (!probe)
		return -ENOMEM;
	if (fs_exists(probe))
		goto done;

	r = fs_mkdir_p(kdir, 0755);
	lock_path = fs_path_join(kdir, LOCK_NAME);
	if (r < 0 || !lock_path)
		return error_set(ret_error, r < 0 ? r : -ENOMEM, "kernel cache %s: %s", kdir,
				 strerror(r < 0 ? -r : ENOMEM));
	lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lock_fd < 0)
		return error_set(ret_error, -errno, "kernel cache lock %s: %m", lock_path);
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		log_info("kernel: another build holds %s; waiting for it", lock_path);
		if (flock(lock_fd, LOCK_EX) < 0)
			return error_set(ret_error, -errno, "locking %s: %m", lock_path);
	}
	if (fs_exists(probe)) /* built by the one we waited for */
		goto done;
	clean_stale(kdir);
	r = fs_mkdtemp(kdir, WORK_PREFIX, &work);
	if (r < 0)
		return error_set(ret_error, r, "making a work directory in %s: %s", kdir,
				 strerror(-r));
	/* The one slow step a first image build or `make demo` can take: say what, why, and
	 * that it is paid once. */
	log_info("kernel: building the guest kernel from %s %s with %s (fragment %s): once per "
		 "machine, about 5 min of 2 idle cores (more when busy); then cached in %s for "
		 "every image",
		 o->source, version, o->fragment_path, hash, dir);
	r = build_in(o, tarball, work, ret_error);
	if (r == 0) {
		out = fs_path_join(work, "out");
		/* The kernel appears whole or not at all. */
		if (!out || rename(out, dir) < 0)
			r = error_set(ret_error, out ? -errno : -ENOMEM, "moving %s to %s: %m", out,
				      dir);
		else
			fs_fsync_dir(kdir);
	}
	if (r < 0 && ret_error && *ret_error) {
		/* Keep the log next to the cache for the user to read. */
		_cleanup_free_ char *log_src = fs_path_join(work, "build.log"), *log_dst = NULL;
		char *longer = NULL;

		if (log_src && asprintf(&log_dst, "%s/%s.failed.log", kdir, key) >= 0 &&
		    fs_copy_file(log_src, log_dst, 0644) == 0 &&
		    asprintf(&longer, "%s (log: %s)", *ret_error, log_dst) >= 0) {
			free(*ret_error);
			*ret_error = longer;
		}
	}
	fs_rm_rf(work);
	if (r < 0)
		return r;
done:
	*ret_dir = TAKE_PTR(dir);
	return 0;
}
