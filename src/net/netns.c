/* A job's private network: see netns.h. */
#include "net/netns.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include "util/cleanup.h"
#include "util/error.h"

#define NET_BRIDGE   "br0"
#define NET_TUN_PATH "/dev/net/tun"

struct net_job {
	struct proc_namespaces ns;
	unsigned n_taps;
	char (*taps)[16];
};

/* What the namespace holder did; sent to the parent once, whatever happened. */
enum holder_step {
	STEP_DONE,
	STEP_UNSHARE,
	STEP_SETGROUPS,
	STEP_UID_MAP,
	STEP_GID_MAP,
	STEP_SYSCTL,
};

struct holder_report {
	int step; /* enum holder_step reached: STEP_DONE or the step that failed */
	int error;
	int sysctl; /* STEP_SYSCTL: index into holder_sysctls */
};

/* Written from inside the new namespace, before any link exists: /proc/sys/net is the
 * writer's network namespace. "default" applies to links made later (the bridge, taps), so
 * none of them gets an IPv6 link-local address a guest could talk to; with IPv6 off and
 * no IPv4 address, the namespace's own stack answers nothing (ARP included); arp_ignore 8
 * says so once more should an address ever be added. */
static const struct {
	const char *path, *value;
	bool required;
} holder_sysctls[] = {
    {"/proc/sys/net/ipv6/conf/all/disable_ipv6", "1\n", true},
    {"/proc/sys/net/ipv6/conf/default/disable_ipv6", "1\n", true},
    {"/proc/sys/net/ipv4/conf/all/arp_ignore", "8\n", false},
    {"/proc/sys/net/ipv4/conf/default/arp_ignore", "8\n", false},
};

/* Async-signal-safe: writes text to path. Returns 0 or errno. */
static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), e = 0;
	size_t n = strlen(text);

	if (fd < 0)
		return errno;
	if (write(fd, text, n) != (ssize_t)n)
		e = errno ? errno : EIO;
	close(fd);
	return e;
}

/* The forked child that makes the namespaces: it unshares, maps root to the caller (user
 * case), turns IPv6 off, reports, then stays until the parent has opened its namespace
 * files (the parent closes the socket) and exits. Only async-signal-safe calls: the
 * parent may have threads. */
static void __attribute__((noreturn))
holder(int sock, bool unprivileged, const char *uid_map, const char *gid_map, pid_t parent)
{
	struct holder_report rep = {.step = STEP_DONE};
	char c;

	/* A parent killed before it took the namespaces must not leave us waiting. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	if (unshare(unprivileged ? CLONE_NEWUSER | CLONE_NEWNET : CLONE_NEWNET) < 0) {
		rep = (struct holder_report){STEP_UNSHARE, errno, 0};
		goto report;
	}
	if (unprivileged) {
		/* The one mapping a user may write for itself: root inside is the user outside.
		 * setgroups must be denied first, or the kernel refuses the gid map. */
		if ((rep.error = write_text("/proc/self/setgroups", "deny")) != 0) {
			rep.step = STEP_SETGROUPS;
			goto report;
		}
		if ((rep.error = write_text("/proc/self/uid_map", uid_map)) != 0) {
			rep.step = STEP_UID_MAP;
			goto report;
		}
		if ((rep.error = write_text("/proc/self/gid_map", gid_map)) != 0) {
			rep.step = STEP_GID_MAP;
			goto report;
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(holder_sysctls); i++) {
		int e = write_text(holder_sysctls[i].path, holder_sysctls[i].value);

		/* ENOENT: a kernel without IPv6 (or ARP knobs) has nothing to turn off. */
		if (e != 0 && e != ENOENT && holder_sysctls[i].required) {
			rep = (struct holder_report){STEP_SYSCTL, e, (int)i};
			goto report;
		}
	}
report:
	(void)!write(sock, &rep, sizeof(rep));
	while (read(sock, &c, 1) < 0 && errno == EINTR)
		;
	_exit(rep.step == STEP_DONE ? 0 : 1);
}

