/* vmhpc-init: PID 1 inside every vmhpc guest, linked statically so the boot initramfs needs
 * nothing else. In order (docs/guest.md has the details):
 *   1. mount proc, sys, devtmpfs; load the modules /etc/vmhpc/modules lists;
 *   2. read vmhpc.* keys from /proc/cmdline;
 *   3. mount the image's root (virtio-pmem with DAX, or virtio-blk) read-only, a size-capped
 *      tmpfs + overlayfs over it, the job's virtiofs share; move /proc /sys /dev into it and
 *      switch root, freeing the initramfs;
 *   4. /dev/pts, /dev/shm, hostname, /etc/hosts, lo and eth0;
 *   5. serve the exec protocol (guest/frame.h) on TCP and on the virtio-serial control port:
 *      token-authenticated commands with streamed I/O, signals, INFO and SHUTDOWN.
 * One poll loop; signals arrive through a signalfd; every child is reaped. PID 1 never
 * returns: on SHUTDOWN, SIGTERM, SIGINT or SIGPWR it kills what runs, syncs and powers off. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guest/frame.h"
#include "util/cleanup.h"

#define MODULES_LIST	   "/etc/vmhpc/modules"
#define CONTROL_PORT_NAME  "org.vmhpc.control"
#define DEFAULT_EXEC_PORT  7000
#define DEFAULT_OVERLAY_MB 128
#define MAX_OVERLAY_MB	   (1u << 20)
#define MAX_HOSTS	   4096
#define MAX_SHARE_PATH	   1024
#define DEVICE_WAIT_MS	   5000 /* for /dev/pmem0, /dev/vda, eth0 to appear after modprobe */

#define MAX_CONNS	 64		 /* clients at once; one more is refused with ERROR */
#define READ_CHUNK	 (64u * 1024u)	 /* per read of a socket or a command's pipe */
#define OUT_HIGH_WATER	 (256u * 1024u)	 /* queued for a peer: stop reading the command */
#define STDIN_HIGH_WATER (1024u * 1024u) /* queued for the command: stop reading the peer */
#define AUTH_TIMEOUT_MS	 10000		 /* a peer must say HELLO within this */
#define DRAIN_MS	 1000		 /* a refused peer gets this long to read our ERROR */
/* After a command exited, background children may hold its pipes: EXIT waits this long. */
#define LINGER_MS	2000
#define CONTROL_SCAN_MS 10000 /* look for the control port this long after start */
#define CONTROL_POLL_MS 1000  /* a disconnected control port is checked this often at least */

static const char *const default_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", NULL};

static inline void cleanup_closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	/* One write per line: the console is shared with the kernel's messages. */
	n = snprintf(line, sizeof(line), "vmhpc-init: ");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, (size_t)n);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Peers can cause messages at will (a stream of refused connections), and the serial console
 * is slow under TCG: at most 10 such lines a second, the rest counted. */
static void say_peer(const char *peer, const char *msg)
{
	static int64_t window_ms;
	static unsigned shown, dropped;
	int64_t now = now_ms();

	if (now - window_ms >= 1000) {
		if (dropped)
			say("%u more messages about peers suppressed", dropped);
		window_ms = now;
		shown = dropped = 0;
	}
	if (++shown > 10) {
		dropped++;
		return;
	}
	say("%s: %s", peer, msg);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int mount_or_warn(const char *src, const char *target, const char *type, unsigned long flags,
			 const char *data)
{
	mkdir(target, 0755);
	if (mount(src, target, type, flags, data) < 0 && errno != EBUSY) {
		int r = -errno;

		say("mounting %s on %s: %s", type ? type : src, target, strerror(errno));
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
			say("module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			say("loading %s: %s", line, strerror(errno));
	}
}

/* ---- the kernel command line ---- */

enum root_kind { ROOT_AUTO, ROOT_PMEM, ROOT_BLK, ROOT_NONE };

struct host_entry {
	char name[64];
	char addr[INET6_ADDRSTRLEN];
};

struct config {
	bool have_token;
	uint8_t token[FRAME_TOKEN_BYTES];
	char name[64];
	bool have_ip;
	struct in_addr ip;
	unsigned prefix;
	struct host_entry *hosts;
	size_t n_hosts;
	enum root_kind root;
	unsigned overlay_mb;
	char share[MAX_SHARE_PATH + 1];
	uint16_t exec_port;
};

/* Host and VM names: what /etc/hosts and sethostname take. */
static bool valid_name(const char *s, size_t len)
{
	if (len == 0 || len > 63)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return s[0] != '-' && s[0] != '.';
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *ret)
{
	char *end;
	unsigned long v;

	if (!s[0] || s[0] < '0' || s[0] > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*ret = v;
	return true;
}

/* vmhpc.share: an absolute path without . or .. parts, not /, not in the kernel's trees. */
static bool valid_share(const char *p)
{
	static const char *const reserved[] = {"/proc", "/sys", "/dev", "/run"};
	size_t len = strlen(p);

	if (p[0] != '/' || len < 2 || len > MAX_SHARE_PATH)
		return false;
	if (strstr(p, "/./") || strstr(p, "/../") || strstr(p, "//") ||
	    (len >= 2 && strcmp(p + len - 2, "/.") == 0) ||
	    (len >= 3 && strcmp(p + len - 3, "/..") == 0) || p[len - 1] == '/')
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(reserved); i++) {
		size_t n = strlen(reserved[i]);

		if (strncmp(p, reserved[i], n) == 0 && (p[n] == '\0' || p[n] == '/'))
			return false;
	}
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)p[i] < 0x20)
			return false;
	return true;
}

