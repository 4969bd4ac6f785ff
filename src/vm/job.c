#include "vm/job.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "net/netns.h"
#include "shm/shm.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/time.h"
#include "vm/materialize.h"
#include "vm/qmp.h"
#include "vm/qemu.h"
#include "vm/runstate.h"
#include "vm/virtiofsd.h"

#define CONSOLE_TAIL_LINES 15
#define OVERLAY_MAX_MB	   256

struct job_vm {
	char name[16];
	char ip[20];
	char *ctl_path;
	char *qmp_path; /* detachable jobs: QMP on a socket an adopter can reach; else NULL */
	char *console_log;
	char *fs_log; /* virtiofsd's; NULL without a share */
	struct qemu_vm *qemu;
	pid_t virtiofsd;
	unsigned long long virtiofsd_start; /* its start time: names it for an adopter */
	struct qmp_client *qmp; /* QEMU's monitor: status checks and the last-resort quit */
	struct exec_client *ctl;
	int ctl_fd; /* the client's fd, kept for polling */
	bool ready;
	bool greeted;
	double start_s;
	double ready_s;
	struct frame_info ready_info;
};

struct job {
	struct runstate *rs;
	struct net_job *net;
	struct materialized_image image;
	enum accel accel;
	double materialize_s;
	uint8_t token[FRAME_TOKEN_BYTES];
	unsigned n_vms;
	unsigned n_ready;
	struct job_vm *vms;
	bool detachable;
	int pidfds[JOB_MAX_VMS]; /* watched while a command runs (job_exec_start) */
	unsigned n_pidfds;
	char *workdir;	/* the job folder the guests mount (SETUP), or NULL */
	unsigned vcpus; /* each VM's */
	uid_t owner_uid;
	gid_t owner_gid;
	char *shm_path; /* the shared-memory region in the job directory, or NULL */
	uint64_t shm_size_bytes;
	double boot_deadline_s;
	int boot_timeout_ms;
	void (*progress)(unsigned ready, unsigned n_vms, void *userdata);
	void (*log)(enum log_level level, const char *message, void *userdata);
	void *userdata;
	/* Across nodes (job_config.cluster); a job of one node is node 0 of 1, vni 0. */
	unsigned node_index, n_nodes;
	uint32_t vni;
	uint16_t vxlan_port;
	char **node_addrs;     /* n_nodes of them; NULL for a job of one node */
	char (*all_names)[16]; /* n_nodes * n_vms: "vm<g>" */
};

static void job_log(const struct job *j, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_log(const struct job *j, enum log_level level, const char *fmt, ...)
{
	char *msg;
	va_list ap;
	int n;

	if (!j->log)
		return;
	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	j->log(level, msg, j->userdata);
	free(msg);
}

const char *job_id(const struct job *j)
{
	return runstate_job_id(j->rs);
}
const char *job_dir(const struct job *j)
{
	return runstate_job_dir(j->rs);
}
enum accel job_accel(const struct job *j)
{
	return j->accel;
}
double job_materialize_s(const struct job *j)
{
	return j->materialize_s;
}

const char *job_vm_name(const struct job *j, unsigned vm)
{
	return vm < j->n_vms ? j->vms[vm].name : NULL;
}

unsigned job_vm_count_total(const struct job *j)
{
	return j->n_nodes * j->n_vms;
}

const char *job_vm_name_total(const struct job *j, unsigned g)
{
	return g < job_vm_count_total(j) ? j->all_names[g] : NULL;
}

unsigned job_node_index(const struct job *j)
{
	return j->node_index;
}

unsigned job_node_count(const struct job *j)
{
	return j->n_nodes;
}

uint32_t job_vni(const struct job *j)
{
	return j->vni;
}

unsigned job_vcpus(const struct job *j)
{
	return j->vcpus;
}

const char *job_workdir(const struct job *j)
{
	return j->workdir;
}

void job_owner(const struct job *j, uid_t *ret_uid, gid_t *ret_gid)
{
	*ret_uid = j->owner_uid;
	*ret_gid = j->owner_gid;
}

void job_vm_address(unsigned g, char out[20])
{
	snprintf(out, 20, JOB_SUBNET_PREFIX "%u.%u", ((g + 1) >> 8) & 0xff, (g + 1) & 0xff);
}

/* The prefix length the guests get: a job of at most 254 VMs keeps its /24. */
static unsigned subnet_prefix(const struct job *j)
{
	return job_vm_count_total(j) <= 254 ? 24 : 16;
}

/* The job-wide names alone (job_attach: each VM's own name comes from job.json). */
static int name_vms_all(struct job *j)
{
	unsigned total = job_vm_count_total(j);

	j->all_names = calloc(total, sizeof(*j->all_names));
	if (!j->all_names)
		return -ENOMEM;
	for (unsigned g = 0; g < total; g++)
		snprintf(j->all_names[g], sizeof(j->all_names[g]), "vm%u", g);
	return 0;
}

/* Names every VM of the job, this node's own ones (index g = node_index * n_vms + i) with
 * their addresses. */
static int name_vms(struct job *j)
{
	int r = name_vms_all(j);

	if (r < 0)
		return r;
	for (unsigned i = 0; i < j->n_vms; i++) {
		unsigned g = j->node_index * j->n_vms + i;

		snprintf(j->vms[i].name, sizeof(j->vms[i].name), "%s", j->all_names[g]);
		job_vm_address(g, j->vms[i].ip);
	}
	return 0;
}

static void free_cluster(struct job *j)
{
	for (unsigned k = 0; j->node_addrs && k < j->n_nodes; k++)
		free(j->node_addrs[k]);
	free(j->node_addrs);
	free(j->all_names);
}

/* The last lines of a console log, for messages about a guest that did not come up. */
static char *console_tail(const char *path)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	const char *p;
	int lines = 0;

	if (!path || fs_read_file(path, 16u << 20, &text, &len) < 0 || len == 0)
		return strdup("(the console is empty)");
	p = text + len;
	while (p > text && lines <= CONSOLE_TAIL_LINES)
		if (*--p == '\n')
			lines++;
	return strdup(p == text ? p : p + 1);
}

/* The paths a VM's record owns. */
static void vm_free_paths(struct job_vm *v)
{
	free(v->ctl_path);
	free(v->qmp_path);
	free(v->console_log);
	free(v->fs_log);
}

void job_free(struct job *j)
{
	if (!j)
		return;
	for (unsigned i = 0; j->vms && i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];

		exec_client_free(v->ctl);
		qmp_client_free(v->qmp);
		qemu_vm_free(v->qemu);
		virtiofsd_stop(v->virtiofsd);
		vm_free_paths(v);
	}
	net_job_free(j->net);
	materialized_image_done(&j->image);
	/* The region goes with the job directory (runstate_release, or vmhpc cleanup for a
	 * killed job): nothing of it is recorded elsewhere. */
	runstate_release(j->rs);
	free(j->shm_path);
	free(j->workdir);
	free(j->vms);
	free_cluster(j);
	OPENSSL_cleanse(j->token, sizeof(j->token));
	free(j);
}

