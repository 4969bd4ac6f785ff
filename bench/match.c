/* The image manager's matching over many versions: 1,000 (or argv[1]) synthetic versions with
 * the metadata a real image carries (~40 packages, ~30 libraries each), one expression of the
 * kind the issue names, timed for parse + name check + evaluation + ranking, and for the
 * "why not" explanation of every version. Prints milliseconds per whole pass (best of 20). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image/match.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static json_t *synthetic_metadata(unsigned i, unsigned *seed)
{
	static const char *const os[] = {"debian-12", "debian-11", "tiny", "ubuntu-24.04"};
	json_t *pk = json_object(), *libs = json_object();
	char name[64], v[64];

	for (int k = 0; k < 40; k++) {
		snprintf(name, sizeof(name), "lib%s%d", k % 2 ? "foo" : "bar", k);
		snprintf(v, sizeof(v), "%u.%u.%u-%u", rand_r(seed) % 5, rand_r(seed) % 20,
			 rand_r(seed) % 10, 1 + rand_r(seed) % 3);
		json_object_set_new(pk, name, json_string(v));
	}
	snprintf(v, sizeof(v), "4.%u.%u-%u", rand_r(seed) % 3, rand_r(seed) % 4, 1 + i % 3);
	json_object_set_new(pk, "mpich", json_string(v));
	if (rand_r(seed) % 2)
		json_object_set_new(pk, "libgfortran5", json_string("12.2.0-14"));
	for (int k = 0; k < 30; k++) {
		snprintf(name, sizeof(name), "libx%d.so.%d", k, k % 4);
		json_object_set_new(libs, name, json_pack("{s:s}", "version", "1.2.3"));
	}
	snprintf(v, sizeof(v), "6.%u.0-%u-amd64", rand_r(seed) % 3, rand_r(seed) % 60);
	return json_pack("{s:s, s:s, s:s, s:o, s:o}", "os", os[rand_r(seed) % 4], "arch", "x86_64",
			 "kernel_release", v, "packages", pk, "libraries", libs);
}

int main(int argc, char **argv)
{
	const char *expr = "os == \"debian-12\" && kernel >= \"6.1\" && mpich >= \"4.0.2\" && "
			   "has(\"libgfortran5\")";
	unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 1000, seed = 42;
	struct match_candidate *c = calloc(n, sizeof(*c)), *sorted = calloc(n, sizeof(*c));
	char names[8][16];
	double best_match = 1e9, best_explain = 1e9;
	size_t n_match = 0;

	if (!c || !sorted || n == 0)
		return 1;
	for (int k = 0; k < 8; k++)
		snprintf(names[k], sizeof(names[k]), "image%d", k);
	for (unsigned i = 0; i < n; i++)
		c[i] = (struct match_candidate){.name = names[i % 8],
						.version = i / 8 + 1,
						.created_s = 1700000000 + (int64_t)i * 60,
						.size_bytes = (uint64_t)(20 + rand_r(&seed) % 300)
							      << 20,
						.owner = "alice",
						.metadata = synthetic_metadata(i, &seed)};
	for (int round = 0; round < 20; round++) {
		struct match_expr *e = NULL;
		double t0 = now_ms(), t1;

		if (match_parse(expr, &e, NULL) < 0 || match_check(e, c, n, NULL) < 0)
			return 1;
		n_match = 0;
		for (unsigned i = 0; i < n; i++)
			if (match_eval(e, &c[i]))
				sorted[n_match++] = c[i];
		match_sort(sorted, n_match, MATCH_RANK_NEWEST, NULL);
		t1 = now_ms();
		for (unsigned i = 0; i < n; i++) {
			char *why = NULL;

			if (match_explain(e, &c[i], &why) >= 0)
				free(why);
		}
		if (t1 - t0 < best_match)
			best_match = t1 - t0;
		if (now_ms() - t1 < best_explain)
			best_explain = now_ms() - t1;
		match_expr_free(e);
	}
	printf("versions %u, matching %zu\nmatch (parse, check, evaluate, rank) %.3f ms\n"
	       "explain every version                 %.3f ms\n",
	       n, n_match, best_match, best_explain);
	for (unsigned i = 0; i < n; i++)
		json_decref((json_t *)c[i].metadata);
	free(c);
	free(sorted);
	return 0;
}