static void parse_hosts(struct config *cfg, const char *list)
{
	const char *p = list;

	while (*p) {
		size_t len = strcspn(p, ","), eq;
		char item[160];
		struct in6_addr a6;
		struct in_addr a4;
		struct host_entry *grown;

		if (len == 0 || len >= sizeof(item)) {
			if (len)
				say("vmhpc.hosts: entry of %zu characters skipped", len);
			p += len + (p[len] == ',');
			continue;
		}
		memcpy(item, p, len);
		item[len] = '\0';
		p += len + (p[len] == ',');
		eq = strcspn(item, "=");
		if (!item[eq] || !valid_name(item, eq) ||
		    (inet_pton(AF_INET, item + eq + 1, &a4) != 1 &&
		     inet_pton(AF_INET6, item + eq + 1, &a6) != 1)) {
			say("vmhpc.hosts: \"%s\" is not NAME=ADDRESS; skipped", item);
			continue;
		}
		if (cfg->n_hosts >= MAX_HOSTS) {
			say("vmhpc.hosts: more than %d entries; the rest skipped", MAX_HOSTS);
			return;
		}
		grown = realloc(cfg->hosts, (cfg->n_hosts + 1) * sizeof(*grown));
		if (!grown)
			return;
		cfg->hosts = grown;
		item[eq] = '\0';
		snprintf(grown[cfg->n_hosts].name, sizeof(grown->name), "%.63s", item);
		snprintf(grown[cfg->n_hosts].addr, sizeof(grown->addr), "%.45s", item + eq + 1);
		cfg->n_hosts++;
	}
}

static void parse_key(struct config *cfg, const char *key, const char *value)
{
	unsigned long v;

	if (strcmp(key, "token") == 0) {
		cfg->have_token = frame_token_from_hex(value, cfg->token) == 0;
		if (!cfg->have_token)
			say("vmhpc.token is not 64 hex digits; every exec request will be refused");
	} else if (strcmp(key, "name") == 0) {
		if (valid_name(value, strlen(value)))
			snprintf(cfg->name, sizeof(cfg->name), "%s", value);
		else
			say("vmhpc.name \"%.64s\" is not a host name; ignored", value);
	} else if (strcmp(key, "ip") == 0) {
		char addr[INET_ADDRSTRLEN + 4];
		char *slash;
		unsigned long prefix = 24;

		snprintf(addr, sizeof(addr), "%s", value);
		slash = strchr(addr, '/');
		if (slash)
			*slash++ = '\0';
		if (inet_pton(AF_INET, addr, &cfg->ip) == 1 &&
		    (!slash || parse_uint(slash, 32, &prefix))) {
			cfg->have_ip = true;
			cfg->prefix = (unsigned)prefix;
		} else {
			say("vmhpc.ip \"%.64s\" is not A.B.C.D/PREFIX; eth0 stays down", value);
		}
	} else if (strcmp(key, "hosts") == 0) {
		parse_hosts(cfg, value);
	} else if (strcmp(key, "root") == 0) {
		if (strcmp(value, "pmem") == 0)
			cfg->root = ROOT_PMEM;
		else if (strcmp(value, "blk") == 0)
			cfg->root = ROOT_BLK;
		else if (strcmp(value, "none") == 0)
			cfg->root = ROOT_NONE;
		else
			say("vmhpc.root \"%.64s\" is not pmem, blk or none; trying both", value);
	} else if (strcmp(key, "overlay_mb") == 0) {
		if (parse_uint(value, MAX_OVERLAY_MB, &v) && v > 0)
			cfg->overlay_mb = (unsigned)v;
		else
			say("vmhpc.overlay_mb \"%.64s\" is not 1..%u; using %u", value,
			    MAX_OVERLAY_MB, cfg->overlay_mb);
	} else if (strcmp(key, "share") == 0) {
		if (valid_share(value))
			snprintf(cfg->share, sizeof(cfg->share), "%s", value);
		else
			say("vmhpc.share \"%.64s\" is not an absolute path outside /proc /sys /dev "
			    "/run; not mounted",
			    value);
	} else if (strcmp(key, "exec_port") == 0) {
		if (parse_uint(value, 65535, &v) && v > 0)
			cfg->exec_port = (uint16_t)v;
		else
			say("vmhpc.exec_port \"%.64s\" is not 1..65535; using %u", value,
			    cfg->exec_port);
	} else {
		say("unknown key vmhpc.%.64s ignored", key);
	}
}

