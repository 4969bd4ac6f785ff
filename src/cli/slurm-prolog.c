/* `vmhpc slurm prolog` (slurm.h): checks the request and the user's right to the image
 * (slurm-access.c), has the local node daemon make the image present, forks the job's supervisor
 * and waits until its VMs are ready or failed. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/slurm.h"
#include "node/client.h"
#include "node/hostlist.h"
#include "slurm/options.h"
#include "slurm/token.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/time.h"
#include "vm/job.h"

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

	/* By digest: what the user was allowed to read (slurm_image_authorize), nothing else. */
	req = json_pack("{s:s, s:s, s:s, s:s}", "op", "present", "ref", sj->image_digest_ref, "job",
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
				 error ? node_error_past_name(sj->node, error) : strerror(-r));
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

int slurm_prolog_main(int argc, char **argv)
{
	struct slurm_job sj;
	_cleanup_free_ char *error = NULL, *pidpath = NULL, *logpath = NULL, *pinned = NULL;
	_cleanup_close_ int lock_fd = -1;
	char buf[4096], pid_text[32];
	int ready[2], r, code;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	code = slurm_job_parse(argc, argv, &sj, true);
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
	if (r == 0)
		r = slurm_image_authorize(&sj, &error);
	if (r == 0 && sj.n_hosts > 1)
		r = cluster_setup(&sj, &error);
	if (r == 0)
		r = present(&sj, &error);
	if (r < 0) {
		slurm_job_fail(&sj, error ? error : strerror(-r));
		slurm_job_done(&sj);
		return 0;
	}
	/* The image is pinned for the job: the epilog must see its release through. */
	pinned = fs_path_join(sj.dir, SLURM_PINNED_FILE);
	if (!pinned || fs_write_atomic(pinned, "", 0, 0644) < 0)
		log_error("job %u: writing %s: %m", sj.id, pinned ? pinned : sj.dir);
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
		if (slurm_job_open_lock(&sj, &lock_fd) < 0 ||
		    flock(lock_fd, LOCK_EX | LOCK_NB) < 0 ||
		    fcntl(lock_fd, F_DUPFD_CLOEXEC, 200) < 0)
			_exit(1);
		setsid();
		if (null >= 0)
			dup2(null, STDIN_FILENO);
		if (log_fd >= 0) {
			dup2(log_fd, STDOUT_FILENO);
			dup2(log_fd, STDERR_FILENO);
		}
		_exit(slurm_supervise(&sj, ready[1]));
	}
	close(ready[1]);
	snprintf(pid_text, sizeof(pid_text), "%d\n", (int)pid);
	fs_write_atomic(pidpath, pid_text, strlen(pid_text), 0644);
	n = fs_read_full(ready[0], buf, sizeof(buf) - 1);
	got = n > 0 ? (size_t)n : 0;
	close(ready[0]);
	buf[got] = 0;
	if (strcmp(buf, "ok") == 0) {
		slurm_job_done(&sj);
		return 0;
	}
	/* The supervisor failed (and undid its VMs) or died; it is gone or going. */
	waitpid(pid, NULL, 0);
	slurm_job_fail(&sj, got ? buf : "the job's supervisor died while the VMs booted");
	slurm_job_done(&sj);
	return 0;
}
