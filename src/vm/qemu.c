/* QEMU command line and process: see qemu.h, and docs/vm.md for why each option. */
#include "vm/qemu.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/log.h"
#include "util/time.h"

#define MIB (UINT64_C(1) << 20)
/* Where the device memory (virtio-pmem) goes must be a multiple of this in maxmem. */
#define QEMU_MAXMEM_ALIGN_BYTES (128 * MIB)
/* Bounds on what a config may ask for (a typo should fail, not eat the host). */
#define QEMU_VCPUS_MAX	256u
#define QEMU_MEM_MB_MAX (1024u * 1024u)
#define QEMU_TB_MB_MAX	4096u

struct qemu_vm {
	char *name;
	pid_t pid;
	int pidfd; /* -1 when the kernel has no pidfd_open */
	bool reaped;
	bool adopted;	/* started by another process: maybe not ours to reap */
	int status;	/* exit code or 128+signal, once reaped */
	int console_fd; /* read end of the console pipe, or -1 */
	int qmp_fd;	/* our end of the QMP socketpair, or -1 */
	char *qmp_socket;
	char *control_socket;
};

/* ---- the command line ---- */

struct strv {
	char **v;
	size_t n, cap;
	bool oom;
};

/* The TCG translation buffer: the VM's own, else $VMHPC_TCG_TB_MB (the benchmarks' knob,
 * docs/kernel.md), else QEMU_TCG_TB_MB_DEFAULT. */
static unsigned tcg_tb_mb(const struct qemu_vm_config *c)
{
	const char *e = getenv("VMHPC_TCG_TB_MB");
	char *end;
	unsigned long v;

	if (c->tcg_tb_mb)
		return c->tcg_tb_mb;
	if (e && *e) {
		errno = 0;
		v = strtoul(e, &end, 10);
		if (errno == 0 && *end == '\0' && v >= 1 && v <= QEMU_TB_MB_MAX)
			return (unsigned)v;
	}
	return QEMU_TCG_TB_MB_DEFAULT;
}

static void strv_add(struct strv *s, char *arg)
{
	if (!arg) {
		s->oom = true;
		return;
	}
	if (s->n + 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		char **grown = realloc(s->v, cap * sizeof(*grown));

		if (!grown) {
			free(arg);
			s->oom = true;
			return;
		}
		s->v = grown;
		s->cap = cap;
	}
	s->v[s->n++] = arg;
	s->v[s->n] = NULL;
}

static void strv_addf(struct strv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void strv_addf(struct strv *s, const char *fmt, ...)
{
	va_list ap;
	char *arg;

	va_start(ap, fmt);
	if (vasprintf(&arg, fmt, ap) < 0)
		arg = NULL;
	va_end(ap);
	strv_add(s, arg);
}

static void strv_add2(struct strv *s, const char *opt, const char *value)
{
	strv_add(s, strdup(opt));
	strv_add(s, strdup(value));
}

void qemu_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **a = argv; *a; a++)
		free(*a);
	free(argv);
}

/* QEMU's option syntax separates key=value pairs with ','; a ',' inside a value is
 * written ",,". Returned in a small ring of buffers so one format call may use several. */
static const char *opt_escape(const char *value)
{
	static __thread char ring[4][PATH_MAX * 2];
	static __thread unsigned next;
	char *out = ring[next++ % 4];
	size_t j = 0;

	for (const char *p = value; *p && j + 2 < sizeof(ring[0]); p++) {
		out[j++] = *p;
		if (*p == ',')
			out[j++] = ',';
	}
	out[j] = '\0';
	return out;
}

static bool machine_is(const char *machine, const char *type)
{
	size_t n = strlen(type);

	return strncmp(machine, type, n) == 0 && (machine[n] == '\0' || machine[n] == ',');
}

/* The -machine value for a bare type name: devices nobody here uses are left out (fewer
 * devices for the guest to probe). A value with options is taken as it is. */
static char *machine_value(const char *machine, bool memfd_ram)
{
	const char *opts = "";
	char *v;

	if (!strchr(machine, ',')) {
		if (strcmp(machine, "q35") == 0)
			opts = ",vmport=off,sata=off,smbus=off";
		else if (strcmp(machine, "pc") == 0)
			opts = ",vmport=off";
		else if (strcmp(machine, "microvm") == 0)
			/* its firmware (qboot) loads the kernel itself. The PIT stays: without it
			 * (and with no HPET or ACPI PM timer on microvm) the guest has nothing to
			 * calibrate its TSC against and hangs under TCG. */
			opts = ",x-option-roms=off";
	}
	if (asprintf(&v, "%s%s%s", machine, opts, memfd_ram ? ",memory-backend=mem" : "") < 0)
		return NULL;
	return v;
}

