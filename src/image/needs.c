/* What a program from the job folder needs, checked against an image before booting.
 *
 * Inside a VM the program sees two file systems: the image's root and, at the same path as
 * on the host, the job folder. So every path is resolved component by component against a
 * "view": a path under the job folder is looked up on the host (lstat, readlink), any other
 * path in the image's file index, with symlinks followed across the two as the guest's
 * kernel would. The search for each DT_NEEDED name is the one closure.c makes for the
 * builder (glibc's order: DT_RPATH up the loader chain unless DT_RUNPATH, DT_RUNPATH, the
 * system directories; $ORIGIN expanded), with two differences:
 *  - libraries found in the image are not read: the builder resolved their closure, so
 *    they are taken as self-consistent. Only files in the job folder are read (ELF
 *    headers) and their own needs followed;
 *  - the system directories are those of the guest's ld.so. An image has no
 *    /etc/ld.so.cache unless its spec put one there, and without it glibc searches only
 *    its built-in directories (`ld.so --help`); with one, the directories Debian's
 *    ld.so.conf adds are searched too, as the libraries the cache lists live there.
 * vmhpc sets no LD_LIBRARY_PATH, so none is modelled. */
#include "image/needs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/closure.h"
#include "image/elf.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/pathwalk.h"

#define NO_OBJECT SIZE_MAX
/* What the kernel reads of a file to find its #! line (BINPRM_BUF_SIZE). */
#define SHEBANG_MAX_BYTES 256
/* Largest dpkg file list read for a package hint. */
#define DPKG_LIST_MAX_BYTES (64u << 20)

/* glibc's built-in search path on Debian x86-64 (`ld.so --help`), used without a cache. */
static const char *const builtin_lib_dirs[] = {
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
};
/* Searched first when the image has /etc/ld.so.cache (Debian's /etc/ld.so.conf.d). */
static const char *const cache_lib_dirs[] = {
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib",
};
/* The PATH vmhpc gives the program (src/cli/run.c), for `#!/usr/bin/env NAME`. */
static const char *const program_dirs[] = {"/usr/local/bin", "/usr/bin", "/usr/sbin"};

enum where {
	WHERE_IMAGE, /* a file in the image: taken as it is */
	WHERE_HOST,  /* a file in the job folder: read and followed */
};

/* One object "loaded" for the program, as ld.so's link map would hold it. Only the program
 * and libraries from the job folder become objects: image libraries are leaves. */
struct object {
	char *path;    /* as loaded (candidate path, symlinks not resolved) */
	char *origin;  /* $ORIGIN */
	char *display; /* for messages */
	struct elf_info *info;
	size_t loader; /* the object whose DT_NEEDED brought it in, or NO_OBJECT */
};

struct checker {
	const struct image_index *index;
	const char *job_dir; /* NULL: no job folder */
	size_t job_len;
	bool has_ld_cache;
	const char *display_name;
	struct object *objs;
	size_t n_objs;
	char **names; /* names and real paths of everything loaded or found missing */
	size_t n_names;
	struct needs_result result;
	char **ret_error;
};

/* ---- the view: job folder on the host, everything else in the index ---- */

/* True when path is the job folder or inside it. */
static bool in_job(const struct checker *c, const char *path)
{
	return c->job_dir && strncmp(path, c->job_dir, c->job_len) == 0 &&
	       (path[c->job_len] == '\0' || path[c->job_len] == '/');
}

/* True when path is a directory above the job folder (the guest makes it as the mount
 * point's parent, whatever the image has there). */
static bool above_job(const struct checker *c, const char *path)
{
	size_t n = strlen(path);

	return c->job_dir && n < c->job_len && strncmp(c->job_dir, path, n) == 0 &&
	       c->job_dir[n] == '/';
}

