/* ELF64 reader for the image builder: program interpreter and dynamic-section strings.
 *
 * Files come from Debian packages and user trees, so nothing in them is trusted: every
 * offset and size is checked against the bytes actually present before it is used, with
 * overflow-safe arithmetic, and every string must end inside its table. */
#include "image/elf.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/log.h"

/* Longest string kept (a library name or search path list); longer is nonsense that
 * would only let a crafted file make us copy gigabytes. */
#define ELF_STRING_MAX_BYTES (64 * 1024)
/* Most DT_NEEDED entries kept per object (real programs have tens). */
#define ELF_NEEDED_MAX 4096

/* One view of the file: every read goes through in_bounds() first. */
struct elf_view {
	const uint8_t *data;
	size_t len;
};

/* True when [offset, offset + size) lies inside the file. */
static bool in_bounds(const struct elf_view *v, uint64_t offset, uint64_t size)
{
	return offset <= v->len && size <= v->len - offset;
}

/* Copies a NUL-terminated string that must end within max_bytes of start and be shorter
 * than ELF_STRING_MAX_BYTES. */
static int copy_string(const struct elf_view *v, uint64_t start, uint64_t max_bytes, char **ret)
{
	const char *s;
	size_t n;
	char *copy;

	if (!in_bounds(v, start, max_bytes) || max_bytes == 0)
		return -EBADMSG;
	s = (const char *)v->data + start;
	n = strnlen(s,
		    (size_t)(max_bytes < ELF_STRING_MAX_BYTES ? max_bytes : ELF_STRING_MAX_BYTES));
	if (n == max_bytes)
		return -EBADMSG; /* no terminating NUL inside the table */
	if (n >= ELF_STRING_MAX_BYTES)
		return -EBADMSG;
	copy = strndup(s, n);
	if (!copy)
		return -ENOMEM;
	*ret = copy;
	return 0;
}

struct elf_info *elf_info_free(struct elf_info *info)
{
	if (!info)
		return NULL;
	free(info->interp);
	free(info->soname);
	free(info->rpath);
	free(info->runpath);
	for (size_t i = 0; i < info->n_needed; i++)
		free(info->needed[i]);
	free(info->needed);
	free(info);
	return NULL;
}

static void elf_info_freep(struct elf_info **p)
{
	elf_info_free(*p);
}

/* Checks e_ident and the fixed header fields; fills *ret_ehdr (copied, so no alignment
 * assumptions about the mapping). */
static int read_header(const struct elf_view *v, Elf64_Ehdr *ret_ehdr)
{
	/* Class and byte order are judged before the full header length, so that a short
	 * 32-bit file still reads as "not ours" rather than "damaged". */
	if (v->len < SELFMAG || memcmp(v->data, ELFMAG, SELFMAG) != 0)
		return -ENOEXEC;
	if (v->len < EI_NIDENT)
		return -EBADMSG;
	if (v->data[EI_CLASS] != ELFCLASS64 || v->data[EI_DATA] != ELFDATA2LSB)
		return -ENOTSUP;
	if (v->len < sizeof(Elf64_Ehdr))
		return -EBADMSG;
	memcpy(ret_ehdr, v->data, sizeof(*ret_ehdr));
	if (ret_ehdr->e_machine != EM_X86_64)
		return -ENOTSUP;
	if (ret_ehdr->e_type != ET_EXEC && ret_ehdr->e_type != ET_DYN)
		return -ENOTSUP; /* objects (.o) and core dumps are not loadable */
	if (ret_ehdr->e_ident[EI_VERSION] != EV_CURRENT)
		return -EBADMSG;
	return 0;
}

/* Number of program headers, following the PN_XNUM escape to section 0's sh_info. */
static int program_header_count(const struct elf_view *v, const Elf64_Ehdr *ehdr, uint64_t *ret_n)
{
	Elf64_Shdr sh0;

	if (ehdr->e_phnum != PN_XNUM) {
		*ret_n = ehdr->e_phnum;
		return 0;
	}
	if (ehdr->e_shoff == 0 || ehdr->e_shentsize < sizeof(Elf64_Shdr) ||
	    !in_bounds(v, ehdr->e_shoff, sizeof(Elf64_Shdr)))
		return -EBADMSG;
	memcpy(&sh0, v->data + ehdr->e_shoff, sizeof(sh0));
	*ret_n = sh0.sh_info;
	return 0;
}

/* Maps a virtual address to a file offset through the PT_LOAD segments; *ret_avail_bytes
 * is how many file-backed bytes the segment holds from there on. */
