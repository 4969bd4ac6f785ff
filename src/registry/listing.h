/* The image versions a registry repository holds, as candidates for the image manager's
 * matching (`vmhpc image match --registry`): every tag's OCI manifest, and its config blob,
 * which is the version's vmhpc manifest. Config blobs are immutable (named by digest), so
 * they are cached on disk: a second listing fetches only the tags' manifests. */
#pragma once

#include <stddef.h>

#include "registry/oci.h"
#include "store/manifest.h"

struct listing_entry {
	char *tag;
	struct manifest *manifest; /* the version's vmhpc manifest (from the config blob) */
};

struct listing {
	size_t n;
	struct listing_entry *entries;
	size_t skipped;	       /* tags that are not vmhpc images (other media types) */
	size_t configs_cached; /* config blobs read from cache_dir, not fetched */
};

/* Lists repo through c; cache_dir (NULL: no cache) keeps config blobs as <digest>.json.
 * Errors (the registry down, the repository unknown) name the registry and repo in
 * *ret_error (caller frees). Free ret with listing_done(). */
int listing_load(struct oci_client *c, const char *repo, const char *cache_dir, struct listing *ret,
		 char **ret_error);
void listing_done(struct listing *l);
