#include "image/kernel.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/deb.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

#define MODULES_DEP_MAX_BYTES (16u * 1024 * 1024)
#define MODULES_MAX	      512

struct kernel_tree *kernel_tree_free(struct kernel_tree *k)
{
	if (!k)
		return NULL;
	free(k->package);
	free(k->version);
	free(k->release);
	free(k->vmlinuz_path);
	free(k->modules_dir);
	free(k);
	return NULL;
}

/* Xen's ELF note type for the 32-bit PVH entry point (xen/include/public/elfnote.h). */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define VMLINUX_MAX_BYTES	 (512ull * 1024 * 1024)

bool kernel_has_pvh_note(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	const unsigned char *m;
	const Elf64_Ehdr *eh;
	struct stat st;
	bool found = false;

	if (fd < 0 || fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr) ||
	    (uint64_t)st.st_size > VMLINUX_MAX_BYTES)
		return false;
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return false;
	eh = (const Elf64_Ehdr *)m;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_phentsize != sizeof(Elf64_Phdr) ||
	    eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > (uint64_t)st.st_size)
		goto out;
	/* A truncated file (a decompressor that stopped early) has its notes but not all of
	 * its segments. */
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = (const Elf64_Phdr *)(m + eh->e_phoff) + i;

		if (ph->p_type == PT_LOAD && ph->p_offset + ph->p_filesz > (uint64_t)st.st_size)
			goto out;
	}
	for (unsigned i = 0; i < eh->e_phnum && !found; i++) {
		const Elf64_Phdr *ph = (const Elf64_Phdr *)(m + eh->e_phoff) + i;
		uint64_t off = ph->p_offset, end = ph->p_offset + ph->p_filesz;

		if (ph->p_type != PT_NOTE || end > (uint64_t)st.st_size || end < off)
			continue;
		while (off + sizeof(Elf64_Nhdr) <= end) {
			const Elf64_Nhdr *nh = (const Elf64_Nhdr *)(m + off);
			uint64_t name_len = (nh->n_namesz + 3ull) & ~3ull;
			uint64_t desc_len = (nh->n_descsz + 3ull) & ~3ull;

			if (nh->n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh->n_namesz == 4 &&
			    off + sizeof(*nh) + 4 <= end &&
			    memcmp(m + off + sizeof(*nh), "Xen", 4) == 0) {
				found = true;
				break;
			}
			off += sizeof(*nh) + name_len + desc_len;
		}
	}
out:
	munmap((void *)m, (size_t)st.st_size);
	return found;
}

