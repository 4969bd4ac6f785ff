#include "store/manifest.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/cleanup.h"
#include "util/name.h"

static const char *const part_names[_MANIFEST_PART_KIND_MAX] = {
    [MANIFEST_PART_KERNEL] = "kernel",
    [MANIFEST_PART_INITRAMFS] = "initramfs",
    [MANIFEST_PART_ROOT] = "root",
    [MANIFEST_PART_INDEX] = "index",
};

const char *manifest_part_kind_to_string(enum manifest_part_kind kind)
{
	if ((unsigned)kind >= _MANIFEST_PART_KIND_MAX)
		return NULL;
	return part_names[kind];
}

struct manifest *manifest_new(void)
{
	struct manifest *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->metadata = json_object();
	if (!m->metadata) {
		free(m);
		return NULL;
	}
	return m;
}

struct manifest *manifest_free(struct manifest *m)
{
	if (!m)
		return NULL;
	free(m->name);
	free(m->owner);
	free(m->boot_args);
	json_decref(m->metadata);
	for (int i = 0; i < _MANIFEST_PART_KIND_MAX; i++)
		store_part_done(&m->parts[i]);
	free(m);
	return NULL;
}

static json_t *part_to_json(const struct store_part *part)
{
	json_t *chunks = json_array();
	json_t *obj;

	if (!chunks)
		return NULL;
	for (size_t i = 0; i < part->n_chunks; i++) {
		char hex[STORE_ID_HEX_LEN + 1];

		store_id_to_hex(part->chunks[i].id, hex);
		if (json_array_append_new(
			chunks, json_pack("[s, I]", hex, (json_int_t)part->chunks[i].size_bytes)) <
		    0) {
			json_decref(chunks);
			return NULL;
		}
	}
	obj = json_pack("{s:I, s:o}", "size", (json_int_t)part->size_bytes, "chunks", chunks);
	return obj;
}

int manifest_to_json(const struct manifest *m, char **ret_text)
{
	json_t *root, *parts;
	char *text;

	parts = json_object();
	if (!parts)
		return -ENOMEM;
	for (int i = 0; i < _MANIFEST_PART_KIND_MAX; i++) {
		if (json_object_set_new(parts, part_names[i], part_to_json(&m->parts[i])) < 0) {
			json_decref(parts);
			return -ENOMEM;
		}
	}
	root = json_pack("{s:i, s:s, s:I, s:I, s:s, s:s, s:O, s:o}", "format", MANIFEST_FORMAT,
			 "name", m->name, "version", (json_int_t)m->version, "created",
			 (json_int_t)m->created_s, "owner", m->owner ? m->owner : "", "boot_args",
			 m->boot_args ? m->boot_args : "", "metadata", m->metadata, "parts", parts);
	if (!root)
		return -ENOMEM;
	text = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
	json_decref(root);
	if (!text)
		return -ENOMEM;
	*ret_text = text;
	return 0;
}

static int bad(char **ret_error, const char *fmt, const char *arg)
{
	error_set(ret_error, 0, fmt, arg);
	return -EBADMSG;
}

