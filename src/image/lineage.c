#include "image/lineage.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"

/* A growing text buffer; oom once any append failed. */
struct out {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void put(struct out *o, const char *s)
{
	size_t n = strlen(s);

	if (o->oom)
		return;
	if (o->len + n + 1 > o->cap) {
		size_t cap = (o->len + n + 1) * 2;
		char *b = realloc(o->buf, cap);

		if (!b) {
			o->oom = true;
			return;
		}
		o->buf = b;
		o->cap = cap;
	}
	memcpy(o->buf + o->len, s, n + 1);
	o->len += n;
}

static void put_scalar(struct out *o, const char *key, const char *value)
{
	if (!value)
		return;
	put(o, key);
	put(o, " = ");
	put(o, value);
	put(o, "\n");
}

/* "key =" then one item per indented line (a list continues on indented lines). */
static void put_list(struct out *o, const char *key, char *const *items, size_t n)
{
	if (n == 0)
		return;
	put(o, key);
	put(o, " =\n");
	for (size_t i = 0; i < n; i++) {
		put(o, "  ");
		put(o, items[i]);
		put(o, "\n");
	}
}

int lineage_spec_text(const struct image_spec *spec, char **ret_text)
{
	struct out o = {0};

	put(&o, "# recorded by vmhpc: the whole spec this version was built from\n[image]\n");
	put_scalar(&o, "name", spec->name);
	put_scalar(&o, "os", spec->os);
	put_scalar(&o, "description", spec->description);
	put_scalar(&o, "boot_args", spec->boot_args);
	put_scalar(&o, "mpi", spec->mpi);
	put_scalar(&o, "bypass", spec->bypass);
	put(&o, "[kernel]\n");
	put_scalar(&o, "package", spec->kernel_package);
	put_scalar(&o, "source", spec->kernel_source);
	put_list(&o, "modules", spec->modules, spec->n_modules);
	put(&o, "[root]\n");
	put_list(&o, "packages", spec->packages, spec->n_packages);
	put_list(&o, "binaries", spec->binaries, spec->n_binaries);
	if (spec->n_programs) {
		put(&o, "binaries =\n");
		for (size_t i = 0; i < spec->n_programs; i++) {
			/* Read back against "/": "./home/u/ring" is /home/u/ring. */
			put(&o, "  .");
			put(&o, spec->programs[i].src);
			put(&o, "\n");
		}
	}
	put_list(&o, "plugin_dirs", spec->plugin_dirs, spec->n_plugin_dirs);
	if (spec->n_files) {
		put(&o, "files =\n");
		for (size_t i = 0; i < spec->n_files; i++) {
			put(&o, "  ");
			put(&o, spec->files[i].src);
			put(&o, ":");
			put(&o, spec->files[i].dest);
			put(&o, "\n");
		}
	}
	put_scalar(&o, "tree", spec->tree);
	if (o.oom) {
		free(o.buf);
		return -ENOMEM;
	}
	*ret_text = o.buf;
	return 0;
}

int lineage_record(json_t *metadata, const struct image_spec *spec, const char *base_ref)
{
	_cleanup_free_ char *text = NULL;
	json_t *lines = json_array();
	char *save = NULL;
	int r = lineage_spec_text(spec, &text);

	if (r < 0 || !lines) {
		json_decref(lines);
		return r < 0 ? r : -ENOMEM;
	}
	/* One string per line: a manifest's metadata holds no control characters. */
	for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		if (json_array_append_new(lines, json_string(l)) < 0) {
			json_decref(lines);
			return -ENOMEM;
		}
	json_object_set_new(metadata, LINEAGE_SPEC_KEY, lines);
	if (base_ref)
		json_object_set_new(metadata, LINEAGE_BASE_KEY, json_string(base_ref));
	return 0;
}

int lineage_recorded_spec(const struct manifest *m, struct image_spec **ret_spec, char **ret_error)
{
	const json_t *lines = json_object_get(m->metadata, LINEAGE_SPEC_KEY);
	_cleanup_free_ char *origin = NULL, *error = NULL;
	struct out text = {0};
	size_t i;
	json_t *line;
	int r;

	if (!json_is_array(lines))
		return error_set(ret_error, -ENOENT,
				 "%s:%u was built before vmhpc recorded specs in images; build it "
				 "again from its spec file, then derive from or update the new "
				 "version",
				 m->name, m->version);
	json_array_foreach(lines, i, line)
	{
		put(&text, json_string_value(line) ? json_string_value(line) : "");
		put(&text, "\n");
	}
	if (text.oom || asprintf(&origin, "the spec recorded in %s:%u", m->name, m->version) < 0) {
		free(text.buf);
		return -ENOMEM;
	}
	r = spec_parse_string(text.buf ? text.buf : "", text.len, origin, "/", ret_spec, &error);
	free(text.buf);
	if (r < 0)
		return error_set(ret_error, r == -ENOMEM ? r : -EBADMSG, "%s",
				 error ? error : strerror(-r));
	return 0;
}

static bool listed(char *const *items, size_t n, const char *item)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(items[i], item) == 0)
			return true;
	return false;
}

