/* What a running job owns on this node, written down before it is created, so that
 * whatever kills the job's owner (SIGKILL included) leaves a list someone else can undo.
 * Layout: <run_dir>/jobs/<job id>/{lock, resources, ...sockets and logs}. The owner
 * holds `lock` (flock) for its life; a job directory whose lock is free is stale. */
#pragma once

#include <sys/types.h>

struct runstate;

/* The default run directory: /run/vmhpc for root, else $XDG_RUNTIME_DIR/vmhpc or
 * /tmp/vmhpc-<uid> (static storage). */
const char *runstate_default_dir(void);

/* Creates a new job directory with a fresh random job id (8 hex chars) and takes its
 * lock. Free with runstate_release() (keeps nothing) or let the process die (stale). */
int runstate_create(const char *run_dir, struct runstate **ret_state);

/* The job id and the job directory (owned by rs). */
const char *runstate_job_id(const struct runstate *rs);
const char *runstate_job_dir(const struct runstate *rs);

/* Records a resource before it is created: a process (pid + its start time, so a reused
 * pid is never killed), a network link, a directory or a file to remove. */
int runstate_add_pid(struct runstate *rs, pid_t pid);
int runstate_add_link(struct runstate *rs, const char *ifname);
int runstate_add_path(struct runstate *rs, const char *path);

/* Undoes every recorded resource (kills processes, deletes links and paths), removes the
 * job directory and frees rs; NULL is a no-op. */
void runstate_release(struct runstate *rs);

/* Frees rs but keeps the job directory and its records (the job was handed over); returns
 * the descriptor holding the job's lock, which the caller now owns. */
int runstate_detach(struct runstate *rs);

/* Opens an existing job directory under run_dir: lock_fd holds its lock already (taken
 * over), or -1 to take the lock now (-EBUSY while another process holds it). */
int runstate_attach(const char *run_dir, const char *job_id, int lock_fd,
		    struct runstate **ret_state);

/* Cleans every stale job under run_dir; returns how many jobs were cleaned, or -errno. */
int runstate_clean_stale(const char *run_dir);