/* The decompressor for a bzImage payload, by its magic, or NULL. */
static const char *payload_tool(const unsigned char *p, size_t len)
{
	static const struct {
		const char *magic;
		size_t len;
		const char *tool;
	} kinds[] = {
	    {"\x1f\x8b", 2, "gzip"},
	    {"\xfd"
	     "7zXZ",
	     5, "xz"},
	    {"\x28\xb5\x2f\xfd", 4, "zstd"},
	    {"\x02\x21\x4c\x18", 4, "lz4"},
	    {"\x5d\x00\x00", 3, "lzma"},
	    {"BZh", 3, "bzip2"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++)
		if (len >= kinds[i].len && memcmp(p, kinds[i].magic, kinds[i].len) == 0)
			return kinds[i].tool;
	return NULL;
}

int kernel_extract_vmlinux(const char *bzimage_path, const char *out_path)
{
	_cleanup_free_ char *data = NULL, *tmp = NULL, *payload_path = NULL, *err = NULL;
	_cleanup_close_ int out_fd = -1, in_fd = -1;
	size_t len = 0, setup_bytes;
	uint32_t payload_off, payload_len;
	const char *tool;
	int code = 0, r;

	r = fs_read_file(bzimage_path, 256u * 1024 * 1024, &data, &len);
	if (r < 0)
		return r;
	/* The x86 boot protocol header (Documentation/x86/boot.rst): "HdrS" at 0x202,
	 * setup_sects at 0x1f1, payload_offset and payload_length at 0x248, relative to the
	 * protected-mode code after the setup sectors. Version 2.08 and later have them. */
	if (len < 0x250 || memcmp(data + 0x202, "HdrS", 4) != 0 ||
	    (uint8_t)data[0x206] + ((uint8_t)data[0x207] << 8) < 0x208)
		return -ENOEXEC;
	setup_bytes = ((size_t)((uint8_t)data[0x1f1] ? (uint8_t)data[0x1f1] : 4) + 1) * 512;
	memcpy(&payload_off, data + 0x248, 4);
	memcpy(&payload_len, data + 0x24c, 4);
	if (setup_bytes + (uint64_t)payload_off + payload_len > len)
		return -EBADMSG;
	tool = payload_tool((const unsigned char *)data + setup_bytes + payload_off, payload_len);
	if (!tool)
		return -ENOTSUP;
	if (asprintf(&payload_path, "%s.payload", out_path) < 0)
		return -ENOMEM;
	r = fs_write_atomic(payload_path, data + setup_bytes + payload_off, payload_len, 0600);
	if (r < 0)
		return r;
	in_fd = open(payload_path, O_RDONLY | O_CLOEXEC);
	unlink(payload_path);
	if (in_fd < 0)
		return -errno;
	r = fs_open_temp_beside(out_path, 0644, &tmp, &out_fd);
	if (r < 0)
		return r;
	{
		char *argv[] = {(char *)tool, "-dcq", NULL};
		struct proc_options po = {.stdin_fd = in_fd, .stdout_fd = out_fd};

		r = proc_run(argv, &po, NULL, &err, &code);
	}
	/* Decompressors complain about what follows the stream in a bzImage (the size field,
	 * padding: lz4 exits 1, gzip 2): the exit code says nothing, the result is checked. */
	(void)code;
	if (r == 0 && (fsync(out_fd) < 0 || rename(tmp, out_path) < 0))
		r = -errno;
	if (r < 0)
		unlink(tmp);
	if (r == 0 && !kernel_has_pvh_note(out_path)) {
		unlink(out_path);
		r = -ENOEXEC;
	}
	return r;
}

/* The release of the first boot/vmlinuz-* in root, or NULL. */
static char *find_release(const char *root)
{
	_cleanup_free_ char *boot = fs_path_join(root, "boot");
	DIR *d = boot ? opendir(boot) : NULL;
	struct dirent *de;
	char *release = NULL;

	if (!d)
		return NULL;
	while (!release && (de = readdir(d)))
		if (strncmp(de->d_name, "vmlinuz-", 8) == 0 && de->d_name[8])
			release = strdup(de->d_name + 8);
	closedir(d);
	return release;
}

/* First "linux-image-*" name in a Depends field value. */
static char *first_image_dependency(const char *depends)
{
	const char *p = strstr(depends, "linux-image-");

	if (!p)
		return NULL;
	return strndup(p, strcspn(p, " ,(|"));
}

int kernel_fetch(const char *cache_dir, const char *package, struct kernel_tree **ret_tree,
		 char **ret_error)
{
	struct deb_package *p = NULL;
	struct kernel_tree *k = NULL;
	_cleanup_free_ char *release = NULL, *dep_file = NULL;
	int r;

	r = deb_fetch(cache_dir, package, &p, ret_error);
	if (r < 0)
		return r;
	release = find_release(p->root);
	if (!release) {
		_cleanup_free_ char *depends = NULL, *real = NULL;

		if (deb_read_field(p->deb_path, "Depends", &depends) == 0)
			real = first_image_dependency(depends);
		if (!real) {
			r = error_set(
			    ret_error, -ENOENT,
			    "kernel package '%s' has no /boot/vmlinuz-* and depends on no "
			    "linux-image package; name a Debian kernel package in [kernel] "
			    "package",
			    package);
			goto out;
		}
		deb_package_free(p);
		p = NULL;
		r = deb_fetch(cache_dir, real, &p, ret_error);
		if (r < 0)
			goto out;
		release = find_release(p->root);
		if (!release) {
			r = error_set(ret_error, -ENOENT,
				      "kernel package '%s' has no /boot/vmlinuz-*", real);
			goto out;
		}
	}
	k = calloc(1, sizeof(*k));
	if (!k) {
		r = -ENOMEM;
		goto out;
	}
	k->package = strdup(p->name);
	k->version = strdup(p->version);
	k->release = TAKE_PTR(release);
	if (asprintf(&k->vmlinuz_path, "%s/boot/vmlinuz-%s", p->root, k->release) < 0 ||
	    asprintf(&k->modules_dir, "%s/lib/modules/%s", p->root, k->release) < 0 ||
	    asprintf(&dep_file, "%s/modules.dep", k->modules_dir) < 0) {
		r = -ENOMEM;
		goto out;
	}
	{
		/* Boot the uncompressed vmlinux through QEMU's PVH entry when the kernel has
		 * one: no decompressor, no copy of the compressed image in guest RAM
		 * (docs/kernel.md). Kept beside the package's files; any failure keeps the
		 * bzImage. */
		_cleanup_free_ char *vmlinux = NULL;

		if (asprintf(&vmlinux, "%s/boot/vmlinux-%s", p->root, k->release) < 0) {
			r = -ENOMEM;
			goto out;
		}
		if (!fs_exists(vmlinux) && kernel_extract_vmlinux(k->vmlinuz_path, vmlinux) < 0)
			log_debug("kernel %s: no PVH vmlinux, booting its bzImage", k->release);
		if (fs_exists(vmlinux) && kernel_has_pvh_note(vmlinux)) {
			free(k->vmlinuz_path);
			k->vmlinuz_path = TAKE_PTR(vmlinux);
			k->pvh = true;
		}
	}
	if (!fs_exists(dep_file)) {
		/* Debian generates modules.dep in the package's postinst, which never runs
		 * here (nothing is installed): generate it in the cache. */
		_cleanup_free_ char *err = NULL, *last = NULL;
		char *argv[] = {"depmod", "-b", p->root, k->release, NULL};
		int code;

		r = proc_run(argv, NULL, NULL, &err, &code);
		if (r < 0 || code != 0) {
			last = proc_last_line(err);
			r = error_set(ret_error, r < 0 ? r : -EIO,
				      "depmod for kernel %s failed (%s); install kmod", k->release,
				      r < 0  ? strerror(-r)
				      : last ? last
					     : "?");
			goto out;
		}
	}
	*ret_tree = TAKE_PTR(k);
	r = 0;
out:
	deb_package_free(p);
	kernel_tree_free(k);
	return r;
}

int kernel_from_build(const char *dir, const char *package, struct kernel_tree **ret_tree,
		      char **ret_error)
{
	_cleanup_free_ char *release_path = fs_path_join(dir, "release"), *text = NULL;
	const char *base = strrchr(dir, '/');
	struct kernel_tree *k = calloc(1, sizeof(*k));
	int r;

	if (!k || !release_path) {
		free(k);
		return -ENOMEM;
	}
	r = fs_read_file(release_path, 4096, &text, NULL);
	if (r < 0) {
		kernel_tree_free(k);
		return error_set(ret_error, r,
				 "built kernel %s has no release file: %s; remove the folder and "
				 "build again",
				 dir, strerror(-r));
	}
	text[strcspn(text, "\n")] = '\0';
	k->package = strdup(package);
	k->version = strdup(base ? base + 1 : dir); /* SOURCE-VERSION-FRAGMENTHASH */
	k->release = TAKE_PTR(text);
	k->vmlinuz_path = fs_path_join(dir, "vmlinux");
	k->modules_dir = fs_path_join(dir, "modules");
	k->builtin_only = true;
	k->pvh = true;
	if (!k->package || !k->version || !k->vmlinuz_path || !k->modules_dir) {
		kernel_tree_free(k);
		return -ENOMEM;
	}
	*ret_tree = k;
	return 0;
}

/* "kernel/drivers/nvdimm/nd_pmem.ko" -> "nd_pmem" (dashes folded to underscores). */
static void module_name_of(const char *path, char *out, size_t size)
{
	const char *base = strrchr(path, '/');
	size_t i = 0;

	base = base ? base + 1 : path;
	for (; base[i] && i + 1 < size; i++)
		out[i] = base[i] == '-' ? '_' : base[i];
	out[i] = '\0';
	char *dot = strstr(out, ".ko");
	if (dot)
		*dot = '\0';
}

struct dep_entry {
	char *path;
	char **deps; /* paths, as modules.dep lists them (nearest first) */
	size_t n_deps;
};

struct dep_table {
	struct dep_entry *entries;
	size_t n;
	char *text;
};

static void dep_table_done(struct dep_table *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->entries[i].deps);
	free(t->entries);
	free(t->text);
}

