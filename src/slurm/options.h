/* The values of the SPANK plugin's options (--vm-image, --vms-per-node, --vm-vcpus,
 * --vm-mem, --vm-shm) and of what Slurm tells a prolog of the job's allocation, parsed and
 * checked.
 * Pure functions with no allocation and no Slurm dependency: the plugin links this file
 * alone (docs/slurm.md says why it does not load the rest of vmhpc into Slurm's daemons),
 * `vmhpc slurm prolog` checks the same values again, and tests/unit/test-slurm.c tests it.
 * Errors are written into the caller's buffer as a sentence naming the option and the fix. */
#pragma once

#include <stddef.h>

#define SLURMOPT_MAX_VMS_PER_NODE 64 /* JOB_MAX_VMS */
#define SLURMOPT_MAX_VCPUS	  256
#define SLURMOPT_MIN_MEM_MB	  128 /* JOB_MIN_MEM_MB */
#define SLURMOPT_MAX_MEM_MB	  (4u * 1024 * 1024)
#define SLURMOPT_MAX_IMAGE_LEN	  512
#define SLURMOPT_DEFAULT_MEM_MB	  256 /* as `vmhpc run` */

/* A count option (--vms-per-node, --vm-vcpus): a decimal integer 1..max. 0 or -EINVAL. */
int slurmopt_parse_count(const char *option, const char *value, unsigned max, unsigned *ret,
			 char *err, size_t err_len);

/* --vm-mem: megabytes, as "512", "512M", "2G" (binary units, as Slurm's --mem). 0 or -EINVAL. */
int slurmopt_parse_mem_mb(const char *value, unsigned *ret_mb, char *err, size_t err_len);

/* --vm-shm: whether a node's VMs share the bypass channel (docs/bypass.md), as `vmhpc run`'s
 * --shm / --no-shm: "on" 1, "off" 0, "auto" SLURMOPT_SHM_AUTO (the channel when the image
 * carries its transport and a node has 2+ VMs). 0 or -EINVAL. */
#define SLURMOPT_SHM_AUTO (-1)
int slurmopt_parse_shm(const char *value, int *ret, char *err, size_t err_len);

/* --vm-image: a registry reference REGISTRY/REPO[:TAG] (no blanks, at least one '/', at most
 * SLURMOPT_MAX_IMAGE_LEN bytes, no option-like leading '-'). 0 or -EINVAL. */
int slurmopt_check_image(const char *value, char *err, size_t err_len);

/* The CPUs Slurm gave the job on node index (0-based) from SLURM_JOB_CPUS_PER_NODE, a
 * compressed list such as "2,1(x3)". 0, or -EINVAL when malformed or index is past its end. */
int slurmopt_cpus_on_node(const char *cpus_per_node, unsigned index, unsigned *ret);
