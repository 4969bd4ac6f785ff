#include "node/pace.h"

#include <string.h>

void node_pace_start(struct node_pace *p, int64_t now_ms)
{
	memset(p, 0, sizeof(*p));
	p->start_ms = now_ms;
	for (unsigned i = 0; i < NODE_PACE_SLOTS; i++)
		p->slot_s[i] = -1;
}

void node_pace_add(struct node_pace *p, int64_t now_ms, uint64_t bytes)
{
	int64_t sec = now_ms / 1000;
	unsigned i = (unsigned)(sec % NODE_PACE_SLOTS);

	if (p->slot_s[i] != sec) {
		p->slot_s[i] = sec;
		p->slot_bytes[i] = 0;
	}
	p->slot_bytes[i] += bytes;
}

bool node_pace_below(const struct node_pace *p, int64_t now_ms, unsigned window_s,
		     uint64_t min_bytes_per_s)
{
	int64_t now_s = now_ms / 1000;
	uint64_t sum = 0;

	/* One second more than the window: the first second counted may have begun before
	 * the start. */
	if (window_s < 1 || window_s >= NODE_PACE_SLOTS ||
	    now_ms - p->start_ms < ((int64_t)window_s + 1) * 1000)
		return false;
	/* The window_s whole seconds before the current one, which is still filling. */
	for (int64_t s = now_s - (int64_t)window_s; s < now_s; s++) {
		unsigned i = (unsigned)(s % NODE_PACE_SLOTS);

		if (p->slot_s[i] == s)
			sum += p->slot_bytes[i];
	}
	return sum < min_bytes_per_s * window_s;
}