static int holder_error(const struct holder_report *rep, bool unprivileged, char **ret_error)
{
	int r = -rep->error;

	switch (rep->step) {
	case STEP_UNSHARE:
		if (unprivileged)
			return error_set(
			    ret_error, r,
			    "making the job's user and network namespaces: %s; enable "
			    "unprivileged user namespaces (sysctl "
			    "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > "
			    "0) or run as root",
			    strerror(rep->error));
		return error_set(ret_error, r, "making the job's network namespace: %s",
				 strerror(rep->error));
	case STEP_SETGROUPS:
	case STEP_UID_MAP:
	case STEP_GID_MAP:
		return error_set(ret_error, r,
				 "mapping root in the job's user namespace to this user (%s): %s",
				 rep->step == STEP_SETGROUPS ? "setgroups"
				 : rep->step == STEP_UID_MAP ? "uid_map"
							     : "gid_map",
				 strerror(rep->error));
	case STEP_SYSCTL:
		return error_set(ret_error, r, "writing %s in the job's network namespace: %s",
				 holder_sysctls[rep->sysctl].path, strerror(rep->error));
	default:
		return error_set(ret_error, -EIO, "the job's namespace helper failed");
	}
}

/* Makes the namespaces and opens them into j->ns. */
static int make_namespaces(struct net_job *j, bool unprivileged, char **ret_error)
{
	char uid_map[32], gid_map[32], path[64];
	struct holder_report rep;
	_cleanup_close_ int sock = -1;
	int sv[2], r = 0, status;
	pid_t parent = getpid(), pid;
	ssize_t n;

	/* Formatted here: the child only calls async-signal-safe functions. */
	snprintf(uid_map, sizeof(uid_map), "0 %u 1\n", (unsigned)geteuid());
	snprintf(gid_map, sizeof(gid_map), "0 %u 1\n", (unsigned)getegid());
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return error_set(ret_error, -errno, "socketpair: %s", strerror(errno));
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(sv[0]);
		close(sv[1]);
		return error_set(ret_error, r, "fork: %s", strerror(-r));
	}
	if (pid == 0) {
		close(sv[0]);
		holder(sv[1], unprivileged, uid_map, gid_map, parent);
	}
	close(sv[1]);
	sock = sv[0];
	do
		n = read(sock, &rep, sizeof(rep));
	while (n < 0 && errno == EINTR);
	if (n != sizeof(rep))
		r = error_set(ret_error, -EIO, "the job's namespace helper died before reporting");
	else if (rep.step != STEP_DONE)
		r = holder_error(&rep, unprivileged, ret_error);
	else {
		/* The child is alive (it waits for us), so its pid names it. */
		snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
		j->ns.net_fd = open(path, O_RDONLY | O_CLOEXEC);
		if (j->ns.net_fd < 0)
			r = error_set(ret_error, -errno, "opening %s: %s", path, strerror(errno));
		if (r == 0 && unprivileged) {
			snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
			j->ns.user_fd = open(path, O_RDONLY | O_CLOEXEC);
			if (j->ns.user_fd < 0)
				r = error_set(ret_error, -errno, "opening %s: %s", path,
					      strerror(errno));
		}
	}
	close(TAKE_FD(sock)); /* lets the child go */
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return r;
}

/* Runs `PROGRAM -batch -` (ip or bridge) inside the namespaces with the commands in batch. */
static int run_batch(const struct net_job *j, const char *program, const char *batch,
		     char **ret_error)
{
	char *argv[] = {(char *)program, "-batch", "-", NULL};
	_cleanup_free_ char *err = NULL, *last = NULL;
	_cleanup_close_ int in_r = -1;
	struct proc_options opts = {.stdout_fd = -1, .namespaces = &j->ns};
	size_t len = strlen(batch);
	int p[2], r, code;

	/* The whole batch fits the pipe (a few KiB for NET_MAX_VMS taps), so it is written
	 * before ip starts and ip reads it to the end. */
	if (pipe2(p, O_CLOEXEC) < 0)
		return error_set(ret_error, -errno, "pipe: %s", strerror(errno));
	in_r = p[0];
	if (write(p[1], batch, len) != (ssize_t)len) {
		r = -errno;
		close(p[1]);
		return error_set(ret_error, r ? r : -EIO, "writing ip's commands: %s",
				 strerror(r ? -r : EIO));
	}
	close(p[1]);
	opts.stdin_fd = in_r;
	r = proc_run(argv, &opts, NULL, &err, &code);
	if (r < 0)
		return error_set(ret_error, r, "running %s: %s; install iproute2", program,
				 strerror(-r));
	if (code != 0) {
		/* ip ends with "Command failed -:N"; the line before says why. */
		char *cut = strstr(err, "Command failed");

		if (cut)
			*cut = '\0';
		last = proc_last_line(err);
		return error_set(ret_error, -EIO,
				 "making the job's network in its network namespace with "
				 "`%s` failed (exit %d): %s",
				 program, code, last && *last ? last : "?");
	}
	return 0;
}

