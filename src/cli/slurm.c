/* `vmhpc slurm prolog|epilog`: what the SPANK plugin (src/slurm/spank.c) runs as root on
 * every node of a job submitted with --vm-image, and the job's supervisor on that node.
 *
 * prolog: checks the request against what Slurm gave the job on this node, asks the local
 *   `vmhpc node` to make the image present (the tree over the job's nodes, pinned for the
 *   job), then forks the supervisor and waits until it says the VMs are ready or failed.
 *   The supervisor (its own session, so it outlives the prolog) boots this node's VMs with
 *   the runtime library, owns them, serves `vmhpc mpirun` on the job's control socket
 *   (src/slurm/control.h) and, on SIGTERM, shuts them down and writes the job's timings
 *   into the job folder. A failure that was cleaned up is recorded (the job's AdminComment,
 *   an error file for `vmhpc mpirun`), the job is cancelled, and the prolog exits 0 so that
 *   Slurm does not drain the node for it.
 * epilog: stops the supervisor (SIGTERM, then SIGKILL; its VMs die with it), cleans what a
 *   killed supervisor left in the runtime folder, releases the image's pin on the node
 *   daemon, removes the job's state folder. Exit 1 only when something could not be undone.
 *
 * Slurm's prolog environment gives the job (SLURM_JOB_ID, _UID, _GID, _WORK_DIR,
 * SLURM_NODELIST, SLURM_JOB_CPUS_PER_NODE); the plugin gives the options and its paths on
 * the command line. docs/slurm.md. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/launcher.h"
#include "node/client.h"
#include "node/hostlist.h"
#include "slurm/control.h"
#include "slurm/options.h"
#include "slurm/token.h"
#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/time.h"
#include "vm/job.h"

#define SHUTDOWN_TIMEOUT_MS 10000
#define SIGNAL_GRACE_MS	    10000
/* How long the epilog waits for the supervisor to shut the VMs down before killing it (the
 * VMs then die with it: PR_SET_PDEATHSIG). */
#define STOP_WAIT_MS 30000
#define MAX_ARGV     4096

struct slurm_job {
	/* from the plugin */
	const char *node, *socket, *run_dir, *state_dir, *key, *image, *peers;
	unsigned vms, vcpus, mem_mb;
	bool vcpus_set;
	int boot_timeout_ms;
	/* from Slurm's prolog environment */
	uint32_t id;
	char id_str[16];
	uid_t uid;
	gid_t gid;
	const char *nodes, *workdir, *cpus_per_node;
	char **hosts;
	size_t n_hosts;
	unsigned node_index, cores;
	char **node_addrs; /* underlay IPv4 of each node (a job of several nodes) */
	char token_hex[SLURMTOKEN_HEX_LEN + 1];
	char dir[PATH_MAX]; /* state_dir/<job>: pid, lock, ctl.sock, error, supervisor.log */
	/* from the node daemon's present */
	char *store_dir, *image_name;
	uint32_t image_version;
	double distribution_s;
	long long bytes_received;
	char *source;
};

static void job_done(struct slurm_job *sj)
{
	for (size_t i = 0; sj->node_addrs && i < sj->n_hosts; i++)
		free(sj->node_addrs[i]);
	free(sj->node_addrs);
	explicit_bzero(sj->token_hex, sizeof(sj->token_hex));
	hostlist_free(sj->hosts, sj->n_hosts);
	free(sj->store_dir);
	free(sj->image_name);
	free(sj->source);
}

static int env_u32(const char *name, uint32_t *ret)
{
	const char *v = getenv(name);
	char *end;
	unsigned long x;

	if (!v || !*v)
		return -ENOENT;
	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno || *end || x > UINT32_MAX)
		return -EINVAL;
	*ret = (uint32_t)x;
	return 0;
}

/* The plugin's command line and Slurm's environment. 0, or the exit code 2 with the reason
 * logged (the plugin and this binary disagree: an installation fault). */