static void parse_cmdline(struct config *cfg)
{
	_cleanup_close_ int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	char buf[16384];
	ssize_t n;
	char *save = NULL;

	if (fd < 0) {
		say("reading /proc/cmdline: %s", strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		return;
	buf[n] = '\0';
	for (char *word = strtok_r(buf, " \t\n", &save); word;
	     word = strtok_r(NULL, " \t\n", &save)) {
		char *eq, *value;
		size_t vlen;

		if (strncmp(word, "vmhpc.", 6) != 0)
			continue;
		eq = strchr(word, '=');
		if (!eq) {
			say("kernel command line: \"%.64s\" has no value; ignored", word);
			continue;
		}
		*eq = '\0';
		value = eq + 1;
		vlen = strlen(value);
		/* The kernel passes key="value" through with its quotes. */
		if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
			value[vlen - 1] = '\0';
			value++;
		}
		parse_key(cfg, word + 6, value);
	}
}

/* ---- the root file system ---- */

static bool wait_for_path(const char *path, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	/* Drivers probe devices asynchronously after their module loaded. */
	while (access(path, F_OK) < 0) {
		if (now_ms() >= end)
			return false;
		sleep_ms(10);
	}
	return true;
}

/* Mounts the image's root at /lower: "pmem", "blk" or NULL when there is none. */
static const char *mount_lower(enum root_kind kind)
{
	int64_t end = now_ms() + (kind == ROOT_AUTO ? 2000 : DEVICE_WAIT_MS);
	bool pmem = false, blk = false;

	mkdir("/lower", 0755);
	for (;;) {
		pmem = kind != ROOT_BLK && access("/dev/pmem0", F_OK) == 0;
		blk = kind != ROOT_PMEM && access("/dev/vda", F_OK) == 0;
		if (pmem || blk || now_ms() >= end)
			break;
		sleep_ms(10);
	}
	if (pmem) {
		/* DAX: file reads map the host's page cache; the guest keeps no copy. */
		if (mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, "dax") == 0)
			return "pmem";
		say("mounting /dev/pmem0 with dax: %s; mounting it without", strerror(errno));
		if (mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, NULL) == 0)
			return "pmem";
		say("mounting /dev/pmem0: %s", strerror(errno));
		if (kind == ROOT_PMEM)
			return NULL;
		blk = access("/dev/vda", F_OK) == 0;
	}
	if (blk) {
		if (mount("/dev/vda", "/lower", "ext4", MS_RDONLY, NULL) == 0)
			return "blk";
		say("mounting /dev/vda: %s", strerror(errno));
		return NULL;
	}
	if (kind != ROOT_NONE)
		say("no root device (/dev/pmem0 or /dev/vda) appeared; staying in the initramfs");
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
	say("no overlay (%s): the root stays read-only", strerror(errno));
	if (mount("/lower", "/newroot", NULL, MS_BIND, NULL) < 0) {
		say("bind-mounting the root: %s", strerror(errno));
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
	char target[PATH_MAX];
	int64_t end = now_ms() + DEVICE_WAIT_MS;
	int r;

	snprintf(target, sizeof(target), "/newroot%s", share);
	r = mkdir_p(target, 0755);
	if (r < 0) {
		say("creating %s for the share: %s", share, strerror(-r));
		return;
	}
	/* The virtio-fs device registers its tag when its driver probed it: retry briefly. */
	while (mount("job", target, "virtiofs", MS_NOSUID | MS_NODEV, NULL) < 0) {
		if (now_ms() >= end || (errno != ENOENT && errno != ENODEV && errno != EINVAL)) {
			say("mounting the share (virtiofs tag \"job\") on %s: %s", share,
			    strerror(errno));
			return;
		}
		sleep_ms(20);
	}
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
			say("moving %s into the new root: %s", moved[i], strerror(errno));
			return -errno;
		}
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0) {
		say("switching root: %s", strerror(errno));
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
		say("moving the root under /run/vmhpc: %s", strerror(errno));
	if (access("/rw/upper", F_OK) == 0 &&
	    mount("/rw", "/newroot/run/vmhpc/rw", NULL, MS_MOVE, NULL) < 0)
		say("moving the overlay under /run/vmhpc: %s", strerror(errno));
	if (cfg->share[0])
		mount_share(cfg->share);
	if (switch_root() == 0)
		say("root: %s%s", kind, cfg->share[0] ? ", share mounted" : "");
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
			say("sethostname: %s", strerror(errno));
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
		say("writing /etc/hosts: %s", strerror(errno));
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
		say("writing /etc/hosts: %s", strerror(errno));
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
		say("network: %s", strerror(errno));
		return;
	}
	/* Bringing lo up gives it 127.0.0.1/8. */
	r = if_set_flags(s, "lo", IFF_UP);
	if (r < 0)
		say("bringing up lo: %s", strerror(-r));
	if (!cfg->have_ip)
		return;
	if (!wait_for_path("/sys/class/net/eth0", DEVICE_WAIT_MS)) {
		say("no eth0 appeared; the network stays down");
		return;
	}
	mask.s_addr = htonl(cfg->prefix ? ~0u << (32 - cfg->prefix) : 0);
	if ((r = if_set_addr(s, "eth0", SIOCSIFADDR, cfg->ip)) < 0 ||
	    (r = if_set_addr(s, "eth0", SIOCSIFNETMASK, mask)) < 0 ||
	    (r = if_set_flags(s, "eth0", IFF_UP | IFF_RUNNING)) < 0)
		say("configuring eth0: %s", strerror(-r));
}

/* ---- the exec service ---- */

struct job {
	pid_t pid; /* > 0 from fork until EXIT is sent */
	int in_fd, out_fd, err_fd;
	struct frame_buf in; /* STDIN bytes not yet written to the command */
	bool in_eof;	     /* STDIN_EOF seen: close in_fd once in is empty */
	bool reaped;
	int wstatus;
	int64_t reaped_ms;
};

struct conn {
	int fd;
	bool control; /* the virtio-serial port: fd belongs to the service, not to the conn */
	bool authed;
	bool closing; /* TCP, refused: flush, half-close, discard input until EOF or deadline */
	bool dead;    /* remove at the end of this turn */
	bool wr_shut;
	int64_t deadline_ms; /* HELLO due, or the end of draining */
	char peer[64];
	struct frame_decoder *dec;
	struct frame_buf out;
	struct job job;
};

