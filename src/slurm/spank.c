/* vmhpc.so, the SPANK plugin: a job submitted with --vm-image gets VMs of that image on every
 * node Slurm gives it, booted by the prolog and torn down by the epilog; a job without it runs
 * exactly as if the plugin were absent (every hook returns at once).
 *
 * The plugin itself stays thin: it parses and checks the options (at submit, so that bad input
 * is refused by sbatch/srun/salloc with a clear message), and on the nodes it runs
 * `vmhpc slurm prolog|epilog` as a child and waits for it. Why not the runtime library inside
 * Slurm's processes: the job's VMs must outlive the short-lived `slurmstepd spank prolog`
 * process, the runtime uses threads, signal masks and PR_SET_PDEATHSIG that would be
 * slurmstepd's, and libslurmfull exports names in the runtime's own name spaces (job_*,
 * hostlist_*, list_*): docs/slurm.md.
 *
 * State: option values are kept in one static struct only in the submitting command
 * (sbatch/srun/salloc: one job per process). On the nodes every hook reads the options anew
 * with spank_option_getopt and the plugin arguments from its argv, so slurmd and slurmstepd
 * hold nothing between jobs. Nothing calls exit(); messages go through slurm_error/slurm_info.
 *
 * plugstack.conf: required /usr/lib/x86_64-linux-gnu/slurm-wlm/vmhpc.so [vmhpc=PATH]
 *   [socket=PATH] [run_dir=DIR] [state_dir=DIR] [key=FILE] [peers=FILE] [boot_timeout_ms=N]
 *   [registry_insecure=1]
 * where "%n" in a path stands for the node's name. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "slurm/options.h"

SPANK_PLUGIN(vmhpc, 1);

#define ARG_MAX_LEN 4096

enum opt_id { OPT_IMAGE = 1, OPT_VMS, OPT_VCPUS, OPT_MEM, OPT_SHM };

/* The submitting command's view of the options (local and allocator contexts only). */
static struct {
	bool image, vms, vcpus, mem, shm;
	unsigned n_vms, n_vcpus, mem_mb;
} submit;

static int opt_cb(int val, const char *optarg, int remote)
{
	char err[256] = "";
	unsigned v;
	int r = 0, shm;

	switch (val) {
	case OPT_IMAGE:
		r = slurmopt_check_image(optarg, err, sizeof(err));
		submit.image = r == 0;
		break;
	case OPT_VMS:
		r = slurmopt_parse_count("--vms-per-node", optarg, SLURMOPT_MAX_VMS_PER_NODE, &v,
					 err, sizeof(err));
		submit.vms = r == 0;
		submit.n_vms = v;
		break;
	case OPT_VCPUS:
		r = slurmopt_parse_count("--vm-vcpus", optarg, SLURMOPT_MAX_VCPUS, &v, err,
					 sizeof(err));
		submit.vcpus = r == 0;
		submit.n_vcpus = v;
		break;
	case OPT_MEM:
		r = slurmopt_parse_mem_mb(optarg, &v, err, sizeof(err));
		submit.mem = r == 0;
		submit.mem_mb = v;
		break;
	case OPT_SHM:
		r = slurmopt_parse_shm(optarg, &shm, err, sizeof(err));
		submit.shm = r == 0;
		break;
	default:
		return -1;
	}
	if (r < 0) {
		slurm_error("vmhpc: %s", err);
		return -1;
	}
	return 0;
}

