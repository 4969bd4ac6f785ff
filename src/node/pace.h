/* How fast a parent feeds this node, to tell a slow parent from one that waits upstream
 * (docs/node.md "Failures"). A parent whose own download is slow sends keepalives, never a
 * late frame, so the frame deadline does not catch it; its subtree would go at its pace.
 * The fetch records what arrives from the parent; when less than a minimum rate arrived
 * over a window, it asks the parent's parent how far it is, and a parent far behind it is
 * replaced. Pure. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define NODE_PACE_SLOTS 16 /* one per second: the longest window */

struct node_pace {
	int64_t start_ms;		      /* when the parent began to feed */
	int64_t slot_s[NODE_PACE_SLOTS];      /* which second each slot counts */
	uint64_t slot_bytes[NODE_PACE_SLOTS]; /* bytes received in that second */
};

/* Starts counting at now_ms. */
void node_pace_start(struct node_pace *p, int64_t now_ms);
/* Counts bytes that arrived at now_ms. */
void node_pace_add(struct node_pace *p, int64_t now_ms, uint64_t bytes);
/* Whether fewer than min_bytes_per_s arrived on average over the window_s whole seconds
 * before now_ms; false until the parent has fed for window_s + 1 seconds (a start is not a
 * pace) or when window_s is outside 1..NODE_PACE_SLOTS - 1. */
bool node_pace_below(const struct node_pace *p, int64_t now_ms, unsigned window_s,
		     uint64_t min_bytes_per_s);
