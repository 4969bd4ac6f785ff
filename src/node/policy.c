#include "node/policy.h"

#include <errno.h>

int node_policy_pick(const struct node_policy_image *images, size_t n, uint64_t used, uint64_t need,
		     uint64_t max, size_t *ret_victims, size_t *ret_n, uint64_t *ret_pinned_bytes)
{
	uint64_t pinned = 0, freed = 0;
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (images[i].pinned)
			pinned += images[i].bytes;
	if (ret_pinned_bytes)
		*ret_pinned_bytes = pinned;
	if (need > max) {
		*ret_n = 0;
		return -ENOSPC;
	}
	/* Selection by repeated minimum: n is the number of cached images (tens), and the
	 * victims come out in eviction order without a sort buffer. */
	while (used - freed + need > max) {
		size_t best = n;

		for (size_t i = 0; i < n; i++) {
			bool taken = false;

			if (images[i].pinned)
				continue;
			for (size_t j = 0; j < k; j++)
				if (ret_victims[j] == i)
					taken = true;
			if (taken)
				continue;
			if (best == n || images[i].last_used < images[best].last_used)
				best = i;
		}
		if (best == n) {
			*ret_n = 0;
			return -ENOSPC;
		}
		ret_victims[k++] = best;
		freed += images[best].bytes > used - freed ? used - freed : images[best].bytes;
	}
	*ret_n = k;
	return 0;
}