static struct spank_option options[] = {
    {"vm-image", "REF",
     "Run the job's MPI program in VMs of this image (REGISTRY/REPO[:TAG], put there with "
     "`vmhpc image push`); the batch script runs it with `vmhpc mpirun PROGRAM`",
     1, OPT_IMAGE, opt_cb},
    {"vms-per-node", "N", "VMs of --vm-image on every node of the job (default 1)", 1, OPT_VMS,
     opt_cb},
    {"vm-vcpus", "N",
     "Virtual CPUs of each VM (default: the job's cores on the node divided among its VMs); "
     "VMs x VCPUs may not exceed the cores Slurm gives the job on a node",
     1, OPT_VCPUS, opt_cb},
    {"vm-mem", "SIZE", "Memory of each VM, e.g. 512M or 2G (default 256M)", 1, OPT_MEM, opt_cb},
    {"vm-shm", "on|off|auto",
     "Shared-memory channel between the VMs of a node, which MPI then uses instead of TCP "
     "(default auto: when the image carries it and a node has 2 VMs or more)",
     1, OPT_SHM, opt_cb},
    SPANK_OPTIONS_TABLE_END};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();

	/* Options exist where users type them and where the nodes read them back. */
	if (ctx == S_CTX_SLURMD)
		return 0;
	for (struct spank_option *o = options; o->name; o++)
		if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
			slurm_error("vmhpc: cannot register --%s", o->name);
			return -1;
		}
	return 0;
}

/* At submit: what needs no node is checked here, so that sbatch refuses it at once. The
 * cores and memory a node gives the job are checked by the prolog (Slurm decides them later). */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();

	if (ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR)
		return 0;
	if (!submit.image && (submit.vms || submit.vcpus || submit.mem || submit.shm)) {
		slurm_error("vmhpc: --vms-per-node, --vm-vcpus, --vm-mem and --vm-shm describe the "
			    "VMs of --vm-image; give --vm-image=REGISTRY/REPO:TAG too");
		return -1;
	}
	if (submit.image && submit.vms && submit.vcpus &&
	    submit.n_vms * submit.n_vcpus > SLURMOPT_MAX_VCPUS) {
		slurm_error("vmhpc: --vms-per-node=%u x --vm-vcpus=%u = %u VCPUs on a node; at "
			    "most %u",
			    submit.n_vms, submit.n_vcpus, submit.n_vms * submit.n_vcpus,
			    SLURMOPT_MAX_VCPUS);
		return -1;
	}
	return 0;
}

/* A plugin argument "key=value" from plugstack.conf, or def. */
static const char *plugin_arg(int ac, char **av, const char *key, const char *def)
{
	size_t n = strlen(key);

	for (int i = 0; i < ac; i++)
		if (strncmp(av[i], key, n) == 0 && av[i][n] == '=')
			return av[i] + n + 1;
	return def;
}

/* path with every "%n" replaced by node; false when it does not fit. */
static bool expand_node(const char *path, const char *node, char *out, size_t len)
{
	size_t o = 0;

	for (const char *p = path; *p; p++) {
		const char *add = p[0] == '%' && p[1] == 'n' ? node : NULL;
		size_t k = add ? strlen(add) : 1;

		if (o + k + 1 > len)
			return false;
		if (add) {
			memcpy(out + o, add, k);
			p++;
		} else {
			out[o] = *p;
		}
		o += k;
	}
	out[o] = 0;
	return true;
}

static const char *node_name(spank_t sp, char *buf, size_t len)
{
	const char *e = getenv("SLURMD_NODENAME");

	if (e && *e)
		return e;
	if (sp && spank_getenv(sp, "SLURMD_NODENAME", buf, (int)len) == ESPANK_SUCCESS && *buf)
		return buf;
	if (gethostname(buf, len - 1) < 0)
		return "localhost";
	buf[len - 1] = 0;
	buf[strcspn(buf, ".")] = 0;
	return buf;
}

/* The option's value as the node sees it (prolog, epilog, slurmstepd); NULL when not given. */
static char *node_opt(spank_t sp, int id)
{
	char *v = NULL;

	for (struct spank_option *o = options; o->name; o++)
		if (o->val == id)
			return spank_option_getopt(sp, o, &v) == ESPANK_SUCCESS ? v : NULL;
	return NULL;
}

/* Puts the helper's output, line by line, into this daemon's log (slurm_info): stderr of a
 * plugin in slurmd/slurmstepd reaches no log. */
struct relay {
	char buf[1024];
	size_t len;
	const char *verb;
};

