/* A QMP (QEMU Machine Protocol) client: a small non-blocking state machine over one
 * stream socket (connect → greeting → qmp_capabilities → ready), commands tagged with an
 * "id" and matched to their replies in any order, asynchronous events handed to a
 * callback, and a blocking qmp_command() built on the same core with poll().
 *
 * Everything the peer sends is untrusted: a line longer than the limit, text that is
 * not a JSON object, or a reply to the capabilities negotiation that is an error ends
 * the connection with an error (never a crash); every command still pending then gets
 * that error. Once broken, a client stays broken (qmp_is_broken). Single-threaded. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct qmp_client;

/* Default bound on one line from the peer. query-qmp-schema, the largest reply vmhpc
 * asks for, is ~210 kB on QEMU 7.2. */
#define QMP_LINE_MAX_BYTES_DEFAULT (4u * 1024 * 1024)

/* Called for each event ("SHUTDOWN", "POWERDOWN", "STOP", ...); data is the event's
 * "data" object or NULL, borrowed for the call. */
typedef void (*qmp_event_fn)(struct qmp_client *client, const char *event, json_t *data,
			     void *userdata);

/* Called once per command sent with qmp_send: error 0 and result (the "return" value,
 * borrowed) on success; -errno and error_desc ("Class: description") for a QMP error
 * (-EOPNOTSUPP for CommandNotFound, -ENODEV for DeviceNotFound, else -EIO); -errno and
 * NULL for a transport failure (-ECONNRESET when the peer closed, -EMSGSIZE, -EBADMSG,
 * -ECANCELED when the client is freed). Callbacks must not free the client or call
 * qmp_command(); they may call qmp_send(). */
typedef void (*qmp_reply_fn)(struct qmp_client *client, int error, json_t *result,
			     const char *error_desc, void *userdata);

/* Starts connecting to the unix socket at path (non-blocking). Fails at once with
 * -ENOENT or -ECONNREFUSED when nothing listens there yet. The caller frees *ret. */
int qmp_connect(const char *path, struct qmp_client **ret);

/* Wraps an already connected stream socket (e.g. one end of a socketpair whose other end
 * QEMU got as `-chardev socket,fd=N`); takes ownership of fd even on failure. */
int qmp_client_new(int fd, struct qmp_client **ret);

/* Closes the connection, fails pending commands with -ECANCELED, frees; NULL is a no-op.
 * Returns NULL. */
struct qmp_client *qmp_client_free(struct qmp_client *client);
static inline void qmp_client_freep(struct qmp_client **c)
{
	qmp_client_free(*c);
}
#define _cleanup_qmp_client_ __attribute__((cleanup(qmp_client_freep)))

/* Sets the callback for asynchronous events (NULL: events are dropped). */
void qmp_set_event_callback(struct qmp_client *client, qmp_event_fn fn, void *userdata);

/* Sets the longest line accepted from the peer (bytes, newline excluded). */
void qmp_set_line_max(struct qmp_client *client, size_t bytes);

/* The socket, for an external event loop: watch it for qmp_poll_events(). */
int qmp_fd(const struct qmp_client *client);

/* The poll() events the client waits for now: POLLIN, plus POLLOUT while connecting or
 * while output is queued; 0 once broken. */
short qmp_poll_events(const struct qmp_client *client);

/* One non-blocking step: finishes a connect, writes what it can, reads what is there and
 * dispatches complete lines (replies to their callbacks, events to the event callback).
 * Returns >0 when something happened, 0 when there was nothing to do, or the -errno
 * that broke the connection (then, and from then on). */
int qmp_process(struct qmp_client *client);

/* Waits up to timeout_ms (<0: forever) for the socket to be ready, then runs
 * qmp_process. Returns as qmp_process, or 0 on timeout. */
int qmp_wait(struct qmp_client *client, int timeout_ms);

/* True once the greeting was read and capabilities were accepted. */
bool qmp_is_ready(const struct qmp_client *client);

/* The -errno that broke the connection, or 0 while it is usable. */
int qmp_is_broken(const struct qmp_client *client);

/* The greeting's QEMU version ("7.2.22"), or NULL before the greeting. Borrowed. */
const char *qmp_qemu_version(const struct qmp_client *client);

/* Queues command with args (a JSON object, borrowed; NULL for none). It goes out as soon
 * as the handshake is done; fn (may be NULL) gets the reply. On success *ret_id (may be
 * NULL) is the command's id, usable with qmp_cancel. */
int qmp_send(struct qmp_client *client, const char *command, json_t *args, qmp_reply_fn fn,
	     void *userdata, uint64_t *ret_id);

/* Forgets a pending command: its reply, if it ever comes, is dropped and its callback is
 * never called. Returns -ENOENT when no such command is pending. */
int qmp_cancel(struct qmp_client *client, uint64_t id);

/* Number of commands sent or queued that have no reply yet. */
size_t qmp_pending(const struct qmp_client *client);

/* Runs command with args (JSON object, borrowed, or NULL) and waits up to timeout_ms
 * (<0: forever) for its reply, completing the handshake first if needed; events that
 * arrive meanwhile go to the event callback. On success *ret_reply (may be NULL) is the
 * "return" value (caller json_decref()s). A QMP error returns as in qmp_reply_fn, its
 * description kept for qmp_last_error(); a timeout returns -ETIMEDOUT (the command is
 * cancelled, the connection stays usable). */
int qmp_command(struct qmp_client *client, const char *command, json_t *args, json_t **ret_reply,
		int timeout_ms);

/* The description of the last QMP error qmp_command() returned ("Class: desc"), or
 * NULL. Borrowed; valid until the next qmp_command(). */
const char *qmp_last_error(const struct qmp_client *client);

/* True when a query-qmp-schema result lists a command of this name. */
bool qmp_schema_has_command(json_t *schema, const char *name);

/* True when any object type in a query-qmp-schema result has a member of this name
 * (type names are masked in the schema; member names are real). */
bool qmp_schema_has_member(json_t *schema, const char *name);
