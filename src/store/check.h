/* Store-wide checks: verify (re-hash every chunk, find what each damage breaks) and gc
 * (remove chunks no manifest names). */
#pragma once

#include <stdint.h>

#include "store/store.h"

enum check_problem_kind {
	CHECK_CHUNK_CORRUPT,	/* present but does not decompress or hash to its id */
	CHECK_CHUNK_MISSING,	/* named by a manifest, absent */
	CHECK_MANIFEST_DAMAGED, /* a manifest that does not parse */
	_CHECK_PROBLEM_KIND_MAX,
};

/* "corrupt", "missing", "damaged manifest". */
const char *check_problem_kind_to_string(enum check_problem_kind kind);

struct check_problem {
	enum check_problem_kind kind;
	char id_hex[STORE_ID_HEX_LEN + 1]; /* the chunk (empty for a manifest) */
	char *detail;			   /* for a manifest: its name:version and the error */
	char *images; /* "tiny-mpi:1 (root), tiny-mpi:2 (root)" or "" when unused */
};

struct check_verify_result {
	uint64_t chunks_checked;
	uint64_t plain_bytes_checked;
	size_t n_images;
	size_t n_problems;
	struct check_problem *problems;
};

/* Re-hashes every chunk in the store and checks every manifest's chunks exist. The
 * caller releases ret with check_verify_result_done(). */
int check_verify(struct store *s, struct check_verify_result *ret);
void check_verify_result_done(struct check_verify_result *r);

struct check_gc_result {
	uint64_t chunks_removed;
	uint64_t bytes_freed;
	uint64_t chunks_kept;
};

/* Removes every chunk that no manifest names, and stale temp files, under the store's
 * exclusive lock (builds in progress finish first). Refuses (-EBADMSG, *ret_error) when a
 * manifest is damaged, since the chunks it names cannot be known. */
int check_gc(struct store *s, struct check_gc_result *ret, char **ret_error);
