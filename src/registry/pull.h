/* `vmhpc image pull`: an image version from an OCI registry into the store. Only chunks
 * the store lacks are fetched; every fetched chunk is checked (its blob's digest, then the
 * SHA-256 of its plain bytes against its chunk id) before it is stored, and a chunk
 * already here is re-hashed before it counts. The version is committed only when every
 * chunk is present and verified: an interrupted pull leaves whole, verified chunks and
 * no version, and the next pull fetches only the rest. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/oci.h"
#include "store/store.h"

struct pull_result {
	char *name;	  /* the image's name (from its manifest) */
	uint32_t version; /* the version the store now has */
	bool added;	  /* false: an identical version was already there */
	size_t chunks;	  /* distinct chunks of the version */
	size_t chunks_fetched;
	size_t chunks_present;	/* already here and intact */
	size_t chunks_repaired; /* here but damaged, so fetched again (in chunks_fetched) */
	uint64_t chunk_bytes;	/* compressed bytes of all its chunks */
	uint64_t chunk_bytes_fetched;
	uint64_t metadata_bytes;	 /* OCI manifest and config fetched */
	bool patched;			 /* through a patch (registry/patch.h): metadata_bytes
					    are the patch's and the HEAD's */
	char digest[OCI_DIGEST_LEN + 1]; /* the OCI manifest's digest */
};

/* Pulls repo:reference (a tag or a digest) through c into s. On failure *ret_error
 * (caller frees) names what failed, and no version was added. Release ret with
 * pull_result_done(). */
int pull_image(struct store *s, struct oci_client *c, const char *repo, const char *reference,
	       struct pull_result *ret, char **ret_error);
void pull_result_done(struct pull_result *r);
