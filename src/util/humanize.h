/* Numbers for people. */
#pragma once

#include <stdint.h>
#include <time.h>

#define HUMANIZE_BYTES_LEN 16
#define HUMANIZE_TIME_LEN  32

/* "0 B", "812 B", "12.3 kB", "41.6 MB", "2.10 GB" (SI units); returns buf. */
char *humanize_bytes(uint64_t bytes, char buf[HUMANIZE_BYTES_LEN]);
/* "2026-11-25 13:05" in local time; returns buf. */
char *humanize_time(time_t t, char buf[HUMANIZE_TIME_LEN]);
