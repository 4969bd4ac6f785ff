#include "registry/patch.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/delta.h"
#include "util/cleanup.h"
#include "util/error.h"

void patch_tag(const char *digest, const uint8_t base_id[STORE_ID_BYTES], char out[PATCH_TAG_MAX])
{
	char hex[STORE_ID_HEX_LEN + 1];
	const char *d = strncmp(digest, "sha256:", 7) == 0 ? digest + 7 : digest;

	store_id_to_hex(base_id, hex);
	snprintf(out, PATCH_TAG_MAX, "sha256-%.64s.%.16s.patch", d, hex);
}

static bool all_hex(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	return true;
}

bool patch_tag_is(const char *tag)
{
	return strlen(tag) == PATCH_TAG_MAX - 1 && strncmp(tag, "sha256-", 7) == 0 &&
	       all_hex(tag + 7, 64) && tag[71] == '.' && all_hex(tag + 72, 16) &&
	       strcmp(tag + 88, ".patch") == 0;
}

/* Which of v's distinct chunks (refs, ascending id, as manifest_distinct_chunks gives them)
 * base lacks: beyond[i]; returns how many, or -errno. */
static int chunks_beyond(const struct store_chunk_ref *refs, size_t n, const struct manifest *base,
			 bool *beyond)
{
	struct store_chunk_ref *brefs = NULL;
	size_t bn = 0, j = 0;
	int count = 0, r;

	r = manifest_distinct_chunks(base, &brefs, &bn);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		int c = 1;

		while (j < bn && (c = memcmp(brefs[j].id, refs[i].id, STORE_ID_BYTES)) < 0)
			j++;
		beyond[i] = j >= bn || c != 0;
		count += beyond[i];
	}
	free(brefs);
	return count;
}

int patch_push(struct oci_client *c, const char *repo, const struct manifest *m,
	       const struct artifact_blob *blobs, size_t n, const char *digest, uint64_t oci_size,
	       const struct manifest *base, uint64_t *ret_bytes, char **ret_error)
{
	_cleanup_free_ char *text = NULL, *base_text = NULL, *payload = NULL, *json = NULL;
	_cleanup_free_ struct store_chunk_ref *refs = NULL;
	_cleanup_free_ bool *beyond = NULL;
	struct artifact_blob config, subject;
	char json_digest[OCI_DIGEST_LEN + 1], current[OCI_DIGEST_LEN + 1],
	    base_annotation[8 + STORE_ID_HEX_LEN + 1], tag[PATCH_TAG_MAX];
	uint8_t base_id[STORE_ID_BYTES];
	size_t payload_len = 0, rn = 0;
	json_t *root, *layers;
	bool exists = false;
	int r;

	*ret_bytes = 0;
	r = manifest_to_json(m, &text);
	if (r == 0)
		r = manifest_to_json(base, &base_text);
	if (r == 0)
		r = manifest_distinct_chunks(m, &refs, &rn);
	if (r < 0)
		return error_set(ret_error, r, "the patch of %s:%u: %s", m->name, m->version,
				 strerror(-r));
	if (rn != n)
		return error_set(ret_error, -EINVAL, "the patch of %s:%u: %zu chunks, %zu blobs",
				 m->name, m->version, rn, n);
	beyond = calloc(n + 1, sizeof(*beyond));
	if (!beyond)
		return -ENOMEM;
	r = chunks_beyond(refs, n, base, beyond);
	if (r >= 0)
		r = delta_encode(text, strlen(text), base_text, strlen(base_text), &payload,
				 &payload_len);
	if (r < 0)
		return error_set(ret_error, r, "the patch of %s:%u: %s", m->name, m->version,
				 strerror(-r));
	store_id_compute(base_text, strlen(base_text), base_id);
	oci_digest(payload, payload_len, config.digest);
	r = oci_blob_exists(c, repo, config.digest, &exists, ret_error);
	if (r == 0 && !exists) {
		r = oci_blob_put(c, repo, config.digest, payload, payload_len, ret_error);
		if (r == 0)
			*ret_bytes += payload_len;
	}
	if (r < 0)
		return r;

	strcpy(base_annotation, "sha256:");
	store_id_to_hex(base_id, base_annotation + 7);
	layers = json_array();
	config.size_bytes = payload_len;
	snprintf(subject.digest, sizeof(subject.digest), "%s", digest);
	subject.size_bytes = oci_size;
	root = json_pack("{s:i, s:s, s:s, s:o, s:o, s:o, s:{s:s}}", "schemaVersion", 2, "mediaType",
			 OCI_MEDIA_TYPE_MANIFEST, "artifactType", PATCH_ARTIFACT_TYPE, "config",
			 artifact_descriptor(PATCH_CONFIG_MEDIA_TYPE, &config), "layers", layers,
			 "subject", artifact_descriptor(OCI_MEDIA_TYPE_MANIFEST, &subject),
			 "annotations", PATCH_BASE_ANNOTATION, base_annotation);
	if (!root)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (beyond[i] &&
		    json_array_append_new(
			layers, artifact_descriptor(ARTIFACT_CHUNK_MEDIA_TYPE, &blobs[i])) < 0) {
			json_decref(root);
			return -ENOMEM;
		}
	json = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!json)
		return -ENOMEM;
	oci_digest(json, strlen(json), json_digest);
	patch_tag(digest, base_id, tag);
	if (oci_manifest_head(c, repo, tag, OCI_MEDIA_TYPE_MANIFEST, current, NULL) == 0 &&
	    strcmp(current, json_digest) == 0)
		return 0;
	r = oci_manifest_put(c, repo, tag, OCI_MEDIA_TYPE_MANIFEST, json, strlen(json), ret_error);
	if (r == 0)
		*ret_bytes += strlen(json);
	return r;
}

