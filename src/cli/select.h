/* Choosing an image version by what a job needs (image/match.h) among the versions a store
 * holds: `vmhpc image match` and `vmhpc run --require`. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "image/match.h"
#include "registry/listing.h"
#include "store/manifest.h"
#include "store/store.h"

struct select_result {
	size_t n;		       /* candidates looked at */
	size_t n_match;		       /* the first n_match of cands match, best first */
	struct match_candidate *cands; /* then the others, fewest failing clauses first */
	int *failing;		       /* per cand: clauses that fail (0 for matches) */
	char **why;		       /* per cand: match_explain's text */
	struct manifest **manifests;   /* owned; cands point into them */
	char **wheres;		       /* owned: the registry candidates' references */
	size_t n_wheres;
};

/* Loads every version in s (only those named name, when not NULL), keeps those that satisfy
 * expr, ranks them by rank ("newest", "smallest" or a field; NULL: newest). -EINVAL with
 * *ret_error (caller frees) for a bad expression, rank or name (column given); -ENOENT when
 * there is no candidate at all. A result with n_match 0 is not an error: print it with
 * select_print_no_match. Free with select_result_done. */
int select_images(struct store *s, const char *name, const char *expr, const char *rank,
		  struct select_result *ret, char **ret_error);

/* The same over the store's versions and remote's (a registry repository's tags, NULL: none);
 * remote_prefix ("REGISTRY/REPO") names them. remote must outlive ret. */
int select_images_with(struct store *s, const char *name, const struct listing *remote,
		       const char *remote_prefix, const char *expr, const char *rank,
		       struct select_result *ret, char **ret_error);

/* "NAME:VERSION", or "REGISTRY/REPO:TAG (NAME:VERSION)" for a registry's, into buf. */
const char *select_label(const struct match_candidate *c, char *buf, size_t size);

/* Says on stderr why no version matches: each candidate's failing clauses (at most limit
 * lines), then the closest one. */
void select_print_no_match(const struct select_result *r, const char *expr, size_t limit);

/* Logs select_images' error; one about the expression ("column N: ...") is shown under the
 * expression with a caret at the column. */
void select_log_error(const char *expr, const char *error);

/* Frees what r holds; a zeroed r is fine. */
void select_result_done(struct select_result *r);
