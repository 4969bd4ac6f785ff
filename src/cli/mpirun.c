/* `vmhpc mpirun [--label] [-n N] PROGRAM [ARGS]`: in the batch script of a Slurm job submitted
 * with --vm-image, runs PROGRAM with MPI over every VM of the job. The user's process is not
 * root and the VMs are root's: it asks the job's supervisor on this node (left by the prolog)
 * over the job's control socket, which accepts only the job's user (SO_PEERCRED) and root.
 * It hands over its stdout and stderr (SCM_RIGHTS), so the output goes where Slurm sends the
 * script's; signals it gets (scancel, Ctrl-C under srun) are passed on; the exit code is
 * mpiexec's. docs/slurm.md. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cli/cli.h"
#include "slurm/control.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: vmhpc mpirun [--label] [-n RANKS] [--] PROGRAM [ARGS...]\n"
	       "  in the batch script of a job submitted with sbatch --vm-image=REF: runs PROGRAM\n"
	       "  with MPI across every VM of the job (default: one rank per VCPU)\n"
	       "  --label      prefix every line of output with \"[RANK@VM] \"\n"
	       "  -n RANKS     ranks in all (at most VMs x VCPUs)\n");
}

int cli_mpirun_main(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option opts[] = {{"label", no_argument, NULL, 'l'},
					     {"ranks", required_argument, NULL, 'n'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *job = getenv("SLURM_JOB_ID"), *dir = getenv("VMHPC_SLURM_JOB_DIR");
	const char *step_tasks = getenv("SLURM_STEP_NUM_TASKS");
	_cleanup_free_ char *error = NULL, *sock = NULL, *errpath = NULL, *failed = NULL;
	_cleanup_close_ int fd = -1, sfd = -1;
	bool label = false;
	long ranks = 0;
	json_t *req, *jargv;
	sigset_t mask;
	int c, r, fds[2] = {STDOUT_FILENO, STDERR_FILENO};

	(void)ctx;
	optind = 0;
	/* '+': options end at PROGRAM; its own options are its own. */
	while ((c = getopt_long(argc, argv, "+n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			label = true;
			break;
		case 'n': {
			char *end;

			ranks = strtol(optarg, &end, 10);
			if (*end || ranks < 1 || ranks > 100000) {
				log_error("-n %s: give a number of ranks from 1", optarg);
				return 2;
			}
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	if (!job || !*job) {
		log_error("vmhpc mpirun runs in the batch script of a Slurm job with VMs "
			  "(sbatch --vm-image=REGISTRY/REPO:TAG job.sh); SLURM_JOB_ID is not set "
			  "here. Outside Slurm, use `vmhpc run`");
		return 2;
	}
	/* In a step of several tasks (`srun vmhpc mpirun` with srun's default of a task per
	 * node or CPU), each task would start the whole MPI job over every VM again. */
	if (step_tasks && getenv("SLURM_STEP_ID") && strtol(step_tasks, NULL, 10) > 1) {
		log_error("vmhpc mpirun starts one MPI job over every VM of job %s by itself: run "
			  "it once, in the batch script or in a step of one task (srun -N 1 -n 1 "
			  "vmhpc mpirun ...), not in each of this step's %s tasks",
			  job, step_tasks);
		return 2;
	}
	if (!dir || dir[0] != '/') {
		/* Also salloc's command: it runs on the submit host, where no supervisor of
		 * the job is and the plugin's user_init (in a step's slurmstepd) never ran. */
		log_error("Slurm job %s has no VMs here: it was submitted without --vm-image (or "
			  "the vmhpc SPANK plugin is not loaded), or this runs outside its steps "
			  "(in salloc's shell: `srun -N 1 -n 1 vmhpc mpirun ...`); submit it with "
			  "--vm-image=REGISTRY/REPO:TAG",
			  job);
		return 2;
	}
	errpath = fs_path_join(dir, "error");
	sock = fs_path_join(dir, "ctl.sock");
	if (!errpath || !sock)
		return 1;
	if (fs_read_file_nofollow(errpath, 64 * 1024, &failed, NULL) == 0) {
		log_error("the VMs of job %s failed: %s", job, failed);
		return 1;
	}
	r = slurmctl_connect(sock, &fd, &error);
	if (r < 0) {
		log_error("the VMs of job %s are not running on this node (%s); was the job "
			  "cancelled?",
			  job, error);
		return 1;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		return log_error_errno(-errno, "signalfd: %m"), 1;

	jargv = json_array();
	for (int i = optind; i < argc; i++)
		json_array_append_new(jargv, json_string(argv[i]));
	req = json_pack("{s:s, s:o, s:b, s:I}", "op", "mpirun", "argv", jargv, "label", label,
			"ranks", (json_int_t)ranks);
	r = req ? slurmctl_send(fd, req, fds, 2) : -ENOMEM;
	json_decref(req);
	if (r < 0) {
		log_error_errno(r, "sending the request to job %s's supervisor: %m", job);
		return 1;
	}
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
		struct signalfd_siginfo si;
		json_t *reply = NULL;
		const char *msg;
		int status;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (p[1].revents && read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			json_t *sig =
			    json_pack("{s:s, s:i}", "op", "signal", "signal", (int)si.ssi_signo);

			slurmctl_send(fd, sig, NULL, 0);
			json_decref(sig);
		}
		if (!p[0].revents)
			continue;
		r = slurmctl_recv(fd, 0, &reply, NULL, NULL);
		if (r < 0) {
			log_error("job %s's supervisor went away while the program ran (the job is "
				  "ending?)",
				  job);
			return 1;
		}
		status = (int)json_integer_value(json_object_get(reply, "status"));
		msg = json_string_value(json_object_get(reply, "error"));
		if (msg)
			log_error("%s", msg);
		else if (status != 0)
			log_error("the job's program failed with exit code %d", status);
		json_decref(reply);
		return status;
	}
}
