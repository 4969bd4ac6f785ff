/* The job's cgroup inside a guest: every command the exec service starts (the ranks, mpiexec,
 * hydra's proxies) runs in one cgroup v2 group, so the guest can say afterwards how much
 * memory the job needed at its peak (memory.peak) and whether the kernel killed any of it
 * for lack of memory. libc only: linked into the static vmhpc-init. */
#pragma once

#include <stdint.h>

/* Where PID 1 makes the group (cgroup2 mounted on /sys/fs/cgroup). */
#define JOBCG_DIR "/sys/fs/cgroup/vmhpc-job"

/* PID 1, once after the root is in place: mounts cgroup2 on /sys/fs/cgroup, turns the
 * memory controller on for its children and creates JOBCG_DIR. 0, or -errno (said on the
 * console by the caller; the job then runs without the group and its peak is unknown). */
int jobcg_setup(void);

/* In a command's child before exec: moves the calling process into the group. 0 or -errno
 * (no group: nothing to do). Async-signal-safe: open/write/close only. */
int jobcg_enter(void);

/* The group's memory.peak in KiB, or 0 when unknown (no group, or a kernel without it). */
uint64_t jobcg_mem_peak_kb(void);

/* How many processes the guest kernel killed for lack of memory since boot
 * (/proc/vmstat oom_kill); 0 when unknown. */
uint64_t jobcg_oom_kills(void);