static enum pathwalk_kind entry_kind(const struct image_index_entry *e)
{
	/* rootfs.c writes one letter; the long forms are accepted as well. */
	if (strcmp(e->type, "f") == 0 || strcmp(e->type, "file") == 0)
		return PATHWALK_FILE;
	if (strcmp(e->type, "d") == 0 || strcmp(e->type, "dir") == 0)
		return PATHWALK_DIR;
	if (strcmp(e->type, "l") == 0 || strcmp(e->type, "symlink") == 0)
		return PATHWALK_LINK;
	return PATHWALK_OTHER;
}

/* Looks at one absolute, clean path (no symlink in its parents) in the view: its kind and,
 * for a link, its target (into target, PATH_MAX bytes). */
static int view_lookup(const char *path, enum pathwalk_kind *ret_kind, char target[static PATH_MAX],
		       void *userdata)
{
	const struct checker *c = userdata;
	const struct image_index_entry *e;

	if (above_job(c, path)) {
		*ret_kind = PATHWALK_DIR;
		return 0;
	}
	if (in_job(c, path)) {
		struct stat st;

		if (lstat(path, &st) < 0)
			return -errno;
		if (S_ISLNK(st.st_mode)) {
			ssize_t n = readlink(path, target, PATH_MAX);

			if (n < 0)
				return -errno;
			if (n >= PATH_MAX)
				return -ENAMETOOLONG;
			target[n] = '\0';
			*ret_kind = PATHWALK_LINK;
		} else {
			*ret_kind = S_ISREG(st.st_mode)	  ? PATHWALK_FILE
				    : S_ISDIR(st.st_mode) ? PATHWALK_DIR
							  : PATHWALK_OTHER;
		}
		return 0;
	}
	e = image_index_find(c->index, path);
	if (!e)
		return -ENOENT;
	*ret_kind = entry_kind(e);
	if (*ret_kind == PATHWALK_LINK) {
		if (!e->target || strlen(e->target) >= PATH_MAX)
			return -ENOENT;
		strcpy(target, e->target);
	}
	return 0;
}

/* Resolves path in the view as the guest's kernel would (util/pathwalk.h). 0 with *ret_real
 * (caller frees) and *ret_where for a regular file; -ENOENT, -ENOTDIR, -EISDIR, -ELOOP,
 * -ENAMETOOLONG otherwise. */
static int view_resolve(const struct checker *c, const char *path, char **ret_real,
			enum where *ret_where)
{
	char real[PATH_MAX];
	enum pathwalk_kind kind;
	int r;

	r = pathwalk_resolve(path, view_lookup, (void *)c, real, &kind);
	if (r < 0)
		return r;
	if (kind == PATHWALK_DIR)
		return -EISDIR;
	if (kind != PATHWALK_FILE)
		return -ENOENT;
	*ret_real = strdup(real);
	if (!*ret_real)
		return -ENOMEM;
	*ret_where = in_job(c, real) ? WHERE_HOST : WHERE_IMAGE;
	return 0;
}

/* ---- bookkeeping ---- */

static bool has_name(const struct checker *c, const char *name)
{
	for (size_t i = 0; i < c->n_names; i++)
		if (strcmp(c->names[i], name) == 0)
			return true;
	return false;
}

static int add_name(struct checker *c, const char *name)
{
	char **names, *copy;

	if (has_name(c, name))
		return 0;
	names = reallocarray(c->names, c->n_names + 1, sizeof(*names));
	if (!names)
		return -ENOMEM;
	c->names = names;
	copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	c->names[c->n_names++] = copy;
	return 0;
}

