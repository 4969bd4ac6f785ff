/* The image spec: an ini-style file that says what goes into an image version.
 * Format (docs/image-spec.md has the full reference):
 *
 *   # comment            ; comment
 *   [image]              name, os, description, boot_args, mpi, bypass
 *   [kernel]             package or source, modules
 *   [root]               packages, binaries, plugin_dirs, files, tree
 *
 * List values are separated by white space; a repeated list key appends; a line that
 * starts with white space continues the previous key's list (blank and comment lines in
 * between do not end it). Values are trimmed; quotes are not special and there are no
 * inline comments: a '#' inside a value is part of it. A files entry is SRC:DEST split at
 * the first ':' (so SRC holds no ':', DEST may). Scalar keys may be given once. */
#pragma once

#include <stddef.h>

/* Limits on what a spec may hold (every size a user controls has one). */
#define SPEC_MAX_BYTES	    (1024 * 1024)
#define SPEC_MAX_LIST_ITEMS 4096
#define SPEC_NAME_MAX	    64

struct spec_file {
	char *src;  /* absolute path on the host (relative ones are made absolute against the spec's
		       folder) */
	char *dest; /* absolute path in the image */
};

/* Where [root] binaries = ./PATH puts the user's own program: found by name by `vmhpc run`
 * (its PATH starts there) and apart from every file a Debian package ships. */
#define SPEC_PROGRAM_DIR "/usr/local/bin"

/* A program of the user's own: [root] binaries given as a path relative to the spec's
 * folder ("./ring", "../bin/ring"). It goes to SPEC_PROGRAM_DIR/NAME with its library
 * closure. */
struct spec_program {
	char *src;   /* absolute path on the host (anchored at the spec's folder) */
	char *dest;  /* SPEC_PROGRAM_DIR "/" its file name */
	char *given; /* as the spec wrote it, for messages */
	unsigned line;
};

struct image_spec {
	char *origin;	   /* the spec's path, for messages */
	char *name;	   /* [image] name: required */
	char *os;	   /* [image] os: metadata, default "tiny" */
	char *description; /* [image] description, or NULL */
	char *boot_args;   /* [image] boot_args: extra kernel command line, or NULL */
	char *mpi; /* [image] mpi: "mpich" or "openmpi" (the launcher vmhpc run uses), or NULL */
	/* [image] bypass: "ivshmem" when the image carries the shared-memory channel's UCX
	 * transport (docs/bypass.md): `vmhpc run` then gives its VMs the channel by default */
	char *bypass;

	char *kernel_package; /* [kernel] package: Debian package with /boot/vmlinuz-*, or NULL */
	char *kernel_source;  /* [kernel] source: Debian kernel source package to build our own
				 kernel from (image/kbuild.h), or NULL; exactly one of the two */
	char **modules; /* [kernel] modules: names as in modules.dep (dependencies are added) */
	size_t n_modules;

	char **packages; /* [root] packages: Debian packages to take files from */
	size_t n_packages;
	char **binaries; /* [root] binaries: absolute paths of programs/libraries; their closure
			    goes in */
	size_t n_binaries;
	struct spec_program *programs; /* [root] binaries given as ./PATH, in spec order */
	size_t n_programs;
	char **plugin_dirs; /* [root] plugin_dirs: directories copied whole, with their libraries'
			       closure */
	size_t n_plugin_dirs;
	struct spec_file *files; /* [root] files: SRC:DEST pairs copied as they are */
	size_t n_files;
	char *tree; /* [root] tree: a whole root directory to import (absolute), or NULL */

	/* A derived version (image/lineage.h): [image] base = NAME[:VERSION] starts from what
	 * that version was built from; the lists above add to it, these take away. */
	char *base;
	char **remove_modules; /* [kernel] remove_modules */
	size_t n_remove_modules;
	char **remove_packages; /* [root] remove_packages */
	size_t n_remove_packages;
	char **remove_binaries; /* [root] remove_binaries: image paths (own programs: their
				   /usr/local/bin path) */
	size_t n_remove_binaries;
	char **remove_plugin_dirs; /* [root] remove_plugin_dirs */
	size_t n_remove_plugin_dirs;
	char **remove_files; /* [root] remove_files: DEST paths */
	size_t n_remove_files;
};

/* Checks an image name: 1-64 chars of [A-Za-z0-9._-], starting with a letter or digit
 * (so never "/" nor ".."). On -EINVAL *ret_error (caller frees) says what is wrong. */
int spec_validate_name(const char *name, char **ret_error);

/* Parses text (origin names it in messages; base_dir, absolute, anchors relative file
 * sources; with NULL they are an error). text may hold any bytes; a NUL is an error.
 * On -EINVAL (-EFBIG beyond SPEC_MAX_BYTES) *ret_error (caller frees) is
 * "ORIGIN:LINE: what is wrong; what to do" ("ORIGIN: ..." when no line is to blame).
 * The caller frees *ret_spec with image_spec_free(). */
int spec_parse_string(const char *text, size_t len, const char *origin, const char *base_dir,
		      struct image_spec **ret_spec, char **ret_error);

/* Reads and parses the file at path, anchoring relative file sources at the realpath of
 * its folder (-ENOENT etc. with *ret_error "spec PATH: reason; what to do" set too). */
int spec_parse_file(const char *path, struct image_spec **ret_spec, char **ret_error);

/* Frees spec; NULL is a no-op. Returns NULL. */
struct image_spec *image_spec_free(struct image_spec *spec);
