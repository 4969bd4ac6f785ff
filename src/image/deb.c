#include "image/deb.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"

struct deb_package *deb_package_free(struct deb_package *p)
{
	if (!p)
		return NULL;
	free(p->name);
	free(p->version);
	free(p->arch);
	free(p->deb_path);
	free(p->root);
	free(p);
	return NULL;
}

/* Value of "Field: value" in a control-format text (first match), caller frees. */
static char *control_field(const char *text, const char *field)
{
	size_t flen = strlen(field);

	for (const char *line = text; line && *line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
			const char *v = line + flen + 1;
			const char *end = strchr(v, '\n');

			while (*v == ' ')
				v++;
			return strndup(v, end ? (size_t)(end - v) : strlen(v));
		}
	}
	return NULL;
}

/* The file name apt-get download gives a package: name_version_arch.deb, ':' as %3a. */
static char *deb_file_name(const char *name, const char *version, const char *arch)
{
	_cleanup_free_ char *v = malloc(strlen(version) * 3 + 1);
	char *out = NULL, *q;

	if (!v)
		return NULL;
	q = v;
	for (const char *p = version; *p; p++) {
		if (*p == ':') {
			memcpy(q, "%3a", 3);
			q += 3;
		} else {
			*q++ = *p;
		}
	}
	*q = '\0';
	if (asprintf(&out, "%s_%s_%s.deb", name, v, arch) < 0)
		return NULL;
	return out;
}

static int ensure_downloaded(const char *cache_dir, struct deb_package *p, const char *file,
			     char **ret_error)
{
	_cleanup_free_ char *debs = NULL, *tmpparent = NULL, *tmp = NULL, *got = NULL;
	_cleanup_free_ char *out = NULL, *err = NULL, *last = NULL;
	char *argv[] = {"apt-get", "download", "-q", p->name, NULL};
	struct proc_options opts = {.stdout_fd = -1};
	int r, code;

	if (asprintf(&debs, "%s/debs", cache_dir) < 0 ||
	    asprintf(&tmpparent, "%s/tmp", cache_dir) < 0)
		return -ENOMEM;
	p->deb_path = fs_path_join(debs, file);
	if (!p->deb_path)
		return -ENOMEM;
	if (fs_exists(p->deb_path))
		return 0;
	if ((r = fs_mkdir_p(debs, 0755)) < 0 || (r = fs_mkdir_p(tmpparent, 0755)) < 0 ||
	    (r = fs_mkdtemp(tmpparent, "download-", &tmp)) < 0)
		return error_set(ret_error, r, "package cache %s: %s", cache_dir, strerror(-r));
	/* apt drops privileges to _apt for downloads; let it write here. */
	chmod(tmp, 0777);
	opts.cwd = tmp;
	log_info("downloading Debian package %s %s", p->name, p->version);
	r = proc_run(argv, &opts, &out, &err, &code);
	if (r < 0) {
		fs_rm_rf(tmp);
		return error_set(ret_error, r, "running apt-get: %s; is apt installed?",
				 strerror(-r));
	}
	got = fs_path_join(tmp, file);
	if (code != 0 || !got || !fs_exists(got)) {
		last = proc_last_line(err);
		fs_rm_rf(tmp);
		return error_set(ret_error, -EIO,
				 "downloading Debian package '%s' failed (apt-get download: %s); "
				 "check the network or run apt-get update",
				 p->name, last && *last ? last : "no file");
	}
	if (rename(got, p->deb_path) < 0) {
		r = -errno;
		fs_rm_rf(tmp);
		return error_set(ret_error, r, "package cache %s: %s", debs, strerror(-r));
	}
	fs_rm_rf(tmp);
	return 0;
}