int job_clean_stale(const char *run_dir)
{
	return runstate_clean_stale(run_dir, geteuid());
}

static char *job_path(struct job *j, const char *fmt, unsigned vm)
{
	char name[64];

	snprintf(name, sizeof(name), fmt, vm);
	return fs_path_join(runstate_job_dir(j->rs), name);
}

/* Past this many bytes the host list goes as a sequence (x86's kernel command line holds
 * 2048 bytes, and the image's own boot_args need room). */
#define HOSTS_LIST_MAX_BYTES 1024

/* The guests' host table, every VM of the job on every node: "vmhpc.hosts=vm0=10.77.0.1,..."
 * while it is short (any guest reads it), else "vmhpc.hosts_seq=vm:10.77.0.1:N" (names and
 * addresses both follow the job-wide index; a guest of this vmhpc reads it). */
static char *hosts_arg(const struct job *j)
{
	unsigned total = job_vm_count_total(j);
	size_t cap = (size_t)total * 40 + 16, len = 0;
	char *out = malloc(cap), ip[20];

	if (!out)
		return NULL;
	len = (size_t)snprintf(out, cap, "vmhpc.hosts=");
	for (unsigned g = 0; g < total; g++) {
		job_vm_address(g, ip);
		len += (size_t)snprintf(out + len, cap - len, "%s%s=%s", g ? "," : "",
					j->all_names[g], ip);
	}
	if (len > HOSTS_LIST_MAX_BYTES) {
		job_vm_address(0, ip);
		snprintf(out, cap, "vmhpc.hosts_seq=vm:%s:%u", ip, total);
	}
	return out;
}

/* Whether word appears in the blank-separated list (the image's boot_args may say quiet). */
static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = strstr(list, word); p; p = strstr(p + 1, word))
		if ((p == list || p[-1] == ' ' || p[-1] == '\t') &&
		    (p[n] == '\0' || p[n] == ' ' || p[n] == '\t'))
			return true;
	return false;
}

/* Rings of 2 MiB (a 1 MiB message streams with room to spare), fewer bytes each as the
 * pairs grow so that the region stays near 64 MiB at most. */
static size_t shm_ring_bytes(unsigned n_vms)
{
	size_t pairs = (size_t)n_vms * (n_vms - 1), ring = 2u << 20;

	while (ring > 64u * 1024 && ring * pairs > 64u << 20)
		ring >>= 1;
	return ring;
}

/* The heap after the rings holds the UCX transport's FIFOs and receive buffers (src/ucx/,
 * ~0.6 MiB per process with its defaults, more while messages wait unreceived). */
#define SHM_HEAP_BYTES_PER_VM (3u << 20)

/* The job's region, <job dir>/shm: on a tmpfs (/run, $XDG_RUNTIME_DIR) it is plain shared
 * memory; it is removed with the job directory on every exit path. */
static int make_shm_region(struct job *j, char **ret_error)
{
	size_t size = shm_region_size_for(j->n_vms, shm_ring_bytes(j->n_vms));
	int r;

	while (shm_region_heap_bytes_for(size, j->n_vms) < (size_t)j->n_vms * SHM_HEAP_BYTES_PER_VM)
		size <<= 1;

	j->shm_path = fs_path_join(runstate_job_dir(j->rs), "shm");
	if (!j->shm_path)
		return -ENOMEM;
	r = shm_region_create(j->shm_path, size, j->n_vms,
			      shm_group_key(j->token, sizeof(j->token), j->node_index), ret_error);
	if (r < 0)
		return r;
	j->shm_size_bytes = size;
	job_log(j, LOG_LEVEL_DEBUG, "shared-memory region %s: %zu bytes for %u VMs", j->shm_path,
		size, j->n_vms);
	return 0;
}

/* qemu_vm_config.record_pid and virtiofsd_config.record_pid: the pid goes into the runstate
 * before the program runs. */
static int record_pid(pid_t pid, void *userdata)
{
	struct job *j = userdata;

	return runstate_add_pid(j->rs, pid);
}

