/* Drives a job across nodes the way the Slurm prolog and `vmhpc mpirun` will, one node at a
 * time (tests/integration/job-cluster.sh runs it inside each node's network namespace):
 *   job-cluster boot STORE CACHE RUNDIR IMAGE N_VMS NODE_INDEX ADDR,ADDR,.. VNI[:PORT] TOKEN
 *               WORKDIR
 *       (ADDR list "-": a job of this node alone, no cluster)
 *       boots this node's VMs of the job, detaches them, prints "job ID" and exits
 *   job-cluster mpirun RUNDIR ID WORKDIR PROGRAM [ARGS...]
 *       on node 0: attaches and runs PROGRAM with MPICH over every VM of the job on every
 *       node, from job-wide VM 0; exits with its status
 *   job-cluster exec RUNDIR ID VM COMMAND
 *       runs `sh -c COMMAND` in this node's VM index VM; exits with its status
 *   job-cluster stop RUNDIR ID
 *       attaches, shuts the VMs down and removes the job
 * Prints what it did; messages on stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/launcher.h"
#include "store/catalog.h"
#include "store/manifest.h"
#include "store/store.h"
#include "vm/job.h"

static void die(const char *what, int r, const char *error)
{
	fprintf(stderr, "job-cluster: %s: %s\n", what, error ? error : strerror(-r));
	exit(1);
}

static int boot(char **argv)
{
	const char **addrs = calloc(JOB_MAX_NODES, sizeof(*addrs));
	char *list = strdup(argv[8]), *save = NULL, *error = NULL;
	unsigned n_addrs = 0;
	struct job_cluster cl = {.node_index = (unsigned)atoi(argv[7]),
				 .vni = (uint32_t)strtoul(argv[9], NULL, 10),
				 .token_hex = argv[10]};
	struct job_config cfg = {.cache_dir = argv[3],
				 .run_dir = argv[4],
				 .n_vms = (unsigned)atoi(argv[6]),
				 .vcpus = 1,
				 .mem_mb = 256,
				 .boot_timeout_ms = 300000,
				 .detachable = true,
				 .cluster = &cl};
	struct store *s = NULL;
	struct manifest *m = NULL;
	struct job *j = NULL;
	struct stat st;
	int r, lock_fd;
	char *port = strchr(argv[9], ':');

	if (port)
		cl.vxlan_port = (uint16_t)atoi(port + 1);
	for (char *a = strtok_r(list, ",", &save); a && n_addrs < JOB_MAX_NODES;
	     a = strtok_r(NULL, ",", &save))
		addrs[n_addrs++] = a;
	cl.n_nodes = n_addrs;
	cl.node_addrs = addrs;
	/* "-": a job of this node alone (the same runtime without cluster), for comparison. */
	if (strcmp(argv[8], "-") == 0)
		cfg.cluster = NULL;
	if (stat(argv[11], &st) < 0)
		die("the job folder", -errno, NULL);
	cfg.workdir = argv[11];
	cfg.workdir_dev = st.st_dev;
	cfg.workdir_ino = st.st_ino;
	cfg.owner_uid = getuid();
	cfg.owner_gid = getgid();
	r = store_open(argv[2], &s);
	if (r < 0)
		die("opening the store", r, NULL);
	r = catalog_load(s, argv[5], 0, &m, &error);
	if (r < 0)
		die("loading the image", r, error);
	cfg.store = s;
	cfg.image = m;
	r = job_boot(&cfg, &j, &error);
	if (r < 0)
		die("booting", r, error);
	printf("node %u: job %s, VMs", job_node_index(j), job_id(j));
	for (unsigned i = 0; job_vm_name(j, i); i++)
		printf(" %s", job_vm_name(j, i));
	printf(" of %u, VNI %u\n", job_vm_count_total(j), job_vni(j));
	printf("job %s\n", job_id(j));
	fflush(stdout);
	r = job_detach(j, &lock_fd);
	if (r < 0)
		die("detaching", r, NULL);
	/* The lock goes with us: the next process takes it with job_attach(-1). */
	close(lock_fd);
	free(list);
	free(addrs);
	return 0;
}

