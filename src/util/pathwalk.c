#include "util/pathwalk.h"

#include <errno.h>
#include <string.h>

const char *pathwalk_next(const char **p, size_t *ret_len)
{
	const char *start = *p;

	while (*start == '/')
		start++;
	if (!*start)
		return NULL;
	*p = strchrnul(start, '/');
	*ret_len = (size_t)(*p - start);
	return start;
}

int pathwalk_resolve(const char *path, pathwalk_lookup_fn lookup, void *userdata,
		     char out[static PATH_MAX], enum pathwalk_kind *ret_kind)
{
	char todo[PATH_MAX], target[PATH_MAX];
	size_t done_len = 0;
	unsigned n_links = 0;
	enum pathwalk_kind kind = PATHWALK_DIR;
	const char *p, *end;
	size_t n;
	int r;

	if (path[0] != '/')
		return -EINVAL;
	if (strlen(path) >= PATH_MAX)
		return -ENAMETOOLONG;
	strcpy(todo, path);
	out[0] = '\0'; /* out is the resolved prefix: "" stands for the root */
	end = todo;
	while ((p = pathwalk_next(&end, &n))) {
		if (kind != PATHWALK_DIR)
			return -ENOTDIR;
		if (n == 1 && p[0] == '.')
			continue;
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			char *slash = strrchr(out, '/');

			if (slash) {
				*slash = '\0';
				done_len = (size_t)(slash - out);
			}
			continue;
		}
		if (done_len + 1 + n >= PATH_MAX)
			return -ENAMETOOLONG;
		out[done_len] = '/';
		memcpy(out + done_len + 1, p, n);
		out[done_len + 1 + n] = '\0';
		r = lookup(out, &kind, target, userdata);
		if (r < 0)
			return r;
		if (kind == PATHWALK_LINK) {
			size_t t = strlen(target), rest = strlen(end);

			out[done_len] = '\0';
			if (++n_links > PATHWALK_SYMLINKS_MAX)
				return -ELOOP;
			if (t == 0)
				return -ENOENT;
			if (t + rest >= sizeof(todo))
				return -ENAMETOOLONG;
			/* The rest of the walk is the link's target followed by what was left;
			 * memmove because end points into todo. */
			memmove(todo + t, end, rest + 1);
			memcpy(todo, target, t);
			end = todo;
			if (target[0] == '/') {
				out[0] = '\0';
				done_len = 0;
			}
			kind = PATHWALK_DIR;
			continue;
		}
		done_len += 1 + n;
	}
	if (done_len == 0)
		strcpy(out, "/");
	*ret_kind = kind;
	return 0;
}