static int start_vm(struct job *j, const struct job_config *cfg, unsigned i, const char *hosts,
		    char **ret_error)
{
	struct job_vm *v = &j->vms[i];
	_cleanup_free_ char *fs_sock = NULL, *qemu_log = NULL, *cmdline = NULL;
	const char *boot_args = cfg->image->boot_args ? cfg->image->boot_args : "";
	char mac[NET_MAC_LEN];
	struct qemu_vm_config qc = {0};
	unsigned overlay_mb = cfg->mem_mb / 4 < OVERLAY_MAX_MB ? cfg->mem_mb / 4 : OVERLAY_MAX_MB;
	int r;

	v->ctl_path = job_path(j, "vm%u.ctl", i);
	v->console_log = job_path(j, "vm%u.console.log", i);
	qemu_log = job_path(j, "vm%u.qemu.log", i);
	if (!v->ctl_path || !v->console_log || !qemu_log)
		return -ENOMEM;
	if (cfg->workdir) {
		struct virtiofsd_config fc = {.dir = cfg->workdir,
					      .dir_dev = cfg->workdir_dev,
					      .dir_ino = cfg->workdir_ino,
					      .uid = cfg->owner_uid,
					      .gid = cfg->owner_gid,
					      .outlive_caller = j->detachable,
					      .record_pid = record_pid,
					      .record_userdata = j};

		fs_sock = job_path(j, "vm%u.fs.sock", i);
		v->fs_log = job_path(j, "vm%u.virtiofsd.log", i);
		if (!fs_sock || !v->fs_log)
			return -ENOMEM;
		fc.socket_path = fs_sock;
		fc.log_path = v->fs_log;
		r = virtiofsd_start(&fc, &v->virtiofsd, ret_error);
		if (r < 0)
			return r;
		v->virtiofsd_start = qemu_process_start_time(v->virtiofsd);
	}
	/* The VM's node in the shared-memory region; the region's key comes from the token,
	 * which the guest gets in SETUP, and in a job across nodes from this node's index too:
	 * each node's VMs share a region of their own (shm_group_key). */
	char shm_arg[64] = "";
	if (j->shm_path && j->node_index > 0)
		snprintf(shm_arg, sizeof(shm_arg), " vmhpc.shm_node=%u vmhpc.shm_group=%u", i,
			 j->node_index);
	else if (j->shm_path)
		snprintf(shm_arg, sizeof(shm_arg), " vmhpc.shm_node=%u", i);
	/* No token and no job folder here: every host user can read this in /proc/PID/cmdline.
	 * They go in SETUP on the control port (try_connect).
	 * Under TCG, noapictimer: the guest kernel calibrates the local APIC timer against the
	 * PIT for ~0.1 s of emulated time, a quarter of a small guest's boot (TCG has no TSC
	 * deadline timer, which would skip it); the HPET then drives the ticks (docs/kernel.md,
	 * bench/RESULTS.md). One VCPU only: a 2-VCPU guest with it once died silently at boot
	 * in CI (run-faults, "4 ranks on 2 VMs"). Under KVM the APIC timer stays.
	 * percpu_alloc=page: the embedded first percpu chunk is a 2 MiB unit with ~28 KiB free,
	 * and the network device's per-CPU counters fill it; the next embedded chunk then comes
	 * with a 4 MiB array of memory-cgroup pointers (one per 4 bytes of the unit). In pages
	 * the units are ~40 pages and that array ~0.3 MiB: 3.8 MiB less at ready
	 * (docs/kernel.md), the job's cgroup still charged for kernel memory. */
	if (asprintf(&cmdline,
		     "console=ttyS0 swiotlb=noforce no_timer_check%s panic=-1 percpu_alloc=page%s "
		     "%s vmhpc.name=%s vmhpc.ip=%s/%u "
		     "%s vmhpc.root=pmem vmhpc.overlay_mb=%u vmhpc.exec_port=%d%s",
		     j->accel == ACCEL_TCG && j->vcpus == 1 ? " noapictimer" : "",
		     has_word(boot_args, "quiet") ? "" : " quiet", boot_args, v->name, v->ip,
		     subnet_prefix(j), hosts, overlay_mb, JOB_EXEC_PORT, shm_arg) < 0)
		return -ENOMEM;
	/* x86's kernel command line holds 2048 bytes: past that the guest would see it cut
	 * (only an image's very long boot_args can get there: hosts_arg stays short). */
	if (strlen(cmdline) >= 2048)
		return error_set(ret_error, -E2BIG,
				 "%s's kernel command line is %zu bytes, over the 2048 the kernel "
				 "keeps; shorten the image's boot_args",
				 v->name, strlen(cmdline));
	/* Unique over the job's whole segment, across nodes: from the job-wide index. */
	net_mac_address(j->node_index * j->n_vms + i, mac);
	qc.name = v->name;
	qc.accel = j->accel;
	qc.vcpus = cfg->vcpus;
	qc.mem_mb = cfg->mem_mb;
	qc.kernel = j->image.kernel_path;
	qc.initrd = j->image.initrd_path;
	qc.cmdline = cmdline;
	qc.root_image = j->image.root_path;
	qc.root_size_bytes = j->image.root_bytes;
	qc.root_kind = QEMU_ROOT_PMEM;
	qc.virtiofs_socket = fs_sock;
	qc.shm_path = j->shm_path;
	qc.shm_size_bytes = j->shm_size_bytes;
	qc.mac = mac;
	/* The VM's tap, opened by QEMU inside the job's private network. */
	qc.net = QEMU_NET_TAP;
	qc.net_tap = net_job_tap(j->net, i);
	qc.net_mtu = j->node_addrs ? JOB_CLUSTER_MTU : 0;
	qc.namespaces = net_job_namespaces(j->net);
	qc.control_socket = v->ctl_path;
	qc.console_log = v->console_log;
	qc.stderr_log = qemu_log;
	qc.outlive_caller = j->detachable;
	qc.record_pid = record_pid;
	qc.record_userdata = j;
	if (j->detachable) {
		/* QMP on a socket in the job directory: a socketpair's end would die with us. */
		v->qmp_path = job_path(j, "vm%u.qmp", i);
		if (!v->qmp_path)
			return -ENOMEM;
		qc.qmp_socket = v->qmp_path;
	}
	v->start_s = time_now_s();
	r = qemu_vm_start(&qc, &v->qemu);
	if (r < 0) {
		_cleanup_free_ char *argv_error = NULL;
		char **argv = NULL;

		if (qemu_build_argv(&qc, &argv, &argv_error) < 0)
			return error_set(ret_error, r, "starting %s: %s", v->name,
					 argv_error ? argv_error : strerror(-r));
		qemu_argv_free(argv);
		return error_set(ret_error, r, "starting QEMU for %s: %s; install qemu-system-x86",
				 v->name, strerror(-r));
	}
	{
		int fd = qemu_vm_take_qmp_fd(v->qemu);

		if (fd >= 0 && qmp_client_new(fd, &v->qmp) < 0)
			close(fd);
	}
	job_log(j, LOG_LEVEL_DEBUG, "%s: QEMU started as pid %d", v->name,
		(int)qemu_vm_pid(v->qemu));
	return 0;
}

/* Connects to a VM's control socket once QEMU has made it (ENOENT, ECONNREFUSED: not yet);
 * with a token, sends SETUP: the guest waits for its token and job folder before anything
 * else (an adopter, reconnecting, sends none: the guest has them). */
static int try_connect(struct job_vm *v, const uint8_t *token, const char *workdir)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, r;

	if (strlen(v->ctl_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, v->ctl_path);
	r = exec_client_connect((struct sockaddr *)&sa, sizeof(sa), 1000, &fd);
	if (r < 0)
		return r;
	r = exec_client_new(fd, &v->ctl);
	if (r < 0) {
		close(fd);
		return r;
	}
	r = token ? exec_client_setup(v->ctl, token, workdir, 1000) : 0;
	if (r < 0) {
		v->ctl = exec_client_free(v->ctl);
		return r;
	}
	v->ctl_fd = fd;
	return 0;
}

static int vm_failed(struct job_vm *v, int r, const char *what, char **ret_error)
{
	_cleanup_free_ char *tail = console_tail(v->console_log);
	_cleanup_free_ char *fs_tail = virtiofsd_log_tail(v->fs_log);

	/* virtiofsd sets up its sandbox only once QEMU connects: what it said then is
	 * part of why the VM stopped, and its log goes with the job directory. */
	return error_set(ret_error, r, "%s %s; the last lines of its console (%s):\n%s%s%s",
			 v->name, what, v->console_log, tail ? tail : "",
			 fs_tail ? "\nthe last lines of its virtiofsd's log:\n" : "",
			 fs_tail ? fs_tail : "");
}

/* How a stopped QEMU ended, for messages. */
static void describe_exit(int status, char *out, size_t size)
{
	if (status > 128 && status < 128 + 65)
		snprintf(out, size, "QEMU killed by signal %d, %s", status - 128,
			 strsignal(status - 128));
	else
		snprintf(out, size, "QEMU exit %d", status);
}

/* Reads the READY of one VM whose control port polled readable. */
static int vm_read_ready(struct job *j, struct job_vm *v, char **ret_error)
{
	int r = exec_client_wait_ready(v->ctl, 100, &v->ready_info);

	if (r == -ETIMEDOUT || r == -EAGAIN)
		return 0;
	if (r < 0)
		return vm_failed(v, r, "broke its control connection while booting", ret_error);
	if (!v->qmp && v->qmp_path && qmp_connect(v->qmp_path, &v->qmp) < 0)
		v->qmp = NULL;
	if (v->qmp) {
		json_t *st = NULL;

		/* QMP's view must agree: a guest reporting ready in a paused or crashed VM would
		 * be a bug worth stopping for. */
		r = qmp_command(v->qmp, "query-status", NULL, &st, 5000);
		if (r == 0 && !json_is_true(json_object_get(st, "running")))
			r = -EIO;
		json_decref(st);
		if (r < 0)
			return vm_failed(v, r, "is not running according to QMP", ret_error);
	}
	v->ready = true;
	v->ready_s = time_now_s() - v->start_s;
	j->n_ready++;
	job_log(j, LOG_LEVEL_DEBUG, "%s ready after %.2f s", v->name, v->ready_s);
	if (j->progress)
		j->progress(j->n_ready, j->n_vms, j->userdata);
	return 1;
}

