/* Listening unix sockets with a path in the file system: the node daemon's API, virtiofsd's
 * vhost-user socket, a Slurm job's control socket. */
#pragma once

#include <sys/types.h>

/* Makes a socket of type (SOCK_STREAM or SOCK_SEQPACKET, optionally | SOCK_NONBLOCK) listening
 * at path with backlog, replacing a socket file left there; mode (when not 0) is given to the
 * file, for callers that check their peers themselves (SO_PEERCRED). Returns 0 and *ret_fd
 * (close-on-exec, the caller closes it), or -ENAMETOOLONG for a path longer than a socket
 * address holds, or another -errno. */
int sock_listen_unix(const char *path, int type, mode_t mode, int backlog, int *ret_fd);
