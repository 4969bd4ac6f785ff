/* A job's VMs on this node: the runtime library's narrow interface, called by `vmhpc run`
 * (and later by the node daemon and the Slurm plugin): boot the VMs of one image, wait
 * until each reports ready, run commands in them, shut them down, and undo everything.
 * Every process is recorded in the job's runstate before it is started, and the job's
 * network lives in namespaces the kernel removes with the last QEMU, so a killed owner
 * leaves nothing `vmhpc cleanup` cannot find. Nothing here assumes it runs inside
 * `vmhpc run`; docs/runtime.md has the contract. */
#pragma once

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "guest/client.h"
#include "store/manifest.h"
#include "store/store.h"
#include "util/log.h"
#include "vm/accel.h"

#define JOB_MAX_VMS 64 /* on one node */
/* The guest's floor: kernel, initramfs unpacked, the writable overlay's first pages. */
#define JOB_MIN_MEM_MB 128
#define JOB_EXEC_PORT  7000
/* The job's subnet, 10.77.0.0/16: the VM with job-wide index g is 10.77.((g+1)>>8).((g+1)&255).
 * A job of at most 254 VMs keeps the /24 it always had (10.77.0.1 ..); a larger cluster job
 * uses the /16. */
#define JOB_SUBNET_PREFIX "10.77."
/* VMs of one job over all its nodes: what the /16 and the guest's host table hold. */
#define JOB_MAX_VMS_TOTAL 4096
#define JOB_MAX_NODES	  JOB_MAX_VMS_TOTAL
/* The guests' MTU in a cluster job: the node network's 1500 less VXLAN's 50 bytes
 * (docs/vm.md "The job network across nodes"). */
#define JOB_CLUSTER_MTU 1450
#define JOB_VXLAN_PORT	4789

/* A job whose VMs span several nodes (docs/runtime.md "Cluster jobs"); job_config.cluster ==
 * NULL: this node only. Every node runs config.n_vms VMs; the VM with local index i on node
 * k has the job-wide index g = k * n_vms + i and the name "vm<g>". Needs root (the VXLAN
 * device is made in the node's network namespace). */
struct job_cluster {
	unsigned node_index;	       /* this node's place in the job's node list, 0-based */
	unsigned n_nodes;	       /* 1 .. JOB_MAX_NODES */
	const char *const *node_addrs; /* underlay IPv4 address of each node, n_nodes entries */
	uint32_t vni;		       /* VXLAN network id of the job's segment, 1 .. 2^24-1 */
	uint16_t vxlan_port;	       /* UDP port; 0: JOB_VXLAN_PORT (4789) */
	const char *token_hex; /* the job's exec token, the same on every node (64 hex digits) */
};

struct job_config {
	struct store *store;
	const struct manifest *image;
	const char *cache_dir; /* node cache: materialized parts, accelerator probe */
	const char *run_dir;   /* runstate (runstate_default_dir()) */
	unsigned n_vms;
	unsigned vcpus;
	unsigned mem_mb;
	const char *workdir; /* shared at the same path in every VM; NULL: no share */
	dev_t workdir_dev;   /* what workdir was when checked: another directory is refused */
	ino_t workdir_ino;
	uid_t owner_uid; /* the submitting user: the share runs with their rights only */
	gid_t owner_gid;
	const char *accel; /* "kvm" or "tcg"; NULL: probe */
	/* Without CAP_SYS_ADMIN (the caller decides, e.g. geteuid() != 0): the job's private
	 * network namespace is owned by a user namespace of its own (net/netns.h). */
	bool unprivileged;
	int boot_timeout_ms;
	/* Called while VMs come up: how many are ready of n_vms. May be NULL. */
	void (*progress)(unsigned ready, unsigned n_vms, void *userdata);
	/* Polled while VMs come up: true stops the boot with -ECANCELED. May be NULL. */
	bool (*cancelled)(void *userdata);
	/* The runtime's own messages (debug detail), for the caller to print or drop; the
	 * library never writes to stderr itself. May be NULL. */
	void (*log)(enum log_level level, const char *message, void *userdata);
	void *userdata;
	/* false: the VMs die with the thread that boots them (vmhpc run: a killed run leaves
	 * nothing). true: they outlive it, for job_detach to hand them to a supervisor (the
	 * node daemon, a Slurm prolog); see docs/vm.md "Who owns a job's VMs". */
	bool detachable;
	/* The shared-memory channel between the job's VMs (docs/bypass.md): with n_vms >= 2,
	 * a region in the job directory mapped into every VM as ivshmem-plain. In a job across
	 * nodes each node's VMs share a region of their own (its key differs per node), and
	 * VMs of different nodes talk over the network. */
	bool shm;
	/* NULL: a job of this node alone. Else copied by job_start (its strings too). */
	const struct job_cluster *cluster;
};

