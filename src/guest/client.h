/* A blocking client of vmhpc-init's exec service (docs/guest.md): used by vmhpc-exec in the
 * guest and by the host runtime over TCP or the virtio-serial control port. libc only: it is
 * linked statically into vmhpc-exec without the rest of libvmhpc. Every call that waits takes
 * a timeout in milliseconds (-1 waits forever). Errors are -errno; when the service sent an
 * ERROR frame, exec_client_error() has its text. */
#pragma once

#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>

#include "guest/frame.h"

struct exec_client;

/* Wraps a connected stream fd (made non-blocking; the client owns and closes it). */
int exec_client_new(int fd, struct exec_client **ret);

/* Closes the fd and frees the client; NULL is fine; returns NULL. */
struct exec_client *exec_client_free(struct exec_client *c);

/* Connects to addr (struct sockaddr_in/in6/un) within timeout_ms; returns the fd in *ret_fd. */
int exec_client_connect(const struct sockaddr *addr, socklen_t addr_len, int timeout_ms,
			int *ret_fd);

/* For the control port, first thing after connecting: sends SETUP with the job's token and
 * the job folder's path (share_path NULL: none; else absolute, at most FRAME_SETUP_MAX_PATH
 * bytes, else -EINVAL). The guest waits for it before it mounts the folder or serves TCP
 * and takes it once per boot. Returns once the frame is written to the connection (QEMU
 * holds it until the guest opens the port; there is no acknowledgement: the guest's READY
 * follows), -ETIMEDOUT when it could not be written within timeout_ms. */
int exec_client_setup(struct exec_client *c, const uint8_t token[FRAME_TOKEN_BYTES],
		      const char *share_path, int timeout_ms);

/* For the control port, right after connecting (and SETUP): skips whatever arrives before the
 * guest's next READY (an earlier host session's output may still be in flight). The guest answers
 * every HELLO there with READY first, so resync + exec_client_hello is the whole handshake;
 * exec_client_ready() then has the guest's info. */
int exec_client_resync(struct exec_client *c);

/* Waits for a READY frame (the guest sends one when it sees the host connect, and before
 * answering HELLO on the control port); other frames before it are -EPROTO unless resyncing. */
int exec_client_wait_ready(struct exec_client *c, int timeout_ms, struct frame_info *ret_info);

/* Authenticates with the 32-byte token: 0 on WELCOME, -EACCES when the service refused it. */
int exec_client_hello(struct exec_client *c, const uint8_t token[FRAME_TOKEN_BYTES],
		      int timeout_ms);

/* Asks the guest's memory and uptime. */
int exec_client_info(struct exec_client *c, int timeout_ms, struct frame_info *ret_info);

/* Asks the guest to kill its jobs, sync and power off; 0 once it acknowledged or hung up. */
int exec_client_shutdown(struct exec_client *c, int timeout_ms);

#define EXEC_CLIENT_MAX_WATCH_FDS 256

/* Where a remote command's streams come from and go to. */
struct exec_client_io {
	int stdin_fd;  /* read until EOF and sent as STDIN; -1: the command gets EOF at once */
	int stdout_fd; /* STDOUT bytes are written here; -1 drops them */
	int stderr_fd; /* STDERR bytes; -1 drops them */
	int signal_fd; /* a signalfd: each signal read from it is forwarded as SIGNAL; -1: none */
	/* After the first forwarded signal the command has this long to end before the run
	 * gives up with -EINTR (0: wait for it); a second signal gives up at once. */
	int signal_grace_ms;
	/* fds (e.g. the pidfds of the job's QEMUs) that, once any polls readable, end the run
	 * with -ECANCELED: the command can no longer finish. May be NULL. */
	const int *watch_fds;
	unsigned n_watch_fds;
};

/* Runs one command (argc/envc of req are ignored) and streams its I/O until it ends; returns
 * 0 with *ret_status = exit code, or 128 + signal when it was killed. After timeout_ms the
 * command is sent SIGKILL and -ETIMEDOUT is returned once it ended (or 5 s later). -EPIPE
 * when stdout_fd or stderr_fd was closed by its reader (the command is killed likewise).
 * -EINTR when signals ended the wait (io->signal_grace_ms), -ECANCELED when a watch fd
 * fired; the command may still run then: the caller tears the VM down. */
int exec_client_run(struct exec_client *c, const struct frame_exec *req,
		    const struct exec_client_io *io, int timeout_ms, int *ret_status);

/* The same, for an event loop running many commands: _start queues the command and
 * returns at once (-EBUSY while one runs on this client); _fds fills up to max pollfds to
 * wait on (the connection, stdin, the signalfd, the watch fds) and *ret_timeout_ms;
 * after poll(), _step (with those pollfds and their revents) moves data and returns 1
 * when the command ended (*ret_status as exec_client_run), 0 while it runs, or the
 * errors exec_client_run returns. The client is free for another command after _step
 * returned non-zero. io's fds and watch_fds must stay valid until then. */
int exec_client_run_start(struct exec_client *c, const struct frame_exec *req,
			  const struct exec_client_io *io, int timeout_ms);
unsigned exec_client_run_fds(const struct exec_client *c, struct pollfd *fds, unsigned max,
			     int *ret_timeout_ms);
int exec_client_run_step(struct exec_client *c, const struct pollfd *fds, unsigned n,
			 int *ret_status);

/* The last signal exec_client_run read from io->signal_fd and passed on, or 0: how the
 * caller tells "the user interrupted it" from an ordinary exit status. */
int exec_client_forwarded_signal(const struct exec_client *c);

/* The text of the last ERROR frame the service sent, or NULL. Owned by the client. */
const char *exec_client_error(const struct exec_client *c);

/* The info of the last READY frame seen (ready arrived at any point), or NULL. */
const struct frame_info *exec_client_ready(const struct exec_client *c);
