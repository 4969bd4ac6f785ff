/* What an image version was built from, so that versions can be derived from it and updated:
 * every version records its whole spec (metadata "spec": the lines of canonical spec text with
 * every path absolute, no base and no removals), and a spec with `base = NAME[:VERSION]` starts
 * from the base's recorded spec. docs/image-manager.md and docs/image-spec.md. */
#pragma once

#include <jansson.h>

#include "image/spec.h"
#include "store/manifest.h"
#include "store/store.h"

/* The metadata key of the recorded spec, and of the base a derived version came from. */
#define LINEAGE_SPEC_KEY "spec"
#define LINEAGE_BASE_KEY "base"

/* Writes spec as canonical spec text that spec_parse_string(text, ..., base_dir "/") reads
 * back to the same spec: sorted sections, one item per line, absolute paths (own programs as
 * "./" + their absolute path less its '/'). The base and removals must have been applied.
 * Caller frees *ret_text; -ENOMEM. */
int lineage_spec_text(const struct image_spec *spec, char **ret_text);

/* Records spec (merged: no base, no removals) in metadata as LINEAGE_SPEC_KEY, an array of
 * the canonical text's lines, and base_ref (NULL: none) as LINEAGE_BASE_KEY. -ENOMEM. */
int lineage_record(json_t *metadata, const struct image_spec *spec, const char *base_ref);

/* Parses the spec m recorded. -ENOENT with *ret_error (caller frees) when m predates
 * recorded specs (rebuild it from its spec file), -EBADMSG when the text does not parse.
 * Caller frees *ret_spec with image_spec_free. */
int lineage_recorded_spec(const struct manifest *m, struct image_spec **ret_spec, char **ret_error);

/* Applies child (which names a base) to base's recorded spec: the child's name, and its os,
 * description, boot_args, mpi and kernel package where given; its lists added (no duplicates),
 * its removals taken away. A removal of something the base does not have is an error naming
 * it (-EINVAL, *ret_error). Caller frees *ret_spec; it has no base and no removals. */
int lineage_merge(const struct image_spec *base, const struct image_spec *child,
		  struct image_spec **ret_spec, char **ret_error);

/* Loads child->base from s and merges (lineage_merge). *ret_base_ref is "NAME:VERSION" of the
 * base used (caller frees). Errors name the base and what to do. */
int lineage_resolve(struct store *s, const struct image_spec *child, struct image_spec **ret_spec,
		    char **ret_base_ref, char **ret_error);
