/* The image spec parser: a small ini dialect read line by line (docs/image-spec.md).
 *
 * Every value is checked on the line that gives it, so a message can point at that line;
 * only "is it missing?" waits for the end. The parser never touches the file system for
 * the values it reads (whether a file source exists is the builder's business: it reports
 * it with the context of the build). */
#include "image/spec.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/name.h"

/* The longest kernel command line addition we accept: x86 allows 2048 bytes in all, and
 * vmhpc needs room for its own arguments. */
#define SPEC_BOOT_ARGS_MAX 1024
/* Module names are at most 55 chars in the kernel (MODULE_NAME_LEN - 1 on 64-bit). */
#define SPEC_MODULE_NAME_MAX 55
/* User text quoted in a message is cut here, so one bad line cannot flood the terminal. */
#define QUOTE_MAX_CHARS 100

enum spec_section {
	SECTION_NONE = -1,
	SECTION_IMAGE,
	SECTION_KERNEL,
	SECTION_ROOT,
	_SECTION_MAX,
};

static const char *const section_names[_SECTION_MAX] = {
    [SECTION_IMAGE] = "image",
    [SECTION_KERNEL] = "kernel",
    [SECTION_ROOT] = "root",
};

struct parser;
struct spec_key;

/* Checks (and for lists, stores) one value. word is a copy the handler may take. */
typedef int (*key_handler)(struct parser *p, const struct spec_key *k, unsigned line, char **word);

struct spec_key {
	enum spec_section section;
	const char *name;
	bool is_list;
	size_t offset;	     /* char * for a scalar, char ** (or struct spec_file *) for a list */
	size_t count_offset; /* the list's size_t count */
	key_handler handle;
};

struct parser {
	const char *origin;
	const char *base_dir;
	struct image_spec *spec;
	char **ret_error;

	enum spec_section section;
	unsigned section_line[_SECTION_MAX]; /* first header of each section, 0 = none yet */
	const struct spec_key *key;	     /* the key continuation lines extend, or NULL */
	unsigned key_line;
	unsigned *scalar_line; /* per key table entry: where a scalar was given, 0 = not yet */
	unsigned *file_lines;  /* per files entry: where it was given (for "DEST twice") */
	size_t n_file_lines;
};

static int parser_error(struct parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets *p->ret_error to "ORIGIN:LINE: MESSAGE" (no line when line is 0) and returns -EINVAL,
 * or -ENOMEM when even the message cannot be made. */
static int parser_error(struct parser *p, unsigned line, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	if (!p->ret_error)
		return -EINVAL;
	if (line > 0)
		n = asprintf(p->ret_error, "%s:%u: %s", p->origin, line, msg);
	else
		n = asprintf(p->ret_error, "%s: %s", p->origin, msg);
	if (n < 0) {
		*p->ret_error = NULL;
		return -ENOMEM;
	}
	return -EINVAL;
}

/* Writes s into buf as a double-quoted string a terminal shows safely: control bytes and
 * quotes escaped, cut after QUOTE_MAX_CHARS with "...". buf needs QUOTE_BUF_SIZE bytes. */
#define QUOTE_BUF_SIZE (QUOTE_MAX_CHARS * 4 + 8)
static const char *quote(char buf[static QUOTE_BUF_SIZE], const char *s)
{
	size_t o = 0;
	size_t i;

	buf[o++] = '"';
	for (i = 0; s[i] && i < QUOTE_MAX_CHARS; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(buf + o, 5, "\\x%02x", c);
		} else {
			if (c == '"' || c == '\\')
				buf[o++] = '\\';
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	if (s[i]) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool has_control_char(const char *s, bool allow_tab)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c < 0x20 && !(allow_tab && c == '\t')) || c == 0x7f)
			return true;
	}
	return false;
}

