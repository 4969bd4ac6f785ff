/* `vmhpc run`: head and node in one process. Checks everything it can before booting,
 * boots the job's VMs (src/vm/job.h), runs mpiexec in VM 0, streams the output, prints
 * the timing table, and tears everything down on every path. `vmhpc cleanup` removes what
 * a killed run left. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "mpi/launcher.h"
#include "cli/run-options.h"
#include "cli/select.h"
#include "image/builder.h"
#include "image/index.h"
#include "image/needs.h"
#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/humanize.h"
#include "util/log.h"
#include "util/time.h"
#include "vm/job.h"
#include "vm/runstate.h"

#define BOOT_TIMEOUT_MS_DEFAULT 120000
#define SHUTDOWN_TIMEOUT_MS	10000
/* After Ctrl-C is passed on to mpiexec, how long it has to end before the VMs are stopped
 * anyway (a second Ctrl-C stops them at once). */
#define SIGNAL_GRACE_MS 10000
#define EXIT_TIME_LIMIT 124 /* as timeout(1) */

static const char *const program_dirs[] = {"/usr/local/bin", "/usr/bin", "/usr/sbin"};

/* Where jobs keep their runtime state: $VMHPC_RUN_DIR (tests, several runtimes on one
 * machine), else the runstate default for this user. */
static const char *run_dir(void)
{
	const char *e = getenv("VMHPC_RUN_DIR");

	return e && e[0] == '/' ? e : runstate_default_dir();
}

static char *node_cache_dir(const struct cli_context *ctx)
{
	return fs_path_join(ctx->cache_dir, "node");
}

/* Loads the image, building the default one from its shipped spec when the store lacks it. */
static int load_image(struct cli_context *ctx, struct store *s, const char *ref,
		      struct manifest **ret)
{
	_cleanup_free_ char *name = NULL, *error = NULL, *init = NULL, *exec = NULL, *spec = NULL;
	_cleanup_free_ char *kconfig = cli_kernel_config_path();
	struct builder_options bo = {.cache_dir = ctx->cache_dir,
				     .compression_level = BUILDER_COMPRESSION_LEVEL_DEFAULT,
				     .progress = isatty(STDERR_FILENO)};
	struct builder_result res = {0};
	uint32_t version;
	int r;

	r = manifest_parse_ref(ref, &name, &version, &error);
	if (r < 0)
		return log_error_errno(r, "--image: %s", error);
	r = catalog_load(s, name, version, ret, &error);
	if (r == 0 && version == 0 && strcmp(name, "tiny-mpi") == 0 &&
	    job_check_image(*ret, NULL) < 0) {
		/* The default image, asked for by name only, from an older vmhpc: its guest
		 * cannot serve this one. A new version is built; the old stays as it was. */
		log_info("the default image tiny-mpi:%u was built by another vmhpc version: "
			 "building a new version",
			 (*ret)->version);
		*ret = manifest_free(*ret);
	} else if (r != -ENOENT || version != 0 || strcmp(name, "tiny-mpi") != 0 ||
		   catalog_last_version(s, name, &version) < 0 || version != 0) {
		if (r < 0)
			log_error("%s", error ? error : strerror(-r));
		else if (job_check_image(*ret, &error) < 0) {
			log_error("%s", error);
			*ret = manifest_free(*ret);
			return -EPROTO;
		}
		return r;
	} else {
		log_info("the store has no tiny-mpi yet: building it from the default spec");
	}
	free(TAKE_PTR(error));
	spec = cli_sibling_path("VMHPC_DEFAULT_SPEC", "../examples/tiny-mpi.ini");
	init = cli_sibling_path("VMHPC_INIT", "vmhpc-init");
	exec = cli_sibling_path("VMHPC_EXEC", "vmhpc-exec");
	if (!spec || !init || !exec)
		return -ENOMEM;
	chunker_params_default(&bo.chunking);
	bo.spec_path = spec;
	bo.init_path = init;
	bo.exec_path = exec;
	bo.kernel_config = kconfig;
	r = builder_build(s, &bo, &res, &error);
	if (r < 0)
		return log_error_errno(r, "building the default image: %s",
				       error ? error : strerror(-r));
	builder_result_done(&res);
	return catalog_load(s, name, 0, ret, NULL);
}

