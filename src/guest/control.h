/* The virtio-serial control port of a vmhpc guest, before the exec service takes it over:
 * finding it, and receiving the host's SETUP (the job's token and folder) on it. That port
 * is reachable only through QEMU's unix socket in the job's 0700 directory, which is why the
 * secrets travel there and not on the kernel command line (readable by every host user in
 * /proc/PID/cmdline). libc, guest/frame.h and guest/console.h only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "guest/frame.h"

#define CONTROL_PORT_NAME "org.vmhpc.control"

/* Looks for the virtio-serial port named CONTROL_PORT_NAME under /sys/class/virtio-ports for
 * up to timeout_ms and opens it (O_RDWR, non-blocking, close-on-exec): 0 with *ret_fd and
 * its /dev path in ret_path, -ENOENT when none appeared, or -errno of the open. */
int control_open(int timeout_ms, char *ret_path, size_t path_size, int *ret_fd);

/* Waits up to timeout_ms for the host's SETUP on fd (non-blocking; the port, or any stream).
 * Reads exactly the frames it consumes, so what follows SETUP (the host's HELLO) stays for
 * the exec service. Other well-formed frames before it are dropped with a console line; a
 * host that disconnects mid-frame starts over. 0 with *ret filled, -ETIMEDOUT, -EBADMSG
 * (a malformed header or SETUP payload: the stream cannot be followed), or -errno. */
int control_read_setup(int fd, int timeout_ms, struct frame_setup *ret);

/* Whether path may be the job folder's mount point in the guest: absolute, not "/", no "."
 * or ".." parts, no "//", no trailing '/', no control characters, not under /proc /sys /dev
 * /run. */
bool control_share_valid(const char *path);