static int add_missing(struct checker *c, const char *name, const char *needed_by,
		       bool is_interpreter)
{
	struct needs_missing *m;

	for (size_t i = 0; i < c->result.n_missing; i++)
		if (strcmp(c->result.missing[i].name, name) == 0)
			return 0;
	m = reallocarray(c->result.missing, c->result.n_missing + 1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	c->result.missing = m;
	m = &m[c->result.n_missing];
	*m = (struct needs_missing){.is_interpreter = is_interpreter};
	m->name = strdup(name);
	m->needed_by = strdup(needed_by);
	if (!m->name || !m->needed_by) {
		free(m->name);
		free(m->needed_by);
		return -ENOMEM;
	}
	c->result.n_missing++;
	log_debug("%s needs %s: not in the image", needed_by, name);
	return 0;
}

static char *dirname_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash || slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

/* How a file in the job folder is shown: relative to it ("./lib/libx.so"). */
static char *display_of(const struct checker *c, const char *path)
{
	char *out = NULL;

	if (in_job(c, path) && path[c->job_len] == '/') {
		if (asprintf(&out, ".%s", path + c->job_len) < 0)
			return NULL;
		return out;
	}
	return strdup(path);
}

/* Adds an object, taking path, origin and info. */
static int add_object(struct checker *c, char **path, struct elf_info **info, size_t loader,
		      const char *origin_of)
{
	struct object *objs, *o;

	if (c->n_objs >= NEEDS_MAX_OBJECTS)
		return error_set(c->ret_error, -E2BIG,
				 "%s loads more than %d libraries from the job folder; is a "
				 "library search path looping?",
				 c->display_name, NEEDS_MAX_OBJECTS);
	objs = reallocarray(c->objs, c->n_objs + 1, sizeof(*objs));
	if (!objs)
		return -ENOMEM;
	c->objs = objs;
	o = &objs[c->n_objs];
	*o = (struct object){.loader = loader};
	o->origin = dirname_of(origin_of);
	if (loader == NO_OBJECT)
		o->display = strdup(c->display_name);
	else {
		_cleanup_free_ char *d = display_of(c, *path);

		if (d && asprintf(&o->display, "%s (loaded for %s)", d, c->display_name) < 0)
			o->display = NULL;
	}
	if (!o->origin || !o->display) {
		free(o->origin);
		free(o->display);
		return -ENOMEM;
	}
	o->path = TAKE_PTR(*path);
	o->info = TAKE_PTR(*info);
	c->n_objs++;
	return 0;
}

static void object_done(struct object *o)
{
	free(o->path);
	free(o->origin);
	free(o->display);
	elf_info_free(o->info);
}

/* ---- the search ---- */

/* Tries one candidate path for a library: 0 with *ret_real, *ret_where and, for a file in
 * the job folder, *ret_info; -ENOENT to go on searching (absent, not ELF, another class or
 * machine, as ld.so skips those); another -errno with the message set. */
static int try_candidate(struct checker *c, const char *candidate, const char *name,
			 const char *needed_by, char **ret_real, enum where *ret_where,
			 struct elf_info **ret_info)
{
	_cleanup_free_ char *real = NULL;
	struct elf_info *info = NULL;
	enum where where;
	int r;

	r = view_resolve(c, candidate, &real, &where);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return -ENOENT;
	if (where == WHERE_HOST) {
		r = elf_read_file(real, &info);
		if (r == -ENOEXEC || r == -ENOTSUP || r == -EISDIR) {
			log_debug("skipping %s for %s: %s", real, name, strerror(-r));
			return -ENOENT;
		}
		if (r == -EBADMSG)
			return error_set(c->ret_error, r,
					 "library %s needed by %s is a damaged ELF file at %s "
					 "(truncated or inconsistent headers); rebuild it",
					 name, needed_by, real);
		if (r < 0)
			return error_set(c->ret_error, r,
					 "reading library %s needed by %s at %s: %s", name,
					 needed_by, real, strerror(-r));
	}
	*ret_real = TAKE_PTR(real);
	*ret_where = where;
	*ret_info = info;
	return 0;
}

/* Tries every directory of a ':'-separated search list with $ORIGIN = origin. */
static int search_list(struct checker *c, const char *list, const char *origin, const char *name,
		       const char *needed_by, char **ret_real, char **ret_candidate,
		       enum where *ret_where, struct elf_info **ret_info)
{
	for (const char *p = list; *p;) {
		const char *end = strchrnul(p, ':');
		char dir[PATH_MAX], candidate[PATH_MAX];
		int r;

		r = closure_expand_tokens(p, (size_t)(end - p), origin, dir);
		p = *end ? end + 1 : end;
		if (r == -ENOMEM)
			return r;
		if (r < 0 || dir[0] != '/')
			continue; /* relative or empty entries name the working directory */
		if ((size_t)snprintf(candidate, sizeof(candidate), "%s/%s", dir, name) >=
		    sizeof(candidate))
			continue;
		r = try_candidate(c, candidate, name, needed_by, ret_real, ret_where, ret_info);
		if (r != -ENOENT) {
			if (r == 0 && !(*ret_candidate = strdup(candidate)))
				return -ENOMEM;
			return r;
		}
	}
	return -ENOENT;
}

static int search_dirs(struct checker *c, const char *const *dirs, size_t n, const char *name,
		       const char *needed_by, char **ret_real, char **ret_candidate,
		       enum where *ret_where, struct elf_info **ret_info)
{
	for (size_t i = 0; i < n; i++) {
		char candidate[PATH_MAX];
		int r;

		if ((size_t)snprintf(candidate, sizeof(candidate), "%s/%s", dirs[i], name) >=
		    sizeof(candidate))
			return -ENOENT;
		r = try_candidate(c, candidate, name, needed_by, ret_real, ret_where, ret_info);
		if (r != -ENOENT) {
			if (r == 0 && !(*ret_candidate = strdup(candidate)))
				return -ENOMEM;
			return r;
		}
	}
	return -ENOENT;
}

/* Finds DT_NEEDED name of object o as ld.so's _dl_map_object would. */
static int search_library(struct checker *c, size_t o, const char *name, char **ret_real,
			  char **ret_candidate, enum where *ret_where, struct elf_info **ret_info)
{
	const struct elf_info *info = c->objs[o].info;
	const char *needed_by = c->objs[o].display;
	int r;

	if (!info->runpath)
		for (size_t l = o; l != NO_OBJECT; l = c->objs[l].loader) {
			const struct elf_info *li = c->objs[l].info;

			/* An object with DT_RUNPATH has its DT_RPATH ignored. */
			if (!li->rpath || li->runpath)
				continue;
			r = search_list(c, li->rpath, c->objs[l].origin, name, needed_by, ret_real,
					ret_candidate, ret_where, ret_info);
			if (r != -ENOENT)
				return r;
		}
	if (info->runpath) {
		r = search_list(c, info->runpath, c->objs[o].origin, name, needed_by, ret_real,
				ret_candidate, ret_where, ret_info);
		if (r != -ENOENT)
			return r;
	}
	if (c->has_ld_cache) {
		r = search_dirs(c, cache_lib_dirs, ARRAY_SIZE(cache_lib_dirs), name, needed_by,
				ret_real, ret_candidate, ret_where, ret_info);
		if (r != -ENOENT)
			return r;
	}
	return search_dirs(c, builtin_lib_dirs, ARRAY_SIZE(builtin_lib_dirs), name, needed_by,
			   ret_real, ret_candidate, ret_where, ret_info);
}

/* Resolves one DT_NEEDED entry of object o: adds a job-folder library as a new object, an
 * image library as a known name, a missing one to the result. */
static int resolve_needed(struct checker *c, size_t o, const char *needed)
{
	_cleanup_free_ char *real = NULL, *candidate = NULL;
	struct elf_info *info = NULL;
	char expanded[PATH_MAX];
	enum where where;
	int r;

	if (has_name(c, needed))
		return 0; /* loaded under this name or soname already, or already missing */
	r = closure_expand_tokens(needed, strlen(needed), c->objs[o].origin, expanded);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return error_set(c->ret_error, r, "library name %.64s... needed by %s is too long",
				 needed, c->objs[o].display);
	if (strchr(expanded, '/')) {
		char path[PATH_MAX];

		/* A path: ld.so opens it as it is, a relative one from the working directory,
		 * which vmhpc run makes the job folder. */
		if (expanded[0] == '/')
			strcpy(path, expanded);
		else if (!c->job_dir || (size_t)snprintf(path, sizeof(path), "%s/%s", c->job_dir,
							 expanded) >= sizeof(path))
			path[0] = '\0';
		r = path[0]
			? try_candidate(c, path, needed, c->objs[o].display, &real, &where, &info)
			: -ENOENT;
		if (r == 0 && !(candidate = strdup(path)))
			r = -ENOMEM;
	} else {
		r = search_library(c, o, expanded, &real, &candidate, &where, &info);
	}
	if (r == -ENOENT) {
		r = add_missing(c, needed, c->objs[o].display, false);
		return r < 0 ? r : add_name(c, needed);
	}
	if (r < 0)
		return r;

	r = add_name(c, needed);
	if (r < 0 || has_name(c, real)) {
		elf_info_free(info);
		return r; /* one file found under two names is loaded once */
	}
	if ((r = add_name(c, real)) < 0 || (r = add_name(c, candidate)) < 0 ||
	    (info && info->soname && (r = add_name(c, info->soname)) < 0)) {
		elf_info_free(info);
		return r;
	}
	if (where == WHERE_IMAGE)
		return 0; /* the builder resolved what an image library needs */
	/* $ORIGIN of a library is the directory of the path it was opened as. */
	return add_object(c, &candidate, &info, o, candidate);
}

/* Checks a script's "#!" line: its interpreter must be in the view; `#!/usr/bin/env NAME`
 * also needs NAME in the program's PATH. buf holds the file's first len bytes. */
static int check_script(struct checker *c, const char *buf, size_t len)
{
	char line[SHEBANG_MAX_BYTES + 1], interp[PATH_MAX];
	_cleanup_free_ char *real = NULL;
	char *p, *word, *arg;
	enum where where;
	int r;

	memcpy(line, buf + 2, len - 2);
	line[len - 2] = '\0';
	line[strcspn(line, "\n")] = '\0';
	p = line + strspn(line, " \t");
	word = p;
	p += strcspn(p, " \t");
	if (*p)
		*p++ = '\0';
	arg = p + strspn(p, " \t");
	arg[strcspn(arg, " \t")] = '\0';
	if (!word[0])
		return error_set(c->ret_error, -ENOEXEC,
				 "%s starts with \"#!\" but names no interpreter; write its path "
				 "after #! (e.g. #!/bin/sh)",
				 c->display_name);
	/* The kernel opens a relative interpreter from the working directory. */
	if (word[0] == '/')
		snprintf(interp, sizeof(interp), "%s", word);
	else if (!c->job_dir || (size_t)snprintf(interp, sizeof(interp), "%s/%s", c->job_dir,
						 word) >= sizeof(interp))
		return add_missing(c, word, c->display_name, true);
	r = view_resolve(c, interp, &real, &where);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return add_missing(c, word, c->display_name, true);

	/* By the name written (busybox's env is a link to busybox, which goes by argv[0]). */
	if (strcmp(strrchr(interp, '/'), "/env") == 0 && arg[0] && arg[0] != '-' &&
	    !strchr(arg, '/')) {
		for (size_t i = 0; i < ARRAY_SIZE(program_dirs); i++) {
			_cleanup_free_ char *found = NULL;
			char path[PATH_MAX];

			snprintf(path, sizeof(path), "%s/%s", program_dirs[i], arg);
			r = view_resolve(c, path, &found, &where);
			if (r == 0)
				return 0;
			if (r == -ENOMEM)
				return r;
		}
		return add_missing(c, arg, c->display_name, true);
	}
	return 0;
}

/* ---- package hints from dpkg's file lists ---- */

static bool in_dirs(const char *dir, size_t dir_len, const char *const *dirs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *merged = closure_usrmerge_path(dirs[i]);

		if (merged && strlen(merged) == dir_len && strncmp(merged, dir, dir_len) == 0)
			return true;
	}
	return false;
}

