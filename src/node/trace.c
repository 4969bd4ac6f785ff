#include "node/trace.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static FILE *trace_file;
static const char *trace_name = "?";

void node_trace_open(const char *name)
{
	const char *dir = getenv("VMHPC_NODE_TRACE");
	char path[4096];

	if (!dir || !*dir || trace_file)
		return;
	trace_name = name ? name : "node";
	snprintf(path, sizeof(path), "%s/%s.trace", dir, trace_name);
	trace_file = fopen(path, "ae");
	/* Fully buffered: a write per chunk event would itself cost the node CPU (three per
	 * chunk on a relay); the buffer is flushed at every other event. */
	if (trace_file)
		setvbuf(trace_file, NULL, _IOFBF, 1 << 16);
}

bool node_trace_on(void)
{
	return trace_file != NULL;
}

void node_trace(const char *event, const char *fmt, ...)
{
	struct timespec ts;
	char detail[512] = "";
	va_list ap;

	if (!trace_file)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	flockfile(trace_file);
	fprintf(trace_file, "%lld.%06ld %s %s %s\n", (long long)ts.tv_sec, ts.tv_nsec / 1000,
		trace_name, event, detail);
	if (strncmp(event, "chunk-", 6) != 0)
		fflush(trace_file);
	funlockfile(trace_file);
}
