/* Library closure without running anything: the search ld.so (glibc) would do inside the
 * finished image, done against stacked layer roots on this machine.
 *
 * What is modelled after glibc's elf/dl-load.c and dl-deps.c:
 *  - dependencies are loaded breadth first, in DT_NEEDED order;
 *  - a DT_NEEDED name matches an object already loaded for the same program by the name it
 *    was loaded under or by its DT_SONAME (so the interpreter satisfies
 *    "ld-linux-x86-64.so.2"), and a file found twice under two names is loaded once;
 *  - search order: DT_RPATH of the needing object, then of the object that loaded it, and
 *    on up to the program (only while the needing object has no DT_RUNPATH), then the
 *    needing object's own DT_RUNPATH, then the system directories;
 *  - $ORIGIN, $LIB and $PLATFORM (also in braces) are expanded; a file of the wrong class
 *    or machine is skipped and the search goes on.
 * What is left out on purpose: LD_LIBRARY_PATH and /etc/ld.so.cache (the image has its own
 * or none), glibc-hwcaps and tls/ subdirectories (the image must not depend on the CPU
 * of the machine that built it), and relative or empty search path entries (they name
 * the process's working directory, which an image does not have). */
#include "image/closure.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/elf.h"
#include "util/cleanup.h"
#include "util/log.h"
#include "util/pathwalk.h"

/* Most files one closure may hold. */
#define CLOSURE_FILES_MAX 100000
#define NO_OBJECT	  SIZE_MAX

/* The expansions Debian's x86-64 glibc uses for $LIB and $PLATFORM. */
#define DST_LIB	     "lib/x86_64-linux-gnu"
#define DST_PLATFORM "x86_64"

/* Where ld.so looks when no RPATH or RUNPATH names the library; the order of
 * /etc/ld.so.conf.d on Debian followed by glibc's built-in list. */
static const char *const system_lib_dirs[] = {
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
};

/* Top-level directories that a usr-merged system keeps under /usr. */
static const char *const merged_dirs[] = {"bin", "sbin", "lib", "lib64"};

/* ---- a small string → index hash map (open addressing, keys usually borrowed) ---- */

struct strmap_slot {
	const char *key;
	size_t value;
};

struct strmap {
	struct strmap_slot *slots;
	size_t n_slots; /* a power of two, or 0 */
	size_t n_used;
	bool owns_keys;
};

static uint64_t hash_string(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return h;
}

static bool strmap_get(const struct strmap *m, const char *key, size_t *ret_value)
{
	if (m->n_slots == 0)
		return false;
	for (size_t i = hash_string(key) & (m->n_slots - 1);; i = (i + 1) & (m->n_slots - 1)) {
		if (!m->slots[i].key)
			return false;
		if (strcmp(m->slots[i].key, key) == 0) {
			if (ret_value)
				*ret_value = m->slots[i].value;
			return true;
		}
	}
}

static int strmap_grow(struct strmap *m)
{
	size_t n = m->n_slots ? m->n_slots * 2 : 64;
	struct strmap_slot *slots = calloc(n, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t j = 0; j < m->n_slots; j++) {
		size_t i;

		if (!m->slots[j].key)
			continue;
		for (i = hash_string(m->slots[j].key) & (n - 1); slots[i].key;
		     i = (i + 1) & (n - 1))
			;
		slots[i] = m->slots[j];
	}
	free(m->slots);
	m->slots = slots;
	m->n_slots = n;
	return 0;
}

/* Adds key → value unless key is there already (then nothing changes). With owns_keys,
 * the map takes a copy of key. */
static int strmap_add(struct strmap *m, const char *key, size_t value)
{
	size_t i;

	if (strmap_get(m, key, NULL))
		return 0;
	/* Keep the load under one half so that probes stay short. */
	if ((m->n_used + 1) * 2 > m->n_slots) {
		int r = strmap_grow(m);

		if (r < 0)
			return r;
	}
	for (i = hash_string(key) & (m->n_slots - 1); m->slots[i].key;
	     i = (i + 1) & (m->n_slots - 1))
		;
	if (m->owns_keys) {
		char *copy = strdup(key);

		if (!copy)
			return -ENOMEM;
		key = copy;
	}
	m->slots[i] = (struct strmap_slot){.key = key, .value = value};
	m->n_used++;
	return 0;
}

