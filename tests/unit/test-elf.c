/* Tests for the ELF reader and the library closure: real system binaries, synthetic and
 * damaged files, and a comparison with what the real dynamic loader loads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <elf.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/closure.h"
#include "image/elf.h"
#include "util/cleanup.h"
#include "util/fsutil.h"

#define HOST_LIBC   "/usr/lib/x86_64-linux-gnu/libc.so.6"
#define HOST_INTERP "/lib64/ld-linux-x86-64.so.2"

static bool file_exists(const char *path)
{
	return access(path, R_OK) == 0;
}

static bool needs(const struct elf_info *info, const char *name)
{
	for (size_t i = 0; i < info->n_needed; i++)
		if (strcmp(info->needed[i], name) == 0)
			return true;
	return false;
}

static void read_whole(const char *path, char **ret, size_t *ret_len)
{
	assert_int_equal(fs_read_file(path, 64 * 1024 * 1024, ret, ret_len), 0);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	_cleanup_free_ char *dir = strdup(path);

	assert_non_null(dir);
	*strrchr(dir, '/') = '\0';
	assert_int_equal(fs_mkdir_p(dir, 0755), 0);
	unlink(path);
	assert_int_equal(fs_write_atomic(path, data, len, mode), 0);
}

/* ---- a synthetic ELF64 x86-64 image with chosen dynamic entries ---- */

struct synth {
	const char *interp;
	const char *soname;
	const char *rpath;
	const char *runpath;
	const char *needed[8];
};

#define SYNTH_BYTES	 2048
#define SYNTH_VADDR	 0x400000u
#define SYNTH_INTERP_OFF 256
#define SYNTH_STR_OFF	 512
#define SYNTH_DYN_OFF	 1536

/* Lays out: ELF header, PT_LOAD (whole file, at SYNTH_VADDR), PT_DYNAMIC, PT_INTERP, the
 * interpreter string, the string table and the dynamic section. */
static void synth_build(const struct synth *s, uint8_t buf[static SYNTH_BYTES])
{
	Elf64_Ehdr eh = {0};
	Elf64_Phdr ph[3] = {0};
	Elf64_Dyn dyn[16] = {0};
	size_t n_ph = 0, n_dyn = 0, str_len = 1; /* offset 0 is the empty string */
	char *str = (char *)buf + SYNTH_STR_OFF;

	memset(buf, 0, SYNTH_BYTES);
#define ADD_STR(tag, value)                                                                        \
	do {                                                                                       \
		size_t l_ = strlen(value) + 1;                                                     \
		assert_true(str_len + l_ < SYNTH_DYN_OFF - SYNTH_STR_OFF);                         \
		memcpy(str + str_len, value, l_);                                                  \
		dyn[n_dyn++] = (Elf64_Dyn){.d_tag = (tag), .d_un.d_val = str_len};                 \
		str_len += l_;                                                                     \
	} while (0)
	for (size_t i = 0; i < ARRAY_SIZE(s->needed) && s->needed[i]; i++)
		ADD_STR(DT_NEEDED, s->needed[i]);
	if (s->soname)
		ADD_STR(DT_SONAME, s->soname);
	if (s->rpath)
		ADD_STR(DT_RPATH, s->rpath);
	if (s->runpath)
		ADD_STR(DT_RUNPATH, s->runpath);
#undef ADD_STR
	dyn[n_dyn++] = (Elf64_Dyn){.d_tag = DT_STRTAB, .d_un.d_ptr = SYNTH_VADDR + SYNTH_STR_OFF};
	dyn[n_dyn++] = (Elf64_Dyn){.d_tag = DT_STRSZ, .d_un.d_val = str_len};
	dyn[n_dyn++] = (Elf64_Dyn){.d_tag = DT_NULL};

	ph[n_ph++] = (Elf64_Phdr){.p_type = PT_LOAD,
				  .p_offset = 0,
				  .p_vaddr = SYNTH_VADDR,
				  .p_filesz = SYNTH_BYTES,
				  .p_memsz = SYNTH_BYTES};
	ph[n_ph++] = (Elf64_Phdr){.p_type = PT_DYNAMIC,
				  .p_offset = SYNTH_DYN_OFF,
				  .p_vaddr = SYNTH_VADDR + SYNTH_DYN_OFF,
				  .p_filesz = n_dyn * sizeof(Elf64_Dyn)};
	if (s->interp) {
		size_t l = strlen(s->interp) + 1;

		memcpy(buf + SYNTH_INTERP_OFF, s->interp, l);
		ph[n_ph++] = (Elf64_Phdr){.p_type = PT_INTERP,
					  .p_offset = SYNTH_INTERP_OFF,
					  .p_vaddr = SYNTH_VADDR + SYNTH_INTERP_OFF,
					  .p_filesz = l};
	}
	memcpy(buf + SYNTH_DYN_OFF, dyn, n_dyn * sizeof(Elf64_Dyn));

	memcpy(eh.e_ident, ELFMAG, SELFMAG);
	eh.e_ident[EI_CLASS] = ELFCLASS64;
	eh.e_ident[EI_DATA] = ELFDATA2LSB;
	eh.e_ident[EI_VERSION] = EV_CURRENT;
	eh.e_type = ET_DYN;
	eh.e_machine = EM_X86_64;
	eh.e_version = EV_CURRENT;
	eh.e_phoff = sizeof(eh);
	eh.e_ehsize = sizeof(eh);
	eh.e_phentsize = sizeof(Elf64_Phdr);
	eh.e_phnum = (uint16_t)n_ph;
	memcpy(buf, &eh, sizeof(eh));
	memcpy(buf + sizeof(eh), ph, n_ph * sizeof(Elf64_Phdr));
}