/* The patch's OCI manifest: its config and layers, checked to be a patch of digest against
 * the base with id base_id. */
static int parse_patch(const char *text, size_t len, const char *digest,
		       const uint8_t base_id[STORE_ID_BYTES], struct artifact_blob *ret_config,
		       struct artifact_blob **ret_layers, size_t *ret_n, char **ret_why)
{
	json_t *root = json_loadb(text, len, 0, NULL), *layers, *l;
	const char *at, *subject, *base;
	char want_base[8 + STORE_ID_HEX_LEN + 1];
	struct artifact_blob *out = NULL;
	size_t i, n;
	int r;

	strcpy(want_base, "sha256:");
	store_id_to_hex(base_id, want_base + 7);
	at = json_string_value(json_object_get(root, "artifactType"));
	subject = json_string_value(json_object_get(json_object_get(root, "subject"), "digest"));
	base = json_string_value(
	    json_object_get(json_object_get(root, "annotations"), PATCH_BASE_ANNOTATION));
	layers = json_object_get(root, "layers");
	if (!at || strcmp(at, PATCH_ARTIFACT_TYPE) != 0) {
		json_decref(root);
		return error_set(ret_why, -EBADMSG, "not a vmhpc patch");
	}
	if (!subject || strcmp(subject, digest) != 0 || !base || strcmp(base, want_base) != 0) {
		json_decref(root);
		return error_set(ret_why, -EBADMSG, "a patch of another version or base");
	}
	n = json_array_size(layers);
	out = calloc(n + 1, sizeof(*out));
	if (!out) {
		json_decref(root);
		return -ENOMEM;
	}
	r = artifact_read_descriptor(json_object_get(root, "config"), PATCH_CONFIG_MEDIA_TYPE,
				     "its config", ret_config, ret_why);
	if (r == 0 && !json_is_array(layers))
		r = error_set(ret_why, -EBADMSG, "its layers are not a list");
	json_array_foreach(layers, i, l)
	{
		char what[48];

		if (r < 0)
			break;
		snprintf(what, sizeof(what), "layer %zu", i);
		r = artifact_read_descriptor(l, ARTIFACT_CHUNK_MEDIA_TYPE, what, &out[i], ret_why);
	}
	if (r < 0) {
		free(out);
		json_decref(root);
		return r;
	}
	json_decref(root);
	*ret_layers = out;
	*ret_n = n;
	return 0;
}

