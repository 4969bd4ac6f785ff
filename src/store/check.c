#include "store/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/catalog.h"
#include "store/manifest.h"
#include "util/error.h"
#include "util/cleanup.h"

const char *check_problem_kind_to_string(enum check_problem_kind kind)
{
	static const char *const names[_CHECK_PROBLEM_KIND_MAX] = {
	    [CHECK_CHUNK_CORRUPT] = "corrupt",
	    [CHECK_CHUNK_MISSING] = "missing",
	    [CHECK_MANIFEST_DAMAGED] = "damaged manifest",
	};

	return (unsigned)kind < _CHECK_PROBLEM_KIND_MAX ? names[kind] : NULL;
}

/* One (chunk, image part) reference, sorted by chunk id for binary search. */
struct ref_use {
	uint8_t id[STORE_ID_BYTES];
	uint32_t entry; /* index into the catalog listing */
	uint8_t part;
};

struct ref_table {
	struct catalog_entry *entries;
	size_t n_entries;
	struct ref_use *uses;
	size_t n_uses;
	struct check_problem *damaged; /* manifests that did not parse */
	size_t n_damaged;
};

static int compare_use(const void *a, const void *b)
{
	return memcmp(((const struct ref_use *)a)->id, ((const struct ref_use *)b)->id,
		      STORE_ID_BYTES);
}

static void ref_table_done(struct ref_table *t)
{
	catalog_entries_free(t->entries, t->n_entries);
	free(t->uses);
	for (size_t i = 0; i < t->n_damaged; i++) {
		free(t->damaged[i].detail);
		free(t->damaged[i].images);
	}
	free(t->damaged);
	memset(t, 0, sizeof(*t));
}

static int add_damaged(struct ref_table *t, const char *name, uint32_t version, const char *why)
{
	struct check_problem *grown = realloc(t->damaged, (t->n_damaged + 1) * sizeof(*grown));
	struct check_problem *p;

	if (!grown)
		return -ENOMEM;
	t->damaged = grown;
	p = &t->damaged[t->n_damaged++];
	memset(p, 0, sizeof(*p));
	p->kind = CHECK_MANIFEST_DAMAGED;
	if (asprintf(&p->detail, "%s:%u: %s", name, version, why ? why : "unreadable") < 0)
		p->detail = NULL;
	p->images = strdup("");
	return 0;
}

/* Loads every manifest and indexes which chunks each part uses. */
static int ref_table_load(struct store *s, struct ref_table *t)
{
	int r = catalog_list(s, &t->entries, &t->n_entries);

	if (r < 0)
		return r;
	for (size_t e = 0; e < t->n_entries; e++) {
		_cleanup_free_ char *error = NULL;
		struct manifest *m = NULL;

		r = catalog_load(s, t->entries[e].name, t->entries[e].version, &m, &error);
		if (r == -EBADMSG) {
			r = add_damaged(t, t->entries[e].name, t->entries[e].version, error);
			if (r < 0)
				return r;
			continue;
		}
		if (r < 0)
			return r;
		for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
			size_t n = m->parts[p].n_chunks;
			struct ref_use *grown =
			    realloc(t->uses, (t->n_uses + n + 1) * sizeof(*grown));

			if (!grown) {
				manifest_free(m);
				return -ENOMEM;
			}
			t->uses = grown;
			for (size_t c = 0; c < n; c++) {
				struct ref_use *u = &t->uses[t->n_uses++];

				memcpy(u->id, m->parts[p].chunks[c].id, STORE_ID_BYTES);
				u->entry = (uint32_t)e;
				u->part = (uint8_t)p;
			}
		}
		manifest_free(m);
	}
	if (t->n_uses > 0)
		qsort(t->uses, t->n_uses, sizeof(*t->uses), compare_use);
	return 0;
}

/* Index of the first use of id, or n_uses when none. */
static size_t ref_table_find(const struct ref_table *t, const uint8_t id[STORE_ID_BYTES])
{
	size_t lo = 0, hi = t->n_uses;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (memcmp(t->uses[mid].id, id, STORE_ID_BYTES) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->n_uses && memcmp(t->uses[lo].id, id, STORE_ID_BYTES) == 0)
		return lo;
	return t->n_uses;
}

/* "name:ver (part), ..." for every use of id, each (image, part) once. */
static char *describe_uses(const struct ref_table *t, const uint8_t id[STORE_ID_BYTES])
{
	char *out = strdup("");
	size_t first = ref_table_find(t, id);

	for (size_t i = first;
	     out && i < t->n_uses && memcmp(t->uses[i].id, id, STORE_ID_BYTES) == 0; i++) {
		char *next = NULL;
		const struct ref_use *u = &t->uses[i];

		if (i > first && t->uses[i - 1].entry == u->entry && t->uses[i - 1].part == u->part)
			continue;
		if (asprintf(&next, "%s%s%s:%u (%s)", out, *out ? ", " : "",
			     t->entries[u->entry].name, t->entries[u->entry].version,
			     manifest_part_kind_to_string((enum manifest_part_kind)u->part)) < 0)
			next = NULL;
		free(out);
		out = next;
	}
	return out;
}