static void relay_flush(struct relay *rl)
{
	if (rl->len) {
		rl->buf[rl->len] = '\0';
		slurm_info("vmhpc slurm %s: %s", rl->verb, rl->buf);
	}
	rl->len = 0;
}

static void relay_bytes(struct relay *rl, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n') {
			relay_flush(rl);
			continue;
		}
		if (rl->len == sizeof(rl->buf) - 1)
			relay_flush(rl);
		rl->buf[rl->len++] = p[i];
	}
}

/* Relays what the helper writes to out_fd until it exits, then what is left in the pipe;
 * its exit status in *status. The pipe is not read to its end: a process the helper left
 * running (the supervisor) must not keep us here, though it does not hold the pipe. */
static int relay_until_exit(pid_t pid, int out_fd, const char *verb, int *status)
{
	struct relay rl = {.verb = verb};
	bool exited = false;
	char chunk[512];

	for (;;) {
		struct pollfd p = {.fd = out_fd, .events = POLLIN};
		int r = poll(&p, 1, exited ? 0 : 200);

		if (r > 0) {
			ssize_t n = read(out_fd, chunk, sizeof(chunk));

			if (n > 0) {
				relay_bytes(&rl, chunk, (size_t)n);
				continue;
			}
			if (n == 0 || errno != EINTR)
				break; /* end of file: the helper exited or is about to */
			continue;
		}
		if (r < 0 && errno != EINTR)
			break;
		if (exited)
			break;
		r = waitpid(pid, status, WNOHANG);
		if (r < 0 && errno != EINTR)
			return -1;
		exited = r == pid;
	}
	relay_flush(&rl);
	while (!exited) {
		pid_t r = waitpid(pid, status, 0);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -1;
	}
	return 0;
}

/* Runs `vmhpc slurm VERB ...` and waits for it: its exit status, or -1 when it could not run
 * or was killed. Its output goes to this daemon's log (relay_until_exit). */
