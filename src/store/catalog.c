#include "store/catalog.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/name.h"

static char *name_dir(struct store *s, const char *name)
{
	char *p = NULL;

	if (asprintf(&p, "%s/manifests/%s", store_path(s), name) < 0)
		return NULL;
	return p;
}

static char *version_path(struct store *s, const char *name, uint32_t version, const char *suffix)
{
	char *p = NULL;

	if (asprintf(&p, "%s/manifests/%s/%u.%s", store_path(s), name, version, suffix) < 0)
		return NULL;
	return p;
}

/* Parses "<digits>.json" or "<digits>.removed"; returns the version or 0. */
static uint32_t parse_version_file(const char *fname, bool *ret_present)
{
	char *end;
	unsigned long v;

	if (fname[0] < '1' || fname[0] > '9')
		return 0;
	errno = 0;
	v = strtoul(fname, &end, 10);
	if (errno || v > UINT32_MAX)
		return 0;
	if (strcmp(end, ".json") == 0)
		*ret_present = true;
	else if (strcmp(end, ".removed") == 0)
		*ret_present = false;
	else
		return 0;
	return (uint32_t)v;
}

/* Calls fn for each version file of name. */
static int foreach_version(struct store *s, const char *name,
			   int (*fn)(uint32_t version, bool present, void *ud), void *ud)
{
	_cleanup_free_ char *dir = name_dir(s, name);
	DIR *d;
	struct dirent *de;
	int r = 0;

	if (!dir)
		return -ENOMEM;
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		bool present;
		uint32_t v = parse_version_file(de->d_name, &present);

		if (v == 0)
			continue;
		r = fn(v, present, ud);
		if (r < 0)
			break;
	}
	closedir(d);
	return r;
}

static int track_max(uint32_t version, bool present, void *ud)
{
	uint32_t *max = ud;

	if (version > *max)
		*max = version;
	return 0;
}

int catalog_last_version(struct store *s, const char *name, uint32_t *ret_version)
{
	uint32_t max = 0;
	int r = foreach_version(s, name, track_max, &max);

	if (r < 0)
		return r;
	*ret_version = max;
	return 0;
}

static int write_version(struct store *s, const struct manifest *m)
{
	_cleanup_free_ char *dir = name_dir(s, m->name);
	_cleanup_free_ char *path = version_path(s, m->name, m->version, "json");
	_cleanup_free_ char *removed = version_path(s, m->name, m->version, "removed");
	_cleanup_free_ char *text = NULL;
	int r;

	if (!dir || !path || !removed)
		return -ENOMEM;
	if (name_validate("image name", m->name, NULL) < 0)
		return -EINVAL;
	if (m->version == 0 || m->version > CATALOG_MAX_VERSIONS)
		return -ERANGE;
	if (fs_exists(removed))
		return -EEXIST;
	r = manifest_to_json(m, &text);
	if (r < 0)
		return r;
	r = fs_mkdir_p(dir, 0700);
	if (r < 0)
		return r;
	return fs_write_atomic_new(path, text, strlen(text), 0600);
}

int catalog_commit(struct store *s, struct manifest *m)
{
	int r = store_sync(s);

	if (r < 0)
		return r;
	/* Two builders may race for the same number: link() lets exactly one win, and the
	 * other takes the next one. */
	for (int attempt = 0; attempt < 1000; attempt++) {
		uint32_t last;

		r = catalog_last_version(s, m->name, &last);
		if (r < 0)
			return r;
		if (last >= CATALOG_MAX_VERSIONS)
			return -EOVERFLOW;
		m->version = last + 1;
		r = write_version(s, m);
		if (r != -EEXIST)
			return r;
	}
	return -EBUSY;
}

int catalog_commit_as(struct store *s, const struct manifest *m)
{
	int r = store_sync(s);

	if (r < 0)
		return r;
	return write_version(s, m);
}

struct present_list {
	uint32_t *versions;
	size_t n;
};

