#include "vm/job.h"

#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "net/netns.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
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
	char *console_log;
	struct qemu_vm *qemu;
	pid_t virtiofsd;
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
	struct job_vm *vms;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
		free(v->ctl_path);
		free(v->console_log);
	}
	net_job_free(j->net);
	materialized_image_done(&j->image);
	runstate_release(j->rs);
	free(j->vms);
	free(j);
}

int job_clean_stale(const char *run_dir)
{
	return runstate_clean_stale(run_dir);
}

static char *job_path(struct job *j, const char *fmt, unsigned vm)
{
	char name[64];

	snprintf(name, sizeof(name), fmt, vm);
	return fs_path_join(runstate_job_dir(j->rs), name);
}

/* "vm0=10.77.0.1,vm1=10.77.0.2,..." */
static char *hosts_list(const struct job *j)
{
	size_t cap = (size_t)j->n_vms * 40 + 1, len = 0;
	char *out = malloc(cap);

	if (!out)
		return NULL;
	out[0] = '\0';
	for (unsigned i = 0; i < j->n_vms; i++)
		len += (size_t)snprintf(out + len, cap - len, "%s%s=%s", i ? "," : "",
					j->vms[i].name, j->vms[i].ip);
	return out;
}

static int start_vm(struct job *j, const struct job_config *cfg, unsigned i, const char *hosts,
		    char **ret_error)
{
	struct job_vm *v = &j->vms[i];
	_cleanup_free_ char *fs_sock = NULL, *fs_log = NULL, *qemu_log = NULL, *cmdline = NULL;
	char token_hex[2 * FRAME_TOKEN_BYTES + 1], mac[NET_MAC_LEN];
	struct qemu_vm_config qc = {0};
	unsigned overlay_mb = cfg->mem_mb / 4 < OVERLAY_MAX_MB ? cfg->mem_mb / 4 : OVERLAY_MAX_MB;
	int r;

	for (int k = 0; k < FRAME_TOKEN_BYTES; k++)
		sprintf(token_hex + 2 * k, "%02x", j->token[k]);
	v->ctl_path = job_path(j, "vm%u.ctl", i);
	v->console_log = job_path(j, "vm%u.console.log", i);
	qemu_log = job_path(j, "vm%u.qemu.log", i);
	if (!v->ctl_path || !v->console_log || !qemu_log)
		return -ENOMEM;
	if (cfg->workdir) {
		fs_sock = job_path(j, "vm%u.fs.sock", i);
		fs_log = job_path(j, "vm%u.virtiofsd.log", i);
		if (!fs_sock || !fs_log)
			return -ENOMEM;
		r = virtiofsd_start(cfg->workdir, fs_sock, fs_log, 5000, &v->virtiofsd, ret_error);
		if (r < 0)
			return r;
		r = runstate_add_pid(j->rs, v->virtiofsd);
		if (r < 0)
			return r;
	}
	if (asprintf(&cmdline,
		     "console=ttyS0 swiotlb=noforce panic=-1 quiet %s vmhpc.token=%s vmhpc.name=%s "
		     "vmhpc.ip=%s/24 vmhpc.hosts=%s vmhpc.root=pmem vmhpc.overlay_mb=%u "
		     "vmhpc.exec_port=%d%s%s",
		     cfg->image->boot_args ? cfg->image->boot_args : "", token_hex, v->name, v->ip,
		     hosts, overlay_mb, JOB_EXEC_PORT, cfg->workdir ? " vmhpc.share=" : "",
		     cfg->workdir ? cfg->workdir : "") < 0)
		return -ENOMEM;
	net_mac_address(i, mac);
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
	qc.mac = mac;
	/* The VM's tap, opened by QEMU inside the job's private network. */
	qc.net = QEMU_NET_TAP;
	qc.net_tap = net_job_tap(j->net, i);
	qc.namespaces = net_job_namespaces(j->net);
	qc.control_socket = v->ctl_path;
	qc.console_log = v->console_log;
	qc.stderr_log = qemu_log;
	v->start_s = now_s();
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
	r = runstate_add_pid(j->rs, qemu_vm_pid(v->qemu));
	if (r < 0)
		return r;
	{
		int fd = qemu_vm_take_qmp_fd(v->qemu);

		if (fd >= 0 && qmp_client_new(fd, &v->qmp) < 0)
			close(fd);
	}
	return 0;
}

