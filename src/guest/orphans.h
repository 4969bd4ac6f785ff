/* What a job's ranks leave running in the background. MPICH's hydra_pmi_proxy hands its
 * ranks descriptors without close-on-exec; a rank that starts a background process and
 * exits leaves that process (re-parented to us) holding the proxy's pipes open, and the
 * proxy, mpiexec and the job then wait for it forever. Once every rank under a proxy has
 * exited, the processes that were re-parented to us from the proxy's session, or from a
 * session a rank made for itself and left (hydra's ranks call setsid), are killed after a
 * grace period, as Slurm kills what a step leaves behind. Session leaders are spared: the
 * exec service starts each command (mpiexec, a proxy) as one. libc only (in vmhpc-init). */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#define ORPHANS_GRACE_MS    3000 /* a proxy whose ranks all exited waits this long first */
#define ORPHANS_MAX_PROXIES 64

struct orphans {
	struct {
		pid_t pid;
		int64_t idle_since_ms; /* when it was first seen with only exited children */
	} proxies[ORPHANS_MAX_PROXIES];
	unsigned n_proxies;
};

/* Looks at every process once (/proc): notes proxies with no running child, and for those
 * idle for ORPHANS_GRACE_MS kills the job's processes whose parent is now reaper (PID 1 in
 * a guest). Returns how many it killed. */
int orphans_sweep(struct orphans *o, pid_t reaper, int64_t now_ms);