unsigned job_poll_fds(const struct job *j, struct pollfd *fds, unsigned max, int *ret_timeout_ms)
{
	unsigned n = 0;
	int timeout = -1;

	for (unsigned i = 0; i < j->n_vms; i++) {
		const struct job_vm *v = &j->vms[i];
		int pidfd = v->qemu ? qemu_vm_pidfd(v->qemu) : -1;

		if (pidfd >= 0 && n < max)
			fds[n++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
		else
			timeout = 20; /* no pidfd to wake us when QEMU ends */
		if (v->ready)
			continue;
		if (v->ctl && n < max)
			fds[n++] = (struct pollfd){.fd = v->ctl_fd, .events = POLLIN};
		else
			timeout = 20; /* its control socket does not exist yet: try again soon */
	}
	if (j->n_ready < j->n_vms) {
		double left_ms = (j->boot_deadline_s - time_now_s()) * 1000;
		int left = left_ms < 0 ? 0 : left_ms > 60000 ? 60000 : (int)left_ms + 1;

		if (timeout < 0 || left < timeout)
			timeout = left;
	}
	*ret_timeout_ms = timeout;
	return n;
}

int job_check_vms(struct job *j, char **ret_error)
{
	for (unsigned i = 0; i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];
		int status;

		if (v->qemu && qemu_vm_wait(v->qemu, 0, &status) == 0) {
			char how[96], what[160];

			describe_exit(status, how, sizeof(how));
			snprintf(what, sizeof(what), "stopped (%s)%s", how,
				 j->n_ready < j->n_vms ? " while booting" : " while the job ran");
			return vm_failed(v, -EIO, what, ret_error);
		}
	}
	return 0;
}

int job_step(struct job *j, char **ret_error)
{
	int r = job_check_vms(j, ret_error);

	if (r < 0)
		return r;
	for (unsigned i = 0; i < j->n_vms && j->n_ready < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];
		struct pollfd p;

		if (v->ready)
			continue;
		if (!v->ctl && try_connect(v, j->token, j->workdir) < 0)
			continue;
		/* Read only what is there: the step never blocks. */
		p = (struct pollfd){.fd = v->ctl_fd, .events = POLLIN};
		if (poll(&p, 1, 0) <= 0)
			continue;
		r = vm_read_ready(j, v, ret_error);
		if (r < 0)
			return r;
	}
	if (j->n_ready == j->n_vms)
		return 1;
	if (time_now_s() > j->boot_deadline_s) {
		for (unsigned i = 0; i < j->n_vms; i++)
			if (!j->vms[i].ready) {
				char what[96];

				snprintf(what, sizeof(what), "did not report ready within %d s",
					 j->boot_timeout_ms / 1000);
				return vm_failed(&j->vms[i], -ETIMEDOUT, what, ret_error);
			}
	}
	return 0;
}

static int write_state(struct job *j);

int job_check_image(const struct manifest *m, char **ret_error)
{
	json_t *v = json_object_get(m->metadata, "guest_protocol");
	json_int_t proto = json_is_integer(v) ? json_integer_value(v) : 1;

	if (proto == FRAME_PROTO_VERSION)
		return 0;
	return error_set(ret_error, -EPROTO,
			 "image %s:%u was built %s vmhpc: its guest init speaks exec protocol "
			 "%lld, this vmhpc speaks %d; build a new version of it (`vmhpc image "
			 "build SPEC`)",
			 m->name, m->version,
			 proto < FRAME_PROTO_VERSION ? "by an older" : "by a newer",
			 (long long)proto, FRAME_PROTO_VERSION);
}

/* Checks and copies job_config.cluster into j (a job of one node: node 0 of 1). */
static int copy_cluster(struct job *j, const struct job_config *cfg, char **ret_error)
{
	const struct job_cluster *c = cfg->cluster;
	struct in_addr a;

	j->n_nodes = 1;
	if (!c)
		return 0;
	if (c->n_nodes == 0 || c->n_nodes > JOB_MAX_NODES || c->node_index >= c->n_nodes ||
	    !c->node_addrs)
		return error_set(ret_error, -EINVAL,
				 "a job across nodes has 1 to %d nodes and this node's index below "
				 "their number (node %u of %u)",
				 JOB_MAX_NODES, c->node_index, c->n_nodes);
	if ((uint64_t)c->n_nodes * cfg->n_vms > JOB_MAX_VMS_TOTAL)
		return error_set(ret_error, -EINVAL,
				 "%u nodes x %u VMs: a job has at most %d VMs over all its nodes",
				 c->n_nodes, cfg->n_vms, JOB_MAX_VMS_TOTAL);
	if (c->vni == 0 || c->vni > 0xffffff)
		return error_set(ret_error, -EINVAL,
				 "VXLAN id %u: a job's network id is 1 .. 16777215", c->vni);
	if (!c->token_hex || frame_token_from_hex(c->token_hex, j->token) < 0)
		return error_set(ret_error, -EINVAL,
				 "the job's token must be %d hex digits, the same on every node",
				 2 * FRAME_TOKEN_BYTES);
	if (cfg->unprivileged)
		return error_set(ret_error, -EPERM,
				 "a job across nodes needs root: its VXLAN device is made in the "
				 "node's network namespace");
	j->node_addrs = calloc(c->n_nodes, sizeof(*j->node_addrs));
	if (!j->node_addrs)
		return -ENOMEM;
	j->n_nodes = c->n_nodes;
	for (unsigned k = 0; k < c->n_nodes; k++) {
		if (!c->node_addrs[k] || inet_pton(AF_INET, c->node_addrs[k], &a) != 1)
			return error_set(ret_error, -EINVAL,
					 "node %u's address \"%s\" is not an IPv4 address", k,
					 c->node_addrs[k] ? c->node_addrs[k] : "(none)");
		j->node_addrs[k] = strdup(c->node_addrs[k]);
		if (!j->node_addrs[k])
			return -ENOMEM;
	}
	j->node_index = c->node_index;
	j->vni = c->vni;
	j->vxlan_port = c->vxlan_port ? c->vxlan_port : JOB_VXLAN_PORT;
	return 0;
}

/* The VXLAN link to the job's other nodes. Every VM's MAC and node are known from its
 * job-wide index, so unicast goes to the one node that has the VM (a flood entry per node
 * would send every frame to every node). */
