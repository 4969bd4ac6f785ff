/* `vmhpc node`: the node daemon, and its clients (`fetch`, `present`, `release`,
 * `metrics`). docs/node.md. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "node/client.h"
#include "node/hostlist.h"
#include "node/node.h"
#include "registry/reference.h"
#include "util/cleanup.h"
#include "util/log.h"
#include "util/time.h"

#define DEFAULT_SOCKET "/run/vmhpc/node.sock"

static int parse_size(const char *s, uint64_t *ret)
{
	char *end;
	double v = strtod(s, &end);
	uint64_t mul = 1;

	if (end == s || v < 0)
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		mul = 1000;
		end++;
		break;
	case 'M':
		mul = 1000 * 1000;
		end++;
		break;
	case 'G':
		mul = 1000ull * 1000 * 1000;
		end++;
		break;
	case 'T':
		mul = 1000ull * 1000 * 1000 * 1000;
		end++;
		break;
	}
	if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	*ret = (uint64_t)(v * (double)mul);
	return 0;
}

static int daemon_main(int argc, char **argv)
{
	static const struct option opts[] = {{"foreground", no_argument, NULL, 'f'},
					     {"cache", required_argument, NULL, 'c'},
					     {"cache-max", required_argument, NULL, 'm'},
					     {"listen", required_argument, NULL, 'l'},
					     {"socket", required_argument, NULL, 's'},
					     {"name", required_argument, NULL, 'n'},
					     {"peers", required_argument, NULL, 'p'},
					     {"munge-socket", required_argument, NULL, 'u'},
					     {"slurm-user", required_argument, NULL, 'U'},
					     {"insecure", no_argument, NULL, 'i'},
					     {"peer-timeout-ms", required_argument, NULL, 't'},
					     {"registry", required_argument, NULL, 'r'},
					     {"peer-min-rate", required_argument, NULL, 'R'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	struct node_options o = {.cache_dir = "/var/cache/vmhpc/node",
				 .cache_max_bytes = 20ull * 1000 * 1000 * 1000,
				 .listen = "0.0.0.0:7420",
				 .socket_path = DEFAULT_SOCKET,
				 .slurm_uid = (uid_t)-1,
				 .peer_timeout_ms = 5000,
				 .peer_min_rate_bytes = 1000 * 1000};
	static char host[256];
	static const char *registries[NODE_REGISTRIES_MAX + 1];
	const char *env_auth = getenv("VMHPC_REGISTRY_AUTH");
	size_t n_registries = 0;
	int c;

	if (gethostname(host, sizeof(host) - 1) == 0) {
		host[strcspn(host, ".")] = 0;
		o.name = host;
	}
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			break; /* always in the foreground: systemd (Type=simple) supervises */
		case 'c':
			o.cache_dir = optarg;
			break;
		case 'm':
			if (parse_size(optarg, &o.cache_max_bytes) < 0) {
				log_error("--cache-max %s: write bytes, e.g. 20G or 500M", optarg);
				return 2;
			}
			break;
		case 'l':
			o.listen = optarg;
			break;
		case 's':
			o.socket_path = optarg;
			break;
		case 'n':
			o.name = optarg;
			break;
		case 'p':
			o.peers_file = optarg;
			break;
		case 'u':
			o.munge_socket = optarg;
			break;
		case 'U': {
			struct passwd *pw = getpwnam(optarg);

			if (!pw) {
				log_error("--slurm-user %s: no such user", optarg);
				return 2;
			}
			o.slurm_uid = pw->pw_uid;
			break;
		}
		case 'i':
			o.insecure = true;
			break;
		case 't':
			o.peer_timeout_ms = atoi(optarg);
			break;
		case 'R':
			if (parse_size(optarg, &o.peer_min_rate_bytes) < 0) {
				log_error("--peer-min-rate %s: write bytes per second, e.g. 1M; 0 "
					  "turns the check off",
					  optarg);
				return 2;
			}
			break;
		case 'r':
			if (!reference_registry_valid(optarg)) {
				log_error("--registry %s: write HOST or HOST:PORT, as an image "
					  "reference names it (e.g. registry.site:5000)",
					  optarg);
				return 2;
			}
			if (n_registries == NODE_REGISTRIES_MAX) {
				log_error("--registry %s: at most %d registries", optarg,
					  NODE_REGISTRIES_MAX);
				return 2;
			}
			registries[n_registries++] = optarg;
			o.registries = registries;
			break;
		case 'h':
			printf("usage: vmhpc node [--foreground] [--cache DIR] [--cache-max SIZE] "
			       "[--listen IPV4:PORT] [--socket PATH] [--name NODE] [--peers FILE] "
			       "[--munge-socket PATH] [--slurm-user USER] [--insecure] "
			       "[--peer-timeout-ms N] [--peer-min-rate BYTES/S] "
			       "[--registry HOST[:PORT]]...\n"
			       "       vmhpc node fetch --image REF --nodes HOSTLIST [--job J] "
			       "[--scheme chain|binomial|central] [--central] [--peers FILE] "
			       "[--json]\n"
			       "       vmhpc node present|release|metrics [--socket PATH] "
			       "[--scheme S] ...\n");
			return 0;
		default:
			return 2;
		}
	}
	if (o.peer_timeout_ms < 100)
		o.peer_timeout_ms = 100;
	/* $VMHPC_REGISTRY_AUTH is bound to no registry: without a list, a job naming a
	 * registry of its user's would get the site's password with the first 401. */
	if (env_auth && *env_auth && n_registries == 0) {
		log_error("VMHPC_REGISTRY_AUTH is sent to any registry that asks, and a job "
			  "chooses the registry: name the ones this node may pull from with "
			  "--registry HOST[:PORT], or give the credentials as the auths of a "
			  "config.json under DOCKER_CONFIG, which are bound to their registry");
		return 2;
	}
	return node_daemon_run(&o) < 0 ? 1 : 0;
}

