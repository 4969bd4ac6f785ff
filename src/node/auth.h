/* Peer authentication with MUNGE, as Slurm does it: a request travels inside a MUNGE
 * credential, which munged signs with the site's key and which carries the sender's uid and
 * gid; the receiver's munged checks it (and refuses a replayed one). */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Wraps payload into a credential (caller frees), through munged's socket (NULL: the
 * default). On failure *ret_error (caller frees) says what munged answered. */
int node_auth_encode(const char *munge_socket, const void *payload, size_t len, char **ret_cred,
		     char **ret_error);
/* Checks cred and returns its payload (NUL-terminated, caller frees) and the sender's uid
 * and gid. -EACCES with *ret_error for a forged, expired, replayed or malformed credential. */
int node_auth_decode(const char *munge_socket, const char *cred, char **ret_payload,
		     size_t *ret_len, uid_t *ret_uid, gid_t *ret_gid, char **ret_error);
