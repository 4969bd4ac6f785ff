/* An image version's manifest: name, version, who and when, metadata, boot arguments and
 * its parts as chunk lists. Serialized as JSON (jansson); parsing treats the text as
 * untrusted (it may come from an import or a damaged disk). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

#define MANIFEST_FORMAT		     1
#define MANIFEST_NAME_MAX	     64
#define MANIFEST_MAX_BYTES	     (64u * 1024 * 1024)
#define MANIFEST_MAX_CHUNKS_PER_PART (4u * 1024 * 1024)
/* Largest file index a reader loads (a whole OS tree's index is a few MB). */
#define MANIFEST_INDEX_MAX_BYTES (512u * 1024 * 1024)

enum manifest_part_kind {
	MANIFEST_PART_KERNEL,	 /* the kernel image (bzImage) */
	MANIFEST_PART_INITRAMFS, /* the boot initramfs: vmhpc-init and modules, zstd cpio */
	MANIFEST_PART_ROOT,	 /* the read-only root file system image (ext4) */
	MANIFEST_PART_INDEX,	 /* the root's file index (JSON), for `image ls` without a mount */
	_MANIFEST_PART_KIND_MAX,
};

/* "kernel", "initramfs", "root", "index"; NULL for an out-of-range kind. */
const char *manifest_part_kind_to_string(enum manifest_part_kind kind);

struct manifest {
	char *name;
	uint32_t version;  /* 1, 2, ... per name; 0 until committed */
	int64_t created_s; /* Unix time */
	char *owner;	   /* user name of the builder */
	char *boot_args;   /* kernel command line the image asks for (may be "") */
	json_t *metadata;  /* object: os, kernel_release, arch, packages{}, libraries{}, ... (owned
			      ref) */
	struct store_part parts[_MANIFEST_PART_KIND_MAX];
};

/* Allocates an empty manifest (metadata = {}); the caller frees with manifest_free(). */
struct manifest *manifest_new(void);
/* Frees m and everything it owns; NULL is a no-op. Returns NULL. */
struct manifest *manifest_free(struct manifest *m);

/* Serializes m as JSON text (caller frees). */
int manifest_to_json(const struct manifest *m, char **ret_text);
/* Parses and validates JSON text; on -EINVAL/-EBADMSG *ret_error (caller frees) says what
 * is wrong. The caller frees *ret_manifest. */
int manifest_from_json(const char *text, size_t len, struct manifest **ret_manifest,
		       char **ret_error);

/* True when a and b name the same chunks, in the same order, in every part. */
bool manifest_same_parts(const struct manifest *a, const struct manifest *b);

/* Every distinct chunk of m (all parts), sorted by id; caller frees *ret_ids. */
int manifest_distinct_chunks(const struct manifest *m, struct store_chunk_ref **ret_refs,
			     size_t *ret_n);

/* Parses "NAME" or "NAME:VERSION" (VERSION a positive integer; *ret_version 0 when absent).
 * *ret_name is caller-freed; on -EINVAL *ret_error says what is wrong. */
int manifest_parse_ref(const char *ref, char **ret_name, uint32_t *ret_version, char **ret_error);
