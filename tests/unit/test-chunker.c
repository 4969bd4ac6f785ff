#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/chunker.h"

#define DATA_BYTES (10u * 1000 * 1000)

struct chunk {
	uint64_t hash;
	size_t len;
};

struct chunk_list {
	struct chunk *items;
	size_t n;
};

/* Private PRNG (splitmix64) so that the data never depends on anyone else's rand() calls. */
static uint64_t prng_next(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static uint8_t *random_data(size_t len, uint64_t seed)
{
	uint8_t *data = malloc(len + 8);

	assert_non_null(data);
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = prng_next(&seed);

		memcpy(data + i, &v, 8);
	}
	return data;
}

static uint64_t fnv1a(const uint8_t *p, size_t len)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

static struct chunk_list chunk_all(const struct chunker_params *p, const uint8_t *data, size_t len)
{
	struct chunk_list l = {0};
	size_t cap = 0, pos = 0;

	while (pos < len) {
		size_t n = chunker_next(p, data + pos, len - pos);

		assert_true(n > 0);
		assert_true(n <= len - pos);
		if (l.n == cap) {
			cap = cap ? cap * 2 : 256;
			l.items = realloc(l.items, cap * sizeof(*l.items));
			assert_non_null(l.items);
		}
		l.items[l.n++] = (struct chunk){.hash = fnv1a(data + pos, n), .len = n};
		pos += n;
	}
	return l;
}

/* Chunks of a that do not appear (by content) anywhere in b. */
static size_t chunks_missing(const struct chunk_list *a, const struct chunk_list *b)
{
	size_t missing = 0;

	for (size_t i = 0; i < a->n; i++) {
		bool found = false;

		for (size_t j = 0; j < b->n && !found; j++)
			found = a->items[i].hash == b->items[j].hash &&
				a->items[i].len == b->items[j].len;
		if (!found)
			missing++;
	}
	return missing;
}

static void test_default_params(void **state)
{
	struct chunker_params p;

	chunker_params_default(&p);
	assert_int_equal(p.min_bytes, 16 * 1024);
	assert_int_equal(p.avg_bytes, 64 * 1024);
	assert_int_equal(p.max_bytes, 256 * 1024);
	assert_int_equal(chunker_params_validate(&p), 0);
}

static void test_validate(void **state)
{
	struct chunker_params ok = {.min_bytes = 64, .avg_bytes = 64, .max_bytes = 64};
	struct chunker_params p;

	assert_int_equal(chunker_params_validate(&ok), 0);
	ok = (struct chunker_params){1024, 4096, CHUNKER_MAX_BYTES_LIMIT};
	assert_int_equal(chunker_params_validate(&ok), 0);
	assert_int_equal(chunker_params_validate(NULL), -EINVAL);

	p = (struct chunker_params){CHUNKER_MIN_BYTES_LIMIT - 1, 4096, 8192};
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){0, 4096, 8192};
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){1024, 4096, CHUNKER_MAX_BYTES_LIMIT + 1};
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){8192, 4096, 16384}; /* min > avg */
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){1024, 16384, 8192}; /* avg > max */
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){1024, 3000, 8192}; /* avg not a power of two */
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
	p = (struct chunker_params){1024, 0, 8192};
	assert_int_equal(chunker_params_validate(&p), -EINVAL);
}

static void test_short_input(void **state)
{
	struct chunker_params p;
	uint8_t *data = random_data(4096, 1);

	chunker_params_default(&p);
	assert_int_equal(chunker_next(&p, data, 0), 0);
	assert_int_equal(chunker_next(&p, data, 1), 1);
	assert_int_equal(chunker_next(&p, data, 4096), 4096);
	free(data);
}

/* The cut points are part of the on-disk format: chunk ids, and so dedup against every
 * existing store, depend on them. If this test fails, the gear table or the cut rule
 * changed; that re-chunks every stored image and must be a deliberate format change. */
static void test_golden(void **state)
{
	static const size_t want_default[] = {40288, 66567, 55533, 66932,
					      75091, 68593, 79946, 60994};
	static const size_t want_small[] = {80, 448, 285, 276, 312, 271, 303, 86};
	struct chunker_params p;
	struct chunker_params small = {.min_bytes = 64, .avg_bytes = 256, .max_bytes = 1024};
	const size_t len = 2000000;
	uint8_t *data = random_data(len, 42);
	size_t pos = 0;

	chunker_params_default(&p);
	for (size_t i = 0; i < sizeof(want_default) / sizeof(want_default[0]); i++) {
		size_t n = chunker_next(&p, data + pos, len - pos);

		assert_int_equal(n, want_default[i]);
		pos += n;
	}
	pos = 0;
	for (size_t i = 0; i < sizeof(want_small) / sizeof(want_small[0]); i++) {
		size_t n = chunker_next(&small, data + pos, len - pos);

		assert_int_equal(n, want_small[i]);
		pos += n;
	}
	free(data);
}