static bool valid_mac(const char *mac)
{
	unsigned b[6];
	char tail;

	return sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		      &tail) == 6 &&
	       strlen(mac) == 17;
}

static int config_error(char **ret_error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int config_error(char **ret_error, int r, const char *fmt, ...)
{
	va_list ap;

	if (ret_error) {
		va_start(ap, fmt);
		if (vasprintf(ret_error, fmt, ap) < 0)
			*ret_error = NULL;
		va_end(ap);
	}
	return r;
}

/* ---- backends: one ops table per variant, listed in one array per kind ---- */

/* What a backend needs to know about the machine. */
struct argv_ctx {
	const char *machine;
	bool mmio;	 /* virtio-mmio devices (microvm without PCI) */
	const char *bus; /* device suffix: "pci" or "device" */
};

/* The root file system's device. */
struct qemu_root_ops {
	const char *name;
	/* Checks what the backend needs beyond a valid image and size; NULL: nothing. */
	int (*check)(const struct qemu_vm_config *c, const struct argv_ctx *x, char **ret_error);
	/* Device memory it needs beside RAM (room in -m maxmem); NULL: none. */
	uint64_t (*device_memory_bytes)(const struct qemu_vm_config *c);
	void (*add_args)(struct strv *s, const struct qemu_vm_config *c, const struct argv_ctx *x);
};

static int root_pmem_check(const struct qemu_vm_config *c, const struct argv_ctx *x,
			   char **ret_error)
{
	if (x->mmio)
		return config_error(ret_error, -EOPNOTSUPP,
				    "VM %s: virtio-pmem needs a machine with a device memory area "
				    "(q35, pc); machine %s has none: use the virtio-blk root",
				    c->name, x->machine);
	return 0;
}

static uint64_t root_pmem_device_memory_bytes(const struct qemu_vm_config *c)
{
	/* Where the device memory goes must be a multiple of QEMU_MAXMEM_ALIGN_BYTES. */
	return (c->root_size_bytes + QEMU_MAXMEM_ALIGN_BYTES - 1) / QEMU_MAXMEM_ALIGN_BYTES *
	       QEMU_MAXMEM_ALIGN_BYTES;
}

static void root_pmem_add_args(struct strv *s, const struct qemu_vm_config *c,
			       const struct argv_ctx *x)
{
	(void)x;
	/* The file mapped read-only and shared: every VM of the image maps the same host page
	 * cache; the guest reads it through DAX without copying it. */
	strv_add(s, strdup("-object"));
	strv_addf(s,
		  "memory-backend-file,id=rootmem,mem-path=%s,share=on,readonly=on,"
		  "size=%" PRIu64,
		  opt_escape(c->root_image), c->root_size_bytes);
	strv_add2(s, "-device", "virtio-pmem-pci,memdev=rootmem,id=root");
}

static const struct qemu_root_ops root_pmem_ops = {
    .name = "pmem",
    .check = root_pmem_check,
    .device_memory_bytes = root_pmem_device_memory_bytes,
    .add_args = root_pmem_add_args,
};

static void root_blk_add_args(struct strv *s, const struct qemu_vm_config *c,
			      const struct argv_ctx *x)
{
	strv_add(s, strdup("-blockdev"));
	strv_addf(s,
		  "driver=raw,node-name=root,read-only=on,file.driver=file,"
		  "file.filename=%s,file.read-only=on",
		  opt_escape(c->root_image));
	strv_add(s, strdup("-device"));
	strv_addf(s, "virtio-blk-%s,drive=root,id=rootblk", x->bus);
}

static const struct qemu_root_ops root_blk_ops = {
    .name = "blk",
    .add_args = root_blk_add_args,
};

static const struct qemu_root_ops *const root_backends[_QEMU_ROOT_MAX] = {
    [QEMU_ROOT_PMEM] = &root_pmem_ops,
    [QEMU_ROOT_BLK] = &root_blk_ops,
};

/* The network under the VM's one NIC (virtio-net, added by qemu_build_argv). */
struct qemu_net_ops {
	const char *name;
	/* Checks the backend's fields; NULL: nothing to check. */
	int (*check)(const struct qemu_vm_config *c, char **ret_error);
	/* Adds "-netdev ...,id=net0"; NULL: the VM has no NIC. */
	void (*add_netdev)(struct strv *s, const struct qemu_vm_config *c);
};

static const struct qemu_net_ops net_none_ops = {
    .name = "none",
};

static int net_tap_check(const struct qemu_vm_config *c, char **ret_error)
{
	if (!c->net_tap || !c->net_tap[0])
		return config_error(ret_error, -EINVAL, "VM %s: tap network without an interface",
				    c->name);
	if (strlen(c->net_tap) >= 16)
		return config_error(ret_error, -EINVAL,
				    "VM %s: tap name \"%s\" is longer than 15 characters", c->name,
				    c->net_tap);
	return 0;
}

static void net_tap_add_netdev(struct strv *s, const struct qemu_vm_config *c)
{
	/* QEMU opens the tap by name where it runs (the job's namespace) and runs no scripts:
	 * the tap is on the job's bridge already. */
	strv_add(s, strdup("-netdev"));
	strv_addf(s, "tap,id=net0,ifname=%s,script=no,downscript=no", opt_escape(c->net_tap));
}

static const struct qemu_net_ops net_tap_ops = {
    .name = "tap",
    .check = net_tap_check,
    .add_netdev = net_tap_add_netdev,
};

static const struct qemu_net_ops *const net_backends[_QEMU_NET_MAX] = {
    [QEMU_NET_NONE] = &net_none_ops,
    [QEMU_NET_TAP] = &net_tap_ops,
};

static int config_check(const struct qemu_vm_config *c, const struct argv_ctx *x, char **ret_error)
{
	int r;

	if (!c->name || !c->name[0])
		return config_error(ret_error, -EINVAL, "VM config: name is missing");
	if (!c->kernel)
		return config_error(ret_error, -EINVAL, "VM %s: no kernel given", c->name);
	if (c->shm_path && x->mmio)
		return config_error(
		    ret_error, -EINVAL,
		    "VM %s: the shared-memory channel is a PCI device (ivshmem-plain); "
		    "microvm has no PCI: use q35 or run without --shm",
		    c->name);
	if (c->shm_path &&
	    (c->shm_size_bytes < 4096 || (c->shm_size_bytes & (c->shm_size_bytes - 1))))
		return config_error(ret_error, -EINVAL,
				    "VM %s: shared-memory region of %" PRIu64
				    " bytes: a PCI BAR's size must be a power of two",
				    c->name, c->shm_size_bytes);
	if (c->accel >= _ACCEL_MAX)
		return config_error(ret_error, -EINVAL, "VM %s: unknown accelerator %d", c->name,
				    (int)c->accel);
	if (c->mem_mb < 16 || c->mem_mb > QEMU_MEM_MB_MAX)
		return config_error(ret_error, -EINVAL,
				    "VM %s: memory %u MiB is out of range (16 MiB .. %u MiB)",
				    c->name, c->mem_mb, QEMU_MEM_MB_MAX);
	if (c->vcpus > QEMU_VCPUS_MAX)
		return config_error(ret_error, -EINVAL, "VM %s: %u VCPUs is more than %u", c->name,
				    c->vcpus, QEMU_VCPUS_MAX);
	if (c->tcg_tb_mb > QEMU_TB_MB_MAX)
		return config_error(ret_error, -EINVAL,
				    "VM %s: TCG translation buffer %u MiB is more than %u MiB",
				    c->name, c->tcg_tb_mb, QEMU_TB_MB_MAX);
	if (c->root_image) {
		const struct qemu_root_ops *root =
		    (unsigned)c->root_kind < _QEMU_ROOT_MAX ? root_backends[c->root_kind] : NULL;

		if (!root)
			return config_error(ret_error, -EINVAL, "VM %s: unknown root kind %d",
					    c->name, (int)c->root_kind);
		if (c->root_size_bytes == 0 || c->root_size_bytes % 4096 != 0)
			return config_error(ret_error, -EINVAL,
					    "VM %s: root image size %" PRIu64
					    " is not a positive multiple of 4096 bytes",
					    c->name, c->root_size_bytes);
		if (root->check && (r = root->check(c, x, ret_error)) < 0)
			return r;
	}
	if ((unsigned)c->net >= _QEMU_NET_MAX || !net_backends[c->net])
		return config_error(ret_error, -EINVAL, "VM %s: unknown network kind %d", c->name,
				    (int)c->net);
	if (net_backends[c->net]->check && (r = net_backends[c->net]->check(c, ret_error)) < 0)
		return r;
	if (c->mac && !valid_mac(c->mac))
		return config_error(ret_error, -EINVAL,
				    "VM %s: MAC \"%s\" is not of the form 52:54:00:12:34:56",
				    c->name, c->mac);
	if (c->console_pipe && c->console_log)
		return config_error(ret_error, -EINVAL,
				    "VM %s: console goes to a log or a pipe, not both", c->name);
	return 0;
}

int qemu_build_argv(const struct qemu_vm_config *c, char ***ret_argv, char **ret_error)
{
	const char *machine = c->machine ? c->machine : QEMU_MACHINE_DEFAULT;
	/* microvm has no PCI unless pcie=on: its devices are virtio-mmio ("-device" suffix) */
	bool mmio = machine_is(machine, "microvm") && !strstr(machine, "pcie=on");
	const struct argv_ctx x = {
	    .machine = machine, .mmio = mmio, .bus = mmio ? "device" : "pci"};
	const char *bus = x.bus;
	bool memfd_ram = c->virtiofs_socket != NULL;
	const struct qemu_root_ops *root;
	const struct qemu_net_ops *net;
	uint64_t dev_bytes;
	struct strv s = {0};
	char *mval;
	int r;

	r = config_check(c, &x, ret_error);
	if (r < 0)
		return r;
	root = c->root_image ? root_backends[c->root_kind] : NULL;
	net = net_backends[c->net];
	dev_bytes = root && root->device_memory_bytes ? root->device_memory_bytes(c) : 0;

	strv_add(&s, strdup(c->qemu ? c->qemu : qemu_binary()));
	strv_addf(&s, "-name");
	strv_addf(&s, "guest=%s", opt_escape(c->name));
	/* Nothing QEMU would add on its own: no default NIC, VGA, floppy, CD-ROM, monitor,
	 * serial, parallel port or config file; no window; a guest reboot ends QEMU. */
	strv_add(&s, strdup("-nodefaults"));
	strv_add(&s, strdup("-no-user-config"));
	strv_add(&s, strdup("-nographic"));
	strv_add(&s, strdup("-no-reboot"));

	mval = machine_value(machine, memfd_ram);
	if (!mval)
		s.oom = true;
	else
		strv_add2(&s, "-machine", mval);
	free(mval);
	if (mmio)
		/* virtio-mmio defaults to legacy virtio, which vhost-user (virtiofsd) refuses */
		strv_add2(&s, "-global", "virtio-mmio.force-legacy=false");
	if (c->firmware)
		strv_add2(&s, "-bios", c->firmware);
	if (c->accel == ACCEL_KVM) {
		strv_add2(&s, "-accel", "kvm");
		strv_add2(&s, "-cpu", c->cpu ? c->cpu : "host");
	} else {
		strv_add(&s, strdup("-accel"));
		strv_addf(&s, "tcg,tb-size=%u", tcg_tb_mb(c));
		if (c->cpu)
			strv_add2(&s, "-cpu", c->cpu);
	}
	strv_add(&s, strdup("-smp"));
	strv_addf(&s, "%u", c->vcpus ? c->vcpus : 1);

	/* RAM, and room beside it for the root's device memory. */
	strv_add(&s, strdup("-m"));
	if (dev_bytes) {
		strv_addf(&s, "%uM,slots=1,maxmem=%" PRIu64 "M", c->mem_mb,
			  (uint64_t)c->mem_mb + dev_bytes / MIB);
	} else {
		strv_addf(&s, "%uM", c->mem_mb);
	}
	if (memfd_ram) {
		/* vhost-user (virtiofsd) maps guest RAM itself: it must be a shareable fd. */
		strv_add(&s, strdup("-object"));
		strv_addf(&s, "memory-backend-memfd,id=mem,size=%uM,share=on", c->mem_mb);
	}

	strv_add2(&s, "-kernel", c->kernel);
	if (c->initrd)
		strv_add2(&s, "-initrd", c->initrd);
	strv_add2(&s, "-append", c->cmdline ? c->cmdline : "");

	if (root)
		root->add_args(&s, c, &x);

	if (c->virtiofs_socket) {
		strv_add(&s, strdup("-chardev"));
		strv_addf(&s, "socket,id=fs0,path=%s", opt_escape(c->virtiofs_socket));
		strv_add(&s, strdup("-device"));
		strv_addf(
		    &s, "vhost-user-fs-%s,chardev=fs0,tag=%s", bus,
		    opt_escape(c->virtiofs_tag ? c->virtiofs_tag : QEMU_VIRTIOFS_TAG_DEFAULT));
	}

	if (c->shm_path) {
		/* The job's region, mapped into this VM and its peers alike: share=on, so every
		 * QEMU writes the same host pages; the guest sees it as BAR 2 of 1af4:1110. */
		strv_add(&s, strdup("-object"));
		strv_addf(&s, "memory-backend-file,id=shm,mem-path=%s,size=%" PRIu64 ",share=on",
			  opt_escape(c->shm_path), c->shm_size_bytes);
		strv_add2(&s, "-device", "ivshmem-plain,memdev=shm");
	}

	if (net->add_netdev) {
		char mtu[24] = "";

		if (c->net_mtu)
			snprintf(mtu, sizeof(mtu), ",host_mtu=%u", c->net_mtu);
		net->add_netdev(&s, c);
		strv_add(&s, strdup("-device"));
		/* romfile= (empty): no iPXE option ROM to load, we boot from -kernel */
		strv_addf(&s, "virtio-net-%s,netdev=net0%s%s%s%s", bus,
			  mmio ? "" : ",romfile=", c->mac ? ",mac=" : "", c->mac ? c->mac : "",
			  mtu);
	}

	if (c->control_socket) {
		strv_add(&s, strdup("-chardev"));
		strv_addf(&s, "socket,id=ctl,path=%s,server=on,wait=off",
			  opt_escape(c->control_socket));
		strv_add(&s, strdup("-device"));
		/* One port (ids from 1: 0 is kept for a console): QEMU's default of 31 makes the
		 * guest set up 64 virtqueues, 0.9 MiB of its memory (bench/guest-mem.sh). */
		strv_addf(&s, "virtio-serial-%s,id=vser0,max_ports=2", bus);
		strv_add2(&s, "-device",
			  "virtserialport,bus=vser0.0,chardev=ctl,name=" QEMU_CONTROL_PORT_NAME);
	}

	strv_add(&s, strdup("-chardev"));
	if (c->qmp_socket)
		strv_addf(&s, "socket,id=qmp,path=%s,server=on,wait=off",
			  opt_escape(c->qmp_socket));
	else
		strv_addf(&s, "socket,id=qmp,fd=%d", QEMU_QMP_CHILD_FD);
	strv_add2(&s, "-mon", "chardev=qmp,mode=control");

	if (c->console_log || c->console_pipe) {
		strv_add(&s, strdup("-chardev"));
		if (c->console_log)
			strv_addf(&s, "file,id=console,path=%s", opt_escape(c->console_log));
		else
			strv_add(&s, strdup("stdio,id=console,signal=off"));
		strv_add2(&s, "-serial", "chardev:console");
	}

	if (s.oom) {
		qemu_argv_free(s.v);
		return -ENOMEM;
	}
	*ret_argv = s.v;
	return 0;
}

/* ---- the process ---- */

const char *qemu_binary(void)
{
	const char *e = getenv("VMHPC_QEMU");

	return e && e[0] ? e : "qemu-system-x86_64";
}

/* Finds name in $PATH (or takes it as a path when it has a '/'), before fork: the child
 * should only call async-signal-safe functions. */
static int resolve_binary(const char *name, char **ret_path)
{
	const char *path = getenv("PATH");

	if (strchr(name, '/')) {
		if (access(name, X_OK) < 0)
			return -errno;
		*ret_path = strdup(name);
		return *ret_path ? 0 : -ENOMEM;
	}
	if (!path || !path[0])
		path = "/usr/local/bin:/usr/bin:/bin";
	for (const char *p = path; *p;) {
		size_t n = strcspn(p, ":");
		char *candidate;

		if (asprintf(&candidate, "%.*s/%s", (int)n, n ? p : ".", name) < 0)
			return -ENOMEM;
		if (access(candidate, X_OK) == 0) {
			*ret_path = candidate;
			return 0;
		}
		free(candidate);
		p += n;
		if (*p == ':')
			p++;
	}
	return -ENOENT;
}

/* In the child between fork and exec: only async-signal-safe calls. fds[] holds, at
 * numbers >= 64, what becomes 0, 1, 2 and QEMU_QMP_CHILD_FD (or -1), and err_fd the
 * write end of the exec-error pipe. */
static void __attribute__((noreturn))
child_exec(const char *path, char *const argv[], const int fds[4], int err_fd, int go_fd,
	   pid_t parent, bool outlive, const struct proc_namespaces *ns)
{
	static const int default_signals[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD};
	struct sigaction dfl = {.sa_handler = SIG_DFL};
	sigset_t none;
	char go;
	ssize_t n;
	int e;

	/* The parent's word that it recorded our pid (record_pid): end of file instead means
	 * it died or gave up first, and a QEMU nobody recorded must not run. */
	if (go_fd >= 0) {
		do
			n = read(go_fd, &go, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			_exit(127);
	}

	/* Its own process group: a terminal's Ctrl-C goes to vmhpc, which decides what
	 * happens to the VMs; and the whole group can be killed at once. A VM that outlives
	 * us gets its own session too: the caller's terminal hanging up must not reach it. */
	if (outlive) {
		setsid();
	} else {
		setpgid(0, 0);
		/* Dies with us: a vmhpc killed with SIGKILL leaves no QEMU running. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
	}
	/* A caller that blocks or ignores signals (signalfd loops do) must not pass that on. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (size_t i = 0; i < ARRAY_SIZE(default_signals); i++)
		sigaction(default_signals[i], &dfl, NULL);
	/* Into the job's network (and the user namespace owning it) first: the dup2()s below
	 * may land on the fds that name the namespaces. QEMU alone enters it. */
	e = proc_join_namespaces(ns);
	if (e < 0) {
		errno = -e;
		goto fail_early;
	}
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0 && dup2(fds[i], i) < 0)
			goto fail;
	if (dup2(err_fd, 4) < 0 || fcntl(4, F_SETFD, FD_CLOEXEC) < 0)
		goto fail;

	/* Nothing else of ours reaches QEMU, even an fd someone forgot to make O_CLOEXEC. */
	syscall(SYS_close_range, 5u, ~0u, 0u);
	if (fds[3] < 0)
		close(3);
	execv(path, argv);
fail:
	e = errno;
	(void)!write(4, &e, sizeof(e));
	_exit(127);
fail_early:
	e = errno;
	(void)!write(err_fd, &e, sizeof(e));
	_exit(127);
}

static int open_log(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0640);

	return fd < 0 ? -errno : fd;
}

/* A copy of fd at a number >= 64 (so dup2 onto 0..4 in the child never clobbers a source). */
static int fd_high(int fd)
{
	int r = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 64);

	return r < 0 && fd >= 0 ? -errno : r;
}

