/* SPDX-License-Identifier: MIT */
/* A fixed-bucket latency histogram, exported by the admin port as a Prometheus histogram.
 * Observing is a few compares and three additions: fit for the hot path. */
#ifndef PGSTEER_LATENCY_H
#define PGSTEER_LATENCY_H

#include <stdint.h>

/* Time pgsteer itself spends: on a unit from the client, classifying, routing and queueing it
 * (request); on a read from a node, matching and forwarding the answers to the client's socket
 * (response). Bucket bounds in nanoseconds; counts per bucket, made cumulative on export. */
#define LATENCY_BUCKETS 10
static const uint64_t latency_bounds_ns[LATENCY_BUCKETS] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, UINT64_MAX};
struct latency_hist {
    uint64_t buckets[LATENCY_BUCKETS];
    uint64_t count;
    uint64_t sum_ns;
};
static inline void latency_observe(struct latency_hist *h, uint64_t ns)
{
    int i = 0;
    while (ns > latency_bounds_ns[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum_ns += ns;
}

#endif