static void synth_write(const char *path, const struct synth *s)
{
	_Alignas(Elf64_Phdr) uint8_t buf[SYNTH_BYTES];

	synth_build(s, buf);
	write_file(path, buf, sizeof(buf), 0755);
}

/* Parses a synthetic buffer from an exact-size heap copy, so ASan sees any overread. */
static int read_copy(const void *data, size_t len, struct elf_info **ret)
{
	void *copy = malloc(len ? len : 1);
	int r;

	assert_non_null(copy);
	memcpy(copy, data, len);
	r = elf_read_buffer(copy, len, ret);
	free(copy);
	return r;
}

/* ---- elf_read_file on real files ---- */

static void test_elf_ls(void **state)
{
	struct elf_info *info = NULL;

	assert_int_equal(elf_read_file("/bin/ls", &info), 0);
	assert_int_equal(info->machine, EM_X86_64);
	assert_true(info->type == ET_DYN || info->type == ET_EXEC);
	assert_true(info->is_dynamic);
	assert_non_null(info->interp);
	assert_string_equal(info->interp, HOST_INTERP);
	assert_true(needs(info, "libc.so.6"));
	assert_null(info->soname);
	elf_info_free(info);
}

static void test_elf_libc(void **state)
{
	struct elf_info *info = NULL;

	if (!file_exists(HOST_LIBC))
		skip();
	assert_int_equal(elf_read_file(HOST_LIBC, &info), 0);
	assert_int_equal(info->type, ET_DYN);
	assert_true(info->is_dynamic);
	assert_non_null(info->soname);
	assert_string_equal(info->soname, "libc.so.6");
	assert_true(needs(info, "ld-linux-x86-64.so.2"));
	assert_null(info->runpath);
	elf_info_free(info);
}

static void test_elf_mpiexec(void **state)
{
	struct elf_info *info = NULL;

	if (!file_exists("/usr/bin/mpiexec.hydra"))
		skip();
	assert_int_equal(elf_read_file("/usr/bin/mpiexec.hydra", &info), 0);
	assert_true(info->is_dynamic);
	assert_non_null(info->interp);
	assert_true(info->n_needed > 0);
	assert_true(needs(info, "libc.so.6"));
	elf_info_free(info);
}

static void test_elf_static(void **state)
{
	struct elf_info *info = NULL;

	if (!file_exists("/bin/busybox"))
		skip();
	assert_int_equal(elf_read_file("/bin/busybox", &info), 0);
	assert_int_equal(info->machine, EM_X86_64);
	assert_false(info->is_dynamic);
	assert_null(info->interp);
	assert_int_equal(info->n_needed, 0);
	assert_null(info->needed);
	elf_info_free(info);
}

static void test_elf_not_elf(void **state)
{
	const char *dir = *state;
	_cleanup_free_ char *script = fs_path_join(dir, "script.sh");
	_cleanup_free_ char *tiny = fs_path_join(dir, "tiny");
	_cleanup_free_ char *empty = fs_path_join(dir, "empty");
	struct elf_info *info = NULL;

	write_file(script, "#!/bin/sh\necho hi\n", 18, 0755);
	write_file(tiny, "\177EL", 3, 0644);
	write_file(empty, "", 0, 0644);
	assert_int_equal(elf_read_file(script, &info), -ENOEXEC);
	assert_int_equal(elf_read_file(tiny, &info), -ENOEXEC);
	assert_int_equal(elf_read_file(empty, &info), -ENOEXEC);
	assert_int_equal(elf_read_file(dir, &info), -EISDIR);
	assert_int_equal(elf_read_file("/nonexistent/vmhpc", &info), -ENOENT);
	assert_null(info);
}

static void test_elf_other_arch(void **state)
{
	static const char *const patterns[] = {
	    "/usr/libexec/valgrind/*-x86-linux*.so",
	    "/usr/lib/i386-linux-gnu/libc.so.6",
	    "/usr/lib/llvm-*/lib/clang/*/lib/linux/*-i386.so",
	    "/usr/lib/gcc-cross/*/*/*.so*",
	};
	_Alignas(Elf64_Phdr) uint8_t buf[SYNTH_BYTES];
	struct elf_info *info = NULL;
	struct synth s = {.needed = {"libc.so.6"}};
	int found = 0;

	/* A real foreign ELF when the machine has one. */
	for (size_t i = 0; i < ARRAY_SIZE(patterns) && !found; i++) {
		glob_t g;

		if (glob(patterns[i], 0, NULL, &g) != 0)
			continue;
		for (size_t j = 0; j < g.gl_pathc && !found; j++) {
			struct stat st;

			if (lstat(g.gl_pathv[j], &st) < 0 || !S_ISREG(st.st_mode))
				continue;
			assert_int_equal(elf_read_file(g.gl_pathv[j], &info), -ENOTSUP);
			found = 1;
		}
		globfree(&g);
	}
	if (!found)
		print_message("no foreign ELF file on this machine, synthetic ones only\n");

	/* Synthetic: AArch64, 32-bit, big-endian, and a relocatable object. */
	synth_build(&s, buf);
	((Elf64_Ehdr *)buf)->e_machine = EM_AARCH64;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -ENOTSUP);
	synth_build(&s, buf);
	buf[EI_CLASS] = ELFCLASS32;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -ENOTSUP);
	assert_int_equal(read_copy(buf, 20, &info), -ENOTSUP);
	synth_build(&s, buf);
	buf[EI_DATA] = ELFDATA2MSB;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -ENOTSUP);
	synth_build(&s, buf);
	((Elf64_Ehdr *)buf)->e_type = ET_REL;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -ENOTSUP);
	assert_null(info);
}

