#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "registry/artifact.h"
#include "registry/patch.h"

static struct manifest *sample(void)
{
	struct manifest *m = manifest_new();

	m->name = strdup("small");
	m->version = 3;
	m->created_s = 1796121124;
	return m;
}

static void test_round_trip(void **state)
{
	struct manifest *m = sample();
	struct artifact_blob config, chunks[3];
	struct artifact *a = NULL;
	char *text = NULL, *error = NULL;
	json_t *root;

	oci_digest("{}", 2, config.digest);
	config.size_bytes = 2;
	for (int i = 0; i < 3; i++) {
		char data[8];

		snprintf(data, sizeof(data), "c%d", i);
		oci_digest(data, strlen(data), chunks[i].digest);
		chunks[i].size_bytes = 1000 + (uint64_t)i;
	}
	assert_int_equal(artifact_build(m, &config, chunks, 3, &text), 0);
	root = json_loads(text, 0, NULL);
	assert_non_null(root);
	assert_string_equal(json_string_value(json_object_get(root, "mediaType")),
			    OCI_MEDIA_TYPE_MANIFEST);
	assert_string_equal(json_string_value(json_object_get(root, "artifactType")),
			    ARTIFACT_TYPE);
	assert_string_equal(json_string_value(json_object_get(json_object_get(root, "annotations"),
							      "org.opencontainers.image.title")),
			    "small:3");
	assert_string_equal(json_string_value(json_object_get(json_object_get(root, "annotations"),
							      "org.opencontainers.image.created")),
			    "2026-12-01T10:32:04Z");
	json_decref(root);

	assert_int_equal(artifact_parse(text, strlen(text), &a, &error), 0);
	assert_string_equal(a->config.digest, config.digest);
	assert_int_equal(a->config.size_bytes, 2);
	assert_int_equal(a->n_chunks, 3);
	for (int i = 0; i < 3; i++) {
		assert_string_equal(a->chunks[i].digest, chunks[i].digest);
		assert_int_equal(a->chunks[i].size_bytes, 1000 + i);
	}
	artifact_free(a);
	free(text);
	manifest_free(m);

	/* The digest of known bytes (sha256 of "abc"). */
	{
		char d[OCI_DIGEST_LEN + 1];

		oci_digest("abc", 3, d);
		assert_string_equal(
		    d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	}
}

static void bad(const char *text, const char *needle)
{
	struct artifact *a = NULL;
	char *error = NULL;

	assert_int_equal(artifact_parse(text, strlen(text), &a, &error), -EBADMSG);
	assert_null(a);
	if (!error || !strstr(error, needle))
		fail_msg("'%s': message '%s' lacks '%s'", text, error ? error : "(none)", needle);
	free(error);
}

#define D  "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define CF "{\"mediaType\":\"" ARTIFACT_CONFIG_MEDIA_TYPE "\",\"digest\":\"" D "\",\"size\":5}"
#define LY "{\"mediaType\":\"" ARTIFACT_CHUNK_MEDIA_TYPE "\",\"digest\":\"" D "\",\"size\":7}"

static void test_bad(void **state)
{
	bad("nope", "not JSON");
	bad("{\"schemaVersion\":1}", "not an OCI image manifest");
	bad("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest."
	    "v2+json\"}",
	    "not an OCI image manifest");
	bad("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.oci.image.config."
	    "v1+json\",\"digest\":\"" D "\",\"size\":5},\"layers\":[]}",
	    "not a vmhpc image");
	bad("{\"schemaVersion\":2,\"layers\":[]}", "not a vmhpc image");
	bad("{\"schemaVersion\":2,\"config\":" CF "}", "layers are not a list");
	bad("{\"schemaVersion\":2,\"config\":" CF ",\"layers\":[" LY ",{}]}", "layer 1");
	bad("{\"schemaVersion\":2,\"config\":" CF
	    ",\"layers\":[{\"mediaType\":\"" ARTIFACT_CHUNK_MEDIA_TYPE
	    "\",\"digest\":\"sha256:abc\",\"size\":7}]}",
	    "no sha256 digest");
	bad("{\"schemaVersion\":2,\"config\":" CF
	    ",\"layers\":[{\"mediaType\":\"" ARTIFACT_CHUNK_MEDIA_TYPE "\",\"digest\":\"" D
	    "\",\"size\":-1}]}",
	    "no size");
	bad("{\"schemaVersion\":2,\"config\":" CF
	    ",\"layers\":[{\"mediaType\":\"" ARTIFACT_CHUNK_MEDIA_TYPE "\",\"digest\":\"" D
	    "\",\"size\":99999999999}]}",
	    "no size");
	bad("{\"schemaVersion\":2,\"schemaVersion\":2}", "not JSON"); /* duplicate keys */
	{
		struct artifact *a = NULL;
		const char *ok = "{\"schemaVersion\":2,\"config\":" CF ",\"layers\":[" LY "]}";

		assert_int_equal(artifact_parse(ok, strlen(ok), &a, NULL), 0);
		assert_int_equal(a->n_chunks, 1);
		artifact_free(a);
	}
}

/* A patch's tag: the version's digest, 16 hex of the base's id; recognised, and nothing
 * else is. */
static void test_patch_tag(void **state)
{
	char d[OCI_DIGEST_LEN + 1] = "sha256:", want[PATCH_TAG_MAX] = "sha256-";
	uint8_t base[STORE_ID_BYTES];
	char tag[PATCH_TAG_MAX], bad_tag[PATCH_TAG_MAX];

	(void)state;
	for (int i = 0; i < 64; i++)
		d[7 + i] = want[7 + i] = "0123456789abcdef"[i % 16];
	strcat(want, ".abababababababab.patch");
	memset(base, 0xab, sizeof(base));
	patch_tag(d, base, tag);
	assert_string_equal(tag, want);
	assert_true(patch_tag_is(tag));
	assert_false(patch_tag_is("latest"));
	assert_false(patch_tag_is("2"));
	strcpy(bad_tag, tag);
	bad_tag[10] = 'G';
	assert_false(patch_tag_is(bad_tag));
	strcpy(bad_tag, tag);
	bad_tag[71] = '-';
	assert_false(patch_tag_is(bad_tag));
	strcpy(bad_tag, tag);
	bad_tag[strlen(bad_tag) - 1] = 'x';
	assert_false(patch_tag_is(bad_tag));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_bad),
	    cmocka_unit_test(test_patch_tag),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
