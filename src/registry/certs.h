/* A registry's own CA certificate, kept as docker and podman keep it: DIR/REGISTRY/ca.crt
 * ("host" or "host:port" as the image reference names it), for a site registry whose
 * certificate no CA of the system store signed. DIR is $VMHPC_CERTS_DIR when set, else the
 * first of /etc/vmhpc/certs.d, /etc/containers/certs.d and /etc/docker/certs.d that has
 * one for the registry. docs/registry.md. */
#pragma once

#define CERTS_DIRS_DEFAULT "/etc/vmhpc/certs.d:/etc/containers/certs.d:/etc/docker/certs.d"

/* The path of registry's ca.crt (caller frees), or NULL when there is none (the system's
 * CA store then decides) or without memory. */
char *certs_find_ca(const char *registry);