/* --require: the best version (newest) that satisfies the expression, among NAME's versions
 * when --image NAME was given, else among all; *ret_ref is "NAME:VERSION" (caller frees).
 * Returns 0, or the exit code with the reason logged (2: a bad expression; 1: no match). */
static int choose_image(struct store *s, const struct run_options *o, char **ret_ref)
{
	_cleanup_free_ char *name = NULL, *error = NULL;
	struct select_result res = {0};
	uint32_t version = 0;
	int r, code = 1;

	if (o->image_given && manifest_parse_ref(o->image, &name, &version, &error) < 0) {
		log_error("--image: %s", error);
		return 2;
	}
	r = select_images(s, name, o->require, NULL, &res, &error);
	if (r < 0) {
		select_log_error(o->require, error ? error : strerror(-r));
		return r == -EINVAL ? 2 : 1;
	}
	for (size_t i = 0; i < res.n; i++) {
		if (version ? res.cands[i].version != version : i >= res.n_match)
			continue;
		if (i >= res.n_match) {
			log_error("--image %s does not satisfy --require: %s", o->image,
				  res.why[i]);
			goto out;
		}
		if (asprintf(ret_ref, "%s:%u", res.cands[i].name, res.cands[i].version) < 0)
			goto out;
		log_info("%s:%u satisfies --require (the best of %zu matching version%s)",
			 res.cands[i].name, res.cands[i].version, res.n_match,
			 res.n_match == 1 ? "" : "s");
		code = 0;
		goto out;
	}
	if (version)
		log_error("--image %s: the store has no such version (see `vmhpc image list`)",
			  o->image);
	else
		select_print_no_match(&res, o->require, 20);
out:
	select_result_done(&res);
	return code;
}

/* Says before booting whether PROGRAM can be found: in the job folder (a path with '/')
 * or in the image's program directories (a bare name). */
static int check_program(struct store *s, const struct manifest *m, const struct run_options *o,
			 const char *workdir)
{
	const char *prog = o->argv[0];
	_cleanup_free_ char *error = NULL;
	struct image_index *index = NULL;
	bool found = false;
	int r;

	if (strchr(prog, '/') && prog[0] != '/' && !workdir) {
		log_error("PROGRAM '%s' is a relative path, but --no-share gives the VMs no job "
			  "folder; use a program in the image or drop --no-share",
			  prog);
		return -ENOENT;
	}
	if (strchr(prog, '/') && workdir &&
	    (prog[0] != '/' || strncmp(prog, workdir, strlen(workdir)) == 0)) {
		_cleanup_free_ char *host =
		    prog[0] == '/' ? strdup(prog) : fs_path_join(workdir, prog);
		struct stat sb;

		if (!host)
			return -ENOMEM;
		if (stat(host, &sb) == 0 && S_ISREG(sb.st_mode) && (sb.st_mode & 0111)) {
			/* and the libraries it needs, in the image or the job folder */
			r = needs_check_image(s, m, host, prog, workdir, &error);
			if (r < 0)
				log_error("%s", error ? error : strerror(-r));
			return r;
		}
		log_error(
		    "PROGRAM '%s' is not an executable file in the job folder %s; build it there "
		    "or give its path",
		    prog, workdir);
		return -ENOENT;
	}
	r = image_index_load(s, m, &index, &error);
	if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		return r;
	}
	if (prog[0] == '/') {
		found = image_index_find(index, prog) != NULL;
	} else {
		for (size_t i = 0; i < ARRAY_SIZE(program_dirs) && !found; i++) {
			char path[PATH_MAX];

			snprintf(path, sizeof(path), "%s/%s", program_dirs[i], prog);
			found = image_index_find(index, path) != NULL;
		}
	}
	image_index_free(index);
	if (!found) {
		if (prog[0] == '/')
			log_error(
			    "PROGRAM '%s' is not in the image %s:%u (see `vmhpc image ls %s:%u`)",
			    prog, m->name, m->version, m->name, m->version);
		else
			log_error(
			    "PROGRAM '%s' is not in the image %s:%u's /usr/bin, /usr/sbin or "
			    "/usr/local/bin; give a path in the job folder (./%s) or add it to the "
			    "image",
			    prog, m->name, m->version, prog);
		return -ENOENT;
	}
	return 0;
}

