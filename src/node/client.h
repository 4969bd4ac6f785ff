/* Talking to node daemons: over the unix socket (the prolog on this node, checked by peer
 * credentials) or over TCP with a MUNGE credential (`vmhpc node fetch`, and daemons feeding
 * each other). Requests and replies are JSON (docs/node.md). */
#pragma once

#include <jansson.h>
#include <stdint.h>

#define NODE_DEFAULT_PORT 7420

/* The TCP address ("host:port") of node name: from peers_file (lines "NAME HOST:PORT";
 * NULL: none) or else name itself with default_port. Caller frees. */
int node_peer_address(const char *peers_file, const char *name, uint16_t default_port,
		      char **ret_addr, char **ret_error);
/* Connects to "host:port" (IPv4 or a resolvable name) within timeout_ms; returns the fd. */
int node_connect_tcp(const char *addr, int timeout_ms, int *ret_fd, char **ret_error);
/* Sends req on fd as a MUNGE-signed request (munge_socket NULL: the default munged). */
int node_send_signed(int fd, const char *munge_socket, json_t *req, int timeout_ms,
		     char **ret_error);
/* One request/reply over the unix socket at path; *ret_reply is a new reference. A reply
 * {"ok": false} is returned as -EREMOTEIO with its "error" in *ret_error. */
int node_client_local(const char *path, json_t *req, int timeout_ms, json_t **ret_reply,
		      char **ret_error);
/* The same over TCP to addr, signed with MUNGE. */
int node_client_peer(const char *addr, const char *munge_socket, json_t *req, int timeout_ms,
		     json_t **ret_reply, char **ret_error);
/* A daemon's error text past the "node NAME: " with which node's daemon begins its own
 * failures (its caller names the node itself), else error itself; points into error. */
const char *node_error_past_name(const char *node, const char *error);
