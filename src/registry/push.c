#include "registry/push.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/artifact.h"
#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/log.h"

/* Uploads data as digest unless repo has it; *ret_sent says whether it went. */
static int put_if_missing(struct oci_client *c, const char *repo, const char *digest,
			  const void *data, size_t len, bool *ret_sent, char **ret_error)
{
	bool exists = false;
	int r;

	*ret_sent = false;
	r = oci_blob_exists(c, repo, digest, &exists, ret_error);
	if (r < 0 || exists)
		return r;
	r = oci_blob_put(c, repo, digest, data, len, ret_error);
	if (r == 0)
		*ret_sent = true;
	return r;
}

/* The newest version of m's name below m's in s: the base of m's patch. NULL when none. */
static struct manifest *previous_version(struct store *s, const struct manifest *m)
{
	struct catalog_entry *entries = NULL;
	struct manifest *base = NULL;
	uint32_t best = 0;
	size_t n = 0;

	if (catalog_list(s, &entries, &n) < 0)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(entries[i].name, m->name) == 0 && entries[i].version < m->version &&
		    entries[i].version > best)
			best = entries[i].version;
	catalog_entries_free(entries, n);
	if (best && catalog_load(s, m->name, best, &base, NULL) < 0)
		base = NULL;
	return base;
}

/* After m itself: its patch against the version before it, for pullers that hold that one.
 * Its failure is reported, not fatal: the version is pushed whole. */
static void push_patch(struct store *s, const struct manifest *m, struct oci_client *c,
		       const char *repo, const struct artifact_blob *blobs, size_t n,
		       const char *digest, size_t oci_size, struct push_stats *st)
{
	struct manifest *base = previous_version(s, m);
	char *error = NULL;

	if (!base)
		return;
	if (patch_push(c, repo, m, blobs, n, digest, oci_size, base, &st->patch_bytes, &error) == 0)
		st->patch_base = base->version;
	else
		st->patch_error = error ? error : strdup("failed");
	manifest_free(base);
}

int push_image(struct store *s, const struct manifest *m, struct oci_client *c, const char *repo,
	       const char *tag, struct push_stats *ret_stats, char **ret_error)
{
	struct push_stats st = {0};
	struct store_chunk_ref *refs = NULL;
	struct artifact_blob *blobs = NULL, config;
	_cleanup_free_ char *config_json = NULL, *oci_json = NULL;
	size_t n = 0;
	bool sent;
	int r;

	r = manifest_to_json(m, &config_json);
	if (r == 0)
		r = manifest_distinct_chunks(m, &refs, &n);
	if (r < 0)
		goto out;
	blobs = calloc(n ? n : 1, sizeof(*blobs));
	if (!blobs) {
		r = -ENOMEM;
		goto out;
	}
	st.chunks = n;
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ void *data = NULL;
		char hex[STORE_ID_HEX_LEN + 1];
		size_t len = 0;
		bool exists = false;

		store_id_to_hex(refs[i].id, hex);
		r = store_get_compressed_chunk(s, refs[i].id, &data, &len);
		if (r < 0) {
			r = error_set(ret_error, r,
				      "chunk %s of %s:%u: %s; nothing was tagged; run `vmhpc image "
				      "verify`",
				      hex, m->name, m->version, strerror(-r));
			goto out;
		}
		oci_digest(data, len, blobs[i].digest);
		blobs[i].size_bytes = len;
		st.chunk_bytes += len;
		r = oci_blob_exists(c, repo, blobs[i].digest, &exists, ret_error);
		if (r < 0)
			goto out;
		if (exists)
			continue;
		{
			/* Never publish a damaged chunk: pullers would refuse it. */
			_cleanup_free_ void *plain = NULL;
			size_t plain_len;

			r = store_get_chunk(s, refs[i].id, &plain, &plain_len);
			if (r < 0) {
				r = error_set(
				    ret_error, r,
				    "chunk %s of %s:%u is %s here; nothing was tagged; run "
				    "`vmhpc image verify`, then rebuild or import it again",
				    hex, m->name, m->version,
				    r == -EBADMSG ? "damaged" : strerror(-r));
				goto out;
			}
		}
		r = oci_blob_put(c, repo, blobs[i].digest, data, len, ret_error);
		if (r < 0)
			goto out;
		st.chunks_uploaded++;
		st.chunk_bytes_uploaded += len;
		log_debug("push: chunk %s as %s (%zu bytes)", hex, blobs[i].digest, len);
	}

	oci_digest(config_json, strlen(config_json), config.digest);
	config.size_bytes = strlen(config_json);
	r = put_if_missing(c, repo, config.digest, config_json, config.size_bytes, &sent,
			   ret_error);
	if (r < 0)
		goto out;
	if (sent)
		st.metadata_bytes += config.size_bytes;

	r = artifact_build(m, &config, blobs, n, &oci_json);
	if (r < 0)
		goto out;
	if (strlen(oci_json) > OCI_MANIFEST_MAX_BYTES) {
		r = error_set(ret_error, -EFBIG,
			      "%s:%u has %zu distinct chunks: its OCI manifest (%zu bytes) is over "
			      "the %u bytes registries accept; rebuild it with bigger chunks "
			      "(`vmhpc image build --chunk-avg`)",
			      m->name, m->version, n, strlen(oci_json), OCI_MANIFEST_MAX_BYTES);
		goto out;
	}
	oci_digest(oci_json, strlen(oci_json), st.digest);
	{
		char current[OCI_DIGEST_LEN + 1];

		/* The tag already names this very manifest: nothing to send. */
		if (oci_manifest_head(c, repo, tag, OCI_MEDIA_TYPE_MANIFEST, current, NULL) != 0 ||
		    strcmp(current, st.digest) != 0) {
			/* The tag moves last: until here, nothing a puller could see has
			 * changed. */
			r = oci_manifest_put(c, repo, tag, OCI_MEDIA_TYPE_MANIFEST, oci_json,
					     strlen(oci_json), ret_error);
			if (r < 0)
				goto out;
			st.metadata_bytes += strlen(oci_json);
		}
	}
	push_patch(s, m, c, repo, blobs, n, st.digest, strlen(oci_json), &st);
	*ret_stats = st;
out:
	free(blobs);
	free(refs);
	return r;
}