static int add_vxlan(struct job *j, char **ret_error)
{
	unsigned total = job_vm_count_total(j);
	_cleanup_free_ const char **remotes = calloc(j->n_nodes, sizeof(*remotes));
	_cleanup_free_ struct net_fdb_entry *entries = calloc(total, sizeof(*entries));
	struct net_vxlan vx = {.vni = j->vni, .port = j->vxlan_port, .mtu = JOB_CLUSTER_MTU};

	if (!remotes || !entries)
		return -ENOMEM;
	for (unsigned k = 0; k < j->n_nodes; k++) {
		if (k == j->node_index)
			continue;
		remotes[vx.n_remotes++] = j->node_addrs[k];
		for (unsigned i = 0; i < j->n_vms; i++) {
			struct net_fdb_entry *e = &entries[vx.n_entries++];

			net_mac_address(k * j->n_vms + i, e->mac);
			e->dst = j->node_addrs[k];
		}
	}
	vx.remote_addrs = remotes;
	vx.entries = entries;
	job_log(j, LOG_LEVEL_DEBUG, "VXLAN id %u on UDP port %u to %u other nodes", vx.vni, vx.port,
		vx.n_remotes);
	return net_job_add_vxlan(j->net, &vx, ret_error);
}

int job_start(const struct job_config *cfg, struct job **ret_job, char **ret_error)
{
	struct job *j;
	_cleanup_free_ char *hosts = NULL;
	double t0;
	int r;

	if (cfg->n_vms == 0 || cfg->n_vms > JOB_MAX_VMS)
		return error_set(ret_error, -EINVAL, "a job has 1 to %d VMs", JOB_MAX_VMS);
	r = job_check_image(cfg->image, ret_error);
	if (r < 0)
		return r;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->n_vms = cfg->n_vms;
	j->detachable = cfg->detachable;
	j->boot_timeout_ms = cfg->boot_timeout_ms;
	j->progress = cfg->progress;
	j->log = cfg->log;
	j->userdata = cfg->userdata;
	j->vms = calloc(cfg->n_vms, sizeof(*j->vms));
	j->workdir = cfg->workdir ? strdup(cfg->workdir) : NULL;
	j->vcpus = cfg->vcpus;
	j->owner_uid = cfg->owner_uid;
	j->owner_gid = cfg->owner_gid;
	if (!j->vms || (cfg->workdir && !j->workdir)) {
		free(j->vms);
		free(j->workdir);
		free(j);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < cfg->n_vms; i++) {
		j->vms[i].virtiofsd = -1;
		j->vms[i].ctl_fd = -1;
	}
	r = copy_cluster(j, cfg, ret_error);
	if (r < 0)
		goto fail;
	r = name_vms(j);
	if (r < 0)
		goto fail;
	/* A cluster job's token is the same on every node (copy_cluster): a VM on one node
	 * launches ranks in the others' through their exec service. */
	if (!cfg->cluster && RAND_bytes(j->token, sizeof(j->token)) != 1) {
		r = error_set(ret_error, -EIO, "no random bytes for the job's token");
		goto fail;
	}
	r = runstate_create(cfg->run_dir, geteuid(), &j->rs);
	if (r < 0) {
		r = error_set(ret_error, r, "making the job's directory under %s: %s", cfg->run_dir,
			      strerror(-r));
		goto fail;
	}

	t0 = time_now_s();
	r = materialize_image(cfg->store, cfg->image, cfg->cache_dir, &j->image, ret_error);
	if (r < 0)
		goto fail;
	j->materialize_s = time_now_s() - t0;

	if (cfg->accel) {
		r = accel_from_string(cfg->accel, &j->accel);
	} else {
		_cleanup_free_ char *detail = NULL;

		r = accel_detect(cfg->cache_dir, j->image.kernel_path, j->image.initrd_path,
				 &j->accel, &detail);
		job_log(j, LOG_LEVEL_DEBUG, "accelerator %s: %s", accel_to_string(j->accel),
			detail ? detail : "");
	}
	if (r < 0) {
		r = error_set(ret_error, r, "choosing the accelerator: %s", strerror(-r));
		goto fail;
	}

	/* Nothing to record for cleanup: the links die with the namespace. */
	r = net_job_create(cfg->n_vms, cfg->unprivileged, &j->net, ret_error);
	if (r < 0)
		goto fail;
	if (j->node_addrs) {
		r = add_vxlan(j, ret_error);
		if (r < 0)
			goto fail;
	}

	if (cfg->shm && cfg->n_vms >= 2) {
		r = make_shm_region(j, ret_error);
		if (r < 0)
			goto fail;
	}

	hosts = hosts_arg(j);
	if (!hosts) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < cfg->n_vms; i++) {
		r = start_vm(j, cfg, i, hosts, ret_error);
		if (r < 0)
			goto fail;
	}
	j->boot_deadline_s = time_now_s() + cfg->boot_timeout_ms / 1000.0;
	r = write_state(j);
	if (r < 0) {
		r = error_set(ret_error, r, "writing the job's state in %s: %s", job_dir(j),
			      strerror(-r));
		goto fail;
	}
	*ret_job = j;
	return 0;
fail:
	if (r < 0 && ret_error && !*ret_error)
		error_set(ret_error, r, "booting the job's VMs: %s", strerror(-r));
	job_free(j);
	return r;
}

int job_boot(const struct job_config *cfg, struct job **ret_job, char **ret_error)
{
	struct job *j = NULL;
	int r;

	r = job_start(cfg, &j, ret_error);
	if (r < 0)
		return r;
	for (;;) {
		struct pollfd fds[2 * JOB_MAX_VMS];
		unsigned n;
		int timeout;

		if (cfg->cancelled && cfg->cancelled(cfg->userdata)) {
			r = error_set(ret_error, -ECANCELED, "interrupted while the VMs booted");
			break;
		}
		n = job_poll_fds(j, fds, ARRAY_SIZE(fds), &timeout);
		/* cancelled() is polled, not an fd: wake at least every 50 ms for it. */
		if (cfg->cancelled && (timeout < 0 || timeout > 50))
			timeout = 50;
		if (poll(fds, n, timeout) < 0 && errno != EINTR) {
			r = -errno;
			break;
		}
		r = job_step(j, ret_error);
		if (r != 0)
			break;
	}
	if (r < 0) {
		job_free(j);
		return r;
	}
	*ret_job = j;
	return 0;
}