/* Cuts blanks from both ends in place; returns the first non-blank. */
static char *trim(char *s)
{
	size_t n;

	while (is_blank(*s))
		s++;
	n = strlen(s);
	while (n > 0 && is_blank(s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* The rule shared by image names and os labels, without the "ORIGIN:LINE: " prefix. */
static int name_check(const char *what, const char *name, char **ret_error)
{
	return name_validate(what, name ? name : "", ret_error);
}

int spec_validate_name(const char *name, char **ret_error)
{
	return name_check("image name", name, ret_error);
}

/* Debian policy 5.6.1: at least two chars of [a-z0-9+.-], starting with a letter or digit. */
static bool is_debian_package_name(const char *s)
{
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')) || !s[1])
		return false;
	for (const char *c = s; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '+' ||
		      *c == '.' || *c == '-'))
			return false;
	return true;
}

static bool has_dotdot_component(const char *path)
{
	for (const char *c = path; (c = strstr(c, "..")); c++)
		if ((c == path || c[-1] == '/') && (c[2] == '\0' || c[2] == '/'))
			return true;
	return false;
}

/* An absolute path without ".." (so it cannot leave the image's root) and without control
 * bytes. what names the value in the message, hint says what the path is for. */
static int check_abs_path(struct parser *p, unsigned line, const char *what, const char *path)
{
	char q[QUOTE_BUF_SIZE];

	if (path[0] != '/')
		return parser_error(p, line, "%s %s is not an absolute path; write it from / on",
				    what, quote(q, path));
	if (has_dotdot_component(path))
		return parser_error(p, line,
				    "%s %s has a \"..\" component; write the path without it", what,
				    quote(q, path));
	if (has_control_char(path, false))
		return parser_error(p, line, "%s %s has a control character; remove it", what,
				    quote(q, path));
	if (strlen(path) >= PATH_MAX)
		return parser_error(p, line, "%s %s is longer than %d bytes; shorten it", what,
				    quote(q, path), PATH_MAX - 1);
	return 0;
}

/* Scalars */

/* [image] mpi: which MPI's launcher `vmhpc run` uses (src/mpi/launcher.h). */
static int handle_mpi(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];

	if (strcmp(*word, "mpich") == 0 || strcmp(*word, "openmpi") == 0)
		return 0;
	return parser_error(p, line, "mpi %s is not an MPI vmhpc can launch; use mpich or openmpi",
			    quote(q, *word));
}

/* [image] bypass: the image carries the channel's transport (docs/bypass.md). */
static int handle_bypass(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];

	if (strcmp(*word, "ivshmem") == 0)
		return 0;
	return parser_error(p, line,
			    "bypass %s is not a channel vmhpc knows; use ivshmem (the image then "
			    "carries the UCX transport over it, docs/bypass.md)",
			    quote(q, *word));
}

static int handle_name(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	_cleanup_free_ char *msg = NULL;
	int r = name_check(strcmp(k->name, "os") == 0 ? "os" : "image name", *word, &msg);

	if (r == -EINVAL)
		return parser_error(p, line, "%s", msg);
	return r;
}

static int handle_text(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];

	if (strcmp(k->name, "boot_args") != 0)
		return 0;
	/* The kernel parses its command line as one line of printable words. */
	if (strlen(*word) > SPEC_BOOT_ARGS_MAX)
		return parser_error(p, line, "boot_args is longer than %d characters; shorten it",
				    SPEC_BOOT_ARGS_MAX);
	if (has_control_char(*word, true))
		return parser_error(p, line, "boot_args %s has a control character; remove it",
				    quote(q, *word));
	return 0;
}

static int handle_package(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];

	if (!is_debian_package_name(*word))
		return parser_error(
		    p, line,
		    "%s: %s is not a Debian package name; use lower-case letters, "
		    "digits and + . - (at least 2, starting with a letter or digit), "
		    "without version or architecture",
		    k->name, quote(q, *word));
	return 0;
}

static int handle_abs_path(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	return check_abs_path(p, line, k->name, *word);
}

/* [root] binaries: an absolute path in the image, or "./PATH" / "../PATH": a program of the
 * user's own, relative to the spec's folder, stored in spec->programs (returns 1: stored). */