static void test_deterministic(void **state)
{
	struct chunker_params p;
	uint8_t *data = random_data(DATA_BYTES, 42);
	uint8_t *copy = malloc(DATA_BYTES + 1);
	struct chunk_list a, b, c;

	assert_non_null(copy);
	chunker_params_default(&p);
	a = chunk_all(&p, data, DATA_BYTES);
	b = chunk_all(&p, data, DATA_BYTES);
	/* Same bytes at another address (and odd alignment): same cuts. */
	memcpy(copy + 1, data, DATA_BYTES);
	c = chunk_all(&p, copy + 1, DATA_BYTES);
	assert_int_equal(a.n, b.n);
	assert_int_equal(a.n, c.n);
	assert_memory_equal(a.items, b.items, a.n * sizeof(*a.items));
	assert_memory_equal(a.items, c.items, a.n * sizeof(*a.items));
	free(a.items);
	free(b.items);
	free(c.items);
	free(copy);
	free(data);
}

static void check_bounds(const struct chunker_params *p, const uint8_t *data, size_t len)
{
	struct chunk_list l = chunk_all(p, data, len);
	size_t total = 0;

	for (size_t i = 0; i < l.n; i++) {
		total += l.items[i].len;
		assert_true(l.items[i].len <= p->max_bytes);
		if (i + 1 < l.n)
			assert_true(l.items[i].len >= p->min_bytes);
	}
	assert_int_equal(total, len);
	free(l.items);
}

static void test_bounds(void **state)
{
	struct chunker_params p;
	struct chunker_params small = {.min_bytes = 64, .avg_bytes = 256, .max_bytes = 1024};
	struct chunker_params odd = {.min_bytes = 1001, .avg_bytes = 2048, .max_bytes = 3001};
	uint8_t *data = random_data(DATA_BYTES, 7);
	uint8_t *zeros = calloc(1, DATA_BYTES);

	assert_non_null(zeros);
	chunker_params_default(&p);
	check_bounds(&p, data, DATA_BYTES);
	check_bounds(&small, data, DATA_BYTES);
	check_bounds(&odd, data, DATA_BYTES);
	check_bounds(&p, data, DATA_BYTES - 12345);
	/* No content variation at all: only max_bytes cuts (or cuts at one fixed offset). */
	check_bounds(&p, zeros, DATA_BYTES);
	check_bounds(&small, zeros, DATA_BYTES);
	free(zeros);
	free(data);
}

static void check_edit(const struct chunker_params *p, const uint8_t *data, size_t offset,
		       bool insert)
{
	uint8_t *edited = malloc(DATA_BYTES + 1);
	struct chunk_list before, after;
	size_t len;

	assert_non_null(edited);
	memcpy(edited, data, offset);
	if (insert) {
		edited[offset] = (uint8_t)(data[offset] ^ 0x5a);
		memcpy(edited + offset + 1, data + offset, DATA_BYTES - offset);
		len = DATA_BYTES + 1;
	} else {
		memcpy(edited + offset, data + offset + 1, DATA_BYTES - offset - 1);
		len = DATA_BYTES - 1;
	}
	before = chunk_all(p, data, DATA_BYTES);
	after = chunk_all(p, edited, len);
	assert_true(chunks_missing(&after, &before) <= 2);
	assert_true(chunks_missing(&before, &after) <= 2);
	free(before.items);
	free(after.items);
	free(edited);
}

static void test_insert_delete_stable(void **state)
{
	static const size_t offsets[] = {1000, 5u * 1000 * 1000, DATA_BYTES - 100000};
	struct chunker_params p;
	struct chunker_params small = {.min_bytes = 2048, .avg_bytes = 8192, .max_bytes = 32768};
	uint8_t *data = random_data(DATA_BYTES, 1234);

	chunker_params_default(&p);
	for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
		check_edit(&p, data, offsets[i], true);
		check_edit(&p, data, offsets[i], false);
		check_edit(&small, data, offsets[i], true);
		check_edit(&small, data, offsets[i], false);
	}
	free(data);
}

static void check_mean(const struct chunker_params *p, const uint8_t *data)
{
	struct chunk_list l = chunk_all(p, data, DATA_BYTES);
	double mean = (double)DATA_BYTES / (double)l.n;

	print_message("avg %zu: %zu chunks, mean %.0f bytes\n", p->avg_bytes, l.n, mean);
	assert_true(mean >= (double)p->avg_bytes / 2);
	assert_true(mean <= (double)p->avg_bytes * 2);
	free(l.items);
}

static void test_mean_size(void **state)
{
	struct chunker_params p;
	struct chunker_params small = {.min_bytes = 2048, .avg_bytes = 8192, .max_bytes = 32768};
	uint8_t *data = random_data(DATA_BYTES, 99);

	chunker_params_default(&p);
	check_mean(&p, data);
	check_mean(&small, data);
	free(data);
}

int main(void)
{
	/* clang-format off */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_default_params),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_short_input),
		cmocka_unit_test(test_golden),
		cmocka_unit_test(test_deterministic),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_insert_delete_stable),
		cmocka_unit_test(test_mean_size),
	};
	/* clang-format on */

	return cmocka_run_group_tests(tests, NULL, NULL);
}