/* dst = base items (less removals) + child items not yet there. A removal the base lacks is
 * an error. */
static int merge_list(char ***dst, size_t *n_dst, char *const *base, size_t n_base,
		      char *const *add, size_t n_add, char *const *remove, size_t n_remove,
		      const char *key, const char *base_ref, char **ret_error)
{
	for (size_t i = 0; i < n_remove; i++)
		if (!listed(base, n_base, remove[i]))
			return error_set(ret_error, -EINVAL,
					 "remove_%s: %s is not among the %s of the base %s; drop "
					 "it from remove_%s",
					 key, remove[i], key, base_ref, key);
	*dst = calloc(n_base + n_add + 1, sizeof(**dst));
	if (!*dst)
		return -ENOMEM;
	*n_dst = 0;
	for (size_t i = 0; i < n_base + n_add; i++) {
		const char *item = i < n_base ? base[i] : add[i - n_base];

		if (listed(remove, n_remove, item) || listed(*dst, *n_dst, item))
			continue;
		(*dst)[*n_dst] = strdup(item);
		if (!(*dst)[(*n_dst)++])
			return -ENOMEM;
	}
	return 0;
}

/* binaries: image paths and own programs (removed by their path in the image); a child's
 * own program replaces the base's of the same name. */
static int merge_binaries(struct image_spec *m, const struct image_spec *base,
			  const struct image_spec *child, char **ret_error)
{
	_cleanup_free_ char **from_base = calloc(child->n_remove_binaries + 1, sizeof(char *));
	size_t n_from_base = 0;
	int r;

	if (!from_base)
		return -ENOMEM;
	for (size_t i = 0; i < child->n_remove_binaries; i++) {
		const char *rm = child->remove_binaries[i];
		bool program = false;

		for (size_t k = 0; k < base->n_programs; k++)
			program = program || strcmp(base->programs[k].dest, rm) == 0;
		if (listed(base->binaries, base->n_binaries, rm))
			from_base[n_from_base++] = child->remove_binaries[i];
		else if (!program)
			return error_set(
			    ret_error, -EINVAL,
			    "remove_binaries: %s is not among the binaries of the base "
			    "%s; drop it from remove_binaries",
			    rm, child->base);
	}
	r = merge_list(&m->binaries, &m->n_binaries, base->binaries, base->n_binaries,
		       child->binaries, child->n_binaries, from_base, n_from_base, "binaries",
		       child->base, ret_error);
	if (r < 0)
		return r;
	m->programs = calloc(base->n_programs + child->n_programs + 1, sizeof(*m->programs));
	if (!m->programs)
		return -ENOMEM;
	for (size_t i = 0; i < base->n_programs + child->n_programs; i++) {
		const struct spec_program *p = i < base->n_programs
						   ? &base->programs[i]
						   : &child->programs[i - base->n_programs];
		struct spec_program *q;
		bool replaced = false;

		if (listed(child->remove_binaries, child->n_remove_binaries, p->dest))
			continue;
		for (size_t k = 0; i < base->n_programs && k < child->n_programs; k++)
			replaced = replaced || strcmp(child->programs[k].dest, p->dest) == 0;
		if (replaced)
			continue;
		q = &m->programs[m->n_programs++];
		*q = (struct spec_program){.src = strdup(p->src),
					   .dest = strdup(p->dest),
					   .given = strdup(p->given),
					   .line = p->line};
		if (!q->src || !q->dest || !q->given)
			return -ENOMEM;
	}
	return 0;
}

static int dup_scalar(char **dst, const char *child, const char *base)
{
	const char *v = child ? child : base;

	*dst = v ? strdup(v) : NULL;
	return v && !*dst ? -ENOMEM : 0;
}

int lineage_merge(const struct image_spec *base, const struct image_spec *child,
		  struct image_spec **ret_spec, char **ret_error)
{
	struct image_spec *m = calloc(1, sizeof(*m));
	const char *ref = child->base;
	int r;