static int handle_binary(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE], q2[QUOTE_BUF_SIZE];
	struct image_spec *s = p->spec;
	struct spec_program *prog;
	const char *name;
	_cleanup_free_ char *src = NULL, *dest = NULL;

	if (strncmp(*word, "./", 2) != 0 && strncmp(*word, "../", 3) != 0) {
		if ((*word)[0] != '/')
			return parser_error(p, line,
					    "binaries %s is not an absolute path; write it from / "
					    "on, or ./%s for a program in the spec's folder",
					    quote(q, *word), *word);
		return check_abs_path(p, line, k->name, *word);
	}
	if (has_control_char(*word, false))
		return parser_error(p, line, "binaries %s has a control character; remove it",
				    quote(q, *word));
	name = strrchr(*word, '/') + 1;
	if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return parser_error(p, line,
				    "binaries %s names a folder, not a program; write the "
				    "program's path, e.g. ./myprog",
				    quote(q, *word));
	if (!p->base_dir)
		return parser_error(p, line,
				    "binaries %s is relative and this spec has no folder to anchor "
				    "it; use an absolute path",
				    quote(q, *word));
	src = fs_path_join(p->base_dir, strncmp(*word, "./", 2) == 0 ? *word + 2 : *word);
	if (!src || asprintf(&dest, "%s/%s", SPEC_PROGRAM_DIR, name) < 0)
		return -ENOMEM;
	if (strlen(src) >= PATH_MAX)
		return parser_error(p, line, "binaries %s is longer than %d bytes; shorten it",
				    quote(q, src), PATH_MAX - 1);
	for (size_t i = 0; i < s->n_programs; i++)
		if (strcmp(s->programs[i].dest, dest) == 0)
			return parser_error(p, line,
					    "binaries %s and %s (line %u) would both be %s in the "
					    "image; rename one",
					    quote(q, *word), quote(q2, s->programs[i].given),
					    s->programs[i].line, dest);
	if (s->n_programs >= SPEC_MAX_LIST_ITEMS)
		return parser_error(p, line,
				    "binaries has more than %d programs of your own; "
				    "split the image",
				    SPEC_MAX_LIST_ITEMS);
	prog = realloc(s->programs, (s->n_programs + 1) * sizeof(*prog));
	if (!prog)
		return -ENOMEM;
	s->programs = prog;
	prog = &prog[s->n_programs];
	*prog = (struct spec_program){.line = line, .given = strdup(*word)};
	if (!prog->given)
		return -ENOMEM;
	prog->src = TAKE_PTR(src);
	prog->dest = TAKE_PTR(dest);
	s->n_programs++;
	return 1;
}

/* [image] base: NAME or NAME:VERSION of a version in the store the build writes to. */
static int handle_base(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	_cleanup_free_ char *msg = NULL, *name = strdup(*word);
	char q[QUOTE_BUF_SIZE], *colon;
	int r;

	if (!name)
		return -ENOMEM;
	colon = strchr(name, ':');
	if (colon) {
		char *end;
		unsigned long v;

		*colon = '\0';
		errno = 0;
		v = strtoul(colon + 1, &end, 10);
		if (!colon[1] || *end || errno || v == 0 || v > UINT32_MAX || colon[1] == '-' ||
		    colon[1] == '+')
			return parser_error(p, line,
					    "base %s: the version after ':' must be a whole number "
					    "from 1; write NAME or NAME:VERSION",
					    quote(q, *word));
	}
	r = name_check("base image name", name, &msg);
	if (r == -EINVAL)
		return parser_error(p, line, "%s", msg);
	return r;
}

static int handle_module(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];
	size_t len = strlen(*word);
	bool ok = len > 0 && len <= SPEC_MODULE_NAME_MAX;

	for (size_t i = 0; ok && i < len; i++)
		ok = is_alnum((*word)[i]) || (*word)[i] == '_' || (*word)[i] == '-';
	if (!ok)
		return parser_error(
		    p, line,
		    "modules: %s is not a module name; use the name as modinfo shows "
		    "it (A-Z a-z 0-9 _ -, at most %d), without path or .ko",
		    quote(q, *word), SPEC_MODULE_NAME_MAX);
	return 0;
}