/* Whether the file list line names what m misses: an interpreter's exact path, a program
 * name in the PATH directories, a library name in the library directories. */
static bool line_matches(const char *line, const struct needs_missing *m, const char *merged_name)
{
	const char *slash = strrchr(line, '/');
	_cleanup_free_ char *merged = NULL;
	const char *base, *mslash;

	if (!slash)
		return false;
	base = strrchr(m->name, '/');
	base = base ? base + 1 : m->name;
	if (strcmp(slash + 1, base) != 0)
		return false; /* cheap test first: most lines end in another name */
	merged = closure_usrmerge_path(line);
	if (!merged)
		return false;
	if (m->is_interpreter && m->name[0] == '/')
		return merged_name && strcmp(merged, merged_name) == 0;
	mslash = strrchr(merged, '/');
	if (m->is_interpreter)
		return in_dirs(merged, (size_t)(mslash - merged), program_dirs,
			       ARRAY_SIZE(program_dirs));
	return in_dirs(merged, (size_t)(mslash - merged), builtin_lib_dirs,
		       ARRAY_SIZE(builtin_lib_dirs)) ||
	       in_dirs(merged, (size_t)(mslash - merged), cache_lib_dirs,
		       ARRAY_SIZE(cache_lib_dirs));
}

/* Fills the package of each missing name from dir's *.list files (which packages installed
 * on this machine ship it); leaves it NULL when none does or dir cannot be read. */
