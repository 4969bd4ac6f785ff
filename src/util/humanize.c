#include "util/humanize.h"

#include <stdio.h>

char *humanize_bytes(uint64_t bytes, char buf[HUMANIZE_BYTES_LEN])
{
	static const char *const units[] = {"kB", "MB", "GB", "TB", "PB"};
	double v = (double)bytes;
	int u = -1;

	if (bytes < 1000) {
		snprintf(buf, HUMANIZE_BYTES_LEN, "%u B", (unsigned)bytes);
		return buf;
	}
	while (v >= 1000 && u < 4) {
		v /= 1000;
		u++;
	}
	snprintf(buf, HUMANIZE_BYTES_LEN,
		 v < 10	   ? "%.2f %s"
		 : v < 100 ? "%.1f %s"
			   : "%.0f %s",
		 v, units[u]);
	return buf;
}

char *humanize_time(time_t t, char buf[HUMANIZE_TIME_LEN])
{
	struct tm tm;

	if (!localtime_r(&t, &tm) || strftime(buf, HUMANIZE_TIME_LEN, "%Y-%m-%d %H:%M", &tm) == 0)
		snprintf(buf, HUMANIZE_TIME_LEN, "%lld", (long long)t);
	return buf;
}
