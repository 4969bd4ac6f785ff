/* The image's root file system: a staging tree assembled from the spec (the closure of
 * its binaries and plugin directories, its files, an imported tree, busybox's applet
 * links, a minimal /etc), turned into a read-only, DAX-capable ext4 image (4 KiB blocks,
 * no journal) with `mke2fs -d`, plus an index of every file and where it came from. */
#pragma once

#include <jansson.h>
#include <stdint.h>

#include "image/spec.h"
#include "util/fsutil.h"

struct rootfs_layer {
	const char *root;   /* directory standing for "/" */
	const char *source; /* label for the index: "libc6 2.36-9", "tree", "host" */
};

struct rootfs_result {
	char *image_path;	/* the ext4 image, inside work_dir */
	uint64_t image_bytes;	/* its size */
	uint64_t content_bytes; /* sum of regular files' sizes */
	size_t n_entries;	/* entries in the index */
	char *index_json;	/* [{"path","type","mode","size","target","source"}, ...] */
	json_t *libraries;	/* {"libmpich.so.12": {"file", "version", "source"}, ...} */
	json_t *host_sources;	/* host files used: {"/usr/lib/...": "package version"} */
};

/* Builds the root in work_dir (which the caller removes). layers: the spec's packages in
 * order, then the imported tree, then the host. own_files: what vmhpc itself puts into
 * every image (its exec client), copied last with source "vmhpc". source_identity (NULL:
 * our own rights) reads the spec's [root] files and tree; those must be regular files,
 * directories or links to them. On failure *ret_error (caller
 * frees) names what is wrong and what to do. Release ret with rootfs_result_done(). */
int rootfs_build(const struct image_spec *spec, const struct rootfs_layer *layers, size_t n_layers,
		 const struct spec_file *own_files, size_t n_own_files,
		 const struct fs_identity *source_identity, const char *work_dir,
		 struct rootfs_result *ret, char **ret_error);

void rootfs_result_done(struct rootfs_result *r);
