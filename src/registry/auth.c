#include "registry/auth.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"

#define AUTH_CONFIG_MAX_BYTES (1024 * 1024)

static const char *const scheme_names[_AUTH_SCHEME_MAX] = {
    [AUTH_SCHEME_BASIC] = "Basic",
    [AUTH_SCHEME_BEARER] = "Bearer",
};

const char *auth_scheme_to_string(enum auth_scheme scheme)
{
	return scheme >= 0 && scheme < _AUTH_SCHEME_MAX ? scheme_names[scheme] : NULL;
}

void auth_challenge_done(struct auth_challenge *c)
{
	free(c->realm);
	free(c->service);
	free(c->scope);
	*c = (struct auth_challenge){0};
}

static const char *skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* Reads a token or a quoted string (with \ escapes) at *pp into a new string. */
static int read_value(const char **pp, char **ret)
{
	const char *p = *pp;
	char *out, *o;

	out = malloc(strlen(p) + 1);
	if (!out)
		return -ENOMEM;
	o = out;
	if (*p == '"') {
		for (p++; *p && *p != '"'; p++) {
			if (*p == '\\' && p[1])
				p++;
			*o++ = *p;
		}
		if (*p != '"') {
			free(out);
			return -EINVAL;
		}
		p++;
	} else {
		while (*p && *p != ',' && *p != ' ' && *p != '\t')
			*o++ = *p++;
	}
	*o = '\0';
	*pp = p;
	*ret = out;
	return 0;
}

int auth_challenge_parse(const char *header, struct auth_challenge *ret)
{
	struct auth_challenge c = {0};
	const char *p = skip_space(header);
	size_t n;
	int r;

	if (strlen(header) > AUTH_HEADER_MAX)
		return -EINVAL;
	n = strcspn(p, " \t");
	if (n == 5 && strncasecmp(p, "Basic", 5) == 0)
		c.scheme = AUTH_SCHEME_BASIC;
	else if (n == 6 && strncasecmp(p, "Bearer", 6) == 0)
		c.scheme = AUTH_SCHEME_BEARER;
	else
		return n == 0 ? -EINVAL : -EOPNOTSUPP;
	p = skip_space(p + n);
	while (*p) {
		const char *key = p;
		size_t key_len = 0;
		char *value = NULL, **slot = NULL;

		while ((key[key_len] >= 'a' && key[key_len] <= 'z') ||
		       (key[key_len] >= 'A' && key[key_len] <= 'Z') || key[key_len] == '_' ||
		       key[key_len] == '-')
			key_len++;
		p = skip_space(key + key_len);
		if (key_len == 0 || *p != '=') {
			r = -EINVAL;
			goto fail;
		}
		p = skip_space(p + 1);
		r = read_value(&p, &value);
		if (r < 0)
			goto fail;
		if (key_len == 5 && strncasecmp(key, "realm", 5) == 0)
			slot = &c.realm;
		else if (key_len == 7 && strncasecmp(key, "service", 7) == 0)
			slot = &c.service;
		else if (key_len == 5 && strncasecmp(key, "scope", 5) == 0)
			slot = &c.scope;
		if (slot) {
			free(*slot);
			*slot = value;
		} else {
			free(value); /* error=, error_description=, ...: not needed */
		}
		p = skip_space(p);
		if (*p == ',')
			p = skip_space(p + 1);
		else if (*p) {
			r = -EINVAL;
			goto fail;
		}
	}
	if (c.scheme == AUTH_SCHEME_BEARER && (!c.realm || !*c.realm)) {
		r = -EINVAL; /* nowhere to ask for a token */
		goto fail;
	}
	*ret = c;
	return 0;
fail:
	auth_challenge_done(&c);
	return r;
}

void auth_credentials_done(struct auth_credentials *c)
{
	if (c->password)
		explicit_bzero(c->password, strlen(c->password));
	free(c->user);
	free(c->password);
	free(c->source);
	*c = (struct auth_credentials){0};
}

/* Splits "user:password" (the password may hold ':'). */
static int split_user_password(const char *text, size_t len, struct auth_credentials *c)
{
	const char *colon = memchr(text, ':', len);

	if (!colon || colon == text)
		return -EINVAL;
	c->user = strndup(text, (size_t)(colon - text));
	c->password = strndup(colon + 1, len - (size_t)(colon - text) - 1);
	return c->user && c->password ? 0 : -ENOMEM;
}

/* The host[:port] a config key names: "host:port", "https://host:port/v1/", ... */
static bool key_names(const char *key, const char *registry)
{
	const char *p = strstr(key, "://");
	size_t n;

	p = p ? p + 3 : key;
	n = strcspn(p, "/");
	return n == strlen(registry) && strncasecmp(p, registry, n) == 0;
}