static int vaddr_to_offset(const struct elf_view *v, const Elf64_Ehdr *ehdr, uint64_t n_phdr,
			   uint64_t vaddr, uint64_t *ret_offset, uint64_t *ret_avail_bytes)
{
	for (uint64_t i = 0; i < n_phdr; i++) {
		Elf64_Phdr ph;
		uint64_t delta;

		memcpy(&ph, v->data + ehdr->e_phoff + i * ehdr->e_phentsize, sizeof(ph));
		if (ph.p_type != PT_LOAD)
			continue;
		if (vaddr < ph.p_vaddr)
			continue;
		delta = vaddr - ph.p_vaddr;
		if (delta >= ph.p_filesz)
			continue;
		if (!in_bounds(v, ph.p_offset, ph.p_filesz))
			return -EBADMSG;
		*ret_offset = ph.p_offset + delta;
		*ret_avail_bytes = ph.p_filesz - delta;
		return 0;
	}
	return -EBADMSG;
}

static int push_needed(struct elf_info *info, char *name)
{
	char **n;

	if (info->n_needed >= ELF_NEEDED_MAX)
		return -EBADMSG;
	/* Grow in powers of two; the count is bounded by the dynamic section's size. */
	if ((info->n_needed & (info->n_needed - 1)) == 0) {
		size_t cap = info->n_needed ? info->n_needed * 2 : 4;

		n = reallocarray(info->needed, cap, sizeof(char *));
		if (!n)
			return -ENOMEM;
		info->needed = n;
	}
	info->needed[info->n_needed++] = name;
	return 0;
}

static int read_dynamic(const struct elf_view *v, const Elf64_Ehdr *ehdr, uint64_t n_phdr,
			const Elf64_Phdr *dyn, struct elf_info *info)
{
	uint64_t n_dyn, strtab_vaddr = 0, strsz = 0, strtab_off, strtab_avail;
	bool have_strtab = false, have_strsz = false;
	uint64_t soname_off = 0, rpath_off = 0, runpath_off = 0;
	bool have_soname = false, have_rpath = false, have_runpath = false;
	size_t n_needed_entries = 0;
	_cleanup_free_ uint64_t *needed_offs = NULL;
	int r;

	if (!in_bounds(v, dyn->p_offset, dyn->p_filesz))
		return -EBADMSG;
	n_dyn = dyn->p_filesz / sizeof(Elf64_Dyn);

	/* First pass: the string table's place and the string offsets. */
	for (uint64_t i = 0; i < n_dyn; i++) {
		Elf64_Dyn d;

		memcpy(&d, v->data + dyn->p_offset + i * sizeof(Elf64_Dyn), sizeof(d));
		if (d.d_tag == DT_NULL)
			break;
		switch (d.d_tag) {
		case DT_STRTAB:
			strtab_vaddr = d.d_un.d_ptr;
			have_strtab = true;
			break;
		case DT_STRSZ:
			strsz = d.d_un.d_val;
			have_strsz = true;
			break;
		case DT_NEEDED:
			n_needed_entries++;
			break;
		case DT_SONAME:
			soname_off = d.d_un.d_val;
			have_soname = true;
			break;
		case DT_RPATH:
			rpath_off = d.d_un.d_val;
			have_rpath = true;
			break;
		case DT_RUNPATH:
			runpath_off = d.d_un.d_val;
			have_runpath = true;
			break;
		default:
			break;
		}
	}

	if (n_needed_entries == 0 && !have_soname && !have_rpath && !have_runpath)
		return 0; /* nothing refers to the string table */
	if (!have_strtab)
		return -EBADMSG;
	r = vaddr_to_offset(v, ehdr, n_phdr, strtab_vaddr, &strtab_off, &strtab_avail);
	if (r < 0)
		return r;
	/* Without DT_STRSZ the table can run to the end of its segment, no further. */
	if (!have_strsz)
		strsz = strtab_avail;
	if (strsz > strtab_avail || !in_bounds(v, strtab_off, strsz))
		return -EBADMSG;

#define STRING_AT(o, dst)                                                                          \
	do {                                                                                       \
		if ((o) >= strsz)                                                                  \
			return -EBADMSG;                                                           \
		r = copy_string(v, strtab_off + (o), strsz - (o), (dst));                          \
		if (r < 0)                                                                         \
			return r;                                                                  \
	} while (0)

	if (have_soname)
		STRING_AT(soname_off, &info->soname);
	if (have_rpath)
		STRING_AT(rpath_off, &info->rpath);
	if (have_runpath)
		STRING_AT(runpath_off, &info->runpath);

	/* Second pass keeps DT_NEEDED in file order. */
	for (uint64_t i = 0; i < n_dyn; i++) {
		Elf64_Dyn d;
		char *name = NULL;

		memcpy(&d, v->data + dyn->p_offset + i * sizeof(Elf64_Dyn), sizeof(d));
		if (d.d_tag == DT_NULL)
			break;
		if (d.d_tag != DT_NEEDED)
			continue;
		STRING_AT(d.d_un.d_val, &name);
		if (name[0] == '\0') {
			free(name);
			return -EBADMSG;
		}
		r = push_needed(info, name);
		if (r < 0) {
			free(name);
			return r;
		}
	}
#undef STRING_AT
	return 0;
}