/* Says before booting whether the image has an MPI vmhpc can launch (launcher.h), and which:
 * *ret_mpi, what run_program launches. */
static int check_launcher(const struct manifest *m, enum launcher_mpi *ret_mpi)
{
	_cleanup_free_ char *error = NULL, *ref = NULL;
	int r;

	if (asprintf(&ref, "%s:%u", m->name, m->version) < 0)
		return -ENOMEM;
	r = launcher_mpi_of_image(m->metadata, ref, ret_mpi, &error);
	if (r < 0)
		log_error("%s", error ? error : strerror(-r));
	return r;
}

struct boot_progress {
	bool tty;
	int signal_fd;
	int signal; /* the first signal seen, 0 if none */
};

static void show_progress(unsigned ready, unsigned n, void *ud)
{
	struct boot_progress *p = ud;

	if (p->tty) {
		fprintf(stderr, "\r\033[Kvmhpc: booting %u VM%s: %u ready", n, n == 1 ? "" : "s",
			ready);
		if (ready == n)
			fputc('\n', stderr);
	}
}

/* The runtime's messages, at the level the user asked for ($VMHPC_LOG). */
static void print_runtime_log(enum log_level level, const char *message, void *ud)
{
	if (log_enabled(level))
		log_print(level, "%s", message);
}

static bool check_cancelled(void *ud)
{
	struct boot_progress *p = ud;
	struct signalfd_siginfo si;

	if (p->signal)
		return true;
	if (read(p->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		p->signal = (int)si.ssi_signo;
	return p->signal != 0;
}

/* The submitting user: the one sudo ran us for, else ourselves. The ranks run as them and
 * the job folder is shared with their rights only. */
static void submitting_user(uid_t *ret_uid, gid_t *ret_gid)
{
	const char *sudo_uid = getenv("SUDO_UID"), *sudo_gid = getenv("SUDO_GID");

	*ret_uid = geteuid() == 0 && sudo_uid ? (uid_t)atoi(sudo_uid) : getuid();
	*ret_gid = geteuid() == 0 && sudo_gid ? (gid_t)atoi(sudo_gid) : getgid();
}

/* What each VM's guest said after the run (job_vm_usage); known false when it did not. */
struct run_usage {
	struct job_vm_usage vm[JOB_MAX_VMS];
};

static void print_report_json(const struct run_options *o, struct job *j, const struct manifest *m,
			      double boot_s, double run_s, double shutdown_s,
			      const struct job_vm_stats *stats, const struct run_usage *u,
			      int exit_code)
{
	uint64_t pss_total = 0;
	json_t *vms = json_array(), *out;

	for (unsigned i = 0; i < o->vms; i++) {
		json_t *vm =
		    json_pack("{s:s, s:f, s:I, s:I, s:I}", "name", job_vm_name(j, i), "ready_s",
			      stats[i].ready_s, "guest_used_kb", (json_int_t)stats[i].guest_used_kb,
			      "host_rss_kb", (json_int_t)stats[i].host_rss_kb, "host_pss_kb",
			      (json_int_t)stats[i].host_pss_kb);

		pss_total += stats[i].host_pss_kb;
		if (u->vm[i].known) {
			json_object_set_new(vm, "job_mem_peak_kb",
					    json_integer((json_int_t)u->vm[i].job_mem_peak_kb));
			json_object_set_new(vm, "oom_kills",
					    json_integer((json_int_t)u->vm[i].oom_kills));
		}
		json_array_append_new(vms, vm);
	}
	out = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:s, s:f, s:f, s:f, s:f, s:o, s:I}", "job",
			job_id(j), "image", m->name, "version", (int)m->version, "vms", (int)o->vms,
			"vcpus", (int)o->vcpus, "exit_code", exit_code, "accel",
			accel_to_string(job_accel(j)), "materialize_s", job_materialize_s(j),
			"boot_s", boot_s, "run_s", run_s, "shutdown_s", shutdown_s, "vm", vms,
			"host_pss_total_kb", (json_int_t)pss_total);
	json_dumpf(out, stderr, JSON_COMPACT);
	fputc('\n', stderr);
	json_decref(out);
}

