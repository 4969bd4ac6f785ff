/* A reader for the parts of an ELF file the image builder needs: class and machine, the
 * program interpreter, and the dynamic section's DT_NEEDED, DT_SONAME, DT_RPATH and
 * DT_RUNPATH. It reads the file itself; it never runs it (unlike ldd). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest ELF file the reader maps (guards against absurd inputs). */
#define ELF_MAX_FILE_BYTES (2ull * 1024 * 1024 * 1024)

struct elf_info {
	uint16_t machine; /* e_machine, EM_X86_64 for every file that elf_read_file accepts */
	uint16_t type;	  /* e_type: ET_EXEC or ET_DYN */
	bool is_dynamic;  /* has a PT_DYNAMIC segment */
	char *interp;	  /* PT_INTERP, or NULL (static or a shared library) */
	char *soname;	  /* DT_SONAME, or NULL */
	char *rpath;	  /* DT_RPATH (':'-separated), or NULL */
	char *runpath;	  /* DT_RUNPATH, or NULL */
	size_t n_needed;
	char **needed; /* DT_NEEDED in file order */
};

/* Reads path. Errors: -ENOEXEC not an ELF file; -ENOTSUP an ELF file that is not
 * x86-64 little-endian 64-bit; -EBADMSG truncated or inconsistent; other -errno from
 * open/read. The caller frees *ret_info with elf_info_free(). */
int elf_read_file(const char *path, struct elf_info **ret_info);

/* Same for a file already in memory (the caller keeps the buffer). */
int elf_read_buffer(const void *data, size_t len, struct elf_info **ret_info);

/* Frees info; NULL is a no-op. Returns NULL. */
struct elf_info *elf_info_free(struct elf_info *info);