struct target {
	const char *node;
	char *addr;
	json_t *req;
	const char *munge_socket;
	json_t *reply;
	char *error;
	double seconds;
};

static void *ask_node(void *arg)
{
	struct target *t = arg;
	double t0 = time_now_s();

	node_client_peer(t->addr, t->munge_socket, t->req, 24 * 3600 * 1000, &t->reply, &t->error);
	t->seconds = time_now_s() - t0;
	return NULL;
}

/* `vmhpc node fetch`: asks every node of the list (in parallel, over TCP with MUNGE) to make
 * the image present; they build the tree among themselves. */
static int fetch_main(int argc, char **argv)
{
	static const struct option opts[] = {{"image", required_argument, NULL, 'i'},
					     {"nodes", required_argument, NULL, 'n'},
					     {"job", required_argument, NULL, 'j'},
					     {"central", no_argument, NULL, 'c'},
					     {"peers", required_argument, NULL, 'p'},
					     {"munge-socket", required_argument, NULL, 'u'},
					     {"json", no_argument, NULL, 'J'},
					     {"scheme", required_argument, NULL, 's'},
					     {0}};
	const char *image = NULL, *nodes = NULL, *job = NULL, *peers = NULL, *munge = NULL;
	const char *scheme = NULL;
	bool json = false;
	_cleanup_free_ char *error = NULL;
	char **hosts = NULL;
	size_t n = 0;
	struct target *t;
	pthread_t *th;
	double t0;
	int c, code = 0;
	uint64_t total = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			image = optarg;
			break;
		case 'n':
			nodes = optarg;
			break;
		case 'j':
			job = optarg;
			break;
		case 'c':
			scheme = "central";
			break;
		case 's':
			scheme = optarg;
			break;
		case 'p':
			peers = optarg;
			break;
		case 'u':
			munge = optarg;
			break;
		case 'J':
			json = true;
			break;
		default:
			return 2;
		}
	}
	if (!image || !nodes) {
		log_error(
		    "`vmhpc node fetch` needs --image REGISTRY/REPO[:TAG] and --nodes HOSTLIST");
		return 2;
	}
	if (hostlist_expand(nodes, &hosts, &n, &error) < 0) {
		log_error("--nodes %s: %s", nodes, error);
		return 2;
	}
	t = calloc(n, sizeof(*t));
	th = calloc(n, sizeof(*th));
	if (!t || !th) {
		code = 1;
		goto out;
	}
	/* Every address first, so that no thread is running when one is wrong. */
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *e = NULL;

		t[i].node = hosts[i];
		t[i].munge_socket = munge;
		if (node_peer_address(peers, hosts[i], NODE_DEFAULT_PORT, &t[i].addr, &e) < 0) {
			log_error("%s", e ? e : "no address");
			code = 1;
			goto out;
		}
		t[i].req = json_pack("{s:s, s:s, s:s, s:s?, s:s?}", "op", "present", "ref", image,
				     "nodes", nodes, "job", job, "scheme", scheme);
	}
	t0 = time_now_s();
	for (size_t i = 0; i < n; i++)
		pthread_create(&th[i], NULL, ask_node, &t[i]);
	for (size_t i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	for (size_t i = 0; i < n; i++) {
		if (!t[i].reply) {
			const char *e = t[i].error ? t[i].error : "failed";

			log_error("node %s: %s", t[i].node, node_error_past_name(t[i].node, e));
			code = 1;
			continue;
		}
		total +=
		    (uint64_t)json_integer_value(json_object_get(t[i].reply, "bytes_received"));
	}
	if (json) {
		json_t *out = json_pack("{s:s, s:s, s:f, s:I, s:b, s:[]}", "image", image, "nodes",
					nodes, "seconds", time_now_s() - t0, "bytes_received",
					(json_int_t)total, "ok", code == 0, "per_node");

		for (size_t i = 0; i < n; i++)
			json_array_append_new(json_object_get(out, "per_node"),
					      json_pack("{s:s, s:b, s:f, s:O?, s:s?}", "node",
							t[i].node, "ok", t[i].reply != NULL,
							"seconds", t[i].seconds, "reply",
							t[i].reply, "error", t[i].error));
		json_dumpf(out, stdout, JSON_INDENT(1));
		printf("\n");
		json_decref(out);
	} else {
		for (size_t i = 0; i < n; i++)
			if (t[i].reply)
				printf("%-12s %s:%lld from %s, %lld bytes in %.2f s\n", t[i].node,
				       json_string_value(json_object_get(t[i].reply, "name")),
				       json_integer_value(json_object_get(t[i].reply, "version")),
				       json_string_value(json_object_get(t[i].reply, "source")),
				       json_integer_value(
					   json_object_get(t[i].reply, "bytes_received")),
				       t[i].seconds);
		printf("%s on %zu nodes in %.2f s, %llu bytes moved\n", image, n, time_now_s() - t0,
		       (unsigned long long)total);
	}
out:
	for (size_t i = 0; t && i < n; i++) {
		free(t[i].addr);
		free(t[i].error);
		json_decref(t[i].req);
		json_decref(t[i].reply);
	}
	free(t);
	free(th);
	hostlist_free(hosts, n);
	return code;
}