static struct job *attach(const char *run_dir, const char *id)
{
	struct job *j = NULL;
	char *error = NULL;
	int r = job_attach(run_dir, id, -1, &j, &error);

	if (r < 0)
		die("attaching", r, error);
	return j;
}

static int run_cmd(struct job *j, unsigned vm, const struct frame_exec *req)
{
	struct exec_client_io io = {
	    .stdin_fd = -1, .stdout_fd = 1, .stderr_fd = 2, .signal_fd = -1};
	char *error = NULL;
	int status = 0, r = job_exec(j, vm, req, &io, 600000, &status, &error);

	if (r < 0)
		die("running the command", r, error);
	return status;
}

static int mpirun(int argc, char **argv)
{
	struct job *j = attach(argv[2], argv[3]);
	unsigned total = job_vm_count_total(j);
	const char **hosts = calloc(total, sizeof(*hosts));
	/* All from job.json: what the booting process knew. */
	struct launcher_job lj = {.mpi = LAUNCHER_MPICH,
				  .hosts = hosts,
				  .n_hosts = total,
				  .slots = job_vcpus(j),
				  .ranks = total * job_vcpus(j),
				  .label = true,
				  .argc = argc - 5,
				  .argv = argv + 5};
	struct launcher_command *cmd = NULL;
	struct frame_exec req = {.cwd = (char *)job_workdir(j)};
	uid_t uid;
	gid_t gid;
	int r, status;

	job_owner(j, &uid, &gid);
	req.uid = uid;
	req.gid = gid;
	if (!req.cwd || strcmp(req.cwd, argv[4]) != 0)
		die("the job folder in job.json", -EINVAL, req.cwd);
	if (job_node_index(j) != 0)
		die("mpirun starts on node 0", -EINVAL, NULL);
	for (unsigned g = 0; g < total; g++)
		hosts[g] = job_vm_name_total(j, g);
	r = launcher_command_new(&lj, &cmd);
	if (r < 0)
		die("building the launcher's command", r, NULL);
	req.argv = cmd->argv;
	req.envp = cmd->envp;
	/* Job-wide VM 0 is this node's VM 0. */
	status = run_cmd(j, 0, &req);
	launcher_command_free(cmd);
	free(hosts);
	/* Detach again: the job stays for `stop` (the epilog). */
	{
		int lock_fd;

		r = job_detach(j, &lock_fd);
		if (r < 0)
			die("detaching", r, NULL);
		close(lock_fd);
	}
	return status;
}

static int exec_one(char **argv)
{
	struct job *j = attach(argv[2], argv[3]);
	char *args[] = {"/bin/sh", "-c", argv[5], NULL},
	     *env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
	struct frame_exec req = {.cwd = "/", .argv = args, .envp = env};
	int status = run_cmd(j, (unsigned)atoi(argv[4]), &req), lock_fd, r;

	r = job_detach(j, &lock_fd);
	if (r < 0)
		die("detaching", r, NULL);
	close(lock_fd);
	return status;
}

static int stop(char **argv)
{
	struct job *j = attach(argv[2], argv[3]);

	job_shutdown(j, 20000, NULL);
	job_free(j);
	printf("stopped job %s\n", argv[3]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 12 && strcmp(argv[1], "boot") == 0)
		return boot(argv);
	if (argc >= 6 && strcmp(argv[1], "mpirun") == 0)
		return mpirun(argc, argv);
	if (argc == 6 && strcmp(argv[1], "exec") == 0)
		return exec_one(argv);
	if (argc == 4 && strcmp(argv[1], "stop") == 0)
		return stop(argv);
	fprintf(stderr, "usage: see the head of tests/integration/job-cluster.c\n");
	return 2;
}