static void print_report(const struct run_options *o, struct job *j, const struct manifest *m,
			 double boot_s, double run_s, double shutdown_s,
			 const struct job_vm_stats *stats, const struct run_usage *u, int exit_code)
{
	uint64_t pss_total = 0, used_total = 0, peak_max = 0;
	char b1[HUMANIZE_BYTES_LEN], b2[HUMANIZE_BYTES_LEN], b3[HUMANIZE_BYTES_LEN],
	    b4[HUMANIZE_BYTES_LEN];

	if (o->json) {
		print_report_json(o, j, m, boot_s, run_s, shutdown_s, stats, u, exit_code);
		return;
	}
	for (unsigned i = 0; i < o->vms; i++) {
		pss_total += stats[i].host_pss_kb;
		used_total += stats[i].guest_used_kb;
		if (u->vm[i].known && u->vm[i].job_mem_peak_kb > peak_max)
			peak_max = u->vm[i].job_mem_peak_kb;
	}
	fprintf(stderr,
		"\nvmhpc: job %s: %u VM%s x %u VCPU, %u MB each, %s, image %s:%u, exit %d\n"
		"  image materialize %7.2f s\n  boot (slowest VM) %7.2f s\n  run               "
		"%7.2f s\n"
		"  shutdown          %7.2f s\n",
		job_id(j), o->vms, o->vms == 1 ? "" : "s", o->vcpus, o->mem_mb,
		accel_to_string(job_accel(j)), m->name, m->version, exit_code, job_materialize_s(j),
		boot_s, run_s, shutdown_s);
	/* "used at ready": the guest's MemTotal - MemAvailable when it reported ready, before
	 * the job; "job peak": the most the job's processes held together (the guest's job
	 * cgroup, memory.peak), what --mem must leave room for. */
	fprintf(stderr, "  %-6s %8s %14s %10s %10s %10s\n", "VM", "ready", "used at ready",
		"job peak", "QEMU RSS", "QEMU PSS");
	for (unsigned i = 0; i < o->vms; i++)
		fprintf(stderr, "  %-6s %6.2f s %14s %10s %10s %10s\n", job_vm_name(j, i),
			stats[i].ready_s, humanize_bytes(stats[i].guest_used_kb * 1024, b1),
			u->vm[i].known && u->vm[i].job_mem_peak_kb
			    ? humanize_bytes(u->vm[i].job_mem_peak_kb * 1024, b4)
			    : "?",
			humanize_bytes(stats[i].host_rss_kb * 1024, b2),
			humanize_bytes(stats[i].host_pss_kb * 1024, b3));
	fprintf(stderr,
		"  all VMs: guest used at ready %s; highest job peak %s; host memory now %s (sum "
		"of PSS: the shared root counted once)\n",
		humanize_bytes(used_total * 1024, b1),
		peak_max ? humanize_bytes(peak_max * 1024, b3) : "?",
		humanize_bytes(pss_total * 1024, b2));
}

/* Asks every guest what the job used; says which VMs ran out of memory. Returns how many
 * processes the guests' kernels killed for lack of memory. */
static uint64_t collect_usage(struct job *j, const struct run_options *o, struct run_usage *u)
{
	uint64_t kills = 0;
	char b1[HUMANIZE_BYTES_LEN];

	for (unsigned i = 0; i < o->vms; i++) {
		struct job_vm_usage *v = &u->vm[i];

		if (job_vm_usage(j, i, 2000, v) < 0 || !v->known) {
			v->known = false;
			continue;
		}
		if (v->oom_kills == 0)
			continue;
		kills += v->oom_kills;
		log_error("%s ran out of memory: its kernel killed %llu process%s of the job (the "
			  "job's peak there: %s of --mem %uM); give each VM more with --mem, "
			  "e.g. --mem %uM, or run fewer ranks per VM",
			  job_vm_name(j, i), (unsigned long long)v->oom_kills,
			  v->oom_kills == 1 ? "" : "es",
			  humanize_bytes(v->job_mem_peak_kb * 1024, b1), o->mem_mb, o->mem_mb * 2);
	}
	return kills;
}