static void strmap_done(struct strmap *m)
{
	if (m->owns_keys)
		for (size_t i = 0; i < m->n_slots; i++)
			free((char *)m->slots[i].key);
	free(m->slots);
	*m = (struct strmap){.owns_keys = m->owns_keys};
}

/* ---- image paths ---- */

/* Cleans an absolute path lexically into out (PATH_MAX bytes): no "//", no "."; unless
 * keep_dotdot, ".." removes the previous component and stops at "/". -ENAMETOOLONG when
 * it does not fit. */
static int path_clean(const char *path, bool keep_dotdot, char out[static PATH_MAX])
{
	size_t len = 0;

	const char *p, *rest = path;
	size_t n;

	while ((p = pathwalk_next(&rest, &n))) {
		if (n == 1 && p[0] == '.') {
			/* nothing */
		} else if (n == 2 && p[0] == '.' && p[1] == '.' && !keep_dotdot) {
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--; /* the slash before the component */
		} else {
			if (len + 1 + n >= PATH_MAX)
				return -ENAMETOOLONG;
			out[len++] = '/';
			memcpy(out + len, p, n);
			len += n;
		}
	}
	if (len == 0)
		out[len++] = '/';
	out[len] = '\0';
	return 0;
}

/* Length of the top-level directory that usr-merge moves ("/lib" in "/lib/x"), or 0. */
static size_t merged_prefix_len(const char *clean_path)
{
	for (size_t i = 0; i < ARRAY_SIZE(merged_dirs); i++) {
		size_t n = strlen(merged_dirs[i]);

		if (clean_path[0] == '/' && strncmp(clean_path + 1, merged_dirs[i], n) == 0 &&
		    (clean_path[1 + n] == '/' || clean_path[1 + n] == '\0'))
			return 1 + n;
	}
	return 0;
}

char *closure_usrmerge_path(const char *path)
{
	char clean[PATH_MAX];
	char *out = NULL;

	if (path_clean(path, false, clean) < 0)
		return NULL;
	if (merged_prefix_len(clean) == 0)
		return strdup(clean);
	if (asprintf(&out, "/usr%s", clean) < 0)
		return NULL;
	return out;
}

/* The other spelling of a clean path: "/usr/lib/x" ↔ "/lib/x"; NULL when it has none
 * (and *ret_r = 0) or on no memory (*ret_r = -ENOMEM). */
static char *usrmerge_alias(const char *clean, int *ret_r)
{
	char *out = NULL;

	*ret_r = 0;
	if (merged_prefix_len(clean) > 0) {
		if (strlen(clean) + 4 >= PATH_MAX)
			return NULL;
		if (asprintf(&out, "/usr%s", clean) < 0)
			*ret_r = -ENOMEM;
		return out;
	}
	if (strncmp(clean, "/usr/", 5) == 0 && merged_prefix_len(clean + 4) > 0) {
		out = strdup(clean + 4);
		if (!out)
			*ret_r = -ENOMEM;
	}
	return out;
}

struct root_walk {
	const char *root;
	size_t root_len; /* without trailing slashes: "/" becomes "" */
};

/* Builds root + image path into host (PATH_MAX bytes). */
static int root_host_path(const struct root_walk *w, const char *path, char host[static PATH_MAX])
{
	size_t n = strlen(path);

	if (w->root_len + n >= PATH_MAX)
		return -ENAMETOOLONG;
	memcpy(host, w->root, w->root_len);
	memcpy(host + w->root_len, path, n + 1);
	return 0;
}

static int root_lookup(const char *path, enum pathwalk_kind *ret_kind, char target[static PATH_MAX],
		       void *userdata)
{
	const struct root_walk *w = userdata;
	char host[PATH_MAX];
	struct stat st;
	ssize_t t;
	int r;

	r = root_host_path(w, path, host);
	if (r < 0)
		return r;
	if (lstat(host, &st) < 0)
		return -errno;
	if (!S_ISLNK(st.st_mode)) {
		*ret_kind = S_ISDIR(st.st_mode)	  ? PATHWALK_DIR
			    : S_ISREG(st.st_mode) ? PATHWALK_FILE
						  : PATHWALK_OTHER;
		return 0;
	}
	t = readlink(host, target, PATH_MAX);
	if (t < 0)
		return -errno;
	if (t >= PATH_MAX)
		return -ENAMETOOLONG;
	target[t] = '\0';
	*ret_kind = PATHWALK_LINK;
	return 0;
}