static int parse(int argc, char **argv, struct slurm_job *sj, bool need_env)
{
	static const struct option opts[] = {{"node", required_argument, NULL, 'N'},
					     {"socket", required_argument, NULL, 's'},
					     {"run-dir", required_argument, NULL, 'r'},
					     {"state-dir", required_argument, NULL, 'S'},
					     {"key", required_argument, NULL, 'k'},
					     {"image", required_argument, NULL, 'i'},
					     {"vms-per-node", required_argument, NULL, 'v'},
					     {"vcpus", required_argument, NULL, 'c'},
					     {"mem", required_argument, NULL, 'm'},
					     {"boot-timeout-ms", required_argument, NULL, 'b'},
					     {"peers", required_argument, NULL, 'p'},
					     {0}};
	char err[256];
	uint32_t u;
	int c;

	*sj = (struct slurm_job){
	    .vms = 1, .mem_mb = SLURMOPT_DEFAULT_MEM_MB, .boot_timeout_ms = 120000};
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'N':
			sj->node = optarg;
			break;
		case 's':
			sj->socket = optarg;
			break;
		case 'r':
			sj->run_dir = optarg;
			break;
		case 'S':
			sj->state_dir = optarg;
			break;
		case 'k':
			sj->key = optarg;
			break;
		case 'i':
			sj->image = optarg;
			break;
		case 'v':
			if (slurmopt_parse_count("--vms-per-node", optarg,
						 SLURMOPT_MAX_VMS_PER_NODE, &sj->vms, err,
						 sizeof(err)) < 0)
				goto bad;
			break;
		case 'c':
			if (slurmopt_parse_count("--vm-vcpus", optarg, SLURMOPT_MAX_VCPUS,
						 &sj->vcpus, err, sizeof(err)) < 0)
				goto bad;
			sj->vcpus_set = true;
			break;
		case 'm':
			if (slurmopt_parse_mem_mb(optarg, &sj->mem_mb, err, sizeof(err)) < 0)
				goto bad;
			break;
		case 'b':
			sj->boot_timeout_ms = atoi(optarg);
			break;
		case 'p':
			sj->peers = *optarg ? optarg : NULL;
			break;
		default:
			return 2;
		}
	}
	if (!sj->node || !sj->socket || !sj->run_dir || !sj->state_dir || !sj->key) {
		log_error("vmhpc slurm: --node, --socket, --run-dir, --state-dir and --key are "
			  "given by the SPANK plugin; run this from it (docs/slurm.md)");
		return 2;
	}
	if (env_u32("SLURM_JOB_ID", &sj->id) < 0) {
		log_error("vmhpc slurm: SLURM_JOB_ID is not set: run from Slurm's prolog/epilog");
		return 2;
	}
	snprintf(sj->id_str, sizeof(sj->id_str), "%u", sj->id);
	if (snprintf(sj->dir, sizeof(sj->dir), "%s/%u", sj->state_dir, sj->id) >=
	    (int)sizeof(sj->dir)) {
		log_error("--state-dir %s: too long", sj->state_dir);
		return 2;
	}
	if (!need_env)
		return 0;
	if (env_u32("SLURM_JOB_UID", &u) < 0)
		goto env;
	sj->uid = u;
	if (env_u32("SLURM_JOB_GID", &u) < 0)
		goto env;
	sj->gid = u;
	sj->nodes = getenv("SLURM_NODELIST");
	sj->workdir = getenv("SLURM_JOB_WORK_DIR");
	sj->cpus_per_node = getenv("SLURM_JOB_CPUS_PER_NODE");
	if (!sj->nodes || !sj->workdir || !sj->cpus_per_node)
		goto env;
	return 0;
bad:
	log_error("vmhpc slurm: %s", err);
	return 2;
env:
	log_error("vmhpc slurm: Slurm's prolog environment lacks SLURM_JOB_UID, SLURM_JOB_GID, "
		  "SLURM_NODELIST, SLURM_JOB_WORK_DIR or SLURM_JOB_CPUS_PER_NODE");
	return 2;
}

/* Runs a Slurm client (scontrol, scancel) and waits for it; its output goes to our log. */
static int run_slurm_client(char *const argv[])
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

		if (null >= 0)
			dup2(null, STDIN_FILENO);
		execvp(argv[0], argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* A failure the prolog cleaned up: said where the user and the admin look (the job's
 * AdminComment, shown by scontrol and sacct; an error file that `vmhpc mpirun` prints), and
 * the job is cancelled: it cannot run without its VMs. The node stays in service. */
static void record_failure(const struct slurm_job *sj, const char *message)
{
	_cleanup_free_ char *path = fs_path_join(sj->dir, "error"), *comment = NULL, *jobarg = NULL;

	log_error("job %u on %s: %s", sj->id, sj->node, message);
	if (path)
		fs_write_atomic(path, message, strlen(message), 0644);
	if (asprintf(&comment, "AdminComment=vmhpc: %s: %s", sj->node, message) < 0 ||
	    asprintf(&jobarg, "JobId=%u", sj->id) < 0)
		return;
	/* AdminComment holds at most a line; keep the message's first. */
	comment[strcspn(comment, "\n")] = 0;
	run_slurm_client((char *const[]){"scontrol", "update", jobarg, comment, NULL});
	run_slurm_client((char *const[]){"scancel", (char *)sj->id_str, NULL});
}

/* What Slurm gave the job here against what it asks: VCPUs within the job's cores on this
 * node, memory within the node's. 0, or -EINVAL with the message in *ret_error. */
static int check_request(struct slurm_job *sj, char **ret_error)
{
	_cleanup_free_ char *error = NULL;
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	uint64_t node_mb = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page >> 20 : 0;
	char err[256];

	if (slurmopt_check_image(sj->image, err, sizeof(err)) < 0)
		return error_set(ret_error, -EINVAL, "%s", err);
	if (hostlist_expand(sj->nodes, &sj->hosts, &sj->n_hosts, &error) < 0)
		return error_set(ret_error, -EINVAL, "SLURM_NODELIST %s: %s", sj->nodes, error);
	for (sj->node_index = 0; sj->node_index < sj->n_hosts; sj->node_index++)
		if (strcmp(sj->hosts[sj->node_index], sj->node) == 0)
			break;
	if (sj->node_index == sj->n_hosts)
		return error_set(ret_error, -EINVAL,
				 "this node %s is not in the job's node list %s (the plugin's "
				 "node name and Slurm's differ?)",
				 sj->node, sj->nodes);
	if (slurmopt_cpus_on_node(sj->cpus_per_node, sj->node_index, &sj->cores) < 0)
		return error_set(ret_error, -EINVAL, "SLURM_JOB_CPUS_PER_NODE=%s: unreadable",
				 sj->cpus_per_node);
	if (!sj->vcpus_set)
		sj->vcpus = sj->cores / sj->vms ? sj->cores / sj->vms : 1;
	if (sj->vms * sj->vcpus > sj->cores)
		return error_set(
		    ret_error, -EINVAL,
		    "--vms-per-node=%u x --vm-vcpus=%u = %u VCPUs, but Slurm gave job %u %u "
		    "core%s on %s; ask for more cores (-c, --ntasks-per-node, --exclusive) or "
		    "fewer "
		    "VMs or VCPUs",
		    sj->vms, sj->vcpus, sj->vms * sj->vcpus, sj->id, sj->cores,
		    sj->cores == 1 ? "" : "s", sj->node);
	if ((uint64_t)sj->vms * sj->mem_mb > node_mb)
		return error_set(ret_error, -EINVAL,
				 "--vms-per-node=%u x --vm-mem=%uM = %lluM, but node %s has %lluM "
				 "of memory; give less --vm-mem or fewer VMs",
				 sj->vms, sj->mem_mb, (unsigned long long)sj->vms * sj->mem_mb,
				 sj->node, (unsigned long long)node_mb);
	return 0;
}

/* The underlay IPv4 address of node name: its entry in the peers file (the node daemons'
 * "NAME HOST:PORT"), else its name through the resolver. Caller frees. */
static int node_address(const struct slurm_job *sj, const char *name, char **ret, char **ret_error)
{
	_cleanup_free_ char *addr = NULL;
	struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *res = NULL;
	char ip[INET_ADDRSTRLEN];
	char *colon;
	int r;

	r = node_peer_address(sj->peers, name, NODE_DEFAULT_PORT, &addr, ret_error);
	if (r < 0)
		return r;
	colon = strrchr(addr, ':');
	if (colon)
		*colon = 0;
	r = getaddrinfo(addr, NULL, &hints, &res);
	if (r != 0 || !res)
		return error_set(ret_error, -EHOSTUNREACH,
				 "node %s (%s): no IPv4 address (%s); list it in the node daemons' "
				 "peers file",
				 name, addr, gai_strerror(r));
	inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof(ip));
	freeaddrinfo(res);
	*ret = strdup(ip);
	return *ret ? 0 : -ENOMEM;
}