int patch_pull(struct store *s, struct oci_client *c, const char *repo, const char *digest,
	       const char *base_text, size_t base_len, struct artifact **ret_artifact,
	       char **ret_config, size_t *ret_config_len, char **ret_error)
{
	_cleanup_free_ char *json = NULL, *payload = NULL, *text = NULL, *why = NULL,
			    *rebuilt = NULL;
	_cleanup_free_ struct artifact_blob *layers = NULL;
	_cleanup_free_ struct store_chunk_ref *refs = NULL;
	_cleanup_free_ bool *beyond = NULL;
	struct manifest *m = NULL, *base = NULL;
	struct artifact *a = NULL;
	struct artifact_blob config;
	char tag[PATCH_TAG_MAX], got[OCI_DIGEST_LEN + 1];
	uint8_t base_id[STORE_ID_BYTES];
	size_t json_len = 0, payload_len = 0, text_len = 0, n_layers = 0, n = 0, k = 0;
	int r;

	store_id_compute(base_text, base_len, base_id);
	patch_tag(digest, base_id, tag);
	r = oci_manifest_get(c, repo, tag, OCI_MEDIA_TYPE_MANIFEST, &json, &json_len, ret_error);
	if (r < 0)
		return r;
	r = parse_patch(json, json_len, digest, base_id, &config, &layers, &n_layers, &why);
	if (r < 0)
		goto bad;
	r = oci_blob_get(c, repo, config.digest, config.size_bytes, (void **)&payload, &payload_len,
			 ret_error);
	if (r < 0)
		return r;
	r = delta_decode(payload, payload_len, base_text, base_len, &text, &text_len);
	if (r < 0) {
		why = strdup("its config does not decode against the base");
		goto bad;
	}
	r = manifest_from_json(text, text_len, &m, &why);
	if (r == 0)
		r = manifest_from_json(base_text, base_len, &base, &why);
	if (r == 0)
		r = manifest_distinct_chunks(m, &refs, &n);
	if (r < 0)
		goto bad;
	beyond = calloc(n + 1, sizeof(*beyond));
	a = calloc(1, sizeof(*a));
	if (!beyond || !a || !(a->chunks = calloc(n + 1, sizeof(*a->chunks)))) {
		r = -ENOMEM;
		goto out;
	}
	r = chunks_beyond(refs, n, base, beyond);
	if (r >= 0 && (size_t)r != n_layers) {
		r = error_set(&why, -EBADMSG, "%zu layers for %d chunks the base lacks", n_layers,
			      r);
		goto bad;
	}
	if (r < 0)
		goto out;
	/* The chunks the base has: their blobs are the compressed bytes this store holds. */
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ void *data = NULL;
		size_t len = 0;

		if (beyond[i]) {
			a->chunks[i] = layers[k++];
			continue;
		}
		r = store_get_compressed_chunk(s, refs[i].id, &data, &len);
		if (r < 0) {
			why = strdup("a chunk of the base is not here");
			goto bad;
		}
		oci_digest(data, len, a->chunks[i].digest);
		a->chunks[i].size_bytes = len;
	}
	a->n_chunks = n;
	oci_digest(text, text_len, a->config.digest);
	a->config.size_bytes = text_len;
	r = artifact_build(m, &a->config, a->chunks, n, &rebuilt);
	if (r < 0)
		goto out;
	oci_digest(rebuilt, strlen(rebuilt), got);
	if (strcmp(got, digest) != 0) {
		r = error_set(&why, -EBADMSG, "it rebuilds %s, not the version", got);
		goto bad;
	}
	*ret_artifact = TAKE_PTR(a);
	*ret_config = TAKE_PTR(text);
	*ret_config_len = text_len;
	r = 0;
	goto out;
bad:
	r = error_set(ret_error, -EBADMSG, "patch %s of %s: %s", tag, repo, why ? why : "bad");
out:
	artifact_free(a);
	manifest_free(m);
	manifest_free(base);
	return r;
}