/* Resolves path inside root the way a chroot would (util/pathwalk.h). Because each directory
 * in the prefix was checked not to be a symlink, the kernel never follows a link out of root
 * while we build host paths. On success *ret_real is the resolved path inside root (caller
 * frees) and *ret_st its lstat. */
static int resolve_in_root(const char *root, const char *path, char **ret_real, struct stat *ret_st)
{
	struct root_walk w = {.root = root, .root_len = strlen(root)};
	char real[PATH_MAX], host[PATH_MAX];
	enum pathwalk_kind kind;
	int r;

	while (w.root_len > 0 && root[w.root_len - 1] == '/')
		w.root_len--;
	r = pathwalk_resolve(path, root_lookup, &w, real, &kind);
	if (r < 0)
		return r;
	if (strcmp(real, "/") == 0)
		r = stat(w.root_len > 0 ? root : "/", ret_st) < 0 ? -errno : 0;
	else if ((r = root_host_path(&w, real, host)) == 0)
		r = lstat(host, ret_st) < 0 ? -errno : 0;
	if (r < 0)
		return r;
	*ret_real = strdup(real);
	return *ret_real ? 0 : -ENOMEM;
}

/* Builds root + image_path as a host path (caller frees). */
static char *host_path_of(const char *root, const char *image_path)
{
	size_t root_len = strlen(root);
	char *out = NULL;

	while (root_len > 0 && root[root_len - 1] == '/')
		root_len--;
	if (asprintf(&out, "%.*s%s", (int)root_len, root, image_path) < 0)
		return NULL;
	return out;
}

int closure_lookup(const struct closure_layer *layers, size_t n_layers, const char *image_path,
		   char **ret_host_path, char **ret_real_image_path, size_t *ret_layer)
{
	char clean[PATH_MAX];
	_cleanup_free_ char *alias = NULL;
	const char *candidates[2];
	bool saw_dir = false, saw_loop = false;
	int r;

	/* ".." stays: inside a layer it is resolved after symlinks, as the kernel would. */
	r = path_clean(image_path, true, clean);
	if (r < 0)
		return r;
	alias = usrmerge_alias(clean, &r);
	if (r < 0)
		return r;
	candidates[0] = clean;
	candidates[1] = alias;

	for (size_t l = 0; l < n_layers; l++) {
		for (size_t c = 0; c < ARRAY_SIZE(candidates) && candidates[c]; c++) {
			_cleanup_free_ char *real = NULL;
			_cleanup_free_ char *host = NULL;
			_cleanup_free_ char *merged = NULL;
			struct stat st;

			r = resolve_in_root(layers[l].root, candidates[c], &real, &st);
			if (r == -ELOOP)
				saw_loop = true;
			if (r == -ENOMEM)
				return r;
			if (r < 0)
				continue; /* ENOENT, ENOTDIR, ELOOP, EACCES...: not in this layer */
			if (S_ISDIR(st.st_mode))
				saw_dir = true;
			if (!S_ISREG(st.st_mode))
				continue;
			host = host_path_of(layers[l].root, real);
			merged = closure_usrmerge_path(real);
			if (!host || !merged)
				return -ENOMEM;
			log_debug("%s found in layer %zu (%s) as %s", image_path, l, layers[l].root,
				  host);
			*ret_host_path = TAKE_PTR(host);
			*ret_real_image_path = TAKE_PTR(merged);
			*ret_layer = l;
			return 0;
		}
	}
	if (saw_dir)
		return -EISDIR;
	if (saw_loop)
		return -ELOOP;
	return -ENOENT;
}

/* ---- the resolver ---- */