/* Lists */

static int list_append(char ***items, size_t *n, char *item)
{
	/* Grows by doubling; n never passes SPEC_MAX_LIST_ITEMS, so no overflow. */
	if ((*n & (*n - 1)) == 0) {
		size_t cap = *n ? *n * 2 : 1;
		char **a = realloc(*items, cap * sizeof(**items));

		if (!a)
			return -ENOMEM;
		*items = a;
	}
	(*items)[(*n)++] = item;
	return 0;
}

/* A files entry is SRC:DEST split at the first ':'. DEST must be absolute, so a SRC with a
 * ':' in it shows up as a DEST that is not, and gets a message that says so; a DEST may
 * hold ':' (SRC is the one a user can most easily rename). */
static int handle_file(struct parser *p, const struct spec_key *k, unsigned line, char **word)
{
	char q[QUOTE_BUF_SIZE];
	struct image_spec *s = p->spec;
	_cleanup_free_ char *src = NULL;
	char *colon = strchr(*word, ':');
	const char *dest;
	int r;

	if (!colon)
		return parser_error(p, line,
				    "files: %s has no ':'; write SRC:DEST, e.g. "
				    "etc/motd:/etc/motd",
				    quote(q, *word));
	*colon = '\0';
	dest = colon + 1;
	if (!**word)
		return parser_error(p, line, "files: %s has an empty SRC; write SRC:DEST",
				    quote(q, dest));
	if (dest[0] != '/') {
		*colon = ':';
		return parser_error(
		    p, line,
		    "files: %s: DEST after the first ':' is not an absolute path; write "
		    "SRC:DEST with DEST from / on (SRC must not contain ':')",
		    quote(q, *word));
	}
	if (strcmp(dest, "/") == 0 || dest[strlen(dest) - 1] == '/')
		return parser_error(
		    p, line,
		    "files: DEST %s names a directory; give the file's full path in "
		    "the image",
		    quote(q, dest));
	r = check_abs_path(p, line, "files: DEST", dest);
	if (r < 0)
		return r;
	if (has_control_char(*word, false))
		return parser_error(p, line, "files: SRC %s has a control character; remove it",
				    quote(q, *word));
	for (size_t i = 0; i < s->n_files; i++)
		if (strcmp(s->files[i].dest, dest) == 0)
			return parser_error(
			    p, line,
			    "files: DEST %s given twice, first at line %u; copy one "
			    "file to each place",
			    quote(q, dest), p->file_lines[i]);

	if ((*word)[0] == '/')
		src = strdup(*word);
	else if (p->base_dir)
		src = fs_path_join(p->base_dir, *word);
	else
		return parser_error(
		    p, line,
		    "files: SRC %s is relative and this spec has no folder to anchor "
		    "it; use an absolute path",
		    quote(q, *word));
	if (!src)
		return -ENOMEM;
	if (strlen(src) >= PATH_MAX)
		return parser_error(p, line, "files: SRC %s is longer than %d bytes; shorten it",
				    quote(q, src), PATH_MAX - 1);

	if ((s->n_files & (s->n_files - 1)) == 0) {
		size_t cap = s->n_files ? s->n_files * 2 : 1;
		struct spec_file *a = realloc(s->files, cap * sizeof(*a));
		unsigned *l;

		if (!a)
			return -ENOMEM;
		s->files = a;
		l = realloc(p->file_lines, cap * sizeof(*l));
		if (!l)
			return -ENOMEM;
		p->file_lines = l;
	}
	s->files[s->n_files].dest = strdup(dest);
	if (!s->files[s->n_files].dest)
		return -ENOMEM;
	s->files[s->n_files].src = TAKE_PTR(src);
	p->file_lines[s->n_files] = line;
	s->n_files++;
	return 0;
}

#define SCALAR(sec, key, field, fn)                                                                \
	{                                                                                          \
		.section = (sec), .name = (key), .offset = offsetof(struct image_spec, field),     \
		.handle = (fn),                                                                    \
	}