struct service {
	int sig_fd;
	int listen_fd;
	bool pid1;
	bool have_token;
	uint8_t token[FRAME_TOKEN_BYTES];
	struct conn *conns[MAX_CONNS];
	size_t n_conns;
	/* The control port: found by name, opened once, a conn while the host is connected. */
	char control_path[300];
	int control_fd;
	int control_ep; /* epoll, edge-triggered on control_fd: wakes us when the host connects */
	struct conn *control;
	int64_t control_scan_until;
	int64_t control_next_check;
	bool power_off;
	struct conn *shutdown_by;
};

static void job_reset(struct job *j)
{
	if (j->in_fd >= 0)
		close(j->in_fd);
	if (j->out_fd >= 0)
		close(j->out_fd);
	if (j->err_fd >= 0)
		close(j->err_fd);
	frame_buf_clear(&j->in);
	memset(j, 0, sizeof(*j));
	j->in_fd = j->out_fd = j->err_fd = -1;
}

static struct conn *conn_new(int fd, bool control, const char *peer)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (frame_decoder_new(&c->dec) < 0) {
		free(c);
		return NULL;
	}
	c->fd = fd;
	c->control = control;
	c->deadline_ms = now_ms() + AUTH_TIMEOUT_MS;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->job.in_fd = c->job.out_fd = c->job.err_fd = -1;
	return c;
}

static void conn_free(struct conn *c)
{
	/* A command whose client is gone has nobody to report to: end its whole group. The
	 * zombie is reaped by the SIGCHLD loop like any orphan. */
	if (c->job.pid > 0 && !c->job.reaped)
		kill(-c->job.pid, SIGKILL);
	job_reset(&c->job);
	if (!c->control && c->fd >= 0)
		close(c->fd);
	frame_decoder_free(c->dec);
	frame_buf_clear(&c->out);
	free(c);
}

static void conn_send(struct conn *c, enum frame_type type, const void *payload, size_t len)
{
	if (frame_buf_put(&c->out, type, payload, len) < 0) {
		say("%s: out of memory queueing %s; dropping the peer", c->peer,
		    frame_type_to_string(type));
		c->dead = true;
	}
}

/* Refuses or ends a peer: ERROR with msg, logged on the console, then the connection closes
 * once the peer had DRAIN_MS to read it. */
static void conn_refuse(struct conn *c, const char *msg)
{
	struct frame_decoder *fresh = NULL;

	say_peer(c->peer, msg);
	if (c->closing)
		return;
	conn_send(c, FRAME_ERROR, msg, strlen(msg));
	if (!c->control) {
		c->closing = true;
		c->deadline_ms = now_ms() + DRAIN_MS;
		return;
	}
	/* The control port cannot be closed, and the host may reconnect faster than we see it
	 * go: start over, unauthenticated, parsing the next bytes as a new stream. */
	if (frame_decoder_new(&fresh) < 0) {
		c->dead = true;
		return;
	}
	frame_decoder_free(c->dec);
	c->dec = fresh;
	c->authed = false;
}

static void read_info(struct frame_info *info)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	struct timespec ts;

	memset(info, 0, sizeof(*info));
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long kb;

		if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
			info->mem_total_kb = kb;
		else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			info->mem_available_kb = kb;
	}
	/* CLOCK_BOOTTIME is what /proc/uptime shows, without parsing a decimal. */
	clock_gettime(CLOCK_BOOTTIME, &ts);
	info->uptime_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void send_info(struct conn *c, enum frame_type type)
{
	struct frame_info info;
	uint8_t payload[FRAME_INFO_BYTES];

	read_info(&info);
	frame_info_encode(&info, payload);
	conn_send(c, type, payload, sizeof(payload));
}

/* HELLO on the control port starts a host session, answered READY first: a host program may
 * connect before we saw the previous one go, and skips what it receives until READY (the
 * rest of the old session's output may still be in flight). A session that was still
 * authenticated ends as a lost TCP peer's would. */
static void control_hello(struct conn *c)
{
	if (c->authed) {
		say("%s: new host session", c->peer);
		if (c->job.pid > 0 && !c->job.reaped)
			kill(-c->job.pid, SIGKILL);
		job_reset(&c->job);
		frame_buf_clear(&c->out);
		c->authed = false;
	}
	send_info(c, FRAME_READY);
}

/* The child side of a command: never returns. */
static void __attribute__((noreturn))
job_child(const struct frame_exec *e, int in, int out, int err)
{
	extern char **environ;
	sigset_t none;
	const char *cwd = e->cwd[0] ? e->cwd : "/";

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Its own session and process group: SIGNAL and a lost client reach all it started. */
	setsid();
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(126);
	if (e->gid != getgid() || e->uid != getuid()) {
		gid_t gid = e->gid;

		if (setgroups(1, &gid) < 0 || setgid(e->gid) < 0 || setuid(e->uid) < 0) {
			dprintf(2, "vmhpc-init: running as %u:%u: %s\n", e->uid, e->gid,
				strerror(errno));
			_exit(126);
		}
	}
	if (chdir(cwd) < 0) {
		if (!(e->flags & FRAME_EXEC_CWD_OPTIONAL) || chdir("/") < 0) {
			dprintf(2, "vmhpc-init: cd %s: %s\n", cwd, strerror(errno));
			_exit(126);
		}
	}
	environ = e->envc ? e->envp : (char **)default_env;
	execvp(e->argv[0], e->argv);
	{
		int err_no = errno;

		dprintf(2, "vmhpc-init: %s: %s\n", e->argv[0], strerror(err_no));
		_exit(err_no == ENOENT ? 127 : 126); /* as a shell reports it */
	}
}