static int run_ip_batch(const struct net_job *j, const char *batch, char **ret_error)
{
	return run_batch(j, "ip", batch, ret_error);
}

int net_job_create(unsigned n_vms, bool unprivileged, struct net_job **ret, char **ret_error)
{
	struct net_job *j;
	size_t cap, len = 0;
	_cleanup_free_ char *batch = NULL;
	int r;

	if (n_vms == 0 || n_vms > NET_MAX_VMS)
		return error_set(ret_error, -EINVAL, "a job network has 1 to %d VMs", NET_MAX_VMS);
	/* QEMU (and ip, making the taps) open the tun device as the user: no namespace lends
	 * access to a device node the user cannot open. */
	if (unprivileged && access(NET_TUN_PATH, R_OK | W_OK) < 0)
		return error_set(ret_error, -errno,
				 "%s: %s; a job's VMs are joined by taps, which an unprivileged "
				 "user can make only if %s is mode 0666 (Debian's udev default: "
				 "`chmod 0666 %s`), or run as root",
				 NET_TUN_PATH, strerror(errno), NET_TUN_PATH, NET_TUN_PATH);
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->ns.net_fd = j->ns.user_fd = -1;
	j->taps = calloc(n_vms, sizeof(*j->taps));
	if (!j->taps) {
		r = -ENOMEM;
		goto fail;
	}
	r = make_namespaces(j, unprivileged, ret_error);
	if (r < 0)
		goto fail;

	cap = 64 + (size_t)n_vms * 96;
	batch = malloc(cap);
	if (!batch) {
		r = -ENOMEM;
		goto fail;
	}
	len +=
	    (size_t)snprintf(batch + len, cap - len,
			     "link add " NET_BRIDGE " type bridge\nlink set " NET_BRIDGE " up\n");
	for (unsigned i = 0; i < n_vms; i++) {
		/* The namespace is the job's alone: short fixed names never collide. */
		snprintf(j->taps[i], sizeof(j->taps[i]), "tap%u", i);
		len += (size_t)snprintf(batch + len, cap - len,
					"tuntap add dev %s mode tap\nlink set %s master " NET_BRIDGE
					" up\n",
					j->taps[i], j->taps[i]);
	}
	j->n_taps = n_vms;
	r = run_ip_batch(j, batch, ret_error);
	if (r < 0)
		goto fail;
	*ret = j;
	return 0;
fail:
	net_job_free(j);
	return r;
}

/* ---- the VXLAN link (net_job_add_vxlan) ---- */

#define VXLAN_IFNAME "vxlan0"

struct nl_buf {
	union {
		struct nlmsghdr hdr;
		char bytes[512];
	};
};

/* Appends one attribute; returns it (for nesting) or NULL when the buffer is full. */
static struct rtattr *nl_put(struct nl_buf *b, unsigned short type, const void *data, size_t len)
{
	size_t off = NLMSG_ALIGN(b->hdr.nlmsg_len);
	struct rtattr *a = (struct rtattr *)(b->bytes + off);

	if (off + RTA_SPACE(len) > sizeof(b->bytes))
		return NULL;
	a->rta_type = type;
	a->rta_len = (unsigned short)RTA_LENGTH(len);
	if (len)
		memcpy(RTA_DATA(a), data, len);
	b->hdr.nlmsg_len = (uint32_t)(off + RTA_SPACE(len));
	return a;
}

static void nl_end_nest(struct nl_buf *b, struct rtattr *nest)
{
	nest->rta_len = (unsigned short)(b->bytes + b->hdr.nlmsg_len - (char *)nest);
}

