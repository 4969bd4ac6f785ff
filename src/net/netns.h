/* A job's private network on this node: a network namespace of its own (owned by a user
 * namespace of its own when the caller is not root) holding a bridge "br0" and one tap per
 * VM ("tap0".."tapN"), with IPv6 off and no address anywhere, so the segment reaches the
 * job's VMs and nothing else: not the host, not another job, not another user. Only QEMU
 * enters it (proc_join_namespaces() with net_job_namespaces()). Nothing is recorded for
 * cleanup: the kernel deletes the namespace and every link in it when the last reference
 * goes (our fds and the QEMUs inside), so a killed job leaves no link behind. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "util/proc.h"

#define NET_MAX_VMS 256
#define NET_MAC_LEN 18 /* "52:54:00:xx:xx:xx" and its NUL */

struct net_job;

/* Makes the namespace(s), the bridge and n_vms taps (all up, taps on the bridge). With
 * unprivileged, also a user namespace mapping root to the caller (needed without
 * CAP_SYS_ADMIN; the caller decides, e.g. by geteuid()). On failure nothing is left and
 * *ret_error (caller frees) says what failed and how to fix it. Free with net_job_free(). */
int net_job_create(unsigned n_vms, bool unprivileged, struct net_job **ret, char **ret_error);

/* A MAC behind the VXLAN link and the node (IPv4) it lives on. */
struct net_fdb_entry {
	char mac[NET_MAC_LEN];
	const char *dst;
};

/* The link that carries a job's segment to its other nodes (docs/vm.md "The job network
 * across nodes"). */
struct net_vxlan {
	uint32_t vni;			 /* 1 .. 2^24-1 */
	uint16_t port;			 /* UDP destination port on every node */
	unsigned mtu;			 /* of the VXLAN device and the taps (the guests') */
	const char *const *remote_addrs; /* the other nodes' IPv4 addresses */
	unsigned n_remotes;
	/* Where each known MAC on another node is: unicast to it goes to that node alone
	 * instead of being flooded to every node. May be empty. */
	const struct net_fdb_entry *entries;
	unsigned n_entries;
};

/* Adds "vxlan0" to j's bridge: made by netlink from the caller's (the node's) network
 * namespace straight into the job's, so that its UDP socket lives in the node's namespace
 * while the device itself lives and dies with the job's: nothing is ever left in the node's
 * namespace. Flood entries send broadcast and unknown frames to every remote, vx->entries
 * send a known MAC's frames to its node alone; the taps get
 * vx->mtu. Needs CAP_NET_ADMIN in the node's namespace (root); not for an unprivileged job.
 * -EEXIST (with *ret_error) when this node already carries the VNI on that port (another
 * job). */
int net_job_add_vxlan(struct net_job *j, const struct net_vxlan *vx, char **ret_error);

/* The namespaces' fds (owned by j; -1 for the user namespace when none was made). */
int net_job_netns_fd(const struct net_job *j);
int net_job_userns_fd(const struct net_job *j);

/* Both, for proc_options.namespaces or qemu_vm_config.namespaces (owned by j). */
const struct proc_namespaces *net_job_namespaces(const struct net_job *j);

/* The name of VM index vm's tap inside the namespace ("tap0"), or NULL past the last. */
const char *net_job_tap(const struct net_job *j, unsigned vm);

/* Closes our references (the namespace goes once no QEMU is left in it) and frees j;
 * NULL is a no-op. */
void net_job_free(struct net_job *j);

/* The MAC address of VM index vm (unique within a job's segment) into out. */
void net_mac_address(unsigned vm, char out[NET_MAC_LEN]);