#define LIST(sec, key, field, fn)                                                                  \
	{                                                                                          \
		.section = (sec), .name = (key), .is_list = true,                                  \
		.offset = offsetof(struct image_spec, field),                                      \
		.count_offset = offsetof(struct image_spec, n_##field), .handle = (fn),            \
	}

static const struct spec_key spec_keys[] = {
    SCALAR(SECTION_IMAGE, "name", name, handle_name),
    SCALAR(SECTION_IMAGE, "os", os, handle_name),
    SCALAR(SECTION_IMAGE, "description", description, handle_text),
    SCALAR(SECTION_IMAGE, "boot_args", boot_args, handle_text),
    SCALAR(SECTION_IMAGE, "mpi", mpi, handle_mpi),
    SCALAR(SECTION_IMAGE, "bypass", bypass, handle_bypass),
    SCALAR(SECTION_KERNEL, "package", kernel_package, handle_package),
    SCALAR(SECTION_KERNEL, "source", kernel_source, handle_package),
    LIST(SECTION_KERNEL, "modules", modules, handle_module),
    LIST(SECTION_ROOT, "packages", packages, handle_package),
    LIST(SECTION_ROOT, "binaries", binaries, handle_binary),
    LIST(SECTION_ROOT, "plugin_dirs", plugin_dirs, handle_abs_path),
    LIST(SECTION_ROOT, "files", files, handle_file),
    SCALAR(SECTION_ROOT, "tree", tree, handle_abs_path),
    SCALAR(SECTION_IMAGE, "base", base, handle_base),
    LIST(SECTION_KERNEL, "remove_modules", remove_modules, handle_module),
    LIST(SECTION_ROOT, "remove_packages", remove_packages, handle_package),
    LIST(SECTION_ROOT, "remove_binaries", remove_binaries, handle_abs_path),
    LIST(SECTION_ROOT, "remove_plugin_dirs", remove_plugin_dirs, handle_abs_path),
    LIST(SECTION_ROOT, "remove_files", remove_files, handle_abs_path),
};

/* "name, os, description, boot_args, mpi" for a section, into buf. */
static const char *known_keys(enum spec_section section, char *buf, size_t size)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(spec_keys); i++)
		if (spec_keys[i].section == section)
			o += (size_t)snprintf(buf + o, size - o, "%s%s", o ? ", " : "",
					      spec_keys[i].name);
	return buf;
}

static char **field_ptr(struct image_spec *s, size_t offset)
{
	return (char **)(void *)((char *)s + offset);
}

