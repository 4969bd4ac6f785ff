/* vmhpc-init: PID 1 inside every vmhpc guest, linked statically so the boot initramfs needs
 * nothing else. In order (docs/guest.md has the details):
 *   1. mount proc, sys, devtmpfs; load the modules /etc/vmhpc/modules lists;
 *   2. read vmhpc.* keys from /proc/cmdline (cmdline.c); open the virtio-serial control
 *      port and wait for the host's SETUP on it: the job's token and folder (control.c);
 *   3. mount the image's root (virtio-pmem with DAX, or virtio-blk) read-only, a size-capped
 *      tmpfs + overlayfs over it, the job's virtiofs share; move /proc /sys /dev into it and
 *      switch root, freeing the initramfs;
 *   4. /dev/pts, /dev/shm, hostname, /etc/hosts, lo and eth0;
 *   5. serve the exec protocol (guest/frame.h) on TCP and on the virtio-serial control port
 *      (service.c): token-authenticated commands with streamed I/O, signals, INFO and
 *      SHUTDOWN.
 * This file is the boot sequence (1, 3, 4) and main(). One poll loop; signals arrive through
 * a signalfd; every child is reaped. PID 1 never returns: on SHUTDOWN, SIGTERM, SIGINT or
 * SIGPWR it kills what runs, syncs and powers off. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "guest/cmdline.h"
#include "guest/console.h"
#include "guest/control.h"
#include "guest/frame.h"
#include "guest/jobcg.h"
#include "guest/service.h"
#include "guest/shmdev.h"
#include "shm/shm.h"
#include "util/cleanup.h"
#include "util/time.h"

#define MODULES_LIST	 "/etc/vmhpc/modules"
#define DEVICE_WAIT_MS	 5000  /* for /dev/pmem0, /dev/vda, eth0 to appear after modprobe */
#define CONTROL_SCAN_MS	 10000 /* for the control port to appear after modprobe */
#define SETUP_TIMEOUT_MS 30000 /* for the host's SETUP once the port is open */
#define TOKEN_FILE	 "/run/vmhpc/token"

static int mount_or_warn(const char *src, const char *target, const char *type, unsigned long flags,
			 const char *data)
{
	mkdir(target, 0755);
	if (mount(src, target, type, flags, data) < 0 && errno != EBUSY) {
		int r = -errno;

		console_say("mounting %s on %s: %s", type ? type : src, target, strerror(errno));
		return r;
	}
	return 0;
}

static void load_modules(void)
{
	_cleanup_fclose_ FILE *f = fopen(MODULES_LIST, "re");
	char line[4096];

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		_cleanup_close_ int fd = -1;

		line[strcspn(line, "\n")] = '\0';
		if (!line[0])
			continue;
		fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			console_say("module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			console_say("loading %s: %s", line, strerror(errno));
	}
}

/* ---- the root file system ---- */

static bool wait_for_path(const char *path, int timeout_ms)
{
	int64_t end = time_now_ms() + timeout_ms;

	/* Drivers probe devices asynchronously after their module loaded. */
	while (access(path, F_OK) < 0) {
		if (time_now_ms() >= end)
			return false;
		console_sleep_ms(10);
	}
	return true;
}

/* Mounts the image's root at /lower: "pmem", "blk" or NULL when there is none. */
static const char *mount_lower(enum root_kind kind)
{
	int64_t end = time_now_ms() + (kind == ROOT_AUTO ? 2000 : DEVICE_WAIT_MS);
	bool pmem = false, blk = false;

	mkdir("/lower", 0755);
	for (;;) {
		pmem = kind != ROOT_BLK && access("/dev/pmem0", F_OK) == 0;
		blk = kind != ROOT_PMEM && access("/dev/vda", F_OK) == 0;
		if (pmem || blk || time_now_ms() >= end)
			break;
		console_sleep_ms(10);
	}
	if (pmem) {
		/* DAX: file reads map the host's page cache; the guest keeps no copy. */
		if (mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, "dax") == 0)
			return "pmem";
		console_say("mounting /dev/pmem0 with dax: %s; mounting it without",
			    strerror(errno));
		if (mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, NULL) == 0)
			return "pmem";
		console_say("mounting /dev/pmem0: %s", strerror(errno));
		if (kind == ROOT_PMEM)
			return NULL;
		blk = access("/dev/vda", F_OK) == 0;
	}
	if (blk) {
		if (mount("/dev/vda", "/lower", "ext4", MS_RDONLY, NULL) == 0)
			return "blk";
		console_say("mounting /dev/vda: %s", strerror(errno));
		return NULL;
	}
	if (kind != ROOT_NONE)
		console_say(
		    "no root device (/dev/pmem0 or /dev/vda) appeared; staying in the initramfs");
	return NULL;
}