static int dep_table_load(const char *modules_dir, struct dep_table *t)
{
	_cleanup_free_ char *path = fs_path_join(modules_dir, "modules.dep");
	char *save = NULL;
	int r;

	if (!path)
		return -ENOMEM;
	r = fs_read_file(path, MODULES_DEP_MAX_BYTES, &t->text, NULL);
	if (r < 0)
		return r;
	for (char *line = strtok_r(t->text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':'), *save2 = NULL;
		struct dep_entry *grown, *e;

		if (!colon)
			continue;
		*colon = '\0';
		grown = realloc(t->entries, (t->n + 1) * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		t->entries = grown;
		e = &t->entries[t->n++];
		memset(e, 0, sizeof(*e));
		e->path = line;
		for (char *d = strtok_r(colon + 1, " ", &save2); d;
		     d = strtok_r(NULL, " ", &save2)) {
			char **g = realloc(e->deps, (e->n_deps + 1) * sizeof(*g));

			if (!g)
				return -ENOMEM;
			e->deps = g;
			e->deps[e->n_deps++] = d;
		}
	}
	return 0;
}

static struct dep_entry *dep_find(struct dep_table *t, const char *name_or_path)
{
	char want[256], have[256];

	module_name_of(name_or_path, want, sizeof(want));
	for (size_t i = 0; i < t->n; i++) {
		module_name_of(t->entries[i].path, have, sizeof(have));
		if (strcmp(want, have) == 0)
			return &t->entries[i];
	}
	return NULL;
}

static bool is_builtin(const char *modules_dir, const char *name)
{
	_cleanup_free_ char *path = fs_path_join(modules_dir, "modules.builtin");
	_cleanup_free_ char *text = NULL;
	char want[256], have[256];
	char *save = NULL;

	if (!path || fs_read_file(path, MODULES_DEP_MAX_BYTES, &text, NULL) < 0)
		return false;
	module_name_of(name, want, sizeof(want));
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		module_name_of(line, have, sizeof(have));
		if (strcmp(want, have) == 0)
			return true;
	}
	return false;
}

