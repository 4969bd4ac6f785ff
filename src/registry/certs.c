#include "registry/certs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *certs_find_ca(const char *registry)
{
	const char *env = getenv("VMHPC_CERTS_DIR");
	char *dirs = strdup(env && *env ? env : CERTS_DIRS_DEFAULT), *save = NULL, *found = NULL;

	if (!dirs || strchr(registry, '/') || strcmp(registry, "..") == 0 ||
	    strcmp(registry, ".") == 0) {
		free(dirs);
		return NULL;
	}
	for (char *d = strtok_r(dirs, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
		struct stat st;
		char *path = NULL;

		if (asprintf(&path, "%s/%s/ca.crt", d, registry) < 0)
			break;
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			found = path;
		else
			free(path);
	}
	free(dirs);
	return found;
}