/* Takes the whitespace-separated words of value into the list key k. */
static int list_add_words(struct parser *p, const struct spec_key *k, unsigned line, char *value)
{
	size_t *n = (size_t *)(void *)((char *)p->spec + k->count_offset);
	char *save = NULL;

	for (char *w = strtok_r(value, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
		_cleanup_free_ char *word = NULL;
		int r;

		if (*n >= SPEC_MAX_LIST_ITEMS)
			return parser_error(p, line,
					    "%s has more than %d items; split the image or use "
					    "plugin_dirs or tree for large sets",
					    k->name, SPEC_MAX_LIST_ITEMS);
		word = strdup(w);
		if (!word)
			return -ENOMEM;
		r = k->handle(p, k, line, &word);
		if (r < 0)
			return r;
		if (r > 0 || k->offset == offsetof(struct image_spec, files))
			continue; /* the handler stored it */
		r = list_append((char ***)(void *)field_ptr(p->spec, k->offset), n, word);
		if (r < 0)
			return r;
		word = NULL;
	}
	return 0;
}

static int parse_section(struct parser *p, unsigned line, char *s)
{
	char q[QUOTE_BUF_SIZE];
	size_t len = strlen(s);
	char *name;

	if (s[len - 1] != ']' && strchr(s, ']'))
		return parser_error(
		    p, line,
		    "section header %s has text after ']' (comments must be on their "
		    "own line); remove it",
		    quote(q, s));
	if (s[len - 1] != ']')
		return parser_error(p, line,
				    "section header %s has no closing ']'; write [image], [kernel] "
				    "or [root]",
				    quote(q, s));
	s[len - 1] = '\0';
	name = trim(s + 1);
	for (int i = 0; i < _SECTION_MAX; i++)
		if (strcmp(name, section_names[i]) == 0) {
			p->section = (enum spec_section)i;
			if (!p->section_line[i])
				p->section_line[i] = line;
			p->key = NULL;
			return 0;
		}
	return parser_error(p, line,
			    "unknown section %s; known sections are [image], [kernel], [root]",
			    quote(q, name));
}

static bool is_key_char(char c)
{
	return is_alnum(c) || c == '_' || c == '-' || c == '.';
}

static int parse_key_value(struct parser *p, unsigned line, char *s, char *eq)
{
	char q[QUOTE_BUF_SIZE];
	char keys[256];
	const struct spec_key *k = NULL;
	char *key, *value;
	size_t idx;

	*eq = '\0';
	key = trim(s);
	value = trim(eq + 1);
	if (!*key)
		return parser_error(p, line, "'=' without a key before it; write key = value");
	for (const char *c = key; *c; c++)
		if (!is_key_char(*c))
			return parser_error(p, line,
					    "syntax error: %s before '=' is not a key (one word of "
					    "A-Z a-z 0-9 _ - .); write key = value",
					    quote(q, key));
	if (p->section == SECTION_NONE)
		return parser_error(p, line,
				    "key %s is outside any section; put it under [image], [kernel] "
				    "or [root]",
				    quote(q, key));
	for (idx = 0; idx < ARRAY_SIZE(spec_keys); idx++)
		if (spec_keys[idx].section == p->section && strcmp(spec_keys[idx].name, key) == 0) {
			k = &spec_keys[idx];
			break;
		}
	if (!k)
		return parser_error(p, line, "unknown key %s in [%s]; known keys there are %s",
				    quote(q, key), section_names[p->section],
				    known_keys(p->section, keys, sizeof(keys)));

	p->key = k;
	p->key_line = line;
	if (k->is_list)
		return list_add_words(p, k, line, value);

	if (p->scalar_line[idx])
		return parser_error(p, line, "%s given twice, first at line %u; keep one", k->name,
				    p->scalar_line[idx]);
	p->scalar_line[idx] = line;

	_cleanup_free_ char *copy = strdup(value);
	int r;

	if (!copy)
		return -ENOMEM;
	r = k->handle(p, k, line, &copy);
	if (r < 0)
		return r;
	/* An empty description or boot_args means none (the header promises NULL). */
	if (*copy)
		*field_ptr(p->spec, k->offset) = TAKE_PTR(copy);
	return 0;
}

static int parse_continuation(struct parser *p, unsigned line, char *s)
{
	char q[QUOTE_BUF_SIZE];
	size_t len = strlen(s);

	if (s[0] == '[' && s[len - 1] == ']')
		return parser_error(p, line,
				    "section header %s is indented; start it in the first column",
				    quote(q, s));
	if (!p->key)
		return parser_error(p, line,
				    "indented line %s continues no key; start keys in the first "
				    "column, or indent only the items of a list key",
				    quote(q, s));
	if (!p->key->is_list)
		return parser_error(
		    p, line,
		    "continuation line after %s (line %u), which takes one value; put "
		    "the whole value on line %u",
		    p->key->name, p->key_line, p->key_line);
	return list_add_words(p, p->key, line, s);
}

static int parse_line(struct parser *p, unsigned line, char *s)
{
	char q[QUOTE_BUF_SIZE];
	size_t len = strlen(s);
	bool indented;
	char *t, *eq;

	if (len > 0 && s[len - 1] == '\r') /* CRLF files */
		s[--len] = '\0';
	indented = is_blank(s[0]);
	t = trim(s);
	/* Blank and comment lines keep a list open, so one item can be commented out. */
	if (*t == '\0' || *t == '#' || *t == ';')
		return 0;
	if (indented)
		return parse_continuation(p, line, t);
	if (*t == '[')
		return parse_section(p, line, t);
	eq = strchr(t, '=');
	if (eq)
		return parse_key_value(p, line, t, eq);
	return parser_error(p, line,
			    "syntax error: %s is neither [section], key = value, a comment nor an "
			    "indented list continuation; fix or remove the line",
			    quote(q, t));
}

static int check_complete(struct parser *p)
{
	struct image_spec *s = p->spec;
	unsigned image_line = p->section_line[SECTION_IMAGE];
	unsigned kernel_line = p->section_line[SECTION_KERNEL];

	/* Point at the section the key belongs in when there is one. */
	if (!s->name)
		return parser_error(p, image_line,
				    "%s has no name; add \"name = NAME\" under [image]",
				    image_line ? "[image]" : "the spec");
	if (!s->base) {
		const char *removal = s->n_remove_modules	? "remove_modules"
				      : s->n_remove_packages	? "remove_packages"
				      : s->n_remove_binaries	? "remove_binaries"
				      : s->n_remove_plugin_dirs ? "remove_plugin_dirs"
				      : s->n_remove_files	? "remove_files"
								: NULL;

		if (removal)
			return parser_error(p, 0,
					    "%s takes away from a base version, and this spec has "
					    "none; add \"base = NAME[:VERSION]\" under [image] or "
					    "drop %s",
					    removal, removal);
	} else {
		/* The rest comes from the base (image/lineage.h). */
		return 0;
	}
	if (!s->kernel_package && !s->kernel_source)
		return parser_error(p, kernel_line,
				    "%s has no package; add \"package = PACKAGE\" (e.g. "
				    "linux-image-cloud-amd64) or \"source = linux-source-6.1\" "
				    "under [kernel]",
				    kernel_line ? "[kernel]" : "the spec");
	if (s->kernel_package && s->kernel_source)
		return parser_error(p, kernel_line,
				    "[kernel] has both package and source; keep one (package: a "
				    "Debian kernel; source: a kernel built here, docs/kernel.md)");
	if (!s->os) {
		s->os = strdup("tiny");
		if (!s->os)
			return -ENOMEM;
	}
	return 0;
}

static unsigned line_of_offset(const char *text, size_t offset)
{
	unsigned line = 1;

	for (size_t i = 0; i < offset; i++)
		if (text[i] == '\n')
			line++;
	return line;
}

static int parse_text(struct parser *p, const char *text, size_t len)
{
	_cleanup_free_ char *buf = NULL;
	const char *nul;
	size_t pos = 0;
	unsigned line = 0;
	int r;

	if (len > SPEC_MAX_BYTES) {
		r = parser_error(p, 0,
				 "spec is %zu bytes, more than the limit of %d; make it smaller "
				 "(use tree or plugin_dirs for large sets)",
				 len, SPEC_MAX_BYTES);
		return r == -EINVAL ? -EFBIG : r;
	}
	nul = memchr(text, '\0', len);
	if (nul)
		return parser_error(
		    p, line_of_offset(text, (size_t)(nul - text)),
		    "the spec has a NUL byte; a spec is text, check that this is the "
		    "right file");
	/* A byte-order mark some editors write is no content. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		pos = 3;

	/* One copy, cut into lines in place. */
	buf = malloc(len + 1);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, text, len);
	buf[len] = '\0';
	while (pos < len) {
		char *s = buf + pos;
		char *nl = memchr(s, '\n', len - pos);

		if (nl) {
			*nl = '\0';
			pos = (size_t)(nl - buf) + 1;
		} else {
			pos = len;
		}
		r = parse_line(p, ++line, s);
		if (r < 0)
			return r;
	}
	return check_complete(p);
}

