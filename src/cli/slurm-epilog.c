/* `vmhpc slurm epilog` (slurm.h): stops the job's supervisor, cleans what a killed one left,
 * releases the image's pin on the node daemon and removes the job's state folder. */
#include <errno.h>
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
#define STOP_WAIT_MS 30000

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