static int find_packages(const char *dir, struct needs_result *res)
{
	_cleanup_free_ char **merged = calloc(res->n_missing, sizeof(char *));
	size_t left = res->n_missing;
	struct dirent **names = NULL;
	int n, r = 0;

	if (!merged)
		return -ENOMEM;
	for (size_t i = 0; i < res->n_missing; i++)
		if (res->missing[i].name[0] == '/' &&
		    !(merged[i] = closure_usrmerge_path(res->missing[i].name)))
			r = -ENOMEM;
	/* Sorted, so that a name two packages ship always gets the same hint. */
	n = r < 0 ? 0 : scandir(dir, &names, NULL, alphasort);
	for (int k = 0; k < n; k++) {
		const char *file = names[k]->d_name;
		size_t len = strlen(file);
		_cleanup_free_ char *path = NULL, *text = NULL;
		char *save = NULL;

		if (r < 0 || left == 0 || len < 6 || strcmp(file + len - 5, ".list") != 0)
			goto next;
		path = fs_path_join(dir, file);
		if (!path || fs_read_file(path, DPKG_LIST_MAX_BYTES, &text, NULL) < 0)
			goto next;
		for (char *line = strtok_r(text, "\n", &save); line && left > 0;
		     line = strtok_r(NULL, "\n", &save)) {
			for (size_t i = 0; i < res->n_missing; i++) {
				struct needs_missing *m = &res->missing[i];

				if (m->package || !line_matches(line, m, merged[i]))
					continue;
				/* "name:arch.list": the package name is before the colon. */
				m->package =
				    strndup(file, strcspn(file, ":") < len - 5 ? strcspn(file, ":")
									       : len - 5);
				m->package_path = strdup(line);
				if (!m->package || !m->package_path)
					r = -ENOMEM;
				left--;
			}
		}
	next:
		free(names[k]);
	}
	free(names);
	for (size_t i = 0; i < res->n_missing; i++)
		free(merged[i]);
	return r;
}

