#include "image/builder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "guest/frame.h"
#include "image/deb.h"
#include "image/initramfs.h"
#include "image/kbuild.h"
#include "image/kernel.h"
#include "image/lineage.h"
#include "image/rootfs.h"
#include "image/spec.h"
#include "store/catalog.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"

#define WORK_PREFIX "build-"
#define WORK_LOCK   ".lock"

void builder_result_done(struct builder_result *r)
{
	free(r->name);
	free(r->base_ref);
	memset(r, 0, sizeof(*r));
}

/* A work directory without a lock file is being set up (the lock appears by rename,
 * already locked) or was left by a build killed in those few system calls: only the
 * second kind gets old. */
#define WORK_SETUP_MAX_AGE_S 60

/* True when the work directory name under tmp_fd belongs to a build that died. */
static bool work_is_stale(int tmp_fd, const char *name)
{
	_cleanup_close_ int dir_fd = -1, lock_fd = -1;
	struct stat st;

	dir_fd = openat(tmp_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir_fd < 0)
		return false; /* gone, or not ours to judge */
	lock_fd = openat(dir_fd, WORK_LOCK, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (lock_fd >= 0)
		/* A live build holds its lock from before the file had this name. */
		return flock(lock_fd, LOCK_EX | LOCK_NB) == 0;
	if (errno != ENOENT || fstat(dir_fd, &st) < 0)
		return false;
	return time(NULL) - st.st_mtime >= WORK_SETUP_MAX_AGE_S;
}

int builder_clean_stale(struct store *s)
{
	_cleanup_free_ char *tmp = fs_path_join(store_path(s), "tmp");
	DIR *d = tmp ? opendir(tmp) : NULL;
	struct dirent *de;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		_cleanup_free_ char *dir = NULL;

		if (strncmp(de->d_name, WORK_PREFIX, strlen(WORK_PREFIX)) != 0)
			continue;
		if (!work_is_stale(dirfd(d), de->d_name))
			continue;
		dir = fs_path_join(tmp, de->d_name);
		if (!dir)
			continue;
		log_debug("removing %s, left by a build that did not finish", dir);
		fs_rm_rf(dir);
	}
	closedir(d);
	return 0;
}

/* Makes a private work directory under tmp and locks it for the build's life. The lock
 * file is created under another name, locked, then renamed to WORK_LOCK: a concurrent
 * builder_clean_stale() never sees an unlocked WORK_LOCK of a live build, and it leaves a
 * directory without one alone until it is old. (Creating and then locking WORK_LOCK in
 * place let a cleaner take the lock in between and remove a live build's directory.) */
static int work_dir_create(const char *tmp, char **ret_work, int *ret_lock_fd)
{
	_cleanup_free_ char *work = NULL;
	_cleanup_close_ int dir_fd = -1, fd = -1;
	int r;

	r = fs_mkdtemp(tmp, WORK_PREFIX, &work);
	if (r < 0)
		return r;
	dir_fd = open(work, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir_fd < 0) {
		r = -errno;
		goto fail;
	}
	fd = openat(dir_fd, WORK_LOCK ".new", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		    0600);
	if (fd < 0 || flock(fd, LOCK_EX) < 0 ||
	    renameat(dir_fd, WORK_LOCK ".new", dir_fd, WORK_LOCK) < 0) {
		r = -errno;
		goto fail;
	}
	*ret_work = TAKE_PTR(work);
	*ret_lock_fd = TAKE_FD(fd);
	return 0;
fail:
	fs_rm_rf(work);
	return r;
}

struct progress {
	bool enabled;
	const char *stage;
	uint64_t total_bytes;
};

static void progress_update(uint64_t done_bytes, void *userdata)
{
	struct progress *p = userdata;

	if (!p->enabled || p->total_bytes == 0)
		return;
	fprintf(stderr, "\r  %-10s %3u%%", p->stage, (unsigned)(done_bytes * 100 / p->total_bytes));
	fflush(stderr);
}

static void progress_stage(struct progress *p, const char *stage, const char *detail)
{
	p->stage = stage;
	if (p->enabled)
		fprintf(stderr, "\r\033[K");
	log_info("build: %s", detail);
}

static int put_file(struct store *s, const char *path, const struct builder_options *opts,
		    struct store_part *part, struct store_put_stats *stats, struct progress *p)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t size;
	int r;

	if (fd < 0)
		return -errno;
	size = lseek(fd, 0, SEEK_END);
	lseek(fd, 0, SEEK_SET);
	p->total_bytes = size > 0 ? (uint64_t)size : 0;
	r = store_put_fd(s, fd, &opts->chunking, part, stats, progress_update, p);
	if (p->enabled)
		fprintf(stderr, "\r\033[K");
	return r;
}