static void test_elf_synthetic(void **state)
{
	const struct synth s = {
	    .interp = "/lib64/ld-linux-x86-64.so.2",
	    .soname = "libsynth.so.1",
	    .rpath = "/opt/a:$ORIGIN/x",
	    .runpath = "${ORIGIN}/../lib",
	    .needed = {"libone.so.1", "libtwo.so.2", "libc.so.6"},
	};
	_Alignas(Elf64_Phdr) uint8_t buf[SYNTH_BYTES];
	struct elf_info *info = NULL;
	Elf64_Dyn *dyn = (Elf64_Dyn *)(buf + SYNTH_DYN_OFF);
	Elf64_Phdr *ph = (Elf64_Phdr *)(buf + sizeof(Elf64_Ehdr));

	synth_build(&s, buf);
	assert_int_equal(read_copy(buf, sizeof(buf), &info), 0);
	assert_string_equal(info->interp, s.interp);
	assert_string_equal(info->soname, s.soname);
	assert_string_equal(info->rpath, s.rpath);
	assert_string_equal(info->runpath, s.runpath);
	assert_int_equal(info->n_needed, 3);
	assert_string_equal(info->needed[0], "libone.so.1");
	assert_string_equal(info->needed[1], "libtwo.so.2");
	assert_string_equal(info->needed[2], "libc.so.6");
	info = elf_info_free(info);
	assert_null(elf_info_free(NULL));

	/* Inconsistent files, one fault at a time. Entries: 3 NEEDED, SONAME, RPATH,
	 * RUNPATH, STRTAB (6), STRSZ (7), NULL. */
	synth_build(&s, buf);
	dyn[6].d_un.d_ptr = 0x10; /* string table outside every PT_LOAD */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	dyn[7].d_un.d_val = SYNTH_BYTES; /* string table runs past its segment */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	dyn[1].d_un.d_val = dyn[7].d_un.d_val; /* name offset at the table's end */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	dyn[7].d_un.d_val = dyn[5].d_un.d_val + 3; /* last string not terminated */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	ph[1].p_offset = SYNTH_BYTES - 8; /* dynamic section past the end */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	ph[2].p_filesz = 5; /* interpreter string without its NUL */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	((Elf64_Ehdr *)buf)->e_phoff = SYNTH_BYTES - 64; /* headers past the end */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	((Elf64_Ehdr *)buf)->e_phentsize = 32;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	((Elf64_Ehdr *)buf)->e_phnum = PN_XNUM; /* escape to a section header that is absent */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);

	synth_build(&s, buf);
	dyn[6].d_tag = DT_DEBUG; /* strings but no string table */
	assert_int_equal(read_copy(buf, sizeof(buf), &info), -EBADMSG);
	assert_null(info);

	/* Without DT_STRSZ the table is bounded by its segment: still fine. */
	synth_build(&s, buf);
	dyn[7].d_tag = DT_DEBUG;
	assert_int_equal(read_copy(buf, sizeof(buf), &info), 0);
	assert_int_equal(info->n_needed, 3);
	elf_info_free(info);
}

/* Truncated copies must give -EBADMSG or a consistent answer, never a crash. */
static void test_elf_truncated(void **state)
{
	const char *dir = *state;
	_cleanup_free_ char *data = NULL;
	_cleanup_free_ char *path = fs_path_join(dir, "truncated");
	size_t len, n_ok = 0, n_bad = 0;

	read_whole("/bin/ls", &data, &len);
	for (size_t cut = 0; cut < len; cut += cut < 4096 ? 1 : cut < 65536 ? 61 : 997) {
		struct elf_info *info = NULL;
		int r = read_copy(data, cut, &info);

		if (cut < SELFMAG)
			assert_int_equal(r, -ENOEXEC);
		else if (r == 0) {
			assert_int_equal(info->machine, EM_X86_64);
			n_ok++;
		} else {
			assert_int_equal(r, -EBADMSG);
			n_bad++;
		}
		elf_info_free(info);
	}
	assert_true(n_bad > 0);
	assert_true(n_ok > 0); /* past the dynamic strings, the answer is complete */

	/* The same through files, including ones shorter than an ELF header. */
	static const size_t cuts[] = {5, 16, 63, 64, 200, 1000, 4096, 10000};
	for (size_t i = 0; i < ARRAY_SIZE(cuts); i++) {
		struct elf_info *info = NULL;
		int r;

		write_file(path, data, cuts[i], 0644);
		r = elf_read_file(path, &info);
		assert_true(r == -EBADMSG || r == 0);
		elf_info_free(info);
	}
}