/* ---- the check ---- */

void needs_result_done(struct needs_result *r)
{
	for (size_t i = 0; i < r->n_missing; i++) {
		free(r->missing[i].name);
		free(r->missing[i].needed_by);
		free(r->missing[i].package);
		free(r->missing[i].package_path);
	}
	free(r->missing);
	*r = (struct needs_result){0};
}

static void checker_done(struct checker *c)
{
	for (size_t i = 0; i < c->n_objs; i++)
		object_done(&c->objs[i]);
	free(c->objs);
	for (size_t i = 0; i < c->n_names; i++)
		free(c->names[i]);
	free(c->names);
	needs_result_done(&c->result);
}

/* Reads the program: an ELF file becomes object 0; a script has its #! line checked. */
static int load_program(struct checker *c, const char *program, bool *ret_elf)
{
	_cleanup_free_ char *real = NULL;
	_cleanup_close_ int fd = -1;
	struct elf_info *info = NULL;
	char buf[SHEBANG_MAX_BYTES];
	enum where where;
	ssize_t len;
	int r;

	*ret_elf = false;
	/* In the guest the kernel follows the program's symlinks the same way. */
	r = view_resolve(c, program, &real, &where);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return error_set(c->ret_error, r,
				 "%s: %s as the VMs see it (the job folder, and the image for a "
				 "link that leads out of it); give a program in the job folder",
				 c->display_name, strerror(-r));
	if (where == WHERE_IMAGE)
		return 0; /* a link into the image: the builder checked that program */

	/* O_NONBLOCK: a fifo swapped in must not hang the check. */
	fd = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return error_set(c->ret_error, -errno, "%s: %s", c->display_name, strerror(errno));
	len = fs_read_full(fd, buf, sizeof(buf));
	if (len < 0)
		return error_set(c->ret_error, (int)len, "reading %s: %s", c->display_name,
				 strerror((int)-len));
	if (len >= 2 && buf[0] == '#' && buf[1] == '!')
		return check_script(c, buf, (size_t)len);

	r = elf_read_file(real, &info);
	if (r == -ENOEXEC || r == -ENOTSUP || r == -EISDIR) {
		/* Not ours to judge: the kernel says what it makes of it. */
		log_debug("%s: not an x86-64 ELF program (%s); not checked", real, strerror(-r));
		return 0;
	}
	if (r == -EBADMSG)
		return error_set(c->ret_error, r,
				 "%s is a damaged ELF file (truncated or inconsistent headers); "
				 "build it again",
				 c->display_name);
	if (r < 0)
		return error_set(c->ret_error, r, "reading %s: %s", c->display_name, strerror(-r));
	if (!info->interp && !info->is_dynamic) {
		elf_info_free(info);
		return 0; /* static */
	}
	if (info->soname && (r = add_name(c, info->soname)) < 0) {
		elf_info_free(info);
		return r;
	}
	r = add_name(c, real);
	if (r == 0) {
		_cleanup_free_ char *path = strdup(program);

		/* $ORIGIN of the program is where /proc/self/exe points: links resolved. */
		r = path ? add_object(c, &path, &info, NO_OBJECT, real) : -ENOMEM;
	}
	elf_info_free(info);
	*ret_elf = r == 0;
	return r;
}