/* present / release / metrics on this node's socket (the prolog's API). */
static int local_main(const char *op, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'}, {"image", required_argument, NULL, 'i'},
	    {"nodes", required_argument, NULL, 'n'},  {"job", required_argument, NULL, 'j'},
	    {"scheme", required_argument, NULL, 'S'}, {0}};
	const char *sock = DEFAULT_SOCKET, *image = NULL, *nodes = NULL, *job = NULL;
	const char *scheme = NULL;
	_cleanup_free_ char *error = NULL;
	json_t *req, *reply = NULL;
	int c, r;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 'i':
			image = optarg;
			break;
		case 'n':
			nodes = optarg;
			break;
		case 'j':
			job = optarg;
			break;
		case 'S':
			scheme = optarg;
			break;
		default:
			return 2;
		}
	}
	req = json_pack("{s:s, s:s?, s:s?, s:s?, s:s?}", "op", op, "ref", image, "nodes",
			nodes ? nodes : "", "job", job, "scheme", scheme);
	if (!nodes)
		json_object_set_new(req, "nodes", json_array());
	r = node_client_local(sock, req, 24 * 3600 * 1000, &reply, &error);
	json_decref(req);
	if (r < 0) {
		log_error("node %s: %s", op, error ? error : strerror(-r));
		return 1;
	}
	if (strcmp(op, "metrics") == 0)
		fputs(json_string_value(json_object_get(reply, "metrics")), stdout);
	else {
		json_dumpf(reply, stdout, JSON_COMPACT);
		printf("\n");
	}
	json_decref(reply);
	return 0;
}

int cli_node_main(struct cli_context *ctx, int argc, char **argv)
{
	(void)ctx;
	if (argc >= 2 && strcmp(argv[1], "fetch") == 0)
		return fetch_main(argc - 1, argv + 1);
	if (argc >= 2 && (strcmp(argv[1], "present") == 0 || strcmp(argv[1], "release") == 0 ||
			  strcmp(argv[1], "metrics") == 0))
		return local_main(argv[1], argc - 1, argv + 1);
	return daemon_main(argc, argv);
}
