/* An image reference in an OCI registry, as docker and podman write it:
 * REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:HEX. The registry part is always
 * given (host, host:port, or [ipv6]:port); there is no default registry. */
#pragma once

#include <stdbool.h>

#define REFERENCE_DEFAULT_TAG	 "latest"
#define REFERENCE_REPOSITORY_MAX 255
#define REFERENCE_TAG_MAX	 128

struct reference {
	char *registry;	  /* "host" or "host:port" */
	char *repository; /* "a/b/c": lowercase path components */
	char *tag;	  /* "latest" when neither tag nor digest was given; NULL with a digest */
	char *digest;	  /* "sha256:<64 hex>" or NULL */
};

/* Parses text; on -EINVAL *ret_error (caller frees) says what is wrong and how to write it.
 * The caller frees *ret with reference_free(). */
int reference_parse(const char *text, struct reference **ret, char **ret_error);
/* Whether registry is a registry as a reference names one: "host", "host:port" or
 * "[v6]:port". */
bool reference_registry_valid(const char *registry);
/* Frees ref; NULL is a no-op. Returns NULL. */
struct reference *reference_free(struct reference *ref);
/* The tag or digest, as used in a manifest URL (owned by ref). */
const char *reference_target(const struct reference *ref);
/* "registry/repository:tag" or "...@digest" (caller frees), for messages. */
char *reference_to_string(const struct reference *ref);