static int ensure_unpacked(const char *cache_dir, struct deb_package *p, const char *file,
			   char **ret_error)
{
	_cleanup_free_ char *unpacked = NULL, *tmpparent = NULL, *tmp = NULL;
	_cleanup_free_ char *err = NULL, *last = NULL;
	size_t flen = strlen(file);
	int r, code;

	if (asprintf(&unpacked, "%s/unpacked", cache_dir) < 0 ||
	    asprintf(&tmpparent, "%s/tmp", cache_dir) < 0)
		return -ENOMEM;
	p->root = malloc(strlen(unpacked) + flen + 2);
	if (!p->root)
		return -ENOMEM;
	sprintf(p->root, "%s/%.*s", unpacked, (int)(flen - 4), file); /* without ".deb" */
	if (fs_exists(p->root))
		return 0;
	if ((r = fs_mkdir_p(unpacked, 0755)) < 0 ||
	    (r = fs_mkdtemp(tmpparent, "unpack-", &tmp)) < 0)
		return error_set(ret_error, r, "package cache %s: %s", cache_dir, strerror(-r));
	{
		char *argv[] = {"dpkg-deb", "-x", p->deb_path, tmp, NULL};

		r = proc_run(argv, NULL, NULL, &err, &code);
	}
	if (r < 0 || code != 0) {
		last = proc_last_line(err);
		fs_rm_rf(tmp);
		unlink(p->deb_path); /* a damaged download: fetch it again next time */
		return error_set(
		    ret_error, r < 0 ? r : -EIO,
		    "unpacking Debian package '%s' failed (%s); it was removed from the "
		    "cache, try again",
		    p->name, last && *last ? last : strerror(-r));
	}
	/* Another build may have unpacked the same package meanwhile: theirs is as good. */
	if (rename(tmp, p->root) < 0) {
		r = -errno;
		fs_rm_rf(tmp);
		if (r != -EEXIST && r != -ENOTEMPTY)
			return error_set(ret_error, r, "package cache %s: %s", unpacked,
					 strerror(-r));
	}
	return 0;
}

/* Asks apt for the candidate version and architecture of every name in one run (each
 * apt-cache start costs about a second). */
static int query_candidates(char *const *names, size_t n, struct deb_package **pkgs,
			    char **ret_error)
{
	_cleanup_free_ char *out = NULL, *err = NULL, *last = NULL;
	_cleanup_free_ char **argv = calloc(n + 4, sizeof(char *));
	int r, code;

	if (!argv)
		return -ENOMEM;
	argv[0] = "apt-cache";
	argv[1] = "show";
	argv[2] = "--no-all-versions";
	for (size_t i = 0; i < n; i++)
		argv[3 + i] = names[i];
	r = proc_run(argv, NULL, &out, &err, &code);
	if (r < 0)
		return error_set(ret_error, r, "running apt-cache: %s; is apt installed?",
				 strerror(-r));
	/* Stanzas are separated by blank lines; each names its Package. */
	for (char *stanza = out; stanza && *stanza;) {
		char *end = strstr(stanza, "\n\n");
		_cleanup_free_ char *name = NULL;

		if (end)
			*end = '\0';
		name = control_field(stanza, "Package");
		for (size_t i = 0; name && i < n; i++) {
			if (pkgs[i]->version || strcmp(pkgs[i]->name, name) != 0)
				continue;
			pkgs[i]->version = control_field(stanza, "Version");
			pkgs[i]->arch = control_field(stanza, "Architecture");
		}
		stanza = end ? end + 2 : NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (pkgs[i]->version && pkgs[i]->arch)
			continue;
		last = proc_last_line(err);
		return error_set(
		    ret_error, -ENOENT,
		    "Debian package '%s' not found (apt-cache: %s); check the name with "
		    "`apt-cache search`, or run `apt-get update`",
		    pkgs[i]->name, last && *last ? last : "no candidate version");
	}
	return 0; /* apt-cache exits non-zero when any name is unknown: judged above */
}

int deb_fetch_many(const char *cache_dir, char *const *names, size_t n,
		   struct deb_package ***ret_packages, char **ret_error)
{
	struct deb_package **pkgs = calloc(n + 1, sizeof(*pkgs));
	int r = 0;