/* Random byte flips in the parts of a real ELF the reader looks at. */
static void test_elf_fuzz(void **state)
{
	_cleanup_free_ char *whole = NULL, *data = NULL;
	size_t len, n_results[4] = {0};
	uint64_t seed = 0x766d687063ull; /* fixed: failures must reproduce */
	struct {
		size_t start, len;
	} regions[3];
	Elf64_Ehdr eh;

	read_whole("/bin/ls", &whole, &len);
	/* An exact-size copy: fs_read_file's extra NUL would hide a one-byte overread. */
	data = malloc(len);
	assert_non_null(data);
	memcpy(data, whole, len);
	memcpy(&eh, data, sizeof(eh));
	regions[0].start = 0;
	regions[0].len = sizeof(eh) + (size_t)eh.e_phnum * sizeof(Elf64_Phdr);
	regions[1].start = 0;
	regions[1].len = len < 8192 ? len : 8192; /* .interp, .dynsym, .dynstr */
	regions[2] = regions[0];
	for (size_t i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, data + eh.e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type == PT_DYNAMIC) {
			regions[2].start = ph.p_offset;
			regions[2].len = ph.p_filesz;
		}
	}

	for (int iter = 0; iter < 5000; iter++) {
		size_t pos[8];
		char saved[8];
		int n_flips;
		struct elf_info *info = NULL;
		int r;

		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		n_flips = 1 + (int)(seed % 8);
		for (int k = 0; k < n_flips; k++) {
			size_t reg;

			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			reg = (seed >> 8) % 3;
			pos[k] = regions[reg].start + (size_t)((seed >> 16) % regions[reg].len);
			saved[k] = data[pos[k]];
			/* Half random bytes, half boundary values that hit edge cases. */
			data[pos[k]] =
			    (seed & 1) ? (char)(seed >> 40) : (char)((seed & 2) ? 0xff : 0);
		}
		r = elf_read_buffer(data, len, &info);
		if (r == 0) {
			assert_non_null(info);
			for (size_t i = 0; i < info->n_needed; i++)
				assert_non_null(info->needed[i]);
			n_results[0]++;
		} else {
			assert_true(r == -EBADMSG || r == -ENOEXEC || r == -ENOTSUP);
			n_results[r == -EBADMSG ? 1 : r == -ENOEXEC ? 2 : 3]++;
		}
		elf_info_free(info);
		for (int k = n_flips - 1; k >= 0; k--)
			data[pos[k]] = saved[k];
	}
	print_message("fuzz: %zu parsed, %zu EBADMSG, %zu ENOEXEC, %zu ENOTSUP\n", n_results[0],
		      n_results[1], n_results[2], n_results[3]);
}

/* Random flips and boundary values in a small synthetic file, where every byte is a
 * header, an offset or a string the reader follows. */
static void test_elf_fuzz_synthetic(void **state)
{
	const struct synth s = {
	    .interp = "/lib64/ld-linux-x86-64.so.2",
	    .soname = "libsynth.so.1",
	    .rpath = "/opt/a",
	    .runpath = "$ORIGIN",
	    .needed = {"libone.so.1", "libc.so.6"},
	};
	_Alignas(Elf64_Phdr) uint8_t orig[SYNTH_BYTES];
	uint8_t *buf = malloc(SYNTH_BYTES);
	uint64_t seed = 0x454c4636ull;
	size_t n_ok = 0;

	assert_non_null(buf);
	synth_build(&s, orig);
	for (int iter = 0; iter < 20000; iter++) {
		struct elf_info *info = NULL;
		size_t len = SYNTH_BYTES;
		int n_flips, r;

		memcpy(buf, orig, SYNTH_BYTES);
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		n_flips = 1 + (int)(seed % 4);
		for (int k = 0; k < n_flips; k++) {
			size_t pos;

			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			/* Mostly the headers and the dynamic section, sometimes anywhere. */
			pos = (seed & 3) == 0 ? (size_t)(seed >> 20) % SYNTH_BYTES
			      : (seed & 3) == 1
				  ? SYNTH_DYN_OFF + (size_t)(seed >> 20) % (10 * sizeof(Elf64_Dyn))
				  : (size_t)(seed >> 20) %
					(sizeof(Elf64_Ehdr) + 3 * sizeof(Elf64_Phdr));
			buf[pos] = (seed & 4) ? (uint8_t)(seed >> 40) : (seed & 8) ? 0xff : 0x00;
		}
		if ((seed & 0xf0) == 0)
			len = (size_t)(seed >> 32) % SYNTH_BYTES; /* and truncated, at times */
		r = elf_read_buffer(buf, len, &info);
		assert_true(r == 0 || r == -EBADMSG || r == -ENOEXEC || r == -ENOTSUP);
		if (r == 0)
			n_ok++;
		elf_info_free(info);
	}
	print_message("synthetic fuzz: %zu of 20000 parsed\n", n_ok);
	free(buf);
}

/* ---- closure against the real dynamic loader ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct strlist {
	char **v;
	size_t n;
};

static void strlist_add_unique(struct strlist *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], s) == 0)
			return;
	l->v = realloc(l->v, (l->n + 1) * sizeof(char *));
	assert_non_null(l->v);
	l->v[l->n] = strdup(s);
	assert_non_null(l->v[l->n]);
	l->n++;
}

static void strlist_add_realpath(struct strlist *l, const char *path)
{
	char buf[PATH_MAX];

	if (!realpath(path, buf))
		fail_msg("realpath(%s): %s", path, strerror(errno));
	strlist_add_unique(l, buf);
}

static void strlist_free(struct strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

/* What ld.so loads for program: LD_TRACE_LOADED_OBJECTS=1 makes it print its link map
 * and exit before the program runs. */
static void ld_trace(const char *program, struct strlist *out)
{
	_cleanup_free_ char *cmd = NULL;
	char line[PATH_MAX * 2];
	FILE *p;

	assert_true(asprintf(&cmd, "LD_TRACE_LOADED_OBJECTS=1 '%s' </dev/null", program) > 0);
	p = popen(cmd, "re");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p)) {
		char *s = line, *arrow, *paren;

		while (*s == '\t' || *s == ' ')
			s++;
		if (strstr(s, "not found"))
			fail_msg("ld.so cannot find a library of %s: %s", program, s);
		arrow = strstr(s, " => ");
		if (arrow)
			s = arrow + 4;
		paren = strstr(s, " (0x");
		if (paren)
			*paren = '\0';
		else
			s[strcspn(s, "\n")] = '\0';
		if (s[0] != '/')
			continue; /* linux-vdso.so.1 is in the kernel, not a file */
		strlist_add_realpath(out, s);
	}
	assert_int_equal(pclose(p), 0);
}