/* What a job of several nodes needs on every node alike: each node's underlay address, the
 * job's token (from the site key). */
static int cluster_setup(struct slurm_job *sj, char **ret_error)
{
	int r;

	if (sj->n_hosts > JOB_MAX_NODES)
		return error_set(ret_error, -E2BIG, "the job has %zu nodes; at most %d",
				 sj->n_hosts, JOB_MAX_NODES);
	if (sj->n_hosts * sj->vms > JOB_MAX_VMS_TOTAL)
		return error_set(ret_error, -E2BIG,
				 "%zu nodes x %u VMs: at most %d VMs in a job; use fewer VMs per "
				 "node",
				 sj->n_hosts, sj->vms, JOB_MAX_VMS_TOTAL);
	r = slurmtoken_derive(sj->key, sj->id, sj->token_hex, ret_error);
	if (r < 0)
		return r;
	sj->node_addrs = calloc(sj->n_hosts, sizeof(*sj->node_addrs));
	if (!sj->node_addrs)
		return -ENOMEM;
	for (size_t i = 0; i < sj->n_hosts; i++) {
		r = node_address(sj, sj->hosts[i], &sj->node_addrs[i], ret_error);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The local node daemon makes the image present here (down the tree over the job's nodes)
 * and pins it for the job. */
static int present(struct slurm_job *sj, char **ret_error)
{
	_cleanup_free_ char *error = NULL;
	json_t *req, *reply = NULL;
	double t0 = time_now_s();
	int r;

	req = json_pack("{s:s, s:s, s:s, s:s}", "op", "present", "ref", sj->image, "job",
			sj->id_str, "nodes", sj->nodes);
	if (!req)
		return -ENOMEM;
	r = node_client_local(sj->socket, req, 24 * 3600 * 1000, &reply, &error);
	json_decref(req);
	if (r < 0) {
		if (r == -ENOENT || r == -ECONNREFUSED)
			return error_set(ret_error, r,
					 "no `vmhpc node` daemon answers on %s (%s); start it on "
					 "this node (contrib/vmhpc-node.service)",
					 sj->socket, error ? error : strerror(-r));
		return error_set(ret_error, r, "image %s: %s", sj->image,
				 error ? error : strerror(-r));
	}
	sj->distribution_s = time_now_s() - t0;
	sj->image_name = strdup(json_string_value(json_object_get(reply, "name")) ?: "");
	sj->image_version = (uint32_t)json_integer_value(json_object_get(reply, "version"));
	sj->store_dir = strdup(json_string_value(json_object_get(reply, "store")) ?: "");
	sj->source = strdup(json_string_value(json_object_get(reply, "source")) ?: "?");
	sj->bytes_received = json_integer_value(json_object_get(reply, "bytes_received"));
	json_decref(reply);
	if (!sj->image_name || !sj->store_dir || !sj->source)
		return -ENOMEM;
	if (!*sj->store_dir || !*sj->image_name)
		return error_set(ret_error, -EPROTO,
				 "the node daemon on %s did not say where its store is; update "
				 "`vmhpc node` to this vmhpc's version",
				 sj->socket);
	return 0;
}

/* The supervisor's state while it serves. */
struct supervisor {
	struct slurm_job *sj;
	struct job *job;
	struct manifest *image;
	enum launcher_mpi mpi;
	int signal_fd; /* SIGTERM, SIGINT, SIGHUP */
	bool stop;     /* a signal asked to stop */
	double boot_s, run_s, shutdown_s;
	unsigned runs;
	struct job_vm_stats stats[JOB_MAX_VMS];
};

static bool boot_cancelled(void *ud)
{
	struct supervisor *sv = ud;
	struct signalfd_siginfo si;

	if (!sv->stop && read(sv->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		sv->stop = true;
	return sv->stop;
}

static void runtime_log(enum log_level level, const char *message, void *ud)
{
	if (log_enabled(level))
		log_print(level, "%s", message);
}

/* While one mpirun runs: passes the client's signal requests (and its going away) and a
 * stop asked of the supervisor on to job_exec as signalfd records. A thread because
 * job_exec blocks on the VMs while these arrive on other descriptors. */
struct relay {
	int client_fd, signal_fd, out_fd, quit_fd;
	bool *stop;
};

static void relay_signal(int out_fd, int signo)
{
	struct signalfd_siginfo si = {.ssi_signo = (uint32_t)signo};

	(void)!write(out_fd, &si, sizeof(si));
}

static void *relay_main(void *arg)
{
	struct relay *rl = arg;
	bool client_open = true;

	for (;;) {
		struct pollfd fds[3] = {{.fd = rl->quit_fd, .events = POLLIN},
					{.fd = rl->signal_fd, .events = POLLIN},
					{.fd = client_open ? rl->client_fd : -1, .events = POLLIN}};
		struct signalfd_siginfo si;

		if (poll(fds, 3, -1) < 0 && errno != EINTR)
			return NULL;
		if (fds[0].revents)
			return NULL;
		if (fds[1].revents && read(rl->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			/* The epilog stops the job: forward, then give up at once. */
			*rl->stop = true;
			relay_signal(rl->out_fd, SIGTERM);
			relay_signal(rl->out_fd, SIGKILL);
		}
		if (fds[2].revents) {
			json_t *msg = NULL;
			int r = slurmctl_recv(rl->client_fd, 0, &msg, NULL, NULL);

			if (r == 0) {
				json_int_t signo =
				    json_integer_value(json_object_get(msg, "signal"));

				if (signo > 0 && signo < 65)
					relay_signal(rl->out_fd, (int)signo);
				json_decref(msg);
			} else if (r != -ETIMEDOUT && r != -EAGAIN) {
				/* mpirun went away (killed): the program goes with it. */
				relay_signal(rl->out_fd, SIGTERM);
				client_open = false;
			}
		}
	}
}

/* Slurm starts the batch script once the prolog of its own node is done, not every node's
 * (measured: with 4 nodes the script began 11 s before the last node's VMs were up, and
 * mpiexec then hung). So before launching over other nodes' VMs, VM 0 asks each of them,
 * with the guest's own exec client and the job's token, until it answers or the boot
 * deadline passes. 0, or -ETIMEDOUT with *ret_error naming the VM. */
static int wait_for_job_vms(struct supervisor *sv, char **ret_error)
{
	unsigned total = job_vm_count_total(sv->job);
	double give_up = time_now_s() + sv->sj->boot_timeout_ms / 1000.0;
	struct exec_client_io io = {
	    .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .signal_fd = -1};

	for (unsigned g = 0; g < total; g++) {
		const char *name = job_vm_name_total(sv->job, g);
		char *argv[] = {
		    "/usr/bin/vmhpc-exec", "--timeout-ms", "3000", "--info", (char *)name, NULL};
		char *envp[] = {NULL};
		struct frame_exec req = {.cwd = "/", .argv = argv, .envp = envp};
		bool local = false;

		for (unsigned i = 0; i < sv->sj->vms; i++)
			local |= strcmp(job_vm_name(sv->job, i), name) == 0;
		if (local)
			continue;
		for (;;) {
			_cleanup_free_ char *error = NULL;
			int status = -1, r;

			r = job_exec(sv->job, 0, &req, &io, 10000, &status, &error);
			if (r == -ECHILD)
				return error_set(ret_error, r, "%s", error);
			if (r >= 0 && status == 0)
				break;
			if (time_now_s() >= give_up || sv->stop)
				return error_set(ret_error, -ETIMEDOUT,
						 "%s (on another node of the job) did not answer "
						 "within %d s: its node's VMs did not come up",
						 name, sv->sj->boot_timeout_ms / 1000);
			usleep(500 * 1000);
		}
	}
	return 0;
}

/* Runs one `vmhpc mpirun` request: mpiexec in this node's first VM over every VM of the
 * job, its output on the client's descriptors. The reply says how it ended. */
static void serve_mpirun(struct supervisor *sv, int client_fd, json_t *msg, const int *fds,
			 unsigned n_fds)
{
	struct slurm_job *sj = sv->sj;
	_cleanup_free_ char *error = NULL;
	json_t *jargv = json_object_get(msg, "argv"), *reply;
	unsigned argc = 0, total_vms = job_vm_count_total(sv->job);
	_cleanup_free_ const char **hosts = calloc(total_vms, sizeof(*hosts));
	_cleanup_free_ char **argv = calloc(MAX_ARGV + 1, sizeof(*argv));
	json_int_t ranks = json_integer_value(json_object_get(msg, "ranks"));
	struct launcher_command *cmd = NULL;
	struct launcher_job lj = {.mpi = sv->mpi,
				  .hosts = hosts,
				  .n_hosts = total_vms,
				  .slots = sj->vcpus,
				  .label = json_is_true(json_object_get(msg, "label"))};
	struct frame_exec req = {.uid = sj->uid, .gid = sj->gid, .cwd = (char *)sj->workdir};
	struct exec_client_io io = {.stdin_fd = -1,
				    .stdout_fd = n_fds > 0 ? fds[0] : -1,
				    .stderr_fd = n_fds > 1 ? fds[1] : -1,
				    .signal_grace_ms = SIGNAL_GRACE_MS};
	int pipe_fds[2] = {-1, -1}, quit[2] = {-1, -1}, status = 0, code, r;
	struct relay rl;
	pthread_t th;
	double t0;

	if (!hosts || !argv) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of memory");
		goto out;
	}
	if (!json_is_array(jargv) || json_array_size(jargv) == 0 ||
	    json_array_size(jargv) > MAX_ARGV) {
		reply = json_pack("{s:i, s:s}", "status", 2, "error",
				  "give the program to run: vmhpc mpirun PROGRAM [ARGS]");
		goto out;
	}
	for (size_t i = 0; i < json_array_size(jargv); i++) {
		const char *a = json_string_value(json_array_get(jargv, i));

		if (!a) {
			reply = json_pack("{s:i, s:s}", "status", 2, "error", "bad argument");
			goto out;
		}
		argv[argc++] = (char *)a;
	}
	argv[argc] = NULL;
	lj.argc = (int)argc;
	lj.argv = argv;
	lj.ranks = ranks > 0 ? (unsigned)ranks : total_vms * sj->vcpus;
	if (lj.ranks > total_vms * sj->vcpus) {
		reply = json_pack("{s:i, s:s}", "status", 2, "error",
				  "-n: more ranks than the job's VCPUs (--vms-per-node x "
				  "--vm-vcpus); use fewer");
		goto out;
	}
	for (unsigned g = 0; g < total_vms; g++)
		hosts[g] = job_vm_name_total(sv->job, g);
	if (launcher_command_new(&lj, &cmd) < 0 || pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    pipe2(quit, O_CLOEXEC) < 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of memory");
		goto out;
	}
	if (wait_for_job_vms(sv, &error) < 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", error);
		goto out;
	}
	req.argv = cmd->argv;
	req.envp = cmd->envp;
	io.signal_fd = pipe_fds[0];
	rl = (struct relay){.client_fd = client_fd,
			    .signal_fd = sv->signal_fd,
			    .out_fd = pipe_fds[1],
			    .quit_fd = quit[0],
			    .stop = &sv->stop};
	if (pthread_create(&th, NULL, relay_main, &rl) != 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of threads");
		goto out;
	}
	t0 = time_now_s();
	r = job_exec(sv->job, 0, &req, &io, -1, &status, &error);
	sv->run_s += time_now_s() - t0;
	sv->runs++;
	(void)!write(quit[1], "q", 1);
	pthread_join(th, NULL);
	if ((r >= 0 || r == -EINTR) && job_forwarded_signal(sv->job, 0)) {
		int sig = job_forwarded_signal(sv->job, 0);

		code = 128 + sig;
		if (!error &&
		    asprintf(&error, "interrupted by %s (SIG%s)%s", strsignal(sig),
			     sigabbrev_np(sig), sv->stop ? ": the job is ending" : "") < 0)
			error = NULL;
	} else if (r == -ECHILD) {
		code = 1;
	} else if (r < 0) {
		code = 1;
		if (!error)
			error = strdup(strerror(-r));
	} else {
		code = status;
	}
	reply = json_pack("{s:i, s:s?}", "status", code, "error", error);
out:
	launcher_command_free(cmd);
	for (int i = 0; i < 2; i++) {
		if (pipe_fds[i] >= 0)
			close(pipe_fds[i]);
		if (quit[i] >= 0)
			close(quit[i]);
	}
	if (reply)
		slurmctl_send(client_fd, reply, NULL, 0);
	json_decref(reply);
}

static void serve_client(struct supervisor *sv, int fd)
{
	json_t *msg = NULL, *reply = NULL;
	int fds[SLURMCTL_MAX_FDS];
	unsigned n_fds = 0;
	const char *op;
	uid_t uid;

	if (slurmctl_peer_uid(fd, &uid) < 0 || (uid != 0 && uid != sv->sj->uid)) {
		log_info("refused a control connection from uid %u (job %u belongs to uid %u)",
			 (unsigned)uid, sv->sj->id, (unsigned)sv->sj->uid);
		reply = json_pack("{s:i, s:s}", "status", 1, "error",
				  "refused: this job's VMs belong to another user");
		slurmctl_send(fd, reply, NULL, 0);
		json_decref(reply);
		return;
	}
	if (slurmctl_recv(fd, 5000, &msg, fds, &n_fds) < 0)
		return;
	op = json_string_value(json_object_get(msg, "op"));
	if (op && strcmp(op, "mpirun") == 0) {
		serve_mpirun(sv, fd, msg, fds, n_fds);
	} else {
		reply = json_pack("{s:i, s:s}", "status", 2, "error", "unknown request");
		slurmctl_send(fd, reply, NULL, 0);
		json_decref(reply);
	}
	for (unsigned i = 0; i < n_fds; i++)
		close(fds[i]);
	json_decref(msg);
}

/* The per-job record in the job folder (owned by the job's user): how long each phase took
 * and the memory of each VM. Written without following a link the user may have put there. */
static void write_timings(struct supervisor *sv, const struct job_vm_usage *usage)
{
	struct slurm_job *sj = sv->sj;
	_cleanup_free_ char *text = NULL, *name = NULL;
	_cleanup_close_ int dir_fd = -1, fd = -1;
	json_t *vms = json_array(), *out;
	uint64_t pss = 0;

	for (unsigned i = 0; i < sj->vms; i++) {
		json_t *vm = json_pack("{s:s, s:f, s:I, s:I, s:I}", "name", job_vm_name(sv->job, i),
				       "ready_s", sv->stats[i].ready_s, "guest_used_kb",
				       (json_int_t)sv->stats[i].guest_used_kb, "host_rss_kb",
				       (json_int_t)sv->stats[i].host_rss_kb, "host_pss_kb",
				       (json_int_t)sv->stats[i].host_pss_kb);

		if (usage[i].known)
			json_object_set_new(vm, "job_mem_peak_kb",
					    json_integer((json_int_t)usage[i].job_mem_peak_kb));
		pss += sv->stats[i].host_pss_kb;
		json_array_append_new(vms, vm);
	}
	out =
	    json_pack("{s:i, s:s, s:i, s:s, s:i, s:i, s:s, s:f, s:s, s:I, s:f, s:f, s:i, s:f, "
		      "s:f, s:o, s:I}",
		      "job", (int)sj->id, "node", sj->node, "node_index", (int)sj->node_index,
		      "image", sj->image, "vms", (int)sj->vms, "vcpus", (int)sj->vcpus, "accel",
		      accel_to_string(job_accel(sv->job)), "distribution_s", sj->distribution_s,
		      "distribution_source", sj->source, "distribution_bytes",
		      (json_int_t)sj->bytes_received, "materialize_s", job_materialize_s(sv->job),
		      "boot_s", sv->boot_s, "runs", (int)sv->runs, "run_s", sv->run_s, "shutdown_s",
		      sv->shutdown_s, "vm", vms, "host_pss_total_kb", (json_int_t)pss);
	if (out) {
		char v[300];

		snprintf(v, sizeof(v), "%s:%u", sj->image_name, sj->image_version);
		json_object_set_new(out, "version", json_string(v));
	}
	text = out ? json_dumps(out, JSON_INDENT(1)) : NULL;
	json_decref(out);
	if (!text || asprintf(&name, "vmhpc-%u.%s.json", sj->id, sj->node) < 0)
		return;
	dir_fd = open(sj->workdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd >= 0)
		fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
			    0644);
	if (fd < 0) {
		log_error("job %u: writing %s/%s: %m", sj->id, sj->workdir, name);
		return;
	}
	if (fchown(fd, sj->uid, sj->gid) < 0 || fs_write_all(fd, text, strlen(text)) < 0 ||
	    fs_write_all(fd, "\n", 1) < 0)
		log_error("job %u: writing %s/%s: %m", sj->id, sj->workdir, name);
}

static void stop_job(struct supervisor *sv)
{
	struct job_vm_usage usage[JOB_MAX_VMS] = {0};

	for (unsigned i = 0; i < sv->sj->vms; i++) {
		double ready_s = sv->stats[i].ready_s;
		uint64_t used = sv->stats[i].guest_used_kb;

		if (job_vm_usage(sv->job, i, 2000, &usage[i]) < 0)
			usage[i].known = false;
		job_vm_stats(sv->job, i, &sv->stats[i]);
		sv->stats[i].ready_s = ready_s;
		sv->stats[i].guest_used_kb = used;
	}
	job_shutdown(sv->job, SHUTDOWN_TIMEOUT_MS, &sv->shutdown_s);
	write_timings(sv, usage);
}

/* The supervisor: boots, says how that went on ready_fd, serves until stopped. Returns the
 * process's exit code. */
static int supervise(struct slurm_job *sj, int ready_fd)
{
	struct supervisor sv = {.sj = sj};
	_cleanup_free_ char *error = NULL, *cache = NULL, *sock = NULL, *ref = NULL;
	_cleanup_close_ int listen_fd = -1;
	struct store *store = NULL;
	struct job_config cfg = {0};
	struct job_cluster cluster;
	struct stat st;
	sigset_t mask;
	double t0;
	int r, code = 0;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sv.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sv.signal_fd < 0) {
		error_set(&error, -errno, "signalfd: %s", strerror(errno));
		goto fail;
	}
	r = store_open(sj->store_dir, &store);
	if (r < 0) {
		error_set(&error, r, "the node cache's store %s: %s", sj->store_dir, strerror(-r));
		goto fail;
	}
	r = catalog_load(store, sj->image_name, sj->image_version, &sv.image, &error);
	if (r < 0)
		goto fail;
	if (asprintf(&ref, "%s:%u", sv.image->name, sv.image->version) < 0 ||
	    launcher_mpi_of_image(sv.image->metadata, ref, &sv.mpi, &error) < 0)
		goto fail;
	if (stat(sj->workdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		error_set(&error, -ENOTDIR, "the job folder %s: %s", sj->workdir,
			  errno ? strerror(errno) : "not a directory");
		goto fail;
	}
	cache = fs_path_join(sj->store_dir, "../vm");
	if (!cache)
		goto fail;
	r = job_clean_stale(sj->run_dir);
	if (r > 0)
		log_info("removed what %d earlier job%s left in %s", r, r == 1 ? "" : "s",
			 sj->run_dir);
	cfg.store = store;
	cfg.image = sv.image;
	cfg.cache_dir = cache;
	cfg.run_dir = sj->run_dir;
	cfg.n_vms = sj->vms;
	cfg.vcpus = sj->vcpus;
	cfg.mem_mb = sj->mem_mb;
	cfg.workdir = sj->workdir;
	cfg.workdir_dev = st.st_dev;
	cfg.workdir_ino = st.st_ino;
	cfg.owner_uid = sj->uid;
	cfg.owner_gid = sj->gid;
	cfg.boot_timeout_ms = sj->boot_timeout_ms;
	if (sj->n_hosts > 1) {
		cluster = (struct job_cluster){.node_index = sj->node_index,
					       .n_nodes = (unsigned)sj->n_hosts,
					       .node_addrs = (const char *const *)sj->node_addrs,
					       .vni = slurmtoken_vni(sj->id),
					       .token_hex = sj->token_hex};
		cfg.cluster = &cluster;
	}
	cfg.cancelled = boot_cancelled;
	cfg.log = runtime_log;
	cfg.userdata = &sv;
	t0 = time_now_s();
	r = job_boot(&cfg, &sv.job, &error);
	if (r < 0) {
		if (r == -ECANCELED) {
			free(error);
			error = strdup("the job was cancelled while its VMs booted");
		}
		goto fail;
	}
	sv.boot_s = time_now_s() - t0;
	for (unsigned i = 0; i < sj->vms; i++)
		job_vm_stats(sv.job, i, &sv.stats[i]);
	sock = fs_path_join(sj->dir, "ctl.sock");
	if (!sock || slurmctl_listen(sock, &listen_fd, &error) < 0)
		goto fail;
	log_info("job %u: %u VM%s of %s ready on %s after %.2f s", sj->id, sj->vms,
		 sj->vms == 1 ? "" : "s", ref, sj->node, sv.boot_s);
	(void)!write(ready_fd, "ok", 2);
	close(ready_fd);
	ready_fd = -1;

	while (!sv.stop) {
		struct pollfd fds[2 + JOB_MAX_VMS + 4];
		int timeout_ms;
		unsigned n = 2;
		_cleanup_free_ char *why = NULL;

		fds[0] = (struct pollfd){.fd = sv.signal_fd, .events = POLLIN};
		fds[1] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
		n += job_poll_fds(sv.job, fds + 2, ARRAY_SIZE(fds) - 2, &timeout_ms);
		if (poll(fds, n, -1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents) {
			boot_cancelled(&sv);
			break;
		}
		if (job_check_vms(sv.job, &why) < 0) {
			/* A VM died: the job cannot run MPI any more; say so to mpirun. */
			_cleanup_free_ char *path = fs_path_join(sj->dir, "error");

			log_error("job %u: %s", sj->id, why);
			if (path)
				fs_write_atomic(path, why, strlen(why), 0644);
			break;
		}
		if (fds[1].revents) {
			_cleanup_close_ int cfd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

			if (cfd >= 0)
				serve_client(&sv, cfd);
		}
	}
	/* A VM died: wait for the epilog's SIGTERM, answering nothing, so that the job's
	 * record of what failed stays until then. */
	stop_job(&sv);
	log_info("job %u: VMs stopped on %s (boot %.2f s, run %.2f s, shutdown %.2f s)", sj->id,
		 sj->node, sv.boot_s, sv.run_s, sv.shutdown_s);
	goto out;
fail:
	code = 1;
	if (ready_fd >= 0) {
		const char *m = error ? error : "the VMs could not be started";

		(void)!write(ready_fd, m, strlen(m));
	}
out:
	if (sock)
		unlink(sock);
	job_free(sv.job);
	manifest_free(sv.image);
	store_close(store);
	if (sv.signal_fd >= 0)
		close(sv.signal_fd);
	return code;
}

/* Holds the job's lock file (flock): the supervisor keeps it for its life; the epilog knows
 * by it whether a supervisor still runs. */
static int open_lock(const struct slurm_job *sj, int *ret_fd)
{
	_cleanup_free_ char *path = fs_path_join(sj->dir, "lock");
	int fd;

	if (!path)
		return -ENOMEM;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

static int prolog_main(int argc, char **argv)
{
	struct slurm_job sj;
	_cleanup_free_ char *error = NULL, *pidpath = NULL, *logpath = NULL;
	_cleanup_close_ int lock_fd = -1;
	char buf[4096], pid_text[32];
	int ready[2], r, code;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	code = parse(argc, argv, &sj, true);
	if (code)
		return code;
	if (fs_mkdir_p(sj.state_dir, 0755) < 0 || chmod(sj.state_dir, 0755) < 0) {
		log_error("job %u: state folder %s: %m", sj.id, sj.state_dir);
		return 1;
	}
	fs_rm_rf(sj.dir); /* a requeued job's earlier run */
	if (mkdir(sj.dir, 0755) < 0) {
		log_error("job %u: state folder %s: %m", sj.id, sj.dir);
		return 1;
	}
	r = check_request(&sj, &error);
	if (r == 0 && sj.n_hosts > 1)
		r = cluster_setup(&sj, &error);
	if (r == 0)
		r = present(&sj, &error);
	if (r < 0) {
		record_failure(&sj, error ? error : strerror(-r));
		job_done(&sj);
		return 0;
	}
	pidpath = fs_path_join(sj.dir, "pid");
	logpath = fs_path_join(sj.dir, "supervisor.log");
	if (!pidpath || !logpath || pipe2(ready, O_CLOEXEC) < 0)
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		int log_fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

		close(ready[0]);
		/* The lock, held for the supervisor's life, on a descriptor of its own far from
		 * the low numbers that the spawning code dup2()s onto. */
		if (open_lock(&sj, &lock_fd) < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0 ||
		    fcntl(lock_fd, F_DUPFD_CLOEXEC, 200) < 0)
			_exit(1);
		setsid();
		if (null >= 0)
			dup2(null, STDIN_FILENO);
		if (log_fd >= 0) {
			dup2(log_fd, STDOUT_FILENO);
			dup2(log_fd, STDERR_FILENO);
		}
		_exit(supervise(&sj, ready[1]));
	}
	close(ready[1]);
	snprintf(pid_text, sizeof(pid_text), "%d\n", (int)pid);
	fs_write_atomic(pidpath, pid_text, strlen(pid_text), 0644);
	while (got < sizeof(buf) - 1 &&
	       ((n = read(ready[0], buf + got, sizeof(buf) - 1 - got)) > 0 ||
		(n < 0 && errno == EINTR)))
		if (n > 0)
			got += (size_t)n;
	close(ready[0]);
	buf[got] = 0;
	if (strcmp(buf, "ok") == 0) {
		job_done(&sj);
		return 0;
	}
	/* The supervisor failed (and undid its VMs) or died; it is gone or going. */
	waitpid(pid, NULL, 0);
	record_failure(&sj, got ? buf : "the job's supervisor died while the VMs booted");
	job_done(&sj);
	return 0;
}

/* Stops the job's supervisor if one still holds the lock: SIGTERM (it shuts the VMs down and
 * writes the timings), SIGKILL after STOP_WAIT_MS (its VMs die with it). 0, or -EBUSY when
 * it would not go. */
static int stop_supervisor(const struct slurm_job *sj)
{
	_cleanup_free_ char *pidpath = fs_path_join(sj->dir, "pid"), *text = NULL;
	_cleanup_close_ int lock_fd = -1, pidfd = -1;
	struct pollfd p;
	pid_t pid;

	if (!pidpath || open_lock(sj, &lock_fd) < 0)
		return 0; /* no state: the prolog made nothing */
	if (flock(lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0; /* no supervisor */
	if (fs_read_file_nofollow(pidpath, 64, &text, NULL) < 0 || (pid = atoi(text)) <= 1)
		return -EBUSY;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		return errno == ESRCH ? 0 : -errno;
	/* The pid is still the lock's holder: the lock is still held now that we hold a pidfd
	 * (a reused pid cannot hold our lock). */
	if (flock(lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 0);
	p = (struct pollfd){.fd = pidfd, .events = POLLIN};
	if (poll(&p, 1, STOP_WAIT_MS) == 1)
		return 0;
	log_error("job %u: the supervisor (pid %d) did not stop within %d s: killed", sj->id,
		  (int)pid, STOP_WAIT_MS / 1000);
	syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
	p = (struct pollfd){.fd = pidfd, .events = POLLIN};
	return poll(&p, 1, 5000) == 1 ? 0 : -EBUSY;
}

static int epilog_main(int argc, char **argv)
{
	struct slurm_job sj;
	_cleanup_free_ char *error = NULL;
	json_t *req, *reply = NULL;
	int code, r;

	code = parse(argc, argv, &sj, false);
	if (code)
		return code;
	code = 0;
	if (stop_supervisor(&sj) < 0)
		code = 1;
	/* What a killed supervisor left (its QEMUs died with it; their folders stay). */
	r = job_clean_stale(sj.run_dir);
	if (r > 0)
		log_info("job %u: removed what %d killed job%s left", sj.id, r, r == 1 ? "" : "s");
	req = json_pack("{s:s, s:s}", "op", "release", "job", sj.id_str);
	r = req ? node_client_local(sj.socket, req, 30000, &reply, &error) : -ENOMEM;
	json_decref(req);
	json_decref(reply);
	if (r < 0)
		/* The daemon is down: its pins are state it reloads; nothing of the job is
		 * left on the node, so the node stays in service. */
		log_error("job %u: releasing the image on %s: %s", sj.id, sj.socket,
			  error ? error : strerror(-r));
	if (fs_rm_rf(sj.dir) < 0 && fs_exists(sj.dir)) {
		log_error("job %u: removing %s: %m", sj.id, sj.dir);
		code = 1;
	}
	return code;
}

int cli_slurm_main(struct cli_context *ctx, int argc, char **argv)
{
	(void)ctx;
	/* slurmd runs the prolog without PATH (measured: Slurm 22.05), and the runtime runs
	 * `ip`, `bridge` and Slurm's clients by name: root's usual search path, never one a
	 * job's environment could set. */
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	if (argc >= 2 && strcmp(argv[1], "prolog") == 0)
		return prolog_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "epilog") == 0)
		return epilog_main(argc - 1, argv + 1);
	fprintf(
	    argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr,
	    "usage: vmhpc slurm prolog|epilog --node NODE --socket PATH --run-dir DIR "
	    "--state-dir DIR --key FILE --image REF [--vms-per-node N] [--vcpus N] [--mem SIZE]\n"
	    "  run by the SPANK plugin vmhpc.so as root on every node of a job (docs/slurm.md)\n");
	return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
