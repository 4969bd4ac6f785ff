#include "node/meta.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "store/delta.h"
#include "util/cleanup.h"

int node_meta_join(const char *manifest, size_t manifest_len, const uint64_t *sizes, size_t n,
		   char **ret_doc, size_t *ret_len)
{
	_cleanup_free_ char *tail = NULL;
	json_t *arr = json_array();
	size_t tail_len;
	char *doc;

	if (!arr)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(arr, json_integer((json_int_t)sizes[i])) < 0) {
			json_decref(arr);
			return -ENOMEM;
		}
	tail = json_dumps(arr, JSON_COMPACT);
	json_decref(arr);
	if (!tail)
		return -ENOMEM;
	tail_len = strlen(tail);
	if (manifest_len + 1 + tail_len > DELTA_MAX_BYTES)
		return -E2BIG;
	doc = malloc(manifest_len + 1 + tail_len + 1);
	if (!doc)
		return -ENOMEM;
	memcpy(doc, manifest, manifest_len);
	doc[manifest_len] = '\0';
	memcpy(doc + manifest_len + 1, tail, tail_len + 1);
	*ret_doc = doc;
	*ret_len = manifest_len + 1 + tail_len;
	return 0;
}

int node_meta_split(const char *doc, size_t len, size_t *ret_manifest_len, uint64_t **ret_sizes,
		    size_t *ret_n)
{
	const char *nul = memchr(doc, '\0', len);
	uint64_t *sizes;
	json_t *arr, *v;
	size_t i, n;

	if (!nul)
		return -EBADMSG;
	arr = json_loadb(nul + 1, len - (size_t)(nul + 1 - doc), 0, NULL);
	if (!json_is_array(arr)) {
		json_decref(arr);
		return -EBADMSG;
	}
	n = json_array_size(arr);
	sizes = calloc(n + 1, sizeof(*sizes));
	if (!sizes) {
		json_decref(arr);
		return -ENOMEM;
	}
	json_array_foreach(arr, i, v)
	{
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			free(sizes);
			json_decref(arr);
			return -EBADMSG;
		}
		sizes[i] = (uint64_t)json_integer_value(v);
	}
	json_decref(arr);
	*ret_manifest_len = (size_t)(nul - doc);
	*ret_sizes = sizes;
	*ret_n = n;
	return 0;
}