static void check_usrmerged(const struct closure *c)
{
	for (size_t i = 0; i < c->n_files; i++) {
		for (size_t j = 0; j < 2; j++) {
			const char *p = j ? c->files[i].real_image_path : c->files[i].image_path;

			assert_true(p[0] == '/');
			assert_false(strncmp(p, "/lib/", 5) == 0 || strncmp(p, "/lib64/", 7) == 0 ||
				     strncmp(p, "/bin/", 5) == 0 || strncmp(p, "/sbin/", 6) == 0);
		}
		for (size_t k = 0; k < i; k++)
			assert_string_not_equal(c->files[i].image_path, c->files[k].image_path);
	}
}

static void test_closure_vs_ld_so(void **state)
{
	static const char *const programs[] = {
	    "/bin/ls",
	    "/usr/bin/ssh",
	    "/usr/bin/openssl",
	    "/usr/bin/mpiexec.hydra",
	    "/usr/bin/qemu-system-x86_64",
	};
	const struct closure_layer host = {.root = "/"};
	size_t n_tested = 0;

	for (size_t i = 0; i < ARRAY_SIZE(programs); i++) {
		char *const paths[] = {(char *)programs[i]};
		struct closure c = {0};
		struct strlist ours = {0}, theirs = {0};
		char *error = NULL;
		int r;

		if (!file_exists(programs[i]))
			continue;
		r = closure_resolve(&host, 1, paths, 1, &c, &error);
		if (r < 0)
			fail_msg("closure of %s: %s", programs[i], error ? error : strerror(-r));
		assert_null(error);
		assert_true(c.n_files >= 2);
		check_usrmerged(&c);
		assert_int_equal(c.files[0].is_elf, 1);
		for (size_t f = 1; f < c.n_files; f++) {
			assert_int_equal(c.files[f].is_elf, 1);
			assert_int_equal(c.files[f].layer, 0);
			strlist_add_realpath(&ours, c.files[f].host_path);
		}
		ld_trace(programs[i], &theirs);
		qsort(ours.v, ours.n, sizeof(char *), cmp_str);
		qsort(theirs.v, theirs.n, sizeof(char *), cmp_str);
		for (size_t k = 0; k < ours.n || k < theirs.n; k++)
			if (k >= ours.n || k >= theirs.n || strcmp(ours.v[k], theirs.v[k]) != 0) {
				for (size_t m = 0; m < ours.n; m++)
					print_error("ours:   %s\n", ours.v[m]);
				for (size_t m = 0; m < theirs.n; m++)
					print_error("ld.so:  %s\n", theirs.v[m]);
				fail_msg("closure of %s differs from what ld.so loads",
					 programs[i]);
			}
		print_message("%s: %zu libraries, same as ld.so\n", programs[i], ours.n);
		strlist_free(&ours);
		strlist_free(&theirs);
		closure_done(&c);
		assert_int_equal(c.n_files, 0);
		n_tested++;
	}
	assert_true(n_tested > 0);
}

static void test_closure_static_and_script(void **state)
{
	const char *dir = *state;
	_cleanup_free_ char *script = fs_path_join(dir, "usr/bin/job.sh");
	const struct closure_layer layers[] = {{.root = dir}, {.root = "/"}};
	char *const paths[] = {"/bin/busybox", "/usr/bin/job.sh", "/bin/busybox"};
	struct closure c = {0};
	char *error = NULL;

	if (!file_exists("/bin/busybox"))
		skip();
	write_file(script, "#!/bin/sh\nexec true\n", 20, 0755);
	assert_int_equal(closure_resolve(layers, 2, paths, 3, &c, &error), 0);
	assert_int_equal(c.n_files, 2); /* listed twice, kept once */
	assert_string_equal(c.files[0].image_path, "/usr/bin/busybox");
	assert_int_equal(c.files[0].is_elf, 1);
	assert_int_equal(c.files[0].layer, 1);
	assert_string_equal(c.files[1].image_path, "/usr/bin/job.sh");
	assert_int_equal(c.files[1].is_elf, 0);
	assert_int_equal(c.files[1].layer, 0);
	closure_done(&c);
}

/* ---- layers ---- */

/* Copies the real file behind a host library to dst. */
static void copy_real(const char *host_lib, const char *dst)
{
	char real[PATH_MAX];
	_cleanup_free_ char *parent = strdup(dst);

	assert_non_null(parent);
	*strrchr(parent, '/') = '\0';
	assert_int_equal(fs_mkdir_p(parent, 0755), 0);
	assert_non_null(realpath(host_lib, real));
	unlink(dst);
	assert_int_equal(fs_copy_file(real, dst, 0644), 0);
}

static const struct closure_file *find_file(const struct closure *c, const char *image_path)
{
	for (size_t i = 0; i < c->n_files; i++)
		if (strcmp(c->files[i].image_path, image_path) == 0)
			return &c->files[i];
	return NULL;
}

