/* The node cache's eviction policy: which cached images to drop to make room. Least
 * recently used images go first; an image pinned by a running job never goes. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct node_policy_image {
	uint64_t bytes;	   /* what evicting it frees (its chunks no other image uses) */
	int64_t last_used; /* any monotonic clock: larger is more recent */
	bool pinned;	   /* a running job uses it */
};

/* Chooses images to evict so that used - freed + need <= max: least recently used first,
 * pinned ones never. Writes their indices (in eviction order) into ret_victims (room for
 * n) and their count to *ret_n. -ENOSPC when even evicting every unpinned image would not
 * make room (nothing is chosen then); *ret_pinned_bytes (may be NULL) says how much the
 * pinned images hold, for the message. */
int node_policy_pick(const struct node_policy_image *images, size_t n, uint64_t used, uint64_t need,
		     uint64_t max, size_t *ret_victims, size_t *ret_n, uint64_t *ret_pinned_bytes);
