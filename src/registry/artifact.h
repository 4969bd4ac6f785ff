/* An image version as an OCI artifact: an OCI image manifest whose config blob is the
 * vmhpc manifest (store/manifest.h) and whose layers are the version's distinct chunks,
 * one blob each, compressed as the store keeps them, in ascending order of chunk id (the
 * order of manifest_distinct_chunks). docs/registry.md has the layout. Pure: no I/O. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/oci.h"
#include "store/manifest.h"

#define ARTIFACT_TYPE		   "application/vnd.vmhpc.image.v1"
#define ARTIFACT_CONFIG_MEDIA_TYPE "application/vnd.vmhpc.image.config.v1+json"
#define ARTIFACT_CHUNK_MEDIA_TYPE  "application/vnd.vmhpc.image.chunk.v1+zstd"

struct artifact_blob {
	char digest[OCI_DIGEST_LEN + 1]; /* "sha256:<hex>" of the blob's bytes */
	uint64_t size_bytes;
};

struct artifact {
	struct artifact_blob config;
	size_t n_chunks;
	struct artifact_blob *chunks; /* owned */
};

/* The OCI manifest (compact JSON, caller frees) of m, whose config blob is config and
 * whose distinct chunks (ascending id) were stored as chunks[0..n). */
int artifact_build(const struct manifest *m, const struct artifact_blob *config,
		   const struct artifact_blob *chunks, size_t n, char **ret_json);
/* A descriptor {"mediaType", "digest", "size"} of blob b (NULL without memory). */
json_t *artifact_descriptor(const char *media_type, const struct artifact_blob *b);
/* Reads descriptor d, which must have media type want, a sha256 digest and a size of at most
 * 64 MiB, into ret; -EBADMSG with *ret_error (caller frees; what names d in it) otherwise. */
int artifact_read_descriptor(json_t *d, const char *want, const char *what,
			     struct artifact_blob *ret, char **ret_error);
/* Parses an OCI manifest and checks that it is a vmhpc image (media types, digests,
 * sizes); -EBADMSG with *ret_error (caller frees) otherwise. Free with artifact_free(). */
int artifact_parse(const char *text, size_t len, struct artifact **ret, char **ret_error);
/* Frees a; NULL is a no-op. Returns NULL. */
struct artifact *artifact_free(struct artifact *a);
