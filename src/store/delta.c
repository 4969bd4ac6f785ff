#include "store/delta.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "util/cleanup.h"

/* zstd's level: ~100-150 KB of manifest takes a few ms; higher levels gained ~15% on a
 * difference that is already a few KB. */
#define DELTA_ZSTD_LEVEL 3

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

static void cctx_freep(ZSTD_CCtx **c)
{
	ZSTD_freeCCtx(*c);
}

static void dctx_freep(ZSTD_DCtx **d)
{
	ZSTD_freeDCtx(*d);
}

int delta_encode(const char *doc, size_t len, const char *base, size_t base_len, char **ret_payload,
		 size_t *ret_len)
{
	_cleanup_(cctx_freep) ZSTD_CCtx *cctx = NULL;
	size_t bound, r;
	char *out;

	if (len > DELTA_MAX_BYTES || (base && base_len > DELTA_MAX_BYTES))
		return -E2BIG;
	cctx = ZSTD_createCCtx();
	if (!cctx)
		return -ENOMEM;
	bound = ZSTD_compressBound(len);
	out = malloc(DELTA_HEADER_BYTES + bound);
	if (!out)
		return -ENOMEM;
	memset(out, 0, STORE_ID_BYTES);
	if (base)
		store_id_compute(base, base_len, (uint8_t *)out);
	store_id_compute(doc, len, (uint8_t *)out + STORE_ID_BYTES);
	put_u64(out + 2 * STORE_ID_BYTES, len);
	if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, DELTA_ZSTD_LEVEL)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog,
						window_log_for(len + (base ? base_len : 0)))) ||
	    (base && ZSTD_isError(ZSTD_CCtx_refPrefix(cctx, base, base_len)))) {
		free(out);
		return -EINVAL;
	}
	r = ZSTD_compress2(cctx, out + DELTA_HEADER_BYTES, bound, doc, len);
	if (ZSTD_isError(r)) {
		free(out);
		return -EIO;
	}
	*ret_payload = out;
	*ret_len = DELTA_HEADER_BYTES + r;
	return 0;
}

int delta_base(const char *payload, size_t len, uint8_t ret_base_id[STORE_ID_BYTES])
{
	static const uint8_t none[STORE_ID_BYTES];

	if (len < DELTA_HEADER_BYTES)
		return -EBADMSG;
	memcpy(ret_base_id, payload, STORE_ID_BYTES);
	return memcmp(ret_base_id, none, STORE_ID_BYTES) != 0;
}

int delta_decode(const char *payload, size_t len, const char *base, size_t base_len, char **ret_doc,
		 size_t *ret_len)
{
	_cleanup_(dctx_freep) ZSTD_DCtx *dctx = NULL;
	uint8_t base_id[STORE_ID_BYTES], id[STORE_ID_BYTES];
	uint64_t doc_len;
	char *doc;
	size_t r;
	int has_base = delta_base(payload, len, base_id);

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
	if (doc_len > DELTA_MAX_BYTES)
		return -EBADMSG;
	dctx = ZSTD_createDCtx();
	doc = malloc(doc_len + 1);
	if (!dctx || !doc) {
		free(doc);
		return -ENOMEM;
	}
	/* The window a frame may claim is bounded by what a document and its base can need. */
	if (ZSTD_isError(ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax,
						window_log_for(2 * DELTA_MAX_BYTES))) ||
	    (base && ZSTD_isError(ZSTD_DCtx_refPrefix(dctx, base, base_len)))) {
		free(doc);
		return -EINVAL;
	}
	r = ZSTD_decompressDCtx(dctx, doc, doc_len, payload + DELTA_HEADER_BYTES,
				len - DELTA_HEADER_BYTES);
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