int qemu_vm_start(const struct qemu_vm_config *config, struct qemu_vm **ret_vm)
{
	struct qemu_vm_config c = *config;
	_cleanup_free_ char *path = NULL, *error = NULL;
	char **argv = NULL;
	int console[2] = {-1, -1}, qmp[2] = {-1, -1}, errpipe[2] = {-1, -1}, gopipe[2] = {-1, -1};
	int fds[4] = {-1, -1, -1, -1}, devnull = -1, stderr_fd = -1;
	struct qemu_vm *vm = NULL;
	struct stat st;
	pid_t parent = getpid(), pid;
	ssize_t n;
	int r, e;

	if (c.root_image && c.root_size_bytes == 0) {
		if (stat(c.root_image, &st) < 0)
			return -errno;
		c.root_size_bytes = (uint64_t)st.st_size;
	}
	r = qemu_build_argv(&c, &argv, &error);
	if (r < 0) {
		log_debug("qemu: %s", error ? error : "cannot build the command line");
		return r;
	}
	r = resolve_binary(argv[0], &path);
	if (r < 0) {
		log_debug("qemu: %s: %s", argv[0], strerror(-r));
		goto out;
	}
	vm = calloc(1, sizeof(*vm));
	if (!vm || !(vm->name = strdup(c.name)) ||
	    (c.qmp_socket && !(vm->qmp_socket = strdup(c.qmp_socket))) ||
	    (c.control_socket && !(vm->control_socket = strdup(c.control_socket)))) {
		r = -ENOMEM;
		goto out;
	}
	vm->pidfd = vm->console_fd = vm->qmp_fd = -1;

	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull < 0) {
		r = -errno;
		goto out;
	}
	if (c.stderr_log) {
		stderr_fd = open_log(c.stderr_log);
		if (stderr_fd < 0) {
			r = stderr_fd;
			goto out;
		}
	}
	if ((c.console_pipe && pipe2(console, O_CLOEXEC) < 0) ||
	    (!c.qmp_socket && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp) < 0) ||
	    pipe2(errpipe, O_CLOEXEC) < 0 || (c.record_pid && pipe2(gopipe, O_CLOEXEC) < 0)) {
		r = -errno;
		goto out;
	}
	fds[0] = fd_high(devnull);
	fds[1] = fd_high(c.console_pipe ? console[1] : devnull);
	fds[2] = fd_high(stderr_fd >= 0 ? stderr_fd : c.console_pipe ? console[1] : devnull);
	fds[3] = fd_high(qmp[1]);
	e = fd_high(errpipe[1]);
	if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0 || (qmp[1] >= 0 && fds[3] < 0) || e < 0) {
		r = -EMFILE;
		if (e >= 0)
			close(e);
		goto out;
	}
	close(errpipe[1]);
	errpipe[1] = e;

	pid = fork();
	if (pid < 0) {
		r = -errno;
		goto out;
	}
	if (pid == 0) {
		if (gopipe[1] >= 0)
			close(gopipe[1]); /* so that our death reads as end of file there */
		child_exec(path, argv, fds, errpipe[1], gopipe[0], parent, c.outlive_caller,
			   c.namespaces);
	}
	if (!c.outlive_caller)
		(void)setpgid(pid, pid); /* also here, so kill(-pid) works the moment we return */
	vm->pid = pid;
	vm->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	close(errpipe[1]);
	errpipe[1] = -1;
	if (c.record_pid) {
		r = c.record_pid(pid, c.record_userdata);
		if (r < 0 || write(gopipe[1], "g", 1) != 1) {
			r = r < 0 ? r : -EIO;
			qemu_vm_kill(vm);
			goto out;
		}
	}
	/* The exec-error pipe closes at a successful exec; an errno means it failed. */
	do
		n = read(errpipe[0], &e, sizeof(e));
	while (n < 0 && errno == EINTR);
	if (n == sizeof(e)) {
		r = -e;
		log_debug("qemu: exec %s: %s", path, strerror(e));
		qemu_vm_kill(vm);
		goto out;
	}
	if (c.console_pipe) {
		vm->console_fd = console[0];
		console[0] = -1;
	}
	if (!c.qmp_socket) {
		vm->qmp_fd = qmp[0];
		qmp[0] = -1;
	}
	log_debug("qemu: VM %s started as pid %d", vm->name, (int)pid);
	*ret_vm = vm;
	vm = NULL;
	r = 0;
