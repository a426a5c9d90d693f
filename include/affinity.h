/* SPDX-License-Identifier: MIT */
/* Threads and CPUs: names for pgsteer's threads (seen in top -H, ps -L, /proc/PID/task) and
 * `cpu_affinity: auto`, which pins event-loop worker i to the i-th CPU the process was allowed
 * to run on when it started (wrapping around when there are more workers than CPUs). Linux
 * only; elsewhere these calls do nothing. */
#ifndef PGSTEER_AFFINITY_H
#define PGSTEER_AFFINITY_H

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

#endif
