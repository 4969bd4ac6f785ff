#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "store/catalog.h"
#include "store/check.h"
#include "store/manifest.h"
#include "store/store.h"
#include "store/transfer.h"
#include "util/cleanup.h"
#include "util/fsutil.h"

struct fixture {
	char *dir;	 /* the mkdtemp directory, removed at teardown */
	char *store_dir; /* dir/store */
	struct store *s;
};

static uint64_t prng_next(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (!f)
		return 0;
	store_close(f->s);
	if (f->dir)
		fs_rm_rf(f->dir);
	free(f->store_dir);
	free(f->dir);
	free(f);
	return 0;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmpdir = getenv("TMPDIR");

	if (!f)
		return -1;
	*state = f;
	if (fs_mkdtemp(tmpdir && *tmpdir ? tmpdir : "/tmp", "test-manifest-", &f->dir) < 0)
		goto fail;
	f->store_dir = fs_path_join(f->dir, "store");
	if (!f->store_dir || store_open(f->store_dir, &f->s) < 0)
		goto fail;
	return 0;
fail:
	/* cmocka skips teardown when setup fails: clean up here. */
	teardown(state);
	*state = NULL;
	return -1;
}

static void assert_contains(const char *haystack, const char *needle)
{
	if (!haystack || !strstr(haystack, needle))
		fail_msg("message '%s' does not contain '%s'", haystack ? haystack : "(null)",
			 needle);
}

/* The id of known bytes: "part P chunk J seed S". */
static void known_id(int part, size_t chunk, uint64_t seed, uint8_t id[STORE_ID_BYTES])
{
	char bytes[96];
	int n = snprintf(bytes, sizeof(bytes), "part %d chunk %zu seed %llu", part, chunk,
			 (unsigned long long)seed);

	assert_true(n > 0 && (size_t)n < sizeof(bytes));
	store_id_compute(bytes, (size_t)n, id);
}

/* A manifest with every field set and every part holding a few chunks. */
static struct manifest *build_manifest(const char *name, uint32_t version, uint64_t seed)
{
	struct manifest *m = manifest_new();

	assert_non_null(m);
	m->name = strdup(name);
	m->version = version;
	m->created_s = 1700000000 + (int64_t)seed;
	m->owner = strdup("alice");
	m->boot_args = strdup("console=ttyS0 quiet vmhpc.debug=\"yes\"");
	assert_non_null(m->name);
	assert_non_null(m->owner);
	assert_non_null(m->boot_args);
	json_decref(m->metadata);
	m->metadata = json_pack(
	    "{s:s, s:s, s:s, s:I, s:{s:s, s:s}, s:{s:{s:s, s:[s, s]}}, "
	    "s:[i, b, n, f], s:s}",
	    "os", "debian-12", "kernel_release", "6.1.0-18-amd64", "arch", "x86_64", "seed",
	    (json_int_t)seed, "packages", "openmpi-bin", "4.1.4-3", "libc6", "2.36-9", "libraries",
	    "libmpi.so.40", "path", "/usr/lib/x86_64-linux-gnu/libmpi.so.40", "needs", "libc.so.6",
	    "libhwloc.so.15", "mixed", 42, 1, 2.5, "unicode", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac");
	assert_non_null(m->metadata);
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		struct store_part *part = &m->parts[p];

		part->n_chunks = (size_t)p + 2;
		part->chunks = calloc(part->n_chunks, sizeof(*part->chunks));
		assert_non_null(part->chunks);
		part->size_bytes = 0;
		for (size_t j = 0; j < part->n_chunks; j++) {
			known_id(p, j, seed, part->chunks[j].id);
			part->chunks[j].size_bytes = (uint32_t)(1000 * (j + 1) + 7 * (size_t)p + 1);
			part->size_bytes += part->chunks[j].size_bytes;
		}
	}
	return m;
}

static void assert_manifest_equal(const struct manifest *a, const struct manifest *b)
{
	assert_string_equal(a->name, b->name);
	assert_int_equal(a->version, b->version);
	assert_true(a->created_s == b->created_s);
	assert_string_equal(a->owner ? a->owner : "", b->owner ? b->owner : "");
	assert_string_equal(a->boot_args ? a->boot_args : "", b->boot_args ? b->boot_args : "");
	assert_true(json_is_object(a->metadata));
	assert_true(json_is_object(b->metadata));
	assert_true(json_equal(a->metadata, b->metadata));
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		const struct store_part *x = &a->parts[p], *y = &b->parts[p];

		assert_int_equal(x->size_bytes, y->size_bytes);
		assert_int_equal(x->n_chunks, y->n_chunks);
		for (size_t j = 0; j < x->n_chunks; j++) {
			assert_memory_equal(x->chunks[j].id, y->chunks[j].id, STORE_ID_BYTES);
			assert_int_equal(x->chunks[j].size_bytes, y->chunks[j].size_bytes);
		}
	}
}

static char *manifest_text(const struct manifest *m)
{
	char *text = NULL;

	assert_int_equal(manifest_to_json(m, &text), 0);
	assert_non_null(text);
	return text;
}

/* ---- manifest_from_json ---------------------------------------------------------------- */

static void test_round_trip(void **state)
{
	struct manifest *m = build_manifest("tiny-os_1.2", 7, 1);
	struct manifest *back = NULL;
	char *text = manifest_text(m), *again;
	char *error = NULL;
	json_t *root;

	/* The text is one JSON object with the documented shape. */
	root = json_loads(text, 0, NULL);
	assert_non_null(root);
	assert_int_equal(json_integer_value(json_object_get(root, "format")), MANIFEST_FORMAT);
	assert_string_equal(json_string_value(json_object_get(root, "name")), "tiny-os_1.2");
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
		assert_non_null(json_object_get(json_object_get(root, "parts"),
						manifest_part_kind_to_string(p)));
	json_decref(root);

	assert_int_equal(manifest_from_json(text, strlen(text), &back, &error), 0);
	assert_null(error);
	assert_non_null(back);
	assert_manifest_equal(m, back);
	/* Every chunk, byte for byte, against ids recomputed from the known bytes. */
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		for (size_t j = 0; j < back->parts[p].n_chunks; j++) {
			uint8_t id[STORE_ID_BYTES];

			known_id(p, j, 1, id);
			assert_memory_equal(back->parts[p].chunks[j].id, id, STORE_ID_BYTES);
		}
	}
	/* Serializing again gives the same text (sorted keys). */
	again = manifest_text(back);
	assert_string_equal(text, again);

	/* The text need not be NUL-terminated: only len bytes are read. */
	{
		size_t len = strlen(text);
		char *exact = malloc(len);
		struct manifest *third = NULL;

		assert_non_null(exact);
		memcpy(exact, text, len);
		assert_int_equal(manifest_from_json(exact, len, &third, NULL), 0);
		assert_manifest_equal(m, third);
		manifest_free(third);
		free(exact);
	}
	free(again);
	free(text);
	manifest_free(back);
	manifest_free(m);
}