out:
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	int *all[] = {console, qmp, errpipe, gopipe};
	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		for (int j = 0; j < 2; j++)
			if (all[i][j] >= 0)
				close(all[i][j]);
	if (devnull >= 0)
		close(devnull);
	if (stderr_fd >= 0)
		close(stderr_fd);
	qemu_argv_free(argv);
	qemu_vm_free(vm);
	return r;
}

unsigned long long qemu_process_start_time(pid_t pid)
{
	char path[64], buf[1024];
	_cleanup_close_ int fd = -1;
	unsigned long long start = 0;
	ssize_t n;
	char *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
	if (!p || p[1] != ' ')
		return 0;
	p += 2;
	/* p is at field 3; field 22 is 19 spaces on. */
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (p)
		start = strtoull(p, NULL, 10);
	return start;
}

int qemu_vm_adopt(const char *name, pid_t pid, unsigned long long start_time,
		  const char *control_socket, const char *qmp_socket, struct qemu_vm **ret_vm)
{
	struct qemu_vm *vm;

	if (pid <= 1 || start_time == 0 || qemu_process_start_time(pid) != start_time)
		return -ESRCH;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->pidfd = vm->console_fd = vm->qmp_fd = -1;
	vm->pid = pid;
	vm->adopted = true;
	if (!(vm->name = strdup(name)) || (qmp_socket && !(vm->qmp_socket = strdup(qmp_socket))) ||
	    (control_socket && !(vm->control_socket = strdup(control_socket)))) {
		vm->pid = 0;
		qemu_vm_free(vm);
		return -ENOMEM;
	}
	vm->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	/* The pid may have been reused between the check and the pidfd: check again. */
	if (vm->pidfd < 0 || qemu_process_start_time(pid) != start_time) {
		vm->pid = 0;
		qemu_vm_free(vm);
		return -ESRCH;
	}
	*ret_vm = vm;
	return 0;
}

