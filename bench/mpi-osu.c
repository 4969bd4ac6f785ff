/* OSU-style MPI point-to-point benchmarks between ranks 0 and 1 (bench/bypass.sh), with
 * plain MPI calls as the OSU micro-benchmarks make them (Debian has no OSU package):
 *   latency  osu_latency: MPI_Send/MPI_Recv ping-pong, half the round trip in us
 *   bw       osu_bw: rank 0 posts a window of 64 MPI_Isend, rank 1 64 MPI_Irecv, both
 *            MPI_Waitall, then rank 1 sends a 4-byte ack; MB/s = 10^6 bytes per second
 * Skip and iteration counts as OSU's (100 + 10000, 10 + 1000 above 8 KiB for latency;
 * 10 + 100 windows, 2 + 20 above 8 KiB for bw), divided by --scale (TCG is ~20x slower).
 * Unlike OSU, every buffer's content is checked after each size (outside the timing).
 * Usage: mpi-osu latency|bw [--sizes 8,1024,...] [--scale N]. Rank 0 prints "SIZE VALUE". */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW	      64
#define LARGE	      8192
#define MAX_SIZE      (1 << 20)
#define DEFAULT_SIZES "8,64,512,4096,32768,262144,1048576"

static void fill(unsigned char *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(seed + i * 31);
}

static int check(const unsigned char *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (b[i] != (unsigned char)(seed + i * 31))
			return -1;
	return 0;
}

static int latency(int rank, unsigned char *s, unsigned char *r, int size, int skip, int iters,
		   double *ret_us)
{
	double t0 = 0;

	fill(s, (size_t)size, (unsigned)(size + rank));
	memset(r, 0, (size_t)size);
	MPI_Barrier(MPI_COMM_WORLD);
	for (int i = 0; i < skip + iters; i++) {
		if (i == skip)
			t0 = MPI_Wtime();
		if (rank == 0) {
			MPI_Send(s, size, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
			MPI_Recv(r, size, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		} else {
			MPI_Recv(r, size, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
			MPI_Send(s, size, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
		}
	}
	*ret_us = (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);
	return check(r, (size_t)size, (unsigned)(size + 1 - rank));
}

static int bandwidth(int rank, unsigned char *s, unsigned char *r, int size, int skip, int iters,
		     double *ret_mbs)
{
	MPI_Request req[WINDOW];
	MPI_Status st[WINDOW]; /* not MPI_STATUSES_IGNORE: gcc reads it as a 0-byte array */
	double t0 = 0;
	char ack[4] = {0};

	fill(s, (size_t)size, (unsigned)size);
	memset(r, 0, (size_t)size * WINDOW);
	MPI_Barrier(MPI_COMM_WORLD);
	for (int i = 0; i < skip + iters; i++) {
		if (i == skip)
			t0 = MPI_Wtime();
		if (rank == 0) {
			for (int w = 0; w < WINDOW; w++)
				MPI_Isend(s, size, MPI_CHAR, 1, 100, MPI_COMM_WORLD, &req[w]);
			MPI_Waitall(WINDOW, req, st);
			MPI_Recv(ack, 4, MPI_CHAR, 1, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		} else {
			for (int w = 0; w < WINDOW; w++)
				MPI_Irecv(r + (size_t)w * size, size, MPI_CHAR, 0, 100,
					  MPI_COMM_WORLD, &req[w]);
			MPI_Waitall(WINDOW, req, st);
			MPI_Send(ack, 4, MPI_CHAR, 0, 101, MPI_COMM_WORLD);
		}
	}
	*ret_mbs = (double)size * WINDOW * iters / 1e6 / (MPI_Wtime() - t0);
	if (rank == 1)
		for (int w = 0; w < WINDOW; w++)
			if (check(r + (size_t)w * size, (size_t)size, (unsigned)size) < 0)
				return -1;
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "", *sizes = DEFAULT_SIZES;
	int rank, nranks, scale = 1, bad = 0;
	unsigned char *s, *r;
	char *list, *save = NULL;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &nranks);
	for (int i = 2; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--sizes") == 0)
			sizes = argv[i + 1];
		else if (strcmp(argv[i], "--scale") == 0)
			scale = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
	}
	if (nranks != 2 || (strcmp(mode, "latency") != 0 && strcmp(mode, "bw") != 0)) {
		if (rank == 0)
			fprintf(stderr, "usage: mpiexec -n 2 mpi-osu latency|bw [--sizes LIST] "
					"[--scale N]\n");
		MPI_Finalize();
		return 2;
	}
	s = malloc(MAX_SIZE);
	r = malloc((size_t)MAX_SIZE * WINDOW);
	if (!s || !r)
		MPI_Abort(MPI_COMM_WORLD, 1);
	if (rank == 0)
		printf("# OSU-style MPI %s test (%s), scale 1/%d\n# size %s\n",
		       mode[0] == 'l' ? "latency" : "bandwidth", mode, scale,
		       mode[0] == 'l' ? "latency_us" : "MB/s");
	list = strdup(sizes);
	for (char *w = strtok_r(list, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
		int size = atoi(w), big = size > LARGE, r0;
		double v = 0;

		if (size <= 0 || size > MAX_SIZE)
			continue;
		if (mode[0] == 'l')
			r0 = latency(rank, s, r, size, (big ? 10 : 100) / scale + 1,
				     (big ? 1000 : 10000) / scale + 1, &v);
		else
			r0 = bandwidth(rank, s, r, size, (big ? 2 : 10) / scale + 1,
				       (big ? 20 : 100) / scale + 1, &v);
		MPI_Allreduce(MPI_IN_PLACE, &r0, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
		if (r0 < 0) {
			bad = 1;
			if (rank == 0)
				printf("%d DAMAGED\n", size);
		} else if (rank == 0) {
			printf("%d %.2f\n", size, v);
		}
		fflush(stdout);
	}
	free(list);
	free(s);
	free(r);
	MPI_Finalize();
	return bad;
}