struct job_vm_stats {
	double ready_s;		/* from QEMU's start to the guest's ready report */
	uint64_t guest_used_kb; /* MemTotal - MemAvailable reported with ready */
	uint64_t guest_total_kb;
	uint64_t host_rss_kb; /* QEMU's resident memory now */
	uint64_t host_pss_kb; /* QEMU's proportional share (shared pages split) */
};

/* What a guest says of its job after (or while) it runs: job_vm_usage. */
struct job_vm_usage {
	uint64_t guest_used_kb;	  /* MemTotal - MemAvailable now */
	uint64_t job_mem_peak_kb; /* the job's processes together at their peak; 0: unknown */
	uint64_t oom_kills;	  /* processes the guest kernel killed for lack of memory */
	bool known;		  /* false: an older guest, which reports none of the above */
};

struct job;

/* 0 when image's vmhpc-init speaks this runtime's exec protocol (metadata guest_protocol),
 * else -EPROTO with *ret_error (caller frees) saying to rebuild it. job_start checks it. */
int job_check_image(const struct manifest *image, char **ret_error);

/* Boots the job's VMs and waits until all are ready (job_start, then poll + job_step). On
 * failure everything made so far is undone and *ret_error (caller frees) says what failed;
 * when a guest did not come up it ends with the last lines of its console. Free with
 * job_free(). */
int job_boot(const struct job_config *config, struct job **ret_job, char **ret_error);

/* The non-blocking form, for an event loop running many jobs: starts every VM and returns
 * at once; then poll what job_poll_fds gives and call job_step until it returns 1. config
 * is copied (its strings and store must outlive the boot). Free with job_free(). */
int job_start(const struct job_config *config, struct job **ret_job, char **ret_error);

/* Fills up to max pollfds the job waits on (control ports while booting; every QEMU's
 * pidfd) and *ret_timeout_ms (-1: none) after which job_step is due anyway; returns how
 * many it filled. */
unsigned job_poll_fds(const struct job *j, struct pollfd *fds, unsigned max, int *ret_timeout_ms);

/* Advances the boot after a poll: 1 when every VM is ready, 0 while not yet, <0 when it
 * failed (a VM stopped, broke its control port or missed the boot deadline; *ret_error,
 * caller frees). The job stays to be freed by the caller. */
int job_step(struct job *j, char **ret_error);

/* For the running job: 0 while every VM's QEMU runs, else -EIO with *ret_error (caller
 * frees) naming the first VM that stopped and how. */
int job_check_vms(struct job *j, char **ret_error);

/* Hands the running job over: writes its state (job.json in the job directory), frees j
 * without stopping anything and returns in *ret_lock_fd the descriptor holding the job's
 * lock (pass it to the supervisor, e.g. over SCM_RIGHTS, or let job_attach take the lock
 * after this process ends). Only for jobs booted with config.detachable (-EPERM else). */
int job_detach(struct job *j, int *ret_lock_fd);

/* Takes charge of a detached job: lock_fd is the lock job_detach returned (this call owns
 * it), or -1 to take the lock now (-EBUSY while another process holds it). Reconnects to
 * every VM (control port, QMP). Free with job_free() (which stops everything) or detach it
 * again. */