static int set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static void job_start(struct conn *c, const struct frame_exec *e)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
	struct job *j = &c->job;
	char msg[160];
	pid_t pid;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		snprintf(msg, sizeof(msg), "vmhpc-init: cannot run %.64s: pipe: %s\n", e->argv[0],
			 strerror(errno));
		goto fail;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(msg, sizeof(msg), "vmhpc-init: cannot run %.64s: fork: %s\n", e->argv[0],
			 strerror(errno));
		goto fail;
	}
	if (pid == 0)
		job_child(e, in[0], out[1], err[1]);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	j->pid = pid;
	j->in_fd = in[1];
	j->out_fd = out[0];
	j->err_fd = err[0];
	set_nonblock(j->in_fd);
	set_nonblock(j->out_fd);
	set_nonblock(j->err_fd);
	return;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (err[i] >= 0)
			close(err[i]);
	}
	/* Reported as a shell reports what it could not run: on stderr, then exit code 126. */
	say("%s: %.*s", c->peer, (int)strlen(msg) - 1, msg);
	{
		uint8_t payload[FRAME_EXIT_BYTES];

		conn_send(c, FRAME_STDERR, msg, strlen(msg));
		frame_exit_encode(FRAME_EXIT_CODE, 126, payload);
		conn_send(c, FRAME_EXIT, payload, sizeof(payload));
	}
}

static void begin_power_off(struct service *s, struct conn *by)
{
	s->power_off = true;
	s->shutdown_by = by;
}

/* Handles one frame of an authenticated (or authenticating) peer; a non-NULL result is the
 * reason the peer is refused and dropped. */
static const char *handle_frame(struct service *s, struct conn *c, const struct frame *f)
{
	struct job *j = &c->job;
	struct frame_exec *e = NULL;
	uint8_t version[4];
	uint32_t sig;

	if (c->control && f->type == FRAME_HELLO)
		control_hello(c);
	if (!c->authed) {
		if (f->type != FRAME_HELLO)
			return "refused: the first frame must be HELLO with the token";
		if (!s->have_token)
			return "refused: this guest has no vmhpc.token";
		if (!frame_token_equal(f->payload, s->token))
			return "refused: wrong token";
		c->authed = true;
		c->deadline_ms = 0;
		frame_put_u32(version, FRAME_PROTO_VERSION);
		conn_send(c, FRAME_WELCOME, version, sizeof(version));
		return NULL;
	}
	switch (f->type) {
	case FRAME_EXEC:
		if (j->pid > 0)
			return "EXEC while a command runs on this connection";
		if (frame_exec_decode(f->payload, f->len, &e) < 0)
			return "malformed EXEC request";
		job_start(c, e);
		frame_exec_free(e);
		return NULL;
	case FRAME_STDIN:
		/* Input racing the command's end is dropped, as a pipe to a dead reader would. */
		if (j->pid > 0 && j->in_fd >= 0 && !j->in_eof &&
		    frame_buf_append(&j->in, f->payload, f->len) < 0)
			return "out of memory for stdin";
		return NULL;
	case FRAME_STDIN_EOF:
		if (j->pid > 0)
			j->in_eof = true;
		return NULL;
	case FRAME_SIGNAL:
		sig = frame_get_u32(f->payload);
		if (sig == 0 || sig > 64)
			return "SIGNAL with a signal number outside 1..64";
		if (j->pid > 0 && !j->reaped)
			kill(-j->pid, (int)sig);
		return NULL;
	case FRAME_INFO:
		if (f->len != 0)
			return "INFO request with a payload";
		send_info(c, FRAME_INFO);
		return NULL;
	case FRAME_SHUTDOWN:
		say("%s: shutdown requested", c->peer);
		begin_power_off(s, c);
		return NULL;
	default:
		return "unexpected frame type from a client";
	}
}

/* Reads what the peer sent and handles every whole frame. */
static void conn_read(struct service *s, struct conn *c, uint8_t *buf)
{
	ssize_t n = read(c->fd, buf, READ_CHUNK);
	const char *msg;
	size_t pos = 0;

	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (!c->closing)
			say("%s: %s", c->peer, strerror(errno));
		c->dead = true;
		return;
	}
	if (n == 0) {
		/* EOF (on the control port: the host disconnected). Inside a frame, that is a
		 * truncated frame: worth a line on the console; between frames, a normal end. */
		if (!c->closing && frame_decoder_partial(c->dec))
			say_peer(c->peer, "connection ended inside a frame");
		c->dead = true;
		return;
	}
	if (c->closing)
		return; /* drained, not read: the stream is past resynchronizing */
	while (pos < (size_t)n && !c->closing && !c->dead && !s->power_off) {
		struct frame f;
		size_t used;
		int r = frame_decoder_feed(c->dec, buf + pos, (size_t)n - pos, &used, &f);

		pos += used;
		if (r < 0) {
			char why[96];

			snprintf(why, sizeof(why), "bad frame stream (%s); closing",
				 r == -EBADMSG	  ? "bad magic or flags"
				 : r == -EMSGSIZE ? "frame too large"
				 : r == -EPROTO	  ? "unknown type or bad length"
						  : strerror(-r));
			conn_refuse(c, why);
			return;
		}
		if (r == 0)
			break;
		msg = handle_frame(s, c, &f);
		if (msg)
			conn_refuse(c, msg);
	}
}

static void conn_write(struct conn *c)
{
	int r = frame_buf_flush(&c->out, c->fd);

	if (r < 0) {
		if (!c->closing && r != -EPIPE && r != -ECONNRESET)
			say("%s: %s", c->peer, strerror(-r));
		c->dead = true;
	}
}