static int greet(struct job_vm *v, const uint8_t token[FRAME_TOKEN_BYTES], char **ret_error)
{
	int r;

	if (v->greeted)
		return 0;
	if (!v->ctl) /* a reconnect below failed earlier */
		return error_set(ret_error, -ENOTCONN, "%s's control port is not connected",
				 v->name);
	/* The guest answers every HELLO on its control port with READY first (a new host
	 * session). Bytes before it may be the end of frames the guest began for the previous
	 * holder of the port (the process that booted a job we adopted): skip them. */
	r = exec_client_resync(v->ctl);
	if (r == 0)
		r = exec_client_hello(v->ctl, token, 10000);
	if (r == -ETIMEDOUT) {
		/* The guest learns of a host connection from virtio-serial's port-open event. Once
		 * in CI, a supervisor that adopted a job right after the prolog let go got no
		 * answer at all; a new connection makes the port close and open again, and the
		 * guest answers any HELLO with READY first, so nothing is lost by trying twice. */
		v->ctl = exec_client_free(v->ctl);
		v->ctl_fd = -1;
		r = try_connect(v, NULL, NULL);
		if (r == 0)
			r = exec_client_resync(v->ctl);
		if (r == 0)
			r = exec_client_hello(v->ctl, token, 10000);
		if (r < 0 && !v->ctl)
			return error_set(ret_error, r, "%s's control port: %s", v->name,
					 strerror(-r));
	}
	if (r < 0)
		return error_set(ret_error, r, "%s refused the job's token: %s", v->name,
				 exec_client_error(v->ctl) ? exec_client_error(v->ctl)
							   : strerror(-r));
	v->greeted = true;
	return 0;
}

int job_exec_start(struct job *j, unsigned vm, const struct frame_exec *req,
		   const struct exec_client_io *io, int timeout_ms, char **ret_error)
{
	struct job_vm *v;
	struct exec_client_io watched = *io;
	int r;

	if (vm >= j->n_vms)
		return -EINVAL;
	v = &j->vms[vm];
	r = greet(v, j->token, ret_error);
	if (r < 0)
		return r;
	/* A VM that dies ends the job: its ranks would leave the others waiting in MPI
	 * forever. Every QEMU's pidfd is watched while the command runs. */
	j->n_pidfds = 0;
	for (unsigned i = 0; i < j->n_vms; i++)
		if (j->vms[i].qemu && qemu_vm_pidfd(j->vms[i].qemu) >= 0)
			j->pidfds[j->n_pidfds++] = qemu_vm_pidfd(j->vms[i].qemu);
	watched.watch_fds = j->pidfds;
	watched.n_watch_fds = j->n_pidfds;
	r = exec_client_run_start(v->ctl, req, &watched, timeout_ms);
	if (r < 0)
		return error_set(ret_error, r, "running %s in %s: %s", req->argv[0], v->name,
				 strerror(-r));
	return 0;
}

unsigned job_exec_fds(const struct job *j, unsigned vm, struct pollfd *fds, unsigned max,
		      int *ret_timeout_ms)
{
	*ret_timeout_ms = 0;
	if (vm >= j->n_vms || !j->vms[vm].ctl)
		return 0;
	return exec_client_run_fds(j->vms[vm].ctl, fds, max, ret_timeout_ms);
}

int job_exec_step(struct job *j, unsigned vm, const struct pollfd *fds, unsigned n, int *ret_status,
		  char **ret_error)
{
	struct job_vm *v;
	int r;

	if (vm >= j->n_vms || !j->vms[vm].ctl)
		return -EINVAL;
	v = &j->vms[vm];
	r = exec_client_run_step(v->ctl, fds, n, ret_status);
	if (r == -ECANCELED && job_check_vms(j, ret_error) < 0)
		return -ECHILD;
	if (r < 0 && r != -ETIMEDOUT && r != -EINTR)
		return error_set(ret_error, r, "running the command in %s: %s", v->name,
				 exec_client_error(v->ctl) ? exec_client_error(v->ctl)
							   : strerror(-r));
	return r;
}

int job_exec(struct job *j, unsigned vm, const struct frame_exec *req,
	     const struct exec_client_io *io, int timeout_ms, int *ret_status, char **ret_error)
{
	struct pollfd fds[3 + JOB_MAX_VMS];
	unsigned n = 0;
	int r, timeout;

	r = job_exec_start(j, vm, req, io, timeout_ms, ret_error);
	if (r < 0)
		return r;
	while ((r = job_exec_step(j, vm, fds, n, ret_status, ret_error)) == 0) {
		n = job_exec_fds(j, vm, fds, ARRAY_SIZE(fds), &timeout);
		if (poll(fds, n, timeout) < 0)
			n = 0; /* EINTR: step again with nothing new */
	}
	return r < 0 ? r : 0;
}

int job_forwarded_signal(const struct job *j, unsigned vm)
{
	if (vm >= j->n_vms || !j->vms[vm].ctl)
		return 0;
	return exec_client_forwarded_signal(j->vms[vm].ctl);
}

int job_vm_stats(struct job *j, unsigned vm, struct job_vm_stats *ret)
{
	struct job_vm *v;

	if (vm >= j->n_vms)
		return -EINVAL;
	v = &j->vms[vm];
	memset(ret, 0, sizeof(*ret));
	ret->ready_s = v->ready_s;
	ret->guest_total_kb = v->ready_info.mem_total_kb;
	ret->guest_used_kb = v->ready_info.mem_total_kb - v->ready_info.mem_available_kb;
	if (v->qemu)
		qemu_vm_host_memory(qemu_vm_pid(v->qemu), &ret->host_rss_kb, &ret->host_pss_kb);
	return 0;
}

int job_vm_usage(struct job *j, unsigned vm, int timeout_ms, struct job_vm_usage *ret)
{
	struct frame_info info;
	struct job_vm *v;
	int r;

	memset(ret, 0, sizeof(*ret));
	if (vm >= j->n_vms || !j->vms[vm].ctl)
		return -EINVAL;
	v = &j->vms[vm];
	r = greet(v, j->token, NULL);
	if (r < 0)
		return r;
	r = exec_client_info(v->ctl, timeout_ms, &info);
	if (r < 0)
		return r;
	ret->guest_used_kb = info.mem_total_kb - info.mem_available_kb;
	ret->known = info.has_usage;
	ret->job_mem_peak_kb = info.job_mem_peak_kb;
	ret->oom_kills = info.oom_kills;
	return 0;
}

int job_shutdown(struct job *j, int timeout_ms, double *ret_seconds)
{
	double t0 = time_now_s();
	int result = 0;

	for (unsigned i = 0; i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];

		if (v->ctl && greet(v, j->token, NULL) == 0 &&
		    exec_client_shutdown(v->ctl, 2000) == 0)
			continue;
		/* No orderly way through the guest: ask QEMU to stop (nothing in the guest
		 * is worth syncing: the root is read-only, the job folder is the host's). */
		if (!v->qmp || qmp_command(v->qmp, "quit", NULL, NULL, 2000) < 0)
			qemu_vm_kill(v->qemu);
	}
	for (unsigned i = 0; i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];
		double left_ms = timeout_ms - (time_now_s() - t0) * 1000;

		if (qemu_vm_wait(v->qemu, left_ms > 0 ? (int)left_ms : 0, NULL) == -ETIMEDOUT) {
			qemu_vm_kill(v->qemu);
			result = -ETIMEDOUT;
		}
		virtiofsd_stop(v->virtiofsd);
		v->virtiofsd = -1;
	}
	if (ret_seconds)
		*ret_seconds = time_now_s() - t0;
	return result;
}

/* ---- handing a job over (detach / attach) ---- */

#define STATE_FILE	"job.json"
#define STATE_MAX_BYTES (1u << 20)