void qemu_vm_release(struct qemu_vm *vm)
{
	if (!vm)
		return;
	free(vm->qmp_socket);
	free(vm->control_socket);
	vm->qmp_socket = vm->control_socket = NULL;
	vm->pid = 0; /* nothing to kill */
	qemu_vm_free(vm);
}

pid_t qemu_vm_pid(const struct qemu_vm *vm)
{
	return vm->pid;
}

int qemu_vm_pidfd(const struct qemu_vm *vm)
{
	return vm->pidfd;
}

int qemu_vm_console_fd(const struct qemu_vm *vm)
{
	return vm->console_fd;
}

int qemu_vm_take_qmp_fd(struct qemu_vm *vm)
{
	return TAKE_FD(vm->qmp_fd);
}

static int status_of(int wstatus)
{
	if (WIFEXITED(wstatus))
		return WEXITSTATUS(wstatus);
	if (WIFSIGNALED(wstatus))
		return 128 + WTERMSIG(wstatus);
	return 255;
}

/* Reaps without blocking: 1 when reaped (now or before), 0 while it runs. */
static int try_reap(struct qemu_vm *vm)
{
	int wstatus;
	pid_t p;

	if (vm->reaped)
		return 1;
	do
		p = waitpid(vm->pid, &wstatus, WNOHANG);
	while (p < 0 && errno == EINTR);
	if (p < 0 && errno == ECHILD && vm->adopted) {
		/* Not our child: its parent (or init) reaps it; the pidfd says when it ended. */
		struct pollfd pfd = {.fd = vm->pidfd, .events = POLLIN};

		if (vm->pidfd >= 0 && poll(&pfd, 1, 0) == 0)
			return 0;
		vm->reaped = true;
		vm->status = 255;
		return 1;
	}
	if (p < 0)
		return -errno;
	if (p == 0)
		return 0;
	vm->reaped = true;
	vm->status = status_of(wstatus);
	log_debug("qemu: VM %s (pid %d) ended with status %d", vm->name, (int)vm->pid, vm->status);
	return 1;
}

