/* Monotonic time for timeouts and measurements, one definition for the host runtime and
 * the guest binaries (header-only: it links into the static guest binaries with libc
 * alone). */
#pragma once

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in milliseconds. */
static inline int64_t time_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CLOCK_MONOTONIC in seconds, for durations reported to users. */
static inline double time_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The deadline timeout_ms from now, or -1 (none) for a negative timeout. */
static inline int64_t time_deadline_after_ms(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : time_now_ms() + timeout_ms;
}

/* poll()'s timeout until deadline_ms: -1 for none, 0 once it passed. */
static inline int time_remaining_ms(int64_t deadline_ms)
{
	int64_t left;

	if (deadline_ms < 0)
		return -1;
	left = deadline_ms - time_now_ms();
	if (left <= 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}