int needs_check(const struct needs_options *o, struct needs_result *ret, char **ret_error)
{
	_cleanup_(checker_done) struct checker c = {
	    .index = o->index,
	    .job_dir = o->job_dir,
	    .job_len = o->job_dir ? strlen(o->job_dir) : 0,
	    .display_name = o->display_name ? o->display_name : o->program,
	    .ret_error = ret_error,
	};
	bool is_elf;
	int r;

	/* A job folder "/" would make everything host; the trailing slash of "/x/" would
	 * break the prefix test. */
	while (c.job_len > 1 && c.job_dir[c.job_len - 1] == '/')
		c.job_len--;
	if (c.job_dir && c.job_len <= 1)
		c.job_dir = NULL;
	{
		_cleanup_free_ char *cache = NULL;
		enum where where;

		r = view_resolve(&c, "/etc/ld.so.cache", &cache, &where);
		if (r == -ENOMEM)
			return r;
		c.has_ld_cache = r == 0;
	}

	r = load_program(&c, o->program, &is_elf);
	if (r < 0)
		return r;
	if (is_elf && c.objs[0].info->interp) {
		const char *interp = c.objs[0].info->interp;
		_cleanup_free_ char *real = NULL;
		enum where where;

		r = view_resolve(&c, interp, &real, &where);
		if (r == -ENOMEM)
			return r;
		if (r < 0)
			r = add_missing(&c, interp, c.display_name, true);
		else if ((r = add_name(&c, real)) == 0)
			/* ld.so answers to its file name, its soname (ld-linux-x86-64.so.2). */
			r = add_name(&c, strrchr(interp, '/') ? strrchr(interp, '/') + 1 : interp);
		if (r < 0)
			return r;
	}
	/* Breadth first, in DT_NEEDED order, as ld.so loads at startup. */
	for (size_t i = 0; is_elf && i < c.n_objs; i++)
		for (size_t k = 0; k < c.objs[i].info->n_needed; k++) {
			/* Copied: resolve_needed may move c.objs. */
			_cleanup_free_ char *needed = strdup(c.objs[i].info->needed[k]);

			if (!needed)
				return -ENOMEM;
			r = resolve_needed(&c, i, needed);
			if (r < 0)
				return r;
		}

	if (c.result.n_missing > 0) {
		r = find_packages(o->dpkg_info_dir ? o->dpkg_info_dir : "/var/lib/dpkg/info",
				  &c.result);
		if (r < 0)
			return r;
	}
	*ret = c.result;
	c.result = (struct needs_result){0};
	return 0;
}

