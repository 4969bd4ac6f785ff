/* Slurm hostlists ("n[1-4,7],login,m[01-03]"): expanded into names, in order. Pure. */
#pragma once

#include <stddef.h>

#define HOSTLIST_MAX_HOSTS 4096
#define HOSTLIST_NAME_MAX  63

/* Expands text into *ret_hosts (n names; caller frees with hostlist_free). A term holds at
 * most one bracket, whose ranges keep their zero padding ("m[01-03]" gives m01 m02 m03).
 * On -EINVAL/-E2BIG *ret_error (caller frees) says what is wrong. Duplicates are refused:
 * a node appears once in a job's tree. */
int hostlist_expand(const char *text, char ***ret_hosts, size_t *ret_n, char **ret_error);
/* Frees hosts[0..n) and the array; NULL is a no-op. */
void hostlist_free(char **hosts, size_t n);
