#include "net/bridge.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/proc.h"

/* Runs `ip ARGS...`; on failure sets *ret_error from ip's own message. */
static int run_ip(char **ret_error, char *const argv[])
{
	_cleanup_free_ char *err = NULL, *last = NULL;
	int r, code;

	r = proc_run(argv, NULL, NULL, &err, &code);
	if (r < 0)
		return error_set(ret_error, r, "running ip: %s; install iproute2", strerror(-r));
	if (code != 0) {
		last = proc_last_line(err);
		return error_set(ret_error, -EIO, "`ip %s %s %s %s` failed: %s", argv[1], argv[2],
				 argv[3] ? argv[3] : "", argv[4] ? argv[4] : "",
				 last && *last ? last : "?");
	}
	return 0;
}

static int link_delete(const char *name)
{
	char *argv[] = {"ip", "link", "del", (char *)name, NULL};

	return run_ip(NULL, argv);
}

void net_bridge_destroy(struct net_bridge *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n_taps; i++)
		if (b->taps[i][0])
			link_delete(b->taps[i]);
	if (b->bridge[0])
		link_delete(b->bridge);
	free(b->taps);
	free(b);
}

int net_bridge_create(const char *job_id, size_t n_vms, struct net_bridge **ret_bridge,
		      char **ret_error)
{
	struct net_bridge *b;
	int r;

	if (strlen(job_id) != NET_JOB_ID_LEN || n_vms == 0 || n_vms > NET_MAX_VMS)
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->taps = calloc(n_vms, sizeof(*b->taps));
	if (!b->taps) {
		free(b);
		return -ENOMEM;
	}
	snprintf(b->bridge, sizeof(b->bridge), "vmhpc%sb", job_id);
	{
		char *add[] = {"ip", "link", "add", b->bridge, "type", "bridge", NULL};
		char *up[] = {"ip", "link", "set", b->bridge, "up", NULL};

		r = run_ip(ret_error, add);
		if (r < 0) {
			b->bridge[0] = '\0'; /* not ours to delete */
			goto fail;
		}
		r = run_ip(ret_error, up);
		if (r < 0)
			goto fail;
	}
	for (size_t i = 0; i < n_vms; i++) {
		char tap[16];
		char *add[] = {"ip", "tuntap", "add", "dev", tap, "mode", "tap", NULL};
		char *master[] = {"ip", "link", "set", tap, "master", b->bridge, "up", NULL};

		snprintf(tap, sizeof(tap), "vmhpc%st%zu", job_id, i);
		r = run_ip(ret_error, add);
		if (r < 0)
			goto fail;
		memcpy(b->taps[i], tap, sizeof(tap));
		b->n_taps = i + 1;
		r = run_ip(ret_error, master);
		if (r < 0)
			goto fail;
	}
	*ret_bridge = b;
	return 0;
fail:
	net_bridge_destroy(b);
	return r;
}

/* 'b' for "vmhpc<8 hex>b", 't' for "vmhpc<8 hex>t<digits>", else 0. */
static char job_link_kind(const char *name)
{
	const char *p = name + 5 + NET_JOB_ID_LEN;

	if (strncmp(name, "vmhpc", 5) != 0 || strlen(name) < 5 + NET_JOB_ID_LEN + 1)
		return 0;
	for (const char *h = name + 5; h < p; h++)
		if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f')))
			return 0;
	if (p[0] == 'b' && p[1] == '\0')
		return 'b';
	if (p[0] != 't' || !p[1])
		return 0;
	for (const char *d = p + 1; *d; d++)
		if (*d < '0' || *d > '9')
			return 0;
	return 't';
}

int net_remove_job_links(const char *job_id)
{
	char prefix[32];
	DIR *d = opendir("/sys/class/net");
	struct dirent *de;
	int n = 0;

	if (!d)
		return -errno;
	snprintf(prefix, sizeof(prefix), "vmhpc%s", job_id ? job_id : "");
	/* Taps first, then the bridges they were enslaved to. */
	for (char kind = 't';; kind = 'b') {
		rewinddir(d);
		while ((de = readdir(d)))
			if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 &&
			    job_link_kind(de->d_name) == kind && link_delete(de->d_name) == 0)
				n++;
		if (kind == 'b')
			break;
	}
	closedir(d);
	return n;
}

void net_mac_address(const char *job_id, size_t vm, char out[18])
{
	unsigned long id = strtoul(job_id, NULL, 16);

	/* 52:54:00 is QEMU's local range; the job id and VM index make it unique per segment. */
	snprintf(out, 18, "52:54:00:%02lx:%02lx:%02zx", (id >> 8) & 0xff, id & 0xff, vm & 0xff);
}