/* RTM_NEWLINK for a VXLAN device named VXLAN_IFNAME, sent from the caller's network
 * namespace with IFLA_NET_NS_FD = the job's: the kernel makes the device in the job's
 * namespace while the VXLAN's "link net", where it opens its UDP socket, is the namespace the
 * request came from. So the device never exists in the node's namespace (no failure can
 * leave it there) and goes with the job's namespace. Returns 0 or -errno (the kernel's). */
static int vxlan_create(int netns_fd, const struct net_vxlan *vx)
{
	struct nl_buf b = {0};
	struct ifinfomsg *ifi;
	struct rtattr *linkinfo, *data;
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	uint32_t fd32 = (uint32_t)netns_fd, mtu = vx->mtu, vni = vx->vni;
	uint16_t port_be = htons(vx->port);
	uint8_t off = 0;
	char reply[4096]; /* an error echoes our request (< 512 bytes) after its header */
	_cleanup_close_ int sock = -1;
	ssize_t n;

	b.hdr.nlmsg_len = NLMSG_LENGTH(sizeof(*ifi));
	b.hdr.nlmsg_type = RTM_NEWLINK;
	b.hdr.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	b.hdr.nlmsg_seq = 1;
	ifi = NLMSG_DATA(&b.hdr);
	ifi->ifi_family = AF_UNSPEC;
	if (!nl_put(&b, IFLA_IFNAME, VXLAN_IFNAME, sizeof(VXLAN_IFNAME)) ||
	    !nl_put(&b, IFLA_MTU, &mtu, sizeof(mtu)) ||
	    !nl_put(&b, IFLA_NET_NS_FD, &fd32, sizeof(fd32)))
		return -ENOBUFS;
	linkinfo = nl_put(&b, IFLA_LINKINFO, NULL, 0);
	if (!linkinfo || !nl_put(&b, IFLA_INFO_KIND, "vxlan", sizeof("vxlan")))
		return -ENOBUFS;
	data = nl_put(&b, IFLA_INFO_DATA, NULL, 0);
	/* No learning: the flood entries and the bridge decide where frames go; a remote's
	 * source address is not trusted to claim MACs. */
	if (!data || !nl_put(&b, IFLA_VXLAN_ID, &vni, sizeof(vni)) ||
	    !nl_put(&b, IFLA_VXLAN_PORT, &port_be, sizeof(port_be)) ||
	    !nl_put(&b, IFLA_VXLAN_LEARNING, &off, sizeof(off)))
		return -ENOBUFS;
	nl_end_nest(&b, data);
	nl_end_nest(&b, linkinfo);

	sock = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (sock < 0)
		return -errno;
	if (sendto(sock, &b, b.hdr.nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	do
		n = recv(sock, reply, sizeof(reply), 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (unsigned)n);
	     h = NLMSG_NEXT(h, n))
		if (h->nlmsg_type == NLMSG_ERROR) {
			const struct nlmsgerr *e = NLMSG_DATA(h);

			return e->error; /* 0: the ACK */
		}
	return -EBADMSG;
}

int net_job_add_vxlan(struct net_job *j, const struct net_vxlan *vx, char **ret_error)
{
	_cleanup_free_ char *ip_batch = NULL, *fdb_batch = NULL;
	size_t cap, len = 0;
	struct in_addr a;
	int r;

	if (j->ns.user_fd >= 0)
		return error_set(ret_error, -EPERM,
				 "a job across nodes needs root: its VXLAN device is made in the "
				 "node's network namespace");
	if (vx->vni == 0 || vx->vni > 0xffffff || vx->port == 0 || vx->mtu < 576 || vx->mtu > 9000)
		return error_set(ret_error, -EINVAL,
				 "VXLAN id %u, port %u, MTU %u: the id is 1 .. 16777215, the MTU "
				 "576 .. 9000",
				 vx->vni, vx->port, vx->mtu);
	for (unsigned i = 0; i < vx->n_entries; i++)
		if (inet_pton(AF_INET, vx->entries[i].dst, &a) != 1)
			return error_set(ret_error, -EINVAL,
					 "node address \"%s\" is not an IPv4 address",
					 vx->entries[i].dst);
	for (unsigned i = 0; i < vx->n_remotes; i++)
		if (inet_pton(AF_INET, vx->remote_addrs[i], &a) != 1)
			return error_set(ret_error, -EINVAL,
					 "node address \"%s\" is not an IPv4 address",
					 vx->remote_addrs[i]);
	r = vxlan_create(j->ns.net_fd, vx);
	if (r == -EEXIST)
		return error_set(ret_error, r,
				 "VXLAN id %u on UDP port %u is in use on this node (another "
				 "job's segment): give each job its own id",
				 vx->vni, vx->port);
	if (r == -EOPNOTSUPP || r == -ENOENT)
		return error_set(ret_error, r,
				 "making the job's VXLAN device: %s; this kernel lacks VXLAN "
				 "(CONFIG_VXLAN, `modprobe vxlan`)",
				 strerror(-r));
	if (r < 0)
		return error_set(ret_error, r, "making the job's VXLAN device (id %u, port %u): %s",
				 vx->vni, vx->port, strerror(-r));

	/* Enslaved and up; the taps take the same MTU so that the bridge's (its ports'
	 * smallest) does not change with the order they come up in. */
	cap = 128 + (size_t)j->n_taps * 48;
	ip_batch = malloc(cap);
	if (!ip_batch)
		return -ENOMEM;
	len += (size_t)snprintf(ip_batch + len, cap - len,
				"link set " VXLAN_IFNAME " master " NET_BRIDGE " up\n");
	for (unsigned i = 0; i < j->n_taps; i++)
		len += (size_t)snprintf(ip_batch + len, cap - len, "link set %s mtu %u\n",
					j->taps[i], vx->mtu);
	r = run_ip_batch(j, ip_batch, ret_error);
	if (r < 0)
		return r;
	/* Head-end replication: broadcast (ARP) and unknown unicast go to every other node.
	 * In batches of 256 entries (~16 KiB): each batch must fit the pipe (run_batch). */
	cap = 256 * 80 + 1;
	fdb_batch = malloc(cap);
	if (!fdb_batch)
		return -ENOMEM;
	for (unsigned first = 0; first < vx->n_remotes && r == 0; first += 256) {
		len = 0;
		for (unsigned i = first; i < vx->n_remotes && i < first + 256; i++)
			len += (size_t)snprintf(fdb_batch + len, cap - len,
						"fdb append 00:00:00:00:00:00 dev " VXLAN_IFNAME
						" dst %s\n",
						vx->remote_addrs[i]);
		r = run_batch(j, "bridge", fdb_batch, ret_error);
	}
	/* The static entries: "fdb add" makes them permanent, never aged out. */
	for (unsigned first = 0; first < vx->n_entries && r == 0; first += 256) {
		len = 0;
		for (unsigned i = first; i < vx->n_entries && i < first + 256; i++)
			len += (size_t)snprintf(fdb_batch + len, cap - len,
						"fdb add %s dev " VXLAN_IFNAME " dst %s\n",
						vx->entries[i].mac, vx->entries[i].dst);
		r = run_batch(j, "bridge", fdb_batch, ret_error);
	}
	return r;
}

int net_job_netns_fd(const struct net_job *j)
{
	return j->ns.net_fd;
}

int net_job_userns_fd(const struct net_job *j)
{
	return j->ns.user_fd;
}

const struct proc_namespaces *net_job_namespaces(const struct net_job *j)
{
	return &j->ns;
}

const char *net_job_tap(const struct net_job *j, unsigned vm)
{
	return vm < j->n_taps ? j->taps[vm] : NULL;
}

void net_job_free(struct net_job *j)
{
	if (!j)
		return;
	/* No link to delete: they live and die with the namespace. */
	if (j->ns.net_fd >= 0)
		close(j->ns.net_fd);
	if (j->ns.user_fd >= 0)
		close(j->ns.user_fd);
	free(j->taps);
	free(j);
}

void net_mac_address(unsigned vm, char out[NET_MAC_LEN])
{
	/* 52:54:00 is QEMU's local range; the segment is the job's own, so the VM index alone
	 * makes the address unique on it (+1: no all-zero host part). */
	snprintf(out, NET_MAC_LEN, "52:54:00:00:%02x:%02x", ((vm + 1) >> 8) & 0xff,
		 (vm + 1) & 0xff);
}