static void job_read(struct conn *c, int *fd, enum frame_type type, uint8_t *buf)
{
	ssize_t n = read(*fd, buf, READ_CHUNK);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		close(*fd);
		*fd = -1;
		return;
	}
	conn_send(c, type, buf, (size_t)n);
}

static void job_write_stdin(struct job *j)
{
	int r = frame_buf_flush(&j->in, j->in_fd);

	if (r < 0) {
		/* EPIPE: the command closed its stdin; the rest has no reader. */
		close(j->in_fd);
		j->in_fd = -1;
		frame_buf_clear(&j->in);
	}
}

/* Work a conn needs between polls: closing stdin, reporting EXIT, deadlines. */
static void conn_tick(struct conn *c, int64_t now)
{
	struct job *j = &c->job;

	if (j->pid > 0) {
		if (j->in_fd >= 0 && j->in_eof && j->in.len == 0) {
			close(j->in_fd);
			j->in_fd = -1;
		}
		/* Background children may hold the pipes forever: EXIT is not held back by them. */
		if (j->reaped && now - j->reaped_ms >= LINGER_MS) {
			if (j->out_fd >= 0)
				close(j->out_fd);
			if (j->err_fd >= 0)
				close(j->err_fd);
			j->out_fd = j->err_fd = -1;
		}
		if (j->reaped && j->out_fd < 0 && j->err_fd < 0) {
			uint8_t payload[FRAME_EXIT_BYTES];

			if (WIFSIGNALED(j->wstatus))
				frame_exit_encode(FRAME_EXIT_SIGNAL, (uint32_t)WTERMSIG(j->wstatus),
						  payload);
			else
				frame_exit_encode(FRAME_EXIT_CODE,
						  (uint32_t)WEXITSTATUS(j->wstatus), payload);
			job_reset(j);
			conn_send(c, FRAME_EXIT, payload, sizeof(payload));
		}
	}
	if (!c->authed && !c->closing && c->deadline_ms && now >= c->deadline_ms)
		conn_refuse(c, "refused: no HELLO within 10 s");
	if (c->closing) {
		/* FIN right after the ERROR: the peer reads it, then EOF, not a reset. */
		if (c->out.len == 0 && !c->wr_shut) {
			shutdown(c->fd, SHUT_WR);
			c->wr_shut = true;
		}
		if (now >= c->deadline_ms)
			c->dead = true;
	}
}

static void reap(struct service *s)
{
	int wstatus;
	pid_t pid;

	while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
		for (size_t i = 0; i < s->n_conns; i++) {
			struct job *j = &s->conns[i]->job;

			if (j->pid == pid && !j->reaped) {
				j->reaped = true;
				j->wstatus = wstatus;
				j->reaped_ms = now_ms();
			}
		}
	}
}

static void add_conn(struct service *s, struct conn *c)
{
	s->conns[s->n_conns++] = c;
}

static void accept_peer(struct service *s)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char addr[INET6_ADDRSTRLEN] = "?", peer[64];
	int one = 1, fd;
	struct conn *c;

	fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, addr, sizeof(addr));
		snprintf(peer, sizeof(peer), "%s:%u", addr, ntohs(sin->sin_port));
	} else {
		snprintf(peer, sizeof(peer), "peer");
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (s->n_conns >= MAX_CONNS) {
		static const char msg[] = "refused: too many connections";
		uint8_t frame[FRAME_HEADER_BYTES + sizeof(msg) - 1];

		say_peer(peer, msg);
		frame_header_write(frame, FRAME_ERROR, sizeof(msg) - 1);
		memcpy(frame + FRAME_HEADER_BYTES, msg, sizeof(msg) - 1);
		(void)!write(fd, frame, sizeof(frame));
		close(fd);
		return;
	}
	c = conn_new(fd, false, peer);
	if (!c) {
		close(fd);
		return;
	}
	add_conn(s, c);
}

/* The virtio-serial port the host runtime talks to: /sys/class/virtio-ports/vportNpM/name. */
static void control_scan(struct service *s)
{
	_cleanup_(cleanup_closedirp) DIR *d = NULL;
	struct dirent *e;

	d = opendir("/sys/class/virtio-ports");
	while (d && (e = readdir(d))) {
		char path[PATH_MAX], name[128] = "";
		_cleanup_close_ int fd = -1;
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, name, sizeof(name) - 1);
		if (n <= 0)
			continue;
		name[n] = '\0';
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, CONTROL_PORT_NAME) != 0)
			continue;
		snprintf(s->control_path, sizeof(s->control_path), "/dev/%s", e->d_name);
		s->control_fd = open(s->control_path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (s->control_fd >= 0) {
			/* The port reports POLLHUP without pause while no host program holds its
			 * other end, so it cannot sit in the poll set then. The driver wakes its
			 * wait queue when the host connects: an edge-triggered epoll (itself in the
			 * poll set) turns that wake-up into an event. */
			struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET};

			s->control_ep = epoll_create1(EPOLL_CLOEXEC);
			if (s->control_ep >= 0 &&
			    epoll_ctl(s->control_ep, EPOLL_CTL_ADD, s->control_fd, &ev) < 0) {
				close(s->control_ep);
				s->control_ep = -1;
			}
		} else {
			/* devtmpfs may not have the node yet: try again next scan. */
			if (errno != ENOENT)
				say("opening %s: %s", s->control_path, strerror(errno));
			s->control_path[0] = '\0';
			continue;
		}
		return;
	}
}

/* The port reports POLLHUP while no host program holds its other end; a host connecting
 * gets READY first, then is served like a TCP peer. */