int elf_read_buffer(const void *data, size_t len, struct elf_info **ret_info)
{
	_cleanup_(elf_info_freep) struct elf_info *info = NULL;
	const struct elf_view v = {.data = data, .len = len};
	Elf64_Ehdr ehdr;
	Elf64_Phdr interp_ph = {0}, dyn_ph = {0};
	bool have_interp = false;
	uint64_t n_phdr;
	int r;

	r = read_header(&v, &ehdr);
	if (r < 0)
		return r;
	r = program_header_count(&v, &ehdr, &n_phdr);
	if (r < 0)
		return r;
	if (n_phdr > 0) {
		if (ehdr.e_phentsize != sizeof(Elf64_Phdr))
			return -EBADMSG;
		/* n_phdr < 2^32 and e_phentsize is 56, so the product cannot overflow. */
		if (!in_bounds(&v, ehdr.e_phoff, n_phdr * sizeof(Elf64_Phdr)))
			return -EBADMSG;
	}

	info = calloc(1, sizeof(*info));
	if (!info)
		return -ENOMEM;
	info->machine = ehdr.e_machine;
	info->type = ehdr.e_type;

	/* The first PT_INTERP and PT_DYNAMIC count, as for the kernel and ld.so. */
	for (uint64_t i = 0; i < n_phdr; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, v.data + ehdr.e_phoff + i * sizeof(Elf64_Phdr), sizeof(ph));
		if (ph.p_type == PT_INTERP && !have_interp) {
			interp_ph = ph;
			have_interp = true;
		} else if (ph.p_type == PT_DYNAMIC && !info->is_dynamic) {
			dyn_ph = ph;
			info->is_dynamic = true;
		}
	}

	if (have_interp) {
		/* The kernel refuses interpreter names shorter than 2 bytes or over PATH_MAX. */
		if (interp_ph.p_filesz < 2 || interp_ph.p_filesz > PATH_MAX)
			return -EBADMSG;
		r = copy_string(&v, interp_ph.p_offset, interp_ph.p_filesz, &info->interp);
		if (r < 0)
			return r;
		if (info->interp[0] == '\0')
			return -EBADMSG;
	}
	if (info->is_dynamic) {
		r = read_dynamic(&v, &ehdr, n_phdr, &dyn_ph, info);
		if (r < 0)
			return r;
	}

	*ret_info = TAKE_PTR(info);
	return 0;
}

struct mapping {
	void *addr;
	size_t len;
};

static void mapping_done(struct mapping *m)
{
	if (m->addr && m->addr != MAP_FAILED)
		munmap(m->addr, m->len);
}

int elf_read_file(const char *path, struct elf_info **ret_info)
{
	/* O_NONBLOCK: opening a FIFO planted in an input tree must not hang the build. */
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	_cleanup_(mapping_done) struct mapping m = {0};
	struct stat st;
	int r;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -ENOEXEC;
	if ((uint64_t)st.st_size > ELF_MAX_FILE_BYTES)
		return -EFBIG;
	if (st.st_size < (off_t)sizeof(Elf64_Ehdr)) {
		/* Too small to map usefully; a short read still tells ENOEXEC from EBADMSG. */
		uint8_t buf[sizeof(Elf64_Ehdr)];
		ssize_t n = pread(fd, buf, sizeof(buf), 0);

		if (n < 0)
			return -errno;
		return elf_read_buffer(buf, (size_t)n, ret_info);
	}

	/* Mapping reads only the pages the headers point at, even for a 100 MB library. The
	 * files are build inputs that nobody truncates while we read them (that would SIGBUS). */
	m.len = (size_t)st.st_size;
	m.addr = mmap(NULL, m.len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m.addr == MAP_FAILED)
		return -errno;
	r = elf_read_buffer(m.addr, m.len, ret_info);
	if (r < 0)
		log_debug("reading ELF headers of %s: %s", path, strerror(-r));
	return r;
}
