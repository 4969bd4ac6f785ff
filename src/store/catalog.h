/* The image versions a store holds: one manifest per version at
 * <store>/manifests/<name>/<version>.json, written atomically, so a listing never shows a
 * partial version. A removed version leaves <version>.removed behind so that version
 * numbers stay monotonic per name. */
#pragma once

#include <stdint.h>

#include "store/manifest.h"
#include "store/store.h"

#define CATALOG_MAX_VERSIONS 100000

struct catalog_entry {
	char *name;
	uint32_t version;
};

/* Gives m the next version of its name and writes it. Chunks are made durable first
 * (store_sync), so a manifest never names a chunk a crash could lose. Concurrent commits
 * of one name each get their own version. */
int catalog_commit(struct store *s, struct manifest *m);

/* Writes m under its own version; -EEXIST if that version was ever used. (Import.) */
int catalog_commit_as(struct store *s, const struct manifest *m);

/* Loads name:version (version 0: the latest). -ENOENT with *ret_error naming what exists;
 * -EBADMSG when the file is damaged. The caller frees *ret_manifest. */
int catalog_load(struct store *s, const char *name, uint32_t version,
		 struct manifest **ret_manifest, char **ret_error);

/* The highest version ever given to name (removed ones included), 0 if none. */
int catalog_last_version(struct store *s, const char *name, uint32_t *ret_version);

/* Lists every present version, sorted by name then version. Free with catalog_entries_free. */
int catalog_list(struct store *s, struct catalog_entry **ret_entries, size_t *ret_n);
void catalog_entries_free(struct catalog_entry *entries, size_t n);

/* Removes name:version (its chunks stay until gc). -ENOENT if absent. */
int catalog_remove(struct store *s, const char *name, uint32_t version);
