/* A feed's META payload (docs/node.md "Protocol"): the version's manifest and its chunks'
 * compressed sizes, as one zstd frame, compressed against a base when parent and child both
 * hold one: the text of another version's manifest (zstd's prefix, what `zstd --patch-from`
 * does). A new version that changes little then costs its link a few KB of manifest rather
 * than the whole manifest (~100-150 KB for a 20 MB image), which was most of what a small
 * change moved. Layout: the base's id (SHA-256 of its text; all zero for none), the
 * document's id and its length (u64, little-endian), then the frame. The payload is
 * untrusted: decoding checks the document's length and id. Pure but for allocation. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define NODE_META_HEADER_BYTES (2 * STORE_ID_BYTES + 8)
/* A manifest is at most a registry's 4 MiB; its sizes add ~8 bytes per chunk. */
#define NODE_META_MAX_DOC_BYTES (32u << 20)

/* The document a META carries: the manifest's text, a NUL byte, then the chunks' compressed
 * sizes as a JSON array. Joins them into a buffer the caller frees. */
int node_meta_join(const char *manifest, size_t manifest_len, const uint64_t *sizes, size_t n,
		   char **ret_doc, size_t *ret_len);
/* Splits a document: the manifest is doc[0, *ret_manifest_len); the sizes go to an array the
 * caller frees. -EBADMSG when it is not such a document. */
int node_meta_split(const char *doc, size_t len, size_t *ret_manifest_len, uint64_t **ret_sizes,
		    size_t *ret_n);

/* Encodes doc into a META payload the caller frees, against base (base_len bytes; NULL for
 * none). */
int node_meta_encode(const char *doc, size_t len, const char *base, size_t base_len,
		     char **ret_payload, size_t *ret_len);
/* The id of the base payload was encoded against, into ret_base_id: 1, or 0 when it has none;
 * -EBADMSG when payload is too short to be a META. */
int node_meta_base(const char *payload, size_t len, uint8_t ret_base_id[STORE_ID_BYTES]);
/* Decodes payload, with the base its header names (NULL when none), into a NUL-terminated
 * document the caller frees. -EBADMSG when it does not decompress, or not to the length
 * and SHA-256 the header gives (a wrong base, a damaged or forged frame); -EINVAL when a
 * base is needed and none given, or given and not the one named. */
int node_meta_decode(const char *payload, size_t len, const char *base, size_t base_len,
		     char **ret_doc, size_t *ret_len);
