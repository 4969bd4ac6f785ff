/* vmhpc-init's exec service (docs/guest.md, "The exec protocol"): token-authenticated
 * commands with streamed I/O, signals, INFO and SHUTDOWN, on TCP and on the virtio-serial
 * control port, in one poll loop that also reaps every child. libc and guest/frame.h only.
 * The caller blocks SIGCHLD, SIGTERM, SIGINT, SIGPWR and SIGUSR2 (they are read from a
 * signalfd) and SIGPIPE (a command's stdin pipe may lose its reader). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "guest/frame.h"
#include "guest/shmdev.h"

struct service_config {
	bool have_token; /* false: every HELLO is refused */
	uint8_t token[FRAME_TOKEN_BYTES];
	uint16_t port;		  /* TCP port; 0: any free one (service_port() says which) */
	bool loopback_only;	  /* listen on 127.0.0.1 only */
	bool pid1;		  /* power-off kills every process and powers the machine off */
	int control_fd;		  /* the control port, open; the service owns it. -1: none */
	const char *control_name; /* for console lines */
	int auth_timeout_ms;	  /* how long a peer has to present HELLO; 0: 5 s */
	bool job_cgroup;	  /* commands join guest/jobcg.h's group; INFO reports its usage */
	const struct shmdev *shm; /* the job's shared-memory device (shmdev.h); NULL: none.
				   * Borrowed: must outlive the service */
};

struct service;

/* Opens the signalfd and the TCP listener (a failed listen is only said); 0 or -errno. */
int service_new(const struct service_config *cfg, struct service **ret_service);

/* Ends every command's process group, closes every fd and frees s; NULL is fine; NULL. */
struct service *service_free(struct service *s);

/* Whether s listens on TCP, and on which port (0 when not). */
bool service_listening(const struct service *s);
uint16_t service_port(const struct service *s);

/* One turn of the loop, waiting at most timeout_ms (-1: until something happens): 1 when a
 * power-off was asked for (SHUTDOWN or a signal), else 0. service_run is this in a loop. */
int service_step(struct service *s, int timeout_ms);

/* Bytes queued towards all peers together (what backpressure bounds; for tests). */
size_t service_queued_bytes(const struct service *s);

/* Serves until SHUTDOWN or SIGTERM/SIGINT/SIGPWR/SIGUSR2, then powers off (pid1) or exits 0. */
void service_run(struct service *s) __attribute__((noreturn));