/* Edge values: empty owner/boot_args (NULL serializes as ""), extreme times, empty parts,
 * and the largest chunk the store accepts. */
static void test_round_trip_edges(void **state)
{
	struct manifest *m = manifest_new(), *back = NULL;
	char *text, *error = NULL;

	assert_non_null(m);
	assert_true(json_is_object(m->metadata));
	assert_int_equal(json_object_size(m->metadata), 0);
	m->name = strdup("0");
	m->version = UINT32_MAX;
	m->created_s = INT64_MIN;
	m->parts[MANIFEST_PART_ROOT].n_chunks = 1;
	m->parts[MANIFEST_PART_ROOT].chunks = calloc(1, sizeof(struct store_chunk_ref));
	assert_non_null(m->parts[MANIFEST_PART_ROOT].chunks);
	memset(m->parts[MANIFEST_PART_ROOT].chunks[0].id, 0xff, STORE_ID_BYTES);
	m->parts[MANIFEST_PART_ROOT].chunks[0].size_bytes = STORE_CHUNK_MAX_BYTES;
	m->parts[MANIFEST_PART_ROOT].size_bytes = STORE_CHUNK_MAX_BYTES;

	text = manifest_text(m);
	assert_int_equal(manifest_from_json(text, strlen(text), &back, &error), 0);
	assert_null(error);
	assert_string_equal(back->owner, "");
	assert_string_equal(back->boot_args, "");
	assert_manifest_equal(m, back);
	free(text);
	back = manifest_free(back);
	assert_null(back);

	m->created_s = INT64_MAX;
	m->version = 1;
	free(m->name);
	m->name = strdup("a-64-character-name-is-the-longest-one-allowed-0123456789abcdefg");
	assert_int_equal(strlen(m->name), 64);
	text = manifest_text(m);
	assert_int_equal(manifest_from_json(text, strlen(text), &back, &error), 0);
	assert_manifest_equal(m, back);
	free(text);
	manifest_free(back);
	manifest_free(m);
	assert_null(manifest_free(NULL));
}

/* The valid text's object, for editing. */
static json_t *valid_root(void)
{
	struct manifest *m = build_manifest("tiny", 3, 2);
	char *text = manifest_text(m);
	json_t *root = json_loads(text, 0, NULL);

	assert_non_null(root);
	free(text);
	manifest_free(m);
	return root;
}

static void expect_text_bad_len(const char *text, size_t len, const char *needle)
{
	struct manifest *m = (struct manifest *)0x1;
	char *error = NULL;

	assert_int_equal(manifest_from_json(text, len, &m, &error), -EBADMSG);
	assert_ptr_equal(m, (struct manifest *)0x1);
	assert_non_null(error);
	assert_true(strlen(error) > 0);
	assert_contains(error, needle);
	free(error);
	/* A NULL ret_error is allowed. */
	assert_int_equal(manifest_from_json(text, len, &m, NULL), -EBADMSG);
	assert_ptr_equal(m, (struct manifest *)0x1);
}

static void expect_text_bad(const char *text, const char *needle)
{
	expect_text_bad_len(text, strlen(text), needle);
}

/* Serializes root (consumed) and expects manifest_from_json to refuse it. */
static void expect_root_bad(json_t *root, const char *needle)
{
	char *text = json_dumps(root, JSON_COMPACT);

	assert_non_null(text);
	json_decref(root);
	expect_text_bad(text, needle);
	free(text);
}

static json_t *part_of(json_t *root, const char *part)
{
	json_t *p = json_object_get(json_object_get(root, "parts"), part);

	assert_non_null(p);
	return p;
}

static json_t *chunk_entry(json_t *root, const char *part, size_t i)
{
	json_t *e = json_array_get(json_object_get(part_of(root, part), "chunks"), i);

	assert_true(json_is_array(e));
	return e;
}

/* Sets part's chunk i size and keeps the part's size equal to the sum. */
static void set_chunk_size(json_t *root, const char *part, size_t i, json_int_t size)
{
	json_t *p = part_of(root, part);
	json_t *e = chunk_entry(root, part, i);
	json_int_t old = json_integer_value(json_array_get(e, 1));
	json_int_t total = json_integer_value(json_object_get(p, "size"));

	assert_int_equal(json_array_set_new(e, 1, json_integer(size)), 0);
	assert_int_equal(json_object_set_new(p, "size", json_integer(total - old + size)), 0);
}

static void test_reject_syntax(void **state)
{
	json_t *root = valid_root();
	char *text = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
	size_t len;
	char *dup = NULL;

	assert_non_null(text);
	json_decref(root);
	len = strlen(text);

	expect_text_bad("", "not valid JSON");
	expect_text_bad("this is not json", "not valid JSON");
	expect_text_bad_len("\x00\x01\x02", 3, "not valid JSON");
	expect_text_bad_len("\x00{}", 3, "not valid JSON");
	expect_text_bad_len("{\"name\": \"a\x00"
			    "b\"}",
			    15, "not valid JSON");
	expect_text_bad("[1, 2, 3]", "manifest");
	expect_text_bad("\"tiny\"", "manifest");
	expect_text_bad("null", "manifest");
	/* Truncated anywhere: cut in half, by one byte, after the opening brace. */
	expect_text_bad_len(text, len / 2, "not valid JSON");
	expect_text_bad_len(text, len - 1, "not valid JSON");
	expect_text_bad_len(text, 1, "not valid JSON");
	expect_text_bad_len(text, 0, "not valid JSON");
	/* Trailing garbage. */
	{
		char *more = NULL;

		assert_true(asprintf(&more, "%s}", text) > 0);
		expect_text_bad(more, "not valid JSON");
		free(more);
	}
	/* A duplicate key: "owner" twice at the top level, and in a part. */
	assert_true(asprintf(&dup, "{\"owner\": \"mallory\",%s", text + 1) > 0);
	expect_text_bad(dup, "duplicate");
	free(dup);
	expect_text_bad("{\"format\": 1, \"format\": 1}", "duplicate");

	/* The 64 MiB limit is checked before the text is read, so a small buffer is safe. */
	expect_text_bad_len(text, (size_t)MANIFEST_MAX_BYTES + 1, "64 MiB");
	expect_text_bad_len(text, SIZE_MAX, "64 MiB");
	free(text);
}

