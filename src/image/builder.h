/* `vmhpc image build`: from a spec to a committed image version. Fetches the kernel and
 * the packages, builds the boot initramfs and the root file system in a private work
 * directory under the store (removed at the end, or by the next build if this one is
 * killed), stores every part as chunks and commits the manifest last: until then no
 * listing shows the version. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "store/chunker.h"
#include "store/manifest.h"
#include "store/store.h"
#include "util/fsutil.h"

struct builder_options {
	const char *spec_path;
	const char *cache_dir;	   /* Debian package cache */
	const char *init_path;	   /* the static vmhpc-init to put in the initramfs */
	const char *exec_path;	   /* the static vmhpc-exec to put in the root (/usr/bin) */
	const char *kernel_config; /* [kernel] source: the config fragment (kernel/vmhpc.config) */
	struct chunker_params chunking;
	int compression_level; /* zstd level for the chunks this build writes */
	bool progress;	       /* print a progress line on stderr */
	/* Whose rights read the spec's [root] files and tree (NULL: this process's own).
	 * Root building for a user through sudo passes that user's: a spec must not copy
	 * what its author could not read (docs/image-spec.md). */
	const struct fs_identity *source_identity;
	/* `vmhpc image update`: rebuild this version from the spec it recorded (spec_path is then
	 * unused), with what apt and the host offer now; when every part comes out the same,
	 * nothing is committed (builder_result.unchanged). */
	const struct manifest *update_of;
};

/* Images are built once and copied to many nodes: spend CPU here to send fewer bytes. */
#define BUILDER_COMPRESSION_LEVEL_DEFAULT 19

struct builder_result {
	char *name;
	uint32_t version;
	uint64_t plain_bytes[_MANIFEST_PART_KIND_MAX];
	uint64_t stored_new_bytes;   /* compressed bytes this build added to the store */
	uint64_t stored_total_bytes; /* compressed bytes of all its distinct chunks */
	uint64_t root_content_bytes;
	uint64_t n_files;
	bool unchanged; /* update_of: every part came out the same; version is update_of's */
	char *base_ref; /* a derived version's base, "NAME:VERSION", or NULL */
};

/* Builds and commits. On failure *ret_error (caller frees) says what went wrong and what
 * to do, and the store is as it was (no new version; chunks already written are left for
 * gc). Release ret with builder_result_done(). */
int builder_build(struct store *s, const struct builder_options *opts, struct builder_result *ret,
		  char **ret_error);

void builder_result_done(struct builder_result *r);

/* Removes work directories of builds that died: those whose lock nobody holds, and those
 * still without a lock file a minute after they were made. */
int builder_clean_stale(struct store *s);
