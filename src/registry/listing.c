#include "registry/listing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/artifact.h"
#include "registry/patch.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"

/* The largest config (a vmhpc manifest: chunk lists of every part) read. */
#define LISTING_CONFIG_MAX_BYTES (64u << 20)

void listing_done(struct listing *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->entries[i].tag);
		manifest_free(l->entries[i].manifest);
	}
	free(l->entries);
	memset(l, 0, sizeof(*l));
}

/* The config blob digest names: from the cache when it is there (and still hashes to its
 * name), else from the registry, then kept. */
static int load_config(struct oci_client *c, const char *repo, const char *digest,
		       const char *cache_dir, char **ret_text, size_t *ret_len, bool *ret_cached,
		       char **ret_error)
{
	_cleanup_free_ char *path = NULL;
	char got[OCI_DIGEST_LEN + 1];
	void *data = NULL;
	size_t len = 0;
	int r;

	*ret_cached = false;
	if (cache_dir && asprintf(&path, "%s/%s.json", cache_dir, digest) < 0)
		return -ENOMEM;
	if (path && fs_read_file(path, LISTING_CONFIG_MAX_BYTES, (char **)&data, &len) == 0) {
		oci_digest(data, len, got);
		if (strcmp(got, digest) == 0) {
			*ret_text = data;
			*ret_len = len;
			*ret_cached = true;
			return 0;
		}
		free(data); /* damaged: fetched again below, and replaced */
		data = NULL;
	}
	r = oci_blob_get(c, repo, digest, LISTING_CONFIG_MAX_BYTES, &data, &len, ret_error);
	if (r < 0)
		return r;
	/* A failed cache write costs only a later fetch. */
	if (path && fs_mkdir_p(cache_dir, 0700) == 0)
		(void)fs_write_atomic(path, data, len, 0600);
	*ret_text = data;
	*ret_len = len;
	return 0;
}

int listing_load(struct oci_client *c, const char *repo, const char *cache_dir, struct listing *ret,
		 char **ret_error)
{
	struct listing l = {0};
	char **tags = NULL;
	size_t n_tags = 0;
	int r;

	r = oci_tags_list(c, repo, &tags, &n_tags, ret_error);
	if (r < 0)
		return r;
	l.entries = calloc(n_tags + 1, sizeof(*l.entries));
	if (!l.entries) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n_tags; i++) {
		_cleanup_free_ char *oci = NULL, *config = NULL, *error = NULL;
		struct artifact *a = NULL;
		struct manifest *m = NULL;
		size_t oci_len = 0, config_len = 0;
		bool cached;

		if (patch_tag_is(tags[i])) /* a version's patch, not a version */
			continue;
		r = oci_manifest_get(c, repo, tags[i], OCI_MEDIA_TYPE_MANIFEST, &oci, &oci_len,
				     ret_error);
		if (r == -ENOENT) { /* untagged since the list was made */
			free(*ret_error);
			*ret_error = NULL;
			continue;
		}
		if (r < 0)
			goto out;
		/* Another kind of artifact in the repository is not a candidate. */
		if (artifact_parse(oci, oci_len, &a, &error) < 0) {
			l.skipped++;
			continue;
		}
		r = load_config(c, repo, a->config.digest, cache_dir, &config, &config_len, &cached,
				ret_error);
		artifact_free(a);
		if (r < 0)
			goto out;
		l.configs_cached += cached;
		if (manifest_from_json(config, config_len, &m, NULL) < 0) {
			l.skipped++;
			continue;
		}
		l.entries[l.n].tag = tags[i];
		tags[i] = NULL;
		l.entries[l.n++].manifest = m;
	}
	*ret = l;
	memset(&l, 0, sizeof(l));
	r = 0;
out:
	for (size_t i = 0; i < n_tags; i++)
		free(tags[i]);
	free(tags);
	listing_done(&l);
	return r;
}
