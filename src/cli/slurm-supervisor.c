/* The job's supervisor on one node (slurm.h): boots this node's VMs with the runtime library,
 * owns them, serves `vmhpc mpirun` on the job's control socket and, on SIGTERM, shuts them
 * down and writes the job's timings. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mpi/launcher.h"
#include "cli/run-options.h"
#include "cli/slurm.h"
#include "slurm/control.h"
#include "slurm/options.h"
#include "slurm/token.h"
#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/time.h"
#include "vm/job.h"

#define SHUTDOWN_TIMEOUT_MS 10000
#define SIGNAL_GRACE_MS	    10000
#define MAX_ARGV	    4096

/* The supervisor's state while it serves. */
struct supervisor {
	struct slurm_job *sj;
	struct job *job;
	struct manifest *image;
	enum launcher_mpi mpi;
	int signal_fd; /* SIGTERM, SIGINT, SIGHUP */
	bool stop;     /* a signal asked to stop */
	double boot_s, run_s, shutdown_s;
	unsigned runs;
	struct job_vm_stats stats[JOB_MAX_VMS];
};

static bool boot_cancelled(void *ud)
{
	struct supervisor *sv = ud;
	struct signalfd_siginfo si;

	if (!sv->stop && read(sv->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		sv->stop = true;
	return sv->stop;
}

static void runtime_log(enum log_level level, const char *message, void *ud)
{
	if (log_enabled(level))
		log_print(level, "%s", message);
}

/* While one mpirun runs: passes the client's signal requests (and its going away) and a
 * stop asked of the supervisor on to job_exec as signalfd records. A thread because
 * job_exec blocks on the VMs while these arrive on other descriptors. */
struct relay {
	int client_fd, signal_fd, out_fd, quit_fd;
	bool *stop;
};

static void relay_signal(int out_fd, int signo)
{
	struct signalfd_siginfo si = {.ssi_signo = (uint32_t)signo};

	(void)!write(out_fd, &si, sizeof(si));
}

static void *relay_main(void *arg)
{
	struct relay *rl = arg;
	bool client_open = true;

	for (;;) {
		struct pollfd fds[3] = {{.fd = rl->quit_fd, .events = POLLIN},
					{.fd = rl->signal_fd, .events = POLLIN},
					{.fd = client_open ? rl->client_fd : -1, .events = POLLIN}};
		struct signalfd_siginfo si;

		if (poll(fds, 3, -1) < 0 && errno != EINTR)
			return NULL;
		if (fds[0].revents)
			return NULL;
		if (fds[1].revents && read(rl->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			/* The epilog stops the job: forward, then give up at once. */
			*rl->stop = true;
			relay_signal(rl->out_fd, SIGTERM);
			relay_signal(rl->out_fd, SIGKILL);
		}
		if (fds[2].revents) {
			json_t *msg = NULL;
			int r = slurmctl_recv(rl->client_fd, 0, &msg, NULL, NULL);

			if (r == 0) {
				json_int_t signo =
				    json_integer_value(json_object_get(msg, "signal"));

				if (signo > 0 && signo < 65)
					relay_signal(rl->out_fd, (int)signo);
				json_decref(msg);
			} else if (r != -ETIMEDOUT && r != -EAGAIN) {
				/* mpirun went away (killed): the program goes with it. */
				relay_signal(rl->out_fd, SIGTERM);
				client_open = false;
			}
		}
	}
}

/* Slurm starts the batch script once the prolog of its own node is done, not every node's
 * (measured: with 4 nodes the script began 11 s before the last node's VMs were up, and
 * mpiexec then hung). So before launching over other nodes' VMs, VM 0 asks each of them,
 * with the guest's own exec client and the job's token, until it answers or the boot
 * deadline passes. 0, or -ETIMEDOUT with *ret_error naming the VM. */
static int wait_for_job_vms(struct supervisor *sv, char **ret_error)
{
	unsigned total = job_vm_count_total(sv->job);
	double give_up = time_now_s() + sv->sj->boot_timeout_ms / 1000.0;
	struct exec_client_io io = {
	    .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .signal_fd = -1};

	for (unsigned g = 0; g < total; g++) {
		const char *name = job_vm_name_total(sv->job, g);
		char *argv[] = {
		    "/usr/bin/vmhpc-exec", "--timeout-ms", "3000", "--info", (char *)name, NULL};
		char *envp[] = {NULL};
		struct frame_exec req = {.cwd = "/", .argv = argv, .envp = envp};
		bool local = false;

		for (unsigned i = 0; i < sv->sj->vms; i++)
			local |= strcmp(job_vm_name(sv->job, i), name) == 0;
		if (local)
			continue;
		for (;;) {
			_cleanup_free_ char *error = NULL;
			int status = -1, r;

			r = job_exec(sv->job, 0, &req, &io, 10000, &status, &error);
			if (r == -ECHILD)
				return error_set(ret_error, r, "%s", error);
			if (r >= 0 && status == 0)
				break;
			if (time_now_s() >= give_up || sv->stop)
				return error_set(ret_error, -ETIMEDOUT,
						 "%s (on another node of the job) did not answer "
						 "within %d s: its node's VMs did not come up",
						 name, sv->sj->boot_timeout_ms / 1000);
			usleep(500 * 1000);
		}
	}
	return 0;
}

/* Runs one `vmhpc mpirun` request: mpiexec in this node's first VM over every VM of the
 * job, its output on the client's descriptors. The reply says how it ended. */
static void serve_mpirun(struct supervisor *sv, int client_fd, json_t *msg, const int *fds,
			 unsigned n_fds)
{
	struct slurm_job *sj = sv->sj;
	_cleanup_free_ char *error = NULL;
	json_t *jargv = json_object_get(msg, "argv"), *reply;
	unsigned argc = 0, total_vms = job_vm_count_total(sv->job);
	_cleanup_free_ const char **hosts = calloc(total_vms, sizeof(*hosts));
	_cleanup_free_ char **argv = calloc(MAX_ARGV + 1, sizeof(*argv));
	json_int_t ranks = json_integer_value(json_object_get(msg, "ranks"));
	struct launcher_command *cmd = NULL;
	struct launcher_job lj = {.mpi = sv->mpi,
				  .hosts = hosts,
				  .n_hosts = total_vms,
				  .slots = sj->vcpus,
				  .label = json_is_true(json_object_get(msg, "label"))};
	struct frame_exec req = {.uid = sj->uid, .gid = sj->gid, .cwd = (char *)sj->workdir};
	struct exec_client_io io = {.stdin_fd = -1,
				    .stdout_fd = n_fds > 0 ? fds[0] : -1,
				    .stderr_fd = n_fds > 1 ? fds[1] : -1,
				    .signal_grace_ms = SIGNAL_GRACE_MS};
	int pipe_fds[2] = {-1, -1}, quit[2] = {-1, -1}, status = 0, code, r;
	struct relay rl;
	pthread_t th;
	double t0;

	if (!hosts || !argv) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of memory");
		goto out;
	}
	if (!json_is_array(jargv) || json_array_size(jargv) == 0 ||
	    json_array_size(jargv) > MAX_ARGV) {
		reply = json_pack("{s:i, s:s}", "status", 2, "error",
				  "give the program to run: vmhpc mpirun PROGRAM [ARGS]");
		goto out;
	}
	for (size_t i = 0; i < json_array_size(jargv); i++) {
		const char *a = json_string_value(json_array_get(jargv, i));

		if (!a) {
			reply = json_pack("{s:i, s:s}", "status", 2, "error", "bad argument");
			goto out;
		}
		argv[argc++] = (char *)a;
	}
	argv[argc] = NULL;
	lj.argc = (int)argc;
	lj.argv = argv;
	lj.ranks = ranks > 0 ? (unsigned)ranks : total_vms * sj->vcpus;
	if (lj.ranks > total_vms * sj->vcpus) {
		reply = json_pack("{s:i, s:s}", "status", 2, "error",
				  "-n: more ranks than the job's VCPUs (--vms-per-node x "
				  "--vm-vcpus); use fewer");
		goto out;
	}
	for (unsigned g = 0; g < total_vms; g++)
		hosts[g] = job_vm_name_total(sv->job, g);
	if (launcher_command_new(&lj, &cmd) < 0 || pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    pipe2(quit, O_CLOEXEC) < 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of memory");
		goto out;
	}
	if (wait_for_job_vms(sv, &error) < 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", error);
		goto out;
	}
	req.argv = cmd->argv;
	req.envp = cmd->envp;
	io.signal_fd = pipe_fds[0];
	rl = (struct relay){.client_fd = client_fd,
			    .signal_fd = sv->signal_fd,
			    .out_fd = pipe_fds[1],
			    .quit_fd = quit[0],
			    .stop = &sv->stop};
	if (pthread_create(&th, NULL, relay_main, &rl) != 0) {
		reply = json_pack("{s:i, s:s}", "status", 1, "error", "out of threads");
		goto out;
	}
	t0 = time_now_s();
	r = job_exec(sv->job, 0, &req, &io, -1, &status, &error);
	sv->run_s += time_now_s() - t0;
	sv->runs++;
	(void)!write(quit[1], "q", 1);
	pthread_join(th, NULL);
	if ((r >= 0 || r == -EINTR) && job_forwarded_signal(sv->job, 0)) {
		int sig = job_forwarded_signal(sv->job, 0);

		code = 128 + sig;
		if (!error &&
		    asprintf(&error, "interrupted by %s (SIG%s)%s", strsignal(sig),
			     sigabbrev_np(sig), sv->stop ? ": the job is ending" : "") < 0)
			error = NULL;
	} else if (r == -ECHILD) {
		code = 1;
	} else if (r < 0) {
		code = 1;
		if (!error)
			error = strdup(strerror(-r));
	} else {
		code = status;
	}
	reply = json_pack("{s:i, s:s?}", "status", code, "error", error);
out:
	launcher_command_free(cmd);
	for (int i = 0; i < 2; i++) {
		if (pipe_fds[i] >= 0)
			close(pipe_fds[i]);
		if (quit[i] >= 0)
			close(quit[i]);
	}
	if (reply)
		slurmctl_send(client_fd, reply, NULL, 0);
	json_decref(reply);
}

static void serve_client(struct supervisor *sv, int fd)
{
	json_t *msg = NULL, *reply = NULL;
	int fds[SLURMCTL_MAX_FDS];
	unsigned n_fds = 0;
	const char *op;
	uid_t uid;

	if (slurmctl_peer_uid(fd, &uid) < 0 || (uid != 0 && uid != sv->sj->uid)) {
		log_info("refused a control connection from uid %u (job %u belongs to uid %u)",
			 (unsigned)uid, sv->sj->id, (unsigned)sv->sj->uid);
		reply = json_pack("{s:i, s:s}", "status", 1, "error",
				  "refused: this job's VMs belong to another user");
		slurmctl_send(fd, reply, NULL, 0);
		json_decref(reply);
		return;
	}
	if (slurmctl_recv(fd, 5000, &msg, fds, &n_fds) < 0)
		return;
	op = json_string_value(json_object_get(msg, "op"));
	if (op && strcmp(op, "mpirun") == 0) {
		serve_mpirun(sv, fd, msg, fds, n_fds);
	} else {
		reply = json_pack("{s:i, s:s}", "status", 2, "error", "unknown request");
		slurmctl_send(fd, reply, NULL, 0);
		json_decref(reply);
	}
	for (unsigned i = 0; i < n_fds; i++)
		close(fds[i]);
	json_decref(msg);
}

/* The per-job record in the job folder (owned by the job's user): how long each phase took
 * and the memory of each VM. Written without following a link the user may have put there. */
static void write_timings(struct supervisor *sv, const struct job_vm_usage *usage)
{
	struct slurm_job *sj = sv->sj;
	_cleanup_free_ char *text = NULL, *name = NULL, *root_copy = NULL;
	_cleanup_close_ int dir_fd = -1, fd = -1;
	json_t *vms = json_array(), *out;
	uint64_t pss = 0;

	for (unsigned i = 0; i < sj->vms; i++) {
		json_t *vm = json_pack("{s:s, s:f, s:I, s:I, s:I}", "name", job_vm_name(sv->job, i),
				       "ready_s", sv->stats[i].ready_s, "guest_used_kb",
				       (json_int_t)sv->stats[i].guest_used_kb, "host_rss_kb",
				       (json_int_t)sv->stats[i].host_rss_kb, "host_pss_kb",
				       (json_int_t)sv->stats[i].host_pss_kb);

		if (usage[i].known)
			json_object_set_new(vm, "job_mem_peak_kb",
					    json_integer((json_int_t)usage[i].job_mem_peak_kb));
		pss += sv->stats[i].host_pss_kb;
		json_array_append_new(vms, vm);
	}
	out =
	    json_pack("{s:i, s:s, s:i, s:s, s:i, s:i, s:s, s:f, s:s, s:I, s:f, s:f, s:i, s:f, "
		      "s:f, s:o, s:I}",
		      "job", (int)sj->id, "node", sj->node, "node_index", (int)sj->node_index,
		      "image", sj->image, "vms", (int)sj->vms, "vcpus", (int)sj->vcpus, "accel",
		      accel_to_string(job_accel(sv->job)), "distribution_s", sj->distribution_s,
		      "distribution_source", sj->source, "distribution_bytes",
		      (json_int_t)sj->bytes_received, "materialize_s", job_materialize_s(sv->job),
		      "boot_s", sv->boot_s, "runs", (int)sv->runs, "run_s", sv->run_s, "shutdown_s",
		      sv->shutdown_s, "vm", vms, "host_pss_total_kb", (json_int_t)pss);
	if (out) {
		char v[300];

		snprintf(v, sizeof(v), "%s:%u", sj->image_name, sj->image_version);
		json_object_set_new(out, "version", json_string(v));
	}
	text = out ? json_dumps(out, JSON_INDENT(1)) : NULL;
	json_decref(out);
	if (!text || asprintf(&name, "vmhpc-%u.%s.json", sj->id, sj->node) < 0)
		return;
	/* The epilog's copy, which it hands to the node daemon's metrics: in the job's state
	 * folder (root's), not the user's, whose file the user may have changed. */
	root_copy = fs_path_join(sj->dir, SLURM_TIMINGS_FILE);
	if (!root_copy || fs_write_atomic(root_copy, text, strlen(text), 0644) < 0)
		log_error("job %u: writing %s: %m", sj->id, root_copy ? root_copy : sj->dir);
	dir_fd = open(sj->workdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd >= 0)
		fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
			    0644);
	if (fd < 0) {
		log_error("job %u: writing %s/%s: %m", sj->id, sj->workdir, name);
		return;
	}
	if (fchown(fd, sj->uid, sj->gid) < 0 || fs_write_all(fd, text, strlen(text)) < 0 ||
	    fs_write_all(fd, "\n", 1) < 0)
		log_error("job %u: writing %s/%s: %m", sj->id, sj->workdir, name);
}

static void stop_job(struct supervisor *sv)
{
	struct job_vm_usage usage[JOB_MAX_VMS] = {0};

	for (unsigned i = 0; i < sv->sj->vms; i++) {
		double ready_s = sv->stats[i].ready_s;
		uint64_t used = sv->stats[i].guest_used_kb;

		if (job_vm_usage(sv->job, i, 2000, &usage[i]) < 0)
			usage[i].known = false;
		job_vm_stats(sv->job, i, &sv->stats[i]);
		sv->stats[i].ready_s = ready_s;
		sv->stats[i].guest_used_kb = used;
	}
	job_shutdown(sv->job, SHUTDOWN_TIMEOUT_MS, &sv->shutdown_s);
	write_timings(sv, usage);
}

int slurm_supervise(struct slurm_job *sj, int ready_fd)
{
	struct supervisor sv = {.sj = sj};
	_cleanup_free_ char *error = NULL, *cache = NULL, *sock = NULL, *ref = NULL;
	_cleanup_close_ int listen_fd = -1;
	struct store *store = NULL;
	struct job_config cfg = {0};
	struct job_cluster cluster;
	struct stat st;
	sigset_t mask;
	double t0;
	int r, code = 0;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sv.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sv.signal_fd < 0) {
		error_set(&error, -errno, "signalfd: %s", strerror(errno));
		goto fail;
	}
	r = store_open(sj->store_dir, &store);
	if (r < 0) {
		error_set(&error, r, "the node cache's store %s: %s", sj->store_dir, strerror(-r));
		goto fail;
	}
	r = catalog_load(store, sj->image_name, sj->image_version, &sv.image, &error);
	if (r < 0)
		goto fail;
	if (asprintf(&ref, "%s:%u", sv.image->name, sv.image->version) < 0 ||
	    launcher_mpi_of_image(sv.image->metadata, ref, &sv.mpi, &error) < 0)
		goto fail;
	if (stat(sj->workdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		error_set(&error, -ENOTDIR, "the job folder %s: %s", sj->workdir,
			  errno ? strerror(errno) : "not a directory");
		goto fail;
	}
	cache = fs_path_join(sj->store_dir, "../vm");
	if (!cache)
		goto fail;
	r = job_clean_stale(sj->run_dir);
	if (r > 0)
		log_info("removed what %d earlier job%s left in %s", r, r == 1 ? "" : "s",
			 sj->run_dir);
	cfg.store = store;
	cfg.image = sv.image;
	cfg.cache_dir = cache;
	cfg.run_dir = sj->run_dir;
	cfg.n_vms = sj->vms;
	cfg.vcpus = sj->vcpus;
	cfg.mem_mb = sj->mem_mb;
	cfg.workdir = sj->workdir;
	cfg.workdir_dev = st.st_dev;
	cfg.workdir_ino = st.st_ino;
	cfg.owner_uid = sj->uid;
	cfg.owner_gid = sj->gid;
	cfg.boot_timeout_ms = sj->boot_timeout_ms;
	/* The bypass between this node's VMs as --vm-shm says, by `vmhpc run`'s rule. */
	_Static_assert(SLURMOPT_SHM_AUTO == RUN_SHM_AUTO, "--vm-shm=auto is run's auto");
	cfg.shm = run_shm_wanted(sj->shm, sj->vms, sv.image->metadata);
	if (sj->n_hosts > 1) {
		cluster = (struct job_cluster){.node_index = sj->node_index,
					       .n_nodes = (unsigned)sj->n_hosts,
					       .node_addrs = (const char *const *)sj->node_addrs,
					       .vni = slurmtoken_vni(sj->id),
					       .token_hex = sj->token_hex};
		cfg.cluster = &cluster;
	}
	cfg.cancelled = boot_cancelled;
	cfg.log = runtime_log;
	cfg.userdata = &sv;
	t0 = time_now_s();
	r = job_boot(&cfg, &sv.job, &error);
	if (r < 0) {
		if (r == -ECANCELED) {
			free(error);
			error = strdup("the job was cancelled while its VMs booted");
		}
		goto fail;
	}
	sv.boot_s = time_now_s() - t0;
	for (unsigned i = 0; i < sj->vms; i++)
		job_vm_stats(sv.job, i, &sv.stats[i]);
	sock = fs_path_join(sj->dir, "ctl.sock");
	if (!sock || slurmctl_listen(sock, &listen_fd, &error) < 0)
		goto fail;
	log_info("job %u: %u VM%s of %s ready on %s after %.2f s", sj->id, sj->vms,
		 sj->vms == 1 ? "" : "s", ref, sj->node, sv.boot_s);
	(void)!write(ready_fd, "ok", 2);
	close(ready_fd);
	ready_fd = -1;

	while (!sv.stop) {
		struct pollfd fds[2 + JOB_MAX_VMS + 4];
		int timeout_ms;
		unsigned n = 2;
		_cleanup_free_ char *why = NULL;

		fds[0] = (struct pollfd){.fd = sv.signal_fd, .events = POLLIN};
		fds[1] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
		n += job_poll_fds(sv.job, fds + 2, ARRAY_SIZE(fds) - 2, &timeout_ms);
		if (poll(fds, n, -1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents) {
			boot_cancelled(&sv);
			break;
		}
		if (job_check_vms(sv.job, &why) < 0) {
			/* A VM died: the job cannot run MPI any more; say so to mpirun. */
			_cleanup_free_ char *path = fs_path_join(sj->dir, "error");

			log_error("job %u: %s", sj->id, why);
			if (path)
				fs_write_atomic(path, why, strlen(why), 0644);
			break;
		}
		if (fds[1].revents) {
			_cleanup_close_ int cfd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

			if (cfd >= 0)
				serve_client(&sv, cfd);
		}
	}
	/* A VM died: wait for the epilog's SIGTERM, answering nothing, so that the job's
	 * record of what failed stays until then. */
	stop_job(&sv);
	log_info("job %u: VMs stopped on %s (boot %.2f s, run %.2f s, shutdown %.2f s)", sj->id,
		 sj->node, sv.boot_s, sv.run_s, sv.shutdown_s);
	goto out;
fail:
	code = 1;
	if (ready_fd >= 0) {
		const char *m = error ? error : "the VMs could not be started";

		(void)!write(ready_fd, m, strlen(m));
	}
out:
	if (sock)
		unlink(sock);
	job_free(sv.job);
	manifest_free(sv.image);
	store_close(store);
	if (sv.signal_fd >= 0)
		close(sv.signal_fd);
	return code;
}