static int collect_present(uint32_t version, bool present, void *ud)
{
	struct present_list *l = ud;
	uint32_t *grown;

	if (!present)
		return 0;
	if (l->n >= CATALOG_MAX_VERSIONS)
		return -E2BIG;
	grown = realloc(l->versions, (l->n + 1) * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	l->versions = grown;
	l->versions[l->n++] = version;
	return 0;
}

static int compare_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int list_versions(struct store *s, const char *name, struct present_list *l)
{
	int r = foreach_version(s, name, collect_present, l);

	if (r < 0)
		return r;
	if (l->n > 0)
		qsort(l->versions, l->n, sizeof(*l->versions), compare_u32);
	return 0;
}

int catalog_load(struct store *s, const char *name, uint32_t version,
		 struct manifest **ret_manifest, char **ret_error)
{
	struct present_list l = {0};
	_cleanup_free_ char *path = NULL;
	_cleanup_free_ char *text = NULL;
	_cleanup_free_ char *parse_error = NULL;
	struct manifest *m = NULL;
	size_t len;
	int r;

	r = name_validate("image name", name, ret_error);
	if (r < 0)
		return r;
	r = list_versions(s, name, &l);
	if (r < 0)
		goto out;
	if (l.n == 0) {
		error_set(ret_error, 0,
			  "no image named '%s' in the store %s; see `vmhpc image "
			  "list`, or build it with `vmhpc image build SPEC`",
			  name, store_path(s));
		r = -ENOENT;
		goto out;
	}
	if (version == 0)
		version = l.versions[l.n - 1];
	path = version_path(s, name, version, "json");
	if (!path) {
		r = -ENOMEM;
		goto out;
	}
	/* Anyone who could write into the store could plant a fifo (a read would wait
	 * forever), a directory or a link here: only a regular file is a manifest. */
	r = fs_read_file_nofollow(path, MANIFEST_MAX_BYTES, &text, &len);
	if (r == -ELOOP || r == -EISDIR || r == -EINVAL) {
		error_set(ret_error, 0,
			  "%s:%u is damaged: %s is not a regular file; remove it with "
			  "`vmhpc image rm %s:%u`",
			  name, version, path, name, version);
		r = -EBADMSG;
		goto out;
	}
	if (r == -ENOENT) {
		error_set(ret_error, 0,
			  "image '%s' has no version %u (it has %zu version%s, the "
			  "latest is %u); see `vmhpc image list`",
			  name, version, l.n, l.n == 1 ? "" : "s", l.versions[l.n - 1]);
		goto out;
	}
	if (r < 0) {
		error_set(ret_error, 0, "reading %s: %s", path, strerror(-r));
		goto out;
	}
	r = manifest_from_json(text, len, &m, &parse_error);
	if (r < 0) {
		error_set(ret_error, 0,
			  "%s:%u is damaged (%s): %s; remove it with "
			  "`vmhpc image rm %s:%u` or import it again",
			  name, version, path, parse_error ? parse_error : "unreadable", name,
			  version);
		goto out;
	}
	if (strcmp(m->name, name) != 0 || m->version != version) {
		error_set(ret_error, 0,
			  "%s says it is %s:%u, not %s:%u; the store "
			  "is damaged",
			  path, m->name, m->version, name, version);
		m = manifest_free(m);
		r = -EBADMSG;
		goto out;
	}
	*ret_manifest = m;
	r = 0;
out:
	free(l.versions);
	return r;
}

int catalog_list(struct store *s, struct catalog_entry **ret_entries, size_t *ret_n)
{
	_cleanup_free_ char *dir = NULL;
	struct catalog_entry *entries = NULL;
	struct dirent **names = NULL;
	size_t n = 0;
	int count, r = 0;

	if (asprintf(&dir, "%s/manifests", store_path(s)) < 0)
		return -ENOMEM;
	count = scandir(dir, &names, NULL, alphasort);
	if (count < 0)
		return errno == ENOENT ? (*ret_entries = NULL, *ret_n = 0, 0) : -errno;
	for (int i = 0; i < count && r == 0; i++) {
		struct present_list l = {0};

		if (name_validate("", names[i]->d_name, NULL) < 0)
			continue;
		r = list_versions(s, names[i]->d_name, &l);
		if (r == -ENOTDIR) {
			r = 0; /* a stray file among the names: not an image */
			continue;
		}
		for (size_t j = 0; r == 0 && j < l.n; j++) {
			struct catalog_entry *grown = realloc(entries, (n + 1) * sizeof(*grown));

			if (!grown) {
				r = -ENOMEM;
				break;
			}
			entries = grown;
			entries[n].name = strdup(names[i]->d_name);
			entries[n].version = l.versions[j];
			if (!entries[n++].name)
				r = -ENOMEM;
		}
		free(l.versions);
	}
	for (int i = 0; i < count; i++)
		free(names[i]);
	free(names);
	if (r < 0) {
		catalog_entries_free(entries, n);
		return r;
	}
	*ret_entries = entries;
	*ret_n = n;
	return 0;
}

void catalog_entries_free(struct catalog_entry *entries, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(entries[i].name);
	free(entries);
}

int catalog_remove(struct store *s, const char *name, uint32_t version)
{
	_cleanup_free_ char *path = version_path(s, name, version, "json");
	_cleanup_free_ char *removed = version_path(s, name, version, "removed");
	_cleanup_free_ char *dir = name_dir(s, name);
	int r;

	if (!path || !removed || !dir)
		return -ENOMEM;
	if (name_validate("image name", name, NULL) < 0)
		return -EINVAL;
	if (!fs_exists(path))
		return -ENOENT;
	/* The marker goes first: a crash between the two steps leaves the version present
	 * (and removable again), never a number that could be handed out twice. */
	r = fs_write_atomic(removed, "", 0, 0600);
	if (r < 0)
		return r;
	/* A damaged version may be a directory under the manifest's name: remove that too. */
	r = fs_rm_rf(path);
	if (r < 0)
		return r;
	return fs_fsync_dir(dir);
}
