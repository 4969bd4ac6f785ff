/* A version's patch in the registry (docs/registry.md "Patches"): beside version V's OCI
 * manifest, a small one that gives V as a difference from an earlier version B of the same
 * image, for pullers that hold B. Its config is V's vmhpc manifest encoded against B's
 * (store/delta.h), its layers are only V's chunks that B lacks (blobs V's push uploaded),
 * its subject is V's manifest. A version's OCI manifest and config name every chunk (~230
 * bytes a chunk: ~230 KB for a 20 MB image), which for a small change is more than the
 * change; a patch is a few KB. It is tagged PATCH_TAG_PREFIX "<V's digest hex>.<16 hex of
 * B's config digest>.patch" (the form of OCI 1.1's referrers tags, as cosign tags
 * signatures), so a puller finds it with one GET. The puller trusts nothing in it: it
 * rebuilds V's OCI manifest from what the patch gives and what it holds, and uses it only
 * when that hashes to V's digest. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/artifact.h"
#include "registry/oci.h"
#include "store/manifest.h"
#include "store/store.h"

#define PATCH_ARTIFACT_TYPE	"application/vnd.vmhpc.image.patch.v1"
#define PATCH_CONFIG_MEDIA_TYPE "application/vnd.vmhpc.image.config-patch.v1"
#define PATCH_BASE_ANNOTATION	"org.vmhpc.patch.base"
/* "sha256-" + 64 hex + "." + 16 hex + ".patch" + NUL */
#define PATCH_TAG_MAX 95

/* The tag of the patch of the manifest digest ("sha256:<hex>") against the base whose config
 * has id base_id (SHA-256 of its text). */
void patch_tag(const char *digest, const uint8_t base_id[STORE_ID_BYTES], char out[PATCH_TAG_MAX]);

/* Whether tag has the form of a patch's tag (listings skip them: they are not versions). */
bool patch_tag_is(const char *tag);

/* Pushes the patch of version m against base (an earlier version) to repo, after m itself
 * was pushed as digest (oci_size bytes) with its chunks' blobs (ascending id, n of them).
 * *ret_bytes: what it uploaded (0 when the registry had it all). */
int patch_push(struct oci_client *c, const char *repo, const struct manifest *m,
	       const struct artifact_blob *blobs, size_t n, const char *digest, uint64_t oci_size,
	       const struct manifest *base, uint64_t *ret_bytes, char **ret_error);

/* Version digest of repo rebuilt through its patch against base_text (the text of a
 * version whose chunks s holds): 0 with the version's artifact (free with artifact_free)
 * and its config text (caller frees); -ENOENT when the registry has no such patch;
 * -EBADMSG with *ret_error when one is there and does not rebuild digest exactly. */
int patch_pull(struct store *s, struct oci_client *c, const char *repo, const char *digest,
	       const char *base_text, size_t base_len, struct artifact **ret_artifact,
	       char **ret_config, size_t *ret_config_len, char **ret_error);