/* The checks that need no image: VCPUs against cores, the memory floor, the job folder
 * (resolved once; its device and inode go to the runtime, which shares only that very
 * directory). Returns 0, or the exit code 2 with the reason logged. */
static int check_request(const struct run_options *o, struct job_config *cfg, char **ret_workdir)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);

	/* The paper's rule: no more virtual CPUs than physical ones, unless asked. */
	if ((long)o->vms * o->vcpus > cores && !o->oversubscribe) {
		log_error(
		    "%u VM%s x %u VCPU%s = %u virtual CPUs, but this machine has %ld cores; use "
		    "fewer VMs or VCPUs, or --oversubscribe",
		    o->vms, o->vms == 1 ? "" : "s", o->vcpus, o->vcpus == 1 ? "" : "s",
		    o->vms * o->vcpus, cores);
		return 2;
	}
	/* More ranks than VCPUs time-share them: a 2-rank-per-VCPU job runs at half speed or
	 * worse, which nobody wants by accident. */
	if (o->ranks > o->vms * o->vcpus && !o->oversubscribe) {
		log_error("-n %u ranks, but %u VM%s x %u VCPU%s = %u virtual CPUs; use -n %u or "
			  "less, more --vms or --vcpus, or --oversubscribe",
			  o->ranks, o->vms, o->vms == 1 ? "" : "s", o->vcpus,
			  o->vcpus == 1 ? "" : "s", o->vms * o->vcpus, o->vms * o->vcpus);
		return 2;
	}
	if (o->mem_mb < JOB_MIN_MEM_MB) {
		log_error("--mem %uM is below what a guest needs (%uM: kernel, initramfs and the "
			  "writable overlay); give at least --mem %uM",
			  o->mem_mb, JOB_MIN_MEM_MB, JOB_MIN_MEM_MB);
		return 2;
	}
	*ret_workdir = NULL;
	if (o->share) {
		char resolved[PATH_MAX];
		struct stat sb;
		const char *dir = o->workdir ? o->workdir : ".";

		if (!realpath(dir, resolved) || stat(resolved, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
			log_error("--workdir %s: %s; give an existing directory (or --no-share)",
				  dir, errno ? strerror(errno) : "not a directory");
			return 2;
		}
		*ret_workdir = strdup(resolved);
		if (!*ret_workdir)
			return 1;
		cfg->workdir_dev = sb.st_dev;
		cfg->workdir_ino = sb.st_ino;
	}
	submitting_user(&cfg->owner_uid, &cfg->owner_gid);
	return 0;
}

/* Blocks the signals that stop a job and returns a signalfd for them: during the boot they
 * cancel it, during the run they are forwarded to mpiexec in VM 0, and the teardown always
 * runs. */
static int block_job_signals(void)
{
	sigset_t mask;
	int fd;

	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	return fd < 0 ? -errno : fd;
}

/* Runs mpiexec in VM 0 over every VM and turns how it ended into vmhpc run's exit code,
 * logging why when it is not 0. */
static int run_program(struct job *j, const struct run_options *o, const struct job_config *cfg,
		       enum launcher_mpi mpi, int signal_fd, double *ret_run_s)
{
	_cleanup_free_ char *error = NULL;
	const char *hosts[JOB_MAX_VMS];
	struct launcher_job lj = {.mpi = mpi,
				  .hosts = hosts,
				  .n_hosts = o->vms,
				  .slots = o->vcpus,
				  .ranks = o->ranks,
				  .label = o->label,
				  .argc = o->argc,
				  .argv = o->argv};
	struct launcher_command *cmd = NULL;
	struct frame_exec req = {
	    .uid = cfg->owner_uid,
	    .gid = cfg->owner_gid,
	    .cwd = (char *)(cfg->workdir ? cfg->workdir : "/"),
	};
	struct exec_client_io io = {.stdin_fd = -1,
				    .stdout_fd = STDOUT_FILENO,
				    .stderr_fd = STDERR_FILENO,
				    .signal_fd = signal_fd,
				    .signal_grace_ms = SIGNAL_GRACE_MS};
	double t_run = time_now_s();
	int r, code, status = 0;

