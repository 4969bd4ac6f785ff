#include "image/index.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "util/cleanup.h"
#include "util/error.h"

struct image_index {
	json_t *root; /* owns every string the entries point to */
	struct image_index_entry *entries;
	size_t n;
};

static int compare_entries(const void *a, const void *b)
{
	return strcmp(((const struct image_index_entry *)a)->path,
		      ((const struct image_index_entry *)b)->path);
}

int image_index_parse(const char *text, struct image_index **ret_index)
{
	struct image_index *idx;
	json_t *entry;
	size_t i;

	idx = calloc(1, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	idx->root = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_array(idx->root)) {
		image_index_free(idx);
		return -EBADMSG;
	}
	idx->entries = calloc(json_array_size(idx->root) + 1, sizeof(*idx->entries));
	if (!idx->entries) {
		image_index_free(idx);
		return -ENOMEM;
	}
	json_array_foreach(idx->root, i, entry)
	{
		struct image_index_entry *e = &idx->entries[idx->n];
		json_int_t mode = json_integer_value(json_object_get(entry, "mode"));
		json_int_t size = json_integer_value(json_object_get(entry, "size"));

		e->path = json_string_value(json_object_get(entry, "path"));
		e->type = json_string_value(json_object_get(entry, "type"));
		e->target = json_string_value(json_object_get(entry, "target"));
		e->source = json_string_value(json_object_get(entry, "source"));
		if (!e->path || e->path[0] != '/' || !e->type || mode < 0 || mode > 07777 ||
		    size < 0) {
			image_index_free(idx);
			return -EBADMSG;
		}
		e->mode = (uint32_t)mode;
		e->size_bytes = (uint64_t)size;
		idx->n++;
	}
	qsort(idx->entries, idx->n, sizeof(*idx->entries), compare_entries);
	*ret_index = idx;
	return 0;
}

int image_index_load(struct store *s, const struct manifest *m, struct image_index **ret_index,
		     char **ret_error)
{
	_cleanup_free_ char *text = NULL;
	int r;

	r = store_read_part(s, &m->parts[MANIFEST_PART_INDEX], MANIFEST_INDEX_MAX_BYTES, &text);
	if (r < 0)
		return error_set(ret_error, r,
				 "reading the file index of %s:%u: %s; run `vmhpc image verify`",
				 m->name, m->version, strerror(-r));
	r = image_index_parse(text, ret_index);
	if (r == -EBADMSG)
		return error_set(ret_error, r,
				 "the file index of %s:%u is damaged; run `vmhpc image verify`",
				 m->name, m->version);
	return r;
}

size_t image_index_count(const struct image_index *idx)
{
	return idx->n;
}

const struct image_index_entry *image_index_at(const struct image_index *idx, size_t i)
{
	return i < idx->n ? &idx->entries[i] : NULL;
}

const struct image_index_entry *image_index_find(const struct image_index *idx, const char *path)
{
	struct image_index_entry key = {.path = path};

	return bsearch(&key, idx->entries, idx->n, sizeof(*idx->entries), compare_entries);
}

void image_index_free(struct image_index *idx)
{
	if (!idx)
		return;
	json_decref(idx->root);
	free(idx->entries);
	free(idx);
}
