/* `vmhpc kernel build`: builds (or finds in the cache) the guest kernel of our own, the one
 * a spec's `[kernel] source = linux-source-6.1` boots (docs/kernel.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "image/kbuild.h"
#include "util/cleanup.h"
#include "util/log.h"

#ifndef VMHPC_KERNEL_CONFIG_DEFAULT
#define VMHPC_KERNEL_CONFIG_DEFAULT "/usr/share/vmhpc/kernel/vmhpc.config"
#endif

char *cli_kernel_config_path(void)
{
	const char *v = getenv("VMHPC_KERNEL_CONFIG");

	return strdup(v && *v ? v : VMHPC_KERNEL_CONFIG_DEFAULT);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: vmhpc kernel build [--source PKG] [--config FRAGMENT] [-j N]\n"
		"\n"
		"Builds the guest kernel from Debian's kernel source package PKG (default "
		"%s)\n"
		"with `make tinyconfig` plus FRAGMENT (default $VMHPC_KERNEL_CONFIG, else\n"
		"%s), once per machine: the result is cached under\n"
		"CACHE/kernel/ by (source version, fragment hash). Prints its folder.\n",
		KBUILD_SOURCE_DEFAULT, VMHPC_KERNEL_CONFIG_DEFAULT);
}

static int kernel_build(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option options[] = {
	    {"source", required_argument, NULL, 's'},
	    {"config", required_argument, NULL, 'c'},
	    {"jobs", required_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	_cleanup_free_ char *config = cli_kernel_config_path(), *dir = NULL, *err = NULL;
	struct kbuild_options o = {.cache_dir = ctx->cache_dir, .source = KBUILD_SOURCE_DEFAULT};
	int c, r;

	optind = 0; /* main's parse went before: start afresh on the command's own argv */
	while ((c = getopt_long(argc, argv, "s:c:j:h", options, NULL)) != -1) {
		switch (c) {
		case 's':
			o.source = optarg;
			break;
		case 'c':
			free(config);
			config = strdup(optarg);
			break;
		case 'j':
			o.jobs = atoi(optarg);
			if (o.jobs < 1 || o.jobs > 1024) {
				fprintf(stderr, "vmhpc: -j takes a number from 1 to 1024\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || !config) {
		usage(stderr);
		return 2;
	}
	o.fragment_path = config;
	r = kbuild_ensure(&o, &dir, &err);
	if (r < 0) {
		log_error("kernel build: %s", err ? err : strerror(-r));
		return 1;
	}
	printf("%s\n", dir);
	return 0;
}

int cli_kernel_main(struct cli_context *ctx, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(argv[1], "build") == 0)
		return kernel_build(ctx, argc - 1, argv + 1);
	fprintf(stderr, "vmhpc: unknown kernel command '%s'; try `vmhpc kernel build`\n", argv[1]);
	return 2;
}