	for (unsigned i = 0; i < o->vms; i++)
		hosts[i] = job_vm_name(j, i);
	r = launcher_command_new(&lj, &cmd);
	if (r < 0) {
		log_error("building the MPI launcher's command line: %s", strerror(-r));
		return 1;
	}
	req.argv = cmd->argv;
	req.envp = cmd->envp;
	r = job_exec(j, 0, &req, &io, o->time_limit_s ? (int)o->time_limit_s * 1000 : -1, &status,
		     &error);
	*ret_run_s = time_now_s() - t_run;
	launcher_command_free(cmd);

	if ((r >= 0 || r == -EINTR) && job_forwarded_signal(j, 0)) {
		int sig = job_forwarded_signal(j, 0);

		log_error("interrupted by %s (SIG%s); the job was stopped%s", strsignal(sig),
			  sigabbrev_np(sig),
			  r == -EINTR ? " without waiting for mpiexec to end" : "");
		code = 128 + sig;
	} else if (r == -ECHILD) {
		log_error("%s\nthe job was stopped: a VM of the job is gone", error);
		code = 1;
	} else if (r == -EPIPE) {
		log_error("the job's output has no reader any more (its pipe was closed, as by "
			  "`| head`): the job was stopped");
		code = 128 + SIGPIPE;
	} else if (r == -ETIMEDOUT) {
		log_error("time limit of %u s reached: the job was killed", o->time_limit_s);
		code = EXIT_TIME_LIMIT;
	} else if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		code = 1;
	} else {
		code = status;
		/* mpiexec's own status: a rank's exit code, or 255 when hydra reports a rank
		 * killed by a signal; 128+N only when mpiexec itself was killed; the job watch's
		 * LAUNCHER_EXIT_STUCK when it had to stop an mpiexec that outlived its ranks. */
		if (status == LAUNCHER_EXIT_STUCK)
			log_error("every rank had exited but %s did not end within %d s; the job "
				  "was stopped (exit code %d)",
				  launcher_program_name(lj.mpi), LAUNCHER_WATCH_GRACE_S, status);
		else if (status > 128 && status <= 128 + 64)
			log_error(
			    "the job failed with exit code %d (mpiexec ended by signal %d, %s)",
			    status, status - 128, strsignal(status - 128));
		else if (status != 0)
			log_error("the job failed with exit code %d", status);
	}
	return code;
}