static void test_reject_fields(void **state)
{
	static const char *const fields[] = {"format", "name",	    "version",	"created",
					     "owner",  "boot_args", "metadata", "parts"};
	json_t *root;

	/* Each top-level field missing. */
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		root = valid_root();
		assert_int_equal(json_object_del(root, fields[i]), 0);
		expect_root_bad(root, fields[i]);
	}
	/* Each field with the wrong type. */
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		root = valid_root();
		assert_int_equal(json_object_set_new(root, fields[i], json_true()), 0);
		expect_root_bad(root, "manifest");
	}
	/* An unknown top-level field (JSON_STRICT). */
	root = valid_root();
	json_object_set_new(root, "surprise", json_string("!"));
	expect_root_bad(root, "surprise");

	/* Format numbers other than 1. */
	root = valid_root();
	json_object_set_new(root, "format", json_integer(MANIFEST_FORMAT + 1));
	expect_root_bad(root, "format");
	root = valid_root();
	json_object_set_new(root, "format", json_integer(0));
	expect_root_bad(root, "format");
	root = valid_root();
	json_object_set_new(root, "format", json_integer(-1));
	expect_root_bad(root, "format");
	root = valid_root();
	json_object_set_new(root, "format", json_real(1.0));
	expect_root_bad(root, "manifest");

	/* Bad names. */
	{
		static const char *const names[] = {
		    "a/b", "..",     ".",	  "",	 ".hidden",
		    "-x",  "sp ace", "tab\there", "a:1", "\xc3\xa9t\xc3\xa9"};
		char too_long[MANIFEST_NAME_MAX + 2];

		for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
			root = valid_root();
			json_object_set_new(root, "name", json_string(names[i]));
			expect_root_bad(root, "image name");
		}
		memset(too_long, 'a', sizeof(too_long) - 1);
		too_long[sizeof(too_long) - 1] = '\0';
		root = valid_root();
		json_object_set_new(root, "name", json_string(too_long));
		expect_root_bad(root, "is too long");
		root = valid_root();
		json_object_set_new(root, "name", json_string("a/b"));
		expect_root_bad(root, "'a/b'");
		root = valid_root();
		json_object_set_new(root, "name", json_string(".."));
		expect_root_bad(root, "'..'");
	}

	/* Versions out of range. */
	{
		static const json_int_t versions[] = {0, -1, -4294967296LL, 4294967296LL,
						      INT64_MAX};

		for (size_t i = 0; i < ARRAY_SIZE(versions); i++) {
			root = valid_root();
			json_object_set_new(root, "version", json_integer(versions[i]));
			expect_root_bad(root, "version");
		}
	}

	/* Metadata and parts must be objects. */
	root = valid_root();
	json_object_set_new(root, "metadata", json_array());
	expect_root_bad(root, "metadata");
	root = valid_root();
	json_object_set_new(root, "parts", json_array());
	expect_root_bad(root, "parts");
}

static void test_reject_parts(void **state)
{
	json_t *root;

	/* Each part missing, or not an object. */
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		const char *kind = manifest_part_kind_to_string(p);
		char *needle = NULL;

		assert_true(asprintf(&needle, "part '%s' is missing", kind) > 0);
		root = valid_root();
		assert_int_equal(json_object_del(json_object_get(root, "parts"), kind), 0);
		expect_root_bad(root, needle);
		root = valid_root();
		json_object_set_new(json_object_get(root, "parts"), kind, json_string("x"));
		expect_root_bad(root, needle);
		free(needle);
	}
	/* A part without size or chunks, with a negative or non-integer size. */
	root = valid_root();
	json_object_del(part_of(root, "root"), "size");
	expect_root_bad(root, "part 'root' lacks");
	root = valid_root();
	json_object_del(part_of(root, "root"), "chunks");
	expect_root_bad(root, "part 'root' lacks");
	root = valid_root();
	json_object_set_new(part_of(root, "root"), "chunks", json_object());
	expect_root_bad(root, "part 'root' lacks");
	root = valid_root();
	json_object_set_new(part_of(root, "root"), "size", json_integer(-1));
	expect_root_bad(root, "part 'root' lacks");
	root = valid_root();
	json_object_set_new(part_of(root, "root"), "size", json_string("100"));
	expect_root_bad(root, "part 'root' lacks");

	/* Size not equal to the sum of the chunk sizes, either way. */
	root = valid_root();
	{
		json_t *p = part_of(root, "initramfs");

		json_object_set_new(
		    p, "size", json_integer(json_integer_value(json_object_get(p, "size")) + 1));
	}
	expect_root_bad(root, "part 'initramfs' size does not match");
	root = valid_root();
	{
		json_t *p = part_of(root, "index");

		json_object_set_new(
		    p, "size", json_integer(json_integer_value(json_object_get(p, "size")) - 1));
	}
	expect_root_bad(root, "part 'index' size does not match");
	root = valid_root();
	json_array_clear(json_object_get(part_of(root, "kernel"), "chunks"));
	expect_root_bad(root, "part 'kernel' size does not match");
}

static void test_reject_chunks(void **state)
{
	uint8_t id[STORE_ID_BYTES];
	char hex[STORE_ID_HEX_LEN + 1], longer[STORE_ID_HEX_LEN + 2];
	json_t *root;

	known_id(0, 0, 2, id);
	store_id_to_hex(id, hex);
	root = valid_root();
	assert_string_equal(json_string_value(json_array_get(chunk_entry(root, "kernel", 0), 0)),
			    hex);
	json_decref(root);

	/* A bad hex digit, anywhere. */
	for (size_t at = 0; at < STORE_ID_HEX_LEN; at += 21) {
		char bad[STORE_ID_HEX_LEN + 1];

		memcpy(bad, hex, sizeof(hex));
		bad[at] = 'g';
		root = valid_root();
		json_array_set_new(chunk_entry(root, "kernel", 0), 0, json_string(bad));
		expect_root_bad(root, "part 'kernel' has a malformed chunk entry");
	}
	/* Wrong lengths. */
	root = valid_root();
	json_array_set_new(chunk_entry(root, "root", 1), 0, json_stringn(hex, 63));
	expect_root_bad(root, "part 'root' has a malformed chunk entry");
	memcpy(longer, hex, STORE_ID_HEX_LEN);
	longer[STORE_ID_HEX_LEN] = '0';
	longer[STORE_ID_HEX_LEN + 1] = '\0';
	root = valid_root();
	json_array_set_new(chunk_entry(root, "root", 1), 0, json_string(longer));
	expect_root_bad(root, "part 'root' has a malformed chunk entry");
	root = valid_root();
	json_array_set_new(chunk_entry(root, "root", 1), 0, json_string(""));
	expect_root_bad(root, "part 'root' has a malformed chunk entry");
	/* The id not a string. */
	root = valid_root();
	json_array_set_new(chunk_entry(root, "root", 1), 0, json_integer(5));
	expect_root_bad(root, "part 'root' has a malformed chunk entry");

	/* Sizes 0, negative, over the limit (with the part size kept consistent). */
	root = valid_root();
	set_chunk_size(root, "initramfs", 2, 0);
	expect_root_bad(root, "part 'initramfs' has a malformed chunk entry");
	root = valid_root();
	set_chunk_size(root, "initramfs", 2, -5);
	expect_root_bad(root, "part 'initramfs' has a malformed chunk entry");
	root = valid_root();
	set_chunk_size(root, "initramfs", 2, (json_int_t)STORE_CHUNK_MAX_BYTES + 1);
	expect_root_bad(root, "part 'initramfs' has a malformed chunk entry");
	root = valid_root();
	set_chunk_size(root, "initramfs", 2, (json_int_t)UINT32_MAX + 1000);
	expect_root_bad(root, "part 'initramfs' has a malformed chunk entry");
	/* ... while exactly the limit is fine. */
	root = valid_root();
	set_chunk_size(root, "initramfs", 2, (json_int_t)STORE_CHUNK_MAX_BYTES);
	{
		char *text = json_dumps(root, 0);
		struct manifest *m = NULL;

		json_decref(root);
		assert_int_equal(manifest_from_json(text, strlen(text), &m, NULL), 0);
		assert_int_equal(m->parts[MANIFEST_PART_INITRAMFS].chunks[2].size_bytes,
				 STORE_CHUNK_MAX_BYTES);
		manifest_free(m);
		free(text);
	}
	root = valid_root();
	json_array_set_new(chunk_entry(root, "index", 0), 1, json_string("1000"));
	expect_root_bad(root, "part 'index' has a malformed chunk entry");

	/* Entries of the wrong shape. */
	root = valid_root();
	json_array_append_new(chunk_entry(root, "index", 0), json_integer(1));
	expect_root_bad(root, "part 'index' has a malformed chunk entry");
	root = valid_root();
	json_array_remove(chunk_entry(root, "index", 0), 1);
	expect_root_bad(root, "part 'index' has a malformed chunk entry");
	root = valid_root();
	json_array_set_new(json_object_get(part_of(root, "index"), "chunks"), 1, json_string(hex));
	expect_root_bad(root, "part 'index' has a malformed chunk entry");
	root = valid_root();
	json_array_set_new(json_object_get(part_of(root, "index"), "chunks"), 1,
			   json_pack("{s:s, s:i}", "id", hex, "size", 1000));
	expect_root_bad(root, "part 'index' has a malformed chunk entry");
}

