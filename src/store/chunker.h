/* Content-defined chunking (FastCDC-style gear hash with normalized chunking): cut points
 * depend on the bytes around them, not on offsets, so an insertion moves only the chunks
 * next to it and two versions of an image share most chunks. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define CHUNKER_MIN_BYTES_DEFAULT (16u * 1024)
#define CHUNKER_AVG_BYTES_DEFAULT (64u * 1024)
#define CHUNKER_MAX_BYTES_DEFAULT (256u * 1024)
/* Hard bounds on what a caller may configure (a chunk must fit a frame and a buffer). */
#define CHUNKER_MIN_BYTES_LIMIT 64u
#define CHUNKER_MAX_BYTES_LIMIT (16u * 1024 * 1024)

struct chunker_params {
	size_t min_bytes;
	size_t avg_bytes; /* a power of two */
	size_t max_bytes;
};

/* Fills p with the defaults (16 KiB / 64 KiB / 256 KiB). */
void chunker_params_default(struct chunker_params *p);

/* Returns 0 when min <= avg <= max, avg is a power of two and all are within the limits,
 * else -EINVAL. */
int chunker_params_validate(const struct chunker_params *p);

/* Returns the length of the first chunk of data[0..len): a content-defined cut point, or
 * max_bytes, or len when len is shorter than both (the caller passes at least max_bytes
 * unless it is at the end of its input). Pure function: same bytes, same answer. */
size_t chunker_next(const struct chunker_params *p, const uint8_t *data, size_t len);