static int part_from_json(json_t *obj, const char *name, struct store_part *part, char **ret_error)
{
	json_t *chunks, *entry;
	json_int_t size;
	uint64_t sum = 0;
	size_t i;

	if (!json_is_object(obj))
		return bad(ret_error, "manifest: part '%s' is missing or not an object", name);
	size = json_integer_value(json_object_get(obj, "size"));
	chunks = json_object_get(obj, "chunks");
	if (!json_is_integer(json_object_get(obj, "size")) || size < 0 || !json_is_array(chunks))
		return bad(ret_error, "manifest: part '%s' lacks a valid size or chunk list", name);
	if (json_array_size(chunks) > MANIFEST_MAX_CHUNKS_PER_PART)
		return bad(ret_error, "manifest: part '%s' has too many chunks", name);
	part->chunks =
	    calloc(json_array_size(chunks) ? json_array_size(chunks) : 1, sizeof(*part->chunks));
	if (!part->chunks)
		return -ENOMEM;
	json_array_foreach(chunks, i, entry)
	{
		const char *hex = json_string_value(json_array_get(entry, 0));
		json_t *sz = json_array_get(entry, 1);

		if (!json_is_array(entry) || json_array_size(entry) != 2 || !hex ||
		    !json_is_integer(sz) || json_integer_value(sz) <= 0 ||
		    json_integer_value(sz) > STORE_CHUNK_MAX_BYTES ||
		    store_id_from_hex(hex, part->chunks[i].id) < 0)
			return bad(ret_error, "manifest: part '%s' has a malformed chunk entry",
				   name);
		part->chunks[i].size_bytes = (uint32_t)json_integer_value(sz);
		sum += part->chunks[i].size_bytes;
		part->n_chunks = i + 1;
	}
	if (sum != (uint64_t)size)
		return bad(ret_error, "manifest: part '%s' size does not match its chunks", name);
	part->size_bytes = (uint64_t)size;
	return 0;
}

/* True when text holds a control character: C0 (including ESC and newline), DEL, or C1
 * (U+0080-U+009F, two bytes in UTF-8, which some terminals take as CSI). Printed as
 * they are, these would let an imported manifest drive the terminal of whoever runs
 * `image show` (move the cursor, hide lines, set the title). */
static bool has_control(const char *text)
{
	const unsigned char *p = (const unsigned char *)text;

	for (; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return true;
		if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			return true;
	}
	return false;
}

/* The first string (key or value) below v that holds a control character, else NULL.
 * jansson's parser bounds the depth (2048), and so does this walk. */
static const char *find_control(json_t *v, unsigned depth)
{
	const char *key, *found;
	json_t *item;
	size_t i;

	if (depth > 64)
		return "(nested too deep)";
	if (json_is_string(v))
		return has_control(json_string_value(v)) ? json_string_value(v) : NULL;
	if (json_is_object(v)) {
		json_object_foreach(v, key, item)
		{
			if (has_control(key))
				return key;
			found = find_control(item, depth + 1);
			if (found)
				return found;
		}
	}
	if (json_is_array(v)) {
		json_array_foreach(v, i, item)
		{
			found = find_control(item, depth + 1);
			if (found)
				return found;
		}
	}
	return NULL;
}

int manifest_from_json(const char *text, size_t len, struct manifest **ret_manifest,
		       char **ret_error)
{
	struct manifest *m = NULL;
	json_error_t jerr;
	json_t *root;
	const char *name, *owner, *boot_args;
	json_int_t version, created, format;
	json_t *metadata, *parts;
	int r;

	if (len > MANIFEST_MAX_BYTES)
		return bad(ret_error, "manifest: %s", "larger than the 64 MiB limit");
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		error_set(ret_error, 0, "manifest: not valid JSON (line %d: %s)", jerr.line,
			  jerr.text);
		return -EBADMSG;
	}
	if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:I, s:s, s:I, s:I, s:s, s:s, s:o, s:o}",
			   "format", &format, "name", &name, "version", &version, "created",
			   &created, "owner", &owner, "boot_args", &boot_args, "metadata",
			   &metadata, "parts", &parts) < 0) {
		error_set(ret_error, 0, "manifest: %s", jerr.text);
		r = -EBADMSG;
		goto out;
	}
	if (format != MANIFEST_FORMAT) {
		r = bad(ret_error, "manifest: format %s is not supported by this vmhpc",
			format > MANIFEST_FORMAT ? "is newer and" : "is unknown and");
		goto out;
	}
	r = name_validate("manifest: image name", name, ret_error);
	if (r < 0) {
		r = -EBADMSG;
		goto out;
	}
	if (version <= 0 || version > UINT32_MAX || !json_is_object(metadata) ||
	    !json_is_object(parts)) {
		r = bad(ret_error, "manifest of '%s': bad version, metadata or parts", name);
		goto out;
	}
	if (has_control(owner) || has_control(boot_args) || find_control(metadata, 0)) {
		error_set(ret_error, 0,
			  "manifest of '%s': %s holds control characters, which a manifest made "
			  "by vmhpc never does; do not use this file",
			  name,
			  has_control(owner)	   ? "the owner"
			  : has_control(boot_args) ? "the boot args"
						   : "the metadata");
		r = -EBADMSG;
		goto out;
	}
	m = manifest_new();
	if (!m) {
		r = -ENOMEM;
		goto out;
	}
	m->name = strdup(name);
	m->owner = strdup(owner);
	m->boot_args = strdup(boot_args);
	if (!m->name || !m->owner || !m->boot_args) {
		r = -ENOMEM;
		goto out;
	}
	m->version = (uint32_t)version;
	m->created_s = created;
	json_decref(m->metadata);
	m->metadata = json_incref(metadata);
	for (int i = 0; i < _MANIFEST_PART_KIND_MAX; i++) {
		r = part_from_json(json_object_get(parts, part_names[i]), part_names[i],
				   &m->parts[i], ret_error);
		if (r < 0)
			goto out;
	}
	*ret_manifest = TAKE_PTR(m);
	r = 0;
