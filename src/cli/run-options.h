/* The command line of `vmhpc run`, parsed into a plain struct (unit-tested on its own). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define RUN_MAX_VMS    64
#define RUN_MAX_VCPUS  64
#define RUN_MIN_MEM_MB 64
#define RUN_MAX_MEM_MB (256 * 1024)
#define RUN_MAX_TIME_S (30 * 24 * 3600)

struct run_options {
	unsigned vms;	       /* --vms N (default 2) */
	unsigned vcpus;	       /* --vcpus V per VM (default 1) */
	unsigned mem_mb;       /* --mem SIZE per VM (default 256M) */
	unsigned ranks;	       /* -n N (default vms * vcpus) */
	const char *image;     /* --image NAME[:VER] (default tiny-mpi) */
	bool image_given;      /* --image was on the command line */
	const char *require;   /* --require EXPR (image/match.h), or NULL */
	unsigned time_limit_s; /* --time DURATION (0: none) */
	const char *workdir;   /* --workdir DIR (default: the current directory) */
	bool share;	       /* false with --no-share */
	bool oversubscribe;    /* --oversubscribe */
	bool label;	       /* --label */
	int shm;	   /* --shm 1, --no-shm 0, neither RUN_SHM_AUTO: run_shm_wanted() decides */
	bool json;	   /* --json */
	const char *accel; /* --accel kvm|tcg (default: probe) */
	int argc;	   /* PROGRAM ARGS after "--" (or the first non-option) */
	char **argv;
};

/* Parses argv (argv[0] is "run"). On -EINVAL *ret_error (caller frees) names the option
 * and what it accepts; 1 when --help was given (usage printed to stdout). */
int run_options_parse(int argc, char **argv, struct run_options *ret, char **ret_error);

/* Parses "90", "90s", "10m", "2h", "1d" into seconds; -EINVAL otherwise. */
int run_parse_duration(const char *text, unsigned *ret_s);

/* Parses "256M", "1G", "512" (MiB) into MiB; -EINVAL otherwise. */
int run_parse_mem(const char *text, unsigned *ret_mb);

#define RUN_SHM_AUTO (-1)

/* Whether vms VMs (of `vmhpc run`, or of a node of a Slurm job) get the shared-memory
 * channel: as shm says (1 on, 0 off: --shm/--no-shm, --vm-shm); for RUN_SHM_AUTO, when the
 * image carries the channel's transport (its metadata "bypass": "ivshmem", from the spec's
 * [image] bypass) and there are 2 or more VMs to share it. */
bool run_shm_wanted(int shm, unsigned vms, const json_t *image_metadata);
