/* vmhpc-exec's line labeler, what `vmhpc run --label` puts in front of every rank's program:
 *
 *   vmhpc-exec --label-lines -- PROGRAM [ARGS...]
 *
 * Prefixes every line PROGRAM writes to stdout and stderr with "[RANK@HOST] ", RANK from
 * $PMI_RANK (MPICH's hydra) or $OMPI_COMM_WORLD_RANK (Open MPI), HOST this VM's name. Why not
 * the launcher's own option: hydra's -prepend-pattern prefixes every chunk a rank writes, so
 * a line written in several writes got prefixes mid-line; here a line goes out only when
 * complete (or at EOF, ended by a newline).
 *
 * PROGRAM keeps this process (the rank stays the launcher's child, with its pid, signals and
 * exit status, as the job watch counts it): the labeler is a forked child that reads PROGRAM's
 * output from two pipes, writes each complete line (at most LABEL_MAX_LINE bytes; a longer one
 * is cut into lines) with one write, and exits at EOF of both. */
#pragma once

#include <stddef.h>

#define LABEL_MAX_LINE 4000 /* under PIPE_BUF with the prefix: one atomic write per line */

/* argv[0] is "--label-lines". Execs PROGRAM; returns only on failure, with an exit status
 * (127: not found, 126: not runnable, 2: bad usage). */
int label_main(int argc, char **argv);

/* The line splitter, for tests: appends len bytes of data to the line buffer buf (holding
 * *used bytes, capacity LABEL_MAX_LINE) and calls emit(ctx, line, line_len) for every
 * complete line (without its '\n') and for every full buffer. */
void label_feed(char *buf, size_t *used, const char *data, size_t len,
		void (*emit)(void *ctx, const char *line, size_t line_len), void *ctx);
