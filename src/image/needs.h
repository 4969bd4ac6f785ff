/* Whether a program from the job folder can be loaded inside an image, checked before any VM
 * boots: its program interpreter and DT_NEEDED libraries (or a script's #! interpreter),
 * resolved the way ld.so would inside the guest, against the image's file index and the
 * job folder (shared into the VMs at the same path). Reads files; runs nothing. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "image/index.h"
#include "store/manifest.h"
#include "store/store.h"

/* Most objects (the program and the libraries read from the job folder) one check follows. */
#define NEEDS_MAX_OBJECTS 4096

struct needs_options {
	const char *program;	  /* absolute path of the program, as on the host and in the VMs */
	const char *display_name; /* how the user named it ("./ep.x"); NULL: program */
	const char *job_dir;	  /* the job folder (absolute, symlinks resolved), or NULL */
	const struct image_index *index; /* the image's file index */
	const char *dpkg_info_dir; /* dpkg's file lists for the package hints; NULL: the host's */
};

struct needs_missing {
	char *name;	     /* what is missing: a DT_NEEDED name, or an interpreter's path */
	char *needed_by;     /* who needs it: "./ep.x", "./lib/libx.so (loaded for ./ep.x)" */
	char *package;	     /* the Debian package that ships it on this machine, or NULL */
	char *package_path;  /* the path that package has it at, or NULL */
	bool is_interpreter; /* a PT_INTERP or #! interpreter, not a library */
};

struct needs_result {
	size_t n_missing;
	struct needs_missing *missing; /* each missing name once, first needer, in load order */
};

/* Checks o->program. Returns 0 with *ret listing what is missing (n_missing == 0: nothing);
 * a static program, a non-ELF file or one for another machine passes. Errors: the program or
 * a library from the job folder unreadable or a damaged ELF file (-EBADMSG), more than
 * NEEDS_MAX_OBJECTS objects (-E2BIG); then *ret_error (caller frees) names the file and the
 * fix. The caller frees *ret with needs_result_done(). */
int needs_check(const struct needs_options *o, struct needs_result *ret, char **ret_error);

/* Releases what r holds; leaves it empty. */
void needs_result_done(struct needs_result *r);

/* The user-facing explanation of r for image name:version: one line per missing name with
 * its package, then what to do (caller frees); NULL on no memory. */
char *needs_format(const struct needs_result *r, const char *display_name, const char *image_name,
		   unsigned image_version);

/* vmhpc run's check: loads m's index from s, checks program (display_name as the user gave
 * it) with job_dir shared. 0 when it can load; -ENOENT when something is missing, or another
 * -errno; then *ret_error (caller frees) is the whole message. */
int needs_check_image(struct store *s, const struct manifest *m, const char *program,
		      const char *display_name, const char *job_dir, char **ret_error);