/* job.json: what an adopter needs to take the job over. The directory is the owner's,
 * mode 0700, and the file 0600: it holds the job's token. Written whole (temp + rename). */
static int write_state(struct job *j)
{
	_cleanup_free_ char *path = fs_path_join(job_dir(j), STATE_FILE), *text = NULL;
	char token_hex[2 * FRAME_TOKEN_BYTES + 1];
	json_t *vms = json_array(), *root;
	int r;

	if (!path || !vms) {
		json_decref(vms);
		return -ENOMEM;
	}
	for (int k = 0; k < FRAME_TOKEN_BYTES; k++)
		snprintf(token_hex + 2 * k, 3, "%02x", j->token[k]);
	for (unsigned i = 0; i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];
		pid_t qpid = v->qemu ? qemu_vm_pid(v->qemu) : 0;

		json_array_append_new(
		    vms,
		    json_pack("{s:s, s:s, s:s, s:s*, s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:I}",
			      "name", v->name, "ip", v->ip, "control", v->ctl_path, "qmp",
			      v->qmp_path, "console", v->console_log, "qemu_pid", (json_int_t)qpid,
			      "qemu_start",
			      (json_int_t)(qpid > 0 ? qemu_process_start_time(qpid) : 0),
			      "virtiofsd_pid", (json_int_t)(v->virtiofsd > 0 ? v->virtiofsd : 0),
			      "virtiofsd_start", (json_int_t)v->virtiofsd_start, "ready_s",
			      v->ready_s, "mem_total_kb", (json_int_t)v->ready_info.mem_total_kb,
			      "mem_available_kb", (json_int_t)v->ready_info.mem_available_kb));
	}
	root = json_pack("{s:i, s:s, s:s, s:s, s:b, s:o}", "version", 1, "id", job_id(j), "token",
			 token_hex, "accel", accel_to_string(j->accel), "detachable", j->detachable,
			 "vms", vms);
	/* What a later launch needs (vmhpc mpirun after a prolog): slots, cwd, the user. */
	if (root &&
	    (json_object_set_new(root, "vcpus", json_integer(j->vcpus)) < 0 ||
	     json_object_set_new(root, "owner_uid", json_integer(j->owner_uid)) < 0 ||
	     json_object_set_new(root, "owner_gid", json_integer(j->owner_gid)) < 0 ||
	     (j->workdir && json_object_set_new(root, "workdir", json_string(j->workdir)) < 0))) {
		json_decref(root);
		root = NULL;
	}
	if (root && j->node_addrs) {
		/* What an adopter (vmhpc mpirun, the epilog) needs of the job's other nodes. */
		json_t *addrs = json_array();

		for (unsigned k = 0; addrs && k < j->n_nodes; k++)
			json_array_append_new(addrs, json_string(j->node_addrs[k]));
		if (!addrs ||
		    json_object_set_new(
			root, "cluster",
			json_pack("{s:I, s:I, s:I, s:I, s:I, s:o}", "node_index",
				  (json_int_t)j->node_index, "n_nodes", (json_int_t)j->n_nodes,
				  "vms_per_node", (json_int_t)j->n_vms, "vni", (json_int_t)j->vni,
				  "vxlan_port", (json_int_t)j->vxlan_port, "node_addrs", addrs)) <
			0) {
			json_decref(root);
			root = NULL;
		}
	}
	text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
	json_decref(root);
	OPENSSL_cleanse(token_hex, sizeof(token_hex));
	if (!text)
		return -ENOMEM;
	r = fs_write_atomic(path, text, strlen(text), 0600);
	OPENSSL_cleanse(text, strlen(text));
	return r;
}

int job_detach(struct job *j, int *ret_lock_fd)
{
	int r;

	if (!j->detachable)
		return -EPERM;
	if (j->n_ready < j->n_vms)
		return -EBUSY;
	r = write_state(j);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < j->n_vms; i++) {
		struct job_vm *v = &j->vms[i];

		/* Closing the control connection lets the adopter connect: QEMU's chardev
		 * serves one client at a time, and the guest greets each new one with READY. */
		exec_client_free(v->ctl);
		qmp_client_free(v->qmp);
		qemu_vm_release(v->qemu);
		vm_free_paths(v);
	}
	/* The job's network namespace lives on in its QEMUs: only our handles go. */
	net_job_free(j->net);
	materialized_image_done(&j->image);
	*ret_lock_fd = runstate_detach(j->rs);
	free(j->workdir);
	free(j->vms);
	free_cluster(j);
	OPENSSL_cleanse(j->token, sizeof(j->token));
	free(j);
	return 0;
}

/* job.json's "cluster" (absent: a job of this node alone), validated as job_start does. */
static int attach_cluster(struct job *j, json_t *root, const char *path, char **ret_error)
{
	json_t *c = json_object_get(root, "cluster"), *addrs = json_object_get(c, "node_addrs");
	json_int_t idx = json_integer_value(json_object_get(c, "node_index"));
	json_int_t n = json_integer_value(json_object_get(c, "n_nodes"));
	json_int_t per = json_integer_value(json_object_get(c, "vms_per_node"));
	json_int_t vni = json_integer_value(json_object_get(c, "vni"));
	json_int_t port = json_integer_value(json_object_get(c, "vxlan_port"));
	struct in_addr a;

	j->n_nodes = 1;
	if (!c)
		return name_vms_all(j);
	if (!json_is_array(addrs) || n < 1 || n > JOB_MAX_NODES || idx < 0 || idx >= n ||
	    (json_int_t)json_array_size(addrs) != n || per != (json_int_t)j->n_vms ||
	    n * per > JOB_MAX_VMS_TOTAL || vni < 1 || vni > 0xffffff || port < 1 || port > 65535)
		return error_set(ret_error, -EBADMSG, "job %s: the cluster in %s is malformed",
				 job_id(j), path);
	j->node_addrs = calloc((size_t)n, sizeof(*j->node_addrs));
	if (!j->node_addrs)
		return -ENOMEM;
	j->n_nodes = (unsigned)n;
	for (unsigned k = 0; k < j->n_nodes; k++) {
		const char *s = json_string_value(json_array_get(addrs, k));

		if (!s || inet_pton(AF_INET, s, &a) != 1)
			return error_set(ret_error, -EBADMSG,
					 "job %s: node %u's address in %s is malformed", job_id(j),
					 k, path);
		j->node_addrs[k] = strdup(s);
		if (!j->node_addrs[k])
			return -ENOMEM;
	}
	j->node_index = (unsigned)idx;
	j->vni = (uint32_t)vni;
	j->vxlan_port = (uint16_t)port;
	return name_vms_all(j);
}

