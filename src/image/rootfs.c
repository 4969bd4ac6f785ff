#include "image/rootfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/closure.h"
#include "image/deb.h"
#include "image/elf.h"
#include "store/store.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

#define ROOTFS_MAX_ENTRIES 1000000
#define ROOTFS_BLOCK_BYTES 4096u
#define ROOTFS_INODE_BYTES 256u
/* Every file gets this mtime: equal inputs make equal images, so versions dedup. */
#define ROOTFS_FIXED_TIME_S	 946684800 /* 2000-01-01 */
#define ROOTFS_FIXED_TIME_STRING "946684800"

/* Where each staged path came from, for the index. */
struct origin {
	char *path;
	char *source;
	size_t seq; /* order of noting: a later note replaces an earlier one */
};

struct build_state {
	const char *staging;
	const char *work_dir;
	struct origin *origins;
	size_t n_origins;
	json_t *index;
	uint64_t content_bytes;
	uint64_t alloc_blocks;
	uint64_t n_inodes;
	const struct fs_identity *identity; /* whose rights read the spec's files and tree */
	char **ret_error;
};

static int note_origin(struct build_state *st, const char *path, const char *source)
{
	struct origin *grown;

	if (st->n_origins >= ROOTFS_MAX_ENTRIES)
		return -E2BIG;
	grown = realloc(st->origins, (st->n_origins + 1) * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	st->origins = grown;
	grown[st->n_origins].path = strdup(path);
	grown[st->n_origins].source = strdup(source);
	grown[st->n_origins].seq = st->n_origins;
	if (!grown[st->n_origins].path || !grown[st->n_origins].source)
		return -ENOMEM;
	st->n_origins++;
	return 0;
}

static int compare_origin(const void *a, const void *b)
{
	const struct origin *x = a, *y = b;
	int c = strcmp(x->path, y->path);

	if (c != 0)
		return c;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the notes so find_origin can bisect (an imported OS tree has many thousands). */
static void sort_origins(struct build_state *st)
{
	if (st->n_origins > 1)
		qsort(st->origins, st->n_origins, sizeof(*st->origins), compare_origin);
}

static const char *find_origin(const struct build_state *st, const char *path)
{
	size_t lo = 0, hi = st->n_origins;

	/* The last note for path wins: a spec file may replace what a package put there. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(st->origins[mid].path, path) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0 && strcmp(st->origins[lo - 1].path, path) == 0)
		return st->origins[lo - 1].source;
	return "vmhpc";
}

static char *staged(const struct build_state *st, const char *image_path)
{
	return fs_path_join(st->staging, image_path);
}

/* Creates the parent directories of image_path inside the staging tree. */
static int make_parents(const struct build_state *st, const char *image_path)
{
	_cleanup_free_ char *path = staged(st, image_path);
	char *slash;

	if (!path)
		return -ENOMEM;
	slash = strrchr(path, '/');
	if (!slash || slash == path)
		return 0;
	*slash = '\0';
	return fs_mkdir_p(path, 0755);
}

/* Copies the open regular file fd (host_path, for messages) into the image. */
static int stage_file_fd(struct build_state *st, int fd, const struct stat *sb,
			 const char *host_path, const char *image_path, const char *source)
{
	_cleanup_free_ char *dest = staged(st, image_path);
	int r;

	if (!dest)
		return -ENOMEM;
	r = make_parents(st, image_path);
	if (r == 0) {
		unlink(dest);
		r = fs_copy_fd(fd, dest, sb->st_mode & 07777);
	}
	if (r == 0)
		chmod(dest, sb->st_mode & 07777); /* undo the umask */
	if (r < 0)
		return error_set(st->ret_error, r, "copying %s into the image as %s: %s", host_path,
				 image_path, strerror(-r));
	return note_origin(st, image_path, source);
}

/* Copies a host file that vmhpc itself chose (the closure, its own binaries). */
static int stage_file(struct build_state *st, const char *host_path, const char *image_path,
		      const char *source)
{
	_cleanup_close_ int fd = open(host_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat sb;

	if (fd < 0 || fstat(fd, &sb) < 0)
		return error_set(st->ret_error, -errno, "%s: %s", host_path, strerror(errno));
	if (!S_ISREG(sb.st_mode))
		return error_set(st->ret_error, -EINVAL, "%s is not a regular file", host_path);
	return stage_file_fd(st, fd, &sb, host_path, image_path, source);
}

/* The spec's files and tree are read with its author's rights (st->identity), so that root
 * building through sudo cannot copy what the user could not read. Each call switches
 * this thread's fs identity around one system call: staging writes into the store's
 * private work directory, which needs our own rights. */
static int src_openat(const struct build_state *st, int dir_fd, const char *name, int flags)
{
	struct fs_identity_saved saved;
	int fd, r;

	r = fs_identity_enter(st->identity, &saved);
	if (r < 0)
		return r;
	fd = openat(dir_fd, name, flags | O_CLOEXEC);
	r = fd < 0 ? -errno : fd;
	fs_identity_leave(&saved);
	return r;
}

static int src_lstatat(const struct build_state *st, int dir_fd, const char *name, struct stat *ret)
{
	struct fs_identity_saved saved;
	int r;

	r = fs_identity_enter(st->identity, &saved);
	if (r < 0)
		return r;
	r = fstatat(dir_fd, name, ret, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	fs_identity_leave(&saved);
	return r;
}

static ssize_t src_readlinkat(const struct build_state *st, int dir_fd, const char *name, char *buf,
			      size_t size)
{
	struct fs_identity_saved saved;
	ssize_t n;
	int r;

	r = fs_identity_enter(st->identity, &saved);
	if (r < 0)
		return r;
	n = readlinkat(dir_fd, name, buf, size);
	if (n < 0)
		n = -errno;
	fs_identity_leave(&saved);
	return n;
}

static int stage_symlink(struct build_state *st, const char *image_path, const char *target,
			 const char *source)
{
	_cleanup_free_ char *dest = staged(st, image_path);
	int r;

	if (!dest)
		return -ENOMEM;
	if (fs_exists(dest))
		return 0;
	r = make_parents(st, image_path);
	if (r == 0 && symlink(target, dest) < 0)
		r = -errno;
	if (r < 0)
		return error_set(st->ret_error, r, "linking %s in the image: %s", image_path,
				 strerror(-r));
	return source ? note_origin(st, image_path, source) : 0;
}

/* Target for a link at link_path to target_path, relative when they share a directory. */
static char *link_target(const char *link_path, const char *target_path)
{
	const char *ls = strrchr(link_path, '/'), *ts = strrchr(target_path, '/');

	if (ls && ts && ls - link_path == ts - target_path &&
	    strncmp(link_path, target_path, (size_t)(ls - link_path)) == 0)
		return strdup(ts + 1);
	return strdup(target_path);
}

/* Copies the host directory open at dir_fd (taken over; host_dir names it in messages)
 * into the image at image_dir: regular files, directories, symlinks; device nodes,
 * sockets and fifos are skipped (/dev is a devtmpfs in the guest). Every entry is opened
 * without following links and checked on the fd, so that a file swapped for a fifo or
 * a link meanwhile is never read. */
static int stage_tree_fd(struct build_state *st, int dir_fd, const char *host_dir,
			 const char *image_dir, const char *source, unsigned depth)
{
	DIR *d;
	struct dirent *de;
	int r = 0;

	if (depth > 64) {
		close(dir_fd);
		return error_set(st->ret_error, -ELOOP, "%s: directories nested too deep",
				 host_dir);
	}
	d = fdopendir(dir_fd);
	if (!d) {
		r = -errno;
		close(dir_fd);
		return error_set(st->ret_error, r, "%s: %s", host_dir, strerror(-r));
	}
	{
		_cleanup_free_ char *dir = staged(st, image_dir);

		r = dir ? fs_mkdir_p(dir, 0755) : -ENOMEM;
	}
	while (r == 0 && (de = readdir(d))) {
		_cleanup_free_ char *src = NULL, *dst = NULL;
		struct stat sb;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		src = fs_path_join(host_dir, de->d_name);
		dst = fs_path_join(image_dir, de->d_name);
		if (!src || !dst) {
			r = -ENOMEM;
			break;
		}
		r = src_lstatat(st, dirfd(d), de->d_name, &sb);
		if (r < 0) {
			r = error_set(st->ret_error, r, "%s: %s", src, strerror(-r));
			break;
		}
		if (S_ISDIR(sb.st_mode)) {
			int fd = src_openat(st, dirfd(d), de->d_name,
					    O_RDONLY | O_DIRECTORY | O_NOFOLLOW);

			if (fd < 0) {
				r = error_set(st->ret_error, fd, "%s: %s", src, strerror(-fd));
				break;
			}
			r = stage_tree_fd(st, fd, src, dst, source, depth + 1);
			if (r == 0) {
				_cleanup_free_ char *sd = staged(st, dst);

				if (sd)
					chmod(sd, sb.st_mode & 07777);
			}
		} else if (S_ISLNK(sb.st_mode)) {
			char target[PATH_MAX];
			ssize_t n =
			    src_readlinkat(st, dirfd(d), de->d_name, target, sizeof(target) - 1);

			if (n < 0) {
				r = error_set(st->ret_error, (int)n, "%s: %s", src,
					      strerror((int)-n));
				break;
			}
			target[n] = '\0';
			r = stage_symlink(st, dst, target, source);
		} else if (S_ISREG(sb.st_mode)) {
			_cleanup_close_ int fd = src_openat(st, dirfd(d), de->d_name,
							    O_RDONLY | O_NOFOLLOW | O_NONBLOCK);

			if (fd < 0 || fstat(fd, &sb) < 0) {
				r = fd < 0 ? fd : -errno;
				r = error_set(st->ret_error, r, "%s: %s", src, strerror(-r));
				break;
			}
			if (!S_ISREG(sb.st_mode)) {
				r = error_set(st->ret_error, -EINVAL,
					      "%s changed while the image was built (it is no "
					      "longer a regular file); build again",
					      src);
				break;
			}
			r = stage_file_fd(st, fd, &sb, src, dst, source);
		} else {
			log_debug("skipping special file %s", src);
		}
	}
	closedir(d);
	return r;
}

static const char *file_type_name(mode_t mode)
{
	return S_ISCHR(mode)	? "character device"
	       : S_ISBLK(mode)	? "block device"
	       : S_ISFIFO(mode) ? "fifo"
	       : S_ISSOCK(mode) ? "socket"
				: "special file";
}

/* One [root] files source (a file, a directory, or a link to either; read with the spec
 * author's rights) into the image at image_path. A device or fifo is refused: /dev/zero
 * never ends and a fifo may never start. O_NONBLOCK lets the open of a fifo return at
 * once, so that fstat can refuse it. */
static int stage_source(struct build_state *st, const char *host_path, const char *image_path)
{
	_cleanup_close_ int fd = -1;
	struct stat sb;

	fd = src_openat(st, AT_FDCWD, host_path, O_RDONLY | O_NONBLOCK);
	if (fd < 0)
		return error_set(st->ret_error, fd,
				 "[root] files: %s: %s; check the path (relative paths start at "
				 "the spec's folder)%s",
				 host_path, strerror(-fd),
				 fd == -EACCES && st->identity
				     ? " and that you, the user building, may read it"
				     : "");
	if (fstat(fd, &sb) < 0)
		return error_set(st->ret_error, -errno, "%s: %s", host_path, strerror(errno));
	if (S_ISDIR(sb.st_mode))
		return stage_tree_fd(st, TAKE_FD(fd), host_path, image_path, "spec", 0);
	if (!S_ISREG(sb.st_mode))
		return error_set(st->ret_error, -EINVAL,
				 "[root] files: %s is a %s; name regular files, directories or "
				 "links to them (copy what you need into a file first)",
				 host_path, file_type_name(sb.st_mode));
	return stage_file_fd(st, fd, &sb, host_path, image_path, "spec");
}

/* Adds the regular files (and links) of a plugin directory, found in the first layer
 * that has it, to the request list. */
static int collect_plugin_dir(const struct rootfs_layer *layers, size_t n_layers,
			      const char *image_dir, char ***paths, size_t *n_paths,
			      char **ret_error)
{
	for (size_t l = 0; l < n_layers; l++) {
		_cleanup_free_ char *merged = closure_usrmerge_path(image_dir);
		const char *candidates[2] = {image_dir, merged};

		for (int c = 0; c < 2; c++) {
			_cleanup_free_ char *dir =
			    candidates[c] ? fs_path_join(layers[l].root, candidates[c]) : NULL;
			struct dirent **names = NULL;
			int count;

			if (!dir)
				continue;
			count = scandir(dir, &names, NULL, alphasort);
			if (count < 0)
				continue;
			for (int i = 0; i < count; i++) {
				_cleanup_free_ char *full = fs_path_join(dir, names[i]->d_name);
				struct stat sb;

				if (full && names[i]->d_name[0] != '.' && stat(full, &sb) == 0 &&
				    S_ISREG(sb.st_mode)) {
					char **grown =
					    realloc(*paths, (*n_paths + 1) * sizeof(*grown));

					if (grown) {
						*paths = grown;
						grown[*n_paths] =
						    fs_path_join(image_dir, names[i]->d_name);
						if (grown[*n_paths])
							(*n_paths)++;
					}
				}
				free(names[i]);
			}
			free(names);
			return 0;
		}
	}
	return error_set(ret_error, -ENOENT,
			 "plugin directory %s is in none of the spec's packages, its tree, nor on "
			 "this machine; check [root] plugin_dirs or add the package that ships it",
			 image_dir);
}

/* Copies one of the user's own programs (binaries = ./PATH, read with the spec author's
 * rights) into the layer at own_root, at its place in the image, and checks it is an x86-64
 * ELF program or library. Errors name the spec line. */
static int stage_program(struct build_state *st, const struct image_spec *spec,
			 const struct spec_program *prog, const char *own_root)
{
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *dest = NULL, *where = NULL;
	struct elf_info *info = NULL;
	struct stat sb;
	int r;

	if (asprintf(&where, "%s:%u: binaries %s (%s)", spec->origin, prog->line, prog->given,
		     prog->src) < 0)
		return -ENOMEM;
	fd = src_openat(st, AT_FDCWD, prog->src, O_RDONLY | O_NONBLOCK);
	if (fd < 0)
		return error_set(st->ret_error, fd,
				 "%s: %s; build the program first or fix the path (relative "
				 "to the spec's folder)%s",
				 where, strerror(-fd),
				 fd == -EACCES && st->identity
				     ? " and check that you, the user building, may read it"
				     : "");
	if (fstat(fd, &sb) < 0)
		return error_set(st->ret_error, -errno, "%s: %s", where, strerror(errno));
	if (S_ISDIR(sb.st_mode))
		return error_set(st->ret_error, -EISDIR,
				 "%s is a directory; name the program file in it", where);
	if (!S_ISREG(sb.st_mode))
		return error_set(st->ret_error, -EINVAL, "%s is a %s; name a program file", where,
				 file_type_name(sb.st_mode));
	if (!(sb.st_mode & 0111))
		return error_set(st->ret_error, -EACCES,
				 "%s is not executable; name a program (built, or chmod +x), "
				 "and put data in [root] files",
				 where);
	dest = fs_path_join(own_root, prog->dest);
	if (!dest)
		return -ENOMEM;
	r = fs_mkdir_p(own_root, 0700);
	if (r == 0) {
		_cleanup_free_ char *dir = fs_path_join(own_root, SPEC_PROGRAM_DIR);

		r = dir ? fs_mkdir_p(dir, 0755) : -ENOMEM;
	}
	if (r == 0)
		r = fs_copy_fd(fd, dest, sb.st_mode & 0755);
	if (r < 0)
		return error_set(st->ret_error, r, "%s: copying it: %s", where, strerror(-r));
	r = elf_read_file(dest, &info);
	elf_info_free(info);
	if (r == -ENOEXEC)
		return error_set(st->ret_error, r,
				 "%s is not an ELF program or library; put scripts and data in "
				 "[root] files",
				 where);
	if (r == -ENOTSUP)
		return error_set(st->ret_error, r,
				 "%s is built for another architecture; vmhpc images are x86-64",
				 where);
	if (r == -EBADMSG)
		return error_set(st->ret_error, r,
				 "%s is a damaged ELF file (truncated or inconsistent headers); "
				 "build it again",
				 where);
	if (r < 0)
		return error_set(st->ret_error, r, "%s: %s", where, strerror(-r));
	return 0;
}

static int stage_closure(struct build_state *st, const struct image_spec *spec,
			 const struct rootfs_layer *layers, size_t n_layers, json_t *libraries,
			 json_t *host_sources)
{
	/* The user's own programs (binaries = ./PATH) are copied into a layer of their own,
	 * first in the list: the closure then finds them where they go in the image and
	 * resolves their libraries like any binary's (the packages first, the host last). */
	const size_t own = spec->n_programs > 0 ? 1 : 0;
	_cleanup_free_ char *own_root = fs_path_join(st->work_dir, "programs");
	struct closure_layer *cl = calloc(n_layers + own, sizeof(*cl));
	char **paths = NULL;
	size_t n_paths = 0;
	struct closure c = {0};
	int r = 0;

	if (!cl || !own_root) {
		free(cl);
		return -ENOMEM;
	}
	if (own)
		cl[0].root = own_root;
	for (size_t l = 0; l < n_layers; l++)
		cl[own + l].root = layers[l].root;
	for (size_t i = 0; i < spec->n_programs && r == 0; i++) {
		char **grown;

		r = stage_program(st, spec, &spec->programs[i], own_root);
		if (r < 0)
			break;
		grown = realloc(paths, (n_paths + 1) * sizeof(*grown));
		if (!grown) {
			r = -ENOMEM;
			break;
		}
		paths = grown;
		paths[n_paths] = strdup(spec->programs[i].dest);
		r = paths[n_paths++] ? 0 : -ENOMEM;
	}
	for (size_t i = 0; i < spec->n_binaries && r == 0; i++) {
		char **grown = realloc(paths, (n_paths + 1) * sizeof(*grown));

		if (!grown) {
			r = -ENOMEM;
			break;
		}
		paths = grown;
		paths[n_paths] = strdup(spec->binaries[i]);
		r = paths[n_paths++] ? 0 : -ENOMEM;
	}
	/* A binary must be a program or library for this machine: a script or data file
	 * belongs in [root] files, where nothing is resolved. */
	for (size_t i = 0; i < spec->n_binaries && r == 0; i++) {
		_cleanup_free_ char *host = NULL, *real = NULL;
		struct elf_info *info = NULL;
		size_t layer;

		r = closure_lookup(cl + own, n_layers, spec->binaries[i], &host, &real, &layer);
		if (r == -ENOENT) {
			r = error_set(
			    st->ret_error, r,
			    "[root] binaries: %s is in none of the spec's packages, its tree, "
			    "nor on this machine; check the path or add the package that "
			    "ships it",
			    spec->binaries[i]);
			break;
		}
		if (r == 0)
			r = elf_read_file(host, &info);
		elf_info_free(info);
		if (r == -ENOEXEC)
			r = error_set(st->ret_error, r,
				      "[root] binaries: %s (found at %s) is not an ELF program or "
				      "library; put scripts and data in [root] files",
				      spec->binaries[i], host);
		else if (r == -ENOTSUP)
			r = error_set(st->ret_error, r,
				      "[root] binaries: %s (found at %s) is built for another "
				      "architecture; vmhpc images are x86-64",
				      spec->binaries[i], host);
		else if (r < 0)
			r = error_set(st->ret_error, r, "[root] binaries: %s (%s): %s",
				      spec->binaries[i], host ? host : "?", strerror(-r));
	}
	for (size_t i = 0; i < spec->n_plugin_dirs && r == 0; i++)
		r = collect_plugin_dir(layers, n_layers, spec->plugin_dirs[i], &paths, &n_paths,
				       st->ret_error);
	if (r == 0 && n_paths > 0) {
		r = closure_resolve(cl, n_layers + own, paths, n_paths, &c, st->ret_error);
		if (r < 0 && st->ret_error && !*st->ret_error)
			error_set(st->ret_error, r, "resolving the binaries' libraries: %s",
				  strerror(-r));
	}
	for (size_t i = 0; r == 0 && i < c.n_files; i++) {
		const struct closure_file *f = &c.files[i];
		const char *source = f->layer < own ? "spec" : layers[f->layer - own].source;

		r = stage_file(st, f->host_path, f->real_image_path, source);
		if (r == 0 && strcmp(f->image_path, f->real_image_path) != 0) {
			_cleanup_free_ char *target =
			    link_target(f->image_path, f->real_image_path);

			r = target ? stage_symlink(st, f->image_path, target, source) : -ENOMEM;
		}
		if (r == 0 && strcmp(source, "host") == 0)
			json_object_set_new(host_sources, f->host_path, json_null());
		if (r == 0 && f->is_elf) {
			struct elf_info *info = NULL;

			if (elf_read_file(f->host_path, &info) == 0 && info->soname) {
				const char *base = strrchr(f->real_image_path, '/') + 1;
				const char *so = strstr(base, ".so.");

				json_object_set_new(libraries, info->soname,
						    json_pack("{s:s, s:s, s:s}", "file", base,
							      "version", so ? so + 4 : "", "source",
							      source));
			}
			elf_info_free(info);
		}
	}
	closure_done(&c);
	for (size_t i = 0; i < n_paths; i++)
		free(paths[i]);
	free(paths);
	free(cl);
	return r;
}

/* Adds busybox's applet links (sh, ls, mount, ...) where nothing else has that name. */
static int stage_busybox_links(struct build_state *st)
{
	_cleanup_free_ char *busybox = staged(st, "/usr/bin/busybox");
	_cleanup_free_ char *out = NULL;
	char *argv[] = {busybox, "--list-full", NULL};
	char *save = NULL;
	int code, r;

	if (!busybox || !fs_exists(busybox))
		return 0;
	/* busybox-static has no libraries, so running the staged copy is safe here. */
	r = proc_run(argv, NULL, &out, NULL, &code);
	if (r < 0 || code != 0) {
		log_warning("busybox --list-full failed; the image gets no applet links");
		return 0;
	}
	for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		_cleanup_free_ char *abs = NULL, *merged = NULL;

		if (asprintf(&abs, "/%s", line) < 0)
			return -ENOMEM;
		merged = closure_usrmerge_path(abs);
		if (!merged)
			return -ENOMEM;
		r = stage_symlink(st, merged, "/usr/bin/busybox", "busybox applet");
		if (r < 0)
			return r;
	}
	return 0;
}

static int stage_text(struct build_state *st, const char *image_path, const char *text)
{
	_cleanup_free_ char *dest = staged(st, image_path);
	_cleanup_close_ int fd = -1;
	int r;

	if (!dest)
		return -ENOMEM;
	if (fs_exists(dest))
		return 0; /* the user's tree or files win */
	r = make_parents(st, image_path);
	if (r < 0)
		return r;
	fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	return fs_write_all(fd, text, strlen(text));
}

static int stage_base(struct build_state *st, const struct image_spec *spec)
{
	static const char *const dirs[] = {"/usr/bin", "/usr/sbin",  "/usr/lib", "/usr/lib64",
					   "/proc",    "/sys",	     "/dev",	 "/run",
					   "/tmp",     "/mnt",	     "/home",	 "/root",
					   "/var/tmp", "/etc/vmhpc", "/job"};
	static const char *const merged[][2] = {{"/bin", "usr/bin"},
						{"/sbin", "usr/sbin"},
						{"/lib", "usr/lib"},
						{"/lib64", "usr/lib64"}};
	_cleanup_free_ char *os_release = NULL;
	int r = 0;

	for (size_t i = 0; i < ARRAY_SIZE(dirs) && r == 0; i++) {
		_cleanup_free_ char *d = staged(st, dirs[i]);

		r = d ? fs_mkdir_p(d, 0755) : -ENOMEM;
	}
	for (size_t i = 0; i < ARRAY_SIZE(merged) && r == 0; i++)
		r = stage_symlink(st, merged[i][0], merged[i][1], NULL);
	if (r < 0)
		return r;
	{
		_cleanup_free_ char *tmp = staged(st, "/tmp"), *vtmp = staged(st, "/var/tmp");

		if (tmp)
			chmod(tmp, 01777);
		if (vtmp)
			chmod(vtmp, 01777);
	}
	if (asprintf(&os_release, "NAME=\"vmhpc %s\"\nID=vmhpc\nVARIANT_ID=%s\nIMAGE_ID=%s\n",
		     spec->os, spec->os, spec->name) < 0)
		return -ENOMEM;
	if ((r = stage_text(st, "/etc/passwd",
			    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/"
			    "nonexistent:/bin/false\n")) < 0 ||
	    (r = stage_text(st, "/etc/group", "root:x:0:\nnogroup:x:65534:\n")) < 0 ||
	    (r = stage_text(st, "/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")) < 0 ||
	    (r = stage_text(st, "/etc/nsswitch.conf",
			    "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")) <
		0 ||
	    (r = stage_text(st, "/etc/os-release", os_release)) < 0)
		return error_set(st->ret_error, r, "writing /etc into the image: %s", strerror(-r));
	return 0;
}

/* Walks the staging tree: fixes times, sizes the file system and writes the index. */
static int walk_staged(struct build_state *st, const char *image_dir)
{
	_cleanup_free_ char *dir = staged(st, image_dir);
	struct dirent **names = NULL;
	int count, r = 0;

	if (!dir)
		return -ENOMEM;
	count = scandir(dir, &names, NULL, alphasort);
	if (count < 0)
		return -errno;
	for (int i = 0; i < count; i++) {
		_cleanup_free_ char *ipath = NULL, *hpath = NULL;
		struct timespec times[2] = {{ROOTFS_FIXED_TIME_S, 0}, {ROOTFS_FIXED_TIME_S, 0}};
		char type[2] = "f", target[PATH_MAX] = "";
		struct stat sb;
		json_t *entry;

		if (r < 0 || strcmp(names[i]->d_name, ".") == 0 ||
		    strcmp(names[i]->d_name, "..") == 0) {
			free(names[i]);
			continue;
		}
		if (asprintf(&ipath, "%s%s%s", image_dir, strcmp(image_dir, "/") == 0 ? "" : "/",
			     names[i]->d_name) < 0)
			ipath = NULL;
		free(names[i]);
		hpath = ipath ? staged(st, ipath) : NULL;
		if (!hpath || lstat(hpath, &sb) < 0) {
			r = hpath ? -errno : -ENOMEM;
			continue;
		}
		st->n_inodes++;
		if (S_ISDIR(sb.st_mode)) {
			type[0] = 'd';
			st->alloc_blocks += 1;
			r = walk_staged(st, ipath);
		} else if (S_ISLNK(sb.st_mode)) {
			ssize_t n = readlink(hpath, target, sizeof(target) - 1);

			type[0] = 'l';
			target[n > 0 ? n : 0] = '\0';
			if (n >= 60)
				st->alloc_blocks += 1;
		} else {
			st->content_bytes += (uint64_t)sb.st_size;
			st->alloc_blocks +=
			    ((uint64_t)sb.st_size + ROOTFS_BLOCK_BYTES - 1) / ROOTFS_BLOCK_BYTES;
		}
		utimensat(AT_FDCWD, hpath, times, AT_SYMLINK_NOFOLLOW);
		entry = json_pack("{s:s, s:s, s:i, s:I, s:s}", "path", ipath, "type", type, "mode",
				  (int)(sb.st_mode & 07777), "size",
				  (json_int_t)(S_ISREG(sb.st_mode) ? sb.st_size : 0), "source",
				  find_origin(st, ipath));
		if (entry && type[0] == 'l')
			json_object_set_new(entry, "target", json_string(target));
		if (!entry || json_array_append_new(st->index, entry) < 0)
			r = -ENOMEM;
	}
	free(names);
	return r;
}

static int run_mke2fs(struct build_state *st, const struct image_spec *spec, const char *image,
		      uint64_t blocks)
{
	_cleanup_free_ char *blocks_s = NULL, *inodes_s = NULL, *err = NULL, *last = NULL;
	_cleanup_free_ char *ext = NULL;
	unsigned char digest[32];
	char uuid[37];
	char *env[] = {"E2FSPROGS_FAKE_TIME=" ROOTFS_FIXED_TIME_STRING, NULL};
	struct proc_options opts = {.extra_env = env, .stdout_fd = -1};
	int r, code;

	/* A UUID and hash seed derived from the name keep equal inputs byte-identical. */
	store_id_compute(spec->name, strlen(spec->name), digest);
	snprintf(uuid, sizeof(uuid),
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", digest[0],
		 digest[1], digest[2], digest[3], digest[4], digest[5], (digest[6] & 0x0f) | 0x40,
		 digest[7], (digest[8] & 0x3f) | 0x80, digest[9], digest[10], digest[11],
		 digest[12], digest[13], digest[14], digest[15]);
	if (asprintf(&blocks_s, "%" PRIu64, blocks) < 0 ||
	    asprintf(&inodes_s, "%" PRIu64, st->n_inodes + 256) < 0 ||
	    asprintf(&ext, "root_owner=0:0,hash_seed=%s", uuid) < 0)
		return -ENOMEM;
	{
		char *argv[] = {"mke2fs",
				"-q",
				"-F",
				"-t",
				"ext4",
				"-b",
				"4096",
				"-m",
				"0",
				"-I",
				"256",
				"-N",
				inodes_s,
				"-O",
				"^has_journal,^resize_inode",
				"-U",
				uuid,
				"-E",
				ext,
				"-L",
				"vmhpc-root",
				"-d",
				(char *)st->staging,
				(char *)image,
				blocks_s,
				NULL};

		r = proc_run(argv, &opts, NULL, &err, &code);
	}
	if (r < 0)
		return error_set(st->ret_error, r, "running mke2fs: %s; install e2fsprogs",
				 strerror(-r));
	if (code != 0) {
		last = proc_last_line(err);
		return strstr(err, "space") || strstr(err, "Could not allocate")
			   ? -ENOSPC
			   : error_set(st->ret_error, -EIO, "mke2fs failed: %s", last ? last : "?");
	}
	return 0;
}

/* mke2fs -d copies each staged file's ctime, which is when this build staged it: the same
 * inputs would give other inode tables on every build. Setting every ctime to the fixed time
 * mke2fs uses for the rest makes equal inputs give byte-equal roots again (`vmhpc image
 * update` knows "nothing changed" by that). debugfs writes the inode checksums. */
static bool has_control_char(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

static int fix_ctimes(struct build_state *st, const char *work_dir, const char *image)
{
	_cleanup_free_ char *script = fs_path_join(work_dir, "ctimes.debugfs");
	_cleanup_free_ char *err = NULL, *last = NULL;
	_cleanup_fclose_ FILE *f = NULL;
	/* The superblock's write time too: libext2fs takes the fixed time from the env. */
	char *env[] = {"E2FSPROGS_FAKE_TIME=" ROOTFS_FIXED_TIME_STRING, NULL};
	struct proc_options opts = {.extra_env = env, .stdout_fd = -1};
	char *argv[] = {"debugfs", "-w", "-f", script, (char *)image, NULL};
	size_t i;
	json_t *e;
	int r, code;

	if (!script)
		return -ENOMEM;
	f = fopen(script, "we");
	if (!f)
		return -errno;
	fprintf(f, "sif / ctime @%d\n", ROOTFS_FIXED_TIME_S);
	json_array_foreach(st->index, i, e)
	{
		const char *path = json_string_value(json_object_get(e, "path"));

		/* debugfs reads one line per command and a quoted path: a name with a quote
		 * or a control character keeps its ctime (only its inode's bytes vary). */
		if (!path || strpbrk(path, "\"\\") || has_control_char(path))
			continue;
		fprintf(f, "sif \"%s\" ctime @%d\n", path, ROOTFS_FIXED_TIME_S);
	}
	if (fflush(f) != 0 || ferror(f))
		return -EIO;
	r = proc_run(argv, &opts, NULL, &err, &code);
	if (r < 0)
		return error_set(st->ret_error, r, "running debugfs: %s; install e2fsprogs",
				 strerror(-r));
	/* debugfs exits 0 whatever a command said: its complaints name the command. */
	if (code != 0 || (err && strstr(err, "sif:"))) {
		last = err ? proc_last_line(err) : NULL;
		return error_set(st->ret_error, -EIO, "setting the root's inode times: %s",
				 last ? last : "debugfs failed");
	}
	return 0;
}

void rootfs_result_done(struct rootfs_result *r)
{
	free(r->image_path);
	free(r->index_json);
	json_decref(r->libraries);
	json_decref(r->host_sources);
	memset(r, 0, sizeof(*r));
}

static int fill_host_owners(json_t *host_sources)
{
	size_t n = json_object_size(host_sources), i = 0;
	char **paths = calloc(n ? n : 1, sizeof(char *)), **owners = NULL;
	const char *key;
	json_t *value;
	int r;

	if (!paths)
		return -ENOMEM;
	json_object_foreach(host_sources, key, value) paths[i++] = (char *)key;
	r = deb_host_owners(paths, n, &owners);
	for (i = 0; r == 0 && i < n; i++) {
		json_object_set_new(host_sources, paths[i],
				    owners[i] ? json_string(owners[i]) : json_null());
		free(owners[i]);
	}
	free(owners);
	free(paths);
	return r;
}

int rootfs_build(const struct image_spec *spec, const struct rootfs_layer *layers, size_t n_layers,
		 const struct spec_file *own_files, size_t n_own_files,
		 const struct fs_identity *source_identity, const char *work_dir,
		 struct rootfs_result *ret, char **ret_error)
{
	struct build_state st = {.ret_error = ret_error, .identity = source_identity};
	_cleanup_free_ char *staging = fs_path_join(work_dir, "root");
	_cleanup_free_ char *image = fs_path_join(work_dir, "root.ext4");
	json_t *libraries = json_object(), *host_sources = json_object();
	uint64_t blocks;
	int r;

	memset(ret, 0, sizeof(*ret));
	st.index = json_array();
	if (!staging || !image || !libraries || !host_sources || !st.index) {
		r = -ENOMEM;
		goto out;
	}
	st.staging = staging;
	st.work_dir = work_dir;
	r = fs_mkdir_p(staging, 0755);
	if (r < 0)
		goto out;
	if (spec->tree) {
		int fd = src_openat(&st, AT_FDCWD, spec->tree, O_RDONLY | O_DIRECTORY);

		if (fd < 0) {
			r = error_set(ret_error, fd, "%s: %s; check the path in the spec",
				      spec->tree, strerror(-fd));
			goto out;
		}
		r = stage_tree_fd(&st, fd, spec->tree, "/", "tree", 0);
		if (r < 0)
			goto out;
	}
	r = stage_base(&st, spec);
	if (r == 0)
		r = stage_closure(&st, spec, layers, n_layers, libraries, host_sources);
	for (size_t i = 0; r == 0 && i < spec->n_files; i++)
		r = stage_source(&st, spec->files[i].src, spec->files[i].dest);
	for (size_t i = 0; r == 0 && i < n_own_files; i++)
		r = stage_file(&st, own_files[i].src, own_files[i].dest, "vmhpc");
	if (r == 0)
		r = stage_busybox_links(&st);
	if (r == 0) {
		sort_origins(&st);
		r = walk_staged(&st, "/");
	}
	if (r == 0)
		r = fill_host_owners(host_sources);
	if (r < 0)
		goto out;
	/* Room for every block, inode tables and group metadata, and slack so that
	 * mke2fs never runs short; extra blocks cost nothing once chunked (zeros). */
	blocks = st.alloc_blocks + st.alloc_blocks / 8 +
		 (st.n_inodes + 256) * ROOTFS_INODE_BYTES / ROOTFS_BLOCK_BYTES + 4096;
	blocks = (blocks + 1023) / 1024 * 1024; /* whole 4 MiB steps */
	for (int attempt = 0; attempt < 3; attempt++) {
		r = run_mke2fs(&st, spec, image, blocks);
		if (r != -ENOSPC)
			break;
		unlink(image);
		blocks += blocks / 2;
	}
	if (r == -ENOSPC)
		r = error_set(ret_error, r,
			      "mke2fs ran out of space building the root image in %s; the disk "
			      "holding it may be full",
			      work_dir);
	if (r == 0)
		r = fix_ctimes(&st, work_dir, image);
	if (r < 0)
		goto out;
	ret->index_json = json_dumps(st.index, JSON_COMPACT);
	if (!ret->index_json) {
		r = -ENOMEM;
		goto out;
	}
	ret->image_path = TAKE_PTR(image);
	ret->image_bytes = blocks * ROOTFS_BLOCK_BYTES;
	ret->content_bytes = st.content_bytes;
	ret->n_entries = json_array_size(st.index);
	ret->libraries = TAKE_PTR(libraries);
	ret->host_sources = TAKE_PTR(host_sources);
	r = 0;
out:
	for (size_t i = 0; i < st.n_origins; i++) {
		free(st.origins[i].path);
		free(st.origins[i].source);
	}
	free(st.origins);
	json_decref(st.index);
	json_decref(libraries);
	json_decref(host_sources);
	if (r < 0 && ret_error && !*ret_error)
		error_set(ret_error, r, "building the root file system in %s: %s", work_dir,
			  strerror(-r));
	return r;
}
