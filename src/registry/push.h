/* `vmhpc image push`: one image version from the store to an OCI registry as an artifact
 * (artifact.h). Only what the registry lacks moves: every blob is HEADed first. Blobs are
 * uploaded before the manifest that names them, so an interrupted push leaves no tag, and
 * the next push finds what was uploaded and sends the rest. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "registry/oci.h"
#include "registry/patch.h"
#include "store/manifest.h"
#include "store/store.h"

struct push_stats {
	size_t chunks;			 /* distinct chunks of the version */
	size_t chunks_uploaded;		 /* of those, the ones the registry lacked */
	uint64_t chunk_bytes;		 /* compressed bytes of all its chunks */
	uint64_t chunk_bytes_uploaded;	 /* compressed bytes of the uploaded ones */
	uint64_t metadata_bytes;	 /* config (vmhpc manifest) and OCI manifest sent */
	char digest[OCI_DIGEST_LEN + 1]; /* the OCI manifest's digest */
	uint32_t patch_base;		 /* the version its patch is against; 0: none */
	uint64_t patch_bytes;		 /* the patch's bytes uploaded */
	char *patch_error;		 /* why the patch was not pushed (caller frees) */
};

/* Pushes m (a version of s) to repo:tag through c; every chunk it uploads is verified
 * against its id first. Then its patch against the newest earlier version of its name in s
 * (registry/patch.h), if there is one; a patch that fails to go is reported in
 * ret_stats->patch_error and does not fail the push (pullers fetch the whole version). On
 * failure *ret_error (caller frees) says why and what was left. */
int push_image(struct store *s, const struct manifest *m, struct oci_client *c, const char *repo,
	       const char *tag, struct push_stats *ret_stats, char **ret_error);
