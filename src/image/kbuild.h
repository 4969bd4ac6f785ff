/* A guest kernel of our own: built from a Debian kernel source package (linux-source-6.1,
 * its tarball in /usr/src) with `make tinyconfig` plus a config fragment kept in the repo
 * (kernel/vmhpc.config), once per machine. The result is cached under
 * CACHE/kernel/SOURCE-VERSION-FRAGMENTHASH/ (bzImage, vmlinux, config) and appears there
 * only complete, by rename: a killed build leaves no half kernel, and two builds at once
 * serialize on CACHE/kernel/.lock (the second finds the first's result). docs/kernel.md. */
#pragma once

#include <stdbool.h>

/* The source package this tree's fragment is written for. */
#define KBUILD_SOURCE_DEFAULT "linux-source-6.1"

struct kbuild_options {
	const char *cache_dir;	   /* VMHPC_CACHE */
	const char *source;	   /* Debian source package name, e.g. linux-source-6.1 */
	const char *fragment_path; /* the config fragment (kernel/vmhpc.config) */
	int jobs;		   /* make -j; 0: the number of online CPUs */
};

/* Makes sure the kernel for (source package version, fragment) is in the cache, building
 * it when it is not, and returns its directory (caller frees). On failure *ret_error
 * (caller frees) names what is wrong and what to do: the source package missing or of
 * another series, a required option the fragment loses (by name), a failed compile (with
 * the log's last line). */
int kbuild_ensure(const struct kbuild_options *o, char **ret_dir, char **ret_error);

/* Checks a final .config (text) for every option the guest needs (vmhpc-init, the virtio
 * devices, DAX root, cgroup2 memory controller, MPI's syscalls). Returns 0, or -ENOENT with
 * *ret_missing (static string) the first option not set. */
int kbuild_check_config(const char *config_text, const char **ret_missing);
