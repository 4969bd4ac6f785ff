/* What the sub-commands share: where the store and the package cache are, and opening them. */
#pragma once

#include <stdbool.h>

#include "store/store.h"

struct cli_context {
	const char *store_dir; /* --store, $VMHPC_STORE, or the default for this user */
	const char *cache_dir; /* $VMHPC_CACHE, or the default for this user */
	bool json;	       /* --json where a command supports it */
};

/* Fills ctx from the environment and the user's defaults (strings live for the process). */
void cli_context_init(struct cli_context *ctx);

/* Opens the store, logging the error with its path on failure. */
int cli_open_store(const struct cli_context *ctx, struct store **ret_store);

/* A helper binary shipped next to vmhpc (vmhpc-init, vmhpc-exec), or $env when set.
 * Caller frees. */
char *cli_sibling_path(const char *env, const char *name);

/* The sub-command groups; each returns the process exit code. */
int cli_image_main(struct cli_context *ctx, int argc, char **argv);
int cli_run_main(struct cli_context *ctx, int argc, char **argv);
int cli_cleanup_main(struct cli_context *ctx, int argc, char **argv);
/* `vmhpc node`: the node daemon and its clients (cli/node.c). */
int cli_node_main(struct cli_context *ctx, int argc, char **argv);
int cli_kernel_main(struct cli_context *ctx, int argc, char **argv);
/* `vmhpc slurm prolog|epilog` (cli/slurm.c) and `vmhpc mpirun` (cli/mpirun.c): the Slurm
 * tier, docs/slurm.md. */
int cli_slurm_main(struct cli_context *ctx, int argc, char **argv);
int cli_mpirun_main(struct cli_context *ctx, int argc, char **argv);

/* The kernel config fragment: $VMHPC_KERNEL_CONFIG, else the repo's kernel/vmhpc.config.
 * Caller frees. */
char *cli_kernel_config_path(void);

/* `vmhpc image push` and `pull` (cli/registry.c); each returns the process exit code. */
int cli_image_push(struct cli_context *ctx, int argc, char **argv);
int cli_image_pull(struct cli_context *ctx, int argc, char **argv);

struct reference;
struct oci_client;
/* A registry client for ref's registry with the user's credentials for it (cli/registry.c);
 * plain HTTP with insecure. Logs what failed. Free with oci_client_free(). */
int cli_registry_client(const struct reference *ref, bool insecure, struct oci_client **ret);