struct resolver {
	const struct closure_layer *layers;
	size_t n_layers;
	struct closure_file *files;
	struct elf_info **infos; /* parallel to files; NULL for non-ELF files */
	size_t n_files, cap_files;
	struct strmap by_image_path; /* image path → file index */
	struct strmap rejected;	     /* image paths found but unusable as libraries */
	char *error;
};

/* One object "loaded" for one program, as ld.so's link map would hold it. */
struct object {
	size_t file;
	size_t loader; /* the object whose DT_NEEDED brought it in, or NO_OBJECT */
	char *origin;  /* $ORIGIN: the object's directory in the image */
};

struct program {
	struct object *objs;
	size_t n_objs, cap_objs;
	struct strmap names;   /* names an object answers to → object index */
	struct strmap by_host; /* host file → object index (one file, one object) */
};

static int fail(struct resolver *res, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error message and returns r. */
static int fail(struct resolver *res, int r, const char *fmt, ...)
{
	va_list ap;

	if (res->error)
		return r;
	va_start(ap, fmt);
	if (vasprintf(&res->error, fmt, ap) < 0)
		res->error = NULL;
	va_end(ap);
	return r;
}

static char *dirname_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash || slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

/* Adds a file (taking host/real/info) unless image_path is known; *ret_index either way. */
static int add_file(struct resolver *res, const char *image_path, char **host, char **real,
		    size_t layer, struct elf_info **info, size_t *ret_index)
{
	struct closure_file *f;
	int r;

	if (strmap_get(&res->by_image_path, image_path, ret_index))
		return 0;
	if (res->n_files >= CLOSURE_FILES_MAX)
		return fail(res, -E2BIG,
			    "the image needs more than %d files (programs and their libraries); "
			    "list fewer programs in [root] binaries",
			    CLOSURE_FILES_MAX);
	if (res->n_files == res->cap_files) {
		size_t cap = res->cap_files ? res->cap_files * 2 : 32;
		struct closure_file *files = reallocarray(res->files, cap, sizeof(*files));
		struct elf_info **infos;

		if (!files)
			return -ENOMEM;
		res->files = files;
		infos = reallocarray(res->infos, cap, sizeof(*infos));
		if (!infos)
			return -ENOMEM;
		res->infos = infos;
		res->cap_files = cap;
	}
	f = &res->files[res->n_files];
	*f = (struct closure_file){.layer = layer, .is_elf = *info != NULL};
	f->image_path = strdup(image_path);
	if (!f->image_path)
		return -ENOMEM;
	r = strmap_add(&res->by_image_path, f->image_path, res->n_files);
	if (r < 0) {
		free(f->image_path);
		return r;
	}
	f->host_path = TAKE_PTR(*host);
	f->real_image_path = TAKE_PTR(*real);
	res->infos[res->n_files] = TAKE_PTR(*info);
	*ret_index = res->n_files++;
	return 0;
}

/* Explains why elf_read_file() refused an ELF file (-ENOTSUP), from its first bytes. */
static int fail_unsupported(struct resolver *res, const char *path, const char *host_path)
{
	_cleanup_fclose_ FILE *f = fopen(host_path, "rbe");
	unsigned char hdr[20] = {0};
	const char *what = "unknown";
	char machine[32];

	if (f && fread(hdr, 1, sizeof(hdr), f) == sizeof(hdr)) {
		unsigned e_type = hdr[16] | hdr[17] << 8, e_machine = hdr[18] | hdr[19] << 8;

		if (hdr[4] != 2 /* ELFCLASS64 */)
			what = "32-bit";
		else if (hdr[5] != 1 /* ELFDATA2LSB */)
			what = "big-endian";
		else if (e_machine == 62 /* EM_X86_64 */)
			return fail(res, -ENOTSUP,
				    "%s is an ELF file of type %u (an object file or core dump), "
				    "not a program or library; list programs in [root] binaries",
				    path, e_type);
		else {
			snprintf(machine, sizeof(machine), "e_machine %u", e_machine);
			what = machine;
		}
	}
	return fail(res, -ENOTSUP,
		    "%s is an ELF file for another architecture (%s; vmhpc images are x86-64); "
		    "use the amd64 build of the program",
		    path, what);
}

/* Looks up and reads one explicitly requested path. */
static int add_requested(struct resolver *res, const char *path)
{
	_cleanup_free_ char *merged = NULL, *host = NULL, *real = NULL;
	struct elf_info *info = NULL;
	size_t layer, index;
	int r;

	if (path[0] != '/')
		return fail(res, -EINVAL,
			    "%s is not an absolute path; list programs in [root] binaries as "
			    "seen in the image, e.g. /usr/bin/hostname",
			    path);
	if (strlen(path) >= PATH_MAX)
		return fail(res, -ENAMETOOLONG, "%.64s...: path too long (limit %d bytes)", path,
			    PATH_MAX - 1);
	merged = closure_usrmerge_path(path);
	if (!merged)
		return -ENOMEM;
	if (strmap_get(&res->by_image_path, merged, NULL))
		return 0; /* listed twice */

	r = closure_lookup(res->layers, res->n_layers, merged, &host, &real, &layer);
	if (r == -ENOENT)
		return fail(res, r,
			    "%s: no such file in the spec's packages, tree or this machine; "
			    "check the path in [root] binaries",
			    path);
	if (r == -EISDIR)
		return fail(res, r,
			    "%s is a directory; list files, not directories, in [root] binaries",
			    path);
	if (r == -ELOOP)
		return fail(res, r, "%s: too many levels of symbolic links (a symlink loop?)",
			    path);
	if (r < 0)
		return fail(res, r, "looking up %s: %s", path, strerror(-r));

	r = elf_read_file(host, &info);
	if (r == -ENOEXEC)
		info = NULL; /* a script or data file: taken as it is */
	else if (r == -ENOTSUP)
		return fail_unsupported(res, path, host);
	else if (r == -EBADMSG)
		return fail(res, r,
			    "%s (%s) is a damaged ELF file (truncated or inconsistent headers); "
			    "reinstall the package that ships it",
			    path, host);
	else if (r == -EFBIG)
		return fail(res, r, "%s (%s) is larger than the 2 GiB limit for programs", path,
			    host);
	else if (r < 0)
		return fail(res, r, "reading %s (%s): %s", path, host, strerror(-r));

	r = add_file(res, merged, &host, &real, layer, &info, &index);
	elf_info_free(info);
	return r;
}

static int program_add_object(struct program *prog, size_t file, size_t loader, char *origin,
			      size_t *ret_index)
{
	if (prog->n_objs == prog->cap_objs) {
		size_t cap = prog->cap_objs ? prog->cap_objs * 2 : 16;
		struct object *objs = reallocarray(prog->objs, cap, sizeof(*objs));

		if (!objs) {
			free(origin);
			return -ENOMEM;
		}
		prog->objs = objs;
		prog->cap_objs = cap;
	}
	prog->objs[prog->n_objs] =
	    (struct object){.file = file, .loader = loader, .origin = origin};
	*ret_index = prog->n_objs++;
	return 0;
}

static void program_done(struct program *prog)
{
	for (size_t i = 0; i < prog->n_objs; i++)
		free(prog->objs[i].origin);
	free(prog->objs);
	strmap_done(&prog->names);
	strmap_done(&prog->by_host);
}

/* Length of the dynamic string token at s (just after '$') named ref, 0 when none. The
 * rules are glibc's is_dst(): "$NAME" must not run on into more name characters. */
static size_t dst_len(const char *s, const char *ref)
{
	size_t n = strlen(ref);

	if (s[0] == '{')
		return strncmp(s + 1, ref, n) == 0 && s[1 + n] == '}' ? n + 2 : 0;
	if (strncmp(s, ref, n) != 0)
		return 0;
	if ((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= 'a' && s[n] <= 'z') ||
	    (s[n] >= '0' && s[n] <= '9') || s[n] == '_')
		return 0;
	return n;
}

int closure_expand_tokens(const char *s, size_t n, const char *origin, char out[static PATH_MAX])
{
	size_t len = 0;

	for (size_t i = 0; i < n;) {
		const char *repl = NULL;
		size_t skip = 0, rl;

		if (s[i] == '$') {
			_cleanup_free_ char *tok = strndup(s + i + 1, n - i - 1);

			if (!tok)
				return -ENOMEM;
			if ((skip = dst_len(tok, "ORIGIN")))
				repl = origin;
			else if ((skip = dst_len(tok, "LIB")))
				repl = DST_LIB;
			else if ((skip = dst_len(tok, "PLATFORM")))
				repl = DST_PLATFORM;
		}
		if (!repl) {
			if (len + 1 >= PATH_MAX)
				return -ENAMETOOLONG;
			out[len++] = s[i++];
			continue;
		}
		rl = strlen(repl);
		if (len + rl >= PATH_MAX)
			return -ENAMETOOLONG;
		memcpy(out + len, repl, rl);
		len += rl;
		i += 1 + skip;
	}
	out[len] = '\0';
	return 0;
}

/* Tries one candidate path for a library: returns 0 with *ret_file set, -ENOENT to go on
 * searching (absent, not ELF, wrong class or machine), or a hard error. */
static int try_library(struct resolver *res, const char *candidate, const char *name,
		       const char *needed_by, size_t *ret_file)
{
	_cleanup_free_ char *merged = NULL, *host = NULL, *real = NULL;
	struct elf_info *info = NULL;
	size_t layer, index;
	int r;

	merged = closure_usrmerge_path(candidate);
	if (!merged)
		return -ENOMEM;
	if (strmap_get(&res->by_image_path, merged, &index)) {
		if (!res->infos[index])
			return -ENOENT; /* listed explicitly, but not ELF: ld.so would skip it */
		*ret_file = index;
		return 0;
	}
	if (strmap_get(&res->rejected, merged, NULL))
		return -ENOENT;

	r = closure_lookup(res->layers, res->n_layers, merged, &host, &real, &layer);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return -ENOENT; /* absent, a directory, a loop: ld.so goes on to the next */

	r = elf_read_file(host, &info);
	if (r == -ENOEXEC || r == -ENOTSUP) {
		/* ld.so skips a library of the wrong class or machine (an i386 one in a
		 * shared directory); we also skip non-ELF files such as linker scripts. */
		log_debug("skipping %s for %s: %s", host, name, strerror(-r));
		r = strmap_add(&res->rejected, merged, 0);
		return r < 0 ? r : -ENOENT;
	}
	if (r == -EBADMSG)
		return fail(res, r,
			    "library %s needed by %s is a damaged ELF file at %s (truncated or "
			    "inconsistent headers); reinstall the package that ships it",
			    name, needed_by, host);
	if (r < 0)
		return fail(res, r, "reading library %s needed by %s at %s: %s", name, needed_by,
			    host, strerror(-r));
	r = add_file(res, merged, &host, &real, layer, &info, ret_file);
	elf_info_free(info);
	return r;
}

/* Tries every directory of a ':'-separated search list (RPATH or RUNPATH of object o). */
static int search_list(struct resolver *res, const char *list, const char *origin, const char *name,
		       const char *needed_by, size_t *ret_file)
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
		r = try_library(res, candidate, name, needed_by, ret_file);
		if (r != -ENOENT)
			return r;
	}
	return -ENOENT;
}