/* /newroot = overlay of a size-capped tmpfs over the read-only root at /lower. */
static int mount_newroot(const struct config *cfg)
{
	char opts[64];

	snprintf(opts, sizeof(opts), "mode=0755,size=%um", cfg->overlay_mb);
	mkdir("/newroot", 0755);
	if (mount_or_warn("tmpfs", "/rw", "tmpfs", MS_NOSUID | MS_NODEV, opts) == 0 &&
	    mkdir("/rw/upper", 0755) == 0 && mkdir("/rw/work", 0755) == 0 &&
	    mount("overlay", "/newroot", "overlay", 0,
		  "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work") == 0)
		return 0;
	console_say("no overlay (%s): the root stays read-only", strerror(errno));
	if (mount("/lower", "/newroot", NULL, MS_BIND, NULL) < 0) {
		console_say("bind-mounting the root: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t len = strlen(path);

	if (len >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void mount_share(const char *share)
{
	/* Relative to /newroot: the path may be 4095 bytes long, "/newroot" + it would not be. */
	const char *target = share + 1;
	int64_t end = time_now_ms() + DEVICE_WAIT_MS;
	int r;

	if (chdir("/newroot") < 0) {
		console_say("entering /newroot for the share: %s", strerror(errno));
		return;
	}
	r = mkdir_p(target, 0755);
	if (r < 0) {
		console_say("creating %s for the share: %s", share, strerror(-r));
		goto out;
	}
	/* The virtio-fs device registers its tag when its driver probed it: retry briefly. */
	while (mount("job", target, "virtiofs", MS_NOSUID | MS_NODEV, NULL) < 0) {
		if (time_now_ms() >= end ||
		    (errno != ENOENT && errno != ENODEV && errno != EINVAL)) {
			console_say("mounting the share (virtiofs tag \"job\") on %s: %s", share,
				    strerror(errno));
			goto out;
		}
		console_sleep_ms(20);
	}
out:
	(void)!chdir("/");
}

/* Deletes the initramfs's files as switch_root does: they are RAM that nothing uses once the
 * new root is in place (the modules are loaded, this binary's pages stay mapped). Stays on
 * the old root's device: mount points (moved away already) are never entered. */
static void delete_tree(int dfd, dev_t dev)
{
	DIR *d = fdopendir(dfd);
	struct dirent *e;

	if (!d) {
		close(dfd);
		return;
	}
	while ((e = readdir(d))) {
		struct stat st;
		bool is_dir;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
			continue;
		is_dir = S_ISDIR(st.st_mode);
		if (is_dir) {
			int sub = openat(dirfd(d), e->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

			if (sub >= 0)
				delete_tree(sub, dev);
		}
		unlinkat(dirfd(d), e->d_name, is_dir ? AT_REMOVEDIR : 0);
	}
	closedir(d);
}

/* Moves the kernel file systems into /newroot, makes it / (MS_MOVE + chroot, as switch_root
 * does: pivot_root cannot leave an initramfs) and frees the initramfs. */
static int switch_root(void)
{
	static const char *const moved[] = {"/dev", "/proc", "/sys"};
	_cleanup_close_ int old = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct statfs sfs;
	struct stat st;

	for (size_t i = 0; i < ARRAY_SIZE(moved); i++) {
		char target[64];

		snprintf(target, sizeof(target), "/newroot%s", moved[i]);
		mkdir(target, 0755);
		if (mount(moved[i], target, NULL, MS_MOVE, NULL) < 0) {
			console_say("moving %s into the new root: %s", moved[i], strerror(errno));
			return -errno;
		}
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0) {
		console_say("switching root: %s", strerror(errno));
		return -errno;
	}
	/* Only ever delete an initramfs (ramfs or tmpfs), never a disk. */
	if (old >= 0 && fstatfs(old, &sfs) == 0 && fstat(old, &st) == 0 &&
	    (sfs.f_type == 0x858458f6 /* RAMFS_MAGIC */ || sfs.f_type == 0x01021994 /* TMPFS */))
		delete_tree(TAKE_FD(old), st.st_dev);
	return 0;
}

static void setup_root(const struct config *cfg)
{
	const char *kind;

	if (cfg->root == ROOT_NONE || !(kind = mount_lower(cfg->root))) {
		mount_or_warn("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m");
		return;
	}
	if (mount_newroot(cfg) < 0)
		return;
	/* The real root and the overlay's RAM stay visible (and in /proc/mounts) under /run. */
	mount_or_warn("tmpfs", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m");
	mkdir("/newroot/run/vmhpc", 0755);
	mkdir("/newroot/run/vmhpc/root", 0755);
	mkdir("/newroot/run/vmhpc/rw", 0755);
	if (mount("/lower", "/newroot/run/vmhpc/root", NULL, MS_MOVE, NULL) < 0)
		console_say("moving the root under /run/vmhpc: %s", strerror(errno));
	if (access("/rw/upper", F_OK) == 0 &&
	    mount("/rw", "/newroot/run/vmhpc/rw", NULL, MS_MOVE, NULL) < 0)
		console_say("moving the overlay under /run/vmhpc: %s", strerror(errno));
	if (cfg->share[0])
		mount_share(cfg->share);
	if (switch_root() == 0)
		console_say("root: %s%s", kind, cfg->share[0] ? ", share mounted" : "");
}

static void setup_dev(void)
{
	static const char *const links[][2] = {{"/proc/self/fd", "/dev/fd"},
					       {"/proc/self/fd/0", "/dev/stdin"},
					       {"/proc/self/fd/1", "/dev/stdout"},
					       {"/proc/self/fd/2", "/dev/stderr"}};

	mount_or_warn("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		      "mode=0620,ptmxmode=0666");
	/* POSIX shared memory: MPICH and UCX put their intra-VM channels here. */
	mount_or_warn("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	for (size_t i = 0; i < ARRAY_SIZE(links); i++)
		(void)!symlink(links[i][0], links[i][1]);
}

/* ---- names and network ---- */

static void write_hosts(const struct config *cfg)
{
	_cleanup_fclose_ FILE *f = NULL;
	char own[INET_ADDRSTRLEN] = "";
	bool own_listed = false;

	if (cfg->name[0]) {
		if (sethostname(cfg->name, strlen(cfg->name)) < 0)
			console_say("sethostname: %s", strerror(errno));
		f = fopen("/etc/hostname", "we");
		if (f)
			fprintf(f, "%s\n", cfg->name);
		if (f)
			fclose(f);
		f = NULL;
	}
	if (cfg->have_ip)
		inet_ntop(AF_INET, &cfg->ip, own, sizeof(own));
	f = fopen("/etc/hosts", "we");
	if (!f) {
		console_say("writing /etc/hosts: %s", strerror(errno));
		return;
	}
	fprintf(f, "127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		fprintf(f, "%s %s\n", cfg->hosts[i].addr, cfg->hosts[i].name);
		if (strcmp(cfg->hosts[i].name, cfg->name) == 0)
			own_listed = true;
	}
	if (cfg->name[0] && !own_listed)
		fprintf(f, "%s %s\n", own[0] ? own : "127.0.1.1", cfg->name);
	if (fflush(f) != 0)
		console_say("writing /etc/hosts: %s", strerror(errno));
}

static int if_set_flags(int s, const char *ifname, short flags)
{
	struct ifreq ifr = {0};

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= flags;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		return -errno;
	return 0;
}

static int if_set_addr(int s, const char *ifname, unsigned long req, struct in_addr a)
{
	struct ifreq ifr = {0};
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = a};

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
	if (ioctl(s, req, &ifr) < 0)
		return -errno;
	return 0;
}

static void setup_network(const struct config *cfg)
{
	_cleanup_close_ int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct in_addr mask;
	int r;

	if (s < 0) {
		console_say("network: %s", strerror(errno));
		return;
	}
	/* Bringing lo up gives it 127.0.0.1/8. */
	r = if_set_flags(s, "lo", IFF_UP);
	if (r < 0)
		console_say("bringing up lo: %s", strerror(-r));
	if (!cfg->have_ip)
		return;
	if (!wait_for_path("/sys/class/net/eth0", DEVICE_WAIT_MS)) {
		console_say("no eth0 appeared; the network stays down");
		return;
	}
	mask.s_addr = htonl(cfg->prefix ? ~0u << (32 - cfg->prefix) : 0);
	if ((r = if_set_addr(s, "eth0", SIOCSIFADDR, cfg->ip)) < 0 ||
	    (r = if_set_addr(s, "eth0", SIOCSIFNETMASK, mask)) < 0 ||
	    (r = if_set_flags(s, "eth0", IFF_UP | IFF_RUNNING)) < 0)
		console_say("configuring eth0: %s", strerror(-r));
}

/* The host's SETUP, before anything uses the token or the job folder: returns the open
 * control port for the exec service (-1: none). Without SETUP the guest boots on, and
 * refuses every exec request; the console says why. */
static int receive_setup(struct config *cfg, char *path, size_t path_size)
{
	struct frame_setup setup;
	int fd, r;

	r = control_open(CONTROL_SCAN_MS, path, path_size, &fd);
	if (r < 0) {
		console_say("no control port %s (%s): no token, no job folder; every exec "
			    "request will be refused",
			    CONTROL_PORT_NAME, strerror(-r));
		return -1;
	}
	r = control_read_setup(fd, SETUP_TIMEOUT_MS, &setup);
	if (r < 0) {
		console_say("no SETUP from the host on %s within %d s (%s): no token, no job "
			    "folder; every exec request will be refused",
			    path, SETUP_TIMEOUT_MS / 1000,
			    r == -EBADMSG ? "malformed frame" : strerror(-r));
		return fd;
	}
	cfg->have_token = true;
	memcpy(cfg->token, setup.token, sizeof(cfg->token));
	if (setup.share[0] && control_share_valid(setup.share))
		snprintf(cfg->share, sizeof(cfg->share), "%s", setup.share);
	else if (setup.share[0])
		console_say("the job folder \"%.64s\" is not an absolute path outside /proc /sys "
			    "/dev /run; not mounted",
			    setup.share);
	explicit_bzero(&setup, sizeof(setup));
	return fd;
}

/* The token for root's processes that did not come from the exec service (a shell on the
 * console): /run/vmhpc/token, 0400 root, 64 hex digits. Commands the service runs have it in
 * $VMHPC_TOKEN whatever their user. */
static void write_token_file(const struct config *cfg)
{
	char hex[2 * FRAME_TOKEN_BYTES + 2];
	_cleanup_close_ int fd = -1;

	if (!cfg->have_token)
		return;
	mkdir("/run/vmhpc", 0755);
	fd = open(TOKEN_FILE, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
	if (fd < 0) {
		console_say("writing %s: %s", TOKEN_FILE, strerror(errno));
		return;
	}
	for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++)
		snprintf(hex + 2 * i, 3, "%02x", cfg->token[i]);
	hex[2 * FRAME_TOKEN_BYTES] = '\n';
	if (write(fd, hex, sizeof(hex) - 1) != (ssize_t)sizeof(hex) - 1)
		console_say("writing %s: %s", TOKEN_FILE, strerror(errno));
	explicit_bzero(hex, sizeof(hex));
}

/* SHM_KEY_FILE: this VM's region key for UCX's transport, which cannot trust its
 * environment under hydra (src/ucx/uct_ivshmem.c). Not a secret (shm.h). */
static void write_shm_key(const struct shmdev *shm)
{
	char text[32];
	int n = snprintf(text, sizeof(text), "%016llx\n", (unsigned long long)shm->key);
	_cleanup_close_ int fd =
	    open(SHM_KEY_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);

	if (fd < 0 || write(fd, text, (size_t)n) != n)
		console_say("writing %s: %s", SHM_KEY_FILE, strerror(errno));
}

/* Development mode on a host (not PID 1): `VMHPC_TOKEN=HEX vmhpc-init --serve PORT` serves
 * the exec protocol on 127.0.0.1:PORT; SHUTDOWN ends it instead of powering anything off. */
static int serve_dev(int argc, char **argv)
{
	struct service_config sc = {.loopback_only = true, .control_fd = -1};
	struct service *s;
	unsigned long port;
	sigset_t all;
	const char *token = getenv("VMHPC_TOKEN");

	if (argc != 3 || strcmp(argv[1], "--serve") != 0 ||
	    !cmdline_parse_uint(argv[2], 65535, &port) || port == 0) {
		console_say(
		    "must run as PID 1 inside a vmhpc guest (or: VMHPC_TOKEN=HEX %s --serve PORT)",
		    argv[0]);
		return 1;
	}
	sc.port = (uint16_t)port;
	sc.have_token = token && frame_token_from_hex(token, sc.token) == 0;
	if (!sc.have_token) {
		console_say("VMHPC_TOKEN must be 64 hex digits");
		return 1;
	}
	sigemptyset(&all);
	sigaddset(&all, SIGCHLD);
	sigaddset(&all, SIGTERM);
	sigaddset(&all, SIGINT);
	sigaddset(&all, SIGPWR);
	sigaddset(&all, SIGUSR2);
	sigaddset(&all, SIGPIPE);
	sigprocmask(SIG_BLOCK, &all, NULL);
	if (service_new(&sc, &s) < 0 || !service_listening(s))
		return 1;
	service_run(s);
}

int main(int argc, char **argv)
{
	struct config cfg = {.overlay_mb = CMDLINE_DEFAULT_OVERLAY_MB,
			     .exec_port = CMDLINE_DEFAULT_EXEC_PORT};
	struct service_config sc = {.pid1 = true};
	char control_path[PATH_MAX] = "";
	struct service *s;
	sigset_t all;
	int r;

	if (getpid() != 1)
		return serve_dev(argc, argv);
	/* Signals are taken synchronously through a signalfd, never by handlers. */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	/* Ctrl-Alt-Del becomes SIGINT to us (an orderly power-off), not an instant reboot. */
	reboot(RB_DISABLE_CAD);
	umask(022);

	mount_or_warn("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_warn("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_warn("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	load_modules();
	cmdline_parse(&cfg);
	if (cfg.probe) {
		/* The accelerator probe only asks whether this guest reaches its init. */
		console_say("ready (accelerator probe)");
		reboot(RB_POWER_OFF);
	}
	/* Before the root and the job folder are mounted and before anything listens on TCP:
	 * the folder's path and the token come in SETUP. */
	sc.control_fd = receive_setup(&cfg, control_path, sizeof(control_path));
	setup_root(&cfg);
	setup_dev();
	r = jobcg_setup();
	if (r < 0)
		console_say("the job's cgroup: %s; its peak memory will not be known",
			    strerror(-r));
	sc.job_cgroup = r == 0;
	write_hosts(&cfg);
	write_token_file(&cfg);
	setup_network(&cfg);
	{
		/* Static: the service borrows it for the machine's life. */
		static struct shmdev shm;
		const char *message = NULL;

		if (shmdev_setup(&shm, NULL, cfg.have_shm_node, cfg.shm_node, cfg.shm_group,
				 cfg.token, sizeof(cfg.token), &message) < 0)
			console_say("%s", message);
		else if (shm.present) {
			console_say("shared-memory channel %s, node %u", shm.resource,
				    cfg.shm_node);
			write_shm_key(&shm);
		}
		sc.shm = &shm;
	}

	sc.have_token = cfg.have_token;
	memcpy(sc.token, cfg.token, sizeof(sc.token));
	explicit_bzero(cfg.token, sizeof(cfg.token));
	sc.port = cfg.exec_port;
	sc.control_name = control_path;
	/* PID 1 must not exit: without a signalfd (out of memory), try again. */
	while (service_new(&sc, &s) < 0)
		console_sleep_ms(1000);
	explicit_bzero(sc.token, sizeof(sc.token));
	{
		struct timespec up;

		/* The boot benchmarks read this line: time since the kernel started. */
		clock_gettime(CLOCK_BOOTTIME, &up);
		console_say("ready %ld.%03ld s after boot", (long)up.tv_sec, up.tv_nsec / 1000000);
	}
	service_run(s);
}