int spec_parse_string(const char *text, size_t len, const char *origin, const char *base_dir,
		      struct image_spec **ret_spec, char **ret_error)
{
	_cleanup_free_ unsigned *scalar_line = calloc(ARRAY_SIZE(spec_keys), sizeof(unsigned));
	struct parser p = {
	    .origin = origin ? origin : "spec",
	    .base_dir = base_dir,
	    .ret_error = ret_error,
	    .section = SECTION_NONE,
	    .scalar_line = scalar_line,
	};
	int r;

	if (!scalar_line)
		return -ENOMEM;
	if (!text && len > 0)
		return -EINVAL;
	p.spec = calloc(1, sizeof(*p.spec));
	if (!p.spec)
		return -ENOMEM;
	p.spec->origin = strdup(p.origin);
	if (!p.spec->origin)
		r = -ENOMEM;
	else
		r = parse_text(&p, text ? text : "", len);
	free(p.file_lines);
	if (r < 0) {
		image_spec_free(p.spec);
		return r;
	}
	*ret_spec = p.spec;
	return 0;
}

int spec_parse_file(const char *path, struct image_spec **ret_spec, char **ret_error)
{
	_cleanup_free_ char *data = NULL;
	_cleanup_free_ char *dir = NULL;
	_cleanup_free_ char *base_dir = NULL;
	char *slash;
	size_t len = 0;
	const char *why;
	int r;

	r = fs_read_file(path, SPEC_MAX_BYTES, &data, &len);
	if (r < 0) {
		if (r == -ENOMEM)
			return r;
		if (r == -EFBIG)
			why = "larger than the 1 MiB limit for a spec; make it smaller";
		else if (r == -EINVAL) /* fs_read_file's answer for a device, fifo or socket */
			why = "not a regular file; give the path of a spec file";
		else
			why = NULL;
		if (ret_error && (why ? asprintf(ret_error, "spec %s: %s", path, why)
				      : asprintf(ret_error, "spec %s: %s; check the path", path,
						 strerror(-r))) < 0) {
			*ret_error = NULL;
			return -ENOMEM;
		}
		return r;
	}

	dir = strdup(path);
	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == dir)
		slash[1] = '\0'; /* "/x.ini" lives in "/" */
	else
		*slash = '\0';
	base_dir = realpath(dir, NULL);
	if (!base_dir) {
		r = -errno;
		if (ret_error && asprintf(ret_error, "spec %s: resolving its folder %s: %s", path,
					  dir, strerror(-r)) < 0) {
			*ret_error = NULL;
			return -ENOMEM;
		}
		return r;
	}
	return spec_parse_string(data, len, path, base_dir, ret_spec, ret_error);
}