/* Finds the file for DT_NEEDED name of object o, as ld.so's _dl_map_object would. */
static int search_library(struct resolver *res, struct program *prog, size_t o, const char *name,
			  const char *needed_by, size_t *ret_file)
{
	const struct elf_info *info = res->infos[prog->objs[o].file];
	bool saw_program = false;
	int r;

	if (!info->runpath) {
		for (size_t l = o; l != NO_OBJECT; l = prog->objs[l].loader) {
			const struct elf_info *li = res->infos[prog->objs[l].file];

			saw_program = saw_program || l == 0;
			/* An object with DT_RUNPATH has its DT_RPATH ignored. */
			if (!li->rpath || li->runpath)
				continue;
			r = search_list(res, li->rpath, prog->objs[l].origin, name, needed_by,
					ret_file);
			if (r != -ENOENT)
				return r;
		}
		/* ld.so also tries the program's DT_RPATH for objects it did not load itself
		 * (here: the interpreter's own dependencies). */
		if (!saw_program && res->infos[prog->objs[0].file]->rpath &&
		    !res->infos[prog->objs[0].file]->runpath) {
			r = search_list(res, res->infos[prog->objs[0].file]->rpath,
					prog->objs[0].origin, name, needed_by, ret_file);
			if (r != -ENOENT)
				return r;
		}
	}
	if (info->runpath) {
		r = search_list(res, info->runpath, prog->objs[o].origin, name, needed_by,
				ret_file);
		if (r != -ENOENT)
			return r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(system_lib_dirs); i++) {
		char candidate[PATH_MAX];

		if ((size_t)snprintf(candidate, sizeof(candidate), "%s/%s", system_lib_dirs[i],
				     name) >= sizeof(candidate))
			return -ENOENT;
		r = try_library(res, candidate, name, needed_by, ret_file);
		if (r != -ENOENT)
			return r;
	}
	return -ENOENT;
}