static int add_path(char ***paths, size_t *n, const char *path)
{
	char **grown;

	for (size_t i = 0; i < *n; i++)
		if (strcmp((*paths)[i], path) == 0)
			return 0;
	if (*n >= MODULES_MAX)
		return -E2BIG;
	grown = realloc(*paths, (*n + 1) * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	*paths = grown;
	grown[*n] = strdup(path);
	if (!grown[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}

int kernel_resolve_modules(const struct kernel_tree *k, char *const *names, size_t n_names,
			   char ***ret_paths, size_t *ret_n, char **ret_error)
{
	struct dep_table t = {0};
	char **paths = NULL;
	size_t n = 0;
	int r;

	if (k->builtin_only) {
		*ret_paths = NULL;
		*ret_n = 0;
		return 0;
	}
	r = dep_table_load(k->modules_dir, &t);
	if (r < 0) {
		r = error_set(ret_error, r, "reading modules.dep of kernel %s: %s", k->release,
			      strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < n_names; i++) {
		struct dep_entry *e = dep_find(&t, names[i]);

		if (!e) {
			if (is_builtin(k->modules_dir, names[i]))
				continue;
			r = error_set(
			    ret_error, -ENOENT,
			    "kernel module '%s' is not in kernel %s (neither a module nor "
			    "built in); check [kernel] modules",
			    names[i], k->release);
			goto out;
		}
		/* modules.dep lists a module's whole dependency closure, nearest first:
		 * loading it back to front satisfies every symbol before it is needed. */
		for (size_t d = e->n_deps; d > 0; d--) {
			r = add_path(&paths, &n, e->deps[d - 1]);
			if (r < 0)
				goto out;
		}
		r = add_path(&paths, &n, e->path);
		if (r < 0)
			goto out;
	}
	*ret_paths = TAKE_PTR(paths);
	*ret_n = n;
	r = 0;
out:
	for (size_t i = 0; paths && i < n; i++)
		free(paths[i]);
	free(paths);
	dep_table_done(&t);
	return r;
}
