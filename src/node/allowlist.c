#include "node/allowlist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "registry/reference.h"
#include "util/error.h"

/* "a, b, c" (caller frees); NULL without memory. */
static char *join_list(const char *const *allowed)
{
	size_t len = 1;
	char *out, *p;

	for (size_t i = 0; allowed[i]; i++)
		len += strlen(allowed[i]) + 2;
	out = p = malloc(len);
	if (!out)
		return NULL;
	*p = '\0';
	for (size_t i = 0; allowed[i]; i++)
		p += sprintf(p, "%s%s", i ? ", " : "", allowed[i]);
	return out;
}

int node_allowlist_check(const char *const *allowed, const char *ref_text, char **ret_error)
{
	struct reference *ref = NULL;
	char *why = NULL, *list;
	int r;

	r = reference_parse(ref_text, &ref, &why);
	if (r < 0) {
		r = error_set(ret_error, r, "%s", why ? why : "not an image reference");
		free(why);
		return r;
	}
	r = 0;
	if (allowed && allowed[0]) {
		r = -EPERM;
		for (size_t i = 0; allowed[i] && r < 0; i++)
			if (strcasecmp(allowed[i], ref->registry) == 0)
				r = 0;
	}
	if (r < 0) {
		list = join_list(allowed);
		r = error_set(ret_error, r,
			      "registry %s is not one this node pulls from (its --registry list: "
			      "%s); push the image to one of those",
			      ref->registry, list ? list : "?");
		free(list);
	}
	reference_free(ref);
	return r;
}
