/* Moving one image version between stores as one tar stream: "manifest.json" first, then
 * "chunks/<id>.zst" for each distinct chunk, compressed as stored. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "store/manifest.h"
#include "store/store.h"

/* Writes name:version (0: latest) to out_fd. On failure *ret_error (caller frees) says why. */
int transfer_export(struct store *s, const char *name, uint32_t version, int out_fd,
		    char **ret_error);

/* An import keeps its version number only when it is above every number its name used
 * here, by at most this much; else it becomes the next version. */
#define TRANSFER_VERSION_MAX_GAP 1000

/* Reads a stream made by transfer_export from in_fd, verifies every chunk against its id,
 * and adds the version: under its own number when that number is above and within
 * TRANSFER_VERSION_MAX_GAP of every number used here, else as the next version (an
 * identical version already present is not added twice). Nothing is
 * committed unless every chunk arrived intact. *ret_name (caller frees) and *ret_version say
 * what the store now has; *ret_error (caller frees) says why on failure. */
int transfer_import(struct store *s, int in_fd, char **ret_name, uint32_t *ret_version,
		    char **ret_error);

/* Adds m, received from elsewhere with every chunk already stored and verified here, under
 * the same rule as transfer_import: its own number when that is above and within
 * TRANSFER_VERSION_MAX_GAP of every number its name used here, else the next one; an
 * identical version already present (same number, same chunks) is not added again
 * (*ret_added false; may be NULL). Sets m->version to what the store now has. */
int transfer_commit_received(struct store *s, struct manifest *m, bool *ret_added);
