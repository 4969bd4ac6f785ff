/* A Slurm job's exec token, the same on every node of the job without any exchange: the
 * HMAC-SHA256 of "vmhpc-job-token:<job id>" under the site's job key (a file readable by root
 * alone, the same on every node, like munge.key). Every node's prolog derives it; the guests
 * accept exec requests only with it (docs/slurm.md). */
#pragma once

#include <stdint.h>

#define SLURMTOKEN_HEX_LEN 64
#define SLURMTOKEN_MIN_KEY 16 /* bytes; a shorter key file is refused */

/* Reads the key at key_path (regular file, owned by root, no access for group or others)
 * and writes the job's token as 64 lowercase hex digits and a NUL into ret_hex. */
int slurmtoken_derive(const char *key_path, uint32_t job_id, char ret_hex[SLURMTOKEN_HEX_LEN + 1],
		      char **ret_error);

/* The job's VXLAN network id: 1 .. 2^24-1, from the job id (distinct for 16.7 million
 * consecutive jobs). */
uint32_t slurmtoken_vni(uint32_t job_id);
