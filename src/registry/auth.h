/* Registry credentials and challenges, as docker and podman handle them: a 401 carries
 * `WWW-Authenticate: Basic realm=...` or `Bearer realm=...,service=...,scope=...`; the
 * credentials come from $VMHPC_REGISTRY_AUTH (user:password) or the `auths` of a docker
 * config.json ($DOCKER_CONFIG/config.json, else ~/.docker/config.json). */
#pragma once

#define AUTH_HEADER_MAX 4096

enum auth_scheme {
	AUTH_SCHEME_BASIC,
	AUTH_SCHEME_BEARER,
	_AUTH_SCHEME_MAX,
};

/* "Basic", "Bearer"; NULL for an out-of-range scheme. */
const char *auth_scheme_to_string(enum auth_scheme scheme);

struct auth_challenge {
	enum auth_scheme scheme;
	char *realm;   /* may be NULL for Basic */
	char *service; /* may be NULL */
	char *scope;   /* may be NULL */
};

/* Parses one WWW-Authenticate value (the scheme, then comma-separated key=value or
 * key="quoted" parameters); -EINVAL on anything else, -EOPNOTSUPP for another scheme.
 * Release with auth_challenge_done(). */
int auth_challenge_parse(const char *header, struct auth_challenge *ret);
void auth_challenge_done(struct auth_challenge *c);

struct auth_credentials {
	char *user;
	char *password;
	char *source; /* where they came from, for messages: "VMHPC_REGISTRY_AUTH" or a path */
};

/* Looks up credentials for registry ("host:port") in a docker config.json's text: the key
 * of `auths` may be the registry, or a URL naming it (https://host:port/v1/); the entry's
 * `auth` is base64("user:password"), or `username` and `password` are given.
 * -ENOENT when the file names no credentials for it; -EINVAL (*ret_error) when it is
 * malformed. */
int auth_credentials_from_config(const char *json_text, const char *registry,
				 struct auth_credentials *ret, char **ret_error);
/* $VMHPC_REGISTRY_AUTH, else the docker config file; -ENOENT when neither has any for
 * registry; -EINVAL (*ret_error) when one is malformed. */
int auth_credentials_find(const char *registry, struct auth_credentials *ret, char **ret_error);
void auth_credentials_done(struct auth_credentials *c);

/* "Basic base64(user:password)" (caller frees). */
char *auth_basic_header(const struct auth_credentials *c);
