#include "registry/pull.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/artifact.h"
#include "registry/patch.h"
#include "store/catalog.h"
#include "store/manifest.h"
#include "store/transfer.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/log.h"

void pull_result_done(struct pull_result *r)
{
	free(r->name);
	*r = (struct pull_result){0};
}

/* Rewrites *ret_error as "PREFIX: message" (keeps the registry's words, adds context). */
static int wrap_error(char **ret_error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int wrap_error(char **ret_error, int r, const char *fmt, ...)
{
	_cleanup_free_ char *inner = ret_error ? TAKE_PTR(*ret_error) : NULL;
	_cleanup_free_ char *prefix = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&prefix, fmt, ap) < 0)
		prefix = NULL;
	va_end(ap);
	return error_set(ret_error, r, "%s: %s", prefix ? prefix : "pull",
			 inner ? inner : strerror(-r));
}

/* Fetches one chunk's blob and stores it after checking it against its id. */
static int fetch_chunk(struct store *s, struct oci_client *c, const char *repo,
		       const struct store_chunk_ref *ref, const struct artifact_blob *blob,
		       char **ret_error)
{
	_cleanup_free_ void *data = NULL;
	char hex[STORE_ID_HEX_LEN + 1];
	size_t len = 0;
	int r;

	store_id_to_hex(ref->id, hex);
	r = oci_blob_get(c, repo, blob->digest, blob->size_bytes, &data, &len, ret_error);
	if (r == -EFBIG || (r == 0 && len != blob->size_bytes))
		return error_set(ret_error, -EBADMSG,
				 "blob %s (chunk %s) is not the %llu bytes its manifest says",
				 blob->digest, hex, (unsigned long long)blob->size_bytes);
	if (r < 0)
		return wrap_error(ret_error, r, "chunk %s (blob %s)", hex, blob->digest);
	r = store_put_compressed_chunk(s, ref->id, data, len, NULL);
	if (r == -EBADMSG || r == -EINVAL)
		return error_set(ret_error, -EBADMSG,
				 "blob %s does not hold chunk %s (its bytes do not decompress to "
				 "data with that SHA-256); the registry's copy is damaged or was "
				 "not pushed by vmhpc: push the image again from a good store",
				 blob->digest, hex);
	if (r < 0)
		return error_set(ret_error, r, "storing chunk %s in %s: %s", hex, store_path(s),
				 strerror(-r));
	return 0;
}

/* At most this many of the store's versions are tried as a patch's base: each costs a GET. */
#define PATCH_BASES_MAX 4

/* The versions of s a patch may be against: the newest of each name, newest first (a patch
 * is against the version before its own, which a puller of the same image has). Their
 * texts go to texts[] (caller frees each); returns how many. */
static size_t patch_bases(struct store *s, char **texts)
{
	struct catalog_entry *entries = NULL;
	struct manifest *best[PATCH_BASES_MAX] = {0};
	size_t n = 0, k = 0;

	if (catalog_list(s, &entries, &n) < 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		struct manifest *m = NULL;
		bool newest = true;

		for (size_t j = 0; j < n; j++)
			if (strcmp(entries[j].name, entries[i].name) == 0 &&
			    entries[j].version > entries[i].version)
				newest = false;
		if (!newest || catalog_load(s, entries[i].name, entries[i].version, &m, NULL) < 0)
			continue;
		/* Insert by creation time, newest first, keeping PATCH_BASES_MAX. */
		for (size_t j = 0; j < PATCH_BASES_MAX && m; j++)
			if (!best[j] || m->created_s > best[j]->created_s) {
				struct manifest *t = best[j];

				best[j] = m;
				m = t;
			}
		manifest_free(m);
	}
	catalog_entries_free(entries, n);
	for (size_t j = 0; j < PATCH_BASES_MAX && best[j]; j++) {
		if (manifest_to_json(best[j], &texts[k]) == 0)
			k++;
		manifest_free(best[j]);
	}
	return k;
}

/* repo:reference rebuilt from its patch against a version s holds, when the registry has
 * one: 0 with the artifact, its config and the manifest's digest; -ENOENT otherwise (the
 * whole manifest is then fetched). */
static int pull_through_patch(struct store *s, struct oci_client *c, const char *repo,
			      const char *reference, struct artifact **ret_a, char **ret_config,
			      size_t *ret_len, char digest[OCI_DIGEST_LEN + 1])
{
	char *texts[PATCH_BASES_MAX] = {0};
	size_t n = patch_bases(s, texts);
	int r = -ENOENT;

	if (n > 0 && strncmp(reference, "sha256:", 7) == 0)
		snprintf(digest, OCI_DIGEST_LEN + 1, "%s", reference);
	else if (n > 0 &&
		 oci_manifest_head(c, repo, reference, OCI_MEDIA_TYPE_MANIFEST, digest, NULL) < 0)
		n = 0;
	for (size_t i = 0; i < n && r < 0; i++) {
		_cleanup_free_ char *error = NULL;

		r = patch_pull(s, c, repo, digest, texts[i], strlen(texts[i]), ret_a, ret_config,
			       ret_len, &error);
		if (r < 0 && r != -ENOENT)
			log_warning("pull: not through its patch (%s); fetching the whole manifest",
				    error ? error : strerror(-r));
	}
	for (size_t i = 0; i < PATCH_BASES_MAX; i++)
		free(texts[i]);
	return r < 0 ? -ENOENT : 0;
}

