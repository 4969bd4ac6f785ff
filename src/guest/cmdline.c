/* The kernel command line's vmhpc.* keys into a struct config (cmdline.h). The kernel does
 * not pass dotted keys to init, so they are read from /proc/cmdline. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guest/cmdline.h"
#include "guest/console.h"
#include "util/cleanup.h"

#define MAX_OVERLAY_MB (1u << 20)
#define MAX_HOSTS      4096

/* Host and VM names: what /etc/hosts and sethostname take. */
static bool valid_name(const char *s, size_t len)
{
	if (len == 0 || len > 63)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return s[0] != '-' && s[0] != '.';
}

bool cmdline_parse_uint(const char *s, unsigned long max, unsigned long *ret)
{
	char *end;
	unsigned long v;

	if (!s[0] || s[0] < '0' || s[0] > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*ret = v;
	return true;
}

static void parse_hosts(struct config *cfg, const char *list)
{
	const char *p = list;

	while (*p) {
		size_t len = strcspn(p, ","), eq;
		char item[160];
		struct in6_addr a6;
		struct in_addr a4;
		struct host_entry *grown;

		if (len == 0 || len >= sizeof(item)) {
			if (len)
				console_say("vmhpc.hosts: entry of %zu characters skipped", len);
			p += len + (p[len] == ',');
			continue;
		}
		memcpy(item, p, len);
		item[len] = '\0';
		p += len + (p[len] == ',');
		eq = strcspn(item, "=");
		if (!item[eq] || !valid_name(item, eq) ||
		    (inet_pton(AF_INET, item + eq + 1, &a4) != 1 &&
		     inet_pton(AF_INET6, item + eq + 1, &a6) != 1)) {
			console_say("vmhpc.hosts: \"%s\" is not NAME=ADDRESS; skipped", item);
			continue;
		}
		if (cfg->n_hosts >= MAX_HOSTS) {
			console_say("vmhpc.hosts: more than %d entries; the rest skipped",
				    MAX_HOSTS);
			return;
		}
		grown = realloc(cfg->hosts, (cfg->n_hosts + 1) * sizeof(*grown));
		if (!grown)
			return;
		cfg->hosts = grown;
		item[eq] = '\0';
		snprintf(grown[cfg->n_hosts].name, sizeof(grown->name), "%.63s", item);
		snprintf(grown[cfg->n_hosts].addr, sizeof(grown->addr), "%.45s", item + eq + 1);
		cfg->n_hosts++;
	}
}

/* vmhpc.hosts_seq=PREFIX:FIRST:N, the host list of a job too large for the kernel command
 * line (x86 keeps 2048 bytes): N hosts named PREFIX0 .. PREFIX<N-1> at consecutive IPv4
 * addresses from FIRST. Appended to what vmhpc.hosts gave. */
static void parse_hosts_seq(struct config *cfg, const char *value)
{
	char prefix[48], first[INET_ADDRSTRLEN];
	const char *c1 = strchr(value, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	unsigned long n;
	struct in_addr a;
	struct host_entry *grown;
	uint32_t base;

	if (!c1 || !c2 || (size_t)(c1 - value) >= sizeof(prefix) ||
	    (size_t)(c2 - c1 - 1) >= sizeof(first)) {
		console_say("vmhpc.hosts_seq \"%.64s\" is not PREFIX:FIRST-ADDRESS:COUNT; skipped",
			    value);
		return;
	}
	memcpy(prefix, value, (size_t)(c1 - value));
	prefix[c1 - value] = '\0';
	memcpy(first, c1 + 1, (size_t)(c2 - c1 - 1));
	first[c2 - c1 - 1] = '\0';
	if (!valid_name(prefix, strlen(prefix)) || inet_pton(AF_INET, first, &a) != 1 ||
	    !cmdline_parse_uint(c2 + 1, MAX_HOSTS, &n) || cfg->n_hosts + n > MAX_HOSTS) {
		console_say("vmhpc.hosts_seq \"%.64s\": a host name prefix, an IPv4 address and "
			    "at most %d hosts in all; skipped",
			    value, MAX_HOSTS);
		return;
	}
	grown = realloc(cfg->hosts, (cfg->n_hosts + n) * sizeof(*grown));
	if (!grown)
		return;
	cfg->hosts = grown;
	base = ntohl(a.s_addr);
	for (unsigned long g = 0; g < n; g++) {
		struct host_entry *e = &grown[cfg->n_hosts++];
		struct in_addr ag = {.s_addr = htonl(base + (uint32_t)g)};

		snprintf(e->name, sizeof(e->name), "%s%lu", prefix, g);
		inet_ntop(AF_INET, &ag, e->addr, sizeof(e->addr));
	}
}

static void parse_key(struct config *cfg, const char *key, const char *value)
{
	unsigned long v;

	if (strcmp(key, "token") == 0 || strcmp(key, "share") == 0) {
		/* Secrets and paths no longer ride on the command line every host user can read
		 * in /proc: the host sends them in SETUP on the control port (control.h). */
		console_say("vmhpc.%s on the kernel command line is ignored: the host sends it "
			    "in SETUP on the control port",
			    key);
	} else if (strcmp(key, "name") == 0) {
		if (valid_name(value, strlen(value)))
			snprintf(cfg->name, sizeof(cfg->name), "%s", value);
		else
			console_say("vmhpc.name \"%.64s\" is not a host name; ignored", value);
	} else if (strcmp(key, "ip") == 0) {
		char addr[INET_ADDRSTRLEN + 4];
		char *slash;
		unsigned long prefix = 24;

		snprintf(addr, sizeof(addr), "%s", value);
		slash = strchr(addr, '/');
		if (slash)
			*slash++ = '\0';
		if (inet_pton(AF_INET, addr, &cfg->ip) == 1 &&
		    (!slash || cmdline_parse_uint(slash, 32, &prefix))) {
			cfg->have_ip = true;
			cfg->prefix = (unsigned)prefix;
		} else {
			console_say("vmhpc.ip \"%.64s\" is not A.B.C.D/PREFIX; eth0 stays down",
				    value);
		}
	} else if (strcmp(key, "hosts") == 0) {
		parse_hosts(cfg, value);
	} else if (strcmp(key, "hosts_seq") == 0) {
		parse_hosts_seq(cfg, value);
	} else if (strcmp(key, "root") == 0) {
		if (strcmp(value, "pmem") == 0)
			cfg->root = ROOT_PMEM;
		else if (strcmp(value, "blk") == 0)
			cfg->root = ROOT_BLK;
		else if (strcmp(value, "none") == 0)
			cfg->root = ROOT_NONE;
		else
			console_say("vmhpc.root \"%.64s\" is not pmem, blk or none; trying both",
				    value);
	} else if (strcmp(key, "overlay_mb") == 0) {
		if (cmdline_parse_uint(value, MAX_OVERLAY_MB, &v) && v > 0)
			cfg->overlay_mb = (unsigned)v;
		else
			console_say("vmhpc.overlay_mb \"%.64s\" is not 1..%u; using %u", value,
				    MAX_OVERLAY_MB, cfg->overlay_mb);
	} else if (strcmp(key, "exec_port") == 0) {
		if (cmdline_parse_uint(value, 65535, &v) && v > 0)
			cfg->exec_port = (uint16_t)v;
		else
			console_say("vmhpc.exec_port \"%.64s\" is not 1..65535; using %u", value,
				    cfg->exec_port);
	} else if (strcmp(key, "probe") == 0) {
		cfg->probe = strcmp(value, "1") == 0;
	} else if (strcmp(key, "shm_node") == 0) {
		if (cmdline_parse_uint(value, 63, &v)) {
			cfg->have_shm_node = true;
			cfg->shm_node = (unsigned)v;
		} else {
			console_say("vmhpc.shm_node \"%.64s\" is not 0..63; no shared memory",
				    value);
		}
	} else if (strcmp(key, "shm_group") == 0) {
		if (cmdline_parse_uint(value, 65535, &v))
			cfg->shm_group = (unsigned)v;
		else
			console_say("vmhpc.shm_group \"%.64s\" is not 0..65535; using 0", value);
	} else {
		console_say("unknown key vmhpc.%.64s ignored", key);
	}
}

void cmdline_parse(struct config *cfg)
{
	_cleanup_close_ int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	char buf[16384];
	ssize_t n;
	char *save = NULL;

	if (fd < 0) {
		console_say("reading /proc/cmdline: %s", strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		return;
	buf[n] = '\0';
	for (char *word = strtok_r(buf, " \t\n", &save); word;
	     word = strtok_r(NULL, " \t\n", &save)) {
		char *eq, *value;
		size_t vlen;

		if (strncmp(word, "vmhpc.", 6) != 0)
			continue;
		eq = strchr(word, '=');
		if (!eq) {
			console_say("kernel command line: \"%.64s\" has no value; ignored", word);
			continue;
		}
		*eq = '\0';
		value = eq + 1;
		vlen = strlen(value);
		/* The kernel passes key="value" through with its quotes. */
		if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
			value[vlen - 1] = '\0';
			value++;
		}
		parse_key(cfg, word + 6, value);
	}
}