int cli_run_main(struct cli_context *ctx, int argc, char **argv)
{
	struct run_options o;
	_cleanup_free_ char *error = NULL, *workdir = NULL, *cache = NULL, *chosen = NULL;
	_cleanup_close_ int sfd = -1;
	struct store *s = NULL;
	struct manifest *m = NULL;
	struct job *j = NULL;
	struct job_vm_stats stats[JOB_MAX_VMS] = {0};
	struct boot_progress bp = {.tty = isatty(STDERR_FILENO)};
	struct job_config cfg = {0};
	struct run_usage usage = {0};
	enum launcher_mpi mpi;
	double t_boot, boot_s = 0, run_s = 0, shutdown_s = 0;
	int r, code = 1;

	r = run_options_parse(argc, argv, &o, &error);
	if (r == 1)
		return 0;
	if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		return 2;
	}
	code = check_request(&o, &cfg, &workdir);
	if (code != 0)
		return code;
	code = 1;
	cache = node_cache_dir(ctx);
	if (!cache || cli_open_store(ctx, &s) < 0)
		return 1;
	if (o.require) {
		code = choose_image(s, &o, &chosen);
		if (code != 0)
			goto out;
		code = 1;
	}
	if (load_image(ctx, s, chosen ? chosen : o.image, &m) < 0)
		goto out;
	/* An image without an MPI launcher is the first thing to say: what PROGRAM needs
	 * from it comes after. */
	if (check_launcher(m, &mpi) < 0 || check_program(s, m, &o, workdir) < 0)
		goto out;
	/* The version that runs is named before anything boots: a version built since the last
	 * run (by this user or, in a shared store, another) is never a silent change. */
	if (!strchr(o.image, ':') && !chosen)
		log_info("image %s:%u, the newest %s (--image %s:%u keeps to this version)",
			 m->name, m->version, m->name, m->name, m->version);
	else
		log_info("image %s:%u", m->name, m->version);
	sfd = block_job_signals();
	if (sfd < 0) {
		log_error_errno(sfd, "signalfd: %m");
		goto out;
	}
	bp.signal_fd = sfd;

	r = job_clean_stale(run_dir());
	if (r > 0)
		log_info("removed what %d earlier job%s left behind", r, r == 1 ? "" : "s");

	cfg.store = s;
	cfg.image = m;
	cfg.cache_dir = cache;
	cfg.run_dir = run_dir();
	cfg.n_vms = o.vms;
	cfg.vcpus = o.vcpus;
	cfg.mem_mb = o.mem_mb;
	cfg.workdir = workdir;
	cfg.accel = o.accel;
	cfg.unprivileged = geteuid() != 0;
	cfg.shm = run_shm_wanted(o.shm, o.vms, m->metadata);
	cfg.boot_timeout_ms = getenv("VMHPC_BOOT_TIMEOUT_MS")
				  ? atoi(getenv("VMHPC_BOOT_TIMEOUT_MS"))
				  : BOOT_TIMEOUT_MS_DEFAULT;
	cfg.progress = show_progress;
	cfg.cancelled = check_cancelled;
	cfg.log = print_runtime_log;
	cfg.userdata = &bp;
	t_boot = time_now_s();
	free(TAKE_PTR(error));
	r = job_boot(&cfg, &j, &error);
	if (r < 0) {
		if (r == -ECANCELED)
			log_error("interrupted by %s while booting; nothing is left running",
				  strsignal(bp.signal));
		else
			log_error("%s", error ? error : strerror(-r));
		code = r == -ECANCELED ? 128 + bp.signal : 1;
		goto out;
	}
	boot_s = time_now_s() - t_boot;
	log_info("%u VM%s ready after %.2f s; running %s", o.vms, o.vms == 1 ? "" : "s", boot_s,
		 o.argv[0]);
	for (unsigned i = 0; i < o.vms; i++)
		job_vm_stats(j, i, &stats[i]);

	code = run_program(j, &o, &cfg, mpi, sfd, &run_s);
	collect_usage(j, &o, &usage);
	for (unsigned i = 0; i < o.vms; i++) {
		double ready_s = stats[i].ready_s;
		uint64_t used = stats[i].guest_used_kb;

		job_vm_stats(j, i, &stats[i]); /* host memory now, after the run */
		stats[i].ready_s = ready_s;
		stats[i].guest_used_kb = used;
	}
	job_shutdown(j, SHUTDOWN_TIMEOUT_MS, &shutdown_s);
	print_report(&o, j, m, boot_s, run_s, shutdown_s, stats, &usage, code);
out:
	job_free(j);
	manifest_free(m);
	store_close(s);
	return code;
}

int cli_cleanup_main(struct cli_context *ctx, int argc, char **argv)
{
	int r;

	if (argc > 1) {
		if (strcmp(argv[1], "--help") == 0) {
			printf(
			    "usage: vmhpc cleanup\n  removes the VMs, virtiofsd processes, sockets "
			    "and job folders that killed `vmhpc run`s left (a job's network goes "
			    "with its last VM)\n");
			return 0;
		}
		log_error("`vmhpc cleanup` takes no arguments");
		return 2;
	}
	r = job_clean_stale(run_dir());
	if (r < 0) {
		log_error_errno(r, "cleaning %s: %m", run_dir());
		return 1;
	}
	printf("cleaned up %d job%s\n", r, r == 1 ? "" : "s");
	return 0;
}
