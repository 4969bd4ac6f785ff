/* `vmhpc slurm prolog|epilog`: what the SPANK plugin (src/slurm/spank.c) runs as root on
 * every node of a job submitted with --vm-image, and the job's supervisor on that node.
 * docs/slurm.md. One file per part, this header their whole interface:
 *
 *   slurm.c            the job as the plugin and Slurm describe it, the job's record of a
 *                      failure, its lock, and the `vmhpc slurm` dispatch;
 *   slurm-prolog.c     prolog: checks the request against what Slurm gave the job on this
 *                      node, asks the local `vmhpc node` to make the image present (the tree
 *                      over the job's nodes, pinned for the job), then forks the supervisor
 *                      and waits until it says the VMs are ready or failed. A failure that
 *                      was cleaned up is recorded (the job's AdminComment, an error file for
 *                      `vmhpc mpirun`), the job is cancelled, and the prolog exits 0 so that
 *                      Slurm does not drain the node for it;
 *   slurm-supervisor.c the supervisor (its own session, so it outlives the prolog): boots
 *                      this node's VMs with the runtime library, owns them, serves `vmhpc
 *                      mpirun` on the job's control socket (src/slurm/control.h) and, on
 *                      SIGTERM, shuts them down and writes the job's timings;
 *   slurm-epilog.c     epilog: stops the supervisor (SIGTERM, then SIGKILL; its VMs die with
 *                      it), cleans what a killed supervisor left in the runtime folder,
 *                      releases the image's pin on the node daemon, removes the job's state
 *                      folder. Exit 1 only when something could not be undone.
 *
 * Slurm's prolog environment gives the job (SLURM_JOB_ID, _UID, _GID, _WORK_DIR,
 * SLURM_NODELIST, SLURM_JOB_CPUS_PER_NODE); the plugin gives the options and its paths on
 * the command line. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "slurm/token.h"

/* The supervisor's copy of the job's timings in the job's state folder, which the epilog
 * hands to the node daemon's metrics (the user's copy is vmhpc-<job>.<node>.json in the job
 * folder). */
#define SLURM_TIMINGS_FILE "timings.json"
/* In the job's state folder once the node daemon pinned the image for the job: an epilog
 * whose release fails then notes it for a later epilog (slurm-epilog.c). */
#define SLURM_PINNED_FILE "pinned"

/* One job on this node, as the plugin, Slurm and the node daemon describe it. */
struct slurm_job {
	/* from the plugin */
	const char *node, *socket, *run_dir, *state_dir, *key, *image, *peers;
	unsigned vms, vcpus, mem_mb;
	bool vcpus_set;
	int shm;		/* --vm-shm: 1 on, 0 off, SLURMOPT_SHM_AUTO */
	bool registry_insecure; /* plain HTTP to the image's registry */
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
	/* from the registry, asked as the job's user: REGISTRY/REPO@sha256:... */
	char *image_digest_ref;
	/* from the node daemon's present */
	char *store_dir, *image_name;
	uint32_t image_version;
	double distribution_s;
	long long bytes_received;
	char *source;
};

/* Fills *sj from the plugin's command line and, with need_env, Slurm's prolog environment
 * (strings point into argv and the environment). 0, or the exit code 2 with the reason
 * logged (the plugin and this binary disagree: an installation fault). */
int slurm_job_parse(int argc, char **argv, struct slurm_job *sj, bool need_env);

/* Frees what the prolog added to *sj (hosts, addresses, the node daemon's answers). */
void slurm_job_done(struct slurm_job *sj);

/* A failure the prolog cleaned up: logged, written where `vmhpc mpirun` and the admin look
 * (the job's error file, its AdminComment), and the job cancelled. */
void slurm_job_fail(const struct slurm_job *sj, const char *message);

/* Asks the image's registry, as the job's user and with their own credentials, for the
 * manifest digest of sj->image: 0 with sj->image_digest_ref set (REGISTRY/REPO@DIGEST, freed
 * by slurm_job_done), or -EACCES (the user may not read it), -ENOENT, ... with the message in
 * *ret_error (caller frees). */
int slurm_image_authorize(struct slurm_job *sj, char **ret_error);

/* Opens (creating) the job's lock file in sj->dir; the supervisor holds it (flock) for its
 * life. 0 with the descriptor in *ret_fd (caller closes), or -errno. */
int slurm_job_open_lock(const struct slurm_job *sj, int *ret_fd);

/* The supervisor's body, in the forked child: boots, writes "ok" or the reason of a failure
 * to ready_fd (and closes it), serves until SIGTERM, shuts the VMs down. Returns the
 * process's exit code. */
int slurm_supervise(struct slurm_job *sj, int ready_fd);

/* `vmhpc slurm prolog ARGS` and `vmhpc slurm epilog ARGS` (argv[0] is the verb); each
 * returns the process exit code. */
int slurm_prolog_main(int argc, char **argv);
int slurm_epilog_main(int argc, char **argv);