int qemu_vm_wait(struct qemu_vm *vm, int timeout_ms, int *ret_status)
{
	int64_t deadline = timeout_ms < 0 ? -1 : time_now_ms() + timeout_ms;
	int r;

	for (;;) {
		int64_t left;

		r = try_reap(vm);
		if (r < 0)
			return r;
		if (r > 0)
			break;
		left = deadline < 0 ? 1000 : deadline - time_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		if (left > 1000)
			left = 1000;
		if (vm->pidfd >= 0) {
			struct pollfd pfd = {.fd = vm->pidfd, .events = POLLIN};

			(void)poll(&pfd, 1, (int)left);
		} else {
			/* Kernels before 5.3: no pidfd to sleep on. */
			struct timespec ts = {0, (left > 10 ? 10 : left) * 1000000L};

			nanosleep(&ts, NULL);
		}
	}
	if (ret_status)
		*ret_status = vm->status;
	return 0;
}

int qemu_vm_kill(struct qemu_vm *vm)
{
	int r;

	if (vm->reaped)
		return 0;
	/* Until it is reaped, the pid (and so the group id) cannot be reused; an adopted one
	 * is signalled through its pidfd, which names that very process. */
	if (vm->adopted && vm->pidfd >= 0)
		(void)syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0);
	else if (kill(-vm->pid, SIGKILL) < 0)
		(void)kill(vm->pid, SIGKILL);
	r = qemu_vm_wait(vm, -1, NULL);
	return r;
}