int auth_credentials_from_config(const char *json_text, const char *registry,
				 struct auth_credentials *ret, char **ret_error)
{
	struct auth_credentials c = {0};
	json_error_t jerr;
	json_t *root, *auths, *entry = NULL, *value;
	const char *key;
	int r = -ENOENT;

	root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return error_set(ret_error, -EINVAL, "line %d: %s", jerr.line, jerr.text);
	auths = json_object_get(root, "auths");
	if (auths && !json_is_object(auths)) {
		r = error_set(ret_error, -EINVAL, "\"auths\" is not an object");
		goto out;
	}
	json_object_foreach(auths, key, value)
	{
		if (key_names(key, registry)) {
			entry = value;
			break;
		}
	}
	if (!entry)
		goto out;
	if (json_is_string(json_object_get(entry, "auth")) &&
	    *json_string_value(json_object_get(entry, "auth"))) {
		const char *b64 = json_string_value(json_object_get(entry, "auth"));
		size_t len = strlen(b64);
		_cleanup_free_ unsigned char *plain = malloc(len / 4 * 3 + 4);
		int n;

		if (!plain) {
			r = -ENOMEM;
			goto out;
		}
		n = len % 4 == 0 ? EVP_DecodeBlock(plain, (const unsigned char *)b64, (int)len)
				 : -1;
		if (n < 0) {
			r = error_set(ret_error, -EINVAL, "the auth of \"%s\" is not base64", key);
			goto out;
		}
		/* EVP_DecodeBlock counts the padding as zero bytes. */
		while (len > 0 && b64[--len] == '=')
			n--;
		r = split_user_password((const char *)plain, (size_t)n, &c);
		explicit_bzero(plain, (size_t)n);
		if (r == -EINVAL)
			r = error_set(ret_error, r,
				      "the auth of \"%s\" is not base64 of user:password", key);
	} else if (json_is_string(json_object_get(entry, "username")) &&
		   json_is_string(json_object_get(entry, "password"))) {
		c.user = strdup(json_string_value(json_object_get(entry, "username")));
		c.password = strdup(json_string_value(json_object_get(entry, "password")));
		r = c.user && c.password ? 0 : -ENOMEM;
	} else {
		r = error_set(ret_error, -EINVAL,
			      "\"%s\" has no auth (credential helpers are not supported)", key);
	}
	if (r < 0)
		goto out;
	*ret = c;
	c = (struct auth_credentials){0};
out:
	auth_credentials_done(&c);
	json_decref(root);
	return r;
}

int auth_credentials_find(const char *registry, struct auth_credentials *ret, char **ret_error)
{
	struct auth_credentials c = {0};
	const char *env = getenv("VMHPC_REGISTRY_AUTH"), *dir = getenv("DOCKER_CONFIG");
	const char *home = getenv("HOME");
	_cleanup_free_ char *path = NULL, *text = NULL, *why = NULL;
	size_t len = 0;
	int r;

	if (env && *env) {
		r = split_user_password(env, strlen(env), &c);
		if (r == -EINVAL)
			return error_set(ret_error, r, "VMHPC_REGISTRY_AUTH must be user:password");
		c.source = strdup("VMHPC_REGISTRY_AUTH");
		if (r < 0 || !c.source) {
			auth_credentials_done(&c);
			return -ENOMEM;
		}
		*ret = c;
		return 0;
	}
	if (dir && *dir)
		path = fs_path_join(dir, "config.json");
	else if (home && *home)
		r = asprintf(&path, "%s/.docker/config.json", home) < 0 ? -ENOMEM : 0;
	if (!path)
		return -ENOENT;
	r = fs_read_file(path, AUTH_CONFIG_MAX_BYTES, &text, &len);
	if (r == -ENOENT)
		return -ENOENT;
	if (r < 0)
		return error_set(ret_error, r, "cannot read %s: %s", path, strerror(-r));
	r = auth_credentials_from_config(text, registry, &c, &why);
	explicit_bzero(text, len);
	if (r == -EINVAL)
		return error_set(ret_error, r, "%s: %s", path, why ? why : "malformed");
	if (r < 0)
		return r;
	c.source = TAKE_PTR(path);
	*ret = c;
	return 0;
}

char *auth_basic_header(const struct auth_credentials *c)
{
	_cleanup_free_ char *plain = NULL;
	char *out;
	int n;

	n = asprintf(&plain, "%s:%s", c->user, c->password);
	if (n < 0)
		return NULL;
	out = malloc(6 + ((size_t)n + 2) / 3 * 4 + 1);
	if (out) {
		memcpy(out, "Basic ", 6);
		EVP_EncodeBlock((unsigned char *)out + 6, (const unsigned char *)plain, n);
	}
	explicit_bzero(plain, (size_t)n);
	return out;
}
