/* The per-job control socket of a Slurm job's VMs on one node: `vmhpc mpirun` (the job's
 * user, in the batch script) and `vmhpc slurm epilog` (root) talk to the job's supervisor
 * (`vmhpc slurm prolog` leaves it running, as root) through it. A unix SOCK_SEQPACKET
 * socket: one message = one JSON object of at most SLURMCTL_MAX_MSG bytes, optionally with
 * file descriptors (SCM_RIGHTS: mpirun hands over its stdout and stderr, so the program's
 * output goes straight where Slurm sends the batch script's). docs/slurm.md has the ops. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#define SLURMCTL_MAX_MSG (64 * 1024)
#define SLURMCTL_MAX_FDS 3

/* Listens at path (a stale socket there is replaced) with mode 0666: who may talk is decided
 * per connection by slurmctl_peer_uid. Returns the listening fd (CLOEXEC, non-blocking). */
int slurmctl_listen(const char *path, int *ret_fd, char **ret_error);

/* Connects to the socket at path; returns the fd (CLOEXEC). */
int slurmctl_connect(const char *path, int *ret_fd, char **ret_error);

/* The uid of the process at the other end (SO_PEERCRED). */
int slurmctl_peer_uid(int fd, uid_t *ret_uid);

/* Sends msg with n_fds descriptors (may be 0). */
int slurmctl_send(int fd, json_t *msg, const int *fds, unsigned n_fds);

/* Receives one message within timeout_ms (-1: no limit): *ret_msg a new reference, up to
 * SLURMCTL_MAX_FDS descriptors in ret_fds (the caller closes them; *ret_n_fds how many).
 * -EPIPE when the peer closed the connection, -ETIMEDOUT, -EBADMSG for what is not JSON. */
int slurmctl_recv(int fd, int timeout_ms, json_t **ret_msg, int *ret_fds, unsigned *ret_n_fds);