static void control_check(struct service *s, int64_t now)
{
	struct pollfd p;
	char peer[80];

	if (s->control_fd < 0) {
		if (now < s->control_scan_until && now >= s->control_next_check) {
			s->control_next_check = now + 250;
			control_scan(s);
		}
		if (s->control_fd < 0)
			return;
	}
	if (s->control || now < s->control_next_check || s->n_conns >= MAX_CONNS)
		return;
	s->control_next_check = now + CONTROL_POLL_MS;
	p = (struct pollfd){.fd = s->control_fd, .events = POLLIN | POLLOUT};
	if (poll(&p, 1, 0) < 0 || (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
		return;
	snprintf(peer, sizeof(peer), "control port %.40s", s->control_path);
	s->control = conn_new(s->control_fd, true, peer);
	if (!s->control)
		return;
	/* The host waits for READY, so a connection is never lost in boot's races; the
	 * handshake that follows is the same as on TCP. */
	s->control->deadline_ms = 0;
	send_info(s->control, FRAME_READY);
	add_conn(s, s->control);
}

static int listen_tcp(uint16_t port, bool loopback_only)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	int one = 1, fd;

	sin.sin_addr.s_addr = htonl(loopback_only ? INADDR_LOOPBACK : INADDR_ANY);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 64) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	return fd;
}

/* Kills every command, syncs, acknowledges to whoever asked, powers off. A PID 1 kills every
 * process; the development mode (not PID 1) only the groups it started. */
