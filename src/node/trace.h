/* Timestamps of a distribution's phases on this node, for finding where time goes
 * (docs/node.md, "Tracing"). Off unless VMHPC_NODE_TRACE names a folder; then every event
 * is one line "SECONDS NODE EVENT DETAIL" (CLOCK_REALTIME, so that the files of several
 * nodes merge into one timeline) appended to FOLDER/NODE.trace. Thread-safe. */
#pragma once

#include <stdbool.h>

/* Opens the trace file for node name when VMHPC_NODE_TRACE is set; a no-op otherwise. */
void node_trace_open(const char *name);
/* Whether tracing is on (to skip building details). */
bool node_trace_on(void);
/* Appends one event; detail is printf-formatted. */
void node_trace(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
