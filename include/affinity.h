/* SPDX-License-Identifier: MIT */
/* Threads and CPUs: names for pgsteer's threads (seen in top -H, ps -L, /proc/PID/task) and
 * `cpu_affinity: auto`, which pins event-loop worker i to the i-th CPU the process was allowed
 * to run on when it started (wrapping around when there are more workers than CPUs). Linux
 * only; elsewhere these calls do nothing. */
#ifndef PGSTEER_AFFINITY_H
#define PGSTEER_AFFINITY_H

#include <stddef.h>

/* Record the CPUs the process may run on. Call once from the main thread before any thread
 * is pinned; returns how many there are (0 when unknown). */
int affinity_init(void);

/* Pin the calling thread to the CPU for worker `worker` (>= 0). Returns that CPU's number, or
 * -1 when affinity_init found no CPUs or the kernel refused (the thread stays unpinned). */
int affinity_pin_self(int worker);

/* Let the calling thread run on every CPU recorded by affinity_init again: threads started by
 * a pinned thread (the monitor, started from worker 0) inherit its pinning otherwise. Does
 * nothing when affinity_init was not called. */
void affinity_unpin_self(void);

/* Name the calling thread (at most 15 bytes are kept). */
void thread_name_self(const char *name);

/* The CPU time the process's cgroups allow, in CPUs: the smallest limit on the way from the
 * process's cgroup up to its hierarchy's root, from cgroup v2 `cpu.max` or v1
 * `cpu.cfs_quota_us` / `cpu.cfs_period_us` (a container's CPU limit). 0 when there is none or
 * it cannot be read. Reads /proc and /sys: call at startup only, not on a loop thread. */
double affinity_cpu_quota(void);

/* The pure parts of affinity_cpu_quota, for tests. */

/* A v2 `cpu.max` text ("max 100000", "150000 100000"): the limit in CPUs, 0 for none or on
 * malformed text. */
double cgroup_cpu_max(const char *text);

/* v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` texts: the limit in CPUs, 0 for none (-1) or on
 * malformed text. */
double cgroup_cfs_quota(const char *quota, const char *period);

/* From the texts of /proc/self/mountinfo and /proc/self/cgroup, the directory of the process's
 * cgroup in the v2 hierarchy (`v2`) or in the v1 hierarchy that has the cpu controller, into
 * out (NUL-terminated), and the length of its mount point's path into *mount_len. Returns 0, or
 * -1 when there is no such hierarchy or out is too small. */
int cgroup_cpu_dir(const char *mountinfo, const char *proc_cgroup, int v2, char *out, size_t outlen,
                   size_t *mount_len);

#endif
