/* vmhpc-init's exec service (docs/guest.md, "The exec protocol"): token-authenticated
 * commands with streamed I/O, signals, INFO and SHUTDOWN, on TCP and on the virtio-serial
 * control port, in one poll loop that also reaps every child. libc and guest/frame.h only. */
#pragma once

#include <stdbool.h>

#include "guest/cmdline.h"

struct service;

/* Opens the signalfd (caller blocked the signals) and TCP listener (a failed listen is only
 * said); 0 or -errno. *ret_service lives until the process ends; pid1 adds the control port. */
int service_new(const struct config *cfg, bool pid1, bool loopback_only,
		struct service **ret_service);

/* Whether s listens on TCP. */
bool service_listening(const struct service *s);

/* Serves until SHUTDOWN or SIGTERM/SIGINT/SIGPWR/SIGUSR2, then powers off (pid1) or exits 0. */
void service_run(struct service *s) __attribute__((noreturn));
