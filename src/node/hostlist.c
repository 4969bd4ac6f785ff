#include "node/hostlist.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

void hostlist_free(char **hosts, size_t n)
{
	if (!hosts)
		return;
	for (size_t i = 0; i < n; i++)
		free(hosts[i]);
	free(hosts);
}

static bool name_char_ok(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.';
}

struct list {
	char **v;
	size_t n, cap;
};

static int list_add(struct list *l, const char *name, char **ret_error)
{
	char **nv;

	if (strlen(name) == 0 || strlen(name) > HOSTLIST_NAME_MAX)
		return error_set(ret_error, -EINVAL, "host name '%s' must have 1 to %d characters",
				 name, HOSTLIST_NAME_MAX);
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], name) == 0)
			return error_set(ret_error, -EINVAL, "host %s appears twice", name);
	if (l->n >= HOSTLIST_MAX_HOSTS)
		return error_set(ret_error, -E2BIG, "more than %d hosts", HOSTLIST_MAX_HOSTS);
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;

		nv = realloc(l->v, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n] = strdup(name);
	if (!l->v[l->n])
		return -ENOMEM;
	l->n++;
	return 0;
}

static int parse_num(const char *s, size_t len, unsigned long *ret)
{
	unsigned long v = 0;

	if (len == 0 || len > 9)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	*ret = v;
	return 0;
}

/* One term: "prefix", or "prefix[ranges]suffix". */
static int expand_term(const char *t, size_t len, struct list *l, char **ret_error)
{
	const char *open = memchr(t, '[', len), *close;
	char name[HOSTLIST_NAME_MAX * 2 + 16];
	size_t plen, slen;
	int r;

	for (size_t i = 0; i < len; i++)
		if (!name_char_ok(t[i]) && t[i] != '[' && t[i] != ']' && t[i] != ',' && t[i] != '-')
			return error_set(ret_error, -EINVAL,
					 "'%.*s': '%c' is not allowed in a "
					 "host name",
					 (int)len, t, t[i]);
	if (!open) {
		if (memchr(t, ']', len))
			return error_set(ret_error, -EINVAL, "'%.*s': ']' without '['", (int)len,
					 t);
		if (len > HOSTLIST_NAME_MAX)
			return error_set(ret_error, -EINVAL, "host name '%.*s...' is too long",
					 HOSTLIST_NAME_MAX, t);
		memcpy(name, t, len);
		name[len] = 0;
		return list_add(l, name, ret_error);
	}
	close = memchr(open, ']', len - (size_t)(open - t));
	if (!close || memchr(close + 1, '[', len - (size_t)(close + 1 - t)) ||
	    memchr(close + 1, ']', len - (size_t)(close + 1 - t)))
		return error_set(ret_error, -EINVAL,
				 "'%.*s': write one bracket per name, as in n[1-4,7]", (int)len, t);
	plen = (size_t)(open - t);
	slen = len - (size_t)(close + 1 - t);
	if (plen > HOSTLIST_NAME_MAX || slen > HOSTLIST_NAME_MAX)
		return error_set(ret_error, -EINVAL, "'%.*s': name too long", (int)len, t);
	for (const char *p = open + 1; p < close;) {
		const char *end = memchr(p, ',', (size_t)(close - p)), *dash;
		unsigned long lo, hi;
		int width;

		if (!end)
			end = close;
		dash = memchr(p, '-', (size_t)(end - p));
		if (parse_num(p, (size_t)((dash ? dash : end) - p), &lo) < 0 ||
		    (dash && parse_num(dash + 1, (size_t)(end - dash - 1), &hi) < 0))
			return error_set(ret_error, -EINVAL,
					 "'%.*s': a range is N or N-M with decimal numbers",
					 (int)len, t);
		if (!dash)
			hi = lo;
		if (hi < lo)
			return error_set(ret_error, -EINVAL, "'%.*s': range %lu-%lu goes backwards",
					 (int)len, t, lo, hi);
		if (hi - lo >= HOSTLIST_MAX_HOSTS)
			return error_set(ret_error, -E2BIG, "'%.*s': more than %d hosts", (int)len,
					 t, HOSTLIST_MAX_HOSTS);
		width = (p[0] == '0' && (dash ? dash : end) - p > 1)
			    ? (int)((dash ? dash : end) - p)
			    : 0;
		for (unsigned long v = lo; v <= hi; v++) {
			snprintf(name, sizeof(name), "%.*s%0*lu%.*s", (int)plen, t, width, v,
				 (int)slen, close + 1);
			r = list_add(l, name, ret_error);
			if (r < 0)
				return r;
		}
		p = end + 1;
		if (end == close)
			break;
		if (p == close)
			return error_set(ret_error, -EINVAL, "'%.*s': empty range", (int)len, t);
	}
	return 0;
}

int hostlist_expand(const char *text, char ***ret_hosts, size_t *ret_n, char **ret_error)
{
	struct list l = {0};
	const char *p = text;
	int r = 0;

	if (!text || !*text)
		return error_set(ret_error, -EINVAL, "empty host list; write e.g. n[1-4]");
	while (*p) {
		const char *q = p;
		int depth = 0;

		while (*q && (depth > 0 || *q != ',')) {
			if (*q == '[')
				depth++;
			else if (*q == ']')
				depth--;
			if (depth < 0 || depth > 1) {
				r = error_set(ret_error, -EINVAL, "'%s': brackets do not match",
					      text);
				goto fail;
			}
			q++;
		}
		if (depth != 0) {
			r = error_set(ret_error, -EINVAL, "'%s': '[' without ']'", text);
			goto fail;
		}
		if (q == p) {
			r = error_set(ret_error, -EINVAL, "'%s': empty name between commas", text);
			goto fail;
		}
		r = expand_term(p, (size_t)(q - p), &l, ret_error);
		if (r < 0)
			goto fail;
		p = *q ? q + 1 : q;
		if (*q && !*p) {
			r = error_set(ret_error, -EINVAL, "'%s': ends with a comma", text);
			goto fail;
		}
	}
	*ret_hosts = l.v;
	*ret_n = l.n;
	return 0;
fail:
	hostlist_free(l.v, l.n);
	return r;
}
