#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum log_level max_level = LOG_LEVEL_INFO;

void log_set_level(enum log_level level)
{
	if (level < _LOG_LEVEL_MAX)
		max_level = level;
}

void log_setup_from_env(void)
{
	static const char *const names[_LOG_LEVEL_MAX] = {"error", "warning", "info", "debug"};
	const char *v = getenv("VMHPC_LOG");

	if (!v)
		return;
	for (int i = 0; i < _LOG_LEVEL_MAX; i++)
		if (strcmp(v, names[i]) == 0)
			max_level = (enum log_level)i;
}

bool log_enabled(enum log_level level)
{
	return level <= max_level;
}

static void log_vprint(enum log_level level, const char *fmt, va_list ap)
{
	static const char *const prefixes[_LOG_LEVEL_MAX] = {"", "warning: ", "", "debug: "};

	fprintf(stderr, "vmhpc: %s", prefixes[level]);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void log_print(enum log_level level, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	log_vprint(level, fmt, ap);
	va_end(ap);
	errno = saved;
}

int log_print_errno(enum log_level level, int error, const char *fmt, ...)
{
	va_list ap;

	if (!log_enabled(level))
		return error;
	errno = error < 0 ? -error : error;
	va_start(ap, fmt);
	log_vprint(level, fmt, ap);
	va_end(ap);
	return error;
}