struct verify_state {
	struct store *store;
	struct ref_table *table;
	struct check_verify_result *result;
};

static int add_problem(struct check_verify_result *res, enum check_problem_kind kind,
		       const uint8_t id[STORE_ID_BYTES], char *images)
{
	struct check_problem *grown;

	if (!images)
		return -ENOMEM;
	grown = realloc(res->problems, (res->n_problems + 1) * sizeof(*grown));
	if (!grown) {
		free(images);
		return -ENOMEM;
	}
	res->problems = grown;
	memset(&grown[res->n_problems], 0, sizeof(*grown));
	grown[res->n_problems].kind = kind;
	store_id_to_hex(id, grown[res->n_problems].id_hex);
	grown[res->n_problems].images = images;
	res->n_problems++;
	return 0;
}

static int verify_one(const uint8_t id[STORE_ID_BYTES], void *ud)
{
	struct verify_state *st = ud;
	void *data = NULL;
	size_t len = 0;
	int r = store_get_chunk(st->store, id, &data, &len);

	free(data);
	st->result->chunks_checked++;
	if (r == -EBADMSG)
		return add_problem(st->result, CHECK_CHUNK_CORRUPT, id,
				   describe_uses(st->table, id));
	if (r < 0)
		return r;
	st->result->plain_bytes_checked += len;
	return 0;
}

int check_verify(struct store *s, struct check_verify_result *ret)
{
	struct ref_table t = {0};
	struct verify_state st = {.store = s, .table = &t, .result = ret};
	int r;

	memset(ret, 0, sizeof(*ret));
	r = ref_table_load(s, &t);
	if (r < 0)
		goto out;
	ret->n_images = t.n_entries;
	r = store_foreach_chunk(s, verify_one, &st);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < t.n_uses; i++) {
		if (i > 0 && memcmp(t.uses[i - 1].id, t.uses[i].id, STORE_ID_BYTES) == 0)
			continue;
		if (store_has_chunk(s, t.uses[i].id))
			continue;
		r = add_problem(ret, CHECK_CHUNK_MISSING, t.uses[i].id,
				describe_uses(&t, t.uses[i].id));
		if (r < 0)
			goto out;
	}
	for (size_t i = 0; i < t.n_damaged; i++) {
		struct check_problem *grown =
		    realloc(ret->problems, (ret->n_problems + 1) * sizeof(*grown));

		if (!grown) {
			r = -ENOMEM;
			goto out;
		}
		ret->problems = grown;
		grown[ret->n_problems++] = t.damaged[i];
		t.damaged[i].detail = t.damaged[i].images = NULL;
	}
	r = 0;
out:
	ref_table_done(&t);
	if (r < 0)
		check_verify_result_done(ret);
	return r;
}

void check_verify_result_done(struct check_verify_result *r)
{
	for (size_t i = 0; i < r->n_problems; i++) {
		free(r->problems[i].detail);
		free(r->problems[i].images);
	}
	free(r->problems);
	memset(r, 0, sizeof(*r));
}

struct gc_state {
	struct store *store;
	struct ref_table *table;
	struct check_gc_result *result;
};

static int gc_one(const uint8_t id[STORE_ID_BYTES], void *ud)
{
	struct gc_state *st = ud;
	uint64_t bytes = 0;
	int r;

	if (ref_table_find(st->table, id) < st->table->n_uses) {
		st->result->chunks_kept++;
		return 0;
	}
	(void)store_chunk_stored_bytes(st->store, id, &bytes);
	r = store_remove_chunk(st->store, id);
	if (r < 0)
		return r;
	st->result->chunks_removed++;
	st->result->bytes_freed += bytes;
	return 0;
}

int check_gc(struct store *s, struct check_gc_result *ret, char **ret_error)
{
	struct ref_table t = {0};
	struct gc_state st = {.store = s, .table = &t, .result = ret};
	_cleanup_close_ int lock_fd = -1;
	int r;

	memset(ret, 0, sizeof(*ret));
	/* Exclusive: a build holds the shared lock from its first chunk to its manifest, so
	 * no chunk that is about to be named can look unreferenced here. */
	r = store_lock(s, STORE_LOCK_COLLECT, &lock_fd);
	if (r < 0)
		return r;
	r = ref_table_load(s, &t);
	if (r < 0)
		goto out;
	if (t.n_damaged > 0) {
		error_set(ret_error, 0,
			  "gc refused: manifest %s is damaged, so the chunks it "
			  "needs are unknown; remove it with `vmhpc image rm` first",
			  t.damaged[0].detail ? t.damaged[0].detail : "?");
		r = -EBADMSG;
		goto out;
	}
	r = store_foreach_chunk(s, gc_one, &st);
	if (r < 0)
		goto out;
	r = store_clean_tmp(s, true);
	if (r < 0)
		goto out;
	r = store_sync(s);
out:
	ref_table_done(&t);
	return r;
}