/* Makes file an object of prog (once per host file) and registers the names it answers to. */
static int program_load(struct resolver *res, struct program *prog, size_t file, size_t loader,
			const char *origin_path, const char *loaded_as, size_t *ret_obj)
{
	const struct elf_info *info = res->infos[file];
	char *origin;
	size_t o;
	int r;

	if (!strmap_get(&prog->by_host, res->files[file].host_path, &o)) {
		origin = dirname_of(origin_path);
		if (!origin)
			return -ENOMEM;
		r = program_add_object(prog, file, loader, origin, &o);
		if (r < 0)
			return r;
		r = strmap_add(&prog->by_host, res->files[file].host_path, o);
		if (r < 0)
			return r;
	}
	if (loaded_as) {
		r = strmap_add(&prog->names, loaded_as, o);
		if (r < 0)
			return r;
	}
	if (info->soname) {
		r = strmap_add(&prog->names, info->soname, o);
		if (r < 0)
			return r;
	}
	r = strmap_add(&prog->names, res->files[file].image_path, o);
	if (r < 0)
		return r;
	if (ret_obj)
		*ret_obj = o;
	return 0;
}

/* Adds the interpreter named by the program's PT_INTERP. */
static int resolve_interp(struct resolver *res, struct program *prog, const char *program)
{
	const char *interp = res->infos[prog->objs[0].file]->interp;
	_cleanup_free_ char *merged = NULL, *host = NULL, *real = NULL;
	struct elf_info *info = NULL;
	size_t layer, file;
	int r;

	if (interp[0] != '/')
		return fail(res, -EINVAL,
			    "%s names a relative program interpreter (%s); it cannot run in an "
			    "image",
			    program, interp);
	merged = closure_usrmerge_path(interp);
	if (!merged)
		return -ENOMEM;
	if (strmap_get(&res->by_image_path, merged, &file)) {
		if (!res->infos[file])
			return fail(
			    res, -ENOEXEC,
			    "interpreter %s of %s is not an ELF file; reinstall the package "
			    "that ships it",
			    interp, program);
	} else {
		r = closure_lookup(res->layers, res->n_layers, merged, &host, &real, &layer);
		if (r == -ENOMEM)
			return r;
		if (r < 0)
			return fail(res, r,
				    "interpreter %s of %s not found in the image's packages nor on "
				    "this machine; add libc6 (or the package that ships it) to "
				    "[root] packages",
				    interp, program);
		r = elf_read_file(host, &info);
		if (r == -ENOEXEC || r == -ENOTSUP || r == -EBADMSG)
			return fail(res, r,
				    "interpreter %s of %s (%s) is not a usable x86-64 ELF file; "
				    "reinstall the package that ships it",
				    interp, program, host);
		if (r < 0)
			return fail(res, r, "reading interpreter %s of %s (%s): %s", interp,
				    program, host, strerror(-r));
		r = add_file(res, merged, &host, &real, layer, &info, &file);
		elf_info_free(info);
		if (r < 0)
			return r;
	}
	/* ld.so is loaded by the kernel, not by the program: it has no loader. */
	return program_load(res, prog, file, NO_OBJECT, res->files[file].image_path, interp, NULL);
}

