/* How `vmhpc run` launches an MPI job in VM 0: which MPI the image has (its manifest's
 * metadata), and the command line and environment that run PROGRAM over every VM's VCPUs
 * with that MPI's launcher, always under the job watch (src/guest/jobwatch.h).
 *
 * The rule (docs/mpi.md): the image's metadata "mpi" ("mpich" or "openmpi", from the spec's
 * [image] mpi key) decides; without it, the packages the image was built from do: "mpich"
 * alone is MPICH (hydra), "openmpi-bin" alone is Open MPI (orterun). Both, or neither, is
 * refused with a message that names the fix. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

enum launcher_mpi {
	LAUNCHER_MPICH,	  /* mpiexec.hydra, its proxies started through vmhpc-exec */
	LAUNCHER_OPENMPI, /* Open MPI 4's orterun, its orteds started through vmhpc-exec */
	_LAUNCHER_MPI_MAX,
};

/* The job watch's exit status when it stopped a launcher that outlived every rank
 * (JOBWATCH_EXIT_STUCK), and how long it waits first. */
#define LAUNCHER_EXIT_STUCK    125
#define LAUNCHER_WATCH_GRACE_S 20

/* What a job asks for. */
struct launcher_job {
	enum launcher_mpi mpi;
	const char *const *hosts; /* the VMs' names, VM 0 first */
	unsigned n_hosts;
	unsigned slots; /* ranks each VM takes: its VCPUs */
	unsigned ranks;
	bool label; /* prefix every line of output with "[RANK@VM] " */
	int argc;   /* PROGRAM and its arguments */
	char *const *argv;
};

/* A command for the exec service: NULL-terminated argv and envp, owned by the struct. */
struct launcher_command {
	char **argv;
	char **envp;
};

/* "mpich", "openmpi"; NULL for an out-of-range value. */
const char *launcher_mpi_to_string(enum launcher_mpi mpi);

/* The launcher's name in messages: "mpiexec" (hydra) or "mpirun" (Open MPI). */
const char *launcher_program_name(enum launcher_mpi mpi);

/* Picks the MPI of an image from its manifest metadata (the rule above). image names it in
 * messages ("tiny-mpi:3"). Returns 0, or -ENOENT (no MPI) / -EINVAL (ambiguous or unknown)
 * with *ret_error (caller frees) saying what to change in the spec. */
int launcher_mpi_of_image(const json_t *metadata, const char *image, enum launcher_mpi *ret_mpi,
			  char **ret_error);

/* Builds the command that runs job in VM 0: `vmhpc-exec --job-watch HOSTS -- LAUNCHER ...`.
 * Returns 0 or -ENOMEM/-EINVAL; the caller frees *ret_command with launcher_command_free(). */
int launcher_command_new(const struct launcher_job *job, struct launcher_command **ret_command);

/* Frees c and its strings; NULL is a no-op. Returns NULL. */
struct launcher_command *launcher_command_free(struct launcher_command *c);
