/* The registries a node daemon may pull from (`vmhpc node --registry`). The registry in a
 * job's image reference is its user's choice; without a list the daemon, which is root and
 * holds the site's registry credentials, would connect wherever a user points it and answer
 * that registry's 401 with the site's password. docs/node.md. Pure. */
#pragma once

/* 0 when ref_text's registry is one of allowed (a NULL-terminated list of "host" or
 * "host:port", compared without regard to case; host and host:port differ, as in docker);
 * also 0 when allowed is NULL or empty (no list: every registry). -EPERM when it is not in
 * the list, -EINVAL when ref_text is no image reference; on both, *ret_error (caller frees)
 * names the reference and what to do. */
int node_allowlist_check(const char *const *allowed, const char *ref_text, char **ret_error);
