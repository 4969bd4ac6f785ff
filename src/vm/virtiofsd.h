/* The job folder shared into every VM read-write at the same path, through virtiofsd
 * (QEMU's, /usr/lib/qemu/virtiofsd), one per VM (a vhost-user socket serves one guest).
 * It runs with the submitting user's rights only, in a user namespace of its own, on the
 * very directory the caller checked (src/vm/sandbox.h; docs/vm.md says why). */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#define VIRTIOFSD_PATH "/usr/lib/qemu/virtiofsd"

struct virtiofsd_config {
	const char *dir; /* the job folder, as the caller checked it */
	dev_t dir_dev;	 /* ... and what it was then (stat): anything else is refused */
	ino_t dir_ino;
	uid_t uid; /* whose rights it runs with; every file it creates is theirs */
	gid_t gid;
	const char *socket_path; /* made here, listening; QEMU connects to it */
	const char *log_path;	 /* its stderr (NULL: /dev/null) */
	const char *program;	 /* NULL: VIRTIOFSD_PATH (tests put a stand-in here) */
	bool outlive_caller; /* as qemu_vm_config.outlive_caller: no death signal, own session */
	/* As qemu_vm_config.record_pid: called with the pid before virtiofsd runs, so that a
	 * caller killed at any moment leaves no unrecorded server; a negative return stops it. */
	int (*record_pid)(pid_t pid, void *userdata);
	void *record_userdata;
};

/* Starts virtiofsd for c->dir as c->uid:c->gid (switching to them needs root unless they
 * are the caller's own ids) and returns once it runs. *ret_pid is its pid (the caller
 * stops it with virtiofsd_stop). *ret_error (caller frees) says what failed, with the
 * last lines of its log when it exited at start. */
int virtiofsd_start(const struct virtiofsd_config *c, pid_t *ret_pid, char **ret_error);

/* The last lines of a virtiofsd log (caller frees), or NULL when it is empty. */
char *virtiofsd_log_tail(const char *log_path);

/* Stops and reaps it (SIGTERM, then SIGKILL after a grace period). */
void virtiofsd_stop(pid_t pid);
