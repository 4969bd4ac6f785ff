#include "cli/select.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/log.h"

void select_result_done(struct select_result *r)
{
	for (size_t i = 0; i < r->n; i++) {
		manifest_free(r->manifests[i]);
		if (r->why)
			free(r->why[i]);
	}
	for (size_t i = 0; i < r->n_wheres; i++)
		free(r->wheres[i]);
	free(r->wheres);
	free(r->manifests);
	free(r->cands);
	free(r->failing);
	free(r->why);
	memset(r, 0, sizeof(*r));
}

static struct match_candidate candidate_of(const struct manifest *m)
{
	struct match_candidate c = {.name = m->name,
				    .version = m->version,
				    .created_s = m->created_s,
				    .owner = m->owner,
				    .metadata = m->metadata};

	for (int k = 0; k < _MANIFEST_PART_KIND_MAX; k++)
		c.size_bytes += m->parts[k].size_bytes;
	return c;
}

static int load_candidates(struct store *s, const char *name, const struct listing *remote,
			   const char *remote_prefix, struct select_result *r, char **ret_error)
{
	struct catalog_entry *entries = NULL;
	size_t n = 0, n_remote = remote ? remote->n : 0;
	int r2;

	r2 = catalog_list(s, &entries, &n);
	if (r2 < 0)
		return error_set(ret_error, r2, "listing the store's images: %s", strerror(-r2));
	r->manifests = calloc(n + n_remote + 1, sizeof(*r->manifests));
	r->cands = calloc(n + n_remote + 1, sizeof(*r->cands));
	r->failing = calloc(n + n_remote + 1, sizeof(*r->failing));
	r->why = calloc(n + n_remote + 1, sizeof(*r->why));
	r->wheres = calloc(n_remote + 1, sizeof(*r->wheres));
	if (!r->manifests || !r->cands || !r->failing || !r->why || !r->wheres) {
		catalog_entries_free(entries, n);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		struct manifest *m = NULL;

		if (name && strcmp(entries[i].name, name) != 0)
			continue;
		/* A version removed or damaged since the listing is not a candidate. */
		if (catalog_load(s, entries[i].name, entries[i].version, &m, NULL) < 0)
			continue;
		r->manifests[r->n] = m;
		r->cands[r->n] = candidate_of(m);
		r->n++;
	}
	catalog_entries_free(entries, n);
	/* The registry's versions: their manifests stay the listing's (manifests[i] NULL). */
	for (size_t i = 0; i < n_remote; i++) {
		const struct manifest *m = remote->entries[i].manifest;
		char *where;

		if (name && strcmp(m->name, name) != 0)
			continue;
		if (asprintf(&where, "%s:%s", remote_prefix, remote->entries[i].tag) < 0)
			return -ENOMEM;
		r->wheres[r->n_wheres++] = where;
		r->cands[r->n] = candidate_of(m);
		r->cands[r->n].where = where;
		r->n++;
	}
	return 0;
}

const char *select_label(const struct match_candidate *c, char *buf, size_t size)
{
	if (c->where)
		snprintf(buf, size, "%s (%s:%u)", c->where, c->name, c->version);
	else
		snprintf(buf, size, "%s:%u", c->name, c->version);
	return buf;
}

struct ranked {
	struct match_candidate c;
	int failing;
	char *why;
};

static int by_failing(const void *a, const void *b)
{
	const struct ranked *x = a, *y = b;

	if (x->failing != y->failing)
		return x->failing < y->failing ? -1 : 1;
	if (x->c.created_s != y->c.created_s)
		return x->c.created_s > y->c.created_s ? -1 : 1;
	return x->c.version > y->c.version ? -1 : x->c.version < y->c.version;
}

int select_images(struct store *s, const char *name, const char *expr, const char *rank,
		  struct select_result *ret, char **ret_error)
{
	return select_images_with(s, name, NULL, NULL, expr, rank, ret, ret_error);
}

