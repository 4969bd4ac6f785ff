#include "registry/reference.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cleanup.h"
#include "util/error.h"

#define EXAMPLE "e.g. registry.example.org:5000/team/app:2"

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c)
{
	return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/* host[:port] or [v6]:port; a DNS name of letters, digits, '-' and '.'. */
static bool registry_valid(const char *s, size_t len)
{
	size_t i = 0, host_end;

	if (len == 0 || len > 255)
		return false;
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);

		if (!close || close == s + 1)
			return false;
		for (const char *p = s + 1; p < close; p++)
			if (!(is_alnum(*p) || *p == ':' || *p == '.'))
				return false;
		host_end = (size_t)(close - s) + 1;
	} else {
		for (; i < len && s[i] != ':'; i++)
			if (!(is_alnum(s[i]) || s[i] == '-' || s[i] == '.'))
				return false;
		if (i == 0 || s[0] == '-' || s[0] == '.' || s[i - 1] == '-' || s[i - 1] == '.')
			return false;
		host_end = i;
	}
	if (host_end == len)
		return true;
	if (s[host_end] != ':' || host_end + 1 == len || len - host_end - 1 > 5)
		return false;
	{
		unsigned long port = 0;

		for (size_t j = host_end + 1; j < len; j++) {
			if (s[j] < '0' || s[j] > '9')
				return false;
			port = port * 10 + (unsigned long)(s[j] - '0');
		}
		return port >= 1 && port <= 65535;
	}
}

/* The distribution spec's path grammar: components [a-z0-9]+ joined by '.', '_', '__' or
 * runs of '-', separated by '/'. */
static bool repository_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > REFERENCE_REPOSITORY_MAX)
		return false;
	for (size_t i = 0; i < len;) {
		size_t start = i;

		while (i < len && s[i] != '/') {
			if (is_lower_alnum(s[i])) {
				i++;
				continue;
			}
			if (i == start || !is_lower_alnum(s[i - 1]))
				return false;
			if (s[i] == '.' || (s[i] == '_' && s[i + 1] != '_'))
				i++;
			else if (s[i] == '_')
				i += 2;
			else if (s[i] == '-')
				while (s[i] == '-')
					i++;
			else
				return false;
			if (i >= len || !is_lower_alnum(s[i]))
				return false;
		}
		if (i == start)
			return false;
		if (i < len && ++i == len)
			return false; /* trailing '/' */
	}
	return true;
}

static bool tag_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > REFERENCE_TAG_MAX || !(is_alnum(s[0]) || s[0] == '_'))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!(is_alnum(s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
			return false;
	return true;
}

static bool digest_valid(const char *s)
{
	if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
		return false;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

struct reference *reference_free(struct reference *ref)
{
	if (!ref)
		return NULL;
	free(ref->registry);
	free(ref->repository);
	free(ref->tag);
	free(ref->digest);
	free(ref);
	return NULL;
}

int reference_parse(const char *text, struct reference **ret, char **ret_error)
{
	struct reference *ref = NULL;
	const char *slash, *at, *colon, *path;
	_cleanup_free_ char *repo = NULL;
	int r = -EINVAL;

	if (strncmp(text, "http://", 7) == 0 || strncmp(text, "https://", 8) == 0)
		return error_set(ret_error, -EINVAL,
				 "image reference '%s': write it without a scheme, as "
				 "REGISTRY/REPOSITORY[:TAG] (" EXAMPLE
				 "); plain HTTP is --insecure",
				 text);
	slash = strchr(text, '/');
	if (!slash)
		return error_set(ret_error, -EINVAL,
				 "image reference '%s' names no registry; write "
				 "REGISTRY/REPOSITORY[:TAG], " EXAMPLE,
				 text);
	if (!registry_valid(text, (size_t)(slash - text)))
		return error_set(
		    ret_error, -EINVAL,
		    "image reference '%s': '%.*s' is not a registry (HOST or HOST:PORT); " EXAMPLE,
		    text, (int)(slash - text), text);
	ref = calloc(1, sizeof(*ref));
	if (!ref)
		return -ENOMEM;
	ref->registry = strndup(text, (size_t)(slash - text));
	path = slash + 1;
	at = strchr(path, '@');
	colon = strrchr(path, ':');
	if (at) {
		repo = strndup(path, (size_t)(at - path));
		ref->digest = strdup(at + 1);
		if (!ref->registry || !repo || !ref->digest)
			goto nomem;
		if (!digest_valid(ref->digest)) {
			error_set(ret_error, -EINVAL,
				  "image reference '%s': '%s' is not a digest (sha256: and 64 "
				  "lowercase hex digits)",
				  text, ref->digest);
			goto out;
		}
	} else {
		repo = colon ? strndup(path, (size_t)(colon - path)) : strdup(path);
		ref->tag = strdup(colon ? colon + 1 : REFERENCE_DEFAULT_TAG);
		if (!ref->registry || !repo || !ref->tag)
			goto nomem;
		if (!tag_valid(ref->tag)) {
			error_set(ret_error, -EINVAL,
				  "image reference '%s': tag '%s' is not valid (letters, digits, "
				  "'_', '.', '-'; at most %d; not starting with '.' or '-')",
				  text, ref->tag, REFERENCE_TAG_MAX);
			goto out;
		}
	}
	if (!repository_valid(repo)) {
		error_set(ret_error, -EINVAL,
			  "image reference '%s': repository '%s' is not valid (lowercase letters "
			  "and digits, joined by '.', '_', '-' and '/'; at most %d)",
			  text, repo, REFERENCE_REPOSITORY_MAX);
		goto out;
	}
	ref->repository = TAKE_PTR(repo);
	*ret = TAKE_PTR(ref);
	return 0;
nomem:
	r = -ENOMEM;
out:
	reference_free(ref);
	return r;
}

const char *reference_target(const struct reference *ref)
{
	return ref->digest ? ref->digest : ref->tag;
}

char *reference_to_string(const struct reference *ref)
{
	char *s = NULL;

	if (asprintf(&s, "%s/%s%s%s", ref->registry, ref->repository, ref->digest ? "@" : ":",
		     reference_target(ref)) < 0)
		return NULL;
	return s;
}

bool reference_registry_valid(const char *registry)
{
	return registry_valid(registry, strlen(registry));
}
