/* The content-addressed chunk store. A chunk is named by the SHA-256 of its plain bytes
 * and kept zstd-compressed at <dir>/chunks/<2 hex>/<64 hex>. Writes are atomic (temp file
 * in <dir>/tmp, rename): a crash or kill never leaves a half-written chunk under its name.
 * Manifests (image versions) live beside it and are handled by catalog.h. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/chunker.h"

#define STORE_ID_BYTES	 32
#define STORE_ID_HEX_LEN 64
/* Upper bound on a chunk's plain size that the store accepts when reading (corrupt input). */
#define STORE_CHUNK_MAX_BYTES CHUNKER_MAX_BYTES_LIMIT

struct store;

struct store_chunk_ref {
	uint8_t id[STORE_ID_BYTES];
	uint32_t size_bytes; /* plain (uncompressed) size */
};

/* A byte stream stored as an ordered list of chunks. */
struct store_part {
	uint64_t size_bytes;
	size_t n_chunks;
	struct store_chunk_ref *chunks; /* owned; freed by store_part_done() */
};

/* What a put wrote and what it found already present. */
struct store_put_stats {
	uint64_t plain_bytes;
	uint64_t new_chunks;
	uint64_t new_stored_bytes; /* compressed bytes written */
	uint64_t reused_chunks;
	uint64_t repaired_chunks; /* found damaged under their name and written again (also
				     counted in new_chunks) */
};

/* Called during long puts with the plain bytes consumed so far. */
typedef void (*store_progress_fn)(uint64_t done_bytes, void *userdata);

/* Opens (creating if needed, mode 0700) the store at dir; a store of ours that others may
 * read is made 0700. The caller frees with store_close(). */
int store_open(const char *dir, struct store **ret_store);
/* Closes s; NULL is a no-op. Returns NULL. */
struct store *store_close(struct store *s);
/* The store's directory (owned by s). */
const char *store_path(const struct store *s);
/* Sets the zstd level used for new chunks (default 3). */
void store_set_compression_level(struct store *s, int level);

/* Writes the 64-char lowercase hex of id (plus NUL) into out. */
void store_id_to_hex(const uint8_t id[STORE_ID_BYTES], char out[STORE_ID_HEX_LEN + 1]);
/* Parses 64 hex chars into id; -EINVAL on anything else. */
int store_id_from_hex(const char *hex, uint8_t id[STORE_ID_BYTES]);
/* SHA-256 of data into id. */
void store_id_compute(const void *data, size_t len, uint8_t id[STORE_ID_BYTES]);

/* Stores one chunk and returns its id; a chunk already stored is checked (decompressed and
 * hashed) and written again when damaged. stats may be NULL. */
int store_put_chunk(struct store *s, const void *data, size_t len, uint8_t ret_id[STORE_ID_BYTES],
		    struct store_put_stats *stats);
/* Reads and verifies a chunk into a buffer the caller frees. -ENOENT when absent, -EBADMSG
 * when its bytes do not decompress or do not hash to id. */
int store_get_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES], void **ret_data,
		    size_t *ret_len);
/* True when a chunk file with this id exists (contents not checked). */
bool store_has_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES]);
/* Compressed size on disk of a chunk; -ENOENT when absent. */
int store_chunk_stored_bytes(struct store *s, const uint8_t id[STORE_ID_BYTES],
			     uint64_t *ret_bytes);
/* Deletes a chunk; absent is fine. */
int store_remove_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES]);
/* Adds an already-compressed chunk file's bytes (as found in an export) after verifying
 * that they decompress and hash to id; -EBADMSG otherwise. A damaged chunk already under
 * that id is replaced. */
int store_put_compressed_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES],
			       const void *compressed, size_t len, struct store_put_stats *stats);
/* Reads a chunk's compressed bytes as stored (caller frees). */
int store_get_compressed_chunk(struct store *s, const uint8_t id[STORE_ID_BYTES], void **ret_data,
			       size_t *ret_len);

/* Calls fn for every chunk id in the store; stops and returns fn's value if negative. */
int store_foreach_chunk(struct store *s,
			int (*fn)(const uint8_t id[STORE_ID_BYTES], void *userdata),
			void *userdata);

/* Chunks everything readable from fd and stores it; fills ret_part (caller calls
 * store_part_done). progress may be NULL. */
int store_put_fd(struct store *s, int fd, const struct chunker_params *params,
		 struct store_part *ret_part, struct store_put_stats *stats,
		 store_progress_fn progress, void *userdata);
/* Same for a memory buffer. */
int store_put_buffer(struct store *s, const void *data, size_t len,
		     const struct chunker_params *params, struct store_part *ret_part,
		     struct store_put_stats *stats);
/* Writes the plain bytes of part to fd, verifying every chunk (-EBADMSG, -ENOENT). */
int store_write_part(struct store *s, const struct store_part *part, int fd);
/* Reads the plain bytes of part into a NUL-terminated buffer the caller frees, verifying
 * every chunk (-EBADMSG, -ENOENT); -EFBIG when the part is larger than max_bytes. */
int store_read_part(struct store *s, const struct store_part *part, size_t max_bytes,
		    char **ret_data);
/* Releases part's chunk list; leaves part empty. */
void store_part_done(struct store_part *part);

/* Makes every chunk written so far durable (syncfs), before a manifest may name them. */
int store_sync(struct store *s);

/* Removes temp files left by a writer that died: those older than a minute, or every one
 * when the caller holds the store's exclusive lock (STORE_LOCK_COLLECT: no writer lives). */
int store_clean_tmp(struct store *s, bool exclusive);

enum store_lock_kind {
	STORE_LOCK_WRITE,   /* shared: builders and importers adding chunks */
	STORE_LOCK_COLLECT, /* exclusive: gc, which removes chunks nobody names */
	_STORE_LOCK_KIND_MAX,
};

/* Takes the store-wide lock of kind (blocking); returns an fd the caller closes to release. */
int store_lock(struct store *s, enum store_lock_kind kind, int *ret_fd);
