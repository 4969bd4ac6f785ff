/* Running helper programs (apt-get, dpkg-deb, mke2fs, depmod) and collecting what they say. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Largest output proc_run collects from one stream; the rest is dropped. */
#define PROC_OUTPUT_MAX_BYTES (16u * 1024 * 1024)

/* Namespaces a child joins between fork and exec: the user namespace first (a process may
 * join one its user owns, and gains the capabilities it needs there to join the network
 * namespace), then the network namespace. -1: stay in ours. */
struct proc_namespaces {
	int user_fd; /* an open /proc/PID/ns/user, or -1 */
	int net_fd;  /* an open /proc/PID/ns/net, or -1 */
};

struct proc_options {
	const char *cwd; /* working directory, or NULL */
	char *const
	    *extra_env; /* "K=V" entries added to the environment, NULL-terminated, or NULL */
	int stdout_fd;	/* when >= 0, the child's stdout goes here instead of being collected */
	int stdin_fd;	/* when > 0, the child's stdin; else /dev/null */
	const struct proc_namespaces *namespaces; /* joined before exec, or NULL */
};

/* Runs argv[0] (searched in PATH) with argv and waits for it. Its stdout (unless
 * opts->stdout_fd) and stderr are collected into NUL-terminated buffers the caller frees
 * (either ret pointer may be NULL to drop that stream). The child dies with us
 * (PR_SET_PDEATHSIG), so a killed build leaves no helper running. Returns -errno when it
 * could not be started, else 0 with *ret_exit_code its exit code (128+signal when
 * killed; 127 when the program does not exist). */
int proc_run(char *const argv[], const struct proc_options *opts, char **ret_stdout,
	     char **ret_stderr, int *ret_exit_code);

/* Starts argv[0] in the background in its own process group, stdin from /dev/null, stdout
 * and stderr appended to log_path (or /dev/null when NULL). It dies with the calling
 * thread's process (PR_SET_PDEATHSIG), so a killed vmhpc leaves no helper behind. The
 * caller reaps it (waitpid). Returns -errno when fork failed; exec failures show as
 * exit code 127. */
int proc_spawn(char *const argv[], const char *log_path, pid_t *ret_pid);

/* Joins ns's namespaces (user first), for a child between fork and exec: async-signal
 * safe. Returns 0 or -errno. */
int proc_join_namespaces(const struct proc_namespaces *ns);

/* The last non-empty line of text (for short error messages), copied (caller frees). */
char *proc_last_line(const char *text);