int select_images_with(struct store *s, const char *name, const struct listing *remote,
		       const char *remote_prefix, const char *expr, const char *rank,
		       struct select_result *ret, char **ret_error)
{
	struct select_result r = {0};
	struct match_expr *e = NULL;
	struct ranked *rk = NULL;
	enum match_rank how = MATCH_RANK_NEWEST;
	const char *field = NULL;
	size_t n_match = 0, n_ranked = 0;
	int res;

	if (rank && match_rank_parse(rank, &how, &field) < 0)
		return error_set(ret_error, -EINVAL,
				 "--rank '%s': give newest, smallest, or a field or package name "
				 "(highest first)",
				 rank);
	res = match_parse(expr, &e, ret_error);
	if (res < 0)
		return res;
	res = load_candidates(s, name, remote, remote_prefix, &r, ret_error);
	if (res < 0)
		goto out;
	if (r.n == 0) {
		res = name ? error_set(ret_error, -ENOENT,
				       "the store holds no version of %s to match; build one with "
				       "`vmhpc image build SPEC`",
				       name)
			   : error_set(ret_error, -ENOENT,
				       "the store holds no image versions to match; build one with "
				       "`vmhpc image build SPEC`");
		goto out;
	}
	res = match_check(e, r.cands, r.n, ret_error);
	if (res < 0)
		goto out;
	rk = calloc(r.n, sizeof(*rk));
	if (!rk) {
		res = -ENOMEM;
		goto out;
	}
	/* Matches first (ranked below), the rest by how close they came. */
	for (size_t i = 0; i < r.n; i++) {
		struct ranked x = {.c = r.cands[i]};

		x.failing = match_explain(e, &r.cands[i], &x.why);
		if (x.failing < 0) {
			n_ranked = i;
			res = -ENOMEM;
			goto out_ranked;
		}
		if (x.failing == 0)
			n_match++;
		rk[i] = x;
		n_ranked = i + 1;
	}
	qsort(rk, r.n, sizeof(*rk), by_failing);
	for (size_t i = 0; i < r.n; i++) {
		r.cands[i] = rk[i].c;
		r.failing[i] = rk[i].failing;
		r.why[i] = TAKE_PTR(rk[i].why);
	}
	/* Matches (no failing clause, an empty why) are ranked among themselves. */
	match_sort(r.cands, n_match, how, field);
	r.n_match = n_match;
	*ret = r;
	memset(&r, 0, sizeof(r));
	res = 0;
out_ranked:
	for (size_t i = 0; i < n_ranked; i++)
		free(rk[i].why);
	free(rk);
out:
	match_expr_free(e);
	select_result_done(&r);
	return res;
}

void select_print_no_match(const struct select_result *r, const char *expr, size_t limit)
{
	fprintf(stderr, "vmhpc: no image version matches: %s\n", expr);
	for (size_t i = 0; i < r->n && i < limit; i++) {
		char label[512];

		fprintf(stderr, "  %s fails %d clause%s: %s\n",
			select_label(&r->cands[i], label, sizeof(label)), r->failing[i],
			r->failing[i] == 1 ? "" : "s", r->why[i]);
	}
	if (r->n > limit)
		fprintf(stderr, "  ... and %zu more\n", r->n - limit);
	if (r->n) {
		char label[512];

		fprintf(stderr, "vmhpc: the closest is %s (%d clause%s fail%s)\n",
			select_label(&r->cands[0], label, sizeof(label)), r->failing[0],
			r->failing[0] == 1 ? "" : "s", r->failing[0] == 1 ? "s" : "");
	}
}

void select_log_error(const char *expr, const char *error)
{
	unsigned col;

	if (sscanf(error, "column %u:", &col) == 1 && col >= 1 && col <= strlen(expr) + 1) {
		log_error("in the expression, %s", error);
		fprintf(stderr, "  %s\n  %*s^\n", expr, (int)col - 1, "");
		return;
	}
	log_error("%s", error);
}