out:
	manifest_free(m);
	json_decref(root);
	return r;
}

static int compare_refs(const void *a, const void *b)
{
	return memcmp(((const struct store_chunk_ref *)a)->id,
		      ((const struct store_chunk_ref *)b)->id, STORE_ID_BYTES);
}

bool manifest_same_parts(const struct manifest *a, const struct manifest *b)
{
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++) {
		if (a->parts[p].n_chunks != b->parts[p].n_chunks)
			return false;
		if (memcmp(a->parts[p].chunks, b->parts[p].chunks,
			   a->parts[p].n_chunks * sizeof(*a->parts[p].chunks)) != 0)
			return false;
	}
	return true;
}

int manifest_distinct_chunks(const struct manifest *m, struct store_chunk_ref **ret_refs,
			     size_t *ret_n)
{
	size_t total = 0, n = 0;
	struct store_chunk_ref *refs;

	for (int i = 0; i < _MANIFEST_PART_KIND_MAX; i++)
		total += m->parts[i].n_chunks;
	refs = calloc(total ? total : 1, sizeof(*refs));
	if (!refs)
		return -ENOMEM;
	for (int i = 0; i < _MANIFEST_PART_KIND_MAX; i++) {
		if (m->parts[i].n_chunks == 0)
			continue; /* chunks may be NULL: memcpy must not see it */
		memcpy(refs + n, m->parts[i].chunks, m->parts[i].n_chunks * sizeof(*refs));
		n += m->parts[i].n_chunks;
	}
	qsort(refs, n, sizeof(*refs), compare_refs);
	total = 0;
	for (size_t i = 0; i < n; i++)
		if (total == 0 || compare_refs(&refs[total - 1], &refs[i]) != 0)
			refs[total++] = refs[i];
	*ret_refs = refs;
	*ret_n = total;
	return 0;
}

int manifest_parse_ref(const char *ref, char **ret_name, uint32_t *ret_version, char **ret_error)
{
	const char *colon = strchr(ref, ':');
	_cleanup_free_ char *name = colon ? strndup(ref, (size_t)(colon - ref)) : strdup(ref);
	unsigned long v = 0;
	int r;

	if (!name)
		return -ENOMEM;
	r = name_validate("image name", name, ret_error);
	if (r < 0)
		return r;
	if (colon) {
		char *end;

		errno = 0;
		v = strtoul(colon + 1, &end, 10);
		if (colon[1] < '1' || colon[1] > '9' || *end || errno || v > UINT32_MAX) {
			error_set(ret_error, 0,
				  "image '%s': version '%s' is not a positive whole number; write "
				  "NAME or NAME:VERSION, e.g. %s:1",
				  name, colon + 1, name);
			return -EINVAL;
		}
	}
	*ret_name = TAKE_PTR(name);
	*ret_version = (uint32_t)v;
	return 0;
}
