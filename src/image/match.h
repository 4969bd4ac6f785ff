/* The image manager's requests: an expression over each image version's metadata, parsed and
 * evaluated by hand (docs/matching.md). For example
 *
 *   os == "debian-12" && kernel >= "6.1" && mpich >= "4.0.2" && has("libgfortran5")
 *
 * Operands: the fields name, os, arch, kernel, owner, description (strings), version, size,
 * created (numbers: size in bytes, with an optional K/M/G/T suffix on literals; created in
 * Unix seconds), a package name (its version, e.g. mpich), pkg("NAME") for a package whose
 * name is also a field's, lib("SONAME") for a library's version; has("NAME"): the version holds
 * that package, library (soname) or binary (its image path or file name). Strings compare as Debian
 * versions (debversion.h) with < <= > >=, and exactly with == and !=. A package or library a
 * version lacks makes every comparison on it false. Operators: ! && || and parentheses, with the
 * usual precedence. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One image version as the matcher sees it: what its manifest says. */
struct match_candidate {
	const char *name;
	uint32_t version;
	int64_t created_s;
	uint64_t size_bytes; /* the parts together, unpacked */
	const char *owner;
	const json_t *metadata; /* os, arch, kernel_release, description, packages{},
				   libraries{NAME: {version, ...}} */
	const char *where;	/* for messages only: a registry reference, or NULL (the store) */
};

struct match_expr;

/* Parses text. On -EINVAL *ret_error (caller frees) says what is wrong and at which column
 * (1-based), e.g. "column 12: expected a value after '>='". The caller frees *ret_expr with
 * match_expr_free. */
int match_parse(const char *text, struct match_expr **ret_expr, char **ret_error);

/* Frees e; NULL is a no-op. Returns NULL. */
struct match_expr *match_expr_free(struct match_expr *e);

/* Checks e's names against the candidates: a name that is neither a field nor a package or
 * library of any candidate is an error (-EINVAL, *ret_error naming it and its column, caller
 * frees), as is a comparison of a number field with a string or the reverse. */
int match_check(const struct match_expr *e, const struct match_candidate *c, size_t n,
		char **ret_error);

/* Whether c satisfies e. */
bool match_eval(const struct match_expr *e, const struct match_candidate *c);

/* Why c does not satisfy e: the failing clauses, each with what c has, e.g.
 * `mpich >= "4.1" (mpich is 4.0.2-3)`; "; " between them. Returns the number of failing
 * clauses (0 when c matches, *ret_text then ""); -ENOMEM. Caller frees *ret_text. */
int match_explain(const struct match_expr *e, const struct match_candidate *c, char **ret_text);

/* How candidates are ordered, best first. */
enum match_rank {
	MATCH_RANK_NEWEST,   /* created, then version: latest first */
	MATCH_RANK_SMALLEST, /* size_bytes, smallest first */
	MATCH_RANK_FIELD,    /* a field or package: highest value first */
};

/* Parses "newest", "smallest", or a field/package name (MATCH_RANK_FIELD, *ret_field points
 * into text). -EINVAL on an empty or malformed name. */
int match_rank_parse(const char *text, enum match_rank *ret_rank, const char **ret_field);

/* Sorts c[0..n) best first by rank (field for MATCH_RANK_FIELD; a candidate without the
 * field sorts last); ties go to the newest. */
void match_sort(struct match_candidate *c, size_t n, enum match_rank rank, const char *field);