static int run_helper(int ac, char **av, const char *verb, spank_t sp)
{
	const char *vmhpc = plugin_arg(ac, av, "vmhpc", "/usr/bin/vmhpc");
	char node_buf[256], sock[ARG_MAX_LEN], run_dir[ARG_MAX_LEN], state_dir[ARG_MAX_LEN];
	const char *node = node_name(NULL, node_buf, sizeof(node_buf));
	const char *image = node_opt(sp, OPT_IMAGE), *vms = node_opt(sp, OPT_VMS),
		   *vcpus = node_opt(sp, OPT_VCPUS), *mem = node_opt(sp, OPT_MEM),
		   *shm = node_opt(sp, OPT_SHM);
	const char *argv[40];
	int n = 0, status, out[2], r;
	pid_t pid;

	if (!expand_node(plugin_arg(ac, av, "socket", "/run/vmhpc/node.sock"), node, sock,
			 sizeof(sock)) ||
	    !expand_node(plugin_arg(ac, av, "run_dir", "/run/vmhpc"), node, run_dir,
			 sizeof(run_dir)) ||
	    !expand_node(plugin_arg(ac, av, "state_dir", "/run/vmhpc-slurm"), node, state_dir,
			 sizeof(state_dir))) {
		slurm_error("vmhpc: a path in plugstack.conf is longer than %d bytes", ARG_MAX_LEN);
		return -1;
	}
	argv[n++] = vmhpc;
	argv[n++] = "slurm";
	argv[n++] = verb;
	argv[n++] = "--node";
	argv[n++] = node;
	argv[n++] = "--socket";
	argv[n++] = sock;
	argv[n++] = "--run-dir";
	argv[n++] = run_dir;
	argv[n++] = "--state-dir";
	argv[n++] = state_dir;
	argv[n++] = "--key";
	argv[n++] = plugin_arg(ac, av, "key", "/etc/vmhpc/job.key");
	argv[n++] = "--boot-timeout-ms";
	argv[n++] = plugin_arg(ac, av, "boot_timeout_ms", "120000");
	argv[n++] = "--peers";
	argv[n++] = plugin_arg(ac, av, "peers", "");
	/* Plain HTTP to the registry, as `vmhpc node --insecure` (a registry on a private
	 * network): the prolog asks it with the job's user's credentials. */
	if (strcmp(plugin_arg(ac, av, "registry_insecure", "0"), "1") == 0)
		argv[n++] = "--registry-insecure";
	argv[n++] = "--image";
	argv[n++] = image;
	if (vms) {
		argv[n++] = "--vms-per-node";
		argv[n++] = vms;
	}
	if (vcpus) {
		argv[n++] = "--vcpus";
		argv[n++] = vcpus;
	}
	if (mem) {
		argv[n++] = "--mem";
		argv[n++] = mem;
	}
	if (shm) {
		argv[n++] = "--shm";
		argv[n++] = shm;
	}
	argv[n] = NULL;

	if (pipe2(out, O_CLOEXEC) < 0) {
		slurm_error("vmhpc: pipe for %s: %s", verb, strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		slurm_error("vmhpc: fork for %s: %s", verb, strerror(errno));
		close(out[0]);
		close(out[1]);
		return -1;
	}
	if (pid == 0) {
		sigset_t none;

		/* slurmstepd blocks signals its children would otherwise inherit blocked. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(out[1], STDERR_FILENO) < 0)
			_exit(127);
		execv(vmhpc, (char *const *)argv);
		fprintf(stderr, "vmhpc: cannot run %s: %s\n", vmhpc, strerror(errno));
		_exit(127);
	}
	close(out[1]);
	r = relay_until_exit(pid, out[0], verb, &status);
	close(out[0]);
	if (r < 0) {
		slurm_error("vmhpc: waiting for `vmhpc slurm %s`: %s", verb, strerror(errno));
		return -1;
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	slurm_error("vmhpc: `vmhpc slurm %s` was killed by signal %d", verb, WTERMSIG(status));
	return -1;
}

/* Root, on every node of the job, before it starts. The helper records a vmhpc failure
 * that it cleaned up (the job then fails with that message: docs/slurm.md) and exits 0, so
 * that the node is not drained; only a failure it could not clean up drains it. */
int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
	uint32_t job = 0;
	int code;

	if (!node_opt(sp, OPT_IMAGE))
		return 0;
	spank_get_item(sp, S_JOB_ID, &job);
	code = run_helper(ac, av, "prolog", sp);
	if (code != 0) {
		slurm_error("vmhpc: job %u: the prolog failed and could not undo all it did "
			    "(exit %d); see this node's slurmd log",
			    job, code);
		return -1;
	}
	return 0;
}

/* Root, on every node of the job, after it ended however it ended (also when the prolog
 * failed half-way or the job was cancelled during it). */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	uint32_t job = 0;
	int code;

	if (!node_opt(sp, OPT_IMAGE))
		return 0;
	spank_get_item(sp, S_JOB_ID, &job);
	code = run_helper(ac, av, "epilog", sp);
	if (code != 0) {
		slurm_error("vmhpc: job %u: the epilog could not remove everything (exit %d)", job,
			    code);
		return -1;
	}
	return 0;
}

/* In each step's slurmstepd, before its tasks: tells `vmhpc mpirun` where this node's
 * supervisor of the job listens (the batch script runs on the job's first node). */
int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
	char node_buf[256], state_dir[ARG_MAX_LEN], path[ARG_MAX_LEN + 64];
	uint32_t job = 0;

	if (!node_opt(sp, OPT_IMAGE))
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
		return 0;
	if (!expand_node(plugin_arg(ac, av, "state_dir", "/run/vmhpc-slurm"),
			 node_name(sp, node_buf, sizeof(node_buf)), state_dir, sizeof(state_dir)))
		return 0;
	snprintf(path, sizeof(path), "%s/%u", state_dir, job);
	spank_setenv(sp, "VMHPC_SLURM_JOB_DIR", path, 1);
	return 0;
}
