/* What a running job owns on this node, written down before it is created, so that
 * whatever kills the job's owner (SIGKILL included) leaves a list someone else can undo.
 * Layout: <run_dir>/jobs/<job id>/{lock, resources, ...sockets and logs}. The owner
 * holds `lock` (flock) for its life; a job directory whose lock is free is stale.
 *
 * Nothing under run_dir is trusted: run_dir and jobs/ must be real directories (not
 * symlinks) owned by the caller with mode 0700, or they are refused; cleanup removes
 * only job directories owned by the caller, kills only a recorded process that is still
 * the same process, belongs to the caller (any, for root) and is a QEMU or a virtiofsd,
 * and deletes only links named after that job ("vmhpc<id>b", "vmhpc<id>t<n>"). */
#pragma once

#include <sys/types.h>

#define RUNSTATE_JOB_ID_LEN 8 /* hex chars of a job id */

struct runstate;

/* The default run directory: /run/vmhpc for root, else $XDG_RUNTIME_DIR/vmhpc or
 * /tmp/vmhpc-<uid> (static storage). */
const char *runstate_default_dir(void);

/* Creates a new job directory with a fresh random job id (8 hex chars) and takes its
 * lock, making run_dir and jobs/ (0700) when missing. owner is the caller's uid (usually
 * geteuid()): run_dir and jobs/ must be owned by it. -EPERM for a folder of another
 * owner or mode, -ELOOP/-ENOTDIR for a symlink. Free with runstate_release() (keeps
 * nothing) or let the process die (stale). */
int runstate_create(const char *run_dir, uid_t owner, struct runstate **ret_state);

/* The job id and the job directory (owned by rs). */
const char *runstate_job_id(const struct runstate *rs);
const char *runstate_job_dir(const struct runstate *rs);

/* Records a resource before it is created: a process (pid + its start time, so a reused
 * pid is never killed), or a network link named "vmhpc<job id>b" or "vmhpc<job id>t<n>"
 * (-EINVAL for any other name). The job network itself needs no record (it lives in a
 * namespace the kernel removes with its last QEMU); links are for devices a job must make
 * in the host's namespace, such as the VXLAN end of a multi-node job's segment. */
int runstate_add_pid(struct runstate *rs, pid_t pid);
int runstate_add_link(struct runstate *rs, const char *ifname);

/* Undoes every recorded resource (kills processes, deletes links), removes the job
 * directory and frees rs; NULL is a no-op. */
void runstate_release(struct runstate *rs);

/* Cleans every stale job under run_dir that owner (the caller's uid) owns; returns how
 * many jobs were cleaned (0 when run_dir does not exist), or -errno (-EPERM, -ELOOP,
 * -ENOTDIR as runstate_create when run_dir or jobs/ is not the caller's private folder). */
int runstate_clean_stale(const char *run_dir, uid_t owner);

/* Frees rs but keeps the job directory and its records (the job was handed over); returns
 * the descriptor holding the job's lock, which the caller now owns. */
int runstate_detach(struct runstate *rs);

/* Opens owner's existing job directory job_id under run_dir: lock_fd holds its lock already
 * (taken over; owned by rs on success, by the caller on failure), or -1 to take the lock
 * now (-EBUSY while another process holds it). */
int runstate_attach(const char *run_dir, const char *job_id, uid_t owner, int lock_fd,
		    struct runstate **ret_state);