static void free_list(char **items, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(items[i]);
	free(items);
}

struct image_spec *image_spec_free(struct image_spec *spec)
{
	if (!spec)
		return NULL;
	free(spec->origin);
	free(spec->name);
	free(spec->os);
	free(spec->description);
	free(spec->boot_args);
	free(spec->mpi);
	free(spec->bypass);
	free(spec->kernel_package);
	free(spec->kernel_source);
	for (size_t i = 0; i < spec->n_modules; i++)
		free(spec->modules[i]);
	free(spec->modules);
	for (size_t i = 0; i < spec->n_packages; i++)
		free(spec->packages[i]);
	free(spec->packages);
	for (size_t i = 0; i < spec->n_binaries; i++)
		free(spec->binaries[i]);
	free(spec->binaries);
	for (size_t i = 0; i < spec->n_programs; i++) {
		free(spec->programs[i].src);
		free(spec->programs[i].dest);
		free(spec->programs[i].given);
	}
	free(spec->programs);
	for (size_t i = 0; i < spec->n_plugin_dirs; i++)
		free(spec->plugin_dirs[i]);
	free(spec->plugin_dirs);
	for (size_t i = 0; i < spec->n_files; i++) {
		free(spec->files[i].src);
		free(spec->files[i].dest);
	}
	free(spec->files);
	free(spec->tree);
	free(spec->base);
	free_list(spec->remove_modules, spec->n_remove_modules);
	free_list(spec->remove_packages, spec->n_remove_packages);
	free_list(spec->remove_binaries, spec->n_remove_binaries);
	free_list(spec->remove_plugin_dirs, spec->n_remove_plugin_dirs);
	free_list(spec->remove_files, spec->n_remove_files);
	free(spec);
	return NULL;
}