static void test_closure_layers(void **state)
{
	const char *dir = *state;
	_cleanup_free_ char *libdir = fs_path_join(dir, "lib/x86_64-linux-gnu");
	_cleanup_free_ char *selinux = NULL, *pcre = NULL, *pcre_link = NULL, *bogus = NULL;
	const struct closure_layer layers[] = {{.root = dir}, {.root = "/"}};
	char *const paths[] = {"/bin/ls"};
	const struct closure_file *f;
	struct closure c = {0};
	struct elf_info *info = NULL;
	char *error = NULL;

	/* /bin/ls needs libselinux.so.1, which needs libpcre2-8.so.0. */
	assert_int_equal(elf_read_file("/bin/ls", &info), 0);
	if (!needs(info, "libselinux.so.1"))
		skip();
	elf_info_free(info);

	assert_int_equal(fs_mkdir_p(libdir, 0755), 0);
	selinux = fs_path_join(libdir, "libselinux.so.1");
	pcre = fs_path_join(libdir, "libpcre2-8.so.0.vmhpc-test");
	pcre_link = fs_path_join(libdir, "libpcre2-8.so.0");
	copy_real("/usr/lib/x86_64-linux-gnu/libselinux.so.1", selinux);
	copy_real("/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0", pcre);
	/* An absolute target means "/" of the layer, not of this machine. */
	assert_int_equal(symlink("/lib/x86_64-linux-gnu/libpcre2-8.so.0.vmhpc-test", pcre_link), 0);
	/* The first system directory holds a non-ELF libc.so.6: ld.so would skip it. */
	bogus = fs_path_join(dir, "usr/local/lib/x86_64-linux-gnu/libc.so.6");
	write_file(bogus, "not a library\n", 14, 0644);

	assert_int_equal(closure_resolve(layers, 2, paths, 1, &c, &error), 0);
	check_usrmerged(&c);
	assert_string_equal(c.files[0].image_path, "/usr/bin/ls");
	assert_int_equal(c.files[0].layer, 1);

	f = find_file(&c, "/usr/lib/x86_64-linux-gnu/libselinux.so.1");
	assert_non_null(f);
	assert_int_equal(f->layer, 0);
	assert_string_equal(f->host_path, selinux);
	assert_string_equal(f->real_image_path, "/usr/lib/x86_64-linux-gnu/libselinux.so.1");

	f = find_file(&c, "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0");
	assert_non_null(f);
	assert_int_equal(f->layer, 0);
	assert_string_equal(f->host_path, pcre);
	assert_string_equal(f->real_image_path,
			    "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0.vmhpc-test");

	f = find_file(&c, "/usr/lib/x86_64-linux-gnu/libc.so.6");
	assert_non_null(f);
	assert_int_equal(f->layer, 1);
	assert_null(find_file(&c, "/usr/local/lib/x86_64-linux-gnu/libc.so.6"));

	f = find_file(&c, "/usr/lib64/ld-linux-x86-64.so.2");
	assert_non_null(f);
	assert_int_equal(f->layer, 1);
	assert_int_equal(f->is_elf, 1);
	closure_done(&c);

	/* The merged spelling finds the unmerged file of layer 0. */
	{
		char *host = NULL, *real = NULL;
		size_t layer = 99;

		assert_int_equal(closure_lookup(layers, 1,
						"/usr/lib/x86_64-linux-gnu/libselinux.so.1", &host,
						&real, &layer),
				 0);
		assert_string_equal(host, selinux);
		assert_string_equal(real, "/usr/lib/x86_64-linux-gnu/libselinux.so.1");
		assert_int_equal(layer, 0);
		free(host);
		free(real);
	}
}

static void test_closure_missing(void **state)
{
	const char *dir = *state;
	_cleanup_free_ char *ls = fs_path_join(dir, "usr/bin/ls");
	_cleanup_free_ char *ld = fs_path_join(dir, "lib64/ld-linux-x86-64.so.2");
	_cleanup_free_ char *arm = fs_path_join(dir, "usr/bin/armprog");
	_cleanup_free_ char *libdir = fs_path_join(dir, "usr/lib/x86_64-linux-gnu");
	_cleanup_free_ char *selinux = NULL, *pcre = NULL, *libc = NULL;
	const struct closure_layer layer = {.root = dir};
	struct synth s = {.needed = {"libc.so.6"}};
	_Alignas(Elf64_Phdr) uint8_t buf[SYNTH_BYTES];
	struct closure c = {0};
	char *error = NULL;
	int r;

	/* Only the program and its interpreter: the first library is missing. */
	assert_int_equal(fs_mkdir_p(libdir, 0755), 0);
	copy_real("/bin/ls", ls);
	copy_real(HOST_INTERP, ld);
	{
		char *const paths[] = {"/usr/bin/ls"};
		struct elf_info *info = NULL;

		assert_int_equal(elf_read_file(ls, &info), 0);
		r = closure_resolve(&layer, 1, paths, 1, &c, &error);
		assert_int_equal(r, -ENOENT);
		assert_non_null(error);
		print_message("error: %s\n", error);
		assert_non_null(strstr(error, info->needed[0]));
		assert_non_null(strstr(error, "needed by /usr/bin/ls"));
		assert_non_null(strstr(error, "[root] packages"));
		assert_int_equal(c.n_files, 0);
		free(error);
		error = NULL;
		elf_info_free(info);
	}

	/* With its libraries in the layer, everything resolves inside it. */
	if (file_exists("/usr/lib/x86_64-linux-gnu/libselinux.so.1")) {
		char *const paths[] = {"/usr/bin/ls"};

		selinux = fs_path_join(libdir, "libselinux.so.1");
		pcre = fs_path_join(libdir, "libpcre2-8.so.0");
		copy_real("/usr/lib/x86_64-linux-gnu/libselinux.so.1", selinux);
		copy_real("/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0", pcre);
		libc = fs_path_join(libdir, "libc.so.6");
		copy_real(HOST_LIBC, libc);
		r = closure_resolve(&layer, 1, paths, 1, &c, &error);
		if (r < 0)
			fail_msg("%s", error);
		for (size_t i = 0; i < c.n_files; i++)
			assert_int_equal(c.files[i].layer, 0);
		closure_done(&c);
	}

	/* A path nobody has. */
	{
		char *const paths[] = {"/usr/bin/no-such-program"};

		assert_int_equal(closure_resolve(&layer, 1, paths, 1, &c, &error), -ENOENT);
		assert_non_null(strstr(error, "/usr/bin/no-such-program"));
		assert_non_null(strstr(error, "[root] binaries"));
		free(error);
		error = NULL;
	}

	/* A program for another architecture, given explicitly. */
	{
		char *const paths[] = {"/usr/bin/armprog"};

		synth_build(&s, buf);
		((Elf64_Ehdr *)buf)->e_machine = EM_AARCH64;
		write_file(arm, buf, sizeof(buf), 0755);
		assert_int_equal(closure_resolve(&layer, 1, paths, 1, &c, &error), -ENOTSUP);
		print_message("error: %s\n", error);
		assert_non_null(strstr(error, "another architecture"));
		assert_non_null(strstr(error, "x86-64"));
		free(error);
		error = NULL;
	}

	/* A relative path and a directory. */
	{
		char *const rel[] = {"usr/bin/ls"};
		char *const d[] = {"/usr/bin"};

		assert_int_equal(closure_resolve(&layer, 1, rel, 1, &c, &error), -EINVAL);
		free(error);
		error = NULL;
		assert_int_equal(closure_resolve(&layer, 1, d, 1, &c, &error), -EISDIR);
		free(error);
		error = NULL;
	}
}