/* Connects to a VM's control socket once QEMU has made it (ENOENT, ECONNREFUSED: not yet). */
static int try_connect(struct job_vm *v)
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
	v->ctl_fd = fd;
	return 0;
}

static int vm_failed(struct job_vm *v, int r, const char *what, char **ret_error)
{
	_cleanup_free_ char *tail = console_tail(v->console_log);

	return error_set(ret_error, r, "%s %s; the last lines of its console (%s):\n%s", v->name,
			 what, v->console_log, tail ? tail : "");
}

static int wait_all_ready(struct job *j, const struct job_config *cfg, char **ret_error)
{
	double deadline = now_s() + cfg->boot_timeout_ms / 1000.0;
	unsigned ready = 0;

	while (ready < j->n_vms) {
		struct pollfd pfd[JOB_MAX_VMS];
		unsigned map[JOB_MAX_VMS], n = 0;

		if (cfg->cancelled && cfg->cancelled(cfg->userdata))
			return error_set(ret_error, -ECANCELED, "interrupted while the VMs booted");
		if (now_s() > deadline) {
			for (unsigned i = 0; i < j->n_vms; i++)
				if (!j->vms[i].ready) {
					char what[96];

					snprintf(what, sizeof(what),
						 "did not report ready within %d s",
						 cfg->boot_timeout_ms / 1000);
					return vm_failed(&j->vms[i], -ETIMEDOUT, what, ret_error);
				}
		}
		for (unsigned i = 0; i < j->n_vms; i++) {
			struct job_vm *v = &j->vms[i];
			int status;

			if (v->ready)
				continue;
			if (qemu_vm_wait(v->qemu, 0, &status) == 0) {
				char what[64];

				snprintf(what, sizeof(what), "stopped while booting (QEMU exit %d)",
					 status);
				return vm_failed(v, -EIO, what, ret_error);
			}
			if (!v->ctl && try_connect(v) < 0)
				continue;
			pfd[n].fd = v->ctl_fd;
			pfd[n].events = POLLIN;
			map[n++] = i;
		}
		if (n == 0) {
			usleep(20000);
			continue;
		}
		if (poll(pfd, n, 50) <= 0)
			continue;
		for (unsigned k = 0; k < n; k++) {
			struct job_vm *v = &j->vms[map[k]];
			int r;

			if (!pfd[k].revents)
				continue;
			r = exec_client_wait_ready(v->ctl, 100, &v->ready_info);
			if (r == -ETIMEDOUT || r == -EAGAIN)
				continue;
			if (r < 0)
				return vm_failed(v, r, "broke its control connection while booting",
						 ret_error);
			if (v->qmp) {
				json_t *st = NULL;

				/* QMP's view must agree: a guest reporting ready in a paused or
				 * crashed VM would be a bug worth stopping for. */
				r = qmp_command(v->qmp, "query-status", NULL, &st, 5000);
				if (r == 0 && !json_is_true(json_object_get(st, "running")))
					r = -EIO;
				json_decref(st);
				if (r < 0)
					return vm_failed(v, r, "is not running according to QMP",
							 ret_error);
			}
			v->ready = true;
			v->ready_s = now_s() - v->start_s;
			ready++;
			if (cfg->progress)
				cfg->progress(ready, j->n_vms, cfg->userdata);
		}
	}
	return 0;
}