/* Who the version belongs to: whose rights read the spec's sources (the user root builds for
 * through sudo), else this process's user. */
static char *owner_name(const struct fs_identity *identity)
{
	uid_t uid = identity ? identity->uid : getuid();
	struct passwd *pw = getpwuid(uid);
	char *out = NULL;

	if (pw)
		return strdup(pw->pw_name);
	if (asprintf(&out, "uid %u", (unsigned)uid) < 0)
		return NULL;
	return out;
}

/* Explains a storage error the way the user can act on it. */
static int storage_error(char **ret_error, int r, struct store *s, const char *what)
{
	if (r == -ENOSPC || r == -EDQUOT)
		return error_set(ret_error, r,
				 "no space left on the device holding the store %s (%s); free some "
				 "space or run `vmhpc image gc`, then build again",
				 store_path(s), what);
	return error_set(ret_error, r, "store %s: %s: %s", store_path(s), what, strerror(-r));
}

static int build_into(struct store *s, const struct builder_options *opts,
		      const struct image_spec *spec, const char *work, struct manifest *m,
		      struct builder_result *ret, char **ret_error)
{
	struct progress prog = {.enabled = opts->progress};
	struct store_put_stats stats = {0};
	struct kernel_tree *k = NULL;
	struct deb_package **pkgs = NULL;
	char **labels = NULL;
	struct rootfs_layer *layers = NULL;
	struct rootfs_result root = {0};
	char **module_paths = NULL;
	size_t n_modules = 0, n_layers = 0;
	void *initrd = NULL;
	size_t initrd_len = 0, initrd_plain = 0;
	json_t *packages = json_object();
	int r;

	if (!packages)
		return -ENOMEM;
	if (spec->kernel_source) {
		struct kbuild_options ko = {.cache_dir = opts->cache_dir,
					    .source = spec->kernel_source,
					    .fragment_path = opts->kernel_config};
		_cleanup_free_ char *kdir = NULL;

		progress_stage(&prog, "kernel", "building the kernel, or taking it from the cache");
		r = kbuild_ensure(&ko, &kdir, ret_error);
		if (r == 0)
			r = kernel_from_build(kdir, spec->kernel_source, &k, ret_error);
	} else {
		progress_stage(&prog, "kernel", "fetching the kernel");
		r = kernel_fetch(opts->cache_dir, spec->kernel_package, &k, ret_error);
	}
	if (r < 0)
		goto out;
	json_object_set_new(packages, k->package, json_string(k->version));
	r = kernel_resolve_modules(k, spec->modules, spec->n_modules, &module_paths, &n_modules,
				   ret_error);
	if (r < 0)
		goto out;

