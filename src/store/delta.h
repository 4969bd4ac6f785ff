/* A text sent as its difference from another one both ends hold (the base): one zstd frame
 * with the base as zstd's prefix, what `zstd --patch-from` does, so that a document that
 * changes little from the base costs a few KB. Used for a node feed's manifest
 * (node/meta.h) and for a version's patch artifact in a registry (registry/patch.h).
 * Layout: the base's id (SHA-256 of its bytes; all zero for none: then the frame is plain
 * zstd), the document's id and its length (u64, little-endian), then the frame. The input
 * of decode is untrusted: it checks the document's length and id. Pure but for
 * allocation. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define DELTA_HEADER_BYTES (2 * STORE_ID_BYTES + 8)
/* Manifests are at most a registry's 4 MiB; a document or base above this is refused. */
#define DELTA_MAX_BYTES (32u << 20)

/* Encodes doc into a payload the caller frees, against base (base_len bytes; NULL for
 * none). */
int delta_encode(const char *doc, size_t len, const char *base, size_t base_len, char **ret_payload,
		 size_t *ret_len);
/* The id of the base payload was encoded against, into ret_base_id: 1, or 0 when it has none;
 * -EBADMSG when payload is too short to be one. */
int delta_base(const char *payload, size_t len, uint8_t ret_base_id[STORE_ID_BYTES]);
/* Decodes payload, with the base its header names (NULL when none), into a NUL-terminated
 * document the caller frees. -EBADMSG when it does not decompress, or not to the length
 * and SHA-256 the header gives (a wrong base, a damaged or forged frame); -EINVAL when a
 * base is needed and none given, or given and not the one named. */
int delta_decode(const char *payload, size_t len, const char *base, size_t base_len, char **ret_doc,
		 size_t *ret_len);
