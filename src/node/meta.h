/* A feed's META (docs/node.md "Protocol"): the version's manifest and its chunks'
 * compressed sizes as one document, sent with store/delta.h against the manifest of a
 * version both ends hold when there is one, so a new version that changes little costs its
 * link a few KB of manifest rather than the whole (~100-150 KB for a 20 MB image). Pure. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The document: the manifest's text, a NUL byte, then the chunks' compressed sizes as a JSON
 * array. Joins them into a buffer the caller frees; -E2BIG beyond DELTA_MAX_BYTES. */
int node_meta_join(const char *manifest, size_t manifest_len, const uint64_t *sizes, size_t n,
		   char **ret_doc, size_t *ret_len);
/* Splits a document: the manifest is doc[0, *ret_manifest_len); the sizes go to an array the
 * caller frees. -EBADMSG when it is not such a document. */
int node_meta_split(const char *doc, size_t len, size_t *ret_manifest_len, uint64_t **ret_sizes,
		    size_t *ret_n);