/* RPATH, RUNPATH, $ORIGIN and the RPATH inheritance of ld.so, on synthetic files. */
static void test_closure_search_order(void **state)
{
	const char *dir = *state;
	const struct closure_layer layer = {.root = dir};
	static const struct {
		const char *file;
		struct synth s;
	} files[] = {
	    {"opt/a/libx.so.1", {.soname = "libx.so.1"}},
	    {"opt/b/libx.so.1", {.soname = "libx.so.1"}},
	    {"usr/lib/x86_64-linux-gnu/libx.so.1", {.soname = "libx.so.1"}},
	    {"usr/lib/x86_64-linux-gnu/libchain.so.1",
	     {.soname = "libchain.so.1", .needed = {"libx.so.1"}}},
	    {"usr/lib/prog/libprog.so.1", {.soname = "libprog.so.1"}},
	    {"usr/bin/prog-runpath",
	     {.runpath = "/nonexistent:$ORIGIN/../lib/prog", .needed = {"libprog.so.1"}}},
	    {"usr/bin/prog-both",
	     {.rpath = "/opt/a", .runpath = "/opt/b", .needed = {"libx.so.1"}}},
	    {"usr/bin/prog-rpath", {.rpath = "/opt/a", .needed = {"libchain.so.1"}}},
	    {"usr/bin/prog-runchain", {.runpath = "/opt/a", .needed = {"libchain.so.1"}}},
	    /* Needs libx twice: by soname after the first load, so once. */
	    {"usr/bin/prog-twice",
	     {.rpath = "/opt/b", .needed = {"libx.so.1", "libchain.so.1", "libx.so.1"}}},
	};
	static const struct {
		const char *program;
		const char *want[3];
	} cases[] = {
	    {"/usr/bin/prog-runpath", {"/usr/lib/prog/libprog.so.1"}},
	    {"/usr/bin/prog-both", {"/opt/b/libx.so.1"}},
	    {"/usr/bin/prog-rpath",
	     {"/usr/lib/x86_64-linux-gnu/libchain.so.1", "/opt/a/libx.so.1"}},
	    {"/usr/bin/prog-runchain",
	     {"/usr/lib/x86_64-linux-gnu/libchain.so.1", "/usr/lib/x86_64-linux-gnu/libx.so.1"}},
	    {"/usr/bin/prog-twice",
	     {"/opt/b/libx.so.1", "/usr/lib/x86_64-linux-gnu/libchain.so.1"}},
	};

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		_cleanup_free_ char *p = fs_path_join(dir, files[i].file);

		synth_write(p, &files[i].s);
	}
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *const paths[] = {(char *)cases[i].program};
		struct closure c = {0};
		char *error = NULL;
		size_t n_want = 0;
		int r;

		r = closure_resolve(&layer, 1, paths, 1, &c, &error);
		if (r < 0)
			fail_msg("%s: %s", cases[i].program, error);
		while (n_want < ARRAY_SIZE(cases[i].want) && cases[i].want[n_want])
			n_want++;
		if (c.n_files != 1 + n_want)
			for (size_t k = 0; k < c.n_files; k++)
				print_error("%s: got %s\n", cases[i].program,
					    c.files[k].image_path);
		assert_int_equal(c.n_files, 1 + n_want);
		for (size_t k = 0; k < n_want; k++)
			assert_string_equal(c.files[1 + k].image_path, cases[i].want[k]);
		closure_done(&c);
	}

	/* All programs at once: requested paths first, then libraries, no duplicates. */
	{
		char *paths[ARRAY_SIZE(cases)];
		struct closure c = {0};
		char *error = NULL;

		for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
			paths[i] = (char *)cases[i].program;
		assert_int_equal(closure_resolve(&layer, 1, paths, ARRAY_SIZE(paths), &c, &error),
				 0);
		for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
			assert_string_equal(c.files[i].image_path, cases[i].program);
		check_usrmerged(&c);
		assert_int_equal(c.n_files, ARRAY_SIZE(cases) + 5);
		closure_done(&c);
	}
}