/* Mutates buf[0..*len) in place (it has room for cap bytes); returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap, uint64_t *rng)
{
	static const char interesting[] = "{}[]\",:0123456789-eE.\\ nul\x00\xff";
	uint64_t r = prng_next(rng);

	if (len == 0)
		return 0;
	switch (r % 6) {
	case 0: /* flip a bit in 1-4 bytes */
		for (uint64_t k = 0; k <= (r >> 8) % 4; k++) {
			uint64_t x = prng_next(rng);

			buf[x % len] ^= (uint8_t)(1u << ((x >> 32) % 8));
		}
		return len;
	case 1: /* truncate */
		return (size_t)((r >> 8) % len);
	case 2: /* set a byte to something JSON cares about */
		buf[(r >> 8) % len] = (uint8_t)interesting[(r >> 40) % (sizeof(interesting) - 1)];
		return len;
	case 3: { /* delete a run */
		size_t at = (size_t)((r >> 8) % len);
		size_t n = (size_t)((r >> 40) % 16) + 1;

		if (n > len - at)
			n = len - at;
		memmove(buf + at, buf + at + n, len - at - n);
		return len - n;
	}
	case 4: { /* duplicate a run */
		size_t at = (size_t)((r >> 8) % len);
		size_t n = (size_t)((r >> 40) % 32) + 1;

		if (n > len - at)
			n = len - at;
		if (len + n > cap)
			return len;
		memmove(buf + at + n, buf + at, len - at);
		return len + n;
	}
	default: /* a random byte */
		buf[(r >> 8) % len] = (uint8_t)(r >> 48);
		return len;
	}
}

static void test_fuzz(void **state)
{
	struct manifest *m = build_manifest("fuzz", 9, 3);
	char *text = manifest_text(m);
	size_t text_len = strlen(text), cap = text_len * 2;
	uint64_t rng = 0x5eed;
	unsigned accepted = 0, refused = 0;

	for (unsigned iter = 0; iter < 5000; iter++) {
		uint8_t *work = malloc(cap);
		size_t len = text_len;
		struct manifest *got = NULL;
		char *error = NULL;
		uint8_t *exact;
		int r;

		assert_non_null(work);
		memcpy(work, text, text_len);
		for (uint64_t rounds = prng_next(&rng) % 3 + 1; rounds > 0; rounds--)
			len = mutate(work, len, cap, &rng);
		/* Exactly len bytes, so a sanitizer catches any read past the end. */
		exact = malloc(len ? len : 1);
		assert_non_null(exact);
		memcpy(exact, work, len);
		free(work);

		r = manifest_from_json((const char *)exact, len, &got, &error);
		if (r == 0) {
			char *again = NULL;

			accepted++;
			assert_null(error);
			assert_non_null(got);
			/* What was accepted is a valid manifest and serializes again. */
			assert_true(got->version > 0);
			assert_true(json_is_object(got->metadata));
			for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
				uint64_t sum = 0;

				for (size_t j = 0; j < got->parts[p].n_chunks; j++) {
					assert_true(got->parts[p].chunks[j].size_bytes > 0);
					assert_true(got->parts[p].chunks[j].size_bytes <=
						    STORE_CHUNK_MAX_BYTES);
					sum += got->parts[p].chunks[j].size_bytes;
				}
				assert_int_equal(sum, got->parts[p].size_bytes);
			}
			assert_int_equal(manifest_to_json(got, &again), 0);
			free(again);
			manifest_free(got);
		} else {
			refused++;
			if (r != -EBADMSG || !error || !*error)
				fail_msg("iteration %u: r=%d error=%s", iter, r,
					 error ? error : "(null)");
			assert_null(got);
			free(error);
		}
		free(exact);
	}
	/* The mutations did something, and some of them (in string values) are harmless. */
	assert_true(refused > 2500);
	assert_true(accepted > 0);
	free(text);
	manifest_free(m);
}

/* ---- manifest_distinct_chunks, manifest_parse_ref, kinds --------------------------------- */

static void set_part(struct manifest *m, int p, const int *which, size_t n)
{
	struct store_part *part = &m->parts[p];

	store_part_done(part);
	part->n_chunks = n;
	part->chunks = n ? calloc(n, sizeof(*part->chunks)) : NULL;
	assert_true(n == 0 || part->chunks);
	part->size_bytes = 0;
	for (size_t i = 0; i < n; i++) {
		known_id(99, (size_t)which[i], 0, part->chunks[i].id);
		part->chunks[i].size_bytes = (uint32_t)(100 + which[i]);
		part->size_bytes += part->chunks[i].size_bytes;
	}
}

