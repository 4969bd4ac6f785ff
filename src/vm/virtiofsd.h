/* The job folder shared into every VM read-write at the same path, through virtiofsd
 * (QEMU's, /usr/lib/qemu/virtiofsd), one per VM (a vhost-user socket serves one guest). */
#pragma once

#include <sys/types.h>

#define VIRTIOFSD_PATH "/usr/lib/qemu/virtiofsd"

/* Starts virtiofsd sharing dir on socket_path, logging to log_path, and waits (up to
 * timeout_ms) until the socket exists. *ret_pid is its pid (the caller stops it with
 * virtiofsd_stop). *ret_error (caller frees) says what failed. */
int virtiofsd_start(const char *dir, const char *socket_path, const char *log_path, int timeout_ms,
		    pid_t *ret_pid, char **ret_error);

/* Stops and reaps it (SIGTERM, then SIGKILL after a grace period). */
void virtiofsd_stop(pid_t pid);
