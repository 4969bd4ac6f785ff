#include "registry/artifact.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/cleanup.h"
#include "util/error.h"

/* Sizes above this are not a chunk or a config of ours (a chunk is at most 16 MiB plain). */
#define BLOB_MAX_BYTES (64ull * 1024 * 1024)

json_t *artifact_descriptor(const char *media_type, const struct artifact_blob *b)
{
	return json_pack("{s:s, s:s, s:I}", "mediaType", media_type, "digest", b->digest, "size",
			 (json_int_t)b->size_bytes);
}

int artifact_build(const struct manifest *m, const struct artifact_blob *config,
		   const struct artifact_blob *chunks, size_t n, char **ret_json)
{
	char created[32] = "", title[MANIFEST_NAME_MAX + 16], version[16];
	json_t *root, *layers, *annotations;
	time_t t = (time_t)m->created_s;
	struct tm tm;
	char *text;

	if (gmtime_r(&t, &tm))
		strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
	snprintf(title, sizeof(title), "%s:%u", m->name, m->version);
	snprintf(version, sizeof(version), "%u", m->version);
	layers = json_array();
	annotations = json_pack("{s:s, s:s, s:s, s:s}", "org.opencontainers.image.title", title,
				"org.opencontainers.image.created", created, "org.vmhpc.image.name",
				m->name, "org.vmhpc.image.version", version);
	root = json_pack("{s:i, s:s, s:s, s:o, s:o, s:o}", "schemaVersion", 2, "mediaType",
			 OCI_MEDIA_TYPE_MANIFEST, "artifactType", ARTIFACT_TYPE, "config",
			 artifact_descriptor(ARTIFACT_CONFIG_MEDIA_TYPE, config), "layers", layers,
			 "annotations", annotations);
	if (!root)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(
			layers, artifact_descriptor(ARTIFACT_CHUNK_MEDIA_TYPE, &chunks[i])) < 0) {
			json_decref(root);
			return -ENOMEM;
		}
	text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!text)
		return -ENOMEM;
	*ret_json = text;
	return 0;
}

struct artifact *artifact_free(struct artifact *a)
{
	if (!a)
		return NULL;
	free(a->chunks);
	free(a);
	return NULL;
}

static bool digest_valid(const char *s)
{
	if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != OCI_DIGEST_LEN)
		return false;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

int artifact_read_descriptor(json_t *d, const char *want, const char *what,
			     struct artifact_blob *ret, char **ret_error)
{
	const char *type = json_string_value(json_object_get(d, "mediaType"));
	const char *digest = json_string_value(json_object_get(d, "digest"));
	json_t *size = json_object_get(d, "size");

	if (!json_is_object(d))
		return error_set(ret_error, -EBADMSG, "%s is not an object", what);
	if (!type || strcmp(type, want) != 0)
		return error_set(ret_error, -EBADMSG, "%s has media type %s, not %s", what,
				 type ? type : "(none)", want);
	if (!digest_valid(digest))
		return error_set(ret_error, -EBADMSG, "%s has no sha256 digest", what);
	if (!json_is_integer(size) || json_integer_value(size) < 0 ||
	    (uint64_t)json_integer_value(size) > BLOB_MAX_BYTES)
		return error_set(ret_error, -EBADMSG, "%s has no size or one over %llu bytes", what,
				 BLOB_MAX_BYTES);
	memcpy(ret->digest, digest, OCI_DIGEST_LEN + 1);
	ret->size_bytes = (uint64_t)json_integer_value(size);
	return 0;
}

int artifact_parse(const char *text, size_t len, struct artifact **ret, char **ret_error)
{
	struct artifact *a = NULL;
	json_error_t jerr;
	json_t *root, *layers;
	const char *type;
	int r;

	if (len > OCI_MANIFEST_MAX_BYTES)
		return error_set(ret_error, -EBADMSG, "the manifest is over %u bytes",
				 OCI_MANIFEST_MAX_BYTES);
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return error_set(ret_error, -EBADMSG, "the manifest is not JSON (line %d: %s)",
				 jerr.line, jerr.text);
	type = json_string_value(json_object_get(root, "mediaType"));
	if (json_integer_value(json_object_get(root, "schemaVersion")) != 2 ||
	    (type && strcmp(type, OCI_MEDIA_TYPE_MANIFEST) != 0)) {
		r = error_set(ret_error, -EBADMSG, "it is not an OCI image manifest (%s)",
			      type ? type : "schemaVersion is not 2");
		goto out;
	}
	a = calloc(1, sizeof(*a));
	if (!a) {
		r = -ENOMEM;
		goto out;
	}
	r = artifact_read_descriptor(json_object_get(root, "config"), ARTIFACT_CONFIG_MEDIA_TYPE,
				     "its config", &a->config, ret_error);
	if (r == -EBADMSG && ret_error && *ret_error) {
		char *inner = TAKE_PTR(*ret_error);

		r = error_set(ret_error, r, "it is not a vmhpc image: %s", inner);
		free(inner);
	}
	if (r < 0)
		goto out;
	layers = json_object_get(root, "layers");
	if (!json_is_array(layers) || json_array_size(layers) > MANIFEST_MAX_CHUNKS_PER_PART) {
		r = error_set(ret_error, -EBADMSG, "its layers are not a list");
		goto out;
	}
	a->n_chunks = json_array_size(layers);
	a->chunks = calloc(a->n_chunks ? a->n_chunks : 1, sizeof(*a->chunks));
	if (!a->chunks) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < a->n_chunks; i++) {
		char what[48];

		snprintf(what, sizeof(what), "layer %zu", i);
		r = artifact_read_descriptor(json_array_get(layers, i), ARTIFACT_CHUNK_MEDIA_TYPE,
					     what, &a->chunks[i], ret_error);
		if (r < 0)
			goto out;
	}
	*ret = TAKE_PTR(a);
	r = 0;
out:
	artifact_free(a);
	json_decref(root);
	return r;
}