struct qemu_vm *qemu_vm_free(struct qemu_vm *vm)
{
	if (!vm)
		return NULL;
	if (vm->pid > 0)
		qemu_vm_kill(vm);
	/* QEMU removes its listening sockets when it exits cleanly; not when killed. */
	if (vm->qmp_socket)
		(void)unlink(vm->qmp_socket);
	if (vm->control_socket)
		(void)unlink(vm->control_socket);
	if (vm->pidfd >= 0)
		close(vm->pidfd);
	if (vm->console_fd >= 0)
		close(vm->console_fd);
	if (vm->qmp_fd >= 0)
		close(vm->qmp_fd);
	free(vm->qmp_socket);
	free(vm->control_socket);
	free(vm->name);
	free(vm);
	return NULL;
}

int qemu_vm_host_memory(pid_t pid, uint64_t *ret_rss_kb, uint64_t *ret_pss_kb)
{
	char path[64], line[256];
	_cleanup_fclose_ FILE *f = NULL;
	uint64_t rss = 0, pss = 0;
	bool have_rss = false, have_pss = false;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		uint64_t v;

		if (sscanf(line, "Rss: %" SCNu64 " kB", &v) == 1) {
			rss = v;
			have_rss = true;
		} else if (sscanf(line, "Pss: %" SCNu64 " kB", &v) == 1) {
			pss = v;
			have_pss = true;
		}
	}
	if (!have_rss || !have_pss)
		return -ENODATA;
	if (ret_rss_kb)
		*ret_rss_kb = rss;
	if (ret_pss_kb)
		*ret_pss_kb = pss;
	return 0;
}