static void test_distinct_chunks(void **state)
{
	static const int kernel[] = {3, 1}, initramfs[] = {1, 2, 5}, root[] = {0, 3, 0, 4, 2, 0};
	struct manifest *m = manifest_new();
	struct store_chunk_ref *refs = NULL;
	size_t n = 0;
	bool seen[6] = {false};

	assert_non_null(m);
	m->name = strdup("distinct");
	set_part(m, MANIFEST_PART_KERNEL, kernel, ARRAY_SIZE(kernel));
	set_part(m, MANIFEST_PART_INITRAMFS, initramfs, ARRAY_SIZE(initramfs));
	set_part(m, MANIFEST_PART_ROOT, root, ARRAY_SIZE(root));
	/* The index part is left empty (no chunk list at all). */

	assert_int_equal(manifest_distinct_chunks(m, &refs, &n), 0);
	assert_int_equal(n, 6);
	for (size_t i = 0; i < n; i++) {
		bool found = false;

		if (i > 0)
			assert_true(memcmp(refs[i - 1].id, refs[i].id, STORE_ID_BYTES) < 0);
		for (int k = 0; k < 6; k++) {
			uint8_t id[STORE_ID_BYTES];

			known_id(99, (size_t)k, 0, id);
			if (memcmp(id, refs[i].id, STORE_ID_BYTES) == 0) {
				assert_false(seen[k]);
				seen[k] = found = true;
				assert_int_equal(refs[i].size_bytes, 100 + k);
			}
		}
		assert_true(found);
	}
	free(refs);

	/* No chunks at all. */
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
		store_part_done(&m->parts[p]);
	refs = NULL;
	n = 99;
	assert_int_equal(manifest_distinct_chunks(m, &refs, &n), 0);
	assert_int_equal(n, 0);
	free(refs);

	/* The same chunk everywhere collapses to one. */
	{
		static const int same[] = {4, 4, 4};

		for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
			set_part(m, p, same, ARRAY_SIZE(same));
		assert_int_equal(manifest_distinct_chunks(m, &refs, &n), 0);
		assert_int_equal(n, 1);
		free(refs);
	}
	manifest_free(m);
}

static void check_ref_ok(const char *ref, const char *name, uint32_t version)
{
	char *got_name = NULL, *error = NULL;
	uint32_t got_version = 12345;

	assert_int_equal(manifest_parse_ref(ref, &got_name, &got_version, &error), 0);
	assert_null(error);
	assert_string_equal(got_name, name);
	assert_int_equal(got_version, version);
	free(got_name);
}

static void check_ref_bad(const char *ref, const char *needle)
{
	char *got_name = NULL, *error = NULL;
	uint32_t got_version = 12345;

	assert_int_equal(manifest_parse_ref(ref, &got_name, &got_version, &error), -EINVAL);
	assert_null(got_name);
	assert_int_equal(got_version, 12345);
	assert_non_null(error);
	assert_contains(error, needle);
	free(error);
	assert_int_equal(manifest_parse_ref(ref, &got_name, &got_version, NULL), -EINVAL);
	assert_null(got_name);
}

static void test_parse_ref(void **state)
{
	check_ref_ok("tiny", "tiny", 0);
	check_ref_ok("tiny:3", "tiny", 3);
	check_ref_ok("tiny:10", "tiny", 10);
	check_ref_ok("Tiny.os-2_x:4294967295", "Tiny.os-2_x", UINT32_MAX);

	check_ref_bad("tiny:0", "version '0'");
	check_ref_bad("tiny:-1", "version '-1'");
	check_ref_bad("tiny:x", "version 'x'");
	check_ref_bad("tiny:", "version ''");
	check_ref_bad("tiny:03", "version '03'");
	check_ref_bad("tiny:+3", "version '+3'");
	check_ref_bad("tiny: 3", "version ' 3'");
	check_ref_bad("tiny:3x", "version '3x'");
	check_ref_bad("tiny:1:2", "version '1:2'");
	check_ref_bad("tiny:4294967296", "version '4294967296'");
	check_ref_bad("tiny:99999999999999999999999", "not a positive whole number");
	check_ref_bad("tiny:x", "tiny:1");
	check_ref_bad("a/b:1", "'a/b'");
	check_ref_bad("a/b", "'a/b'");
	check_ref_bad("", "is empty");
	check_ref_bad(":1", "is empty");
	check_ref_bad("..", "'..'");
	check_ref_bad("../x:1", "image name");
}

static void test_part_kind_to_string(void **state)
{
	assert_string_equal(manifest_part_kind_to_string(MANIFEST_PART_KERNEL), "kernel");
	assert_string_equal(manifest_part_kind_to_string(MANIFEST_PART_INITRAMFS), "initramfs");
	assert_string_equal(manifest_part_kind_to_string(MANIFEST_PART_ROOT), "root");
	assert_string_equal(manifest_part_kind_to_string(MANIFEST_PART_INDEX), "index");
	assert_null(manifest_part_kind_to_string(_MANIFEST_PART_KIND_MAX));
	assert_null(
	    manifest_part_kind_to_string((enum manifest_part_kind)(_MANIFEST_PART_KIND_MAX + 1)));
	assert_null(manifest_part_kind_to_string((enum manifest_part_kind) - 1));
	assert_null(manifest_part_kind_to_string((enum manifest_part_kind)1000000));
}

/* ---- catalog ------------------------------------------------------------------------------ */

static struct manifest *commit_new(struct fixture *f, const char *name, uint64_t seed,
				   uint32_t expect_version)
{
	struct manifest *m = build_manifest(name, 0, seed);

	assert_int_equal(catalog_commit(f->s, m), 0);
	assert_int_equal(m->version, expect_version);
	return m;
}

static void commit_free(struct fixture *f, const char *name, uint64_t seed, uint32_t expect_version)
{
	manifest_free(commit_new(f, name, seed, expect_version));
}

static char *manifest_file(struct fixture *f, const char *name, const char *file)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/manifests/%s/%s", f->store_dir, name, file) > 0);
	return p;
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(fs_write_all(fd, data, len), 0);
	assert_int_equal(close(fd), 0);
}

static void expect_load_fails(struct fixture *f, const char *name, uint32_t version, int expect_r,
			      const char *needle)
{
	struct manifest *m = (struct manifest *)0x1;
	char *error = NULL;

	assert_int_equal(catalog_load(f->s, name, version, &m, &error), expect_r);
	assert_ptr_equal(m, (struct manifest *)0x1);
	assert_non_null(error);
	assert_contains(error, needle);
	free(error);
	assert_int_equal(catalog_load(f->s, name, version, &m, NULL), expect_r);
	assert_ptr_equal(m, (struct manifest *)0x1);
}