	if (!pkgs)
		return -ENOMEM;
	for (size_t i = 0; i < n && r == 0; i++) {
		pkgs[i] = calloc(1, sizeof(**pkgs));
		if (!pkgs[i] || !(pkgs[i]->name = strdup(names[i])))
			r = -ENOMEM;
	}
	if (r == 0 && n > 0)
		r = query_candidates(names, n, pkgs, ret_error);
	for (size_t i = 0; i < n && r == 0; i++) {
		_cleanup_free_ char *file =
		    deb_file_name(pkgs[i]->name, pkgs[i]->version, pkgs[i]->arch);

		r = file ? ensure_downloaded(cache_dir, pkgs[i], file, ret_error) : -ENOMEM;
		if (r == 0)
			r = ensure_unpacked(cache_dir, pkgs[i], file, ret_error);
	}
	if (r < 0) {
		deb_packages_free(pkgs, n);
		return r;
	}
	*ret_packages = pkgs;
	return 0;
}

void deb_packages_free(struct deb_package **pkgs, size_t n)
{
	for (size_t i = 0; pkgs && i < n; i++)
		deb_package_free(pkgs[i]);
	free(pkgs);
}

int deb_fetch(const char *cache_dir, const char *name, struct deb_package **ret_package,
	      char **ret_error)
{
	struct deb_package **pkgs = NULL;
	char *names[] = {(char *)name};
	int r = deb_fetch_many(cache_dir, names, 1, &pkgs, ret_error);

	if (r < 0)
		return r;
	*ret_package = TAKE_PTR(pkgs[0]);
	free(pkgs);
	return 0;
}

int deb_read_field(const char *deb_path, const char *field, char **ret_value)
{
	_cleanup_free_ char *out = NULL;
	char *argv[] = {"dpkg-deb", "-f", (char *)deb_path, (char *)field, NULL};
	int r, code;

	r = proc_run(argv, NULL, &out, NULL, &code);
	if (r < 0)
		return r;
	if (code != 0)
		return -EIO;
	out[strcspn(out, "\n")] = '\0';
	*ret_value = TAKE_PTR(out);
	return 0;
}

static char *package_version(const char *pkg)
{
	_cleanup_free_ char *out = NULL;
	char *argv[] = {"dpkg-query", "-W", "-f", "${Version}", (char *)pkg, NULL};
	int code;

	if (proc_run(argv, NULL, &out, NULL, &code) < 0 || code != 0)
		return NULL;
	return TAKE_PTR(out);
}

/* dpkg may list a file under /lib while the merged-/usr host path is /usr/lib. */
static bool same_host_path(const char *listed, const char *path)
{
	return strcmp(listed, path) == 0 ||
	       (strncmp(path, "/usr/", 5) == 0 && strcmp(listed, path + 4) == 0);
}

int deb_host_owners(char *const *paths, size_t n_paths, char ***ret_owners)
{
	const char *info = "/var/lib/dpkg/info";
	char **owners = calloc(n_paths ? n_paths : 1, sizeof(char *));
	size_t found = 0;
	DIR *d;
	struct dirent *de;

	if (!owners)
		return -ENOMEM;
	d = opendir(info);
	if (!d) {
		*ret_owners = owners; /* not a Debian host: nothing is owned */
		return 0;
	}
	while (found < n_paths && (de = readdir(d))) {
		size_t len = strlen(de->d_name);
		_cleanup_free_ char *list = NULL, *text = NULL, *pkg = NULL;

		if (len < 6 || strcmp(de->d_name + len - 5, ".list") != 0)
			continue;
		list = fs_path_join(info, de->d_name);
		if (!list || fs_read_file(list, 64u << 20, &text, NULL) < 0)
			continue;
		pkg = strndup(de->d_name, len - 5);
		if (!pkg)
			continue;
		/* "name:arch" file names: the package name is before the colon. */
		pkg[strcspn(pkg, ":")] = '\0';
		char *save = NULL;

		for (char *line = strtok_r(text, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			for (size_t i = 0; i < n_paths; i++) {
				_cleanup_free_ char *v = NULL;

				if (owners[i] || !same_host_path(line, paths[i]))
					continue;
				v = package_version(pkg);
				if (asprintf(&owners[i], "%s %s", pkg, v ? v : "?") < 0)
					owners[i] = NULL;
				found++;
			}
		}
	}
	closedir(d);
	*ret_owners = owners;
	return 0;
}
