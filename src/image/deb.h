/* Debian packages as sources of files: downloaded with `apt-get download` and unpacked
 * with `dpkg-deb -x` into a cache, never installed on the host. Cache layout:
 * <cache>/debs/<file>.deb and <cache>/unpacked/<file>/ (both filled atomically by rename). */
#pragma once

#include <stddef.h>

struct deb_package {
	char *name;
	char *version;
	char *arch;
	char *deb_path; /* the .deb in the cache */
	char *root;	/* its unpacked tree in the cache */
};

/* Fetches (or finds in cache_dir) the candidate version of package name and unpacks it.
 * On failure *ret_error (caller frees) names the package and what to do. The caller
 * frees *ret_package with deb_package_free(). */
int deb_fetch(const char *cache_dir, const char *name, struct deb_package **ret_package,
	      char **ret_error);

/* Fetches several packages, asking apt once; *ret_packages (n entries) is freed with
 * deb_packages_free(). */
int deb_fetch_many(const char *cache_dir, char *const *names, size_t n,
		   struct deb_package ***ret_packages, char **ret_error);
void deb_packages_free(struct deb_package **pkgs, size_t n);

/* Reads one control field of a .deb (e.g. "Depends"); caller frees *ret_value. */
int deb_read_field(const char *deb_path, const char *field, char **ret_value);

/* Frees p; NULL is a no-op. Returns NULL. */
struct deb_package *deb_package_free(struct deb_package *p);

/* Finds which installed package owns each host path (dpkg's file lists) and its version.
 * ret_owners[i] (caller frees each and the array) is "package version" or NULL. */
int deb_host_owners(char *const *paths, size_t n_paths, char ***ret_owners);