static void test_catalog_commit_load(void **state)
{
	struct fixture *f = *state;
	struct manifest *committed[3], *m = NULL;
	uint32_t last = 99;
	char *error = NULL;

	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 0);
	expect_load_fails(f, "tiny", 0, -ENOENT, "'tiny'");

	for (uint32_t v = 1; v <= 3; v++)
		committed[v - 1] = commit_new(f, "tiny", 100 + v, v);
	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 3);

	/* Latest. */
	assert_int_equal(catalog_load(f->s, "tiny", 0, &m, &error), 0);
	assert_null(error);
	assert_manifest_equal(m, committed[2]);
	m = manifest_free(m);
	/* By number. */
	for (uint32_t v = 1; v <= 3; v++) {
		assert_int_equal(catalog_load(f->s, "tiny", v, &m, &error), 0);
		assert_null(error);
		assert_int_equal(m->version, v);
		assert_manifest_equal(m, committed[v - 1]);
		m = manifest_free(m);
	}
	/* The file is where the header says. */
	{
		char *p = manifest_file(f, "tiny", "2.json");

		assert_true(fs_exists(p));
		free(p);
	}

	/* Missing name, missing version, bad names. */
	expect_load_fails(f, "nosuch", 0, -ENOENT, "'nosuch'");
	expect_load_fails(f, "nosuch", 1, -ENOENT, "'nosuch'");
	expect_load_fails(f, "tiny", 7, -ENOENT, "no version 7");
	expect_load_fails(f, "tiny", 7, -ENOENT, "latest is 3");
	expect_load_fails(f, "tiny", UINT32_MAX, -ENOENT, "no version 4294967295");
	expect_load_fails(f, "a/b", 0, -EINVAL, "'a/b'");
	expect_load_fails(f, "..", 1, -EINVAL, "'..'");
	expect_load_fails(f, "", 1, -EINVAL, "is empty");
	/* Another name's versions are separate. */
	commit_free(f, "other", 7, 1);
	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 3);

	for (int i = 0; i < 3; i++)
		manifest_free(committed[i]);
}

static void check_list(struct fixture *f, const char *const *names, const uint32_t *versions,
		       size_t n)
{
	struct catalog_entry *entries = NULL;
	size_t got = 99;

	assert_int_equal(catalog_list(f->s, &entries, &got), 0);
	assert_int_equal(got, n);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(entries[i].name, names[i]);
		assert_int_equal(entries[i].version, versions[i]);
	}
	catalog_entries_free(entries, got);
}

static void test_catalog_list(void **state)
{
	struct fixture *f = *state;

	check_list(f, NULL, NULL, 0);
	/* Interleaved commits of two names; beta before alpha on disk. */
	commit_free(f, "beta", 1, 1);
	commit_free(f, "alpha", 2, 1);
	commit_free(f, "beta", 3, 2);
	commit_free(f, "alpha", 4, 2);
	commit_free(f, "alpha", 5, 3);
	{
		static const char *const names[] = {"alpha", "alpha", "alpha", "beta", "beta"};
		static const uint32_t versions[] = {1, 2, 3, 1, 2};

		check_list(f, names, versions, 5);
	}
	/* Numeric order, not text order: 2 before 10. */
	for (uint32_t v = 3; v <= 11; v++)
		commit_free(f, "beta", 10 + v, v);
	assert_int_equal(catalog_remove(f->s, "alpha", 2), 0);
	{
		static const char *const names[] = {"alpha", "alpha", "beta", "beta", "beta",
						    "beta",  "beta",  "beta", "beta", "beta",
						    "beta",  "beta",  "beta"};
		static const uint32_t versions[] = {1, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

		check_list(f, names, versions, ARRAY_SIZE(names));
	}
	/* A damaged file is still listed (listing does not parse). */
	{
		char *p = manifest_file(f, "alpha", "4.json");

		write_file(p, "garbage", 7);
		free(p);
	}
	{
		static const char *const names[] = {"alpha", "alpha", "alpha", "beta", "beta",
						    "beta",  "beta",  "beta",  "beta", "beta",
						    "beta",  "beta",  "beta",  "beta"};
		static const uint32_t versions[] = {1, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

		check_list(f, names, versions, ARRAY_SIZE(names));
	}
}

static void test_catalog_remove(void **state)
{
	struct fixture *f = *state;
	uint32_t last = 0;

	for (uint32_t v = 1; v <= 3; v++)
		commit_free(f, "tiny", v, v);
	assert_int_equal(catalog_remove(f->s, "tiny", 3), 0);
	expect_load_fails(f, "tiny", 3, -ENOENT, "no version 3");
	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 3);
	/* Removed numbers are never given again. */
	commit_free(f, "tiny", 4, 4);
	assert_int_equal(catalog_remove(f->s, "tiny", 3), -ENOENT);
	assert_int_equal(catalog_remove(f->s, "tiny", 99), -ENOENT);
	assert_int_equal(catalog_remove(f->s, "nosuch", 1), -ENOENT);
	{
		static const char *const names[] = {"tiny", "tiny", "tiny"};
		static const uint32_t versions[] = {1, 2, 4};

		check_list(f, names, versions, 3);
	}
	/* The latest is the highest present. */
	assert_int_equal(catalog_remove(f->s, "tiny", 4), 0);
	{
		struct manifest *m = NULL;

		assert_int_equal(catalog_load(f->s, "tiny", 0, &m, NULL), 0);
		assert_int_equal(m->version, 2);
		manifest_free(m);
	}
	/* With every version removed the name is gone, but its numbers are not reused. */
	assert_int_equal(catalog_remove(f->s, "tiny", 1), 0);
	assert_int_equal(catalog_remove(f->s, "tiny", 2), 0);
	expect_load_fails(f, "tiny", 0, -ENOENT, "no image named 'tiny'");
	check_list(f, NULL, NULL, 0);
	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 4);
	commit_free(f, "tiny", 5, 5);
}

static void test_catalog_commit_as(void **state)
{
	struct fixture *f = *state;
	struct manifest *m;
	uint32_t last = 0;

	commit_free(f, "tiny", 1, 1);
	commit_free(f, "tiny", 2, 2);
	assert_int_equal(catalog_remove(f->s, "tiny", 2), 0);

	/* A number never used, above the last. */
	m = build_manifest("tiny", 7, 7);
	assert_int_equal(catalog_commit_as(f->s, m), 0);
	assert_int_equal(m->version, 7);
	{
		struct manifest *got = NULL;

		assert_int_equal(catalog_load(f->s, "tiny", 7, &got, NULL), 0);
		assert_manifest_equal(got, m);
		manifest_free(got);
	}
	/* Present (just written, or committed) and removed numbers are refused. */
	assert_int_equal(catalog_commit_as(f->s, m), -EEXIST);
	m->version = 1;
	assert_int_equal(catalog_commit_as(f->s, m), -EEXIST);
	m->version = 2;
	assert_int_equal(catalog_commit_as(f->s, m), -EEXIST);
	/* A gap below the last that was never used is fine. */
	m->version = 5;
	assert_int_equal(catalog_commit_as(f->s, m), 0);
	/* A new name. */
	free(m->name);
	m->name = strdup("imported");
	m->version = 3;
	assert_int_equal(catalog_commit_as(f->s, m), 0);
	manifest_free(m);

	assert_int_equal(catalog_last_version(f->s, "tiny", &last), 0);
	assert_int_equal(last, 7);
	commit_free(f, "tiny", 8, 8);
	commit_free(f, "imported", 9, 4);
	{
		static const char *const names[] = {"imported", "imported", "tiny",
						    "tiny",	"tiny",	    "tiny"};
		static const uint32_t versions[] = {3, 4, 1, 5, 7, 8};

		check_list(f, names, versions, ARRAY_SIZE(names));
	}
}

