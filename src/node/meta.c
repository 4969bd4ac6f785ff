#include "node/meta.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "util/cleanup.h"

/* zstd's level for a manifest: ~100-150 KB of JSON takes a few ms; higher levels gained
 * ~15% on a difference that is already a few KB. */
#define META_ZSTD_LEVEL 3

static void put_u64(char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (char)(v >> (8 * i));
}

static uint64_t get_u64(const char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)(unsigned char)p[i] << (8 * i);
	return v;
}

/* The smallest window that holds base and document: a match may reach back into the base
 * from the document's last byte. */
static int window_log_for(size_t bytes)
{
	int log = 10; /* zstd's smallest window */

	while (log < 30 && ((size_t)1 << log) < bytes)
		log++;
	return log;
}

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
	if (manifest_len + 1 + tail_len > NODE_META_MAX_DOC_BYTES)
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

static void cctx_freep(ZSTD_CCtx **c)
{
	ZSTD_freeCCtx(*c);
}

static void dctx_freep(ZSTD_DCtx **d)
{
	ZSTD_freeDCtx(*d);
}

int node_meta_encode(const char *doc, size_t len, const char *base, size_t base_len,
		     char **ret_payload, size_t *ret_len)
{
	_cleanup_(cctx_freep) ZSTD_CCtx *cctx = NULL;
	size_t bound, r;
	char *out;

	if (len > NODE_META_MAX_DOC_BYTES || (base && base_len > NODE_META_MAX_DOC_BYTES))
		return -E2BIG;
	cctx = ZSTD_createCCtx();
	if (!cctx)
		return -ENOMEM;
	bound = ZSTD_compressBound(len);
	out = malloc(NODE_META_HEADER_BYTES + bound);
	if (!out)
		return -ENOMEM;
	memset(out, 0, STORE_ID_BYTES);
	if (base)
		store_id_compute(base, base_len, (uint8_t *)out);
	store_id_compute(doc, len, (uint8_t *)out + STORE_ID_BYTES);
	put_u64(out + 2 * STORE_ID_BYTES, len);
	if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, META_ZSTD_LEVEL)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog,
						window_log_for(len + (base ? base_len : 0)))) ||
	    (base && ZSTD_isError(ZSTD_CCtx_refPrefix(cctx, base, base_len)))) {
		free(out);
		return -EINVAL;
	}
	r = ZSTD_compress2(cctx, out + NODE_META_HEADER_BYTES, bound, doc, len);
	if (ZSTD_isError(r)) {
		free(out);
		return -EIO;
	}
	*ret_payload = out;
	*ret_len = NODE_META_HEADER_BYTES + r;
	return 0;
}

int node_meta_base(const char *payload, size_t len, uint8_t ret_base_id[STORE_ID_BYTES])
{
	static const uint8_t none[STORE_ID_BYTES];

	if (len < NODE_META_HEADER_BYTES)
		return -EBADMSG;
	memcpy(ret_base_id, payload, STORE_ID_BYTES);
	return memcmp(ret_base_id, none, STORE_ID_BYTES) != 0;
}

int node_meta_decode(const char *payload, size_t len, const char *base, size_t base_len,
		     char **ret_doc, size_t *ret_len)
{
	_cleanup_(dctx_freep) ZSTD_DCtx *dctx = NULL;
	uint8_t base_id[STORE_ID_BYTES], id[STORE_ID_BYTES];
	uint64_t doc_len;
	char *doc;
	size_t r;
	int has_base = node_meta_base(payload, len, base_id);

	if (has_base < 0)
		return has_base;
	if (has_base != (base != NULL))
		return -EINVAL;
	if (base) {
		store_id_compute(base, base_len, id);
		if (memcmp(id, base_id, STORE_ID_BYTES) != 0)
			return -EINVAL;
	}
	doc_len = get_u64(payload + 2 * STORE_ID_BYTES);
	if (doc_len > NODE_META_MAX_DOC_BYTES)
		return -EBADMSG;
	dctx = ZSTD_createDCtx();
	doc = malloc(doc_len + 1);
	if (!dctx || !doc) {
		free(doc);
		return -ENOMEM;
	}
	/* The window a frame may claim is bounded by what a document and its base can need. */
	if (ZSTD_isError(ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax,
						window_log_for(2 * NODE_META_MAX_DOC_BYTES))) ||
	    (base && ZSTD_isError(ZSTD_DCtx_refPrefix(dctx, base, base_len)))) {
		free(doc);
		return -EINVAL;
	}
	r = ZSTD_decompressDCtx(dctx, doc, doc_len, payload + NODE_META_HEADER_BYTES,
				len - NODE_META_HEADER_BYTES);
	if (ZSTD_isError(r) || r != doc_len) {
		free(doc);
		return -EBADMSG;
	}
	store_id_compute(doc, doc_len, id);
	if (memcmp(id, payload + STORE_ID_BYTES, STORE_ID_BYTES) != 0) {
		free(doc);
		return -EBADMSG;
	}
	doc[doc_len] = '\0';
	*ret_doc = doc;
	*ret_len = doc_len;
	return 0;
}
