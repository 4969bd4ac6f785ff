/* vmhpc-exec's job watch: runs mpiexec in VM 0 and ends it when every rank of the job has
 * exited but mpiexec has not (issue 13: a job must end, or say why it did not).
 *
 *   vmhpc-exec --job-watch [--grace-s N] [--interval-ms N] HOST[,HOST...] -- PROGRAM [ARGS...]
 *   vmhpc-exec --count-ranks
 *
 * --job-watch runs PROGRAM (mpiexec) as its child, in the watch's process group (which the watch
 * leads) so that the exec service's SIGNAL and SIGKILL reach it as before, ignores SIGINT,
 * SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 itself, and every --interval-ms
 * (default 2000) asks every HOST how many ranks it runs, through `vmhpc-exec -n HOST --
 * /usr/bin/vmhpc-exec --count-ranks` (the exec service, token and host names as for hydra's
 * launches). A rank is a live process whose parent is a hydra_pmi_proxy, an orted or orterun
 * (Open MPI), other than the vmhpc-exec rsh agents orterun starts. Once ranks were seen and
 * then none is left anywhere, PROGRAM has --grace-s (default 20) to end by itself; if it does not,
 * the watch says so on stderr, sends SIGTERM to the process group, SIGKILL to PROGRAM 3 s later,
 * and exits JOBWATCH_EXIT_STUCK. Otherwise it exits as PROGRAM did (128 + signal when killed).
 *
 * --count-ranks prints the number of ranks in this VM. */
#pragma once

/* The exit status of --job-watch when it had to stop a PROGRAM that outlived its ranks. */
#define JOBWATCH_EXIT_STUCK 125

/* argv[0] is "--job-watch". Returns the process's exit status. */
int jobwatch_main(int argc, char **argv);

/* Prints the number of ranks in this system (below /proc) and returns 0, or 1 on failure. */
int jobwatch_count_ranks_main(void);

/* The number of ranks (live processes whose parent is an MPI launcher's daemon, above; not
 * vmhpc-exec) reading PROC_DIR (normally "/proc"); -errno when PROC_DIR cannot be read. */
int jobwatch_count_ranks(const char *proc_dir);