int pull_image(struct store *s, struct oci_client *c, const char *repo, const char *reference,
	       struct pull_result *ret, char **ret_error)
{
	struct pull_result res = {0};
	_cleanup_free_ char *oci_json = NULL, *config_json = NULL, *why = NULL;
	_cleanup_close_ int lock_fd = -1;
	struct artifact *a = NULL;
	struct manifest *m = NULL;
	struct store_chunk_ref *refs = NULL;
	size_t oci_len = 0, config_len = 0, n = 0;
	int r;

	uint64_t received = oci_client_stats(c)->bytes_received;

	if (pull_through_patch(s, c, repo, reference, &a, &config_json, &config_len, res.digest) ==
	    0) {
		res.metadata_bytes = oci_client_stats(c)->bytes_received - received;
		res.patched = true;
		goto have_config;
	}
	r = oci_manifest_get(c, repo, reference, OCI_MEDIA_TYPE_MANIFEST, &oci_json, &oci_len,
			     ret_error);
	if (r == -ENOENT) {
		r = wrap_error(ret_error, r,
			       "the registry has no %s%s%s (check the repository and the tag)",
			       repo, strncmp(reference, "sha256:", 7) == 0 ? "@" : ":", reference);
		goto out;
	}
	if (r < 0)
		goto out;
	oci_digest(oci_json, oci_len, res.digest);
	res.metadata_bytes += oci_len;
	r = artifact_parse(oci_json, oci_len, &a, &why);
	if (r < 0) {
		r = error_set(ret_error, r, "the manifest of %s:%s: %s", repo, reference, why);
		goto out;
	}
	r = oci_blob_get(c, repo, a->config.digest, a->config.size_bytes, (void **)&config_json,
			 &config_len, ret_error);
	if (r < 0) {
		r = wrap_error(ret_error, r, "the config blob %s", a->config.digest);
		goto out;
	}
	res.metadata_bytes += config_len;
have_config:
	r = manifest_from_json(config_json, config_len, &m, &why);
	if (r < 0) {
		r = error_set(ret_error, -EBADMSG, "the vmhpc manifest (config %s) of %s:%s: %s",
			      a->config.digest, repo, reference, why ? why : strerror(-r));
		goto out;
	}
	r = manifest_distinct_chunks(m, &refs, &n);
	if (r < 0)
		goto out;
	if (n != a->n_chunks) {
		r = error_set(ret_error, -EBADMSG,
			      "%s:%s names %zu chunk blobs but its image %s:%u has %zu distinct "
			      "chunks; it was not pushed by vmhpc",
			      repo, reference, a->n_chunks, m->name, m->version, n);
		goto out;
	}
	res.chunks = n;
	/* Shared store lock: gc waits, so chunks fetched here stay until the commit names
	 * them. */
	r = store_lock(s, STORE_LOCK_WRITE, &lock_fd);
	if (r < 0) {
		r = error_set(ret_error, r, "locking the store %s: %s", store_path(s),
			      strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		res.chunk_bytes += a->chunks[i].size_bytes;
		if (store_has_chunk(s, refs[i].id)) {
			_cleanup_free_ void *plain = NULL;
			size_t len;

			r = store_get_chunk(s, refs[i].id, &plain, &len);
			if (r == 0) {
				res.chunks_present++;
				continue;
			}
			if (r != -EBADMSG) {
				char hex[STORE_ID_HEX_LEN + 1];

				store_id_to_hex(refs[i].id, hex);
				r = error_set(ret_error, r, "reading chunk %s in %s: %s", hex,
					      store_path(s), strerror(-r));
				goto out;
			}
			res.chunks_repaired++;
		}
		r = fetch_chunk(s, c, repo, &refs[i], &a->chunks[i], ret_error);
		if (r < 0)
			goto out;
		res.chunks_fetched++;
		res.chunk_bytes_fetched += a->chunks[i].size_bytes;
	}
	r = transfer_commit_received(s, m, &res.added);
	if (r < 0) {
		r = error_set(ret_error, r, "saving %s in %s: %s", m->name, store_path(s),
			      strerror(-r));
		goto out;
	}
	res.name = strdup(m->name);
	if (!res.name) {
		r = -ENOMEM;
		goto out;
	}
	res.version = m->version;
	*ret = res;
	res = (struct pull_result){0};
out:
	if (r < 0 && ret_error && *ret_error && res.chunks_fetched > 0) {
		char *inner = TAKE_PTR(*ret_error);

		error_set(ret_error, r,
			  "%s; no version was added; the %zu chunks fetched are stored and "
			  "verified, and the next pull fetches only the rest",
			  inner, res.chunks_fetched);
		free(inner);
	} else if (r < 0 && ret_error && *ret_error && res.chunks > 0) {
		char *inner = TAKE_PTR(*ret_error);

		error_set(ret_error, r, "%s; no version was added", inner);
		free(inner);
	}
	pull_result_done(&res);
	free(refs);
	manifest_free(m);
	artifact_free(a);
	return r;
}
