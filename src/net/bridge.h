/* A job's private L2 segment on this node: one Linux bridge and one tap per VM, created
 * with iproute2 (needs root) and removed at the end. Names start with "vmhpc" and carry
 * the job id, so `vmhpc cleanup` can find what a killed job left. */
#pragma once

#include <stddef.h>

#define NET_JOB_ID_LEN 8 /* hex chars of a job id in interface names */
#define NET_MAX_VMS    256

struct net_bridge {
	char bridge[16]; /* "vmhpc<id>b" */
	size_t n_taps;
	char (*taps)[16]; /* "vmhpc<id>t<n>" */
};

/* Creates the bridge and n_vms taps, all up, taps enslaved. On failure everything
 * created is removed and *ret_error (caller frees) says what failed. Free with
 * net_bridge_destroy(). */
int net_bridge_create(const char *job_id, size_t n_vms, struct net_bridge **ret_bridge,
		      char **ret_error);

/* Deletes the taps and the bridge (missing ones are fine) and frees b; NULL is a no-op. */
void net_bridge_destroy(struct net_bridge *b);

/* Deletes every interface whose name starts with "vmhpc<job_id>" (all jobs' when job_id is
 * NULL); returns how many were deleted, or -errno. */
int net_remove_job_links(const char *job_id);

/* The MAC address of VM index vm in job_id ("52:54:00:xx:xx:xx"), into out[18]. */
void net_mac_address(const char *job_id, size_t vm, char out[18]);
