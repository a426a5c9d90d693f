/* SPDX-License-Identifier: MIT */
/* Thread names and CPU pinning (see affinity.h). */
#include "affinity.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

#ifdef __linux__
/* Written once by affinity_init before other threads start; read-only afterwards. */
static cpu_set_t allowed;
static int ncpus;
static int cpus[CPU_SETSIZE];

int affinity_init(void)
{
    CPU_ZERO(&allowed);
    ncpus = 0;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return 0;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &allowed))
            cpus[ncpus++] = i;
    return ncpus;
}

int affinity_pin_self(int worker)
{
    if (ncpus == 0 || worker < 0)
        return -1;
    int cpu = cpus[worker % ncpus];
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0)
        return -1;
    return cpu;
}

void affinity_unpin_self(void)
{
    if (ncpus > 0)
        (void)pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
}

void thread_name_self(const char *name)
{
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = '\0';
    (void)pthread_setname_np(pthread_self(), buf);
}
#else
int affinity_init(void)
{
    return 0;
}

int affinity_pin_self(int worker)
{
    (void)worker;
    return -1;
}

void affinity_unpin_self(void)
{
}

void thread_name_self(const char *name)
{
    (void)name;
}
#endif
