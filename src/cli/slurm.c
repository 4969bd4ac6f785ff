/* `vmhpc slurm`: the job as the plugin and Slurm describe it, what the prolog, the supervisor
 * and the epilog share, and the dispatch to them (slurm.h). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/slurm.h"
#include "node/hostlist.h"
#include "slurm/options.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"

void slurm_job_done(struct slurm_job *sj)
{
	for (size_t i = 0; sj->node_addrs && i < sj->n_hosts; i++)
		free(sj->node_addrs[i]);
	free(sj->node_addrs);
	explicit_bzero(sj->token_hex, sizeof(sj->token_hex));
	hostlist_free(sj->hosts, sj->n_hosts);
	free(sj->store_dir);
	free(sj->image_name);
	free(sj->source);
	free(sj->image_digest_ref);
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

int slurm_job_parse(int argc, char **argv, struct slurm_job *sj, bool need_env)
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
					     {"shm", required_argument, NULL, 'H'},
					     {"boot-timeout-ms", required_argument, NULL, 'b'},
					     {"peers", required_argument, NULL, 'p'},
					     {"registry-insecure", no_argument, NULL, 'I'},
					     {0}};
	char err[256];
	uint32_t u;
	int c;

	*sj = (struct slurm_job){.vms = 1,
				 .mem_mb = SLURMOPT_DEFAULT_MEM_MB,
				 .shm = SLURMOPT_SHM_AUTO,
				 .boot_timeout_ms = 120000};
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
		case 'H':
			if (slurmopt_parse_shm(optarg, &sj->shm, err, sizeof(err)) < 0)
				goto bad;
			break;
		case 'b':
			sj->boot_timeout_ms = atoi(optarg);
			break;
		case 'p':
			sj->peers = *optarg ? optarg : NULL;
			break;
		case 'I':
			sj->registry_insecure = true;
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
void slurm_job_fail(const struct slurm_job *sj, const char *message)
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

/* Holds the job's lock file (flock): the supervisor keeps it for its life; the epilog knows
 * by it whether a supervisor still runs. */
int slurm_job_open_lock(const struct slurm_job *sj, int *ret_fd)
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

int cli_slurm_main(struct cli_context *ctx, int argc, char **argv)
{
	(void)ctx;
	/* slurmd runs the prolog without PATH (measured: Slurm 22.05), and the runtime runs
	 * `ip`, `bridge` and Slurm's clients by name: root's usual search path, never one a
	 * job's environment could set. */
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	if (argc >= 2 && strcmp(argv[1], "prolog") == 0)
		return slurm_prolog_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "epilog") == 0)
		return slurm_epilog_main(argc - 1, argv + 1);
	fprintf(
	    argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr,
	    "usage: vmhpc slurm prolog|epilog --node NODE --socket PATH --run-dir DIR "
	    "--state-dir DIR --key FILE --image REF [--vms-per-node N] [--vcpus N] [--mem SIZE]\n"
	    "  run by the SPANK plugin vmhpc.so as root on every node of a job (docs/slurm.md)\n");
	return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
