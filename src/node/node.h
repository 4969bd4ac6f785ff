/* `vmhpc node`: the node daemon. It owns the node cache (a store bounded in bytes, least
 * recently used images evicted first, never one a running job pins, state in
 * <cache>/state.json), answers the prolog on a unix socket, feeds chunks to peers on TCP
 * (MUNGE-authenticated) in a pipelined binomial tree, and serves Prometheus metrics
 * (`GET /metrics` on its TCP port). docs/node.md describes it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define NODE_REGISTRIES_MAX 32 /* --registry entries */

struct node_options {
	const char *cache_dir;	  /* the store is <cache_dir>/store */
	uint64_t cache_max_bytes; /* bound on the store's chunk bytes (compressed) */
	const char *listen;	  /* "ADDR:PORT" for peers and metrics */
	const char *socket_path;  /* the local API */
	const char *name;	  /* this node's name in hostlists */
	const char *peers_file;	  /* NAME HOST:PORT lines; NULL: names resolve, default port */
	const char *munge_socket; /* NULL: munged's default */
	uid_t slurm_uid;	  /* besides root, who may ask (unix socket and MUNGE) */
	bool insecure;		  /* plain HTTP to the registry */
	/* The registries it may pull from (NULL-terminated "host[:port]"); NULL: any. */
	const char *const *registries;
	uint64_t peer_min_rate_bytes; /* a parent slower than this per second may be replaced */
	int peer_timeout_ms;	      /* a peer silent this long is dead */
};

/* Runs the daemon until SIGTERM or SIGINT; returns 0 or -errno (logged). */
int node_daemon_run(const struct node_options *o);