static const char *json_str(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

/* One VM of job.json, validated: paths must lie in the job's own directory. */
static int attach_vm(struct job *j, json_t *jv, unsigned i, char **ret_error)
{
	struct job_vm *v = &j->vms[i];
	const char *name = json_str(jv, "name"), *ip = json_str(jv, "ip");
	const char *ctl = json_str(jv, "control"), *qmp = json_str(jv, "qmp");
	const char *console = json_str(jv, "console");
	json_int_t qpid = json_integer_value(json_object_get(jv, "qemu_pid"));
	json_int_t qstart = json_integer_value(json_object_get(jv, "qemu_start"));
	size_t dlen = strlen(job_dir(j));
	int r;

	if (!name || !ip || !ctl || !console || strlen(name) >= sizeof(v->name) ||
	    strlen(ip) >= sizeof(v->ip))
		return error_set(ret_error, -EBADMSG, "job %s: VM %u is malformed in %s", job_id(j),
				 i, STATE_FILE);
	for (const char *p2[] = {ctl, qmp, console}, **p = p2; p < p2 + 3; p++)
		if (*p &&
		    (strncmp(*p, job_dir(j), dlen) != 0 || (*p)[dlen] != '/' || strstr(*p, "/..")))
			return error_set(ret_error, -EBADMSG,
					 "job %s: %s names %s outside the job directory", job_id(j),
					 STATE_FILE, *p);
	snprintf(v->name, sizeof(v->name), "%s", name);
	snprintf(v->ip, sizeof(v->ip), "%s", ip);
	v->ctl_path = strdup(ctl);
	v->console_log = strdup(console);
	v->qmp_path = qmp ? strdup(qmp) : NULL;
	if (!v->ctl_path || !v->console_log || (qmp && !v->qmp_path))
		return -ENOMEM;
	v->ready_s = json_real_value(json_object_get(jv, "ready_s"));
	v->ready_info.mem_total_kb =
	    (uint64_t)json_integer_value(json_object_get(jv, "mem_total_kb"));
	v->ready_info.mem_available_kb =
	    (uint64_t)json_integer_value(json_object_get(jv, "mem_available_kb"));
	r = qemu_vm_adopt(v->name, (pid_t)qpid, (unsigned long long)qstart, v->ctl_path,
			  v->qmp_path, &v->qemu);
	if (r < 0)
		return error_set(ret_error, r, "job %s: the QEMU of %s (pid %lld) is gone",
				 job_id(j), v->name, (long long)qpid);
	{
		json_int_t fpid = json_integer_value(json_object_get(jv, "virtiofsd_pid"));
		json_int_t fstart = json_integer_value(json_object_get(jv, "virtiofsd_start"));

		/* Adopted only while it is the same process. */
		if (fpid > 1 && fstart > 0 &&
		    qemu_process_start_time((pid_t)fpid) == (unsigned long long)fstart) {
			v->virtiofsd = (pid_t)fpid;
			v->virtiofsd_start = (unsigned long long)fstart;
		}
	}
	if (v->qmp_path && qmp_connect(v->qmp_path, &v->qmp) < 0)
		v->qmp = NULL; /* status checks skipped; shutdown falls back to SIGKILL */
	r = try_connect(v, NULL, NULL);
	if (r == 0)
		r = exec_client_resync(v->ctl);
	if (r < 0)
		return error_set(ret_error, r, "job %s: connecting to %s's control port %s: %s",
				 job_id(j), v->name, v->ctl_path, strerror(-r));
	v->ready = true;
	return 0;
}

int job_attach(const char *run_dir, const char *job_id, int lock_fd, struct job **ret_job,
	       char **ret_error)
{
	_cleanup_free_ char *path = NULL, *text = NULL;
	json_t *root = NULL, *vms;
	struct job *j;
	const char *token;
	int r;

	j = calloc(1, sizeof(*j));
	if (!j) {
		if (lock_fd >= 0)
			close(lock_fd);
		return -ENOMEM;
	}
	j->detachable = true;
	r = runstate_attach(run_dir, job_id, geteuid(), lock_fd, &j->rs);
	if (r < 0) {
		if (lock_fd >= 0)
			close(lock_fd);
		free(j);
		return error_set(ret_error, r, "job %s under %s: %s", job_id, run_dir,
				 r == -EBUSY ? "another process owns it" : strerror(-r));
	}
	path = fs_path_join(job_dir(j), STATE_FILE);
	if (!path) {
		r = -ENOMEM;
		goto fail;
	}
	r = fs_read_file(path, STATE_MAX_BYTES, &text, NULL);
	if (r < 0) {
		r = error_set(ret_error, r, "job %s: reading %s: %s", job_id, path, strerror(-r));
		goto fail;
	}
	root = json_loads(text, 0, NULL);
	vms = json_object_get(root, "vms");
	token = json_str(root, "token");
	if (!root || !json_is_array(vms) || json_array_size(vms) == 0 ||
	    json_array_size(vms) > JOB_MAX_VMS || !token ||
	    frame_token_from_hex(token, j->token) < 0 ||
	    accel_from_string(json_str(root, "accel") ? json_str(root, "accel") : "", &j->accel) <
		0 ||
	    !json_is_true(json_object_get(root, "detachable"))) {
		r = error_set(ret_error, -EBADMSG, "job %s: %s is not a detached job's state",
			      job_id, path);
		goto fail;
	}
	j->n_vms = (unsigned)json_array_size(vms);
	j->n_ready = j->n_vms;
	j->vms = calloc(j->n_vms, sizeof(*j->vms));
	if (!j->vms) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < j->n_vms; i++) {
		j->vms[i].virtiofsd = -1;
		j->vms[i].ctl_fd = -1;
	}
	r = attach_cluster(j, root, path, ret_error);
	if (r < 0)
		goto fail;
	/* Absent in a job.json of an older vmhpc: 0, and no workdir. */
	j->vcpus = (unsigned)json_integer_value(json_object_get(root, "vcpus"));
	j->owner_uid = (uid_t)json_integer_value(json_object_get(root, "owner_uid"));
	j->owner_gid = (gid_t)json_integer_value(json_object_get(root, "owner_gid"));
	if (json_str(root, "workdir")) {
		j->workdir = strdup(json_str(root, "workdir"));
		if (!j->workdir) {
			r = -ENOMEM;
			goto fail;
		}
	}
	for (unsigned i = 0; i < j->n_vms; i++) {
		r = attach_vm(j, json_array_get(vms, i), i, ret_error);
		if (r < 0)
			goto fail;
	}
	json_decref(root);
	*ret_job = j;
	return 0;
fail:
	json_decref(root);
	if (ret_error && !*ret_error)
		error_set(ret_error, r, "attaching job %s: %s", job_id, strerror(-r));
	/* What could not be attached is not stopped here: the job stays as it was, for
	 * `vmhpc cleanup` once its lock is free. */
	for (unsigned i = 0; j->vms && i < j->n_vms; i++) {
		exec_client_free(j->vms[i].ctl);
		qmp_client_free(j->vms[i].qmp);
		qemu_vm_release(j->vms[i].qemu);
		vm_free_paths(&j->vms[i]);
	}
	close(runstate_detach(j->rs));
	free(j->vms);
	free(j->workdir);
	free_cluster(j);
	OPENSSL_cleanse(j->token, sizeof(j->token));
	free(j);
	return r;
}
