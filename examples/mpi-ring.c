/* The main job's MPI program: a token goes around a ring of all ranks, each adding its
 * rank, then an MPI_Allreduce sums rank+1 over all ranks; both are checked against their
 * closed forms. Rank 0 prints the verified result and writes it to ring-result.txt in the
 * working directory (the job folder, shared into every VM).
 *
 * Options for tests: --fail-rank R (rank R fails the job with MPI_Abort, code 3),
 * --crash-rank R (rank R dies of SIGSEGV), --sleep S (every rank sleeps S seconds before
 * finishing), --hello (print one line per rank and stop). */
#include <signal.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int rank, size, fail_rank = -1, crash_rank = -1, sleep_s = 0, hello = 0;
	long token, sum, local;
	char host[MPI_MAX_PROCESSOR_NAME];
	int host_len;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	MPI_Get_processor_name(host, &host_len);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--fail-rank") == 0 && i + 1 < argc)
			fail_rank = atoi(argv[++i]);
		else if (strcmp(argv[i], "--crash-rank") == 0 && i + 1 < argc)
			crash_rank = atoi(argv[++i]);
		else if (strcmp(argv[i], "--sleep") == 0 && i + 1 < argc)
			sleep_s = atoi(argv[++i]);
		else if (strcmp(argv[i], "--hello") == 0)
			hello = 1;
	}
	if (hello) {
		printf("hello from rank %d of %d on %s\n", rank, size, host);
		MPI_Finalize();
		return 0;
	}
	/* Every rank is connected before one fails: the failure is then the job's, not a
	 * start-up race that leaves other ranks failing MPI_Init with codes of their own. */
	MPI_Barrier(MPI_COMM_WORLD);
	/* A plain exit(3) would not end the other ranks: across VMs they wait in UCX for a
	 * peer that is gone (MPICH's semantics). MPI_Abort is how an MPI program fails. */
	if (rank == fail_rank) {
		fprintf(stderr, "rank %d on %s: failing on purpose (--fail-rank)\n", rank, host);
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	if (rank == crash_rank) {
		fprintf(stderr, "rank %d on %s: crashing on purpose (--crash-rank)\n", rank, host);
		fflush(stderr);
		raise(SIGSEGV);
	}

	/* Ring: rank 0 starts the token at 0; each rank adds its rank and passes it on. */
	if (size == 1) {
		token = 0;
	} else if (rank == 0) {
		token = 0;
		MPI_Send(&token, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD);
		MPI_Recv(&token, 1, MPI_LONG, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	} else {
		MPI_Recv(&token, 1, MPI_LONG, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		token += rank;
		MPI_Send(&token, 1, MPI_LONG, (rank + 1) % size, 0, MPI_COMM_WORLD);
	}
	local = rank + 1;
	MPI_Allreduce(&local, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
	if (sleep_s > 0)
		sleep((unsigned)sleep_s);

	if (rank == 0) {
		long want_token = (long)size * (size - 1) / 2,
		     want_sum = (long)size * (size + 1) / 2;
		int ok = token == want_token && sum == want_sum;
		FILE *f;

		printf("ring of %d ranks: token %ld (expected %ld), allreduce %ld (expected %ld): "
		       "%s\n",
		       size, token, want_token, sum, want_sum, ok ? "VERIFIED" : "WRONG");
		f = fopen("ring-result.txt", "w");
		if (f) {
			fprintf(f, "ranks=%d token=%ld sum=%ld %s\n", size, token, sum,
				ok ? "VERIFIED" : "WRONG");
			fclose(f);
		} else {
			perror("ring-result.txt");
			ok = 0;
		}
		MPI_Finalize();
		return ok ? 0 : 1;
	}
	MPI_Finalize();
	return 0;
}