static void test_catalog_damaged(void **state)
{
	struct fixture *f = *state;
	char *p;

	for (uint32_t v = 1; v <= 4; v++)
		commit_free(f, "tiny", v, v);

	/* Garbage. */
	p = manifest_file(f, "tiny", "5.json");
	write_file(p, "\x89PNG this is not a manifest", 27);
	free(p);
	expect_load_fails(f, "tiny", 5, -EBADMSG, "tiny:5 is damaged");
	expect_load_fails(f, "tiny", 5, -EBADMSG, "not valid JSON");
	/* It is the latest, so loading the latest fails too. */
	expect_load_fails(f, "tiny", 0, -EBADMSG, "tiny:5 is damaged");
	/* And the next commit steps over it. */
	commit_free(f, "tiny", 6, 6);

	/* Empty. */
	p = manifest_file(f, "tiny", "7.json");
	write_file(p, "", 0);
	free(p);
	expect_load_fails(f, "tiny", 7, -EBADMSG, "tiny:7 is damaged");

	/* Valid JSON, invalid manifest. */
	p = manifest_file(f, "tiny", "8.json");
	write_file(p, "{\"format\": 1}", 13);
	free(p);
	expect_load_fails(f, "tiny", 8, -EBADMSG, "tiny:8 is damaged");

	/* A valid manifest claiming another version, or another name. */
	{
		struct manifest *m = build_manifest("tiny", 1, 50);
		char *text = manifest_text(m);

		p = manifest_file(f, "tiny", "9.json");
		write_file(p, text, strlen(text));
		free(p);
		free(text);
		expect_load_fails(f, "tiny", 9, -EBADMSG, "says it is tiny:1, not tiny:9");

		free(m->name);
		m->name = strdup("other");
		m->version = 10;
		text = manifest_text(m);
		p = manifest_file(f, "tiny", "10.json");
		write_file(p, text, strlen(text));
		free(p);
		free(text);
		expect_load_fails(f, "tiny", 10, -EBADMSG, "says it is other:10, not tiny:10");
		manifest_free(m);
	}

	/* Larger than the limit (sparse, so cheap): refused with a message, not read. */
	p = manifest_file(f, "tiny", "11.json");
	write_file(p, "{", 1);
	assert_int_equal(truncate(p, (off_t)MANIFEST_MAX_BYTES + 1), 0);
	free(p);
	{
		struct manifest *m = (struct manifest *)0x1;
		char *error = NULL;
		int r = catalog_load(f->s, "tiny", 11, &m, &error);

		assert_true(r < 0);
		assert_ptr_equal(m, (struct manifest *)0x1);
		assert_non_null(error);
		assert_contains(error, "11.json");
		free(error);
	}

	/* The good versions still load. */
	for (uint32_t v = 1; v <= 6; v++) {
		struct manifest *m = NULL;

		if (v == 5)
			continue;
		assert_int_equal(catalog_load(f->s, "tiny", v, &m, NULL), 0);
		assert_int_equal(m->version, v);
		manifest_free(m);
	}
}

enum {
	RACE_CHILDREN = 4,
	RACE_EACH = 5,
	RACE_TOTAL = RACE_CHILDREN * RACE_EACH,
};

/* Runs in a child: no cmocka asserts, only exit codes. */
static int race_child(const char *store_dir, int barrier_fd, int child)
{
	struct store *s = NULL;
	char c;

	/* Wait until every child exists, so the commits really overlap. */
	if (read(barrier_fd, &c, 1) != 0)
		return 10;
	if (store_open(store_dir, &s) < 0)
		return 11;
	for (int j = 0; j < RACE_EACH; j++) {
		struct manifest *m = build_manifest("race", 0, (uint64_t)(child * RACE_EACH + j));
		int r = catalog_commit(s, m);

		if (r < 0 || m->version < 1 || m->version > RACE_TOTAL) {
			manifest_free(m);
			store_close(s);
			return 20 + j;
		}
		manifest_free(m);
	}
	store_close(s);
	return 0;
}

static void test_catalog_concurrent(void **state)
{
	struct fixture *f = *state;
	pid_t pids[RACE_CHILDREN];
	bool seen[RACE_TOTAL] = {false};
	int barrier[2];
	uint32_t last = 0;

	assert_int_equal(pipe(barrier), 0);
	fflush(NULL);
	for (int c = 0; c < RACE_CHILDREN; c++) {
		pids[c] = fork();
		assert_true(pids[c] >= 0);
		if (pids[c] == 0) {
			close(barrier[1]);
			_exit(race_child(f->store_dir, barrier[0], c));
		}
	}
	close(barrier[0]);
	close(barrier[1]); /* releases the children */
	for (int c = 0; c < RACE_CHILDREN; c++) {
		int status = 0;

		assert_int_equal(waitpid(pids[c], &status, 0), pids[c]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}

	/* Exactly 1..20, each once, each loading as its own version of a distinct commit. */
	{
		const char *names[RACE_TOTAL];
		uint32_t versions[RACE_TOTAL];

		for (uint32_t i = 0; i < RACE_TOTAL; i++) {
			names[i] = "race";
			versions[i] = i + 1;
		}
		check_list(f, names, versions, RACE_TOTAL);
	}
	assert_int_equal(catalog_last_version(f->s, "race", &last), 0);
	assert_int_equal(last, RACE_TOTAL);
	for (uint32_t v = 1; v <= RACE_TOTAL; v++) {
		struct manifest *m = NULL, *expect;
		int64_t idx;

		assert_int_equal(catalog_load(f->s, "race", v, &m, NULL), 0);
		assert_int_equal(m->version, v);
		idx = m->created_s - 1700000000;
		assert_true(idx >= 0 && idx < RACE_TOTAL);
		assert_false(seen[idx]);
		seen[idx] = true;
		expect = build_manifest("race", v, (uint64_t)idx);
		assert_manifest_equal(m, expect);
		manifest_free(expect);
		manifest_free(m);
	}
	/* No temp files left behind. */
	{
		char *dir = NULL;
		DIR *d;
		struct dirent *de;
		unsigned files = 0;

		assert_true(asprintf(&dir, "%s/manifests/race", f->store_dir) > 0);
		d = opendir(dir);
		assert_non_null(d);
		while ((de = readdir(d))) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			files++;
			if (!strstr(de->d_name, ".json") ||
			    strcmp(strstr(de->d_name, ".json"), ".json") != 0)
				fail_msg("unexpected file %s", de->d_name);
		}
		closedir(d);
		free(dir);
		assert_int_equal(files, RACE_TOTAL);
	}
	/* The next commit continues the sequence. */
	commit_free(f, "race", 1000, RACE_TOTAL + 1);
}

/* Control characters (C0, DEL, C1) anywhere in the text fields are refused: printed by
 * `image show`, they would drive the terminal. Plain UTF-8 stays fine. */