/* Loads the dependencies of one requested ELF file breadth first, like ld.so at startup. */
static int resolve_program(struct resolver *res, size_t program_file)
{
	_cleanup_(program_done) struct program prog = {0};
	const char *program = res->files[program_file].image_path;
	int r;

	/* $ORIGIN of the program is where /proc/self/exe points: symlinks resolved. */
	r = program_load(res, &prog, program_file, NO_OBJECT,
			 res->files[program_file].real_image_path, NULL, NULL);
	if (r < 0)
		return r;
	if (res->infos[program_file]->interp) {
		r = resolve_interp(res, &prog, program);
		if (r < 0)
			return r;
	}

	for (size_t o = 0; o < prog.n_objs; o++) {
		/* Copied: add_file may move res->files and res->infos. */
		const size_t file = prog.objs[o].file;
		_cleanup_free_ char *needed_by = NULL;

		if (o == 0)
			needed_by = strdup(program);
		else if (asprintf(&needed_by, "%s (loaded for %s)", res->files[file].image_path,
				  program) < 0)
			needed_by = NULL;
		if (!needed_by)
			return -ENOMEM;

		for (size_t i = 0; i < res->infos[file]->n_needed; i++) {
			const char *needed = res->infos[file]->needed[i];
			char expanded[PATH_MAX];
			size_t lib;

			if (strmap_get(&prog.names, needed, NULL))
				continue; /* already loaded under this name or soname */
			r = closure_expand_tokens(needed, strlen(needed), prog.objs[o].origin,
						  expanded);
			if (r == -ENOMEM)
				return r;
			if (r < 0)
				return fail(res, r,
					    "library name %.64s... needed by %s is too long",
					    needed, needed_by);
			if (strchr(expanded, '/')) {
				/* A path: ld.so opens it as it is (relative ones from the
				 * working directory, which an image does not have). */
				r = expanded[0] == '/'
					? try_library(res, expanded, needed, needed_by, &lib)
					: -ENOENT;
			} else {
				r = search_library(res, &prog, o, expanded, needed_by, &lib);
			}
			if (r == -ENOENT)
				return fail(res, r,
					    "library %s needed by %s not found in the image's "
					    "packages nor on this machine; add the Debian package "
					    "that ships it to [root] packages",
					    needed, needed_by);
			if (r < 0)
				return r;
			r = program_load(res, &prog, lib, o, res->files[lib].image_path, needed,
					 NULL);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

void closure_done(struct closure *c)
{
	for (size_t i = 0; i < c->n_files; i++) {
		free(c->files[i].image_path);
		free(c->files[i].real_image_path);
		free(c->files[i].host_path);
	}
	free(c->files);
	c->files = NULL;
	c->n_files = 0;
}

static void resolver_done(struct resolver *res)
{
	struct closure c = {.n_files = res->n_files, .files = res->files};

	closure_done(&c);
	for (size_t i = 0; i < res->n_files; i++)
		elf_info_free(res->infos[i]);
	free(res->infos);
	strmap_done(&res->by_image_path);
	strmap_done(&res->rejected);
	free(res->error);
}

int closure_resolve(const struct closure_layer *layers, size_t n_layers, char *const *paths,
		    size_t n_paths, struct closure *ret, char **ret_error)
{
	_cleanup_(resolver_done) struct resolver res = {
	    .layers = layers,
	    .n_layers = n_layers,
	    .rejected = {.owns_keys = true},
	};
	size_t n_requested;
	int r = 0;

	for (size_t i = 0; i < n_paths && r >= 0; i++)
		r = add_requested(&res, paths[i]);
	/* Requested paths first, then libraries, so the order does not depend on which
	 * program happened to pull a library in first. */
	n_requested = res.n_files;
	for (size_t i = 0; i < n_requested && r >= 0; i++)
		if (res.infos[i] && (res.infos[i]->is_dynamic || res.infos[i]->interp))
			r = resolve_program(&res, i);
	if (r < 0) {
		if (r == -ENOMEM && !res.error)
			(void)fail(&res, r, "out of memory while resolving libraries");
		log_debug("library closure failed: %s", res.error ? res.error : strerror(-r));
		if (ret_error)
			*ret_error = TAKE_PTR(res.error);
		return r;
	}

	for (size_t i = 0; i < res.n_files; i++)
		res.infos[i] = elf_info_free(res.infos[i]);
	*ret = (struct closure){.n_files = res.n_files, .files = TAKE_PTR(res.files)};
	res.n_files = 0;
	return 0;
}