int job_attach(const char *run_dir, const char *job_id, int lock_fd, struct job **ret_job,
	       char **ret_error);

/* The job id, its directory, the accelerator in use, and the materialize time. */
const char *job_id(const struct job *j);
const char *job_dir(const struct job *j);
enum accel job_accel(const struct job *j);
double job_materialize_s(const struct job *j);
/* The name of this node's VM index vm: "vm<g>" with g its job-wide index (= vm on a job of
 * one node); NULL past the last. */
const char *job_vm_name(const struct job *j, unsigned vm);

/* Every VM of the job on every node: n_nodes * n_vms (n_vms for a job of one node). */
unsigned job_vm_count_total(const struct job *j);
/* The name of the VM with job-wide index g ("vm<g>"), NULL past the last: the host list of
 * an MPI launch over the whole job, started in job-wide VM 0 (on node 0). */
const char *job_vm_name_total(const struct job *j, unsigned g);
/* This node's place in the job (0 for a job of one node) and the job's number of nodes. */
unsigned job_node_index(const struct job *j);
unsigned job_node_count(const struct job *j);
/* The job's VXLAN network id, 0 for a job of one node. */
uint32_t job_vni(const struct job *j);
/* What a launch after a handoff needs (kept in job.json): each VM's VCPUs (the MPI slots;
 * 0 from an older job.json), the job folder (NULL: none), the submitting user. */
unsigned job_vcpus(const struct job *j);
const char *job_workdir(const struct job *j);
void job_owner(const struct job *j, uid_t *ret_uid, gid_t *ret_gid);
/* The address of job-wide VM g in the job subnet into out ("10.77.0.1"); for a test or a
 * launcher that needs it. */
void job_vm_address(unsigned g, char out[20]);

/* Runs one command in VM index vm through its control port (see exec_client_run) and
 * waits for it; -ECHILD (with *ret_error naming it) when a VM of the job stopped meanwhile:
 * the command cannot finish then. */
int job_exec(struct job *j, unsigned vm, const struct frame_exec *req,
	     const struct exec_client_io *io, int timeout_ms, int *ret_status, char **ret_error);

/* The same without blocking, for an event loop (one command per VM at a time): _start
 * greets the guest if needed (a round trip on its control port) and queues the command;
 * _fds gives what to poll and for how long; _step, after poll(), returns 1 when the
 * command ended (*ret_status), 0 while it runs, or job_exec's errors (-ECHILD: a VM of
 * the job stopped, named in *ret_error). io's fds must stay valid until then. */
int job_exec_start(struct job *j, unsigned vm, const struct frame_exec *req,
		   const struct exec_client_io *io, int timeout_ms, char **ret_error);
unsigned job_exec_fds(const struct job *j, unsigned vm, struct pollfd *fds, unsigned max,
		      int *ret_timeout_ms);
int job_exec_step(struct job *j, unsigned vm, const struct pollfd *fds, unsigned n, int *ret_status,
		  char **ret_error);

/* The signal job_exec last forwarded to the command in VM index vm (0: none). */
int job_forwarded_signal(const struct job *j, unsigned vm);

/* Fills the VM's memory figures (host side measured now). */
int job_vm_stats(struct job *j, unsigned vm, struct job_vm_stats *ret);

/* Asks VM vm's guest, on its control port, for its memory now, the job's peak and its
 * out-of-memory kills (no command may be running on that port). 0, or -errno when the
 * guest does not answer within timeout_ms. */
int job_vm_usage(struct job *j, unsigned vm, int timeout_ms, struct job_vm_usage *ret);

/* Asks every guest to power off and waits up to timeout_ms for QEMU to exit (then kills
 * it); *ret_seconds is the wall time it took. */
int job_shutdown(struct job *j, int timeout_ms, double *ret_seconds);

/* Kills whatever still runs, lets go of the job's network, removes sockets and the job
 * directory, frees j;
 * NULL is a no-op. */
void job_free(struct job *j);

/* Removes what jobs whose owner died left on this node; returns how many. */
int job_clean_stale(const char *run_dir);
