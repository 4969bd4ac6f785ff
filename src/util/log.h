/* Leveled logging to stderr. Library code logs at debug only; the caller that knows
 * what the user was doing logs errors once, with context. */
#pragma once

#include <errno.h>
#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
	_LOG_LEVEL_MAX
};

/* Sets the most verbose level printed (default: info, or $VMHPC_LOG=debug|info|warning|error). */
void log_set_level(enum log_level level);
/* Reads $VMHPC_LOG once; call at program start. */
void log_setup_from_env(void);
/* True when messages of this level are printed (check before costly formatting). */
bool log_enabled(enum log_level level);

/* Prints "vmhpc: MESSAGE" (with the level for warnings and debug); errno is preserved. */
void log_print(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs like log_print with %m bound to -error, and returns error (a negative errno) so
 * that `return log_error_errno(r, "...")` works. */
int log_print_errno(enum log_level level, int error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(...)	 log_print(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_print(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...)	 log_print(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_LEVEL_DEBUG))                                                  \
			log_print(LOG_LEVEL_DEBUG, __VA_ARGS__);                                   \
	} while (0)
#define log_error_errno(e, ...)	  log_print_errno(LOG_LEVEL_ERROR, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_print_errno(LOG_LEVEL_WARNING, (e), __VA_ARGS__)
#define log_debug_errno(e, ...)	  log_print_errno(LOG_LEVEL_DEBUG, (e), __VA_ARGS__)
