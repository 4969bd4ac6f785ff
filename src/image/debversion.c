#include "image/debversion.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A part of a version: [begin, end). */
struct span {
	const char *p, *end;
};

/* The weight of one character in a non-digit run: '~' lowest (below the end of the run),
 * then the end itself, then letters, then everything else (by code). */
static int order(int c)
{
	if (c == '~')
		return -1;
	if (c == 0)
		return 0;
	if (isalpha(c))
		return c;
	return c + 256;
}

static int compare_part(struct span a, struct span b)
{
	while (a.p < a.end || b.p < b.end) {
		int first_diff = 0;

		/* Non-digit runs, character by character. */
		while ((a.p < a.end && !isdigit((unsigned char)*a.p)) ||
		       (b.p < b.end && !isdigit((unsigned char)*b.p))) {
			int ac = a.p < a.end && !isdigit((unsigned char)*a.p) ? order(*a.p) : 0;
			int bc = b.p < b.end && !isdigit((unsigned char)*b.p) ? order(*b.p) : 0;

			if (ac != bc)
				return ac - bc;
			if (a.p < a.end && !isdigit((unsigned char)*a.p))
				a.p++;
			if (b.p < b.end && !isdigit((unsigned char)*b.p))
				b.p++;
		}
		/* Digit runs, as numbers of any length: skip leading zeros, then the longer
		 * run is the larger number, else the first differing digit decides. */
		while (a.p < a.end && *a.p == '0')
			a.p++;
		while (b.p < b.end && *b.p == '0')
			b.p++;
		while (a.p < a.end && isdigit((unsigned char)*a.p) && b.p < b.end &&
		       isdigit((unsigned char)*b.p)) {
			if (!first_diff)
				first_diff = *a.p - *b.p;
			a.p++;
			b.p++;
		}
		if (a.p < a.end && isdigit((unsigned char)*a.p))
			return 1;
		if (b.p < b.end && isdigit((unsigned char)*b.p))
			return -1;
		if (first_diff)
			return first_diff;
	}
	return 0;
}

/* Splits v into epoch (a number, 0 when absent), upstream and revision ("" when absent). */
static void split(const char *v, unsigned long *ret_epoch, struct span *ret_upstream,
		  struct span *ret_revision)
{
	const char *colon = strchr(v, ':'), *end = v + strlen(v), *dash;
	bool numeric = colon && colon > v;

	for (const char *p = v; numeric && p < colon; p++)
		numeric = isdigit((unsigned char)*p);
	*ret_epoch = numeric ? strtoul(v, NULL, 10) : 0;
	if (numeric)
		v = colon + 1;
	dash = strrchr(v, '-');
	if (dash) {
		*ret_upstream = (struct span){v, dash};
		*ret_revision = (struct span){dash + 1, end};
	} else {
		*ret_upstream = (struct span){v, end};
		*ret_revision = (struct span){end, end};
	}
}

int debversion_compare(const char *a, const char *b)
{
	unsigned long ea, eb;
	struct span ua, ra, ub, rb;
	int r;

	if (!a || !b)
		return (a != NULL) - (b != NULL);
	split(a, &ea, &ua, &ra);
	split(b, &eb, &ub, &rb);
	if (ea != eb)
		return ea < eb ? -1 : 1;
	r = compare_part(ua, ub);
	if (r)
		return r;
	return compare_part(ra, rb);
}

int debversion_compare_plain(const char *a, const char *b)
{
	if (!a || !b)
		return (a != NULL) - (b != NULL);
	return compare_part((struct span){a, a + strlen(a)}, (struct span){b, b + strlen(b)});
}
