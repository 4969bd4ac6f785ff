/* vmhpc: run HPC (MPI) jobs in small VMs built from users' own images. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/fsutil.h"
#include "util/log.h"

struct command {
	const char *name;
	int (*main)(struct cli_context *ctx, int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
    {"run", cli_run_main, "run an MPI program across small VMs on this machine"},
    {"cleanup", cli_cleanup_main, "remove what killed jobs left (VMs, taps, sockets)"},
    {"image", cli_image_main, "build, list, inspect, verify and move images"},
    {"node", cli_node_main, "the node daemon: image cache and distribution (fetch)"},
    {"kernel", cli_kernel_main, "build the guest kernel of our own (once per machine)"},
    {"mpirun", cli_mpirun_main, "in a Slurm job with --vm-image: MPI across the job's VMs"},
    {"slurm", cli_slurm_main, "the SPANK plugin's prolog and epilog (root, on the nodes)"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: vmhpc [--store DIR] [-v] COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
	fprintf(f,
		"\nenvironment: VMHPC_STORE (image store), VMHPC_CACHE (package cache),\n"
		"             VMHPC_INIT (vmhpc-init binary), VMHPC_LOG=debug|info|warning|error\n"
		"`vmhpc COMMAND --help` describes a command.\n");
}

void cli_context_init(struct cli_context *ctx)
{
	static char store_buf[4096], cache_buf[4096];
	const char *home = getenv("HOME");
	const char *v;

	v = getenv("VMHPC_STORE");
	if (v && *v)
		ctx->store_dir = v;
	else if (geteuid() == 0 || !home)
		ctx->store_dir = "/var/lib/vmhpc/store";
	else {
		v = getenv("XDG_DATA_HOME");
		if (v && *v)
			snprintf(store_buf, sizeof(store_buf), "%s/vmhpc/store", v);
		else
			snprintf(store_buf, sizeof(store_buf), "%s/.local/share/vmhpc/store", home);
		ctx->store_dir = store_buf;
	}
	v = getenv("VMHPC_CACHE");
	if (v && *v)
		ctx->cache_dir = v;
	else if (geteuid() == 0 || !home)
		ctx->cache_dir = "/var/cache/vmhpc";
	else {
		v = getenv("XDG_CACHE_HOME");
		if (v && *v)
			snprintf(cache_buf, sizeof(cache_buf), "%s/vmhpc", v);
		else
			snprintf(cache_buf, sizeof(cache_buf), "%s/.cache/vmhpc", home);
		ctx->cache_dir = cache_buf;
	}
}

char *cli_sibling_path(const char *env, const char *name)
{
	const char *v = getenv(env);
	char self[PATH_MAX];
	ssize_t n;
	char *slash, *out = NULL;

	if (v && *v)
		return strdup(v);
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return strdup(name);
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	if (asprintf(&out, "%s/%s", self, name) < 0)
		return NULL;
	return out;
}

int cli_open_store(const struct cli_context *ctx, struct store **ret_store)
{
	int r = store_open(ctx->store_dir, ret_store);

	if (r < 0)
		return log_error_errno(r,
				       "cannot open the image store %s: %m; choose another with "
				       "--store DIR or VMHPC_STORE",
				       ctx->store_dir);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
	    {"store", required_argument, NULL, 's'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct cli_context ctx = {0};
	int c;

	log_setup_from_env();
	/* A closed stdout (`vmhpc run ... | head`) must be an EPIPE that the command handles
	 * (a job is stopped and torn down), not a signal that kills vmhpc before it cleans up. */
	signal(SIGPIPE, SIG_IGN);
	cli_context_init(&ctx);
	/* '+' stops at the first non-option: the command's own options follow it. */
	while ((c = getopt_long(argc, argv, "+s:vh", options, NULL)) != -1) {
		switch (c) {
		case 's':
			ctx.store_dir = optarg;
			break;
		case 'v':
			log_set_level(LOG_LEVEL_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[optind], commands[i].name) == 0)
			return commands[i].main(&ctx, argc - optind, argv + optind);
	log_error("unknown command '%s'; see `vmhpc --help`", argv[optind]);
	return 2;
}