char *needs_format(const struct needs_result *r, const char *display_name, const char *image_name,
		   unsigned image_version)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	bool interp = false, packages = false;

	if (!f)
		return NULL;
	for (size_t i = 0; i < r->n_missing; i++) {
		const struct needs_missing *m = &r->missing[i];

		fprintf(f, "%s needs %s%s, which image %s:%u lacks; ", m->needed_by,
			m->is_interpreter ? "interpreter " : "", m->name, image_name,
			image_version);
		if (m->package)
			fprintf(f, "add package %s to the image's packages (it has %s)\n",
				m->package, m->package_path);
		else
			fprintf(f, "it is not from a Debian package here: put it in the job "
				   "folder beside the program or in the image with [root] files\n");
		interp = interp || m->is_interpreter;
		packages = packages || m->package;
	}
	fprintf(f, "to fix: in the image's spec, add %s%s",
		packages ? "these packages to [root] packages and " : "",
		interp ? "the interpreter's path to [root] binaries"
		       : "the program to [root] binaries");
	if (!interp)
		fprintf(f, " (binaries = %s copies it with every library it needs)", display_name);
	fputs(", build the image (`vmhpc image build SPEC`) and run with --image NAME; see "
	      "docs/image-spec.md \"My program needs library X\"",
	      f);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

int needs_check_image(struct store *s, const struct manifest *m, const char *program,
		      const char *display_name, const char *job_dir, char **ret_error)
{
	struct image_index *index = NULL;
	struct needs_result res = {0};
	struct needs_options o = {
	    .program = program,
	    .display_name = display_name,
	    .job_dir = job_dir,
	};
	int r;

	r = image_index_load(s, m, &index, ret_error);
	if (r < 0)
		return r;
	o.index = index;
	r = needs_check(&o, &res, ret_error);
	image_index_free(index);
	if (r == -ENOMEM)
		return error_set(ret_error, r, "checking what %s needs: out of memory",
				 display_name);
	if (r < 0)
		return r;
	if (res.n_missing > 0) {
		*ret_error = needs_format(&res, display_name, m->name, m->version);
		r = *ret_error ? -ENOENT : -ENOMEM;
	}
	needs_result_done(&res);
	return r;
}