int job_boot(const struct job_config *cfg, struct job **ret_job, char **ret_error)
{
	struct job *j;
	_cleanup_free_ char *hosts = NULL;
	double t0;
	int r;

	if (cfg->n_vms == 0 || cfg->n_vms > JOB_MAX_VMS)
		return error_set(ret_error, -EINVAL, "a job has 1 to %d VMs", JOB_MAX_VMS);
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->n_vms = cfg->n_vms;
	j->vms = calloc(cfg->n_vms, sizeof(*j->vms));
	if (!j->vms) {
		free(j);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < cfg->n_vms; i++) {
		j->vms[i].virtiofsd = -1;
		j->vms[i].ctl_fd = -1;
		snprintf(j->vms[i].name, sizeof(j->vms[i].name), "vm%u", i);
		snprintf(j->vms[i].ip, sizeof(j->vms[i].ip), JOB_SUBNET_PREFIX "%u", i + 1);
	}
	if (RAND_bytes(j->token, sizeof(j->token)) != 1) {
		r = error_set(ret_error, -EIO, "no random bytes for the job's token");
		goto fail;
	}
	r = runstate_create(cfg->run_dir, &j->rs);
	if (r < 0) {
		r = error_set(ret_error, r, "making the job's directory under %s: %s", cfg->run_dir,
			      strerror(-r));
		goto fail;
	}

	t0 = now_s();
	r = materialize_image(cfg->store, cfg->image, cfg->cache_dir, &j->image, ret_error);
	if (r < 0)
		goto fail;
	j->materialize_s = now_s() - t0;

	if (cfg->accel) {
		r = accel_from_string(cfg->accel, &j->accel);
	} else {
		_cleanup_free_ char *detail = NULL;

		r = accel_detect(cfg->cache_dir, j->image.kernel_path, j->image.initrd_path,
				 &j->accel, &detail);
		log_debug("accelerator %s: %s", accel_to_string(j->accel), detail ? detail : "");
	}
	if (r < 0) {
		r = error_set(ret_error, r, "choosing the accelerator: %s", strerror(-r));
		goto fail;
	}

	/* Nothing to record for cleanup: the links die with the namespace. */
	r = net_job_create(cfg->n_vms, cfg->unprivileged, &j->net, ret_error);
	if (r < 0)
		goto fail;

	hosts = hosts_list(j);
	if (!hosts) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < cfg->n_vms; i++) {
		r = start_vm(j, cfg, i, hosts, ret_error);
		if (r < 0)
			goto fail;
	}
	r = wait_all_ready(j, cfg, ret_error);
	if (r < 0)
		goto fail;
	*ret_job = j;
	return 0;
fail:
	if (r < 0 && ret_error && !*ret_error)
		error_set(ret_error, r, "booting the job's VMs: %s", strerror(-r));
	job_free(j);
	return r;
}

static int greet(struct job_vm *v, const uint8_t token[FRAME_TOKEN_BYTES], char **ret_error)
{
	int r;

	if (v->greeted)
		return 0;
	r = exec_client_hello(v->ctl, token, 10000);
	if (r < 0)
		return error_set(ret_error, r, "%s refused the job's token: %s", v->name,
				 exec_client_error(v->ctl) ? exec_client_error(v->ctl)
							   : strerror(-r));
	v->greeted = true;
	return 0;
}

int job_exec(struct job *j, unsigned vm, const struct frame_exec *req,
	     const struct exec_client_io *io, int timeout_ms, int *ret_status, char **ret_error)
{
	struct job_vm *v;
	int r;

	if (vm >= j->n_vms)
		return -EINVAL;
	v = &j->vms[vm];
	r = greet(v, j->token, ret_error);
	if (r < 0)
		return r;
	r = exec_client_run(v->ctl, req, io, timeout_ms, ret_status);
	if (r < 0 && r != -ETIMEDOUT)
		return error_set(ret_error, r, "running %s in %s: %s", req->argv[0], v->name,
				 exec_client_error(v->ctl) ? exec_client_error(v->ctl)
							   : strerror(-r));
	return r;
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

int job_shutdown(struct job *j, int timeout_ms, double *ret_seconds)
{
	double t0 = now_s();
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
		double left_ms = timeout_ms - (now_s() - t0) * 1000;

		if (qemu_vm_wait(v->qemu, left_ms > 0 ? (int)left_ms : 0, NULL) == -ETIMEDOUT) {
			qemu_vm_kill(v->qemu);
			result = -ETIMEDOUT;
		}
		virtiofsd_stop(v->virtiofsd);
		v->virtiofsd = -1;
	}
	if (ret_seconds)
		*ret_seconds = now_s() - t0;
	return result;
}