static void test_closure_lookup_symlinks(void **state)
{
	const char *dir = *state;
	const struct closure_layer layer = {.root = dir};
	_cleanup_free_ char *etc = fs_path_join(dir, "etc");
	_cleanup_free_ char *target = fs_path_join(dir, "etc/real");
	char *host = NULL, *real = NULL;
	size_t l = 9;
	static const struct {
		const char *name, *target;
	} links[] = {
	    {"etc/escape-rel", "../../../../../../../etc/hostname"},
	    {"etc/escape-abs", "/etc/hostname"},
	    {"etc/loop-a", "loop-b"},
	    {"etc/loop-b", "loop-a"},
	    {"etc/good-rel", "../etc/./real"},
	    {"etc/good-abs", "/etc/real"},
	    {"etc/dir-link", "/etc"},
	    {"etc/chain", "dir-link/dir-link/good-abs"},
	};

	assert_int_equal(fs_mkdir_p(etc, 0755), 0);
	write_file(target, "x", 1, 0644);
	for (size_t i = 0; i < ARRAY_SIZE(links); i++) {
		_cleanup_free_ char *p = fs_path_join(dir, links[i].name);

		assert_int_equal(symlink(links[i].target, p), 0);
	}
	/* Links that point out of the root stay inside it (and find nothing there). */
	assert_int_equal(closure_lookup(&layer, 1, "/etc/escape-rel", &host, &real, &l), -ENOENT);
	assert_int_equal(closure_lookup(&layer, 1, "/etc/escape-abs", &host, &real, &l), -ENOENT);
	assert_int_equal(closure_lookup(&layer, 1, "/../../etc/hostname", &host, &real, &l),
			 -ENOENT);
	assert_int_equal(closure_lookup(&layer, 1, "/etc/loop-a", &host, &real, &l), -ELOOP);
	assert_int_equal(closure_lookup(&layer, 1, "/etc", &host, &real, &l), -EISDIR);
	assert_int_equal(closure_lookup(&layer, 1, "/etc/real/x", &host, &real, &l), -ENOENT);
	assert_null(host);
	assert_int_equal(l, 9);

	static const char *const good[] = {"/etc/good-rel", "/etc/good-abs", "/etc/chain",
					   "/etc/dir-link/../etc/real"};
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		assert_int_equal(closure_lookup(&layer, 1, good[i], &host, &real, &l), 0);
		assert_string_equal(host, target);
		assert_string_equal(real, "/etc/real");
		assert_int_equal(l, 0);
		free(host);
		free(real);
		host = real = NULL;
	}
}

static void test_closure_usrmerge(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"/bin/sh", "/usr/bin/sh"},
	    {"/sbin/init", "/usr/sbin/init"},
	    {"/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"},
	    {"/lib64/ld-linux-x86-64.so.2", "/usr/lib64/ld-linux-x86-64.so.2"},
	    {"/lib", "/usr/lib"},
	    {"/usr/lib/x", "/usr/lib/x"},
	    {"/libexec/x", "/libexec/x"},
	    {"/lib32/x", "/lib32/x"},
	    {"/etc/passwd", "/etc/passwd"},
	    {"//lib//./x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu"},
	    {"/usr/bin/../lib/x", "/usr/lib/x"},
	    {"/../bin/x", "/usr/bin/x"},
	    {"/", "/"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *m = closure_usrmerge_path(cases[i].in);

		assert_non_null(m);
		assert_string_equal(m, cases[i].out);
		free(m);
	}
}

static int setup_tmpdir(void **state)
{
	char *dir = NULL;

	if (fs_mkdtemp("/tmp", "vmhpc-test-elf-", &dir) < 0)
		return -1;
	*state = dir;
	return 0;
}

static int teardown_tmpdir(void **state)
{
	char *dir = *state;

	if (dir)
		fs_rm_rf(dir);
	free(dir);
	return 0;
}

/* A search list's entries in order, $ORIGIN expanded, relative and empty ones skipped. */
static void test_closure_next_candidate(void **state)
{
	const char *list = "/a::rel/dir:$ORIGIN/../lib:${ORIGIN}:/b/", *pos = list;
	const char *want[] = {"/a/libx.so", "/opt/app/bin/../lib/libx.so", "/opt/app/bin/libx.so",
			      "/b//libx.so"};
	char candidate[PATH_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		assert_int_equal(closure_next_candidate(&pos, "/opt/app/bin", "libx.so", candidate),
				 1);
		assert_string_equal(candidate, want[i]);
	}
	assert_int_equal(closure_next_candidate(&pos, "/opt/app/bin", "libx.so", candidate), 0);
	assert_int_equal(closure_next_candidate(&pos, "/opt/app/bin", "libx.so", candidate), 0);
	pos = "";
	assert_int_equal(closure_next_candidate(&pos, "/", "libx.so", candidate), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmpdir, teardown_tmpdir)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_elf_ls),
	    T(test_elf_libc),
	    T(test_elf_mpiexec),
	    T(test_elf_static),
	    T(test_elf_not_elf),
	    T(test_elf_other_arch),
	    T(test_elf_synthetic),
	    T(test_elf_truncated),
	    T(test_elf_fuzz),
	    T(test_elf_fuzz_synthetic),
	    T(test_closure_usrmerge),
	    T(test_closure_lookup_symlinks),
	    T(test_closure_vs_ld_so),
	    T(test_closure_static_and_script),
	    T(test_closure_layers),
	    T(test_closure_missing),
	    T(test_closure_search_order),
	    T(test_closure_next_candidate),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