static void test_reject_control_chars(void **state)
{
	static const char *const bad[] = {"evil\x1b]0;title\x07", "a\nb", "del\x7f",
					  "c1 \xc2\x9b"
					  "2J"};
	json_t *root;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		root = valid_root();
		json_object_set_new(root, "owner", json_string(bad[i]));
		expect_root_bad(root, "control characters");

		root = valid_root();
		json_object_set_new(root, "boot_args", json_string(bad[i]));
		expect_root_bad(root, "the boot args");

		root = valid_root();
		json_object_set_new(json_object_get(json_object_get(root, "metadata"), "packages"),
				    bad[i], json_string("1.0"));
		expect_root_bad(root, "the metadata");

		root = valid_root();
		json_object_set_new(json_object_get(root, "metadata"), "description",
				    json_pack("[s]", bad[i]));
		expect_root_bad(root, "control characters");
	}
}

static void replace_with_fifo(const char *path)
{
	assert_int_equal(unlink(path), 0);
	assert_int_equal(mkfifo(path, 0600), 0);
}

/* A fifo, a directory or a link under a version's name is a damaged version: load says so
 * at once (never waits on the fifo), list shows it, verify reports it, rm removes it. */
static void test_catalog_special_files(void **state)
{
	struct fixture *f = *state;
	char *v2 = manifest_file(f, "tiny", "2.json"), *v3 = manifest_file(f, "tiny", "3.json");
	char *v4 = manifest_file(f, "tiny", "4.json"), *inner = NULL;
	struct check_verify_result res = {0};
	size_t n_damaged = 0;

	commit_free(f, "tiny", 1, 1);
	commit_free(f, "tiny", 2, 2);
	commit_free(f, "tiny", 3, 3);
	commit_free(f, "tiny", 4, 4);
	replace_with_fifo(v2);
	assert_int_equal(unlink(v3), 0);
	assert_int_equal(mkdir(v3, 0700), 0);
	assert_true(asprintf(&inner, "%s/x", v3) > 0);
	write_file(inner, "x", 1);
	assert_int_equal(unlink(v4), 0);
	assert_int_equal(symlink("1.json", v4), 0);

	alarm(30); /* a hang fails instead of blocking the suite */
	expect_load_fails(f, "tiny", 2, -EBADMSG, "not a regular file");
	expect_load_fails(f, "tiny", 3, -EBADMSG, "not a regular file");
	expect_load_fails(f, "tiny", 4, -EBADMSG, "`vmhpc image rm tiny:4`");
	{
		static const char *const names[] = {"tiny", "tiny", "tiny", "tiny"};
		static const uint32_t versions[] = {1, 2, 3, 4};

		check_list(f, names, versions, ARRAY_SIZE(names));
	}
	assert_int_equal(check_verify(f->s, &res), 0);
	for (size_t i = 0; i < res.n_problems; i++)
		if (res.problems[i].kind == CHECK_MANIFEST_DAMAGED)
			n_damaged++;
	assert_int_equal(n_damaged, 3);
	check_verify_result_done(&res);
	alarm(0);

	assert_int_equal(catalog_remove(f->s, "tiny", 2), 0);
	assert_int_equal(catalog_remove(f->s, "tiny", 3), 0);
	assert_int_equal(catalog_remove(f->s, "tiny", 4), 0);
	assert_false(fs_exists(v3));
	{
		static const char *const names[] = {"tiny"};
		static const uint32_t versions[] = {1};

		check_list(f, names, versions, ARRAY_SIZE(names));
	}
	commit_free(f, "tiny", 5, 5);
	free(inner);
	free(v2);
	free(v3);
	free(v4);
}

/* Stores the bytes known_id() names, so that m's chunks are really present. */
static void store_known_chunks(struct store *s, const struct manifest *m, uint64_t seed)
{
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
		for (size_t j = 0; j < m->parts[p].n_chunks; j++) {
			char bytes[96];
			uint8_t id[STORE_ID_BYTES];
			int n = snprintf(bytes, sizeof(bytes), "part %d chunk %zu seed %llu", p, j,
					 (unsigned long long)seed);

			assert_int_equal(store_put_chunk(s, bytes, (size_t)n, id, NULL), 0);
			assert_memory_equal(id, m->parts[p].chunks[j].id, STORE_ID_BYTES);
		}
}

static int export_to_file(struct fixture *f, const char *name, uint32_t version)
{
	char *path = fs_path_join(f->dir, "export.tar");
	char *error = NULL;
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(transfer_export(f->s, name, version, fd, &error), 0);
	assert_null(error);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	free(path);
	return fd;
}

/* An import keeps its version number only a little above what the store used: a hostile
 * "version": 100000 cannot take the last number of a name and block every later build. */
static void test_import_version_bound(void **state)
{
	struct fixture *f = *state;
	struct manifest *m = build_manifest("hostile", CATALOG_MAX_VERSIONS, 41);
	char *other_dir = fs_path_join(f->dir, "other");
	struct store *other = NULL;
	char *name = NULL, *error = NULL;
	uint32_t version = 0;
	int fd;

	store_known_chunks(f->s, m, 41);
	assert_int_equal(catalog_commit_as(f->s, m), 0);
	manifest_free(m);
	m = build_manifest("near", 600, 42);
	store_known_chunks(f->s, m, 42);
	assert_int_equal(catalog_commit_as(f->s, m), 0);
	manifest_free(m);

	assert_int_equal(store_open(other_dir, &other), 0);
	fd = export_to_file(f, "hostile", CATALOG_MAX_VERSIONS);
	assert_int_equal(transfer_import(other, fd, &name, &version, &error), 0);
	close(fd);
	assert_null(error);
	assert_string_equal(name, "hostile");
	assert_int_equal(version, 1);
	free(name);
	m = build_manifest("hostile", 0, 43);
	assert_int_equal(catalog_commit(other, m), 0);
	assert_int_equal(m->version, 2);
	manifest_free(m);

	/* Within the gap, the exported number is kept. */
	fd = export_to_file(f, "near", 600);
	assert_int_equal(transfer_import(other, fd, &name, &version, &error), 0);
	close(fd);
	assert_int_equal(version, 600);
	free(name);
	store_close(other);
	free(other_dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_round_trip_edges),
	    cmocka_unit_test(test_reject_syntax),
	    cmocka_unit_test(test_reject_fields),
	    cmocka_unit_test(test_reject_parts),
	    cmocka_unit_test(test_reject_chunks),
	    cmocka_unit_test(test_fuzz),
	    cmocka_unit_test(test_distinct_chunks),
	    cmocka_unit_test(test_parse_ref),
	    cmocka_unit_test(test_part_kind_to_string),
	    cmocka_unit_test_setup_teardown(test_catalog_commit_load, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_list, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_remove, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_commit_as, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reject_control_chars, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_special_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_import_version_bound, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_damaged, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_catalog_concurrent, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