	if (!m)
		return -ENOMEM;
	r = dup_scalar(&m->origin, child->origin, NULL);
	if (r == 0)
		r = dup_scalar(&m->name, child->name, NULL);
	if (r == 0)
		r = dup_scalar(&m->os, child->os, base->os);
	if (r == 0)
		r = dup_scalar(&m->description, child->description, base->description);
	if (r == 0)
		r = dup_scalar(&m->boot_args, child->boot_args, base->boot_args);
	if (r == 0)
		r = dup_scalar(&m->mpi, child->mpi, base->mpi);
	if (r == 0)
		r = dup_scalar(&m->bypass, child->bypass, base->bypass);
	/* The kernel is one choice: a child naming either form replaces the base's. */
	if (r == 0 && (child->kernel_package || child->kernel_source)) {
		r = dup_scalar(&m->kernel_package, child->kernel_package, NULL);
		if (r == 0)
			r = dup_scalar(&m->kernel_source, child->kernel_source, NULL);
	} else if (r == 0) {
		r = dup_scalar(&m->kernel_package, base->kernel_package, NULL);
		if (r == 0)
			r = dup_scalar(&m->kernel_source, base->kernel_source, NULL);
	}
	if (r == 0)
		r = dup_scalar(&m->tree, child->tree, base->tree);
	if (r == 0)
		r = merge_list(&m->modules, &m->n_modules, base->modules, base->n_modules,
			       child->modules, child->n_modules, child->remove_modules,
			       child->n_remove_modules, "modules", ref, ret_error);
	if (r == 0)
		r = merge_list(&m->packages, &m->n_packages, base->packages, base->n_packages,
			       child->packages, child->n_packages, child->remove_packages,
			       child->n_remove_packages, "packages", ref, ret_error);
	if (r == 0)
		r = merge_list(&m->plugin_dirs, &m->n_plugin_dirs, base->plugin_dirs,
			       base->n_plugin_dirs, child->plugin_dirs, child->n_plugin_dirs,
			       child->remove_plugin_dirs, child->n_remove_plugin_dirs,
			       "plugin_dirs", ref, ret_error);
	if (r == 0)
		r = merge_binaries(m, base, child, ret_error);
	if (r == 0) {
		/* files: by DEST; the child's entry for a DEST replaces the base's. */
		m->files = calloc(base->n_files + child->n_files + 1, sizeof(*m->files));
		if (!m->files)
			r = -ENOMEM;
		for (size_t i = 0; r == 0 && i < child->n_remove_files; i++) {
			bool found = false;

			for (size_t k = 0; k < base->n_files; k++)
				found = found ||
					strcmp(base->files[k].dest, child->remove_files[i]) == 0;
			if (!found)
				r = error_set(
				    ret_error, -EINVAL,
				    "remove_files: %s is not the DEST of any files entry of "
				    "the base %s; drop it from remove_files",
				    child->remove_files[i], ref);
		}
		for (size_t i = 0; r == 0 && i < base->n_files + child->n_files; i++) {
			const struct spec_file *f =
			    i < base->n_files ? &base->files[i] : &child->files[i - base->n_files];
			bool replaced = false;

			if (listed(child->remove_files, child->n_remove_files, f->dest))
				continue;
			for (size_t k = 0; i < base->n_files && k < child->n_files; k++)
				replaced = replaced || strcmp(child->files[k].dest, f->dest) == 0;
			if (replaced)
				continue;
			m->files[m->n_files].src = strdup(f->src);
			m->files[m->n_files].dest = strdup(f->dest);
			if (!m->files[m->n_files].src || !m->files[m->n_files].dest)
				r = -ENOMEM;
			m->n_files++;
		}
	}
	if (r == 0 && !m->kernel_package && !m->kernel_source)
		r = error_set(ret_error, -EINVAL,
			      "neither this spec nor its base %s names a kernel "
			      "package; add one under [kernel]",
			      ref);
	if (r < 0) {
		image_spec_free(m);
		return r;
	}
	*ret_spec = m;
	return 0;
}

int lineage_resolve(struct store *s, const struct image_spec *child, struct image_spec **ret_spec,
		    char **ret_base_ref, char **ret_error)
{
	_cleanup_free_ char *name = strdup(child->base), *error = NULL;
	struct image_spec *base = NULL;
	struct manifest *m = NULL;
	uint32_t version = 0;
	char *colon;
	int r;

	if (!name)
		return -ENOMEM;
	colon = strchr(name, ':');
	if (colon) {
		*colon = '\0';
		version = (uint32_t)strtoul(colon + 1, NULL, 10);
	}
	r = catalog_load(s, name, version, &m, &error);
	if (r < 0)
		return error_set(ret_error, r, "base %s: %s", child->base,
				 error ? error : strerror(-r));
	r = lineage_recorded_spec(m, &base, ret_error);
	if (r == 0)
		r = lineage_merge(base, child, ret_spec, ret_error);
	if (r == 0 && asprintf(ret_base_ref, "%s:%u", m->name, m->version) < 0) {
		*ret_spec = image_spec_free(*ret_spec);
		r = -ENOMEM;
	}
	image_spec_free(base);
	manifest_free(m);
	return r;
}