	labels = calloc(spec->n_packages + 1, sizeof(*labels));
	layers = calloc(spec->n_packages + 2, sizeof(*layers));
	if (!labels || !layers) {
		r = -ENOMEM;
		goto out;
	}
	progress_stage(&prog, "packages", "fetching packages");
	r = deb_fetch_many(opts->cache_dir, spec->packages, spec->n_packages, &pkgs, ret_error);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < spec->n_packages; i++) {
		json_object_set_new(packages, pkgs[i]->name, json_string(pkgs[i]->version));
		/* The index names a package file's source "package version". */
		if (asprintf(&labels[i], "%s %s", pkgs[i]->name, pkgs[i]->version) < 0) {
			labels[i] = NULL;
			r = -ENOMEM;
			goto out;
		}
		layers[n_layers].root = pkgs[i]->root;
		layers[n_layers++].source = labels[i];
	}
	if (spec->tree) {
		layers[n_layers].root = spec->tree;
		layers[n_layers++].source = "tree";
	}
	layers[n_layers].root = "/";
	layers[n_layers++].source = "host";

	progress_stage(&prog, "initramfs", "building the boot initramfs");
	r = initramfs_build(opts->init_path, k, module_paths, n_modules, &initrd, &initrd_len,
			    &initrd_plain);
	if (r < 0) {
		r = error_set(ret_error, r, "building the initramfs from %s: %s", opts->init_path,
			      strerror(-r));
		goto out;
	}

	progress_stage(&prog, "root", "building the root file system");
	{
		const struct spec_file own[] = {{(char *)opts->exec_path, "/usr/bin/vmhpc-exec"}};

		r = rootfs_build(spec, layers, n_layers, own, ARRAY_SIZE(own),
				 opts->source_identity, work, &root, ret_error);
	}
	if (r == -ENOSPC || r == -EDQUOT) {
		/* The work directory lives in the store: say so, not which file hit it. */
		free(*ret_error);
		*ret_error = NULL;
		r = storage_error(ret_error, r, s, "building the root file system");
	}
	if (r < 0)
		goto out;

	progress_stage(&prog, "storing", "storing the parts as chunks");
	prog.stage = "kernel";
	r = put_file(s, k->vmlinuz_path, opts, &m->parts[MANIFEST_PART_KERNEL], &stats, &prog);
	if (r == 0)
		r = store_put_buffer(s, initrd, initrd_len, &opts->chunking,
				     &m->parts[MANIFEST_PART_INITRAMFS], &stats);
	prog.stage = "root";
	if (r == 0)
		r = put_file(s, root.image_path, opts, &m->parts[MANIFEST_PART_ROOT], &stats,
			     &prog);
	if (r == 0)
		r = store_put_buffer(s, root.index_json, strlen(root.index_json), &opts->chunking,
				     &m->parts[MANIFEST_PART_INDEX], &stats);
	if (r < 0) {
		r = storage_error(ret_error, r, s, "writing chunks");
		goto out;
	}

	json_object_set_new(m->metadata, "os", json_string(spec->os));
	json_object_set_new(m->metadata, "arch", json_string("x86_64"));
	json_object_set_new(m->metadata, "kernel_release", json_string(k->release));
	json_object_set_new(m->metadata, "kernel_package", json_string(k->package));
	/* QEMU boots an ELF vmlinux through its PVH entry, a bzImage through SeaBIOS. */
	json_object_set_new(m->metadata, "kernel_boot", json_string(k->pvh ? "pvh" : "bzimage"));
	json_object_set_new(m->metadata, "packages", json_incref(packages));
	json_object_set_new(m->metadata, "libraries", json_incref(root.libraries));
	json_object_set_new(m->metadata, "host_files", json_incref(root.host_sources));
	json_object_set_new(m->metadata, "root_fs", json_string("ext4"));
	/* The exec protocol the image's vmhpc-init speaks: built from this tree, ours. */
	json_object_set_new(m->metadata, "guest_protocol", json_integer(FRAME_PROTO_VERSION));
	json_object_set_new(m->metadata, "root_content_bytes",
			    json_integer((json_int_t)root.content_bytes));
	json_object_set_new(m->metadata, "root_files", json_integer((json_int_t)root.n_entries));
	json_object_set_new(m->metadata, "initramfs_modules", json_integer((json_int_t)n_modules));
	if (spec->description)
		json_object_set_new(m->metadata, "description", json_string(spec->description));
	{
		/* The programs the spec asked for (image paths), for matching:
		 * has("mpiexec.hydra"). */
		json_t *bins = json_array();

		for (size_t i = 0; i < spec->n_binaries; i++)
			json_array_append_new(bins, json_string(spec->binaries[i]));
		for (size_t i = 0; i < spec->n_programs; i++)
			json_array_append_new(bins, json_string(spec->programs[i].dest));
		json_object_set_new(m->metadata, "binaries", bins);
	}
	if (spec->mpi)
		json_object_set_new(m->metadata, "mpi", json_string(spec->mpi));
	if (spec->bypass)
		json_object_set_new(m->metadata, "bypass", json_string(spec->bypass));

	ret->stored_new_bytes = stats.new_stored_bytes;
	ret->root_content_bytes = root.content_bytes;
	ret->n_files = root.n_entries;
	r = 0;
out:
	for (size_t i = 0; module_paths && i < n_modules; i++)
		free(module_paths[i]);
	free(module_paths);
	deb_packages_free(pkgs, pkgs ? spec->n_packages : 0);
	for (size_t i = 0; labels && i < spec->n_packages; i++)
		free(labels[i]);
	free(labels);
	free(layers);
	free(initrd);
	kernel_tree_free(k);
	rootfs_result_done(&root);
	json_decref(packages);
	return r;
}

/* The spec to build: the file's, or (update) the one the version recorded; a derived spec
 * merged with its base's. */
static int load_spec(struct store *s, const struct builder_options *opts,
		     struct image_spec **ret_spec, char **ret_base_ref, char **ret_error)
{
	struct image_spec *spec = NULL, *merged = NULL;
	int r;

