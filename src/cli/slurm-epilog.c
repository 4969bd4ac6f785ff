/* `vmhpc slurm epilog` (slurm.h): stops the job's supervisor, cleans what a killed one left,
 * releases the image's pin on the node daemon and removes the job's state folder. */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cli/slurm.h"
#include "node/client.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "vm/job.h"

/* How long the epilog waits for the supervisor to shut the VMs down before killing it (the
 * VMs then die with it: PR_SET_PDEATHSIG). */
#define STOP_WAIT_MS   30000
#define UNRELEASED_DIR "unreleased"

/* Stops the job's supervisor if one still holds the lock: SIGTERM (it shuts the VMs down and
 * writes the timings), SIGKILL after STOP_WAIT_MS (its VMs die with it). 0, or -EBUSY when
 * it would not go. */
static int stop_supervisor(const struct slurm_job *sj)
{
	_cleanup_free_ char *pidpath = fs_path_join(sj->dir, "pid"), *text = NULL;
	_cleanup_close_ int lock_fd = -1, pidfd = -1;
	struct pollfd p;
	pid_t pid;

	if (!pidpath || slurm_job_open_lock(sj, &lock_fd) < 0)
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

/* <state_dir>/unreleased, or with job, <state_dir>/unreleased/<job>: a job whose epilog
 * could not release its image's pin (the node daemon was down). Caller frees. */
static char *unreleased_path(const struct slurm_job *sj, const char *job)
{
	char *path = NULL;

	if (asprintf(&path, "%s/" UNRELEASED_DIR "%s%s", sj->state_dir, job ? "/" : "",
		     job ? job : "") < 0)
		return NULL;
	return path;
}

/* Releases the pins that earlier epilogs here could not (each a file in unreleased/, gone
 * once the daemon took it). */
static void release_unreleased(const struct slurm_job *sj)
{
	_cleanup_free_ char *dir_path = unreleased_path(sj, NULL);
	DIR *dir;
	struct dirent *e;

	if (!dir_path)
		return;
	dir = opendir(dir_path);
	if (!dir)
		return;
	while ((e = readdir(dir))) {
		_cleanup_free_ char *error = NULL, *path = NULL;
		json_t *req, *reply = NULL;
		int r;

		if (e->d_name[0] == '.' || strspn(e->d_name, "0123456789") != strlen(e->d_name))
			continue;
		req = json_pack("{s:s, s:s}", "op", "release", "job", e->d_name);
		r = req ? node_client_local(sj->socket, req, 30000, &reply, &error) : -ENOMEM;
		json_decref(req);
		json_decref(reply);
		if (r < 0)
			break; /* still down: the next epilog tries again */
		log_info("job %s: its image's pin released by job %u's epilog", e->d_name, sj->id);
		path = unreleased_path(sj, e->d_name);
		if (path)
			unlink(path);
	}
	closedir(dir);
	rmdir(dir_path); /* when empty */
}

/* What the node daemon's metrics take of the timings the supervisor left in the job's state
 * folder: each phase, the guests' and the QEMUs' memory summed over this node's VMs. NULL
 * when there are none (the VMs never came up). */
static json_t *timings_for_metrics(const struct slurm_job *sj)
{
	_cleanup_free_ char *path = fs_path_join(sj->dir, SLURM_TIMINGS_FILE), *text = NULL;
	json_t *t, *vm, *out = NULL;
	json_int_t guest_kb = 0;
	size_t i;

	if (!path || fs_read_file_nofollow(path, 1 << 20, &text, NULL) < 0)
		return NULL;
	t = json_loads(text, 0, NULL);
	if (!t)
		return NULL;
	json_array_foreach(json_object_get(t, "vm"), i, vm) guest_kb +=
	    json_integer_value(json_object_get(vm, "guest_used_kb"));
	out = json_pack("{s:O*, s:O*, s:O*, s:O*, s:I, s:O*}", "distribution_s",
			json_object_get(t, "distribution_s"), "boot_s",
			json_object_get(t, "boot_s"), "run_s", json_object_get(t, "run_s"),
			"shutdown_s", json_object_get(t, "shutdown_s"), "guest_used_kb", guest_kb,
			"host_pss_kb", json_object_get(t, "host_pss_total_kb"));
	json_decref(t);
	return out;
}

int slurm_epilog_main(int argc, char **argv)
{
	struct slurm_job sj;
	_cleanup_free_ char *error = NULL;
	json_t *req, *reply = NULL;
	int code, r;

	code = slurm_job_parse(argc, argv, &sj, false);
	if (code)
		return code;
	code = 0;
	if (stop_supervisor(&sj) < 0)
		code = 1;
	/* What a killed supervisor left (its QEMUs died with it; their folders stay). */
	r = job_clean_stale(sj.run_dir);
	if (r > 0)
		log_info("job %u: removed what %d killed job%s left", sj.id, r, r == 1 ? "" : "s");
	release_unreleased(&sj);
	req = json_pack("{s:s, s:s, s:o*}", "op", "release", "job", sj.id_str, "timings",
			timings_for_metrics(&sj));
	r = req ? node_client_local(sj.socket, req, 30000, &reply, &error) : -ENOMEM;
	json_decref(req);
	json_decref(reply);
	if (r < 0) {
		/* The daemon is down: its pins are state it reloads, so this job's would stay
		 * (its image never evicted). Noted, when the prolog had it pinned, for the next
		 * epilog here to release; nothing of the job is left on the node, so the node
		 * stays in service. */
		_cleanup_free_ char *dir = unreleased_path(&sj, NULL),
				    *path = unreleased_path(&sj, sj.id_str),
				    *pinned_path = fs_path_join(sj.dir, SLURM_PINNED_FILE);
		bool pinned = pinned_path && fs_exists(pinned_path);

		log_error("job %u: releasing the image on %s: %s%s", sj.id, sj.socket,
			  error ? error : strerror(-r),
			  pinned ? "; noted for the next epilog on this node" : "");
		if (pinned && (!dir || !path || fs_mkdir_p(dir, 0755) < 0 ||
			       fs_write_atomic(path, "", 0, 0644) < 0))
			log_error("job %u: noting the release for later in %s: %m", sj.id,
				  path ? path : sj.state_dir);
	}
	if (fs_rm_rf(sj.dir) < 0 && fs_exists(sj.dir)) {
		log_error("job %u: removing %s: %m", sj.id, sj.dir);
		code = 1;
	}
	return code;
}