static void __attribute__((noreturn)) power_off(struct service *s)
{
	int64_t end;

	say("powering off");
	for (int round = 0; round < 2; round++) {
		int sig = round == 0 ? SIGTERM : SIGKILL;

		for (size_t i = 0; i < s->n_conns; i++)
			if (s->conns[i]->job.pid > 0 && !s->conns[i]->job.reaped)
				kill(-s->conns[i]->job.pid, sig);
		if (s->pid1)
			kill(-1, sig);
		/* Give SIGTERM a moment; stop early once every child is gone. */
		end = now_ms() + (round == 0 ? 500 : 1000);
		while (now_ms() < end) {
			pid_t pid = waitpid(-1, NULL, WNOHANG);

			if (pid < 0 && errno == ECHILD)
				break;
			if (pid <= 0)
				sleep_ms(5);
		}
	}
	sync();
	if (s->shutdown_by) {
		struct conn *c = s->shutdown_by;

		conn_send(c, FRAME_SHUTDOWN, NULL, 0);
		end = now_ms() + 1000;
		while (c->out.len && now_ms() < end) {
			struct pollfd p = {.fd = c->fd, .events = POLLOUT};

			if (frame_buf_flush(&c->out, c->fd) < 0)
				break;
			if (c->out.len)
				poll(&p, 1, 50);
		}
	}
	if (!s->pid1)
		exit(0);
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

enum role {
	ROLE_SIGNAL,
	ROLE_LISTEN,
	ROLE_CONTROL_WAKE,
	ROLE_PEER,
	ROLE_STDIN,
	ROLE_STDOUT,
	ROLE_STDERR
};

static void __attribute__((noreturn)) serve(struct service *s)
{
	/* The poll set is rebuilt from the state every turn: backpressure is then one condition
	 * per fd (do not read a command's output while its peer is behind, do not read a peer
	 * while its command is behind on stdin). At MAX_CONNS peers the rebuild costs nothing. */
	struct pollfd pfds[3 + MAX_CONNS * 4];
	struct {
		enum role role;
		struct conn *c;
	} what[ARRAY_SIZE(pfds)];
	static uint8_t buf[READ_CHUNK];

	for (;;) {
		int64_t now = now_ms(), wake = -1;
		nfds_t n = 0;
		int timeout, r;

		control_check(s, now);
		for (size_t i = 0; i < s->n_conns; i++)
			conn_tick(s->conns[i], now);
		for (size_t i = 0; i < s->n_conns;) {
			struct conn *c = s->conns[i];

			if (!c->dead) {
				i++;
				continue;
			}
			if (c == s->control) {
				s->control = NULL;
				s->control_next_check = now + CONTROL_POLL_MS;
			}
			if (c == s->shutdown_by)
				s->shutdown_by = NULL;
			conn_free(c);
			s->conns[i] = s->conns[--s->n_conns];
		}
		if (s->power_off)
			power_off(s);

#define WATCH(fd_, ev_, role_, c_)                                                                 \
	do {                                                                                       \
		pfds[n] = (struct pollfd){.fd = (fd_), .events = (short)(ev_)};                    \
		what[n].role = (role_);                                                            \
		what[n].c = (c_);                                                                  \
		n++;                                                                               \
	} while (0)
		WATCH(s->sig_fd, POLLIN, ROLE_SIGNAL, NULL);
		if (s->listen_fd >= 0)
			WATCH(s->listen_fd, POLLIN, ROLE_LISTEN, NULL);
		if (s->control_ep >= 0 && !s->control)
			WATCH(s->control_ep, POLLIN, ROLE_CONTROL_WAKE, NULL);
		for (size_t i = 0; i < s->n_conns; i++) {
			struct conn *c = s->conns[i];
			struct job *j = &c->job;
			short ev = c->out.len ? POLLOUT : 0;

			if (!(j->pid > 0 && j->in.len >= STDIN_HIGH_WATER))
				ev |= POLLIN;
			WATCH(c->fd, ev, ROLE_PEER, c);
			if (j->in_fd >= 0 && j->in.len > 0)
				WATCH(j->in_fd, POLLOUT, ROLE_STDIN, c);
			if (c->out.len < OUT_HIGH_WATER) {
				if (j->out_fd >= 0)
					WATCH(j->out_fd, POLLIN, ROLE_STDOUT, c);
				if (j->err_fd >= 0)
					WATCH(j->err_fd, POLLIN, ROLE_STDERR, c);
			}
			if (c->deadline_ms && (wake < 0 || c->deadline_ms < wake))
				wake = c->deadline_ms;
			if (j->reaped && (wake < 0 || j->reaped_ms + LINGER_MS < wake))
				wake = j->reaped_ms + LINGER_MS;
		}
#undef WATCH
		if (!s->control && (s->control_fd >= 0 || now < s->control_scan_until) &&
		    (wake < 0 || s->control_next_check < wake))
			wake = s->control_next_check;
		timeout = wake < 0 ? -1 : wake <= now ? 0 : (int)(wake - now);
		r = poll(pfds, n, timeout);
		if (r < 0) {
			if (errno != EINTR)
				say("poll: %s", strerror(errno));
			continue;
		}
		for (nfds_t i = 0; i < n; i++) {
			struct conn *c = what[i].c;
			short rev = pfds[i].revents;

			if (!rev || (c && c->dead))
				continue;
			switch (what[i].role) {
			case ROLE_SIGNAL: {
				struct signalfd_siginfo si;

				while (read(s->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
					if (si.ssi_signo == SIGCHLD)
						reap(s);
					else if (si.ssi_signo == SIGTERM ||
						 si.ssi_signo == SIGINT || si.ssi_signo == SIGPWR ||
						 si.ssi_signo == SIGUSR2)
						begin_power_off(s, NULL);
				}
				break;
			}
			case ROLE_LISTEN:
				accept_peer(s);
				break;
			case ROLE_CONTROL_WAKE: {
				struct epoll_event ev[4];

				/* Consume the edge; control_check looks at the port next turn. */
				while (epoll_wait(s->control_ep, ev, 4, 0) > 0)
					;
				s->control_next_check = now;
				break;
			}
			case ROLE_PEER:
				if (rev & POLLOUT)
					conn_write(c);
				if ((rev & (POLLIN | POLLHUP | POLLERR)) && !c->dead)
					conn_read(s, c, buf);
				break;
			case ROLE_STDIN:
				job_write_stdin(&c->job);
				break;
			case ROLE_STDOUT:
				job_read(c, &c->job.out_fd, FRAME_STDOUT, buf);
				break;
			case ROLE_STDERR:
				job_read(c, &c->job.err_fd, FRAME_STDERR, buf);
				break;
			}
		}
	}
}

static int service_init(struct service *s, const struct config *cfg, bool pid1, bool loopback_only)
{
	sigset_t mask;

	memset(s, 0, sizeof(*s));
	s->pid1 = pid1;
	s->control_fd = -1;
	s->control_ep = -1;
	s->have_token = cfg->have_token;
	memcpy(s->token, cfg->token, sizeof(s->token));
	s->control_scan_until = pid1 ? now_ms() + CONTROL_SCAN_MS : 0;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGPWR);
	sigaddset(&mask, SIGUSR2);
	s->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (s->sig_fd < 0) {
		say("signalfd: %s", strerror(errno));
		return -errno;
	}
	s->listen_fd = listen_tcp(cfg->exec_port, loopback_only);
	if (s->listen_fd < 0)
		say("listening on TCP port %u: %s", cfg->exec_port, strerror(-s->listen_fd));
	return 0;
}

/* Development mode on a host (not PID 1): `VMHPC_TOKEN=HEX vmhpc-init --serve PORT` serves
 * the exec protocol on 127.0.0.1:PORT; SHUTDOWN ends it instead of powering anything off. */
static int serve_dev(int argc, char **argv)
{
	struct config cfg = {.exec_port = DEFAULT_EXEC_PORT};
	struct service s;
	unsigned long port;
	sigset_t all;
	const char *token = getenv("VMHPC_TOKEN");

	if (argc != 3 || strcmp(argv[1], "--serve") != 0 || !parse_uint(argv[2], 65535, &port) ||
	    port == 0) {
		say("must run as PID 1 inside a vmhpc guest (or: VMHPC_TOKEN=HEX %s --serve PORT)",
		    argv[0]);
		return 1;
	}
	cfg.exec_port = (uint16_t)port;
	cfg.have_token = token && frame_token_from_hex(token, cfg.token) == 0;
	if (!cfg.have_token) {
		say("VMHPC_TOKEN must be 64 hex digits");
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
	if (service_init(&s, &cfg, false, true) < 0 || s.listen_fd < 0)
		return 1;
	serve(&s);
}

int main(int argc, char **argv)
{
	struct config cfg = {.overlay_mb = DEFAULT_OVERLAY_MB, .exec_port = DEFAULT_EXEC_PORT};
	struct service s;
	sigset_t all;

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
	parse_cmdline(&cfg);
	setup_root(&cfg);
	setup_dev();
	write_hosts(&cfg);
	setup_network(&cfg);
	if (!cfg.have_token)
		say("no vmhpc.token on the kernel command line: every exec request will be "
		    "refused");

	/* PID 1 must not exit: without a signalfd (out of memory), try again. */
	while (service_init(&s, &cfg, true, false) < 0)
		sleep_ms(1000);
	{
		struct timespec up;

		/* The boot benchmarks read this line: time since the kernel started. */
		clock_gettime(CLOCK_BOOTTIME, &up);
		say("ready %ld.%03ld s after boot", (long)up.tv_sec, up.tv_nsec / 1000000);
	}
	serve(&s);
}
