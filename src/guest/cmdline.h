/* The vmhpc.* keys of the kernel command line (docs/guest.md has the table), parsed into a
 * struct config for vmhpc-init's boot sequence and its exec service. libc only. */
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "guest/frame.h"

#define CMDLINE_DEFAULT_EXEC_PORT  7000
#define CMDLINE_DEFAULT_OVERLAY_MB 128

enum root_kind { ROOT_AUTO, ROOT_PMEM, ROOT_BLK, ROOT_NONE };

struct host_entry {
	char name[64];
	char addr[INET6_ADDRSTRLEN];
};

struct config {
	bool have_token; /* token: from the host's SETUP (control.h) */
	uint8_t token[FRAME_TOKEN_BYTES];
	char name[64];
	bool have_ip;
	struct in_addr ip;
	unsigned prefix;
	struct host_entry *hosts; /* n_hosts of them, malloc'd: the caller's to free() */
	size_t n_hosts;
	enum root_kind root;
	unsigned overlay_mb;
	char share[FRAME_SETUP_MAX_PATH + 1]; /* from the host's SETUP, not the command line */
	uint16_t exec_port;
	bool have_shm_node; /* vmhpc.shm_node: the host gave this VM a shared-memory channel */
	unsigned shm_node;
	unsigned shm_group; /* vmhpc.shm_group: this node's in a job across nodes; 0 otherwise */
	bool probe; /* vmhpc.probe=1: the host's accelerator probe (vm/accel.h): say ready, stop */
};

/* Reads /proc/cmdline into cfg, which holds the defaults; bad values are said and skipped. */
void cmdline_parse(struct config *cfg);

/* Parses digits only, at most max, into *ret; false (and *ret untouched) otherwise. */
bool cmdline_parse_uint(const char *s, unsigned long max, unsigned long *ret);