	if (opts->update_of) {
		const char *base =
		    json_string_value(json_object_get(opts->update_of->metadata, LINEAGE_BASE_KEY));

		r = lineage_recorded_spec(opts->update_of, ret_spec, ret_error);
		if (r == 0 && base) {
			*ret_base_ref = strdup(base);
			r = *ret_base_ref ? 0 : -ENOMEM;
		}
		return r;
	}
	r = spec_parse_file(opts->spec_path, &spec, ret_error);
	if (r < 0)
		return r;
	if (!spec->base) {
		*ret_spec = spec;
		return 0;
	}
	r = lineage_resolve(s, spec, &merged, ret_base_ref, ret_error);
	image_spec_free(spec);
	if (r < 0)
		return r;
	*ret_spec = merged;
	return 0;
}

int builder_build(struct store *s, const struct builder_options *opts, struct builder_result *ret,
		  char **ret_error)
{
	struct image_spec *spec = NULL;
	struct manifest *m = NULL;
	_cleanup_free_ char *tmp = NULL, *work = NULL;
	_cleanup_close_ int store_lock_fd = -1, work_lock_fd = -1;
	struct store_chunk_ref *refs = NULL;
	size_t n_refs = 0;
	const char *spec_name = opts->update_of ? opts->update_of->name : opts->spec_path;
	int r;

	memset(ret, 0, sizeof(*ret));
	r = load_spec(s, opts, &spec, &ret->base_ref, ret_error);
	if (r < 0)
		return r;
	if (access(opts->init_path, R_OK) < 0 || access(opts->exec_path, R_OK) < 0) {
		r = error_set(
		    ret_error, -errno,
		    "%s not found; build vmhpc with meson/ninja (it builds vmhpc-init and "
		    "vmhpc-exec next to vmhpc), or set VMHPC_INIT and VMHPC_EXEC",
		    access(opts->init_path, R_OK) < 0 ? opts->init_path : opts->exec_path);
		goto out;
	}
	builder_clean_stale(s);
	store_set_compression_level(s, opts->compression_level);
	/* Shared with other builds, exclusive against gc: chunks written here are not
	 * named by any manifest until the commit, and gc must not take them meanwhile. */
	r = store_lock(s, STORE_LOCK_WRITE, &store_lock_fd);
	if (r < 0) {
		r = storage_error(ret_error, r, s, "locking");
		goto out;
	}
	tmp = fs_path_join(store_path(s), "tmp");
	r = tmp ? fs_mkdir_p(tmp, 0700) : -ENOMEM;
	if (r == 0)
		r = work_dir_create(tmp, &work, &work_lock_fd);
	if (r < 0) {
		r = storage_error(ret_error, r, s, "making a work directory");
		goto out;
	}
	m = manifest_new();
	if (!m) {
		r = -ENOMEM;
		goto out;
	}
	m->name = strdup(spec->name);
	m->owner = owner_name(opts->source_identity);
	m->boot_args = strdup(spec->boot_args ? spec->boot_args : "");
	m->created_s = time(NULL);
	if (!m->name || !m->owner || !m->boot_args) {
		r = -ENOMEM;
		goto out;
	}
	r = build_into(s, opts, spec, work, m, ret, ret_error);
	if (r == 0)
		r = lineage_record(m->metadata, spec, ret->base_ref);
	if (r < 0)
		goto out;
	if (opts->update_of && manifest_same_parts(m, opts->update_of)) {
		/* Nothing changed: the chunks were all there already, and no version is made. */
		ret->unchanged = true;
		ret->name = strdup(m->name);
		ret->version = opts->update_of->version;
		r = ret->name ? 0 : -ENOMEM;
		goto out;
	}
	r = catalog_commit(s, m);
	if (r == -EOVERFLOW) {
		r = error_set(ret_error, r,
			      "image '%s' has used every version number up to %u in the store %s; "
			      "build it under another name",
			      m->name, CATALOG_MAX_VERSIONS, store_path(s));
		goto out;
	}
	if (r < 0) {
		r = storage_error(ret_error, r, s, "saving the manifest");
		goto out;
	}
	ret->name = strdup(m->name);
	ret->version = m->version;
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
		ret->plain_bytes[p] = m->parts[p].size_bytes;
	if (manifest_distinct_chunks(m, &refs, &n_refs) == 0)
		for (size_t i = 0; i < n_refs; i++) {
			uint64_t b = 0;

			if (store_chunk_stored_bytes(s, refs[i].id, &b) == 0)
				ret->stored_total_bytes += b;
		}
	r = 0;
out:
	free(refs);
	if (work)
		fs_rm_rf(work);
	manifest_free(m);
	image_spec_free(spec);
	if (r < 0 && ret_error && !*ret_error)
		error_set(ret_error, r, "building %s: %s", spec_name, strerror(-r));
	return r;
}
