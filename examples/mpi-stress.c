/* A communication-heavy MPI program for finding hangs in MPI_Finalize (issue 13): for every
 * message size from --min to --max bytes (doubling), --iters rounds of a sendrecv ring in both
 * directions, an MPI_Allreduce and an MPI_Alltoall, each result checked against what every
 * rank can compute on its own; then MPI_Finalize. Rank 0 prints one line
 * "mpi-stress: ranks=N sizes=MIN..MAX iters=I checks=C VERIFIED" (or FAILED, exit 1).
 *
 * The mix matters: large messages go through UCX's rendezvous protocol and many peers open
 * many endpoints, which is what left endpoints for MPI_Finalize to close over TCP.
 *
 * Options: --min BYTES (default 8), --max BYTES (default 1048576), --iters N (default 3),
 * --quiet (no per-size lines). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What rank R puts at index I of a message for peer P in round K: every receiver can
 * recompute it, so a misplaced or stale byte is caught. */
static uint8_t pattern(int r, int p, long i, int k)
{
	return (uint8_t)(r * 131 + p * 31 + i * 7 + k * 13 + (i >> 8));
}

static void fill(uint8_t *buf, long n, int r, int p, int k)
{
	for (long i = 0; i < n; i++)
		buf[i] = pattern(r, p, i, k);
}

static long check(const uint8_t *buf, long n, int r, int p, int k)
{
	for (long i = 0; i < n; i++)
		if (buf[i] != pattern(r, p, i, k))
			return 1;
	return 0;
}

static long parse_size(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*end == 'k' || *end == 'K')
		v *= 1024;
	else if (*end == 'm' || *end == 'M')
		v *= 1024 * 1024;
	return v;
}

int main(int argc, char **argv)
{
	long min = 8, max = 1L << 20, errors = 0, checks = 0;
	int iters = 3, quiet = 0, rank, size;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--min") == 0 && i + 1 < argc)
			min = parse_size(argv[++i]);
		else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc)
			max = parse_size(argv[++i]);
		else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
			iters = atoi(argv[++i]);
		else if (strcmp(argv[i], "--quiet") == 0)
			quiet = 1;
	}
	/* Bounded so that --max times the number of ranks stays well inside a small guest. */
	if (min < 1 || max < min || max > (16L << 20) || iters < 1 || iters > 100000) {
		if (rank == 0)
			fprintf(stderr, "mpi-stress: need 1 <= --min <= --max <= 16M, 1 <= --iters "
					"<= 100000\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}

	uint8_t *sbuf = malloc((size_t)max), *rbuf = malloc((size_t)max);
	uint8_t *a2a_s = malloc((size_t)max * size), *a2a_r = malloc((size_t)max * size);
	long *red = malloc((size_t)max), *red_out = malloc((size_t)max);

	if (!sbuf || !rbuf || !a2a_s || !a2a_r || !red || !red_out) {
		fprintf(stderr, "mpi-stress: rank %d: out of memory for %ld-byte messages\n", rank,
			max);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}

	int right = (rank + 1) % size, left = (rank + size - 1) % size;
	for (long n = min; n <= max; n *= 2) {
		for (int k = 0; k < iters; k++) {
			/* Ring, to the right then to the left. */
			for (int dir = 0; dir < 2; dir++) {
				int to = dir ? left : right, from = dir ? right : left;

				fill(sbuf, n, rank, to, k);
				MPI_Sendrecv(sbuf, (int)n, MPI_BYTE, to, k, rbuf, (int)n, MPI_BYTE,
					     from, k, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
				errors += check(rbuf, n, from, rank, k);
				checks++;
			}

			/* Allreduce of n bytes of longs: element i sums rank*i+k over all ranks. */
			long cnt = n / (long)sizeof(long) > 0 ? n / (long)sizeof(long) : 1;
			for (long i = 0; i < cnt; i++)
				red[i] = (long)rank * i + k;
			MPI_Allreduce(red, red_out, (int)cnt, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
			for (long i = 0; i < cnt; i++)
				if (red_out[i] !=
				    (long)size * (size - 1) / 2 * i + (long)size * k) {
					errors++;
					break;
				}
			checks++;

			/* Alltoall: n bytes to every rank, each block addressed to its peer. */
			for (int p = 0; p < size; p++)
				fill(a2a_s + (size_t)p * n, n, rank, p, k);
			MPI_Alltoall(a2a_s, (int)n, MPI_BYTE, a2a_r, (int)n, MPI_BYTE,
				     MPI_COMM_WORLD);
			for (int p = 0; p < size; p++)
				errors += check(a2a_r + (size_t)p * n, n, p, rank, k);
			checks++;
		}
		if (!quiet && rank == 0)
			printf("mpi-stress: %ld bytes x %d rounds done\n", n, iters);
	}

	long all_errors = 0;
	MPI_Reduce(&errors, &all_errors, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
	if (rank == 0) {
		printf("mpi-stress: ranks=%d sizes=%ld..%ld iters=%d checks=%ld %s\n", size, min,
		       max, iters, checks * size, all_errors == 0 ? "VERIFIED" : "FAILED");
		fflush(stdout);
	}
	free(sbuf);
	free(rbuf);
	free(a2a_s);
	free(a2a_r);
	free(red);
	free(red_out);
	/* Where issue 13's jobs hung: after the result, inside MPI_Finalize. */
	MPI_Finalize();
	return all_errors == 0 ? 0 : 1;
}
