/* A client of the OCI distribution protocol (the /v2/ API of Docker distribution, Harbor,
 * zot, ...) over libcurl: one easy handle per client, so every request reuses one
 * keep-alive connection. Answers a 401 the way docker does: Basic with the credentials it
 * was given, or the Bearer token dance (GET realm?service=&scope= with those credentials).
 * Every function returns 0 or -errno and, on failure, *ret_error (caller frees) naming the
 * registry, what it answered and what to do. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/auth.h"

#define OCI_DIGEST_LEN		71 /* "sha256:" + 64 hex */
#define OCI_MEDIA_TYPE_MANIFEST "application/vnd.oci.image.manifest.v1+json"
/* Largest manifest a client reads or writes (Docker distribution accepts 4 MiB). */
#define OCI_MANIFEST_MAX_BYTES (4u * 1024 * 1024)

struct oci_client;

struct oci_options {
	bool insecure; /* plain HTTP (a registry on loopback); TLS otherwise */
	bool push;     /* Bearer tokens are asked for pull and push */
	const struct auth_credentials *credentials; /* NULL: anonymous */
	uint64_t max_rate_bytes;		    /* per second, each way; 0: unlimited */
};

/* What went over the wire: requests and body bytes (headers not counted). */
struct oci_stats {
	uint64_t requests;
	uint64_t bytes_sent;
	uint64_t bytes_received;
};

/* A client of registry ("host" or "host:port"); options are copied (credentials too).
 * Free with oci_client_free(). */
int oci_client_new(const char *registry, const struct oci_options *options,
		   struct oci_client **ret);
/* Frees c (closing its connection); NULL is a no-op. Returns NULL. */
struct oci_client *oci_client_free(struct oci_client *c);
/* The counters since oci_client_new (owned by c). */
const struct oci_stats *oci_client_stats(const struct oci_client *c);

/* "sha256:<hex>" of data into out. */
void oci_digest(const void *data, size_t len, char out[OCI_DIGEST_LEN + 1]);

/* GET /v2/: the registry answers and accepts our credentials. */
int oci_ping(struct oci_client *c, char **ret_error);
/* GET /v2/REPO/tags/list: repo's tags (at most OCI_TAGS_MAX), sorted as the registry sent
 * them; *ret_tags (each and the array) caller frees. -ENOENT when repo is unknown. */
#define OCI_TAGS_MAX 10000
int oci_tags_list(struct oci_client *c, const char *repo, char ***ret_tags, size_t *ret_n,
		  char **ret_error);

/* HEAD a blob: *ret_exists says whether repo has it. */
int oci_blob_exists(struct oci_client *c, const char *repo, const char *digest, bool *ret_exists,
		    char **ret_error);
/* GETs a blob of at most max_bytes into a buffer the caller frees, and checks that its
 * bytes hash to digest (-EBADMSG otherwise). -ENOENT when repo lacks it. */
int oci_blob_get(struct oci_client *c, const char *repo, const char *digest, size_t max_bytes,
		 void **ret_data, size_t *ret_len, char **ret_error);
/* Uploads data as the blob digest (POST, then one monolithic PUT). */
int oci_blob_put(struct oci_client *c, const char *repo, const char *digest, const void *data,
		 size_t len, char **ret_error);
/* GETs the manifest that reference (a tag or digest) names, accepting media_type; the
 * caller frees *ret_data (NUL-terminated). -ENOENT when repo or reference is unknown;
 * when reference is a digest, the bytes are checked against it. */
int oci_manifest_get(struct oci_client *c, const char *repo, const char *reference,
		     const char *media_type, char **ret_data, size_t *ret_len, char **ret_error);
/* HEADs the manifest reference names: its digest as the registry reports it
 * (Docker-Content-Digest). -ENOENT when absent, -ENODATA when the registry does not say. */
int oci_manifest_head(struct oci_client *c, const char *repo, const char *reference,
		      const char *media_type, char ret_digest[OCI_DIGEST_LEN + 1],
		      char **ret_error);
/* PUTs a manifest under tag. */
int oci_manifest_put(struct oci_client *c, const char *repo, const char *tag,
		     const char *media_type, const void *data, size_t len, char **ret_error);
